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


class ScalarMix(nn.Module):
    """``(m, n_layers, dim)`` layer vectors -> ``(m, dim)``: each layer normalised, then mixed by softmax weights
    and scaled (ELMo's scalar mix).  The weights start equal, or (``start="last"``) mostly on the last layer
    (e^4 against 1 each), for a head that starts from the vectors' cosine; ``weights()`` gives them."""

    def __init__(self, n_layers: int, start: str = "equal"):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_layers))
        if start == "last":
            with torch.no_grad():
                self.logits[-1] = 4.0
        self.gamma = nn.Parameter(torch.ones(()))

    def weights(self) -> list[float]:
        return [round(float(w), 4) for w in torch.softmax(self.logits.detach().float().cpu(), 0)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.layer_norm(x, x.shape[-1:])
        return self.gamma * torch.einsum("l,mld->md", torch.softmax(self.logits, 0).to(x.dtype), x)


def mix_tables(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of a head that reads layer vectors: its tables mixed before its own forward sees them,
    only the rows a batch uses (a table holds every distinct text of the training set)."""
    tables, index = args
    mix = module.get_submodule("mix")
    mixed, rows = {}, {}
    for side, table in tables.items():
        if len(index[side]) < len(table):
            used, rows[side] = torch.unique(index[side], return_inverse=True)
            mixed[side] = mix(table[used])
        else:
            mixed[side], rows[side] = mix(table), index[side]
    return mixed, rows
