"""compact: merge a cache's parts and small shards into large top-level shards, with one atomic commit.

Many writers leave many parts, each with shards as small as a crash made them;
every reader lists them all on opening.  Compaction copies, in reading order,
every text once (its first copy, as readers read it) from the small top-level
shards and from every part no writer holds, into new shards of ``shard_size``
rows.  Then one rename of the top-level manifest commits the result, recording
what it replaced; only after that are the old shards and parts deleted.

A crash before the commit leaves the old cache (the copies, marked as a
compaction's, are deleted by the next writer); a crash after it leaves the new
one (what it replaced is recorded, invisible to readers, and deleted by the
next writer or compaction).  Never half.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import CacheDamagedError, ParameterError
from ..index import KeyIndex
from ..shards import checksum, read_keys, read_vectors, write_shard
from .layout import COMPACTION_ATTR, next_shard_name, part_dir
from .lock import WriteLock, try_lock
from .manifest import Manifest, Retired, ShardRecord, Unknown, read_manifest, write_manifest
from .recovery import retire, tidy
from .store import EmbeddingCache

COMPACT_SHARD_SIZE = 100_000  # rows per merged shard: 77 MB at 384 float16 dims; large enough that opening is cheap


def compact(path, shard_size: int = COMPACT_SHARD_SIZE, progress: bool = False) -> dict:
    """Merge the parts and the top-level shards smaller than ``shard_size`` rows of the cache at ``path``.

    Parts a writer holds now are left for a later compaction.  Returns a summary:
    parts_merged, parts_busy (names), shards_before, shards_after, rows_before (stored
    vectors), rows_after, duplicates_dropped, seconds.
    """
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise ParameterError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
    began = time.perf_counter()
    cache = EmbeddingCache(path)
    before = cache.info()
    held = {}
    with WriteLock(cache.path, None, cache.lock_timeout):
        tidy(cache.path, None)  # first finishes an earlier compaction
        try:
            busy = []
            for name in cache.parts:
                lock = try_lock(cache.path, name)
                if lock is None:
                    busy.append(name)
                else:
                    held[name] = lock
            live = set(cache.parts)  # what the parts hold now that their writers cannot add to them
            top = read_manifest(cache.path)
            parts = {name: read_manifest(cache.path, name, top) for name in held if name in live}
            keep = [s for s in top.shards if s.rows >= shard_size]
            small = [s for s in top.shards if s.rows < shard_size]
            sources = [(None, s) for s in small] + [(name, s) for name, m in parts.items() for s in m.shards]
            if parts or len(small) > 1:
                written, dropped = _copy(cache, keep, sources, shard_size, progress)
                top.shards = keep + written
                _carry_records(top, parts.values())
                retired_parts = tuple(m.part for m in parts.values() if m.part is not None)  # every part has one
                top.retired = Retired(tuple(s.file for s in small), retired_parts)
                write_manifest(cache.path, None, top)  # the commit
                retire(cache.path, held)
            else:
                parts, dropped = {}, 0
        finally:
            for lock in held.values():
                lock.release()
    after = cache.info()
    return {
        "cache": str(cache.path),
        "parts_merged": len(parts),
        "parts_busy": busy,
        "shards_before": before["shards"],
        "shards_after": after["shards"],
        "rows_before": before["rows"],
        "rows_after": after["rows"],
        "duplicates_dropped": dropped,
        "seconds": round(time.perf_counter() - began, 3),
    }


def _copy(cache: EmbeddingCache, keep: list[ShardRecord], sources: list, shard_size: int, progress: bool):
    """Write every text of ``sources`` not in ``keep`` or earlier sources, once, into new top-level shards."""
    seen = KeyIndex()
    for shard in keep:
        seen.add(read_keys(cache.path / shard.file), first_row=0)
    attrs = {**cache.shard_attributes(), COMPACTION_ATTR: uuid.uuid4().hex}
    written: list[ShardRecord] = []
    keys_out: list[np.ndarray] = []
    vectors_out: list[np.ndarray] = []
    layers_out: list[np.ndarray] = []  # of a cache that stores layer vectors
    pending, dropped = 0, 0

    def flush(rows):
        nonlocal keys_out, vectors_out, layers_out, pending
        keys, vectors = np.concatenate(keys_out), np.concatenate(vectors_out)
        layers = np.concatenate(layers_out) if layers_out else None
        name = next_shard_name(cache.path)
        digest = write_shard(
            cache.path / name, keys[:rows], vectors[:rows], attrs, None if layers is None else layers[:rows]
        )
        written.append(ShardRecord(name, rows, digest))
        keys_out, vectors_out, pending = [keys[rows:]], [vectors[rows:]], pending - rows
        layers_out = [] if layers is None else [layers[rows:]]

    for part, shard in tqdm(sources, disable=not progress, unit="shard", desc=f"compacting {cache.path.name}"):
        path = part_dir(cache.path, part) / shard.file
        keys, vectors = read_keys(path), read_vectors(path)
        layers = read_vectors(path, dataset="layers") if cache.layers is not None else None
        if checksum(keys, vectors, layers) != shard.sha256:  # never copy damage into the shards that replace it
            raise CacheDamagedError(
                f"cache {cache.path}: {Path(path).relative_to(cache.path)} does not match its "
                f"checksum; nothing was changed: run 'embedcache verify {cache.path} --repair' first"
            )
        new = seen.add(keys, first_row=0)
        dropped += int((~new).sum())
        keys_out.append(keys[new])
        vectors_out.append(vectors[new])
        if layers is not None:
            layers_out.append(layers[new])
        pending += int(new.sum())
        while pending >= shard_size:
            flush(shard_size)
    if pending:
        flush(pending)
    return written, dropped


def _carry_records(top: Manifest, parts) -> None:
    """Keep what the merged parts' manifests recorded besides shards: texts mostly of unknown tokens, and
    the quick keys of encoders verified to match."""
    unknown = Unknown.merged([top.unknown, *(m.unknown for m in parts)])
    if unknown.mostly_unknown:
        top.unknown = unknown
    top.encoder = top.encoder.with_quick_keys(*(m.encoder.quick_keys for m in parts))
