"""From a table and a cache to what a head trains on: distinct vectors per input, indices per row, labels.

Each input side (``text``, ``pair``, ``condition``) is a table of the distinct
vectors of that column plus one index per row: a response scored on 8 metrics
is stored once, and 8 condition vectors serve 450k rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from embedcache import EmbeddingCache, Encoder, InputError, ParameterError
from embedcache.toolkit import bad_rows, check_columns, compose, template_columns

from .sources import Joined

SIDES = ("text", "pair", "condition")


def embed(
    cache: EmbeddingCache | Encoder,
    texts: list[str],
    add_missing: bool = False,
    progress: bool = True,
    layers: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Vectors of ``texts`` from the cache, or from an encoder; with ``layers``, their ``(n, n_layers, dim)``
    layer vectors of those hidden states (a cache must hold exactly those).

    Texts missing from the cache are encoded in memory by the cache's encoder and
    the cache is left as it was; ``add_missing=True`` stores them in it.
    """
    if isinstance(cache, Joined):  # several encoders' vectors side by side
        if layers is not None:
            raise ParameterError("layer vectors are read from one cache: --features layers takes one --cache")
        return cache.vectors(embed, texts, add_missing, progress)
    if isinstance(cache, Encoder):
        return cache.encode(texts) if layers is None else cache.encode_layers(texts, layers)[1]
    features = "final"
    if layers is not None:
        if cache.layers != tuple(layers):
            held = f"layers {', '.join(map(str, cache.layers))}" if cache.layers else "no layer vectors"
            raise ParameterError(
                f"the model reads the layer vectors of layers {', '.join(map(str, layers))}, but cache {cache.path} "
                f"holds {held}: give the cache it was trained on (or one built with the same --layers)"
            )
        features = "layers"
    if add_missing:
        if cache.encoder is None and not cache.contains(texts).all():
            cache.load_encoder()
        return cache.encode(texts, progress=progress, features=features)
    return cache.get(texts, encode_missing=True, progress=progress, features=features)


@dataclass
class Inputs:
    """Rows of one dataset: ``tables[side]`` (m, dim) distinct vectors (or (m, n_layers, dim) layer vectors),
    ``index[side]`` (n,) rows into them."""

    tables: dict[str, np.ndarray]
    index: dict[str, np.ndarray]
    condition_values: list | None = None  # the condition text of each row, for per-condition metrics
    sides: tuple = field(init=False)

    def __post_init__(self):
        self.sides = tuple(s for s in SIDES if s in self.tables)

    def __len__(self) -> int:
        return len(self.index["text"])

    def subset(self, rows) -> Inputs:
        rows = np.asarray(rows)
        cond = None if self.condition_values is None else [self.condition_values[i] for i in rows]
        return Inputs(self.tables, {s: i[rows] for s, i in self.index.items()}, cond)

    def join(self, other: Inputs) -> Inputs:
        """The rows of ``self`` followed by those of ``other`` (tables stacked, indices shifted)."""
        if self.sides != other.sides:
            raise ValueError(f"cannot join inputs with sides {self.sides} and {other.sides}")
        tables = {s: np.concatenate([self.tables[s], other.tables[s]]) for s in self.sides}
        index = {s: np.concatenate([self.index[s], other.index[s] + len(self.tables[s])]) for s in self.sides}
        cond = None if self.condition_values is None else list(self.condition_values) + list(other.condition_values)
        return Inputs(tables, index, cond)

    def compact(self) -> Inputs:
        """The same rows with each table cut to the vectors they use (a 10% subset copies 10%)."""
        tables, index = {}, {}
        for side in self.sides:
            used, inverse = np.unique(self.index[side], return_inverse=True)
            small = len(used) < len(self.tables[side])
            tables[side] = self.tables[side][used] if small else self.tables[side]
            index[side] = inverse if small else self.index[side]
        return Inputs(tables, index, self.condition_values)


def column_texts(df: pd.DataFrame, column: str, path) -> list[str]:
    bad = bad_rows(df, column, path)
    if bad:
        rows = ", ".join(str(i + 1) for i in bad[:10])
        raise InputError(f"{path}: column {column!r} has {len(bad)} empty or missing texts, at rows {rows} (1-based)")
    return df[column].tolist()


def template_texts(df: pd.DataFrame, template: str, path) -> list[str]:
    """One text per row composed from columns, e.g. ``'[USER] {prompt}\\n[RESPONSE] {response}'``."""
    fields = template_columns(template)
    if not fields:
        raise InputError(f"template {template!r} names no column; write columns as {{name}}")
    check_columns(df, fields, path)
    for column in dict.fromkeys(fields):
        column_texts(df, column, path)
    return compose(df, template, range(len(df)))


