"""A crafted manifest or parts folder deletes nothing live; readers and ranks that lose a race with a compaction go on
(issue 22, items 5-7)."""

import json
import threading

import numpy as np
import pytest
from helpers import HashEncoder, one_line_error
from helpers import run as run_command

from embedcache import CacheDamagedError, EmbeddingCache, compact
from embedcache.cli import main

TOP = [f"top {i}" for i in range(6)]
PART = [f"part {i}" for i in range(6)]


@pytest.fixture
def cache_dir(tmp_path):
    """A cache with 3 top-level shards and one part of 3 shards."""
    d = tmp_path / "c"
    EmbeddingCache(d, HashEncoder(), shard_size=2).add(TOP)
    EmbeddingCache(d, HashEncoder(), shard_size=2, part="rank-0").add(PART)
    return d


def files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("shard-*.h5"))


def retire(d, shards=(), parts=()):
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["retired"] = {"shards": list(shards), "parts": list(parts)}
    (d / "manifest.json").write_text(json.dumps(manifest))


def test_a_retired_record_naming_live_shards_is_refused_and_deletes_nothing(cache_dir, capsys):
    before = files(cache_dir)
    retire(cache_dir, shards=["shard-000001.h5", "shard-000002.h5"])
    code, _, err = run_command(main, capsys, "compact", cache_dir, "--quiet")
    one_line_error(code, err, "retired", "shard-000001.h5", "live")
    assert files(cache_dir) == before


def test_a_retired_record_naming_a_live_part_deletes_nothing(cache_dir, capsys):
    before = files(cache_dir)
    part_id = json.loads((cache_dir / "parts" / "rank-0" / "manifest.json").read_text())["part"]["id"]
    retire(cache_dir, parts=[{"name": "rank-0", "id": part_id}])
    code, _, err = run_command(main, capsys, "compact", cache_dir, "--quiet")
    one_line_error(code, err, "retired", "part rank-0", "nothing")
    assert files(cache_dir) == before


def test_a_compaction_still_retires_what_it_copied(cache_dir):
    compact(cache_dir, shard_size=100)
    after = EmbeddingCache(cache_dir)
    assert after.parts == [] and len(after) == 12 and after.verify() == []
    assert not (cache_dir / "parts" / "rank-0").exists()


def test_a_parts_link_out_of_the_cache_is_never_followed(cache_dir, tmp_path, capsys):
    outside = tmp_path / "outside"
    (cache_dir / "parts").rename(outside)
    (cache_dir / "parts").symlink_to(outside)
    before = sorted(p.name for p in outside.rglob("*"))
    for args in (["compact", cache_dir], ["verify", cache_dir], ["info", cache_dir]):
        code, _, err = (
            run_command(main, capsys, *args, "--quiet") if args[0] == "compact" else run_command(main, capsys, *args)
        )
        one_line_error(code, err, "parts", "link")
    assert sorted(p.name for p in outside.rglob("*")) == before


def test_a_parts_file_is_one_line(cache_dir, tmp_path, capsys):
    import shutil

    shutil.rmtree(cache_dir / "parts")
    (cache_dir / "parts").write_text("not a folder")
    for args in (["verify", cache_dir], ["info", cache_dir]):
        one_line_error(*run_command(main, capsys, *args)[::2], "parts", "not a directory")
    with pytest.raises(CacheDamagedError, match="not a directory"):
        EmbeddingCache(cache_dir).get(["top 1"])
    (tmp_path / "in.csv").write_text("text\nnew text\n")
    code, _, err = run_command(
        main,
        capsys,
        "precompute",
        tmp_path / "in.csv",
        "--cache",
        cache_dir,
        "--text-col",
        "text",
        "--rank",
        "0",
        "--world-size",
        "2",
        "--quiet",
    )
    one_line_error(code, err, "not a directory")


def test_a_reader_that_lost_a_race_with_a_compaction_reads_again(cache_dir, monkeypatch):
    """The reader read the old manifests; the compaction commits and deletes the shards before it reads their keys."""
    import embedcache.cache.rows as cache_module  # where the index reads a shard's keys

    reader = EmbeddingCache(cache_dir)
    reader._refresh()
    real = cache_module.read_checked
    raced = []

    def compact_first(path, expected):
        if not raced:
            raced.append(path)
            compact(cache_dir, shard_size=100)  # commits a new manifest and deletes what it replaced
        return real(path, expected)

    monkeypatch.setattr(cache_module, "read_checked", compact_first)
    enc = HashEncoder()
    vectors = reader.get(TOP + PART)
    assert raced and not raced[0].exists()
    np.testing.assert_array_equal(vectors, np.float16([enc.vector(t) for t in TOP + PART]).astype(np.float32))


def test_a_rank_whose_part_a_compaction_merged_writes_on(cache_dir):
    enc = HashEncoder()
    writer = EmbeddingCache(cache_dir, enc, shard_size=2, part="rank-0")
    assert len(writer) == 12
    compact(cache_dir, shard_size=100)  # merges and deletes rank-0 between the writer's open and its write
    stats = writer.add(["after 1", "after 2", "part 1"])
    assert stats["encoded"] == 2
    fresh = EmbeddingCache(cache_dir)
    assert len(fresh) == 14 and fresh.verify() == []
    np.testing.assert_array_equal(fresh.get(["after 1"]), np.float16([enc.vector("after 1")]).astype(np.float32))


def test_readers_never_see_a_false_damaged_error_while_compacting(tmp_path):
    d = tmp_path / "c"
    EmbeddingCache(d, HashEncoder(), shard_size=2).add(TOP)
    stop, errors = threading.Event(), []

    def read():
        while not stop.is_set():
            try:
                EmbeddingCache(d).get(TOP)
            except Exception as e:  # noqa: BLE001 -- any error is the failure this test looks for
                errors.append(e)
                return

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for round_ in range(8):
            EmbeddingCache(d, HashEncoder(), shard_size=1, part=f"r{round_}").add(
                [f"new {round_} {i}" for i in range(3)]
            )
            compact(d, shard_size=3)
    finally:
        stop.set()
        thread.join()
    assert errors == []
