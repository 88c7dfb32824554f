"""The manifest of a cache directory or of a part: a typed record, its checks, how it is read and written, and
the merge rules for what manifests record besides shards (texts mostly of unknown tokens, quick keys).

On disk a manifest is a JSON object::

    {"format": "embedcache-1", "fingerprint": "...", "dim": 384, "dtype": "float16",
     "encoder": {"name": ..., "load": {...} or null, "description": ..., "languages": ..., "quick_keys": [...]},
     "shards": [{"file": "shard-000001.h5", "rows": 20000, "sha256": "..."}],
     "unknown": {"mostly_unknown": 3, "examples": [...]},        # optional
     "retired": {"shards": [...], "parts": [{"name", "id"}]},    # optional: what a committed compaction replaced
     "part": {"name": "rank-00001-of-00004", "id": "..."}}       # a part's only

In memory it is a ``Manifest``: ``Manifest.from_json`` checks every field (the error names it) and
``to_json`` writes it back, keeping any field a newer version added.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..encoders import Encoder
from ..errors import CacheDamagedError
from ..files import atomic_write_json
from ..version import __version__
from .layout import ENCODER_ATTR, FORMAT, FORMAT_LAYERS, MANIFEST, part_dir
from .schema import encoder_problem, manifest_problem

QUICK_KEYS_KEPT = 16  # the quick keys a manifest remembers, newest last
UNKNOWN_EXAMPLES_KEPT = 5


@dataclass(frozen=True)
class ShardRecord:
    """A whole shard a manifest lists: its file name in the directory, its rows and checksum."""

    file: str
    rows: int
    sha256: str

    def to_json(self) -> dict:
        return {"file": self.file, "rows": self.rows, "sha256": self.sha256}


@dataclass(frozen=True)
class PartRecord:
    """Which writer's part a manifest is (``name``), and which life of it (``id``, new each time it is begun)."""

    name: str
    id: str

    def to_json(self) -> dict:
        return {"name": self.name, "id": self.id}


@dataclass(frozen=True)
class Unknown:
    """Texts that were mostly tokens the encoder does not know: how many, and a few of them."""

    mostly_unknown: int = 0
    examples: tuple[str, ...] = ()

    @classmethod
    def merged(cls, records) -> Unknown:
        """One record from several (``None`` entries count as empty): the merge rule, written once."""
        seen = [r for r in records if r]
        return cls(
            sum(r.mostly_unknown for r in seen), tuple(e for r in seen for e in r.examples)[:UNKNOWN_EXAMPLES_KEPT]
        )

    def to_json(self) -> dict:
        return {"mostly_unknown": self.mostly_unknown, "examples": list(self.examples)}


@dataclass(frozen=True)
class Retired:
    """What a committed compaction replaced and the next writer of the top level deletes."""

    shards: tuple[str, ...] = ()
    parts: tuple[PartRecord, ...] = ()

    def to_json(self) -> dict:
        return {"shards": list(self.shards), "parts": [p.to_json() for p in self.parts]}


@dataclass(frozen=True)
class ManifestEncoder:
    """What a manifest keeps of the encoder of its vectors: its name, how to load it again (None: a custom
    encoder), where and how it ran, its languages, and the quick keys found to match it."""

    name: str
    load: dict | None = None
    description: dict | None = None
    languages: tuple[str, ...] | None = None
    quick_keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, encoder: Encoder) -> ManifestEncoder:
        languages = tuple(encoder.languages) if encoder.languages else None
        return cls(encoder.name, encoder.spec, encoder.describe(), languages)

    @classmethod
    def from_json(cls, d: dict) -> ManifestEncoder:
        languages = d.get("languages")
        return cls(
            d["name"],
            d.get("load"),
            d.get("description"),
            tuple(languages) if isinstance(languages, list) else None,
            tuple(d.get("quick_keys") or ()),
        )

    def with_quick_keys(self, *lists) -> ManifestEncoder:
        """This record knowing the quick keys of ``lists`` too: each once, the newest ``QUICK_KEYS_KEPT``."""
        keys = list(dict.fromkeys(k for keys in (self.quick_keys, *lists) for k in keys))[-QUICK_KEYS_KEPT:]
        return replace(self, quick_keys=tuple(keys))

    def to_json(self, quick_keys: bool = True) -> dict:
        out: dict[str, Any] = {
            "name": self.name,
            "load": self.load,
            "description": self.description,
            "languages": list(self.languages) if self.languages is not None else None,
        }
        if quick_keys and self.quick_keys:
            out["quick_keys"] = list(self.quick_keys)
        return out


