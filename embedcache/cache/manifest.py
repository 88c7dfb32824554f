"""The manifest of a cache directory or of a part: its schema, its checks, how it is read, and the merge rules
for what manifests record besides shards (texts mostly of unknown tokens, encoders' quick keys).

A manifest is a JSON object::

    {"format": "embedcache-1", "fingerprint": "...", "dim": 384, "dtype": "float16",
     "encoder": {"name": ..., "load": {...} or null, "description": ..., "languages": ..., "quick_keys": [...]},
     "shards": [{"file": "shard-000001.h5", "rows": 20000, "sha256": "..."}],
     "unknown": {"mostly_unknown": 3, "examples": [...]},        # optional
     "retired": {"shards": [...], "parts": [{"name", "id"}]},    # optional: what a committed compaction replaced
     "part": {"name": "rank-00001-of-00004", "id": "..."}}       # a part's only
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path

from ..encoders import Encoder, spec_difference
from ..errors import CacheDamagedError, FingerprintMismatchError
from ..shards import DTYPES
from ..version import __version__
from .layout import ENCODER_ATTR, FORMAT, MANIFEST, PART_NAME, SHARD_NAME, part_dir

HEX = re.compile(r"^[0-9a-f]{64}$")
QUICK_KEYS_KEPT = 16  # the quick keys a manifest remembers, newest last
UNKNOWN_EXAMPLES_KEPT = 5


def new_manifest(encoder: Encoder, dtype: str) -> dict:
    """The manifest of a new, empty cache written by ``encoder`` in ``dtype``."""
    return {
        "format": FORMAT,
        "fingerprint": encoder.fingerprint,
        "encoder": {
            "name": encoder.name,
            "load": encoder.spec,
            "description": encoder.describe(),
            "languages": list(encoder.languages) if encoder.languages else None,
        },
        "dim": encoder.dim,
        "dtype": dtype,
        "shards": [],
        "created_with": f"embedcache {__version__}",
    }


def new_part_manifest(encoder: Encoder, dtype: str, name: str) -> dict:
    """The manifest of a new part.  A fresh id each time: a compaction retires a part by id, so a part of
    the same name begun after it is never mistaken for the one it copied."""
    return {**new_manifest(encoder, dtype), "part": {"name": name, "id": uuid.uuid4().hex}}


def rebuilt_manifest(group: tuple, encoder: dict, shards: list[dict], left_out: list[str], part: str | None) -> dict:
    """A manifest written from the shards' own records (``group``: fingerprint, dim, dtype)."""
    manifest = {
        "format": FORMAT,
        "fingerprint": group[0],
        "encoder": encoder,
        "dim": group[1],
        "dtype": group[2],
        "created_with": f"embedcache {__version__}",
        "rebuilt": {"at": time.time(), "shards_left_out": left_out},
        "shards": shards,
    }
    if part is not None:
        manifest["part"] = {"name": part, "id": uuid.uuid4().hex}
    return manifest


def shard_attributes(manifest: dict) -> dict:
    """The attributes every shard of a cache carries, so a lost manifest can be rebuilt from shards."""
    record = {k: v for k, v in manifest["encoder"].items() if k != "quick_keys"}
    return {
        "fingerprint": manifest["fingerprint"],
        "encoder": manifest["encoder"]["name"],
        "created": time.time(),
        ENCODER_ATTR: json.dumps(record, sort_keys=True),
    }


def check_encoder(manifest: dict, path: Path, encoder: Encoder) -> None:
    """FingerprintMismatchError, naming what differs, unless ``encoder`` made the vectors of the cache at
    ``path`` whose top-level manifest is ``manifest``."""
    if encoder.fingerprint != manifest["fingerprint"]:
        differ = spec_difference(manifest["encoder"].get("load"), encoder.spec, ("the cache", "the encoder"))
        raise FingerprintMismatchError(
            f"cache {path} was built by encoder {manifest['encoder']['name']!r} "
            f"(fingerprint {manifest['fingerprint']}), but the given encoder is {encoder.name!r} "
            f"(fingerprint {encoder.fingerprint}); they differ in: {differ}; use another cache directory for it"
        )


