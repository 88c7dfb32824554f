"""HeadModel: a head trained on a table of texts and labels, through an embedcache cache.

A saved model is a directory: ``config.json`` (head type and sizes, columns,
label scaling, the encoder's fingerprint, training arguments, validation
metrics, library versions) and ``model.safetensors``.  Nothing is unpickled.
"""

from __future__ import annotations

import copy
import json
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from embedcache import EmbeddingCache, FingerprintMismatchError
from embedcache.encoders import resolve_device
from embedcache.inputs import InputError, check_columns, read_table

from .data import Inputs, column_texts, grouped_split, load_inputs, load_labels
from .metrics import report
from .modules import MODULES, TwoTowerHead
from .train import fit as fit_module
from .train import predict_scaled, to_device

HEADS = ("concat", "two-tower", "ridge")
# Alphas relative to the mean diagonal of X'X, so the grid fits any number of rows
# and any vector scale; the smallest keeps the Cholesky solve stable in float32.
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def check_head(head: str) -> None:
    if head not in (*HEADS, "cross"):
        raise ValueError(f"unknown head {head!r}; choose one of: {', '.join(HEADS)}")


def ridge_features(tables: dict, index: dict, sides) -> np.ndarray:
    """What the ridge baseline sees: the sides joined, with |u-v| and u*v for pairs.

    A condition adds text*condition too: a linear model cannot otherwise tell
    whether a text matches a condition, which the MLP heads learn themselves.
    Filled in place, block by block: the features are the largest array here.
    """
    parts = [(s,) for s in sides]
    if "pair" in sides:
        parts += [("text", "pair", "absdiff"), ("text", "pair", "mul")]
    if "condition" in sides:
        parts.append(("text", "condition", "mul"))
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


