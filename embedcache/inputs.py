"""Reading text tables (CSV, TSV, JSON, JSONL, Parquet) and pulling validated texts out of them.

Every error names the file, and where it can the row (1-based data row, the
header not counted), the column and what was expected.
"""

from __future__ import annotations

import io
import json
import math
import string
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"{path}: invalid UTF-8 at byte offset {e.start} (line {line}): byte {data[e.start : e.start + 1]!r}; "
            "save the file as UTF-8"
        ) from None


def _extra_fields(path: Path, text: str, fmt: str) -> str:
    """The message for a CSV/TSV row with more fields than its header, naming the first such line."""
    import csv

    reader = csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t")
    width = len(next(reader, []))
    for row in reader:
        if len(row) > width:
            return (
                f"{path}: line {reader.line_num} has {len(row)} fields, but the header names {width} columns; "
                "quote fields that contain the separator"
            )
    return f"{path}: a row has more fields than the header names columns; quote fields that contain the separator"


def read_table(path, fmt: str | None = None, header: bool = True) -> pd.DataFrame:
    """Read a table; the format comes from the extension unless ``fmt`` is given.

    Text columns keep their text exactly: nothing is parsed as a number or NaN
    except an empty CSV field, which reads as an empty text.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a data file")
    fmt = fmt or FORMATS.get(path.suffix.lower())
    if fmt not in FORMATS.values():
        raise InputError(
            f"{path}: cannot tell the format from the extension {path.suffix!r}; "
            f"expected one of {', '.join(sorted(FORMATS))} (or pass a format)"
        )
    if fmt == "parquet":
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for damaged files
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
    elif fmt in ("csv", "tsv"):
        text = _decode(path)
        import warnings

        try:
            with warnings.catch_warnings():
                # index_col=False: a row with more fields than the header is an error, never an index
                warnings.simplefilter("error", pd.errors.ParserWarning)
                df = pd.read_csv(
                    io.StringIO(text),
                    sep="," if fmt == "csv" else "\t",
                    dtype=str,
                    keep_default_na=False,
                    skip_blank_lines=False,
                    index_col=False,
                    header=0 if header else None,
                )
        except pd.errors.ParserWarning:
            raise InputError(_extra_fields(path, text, fmt)) from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise InputError(f"{path}: not a readable {fmt.upper()} file ({' '.join(str(e).split())})") from None
        if header:  # pandas renames a repeated name to 'name.1': a column would be read silently from the other
            import csv

            first = next(csv.reader(io.StringIO(text), delimiter="," if fmt == "csv" else "\t"), [])
            repeated = sorted({c for c in first if first.count(c) > 1})
            if repeated:
                raise InputError(
                    f"{path}: the header names column {', '.join(map(repr, repeated))} more than once "
                    "(line 1); give each column its own name"
                )
    elif fmt == "json":
        text = _decode(path)
        try:
            records = json.loads(text, object_pairs_hook=_unique_keys)
        except _DuplicateKey as e:
            raise InputError(f"{path}: a JSON object has the key {e.args[0]!r} twice; keep one") from None
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise InputError(f"{path}: expected a JSON array of objects (one per row), found {type(records).__name__}")
        df = _frame(records, path)
    else:
        records = []
        for lineno, line in enumerate(_decode(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line, object_pairs_hook=_unique_keys)
            except _DuplicateKey as e:
                raise InputError(f"{path}: line {lineno} has the key {e.args[0]!r} twice; keep one") from None
            except json.JSONDecodeError as e:
                raise InputError(f"{path}: invalid JSON on line {lineno}, column {e.colno}: {e.msg}") from None
            if not isinstance(record, dict):
                raise InputError(f"{path}: line {lineno} is a {type(record).__name__}, expected a JSON object")
            records.append(record)
        df = _frame(records, path)
    df.columns = [str(c) for c in df.columns]
    repeated = sorted(set(df.columns[df.columns.duplicated()]))
    if repeated:
        raise InputError(
            f"{path}: column {', '.join(map(repr, repeated))} appears more than once; give each column its own name"
        )
    df.attrs["source"] = str(path)  # errors about this table name the file, not 'data'
    return df


class _DuplicateKey(Exception):
    pass


def _frame(records: list[dict], path) -> pd.DataFrame:
    """A table of JSON records; a string that is not text (a lone surrogate from an escape like "\\ud800",
    which no encoder can read) is an InputError naming the row and column."""
    for i, record in enumerate(records):
        for column, value in record.items():
            if isinstance(value, str):
                _check_text(value, path, i, column)
    return pd.DataFrame.from_records(records)


def _check_text(value: str, path, i: int, column) -> None:
    """A string must encode as UTF-8: a lone surrogate (JSON's "\\ud800" escape gives one) is not text."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InputError(
            f"{path}: row {i + 1}, column {column!r}: character {e.start + 1} is a lone UTF-16 "
            f"surrogate {value[e.start]!r}, not text; fix the escape in the file"
        ) from None


