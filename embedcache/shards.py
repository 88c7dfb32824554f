"""HDF5 shards and the atomic file writes that make a cache crash-safe.

A shard holds ``keys`` (n, 16) uint8 and ``vectors`` (n, dim) float16 or
float32, with attributes for the fingerprint, dimension, row count and a
SHA-256 checksum over both datasets.  Shards are immutable once renamed into
place: a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

KEY_BYTES = 16


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` to a temporary file beside ``path``, fsync it, rename it over ``path``."""
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def checksum(keys: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(keys, dtype=np.uint8))
    h.update(np.ascontiguousarray(vectors))
    return h.hexdigest()


def write_shard(path: Path, keys: np.ndarray, vectors: np.ndarray, attrs: dict) -> str:
    """Write a shard atomically and return its checksum.

    The data goes to a temporary file in the same directory, which is flushed,
    fsynced and renamed to ``path``; a crash at any instant leaves either no
    file at ``path`` or the whole shard.
    """
    if keys.shape != (len(vectors), KEY_BYTES) or keys.dtype != np.uint8:
        raise ValueError(f"keys must be ({len(vectors)}, {KEY_BYTES}) uint8, got {keys.shape} {keys.dtype}")
    digest = checksum(keys, vectors)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.create_dataset("keys", data=keys)
        f.create_dataset("vectors", data=vectors)
        for k, v in {**attrs, "rows": len(vectors), "dim": vectors.shape[1], "sha256": digest}.items():
            f.attrs[k] = v
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return digest


def read_keys(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["keys"][...]


def read_vectors(path: Path, rows: np.ndarray | None = None) -> np.ndarray:
    """All vectors of a shard, or those at the sorted ``rows``.

    Reading the span between the first and last wanted row and indexing in
    memory is much faster than HDF5 point selection, and bounded by one shard.
    """
    with h5py.File(path, "r") as f:
        ds = f["vectors"]
        if rows is None:
            return ds[...]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        return ds[lo:hi][rows - lo]


def check_shard(path: Path, expected: dict) -> str | None:
    """Return why the shard at ``path`` is bad, or None when it is whole.

    ``expected`` holds the manifest's ``rows`` and ``sha256`` for it and the
    cache's ``fingerprint``, ``dim`` and ``dtype``.
    """
    if not path.exists():
        return "file is missing"
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            keys = f["keys"][...]
            vectors = f["vectors"][...]
    except Exception as e:  # noqa: BLE001 -- h5py raises OSError, KeyError and others on damaged files
        return f"cannot be read ({type(e).__name__}: {e})"
    if attrs.get("fingerprint") != expected["fingerprint"]:
        return f"fingerprint {attrs.get('fingerprint')!r} differs from the cache's {expected['fingerprint']!r}"
    if vectors.shape != (expected["rows"], expected["dim"]) or keys.shape != (expected["rows"], KEY_BYTES):
        return f"holds {vectors.shape[0]} rows of dimension {vectors.shape[1]}, manifest says {expected['rows']} of {expected['dim']}"
    if str(vectors.dtype) != expected["dtype"]:
        return f"vectors are {vectors.dtype}, manifest says {expected['dtype']}"
    digest = checksum(keys, vectors)
    if digest != expected["sha256"] or attrs.get("sha256") != expected["sha256"]:
        return f"checksum mismatch (content {digest[:16]}..., manifest {expected['sha256'][:16]}...)"
    return None
