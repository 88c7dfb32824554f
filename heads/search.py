"""A head search: every head type that can read the data, on every feature set the cache holds, trained on the
same rows and validated on the same rows; the best by validation Pearson is kept, with the leaderboard.

``HeadModel(head="search").fit(...)`` (``heads train --head search``) runs it; the model
becomes the winner (its ``config`` the winner's settings) and ``leaderboard_`` lists
every candidate, best first: head, features, validation Pearson, Spearman and RMSE
(means over the labels), train seconds.  ``config.json`` keeps the leaderboard.
"""

from __future__ import annotations

import math
import time

from embedcache import EmbeddingCache, ParameterError

from .data import sides_of
from .head_types import HEAD_TYPES
from .training_rows import table_of


def candidates(sides, source) -> list[tuple[str, str]]:
    """``(head, features)`` pairs to try: each registered head trained on cached vectors that reads ``sides``,
    on the final vectors and, where ``source`` is a cache of them, on the layer vectors."""
    heads = []
    for name, kind in HEAD_TYPES.items():
        if getattr(kind, "joint", False):
            continue  # reads both texts through the encoder: only fine-tuning trains it
        try:
            kind.check_sides(sides)
        except ParameterError:
            continue
        heads.append(name)
    features = ["final"] + (["layers"] if isinstance(source, EmbeddingCache) and source.layers else [])
    return [(h, f) for f in features for h in heads]


def search(model, source, data, label_cols, sides, fit) -> list[dict]:
    """Train a copy of ``model`` per candidate with ``fit(candidate, source, data, label_cols)``; make ``model``
    the best by validation Pearson; return the leaderboard, best first."""
    rows, best, best_score = [], None, -math.inf
    for head, features in candidates(sides, source):
        candidate = type(model)(model.config.replace(head=head, features=features), device=model.device)
        began = time.perf_counter()
        fit(candidate, source, data, label_cols)
        seconds = time.perf_counter() - began
        validation = candidate.validation_ or {}
        score = validation.get("pearson", math.nan)
        rows.append(
            {
                "head": candidate.head_,
                "features": features,
                "pearson": score,
                "spearman": validation.get("spearman", math.nan),
                "rmse": validation.get("rmse", math.nan),
                "seconds": round(seconds, 2),
            }
        )
        if not math.isnan(score) and score > best_score:
            best, best_score = candidate, score
    if best is None:
        raise ParameterError(
            "the head search needs validation rows with a defined Pearson correlation to rank the heads: give "
            "val_data or more rows (val_fraction)"
        )
    model.__dict__.update(best.__dict__)  # the model is the winner, settings and all
    board = sorted(rows, key=lambda r: -r["pearson"] if not math.isnan(r["pearson"]) else math.inf)
    model.leaderboard_ = board
    return board


def search_fit(model, source, data, label_cols, val_data, options: dict):
    """``model.fit_table`` for ``head="search"``: the tables read once, every candidate fitted on them with
    ``options`` (fit_table's), ``model`` made the best; returns ``model``."""
    options = {**options, "val_data": None if val_data is None else table_of(val_data)[0]}
    names = {"text": options["text_col"], "pair": options["pair_col"], "condition": options["condition_col"]}
    sides = sides_of({**names, "template": options["template"]})
    search(model, source, table_of(data)[0], label_cols, sides, lambda m, *a: m.fit_table(*a, **options))
    return model
