"""Faults and hostile input against the cache: confined paths, recovery instead of deletion, one clear error each.

Every case either works or ends in one line on stderr, exit status 1, no
traceback, and no file outside the cache touched, no intact shard lost.
"""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, HashEncoder, mount_tmpfs, one_line_error
from helpers import run as run_command

from embedcache import (
    CacheDamagedError,
    CacheError,
    EmbeddingCache,
    ParameterError,
    load_encoder,
)
from embedcache.cli import main

TEXTS = [f"text number {i}" for i in range(30)]


def run(capsys, *args):
    return run_command(main, capsys, *args)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict:
    return {p.name: digest(p) for p in sorted(directory.iterdir()) if p.is_file() and p.name.startswith("shard-")}


@pytest.fixture
def cache_dir(tmp_path):
    """A cache of 30 texts in 3 shards, built by a hash encoder."""
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(), shard_size=10)
    cache.add(TEXTS)
    return tmp_path / "c"


def edit_manifest(cache_dir, change):
    path = cache_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    changed = change(manifest)
    manifest = changed if isinstance(changed, list) else manifest  # a change may return a whole new document
    path.write_text(json.dumps(manifest))


# -- 1. paths are confined ---------------------------------------------------------


@pytest.mark.parametrize("name", ["../outside/victim.txt", "ABSOLUTE", "shard-000001.h5/../../outside/victim.txt"])
def test_a_manifest_naming_a_file_outside_the_cache_is_refused_before_anything_is_read_or_deleted(
    cache_dir, capsys, name
):
    victim = cache_dir.parent / "outside" / "victim.txt"
    victim.parent.mkdir()
    victim.write_text("precious")
    name = str(victim) if name == "ABSOLUTE" else name

    def point_out(m):
        m["shards"][0]["file"] = name

    edit_manifest(cache_dir, point_out)
    for args in (["verify", cache_dir], ["verify", cache_dir, "--repair"], ["info", cache_dir]):
        code, _, err = run(capsys, *args)
        one_line_error(code, err, "shards[0].file", "cache directory")
    with pytest.raises(CacheDamagedError, match="shards\\[0\\].file"):
        EmbeddingCache(cache_dir).get(TEXTS[:1])
    assert victim.read_text() == "precious"


def test_a_shard_that_is_a_link_out_of_the_cache_is_never_read_nor_its_target_deleted(cache_dir, capsys):
    outside = cache_dir.parent / "outside.h5"
    shard = cache_dir / "shard-000001.h5"
    outside.write_bytes(shard.read_bytes())  # a whole shard with the right checksum, outside the cache
    shard.unlink()
    shard.symlink_to(outside)
    with pytest.raises(CacheDamagedError, match="not a plain file"):
        EmbeddingCache(cache_dir).get(TEXTS[:1])
    code, out, _ = run(capsys, "verify", cache_dir, "--repair")
    assert code == 1 and "not a plain file" in out and "file kept" in out
    assert outside.exists() and shard.is_symlink()  # neither the target nor the link was deleted
    assert len(EmbeddingCache(cache_dir)) == 20


# -- 2. recovery, not deletion -------------------------------------------------------


@pytest.mark.parametrize("field,value", [("dim", "384"), ("dtype", "float64"), ("fingerprint", 7), ("format", None)])
def test_a_damaged_manifest_header_names_the_field_keeps_every_shard_and_rebuild_restores_it(
    cache_dir, capsys, field, value
):
    before = snapshot(cache_dir)
    vectors = EmbeddingCache(cache_dir).get(TEXTS)

    def damage(m):
        m[field] = value

    edit_manifest(cache_dir, damage)
    for args in (["verify", cache_dir], ["verify", cache_dir, "--repair"]):
        code, _, err = run(capsys, *args)
        one_line_error(code, err, f"field {field!r}", "--rebuild")
    assert snapshot(cache_dir) == before
    code, out, _ = run(capsys, "verify", cache_dir, "--rebuild")
    assert code == 0 and "3 shards, 30 vectors" in out and "nothing was deleted" in out
    np.testing.assert_array_equal(EmbeddingCache(cache_dir).get(TEXTS), vectors)
    assert run(capsys, "verify", cache_dir)[0] == 0
    assert EmbeddingCache(cache_dir, HashEncoder()).add(TEXTS)["encoded"] == 0  # the same encoder still owns it


