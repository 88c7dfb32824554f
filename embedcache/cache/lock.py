"""The one write lock of a cache directory (the top level or a part), and who holds it.

Writers of the same directory, in other processes or threads, wait for it with a
line every 30 s naming the holder, and give up after ``timeout`` seconds with a
message that names it too.  Writers of other parts never wait.  A compaction
never waits: it takes the locks that are free (``try_lock``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import CacheError, CacheLockedError
from ..files import atomic_write_json, writing
from .layout import lock_files

logger = logging.getLogger("embedcache.cache")

LOCK_TIMEOUT = 300.0  # seconds a writer waits for another writer before giving up


class WriteLock:
    """``with WriteLock(path, part, timeout):`` holds the write lock of the top level (``part`` None) or of a
    part of the cache at ``path``, with a record of who holds it for writers that wait."""

    def __init__(self, path: Path, part: str | None = None, timeout: float = LOCK_TIMEOUT):
        self.path, self.part, self.timeout = Path(path), part, timeout
        self.lock_path, self.writer_path = lock_files(self.path, part)
        self._lock: FileLock | None = None

    def __enter__(self) -> WriteLock:
        if not os.access(self.path, os.W_OK):
            raise CacheError(
                f"cache {self.path} is read-only for this process: reading works, writing does not; "
                "to add texts, copy the cache somewhere writable"
            )
        lock = FileLock(self.lock_path)
        self._wait_for(lock)
        try:
            with writing(self.writer_path):
                atomic_write_json(
                    self.writer_path,
                    {
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                        "thread": threading.get_ident(),
                        "since": time.time(),
                    },
                )
        except BaseException:
            lock.release()
            raise
        self._lock = lock
        return self

    def __exit__(self, *exc) -> None:
        lock, self._lock = self._lock, None
        try:
            self.writer_path.unlink(missing_ok=True)
        finally:
            if lock is not None:
                lock.release()

    def _wait_for(self, lock: FileLock) -> None:
        started, told = time.monotonic(), 0.0
        while True:
            try:
                lock.acquire(timeout=0)
                return
            except Timeout:
                waited = time.monotonic() - started
                if waited >= self.timeout:
                    raise CacheLockedError(
                        f"cache {self.path} is being written by {holder(self.writer_path)} (lock {self.lock_path}); "
                        f"gave up after {self.timeout:g} s: wait for it to finish, give a longer lock timeout, "
                        "or write to another directory"
                    ) from None
                if waited >= told:  # a line now and every 30 s, so a long wait is never silent
                    logger.warning(
                        "cache %s is being written by %s; waiting up to %g s",
                        self.path,
                        holder(self.writer_path),
                        self.timeout,
                    )
                    told = waited + 30
                time.sleep(min(0.05, self.timeout - waited))
            except OSError as e:  # the lock file is a directory, a link loop, on a read-only disk, ...
                raise CacheError(
                    f"cache {self.path}: cannot take the write lock {self.lock_path} ({e.strerror or e}); "
                    "it must be a plain file the cache can create: remove whatever is there"
                ) from None


def try_lock(path: Path, part: str | None) -> FileLock | None:
    """The lock of a directory if it is free now, else None (for a compaction, which never waits)."""
    lock = FileLock(lock_files(Path(path), part)[0])
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def holder(writer_path: Path) -> str:
    """Who holds a write lock, in words, from the record the holder wrote."""
    try:
        who = json.loads(writer_path.read_text())
        since = f", for {time.time() - float(who.get('since', time.time())):.0f} s"
    except (OSError, ValueError, TypeError, AttributeError):
        return "another process"
    if who.get("pid") == os.getpid() and who.get("host") == socket.gethostname():
        return f"another thread of this process (pid {who['pid']}{since})"
    return f"process {who.get('pid')} on host {who.get('host')}{since}"
