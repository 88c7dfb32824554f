"""RidgeHead: the linear baseline, one scikit-learn ridge regression per label."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

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
    mean_diag = float(np.einsum("ij,ij->", X, X, dtype=np.float64)) / X.shape[1]
    relative = np.asarray(alphas if X_val is not None and len(X_val) else (1e-2,), dtype=float)
    candidates = relative * max(mean_diag, 1e-12)
    coef, intercept, chosen = [], [], []
    with warnings.catch_warnings():
        # the smallest alphas may be ill-conditioned on many features (layer vectors): validation picks the alpha
        warnings.simplefilter("ignore", LinAlgWarning)
        for j in range(y.shape[1]):
            coef_j, intercept_j, chosen_j = _fit_label(X, y, X_val, y_val, j, candidates, relative, sample_weight)
            coef.append(coef_j)
            intercept.append(intercept_j)
            chosen.append(chosen_j)
    return np.asarray(coef, dtype=np.float32), np.asarray(intercept, dtype=np.float32), chosen


def _fit_label(X, y, X_val, y_val, j, candidates, relative, sample_weight) -> tuple:
    """Label ``j``'s coefficients, intercept and relative alpha, on the rows where it is present."""
    from sklearn.linear_model import Ridge

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
    return ridge_coef[best], ridge.intercept_[best], float(relative[best])


class RidgeHead(Head):
    """Ridge regression on the joined sides (see ``ridge_features``), alpha per label chosen on the validation rows.

    On layer vectors (``with_layers``) the layers of each side stand side by side, each feature standardised
    on the training rows (the layers' scales differ), the means and scales kept with the weights."""

    def __init__(self, dim: int, sides=("text",), n_outputs: int = 1, alphas=None, layers: int | None = None):
        self.dim, self.sides, self.n_outputs, self.alphas, self.layers = dim, tuple(sides), n_outputs, alphas, layers
        self.coef, self.intercept = None, None
        self.center: np.ndarray | None = None  # per feature, of a head on layer vectors
        self.scale: np.ndarray | None = None

    @classmethod
    def build(cls, dim: int, sides, n_outputs: int, settings) -> RidgeHead:
        return cls(dim, sides, n_outputs)

    def with_layers(self, n_layers: int) -> RidgeHead:
        self.layers = n_layers
        return self

    def config(self) -> dict:
        """``alphas``: the relative alpha chosen per label (None before fitting)."""
        out = {"dim": self.dim, "sides": list(self.sides), "n_outputs": self.n_outputs, "alphas": self.alphas}
        return out if self.layers is None else {**out, "layers": self.layers}

    @classmethod
    def from_config(cls, config: dict) -> RidgeHead:
        return cls(
            config["dim"], tuple(config["sides"]), config["n_outputs"], config.get("alphas"), config.get("layers")
        )

    def state(self) -> dict:
        out = {"coef": torch.from_numpy(self.coef), "intercept": torch.from_numpy(self.intercept)}
        if self.center is not None and self.scale is not None:
            out |= {"center": torch.from_numpy(self.center), "scale": torch.from_numpy(self.scale)}
        return out

    def load_state(self, tensors: dict) -> RidgeHead:
        self.coef, self.intercept = tensors["coef"].numpy(), tensors["intercept"].numpy()
        if "center" in tensors:
            self.center, self.scale = tensors["center"].numpy(), tensors["scale"].numpy()
        return self

    def state_shapes(self) -> dict:
        width = self.dim * (self.layers or 1) * len(_parts(self.sides))
        out = {"coef": (self.n_outputs, width), "intercept": (self.n_outputs,)}
        return out if self.layers is None else {**out, "center": (width,), "scale": (width,)}

    def features(self, inputs, fit: bool = False) -> np.ndarray:
        """The features of ``inputs`` (layer vectors flattened and standardised; ``fit``: by these rows' own
        means and scales, kept for later)."""
        tables = {s: t.reshape(len(t), -1) for s, t in inputs.tables.items()}
        X = ridge_features(tables, inputs.index, self.sides)
        if fit and self.layers is not None:
            self.center, self.scale = X.mean(axis=0), np.maximum(X.std(axis=0), 1e-6).astype(np.float32)
        if self.center is not None and self.scale is not None:
            X -= self.center
            X /= self.scale
        return X

    def fit(self, train, y, val, y_val, settings, *, scale, sample_weight=None, device="cpu", progress=True) -> list:
        self.center = self.scale = None
        X = self.features(train, fit=True)
        X_val = None if val is None else self.features(val)
        self.coef, self.intercept, self.alphas = fit_ridge(X, y, X_val, y_val, sample_weight=sample_weight)
        return []

    def predict(self, inputs) -> np.ndarray:
        # float64, as the torch heads: float32 BLAS sums in an order that depends on the
        # row blocking, so a row's score would change with the rows predicted beside it
        X = self.features(inputs).astype(np.float64)
        return X @ self.coef.T.astype(np.float64) + self.intercept.astype(np.float64)
