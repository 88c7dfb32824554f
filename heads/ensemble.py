"""Ensembles: K heads of one type on K cross-fitted folds of the training rows, predicting their mean.

Each member trains on every fold but one and stops early on that one, so each
training row validates exactly one head; the rows of a text stay in one fold.
The held-out validation rows, which no member saw, calibrate the intervals:
the members' spread per row says how hard a row is, and split-conformal
intervals normalised by it (``heads.intervals``) are narrow where the members
agree and wide where they do not, with the same coverage guarantee.
"""

from __future__ import annotations

import numpy as np


def folds(groups: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` folds of row positions, every row of a group (the same text) in one fold, groups dealt at random."""
    unique, inverse = np.unique(groups, return_inverse=True)
    fold_of = np.empty(len(unique), dtype=np.int64)
    fold_of[np.random.default_rng(seed).permutation(len(unique))] = np.arange(len(unique)) % k
    fold = fold_of[inverse]
    return [np.flatnonzero(fold == i) for i in range(k)]


class Ensemble:
    """Trained heads of one type (``members``): ``predict`` is their mean, ``predictions`` each one's."""

    joint = False

    def __init__(self, members: list):
        self.members = list(members)

    def predictions(self, inputs) -> np.ndarray:
        """``(n_members, n, n_outputs)`` outputs on the standardised scale."""
        return np.stack([m.predict(inputs) for m in self.members])

    def predict(self, inputs) -> np.ndarray:
        return self.predictions(inputs).mean(axis=0)

    def config(self) -> dict:
        return {"members": [m.config() for m in self.members]}

    def state(self) -> dict:
        return {f"member{k}.{name}": t for k, m in enumerate(self.members) for name, t in m.state().items()}

    def layer_weights(self) -> list[float] | None:
        """The members' learned layer weights, averaged (None when they have none)."""
        weights = [getattr(m, "layer_weights", lambda: None)() for m in self.members]
        if any(w is None for w in weights):
            return None
        return [round(float(w), 4) for w in np.mean(weights, axis=0)]


def member_tensors(tensors: dict, k: int) -> dict:
    """The tensors of member ``k`` of a saved ensemble, under the names the member gave them."""
    prefix = f"member{k}."
    return {name[len(prefix) :]: t for name, t in tensors.items() if name.startswith(prefix)}


def fit_ensemble(new_unit, train, y: np.ndarray, settings, *, scale, sample_weight, device, progress) -> tuple:
    """``settings.ensemble`` heads from ``new_unit()``, member ``k`` validated on fold ``k`` of ``train`` and
    seeded ``settings.seed + k``; returns the Ensemble and the members' histories (each row names its member)."""
    parts = folds(train.index["text"], settings.ensemble, settings.seed)
    members, history = [], []
    for k, held in enumerate(parts):
        rest = np.setdiff1d(np.arange(len(train)), held)
        unit = new_unit()
        rows = unit.fit(
            train.subset(rest),
            y[rest],
            train.subset(held),
            y[held],
            settings.replace(seed=settings.seed + k),
            scale=scale,
            sample_weight=None if sample_weight is None else np.asarray(sample_weight)[rest],
            device=device,
            progress=progress,
        )
        members.append(unit)
        history += [{"member": k, **row} for row in rows]
    return Ensemble(members), history


def fit_units(new_unit, train, y, val, y_val, settings, *, sample_weight, **fitting) -> tuple:
    """The trained head and its history: one from ``new_unit()`` validated on ``val``, or (``settings.ensemble``
    > 1) an Ensemble whose members validate on their own folds, leaving ``val`` to calibrate its intervals."""
    if settings.ensemble > 1:
        return fit_ensemble(new_unit, train, y, settings, sample_weight=sample_weight, **fitting)
    unit = new_unit()
    return unit, unit.fit(train, y, val, y_val, settings, sample_weight=sample_weight, **fitting)
