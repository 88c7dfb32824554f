"""HDF5 shards: writing one atomically, reading its keys and vectors, checking it.

A shard holds ``keys`` (n, 16) uint8 and ``vectors`` (n, dim) float16 or
float32, with attributes for the fingerprint, dimension, row count and a
SHA-256 checksum over every dataset.  A cache of layer vectors adds ``layers``
(n, n_layers, dim) float16 and an attribute ``layers`` naming the hidden states
they are the means of.  Shards are immutable once renamed into
place: a reader never sees a half-written one.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import h5py
import numpy as np

from .files import atomic_write_bytes

KEY_BYTES = 16
DTYPES = ("float16", "float32")


LAYER_DTYPE = "float16"


def checksum(keys: np.ndarray, vectors: np.ndarray, layers: np.ndarray | None = None) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(keys, dtype=np.uint8).data)
    h.update(np.ascontiguousarray(vectors).data)
    if layers is not None:
        h.update(np.ascontiguousarray(layers).data)
    return h.hexdigest()


def write_shard(
    path: Path, keys: np.ndarray, vectors: np.ndarray, attrs: dict, layers: np.ndarray | None = None
) -> str:
    """Write a shard atomically and return its checksum.

    The HDF5 file is built in memory and written by plain file writes to a
    temporary file, which is fsynced and renamed to ``path``: a crash at any
    instant leaves either no file at ``path`` or the whole shard, and a full disk
    is an ordinary OSError (h5py itself crashes when the disk fills while it
    closes a file).  A shard is at most tens of MB, so the copy costs little.
    """
    if keys.shape != (len(vectors), KEY_BYTES) or keys.dtype != np.uint8:
        raise ValueError(f"keys must be ({len(vectors)}, {KEY_BYTES}) uint8, got {keys.shape} {keys.dtype}")
    named = attrs.get("layers")
    if named is None or layers is None:
        if named is not None or layers is not None:
            raise ValueError(f"layer vectors and the attribute naming their layers come together (layers {named})")
    elif layers.shape != (len(vectors), len(named), vectors.shape[1]):
        raise ValueError(f"layer vectors of shape {layers.shape} for layers {named} and {vectors.shape} vectors")
    else:
        layers = layers.astype(LAYER_DTYPE)
    digest = checksum(keys, vectors, layers)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.create_dataset("keys", data=keys)
        f.create_dataset("vectors", data=vectors)
        if layers is not None:
            f.create_dataset("layers", data=layers)
        for k, v in {**attrs, "rows": len(vectors), "dim": vectors.shape[1], "sha256": digest}.items():
            f.attrs[k] = v
    atomic_write_bytes(path, bytes(buffer.getbuffer()))
    return digest


def read_keys(path: Path) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f["keys"][...]


def read_vectors(path: Path, rows: np.ndarray | None = None, dataset: str = "vectors") -> np.ndarray:
    """All vectors of a shard (``dataset="layers"``: its layer vectors), or those at the sorted ``rows``.

    Reading the span between the first and last wanted row and indexing in
    memory is much faster than HDF5 point selection, and bounded by one shard.
    """
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if rows is None:
            return ds[...]
        lo, hi = int(rows[0]), int(rows[-1]) + 1
        return ds[lo:hi][rows - lo]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def header(f: h5py.File) -> dict:
    """A shard's attributes and the shapes and dtypes of its datasets, without reading the data."""
    keys, vectors = f["keys"], f["vectors"]
    out = {
        **{k: _plain(v) for k, v in f.attrs.items()},
        "keys_shape": keys.shape,
        "keys_dtype": str(keys.dtype),
        "shape": vectors.shape,
        "dtype": str(vectors.dtype),
    }
    if "layers" in out:
        out["layers"] = tuple(int(i) for i in np.atleast_1d(out["layers"]))
    if "layers" in f:
        out["layers_shape"], out["layers_dtype"] = f["layers"].shape, str(f["layers"].dtype)
    return out


def header_problem(h: dict, expected: dict | None = None) -> str | None:
    """Why a shard's header is inconsistent in itself or with ``expected`` (rows, dim, dtype, fingerprint), or None."""
    if len(h["shape"]) != 2:
        return f"vectors have shape {h['shape']}, expected (rows, dim)"
    rows, dim = h["shape"]
    if h["keys_shape"] != (rows, KEY_BYTES) or h["keys_dtype"] != "uint8":
        return f"keys have shape {h['keys_shape']} {h['keys_dtype']}, expected ({rows}, {KEY_BYTES}) uint8"
    if h["dtype"] not in DTYPES:
        return f"vectors are {h['dtype']}, expected one of {', '.join(DTYPES)}"
    if h.get("rows") != rows or h.get("dim") != dim or not isinstance(h.get("sha256"), str):
        return (
            f"its attributes (rows {h.get('rows')!r}, dim {h.get('dim')!r}) do not describe its {rows} x {dim} vectors"
        )
    named = h.get("layers")
    if ("layers_shape" in h) != (named is not None):
        return "its layer vectors and the attribute naming their layers must come together; one is missing"
    if named is not None and (h["layers_shape"] != (rows, len(named), dim) or h["layers_dtype"] != LAYER_DTYPE):
        return (
            f"layer vectors have shape {h['layers_shape']} {h['layers_dtype']}, expected "
            f"({rows}, {len(named)}, {dim}) {LAYER_DTYPE}"
        )
    if expected is None:
        return None
    if h.get("fingerprint") != expected["fingerprint"]:
        return f"fingerprint {h.get('fingerprint')!r} differs from the cache's {expected['fingerprint']!r}"
    if dim != expected["dim"] or h["dtype"] != expected["dtype"]:
        return f"holds {h['dtype']} vectors of dimension {dim}, the cache {expected['dtype']} of dimension {expected['dim']}"
    if "layers" in expected and named != expected["layers"]:
        return f"holds layer vectors of layers {_layers(named)}, the cache of layers {_layers(expected['layers'])}"
    if "rows" in expected and rows != expected["rows"]:
        return f"holds {rows} rows, the manifest says {expected['rows']}"
    if "sha256" in expected and h["sha256"] != expected["sha256"]:
        return f"checksum {h['sha256'][:16]}... differs from the manifest's {expected['sha256'][:16]}..."
    return None


def read_checked(path: Path, expected: dict) -> np.ndarray:
    """The keys of a shard after checking its header against ``expected``; raises ValueError saying why not."""
    with h5py.File(path, "r") as f:
        problem = header_problem(header(f), expected)
        if problem:
            raise ValueError(problem)
        return f["keys"][...]


def inspect_shard(path: Path) -> tuple[dict | None, str | None]:
    """``(header, problem)`` of a shard judged by itself: readable, consistent, content matching its own checksum.

    A shard with no problem is whole whatever a manifest says of it; ``header`` is
    None when the file cannot be read at all.
    """
    try:
        with h5py.File(path, "r") as f:
            h = header(f)
            problem = header_problem(h)
            if problem:
                return h, problem
            digest = checksum(f["keys"][...], f["vectors"][...], f["layers"][...] if "layers" in f else None)
    except Exception as e:  # noqa: BLE001 -- h5py raises OSError, KeyError and others on damaged files
        return None, f"cannot be read ({type(e).__name__}: {e})"
    if digest != h["sha256"]:
        return h, f"checksum mismatch: content {digest[:16]}... does not match its own record {h['sha256'][:16]}..."
    return h, None


def _layers(layers) -> str:
    return "none" if layers is None else ", ".join(map(str, layers))
