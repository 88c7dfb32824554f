"""HeadModel: a head (a unit from ``heads.head_types``) over a source of vectors, trained on a table of texts and labels.

The vectors come from an embedcache cache (a frozen head) or from the model's
own encoder (a fine-tuned one; through a cache built with it when one is
given).  The head is any registered type; this class knows none by name.  A
saved model is a directory (see ``heads.model_files``): ``config.json`` (head
type and its config, training settings, columns, label scaling, the encoder's
fingerprint, validation metrics, library versions) and ``model.safetensors``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedcache import (
    EmbeddingCache,
    FingerprintMismatchError,
    InputError,
    ParameterError,
    UnknownTokensWarning,
    read_table,
)
from embedcache.toolkit import (
    check_columns,
    check_label_range,
    first_rows,
    inside,
    resolve_device,
    spec_difference,
    table_source,
    unknown_warning,
)

from .config import TrainConfig
from .data import (
    Inputs,
    as_table,
    grouped_split,
    is_data_file,
    joint_inputs,
    load_inputs,
    load_labels,
    plain_table,
    sides_of,
)
from .head_types import check_head_name, head_type, resolve_head
from .intervals import half_widths, interval_report, residual_quantiles
from .metrics import report
from .model_files import ModelError, check_shapes, read_model, write_model
from .neighbours import UnseenConditionWarning, warn_unseen_conditions

PSEUDO_SOURCES = {"labeled", "data"}  # the source column of a heads pseudolabel table

__all__ = ["HeadModel", "ModelError", "UnknownTokensWarning", "UnseenConditionWarning"]


def check_label_values(y: np.ndarray, label_range, labels, path) -> None:
    """Labels outside ``label_range`` are an error naming how many and the first: predictions are clipped to
    the range, so a model trained on them could never be right (0-10 labels under a 0-1 range give 1 everywhere)."""
    if label_range is None:
        return
    lo, hi = check_label_range(label_range)
    outside = (y < lo) | (y > hi)  # NaN (a missing label) is neither
    if outside.any():
        i, j = np.argwhere(outside)[0]
        raise InputError(
            f"{path}: {int(outside.sum())} labels lie outside label_range [{lo:g}, {hi:g}], the first at "
            f"row {i + 1}, column {labels[j]!r}: {y[i, j]:g}; give the range the labels are on "
            "(--label-range LO HI) or rescale them"
        )


def label_scaling(y: np.ndarray, labels, path) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per label: heads learn standardised labels.  A constant label is an error."""
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = np.nanmean(y, axis=0), np.nanstd(y, axis=0)
    huge = [name for name, m, s in zip(labels, mean, std) if not (np.isfinite(m) and np.isfinite(s))]
    if huge:
        j = labels.index(huge[0])
        raise InputError(
            f"{path}: label {huge[0]!r} has values too large to average (up to {np.nanmax(np.abs(y[:, j])):g}); "
            "rescale them to a range such as 0-1 or 0-10"
        )
    constant = [name for name, s in zip(labels, std) if not s > 0]
    if constant:
        raise InputError(
            f"{path}: label {', '.join(map(repr, constant))} is constant in the training rows; nothing to learn"
        )
    return mean, std


class PseudoLabelValidationWarning(UserWarning):
    """Validation rows carry pseudo-labels only: the metrics measure agreement with the labeler."""


def _pseudo_sources(df: pd.DataFrame) -> pd.Series | None:
    """The ``source`` column when ``df`` is a table written by heads pseudolabel, else None."""
    if "source" not in df.columns or "confidence" not in df.columns:
        return None
    source = df["source"].astype(str)
    return source if set(source) <= PSEUDO_SOURCES else None


def _only_pseudo_labels(df: pd.DataFrame) -> bool:
    source = _pseudo_sources(df)
    return source is not None and not (source == "labeled").any()


def pseudolabel_rows(df: pd.DataFrame) -> np.ndarray | None:
    """Positions of the labelled rows when ``df`` is a table written by heads pseudolabel, else None."""
    source = _pseudo_sources(df)
    if source is None or not (source == "labeled").any():
        return None
    return np.flatnonzero((source == "labeled").to_numpy())


