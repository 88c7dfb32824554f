"""Integrity: ``verify`` checks (and repairs) every listed shard; ``rebuild`` writes manifests from the shards.

What may touch which file: ``verify --repair`` deletes only listed shard files
that fail their own checks (unreadable, or content that does not match their
own checksum); a whole shard that disagrees with the manifest is dropped from
the manifest and kept on disk.  ``rebuild`` writes new manifests from the
shards' own records and deletes nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CacheDamagedError, CacheNotFoundError
from ..files import atomic_write_json, writing
from ..shards import header_problem
from .layout import MANIFEST, PARTS, check_own, group, is_plain, part_dir, part_names, read_json, relative, shard_files
from .lock import LOCK_TIMEOUT, WriteLock
from .manifest import (
    Manifest,
    ManifestEncoder,
    ShardRecord,
    encoder_record,
    read_manifest,
    rebuilt_manifest,
    write_manifest,
)
from .schema import encoder_problem, manifest_problem


def verify(
    path: Path,
    manifests: list[tuple[str | None, Manifest]],
    expected: dict,
    repair: bool,
    timeout: float = LOCK_TIMEOUT,
) -> list[tuple[str, str, str]]:
    """Check every shard the ``(part, manifest)`` pairs list against ``expected`` (fingerprint, dim, dtype);
    return ``(file, reason, action)`` per bad one.  See ``EmbeddingCache.verify``."""
    found: dict[str | None, list[tuple]] = {}  # part -> [(file, reason, damaged, header: of another group)]
    for part, manifest in manifests:
        bad = found[part] = []
        for shard in manifest.shards:
            h, problem = check_own(part_dir(path, part) / shard.file)
            if problem:
                bad.append((shard.file, problem, True, False))
                continue
            problem = header_problem(h, {**expected, "rows": shard.rows, "sha256": shard.sha256})
            if problem:
                bad.append((shard.file, problem, False, group(h) != tuple(expected.values())))
        header = [b for b in bad if b[3]]
        if repair and header and len(header) == len(manifest.shards):
            raise CacheDamagedError(
                f"cache {path}: every shard disagrees with {relative(part, MANIFEST)} "
                f"({relative(part, header[0][0])}: {header[0][1]}): its header looks damaged, so nothing was "
                f"dropped; run 'embedcache verify {path} --rebuild' to rebuild it from the shards' own records"
            )
    out = []
    for part, bad in found.items():
        if not (repair and bad):
            out += [(relative(part, name), reason, "") for name, reason, _, _ in bad]
            continue
        with WriteLock(path, part, timeout):
            names = {b[0] for b in bad}
            manifest = read_manifest(path, part)
            manifest.shards = [s for s in manifest.shards if s.file not in names]
            write_manifest(path, part, manifest)
            for name, reason, damaged, _ in bad:
                file = part_dir(path, part) / name
                if damaged and is_plain(file):  # never a link, a directory or what is not there
                    file.unlink()
                    out.append((relative(part, name), reason, "deleted"))
                else:
                    kept = ", file kept" if os.path.lexists(file) else ""
                    out.append((relative(part, name), reason, "dropped from the manifest" + kept))
    return out


def rebuild(path) -> dict:
    """Write new manifests from the shards' own records; delete nothing.  See ``EmbeddingCache.rebuild``."""
    path = Path(path)
    if not path.is_dir():
        raise CacheNotFoundError(f"no cache directory at {path}")
    with WriteLock(path):
        old = read_json(path / MANIFEST)
        listed, left_out, group_ = rebuild_directory(path, old, None)
        parts = []
        for name in part_names(path):
            part_old = read_json(path / PARTS / name / MANIFEST)
            if part_old and not manifest_problem(part_old) and not Manifest.from_json(part_old).misfit(name, group_):
                continue  # whole: its own writer keeps it
            with WriteLock(path, name):
                part_listed, part_left, _ = rebuild_directory(path / PARTS / name, part_old, group_, name)
            listed += [relative(name, n) for n in part_listed]
            left_out += [(relative(name, n), why) for n, why in part_left]
            parts.append(name)
    rows = sum(
        s["rows"] for home in [path, *(path / PARTS / n for n in parts)] for s in read_json(home / MANIFEST)["shards"]
    )  # of the manifests rebuilt: what "listed" holds
    return {"listed": listed, "left_out": left_out, "fingerprint": group_[0], "rows": rows, "parts": parts}


def rebuild_directory(home: Path, old: dict, group_: tuple | None, part: str | None = None):
    """Write ``home``'s manifest from its whole shards of ``group_`` (fingerprint, dim, dtype; None: the
    old manifest's where a shard has it, else the largest); return (listed, left out, group)."""
    found, left_out = [], []
    for name in shard_files(home):
        h, problem = check_own(home / name)
        if problem:
            left_out.append((name, problem))
        else:
            found.append((name, h))
    if group_ is None:
        group_ = _chosen_group(home, old, found, left_out)
    listed: list[tuple[str, dict]] = []
    copies: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for n, h in found:
        if group(h) != group_:
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
            f"whole, but of fingerprint {h.get('fingerprint')!r}, dim {h['shape'][1]}, {h['dtype']}; the cache keeps {group_[0]!r}",
        )
        for n, h in found
        if n not in names
    ]
    kept = old.get("encoder") if old.get("fingerprint") == group_[0] else None
    if kept is not None and not encoder_problem(kept):
        encoder = ManifestEncoder.from_json(kept)
    else:
        encoder = encoder_record([h for _, h in listed]) if listed else ManifestEncoder("unknown")
    shards = [ShardRecord(n, h["rows"], h["sha256"]) for n, h in listed]
    manifest = rebuilt_manifest(group_, encoder, shards, [n for n, _ in left_out], part).to_json()
    problem = manifest_problem(manifest)
    if problem:
        raise CacheDamagedError(f"cache {home}: the shards' own records do not make a valid manifest: {problem}")
    with writing(home / MANIFEST):
        atomic_write_json(home / MANIFEST, manifest)
    return [n for n, _ in listed], left_out, group_


def _chosen_group(home: Path, old: dict, found: list, left_out: list) -> tuple:
    """The old manifest's group where a whole shard has it, else the group of the most rows."""
    if not found:
        raise CacheDamagedError(
            f"cache {home}: no whole shard to rebuild a manifest from"
            + (f" ({left_out[0][0]}: {left_out[0][1]})" if left_out else "")
        )
    rows_by: dict[tuple, int] = {}
    for _, h in found:
        rows_by[group(h)] = rows_by.get(group(h), 0) + h["rows"]
    return next((g for g in rows_by if g[0] == old.get("fingerprint")), None) or max(rows_by, key=lambda g: rows_by[g])