def test_a_wrong_but_wellformed_fingerprint_makes_repair_refuse_instead_of_dropping_every_shard(cache_dir, capsys):
    before = snapshot(cache_dir)
    edit_manifest(cache_dir, lambda m: m.update(fingerprint="0" * 32))
    code, out, _ = run(capsys, "verify", cache_dir)
    assert code == 1 and out.count("BAD") == 3
    code, _, err = run(capsys, "verify", cache_dir, "--repair")
    one_line_error(code, err, "every shard disagrees", "--rebuild")
    assert snapshot(cache_dir) == before
    assert run(capsys, "verify", cache_dir, "--rebuild")[0] == 0
    assert EmbeddingCache(cache_dir).fingerprint == HashEncoder().fingerprint


def test_a_lost_manifest_is_never_taken_for_an_empty_cache_and_rebuild_brings_every_vector_back(cache_dir, capsys):
    before, vectors = snapshot(cache_dir), EmbeddingCache(cache_dir).get(TEXTS)
    (cache_dir / "manifest.json").unlink()
    with pytest.raises(CacheDamagedError, match="--rebuild"):
        EmbeddingCache(cache_dir, HashEncoder())  # a writer does not start afresh over the shards
    code, _, err = run(capsys, "info", cache_dir)
    one_line_error(code, err, "no manifest.json", "--rebuild")
    assert snapshot(cache_dir) == before
    assert run(capsys, "verify", cache_dir, "--rebuild")[0] == 0
    cache = EmbeddingCache(cache_dir, HashEncoder())
    np.testing.assert_array_equal(cache.get(TEXTS), vectors)
    assert cache.encoder_name == "hash" and cache.add(TEXTS)["encoded"] == 0


def test_rebuild_lists_only_whole_shards_of_one_encoder_and_deletes_nothing(cache_dir, capsys):
    foreign = EmbeddingCache(cache_dir.parent / "f", HashEncoder(salt="x"))
    foreign.add(["other"])
    (cache_dir.parent / "f" / "shard-000001.h5").rename(cache_dir / "shard-000007.h5")
    (cache_dir / "shard-000008.h5").write_bytes(b"\x89HDF\r\n garbage")
    (cache_dir / "manifest.json").write_text("{ not json")
    code, out, _ = run(capsys, "verify", cache_dir, "--rebuild")
    assert code == 0 and "3 shards, 30 vectors" in out
    assert "shard-000007.h5: whole, but of fingerprint" in out and "shard-000008.h5: cannot be read" in out
    assert (cache_dir / "shard-000007.h5").exists() and (cache_dir / "shard-000008.h5").exists()


def test_repair_deletes_a_damaged_shard_but_keeps_a_whole_one_the_manifest_disagrees_with(cache_dir, capsys):
    shard1, shard2 = cache_dir / "shard-000001.h5", cache_dir / "shard-000002.h5"
    with h5py.File(shard2, "r") as f:
        offset = f["vectors"].id.get_offset()
    raw = bytearray(shard2.read_bytes())
    raw[offset : offset + 4] = b"\x00\xff\x00\xff"  # bit rot inside shard 2
    shard2.write_bytes(bytes(raw))
    edit_manifest(cache_dir, lambda m: m["shards"][0].update(rows=9))  # the manifest is wrong about shard 1
    code, out, _ = run(capsys, "verify", cache_dir, "--repair")
    assert code == 1
    assert "shard-000002.h5: checksum mismatch" in out and "(deleted)" in out
    assert "shard-000001.h5: holds 10 rows, the manifest says 9" in out and "file kept" in out
    assert shard1.exists() and not shard2.exists()
    # the next writer adopts the whole shard again and recomputes only what was lost
    assert EmbeddingCache(cache_dir, HashEncoder()).add(TEXTS)["encoded"] == 10
    assert run(capsys, "verify", cache_dir)[0] == 0


# -- 3. the manifest's schema: duplicates, foreign shards, malformed fields -------------


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda m: m["shards"].append(dict(m["shards"][0])), "listed twice"),
        (lambda m: m["shards"][0].update(fingerprint="0" * 32), "exactly 'file', 'rows' and 'sha256'"),
        (lambda m: m.update(shards="abc"), "field 'shards' must be a list"),
        (lambda m: m.update(shards=None), "field 'shards' must be a list"),
        (lambda m: m["shards"][0].update(rows="100"), "shards[0].rows must be a whole number"),
        (lambda m: m["shards"][1].update(sha256="xyz"), "shards[1].sha256 must be 64 hex digits"),
        (lambda m: m.pop("dim"), "field 'dim' is missing"),
        (lambda m: [m], "expected a JSON object, found list"),
        (lambda m: m.update(unknown={"mostly_unknown": "3"}), "field 'unknown' must be an object"),
        (lambda m: m["encoder"].update(quick_keys="abc"), "'quick_keys' is a list of strings"),
        (lambda m: m.update(part=7), "field 'part' must be an object"),
    ],
)
def test_a_malformed_manifest_is_one_line_naming_the_field(cache_dir, capsys, change, words):
    before = snapshot(cache_dir)
    edit_manifest(cache_dir, change)
    for args in (["info", cache_dir], ["verify", cache_dir, "--repair"]):
        code, _, err = run(capsys, *args)
        one_line_error(code, err, words)
    assert snapshot(cache_dir) == before