KNOWN_FIELDS = {"format", "fingerprint", "encoder", "dim", "dtype", "shards", "created_with"}
KNOWN_FIELDS |= {"unknown", "retired", "part", "rebuilt", "layers"}


@dataclass
class Manifest:
    """The manifest of the top level (``part`` None) or of a part, as a typed record."""

    fingerprint: str
    encoder: ManifestEncoder
    dim: int
    dtype: str
    shards: list[ShardRecord] = field(default_factory=list)
    created_with: str | None = None
    unknown: Unknown | None = None
    retired: Retired | None = None
    part: PartRecord | None = None
    rebuilt: dict | None = None
    layers: tuple[int, ...] | None = None  # the hidden states whose means each text has besides its vector
    extra: dict = field(default_factory=dict)  # fields a newer version wrote: kept as they are

    @classmethod
    def new(
        cls, encoder: Encoder, dtype: str, part: str | None = None, layers: tuple[int, ...] | None = None
    ) -> Manifest:
        """The manifest of a new, empty cache (or part) written by ``encoder`` in ``dtype``.  A part gets a
        fresh id each time: a compaction retires a part by id, so a part of the same name begun after it is
        never mistaken for the one it copied."""
        return cls(
            encoder.fingerprint,
            ManifestEncoder.of(encoder),
            encoder.dim,
            dtype,
            created_with=f"embedcache {__version__}",
            part=None if part is None else new_part(part),
            layers=layers,
        )

    @classmethod
    def from_json(cls, obj: Any) -> Manifest:
        """The manifest a JSON document holds; ValueError naming the field when it is not a valid one."""
        problem = manifest_problem(obj)
        if problem:
            raise ValueError(problem)
        unknown, retired, part = obj.get("unknown"), obj.get("retired"), obj.get("part")
        return cls(
            obj["fingerprint"],
            ManifestEncoder.from_json(obj["encoder"]),
            obj["dim"],
            obj["dtype"],
            [ShardRecord(s["file"], s["rows"], s["sha256"]) for s in obj["shards"]],
            obj.get("created_with"),
            Unknown(unknown["mostly_unknown"], tuple(unknown["examples"])) if unknown else None,
            Retired(tuple(retired["shards"]), tuple(PartRecord(p["name"], p["id"]) for p in retired["parts"]))
            if retired is not None
            else None,
            PartRecord(part["name"], part["id"])
            if isinstance(part, dict) and "name" in part and "id" in part
            else None,
            obj.get("rebuilt"),
            tuple(obj["layers"]) if "layers" in obj else None,
            {k: v for k, v in obj.items() if k not in KNOWN_FIELDS},
        )

    def to_json(self) -> dict:
        out: dict[str, Any] = {
            "format": FORMAT if self.layers is None else FORMAT_LAYERS,
            "fingerprint": self.fingerprint,
            "encoder": self.encoder.to_json(),
            "dim": self.dim,
            "dtype": self.dtype,
            "shards": [s.to_json() for s in self.shards],
        }
        if self.created_with is not None:
            out["created_with"] = self.created_with
        if self.rebuilt is not None:
            out["rebuilt"] = self.rebuilt
        if self.layers is not None:
            out["layers"] = list(self.layers)
        for name, record in (("unknown", self.unknown), ("retired", self.retired), ("part", self.part)):
            if record is not None:
                out[name] = record.to_json()
        return {**out, **self.extra}

    @property
    def group(self) -> tuple:
        """``(fingerprint, dim, dtype, layers)``: what every shard and part of the cache shares."""
        return self.fingerprint, self.dim, self.dtype, self.layers

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    def retired_part_ids(self) -> set[str]:
        """The ids of the parts a committed compaction copied and whose deletion is pending."""
        return {p.id for p in self.retired.parts} if self.retired else set()

    def misfit(self, name: str, group: tuple) -> str | None:
        """What makes this manifest unfit for part ``name`` of a cache of ``group`` (``Manifest.group``)."""
        if self.part is None or self.part.name != name:
            found = json.dumps(self.part.to_json() if self.part else None)
            return f"field 'part' must be an object with 'name' {name!r} and a string 'id', found {found[:60]}"
        for label, mine, theirs in zip(("fingerprint", "dim", "dtype", "layers"), self.group, group):
            if mine != theirs:
                return (
                    f"the part's {label} {mine!r} differs from the cache's {theirs!r}: a part must be "
                    "written by the cache's own encoder"
                )
        return None

    def shard_attributes(self) -> dict:
        """The attributes every shard of the cache carries, so a lost manifest can be rebuilt from shards."""
        attributes = {
            "fingerprint": self.fingerprint,
            "encoder": self.encoder.name,
            "created": time.time(),
            ENCODER_ATTR: json.dumps(self.encoder.to_json(quick_keys=False), sort_keys=True),
        }
        return attributes if self.layers is None else {**attributes, "layers": list(self.layers)}


