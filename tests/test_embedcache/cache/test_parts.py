"""Many writers into one cache: parts, rank slices from each launcher, compaction that a crash cannot halve."""

import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import HashEncoder

from embedcache import (
    CacheDamagedError,
    EmbeddingCache,
    FingerprintMismatchError,
    ParameterError,
    compact,
    load_encoder,
)
from embedcache.corpus import launcher_rank
from embedcache.index import text_keys


class ShiftedEncoder(HashEncoder):
    """The same fingerprint as HashEncoder, other vectors: shows which of two copies of a text is read."""

    def vector(self, text):
        return super().vector(text) + 10


def stored(vectors):
    return np.asarray(vectors, dtype=np.float16).astype(np.float32)


def planted_part(cache_dir, tmp_path, name, texts, encoder):
    """A part written as a concurrent writer would have: without seeing what the others hold."""
    elsewhere = tmp_path / f"elsewhere-{name}"
    EmbeddingCache(elsewhere, encoder, part=name, shard_size=2).add(texts)
    (cache_dir / "parts").mkdir(exist_ok=True)
    shutil.move(elsewhere / "parts" / name, cache_dir / "parts" / name)


def test_readers_see_the_union_of_parts_and_the_first_copy_of_a_text_wins(tmp_path):
    d, enc = tmp_path / "c", HashEncoder()
    EmbeddingCache(d, enc, shard_size=2).add(["top 1", "top 2", "top 3"])
    planted_part(d, tmp_path, "b", ["both", "b only", "top 1"], enc)
    early = EmbeddingCache(d)
    np.testing.assert_array_equal(early.get(["both"]), stored([enc.vector("both")]))  # indexed from part b
    planted_part(d, tmp_path, "a", ["both", "a only"], ShiftedEncoder())
    cache = EmbeddingCache(d)
    texts = ["top 1", "top 2", "top 3", "both", "a only", "b only"]
    assert len(cache) == 6 and cache.parts == ["a", "b"]
    assert cache.info()["rows"] == 8 and cache.info()["parts"] == 2  # stored copies, before compaction
    # top level first, then parts by name: "both" from part a, "top 1" from the top level
    expected = [enc.vector(t) for t in texts[:4]] + [ShiftedEncoder().vector("a only"), enc.vector("b only")]
    expected[3] = ShiftedEncoder().vector("both")
    np.testing.assert_array_equal(cache.get(texts), stored(expected))
    np.testing.assert_array_equal(early.get(texts), stored(expected))  # a handle that indexed b first agrees
    keys = np.concatenate([k for k, _ in cache.iter_shards()])
    assert len(keys) == 6 and len(np.unique(keys, axis=0)) == 6  # each text once
    assert cache.verify() == []

    summary = compact(d, shard_size=4)
    assert (summary["parts_merged"], summary["duplicates_dropped"], summary["rows_after"]) == (2, 2, 6)
    after = EmbeddingCache(d)
    assert after.parts == [] and after.info()["shards"] == 2 and after.verify() == []
    np.testing.assert_array_equal(after.get(texts), stored(expected))  # the same copies as before
    np.testing.assert_array_equal(cache.get(texts), stored(expected))  # an old handle follows the new manifest
    assert not (d / "parts" / "a").exists() and sorted(p.name for p in d.glob("shard-*")) == [
        "shard-000003.h5",
        "shard-000004.h5",
    ]


def test_verify_and_repair_cover_every_part_and_a_rerun_of_the_part_recomputes(tmp_path):
    d, enc = tmp_path / "c", HashEncoder()
    EmbeddingCache(d, enc).add(["top"])
    part = EmbeddingCache(d, enc, part="rank-00001-of-00002", shard_size=2)
    part.add(["p1", "p2", "p3"])
    shard = d / "parts" / "rank-00001-of-00002" / "shard-000001.h5"
    with h5py.File(shard, "r+") as f:  # a flipped value inside the vectors
        f["vectors"][0, 0] += 1
    bad = EmbeddingCache(d).verify()
    assert [b[0] for b in bad] == ["parts/rank-00001-of-00002/shard-000001.h5"] and "checksum" in bad[0][1]
    repaired = EmbeddingCache(d).verify(repair=True)
    assert repaired[0][2] == "deleted" and not shard.exists()
    stats = EmbeddingCache(d, enc, part="rank-00001-of-00002").add(["p1", "p2", "p3"])
    assert stats["encoded"] == 2 and stats["cached"] == 1
    assert EmbeddingCache(d).verify() == [] and len(EmbeddingCache(d)) == 4


