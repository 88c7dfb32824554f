"""TwoTowerHead: a tower per side, the cosine of their outputs, calibrated to the labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embedcache import ParameterError

from .base import TorchHead
from .layers import Dropout, project


class Tower(nn.Module):
    """x + MLP(x), the last layer starting at zero: training starts from the plain cosine of the inputs."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), Dropout(dropout), nn.Linear(width, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return x + self.mlp(x)


class TwoTowerHead(TorchHead):
    """A tower per side, cosine similarity of the two outputs, a small MLP from it to the outputs.

    The output is linear in the cosine plus an MLP that starts at zero; ``prepare``
    fits the linear part first, so training starts from the plain cosine
    similarity calibrated to the labels.
    """

    mix_start = "last"  # on layer vectors too, training starts from the cosine of the last layer's

    def __init__(
        self,
        dim: int,
        sides=("text", "pair"),
        width: int = 256,
        dropout: float = 0.1,
        n_outputs: int = 1,
        shared: bool = True,
    ):
        super().__init__(dim, sides, width, dropout, n_outputs, shared)
        type(self).check_sides(sides)
        self.sides = tuple(sides)
        self.shared = shared and sides[1] == "pair"  # a condition is another kind of text: its own tower
        self.towers = nn.ModuleDict(
            {s: Tower(dim, width, dropout) for s in (self.sides[:1] if self.shared else self.sides)}
        )
        self.linear = nn.Linear(1, n_outputs)
        self.mlp = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, n_outputs))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    @classmethod
    def check_sides(cls, sides) -> None:
        if len(sides) != 2 or sides[0] != "text":
            raise ParameterError("the two-tower head needs exactly one of a pair column or a condition column")

    def cosine(self, tables: dict, index: dict) -> torch.Tensor:
        a, b = self.sides
        u = project(self.towers[a], tables[a], index[a])
        v = project(self.towers[a if self.shared else b], tables[b], index[b])
        return F.cosine_similarity(u, v, dim=1).unsqueeze(1)

    def forward(self, tables: dict, index: dict) -> torch.Tensor:
        c = self.cosine(tables, index)
        return self.linear(c) + self.mlp(c)

    @torch.no_grad()
    def prepare(self, tables: dict, index: dict, y) -> None:
        """Least-squares fit of each (standardised) label on the cosine, into the linear part."""
        self.eval()
        c = self.cosine(tables, index)[:, 0].double()
        y = torch.as_tensor(y, dtype=torch.float64)
        for j in range(y.shape[1]):
            keep = ~torch.isnan(y[:, j])
            X = torch.stack([c[keep], torch.ones_like(c[keep])], dim=1)
            slope, intercept = torch.linalg.lstsq(X, y[keep, j : j + 1]).solution[:, 0]
            self.linear.weight[j, 0], self.linear.bias[j] = slope, intercept
