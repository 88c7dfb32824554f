"""EmbeddingCache: a directory of HDF5 shards and a manifest, owned by one encoder fingerprint.

Layout of a cache directory::

    manifest.json        fingerprint, encoder, dim, dtype and the list of whole shards
    shard-000001.h5      keys + vectors, immutable once renamed into place
    .lock                held by the one process allowed to write

Writes go shard, then manifest, each through a temporary file, fsync and
atomic rename: a process killed at any instant leaves a cache that opens and
holds whole shards only.  A shard file that no manifest lists (the writer died
between the two renames) is ignored and removed by the next writer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from . import __version__
from .encoders import Encoder, load_encoder
from .index import KeyIndex, text_keys
from .shards import atomic_write_json, check_shard, read_keys, read_vectors, write_shard

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WRITER = ".writer.json"  # who holds the write lock: pid, host, since (for the message of a writer that waits)
LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer before giving up
FORMAT = "embedcache-1"
DTYPES = ("float16", "float32")
_SHARD_NAME = re.compile(r"^shard-(\d+)\.h5$")


class FingerprintMismatchError(ValueError):
    """An encoder other than the cache's own was asked to write into it."""


class CacheLockedError(RuntimeError):
    """Another writer held the cache's write lock for longer than the writer would wait."""


class EmbeddingCache:
    """Vectors of texts, computed once by a frozen encoder and kept on disk.

    Parameters
    ----------
    path : directory of the cache; created when ``encoder`` is given and it does not exist.
    encoder : the encoder that computes missing texts, or None to open read-only.
    dtype : storage dtype of a new cache, ``"float16"`` (default) or ``"float32"``.
    shard_size : rows per shard; at most this much work is lost on a crash.
    lock_timeout : seconds a write waits while another writer (process or thread) holds the
        lock, with a message naming it; 0 fails at once.

    Reading (``get``, ``contains``, ``iter_shards``) never writes to the directory and is
    safe from many threads and processes while one writer writes.
    """

    def __init__(self, path, encoder: Encoder | None = None, dtype: str | None = None, shard_size: int = 20_000,
                 lock_timeout: float = LOCK_TIMEOUT):
        self.path = Path(path)
        self.encoder = encoder
        self.shard_size = shard_size
        self.lock_timeout = lock_timeout
        self._mutex = threading.RLock()  # the in-memory index and encoder, shared by this handle's threads
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        if shard_size < 1:
            raise ValueError(f"shard_size must be at least 1, got {shard_size}")
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            if encoder is None:
                raise FileNotFoundError(f"no embedding cache at {self.path} ({MANIFEST} not found); pass an encoder to create one")
            self.path.mkdir(parents=True, exist_ok=True)
            with self._write_lock():
                if not manifest_path.exists():
                    atomic_write_json(manifest_path, self._new_manifest(encoder, dtype or "float16"))
        self._index = KeyIndex()
        self._starts: list[int] = []  # global row of each shard's first vector
        self._files: list[str] = []
        self._stamp = None
        self._refresh()
        if dtype is not None and dtype != self.dtype:
            raise ValueError(f"cache {self.path} stores {self.dtype}, but dtype={dtype!r} was asked for")
        if encoder is not None:
            self._check_encoder(encoder)

    # -- manifest -------------------------------------------------------------

    @staticmethod
    def _new_manifest(encoder: Encoder, dtype: str) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": encoder.fingerprint,
            "encoder": {"name": encoder.name, "load": encoder.spec, "description": encoder.describe(),
                        "languages": list(encoder.languages) if encoder.languages else None},
            "dim": encoder.dim,
            "dtype": dtype,
            "shards": [],
            "created_with": f"embedcache {__version__}",
        }

    def _read_manifest(self) -> dict:
        path = self.path / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot read {path}: {e}") from e
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{path} has format {manifest.get('format')!r}, expected {FORMAT!r}")
        return manifest

    def _refresh(self) -> None:
        """Re-read the manifest if another process replaced it since we last looked."""
        with self._mutex:
            st = os.stat(self.path / MANIFEST)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._manifest = self._read_manifest()
                self._stamp = stamp

    def _sync_index(self) -> None:
        """Bring the key index up to date with the manifest, reading keys of new shards only (hold ``_mutex``)."""
        self._refresh()
        shards = self._manifest["shards"]
        if [s["file"] for s in shards[: len(self._files)]] != self._files:  # a repair dropped shards
            self._index, self._starts, self._files = KeyIndex(), [], []
        rows = self._starts[-1] + shards[len(self._files) - 1]["rows"] if self._files else 0
        for shard in shards[len(self._files) :]:
            try:
                keys = read_keys(self.path / shard["file"])
            except Exception as e:  # noqa: BLE001 -- a missing or damaged file: h5py raises OSError, KeyError, ...
                raise ValueError(
                    f"cache {self.path}: shard {shard['file']} cannot be read ({e}); "
                    f"run 'embedcache verify {self.path} --repair', then precompute again"
                ) from None
            self._index.add(keys, first_row=rows)
            self._starts.append(rows)
            self._files.append(shard["file"])
            rows += shard["rows"]

    def _check_encoder(self, encoder: Encoder) -> None:
        if encoder.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"cache {self.path} was built by encoder {self._manifest['encoder']['name']!r} "
                f"(fingerprint {self.fingerprint}), but the given encoder is {encoder.name!r} "
                f"(fingerprint {encoder.fingerprint}); use another cache directory for it"
            )

    # -- properties -----------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self._manifest["fingerprint"]

    @property
    def dim(self) -> int:
        return self._manifest["dim"]

    @property
    def dtype(self) -> str:
        return self._manifest["dtype"]

    @property
    def encoder_name(self) -> str:
        return self._manifest["encoder"]["name"]

    @property
    def encoder_spec(self) -> dict | None:
        """``load_encoder(**spec)`` arguments that rebuild the cache's encoder; None for a custom one."""
        return self._manifest["encoder"].get("load")

    def knows(self, quick_key: str | None) -> bool:
        """Whether an encoder with this ``encoders.quick_key`` was verified to match this cache."""
        return quick_key is not None and quick_key in self._manifest["encoder"].get("quick_keys", [])

    def remember(self, quick_key: str | None) -> None:
        """Record that this cache's own encoder (checked by fingerprint) has ``quick_key``."""
        if quick_key is None or self.knows(quick_key) or self.encoder is None:
            return
        with self._write_lock():
            manifest = self._read_manifest()
            keys = manifest["encoder"].get("quick_keys", [])
            manifest["encoder"]["quick_keys"] = (keys + [quick_key])[-16:]
            atomic_write_json(self.path / MANIFEST, manifest)
        self._refresh()

    def load_encoder(self, device: str | None = None, **kwargs) -> Encoder:
        """Load the encoder that built this cache (as recorded in the manifest) and make it this cache's encoder."""
        with self._mutex:  # threads that need it at once load it once
            if self.encoder is not None and device is None and not kwargs:
                return self.encoder
            return self._load_encoder(device, **kwargs)

    def _load_encoder(self, device, **kwargs) -> Encoder:
        spec = self.encoder_spec
        if spec is None:
            raise ValueError(
                f"cache {self.path} does not record how to load its encoder {self.encoder_name!r} "
                "(it was built by a custom Encoder); pass that encoder to EmbeddingCache"
            )
        encoder = load_encoder(device=device, **spec, **kwargs)
        self._check_encoder(encoder)
        self.encoder = encoder
        return encoder

    def __len__(self) -> int:
        self._refresh()
        return sum(s["rows"] for s in self._manifest["shards"])

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, encoder={self.encoder_name!r}, rows={len(self)}, dim={self.dim})"

    def info(self) -> dict:
        self._refresh()
        shards = self._manifest["shards"]
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "dim": self.dim,
            "dtype": self.dtype,
            "rows": sum(s["rows"] for s in shards),
            "shards": len(shards),
            "bytes": sum((self.path / s["file"]).stat().st_size for s in shards if (self.path / s["file"]).exists()),
        }

    # -- writing --------------------------------------------------------------

    @contextmanager
    def _write_lock(self):
        """Hold the one write lock of this directory: other processes and other threads alike wait for it."""
        lock = FileLock(self.path / ".lock")
        started, told = time.monotonic(), 0.0
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except Timeout:
                waited = time.monotonic() - started
                if waited >= self.lock_timeout:
                    raise CacheLockedError(
                        f"cache {self.path} is being written by {self._holder()} (lock {self.path / '.lock'}); "
                        f"gave up after {self.lock_timeout:g} s: wait for it to finish, give a longer lock timeout, "
                        "or write to another directory"
                    ) from None
                if waited >= told:  # a line now and every 30 s, so a long wait is never silent
                    logger.warning("cache %s is being written by %s; waiting up to %g s", self.path, self._holder(),
                                   self.lock_timeout)
                    told = waited + 30
                time.sleep(min(0.05, self.lock_timeout - waited))
        try:
            atomic_write_json(self.path / WRITER, {"pid": os.getpid(), "host": socket.gethostname(),
                                                   "thread": threading.get_ident(), "since": time.time()})
            self._remove_leftovers()
            yield
        finally:
            try:
                (self.path / WRITER).unlink(missing_ok=True)
            finally:
                lock.release()

    def _holder(self) -> str:
        """Who holds the write lock, in words, from the record the holder wrote."""
        try:
            who = json.loads((self.path / WRITER).read_text())
        except (OSError, ValueError):
            return "another process"
        since = f", for {time.time() - who.get('since', time.time()):.0f} s"
        if who.get("pid") == os.getpid() and who.get("host") == socket.gethostname():
            return f"another thread of this process (pid {who['pid']}{since})"
        return f"process {who.get('pid')} on host {who.get('host')}{since}"

    def _remove_leftovers(self) -> None:
        """Delete temporary files and unlisted shards of writers that died; we hold the lock."""
        if not (self.path / MANIFEST).exists():
            return
        listed = {s["file"] for s in self._read_manifest()["shards"]}
        for p in self.path.iterdir():
            if p.name.startswith(".tmp-") or (_SHARD_NAME.match(p.name) and p.name not in listed):
                p.unlink(missing_ok=True)

    def _next_shard_name(self) -> str:
        seqs = [int(m.group(1)) for p in self.path.iterdir() if (m := _SHARD_NAME.match(p.name))]
        return f"shard-{max(seqs, default=0) + 1:06d}.h5"

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        name = self._next_shard_name()
        attrs = {"fingerprint": self.fingerprint, "encoder": self.encoder_name, "created": time.time()}
        digest = write_shard(self.path / name, keys, vectors.astype(self.dtype), attrs)
        manifest = self._read_manifest()
        first_row = sum(s["rows"] for s in manifest["shards"])
        manifest["shards"].append({"file": name, "rows": len(keys), "sha256": digest})
        atomic_write_json(self.path / MANIFEST, manifest)
        # The index was synced under the lock we hold: extend it with the keys in
        # memory instead of reading the new shard back.
        with self._mutex:
            self._index.add(keys, first_row=first_row)
            self._starts.append(first_row)
            self._files.append(name)
            self._refresh()

    def add(self, texts, progress: bool = False) -> dict:
        """Encode and store the texts not cached yet; return counts.

        The counts are ``rows`` (texts given), ``unique``, ``cached`` (already
        present), ``encoded`` (new now) and ``truncated`` (encoded texts the
        encoder cut to its maximum length).
        """
        texts = list(texts)
        unique, _, keys = _distinct(texts)
        return self._add(unique, keys, len(texts), progress)

    def _add(self, unique: list[str], keys: np.ndarray, n_texts: int, progress: bool) -> dict:
        with self._write_lock():
            missing = np.flatnonzero(self._lookup_keys(keys) < 0)
            stats = {"rows": n_texts, "unique": len(unique), "cached": len(unique) - len(missing), "encoded": 0, "truncated": 0,
                     "encode_seconds": 0.0, "mostly_unknown": 0, "unknown_examples": []}
            if not len(missing):
                return stats
            if self.encoder is None:
                raise KeyError(f"{len(missing)} texts are not in cache {self.path}, and it was opened without an encoder")
            # Longest first, as sentence-transformers sorts, so batches pad little.
            missing = sorted(missing.tolist(), key=lambda i: -len(unique[i]))
            step = min(self.shard_size, self.encoder.batch_size * 8)
            truncated_before, unknown_before = self.encoder.truncated, self.encoder.mostly_unknown
            examples_before = len(self.encoder.unknown_examples)
            pending_keys, pending_vecs, pending = [], [], 0
            bar = tqdm(total=len(missing), disable=not progress, unit="text", desc=f"encoding into {self.path.name}")
            try:
                for start in range(0, len(missing), step):
                    idx = missing[start : start + step]
                    began = time.perf_counter()
                    pending_vecs.append(self.encoder.encode([unique[i] for i in idx]))
                    stats["encode_seconds"] += time.perf_counter() - began
                    pending_keys.append(keys[idx])
                    pending += len(idx)
                    stats["encoded"] += len(idx)
                    bar.update(len(idx))
                    while pending >= self.shard_size:
                        k, v = np.concatenate(pending_keys), np.concatenate(pending_vecs)
                        pending_keys, pending_vecs, pending = [k[self.shard_size :]], [v[self.shard_size :]], pending - self.shard_size
                        self._write_shard(k[: self.shard_size], v[: self.shard_size])
            finally:
                # Keep what was finished on Ctrl-C or an encoder error.
                if pending:
                    k, v = np.concatenate(pending_keys), np.concatenate(pending_vecs)
                    pending = 0
                    self._write_shard(k, v)
                bar.close()
                stats["truncated"] = self.encoder.truncated - truncated_before
                stats["mostly_unknown"] = self.encoder.mostly_unknown - unknown_before
                stats["unknown_examples"] = self.encoder.unknown_examples[examples_before:]
                if stats["mostly_unknown"]:
                    self._record_unknown(stats["mostly_unknown"], stats["unknown_examples"])
        return stats

    def _record_unknown(self, count: int, examples: list[str]) -> None:
        """Remember in the manifest how many cached texts were mostly unknown tokens (we hold the lock)."""
        manifest = self._read_manifest()
        seen = manifest.get("unknown") or {"mostly_unknown": 0, "examples": []}
        manifest["unknown"] = {"mostly_unknown": seen["mostly_unknown"] + count,
                               "examples": (seen["examples"] + examples)[:5]}
        atomic_write_json(self.path / MANIFEST, manifest)
        self._refresh()

    def unknown_report(self) -> dict:
        """Texts of this cache that were mostly tokens its encoder does not know, and the languages it covers."""
        self._refresh()
        seen = self._manifest.get("unknown") or {"mostly_unknown": 0, "examples": []}
        return {**seen, "languages": self._manifest["encoder"].get("languages")}

    def encode(self, texts, progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts`` in input order, encoding only what is missing."""
        texts = list(texts)
        unique, inverse, keys = _distinct(texts)
        self._add(unique, keys, len(texts), progress)
        return self._read(self._lookup_keys(keys)[inverse])

    # -- reading --------------------------------------------------------------

    def _lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        with self._mutex:
            self._sync_index()
            return self._index.lookup(keys)

    def _lookup(self, texts) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Row of each distinct text (-1 where absent), the map back to ``texts``, the distinct texts."""
        unique, inverse, keys = _distinct(list(texts))
        return self._lookup_keys(keys), inverse, unique

    def contains(self, texts) -> np.ndarray:
        """Boolean array: which of ``texts`` are cached."""
        rows, inverse, _ = self._lookup(texts)
        return (rows >= 0)[inverse]

    def get(self, texts, encode_missing: bool = False, progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts`` in input order; never writes.

        Texts not in the cache raise KeyError saying how many, or with
        ``encode_missing=True`` are encoded in memory by the cache's encoder
        (loaded from the manifest on first need) and not stored: ``encode()``
        is the call that stores them.
        """
        rows, inverse, unique = self._lookup(texts)
        missing = np.flatnonzero(rows < 0)
        if not len(missing):
            return self._read(rows[inverse])
        if not encode_missing:
            raise KeyError(
                f"{len(missing)} of {len(unique)} distinct texts are not in cache {self.path} "
                f"(first: {unique[missing[0]][:60]!r}); add them with cache.encode() or embedcache precompute"
            )
        out = np.empty((len(unique), self.dim), dtype=np.float32)
        present = np.flatnonzero(rows >= 0)
        if len(present):
            out[present] = self._read(rows[present])
        encoder = self.encoder or self.load_encoder()
        batches = range(0, len(missing), encoder.batch_size * 8)
        for start in tqdm(batches, disable=not progress, unit="batch", desc=f"encoding texts not in {self.path.name}"):
            chunk = missing[start : start + encoder.batch_size * 8]
            # rounded as if stored, so a text scores the same before and after it is cached
            out[chunk] = encoder.encode([unique[i] for i in chunk]).astype(self.dtype)
        return out[inverse]

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Vectors at global ``rows`` (all present), filled in place shard by shard in row order."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        with self._mutex:  # a snapshot: a writer in another thread may append shards meanwhile
            starts, files = np.asarray(self._starts), list(self._files)
        shard_of = np.searchsorted(starts, rows[order], side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for sel, s in zip(np.split(order, bounds), shard_of[np.r_[0, bounds]] if len(order) else []):
            out[sel] = read_vectors(self.path / files[s], rows[sel] - starts[s])
        return out

    def iter_shards(self):
        """Yield ``(keys, vectors)`` per shard, vectors in the stored dtype: one shard in memory at a time."""
        self._refresh()
        for shard in self._manifest["shards"]:
            yield read_keys(self.path / shard["file"]), read_vectors(self.path / shard["file"])

    # -- integrity ------------------------------------------------------------

    def verify(self, repair: bool = False) -> list[tuple[str, str]]:
        """Check every shard against the manifest; return ``(file, reason)`` for each bad one.

        With ``repair=True`` the bad shards are dropped from the manifest and
        deleted, so the next run recomputes their texts.
        """
        self._refresh()
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        bad = []
        for shard in self._manifest["shards"]:
            reason = check_shard(self.path / shard["file"], {**expected, **shard})
            if reason:
                bad.append((shard["file"], reason))
        if repair and bad:
            with self._write_lock():
                names = {name for name, _ in bad}
                manifest = self._read_manifest()
                manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in names]
                atomic_write_json(self.path / MANIFEST, manifest)
                for name in names:
                    (self.path / name).unlink(missing_ok=True)
        return bad


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, the index of each text among them, and their keys."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)
    return unique, inverse, text_keys(unique)
