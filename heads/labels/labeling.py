"""Labeling functions: heuristics ``text -> score or None (abstain)``, combined into one score per text.

Functions are passed as a list (``apply(texts, [length, my_function])``); names
look them up in ``LABELING_FUNCTIONS``, which holds the built-in ones and any
registered with the ``labeling_function`` decorator (a convenience for
``heads pseudolabel --import my_lfs.py``).  The built-in ones score prompt
quality on 0-1 and are examples to copy more than a finished judge.
``combine`` takes a weighted mean of the functions that do not abstain;
``learn_weights`` fits the weights against a labelled subset and ``affine_map``
puts the result on the labels' scale; ``learn_ridge`` fits a ridge regression
from the outputs (and whether each function voted) to the labels instead.

    from heads.labels.labeling import labeling_function

    @labeling_function("mentions_audience")
    def mentions_audience(text):
        return 0.9 if " for a " in text.lower() else None
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import numpy as np

from embedcache import ParameterError


def labeling_function(name: str):
    """Register ``fn(text) -> float | None`` under ``name`` in ``LABELING_FUNCTIONS`` (None means: no opinion)."""

    def register(fn):
        fn.labeling_name = name
        LABELING_FUNCTIONS[name] = fn
        return fn

    return register


def length(text: str) -> float | None:
    """Very short prompts say little: 0 at 1 character, 1 from 150 characters on (log scale)."""
    n = len(text.strip())
    return min(1.0, math.log1p(n) / math.log1p(150)) if n else 0.0


_CONSTRAINT = re.compile(
    r"\b(step by step|in \d+ (words|sentences|lines)|for (a|an|my) \w+|with (examples|sources|code)|"
    r"as (a|an) (table|list|checklist|email|poem)|bullet points|in detail|format)\b",
    re.IGNORECASE,
)


def specificity(text: str) -> float | None:
    """Constraints (audience, format, length, examples), numbers and quoted terms make a prompt specific."""
    hits = len(_CONSTRAINT.findall(text)) + len(re.findall(r"\d+|\"[^\"]+\"", text))
    return None if hits == 0 else min(1.0, 0.6 + 0.2 * hits)


_IMPERATIVE = re.compile(
    r"^\s*(please\s+)?(explain|write|list|compare|summari[sz]e|describe|translate|give|show|"
    r"create|draft|review|plan|debug|analy[sz]e|suggest|help)\b",
    re.IGNORECASE,
)


def question_or_instruction(text: str) -> float | None:
    """A clear ask (a question or an instruction) beats a fragment; abstains when neither is visible."""
    if _IMPERATIVE.search(text):
        return 0.8
    if text.rstrip().endswith("?"):
        return 0.7
    return None


def punctuation(text: str) -> float | None:
    """Runs of !!! or ??? and all-caps shouting lower the score; a normal ending raises it a little."""
    if re.search(r"[!?]{3,}", text) or (len(text) > 10 and text.upper() == text and any(c.isalpha() for c in text)):
        return 0.2
    return 0.6 if text.rstrip()[-1:] in (".", "?", "!", ":") else None


def repetition(text: str) -> float | None:
    """The same word over and over (spam, filler) scores low; abstains on normal text."""
    words = re.findall(r"\w+", text.lower())
    if len(words) < 6:
        return None
    return 0.1 if len(set(words)) / len(words) < 0.5 else None


BUILT_IN = {
    "length": length,
    "specificity": specificity,
    "question_or_instruction": question_or_instruction,
    "punctuation": punctuation,
    "repetition": repetition,
}
LABELING_FUNCTIONS: dict[str, Callable[[str], float | None]] = dict(BUILT_IN)


def resolve(functions=None) -> dict[str, Callable]:
    """Name -> function for a list of functions and registered names (default: every registered function);
    a dict of name -> function is taken as it is."""
    if isinstance(functions, dict):
        return dict(functions)
    out = {}
    for item in LABELING_FUNCTIONS if functions is None else functions:
        if callable(item):
            name = getattr(item, "labeling_name", getattr(item, "__name__", type(item).__name__))
            if name in out and out[name] is not item:  # two lambdas, or two closures of one factory: both count
                name = next(f"{name}_{i}" for i in range(2, len(out) + 3) if f"{name}_{i}" not in out)
            out[name] = item
        elif item in LABELING_FUNCTIONS:
            out[item] = LABELING_FUNCTIONS[item]
        else:
            raise ParameterError(f"unknown labeling function {item!r}; registered: {', '.join(LABELING_FUNCTIONS)}")
    if not out:
        raise ParameterError("no labeling functions given")
    return out


def apply(texts: list[str], functions=None) -> tuple[np.ndarray, list[str]]:
    """``(n_texts, n_functions)`` outputs, NaN where a function abstains, and the function names.

    ``functions``: functions and registered names (default: every registered function).
    """
    functions = resolve(functions)
    names = list(functions)
    out = np.full((len(texts), len(names)), np.nan)
    for j, fn in enumerate(functions.values()):
        for i, text in enumerate(texts):
            value = fn(text)
            if value is not None:
                out[i, j] = float(value)
    return out, names


def combine(outputs: np.ndarray, weights=None) -> np.ndarray:
    """Weighted mean over the functions that did not abstain; NaN where all abstain."""
    weights = np.ones(outputs.shape[1]) if weights is None else np.asarray(weights, dtype=float)
    voted = ~np.isnan(outputs)
    w = voted * weights
    total = w.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (np.nan_to_num(outputs) * w).sum(1) / total, np.nan)


def learn_weights(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Non-negative weights (summing to 1) under which ``combine`` tracks the labelled rows ``y`` best.

    Abstentions are modelled as they are used: each row's score is the weighted
    mean of the functions that voted on it.  The weights minimise the squared
    error of that score after the best affine fit to ``y`` (equivalently,
    maximise its correlation with ``y``), over the rows where any function
    voted; scipy's L-BFGS-B on the log-weights.  Two degenerate optima are
    avoided this way: filling abstentions with a mean turns a function that
    fires rarely with a constant into an intercept, and a plain squared error
    rewards a function that votes one constant everywhere (the mean of ``y`` is
    a good guess); neither carries information about which row is better.
    Starts from inverse-error weights (each function's mean squared error on
    the rows where it voted); the log-weights are bounded, so no weight is
    exactly zero unless its function never voted on a labelled row.
    """
    from scipy.optimize import minimize

    y = np.asarray(y, dtype=float)
    voted = ~np.isnan(outputs) & ~np.isnan(y)[:, None]
    rows = voted.any(axis=1)
    k = outputs.shape[1]
    if rows.sum() < 3:
        return np.full(k, 1 / k)
    out, v, target = np.nan_to_num(outputs[rows]), voted[rows].astype(float), y[rows]
    counts = v.sum(0)
    mse = np.array(
        [((out[v[:, j] > 0, j] - target[v[:, j] > 0]) ** 2).mean() if counts[j] else np.inf for j in range(k)]
    )
    floor = max(np.var(target), 1e-6) * 1e-3
    start = np.log(np.where(np.isfinite(mse), 1 / np.maximum(mse, floor), 1e-6))
    start -= start.mean()

    def loss(z):
        w = np.exp(z)
        total = v @ w
        pred = (out * v) @ w / total
        centred = pred - pred.mean()
        slope = (centred @ (target - target.mean())) / max(centred @ centred, 1e-12)
        resid = target.mean() + slope * centred - target
        # the affine fit is optimal, so its own derivative drops out; d pred / d w_j = v_j (o_j - pred) / total
        grad_w = ((slope * resid / total)[:, None] * v * (out - pred[:, None])).mean(0) * 2
        return (resid**2).mean(), grad_w * w

    z = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(-20, 20)] * k).x
    w = np.exp(z - z.max())
    w[counts == 0] = 0.0  # never voted on a labelled row: no evidence for any weight
    return w / w.sum() if w.sum() > 0 else np.full(k, 1 / k)


