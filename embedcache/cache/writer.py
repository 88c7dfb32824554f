"""Writing into one directory of a cache (the top level or a part), under its lock.

``ShardWriter`` writes shards, then the manifest that lists them, each through a
temporary file, fsync and atomic rename: a process killed at any instant leaves
a directory that opens and holds whole shards only.  ``encode_into`` encodes
texts longest first in batches and hands whole shards to it, keeping what was
finished on Ctrl-C or an encoder error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..encoders import Encoder
from ..shards import write_shard
from .layout import next_shard_name, part_dir, relative
from .lock import LOCK_TIMEOUT, WriteLock
from .manifest import ShardRecord, Unknown, read_manifest, write_manifest
from .recovery import tidy


class ShardWriter:
    """Appends shards and records to the manifest of ``part`` (None: the top level) of the cache at ``path``.
    ``on_shard(rel, keys)`` is told of every shard written.

    A context manager: entering takes the directory's write lock (waiting up to ``lock_timeout`` seconds,
    with the holder's message), runs ``prepare`` (the handle recreating its part, should a compaction have
    merged it), tidies what killed writers left (``recovery.tidy``) and runs ``tidied`` (the handle reading
    the manifests again); leaving releases the lock.  Writes happen inside.
    """

    def __init__(
        self,
        path: Path,
        part: str | None,
        dtype: str,
        attributes: dict,
        on_shard: Callable | None = None,
        lock_timeout: float = LOCK_TIMEOUT,
        prepare: Callable | None = None,
        tidied: Callable | None = None,
    ):
        self.path, self.part, self.dtype, self.attributes, self.on_shard = path, part, dtype, attributes, on_shard
        self.lock_timeout, self.prepare, self.tidied = lock_timeout, prepare, tidied
        self.home = part_dir(path, part)
        layers = attributes.get("layers")
        self.layers: tuple[int, ...] | None = None if layers is None else tuple(layers)  # also stored per text
        self.lock: WriteLock | None = None

    def __enter__(self) -> ShardWriter:
        lock = WriteLock(self.path, self.part, self.lock_timeout).__enter__()
        try:
            if self.prepare is not None:
                self.prepare()
            tidy(self.path, self.part)
            if self.tidied is not None:
                self.tidied()
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self.lock = lock
        return self

    def __exit__(self, *exc) -> None:
        if self.lock is not None:
            self.lock.__exit__(*exc)
            self.lock = None

    def write(self, keys: np.ndarray, vectors: np.ndarray, layers: np.ndarray | None = None) -> None:
        """One new shard of ``keys``, ``vectors`` (and layer vectors), then the manifest listing it."""
        name = next_shard_name(self.home)
        digest = write_shard(self.home / name, keys, vectors.astype(self.dtype), self.attributes, layers)
        manifest = read_manifest(self.path, self.part)
        manifest.shards.append(ShardRecord(name, len(keys), digest))
        write_manifest(self.path, self.part, manifest)
        if self.on_shard is not None:
            self.on_shard(relative(self.part, name), keys)

    def record_unknown(self, count: int, examples: list[str]) -> None:
        """Add to the manifest's count of texts that were mostly tokens the encoder does not know."""
        manifest = read_manifest(self.path, self.part)
        manifest.unknown = Unknown.merged([manifest.unknown, Unknown(count, tuple(examples))])
        write_manifest(self.path, self.part, manifest)

    def record_quick_key(self, quick_key: str) -> None:
        """Remember that the cache's own encoder (checked by fingerprint) has ``quick_key``."""
        manifest = read_manifest(self.path, self.part)
        manifest.encoder = manifest.encoder.with_quick_keys([quick_key])
        write_manifest(self.path, self.part, manifest)


def new_stats(n_texts: int, unique: int, missing: int) -> dict:
    """What ``add`` reports before encoding: ``rows`` given, ``unique``, ``cached``; the rest counts up."""
    return {
        "rows": n_texts,
        "unique": unique,
        "cached": unique - missing,
        "encoded": 0,
        "truncated": 0,
        "encode_seconds": 0.0,
        "mostly_unknown": 0,
        "unknown_examples": [],
    }


def encode_in_batches(
    encoder: Encoder, texts: list[str], progress: bool, name: str, layers: tuple[int, ...] | None = None
) -> np.ndarray:
    """Vectors of ``texts`` (with ``layers``: their layer vectors) in memory, stored nowhere, with a bar per
    batch of ``8 * batch_size``."""
    step = encoder.batch_size * 8
    shape = (len(texts), encoder.dim) if layers is None else (len(texts), len(layers), encoder.dim)
    out = np.empty(shape, dtype=np.float32)
    for start in tqdm(
        range(0, len(texts), step), disable=not progress, unit="batch", desc=f"encoding texts not in {name}"
    ):
        batch = texts[start : start + step]
        out[start : start + step] = encoder.encode(batch) if layers is None else encoder.encode_layers(batch, layers)[1]
    return out


def encode_into(
    writer: ShardWriter,
    encoder: Encoder,
    texts: list[str],
    keys: np.ndarray,
    missing: np.ndarray,
    shard_size: int,
    stats: dict,
    progress: bool,
) -> None:
    """Encode ``texts[missing]`` into shards of ``shard_size`` rows; add to ``stats`` what was encoded,
    truncated and mostly unknown.  What was encoded before an interruption is written."""
    # Longest first, as sentence-transformers sorts, so batches pad little.
    missing = np.array(sorted(missing.tolist(), key=lambda i: -len(texts[i])), dtype=np.int64)
    step = min(shard_size, encoder.batch_size * 8)
    truncated_before, unknown_before = encoder.truncated, encoder.mostly_unknown
    examples_before = len(encoder.unknown_examples)
    pending_keys: list[np.ndarray] = []
    pending_vecs: list[np.ndarray] = []
    pending_layers: list[np.ndarray] = []  # of a cache that stores layer vectors
    pending = 0

    def flush(rows: int) -> None:
        nonlocal pending_keys, pending_vecs, pending_layers, pending
        k, v = np.concatenate(pending_keys), np.concatenate(pending_vecs)
        lay = np.concatenate(pending_layers) if pending_layers else None
        pending_keys, pending_vecs, pending = [k[rows:]], [v[rows:]], pending - rows
        pending_layers = [lay[rows:]] if lay is not None else []
        writer.write(k[:rows], v[:rows], lay[:rows] if lay is not None else None)

    bar = tqdm(total=len(missing), disable=not progress, unit="text", desc=f"encoding into {writer.path.name}")
    try:
        for start in range(0, len(missing), step):
            idx = missing[start : start + step]
            began = time.perf_counter()
            if writer.layers is None:
                pending_vecs.append(encoder.encode([texts[i] for i in idx]))
            else:  # one forward pass gives both
                vectors, means = encoder.encode_layers([texts[i] for i in idx], writer.layers)
                pending_vecs.append(vectors)
                pending_layers.append(means.astype(np.float16))
            stats["encode_seconds"] += time.perf_counter() - began
            pending_keys.append(keys[idx])
            pending += len(idx)
            stats["encoded"] += len(idx)
            bar.update(len(idx))
            while pending >= shard_size:
                flush(shard_size)
    finally:
        if pending:  # keep what was finished on Ctrl-C or an encoder error
            flush(pending)
        bar.close()
        stats["truncated"] = encoder.truncated - truncated_before
        stats["mostly_unknown"] = encoder.mostly_unknown - unknown_before
        stats["unknown_examples"] = encoder.unknown_examples[examples_before:]
        if stats["mostly_unknown"]:
            writer.record_unknown(stats["mostly_unknown"], stats["unknown_examples"])
