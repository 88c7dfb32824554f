"""Nearest neighbours over cached vectors (faiss): label propagation, a train/test leakage report, and the
nearest trained condition of one never seen in training."""

from __future__ import annotations

import warnings

import numpy as np


class UnseenConditionWarning(UserWarning):
    """A condition (metric) never seen in training was scored."""


def _unit(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(vectors, dtype=np.float32)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def nearest(index_vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarities and positions of the ``k`` nearest rows of ``index_vectors`` for each query (exact search)."""
    import faiss

    base = _unit(index_vectors)
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    k = min(k, len(base))
    return index.search(_unit(query_vectors), k)


def propagate(labeled: np.ndarray, labels: np.ndarray, unlabeled: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
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


def leakage_report(cache, train, test, columns: dict, threshold: float = 0.95, add_missing: bool = False,
                   paths=("train", "test")):
    """Every test row whose nearest training text has cosine >= ``threshold``, most similar first.

    ``train`` and ``test`` are tables; ``columns`` names their text column (or a ``template``).
    Returns a DataFrame of test_row, train_row (1-based), cosine, test_text, train_text; its
    ``attrs["n_test"]`` is the number of test rows searched.
    """
    import pandas as pd

    from embedcache import check_float

    from .data import embed, side_texts

    check_float(threshold, "threshold", -1, 1)
    train_texts, test_texts = (side_texts(df, columns, path)["text"] for df, path in ((train, paths[0]), (test, paths[1])))
    test_rows, train_rows, cosines = leakage(embed(cache, train_texts, add_missing), embed(cache, test_texts, add_missing),
                                             threshold)
    pairs = pd.DataFrame({"test_row": test_rows + 1, "train_row": train_rows + 1, "cosine": cosines.round(4),
                          "test_text": [test_texts[i] for i in test_rows],
                          "train_text": [train_texts[i] for i in train_rows]})
    pairs = pairs.sort_values("cosine", ascending=False, kind="stable").reset_index(drop=True)
    pairs.attrs["n_test"] = len(test_texts)
    return pairs


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
    cosine, position = nearest(embed(source, trained), inputs.tables["condition"][[first[c] for c in unseen]], k=1)
    return [(c, trained[int(j)], float(cos)) for c, cos, j in zip(unseen, cosine[:, 0], position[:, 0])]


def warn_unseen_conditions(trained, source, inputs) -> None:
    found = unseen_conditions(trained, source, inputs)
    if found:
        shown = "; ".join(f"{c!r} (nearest trained: {n!r}, cosine {cos:.2f})" for c, n, cos in found[:5])
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        warnings.warn(f"{len(found)} condition(s) never seen in training are scored from their vectors alone: "
                      f"{shown}{more}", UnseenConditionWarning, stacklevel=4)
