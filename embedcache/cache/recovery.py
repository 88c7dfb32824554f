"""What a writer does under its lock before it writes: finish what killed writers and compactions left.

``tidy`` deletes the temporary files of writers that died and adopts their whole
unlisted shards; on the top level it first runs ``retire``, which deletes what a
committed compaction replaced.  Both change files only under the lock of the
directory they tidy, which the caller holds.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from ..errors import CacheDamagedError
from ..index import KeyIndex
from ..shards import read_keys
from .layout import COMPACTION_ATTR, MANIFEST, SHARD_NAME, check_own, group, is_plain, part_dir, read_json, relative
from .lock import try_lock
from .manifest import Retired, ShardRecord, new_part, read_manifest, write_manifest

logger = logging.getLogger("embedcache.cache")


def tidy(path: Path, part: str | None) -> None:
    """Delete the temporary files of writers that died, and adopt their whole unlisted shards (the caller
    holds the lock of ``part``, or of the top level for None).

    A shard renamed into place but never listed (the writer died between the two
    renames) is whole: it joins the manifest when it passes its own checks and
    matches the cache.  The unlisted copies of a compaction that never committed,
    and what a committed one replaced, are deleted.  Any other unlisted file is
    left alone, with a warning.
    """
    home = part_dir(path, part)
    if part is None:
        retire(path)
    manifest = read_manifest(path, part)
    if part is not None and manifest.part is not None and manifest.part.id in read_manifest(path).retired_part_ids():
        # a compaction copied this part and was killed before deleting it: begin it afresh
        shutil.rmtree(home)
        home.mkdir()
        # its unknown texts are counted in the top level now
        manifest = replace(manifest, shards=[], unknown=None, part=new_part(part))
        write_manifest(path, part, manifest)
    listed = {s.file for s in manifest.shards}
    adopted = []
    for p in sorted(home.iterdir()):
        if p.name.startswith(".tmp-") and not p.is_dir():
            p.unlink(missing_ok=True)
        elif SHARD_NAME.match(p.name) and p.name not in listed:
            h, problem = check_own(p)
            if not problem and h.get(COMPACTION_ATTR):
                p.unlink()  # a copy made by a compaction that was killed before it committed
                continue
            if not problem and group(h) != manifest.group:
                problem = "it belongs to fingerprint {!r}, dim {}, {}".format(*group(h))
            if problem:
                logger.warning(
                    "cache %s: left %s alone: not listed in the manifest and %s", path, relative(part, p.name), problem
                )
                continue
            manifest.shards.append(ShardRecord(p.name, h["rows"], h["sha256"]))
            adopted.append(p.name)
    if adopted:
        write_manifest(path, part, manifest)
        logger.warning(
            "cache %s: adopted %d whole shard(s) a killed writer had not listed: %s",
            path,
            len(adopted),
            ", ".join(relative(part, a) for a in adopted),
        )


def retire(path: Path, held: dict[str, FileLock] | None = None) -> None:
    """Delete what a committed compaction replaced, then drop the record of it (the caller holds the
    top-level lock).

    ``held``: locks of parts the caller holds already.  A part whose lock another
    process holds stays recorded: its own writer deletes it when it next writes.
    """
    held = held or {}
    manifest = read_manifest(path)
    retired = manifest.retired
    if not retired:
        return
    held_by_top = HeldBy(path, manifest.shards)
    for name in retired.shards:
        if is_plain(path / name):
            held_by_top.check([path / name], f"shard {name}")
            (path / name).unlink()
    left = []
    for record in retired.parts:
        home = part_dir(path, record.name)
        try:
            current = json.loads((home / MANIFEST).read_text(encoding="utf-8"))["part"]["id"]
        except (OSError, ValueError, KeyError, TypeError):
            current = record.id  # no manifest (deleted first by an earlier try): the directory is still ours
        if current != record.id or not home.exists():
            continue  # gone, or begun afresh under the same name since
        if home.is_symlink() or not home.is_dir():
            raise CacheDamagedError(
                f"cache {path}: retired part {record.name} is not a plain directory; nothing was deleted: move it away"
            )
        listed = read_json(home / MANIFEST).get("shards")  # what the compaction copied (none: deleted already)
        if isinstance(listed, list):
            files = [
                home / s["file"]
                for s in listed
                if isinstance(s, dict) and isinstance(s.get("file"), str) and SHARD_NAME.match(s["file"])
            ]
            held_by_top.check([f for f in files if is_plain(f)], f"part {record.name}")
        lock = held.get(record.name) or try_lock(path, record.name)
        if lock is None:
            left.append(record)
            continue
        try:
            shutil.rmtree(home)
        finally:
            if lock is not held.get(record.name):
                lock.release()
    manifest = read_manifest(path)
    manifest.retired = Retired(parts=tuple(left)) if left else None
    write_manifest(path, None, manifest)


class HeldBy:
    """Whether the texts of shard files are all held by the listed top-level ``shards`` (their keys are read
    once, on first need): what a compaction retires must be, or deleting it would lose texts."""

    def __init__(self, path: Path, shards: list[ShardRecord]):
        self.path, self.shards = path, shards
        self.index: KeyIndex | None = None

    def check(self, files: list[Path], what: str) -> None:
        if self.index is None:
            self.index = KeyIndex()
            for shard in self.shards:
                self.index.add(read_keys(self.path / shard.file), first_row=0)
        index = self.index
        for file in files:
            if (index.lookup(read_keys(file)) < 0).any():
                raise CacheDamagedError(
                    f"cache {self.path}: {MANIFEST} field 'retired' names {what}, but {file.relative_to(self.path)} "
                    "holds texts no live top-level shard holds: retiring it would lose them, so nothing more was "
                    f"deleted; run 'embedcache verify {self.path} --rebuild' if the manifest is damaged"
                )
