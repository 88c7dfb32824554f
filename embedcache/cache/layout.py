"""Where a cache keeps what: file names, the directories of the top level and the parts, the reading order.

Layout of a cache directory::

    manifest.json        fingerprint, encoder, dim, dtype and the list of whole shards
    shard-000001.h5      keys + vectors, immutable once renamed into place
    .lock                held by the one process that writes the top level
    .writer.json         who holds it (pid, host, since), for the message of a writer that waits
    parts/rank-00003-of-00008/
        manifest.json    a part: the same format, written by one writer of many
        shard-000001.h5
    parts/.rank-00003-of-00008.lock

A reader sees the top level first, then the parts by name, shards by number
within each: of two copies of a text, the first in that order is the one read.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from ..errors import CacheDamagedError
from ..shards import inspect_shard

MANIFEST = "manifest.json"
PARTS = "parts"  # one directory per writer of many: its own manifest and shards
LOCK = ".lock"
WRITER = ".writer.json"  # who holds the write lock: pid, host, since (for the message of a writer that waits)
FORMAT = "embedcache-1"
FORMAT_LAYERS = "embedcache-2"  # a cache that also stores layer vectors: older versions refuse it, never extend it
SHARD_NAME = re.compile(r"^shard-(\d{6,})\.h5$")
PART_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
COMPACTION_ATTR = "compaction"  # on shards a compaction wrote: unlisted, they are copies of an uncommitted one
ENCODER_ATTR = "encoder_info"  # each shard keeps the manifest's encoder record, so a lost manifest can be rebuilt


def part_dir(path: Path, part: str | None) -> Path:
    """The directory of the top level (None) or of a part of the cache at ``path``."""
    return path if part is None else path / PARTS / part


def lock_files(path: Path, part: str | None) -> tuple[Path, Path]:
    """The lock of a directory and the record of who holds it; a part's live beside its directory,
    so that a compaction can delete the directory while holding its lock."""
    if part is None:
        return path / LOCK, path / WRITER
    return path / PARTS / f".{part}.lock", path / PARTS / f".{part}{WRITER}"


def relative(part: str | None, name: str) -> str:
    """A file of the top level or of a part, relative to the cache directory."""
    return name if part is None else f"{PARTS}/{part}/{name}"


def reading_order(rel: str) -> tuple:
    """Where a shard comes in reading order: the top level first, then parts by name; by number within each."""
    *part, name = rel.split("/")  # "shard-000001.h5" or "parts/<name>/shard-000001.h5"
    match = SHARD_NAME.match(name)
    if match is None:  # every name reaching here passed the manifest's checks
        raise CacheDamagedError(f"{rel} is not a shard name like 'shard-000001.h5'")
    return (1, part[1]) if part else (0, ""), int(match.group(1))


def next_shard_name(home: Path) -> str:
    """The name of the next shard of a directory: one past the highest number there, listed or not."""
    seqs = [int(m.group(1)) for p in home.iterdir() if (m := SHARD_NAME.match(p.name))]
    return f"shard-{max(seqs, default=0) + 1:06d}.h5"


def shard_files(home: Path) -> list[str]:
    """Names of the shard files in a directory, listed or not."""
    if not home.is_dir():
        return []
    return sorted(p.name for p in home.iterdir() if SHARD_NAME.match(p.name))


def other_files(path: Path) -> list[str]:
    """Names in a directory that no cache being created would hold (writers' temporary and lock files aside)."""
    if not path.is_dir():
        return []
    ours = (".tmp-", LOCK, WRITER, MANIFEST, PARTS)  # MANIFEST, PARTS: another writer created the cache meanwhile
    return sorted(e.name for e in os.scandir(path) if not e.name.startswith(ours))


def part_names(path: Path) -> list[str]:
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
    return sorted(e.name for e in entries if PART_NAME.match(e.name) and e.is_dir(follow_symlinks=False))


def stamp(path: Path) -> tuple:
    """What changes when a file is replaced: inode, modification time, size."""
    st = os.stat(path)
    return st.st_ino, st.st_mtime_ns, st.st_size


def is_plain(path: Path) -> bool:
    """A regular file, not a link or a directory."""
    return os.path.lexists(path) and stat.S_ISREG(os.lstat(path).st_mode)


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or {} where it is missing or not one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def check_own(path: Path) -> tuple[dict, str | None]:
    """``(header, problem)`` of a shard file judged by itself; a link or a directory is never opened.  The
    header is empty where the file could not be read (then the problem says why)."""
    if not os.path.lexists(path):
        return {}, "file is missing"
    if not is_plain(path):
        return {}, "is not a plain file (a link or a directory)"
    h, problem = inspect_shard(path)
    return h or {}, problem


def group(h: dict) -> tuple:
    """What a shard must share with a cache to belong to it: fingerprint, dim, dtype, layers (None: none)."""
    return h.get("fingerprint"), h["shape"][1], h["dtype"], h.get("layers")
