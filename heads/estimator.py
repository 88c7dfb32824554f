"""EmbeddingRegressor: the heads as a scikit-learn estimator over arrays of embeddings; EmbeddingTransformer:
texts to their cached vectors, the step before it in a ``Pipeline``.

For ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``.  ``X`` is one row of
features per sample, ``n_inputs`` embeddings side by side, each ``dim`` wide:
``[text | pair]`` for a pair of texts (``n_inputs=2``), ``[text | condition]``
with ``condition=True``, ``[text | pair | condition]`` for both.  A 3-D array
``(n, n_inputs, dim)`` is the same, stacked.

    pipe = make_pipeline(EmbeddingTransformer("cache/minilm"), EmbeddingRegressor(label_range=(0, 1)))
    pipe.fit(texts, y)               # a list of texts; pairs: a list of (text, pair) tuples
"""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin
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

    def __init__(
        self,
        head="concat",
        n_inputs=1,
        width=256,
        dropout=0.1,
        loss="mse",
        epochs=30,
        lr=1e-3,
        weight_decay=0.01,
        batch_size=None,
        patience=5,
        val_fraction=0.1,
        random_state=0,
        device=None,
        label_range=None,
        condition=False,
    ):
        self.head = head
        self.n_inputs = n_inputs
        self.label_range = label_range
        self.condition = condition
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
        settings = {k: v for k, v in params.items() if k in TrainConfig.__dataclass_fields__ and k != "val_fraction"}
        if settings.get("label_range") is not None:
            settings["label_range"] = tuple(settings["label_range"])
        return TrainConfig(**settings, seed=self.random_state)

    def _sides(self) -> tuple:
        texts = self.n_inputs - bool(self.condition)
        if texts not in (1, 2):
            raise ValueError(
                f"n_inputs must be 1 or 2 texts (plus 1 with condition=True), got n_inputs={self.n_inputs} "
                f"and condition={self.condition}"
            )
        return ("text", "pair")[:texts] + (("condition",) if self.condition else ())

    def _inputs(self, X: np.ndarray) -> Inputs:
        sides = self._sides()
        parts = np.split(X, len(sides), axis=1)
        rows = np.arange(len(X))
        return Inputs({s: p for s, p in zip(sides, parts)}, {s: rows for s in sides})

    def _flat(self, X):
        """A 3-D ``(n, n_inputs, dim)`` array as the 2-D ``(n, n_inputs * dim)`` layout; anything else as it is."""
        if getattr(X, "ndim", None) == 3:
            if X.shape[1] != self.n_inputs:
                raise ValueError(f"a 3-D X must be (n, n_inputs={self.n_inputs}, dim), got shape {X.shape}")
            return np.asarray(X).reshape(len(X), -1)
        return X

    def fit(self, X, y, sample_weight=None):
        X = self._flat(X)
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float32)
        if sample_weight is not None:
            sample_weight = _check_sample_weight(sample_weight, X)
        if X.shape[1] % len(self._sides()):
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
            model.fit_inputs(
                inputs.subset(train),
                y2[train],
                inputs.subset(val),
                y2[val],
                path="y",
                progress=False,
                sample_weight=None if sample_weight is None else sample_weight[train],
            )
        else:
            model.fit_inputs(inputs, y2, path="y", sample_weight=sample_weight, progress=False)
        self.model_ = model
        self.n_outputs_ = y2.shape[1] if y.ndim == 2 else 1
        self._y_2d = y.ndim == 2
        return self

    def predict(self, X):
        check_is_fitted(self, "model_")
        X = validate_data(self, self._flat(X), reset=False, dtype=np.float32)
        out = self.model_.predict_inputs(self._inputs(X)).astype(np.float64)
        return out if self._y_2d else out[:, 0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class EmbeddingTransformer(TransformerMixin, BaseEstimator):
    """Texts to their vectors from an embedcache cache (the cache's encoder encodes, in memory, what it lacks).

    ``X``: a list of texts, a list of ``(text, pair)`` tuples, or a DataFrame (``columns`` names its text
    columns, in order).  Several texts per row come out side by side, the layout ``EmbeddingRegressor``
    reads (``n_inputs`` blocks).  The cache is only read.
    """

    def __init__(self, cache, columns=None):
        self.cache = cache
        self.columns = columns

    def fit(self, X, y=None):
        from embedcache import EmbeddingCache

        self.cache_ = self.cache if isinstance(self.cache, EmbeddingCache) else EmbeddingCache(self.cache)
        self.n_features_out_ = None
        return self

    def transform(self, X):
        check_is_fitted(self, "cache_")
        blocks = [self.cache_.get(texts, encode_missing=True) for texts in self._columns(X)]
        return np.hstack(blocks).astype(np.float32)

    def _columns(self, X) -> list[list[str]]:
        import pandas as pd

        if isinstance(X, pd.DataFrame):
            names = list(self.columns) if self.columns is not None else list(X.columns)
            return [X[c].astype(str).tolist() for c in names]
        rows = list(X)
        if rows and isinstance(rows[0], (tuple, list)):
            return [list(side) for side in zip(*rows)]
        return [[str(t) for t in rows]]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        tags.input_tags.two_d_array = False
        tags.requires_fit = True
        return tags
