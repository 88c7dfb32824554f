"""Nearest neighbours over cached vectors (faiss): label propagation and a train/test leakage report."""

from __future__ import annotations

import numpy as np


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
