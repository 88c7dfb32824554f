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
from pathlib import Path

import numpy as np

from ..encoders import Encoder, RecordedEncoder
from ..errors import (
    NotCachedError,
    ParameterError,
)
from ..files import create_json_once, writing
from ..index import text_keys
from ..shards import LAYER_DTYPE
from . import integrity
from .layout import (
    MANIFEST,
    part_dir,
)
from .lock import LOCK_TIMEOUT
from .manifest import Manifest
from .reader import Reader
from .view import backend_description, check_arguments, check_layers, create_if_missing, dataset_of, wanted_layers
from .writer import ShardWriter, encode_in_batches, encode_into, new_stats


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
        layers=None,
    ):
        self.path = Path(path)
        self.encoder = encoder
        self.shard_size = shard_size
        self.lock_timeout = lock_timeout
        self.part = part
        self.layers_asked = layers
        check_arguments(encoder, dtype, shard_size, part)
        wanted = wanted_layers(encoder, layers)
        create_if_missing(self.path, encoder, dtype or "float16", wanted)
        self._reader = Reader(self.path)  # the manifests as last read and the key index
        self._mutex = self._reader.mutex  # guards them and the encoder, for this handle's threads
        self._view = self._reader.view
        self._refresh()
        if dtype is not None and dtype != self.dtype:
            raise ParameterError(f"cache {self.path} stores {self.dtype}, but dtype={dtype!r} was asked for")
        check_layers(self.path, self.layers, wanted, layers)
        if encoder is not None:
            self.recorded_encoder.check(encoder, "use another cache directory for it")

    # -- manifests ------------------------------------------------------------

    def _open_part(self) -> None:
        """Create this handle's part unless it exists (a rerun resumes it): when it first writes, and again
        under its lock when a compaction merged it into the top level and deleted it meanwhile."""
        home = part_dir(self.path, self.part)
        if self.part is None or (home / MANIFEST).exists():
            return
        with writing(home, "creating the part"):
            home.mkdir(parents=True, exist_ok=True)
        manifest = Manifest.new(self._writer(), self.dtype, self.part, self.layers)
        create_json_once(home / MANIFEST, manifest.to_json())
        self._refresh()

    def _writer(self) -> Encoder:
        """The encoder this handle writes with (a handle opened without one never reaches a write)."""
        if self.encoder is None:
            raise NotCachedError(f"cache {self.path} was opened without an encoder: it cannot write")
        return self.encoder

    def _refresh(self) -> None:
        """Re-read the manifests other processes replaced since we last looked, and find new parts."""
        self._reader.refresh()

    @property
    def _manifest(self) -> Manifest:
        return self._view.top

    # -- properties -----------------------------------------------------------

    @property
    def fingerprint(self) -> str:
        return self._manifest.fingerprint

    @property
    def dim(self) -> int:
        return self._manifest.dim

    @property
    def dtype(self) -> str:
        return self._manifest.dtype

    @property
    def layers(self) -> tuple[int, ...] | None:
        """The hidden states (0: the embeddings' output) whose mean vectors each text has besides its sentence
        vector (``get(texts, features="layers")``); None for a cache of sentence vectors only."""
        return self._manifest.layers

    @property
    def encoder_name(self) -> str:
        return self._manifest.encoder.name

    @property
    def encoder_spec(self) -> dict | None:
        """``load_encoder(**spec)`` arguments that rebuild the cache's encoder; None for a custom one."""
        return self._manifest.encoder.load

    @property
    def recorded_encoder(self) -> RecordedEncoder:
        """The encoder of this cache's vectors as its manifest records it (load it again with ``.load()``)."""
        m = self._manifest
        return RecordedEncoder(
            m.fingerprint, m.encoder.name, m.encoder.load, f"cache {self.path} was built by", "the cache"
        )

    @property
    def parts(self) -> list[str]:
        """Names of the parts writers filled and no compaction merged yet."""
        self._refresh()
        return list(self._view.parts)

    def knows(self, quick_key: str | None) -> bool:
        """Whether an encoder with this ``encoders.quick_key`` was verified to match this cache."""
        return self._view.knows(quick_key)

    def remember(self, quick_key: str | None) -> None:
        """Record that this cache's own encoder (checked by fingerprint) has ``quick_key``."""
        if quick_key is None or self.knows(quick_key) or self.encoder is None or not self.writable():
            return  # a shortcut for the next run only: a read-only cache does without
        self._open_part()
        with self._writing() as writer:
            writer.record_quick_key(quick_key)
        self._refresh()

    def load_encoder(self, device: str | None = None, **kwargs) -> Encoder:
        """Load the encoder that built this cache (as recorded in the manifest) and make it this cache's encoder."""
        with self._mutex:  # threads that need it at once load it once
            if self.encoder is None or device is not None or kwargs:
                self.encoder = self.recorded_encoder.load(device, "pass that encoder to EmbeddingCache", **kwargs)
            return self.encoder

    def writable(self) -> bool:
        """Whether this process may write into the cache directory."""
        return os.access(self.path, os.W_OK)

    def __len__(self) -> int:
        """The number of distinct texts cached (a text two parts both hold counts once)."""
        return len(self._reader)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, encoder={self.encoder_name!r}, rows={len(self)}, dim={self.dim})"

    @property
    def backend(self) -> str:
        """Where the encoder ran and in what precision, e.g. ``torch fp32`` or ``openvino-int8 (int8 weights, fp32
        float operations)``."""
        return backend_description(self._manifest.encoder)

    def info(self) -> dict:
        """What the manifests say, without reading a shard: ``rows`` counts stored vectors, a text
        two parts both hold twice (``len(cache)`` counts distinct texts)."""
        self._refresh()
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "backend": self.backend,
            "dim": self.dim,
            "dtype": self.dtype,
            "layers": list(self.layers) if self.layers is not None else None,
            **self._view.sizes(),
        }

    # -- writing --------------------------------------------------------------

    def shard_attributes(self) -> dict:
        """The attributes every shard of this cache carries, so a lost manifest can be rebuilt from shards."""
        return self._manifest.shard_attributes()

    def _writing(self) -> ShardWriter:
        """The writer of this handle's directory (its part, else the top level); entered, it holds the one write
        lock of that directory (other writers of it wait; writers of other parts never do) and has tidied it."""
        opening = self._open_part if self.part is not None and self.encoder is not None else None
        attributes, appended = self.shard_attributes(), self._reader.appended
        return ShardWriter(
            self.path, self.part, self.dtype, attributes, appended, self.lock_timeout, opening, self._refresh
        )

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
        absent = int((self._reader.lookup(keys) < 0).sum())
        if not absent:  # nothing to write: no lock (a read-only cache stays usable)
            return new_stats(n_texts, len(unique), 0)
        if self.encoder is None:
            raise NotCachedError(f"{absent} texts are not in cache {self.path}, and it was opened without an encoder")
        self._open_part()
        with self._writing() as writer:
            missing = np.flatnonzero(self._reader.lookup(keys) < 0)  # again: another writer may have added some
            stats = new_stats(n_texts, len(unique), len(missing))
            if len(missing):
                encode_into(writer, self.encoder, unique, keys, missing, self.shard_size, stats, progress)
                self._refresh()
        return stats

    def unknown_report(self) -> dict:
        """Texts of this cache that were mostly tokens its encoder does not know, and the languages it covers."""
        self._refresh()
        return self._view.unknown_report()

    def encode(self, texts, progress: bool = False, features: str = "final") -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts`` in input order, encoding only what is missing
        (``features="layers"``: their ``(n, n_layers, dim)`` layer vectors, see ``get``)."""
        dataset = dataset_of(features, self.layers, self.path)
        texts = list(texts)
        unique, inverse, keys = _distinct(texts)
        self._add(unique, keys, len(texts), progress)
        return self._reader.vectors(keys[inverse], None, dataset)

    # -- reading --------------------------------------------------------------

    def contains(self, texts) -> np.ndarray:
        """Boolean array: which of ``texts`` are cached."""
        _, inverse, keys = _distinct(list(texts))
        return (self._reader.lookup(keys) >= 0)[inverse]

    def get(self, texts, encode_missing: bool = False, progress: bool = False, features: str = "final") -> np.ndarray:
        """``(n, dim)`` float32 vectors of ``texts`` in input order; never writes.

        ``features="layers"``: the ``(n, n_layers, dim)`` layer vectors instead (the means of
        the hidden states ``cache.layers``), for a cache built with ``layers=``.
        Texts not in the cache raise NotCachedError (a KeyError) saying how many, or with
        ``encode_missing=True`` are encoded in memory by the cache's encoder
        (loaded from the manifest on first need) and not stored: ``encode()``
        is the call that stores them.
        """
        dataset = dataset_of(features, self.layers, self.path)
        unique, inverse, keys = _distinct(list(texts))
        rows = self._reader.lookup(keys)
        missing = np.flatnonzero(rows < 0)
        if not len(missing):  # in input order: one copy of the vectors, not two
            return self._reader.vectors(keys[inverse], rows[inverse], dataset)
        if not encode_missing:
            raise NotCachedError(
                f"{len(missing)} of {len(unique)} distinct texts are not in cache {self.path} "
                f"(first: {unique[missing[0]][:60]!r}); add them with cache.encode() or embedcache precompute"
            )
        layers = self.layers if dataset == "layers" else None
        shape = (len(unique), self.dim) if layers is None else (len(unique), len(layers), self.dim)
        out = np.empty(shape, dtype=np.float32)
        present = np.flatnonzero(rows >= 0)
        if len(present):
            out[present] = self._reader.vectors(keys[present], rows[present], dataset)
        encoder = self.encoder or self.load_encoder()
        new = encode_in_batches(encoder, [unique[i] for i in missing], progress, self.path.name, layers)
        # rounded as if stored, so a text scores the same before and after it is cached
        out[missing] = new.astype(self.dtype if layers is None else LAYER_DTYPE)
        return out[inverse]

    def iter_shards(self):
        """Yield ``(keys, vectors)`` per shard, vectors in the stored dtype: one shard in memory at a time.

        Each text comes once: where parts hold copies of a text, the rows a reader would
        not use (every copy but the first) are left out.
        """
        return self._reader.iter_shards()

    # -- integrity ------------------------------------------------------------

    def verify(self, repair: bool = False) -> list[tuple[str, str, str]]:
        """Check every listed shard of the top level and of every part; return ``(file, reason, action)``
        for each bad one, ``file`` relative to the cache directory.  ``repair=True`` deletes damaged shards
        and drops disagreeing ones from their manifest, keeping the file (see ``embedcache.cache.integrity``)."""
        self._refresh()
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype, "layers": self.layers}
        out = integrity.verify(self.path, self._view.manifests(), expected, repair, self.lock_timeout)
        self._refresh()
        return out

    @classmethod
    def rebuild(cls, path) -> dict:
        """Write new manifests from the shards' own records, for a manifest lost or damaged; delete nothing.
        Returns ``{"listed", "left_out", "rows", "fingerprint", "parts"}`` (see ``embedcache.cache.integrity``)."""
        return integrity.rebuild(path)


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, the index of each text among them, and their keys."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)
    return unique, inverse, text_keys(unique)
