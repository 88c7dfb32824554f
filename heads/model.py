"""HeadModel: a head (a unit from ``heads.head_types``) over a source of vectors, trained on a table of texts and labels.

The vectors come from a cache or from the model's own encoder (``heads.vectors``); the rows it trains on are
``heads.training_rows``'; a saved model is a directory (``heads.model_files``).  It knows no head type by name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from embedcache import (
    EmbeddingCache,
    InputError,
    ParameterError,
    UnknownTokensWarning,
)
from embedcache.toolkit import resolve_device

from .call_forms import ArgumentOrderWarning, data_first, group_values, score_table, squeezed, warn_old_order
from .config import TrainConfig
from .data import (
    Inputs,
    is_data_file,
    load_inputs,
    load_labels,
    plain_table,
    sides_of,
)
from .ensemble import Ensemble, fit_units
from .head_types import check_frozen_head, check_head_name, head_type, layer_weights, reading_layers, resolve_head
from .intervals import interval_reports, normalized_quantiles, residual_quantiles, row_half_widths
from .metrics import report
from .model_files import ModelError, load_model, model_config, set_trained, write_model
from .neighbours import UnseenConditionWarning
from .search import search_fit
from .training_rows import (
    label_scaling,
    labelled_table,
    row_weights,
    split_rows,
    table_of,
    warn_unknown,
)
from .vectors import (
    encoder_record,
    encoder_records,
    feature_layers,
    joined_source,
    load_recorded_encoder,
    open_source,
    prediction_inputs,
    usable_cache,
)

__all__ = ["ArgumentOrderWarning", "HeadModel", "ModelError", "UnknownTokensWarning", "UnseenConditionWarning"]


class HeadModel:
    """A regression head over cached embeddings.  ``HeadModel(head="concat", epochs=10)`` or ``HeadModel(TrainConfig(
    ...))``: the settings are kept as given in ``config``; fitted state ends in ``_``: ``head_`` is the head type
    trained (``auto`` resolved: two-tower for pairs, concat otherwise) and ``unit_`` the trained head."""

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
            warn_old_order("fit(cache, table, label_cols)", "fit(table, label_cols, cache=cache)")
            return self.fit_table(data, labels, *table_form, **options)
        if table_form:
            raise ParameterError("give the options of fit by name (text_col=..., val_data=...)")
        source = open_source(cache, encoder)
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
        ``template`` composes the text from columns (``'{system}\\n{prompt}'``) instead of ``text_col``; a heads
        pseudolabel table validates on its labelled rows only (``validation_rows_`` says so); ``weight_col`` or
        ``sample_weight`` weights each row's loss; ``add_missing`` stores texts missing from a cache."""
        self.config.check()
        label_cols = [label_cols] if isinstance(label_cols, str) else list(label_cols)
        if self.config.head == "search":  # each candidate fits these rows; self becomes the best
            columns = {"text_col": text_col, "pair_col": pair_col, "condition_col": condition_col, "template": template}
            rest = {"weight_col": weight_col, "sample_weight": sample_weight, "add_missing": add_missing}
            return search_fit(self, source, data, label_cols, val_data, {**columns, **rest, "progress": progress})
        self.columns_ = {
            "text": None if template else text_col,
            "pair": pair_col,
            "condition": condition_col,
            "template": template,
        }
        check_frozen_head(self.config.head, sides_of(self.columns_))
        df, path, y = labelled_table(data, label_cols, self.config.label_range)  # bad labels stop us before encoding
        weights = row_weights(df, weight_col, sample_weight, path)
        self.layers_ = feature_layers(source, self.config.features)
        inputs = load_inputs(source, df, self.columns_, path, add_missing, progress, self.layers_)
        if val_data is not None:
            vdf, vpath, y_val = labelled_table(val_data, label_cols, self.config.label_range, "val_data")
            val, train = load_inputs(source, vdf, self.columns_, vpath, add_missing, progress, self.layers_), inputs
            self.validation_rows_ = f"{len(vdf)} rows of {vpath}"
        else:
            train_rows, val_rows, self.validation_rows_ = split_rows(
                df, inputs, self.config.val_fraction, self.config.seed
            )
            train, val, y, y_val = inputs.subset(train_rows), inputs.subset(val_rows), y[train_rows], y[val_rows]
            weights = None if weights is None else weights[train_rows]
        self.encoder_, self.encoders_ = encoder_record(source), encoder_records(source)
        warn_unknown(source, df, path)
        return self.fit_inputs(
            train, y, val, y_val, labels=label_cols, path=path, sample_weight=weights, progress=progress
        )

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
        first = next(iter(train.tables.values()))  # (m, dim), or (m, n_layers, dim) layer vectors
        self.sides_, self.dim_ = train.sides, first.shape[-1]

        def new_unit():
            with torch.device("meta"):  # its fit draws the weights, from the seed
                unit = head_type(self.head_).build(self.dim_, self.sides_, len(self.labels_), self.config)
                return reading_layers(unit, first.shape[1]) if first.ndim == 3 else unit

        y_std, y_val_std = (y - self.mean_) / self.std_, None if val is None else (y_val - self.mean_) / self.std_
        fitting = {"sample_weight": sample_weight, "scale": self.std_, "device": resolve_device(self.device)}
        self.unit_, self.history_ = fit_units(
            new_unit, train, y_std, val, y_val_std, self.config, **fitting, progress=progress
        )
        self.layer_weights_ = layer_weights(self.unit_)  # what a mix of layer vectors learned, per layer
        self.validation_ = self.calibration_ = None
        if val is not None:
            pred, spread = self.scored_inputs(val)
            self.validate(y_val, pred, val.condition_values, spread)
        return self

    def validate(self, y_val: np.ndarray, pred: np.ndarray, conditions=None, spread=None) -> HeadModel:
        """Record the validation metrics and the residuals intervals are drawn from (divided by ``spread``: an ensemble's)."""
        self.validation_ = report(y_val, pred, self.labels_, conditions)
        self.calibration_ = residual_quantiles(y_val, pred)
        if spread is not None:
            self.calibration_["normalized"] = normalized_quantiles(y_val, pred, spread)
        return self

    # -- prediction -----------------------------------------------------------

    def scored_inputs(self, inputs: Inputs, needed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """``predict_inputs``' scores and an ensemble's members' standard deviation per row in label units (None
        for one head; a ParameterError where ``needed``), from one pass of the members."""
        if isinstance(self.unit_, Ensemble):
            each = self.unit_.predictions(inputs.compact())
            raw, spread = each.mean(axis=0), each.std(axis=0, ddof=1) * self.std_
        elif needed:
            raise ParameterError("std=True (--std) is the spread of an ensemble's members: train with ensemble=K")
        else:
            raw, spread = self.unit_.predict(inputs.compact()), None
        out = raw * self.std_ + self.mean_
        return (out if self.config.label_range is None else np.clip(out, *self.config.label_range)), spread

    def predict_inputs(self, inputs: Inputs) -> np.ndarray:
        """``(n, n_labels)`` predictions in label units, bounded by ``label_range``."""
        return self.scored_inputs(inputs)[0]

    def own_encoder(self):
        """The encoder of this model's vectors, loaded once (see ``heads.vectors.load_recorded_encoder``)."""
        if getattr(self, "_own_encoder", None) is None:
            joint = head_type(self.head_).joint
            finetuned, directory = getattr(self, "finetuned_", None), getattr(self, "directory_", None)
            self._own_encoder = load_recorded_encoder(self.encoder_, finetuned, directory, joint, self.device)
        return self._own_encoder

    def vector_source(self, cache: EmbeddingCache | None):
        """Where this model's vectors come from: ``cache`` when it holds the model's encoder's vectors (a
        frozen head's cache must), else the model's own encoder (``own_encoder``)."""
        if getattr(self, "encoders_", None):  # several encoders' vectors side by side, each loaded once
            return joined_source(self.encoders_, cache, self.__dict__.setdefault("_own_encoders", {}), self.device)
        if usable_cache(self.encoder_, getattr(self, "finetuned_", None), cache) and not head_type(self.head_).joint:
            return cache
        return self.own_encoder()

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
        std: bool = False,
    ):
        """Scores for ``data``, shaped as sentence-transformers and SetFit return them: a float for one text,
        ``(n,)`` for a model of one label, ``(n, n_labels)`` for several (``(n_labels,)`` for one text);
        ``squeeze=False`` always gives ``(n, n_labels)``.  With ``interval=0.9``, ``(scores, lower, upper)``,
        bounds shaped like the scores that hold the truth for at least 90% of rows like the validation rows
        (split conformal; an ensemble's are as wide as its members disagree on the row).  ``std=True`` (an
        ensemble) appends the members' standard deviation per row, shaped like the scores.

        ``data``: one text, a list of texts, of ``(text, pair)`` / ``(text, condition)`` tuples or of dicts
        (``{"text": ..., "condition": ...}``, or the trained column names), a DataFrame, or a file path;
        ``conditions`` gives a list of texts their conditions.  The vectors come from ``cache`` for the texts
        it holds (it is never written unless ``add_missing``), the rest from the model's encoder, loaded on
        first use.  ``columns`` overrides the trained column names.  ``predict(cache, data)``, the order of
        embedcache 0.1, still works.  ``progress``: bars while texts are encoded.
        """
        data, cache = data_first(data, cache, "predict")
        inputs = prediction_inputs(self, cache, data, columns, add_missing, conditions, progress)
        scores, spread = self.scored_inputs(inputs, needed=std)
        out = [scores] if interval is None else [scores, *self.bounds(scores, interval, spread)]
        out += [spread] if std else []
        if squeeze:
            one = isinstance(data, str) and not is_data_file(data)
            out = [squeezed(a, one) for a in out]
        return out[0] if len(out) == 1 else tuple(out)

    def bounds(self, scores: np.ndarray, interval: float, spread=None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds around ``scores`` holding the truth for at least ``interval`` of rows (as wide
        as an ensemble's members disagree, given their ``spread``)."""
        half = row_half_widths(getattr(self, "calibration_", None), interval, spread)
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
        std: bool = False,
    ) -> pd.DataFrame:
        """Predictions as a table: ``id`` (from ``id_col``, else an ``id`` column, else the row number) and
        ``score`` (a column per label when there are several), with ``lower`` and ``upper`` for an
        ``interval`` and ``std`` (an ensemble's spread) for ``std=True``, rounded to ``decimals`` when given.  ``predict_table(cache, data)``, the order before,
        still works, with a FutureWarning."""
        data, cache = data_first(data, cache, "predict_table")
        df, path = table_of(data)
        if id_col is not None and id_col not in df.columns:
            raise InputError(f"{path}: no column {id_col!r}; available columns: {', '.join(map(str, df.columns))}")
        inputs = prediction_inputs(self, cache, df, columns, add_missing, progress=progress)
        pred, spread = self.scored_inputs(inputs, needed=std)
        bounds = None if interval is None else self.bounds(pred, interval, spread)
        return score_table(df, pred, self.labels_, bounds, decimals, id_col, spread if std else None)

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

        ``group_col`` (one column or several): ``metrics["per_group"]`` per value (``"hi"``) or combination
        (``"hi / harm"``).  ``interval``: ``metrics["interval"]``, the coverage and mean width of the model's
        intervals at that level.  ``evaluate(cache, data)``, the order before, works with a FutureWarning."""
        data, cache = data_first(data, cache, "evaluate")
        df, path = table_of(data)
        y = load_labels(df, list(label_cols or self.labels_), path)
        inputs = prediction_inputs(self, cache, df, columns, add_missing, progress=progress)
        pred, spread = self.scored_inputs(inputs)
        groups = group_values(df, group_col, path)
        metrics = report(y, pred, list(label_cols or self.labels_), inputs.condition_values, groups)
        if interval is not None:  # an ensemble's also against one width per label; per group too
            constant = None if spread is None else self.bounds(pred, interval)
            metrics |= interval_reports(y, self.bounds(pred, interval, spread), constant, interval, groups)
        return metrics, y, pred, inputs

    # -- saving ---------------------------------------------------------------

    def save(self, directory, overwrite: bool = False, move: dict | None = None) -> Path:
        """Write the model directory atomically: the old one stays until the new one is whole.

        An existing ``directory`` is refused unless ``overwrite``.  ``move`` maps names inside the new
        directory to paths moved there (a fine-tuned model's ``encoder/``).  The config records the
        weights' SHA-256, which ``load`` checks.
        """
        return write_model(directory, model_config(self), self.unit_.state(), overwrite=overwrite, move=move)

    @classmethod
    def load(cls, directory) -> HeadModel:
        """Load a saved model; a missing, damaged or inconsistent file is a ModelError naming the file and field."""
        return load_model(cls, directory)

    @classmethod
    def from_trained(cls, config: TrainConfig, head: str, unit, **fitted) -> HeadModel:
        """A model around a head trained elsewhere (fine-tuning trains it with the encoder) or loaded: ``head``
        names its type, ``unit`` is the trained head, ``fitted`` the rest (see ``heads.model_files.set_trained``);
        ``own_encoder``: a fine-tuned model's encoder, when already in memory."""
        own = fitted.pop("own_encoder", None)
        model = set_trained(cls(config), head, unit, **fitted)
        model._own_encoder = own
        return model