class HeadModel:
    """A regression head over cached embeddings.

    ``HeadModel(head="concat", epochs=10)`` or ``HeadModel(TrainConfig(...))``: the
    settings (see ``TrainConfig``) are kept as given in ``config``; fitted state
    ends in ``_``: ``head_`` is the head type trained (``auto`` resolved: two-tower
    for pairs, concat otherwise) and ``unit_`` the trained head.
    """

    def __init__(self, config: TrainConfig | None = None, device=None, **settings):
        config = config or TrainConfig()
        self.config = config.replace(**settings) if settings else config
        self.device = device
        check_head_name(self.config.head, allow_auto=True)

    def params(self) -> dict:
        """The training settings as a JSON object (what ``config.json`` records under ``params``)."""
        return self.config.to_dict()

    # -- training -------------------------------------------------------------

    def fit(self, data, labels, *table_form, cache=None, encoder=None, conditions=None, **options) -> HeadModel:
        """Train on texts and labels; validate on ``val_data`` or a grouped split of the rows.

        ``data`` is a list of texts, of ``(text, pair)`` tuples or of dicts (``text``, ``pair``,
        ``condition``) with ``labels`` their numbers (``(n,)`` or ``(n, n_labels)``) and ``conditions`` one
        condition per text; or a DataFrame or a file with ``labels`` naming the label column(s) and
        ``text_col``, ``pair_col``, ``condition_col`` or ``template`` the text columns.  The vectors come
        from ``cache`` (an EmbeddingCache, or a directory that is built and filled), else from ``encoder``
        (a name or an Encoder; default the embedded all-MiniLM-L6-v2), in memory.  ``fit(cache, table,
        label_cols, ...)``, the order before, still works.  ``options``: see ``fit_table``.
        """
        if isinstance(data, EmbeddingCache):  # the order before: fit(cache, table, label_cols, ...)
            _warn_old_order("fit(cache, table, label_cols)", "fit(table, label_cols, cache=cache)")
            return self.fit_table(data, labels, *table_form, **options)
        if table_form:
            raise ParameterError("give the options of fit by name (text_col=..., val_data=...)")
        source = _vector_source(cache, encoder)
        if cache is not None and not isinstance(cache, EmbeddingCache):
            options.setdefault("add_missing", True)  # a cache directory given to fit is built and filled
        if not isinstance(data, pd.DataFrame) and not is_data_file(data):
            data, labels, columns = plain_table(data, labels, conditions, options.get("template"))
            options = {**columns, **options}
        return self.fit_table(source, data, labels, **options)

    def fit_table(
        self,
        source,
        data,
        label_cols,
        text_col="text",
        pair_col=None,
        condition_col=None,
        template=None,
        val_data=None,
        weight_col=None,
        sample_weight=None,
        add_missing=False,
        progress=True,
    ) -> HeadModel:
        """Train on ``data`` (a DataFrame or a file) with vectors from ``source`` (a cache or an encoder).

        ``template`` composes the text from columns (``'{system}\\n{prompt}'``) instead of
        ``text_col``.  A table written by heads pseudolabel validates on its labelled
        rows only (``validation_rows_`` says so): the teacher's own scores would
        flatter any model.  ``weight_col`` or ``sample_weight`` weights each row's
        loss.  Texts missing from a cache are encoded in memory (``add_missing``
        stores them).
        """
        self.config.check()
        label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        self.columns_ = {
            "text": None if template else text_col,
            "pair": pair_col,
            "condition": condition_col,
            "template": template,
        }
        name = resolve_head(self.config.head, sides_of(self.columns_))
        if head_type(name).joint:
            raise ParameterError(
                f"the {name} head reads both texts in one sequence through the encoder: train it with heads finetune"
            )
        head_type(name).check_sides(sides_of(self.columns_))
        df, path = _table(data)
        y = load_labels(df, label_cols, path)  # bad labels stop us before any encoding
        check_label_values(y, self.config.label_range, label_cols, path)
        weights = _sample_weight(df, weight_col, sample_weight, path)
        inputs = load_inputs(source, df, self.columns_, path, add_missing, progress)
        if val_data is not None:
            vdf, vpath = _table(val_data, "val_data")
            y_val = load_labels(vdf, label_cols, vpath)
            check_label_values(y_val, self.config.label_range, label_cols, vpath)
            val, train = load_inputs(source, vdf, self.columns_, vpath, add_missing, progress), inputs
            self.validation_rows_ = f"{len(vdf)} rows of {vpath}"
        else:
            train_rows, val_rows, self.validation_rows_ = self._split(df, inputs)
            train, val, y, y_val = inputs.subset(train_rows), inputs.subset(val_rows), y[train_rows], y[val_rows]
            weights = None if weights is None else weights[train_rows]
        self.encoder_ = _encoder_record(source)
        _warn_unknown(source, df, path)
        return self.fit_inputs(
            train, y, val, y_val, labels=label_cols, path=path, sample_weight=weights, progress=progress
        )

    def _split(self, df: pd.DataFrame, inputs: Inputs) -> tuple[np.ndarray, np.ndarray, str]:
        """Training and validation rows (no text on both sides) and what the validation rows are.

        A pseudolabel table validates on its labelled rows only."""
        labeled = pseudolabel_rows(df)
        if labeled is None and _only_pseudo_labels(df):
            warnings.warn(
                "the data is a heads pseudolabel table with no labelled rows: validation on it measures "
                "agreement with the labeler, not accuracy; give --val-data (val_data=) with true labels",
                PseudoLabelValidationWarning,
                stacklevel=4,
            )
            what_extra = " (pseudo-labels: agreement with the labeler, not accuracy)"
        else:
            what_extra = ""
        candidates = np.arange(len(df)) if labeled is None else labeled
        _, val_rows = grouped_split(inputs.index["text"][candidates], self.config.val_fraction, self.config.seed)
        val_rows = candidates[val_rows]
        # every row sharing a text with a validation row stays out of training too
        in_val = np.isin(inputs.index["text"], inputs.index["text"][val_rows])
        what = (
            f"{len(val_rows)} held-out rows{what_extra}"
            if labeled is None
            else f"{len(val_rows)} held-out labelled rows (source == 'labeled') of a pseudolabel "
            f"table; its {len(df) - len(labeled)} pseudo-labelled rows only train"
        )
        return np.flatnonzero(~in_val), val_rows, what

    def fit_inputs(
        self,
        train: Inputs,
        y: np.ndarray,
        val: Inputs | None = None,
        y_val=None,
        labels=None,
        path="data",
        sample_weight=None,
        progress=True,
    ) -> HeadModel:
        """Train on prepared inputs (vectors and labels already in memory); ``labels`` names y's columns."""
        self.config.check()
        self.labels_ = list(labels) if labels is not None else [f"label_{j}" for j in range(y.shape[1])]
        self.head_ = resolve_head(self.config.head, train.sides)
        self.conditions_ = None if train.condition_values is None else sorted(set(train.condition_values))
        if not len(train):
            raise InputError(f"{path}: no training rows")
        self.mean_, self.std_ = label_scaling(y, self.labels_, path)
        self.sides_, self.dim_ = train.sides, next(iter(train.tables.values())).shape[1]
        with torch.device("meta"):  # its fit draws the weights, from the seed
            unit = head_type(self.head_).build(self.dim_, self.sides_, len(self.labels_), self.config)
        self.history_ = unit.fit(
            train,
            (y - self.mean_) / self.std_,
            val,
            None if val is None else (y_val - self.mean_) / self.std_,
            self.config,
            scale=self.std_,
            sample_weight=sample_weight,
            device=resolve_device(self.device),
            progress=progress,
        )
        self.unit_ = unit
        self.validation_ = self.calibration_ = None
        if val is not None:
            self.validate(y_val, self.predict_inputs(val), val.condition_values)
        return self

    def validate(self, y_val: np.ndarray, pred: np.ndarray, conditions=None) -> HeadModel:
        """Record the validation metrics and the residuals that intervals are drawn from."""
        self.validation_ = report(y_val, pred, self.labels_, conditions)
        self.calibration_ = residual_quantiles(y_val, pred)
        return self

    # -- prediction -----------------------------------------------------------

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """``(n, n_labels)`` predictions in label units, bounded by ``label_range``."""
        out = self.unit_.predict(inputs.compact()) * self.std_ + self.mean_
        if self.config.label_range is not None:
            out = np.clip(out, *self.config.label_range)
        return out

    def own_encoder(self):
        """The encoder of this model's vectors, loaded once: a fine-tuned model's own (its ``encoder/``
        directory; a Backbone for a head that reads two texts as one sequence), else the encoder recorded
        in ``config.json``, checked against the recorded fingerprint."""
        if getattr(self, "_own_encoder", None) is not None:
            return self._own_encoder
        from embedcache import load_encoder

        if getattr(self, "finetuned_", None) is not None:
            path = self._finetuned_encoder_path()
            encoder = load_encoder(path)  # its fingerprint is checked before a vector of it is used
            if self.encoder_["fingerprint"] not in encoder.fingerprints():
                raise self._mismatch(
                    f"its encoder {path} now has fingerprint {encoder.fingerprint} (other weights "
                    "or library versions): the directory was altered; fine-tune again"
                )
            if head_type(self.head_).joint:
                from .finetuning.backbone import Backbone

                self._own_encoder = Backbone.from_directory(path).to(resolve_device(self.device))
            else:
                self._own_encoder = encoder
            return self._own_encoder
        spec = self.encoder_.get("load")
        if spec is None:
            raise ParameterError(
                f"the model was trained on vectors of a custom encoder ({self.encoder_['name']!r}) "
                "it cannot load: pass the cache of those vectors (cache=..., --cache DIR)"
            )
        encoder = load_encoder(device=self.device, **spec)
        if encoder.fingerprint != self.encoder_["fingerprint"]:
            raise self._mismatch(
                f"loading it now gives fingerprint {encoder.fingerprint} (other weights or library "
                "versions); pass the cache of the training vectors (cache=..., --cache DIR)"
            )
        self._own_encoder = encoder
        return encoder

    def _finetuned_encoder_path(self) -> str:
        """The fine-tuned encoder's directory: a plain folder inside the model directory, nothing else."""
        where = self.directory_ / "config.json"
        name = self.finetuned_.get("encoder") if isinstance(self.finetuned_, dict) else None
        if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ModelError(
                f"{where}: field 'finetuned.encoder' must name a folder inside the model directory, "
                f"found {json.dumps(name)[:60]}; fine-tune again"
            )
        path = self.directory_ / name
        if path.is_symlink() or not path.is_dir() or not inside(path, self.directory_):
            raise ModelError(
                f"{where}: field 'finetuned.encoder' names {path}, which is not a folder inside the "
                "model directory; fine-tune again"
            )
        return str(path)

    def vector_source(self, cache: EmbeddingCache | None):
        """Where this model's vectors come from: ``cache`` when it holds the model's encoder's vectors (a
        frozen head's cache must), else the model's own encoder (``own_encoder``)."""
        if (
            cache is not None
            and getattr(self, "finetuned_", None) is None
            and cache.fingerprint != self.encoder_["fingerprint"]
        ):
            differ = spec_difference(self.encoder_.get("load"), cache.encoder_spec)
            raise self._mismatch(
                f"cache {cache.path} holds encoder {cache.encoder_name!r} (fingerprint "
                f"{cache.fingerprint}); they differ in: {differ}; use a cache built with the "
                "model's encoder"
            )
        if cache is not None and cache.fingerprint == self.encoder_["fingerprint"] and not head_type(self.head_).joint:
            return cache
        return self.own_encoder()

    def _mismatch(self, found: str) -> FingerprintMismatchError:
        return FingerprintMismatchError(
            f"the model was trained on vectors of encoder {self.encoder_['name']!r} "
            f"(fingerprint {self.encoder_['fingerprint']}), but {found}"
        )

    def _inputs(
        self, cache, data, columns=None, add_missing=False, conditions=None, progress: bool = True
    ) -> tuple[Inputs, pd.DataFrame, str]:
        for side in ("pair", "condition"):
            given = (columns or {}).get(side)
            if given is not None and side not in self.sides_:
                raise ParameterError(
                    f"the model reads {', '.join(self.sides_)} only, not a {side}: leave out the "
                    f"{side} column ({given!r}, --{side}-col) or train a model that reads one"
                )
        columns = {**self.columns_, **{k: v for k, v in (columns or {}).items() if v is not None}}
        df, path = as_table(data, columns, self.sides_, conditions)
        source = self.vector_source(cache)
        if head_type(self.head_).joint:  # both texts in one sequence: nothing to cache per text
            return joint_inputs(source, df, columns, path, progress), df, path
        inputs = load_inputs(source, df, columns, path, add_missing, progress)
        warn_unseen_conditions(getattr(self, "conditions_", None), source, inputs)
        return inputs, df, path

    def predict(
        self,
        data,
        cache: EmbeddingCache | None = None,
        *,
        columns=None,
        conditions=None,
        interval: float | None = None,
        add_missing=False,
        progress: bool = True,
        squeeze: bool = True,
    ):
        """Scores for ``data``, shaped as sentence-transformers and SetFit return them: a float for one text,
        ``(n,)`` for a model of one label, ``(n, n_labels)`` for several (``(n_labels,)`` for one text);
        ``squeeze=False`` always gives ``(n, n_labels)``.  With ``interval=0.9``, ``(scores, lower, upper)``,
        bounds shaped like the scores that hold the truth for at least 90% of rows like the validation rows
        (split conformal).

        ``data``: one text, a list of texts, of ``(text, pair)`` / ``(text, condition)`` tuples or of dicts
        (``{"text": ..., "condition": ...}``, or the trained column names), a DataFrame, or a file path;
        ``conditions`` gives a list of texts their conditions.  The vectors come from ``cache`` for the texts
        it holds (it is never written unless ``add_missing``), the rest from the model's encoder, loaded on
        first use.  ``columns`` overrides the trained column names.  ``predict(cache, data)``, the order of
        embedcache 0.1, still works.  ``progress``: bars while texts are encoded.
        """
        if data is None or isinstance(data, EmbeddingCache):  # the 0.1 order: predict(cache or None, data)
            _warn_old_order("predict(cache, data)", "predict(data, cache=cache)")
            data, cache = cache, data
        inputs, _, _ = self._inputs(cache, data, columns, add_missing, conditions, progress)
        scores = self.predict_inputs(inputs)
        out = [scores] if interval is None else [scores, *self.bounds(scores, interval)]
        if squeeze:
            one = isinstance(data, str) and not is_data_file(data)
            out = [_squeezed(a, one) for a in out]
        return out[0] if interval is None else tuple(out)

    def bounds(self, scores: np.ndarray, interval: float) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds around ``scores`` holding the truth for at least ``interval`` of rows."""
        half = half_widths(getattr(self, "calibration_", None), interval)
        lower, upper = scores - half, scores + half
        if self.config.label_range is not None:
            lower, upper = np.clip(lower, *self.config.label_range), np.clip(upper, *self.config.label_range)
        return lower, upper

    def predict_table(
        self,
        data,
        cache: EmbeddingCache | None = None,
        columns=None,
        id_col=None,
        decimals=None,
        add_missing=False,
        interval: float | None = None,
        progress: bool = True,
    ) -> pd.DataFrame:
        """Predictions as a table: ``id`` (from ``id_col``, else an ``id`` column, else the row number) and
        ``score`` (a column per label when there are several), with ``lower`` and ``upper`` for an
        ``interval``, rounded to ``decimals`` when given.  ``predict_table(cache, data)``, the order before,
        still works, with a FutureWarning."""
        if data is None or isinstance(data, EmbeddingCache):
            _warn_old_order("predict_table(cache, data)", "predict_table(data, cache=cache)")
            data, cache = cache, data
        df, path = _table(data)
        if id_col is not None and id_col not in df.columns:
            raise InputError(f"{path}: no column {id_col!r}; available columns: {', '.join(map(str, df.columns))}")
        pred = self.predict(df, cache, columns=columns, add_missing=add_missing, progress=progress, squeeze=False)
        names = ["score"] if len(self.labels_) == 1 else self.labels_
        out = {n: pred[:, j] for j, n in enumerate(names)}
        if interval is not None:
            lower, upper = self.bounds(pred, interval)
            for j, n in enumerate(names):
                prefix = "" if len(names) == 1 else f"{n}_"
                out[f"{prefix}lower"], out[f"{prefix}upper"] = lower[:, j], upper[:, j]
        if decimals is not None:
            out = {
                n: (v.round(decimals).astype(np.int64) if decimals <= 0 else v.round(decimals))  # 5, not 5.0
                for n, v in out.items()
            }
        id_col = id_col or ("id" if "id" in df.columns else None)
        ids = df[id_col].tolist() if id_col else list(range(1, len(df) + 1))
        return pd.DataFrame({"id": ids, **out})

    def evaluate(
        self,
        data,
        cache: EmbeddingCache | None = None,
        label_cols=None,
        columns=None,
        add_missing=False,
        interval: float | None = None,
        group_col=None,
        progress: bool = True,
    ) -> tuple[dict, np.ndarray, np.ndarray, Inputs]:
        """Metrics (overall, per label, per condition), the labels, the predictions and the inputs.

        With ``group_col`` (a column or a list of them), ``metrics["per_group"]`` holds the metrics per value of
        that column (a language, a source), or per combination of values (``"hi / harm"``) of several.  With ``interval``, ``metrics["interval"]`` holds the empirical coverage and
        mean width of the model's intervals at that level.  ``evaluate(cache, data)``, the order before, still
        works, with a FutureWarning."""
        if data is None or isinstance(data, EmbeddingCache):
            _warn_old_order("evaluate(cache, data)", "evaluate(data, cache=cache)")
            data, cache = cache, data
        df, path = _table(data)
        y = load_labels(df, list(label_cols or self.labels_), path)
        group_cols = [group_col] if isinstance(group_col, str) else list(group_col or [])
        if group_cols:
            check_columns(df, group_cols, path)
        inputs, _, _ = self._inputs(cache, df, columns, add_missing, progress=progress)
        pred = self.predict_inputs(inputs)
        groups = df[group_cols].astype(str).agg(" / ".join, axis=1).tolist() if group_cols else None
        metrics = report(y, pred, list(label_cols or self.labels_), inputs.condition_values, groups)
        if interval is not None:
            metrics["interval"] = interval_report(y, *self.bounds(pred, interval), interval)
        return metrics, y, pred, inputs

    # -- saving ---------------------------------------------------------------

    def save(self, directory, overwrite: bool = False, move: dict | None = None) -> Path:
        """Write the model directory atomically: the old one stays until the new one is whole.

        An existing ``directory`` is refused unless ``overwrite``.  ``move`` maps names inside the new
        directory to paths moved there (a fine-tuned model's ``encoder/``).  The config records the
        weights' SHA-256, which ``load`` checks.
        """
        config = {
            "head": self.head_,
            "head_config": self.unit_.config(),
            "params": self.params(),
            "conditions": getattr(self, "conditions_", None),
            "validation_rows": getattr(self, "validation_rows_", None),
            "dim": int(self.dim_),
            "sides": list(self.sides_),
            "columns": self.columns_,
            "labels": self.labels_,
            "label_mean": self.mean_.tolist(),
            "label_std": self.std_.tolist(),
            "encoder": self.encoder_,
            "validation": self.validation_,
            "history": self.history_,
            "finetuned": getattr(self, "finetuned_", None),
            "calibration": getattr(self, "calibration_", None),
        }
        return write_model(directory, config, self.unit_.state(), overwrite=overwrite, move=move)

    @classmethod
    def load(cls, directory) -> HeadModel:
        """Load a saved model; a missing, damaged or inconsistent file is a ModelError naming the file and field."""
        directory = Path(directory)
        config, tensors = read_model(directory)
        settings = TrainConfig.from_dict(config["params"])
        dim, sides, labels = config["dim"], tuple(config["sides"]), config["labels"]
        unit = _saved_unit(config, tensors, settings, directory)
        model = cls.from_trained(
            settings,
            config["head"],
            unit,
            sides=sides,
            dim=dim,
            columns=config["columns"],
            labels=labels,
            mean=config["label_mean"],
            std=config["label_std"],
            encoder=config["encoder"],
            history=config.get("history", []),
            finetuned=config.get("finetuned"),
            directory=directory,
        )
        model.conditions_, model.validation_rows_ = config.get("conditions"), config.get("validation_rows")
        model.validation_, model.calibration_ = config.get("validation"), config.get("calibration")
        return model

    @classmethod
    def from_trained(
        cls,
        config: TrainConfig,
        head: str,
        unit,
        *,
        sides,
        dim: int,
        columns: dict,
        labels,
        mean,
        std,
        encoder: dict,
        history=(),
        finetuned: dict | None = None,
        directory=None,
        own_encoder=None,
    ) -> HeadModel:
        """A model around a head trained elsewhere (fine-tuning trains it with the encoder) or loaded.

        ``head`` names its type, ``unit`` is the trained head; ``encoder`` records the fingerprint of the
        vectors it reads; ``finetuned`` (with ``directory``) says where its own encoder is, and
        ``own_encoder`` is that encoder when already in memory.
        """
        model = cls(config)
        model.head_, model.unit_, model.sides_, model.dim_ = head, unit, tuple(sides), dim
        model.columns_, model.labels_ = columns, list(labels)
        model.mean_, model.std_ = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
        model.encoder_, model.history_, model.finetuned_ = encoder, list(history), finetuned
        model.directory_, model._own_encoder = None if directory is None else Path(directory), own_encoder
        model.conditions_, model.validation_rows_, model.validation_, model.calibration_ = None, None, None, None
        return model


class ArgumentOrderWarning(FutureWarning):
    """A HeadModel method called with the cache first, the order of embedcache 0.1: data comes first now."""


def _warn_old_order(old: str, new: str) -> None:
    # FutureWarning: shown to users (once per calling line, Python's default), unlike a DeprecationWarning
    warnings.warn(
        f"HeadModel.{old} is the order of embedcache 0.1; write HeadModel.{new} (the old order keeps working)",
        ArgumentOrderWarning,
        stacklevel=3,
    )


def _squeezed(scores: np.ndarray, one: bool):
    """``(n, k)`` scores as predict returns them: a label axis only for several labels, a row axis only
    for several texts (a float for one text and one label)."""
    if scores.shape[1] == 1:
        scores = scores[:, 0]
    return (scores[0].item() if scores.ndim == 1 else scores[0]) if one else scores


def _saved_unit(config: dict, tensors: dict, settings: TrainConfig, directory: Path):
    """The trained head of a saved model, its tensors' shapes checked against its config before any is allocated."""
    dim, sides, n_outputs = config["dim"], tuple(config["sides"]), len(config["labels"])
    kind = head_type(config["head"])
    with torch.device("meta"):  # shapes only: a tampered width must not allocate terabytes
        built = kind.build(dim, sides, n_outputs, settings).config()
        # the model's own fields (dim, sides, labels) are the truth; models saved before head_config have none
        saved = config.get("head_config") or {"alphas": config.get("ridge_alphas")}
        head_config = {k: v for k, v in {**built, **saved}.items() if k in built}
        head_config.update(dim=dim, sides=list(sides), n_outputs=n_outputs)
        try:
            unit = kind.from_config(head_config)  # on the meta device: load_state allocates it, drawing nothing random
        except (TypeError, ValueError, KeyError) as e:
            raise ModelError(
                f"{directory / 'config.json'}: field 'head_config' does not build a {config['head']!r} "
                f"head ({e}); train the model again"
            ) from None
        expected = unit.state_shapes()
    check_shapes(tensors, expected, directory, config, head_config)
    return unit.load_state(tensors)


def _vector_source(cache, encoder):
    """A cache (opened, or built with ``encoder`` where the directory is new) or an encoder."""
    from embedcache import Encoder, load_encoder

    if isinstance(cache, EmbeddingCache):
        return cache
    if encoder is not None and not isinstance(encoder, Encoder):
        encoder = load_encoder(encoder)
    if cache is None:
        return encoder if encoder is not None else load_encoder()
    from embedcache import CacheNotFoundError

    try:
        return EmbeddingCache(cache, encoder)
    except CacheNotFoundError:
        return EmbeddingCache(cache, encoder or load_encoder())


def _encoder_record(source) -> dict:
    """What a model keeps of the encoder of its vectors: fingerprint, name and how to load it again."""
    if isinstance(source, EmbeddingCache):
        return {"fingerprint": source.fingerprint, "name": source.encoder_name, "load": source.encoder_spec}
    return {"fingerprint": source.fingerprint, "name": source.name, "load": source.spec}


def _warn_unknown(source, df: pd.DataFrame, path) -> None:
    """Warn once when the encoder met texts that were mostly unknown tokens (a language it does not cover)."""
    seen = source.unknown_report()
    if not seen["mostly_unknown"]:
        return
    where = [w or "another file" for w in first_rows(seen["examples"], [(path, df)])]
    total, name = (len(source), source.encoder_name) if isinstance(source, EmbeddingCache) else (len(df), source.name)
    warnings.warn(
        unknown_warning(seen["mostly_unknown"], total, name, seen["examples"], seen["languages"], where),
        UnknownTokensWarning,
        stacklevel=4,
    )


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
        raise InputError(
            f"{where}: expected a finite weight >= 0, found {df[weight_col].iloc[bad[0]] if weight_col else w[bad[0]]!r} "
            f"at row {bad[0] + 1} ({len(bad)} such rows)"
        )
    if not w.sum() > 0:
        raise InputError(f"{where}: every weight is 0")
    return w


def _table(data, name: str = "data") -> tuple[pd.DataFrame, str]:
    """The table and what errors call it: its file (``read_table`` records it in the DataFrame), else ``name``."""
    if isinstance(data, pd.DataFrame):
        return data, table_source(data, name)
    return read_table(data), str(data)
