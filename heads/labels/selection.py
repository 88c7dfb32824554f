"""Choosing what to label next: ``heads select`` picks K rows of an unlabeled table from their cached vectors.

Strategies (``random`` is the default until a benchmark shows another beating it: on the quickstart's prompts,
200 picked by diversity and rated trained a head to Pearson 0.30 on the held-out truth, 200 at random to 0.41):

- ``random``: K rows drawn uniformly (the baseline every other strategy must beat);
- ``diversity``: greedy k-center (farthest-first traversal) on the rows' unit vectors: each pick is the row
  farthest, in cosine, from everything labelled or picked so far, so the batch covers the corpus and avoids
  what is labelled already.  The first pick with nothing labelled is random (the seed decides).
- ``uncertainty`` (needs ``model``, trained with ``ensemble=K``): the rows its members disagree on most
  (their spread over the label's scale, averaged over the labels), near-duplicates of picked rows skipped.
- ``hybrid`` (needs the same): uncertainty-weighted diversity, in the spirit of BADGE and LCMD for regression:
  each pick maximises the spread times the cosine distance to everything labelled or picked so far.

Rows whose text nearly duplicates a labelled one (cosine >= ``skip_above``) are never picked, and diversity
never picks two near-duplicates of each other.  ``group_col`` splits the budget over the values of a column (a language,
a metric) in proportion to their rows, at least one each while the budget lasts.  The output is a table
ready to annotate: ``id``, the text columns, ``group`` (with ``group_col``) and ``reason``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from embedcache import InputError, ParameterError
from embedcache.toolkit import check_choice, check_float, check_int

from ..data import load_inputs
from ..neighbours import unit_rows
from .pseudolabel import row_vectors

STRATEGIES = ("random", "diversity", "uncertainty", "hybrid")


def select(
    cache,
    data: pd.DataFrame,
    columns: dict,
    budget: int,
    strategy: str = "random",
    labeled: pd.DataFrame | None = None,
    group_col: str | None = None,
    skip_above: float = 0.95,
    seed: int = 0,
    id_col: str | None = None,
    paths=("data", "labeled"),
    add_missing: bool = False,
    progress: bool = True,
    model=None,
) -> pd.DataFrame:
    """The ``budget`` rows of ``data`` to label next (see the module's docstring); deterministic for a ``seed``.
    ``model``: a HeadModel trained with ``ensemble=K``, for ``uncertainty`` and ``hybrid``."""
    check_choice(strategy, "strategy", STRATEGIES)
    spread = None
    if strategy in ("uncertainty", "hybrid"):
        spread = disagreement(model, strategy, data, cache, columns, progress)
    check_int(budget, "budget")
    check_float(skip_above, "skip_above", -1, 1)
    columns = {s: c for s, c in columns.items() if c is not None}
    if group_col is not None and group_col not in data.columns:
        raise InputError(f"{paths[0]}: no column {group_col!r}; available columns: {', '.join(map(str, data.columns))}")
    vectors = unit_rows(row_vectors(load_inputs(cache, data, columns, paths[0], add_missing, progress)))
    known = None
    if labeled is not None and len(labeled):
        known = unit_rows(row_vectors(load_inputs(cache, labeled, columns, paths[1], add_missing, progress)))
    groups = data[group_col].astype(str).to_numpy() if group_col else np.full(len(data), "")
    rng = np.random.default_rng(seed)
    picked, reasons = [], []
    for group, quota in _quotas(groups, budget).items():
        rows = np.flatnonzero(groups == group)
        chosen, why = _pick(
            vectors[rows], known, quota, strategy, skip_above, rng, None if spread is None else spread[rows]
        )
        picked += rows[chosen].tolist()
        reasons += why
    if not picked:
        raise InputError(
            f"{paths[0]}: every row nearly duplicates a labelled one (cosine >= {skip_above}); nothing to pick"
        )
    text_cols = list(
        dict.fromkeys(c for s, c in columns.items() if s != "template")
        if not columns.get("template")
        else _template_fields(columns)
    )
    ids = (
        data[id_col].to_numpy()
        if id_col
        else (data["id"].to_numpy() if "id" in data.columns else np.arange(1, len(data) + 1))
    )
    out = pd.DataFrame({"id": ids[picked], **{c: data[c].to_numpy()[picked] for c in text_cols}})
    if group_col:
        out["group"] = groups[picked]
    out["reason"] = reasons
    return out


def _template_fields(columns: dict) -> list[str]:
    from embedcache.toolkit import template_columns

    fields = list(template_columns(columns["template"]))
    return list(dict.fromkeys(fields + [c for s, c in columns.items() if s not in ("template", "text")]))


def _quotas(groups: np.ndarray, budget: int) -> dict[str, int]:
    """The budget split over the groups in proportion to their rows (largest remainders), at least one each
    while the budget lasts, never more than a group's rows."""
    values, counts = np.unique(groups, return_counts=True)
    if budget < len(values):
        order = np.argsort(-counts, kind="stable")[:budget]
        return {str(values[i]): 1 for i in sorted(order)}
    share = budget * counts / counts.sum()
    quota = np.maximum(np.floor(share).astype(int), 1)
    while quota.sum() > budget:  # the minimum of one pushed it over: take back from the largest
        quota[np.argmax(quota - share)] -= 1
    for i in np.argsort(-(share - quota), kind="stable")[: budget - quota.sum()]:
        quota[i] += 1
    return {str(v): int(min(q, c)) for v, q, c in zip(values, quota, counts)}


def disagreement(model, strategy: str, data: pd.DataFrame, cache, columns: dict, progress: bool) -> np.ndarray:
    """Per row, how much ``model``'s ensemble members disagree: their spread over each label's standard
    deviation in training, averaged over the labels."""
    if model is None or getattr(model, "config", None) is None or model.config.ensemble < 2:
        raise ParameterError(
            f"strategy {strategy!r} ranks rows by how much an ensemble's members disagree: give the model of "
            "the labels so far, trained with --ensemble K (model=..., --model DIR)"
        )
    _, spread = model.predict(data, cache=cache, std=True, squeeze=False, progress=progress, columns=columns)
    return (spread / model.std_).mean(axis=1)


def _pick(vectors, known, quota: int, strategy: str, skip_above: float, rng, spread=None):
    """Positions of ``quota`` rows of ``vectors`` and why each was picked (``spread``: each row's disagreement,
    for uncertainty and hybrid)."""
    n = len(vectors)
    # closeness of each row to the nearest labelled (then picked) row, as a cosine
    nearest = np.full(n, -np.inf, dtype=np.float32)
    if known is not None:
        for start in range(0, len(known), 4096):
            nearest = np.maximum(nearest, (vectors @ known[start : start + 4096].T).max(axis=1))
    available = nearest < skip_above
    chosen, reasons = [], []
    order = rng.permutation(n) if strategy == "random" else None
    cursor = 0
    while len(chosen) < quota and available.any():
        if strategy == "random":
            while cursor < n and not available[order[cursor]]:
                cursor += 1
            if cursor == n:
                break
            i = int(order[cursor])
            reasons.append("random")
        elif strategy == "uncertainty":
            candidates = np.flatnonzero(available)
            i = int(candidates[np.argmax(spread[candidates])])
            reasons.append(f"uncertainty: the members disagree by {float(spread[i]):.3f} label std")
        elif strategy == "hybrid":
            candidates = np.flatnonzero(available)
            distance = 1 - np.where(np.isneginf(nearest[candidates]), -1.0, nearest[candidates])
            i = int(candidates[np.argmax(spread[candidates] * distance)])
            reasons.append(
                f"hybrid: disagreement {float(spread[i]):.3f} label std x distance {float(1 - max(nearest[i], -1)):.3f}"
            )
        elif np.isneginf(nearest[available]).all():  # nothing labelled or picked yet
            i = int(rng.choice(np.flatnonzero(available)))
            reasons.append("diversity: first pick (random)")
        else:
            candidates = np.flatnonzero(available)
            i = int(candidates[np.argmin(nearest[candidates])])
            reasons.append(f"diversity: farthest from labelled and picked rows (cosine {float(nearest[i]):.3f})")
        chosen.append(i)
        closeness = vectors @ vectors[i]
        nearest = np.maximum(nearest, closeness)
        if strategy != "random":  # its near-duplicates are taken with it (random stays a plain draw)
            available &= closeness < skip_above
        available[i] = False
    return np.asarray(chosen, dtype=int), reasons
