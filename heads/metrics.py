"""Regression metrics (scipy and scikit-learn), overall, per label and per condition value."""

from __future__ import annotations

import warnings

import numpy as np

NAMES = ("n", "mse", "rmse", "mae", "pearson", "spearman", "r2")


def regression_metrics(y_true, y_pred) -> dict:
    """n, mse, rmse, mae, pearson, spearman, r2 of one label; rows where the truth is NaN are left out.

    Correlations are NaN where either side is constant (undefined), never an error.
    """
    from scipy import (
        stats,  # imported here: seconds of start-up that predict never needs
    )
    from sklearn import metrics as skm

    y_true, y_pred = np.asarray(y_true, dtype=float).ravel(), np.asarray(y_pred, dtype=float).ravel()
    keep = ~np.isnan(y_true)
    y_true, y_pred = y_true[keep], y_pred[keep]
    n = len(y_true)
    if n == 0:
        return {"n": 0, **{k: float("nan") for k in NAMES[1:]}}
    mse = skm.mean_squared_error(y_true, y_pred)
    out = {
        "n": n,
        "mse": float(mse),
        "rmse": float(np.sqrt(mse)),
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: the correlation is NaN, as it should be
        defined = n > 1 and np.ptp(y_true) > 0 and np.ptp(y_pred) > 0
        out["pearson"] = float(stats.pearsonr(y_true, y_pred)[0]) if defined else float("nan")
        out["spearman"] = float(stats.spearmanr(y_true, y_pred)[0]) if defined else float("nan")
        out["r2"] = float(skm.r2_score(y_true, y_pred)) if n > 1 else float("nan")
    return out


def report(y_true, y_pred, labels, conditions=None, groups=None) -> dict:
    """Metrics over all labels (the mean of the per-label values, ``n`` summed), per label, per condition
    and per group (a language, a source: any column's values).

    ``y_true`` and ``y_pred`` are ``(n, n_labels)``; ``conditions`` and ``groups`` are one value per row or None.
    """
    y_true, y_pred = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    per_label = {name: regression_metrics(y_true[:, j], y_pred[:, j]) for j, name in enumerate(labels)}
    if len(labels) == 1:
        overall = dict(per_label[labels[0]])
    else:
        overall = {k: float(np.nanmean([m[k] for m in per_label.values()])) for k in NAMES[1:]}
        overall["n"] = int(sum(m["n"] for m in per_label.values()))
    out = {**overall, "per_label": per_label}
    for key, values in (("per_condition", conditions), ("per_group", groups)):
        if values is not None:
            out[key] = _per_value(y_true, y_pred, labels, values)
    return out


def _per_value(y_true, y_pred, labels, values) -> dict:
    """Value -> label -> metrics of the rows with that value, in order of first appearance."""
    values = np.asarray(values, dtype=object)
    return {
        str(v): {
            name: regression_metrics(y_true[values == v, j], y_pred[values == v, j]) for j, name in enumerate(labels)
        }
        for v in dict.fromkeys(values.tolist())
    }
