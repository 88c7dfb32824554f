"""RidgeHead: the linear baseline, one scikit-learn ridge regression per label."""

from __future__ import annotations

import numpy as np
import torch

from .base import Head

# Alphas relative to the mean diagonal of X'X, so the grid fits any number of rows
# and any vector scale; the smallest keeps the Cholesky solve stable in float32.
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def ridge_features(tables: dict, index: dict, sides) -> np.ndarray:
    """What the ridge baseline sees: the sides joined, with |u-v| and u*v for pairs.

    A condition adds text*condition too: a linear model cannot otherwise tell
    whether a text matches a condition, which the MLP heads learn themselves.
    Filled in place, block by block: the features are the largest array here.
    """
    parts = _parts(sides)
    n, dim = len(index["text"]), tables["text"].shape[1]
    out = np.empty((n, dim * len(parts)), dtype=np.float32)
    for k, part in enumerate(parts):
        block = out[:, k * dim : (k + 1) * dim]
        a = tables[part[0]][index[part[0]]]
        if len(part) == 1:
            block[:] = a
        elif part[2] == "mul":
            np.multiply(a, tables[part[1]][index[part[1]]], out=block)
        else:
            np.abs(a - tables[part[1]][index[part[1]]], out=block)
    return out


def _parts(sides) -> list[tuple]:
    parts = [(s,) for s in sides]
    if "pair" in sides:
        parts += [("text", "pair", "absdiff"), ("text", "pair", "mul")]
    if "condition" in sides:
        parts.append(("text", "condition", "mul"))
    return parts


def fit_ridge(
    X, y, X_val=None, y_val=None, alphas=RIDGE_ALPHAS, sample_weight=None
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Ridge per label on the rows where that label is present, alpha chosen on the validation rows.

    All alphas are fitted at once, as one scikit-learn Ridge with a target
    column per alpha: X'X is formed once, whatever the number of alphas.
    Without validation rows the relative alpha is 1e-2.  Returns the relative
    alphas chosen.
    """
    from sklearn.linear_model import Ridge

    mean_diag = float(np.einsum("ij,ij->", X, X, dtype=np.float64)) / X.shape[1]
    relative = np.asarray(alphas if X_val is not None and len(X_val) else (1e-2,), dtype=float)
    candidates = relative * max(mean_diag, 1e-12)
    coef, intercept, chosen = [], [], []
    for j in range(y.shape[1]):
        keep = ~np.isnan(y[:, j])
        Xj = X if keep.all() else X[keep]
        wj = None if sample_weight is None else np.asarray(sample_weight, dtype=float)[keep]
        ridge = Ridge(alpha=candidates, solver="cholesky", copy_X=False).fit(
            Xj, np.repeat(y[keep, j : j + 1], len(candidates), axis=1), sample_weight=wj
        )
        ridge_coef = ridge.coef_.reshape(len(candidates), -1)  # scikit-learn drops the axis for a single alpha
        best = 0
        if len(candidates) > 1:
            vkeep = ~np.isnan(y_val[:, j])
            errors = ((X_val[vkeep] @ ridge_coef.T + ridge.intercept_ - y_val[vkeep, j : j + 1]) ** 2).mean(axis=0)
            best = int(np.argmin(errors))
        coef.append(ridge_coef[best])
        intercept.append(ridge.intercept_[best])
        chosen.append(float(relative[best]))
    return np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32), chosen


class RidgeHead(Head):
    """Ridge regression on the joined sides (see ``ridge_features``), alpha per label chosen on the validation rows."""

    def __init__(self, dim: int, sides=("text",), n_outputs: int = 1, alphas=None):
        self.dim, self.sides, self.n_outputs, self.alphas = dim, tuple(sides), n_outputs, alphas
        self.coef, self.intercept = None, None

    @classmethod
    def build(cls, dim: int, sides, n_outputs: int, settings) -> RidgeHead:
        return cls(dim, sides, n_outputs)

    def config(self) -> dict:
        """``alphas``: the relative alpha chosen per label (None before fitting)."""
        return {"dim": self.dim, "sides": list(self.sides), "n_outputs": self.n_outputs, "alphas": self.alphas}

    @classmethod
    def from_config(cls, config: dict) -> RidgeHead:
        return cls(config["dim"], tuple(config["sides"]), config["n_outputs"], config.get("alphas"))

    def state(self) -> dict:
        return {"coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept)}

    def load_state(self, tensors: dict) -> RidgeHead:
        self.coef, self.intercept = tensors["coef"].numpy(), tensors["intercept"].numpy()
        return self

    def state_shapes(self) -> dict:
        return {"coef": (self.n_outputs, self.dim * len(_parts(self.sides))), "intercept": (self.n_outputs,)}

    def fit(self, train, y, val, y_val, settings, *, scale, sample_weight=None, device="cpu", progress=True) -> list:
        X = ridge_features(train.tables, train.index, self.sides)
        X_val = None if val is None else ridge_features(val.tables, val.index, self.sides)
        self.coef, self.intercept, self.alphas = fit_ridge(X, y, X_val, y_val, sample_weight=sample_weight)
        return []

    def predict(self, inputs) -> np.ndarray:
        # float64, as the torch heads: float32 BLAS sums in an order that depends on the
        # row blocking, so a row's score would change with the rows predicted beside it
        X = ridge_features(inputs.tables, inputs.index, self.sides).astype(np.float64)
        return X @ self.coef.T.astype(np.float64) + self.intercept.astype(np.float64)
