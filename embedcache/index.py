"""Text keys and the in-memory index from key to row.

A key is the 128-bit BLAKE2b digest of the text's exact UTF-8 bytes.  The index
keeps the keys sorted by their first 64 bits, with the second 64 bits and the
global row number beside them: 20 bytes per key (200 MB at 10M keys), looked up
with one vectorised ``searchsorted``.
"""

from __future__ import annotations

import hashlib

import numpy as np

from .errors import InputError
from .shards import KEY_BYTES


def text_keys(texts: list[str]) -> np.ndarray:
    """``(n, 16)`` uint8 keys of ``texts``: BLAKE2b-128 of the exact UTF-8 bytes.  A text that is not a string
    (a NaN from an empty CSV cell, a number) is an InputError naming its position."""
    try:
        blob = b"".join([hashlib.blake2b(t.encode("utf-8"), digest_size=KEY_BYTES).digest() for t in texts])
    except AttributeError:
        i, bad = next((i, t) for i, t in enumerate(texts) if not isinstance(t, str))
        raise InputError(
            f"text {i} (0-based, among the distinct texts given) is {type(bad).__name__} {bad!r}, not a string: "
            "drop or fill empty values before caching"
        ) from None
    return np.frombuffer(blob, dtype=np.uint8).reshape(len(texts), KEY_BYTES)


def _halves(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.ascontiguousarray(keys, dtype=np.uint8).view("<u8").reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class KeyIndex:
    """Sorted keys -> global row numbers (rows are numbered across shards in manifest order)."""

    def __init__(self) -> None:
        self.hi = np.zeros(0, dtype=np.uint64)
        self.lo = np.zeros(0, dtype=np.uint64)
        self.row = np.zeros(0, dtype=np.uint32)

    def __len__(self) -> int:
        return len(self.hi)

    @property
    def nbytes(self) -> int:
        return self.hi.nbytes + self.lo.nbytes + self.row.nbytes

    def add(self, keys: np.ndarray, first_row: int) -> np.ndarray:
        """Add ``keys`` stored at rows ``first_row, first_row + 1, ...``; return which of them were new.

        A key the index holds already keeps its row, and of a key repeated in ``keys``
        the first keeps it: the first copy wins, so readers that add shards in the same
        order agree on every row.
        """
        hi, lo = _halves(keys)
        rows = np.arange(first_row, first_row + len(hi), dtype=np.uint32)
        order = np.argsort(hi, kind="stable")
        sorted_hi = hi[order]
        if (sorted_hi[1:] == sorted_hi[:-1]).any():  # copies (or shared high halves): sort by the low half too
            order = np.lexsort((lo, hi))  # stable: of equal keys the first comes first
        hi, lo, rows = hi[order], lo[order], rows[order]
        at = np.searchsorted(self.hi, hi)  # where each goes, and where a copy held already would be
        fresh = np.ones(len(hi), dtype=bool)
        fresh[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
        if len(self.hi):
            fresh &= self._find(hi, lo, at) < 0
        new = np.zeros(len(keys), dtype=bool)
        new[order[fresh]] = True
        hi, lo, rows, at = hi[fresh], lo[fresh], rows[fresh], at[fresh]
        # Merging a sorted batch costs one pass over the index, not a re-sort.
        self.hi = np.insert(self.hi, at, hi)
        self.lo = np.insert(self.lo, at, lo)
        self.row = np.insert(self.row, at, rows)
        return new

    def move(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Point ``keys`` (all present) at other ``rows``: another copy of the same texts."""
        hi, lo = _halves(keys)
        pos = np.searchsorted(self.hi, hi)
        for i in range(len(hi)):  # a run of equal high halves is almost always one long
            j = pos[i]
            while self.lo[j] != lo[i]:
                j += 1
            self.row[j] = rows[i]

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Global row of each key, or -1 where it is absent."""
        return self._find(*_halves(keys))

    def _find(self, hi: np.ndarray, lo: np.ndarray, at: np.ndarray | None = None) -> np.ndarray:
        """Row of each key given as halves, or -1; ``at``: ``searchsorted(self.hi, hi)`` when known."""
        out = np.full(len(hi), -1, dtype=np.int64)
        if not len(self.hi):
            return out
        pos = np.minimum(np.searchsorted(self.hi, hi) if at is None else at, len(self.hi) - 1)
        same_hi = self.hi[pos] == hi
        hit = same_hi & (self.lo[pos] == lo)
        out[hit] = self.row[pos[hit]]
        # Two cached keys sharing their first 64 bits (about 3e-6 odds at 10M keys):
        # the low half picks the row within that run.
        for i in np.flatnonzero(same_hi & ~hit):
            end = np.searchsorted(self.hi, hi[i], side="right")
            match = np.flatnonzero(self.lo[pos[i] : end] == lo[i])
            if len(match):
                out[i] = self.row[pos[i] + match[0]]
        return out
