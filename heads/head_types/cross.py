"""CrossHead: a linear output on the joint vector of both texts read in one sequence (fine-tuning only)."""

from __future__ import annotations

import torch
from torch import nn

from embedcache import ParameterError

from .base import TorchHead
from .layers import Dropout


class CrossHead(TorchHead):
    """One output per label from the joint vector of a cross encoder (both texts in one sequence).

    Only for fine-tuning, where the encoder reads the texts together; its one
    side is that joint vector.
    """

    joint = True

    def __init__(
        self, dim: int, sides=("text",), width: int = 256, dropout: float = 0.1, n_outputs: int = 1, shared: bool = True
    ):
        super().__init__(dim, sides, width, dropout, n_outputs, shared)
        self.dropout, self.linear = Dropout(dropout), nn.Linear(dim, n_outputs)

    @classmethod
    def check_sides(cls, sides) -> None:
        if len(sides) > 2:
            raise ParameterError(
                "the cross head reads two texts in one sequence: give a pair column or a condition column, not both"
            )

    def forward(self, tables: dict, index: dict) -> torch.Tensor:
        return self.linear(self.dropout(tables["text"][index["text"]]))
