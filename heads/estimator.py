"""EmbeddingRegressor: the heads as a scikit-learn estimator over arrays of embeddings.

For ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``.  ``X`` is one row of
features per sample; with ``n_inputs=2`` its columns are two embeddings side by
side (a pair of texts), split in the middle.
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import (
    _check_sample_weight,
    check_is_fitted,
    validate_data,
)

from .config import TrainConfig
from .data import Inputs
from .model import HeadModel


class EmbeddingRegressor(RegressorMixin, BaseEstimator):
    """A concat, two-tower or ridge head on embedding arrays; ``score`` is R2.

    Training holds out ``val_fraction`` of the rows for early stopping (none
    with fewer than 20 rows, or ``val_fraction=0``).
    """

    def __init__(self, head="concat", n_inputs=1, width=256, dropout=0.1, loss="mse", epochs=30, lr=1e-3,
                 weight_decay=0.01, batch_size=None, patience=5, val_fraction=0.1, random_state=0, device=None):
        self.head = head
        self.n_inputs = n_inputs
        self.width = width
        self.dropout = dropout
        self.loss = loss
        self.epochs = epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.patience = patience
        self.val_fraction = val_fraction
        self.random_state = random_state
        self.device = device

    def train_config(self) -> TrainConfig:
        """The constructor's arguments as the training settings every head takes (``random_state`` is the seed;
        ``val_fraction`` is this estimator's own split, which may be 0)."""
        params = self.get_params()
        return TrainConfig(**{k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__ and k != "val_fraction"},
                           seed=self.random_state)

    def _inputs(self, X: np.ndarray) -> Inputs:
        parts = np.split(X, self.n_inputs, axis=1)
        sides = ("text", "pair")[: self.n_inputs]
        rows = np.arange(len(X))
        return Inputs({s: p for s, p in zip(sides, parts)}, {s: rows for s in sides})

    def fit(self, X, y, sample_weight=None):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float32)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if self.n_inputs not in (1, 2) or X.shape[1] % self.n_inputs:
            raise ValueError(f"n_inputs must be 1 or 2 and divide the {X.shape[1]} features, got {self.n_inputs}")
        if len(X) < 2:
            raise ValueError("need at least 2 samples to fit, got 1 sample")
        y2 = y.reshape(len(y), -1).astype(float)
        model = HeadModel(self.train_config(), device=self.device)
        inputs = self._inputs(X)
        n_val = round(self.val_fraction * len(X)) if len(X) >= 20 else 0
        if n_val:
            order = np.random.default_rng(self.random_state).permutation(len(X))
            val, train = order[:n_val], order[n_val:]
            model.fit_inputs(inputs.subset(train), y2[train], inputs.subset(val), y2[val], path="y", progress=False,
                             sample_weight=None if sample_weight is None else sample_weight[train])
        else:
            model.fit_inputs(inputs, y2, path="y", sample_weight=sample_weight, progress=False)
        self.model_ = model
        self.n_outputs_ = y2.shape[1] if y.ndim == 2 else 1
        self._y_2d = y.ndim == 2
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        out = self.model_.predict_inputs(self._inputs(X)).astype(np.float64)
        return out if self._y_2d else out[:, 0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
