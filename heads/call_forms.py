"""How HeadModel's methods are called and what they give: the shapes ``predict`` returns (as sentence-transformers
and SetFit return them), and the cache-first argument order of embedcache 0.1, which still works with a warning."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from embedcache import EmbeddingCache
from embedcache.toolkit import check_columns


class ArgumentOrderWarning(FutureWarning):
    """A HeadModel method called with the cache first, the order of embedcache 0.1: data comes first now."""


def warn_old_order(old: str, new: str, stacklevel: int = 3) -> None:
    # FutureWarning: shown to users (once per calling line, Python's default), unlike a DeprecationWarning
    warnings.warn(
        f"HeadModel.{old} is the order of embedcache 0.1; write HeadModel.{new} (the old order keeps working)",
        ArgumentOrderWarning,
        stacklevel=stacklevel,
    )


def squeezed(scores: np.ndarray, one: bool):
    """``(n, k)`` scores as predict returns them: a label axis only for several labels, a row axis only
    for several texts (a float for one text and one label)."""
    if scores.shape[1] == 1:
        scores = scores[:, 0]
    return (scores[0].item() if scores.ndim == 1 else scores[0]) if one else scores


def score_table(
    df: pd.DataFrame, pred: np.ndarray, labels: list, bounds, decimals, id_col, spread=None
) -> pd.DataFrame:
    """Predictions as ``predict_table`` writes them: ``id`` (from ``id_col``, else an ``id`` column, else the
    row number), ``score`` (a column per label when there are several), ``lower``/``upper`` for ``bounds``,
    ``std`` for an ensemble's ``spread``."""
    names = ["score"] if len(labels) == 1 else labels
    out = {n: pred[:, j] for j, n in enumerate(names)}
    for j, n in enumerate(names):
        prefix = "" if len(names) == 1 else f"{n}_"
        if bounds is not None:
            out[f"{prefix}lower"], out[f"{prefix}upper"] = bounds[0][:, j], bounds[1][:, j]
        if spread is not None:
            out[f"{prefix}std"] = spread[:, j]
    if decimals is not None:
        out = {n: (v.round(decimals).astype(np.int64) if decimals <= 0 else v.round(decimals)) for n, v in out.items()}
    id_col = id_col or ("id" if "id" in df.columns else None)
    ids = df[id_col].tolist() if id_col else list(range(1, len(df) + 1))
    return pd.DataFrame({"id": ids, **out})


def group_values(df: pd.DataFrame, group_col, path) -> list[str] | None:
    """Each row's group for ``evaluate(group_col=...)``: a column's value, or several joined (``"hi / harm"``)."""
    group_cols = [group_col] if isinstance(group_col, str) else list(group_col or [])
    if not group_cols:
        return None
    check_columns(df, group_cols, path)
    return df[group_cols].astype(str).agg(" / ".join, axis=1).tolist()


def data_first(data, cache, method: str):
    """``(data, cache)`` of a call written ``method(data, cache=...)``, or in 0.1's order ``method(cache, data)``
    (a cache or None first), which warns once per calling line."""
    if data is None or isinstance(data, EmbeddingCache):
        warn_old_order(f"{method}(cache, data)", f"{method}(data, cache=cache)", stacklevel=4)
        return cache, data
    return data, cache