def test_a_part_never_mixes_encoders(tmp_path):
    d = tmp_path / "c"
    EmbeddingCache(d, HashEncoder()).add(["top"])
    with pytest.raises(FingerprintMismatchError):
        EmbeddingCache(d, HashEncoder(salt="other"), part="p")
    planted_part(d, tmp_path, "q", ["x"], HashEncoder(salt="other"))  # copied in by hand
    with pytest.raises(CacheDamagedError, match=r"parts/q/manifest.json.*fingerprint"):
        EmbeddingCache(d).get(["top"])
    with pytest.raises(ParameterError, match="part"):
        EmbeddingCache(d, HashEncoder(), part="../escape")


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, (0, 1, 0, None)),
        ({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}, (3, 8, 1, "rank-00003-of-00008")),
        (
            {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "10"},
            (4, 10, 0, "rank-00004-of-00010"),
        ),
        (
            {"SLURM_PROCID": "6", "SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS": "16", "SLURM_LOCALID": "2"},
            (6, 16, 2, "rank-00006-of-00016"),
        ),
        # array task 2 of 4, each running srun with 2 tasks: 8 slices
        (
            {
                "SLURM_ARRAY_TASK_ID": "2",
                "SLURM_ARRAY_TASK_COUNT": "4",
                "SLURM_PROCID": "1",
                "SLURM_STEP_NUM_TASKS": "2",
            },
            (5, 8, 0, "rank-00005-of-00008"),
        ),
        # a batch script with --ntasks 4 but no srun: one process, which must do everything
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, (0, 1, 0, None)),
        # torchrun inside a Slurm allocation: torchrun's ranks
        (
            {"RANK": "1", "WORLD_SIZE": "2", "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"},
            (1, 2, 0, "rank-00001-of-00002"),
        ),
    ],
)
def test_rank_and_world_size_come_from_each_launcher(env, expected):
    me = launcher_rank(env=env)
    assert (me.rank, me.world_size, me.local_rank, me.part) == expected


def test_flags_override_the_launcher_and_bad_ranks_are_refused():
    assert launcher_rank(2, 4, env={"RANK": "0", "WORLD_SIZE": "2"}).part == "rank-00002-of-00004"
    for rank, world, env in (
        (4, 4, {}),
        (None, 4, {}),
        (None, None, {"RANK": "2", "WORLD_SIZE": "2"}),
        (None, None, {"WORLD_SIZE": "two"}),
    ):
        with pytest.raises(ParameterError):
            launcher_rank(rank, world, env=env)


def test_slices_of_the_ranks_split_the_texts_exactly():
    keys = text_keys([f"text {i}" for i in range(10_000)])
    owners = np.stack([launcher_rank(r, 7, env={}).owns(keys) for r in range(7)])
    assert (owners.sum(axis=0) == 1).all()  # every text in exactly one slice
    assert owners.sum(axis=1).min() > 10_000 / 7 * 0.9  # and the slices about even


