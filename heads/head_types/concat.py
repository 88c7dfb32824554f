"""ConcatHead: each side projected, joined, an MLP to the outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import TorchHead
from .layers import Dropout, Projection


class ConcatHead(TorchHead):
    """Each side projected, joined (with |u-v| and u*v for pairs), an MLP to the outputs.

    The MLP's first layer on the joined vector is computed as a sum of one
    product per part, so a side with few distinct vectors (conditions) goes
    through it once per distinct vector instead of once per row.
    """

    def __init__(
        self, dim: int, sides=("text",), width: int = 256, dropout: float = 0.1, n_outputs: int = 1, shared: bool = True
    ):
        super().__init__(dim, sides, width, dropout, n_outputs, shared)
        self.sides, self.shared, self.width = tuple(sides), shared, width
        names = [s for s in self.sides if not (s == "pair" and shared)]
        self.proj = nn.ModuleDict({s: Projection(dim, width, dropout) for s in names})
        n_parts = len(self.sides) + (2 if "pair" in self.sides else 0)
        self.first = nn.Linear(n_parts * width, width)
        self.rest = nn.Sequential(nn.GELU(), Dropout(dropout), nn.Linear(width, n_outputs))

    def forward(self, tables: dict, index: dict) -> torch.Tensor:
        weights = self.first.weight.split(self.width, dim=1)
        z = self.first.bias
        rows = {}
        for k, side in enumerate(self.sides):
            proj = self.proj["text" if side == "pair" and self.shared else side]
            table, idx = tables[side], index[side]
            if len(table) < len(idx):
                h = proj(table)  # one dropout mask per distinct vector in this batch
                z = z + F.linear(h, weights[k])[idx]
                if "pair" in self.sides:
                    rows[side] = h[idx]
            else:
                rows[side] = proj(table[idx])
                z = z + F.linear(rows[side], weights[k])
        if "pair" in self.sides:
            u, v = rows["text"], rows["pair"]
            z = z + F.linear((u - v).abs(), weights[-2]) + F.linear(u * v, weights[-1])
        return self.rest(z)
