"""Nearest neighbours over cached vectors (faiss): label propagation, a train/test leakage report, and the
nearest trained condition of one never seen in training."""

from __future__ import annotations

import warnings

import numpy as np


class UnseenConditionWarning(UserWarning):
    """A condition (metric) never seen in training was scored."""


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, as contiguous float32 (what faiss and cosines here take)."""
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def nearest(index_vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and positions of the ``k`` nearest rows of ``index_vectors`` for each query (exact search)."""
    import faiss

    base = unit_rows(index_vectors)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    k = min(k, len(base))
    return index.search(unit_rows(query_vectors), k)


def propagate(
    labeled: np.ndarray, labels: np.ndarray, unlabeled: np.ndarray, k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Scores for ``unlabeled`` rows from their ``k`` nearest labelled neighbours, and a confidence in [0, 1].

    The score is the similarity-weighted mean of the neighbours' labels.  The
    confidence is high when the neighbours are close (mean cosine) and agree
    (1 minus their weighted label spread over the spread of all labels).
    """
    labels = np.asarray(labels, dtype=float)
    sims, idx = nearest(labeled, unlabeled, k)
    weights = np.clip(sims, 1e-6, None)
    neighbour_labels = labels[idx]
    score = (weights * neighbour_labels).sum(1) / weights.sum(1)
    spread = np.sqrt((weights * (neighbour_labels - score[:, None]) ** 2).sum(1) / weights.sum(1))
    agreement = 1 - np.clip(spread / max(labels.std(), 1e-12), 0, 1)
    closeness = np.clip(sims.mean(1), 0, 1)
    return score, agreement * closeness


def leakage(train: np.ndarray, test: np.ndarray, threshold: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test rows whose nearest training row has cosine >= ``threshold``: (test rows, train rows, cosines)."""
    sims, idx = nearest(train, test, 1)
    hit = np.flatnonzero(sims[:, 0] >= threshold)
    return hit, idx[hit, 0], sims[hit, 0]


def leakage_report(
    cache, train, test, columns: dict, threshold: float = 0.95, add_missing: bool = False, paths=("train", "test")
):
    """Every distinct test text whose nearest training text has cosine >= ``threshold``, most similar first.

    ``train`` and ``test`` are tables; ``columns`` names their text column (or a ``template``) and may name a
    ``pair`` column: then the texts of both sides are searched against the texts of both sides.  A text that
    repeats (a shared system prompt in a template's fields, the same sentence in many pairs) counts once.
    Returns a DataFrame of test_row and train_row (1-based, the first row holding the text), test_rows (how
    many test rows hold the text), side, cosine, test_text, train_text and where_they_differ (both texts
    from their first difference on); its ``attrs["n_test"]`` is the number of distinct test texts searched
    and ``attrs["n_test_rows"]`` the number of test rows.
    """
    import pandas as pd

    from embedcache.toolkit import check_float

    from .data import embed, side_texts

    check_float(threshold, "threshold", -1, 1)
    sides = {"text": columns.get("text"), "template": columns.get("template"), "pair": columns.get("pair")}
    train_texts, train_first, _ = _distinct_texts(side_texts(train, sides, paths[0]))
    test_texts, test_first, test_counts = _distinct_texts(side_texts(test, sides, paths[1]))
    hits, nearest_rows, cosines = leakage(
        embed(cache, train_texts, add_missing), embed(cache, test_texts, add_missing), threshold
    )
    pairs = pd.DataFrame(
        {
            "test_row": [test_first[i][1] + 1 for i in hits],
            "test_rows": [test_counts[i] for i in hits],
            "side": [test_first[i][0] for i in hits],
            "train_row": [train_first[j][1] + 1 for j in nearest_rows],
            "cosine": cosines.round(4),
            "test_text": [test_texts[i] for i in hits],
            "train_text": [train_texts[j] for j in nearest_rows],
        }
    )
    pairs["where_they_differ"] = [where_they_differ(a, b) for a, b in zip(pairs.test_text, pairs.train_text)]
    pairs = pairs.sort_values("cosine", ascending=False, kind="stable").reset_index(drop=True)
    pairs.attrs["n_test"], pairs.attrs["n_test_rows"] = len(test_texts), len(test)
    return pairs


def _distinct_texts(by_side: dict) -> tuple[list[str], list[tuple[str, int]], list[int]]:
    """The distinct texts of every side, the (side, row) that first holds each, and how many rows hold it."""
    first, counts = {}, {}
    for side, texts in by_side.items():
        for row, text in enumerate(texts):
            first.setdefault(text, (side, row))
            counts[text] = counts.get(text, 0) + 1
    return list(first), list(first.values()), [counts[t] for t in first]


def where_they_differ(a: str, b: str, width: int = 60) -> str:
    """Both texts from the first character where they differ (what a shared prefix such as a system prompt hides)."""
    start = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    cut = max(0, start - 10)
    lead = "..." if cut else ""
    return f"{lead}{a[cut : cut + width]!r} vs {lead}{b[cut : cut + width]!r}"


def unseen_conditions(trained, source, inputs) -> list[tuple[str, str, float]]:
    """``(condition, nearest trained condition, cosine)`` for each condition of ``inputs`` not among ``trained``;
    ``source`` (a cache or an encoder) gives the trained conditions' vectors."""
    from .data import embed

    if not trained or inputs.condition_values is None:
        return []
    first = {}  # each condition's vector is in the inputs already: its row in the condition table
    for value, row in zip(inputs.condition_values, inputs.index["condition"]):
        first.setdefault(value, row)
    unseen = sorted(set(first) - set(trained))
    if not unseen:
        return []
    table = inputs.tables["condition"]  # sentence vectors, or layer vectors: then the conditions' own vectors
    queries = table[[first[c] for c in unseen]] if table.ndim == 2 else embed(source, unseen)
    cosine, position = nearest(embed(source, trained), queries, k=1)
    return [(c, trained[int(j)], float(cos)) for c, cos, j in zip(unseen, cosine[:, 0], position[:, 0])]


def warn_unseen_conditions(trained, source, inputs) -> None:
    found = unseen_conditions(trained, source, inputs)
    if found:
        shown = "; ".join(f"{c!r} (nearest trained: {n!r}, cosine {cos:.2f})" for c, n, cos in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        warnings.warn(
            f"{len(found)} condition(s) never seen in training are scored from their vectors alone: {shown}{more}",
            UnseenConditionWarning,
            stacklevel=4,
        )
