"""The neural heads.  Each takes, per input side, a table of distinct vectors and the row indices of a batch.

When a side has fewer distinct vectors than the batch has rows (conditions:
8 metric names under 450k rows), its projection runs on the table and is
gathered afterwards, which makes that side nearly free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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


def _project(module: nn.Module, table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    if len(table) < len(index):
        return module(table)[index]  # one dropout mask per distinct vector in this batch
    return module(table[index])


class ConcatHead(nn.Module):
    """Each side projected, joined (with |u-v| and u*v for pairs), an MLP to the outputs.

    The MLP's first layer on the joined vector is computed as a sum of one
    product per part, so a side with few distinct vectors (conditions) goes
    through it once per distinct vector instead of once per row.
    """

    def __init__(self, dim: int, sides=("text",), width: int = 256, dropout: float = 0.1, n_outputs: int = 1,
                 shared: bool = True):
        super().__init__()
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


class Tower(nn.Module):
    """x + MLP(x), the last layer starting at zero: training starts from the plain cosine of the inputs."""

    def __init__(self, dim: int, width: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, width), nn.GELU(), Dropout(dropout), nn.Linear(width, dim))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, x):
        return x + self.mlp(x)


class TwoTowerHead(nn.Module):
    """A tower per side, cosine similarity of the two outputs, a small MLP from it to the outputs.

    The output is linear in the cosine plus an MLP that starts at zero; with
    ``start_from_cosine`` the linear part is fitted first, so training starts
    from the plain cosine similarity calibrated to the labels.
    """

    def __init__(self, dim: int, sides=("text", "pair"), width: int = 256, dropout: float = 0.1, n_outputs: int = 1,
                 shared: bool = True):
        super().__init__()
        if len(sides) != 2:
            raise ValueError(f"two-tower compares exactly two inputs (text and pair, or text and condition), got {list(sides)}")
        self.sides = tuple(sides)
        self.shared = shared and sides[1] == "pair"  # a condition is another kind of text: its own tower
        self.towers = nn.ModuleDict({s: Tower(dim, width, dropout) for s in (self.sides[:1] if self.shared else self.sides)})
        self.linear = nn.Linear(1, n_outputs)
        self.mlp = nn.Sequential(nn.Linear(1, 16), nn.GELU(), nn.Linear(16, n_outputs))
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def cosine(self, tables: dict, index: dict) -> torch.Tensor:
        a, b = self.sides
        u = _project(self.towers[a], tables[a], index[a])
        v = _project(self.towers[a if self.shared else b], tables[b], index[b])
        return F.cosine_similarity(u, v, dim=1).unsqueeze(1)

    def forward(self, tables: dict, index: dict) -> torch.Tensor:
        c = self.cosine(tables, index)
        return self.linear(c) + self.mlp(c)

    @torch.no_grad()
    def start_from_cosine(self, tables: dict, index: dict, y) -> None:
        """Least-squares fit of each (standardised) label on the cosine, into the linear part."""
        self.eval()
        c = self.cosine(tables, index)[:, 0].double()
        y = torch.as_tensor(y, dtype=torch.float64)
        for j in range(y.shape[1]):
            keep = ~torch.isnan(y[:, j])
            X = torch.stack([c[keep], torch.ones_like(c[keep])], dim=1)
            slope, intercept = torch.linalg.lstsq(X, y[keep, j : j + 1]).solution[:, 0]
            self.linear.weight[j, 0], self.linear.bias[j] = slope, intercept


class CrossHead(nn.Module):
    """One output per label from the joint vector of a cross encoder (both texts in one sequence).

    Only for fine-tuning, where the encoder reads the texts together; its one
    side is that joint vector.
    """

    def __init__(self, dim: int, sides=("text",), width: int = 256, dropout: float = 0.1, n_outputs: int = 1,
                 shared: bool = True):
        super().__init__()
        self.dropout, self.linear = Dropout(dropout), nn.Linear(dim, n_outputs)

    def forward(self, tables: dict, index: dict) -> torch.Tensor:
        return self.linear(self.dropout(tables["text"][index["text"]]))


MODULES = {"concat": ConcatHead, "two-tower": TwoTowerHead, "cross": CrossHead}
