"""The rows a head trains on: label checks and scaling, pseudolabel tables, row weights, the validation split,
and the warnings training gives about its data."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from embedcache import EmbeddingCache, InputError, ParameterError, UnknownTokensWarning, read_table
from embedcache.toolkit import check_columns, check_label_range, first_rows, table_source, unknown_warning

from .data import Inputs, grouped_split, load_labels
from .sources import Joined

PSEUDO_SOURCES = {"labeled", "data"}  # the source column of a heads pseudolabel table


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


def pseudo_sources(df: pd.DataFrame) -> pd.Series | None:
    """The ``source`` column when ``df`` is a table written by heads pseudolabel, else None."""
    if "source" not in df.columns or "confidence" not in df.columns:
        return None
    source = df["source"].astype(str)
    return source if set(source) <= PSEUDO_SOURCES else None


def only_pseudo_labels(df: pd.DataFrame) -> bool:
    source = pseudo_sources(df)
    return source is not None and not (source == "labeled").any()


def pseudolabel_rows(df: pd.DataFrame) -> np.ndarray | None:
    """Positions of the labelled rows when ``df`` is a table written by heads pseudolabel, else None."""
    source = pseudo_sources(df)
    if source is None or not (source == "labeled").any():
        return None
    return np.flatnonzero((source == "labeled").to_numpy())


def row_weights(df: pd.DataFrame, weight_col, sample_weight, path) -> np.ndarray | None:
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


def table_of(data, name: str = "data") -> tuple[pd.DataFrame, str]:
    """The table and what errors call it: its file (``read_table`` records it in the DataFrame), else ``name``."""
    if isinstance(data, pd.DataFrame):
        return data, table_source(data, name)
    return read_table(data), str(data)


def warn_unknown(source, df: pd.DataFrame, path) -> None:
    """Warn once when the encoder met texts that were mostly unknown tokens (a language it does not cover)."""
    if isinstance(source, Joined):  # each encoder of vectors side by side for itself
        for each in source.sources:
            warn_unknown(each, df, path)
        return
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


def split_rows(df: pd.DataFrame, inputs: Inputs, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Training and validation rows (no text on both sides) and what the validation rows are.

    A pseudolabel table validates on its labelled rows only."""
    labeled = pseudolabel_rows(df)
    if labeled is None and only_pseudo_labels(df):
        warnings.warn(
            "the data is a heads pseudolabel table with no labelled rows: validation on it measures "
            "agreement with the labeler, not accuracy; give --val-data (val_data=) with true labels",
            PseudoLabelValidationWarning,
            stacklevel=5,
        )
        what_extra = " (pseudo-labels: agreement with the labeler, not accuracy)"
    else:
        what_extra = ""
    candidates = np.arange(len(df)) if labeled is None else labeled
    _, val_rows = grouped_split(inputs.index["text"][candidates], val_fraction, seed)
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


def labelled_table(data, label_cols: list, label_range, name: str = "data") -> tuple[pd.DataFrame, str, np.ndarray]:
    """The table, what errors call it, and its labels, checked (numbers, within ``label_range``)."""
    df, path = table_of(data, name)
    y = load_labels(df, label_cols, path)
    check_label_values(y, label_range, label_cols, path)
    return df, path, y