def affine_map(scores: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """``(intercept, slope)`` of the least-squares line from ``scores`` to the labels ``y`` (rows where both are
    known): what puts a weighted mean of function outputs on the labels' scale.  Slope 0 where the scores do
    not vary (the labels' mean everywhere)."""
    both = ~np.isnan(scores) & ~np.isnan(y)
    if both.sum() < 2:
        return 0.0, 1.0
    s, t = scores[both], y[both]
    var = ((s - s.mean()) ** 2).sum()
    slope = float(((s - s.mean()) * (t - t.mean())).sum() / var) if var > 0 else 0.0
    return float(t.mean() - slope * s.mean()), slope


def _features(outputs: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Per function: whether it voted, and its centred output where it voted (0 where it abstained)."""
    voted = ~np.isnan(outputs)
    return np.hstack([voted.astype(float), np.where(voted, outputs - centres, 0.0)])


def learn_ridge(outputs: np.ndarray, y: np.ndarray) -> dict:
    """A ridge regression from the functions' outputs to the labels, on the labelled rows where any voted.

    Each function gives two features: whether it voted and its (centred) output where it did, so a function
    of the documented kind (``0.9 if ... else None``) says what it says by voting.  The regularisation is
    chosen by leave-one-out (scikit-learn's RidgeCV).  Scores come out on the labels' scale.
    """
    from sklearn.linear_model import RidgeCV

    y = np.asarray(y, dtype=float)
    centres = np.array([np.nanmean(c) if (~np.isnan(c)).any() else 0.0 for c in outputs.T])
    rows = (~np.isnan(outputs)).any(axis=1) & ~np.isnan(y)
    if rows.sum() < 3:
        raise ParameterError(
            f"the labeling functions voted on {int(rows.sum())} labelled rows; at least 3 are needed "
            "to learn how to combine them"
        )
    fit = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(_features(outputs[rows], centres), y[rows])
    return {"coef": fit.coef_, "intercept": float(fit.intercept_), "centres": centres, "alpha": float(fit.alpha_)}


def ridge_combine(outputs: np.ndarray, fitted: dict) -> np.ndarray:
    """Scores of ``learn_ridge``'s fit; NaN where every function abstains."""
    out = _features(outputs, fitted["centres"]) @ fitted["coef"] + fitted["intercept"]
    return np.where((~np.isnan(outputs)).any(axis=1), out, np.nan)


def ridge_weights(outputs: np.ndarray, fitted: dict) -> np.ndarray:
    """Each function's share of the fit's effect: the spread its two features add to the scores (sums to 1)."""
    features = _features(outputs, fitted["centres"])
    k = outputs.shape[1]
    spread = np.array([np.std(features[:, [j, j + k]] @ fitted["coef"][[j, j + k]]) for j in range(k)])
    return spread / spread.sum() if spread.sum() > 0 else np.full(k, 1 / k)


def coverage_report(outputs: np.ndarray, names: list[str], y=None) -> dict:
    """Per function: coverage (share of texts it scores) and, with labels, on the labelled rows: Pearson r of
    its output with the labels where it votes (None where it votes one value), the labels' mean where it
    votes and elsewhere, and the correlation of voting itself with the labels (what a constant vote says)."""
    report = {}
    for j, name in enumerate(names):
        voted = ~np.isnan(outputs[:, j])
        entry = {"coverage": float(voted.mean())}
        if y is not None:
            known = ~np.isnan(y)
            both = voted & known
            values = outputs[both, j]
            defined = both.sum() > 2 and values.std() > 0 and y[both].std() > 0
            entry["correlation"] = float(np.corrcoef(values, y[both])[0, 1]) if defined else None
            entry["mean_label_voted"] = float(y[both].mean()) if both.any() else None
            entry["mean_label_abstained"] = float(y[~voted & known].mean()) if (~voted & known).any() else None
            flag = voted[known].astype(float)
            entry["vote_correlation"] = (
                float(np.corrcoef(flag, y[known])[0, 1]) if 0 < flag.sum() < len(flag) and y[known].std() > 0 else None
            )
        report[name] = entry
    return report
