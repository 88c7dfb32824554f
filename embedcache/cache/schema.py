"""The checks of a manifest document: what every field must be, each error naming the field.

``Manifest.from_json`` runs them before it builds a manifest; ``verify --rebuild``
runs them on what it writes, and on a part's old manifest to decide whether it is
whole.
"""

from __future__ import annotations

import json
import re

from ..shards import DTYPES
from .layout import FORMAT, FORMAT_LAYERS, PART_NAME, SHARD_NAME

HEX = re.compile(r"^[0-9a-f]{64}$")


def _whole(v, low=1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _strings(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def encoder_problem(v) -> str | None:
    """What is wrong with an encoder record, naming the field; None when it is valid."""
    if not (isinstance(v, dict) and isinstance(v.get("name"), str)):
        return "an object with a string 'name'"
    for name, ok, expected in (
        ("load", lambda x: isinstance(x, (dict, type(None))), "an object or null"),
        ("description", lambda x: isinstance(x, (dict, type(None))), "an object or null"),
        ("languages", lambda x: x is None or _strings(x), "a list of strings or null"),
        ("quick_keys", _strings, "a list of strings"),
    ):
        if name in v and not ok(v[name]):
            return f"an object whose {name!r} is {expected}"
    return None


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest document, naming the field; None when it is valid."""
    if not isinstance(m, dict):
        return f"expected a JSON object, found {type(m).__name__}"

    wanted = {  # field -> what it must be, None where it is
        "format": None
        if m.get("format") == (FORMAT_LAYERS if "layers" in m else FORMAT)
        else (f"{FORMAT_LAYERS!r} (it lists layers)" if "layers" in m else repr(FORMAT)),
        "fingerprint": None if isinstance(m.get("fingerprint"), str) and m["fingerprint"] else "a non-empty string",
        "encoder": encoder_problem(m.get("encoder")),
        "dim": None if _whole(m.get("dim")) else "a whole number >= 1",
        "dtype": None if m.get("dtype") in DTYPES else f"one of {', '.join(DTYPES)}",
        "shards": None if isinstance(m.get("shards"), list) else "a list",
    }
    for name, want in wanted.items():
        if name not in m:
            return f"field {name!r} is missing"
        if want:
            return f"field {name!r} must be {want}, found {type(m[name]).__name__} {json.dumps(m[name])[:40]}"
    seen = set()
    for i, shard in enumerate(m["shards"]):
        where = f"shards[{i}]"
        if not isinstance(shard, dict) or set(shard) != {"file", "rows", "sha256"}:
            return f"{where} must be an object with exactly 'file', 'rows' and 'sha256', found {json.dumps(shard)[:60]}"
        if not isinstance(shard["file"], str) or not SHARD_NAME.match(shard["file"]):
            # a path out of the directory ('../x', '/etc/x') is refused before anything is read or deleted
            return f"{where}.file must be a file name like 'shard-000001.h5' in the cache directory, found {shard['file']!r}"
        if shard["file"] in seen:
            return f"{where}.file {shard['file']!r} is listed twice"
        seen.add(shard["file"])
        if not _whole(shard["rows"]):
            return f"{where}.rows must be a whole number >= 1, found {json.dumps(shard['rows'])}"
        if not isinstance(shard["sha256"], str) or not HEX.match(shard["sha256"]):
            return f"{where}.sha256 must be 64 hex digits, found {json.dumps(shard['sha256'])[:70]}"
    layers = m.get("layers")
    if "layers" in m and not (
        isinstance(layers, list) and layers and all(_whole(i, 0) for i in layers) and layers == sorted(set(layers))
    ):
        return f"field 'layers' must be a non-empty list of increasing layer indices, found {json.dumps(layers)[:60]}"
    unknown = m.get("unknown")
    if unknown is not None and not (
        isinstance(unknown, dict) and _whole(unknown.get("mostly_unknown"), 0) and _strings(unknown.get("examples"))
    ):
        return (
            "field 'unknown' must be an object with a whole number 'mostly_unknown' and a list of strings "
            f"'examples', found {json.dumps(unknown)[:60]}"
        )
    part = m.get("part")
    if "part" in m and not (
        isinstance(part, dict) and isinstance(part.get("name"), str) and isinstance(part.get("id"), str)
    ):
        return f"field 'part' must be an object with a string 'name' and a string 'id', found {json.dumps(part)[:60]}"
    return retired_problem(m.get("retired"), seen)


def retired_problem(retired, live=frozenset()) -> str | None:
    """What is wrong with the record of what a compaction replaced (it names files the next writer deletes)."""
    if retired is None:
        return None
    expected = (
        "field 'retired' must be an object with 'shards' (names like 'shard-000001.h5') and 'parts' "
        "(objects with a part 'name' and an 'id')"
    )
    if not (
        isinstance(retired, dict) and isinstance(retired.get("shards"), list) and isinstance(retired.get("parts"), list)
    ):
        return f"{expected}, found {json.dumps(retired)[:60]}"
    for name in retired["shards"]:
        if not (isinstance(name, str) and SHARD_NAME.match(name)):
            return f"{expected}, found shard {json.dumps(name)[:60]}"
        if name in live:
            return f"field 'retired' names shard {name!r}, which field 'shards' lists live: retiring it would delete live data"
    for record in retired["parts"]:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and PART_NAME.match(record["name"])
            and isinstance(record.get("id"), str)
        ):
            return f"{expected}, found part {json.dumps(record)[:60]}"
    return None