def test_a_field_a_newer_version_wrote_survives_every_rewrite_of_the_manifest(cache_dir):
    edit_manifest(cache_dir, lambda m: m.update(zones={"kept": [1, 2]}))
    cache = EmbeddingCache(cache_dir, HashEncoder(), shard_size=10)
    cache.add([f"new text {i}" for i in range(25)])  # three shards, each a rewrite of the manifest
    cache.remember("quick-1")
    manifest = json.loads((cache_dir / "manifest.json").read_text())
    assert manifest["zones"] == {"kept": [1, 2]}
    assert manifest["encoder"]["quick_keys"] == ["quick-1"] and len(manifest["shards"]) == 6


def test_a_foreign_shard_under_a_listed_name_is_refused_on_read_and_by_verify(cache_dir, capsys):
    other = EmbeddingCache(cache_dir.parent / "f", HashEncoder(salt="x"), shard_size=10)
    other.add([f"other {i}" for i in range(10)])
    foreign = cache_dir.parent / "f" / "shard-000001.h5"
    (cache_dir / "shard-000001.h5").write_bytes(foreign.read_bytes())
    edit_manifest(
        cache_dir,
        lambda m: m["shards"][0].update(
            sha256=json.loads((cache_dir.parent / "f" / "manifest.json").read_text())["shards"][0]["sha256"]
        ),
    )
    with pytest.raises(CacheDamagedError, match="fingerprint"):
        EmbeddingCache(cache_dir).get(TEXTS)
    code, out, _ = run(capsys, "verify", cache_dir)
    assert code == 1 and "shard-000001.h5: fingerprint" in out


def test_a_shard_with_one_dimensional_vectors_is_a_clear_error(cache_dir, capsys):
    shard = cache_dir / "shard-000001.h5"
    with h5py.File(shard, "r+") as f:
        del f["vectors"]
        f["vectors"] = np.zeros(10, dtype=np.float16)
    with pytest.raises(CacheDamagedError, match=r"shape \(10,\), expected \(rows, dim\)"):
        EmbeddingCache(cache_dir).get(TEXTS)
    code, out, _ = run(capsys, "verify", cache_dir)
    assert code == 1 and "expected (rows, dim)" in out


# -- the lock, read-only caches, a cache path that is a file ----------------------------


def test_a_lock_that_is_a_directory_or_a_link_loop_is_one_clear_error(cache_dir):
    lock = cache_dir / ".lock"
    lock.unlink(missing_ok=True)
    lock.mkdir()
    with pytest.raises(CacheError, match="cannot take the write lock"):
        EmbeddingCache(cache_dir, HashEncoder()).add(["new"])
    lock.rmdir()
    lock.symlink_to(lock)
    with pytest.raises(CacheError, match="cannot take the write lock"):
        EmbeddingCache(cache_dir, HashEncoder()).add(["new"])
    assert EmbeddingCache(cache_dir).get(TEXTS).shape == (30, 8)  # reading needs no lock


def test_a_cache_path_that_is_a_file_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "c").write_text("")
    with pytest.raises(CacheError, match="is a file"):
        EmbeddingCache(tmp_path / "c", HashEncoder())
    code, _, err = run(capsys, "info", tmp_path / "c")
    one_line_error(code, err, "is a file")


# -- small file systems: full and read-only (mounted where the machine allows) -----------


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of the size asked for; skip where this process may not mount (not root, no capability)."""
    mounted = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        mount_tmpfs(where, f"size={size}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


FILL = """
import sys
sys.path.insert(0, {tests!r})
from helpers import HashEncoder, mount_tmpfs, one_line_error
from helpers import run as run_command
from embedcache import EmbeddingCache, EmbedcacheError
try:
    cache = EmbeddingCache({path!r}, HashEncoder(dim=64), shard_size=200)
    for i in range(200):
        cache.add([f"text {{i}} {{j}}" for j in range(200)])
except EmbedcacheError as e:
    print("ERROR", e)