def new_part(name: str) -> PartRecord:
    return PartRecord(name, uuid.uuid4().hex)


def rebuilt_manifest(
    group: tuple, encoder: ManifestEncoder, shards: list[ShardRecord], left_out: list[str], part: str | None
) -> Manifest:
    """A manifest written from the shards' own records (``group``: fingerprint, dim, dtype, layers)."""
    return Manifest(
        group[0],
        encoder,
        group[1],
        group[2],
        shards,
        created_with=f"embedcache {__version__}",
        rebuilt={"at": time.time(), "shards_left_out": left_out},
        part=None if part is None else new_part(part),
        layers=group[3],
    )


def rebuild_hint(path: Path) -> str:
    return (
        f"nothing was changed: run 'embedcache verify {path} --rebuild' to rebuild the manifest from "
        "the shards' own records"
    )


def read_manifest(path: Path, part: str | None = None, top: Manifest | None = None) -> Manifest:
    """The checked manifest of the top level (None) or of a part of the cache at ``path``; a part's must fit
    the top level's (``top``, read from disk when not given).  A damaged one raises CacheDamagedError."""
    file = part_dir(path, part) / MANIFEST
    try:
        obj = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CacheDamagedError(f"cannot read {file}: {e}; {rebuild_hint(path)}") from None
    try:
        manifest = Manifest.from_json(obj)
    except ValueError as e:
        raise CacheDamagedError(f"{file}: {e}; {rebuild_hint(path)}") from None
    if part is not None:
        problem = manifest.misfit(part, (top if top is not None else read_manifest(path)).group)
        if problem:
            raise CacheDamagedError(f"{file}: {problem}; {rebuild_hint(path)}")
    return manifest


def write_manifest(path: Path, part: str | None, manifest: Manifest) -> None:
    """Replace the manifest of the top level (None) or of a part atomically (the caller holds its lock)."""
    atomic_write_json(part_dir(path, part) / MANIFEST, manifest.to_json())


def encoder_record(headers: list[dict]) -> ManifestEncoder:
    """The encoder record of a manifest, from the newest shard that kept one (older shards keep only the name)."""
    for h in sorted(headers, key=lambda h: -float(h.get("created", 0))):
        try:
            record = json.loads(h[ENCODER_ATTR])
            if isinstance(record, dict) and not encoder_problem(record):
                return ManifestEncoder.from_json(record)
        except (KeyError, TypeError, ValueError):
            continue
    return ManifestEncoder(str(headers[0].get("encoder", "unknown")))
