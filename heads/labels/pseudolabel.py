"""Scoring an unlabeled table: labeling functions, neighbour propagation or self-training, one table out.

``pseudolabel`` returns a DataFrame with ``source`` (``labeled`` or ``data``),
``id``, the text columns under their own names, ``score`` and ``confidence``:
the labelled rows first (their own label, confidence 1), then every row of the
data that is not among them.  ``heads train --label-col score`` trains on it
as it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from embedcache import EmbeddingCache, InputError, ParameterError
from embedcache.toolkit import (
    check_choice,
    check_columns,
    check_float,
    check_int,
    check_label_range,
    table_source,
    template_columns,
)

from ..data import (
    Inputs,
    column_texts,
    grouped_split,
    load_inputs,
    load_labels,
    template_texts,
)
from ..model import HeadModel
from ..neighbours import propagate
from ..training_rows import check_label_values
from .labeling import (
    affine_map,
    apply,
    combine,
    coverage_report,
    learn_ridge,
    learn_weights,
    resolve,
    ridge_combine,
    ridge_weights,
)
from .selftrain import self_train

METHODS = ("lf", "knn", "self-train")


def row_vectors(inputs: Inputs) -> np.ndarray:
    """One vector per row for neighbour search.

    A pair is (u + v, |u - v|) of its unit vectors: symmetric, and it keeps
    what the two texts share and where they differ (on STS-B this finds
    neighbours of similar similarity far better than [u, v, u*v, |u-v|]).  A
    condition is appended to its text, so rows under other conditions are far.
    """
    unit = {s: t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12) for s, t in inputs.tables.items()}
    rows = {s: unit[s][inputs.index[s]] for s in inputs.sides}
    parts = [rows["text"] + rows["pair"], np.abs(rows["text"] - rows["pair"])] if "pair" in rows else [rows["text"]]
    if "condition" in rows:
        parts.append(rows["condition"])
    return np.hstack(parts).astype(np.float32)


COMBINE = ("ridge", "weighted")  # how labelled rows turn function outputs into scores (see label_with_functions)


def label_with_functions(
    texts: list[str], functions=None, labeled_texts=None, y=None, combine_with: str = "ridge"
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores (NaN where every function abstains), a confidence, and a report of the functions.

    Without labels: the plain mean of the functions that voted.  With labelled texts, ``combine_with``
    ``ridge`` (the default, the better on benchmarks/weak.py's lexicon task) fits a ridge regression
    from each function's vote and output to the labels; ``weighted`` learns the weights of the weighted
    mean (``learn_weights``).  Either way the scores land on the labels' scale (the weighted mean through
    its fitted ``affine_map``).  The confidence is the share of the total weight whose function voted on
    the row.
    """
    check_choice(combine_with, "combine_with", COMBINE)
    functions = resolve(functions)
    outputs, names = apply(texts, functions)
    weights = np.ones(len(names)) / len(names)
    result = {"functions": coverage_report(outputs, names)}
    scores = None
    if labeled_texts is not None:
        labeled_outputs, _ = apply(labeled_texts, functions)
        if combine_with == "ridge":
            fitted = learn_ridge(labeled_outputs, y)
            weights, scores = ridge_weights(labeled_outputs, fitted), ridge_combine(outputs, fitted)
        else:
            weights = learn_weights(labeled_outputs, y)
            intercept, slope = affine_map(combine(labeled_outputs, weights), y)
            scores = intercept + slope * combine(outputs, weights)
        result["combine"] = combine_with
        for name, entry in coverage_report(labeled_outputs, names, y).items():
            result["functions"][name].update({k: v for k, v in entry.items() if k != "coverage"})
    for name, w in zip(names, weights):
        result["functions"][name]["weight"] = float(w)
    confidence = (~np.isnan(outputs) * weights).sum(1) / weights.sum()
    return combine(outputs, weights) if scores is None else scores, confidence, result


def _ids(df: pd.DataFrame, id_col) -> list:
    if id_col is not None:
        return df[id_col].tolist()
    return df["id"].tolist() if "id" in df.columns else list(range(1, len(df) + 1))


