"""Layers the neural heads share."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Dropout):
    """Dropout with its mask from ``rand < p``: on the CPU, torch's Bernoulli sampling took
    a fifth of a training step of the concat head; this takes half as long."""

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        return x * (torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p))


class Projection(nn.Sequential):
    """linear -> GELU -> layer norm -> dropout."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__(nn.Linear(dim, width), nn.GELU(), nn.LayerNorm(width), Dropout(dropout))


def project(module: nn.Module, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``module`` applied to the rows ``index`` of ``table``: on the table and gathered after when the table is the smaller."""
    if len(table) < len(index):
        return module(table)[index]  # one dropout mask per distinct vector in this batch
    return module(table[index])