def rebuild_hint(path: Path) -> str:
    return (
        f"nothing was changed: run 'embedcache verify {path} --rebuild' to rebuild the manifest from "
        "the shards' own records"
    )


def read_manifest(path: Path, part: str | None = None, top: dict | None = None) -> dict:
    """The checked manifest of the top level (None) or of a part of the cache at ``path``; a part's must fit
    the top level's (``top``, read from disk when not given).  A damaged one raises CacheDamagedError."""
    file = part_dir(path, part) / MANIFEST
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CacheDamagedError(f"cannot read {file}: {e}; {rebuild_hint(path)}") from None
    problem = manifest_problem(manifest)
    if not problem and part is not None:
        problem = part_problem(manifest, part, top if top is not None else read_manifest(path))
    if problem:
        raise CacheDamagedError(f"{file}: {problem}; {rebuild_hint(path)}")
    return manifest


def retired_part_ids(top: dict) -> set[str]:
    """The ids of the parts a committed compaction copied and whose deletion is pending."""
    return {r["id"] for r in (top.get("retired") or {}).get("parts", [])}


# -- merge rules: written once, used by writers, readers and compaction -------------------------------------


def merged_unknown(records) -> dict:
    """One record of texts mostly of unknown tokens from several (``None`` entries count as empty)."""
    seen = [r for r in records if r]
    return {
        "mostly_unknown": sum(r["mostly_unknown"] for r in seen),
        "examples": [e for r in seen for e in r["examples"]][:UNKNOWN_EXAMPLES_KEPT],
    }


def merged_quick_keys(*lists) -> list[str]:
    """Quick keys of several manifests (or new ones), each once, the newest ``QUICK_KEYS_KEPT``."""
    return list(dict.fromkeys(k for keys in lists for k in keys))[-QUICK_KEYS_KEPT:]


def encoder_record(headers: list[dict]) -> dict:
    """The encoder record of a manifest, from the newest shard that kept one (older shards keep only the name)."""
    for h in sorted(headers, key=lambda h: -float(h.get("created", 0))):
        try:
            record = json.loads(h[ENCODER_ATTR])
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                return record
        except (KeyError, TypeError, ValueError):
            continue
    return {"name": str(headers[0].get("encoder", "unknown")), "load": None, "description": None, "languages": None}


# -- checks ---------------------------------------------------------------------------------------------------


def _whole(v, low=1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def manifest_problem(m) -> str | None:
    """What is wrong with a manifest, naming the field; None when it is valid."""
    if not isinstance(m, dict):
        return f"expected a JSON object, found {type(m).__name__}"

    def field(name, ok, expected):
        if name not in m:
            return f"field {name!r} is missing"
        value = m[name]
        if not ok(value):
            return f"field {name!r} must be {expected}, found {type(value).__name__} {json.dumps(value)[:40]}"
        return None

    checks = [
        field("format", lambda v: v == FORMAT, f"{FORMAT!r}"),
        field("fingerprint", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        field(
            "encoder",
            lambda v: (
                isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("load"), (dict, type(None)))
            ),
            "an object with a string 'name'",
        ),
        field("dim", _whole, "a whole number >= 1"),
        field("dtype", lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
        field("shards", lambda v: isinstance(v, list), "a list"),
    ]
    problem = next((c for c in checks if c), None)
    if problem:
        return problem
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


def part_problem(manifest: dict, name: str, top: dict) -> str | None:
    """What makes a part's (valid) manifest unfit for the cache whose top-level manifest is ``top``."""
    record = manifest.get("part")
    if not (isinstance(record, dict) and record.get("name") == name and isinstance(record.get("id"), str)):
        return f"field 'part' must be an object with 'name' {name!r} and a string 'id', found {json.dumps(record)[:60]}"
    for field in ("fingerprint", "dim", "dtype"):
        if manifest[field] != top[field]:
            return (
                f"the part's {field} {manifest[field]!r} differs from the cache's {top[field]!r}: a part must be "
                "written by the cache's own encoder"
            )
    return None