def side_texts(df: pd.DataFrame, columns: dict, path) -> dict[str, list[str]]:
    """The texts of each side (``text``, ``pair``, ``condition``), checked; a ``template`` composes the text side."""
    columns = {s: c for s, c in columns.items() if c is not None}
    template = columns.pop("template", None)
    check_columns(df, [c for s, c in columns.items() if not (s == "text" and template)], path)
    if not len(df):
        raise InputError(f"{path}: has no data rows")
    if template:
        columns["text"] = template
    return {
        side: template_texts(df, template, path) if side == "text" and template else column_texts(df, column, path)
        for side, column in sorted(columns.items(), key=lambda kv: SIDES.index(kv[0]))
    }


def sides_of(columns: dict) -> tuple:
    """The input sides that ``columns`` fill (a template fills the text side)."""
    return tuple(s for s in SIDES if columns.get(s) is not None or (s == "text" and columns.get("template")))


def joint_inputs(encoder, df: pd.DataFrame, columns: dict, path, progress: bool = True) -> Inputs:
    """One vector per row from an encoder that reads the text and its pair (or condition) as one sequence."""
    texts = side_texts(df, columns, path)
    second = texts.get("pair", texts.get("condition"))
    joint = encoder.encode(texts["text"], second, progress=progress)
    return Inputs({"text": joint}, {"text": np.arange(len(df))}, texts.get("condition"))


def load_inputs(
    cache: EmbeddingCache,
    df: pd.DataFrame,
    columns: dict,
    path,
    add_missing: bool = False,
    progress: bool = True,
    layers: tuple[int, ...] | None = None,
) -> Inputs:
    """``columns`` maps side -> column name (``text`` required, ``pair`` and ``condition`` optional;
    ``template`` composes the text side from columns instead); ``layers``: layer vectors of those hidden
    states instead of sentence vectors (see ``embed``).

    Texts missing from the cache are encoded in memory, or stored in it with ``add_missing``.
    """
    tables, index = {}, {}
    texts = side_texts(df, columns, path)
    for side, values in texts.items():
        position: dict[str, int] = {}
        index[side] = np.fromiter(
            (position.setdefault(v, len(position)) for v in values), dtype=np.int64, count=len(values)
        )
        tables[side] = embed(cache, list(position), add_missing, progress, layers)
    return Inputs(tables, index, texts.get("condition"))


def load_labels(df: pd.DataFrame, label_cols: list[str], path) -> np.ndarray:
    """``(n, n_labels)`` float labels; NaN marks a missing label (allowed only with several labels)."""
    check_columns(df, label_cols, path)
    out = np.empty((len(df), len(label_cols)))
    for j, col in enumerate(label_cols):
        raw = df[col]
        booleans = np.flatnonzero(raw.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool))
        if len(booleans):  # JSON true/false: a yes/no, not a score on a scale
            i = booleans[0]
            raise InputError(
                f"{path}: row {i + 1}, column {col!r}: expected a number, found {raw.iloc[i]!r} (a "
                f"boolean; {len(booleans)} such rows): write 1 and 0 if that is the score you mean"
            )
        values = pd.to_numeric(raw.replace("", np.nan), errors="coerce").to_numpy(dtype=float)
        not_numbers = np.flatnonzero(
            np.isnan(values)
            & raw.notna().to_numpy()
            & (raw.astype(str).str.strip() != "").to_numpy()
            & (raw.astype(str).str.lower() != "nan").to_numpy()
        )
        if len(not_numbers):
            i = not_numbers[0]
            raise InputError(
                f"{path}: row {i + 1}, column {col!r}: expected a number, found {raw.iloc[i]!r}"
                f" ({len(not_numbers)} such rows)"
            )
        infinite = np.flatnonzero(np.isinf(values))
        if len(infinite):
            raise InputError(f"{path}: column {col!r} has infinite labels at rows {_rows(infinite)}")
        out[:, j] = values
    missing = np.isnan(out)
    if len(label_cols) == 1 and missing.any():
        raise InputError(
            f"{path}: column {label_cols[0]!r} has NaN or empty labels at rows {_rows(np.flatnonzero(missing[:, 0]))}"
        )
    if missing.all(axis=1).any():
        raise InputError(
            f"{path}: rows {_rows(np.flatnonzero(missing.all(axis=1)))} have no label in any of {label_cols}"
        )
    return out


def _rows(positions) -> str:
    shown = ", ".join(str(i + 1) for i in positions[:10])
    return shown + (f" and {len(positions) - 10} more" if len(positions) > 10 else "") + " (1-based)"