def _unique_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise _DuplicateKey(next(k for k in keys if keys.count(k) > 1))
    return dict(pairs)


def table_source(df: pd.DataFrame, default: str = "data") -> str:
    """The file a table was read from (``read_table`` records it), for error messages."""
    return df.attrs.get("source", default)


def first_rows(texts, tables) -> list[str | None]:
    """Where each text first occurs in ``tables`` (``(path, DataFrame)`` pairs): 'PATH row N, column C'
    (1-based data rows), or None where it does not (a composed text)."""
    return [
        next(
            (
                f"{path} row {i + 1}, column {col!r}"
                for path, df in tables
                for col in df.columns
                for i in np.flatnonzero((df[col] == text).to_numpy())[:1]
            ),
            None,
        )
        for text in texts
    ]


def _is_missing(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def check_columns(df: pd.DataFrame, columns, path) -> None:
    unknown = [c for c in columns if c not in df.columns]
    if unknown:
        raise InputError(
            f"{path}: no column {', '.join(map(repr, unknown))}; available columns: {', '.join(df.columns)}"
        )


def bad_rows(df: pd.DataFrame, column: str, path) -> list[int]:
    """0-based positions of rows whose ``column`` holds no usable text; raises on a non-text value."""
    bad = []
    for i, value in enumerate(df[column].tolist()):
        if _is_missing(value):
            bad.append(i)
        elif not isinstance(value, str):
            raise InputError(
                f"{path}: row {i + 1}, column {column!r}: expected text, found {type(value).__name__} {value!r}"
            )
        else:
            _check_text(value, path, i, column)
    return bad


def template_columns(template: str) -> list[str]:
    """The columns a template names; a malformed template is an InputError."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as e:
        raise InputError(
            f"template {template!r}: {e}; write columns as {{name}} and a literal brace as {{{{ or }}}}"
        ) from None
    bad = [f for f in fields if not f or any(c in f for c in ".[!:")]
    if bad:
        raise InputError(f"template {template!r}: field {{{bad[0]}}} is not a column name; write columns as {{name}}")
    return fields


def compose(df: pd.DataFrame, template: str, rows) -> list[str]:
    """Fill ``template`` (``str.format`` fields naming columns) for each of ``rows``."""
    fields = template_columns(template)
    columns = {f: df[f].tolist() for f in dict.fromkeys(fields)}
    return [template.format(**{f: columns[f][i] for f in columns}) for i in rows]


def texts_from_table(df: pd.DataFrame, path, text_cols=(), template: str | None = None, skip_empty: bool = False):
    """Texts to cache from one table: each of ``text_cols`` and the ``template`` composition.

    Returns ``(texts, skipped)``.  A row with an empty, whitespace, NaN or None
    value in any column used is an error naming up to 10 rows, or with
    ``skip_empty`` is skipped whole and counted.
    """
    text_cols = list(text_cols)
    if not text_cols and template is None:
        raise InputError("give at least one text column or a template")
    used = list(dict.fromkeys(text_cols + (template_columns(template) if template else [])))
    if template is not None and not template_columns(template):
        raise InputError(f"template {template!r} names no column; write columns as {{name}}")
    check_columns(df, used, path)
    if not len(df):
        raise InputError(f"{path}: has no data rows")
    skip = set()
    for column in used:
        bad = bad_rows(df, column, path)
        if bad and not skip_empty:
            shown = ", ".join(str(i + 1) for i in bad[:10])
            more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
            raise InputError(
                f"{path}: column {column!r} has {len(bad)} empty, whitespace-only or missing texts, "
                f"at rows {shown}{more} (1-based data rows); fix them or pass --skip-empty"
            )
        skip.update(bad)
    keep = [i for i in range(len(df)) if i not in skip]
    texts: list = []
    for column in text_cols:
        values = df[column].tolist()
        texts.extend(values[i] for i in keep)
    if template is not None:
        texts.extend(compose(df, template, keep))
    return texts, len(skip)