"""


@pytest.mark.parametrize("size", ["8k", "300k"])
def test_a_full_disk_is_one_clear_error_never_a_crash_and_the_cache_stays_whole(tmpfs, size):
    where = tmpfs(size)
    done = subprocess.run(
        [sys.executable, "-c", FILL.format(tests=str(ROOT / "tests"), path=str(where / "c"))],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr  # 139 was a segfault inside h5py
    assert done.stdout.startswith("ERROR no space left on device writing"), done.stdout + done.stderr
    assert not [p for p in (where / "c").iterdir() if p.name.startswith(".tmp-")]
    if (where / "c" / "manifest.json").exists():
        cache = EmbeddingCache(where / "c")
        assert cache.verify() == [] and len(cache) % 200 == 0


def test_a_read_only_cache_reads_and_a_write_says_it_is_read_only(tmpfs, capsys, tiny_bert_dir, tmp_path):
    where = tmpfs("4m")
    data = tmp_path / "rows.csv"
    pd.DataFrame({"text": TEXTS}).to_csv(data, index=False)
    args = ["precompute", data, "--cache", where / "c", "--model", tiny_bert_dir, "--text-col", "text", "--quiet"]
    assert run(capsys, *args)[0] == 0
    subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
    assert run(capsys, *args)[0] == 0  # nothing to encode: no write, no lock
    assert EmbeddingCache(where / "c").get(TEXTS).shape == (30, 32)
    pd.DataFrame({"text": TEXTS + ["a new text"]}).to_csv(data, index=False)
    code, _, err = run(capsys, *args)
    one_line_error(code, err, "read-only")


# -- arguments and encoders ---------------------------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "-1"),
        ("--batch-size", "0"),
        ("--max-length", "0"),
        ("--max-length", "-3"),
        ("--shard-size", "0"),
    ],
)
def test_precompute_refuses_a_count_below_one_before_creating_anything(tmp_path, capsys, flag, value):
    (tmp_path / "rows.csv").write_text("text\na\n")
    with pytest.raises(SystemExit) as e:
        main(["precompute", str(tmp_path / "rows.csv"), "--cache", str(tmp_path / "c"), flag, value])
    assert e.value.code == 2 and f"argument {flag}: must be >= 1, got {value}" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_the_python_api_refuses_the_same_values(tiny_bert_dir, tmp_path):
    with pytest.raises(ParameterError, match="max_length must be >= 1, got -3"):
        load_encoder(str(tiny_bert_dir), max_length=-3)
    with pytest.raises(ParameterError, match="batch_size must be >= 1"):
        load_encoder(str(tiny_bert_dir), batch_size=-1)
    with pytest.raises(ParameterError, match="beyond what model"):
        load_encoder(str(tiny_bert_dir), max_length=100_000)
    with pytest.raises(ParameterError, match="shard_size"):
        EmbeddingCache(tmp_path / "c", HashEncoder(), shard_size=0)
    assert not (tmp_path / "c").exists()


def test_a_hub_id_offline_fails_in_seconds_naming_the_offline_encoders(tmp_path, capsys, monkeypatch):
    (tmp_path / "rows.csv").write_text("text\na\n")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = run(
        capsys,
        "precompute",
        tmp_path / "rows.csv",
        "--cache",
        tmp_path / "c",
        "--model",
        "sentence-transformers/not-downloaded-here",
        "--text-col",
        "text",
    )
    one_line_error(code, err, "not a local directory nor in the Hugging Face cache", "minilm")
    code, _, err = run(
        capsys,
        "precompute",
        tmp_path / "rows.csv",
        "--cache",
        tmp_path / "c",
        "--model",
        "/nonexistent/dir",
        "--text-col",
        "text",
    )
    one_line_error(code, err, "/nonexistent/dir: no such directory")
    assert not (tmp_path / "c").exists()


def test_cuda_without_a_gpu_is_one_clear_error(tmp_path, capsys, tiny_bert_dir):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    (tmp_path / "rows.csv").write_text("text\na\n")
    code, _, err = run(
        capsys,
        "precompute",
        tmp_path / "rows.csv",
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--device",
        "cuda",
        "--text-col",
        "text",
        "--quiet",
    )
    one_line_error(code, err, "no CUDA GPU is visible")


def test_debug_shows_the_traceback(cache_dir, capsys, monkeypatch):
    (cache_dir / "manifest.json").write_text("[]")
    with pytest.raises(CacheDamagedError):
        main(["--debug", "info", str(cache_dir)])
    monkeypatch.setenv("EMBEDCACHE_DEBUG", "1")
    with pytest.raises(CacheDamagedError):
        main(["info", str(cache_dir)])
    monkeypatch.delenv("EMBEDCACHE_DEBUG")
    assert main(["info", str(cache_dir)]) == 1