def pseudolabel(
    cache: EmbeddingCache,
    data: pd.DataFrame,
    columns: dict,
    method: str,
    labeled: pd.DataFrame | None = None,
    label_col: str | None = None,
    lfs=None,
    k: int = 10,
    model: HeadModel | None = None,
    rounds: int = 3,
    committee: int = 3,
    select: str = "rmse",
    label_range=None,
    val_data: pd.DataFrame | None = None,
    id_col=None,
    paths=("data", "labeled"),
    add_missing: bool = False,
    min_confidence: float = 0.0,
    progress: bool = True,
    combine_with: str = "ridge",
) -> tuple[pd.DataFrame, dict]:
    """Score the rows of ``data``; returns the output table and a summary.

    Scored rows below ``min_confidence`` are left out of the table (``n_below_min_confidence`` counts
    them).  ``lfs`` is a list of labeling functions, or of names registered with ``labeling_function``
    (default: the built-in ones); with labelled rows they are combined by ``combine_with`` (``ridge`` or
    ``weighted``: see ``label_with_functions``).  The summary holds the method and counts, and per function (``lf``)
    or per round (``self-train``, with ``models``: the kept round's committee) details.
    """
    check_choice(method, "method", METHODS)
    check_int(k, "k")
    check_float(min_confidence, "min_confidence", 0, 1)
    label_range = check_label_range(label_range)
    if method != "lf" and labeled is None:
        raise ParameterError(
            f"method {method!r} needs labelled rows (labeled=..., label_col=...; --labeled FILE --label-col COL)"
        )
    if labeled is not None and label_col is None:
        raise ParameterError("labelled rows need a label column (label_col=..., --label-col)")
    columns = {s: c for s, c in columns.items() if c is not None}
    text_cols = _check_tables(data, labeled, columns, id_col, paths)
    y = None if labeled is None else load_labels(labeled, [label_col], paths[1])
    if y is not None:
        check_label_values(y, label_range, [label_col], paths[1])
    known = set() if labeled is None else set(labeled[text_cols].itertuples(index=False, name=None))
    new = ~pd.Series(list(data[text_cols].itertuples(index=False, name=None))).isin(known).to_numpy()
    rest = data[new]
    summary = {
        "method": method,
        "n_data": len(data),
        "n_labeled": 0 if labeled is None else len(labeled),
        "n_scored": int(new.sum()),
        "labeling_functions": None,
    }
    if not len(rest):
        raise InputError(f"{paths[0]}: every row is already in the labelled file; nothing to score")

    if method == "lf":
        template = columns.get("template")
        texts = [
            template_texts(df, template, p) if template else df[columns["text"]].tolist()
            for df, p in ((rest, paths[0]), (labeled, paths[1]))
            if df is not None
        ]
        scores, confidence, details = label_with_functions(
            texts[0], lfs, texts[1] if len(texts) > 1 else None, None if y is None else y[:, 0], combine_with
        )
        summary.update(details, labeling_functions=list(details["functions"]))
        scores = scores[:, None]
    else:
        if model is not None and model.config.features != "final":
            raise ParameterError("pseudolabel reads sentence vectors: --features layers is for heads train")
        rest_inputs = load_inputs(cache, rest, columns, paths[0], add_missing)
        lab_inputs = load_inputs(cache, labeled, columns, paths[1], add_missing)
        if method == "knn":
            s, confidence = propagate(row_vectors(lab_inputs), y[:, 0], row_vectors(rest_inputs), k=k)
            scores = s[:, None]
        else:
            val = (
                None
                if val_data is None
                else (
                    load_inputs(cache, val_data, columns, table_source(val_data, "val data"), add_missing),
                    load_labels(val_data, [label_col], table_source(val_data, "val data")),
                )
            )
            result = _self_train(
                model or HeadModel(),
                lab_inputs,
                y,
                rest_inputs,
                val,
                rounds=rounds,
                committee=committee,
                select=select,
                labels=[label_col],
                progress=progress,
            )
            scores, confidence = result.scores, result.confidence
            summary.update(best_round=result.best_round, rounds=result.rounds, models=result.models)
    if label_range is not None:  # a self-trained committee is bounded already; functions and neighbours are not
        scores = np.clip(scores, *label_range)
    out = _table(data, new, scores, confidence, labeled, y, text_cols, id_col)
    summary["n_abstained"] = int(np.isnan(scores[:, 0]).sum())  # every labeling function abstained: no score to write
    below = (out.source == "data") & (out.confidence < min_confidence)
    summary["n_below_min_confidence"] = int(below.sum())
    return out[~below].reset_index(drop=True), summary


def _check_tables(data, labeled, columns: dict, id_col, paths) -> list[str]:
    """The columns a row's texts come from (a template's fields in place of a text column), checked in both tables."""
    template = columns.get("template")
    text_cols = list(
        dict.fromkeys(
            (template_columns(template) if template else []) + [c for s, c in columns.items() if s != "template"]
        )
    )
    for df, path in ((data, paths[0]), (labeled, paths[1])):
        if df is not None:
            check_columns(df, text_cols, path)
            for col in text_cols:
                column_texts(df, col, path)
    if id_col is not None and id_col not in data.columns:
        raise InputError(f"{paths[0]}: no column {id_col!r}; available columns: {', '.join(map(str, data.columns))}")
    return text_cols


def _self_train(model: HeadModel, labeled: Inputs, y, rest: Inputs, val, **options):
    """Self-training judged on ``val`` (inputs, labels), or on a grouped split of the labelled rows."""
    if val is None:
        tr, va = grouped_split(labeled.index["text"], model.config.val_fraction, model.config.seed)
        labeled, y, val = labeled.subset(tr), y[tr], (labeled.subset(va), y[va])
    return self_train(model, labeled, y, rest, *val, **options)


def _table(data, new, scores, confidence, labeled, y, text_cols, id_col) -> pd.DataFrame:
    """The labelled rows (their own label, confidence 1), then each new row of ``data`` that has a score."""
    scored = ~np.isnan(scores[:, 0])
    parts = []
    if labeled is not None:
        parts.append(
            pd.DataFrame(
                {
                    "source": "labeled",
                    "id": _ids(labeled, id_col if id_col in labeled.columns else None),
                    **{c: labeled[c].tolist() for c in text_cols},
                    "score": y[:, 0],
                    "confidence": 1.0,
                }
            )
        )
    rest = data[new]
    ids = np.asarray(_ids(data, id_col), dtype=object)[new][scored]
    parts.append(
        pd.DataFrame(
            {
                "source": "data",
                "id": ids,
                **{c: rest[c].to_numpy()[scored] for c in text_cols},
                "score": scores[scored, 0],
                "confidence": np.asarray(confidence)[scored],
            }
        )
    )
    return pd.concat(parts, ignore_index=True)
