"""The in-memory index of a cache: which global row holds each key, and which shard holds each row.

Rows are numbered across the listed shards in the order they were indexed; a
shard's keys are read once.  Of two copies of a text the one earlier in reading
order (top level first, then parts by name) wins, whichever shard was indexed
first, so every reader agrees.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import CacheDamagedError
from ..index import KeyIndex
from ..shards import read_checked, read_vectors
from .layout import reading_order
from .manifest import ShardRecord


class Vanished(Exception):
    """A listed shard was deleted while it was being indexed (a compaction committed meanwhile)."""


class RowIndex:
    """Keys -> global rows over the shards indexed so far (``files``, each starting at ``starts``)."""

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Drop everything: the next ``sync`` reads every shard's keys again."""
        self.keys = KeyIndex()
        self.starts: list[int] = []  # global row of each indexed shard's first vector
        self.files: list[str] = []  # each indexed shard, relative to the cache directory
        self.next_row = 0

    def __len__(self) -> int:
        return len(self.keys)

    def sync(self, path: Path, listed: list[tuple[str, ShardRecord]], expected: dict, last: bool, shard_path) -> None:
        """Index the shards of ``listed`` (relative path, record; in reading order) not indexed yet, checking
        each header against ``expected``; start over when an indexed shard is no longer listed.  A listed
        shard that is gone raises ``Vanished`` (unless ``last``): the caller re-reads the manifests."""
        if not {rel for rel, _ in listed}.issuperset(self.files):
            self.forget()
        indexed = set(self.files)
        new = []
        for rel, shard in listed:
            if rel in indexed:
                continue
            # Its header is read once, with its keys: a wrong size, dim or fingerprint is caught here,
            # the checksum of every vector only by verify.
            file = shard_path(rel)
            try:
                new.append((rel, read_checked(file, {**expected, "rows": shard.rows})))
            except Exception as e:  # noqa: BLE001 -- a missing or damaged file: h5py raises OSError, KeyError, ...
                if not last and not os.path.lexists(file):
                    raise Vanished(rel) from None
                raise CacheDamagedError(
                    f"cache {path}: shard {rel} cannot be used ({e}); "
                    f"run 'embedcache verify {path} --repair', then precompute again"
                ) from None
        if new:
            self.append(new)

    def append(self, shards: list[tuple[str, np.ndarray]]) -> None:
        """Index the keys of ``shards`` (relative path, keys), given in reading order, in one merge: opening
        a cache of many shards costs one sort, not one pass over the index per shard."""
        first = self.next_row
        starts = first + np.cumsum([0] + [len(k) for _, k in shards[:-1]])
        keys = np.concatenate([k for _, k in shards])
        new = self.keys.add(keys, first_row=first)  # of copies among these, the first in reading order wins
        self.starts += starts.tolist()
        self.files += [rel for rel, _ in shards]
        self.next_row += len(keys)
        if not new.all():  # copies of texts indexed before: the earlier in reading order wins
            copies = np.flatnonzero(~new)
            rows = self.keys.lookup(keys[copies])
            holders = np.searchsorted(self.starts, rows, side="right") - 1
            mine = np.searchsorted(self.starts, first + copies, side="right") - 1
            later = np.array(
                [reading_order(self.files[h]) > reading_order(self.files[m]) for h, m in zip(holders, mine)],
                dtype=bool,
            )
            if later.any():
                self.keys.move(keys[copies[later]], first + copies[later])

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """The global row of each key, -1 where absent."""
        return self.keys.lookup(keys)

    def owned(self, keys: np.ndarray, start: int) -> np.ndarray:
        """Which rows of the shard starting at global row ``start`` (holding ``keys``) are the copies read."""
        return self.keys.lookup(keys) == start + np.arange(len(keys))


def read_rows(
    path: Path, rows: np.ndarray, starts: np.ndarray, files: list[str], shape: tuple, dataset: str = "vectors"
) -> np.ndarray:
    """Vectors (``shape`` each) of ``dataset`` at global ``rows`` (all present), filled in place shard by shard
    in row order."""
    out = np.empty((len(rows), *shape), dtype=np.float32)
    order = np.argsort(rows, kind="stable")
    shard_of = np.searchsorted(starts, rows[order], side="right") - 1
    bounds = np.flatnonzero(np.diff(shard_of)) + 1
    for sel, s in zip(np.split(order, bounds), shard_of[np.r_[0, bounds]] if len(order) else []):
        out[sel] = read_vectors(path / files[s], rows[sel] - starts[s], dataset)
    return out
