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

from embedcache import (
    EmbeddingCache,
    InputError,
    ParameterError,
    check_choice,
    check_int,
    check_label_range,
)
from embedcache.inputs import check_columns, source, template_columns

from .data import (
    Inputs,
    column_texts,
    grouped_split,
    load_inputs,
    load_labels,
    template_texts,
)
from .labeling import apply, combine, coverage_report, learn_weights
from .model import HeadModel, check_label_values
from .neighbours import propagate
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


def label_with_functions(texts: list[str], names=None, labeled_texts=None, y=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scores (NaN where every function abstains), a confidence, and a report of the functions.

    With labelled texts the weights are learned against them; the confidence
    is the share of the total weight whose function voted on the row.
    """
    outputs, names = apply(texts, names)
    weights = np.ones(len(names)) / len(names)
    result = {"functions": coverage_report(outputs, names)}
    if labeled_texts is not None:
        labeled_outputs, _ = apply(labeled_texts, names)
        weights = learn_weights(labeled_outputs, y)
        for name, entry in coverage_report(labeled_outputs, names, y).items():
            result["functions"][name]["correlation"] = entry["correlation"]
    for name, w in zip(names, weights):
        result["functions"][name]["weight"] = float(w)
    confidence = (~np.isnan(outputs) * weights).sum(1) / weights.sum()
    return combine(outputs, weights), confidence, result


def _ids(df: pd.DataFrame, id_col) -> list:
    if id_col is not None:
        return df[id_col].tolist()
    return df["id"].tolist() if "id" in df.columns else list(range(1, len(df) + 1))


def pseudolabel(cache: EmbeddingCache, data: pd.DataFrame, columns: dict, method: str, labeled: pd.DataFrame | None = None,
                label_col: str | None = None, lfs=None, k: int = 10, model: HeadModel | None = None, rounds: int = 3,
                committee: int = 3, select: str = "rmse", label_range=None, val_data: pd.DataFrame | None = None, id_col=None, paths=("data", "labeled"),
                add_missing: bool = False, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Score the rows of ``data``; returns the output table and a summary.

    The summary holds the method and counts, and per function (``lf``) or per
    round (``self-train``, with ``models``: the kept round's committee) details.
    """
    check_choice(method, "method", METHODS)
    check_int(k, "k")
    label_range = check_label_range(label_range)
    if method != "lf" and labeled is None:
        raise ParameterError(f"method {method!r} needs labelled rows (--labeled FILE --label-col COL)")
    if labeled is not None and label_col is None:
        raise ParameterError("labelled rows need a label column (--label-col)")
    columns = {s: c for s, c in columns.items() if c is not None}
    template = columns.get("template")
    # the columns a row's texts come from (a template's fields in place of a text column)
    text_cols = list(dict.fromkeys((template_columns(template) if template else [])
                                   + [c for s, c in columns.items() if s != "template"]))
    for df, path in ((data, paths[0]), (labeled, paths[1])):
        if df is not None:
            check_columns(df, text_cols, path)
            for col in text_cols:
                column_texts(df, col, path)
    if id_col is not None and id_col not in data.columns:
        raise InputError(f"{paths[0]}: no column {id_col!r}; available columns: {', '.join(map(str, data.columns))}")

    y = None if labeled is None else load_labels(labeled, [label_col], paths[1])
    if y is not None:
        check_label_values(y, label_range, [label_col], paths[1])
    known = set() if labeled is None else set(labeled[text_cols].itertuples(index=False, name=None))
    new = ~pd.Series(list(data[text_cols].itertuples(index=False, name=None))).isin(known).to_numpy()
    rest = data[new]
    summary = {"method": method, "n_data": len(data), "n_labeled": 0 if labeled is None else len(labeled),
               "n_scored": int(new.sum())}
    if not len(rest):
        raise InputError(f"{paths[0]}: every row is already in the labelled file; nothing to score")

    def text_of(df, path):
        return template_texts(df, template, path) if template else df[columns["text"]].tolist()

    if method == "lf":
        scores, confidence, details = label_with_functions(
            text_of(rest, paths[0]), lfs, None if labeled is None else text_of(labeled, paths[1]), None if y is None else y[:, 0])
        summary.update(details)
        scores = scores[:, None]
    else:
        rest_inputs = load_inputs(cache, rest, columns, paths[0], add_missing)
        lab_inputs = load_inputs(cache, labeled, columns, paths[1], add_missing)
        if method == "knn":
            s, confidence = propagate(row_vectors(lab_inputs), y[:, 0], row_vectors(rest_inputs), k=k)
            scores = s[:, None]
        else:
            model = model or HeadModel()
            if val_data is not None:
                train, y_train = lab_inputs, y
                vpath = source(val_data, "val data")
                val = load_inputs(cache, val_data, columns, vpath, add_missing)
                y_val = load_labels(val_data, [label_col], vpath)
            else:
                tr, va = grouped_split(lab_inputs.index["text"], model.val_fraction, model.seed)
                train, y_train, val, y_val = lab_inputs.subset(tr), y[tr], lab_inputs.subset(va), y[va]
            result = self_train(model, train, y_train, rest_inputs, val, y_val, rounds=rounds, committee=committee, select=select,
                                labels=[label_col], progress=progress)
            scores, confidence = result.scores, result.confidence
            summary.update(best_round=result.best_round, rounds=result.rounds, models=result.models)

    if label_range is not None:  # a self-trained committee is bounded already; functions and neighbours are not
        scores = np.clip(scores, *label_range)
    scored = ~np.isnan(scores[:, 0])
    summary["n_abstained"] = int((~scored).sum())  # every labeling function abstained: no score to write
    parts = []
    if labeled is not None:
        parts.append(pd.DataFrame({"source": "labeled", "id": _ids(labeled, id_col if id_col in labeled.columns else None),
                                   **{c: labeled[c].tolist() for c in text_cols}, "score": y[:, 0], "confidence": 1.0}))
    ids = np.asarray(_ids(data, id_col), dtype=object)[new][scored]
    parts.append(pd.DataFrame({"source": "data", "id": ids, **{c: rest[c].to_numpy()[scored] for c in text_cols},
                               "score": scores[scored, 0], "confidence": np.asarray(confidence)[scored]}))
    return pd.concat(parts, ignore_index=True), summary
