"""HeadModel: a head trained on a table of texts and labels, through an embedcache cache.

A saved model is a directory: ``config.json`` (head type and sizes, columns,
label scaling, the encoder's fingerprint, training arguments, validation
metrics, library versions) and ``model.safetensors``.  Nothing is unpickled.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save as save_tensors

from embedcache import (
    EmbedcacheError,
    EmbeddingCache,
    FingerprintMismatchError,
    InputError,
    ParameterError,
    atomic_directory,
    check_choice,
    check_float,
    check_int,
    check_label_range,
    check_output,
)
from embedcache.encoders import resolve_device, unknown_warning
from embedcache.inputs import check_columns, first_rows, read_table, source

from .data import Inputs, embed, grouped_split, load_inputs, load_labels, side_texts
from .metrics import report
from .modules import MODULES, TwoTowerHead
from .train import LOSSES, predict_scaled, to_device
from .train import fit as fit_module

HEADS = ("concat", "two-tower", "ridge")
PSEUDO_SOURCES = {"labeled", "data"}  # the source column of a heads pseudolabel table
# Alphas relative to the mean diagonal of X'X, so the grid fits any number of rows
# and any vector scale; the smallest keeps the Cholesky solve stable in float32.
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


class ModelError(EmbedcacheError, ValueError):
    """A saved model directory that is incomplete, damaged or inconsistent; the message names the file and field."""


class UnknownTokensWarning(UserWarning):
    """Texts were mostly tokens the encoder does not know."""


class UnseenConditionWarning(UserWarning):
    """A condition (metric) never seen in training was scored."""


def check_head(head: str) -> None:
    if head not in ("auto", *HEADS, "cross"):
        raise ParameterError(f"unknown head {head!r}; choose one of: auto, {', '.join(HEADS)}")


def check_params(p: dict, zero_lr: bool = False) -> None:
    """The hyperparameters of a HeadModel, each within its allowed values (the flags of heads train check the same).

    ``zero_lr``: a learning rate of 0 is allowed (fine-tuning may freeze the head and train the encoder only).
    """
    check_head(p["head"])
    if not isinstance(p["shared"], bool):
        raise ParameterError(f"shared must be True or False, got {p['shared']!r}")
    check_int(p["width"], "width")
    check_float(p["dropout"], "dropout", 0, 1, high_open=True)
    check_choice(p["loss"], "loss", list(LOSSES))
    check_int(p["epochs"], "epochs")
    check_float(p["lr"], "lr", 0, low_open=not zero_lr)
    check_float(p["weight_decay"], "weight_decay", 0)
    if p["batch_size"] is not None:
        check_int(p["batch_size"], "batch_size")
    check_int(p["patience"], "patience", 0)
    check_float(p["val_fraction"], "val_fraction", 0, 1, low_open=True, high_open=True)
    check_label_range(p["label_range"])
    check_int(p["seed"], "seed", 0)


def check_label_values(y: np.ndarray, label_range, labels, path) -> None:
    """Labels outside ``label_range`` are an error naming how many and the first: predictions are clipped to
    the range, so a model trained on them could never be right (0-10 labels under a 0-1 range give 1 everywhere)."""
    if label_range is None:
        return
    lo, hi = label_range
    outside = (y < lo) | (y > hi)  # NaN (a missing label) is neither
    if outside.any():
        i, j = np.argwhere(outside)[0]
        raise InputError(f"{path}: {int(outside.sum())} labels lie outside label_range [{lo:g}, {hi:g}], the first at "
                         f"row {i + 1}, column {labels[j]!r}: {y[i, j]:g}; give the range the labels are on "
                         "(--label-range LO HI) or rescale them")


def resolve_head(head: str, columns: dict) -> str:
    """``auto``: two-tower for a pair of texts (it starts from their calibrated cosine, so it is never
    below it), concat otherwise."""
    if head != "auto":
        return head
    return "two-tower" if columns.get("pair") is not None and columns.get("condition") is None else "concat"


def pseudolabel_rows(df: pd.DataFrame) -> np.ndarray | None:
    """Positions of the labelled rows when ``df`` is a table written by heads pseudolabel, else None."""
    if "source" not in df.columns or "confidence" not in df.columns:
        return None
    source = df["source"].astype(str)
    if not set(source) <= PSEUDO_SOURCES or not (source == "labeled").any():
        return None
    return np.flatnonzero((source == "labeled").to_numpy())


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


def fit_ridge(X, y, X_val=None, y_val=None, alphas=RIDGE_ALPHAS, sample_weight=None) -> tuple[np.ndarray, np.ndarray, list[float]]:
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
            Xj, np.repeat(y[keep, j : j + 1], len(candidates), axis=1), sample_weight=wj)
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
    ``head`` is ``concat``, ``two-tower``, ``ridge`` or ``auto`` (two-tower for pairs,
    concat otherwise; ``head_`` is the one trained); ``label_range=(lo, hi)``
    bounds predictions; ``batch_size=None`` picks about 100 steps an epoch.
    """

    def __init__(self, head="auto", width=256, dropout=0.1, shared=True, loss="mse", epochs=30, lr=1e-3,
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
            template=None, val_data=None, weight_col=None, sample_weight=None, add_missing=False,
            progress=True) -> HeadModel:
        """Train on ``data`` (a DataFrame or a file); validate on ``val_data`` or a grouped split.

        ``template`` composes the text from columns (``'{system}\\n{prompt}'``) instead of
        ``text_col``.  A table written by heads pseudolabel validates on its labelled
        rows only (``validation_rows_`` says so): the teacher's own scores would
        flatter any model.  ``weight_col`` or ``sample_weight`` weights each row's
        loss.  Texts missing from the cache are encoded in memory (``add_missing``
        stores them).
        """
        check_params(self.params())
        label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        self.columns_ = {"text": None if template else text_col, "pair": pair_col, "condition": condition_col,
                         "template": template}
        head = resolve_head(self.head, self.columns_)
        if head == "cross":
            raise ParameterError("the cross head reads both texts in one sequence through the encoder: train it with "
                                 "heads finetune")
        if head == "two-tower" and (pair_col is None) == (condition_col is None):
            raise ParameterError("the two-tower head needs exactly one of a pair column or a condition column")
        df, path = _table(data)
        y = load_labels(df, label_cols, path)  # bad labels stop us before any encoding
        check_label_values(y, self.label_range, label_cols, path)
        weights = _sample_weight(df, weight_col, sample_weight, path)
        inputs = load_inputs(cache, df, self.columns_, path, add_missing)
        labeled = pseudolabel_rows(df) if val_data is None else None
        if val_data is not None:
            vdf, vpath = _table(val_data, "val_data")
            y_val = load_labels(vdf, label_cols, vpath)
            check_label_values(y_val, self.label_range, label_cols, vpath)
            val, train = load_inputs(cache, vdf, self.columns_, vpath, add_missing), inputs
            self.validation_rows_ = f"{len(vdf)} rows of {vpath}"
        else:
            candidates = np.arange(len(df)) if labeled is None else labeled
            _, val_rows = grouped_split(inputs.index["text"][candidates], self.val_fraction, self.seed)
            val_rows = candidates[val_rows]
            # every row sharing a text with a validation row stays out of training too
            in_val = np.isin(inputs.index["text"], inputs.index["text"][val_rows])
            train_rows = np.flatnonzero(~in_val)
            train, val, y, y_val = inputs.subset(train_rows), inputs.subset(val_rows), y[train_rows], y[val_rows]
            weights = None if weights is None else weights[train_rows]
            self.validation_rows_ = (f"{len(val_rows)} held-out rows" if labeled is None else
                                     f"{len(val_rows)} held-out labelled rows (source == 'labeled') of a pseudolabel "
                                     f"table; its {len(df) - len(labeled)} pseudo-labelled rows only train")
        self.encoder_ = {"fingerprint": cache.fingerprint, "name": cache.encoder_name, "load": cache.encoder_spec}
        _warn_unknown(cache, df, path)
        self.fit_inputs(train, y, val, y_val, labels=label_cols, path=path, sample_weight=weights, progress=progress)
        return self

    def fit_inputs(self, train: Inputs, y: np.ndarray, val: Inputs | None = None, y_val=None, labels=None,
                   path="data", sample_weight=None, progress=True) -> HeadModel:
        """Train on prepared inputs (vectors and labels already in memory); ``labels`` names y's columns."""
        self.labels_ = list(labels) if labels is not None else [f"label_{j}" for j in range(y.shape[1])]
        self.head_ = resolve_head(self.head, {s: s for s in train.sides})
        self.conditions_ = None if train.condition_values is None else sorted(set(train.condition_values))
        if not len(train):
            raise InputError(f"{path}: no training rows")
        self.mean_ = np.nanmean(y, axis=0)
        self.std_ = np.nanstd(y, axis=0)
        constant = [name for name, s in zip(self.labels_, self.std_) if not s > 0]
        if constant:
            raise InputError(f"{path}: label {', '.join(map(repr, constant))} is constant in the training rows; nothing to learn")
        self.sides_, self.dim_ = train.sides, next(iter(train.tables.values())).shape[1]
        y_s = (y - self.mean_) / self.std_
        if self.head_ == "ridge":
            X = ridge_features(train.tables, train.index, self.sides_)
            X_val = None if val is None else ridge_features(val.tables, val.index, self.sides_)
            y_val_s = None if val is None else (y_val - self.mean_) / self.std_
            self.coef_, self.intercept_, self.alphas_ = fit_ridge(X, y_s, X_val, y_val_s, sample_weight=sample_weight)
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
                patience=self.patience, seed=self.seed, device=device, sample_weight=sample_weight, progress=progress)
            self.module_.to("cpu")
        self.validation_ = None if val is None else report(y_val, self.predict_inputs(val), self.labels_, val.condition_values)
        return self

    def _new_module(self):
        return MODULES[self.head_](self.dim_, self.sides_, width=self.width, dropout=self.dropout,
                                  n_outputs=len(self.labels_), shared=self.shared)

    # -- prediction -----------------------------------------------------------

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """``(n, n_labels)`` predictions in label units, bounded by ``label_range``."""
        inputs = inputs.compact()
        if self.head_ == "ridge":
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
            if self.head_ == "cross":
                from .backbone import Backbone

                self._own_encoder = Backbone.from_directory(path).to(resolve_device(self.device))
            else:
                from embedcache import load_encoder

                self._own_encoder = load_encoder(path)
        return self._own_encoder

    def _inputs(self, cache, data, columns=None, add_missing=False) -> tuple[Inputs, pd.DataFrame, str]:
        df, path = _table(data)
        columns = {**self.columns_, **{k: v for k, v in (columns or {}).items() if v is not None}}
        if getattr(self, "finetuned_", None) is None:
            if cache is None:
                raise ParameterError("a frozen head needs the cache of the vectors it was trained on (--cache DIR)")
            self._check_cache(cache)
            source = cache
        elif self.head_ == "cross":  # both texts in one sequence: nothing to cache per text
            texts = side_texts(df, columns, path)
            second = texts.get("pair", texts.get("condition"))
            joint = self.own_encoder().encode(texts["text"], second, progress=True)
            return Inputs({"text": joint}, {"text": np.arange(len(df))}, texts.get("condition")), df, path
        else:
            # the fine-tuned encoder's vectors: from a cache built with it when one is given, else encoded here
            source = cache if cache is not None and cache.fingerprint == self.encoder_["fingerprint"] else self.own_encoder()
        inputs = load_inputs(source, df, columns, path, add_missing)
        self._warn_unseen_conditions(source, inputs)
        return inputs, df, path

    def unseen_conditions(self, source, inputs: Inputs) -> list[tuple[str, str, float]]:
        """``(condition, nearest trained condition, cosine)`` for each condition of ``inputs`` not seen in training."""
        trained = getattr(self, "conditions_", None)
        if not trained or inputs.condition_values is None:
            return []
        first = {}  # each condition's vector is in the inputs already: its row in the condition table
        for value, row in zip(inputs.condition_values, inputs.index["condition"]):
            first.setdefault(value, row)
        unseen = sorted(set(first) - set(trained))
        if not unseen:
            return []
        from .neighbours import nearest

        cosine, position = nearest(embed(source, trained), inputs.tables["condition"][[first[c] for c in unseen]], k=1)
        return [(c, trained[int(j)], float(cos)) for c, cos, j in zip(unseen, cosine[:, 0], position[:, 0])]

    def _warn_unseen_conditions(self, source, inputs: Inputs) -> None:
        found = self.unseen_conditions(source, inputs)
        if found:
            shown = "; ".join(f"{c!r} (nearest trained: {n!r}, cosine {cos:.2f})" for c, n, cos in found[:5])
            more = f" and {len(found) - 5} more" if len(found) > 5 else ""
            warnings.warn(f"{len(found)} condition(s) never seen in training are scored from their vectors alone: "
                          f"{shown}{more}", UnseenConditionWarning, stacklevel=3)

    def predict(self, cache: EmbeddingCache, data, columns=None, add_missing=False) -> np.ndarray:
        """Predictions for the rows of ``data``; ``columns`` overrides the trained column names.

        Texts missing from the cache are encoded in memory; ``add_missing=True`` stores them in it.
        """
        inputs, _, _ = self._inputs(cache, data, columns, add_missing)
        return self.predict_inputs(inputs)

    def evaluate(self, cache: EmbeddingCache, data, label_cols=None, columns=None,
                 add_missing=False) -> tuple[dict, np.ndarray, np.ndarray, Inputs]:
        """Metrics (overall, per label, per condition), the labels, the predictions and the inputs."""
        df, path = _table(data)
        y = load_labels(df, list(label_cols or self.labels_), path)
        inputs, _, _ = self._inputs(cache, df, columns, add_missing)
        pred = self.predict_inputs(inputs)
        return report(y, pred, list(label_cols or self.labels_), inputs.condition_values), y, pred, inputs

    # -- saving ---------------------------------------------------------------

    def save(self, directory, overwrite: bool = False, move: dict | None = None) -> Path:
        """Write the model directory atomically: ``config.json`` and ``model.safetensors`` go to a temporary
        directory that replaces ``directory`` only when whole (the old model stays until then).

        An existing ``directory`` is refused unless ``overwrite``.  ``move`` maps names inside the new
        directory to paths moved there (a fine-tuned model's ``encoder/``).  The config records the
        weights' SHA-256, which ``load`` checks.
        """
        directory = check_output(directory, overwrite=overwrite, flag="model directory")
        if self.head_ == "ridge":
            tensors = {"coef": torch.from_numpy(self.coef_), "intercept": torch.from_numpy(self.intercept_)}
        else:
            tensors = {k: v.contiguous() for k, v in self.module_.state_dict().items()}
        weights = save_tensors(tensors)
        config = {
            "head": self.head_, "params": self.params(), "conditions": getattr(self, "conditions_", None),
            "validation_rows": getattr(self, "validation_rows_", None), "dim": int(self.dim_), "sides": list(self.sides_),
            "columns": self.columns_, "labels": self.labels_,
            "label_mean": self.mean_.tolist(), "label_std": self.std_.tolist(),
            "encoder": self.encoder_, "validation": self.validation_, "history": self.history_,
            "ridge_alphas": getattr(self, "alphas_", None), "finetuned": getattr(self, "finetuned_", None),
            "weights_sha256": hashlib.sha256(weights).hexdigest(), "versions": _versions(),
        }
        with atomic_directory(directory) as tmp:
            for name, path in (move or {}).items():
                os.replace(path, tmp / name)
            # written through open(), which honours the umask (save_file leaves 0600: a service account could not read it)
            (tmp / "model.safetensors").write_bytes(weights)
            (tmp / "config.json").write_text(json.dumps(config, indent=1, allow_nan=True) + "\n")
        return directory

    @classmethod
    def load(cls, directory) -> HeadModel:
        """Load a saved model; a missing, damaged or inconsistent file is a ModelError naming the file and field."""
        directory = Path(directory)
        if not directory.is_dir():
            raise ModelError(f"{directory}: no such model directory")
        for name in ("config.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise ModelError(f"{directory} is not a saved head model: {name} is missing")
        where = directory / "config.json"
        try:
            config = json.loads(where.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelError(f"{where}: not readable JSON ({e}); train the model again") from None
        _check_config(config, where)
        weights = (directory / "model.safetensors").read_bytes()
        recorded = config.get("weights_sha256")  # absent in models saved before it was recorded
        if recorded is not None and hashlib.sha256(weights).hexdigest() != recorded:
            raise ModelError(f"{directory / 'model.safetensors'} does not match the checksum in {where} (field "
                             "'weights_sha256'): the directory is half-written or altered; train the model again")
        params = config["params"]
        if params.get("label_range") is not None:
            params["label_range"] = tuple(params["label_range"])
        model = cls(**params)
        model.head_ = config["head"]
        model.conditions_, model.validation_rows_ = config.get("conditions"), config.get("validation_rows")
        model.dim_, model.sides_, model.columns_ = config["dim"], tuple(config["sides"]), config["columns"]
        model.labels_, model.encoder_ = config["labels"], config["encoder"]
        model.mean_, model.std_ = np.asarray(config["label_mean"]), np.asarray(config["label_std"])
        model.validation_, model.history_ = config.get("validation"), config.get("history", [])
        model.finetuned_, model.directory_ = config.get("finetuned"), directory
        try:
            from safetensors.torch import load as load_tensors

            tensors = load_tensors(weights)
        except Exception as e:  # noqa: BLE001 -- safetensors raises its own error types on damaged bytes
            raise ModelError(f"{directory / 'model.safetensors'} cannot be read ({e}); train the model again") from None
        if model.head_ == "ridge":
            n_parts = len(ridge_features({s: np.zeros((1, 1), np.float32) for s in model.sides_},
                                         {s: np.zeros(1, int) for s in model.sides_}, model.sides_)[0])
            expected = {"coef": (len(model.labels_), model.dim_ * n_parts), "intercept": (len(model.labels_),)}
        else:
            with torch.device("meta"):  # shapes only: a tampered width must not allocate terabytes
                expected = {k: tuple(v.shape) for k, v in model._new_module().state_dict().items()}
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        if found != expected:
            name = next((k for k in expected if found.get(k) != expected[k]), next(iter(set(found) - set(expected)), "?"))
            raise ModelError(f"{directory}: tensor {name!r} has shape {found.get(name)} in model.safetensors, but "
                             f"config.json (head {model.head_!r}, dim {model.dim_}, width {model.width}, "
                             f"{len(model.labels_)} labels) needs {expected.get(name)}; the files do not belong together")
        if model.head_ == "ridge":
            model.coef_, model.intercept_ = tensors["coef"].numpy(), tensors["intercept"].numpy()
            model.alphas_ = config.get("ridge_alphas")
        else:
            model.module_ = model._new_module()
            model.module_.load_state_dict(tensors)
            model.module_.eval()
        return model


def _check_config(config, where) -> None:
    """A model's config.json: every field the model needs, of the right type and range (ModelError naming it)."""
    def bad(field, expected, value):
        raise ModelError(f"{where}: field {field!r} must be {expected}, found {json.dumps(value)[:60]}; "
                         "train the model again")

    if not isinstance(config, dict):
        bad("(top level)", "a JSON object", config)
    for field in ("head", "params", "dim", "sides", "columns", "labels", "label_mean", "label_std", "encoder"):
        if field not in config:
            raise ModelError(f"{where}: field {field!r} is missing; train the model again")
    if config["head"] not in (*HEADS, "cross"):
        bad("head", f"one of {', '.join((*HEADS, 'cross'))}", config["head"])
    params = config["params"]
    known = set(_param_names())
    if not isinstance(params, dict) or set(params) != known:
        unknown = sorted(set(params) - known) if isinstance(params, dict) else []
        bad("params", f"an object with exactly {', '.join(sorted(known))}" + (f" (unknown: {', '.join(unknown)})"
                                                                              if unknown else ""), params)
    try:
        check_params(params)
    except ParameterError as e:
        raise ModelError(f"{where}: field 'params': {e}; train the model again") from None
    dim = config["dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        bad("dim", "a whole number >= 1", dim)
    sides = config["sides"]
    if not isinstance(sides, list) or not sides or sides[0] != "text" or not set(sides) <= {"text", "pair", "condition"} \
            or len(set(sides)) != len(sides):
        bad("sides", "a list starting with 'text', of 'text', 'pair', 'condition'", sides)
    labels = config["labels"]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        bad("labels", "a non-empty list of column names", labels)
    for field, positive in (("label_mean", False), ("label_std", True)):
        values = config[field]
        if not (isinstance(values, list) and len(values) == len(labels)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
                        for v in values)):
            bad(field, f"{len(labels)} finite number(s){' > 0' if positive else ''}", values)
    if not isinstance(config["encoder"], dict) or not isinstance(config["encoder"].get("fingerprint"), str):
        bad("encoder", "an object with a string 'fingerprint'", config["encoder"])
    if not isinstance(config["columns"], dict):
        bad("columns", "an object", config["columns"])


def _param_names() -> list[str]:
    """The names of HeadModel's constructor arguments that a config's params hold."""
    return list(HeadModel(head="auto").params())


def _warn_unknown(cache: EmbeddingCache, df: pd.DataFrame, path) -> None:
    """Warn once when the cache's encoder met texts that were mostly unknown tokens (a language it does not cover)."""
    seen = cache.unknown_report()
    if not seen["mostly_unknown"]:
        return
    where = [w or "another file" for w in first_rows(seen["examples"], [(path, df)])]
    warnings.warn(unknown_warning(seen["mostly_unknown"], len(cache), cache.encoder_name, seen["examples"],
                                  seen["languages"], where), UnknownTokensWarning, stacklevel=3)


def _sample_weight(df: pd.DataFrame, weight_col, sample_weight, path) -> np.ndarray | None:
    """Per-row loss weights from a column or an array: finite and non-negative, not all zero."""
    if weight_col is not None and sample_weight is not None:
        raise ParameterError("give weight_col or sample_weight, not both")
    if weight_col is not None:
        check_columns(df, [weight_col], path)
        w = pd.to_numeric(df[weight_col], errors="coerce").to_numpy(dtype=float)
        where = f"{path}: column {weight_col!r}"
    elif sample_weight is not None:
        w = np.asarray(sample_weight, dtype=float).ravel()
        where = "sample_weight"
        if len(w) != len(df):
            raise ParameterError(f"sample_weight has {len(w)} values for {len(df)} rows")
    else:
        return None
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if len(bad):
        raise InputError(f"{where}: expected a finite weight >= 0, found {df[weight_col].iloc[bad[0]] if weight_col else w[bad[0]]!r} "
                         f"at row {bad[0] + 1} ({len(bad)} such rows)")
    if not w.sum() > 0:
        raise InputError(f"{where}: every weight is 0")
    return w


def _table(data, name: str = "data") -> tuple[pd.DataFrame, str]:
    """The table and what errors call it: its file (``read_table`` records it in the DataFrame), else ``name``."""
    if isinstance(data, pd.DataFrame):
        return data, source(data, name)
    return read_table(data), str(data)