def fit_ridge(X, y, X_val=None, y_val=None, alphas=RIDGE_ALPHAS) -> tuple[np.ndarray, np.ndarray, list[float]]:
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
        ridge = Ridge(alpha=candidates, solver="cholesky", copy_X=False).fit(Xj, np.repeat(y[keep, j : j + 1], len(candidates), axis=1))
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


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for dist in ("embedcache", "torch", "numpy", "scikit-learn", "safetensors", "sentence-transformers"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


class HeadModel:
    """A regression head over cached embeddings.

    Parameters are stored as given (scikit-learn style); fitted state ends in ``_``.
    ``head`` is ``concat``, ``two-tower`` or ``ridge``; ``label_range=(lo, hi)``
    bounds predictions; ``batch_size=None`` picks about 100 steps an epoch.
    """

    def __init__(self, head="concat", width=256, dropout=0.1, shared=True, loss="mse", epochs=30, lr=1e-3,
                 weight_decay=0.01, batch_size=None, patience=5, val_fraction=0.1, label_range=None, seed=0,
                 device=None):
        check_head(head)
        self.head, self.width, self.dropout, self.shared = head, width, dropout, shared
        self.loss, self.epochs, self.lr, self.weight_decay = loss, epochs, lr, weight_decay
        self.batch_size, self.patience, self.val_fraction = batch_size, patience, val_fraction
        self.label_range, self.seed, self.device = label_range, seed, device

    def params(self) -> dict:
        return {k: getattr(self, k) for k in ("head", "width", "dropout", "shared", "loss", "epochs", "lr",
                                              "weight_decay", "batch_size", "patience", "val_fraction",
                                              "label_range", "seed")}

    # -- training -------------------------------------------------------------

    def fit(self, cache: EmbeddingCache, data, label_cols, text_col="text", pair_col=None, condition_col=None,
            val_data=None, progress=True) -> HeadModel:
        """Train on ``data`` (a DataFrame or a file); validate on ``val_data`` or a grouped split."""
        if self.head == "cross":
            raise ValueError("the cross head reads both texts in one sequence through the encoder: train it with heads finetune")
        label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        self.columns_ = {"text": text_col, "pair": pair_col, "condition": condition_col}
        if self.head == "two-tower" and (pair_col is None) == (condition_col is None):
            raise ValueError("the two-tower head needs exactly one of a pair column or a condition column")
        df, path = _table(data)
        inputs, y = load_inputs(cache, df, self.columns_, path), load_labels(df, label_cols, path)
        if val_data is not None:
            vdf, vpath = _table(val_data)
            val, y_val = load_inputs(cache, vdf, self.columns_, vpath), load_labels(vdf, label_cols, vpath)
            train = inputs
        else:
            train_rows, val_rows = grouped_split(inputs.index["text"], self.val_fraction, self.seed)
            train, val, y, y_val = inputs.subset(train_rows), inputs.subset(val_rows), y[train_rows], y[val_rows]
        self.encoder_ = {"fingerprint": cache.fingerprint, "name": cache.encoder_name, "load": cache.encoder_spec}
        self.fit_inputs(train, y, val, y_val, labels=label_cols, path=path, progress=progress)
        return self

    def fit_inputs(self, train: Inputs, y: np.ndarray, val: Inputs | None = None, y_val=None, labels=None,
                   path="data", progress=True) -> HeadModel:
        """Train on prepared inputs (vectors and labels already in memory); ``labels`` names y's columns."""
        self.labels_ = list(labels) if labels is not None else [f"label_{j}" for j in range(y.shape[1])]
        if not len(train):
            raise InputError(f"{path}: no training rows")
        self.mean_ = np.nanmean(y, axis=0)
        self.std_ = np.nanstd(y, axis=0)
        constant = [name for name, s in zip(self.labels_, self.std_) if not s > 0]
        if constant:
            raise InputError(f"{path}: label {', '.join(map(repr, constant))} is constant in the training rows; nothing to learn")
        self.sides_, self.dim_ = train.sides, next(iter(train.tables.values())).shape[1]
        y_s = (y - self.mean_) / self.std_
        if self.head == "ridge":
            X = ridge_features(train.tables, train.index, self.sides_)
            X_val = None if val is None else ridge_features(val.tables, val.index, self.sides_)
            y_val_s = None if val is None else (y_val - self.mean_) / self.std_
            self.coef_, self.intercept_, self.alphas_ = fit_ridge(X, y_s, X_val, y_val_s)
            self.history_ = []
        else:
            torch.manual_seed(self.seed)  # the initial weights too: a fixed seed gives identical models
            self.module_ = self._new_module()
            if isinstance(self.module_, TwoTowerHead):
                self.module_.start_from_cosine(*to_device(train.tables, train.index, "cpu"), y_s)
            device = resolve_device(self.device)
            yv = None if val is None else (y_val - self.mean_) / self.std_
            self.history_ = fit_module(
                self.module_, train.tables, train.index, y_s, None if val is None else val.index, yv,
                val_tables=None if val is None else val.tables, scale=self.std_, loss=self.loss,
                epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay, batch_size=self.batch_size,
                patience=self.patience, seed=self.seed, device=device, progress=progress)
            self.module_.to("cpu")
        self.validation_ = None if val is None else report(y_val, self.predict_inputs(val), self.labels_, val.condition_values)
        return self

    def _new_module(self):
        return MODULES[self.head](self.dim_, self.sides_, width=self.width, dropout=self.dropout,
                                  n_outputs=len(self.labels_), shared=self.shared)

    # -- prediction -----------------------------------------------------------

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """``(n, n_labels)`` predictions in label units, bounded by ``label_range``."""
        inputs = inputs.compact()
        if self.head == "ridge":
            # float64, as the torch heads: float32 BLAS sums in an order that depends on the
            # row blocking, so a row's score would change with the rows predicted beside it
            X = ridge_features(inputs.tables, inputs.index, self.sides_).astype(np.float64)
            scaled = X @ self.coef_.T.astype(np.float64) + self.intercept_.astype(np.float64)
        else:
            # float64 on the CPU: a row's prediction does not depend on what else is in its batch
            tables, index = to_device(inputs.tables, inputs.index, "cpu")
            module = copy.deepcopy(self.module_).to("cpu", torch.float64)
            scaled = predict_scaled(module, {s: t.double() for s, t in tables.items()}, index).numpy()
        out = scaled * self.std_ + self.mean_
        if self.label_range is not None:
            out = np.clip(out, *self.label_range)
        return out

    def _check_cache(self, cache: EmbeddingCache) -> None:
        if cache.fingerprint != self.encoder_["fingerprint"]:
            raise FingerprintMismatchError(
                f"the model was trained on vectors of encoder {self.encoder_['name']!r} (fingerprint "
                f"{self.encoder_['fingerprint']}), but cache {cache.path} holds encoder {cache.encoder_name!r} "
                f"(fingerprint {cache.fingerprint}); use a cache built with the model's encoder"
            )

    def own_encoder(self):
        """A fine-tuned model's encoder (its ``encoder/`` directory), loaded once: an embedcache
        Encoder for the concat and two-tower heads, a Backbone (two texts, one sequence) for cross."""
        if getattr(self, "_own_encoder", None) is None:
            path = str(self.directory_ / self.finetuned_["encoder"])
            if self.head == "cross":
                from .backbone import Backbone

                self._own_encoder = Backbone.from_directory(path).to(resolve_device(self.device))
            else:
                from embedcache import load_encoder

                self._own_encoder = load_encoder(path)
        return self._own_encoder

    def _inputs(self, cache, data, columns=None) -> tuple[Inputs, pd.DataFrame, str]:
        df, path = _table(data)
        columns = {**self.columns_, **{k: v for k, v in (columns or {}).items() if v is not None}}
        if getattr(self, "finetuned_", None) is None:
            if cache is None:
                raise ValueError("a frozen head needs the cache of the vectors it was trained on (--cache DIR)")
            self._check_cache(cache)
            return load_inputs(cache, df, columns, path), df, path
        if self.head == "cross":  # both texts in one sequence: nothing to cache per text
            columns = {s: c for s, c in columns.items() if c is not None}
            check_columns(df, list(columns.values()), path)
            texts = {s: column_texts(df, c, path) for s, c in columns.items()}
            second = texts.get("pair", texts.get("condition"))
            joint = self.own_encoder().encode(texts["text"], second, progress=True)
            return Inputs({"text": joint}, {"text": np.arange(len(df))}, texts.get("condition")), df, path
        # the fine-tuned encoder's vectors: from a cache built with it when one is given, else encoded here
        source = cache if cache is not None and cache.fingerprint == self.encoder_["fingerprint"] else self.own_encoder()
        return load_inputs(source, df, columns, path), df, path

    def predict(self, cache: EmbeddingCache, data, columns=None) -> np.ndarray:
        """Predictions for the rows of ``data``; ``columns`` overrides the trained column names."""
        inputs, _, _ = self._inputs(cache, data, columns)
        return self.predict_inputs(inputs)

    def evaluate(self, cache: EmbeddingCache, data, label_cols=None, columns=None) -> tuple[dict, np.ndarray, np.ndarray, Inputs]:
        """Metrics (overall, per label, per condition), the labels, the predictions and the inputs."""
        inputs, df, path = self._inputs(cache, data, columns)
        y = load_labels(df, list(label_cols or self.labels_), path)
        pred = self.predict_inputs(inputs)
        return report(y, pred, list(label_cols or self.labels_), inputs.condition_values), y, pred, inputs

    # -- saving ---------------------------------------------------------------

    def save(self, directory) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.head == "ridge":
            tensors = {"coef": torch.from_numpy(self.coef_), "intercept": torch.from_numpy(self.intercept_)}
        else:
            tensors = {k: v.contiguous() for k, v in self.module_.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"))
        config = {
            "head": self.head, "params": self.params(), "dim": int(self.dim_), "sides": list(self.sides_),
            "columns": self.columns_, "labels": self.labels_,
            "label_mean": self.mean_.tolist(), "label_std": self.std_.tolist(),
            "encoder": self.encoder_, "validation": self.validation_, "history": self.history_,
            "ridge_alphas": getattr(self, "alphas_", None), "finetuned": getattr(self, "finetuned_", None),
            "versions": _versions(),
        }
        (directory / "config.json").write_text(json.dumps(config, indent=1, allow_nan=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory) -> HeadModel:
        directory = Path(directory)
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory} is not a saved head model: {name} is missing")
        config = json.loads((directory / "config.json").read_text())
        params = config["params"]
        if params.get("label_range") is not None:
            params["label_range"] = tuple(params["label_range"])
        model = cls(**params)
        model.dim_, model.sides_, model.columns_ = config["dim"], tuple(config["sides"]), config["columns"]
        model.labels_, model.encoder_ = config["labels"], config["encoder"]
        model.mean_, model.std_ = np.asarray(config["label_mean"]), np.asarray(config["label_std"])
        model.validation_, model.history_ = config["validation"], config["history"]
        model.finetuned_, model.directory_ = config.get("finetuned"), directory
        tensors = load_file(str(directory / "model.safetensors"))
        if model.head == "ridge":
            model.coef_, model.intercept_ = tensors["coef"].numpy(), tensors["intercept"].numpy()
            model.alphas_ = config.get("ridge_alphas")
        else:
            model.module_ = model._new_module()
            model.module_.load_state_dict(tensors)
            model.module_.eval()
        return model


def _table(data) -> tuple[pd.DataFrame, str]:
    if isinstance(data, pd.DataFrame):
        return data, "data"
    return read_table(data), str(data)
