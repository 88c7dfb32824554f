"""Reading a cache: the manifests as last read and the key index, kept in step, shared by a handle's threads.

Reading never writes to the directory and is safe while writers and compactions
run: a shard deleted between reading the manifests and reading it (a compaction
committed meanwhile) sends the reader back to the manifests, which no longer
list it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np

from ..shards import read_keys, read_vectors
from .rows import RowIndex, Vanished, read_rows
from .view import ManifestView


class Reader:
    """The manifests (``view``) and key index (``rows``) of the cache at ``path``; ``mutex`` guards both."""

    def __init__(self, path: Path):
        self.path = path
        self.mutex = threading.RLock()
        self.view = ManifestView(path)
        self.rows = RowIndex()

    def refresh(self) -> None:
        """Re-read the manifests other processes replaced since we last looked, and find new parts."""
        with self.mutex:
            self.view.refresh()

    def forget(self) -> None:
        """Drop the index and every manifest read: the next sync starts from the files."""
        with self.mutex:
            self.rows.forget()
            self.view.forget()

    def sync(self) -> None:
        """Bring the key index up to date with the manifests, reading keys of new shards only.  When an
        indexed shard went away (a repair or a compaction) the index is rebuilt."""
        with self.mutex:
            for attempt in range(6):
                self.view.refresh()
                top = self.view.top
                expected = {"fingerprint": top.fingerprint, "dim": top.dim, "dtype": top.dtype, "layers": top.layers}
                try:
                    return self.rows.sync(self.path, self.view.listed(), expected, attempt == 5, self.view.shard_path)
                except Vanished:
                    self.forget()  # read every manifest and shard again
                    time.sleep(0.01 * attempt)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The global row of each key, -1 where absent, after a sync."""
        with self.mutex:
            self.sync()
            return self.rows.lookup(keys)

    def __len__(self) -> int:
        with self.mutex:
            self.sync()
            return len(self.rows)

    def appended(self, rel: str, keys: np.ndarray) -> None:
        """A shard this handle just wrote (under the lock, after a sync): indexed from the keys in memory
        instead of read back."""
        with self.mutex:
            self.rows.append([(rel, keys)])
            self.view.refresh()

    def vectors(self, keys: np.ndarray, rows: np.ndarray | None = None, dataset: str = "vectors") -> np.ndarray:
        """Vectors of ``keys`` (all cached), at ``rows`` when the caller looked them up already.  A
        compaction may delete a shard between the lookup and the read: then the index is rebuilt from the
        new manifests and the keys looked up and read once more."""
        for attempt in (0, 1):
            with self.mutex:
                rows = self.lookup(keys) if rows is None else rows
                starts, files = np.asarray(self.rows.starts), list(self.rows.files)
            try:
                top = self.view.top
                shape = (top.dim,) if dataset == "vectors" else (len(top.layers or ()), top.dim)
                return read_rows(self.path, rows, starts, files, shape, dataset)
            except FileNotFoundError:
                if attempt:
                    raise
                self.forget()  # re-read every manifest and shard's keys
                rows = None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def iter_shards(self):
        """``(keys, vectors)`` per shard, each text once (see ``EmbeddingCache.iter_shards``)."""
        with self.mutex:
            self.view.refresh()
            copies = bool(self.view.parts)  # only writers of many parts store a text twice
            if copies:
                self.sync()
                shards = list(zip(self.rows.starts, self.rows.files))
            else:  # nothing to leave out: no index needed
                shards = [(None, rel) for rel, _ in self.view.listed()]
        for start, rel in shards:
            path = self.view.shard_path(rel)
            keys, vectors = read_keys(path), read_vectors(path)
            if copies:
                with self.mutex:
                    own = self.rows.owned(keys, start)
                keys, vectors = keys[own], vectors[own]
            yield keys, vectors