def _precompute(data, cache, model, env_extra):
    cmd = [
        sys.executable,
        "-m",
        "embedcache.cli",
        "precompute",
        str(data),
        "--cache",
        str(cache),
        "--model",
        str(model),
        "--text-col",
        "prompt",
        "--shard-size",
        "500",
        "--quiet",
        "--json",
    ]
    return subprocess.Popen(
        cmd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env_extra},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_ranks_at_once_and_a_killed_rank_rerun_give_every_text_once_with_single_process_vectors(
    tmp_path, tiny_bert_dir
):
    n = 30_000
    texts = [f"prompt {i} about {i % 97} things" for i in range(n)]
    data = tmp_path / "corpus.csv"
    pd.DataFrame({"prompt": texts + texts[:50]}).to_csv(data, index=False)  # repeated texts are encoded once
    cache = tmp_path / "c"
    ranks = [_precompute(data, cache, tiny_bert_dir, {"RANK": str(r), "WORLD_SIZE": "3"}) for r in range(3)]
    manifest = cache / "parts" / "rank-00002-of-00003" / "manifest.json"
    deadline = time.time() + 180
    while time.time() < deadline and ranks[2].poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 2:
            break
        time.sleep(0.005)
    assert ranks[2].poll() is None, "rank 2 finished before it could be killed"
    ranks[2].send_signal(signal.SIGKILL)
    ranks[2].wait()
    summaries = []
    for proc in ranks[:2]:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        summaries.append(json.loads(out.strip().splitlines()[-1]))
    assert [s["part"] for s in summaries] == ["rank-00000-of-00003", "rank-00001-of-00003"]
    assert all(s["unique"] == n and s["texts"] == n + 50 and s["encoded"] == s["slice"] for s in summaries)
    partial = EmbeddingCache(cache)
    assert partial.verify() == [] and 1000 <= len(partial) - sum(s["slice"] for s in summaries) < n // 3 + 1000

    rerun = _precompute(data, cache, tiny_bert_dir, {"RANK": "2", "WORLD_SIZE": "3"})
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    again = json.loads(out.strip().splitlines()[-1])
    assert again["cached"] >= 1000 and again["cached"] + again["encoded"] == again["slice"]
    assert sum(s["slice"] for s in summaries) + again["slice"] == n

    whole = EmbeddingCache(cache)
    assert len(whole) == n and whole.info()["rows"] == n and whole.verify() == []  # every text once
    sample = texts[:: n // 40]
    np.testing.assert_allclose(whole.get(sample), load_encoder(str(tiny_bert_dir)).encode(sample), atol=2e-3)


def _crash_at(step, cache_dir, queue):
    """Run a compaction that dies (as if killed) just before its ``step``-th change to the file system."""
    done = [0]

    def dying(real):
        def call(*args, **kwargs):
            done[0] += 1
            if done[0] == step:
                os._exit(17)
            return real(*args, **kwargs)

        return call

    for name in ("replace", "rename", "link", "unlink", "rmdir"):
        setattr(os, name, dying(getattr(os, name)))
    compact(cache_dir, shard_size=5)
    queue.put(done[0])


@pytest.mark.slow
def test_a_compaction_killed_at_any_step_leaves_a_whole_cache_and_a_rerun_finishes(tmp_path):
    enc = HashEncoder()
    template = tmp_path / "template"
    EmbeddingCache(template, enc, shard_size=3).add([f"top {i}" for i in range(7)])  # shards of 3, 3, 1
    for r in range(2):
        EmbeddingCache(template, enc, shard_size=2, part=f"rank-{r:05d}-of-00002").add(
            [f"rank {r} text {i}" for i in range(5)] + ["top 1"]
        )
    planted_part(template, tmp_path, "z", ["rank 0 text 1", "z text"], ShiftedEncoder())  # a duplicate, read second
    texts = [f"top {i}" for i in range(7)] + [f"rank {r} text {i}" for r in range(2) for i in range(5)] + ["z text"]
    expected = stored([enc.vector(t) if t != "z text" else ShiftedEncoder().vector(t) for t in texts])
    np.testing.assert_array_equal(EmbeddingCache(template).get(texts), expected)

    context = multiprocessing.get_context("fork")
    step, finished = 1, False
    while not finished:
        cache_dir = tmp_path / f"crash-{step}"
        shutil.copytree(template, cache_dir)
        queue = context.Queue()
        child = context.Process(target=_crash_at, args=(step, cache_dir, queue))
        child.start()
        child.join(60)
        finished = child.exitcode == 0
        assert child.exitcode in (0, 17), f"step {step}: exit {child.exitcode}"
        for attempt in ("after the crash", "after a rerun"):
            cache = EmbeddingCache(cache_dir)
            assert cache.verify() == [], f"step {step}, {attempt}"
            assert len(cache) == len(texts), f"step {step}, {attempt}"
            np.testing.assert_array_equal(cache.get(texts), expected, err_msg=f"step {step}, {attempt}")
            if attempt == "after the crash":
                compact(cache_dir, shard_size=5)
        assert EmbeddingCache(cache_dir).parts == [] and not list((cache_dir / "parts").glob("*/"))
        left = sorted(p.name for p in cache_dir.iterdir() if p.name.startswith(("shard-", ".tmp-")))
        assert len(left) == EmbeddingCache(cache_dir).info()["shards"], f"step {step}: stray files {left}"
        step += 1
    assert step > 10  # the crash really hit every step: shards, the commit, each deletion, the last manifest


def test_compact_command_leaves_a_part_a_writer_holds_for_later(tmp_path, capsys):
    from filelock import FileLock

    from embedcache.cli import main

    d, enc = tmp_path / "c", HashEncoder()
    EmbeddingCache(d, enc, part="busy").add(["b1", "b2"])
    EmbeddingCache(d, enc, part="done").add(["d1"])
    done = d / "parts" / "done" / "manifest.json"
    record = json.loads(done.read_text())
    record["unknown"] = {"mostly_unknown": 1, "examples": ["d1"]}  # as its writer would have recorded it
    done.write_text(json.dumps(record))
    EmbeddingCache(d, enc, part="done").remember("quick-key-of-done")
    with FileLock(d / "parts" / ".busy.lock"):  # its writer is still writing
        assert main(["compact", str(d), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["parts_merged"], summary["parts_busy"]) == (1, ["busy"])
    assert EmbeddingCache(d).parts == ["busy"] and len(EmbeddingCache(d)) == 3
    merged = EmbeddingCache(d)  # what the merged part recorded is kept in the top level
    assert merged.unknown_report()["mostly_unknown"] == 1 and merged.knows("quick-key-of-done")
    assert main(["compact", str(d), "--quiet"]) == 0
    assert "merged 1 parts" in capsys.readouterr().out and EmbeddingCache(d).parts == []
