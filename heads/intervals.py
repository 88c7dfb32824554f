"""Split-conformal prediction intervals from the validation residuals kept at training time.

A model keeps, per label, the quantile function of its absolute validation
residuals on a grid of ``GRID`` levels (a few kilobytes in ``config.json``,
whatever the number of validation rows).  An interval at coverage ``c`` is the
prediction plus or minus the residual at level ``ceil((n + 1) c) / n`` (the
finite-sample correction of split conformal prediction, n validation rows):
for rows drawn like the validation rows, at least ``c`` of the intervals hold
the truth.  The validation rows also chose the early-stopping epoch, which
makes the residuals very slightly optimistic; the coverage test measures it.

An ensemble also keeps the quantiles of its residuals divided by its members'
spread on each row plus a floor, the median spread of the validation rows (so
a row where the members happen to agree is not given a zero width, and a weak
signal widens few rows; on EmoBank a tenth of the median gave intervals 16%
wider on average than one width per label, the median 2% narrower): its
intervals are that quantile times the row's own spread plus the floor, narrow
where the members agree and wide where they do not, with the same
finite-sample guarantee.
"""

from __future__ import annotations

import math

import numpy as np

from embedcache import ParameterError
from embedcache.toolkit import check_float

GRID = np.linspace(0, 1, 1001)


def residual_quantiles(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """``{"n": [rows per label], "quantiles": [[residual at each GRID level] per label]}``; NaN labels left out."""
    n, quantiles = [], []
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j])
        residuals = np.abs(y_true[keep, j] - y_pred[keep, j])
        n.append(int(keep.sum()))
        quantiles.append(np.quantile(residuals, GRID, method="inverted_cdf").round(6).tolist() if keep.any() else None)
    return {"n": n, "quantiles": quantiles}


def half_widths(calibration: dict | None, coverage: float) -> np.ndarray:
    """Per label, the half-width of intervals with at least ``coverage`` of the truth inside."""
    check_float(coverage, "interval", 0, 1, low_open=True, high_open=True)
    if not calibration:
        raise ParameterError(
            "this model kept no validation residuals (it was trained without validation rows or "
            "before intervals existed): train it again to get intervals"
        )
    out = []
    for n, quantiles in zip(calibration["n"], calibration["quantiles"]):
        level = math.ceil((n + 1) * coverage) / n if n else math.inf
        if level > 1:
            raise ParameterError(
                f"{n} validation rows cannot give a {coverage:g} interval: it needs at least "
                f"{math.ceil(coverage / (1 - coverage))} rows"
            )
        out.append(float(np.interp(level, GRID, quantiles)))
    return np.asarray(out)


def interval_report(y_true: np.ndarray, lower: np.ndarray, upper: np.ndarray, coverage: float) -> dict:
    """Empirical coverage and mean width of intervals over the rows with a label."""
    keep = ~np.isnan(y_true)
    inside = (y_true >= lower) & (y_true <= upper)
    return {
        "level": coverage,
        "coverage": float(inside[keep].mean()),
        "mean_width": float((upper - lower)[keep].mean()),
    }


def normalized_quantiles(y_true: np.ndarray, y_pred: np.ndarray, spread: np.ndarray) -> dict:
    """Per label: the floor added to each row's ``spread`` and the GRID quantiles of |residual| / (spread + floor)."""
    floors, n, quantiles = [], [], []
    for j in range(y_true.shape[1]):
        keep = ~np.isnan(y_true[:, j])
        floor = max(float(np.median(spread[keep, j])), 1e-9) if keep.any() else 1e-9
        scores = np.abs(y_true[keep, j] - y_pred[keep, j]) / (spread[keep, j] + floor)
        floors.append(round(floor, 9))
        n.append(int(keep.sum()))
        quantiles.append(np.quantile(scores, GRID, method="inverted_cdf").round(6).tolist() if keep.any() else None)
    return {"n": n, "quantiles": quantiles, "floor": floors}


def row_half_widths(calibration: dict | None, coverage: float, spread: np.ndarray | None) -> np.ndarray:
    """Half-widths of the intervals: ``(n, n_labels)`` from the rows' ``spread`` where the model kept normalised
    residuals (an ensemble), else one per label."""
    normalized = (calibration or {}).get("normalized")
    if normalized is None or spread is None:
        return half_widths(calibration, coverage)
    factor = half_widths(normalized, coverage)
    return factor * (spread + np.asarray(normalized["floor"]))


def interval_reports(
    y_true: np.ndarray,
    bounds: tuple[np.ndarray, np.ndarray],
    constant: tuple[np.ndarray, np.ndarray] | None,
    coverage: float,
    groups=None,
) -> dict:
    """``interval``: coverage and mean width of the model's intervals (``bounds``); ``interval_constant_width``:
    the same for one width per label (``constant``, an ensemble's comparison; None: left out);
    ``interval_per_group``: the model's, per value of ``groups`` (one per row; None: left out)."""
    out = {"interval": interval_report(y_true, bounds[0], bounds[1], coverage)}
    if constant is not None:
        out["interval_constant_width"] = interval_report(y_true, constant[0], constant[1], coverage)
    if groups is not None:
        values = np.asarray(groups, dtype=object)
        out["interval_per_group"] = {
            str(v): interval_report(y_true[values == v], bounds[0][values == v], bounds[1][values == v], coverage)
            for v in dict.fromkeys(values.tolist())
        }
    return out