def grouped_split(groups: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation rows, no group (text) on both sides."""
    from sklearn.model_selection import GroupShuffleSplit

    if not 0 < val_fraction < 1:
        raise ParameterError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    if len(np.unique(groups)) < 2:
        raise InputError("need at least 2 distinct texts to hold some out for validation")
    split = GroupShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    train, val = next(split.split(np.zeros(len(groups)), groups=groups))
    return train, val


def as_table(data, columns: dict, sides, conditions=None) -> tuple[pd.DataFrame, str]:
    """Plain Python data as a table with the columns a model was trained on, and what errors call it.

    ``data``: a DataFrame; a ``pathlib.Path`` (or a string naming an existing data file) to read; one
    text; a list of texts; a list of ``(text, pair)`` or ``(text, condition)`` tuples; or a list of
    dicts keyed by ``text``/``pair``/``condition`` or by the trained column (template field) names.
    ``conditions``: one condition per row, for a list of texts.
    """
    from embedcache import read_table
    from embedcache.toolkit import table_source

    if isinstance(data, pd.DataFrame):
        df = data
    elif is_data_file(data):
        return read_table(data), str(data)
    else:
        df = _records(data, columns, sides)
    if conditions is not None:
        if columns.get("condition") is None:
            raise ParameterError("conditions: this model was trained without a condition")
        df = _with_conditions(df, columns["condition"], conditions)
    return df, table_source(df, "data")


def is_data_file(data) -> bool:
    """A ``pathlib.Path``, or a string naming an existing data file (any other string is a text)."""
    from pathlib import Path

    from embedcache.toolkit import FORMATS

    return isinstance(data, Path) or (
        isinstance(data, str) and Path(data).suffix.lower() in FORMATS and Path(data).is_file()
    )


def _with_conditions(df: pd.DataFrame, column: str, conditions) -> pd.DataFrame:
    conditions = list(conditions)
    if len(conditions) != len(df):
        raise ParameterError(f"conditions has {len(conditions)} values for {len(df)} texts")
    return df.assign(**{column: conditions})


def plain_table(data, labels, conditions=None, template=None) -> tuple[pd.DataFrame, list[str], dict]:
    """Texts (a list of texts, ``(text, pair)`` tuples or dicts) and their labels as a table: the table, the
    label column names (``score``, or ``score_0``... for several) and the text columns.  With a ``template``,
    dicts may carry its fields (what predict and serve accept)."""
    identity = {s: s for s in SIDES}
    df = _records(data, identity, ("text", "pair"))
    if conditions is not None:
        df = _with_conditions(df, "condition", conditions)
    fields = list(template_columns(template)) if template else []
    unknown = sorted(set(df.columns) - set(SIDES) - set(fields))
    if unknown:
        known = ", ".join(dict.fromkeys([*fields, "text", "pair", "condition"]))
        raise ParameterError(f"data: unknown field {unknown[0]!r}; items have {known}")
    try:
        y = np.asarray(labels, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(
            f"labels must be numbers, one per text (or a row per text), got {type(labels).__name__}"
        ) from None
    if y.ndim not in (1, 2) or len(y) != len(df):
        raise ParameterError(
            f"labels has shape {y.shape} for {len(df)} texts; expected ({len(df)},) or ({len(df)}, n_labels)"
        )
    names = ["score"] if y.ndim == 1 else [f"score_{j}" for j in range(y.shape[1])]
    df = df.assign(**dict(zip(names, y.reshape(len(df), -1).T)))
    columns = {
        "text_col": "text",
        "pair_col": "pair" if "pair" in df.columns else None,
        "condition_col": "condition" if "condition" in df.columns else None,
    }
    return df, names, columns


def _records(data, columns: dict, sides) -> pd.DataFrame:
    """Rows from a text, a list of texts, of tuples, or of dicts; keyed by the trained column names."""
    names = {s: columns.get(s) for s in SIDES if columns.get(s) is not None}  # side -> trained column
    if isinstance(data, str):
        data = [data]
    if not isinstance(data, (list, tuple)) or not len(data):
        raise ParameterError(
            f"data must be a text, a non-empty list of texts, tuples or dicts, a DataFrame or a "
            f"file path; got {type(data).__name__}" + (" (empty)" if isinstance(data, (list, tuple)) else "")
        )
    second = next((s for s in ("pair", "condition") if s in sides), None)
    rows = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            item = {"text": item}
        elif isinstance(item, (tuple, list)):
            if second is None or len(item) != 2:
                raise ParameterError(
                    f"data[{i}]: a tuple is (text, pair) or (text, condition) for a model trained on "
                    f"two texts; this one reads {', '.join(sides)}"
                )
            item = {"text": item[0], second: item[1]}
        if not isinstance(item, dict):
            raise ParameterError(f"data[{i}]: expected a text, a tuple or a dict, got {type(item).__name__}")
        rows.append({names.get(k, k): v for k, v in item.items()})
    if columns.get("template") is not None and any(names.get("text") is None and "text" in r for r in rows):
        fields = ", ".join(template_columns(columns["template"]))
        raise ParameterError(
            f"this model composes its text from the fields {fields}: give each item as a dict with them"
        )
    return pd.DataFrame(rows)
