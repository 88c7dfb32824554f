"""EmbeddingCache: a directory of HDF5 shards and manifests, owned by one encoder fingerprint.

Many writers fill one cache at once, each into its own part, with no lock shared
between them (locks are unreliable on network file systems; renames are not).
A reader sees the union of the top level and every part, in that order, parts by
name: a text stored twice is read from its first copy, so every reader agrees.
``embedcache.compact`` merges parts and small shards into large top-level shards.

The pieces: ``layout`` (names and paths), ``manifest`` (schema, checks, merge
rules), ``lock`` (the write lock of a directory), ``recovery`` (what killed
writers and compactions left), ``writer`` (shards, then manifests), ``rows``
(the in-memory index), ``integrity`` (verify, rebuild) and ``compaction``.
This class holds them together: it opens, refreshes, reads and writes.

Crash safety is the writer's and recovery's (see their docstrings): a process
killed at any instant leaves a cache that opens and holds whole shards only.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..encoders import Encoder, load_encoder, spec_difference
from ..errors import (
    EncoderError,
    FingerprintMismatchError,
    NotCachedError,
    ParameterError,
)
from ..files import create_json_once, writing
from ..index import text_keys
from ..shards import DTYPES, read_keys, read_vectors
from . import integrity
from .layout import (
    MANIFEST,
    PART_NAME,
    part_dir,
)
from .lock import LOCK_TIMEOUT, WriteLock
from .manifest import merged_unknown, new_part_manifest, read_manifest, shard_attributes
from .recovery import tidy
from .rows import RowIndex, Vanished, read_rows
from .view import ManifestView, backend_description, create_if_missing
from .writer import ShardWriter, encode_into


class EmbeddingCache:
    """Vectors of texts, computed once by a frozen encoder and kept on disk.

    Parameters
    ----------
    path : directory of the cache; created when ``encoder`` is given and it does not exist.
    encoder : the encoder that computes missing texts, or None to open read-only.
    dtype : storage dtype of a new cache, ``"float16"`` (default) or ``"float32"``.
    shard_size : rows per shard; at most this much work is lost on a crash.
    lock_timeout : seconds a write waits while another writer (process or thread) of the same
        directory holds its lock, with a message naming it; 0 fails at once.
    part : write into the part of this name (letters, digits, ``_.-``) instead of the top level,
        so that many writers (ranks, actors) fill the cache at once without waiting for each
        other; a writer rerun under the same name resumes its part.  None: the top level.

    Reading (``get``, ``contains``, ``iter_shards``) never writes to the directory and is
    safe from many threads and processes while writers write.
    """

    def __init__(
        self,
        path,
        encoder: Encoder | None = None,
        dtype: str | None = None,
        shard_size: int = 20_000,
        lock_timeout: float = LOCK_TIMEOUT,
        part: str | None = None,
    ):
        self.path = Path(path)
        self.encoder = encoder
        self.shard_size = shard_size
        self.lock_timeout = lock_timeout
        self.part = part
        self._mutex = threading.RLock()  # the in-memory index and encoder, shared by this handle's threads
        if dtype is not None and dtype not in DTYPES:
            raise ParameterError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
            raise ParameterError(f"shard_size must be a whole number >= 1, got {shard_size!r}")
        if part is not None and not (isinstance(part, str) and PART_NAME.match(part)):
            raise ParameterError(f"part must be a name of letters, digits and '_.-' (at most 100), got {part!r}")
        if part is not None and encoder is None:
            raise ParameterError(f"part={part!r} names where this handle writes: pass the encoder that writes it")
        create_if_missing(self.path, encoder, dtype or "float16")
        self._rows = RowIndex()  # keys -> rows of the shards indexed so far
        self._view = ManifestView(self.path)  # the manifests as last read
        self._refresh()
        if dtype is not None and dtype != self.dtype:
            raise ParameterError(f"cache {self.path} stores {self.dtype}, but dtype={dtype!r} was asked for")
        if encoder is not None:
            self._check_encoder(encoder)

    # -- manifests ------------------------------------------------------------

    def _dir(self, part: str | None) -> Path:
        return part_dir(self.path, part)

    def _open_part(self) -> None:
        """Create this handle's part unless it exists (a rerun resumes it): when it first writes, and again
        under its lock when a compaction merged it into the top level and deleted it meanwhile."""
        home = self._dir(self.part)
        if self.part is None or (home / MANIFEST).exists():
            return
        with writing(home, "creating the part"):
            home.mkdir(parents=True, exist_ok=True)
        create_json_once(home / MANIFEST, new_part_manifest(self._writer(), self.dtype, self.part))
        self._refresh()

    def _writer(self) -> Encoder:
        """The encoder this handle writes with (a handle opened without one never reaches a write)."""
        if self.encoder is None:
            raise NotCachedError(f"cache {self.path} was opened without an encoder: it cannot write")
        return self.encoder

    def _read_manifest(self, part: str | None = None) -> dict:
        return read_manifest(self.path, part, None if part is None else self._manifest)

    def _refresh(self) -> None:
        """Re-read the manifests other processes replaced since we last looked, and find new parts."""
        with self._mutex:
            self._view.refresh()

    @property
    def _manifest(self) -> dict:
        return self._view.top

    def _manifests(self) -> list[tuple[str | None, dict]]:
        return self._view.manifests()

    def _sync_index(self) -> None:
        """Bring the key index up to date with the manifests, reading keys of new shards only (hold ``_mutex``).

        When an indexed shard went away (a repair or a compaction) the index is rebuilt.  A shard
        deleted between reading the manifest and its keys (a compaction committed meanwhile) sends
        it back to the manifests, which no longer list it.
        """
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        for attempt in range(6):
            self._refresh()
            try:
                return self._rows.sync(self.path, self._view.listed(), expected, attempt == 5, self._view.shard_path)
            except Vanished:
                self._forget()  # read every manifest and shard again
                time.sleep(0.01 * attempt)

    def _forget(self) -> None:
        """Drop the index and every manifest read (hold ``_mutex``): the next sync starts from the files."""
        self._rows.forget()
        self._view.forget()

    def _check_encoder(self, encoder: Encoder) -> None:
        if encoder.fingerprint != self.fingerprint:
            raise FingerprintMismatchError(
                f"cache {self.path} was built by encoder {self._manifest['encoder']['name']!r} "
                f"(fingerprint {self.fingerprint}), but the given encoder is {encoder.name!r} "
                f"(fingerprint {encoder.fingerprint}); they differ in: "
                f"{spec_difference(self.encoder_spec, encoder.spec, ('the cache', 'the encoder'))}; "
                "use another cache directory for it"
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

    @property
    def parts(self) -> list[str]:
        """Names of the parts writers filled and no compaction merged yet."""
        self._refresh()
        return list(self._view.parts)

    def knows(self, quick_key: str | None) -> bool:
        """Whether an encoder with this ``encoders.quick_key`` was verified to match this cache."""
        return quick_key is not None and any(
            quick_key in m["encoder"].get("quick_keys", []) for _, m in self._manifests()
        )

    def remember(self, quick_key: str | None) -> None:
        """Record that this cache's own encoder (checked by fingerprint) has ``quick_key``."""
        if quick_key is None or self.knows(quick_key) or self.encoder is None or not self.writable():
            return  # a shortcut for the next run only: a read-only cache does without
        self._open_part()
        with self._write_lock(self.part):
            self._shard_writer().record_quick_key(quick_key)
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
        """The number of distinct texts cached (a text two parts both hold counts once)."""
        with self._mutex:
            self._sync_index()
            return len(self._rows)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, encoder={self.encoder_name!r}, rows={len(self)}, dim={self.dim})"

    @property
    def backend(self) -> str:
        """Where the encoder ran and in what precision, e.g. ``torch fp32`` or ``openvino-int8 (int8 weights, fp32
        float operations)``."""
        return backend_description(self._manifest["encoder"])

    def info(self) -> dict:
        """What the manifests say, without reading a shard: ``rows`` counts stored vectors, a text
        two parts both hold twice (``len(cache)`` counts distinct texts)."""
        self._refresh()
        listed = self._view.listed()
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "backend": self.backend,
            "dim": self.dim,
            "dtype": self.dtype,
            "rows": sum(s["rows"] for _, s in listed),
            "shards": len(listed),
            "parts": len(self._view.parts),
            "bytes": sum((self.path / rel).stat().st_size for rel, _ in listed if (self.path / rel).exists()),
        }

    # -- writing --------------------------------------------------------------

    @contextmanager
    def _write_lock(self, part: str | None = None, tidy_first: bool = True):
        """Hold the one write lock of the top level (None) or of a part: other processes and threads that
        write the same directory wait for it; writers of other parts never do.

        ``tidy_first``: first remove what killed writers left and adopt their whole shards.
        """
        with WriteLock(self.path, part, self.lock_timeout):
            if part is not None and part == self.part and self.encoder is not None:
                self._open_part()  # a compaction may have merged and deleted it since this handle opened it
            if tidy_first:
                tidy(self.path, part)
                self._refresh()
            yield

    def shard_attributes(self) -> dict:
        """The attributes every shard of this cache carries, so a lost manifest can be rebuilt from shards."""
        return shard_attributes(self._manifest)

    def _shard_writer(self) -> ShardWriter:
        return ShardWriter(self.path, self.part, self.dtype, self.shard_attributes(), self._written)

    def _written(self, rel: str, keys: np.ndarray) -> None:
        # The index was synced under the lock we hold: extend it with the keys in
        # memory instead of reading the new shard back.
        with self._mutex:
            self._rows.append([(rel, keys)])
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
            return {
                "rows": n_texts,
                "unique": len(unique),
                "cached": len(unique) - len(missing),
                "encoded": 0,
                "truncated": 0,
                "encode_seconds": 0.0,
                "mostly_unknown": 0,
                "unknown_examples": [],
            }

        absent = int((self._lookup_keys(keys) < 0).sum())
        if not absent:  # nothing to write: no lock (a read-only cache stays usable)
            return counts([])
        if self.encoder is None:
            raise NotCachedError(f"{absent} texts are not in cache {self.path}, and it was opened without an encoder")
        self._open_part()
        with self._write_lock(self.part):
            missing = np.flatnonzero(self._lookup_keys(keys) < 0)  # again: another writer may have added some
            stats = counts(missing)
            if len(missing):
                encode_into(self._shard_writer(), self.encoder, unique, keys, missing, self.shard_size, stats, progress)
                self._refresh()
        return stats

    def unknown_report(self) -> dict:
        """Texts of this cache that were mostly tokens its encoder does not know, and the languages it covers."""
        self._refresh()
        return {
            **merged_unknown(m.get("unknown") for _, m in self._manifests()),
            "languages": self._manifest["encoder"].get("languages"),
        }

    def encode(self, texts, progress: bool = False) -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts`` in input order, encoding only what is missing."""
        texts = list(texts)
        unique, inverse, keys = _distinct(texts)
        self._add(unique, keys, len(texts), progress)
        return self._vectors(keys[inverse])

    # -- reading --------------------------------------------------------------

    def _lookup_keys(self, keys: np.ndarray) -> np.ndarray:
        with self._mutex:
            self._sync_index()
            return self._rows.lookup(keys)

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
        unique, inverse, keys = _distinct(list(texts))
        rows = self._lookup_keys(keys)
        missing = np.flatnonzero(rows < 0)
        if not len(missing):
            return self._vectors(keys[inverse], rows[inverse])  # in input order: one copy of the vectors, not two
        if not encode_missing:
            raise NotCachedError(
                f"{len(missing)} of {len(unique)} distinct texts are not in cache {self.path} "
                f"(first: {unique[missing[0]][:60]!r}); add them with cache.encode() or embedcache precompute"
            )
        out = np.empty((len(unique), self.dim), dtype=np.float32)
        present = np.flatnonzero(rows >= 0)
        if len(present):
            out[present] = self._vectors(keys[present], rows[present])
        encoder = self.encoder or self.load_encoder()
        batches = range(0, len(missing), encoder.batch_size * 8)
        for start in tqdm(batches, disable=not progress, unit="batch", desc=f"encoding texts not in {self.path.name}"):
            chunk = missing[start : start + encoder.batch_size * 8]
            # rounded as if stored, so a text scores the same before and after it is cached
            out[chunk] = encoder.encode([unique[i] for i in chunk]).astype(self.dtype)
        return out[inverse]

    def _vectors(self, keys: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Vectors of ``keys`` (all cached), at ``rows`` when the caller looked them up already.  A
        compaction may delete a shard between the lookup and the read: then the index is rebuilt from the
        new manifests and the keys looked up and read once more."""
        for attempt in (0, 1):
            with self._mutex:
                rows = self._lookup_keys(keys) if rows is None else rows
                starts, files = np.asarray(self._rows.starts), list(self._rows.files)
            try:
                return read_rows(self.path, rows, starts, files, self.dim)
            except FileNotFoundError:
                if attempt:
                    raise
                with self._mutex:
                    self._forget()  # re-read every manifest and shard's keys
                    rows = None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def iter_shards(self):
        """Yield ``(keys, vectors)`` per shard, vectors in the stored dtype: one shard in memory at a time.

        Each text comes once: where parts hold copies of a text, the rows a reader would
        not use (every copy but the first) are left out.
        """
        with self._mutex:
            self._refresh()
            copies = bool(self._view.parts)  # only writers of many parts store a text twice
            if copies:
                self._sync_index()
                shards = list(zip(self._rows.starts, self._rows.files))
            else:  # nothing to leave out: no index needed
                shards = [(None, rel) for rel, _ in self._view.listed()]
        for start, rel in shards:
            path = self._view.shard_path(rel)
            keys, vectors = read_keys(path), read_vectors(path)
            if copies:
                with self._mutex:
                    own = self._rows.owned(keys, start)
                keys, vectors = keys[own], vectors[own]
            yield keys, vectors

    # -- integrity ------------------------------------------------------------

    def verify(self, repair: bool = False) -> list[tuple[str, str, str]]:
        """Check every listed shard of the top level and of every part; return ``(file, reason, action)``
        for each bad one, ``file`` relative to the cache directory.

        A shard is damaged when it cannot be read or its content does not match its
        own checksum; it disagrees when it is whole but its fingerprint, dimension,
        dtype, rows or checksum differ from its manifest.  With ``repair=True``
        damaged shards are deleted and disagreeing ones dropped from their manifest and
        kept on disk (``action`` says which); the next run recomputes their texts.
        When every shard of a manifest disagrees the same way the manifest is the
        suspect: repair refuses and suggests ``rebuild``.
        """
        self._refresh()
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        out = integrity.verify(self.path, self._manifests(), expected, repair, self.lock_timeout)
        self._refresh()
        return out

    @classmethod
    def rebuild(cls, path) -> dict:
        """Write new manifests from the shards' own records; delete nothing.

        For a manifest that is lost or damaged.  The cache keeps the fingerprint of the
        old manifest where it can be read and some shard has it, else the one most
        shards (by rows) have; whole shards of that fingerprint are listed, the others
        are reported and left on disk.  A part whose manifest is lost or damaged is
        rebuilt the same way, with the cache's fingerprint.  Returns ``{"listed",
        "left_out", "rows", "fingerprint"}``, files relative to the cache directory.
        """
        return integrity.rebuild(path)


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, the index of each text among them, and their keys."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)
    return unique, inverse, text_keys(unique)
