"""No silent wrong results and no tracebacks (issue 22, items 9-11): each of these passed silently or crashed before."""

import json
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from helpers import HashEncoder, one_line_error
from helpers import run as run_command

from embedcache import EmbeddingCache, InputError, read_table
from embedcache.cli import main as embedcache_main
from heads.cli import main as heads_main

TEXTS = [f"text number {i}" for i in range(30)]


@pytest.fixture
def work(tmp_path):
    EmbeddingCache(tmp_path / "c", HashEncoder(), shard_size=10).add(TEXTS)
    pd.DataFrame({"text": TEXTS, "score": np.linspace(0, 1, 30)}).to_csv(tmp_path / "train.csv", index=False)
    assert (
        heads_main(
            [
                "train",
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "train.csv"),
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    return tmp_path


@pytest.mark.parametrize("body, line", [("1,a,extra,fields\n2,b\n", 2), ("1,a\n2,b,extra\n", 3)])
def test_a_csv_row_with_more_fields_than_the_header_is_an_error_naming_the_line(tmp_path, body, line):
    (tmp_path / "x.csv").write_text("id,prompt\n" + body)
    with pytest.raises(InputError, match=f"line {line}") as e:
        read_table(tmp_path / "x.csv")
    assert "\n" not in str(e.value)
    (tmp_path / "ok.csv").write_text('id,prompt\n1,"a, with a comma"\n')
    assert read_table(tmp_path / "ok.csv").prompt.tolist() == ["a, with a comma"]


def test_json_booleans_are_not_labels(work, capsys):
    rows = [{"text": t, "score": i % 2 == 0} for i, t in enumerate(TEXTS)]
    (work / "bool.json").write_text(json.dumps(rows))
    code, _, err = run_command(
        heads_main,
        capsys,
        "train",
        "--cache",
        work / "c",
        "--data",
        work / "bool.json",
        "--label-col",
        "score",
        "--head",
        "ridge",
        "--out",
        work / "m2",
        "--quiet",
    )
    one_line_error(code, err, "row 1", "boolean")


def test_labels_too_large_to_average_are_named(work, capsys):
    pd.DataFrame({"text": TEXTS, "score": [1e308, -1e308] * 15}).to_csv(work / "huge.csv", index=False)
    code, _, err = run_command(
        heads_main,
        capsys,
        "train",
        "--cache",
        work / "c",
        "--data",
        work / "huge.csv",
        "--label-col",
        "score",
        "--head",
        "ridge",
        "--out",
        work / "m2",
        "--quiet",
    )
    one_line_error(code, err, "too large")
    assert "constant" not in err


@pytest.mark.parametrize("flag", ["--pair-col", "--condition-col"])
def test_a_column_the_model_does_not_read_is_refused(work, capsys, flag):
    code, _, err = run_command(
        heads_main,
        capsys,
        "predict",
        "--model",
        work / "m",
        "--cache",
        work / "c",
        "--data",
        work / "train.csv",
        flag,
        "score",
        "--out",
        work / "p.csv",
        "--quiet",
    )
    one_line_error(code, err, "reads text only", flag)
    assert not (work / "p.csv").exists()


def test_rebuild_lists_copies_of_one_shard_once(work, capsys):
    c = work / "c"
    for n in (7, 8):
        shutil.copy(c / "shard-000001.h5", c / f"shard-00000{n}.h5")
    (c / "manifest.json").unlink()
    code, out, err = run_command(embedcache_main, capsys, "verify", c, "--rebuild")
    assert code == 0, err
    assert "3 shards, 30 vectors" in out and "a copy of shard-000001.h5" in out
    assert EmbeddingCache(c).info()["rows"] == 30 and (c / "shard-000007.h5").exists()


def test_rebuild_of_a_part_says_which_manifests_it_rebuilt(work, capsys):
    c = work / "c"
    EmbeddingCache(c, HashEncoder(), shard_size=5, part="rank-1").add([f"part text {i}" for i in range(10)])
    (c / "parts" / "rank-1" / "manifest.json").write_text("{ damaged")
    code, out, err = run_command(embedcache_main, capsys, "verify", c, "--rebuild")
    assert code == 0, err
    assert "parts rank-1" in out and "5 shards, 40 vectors" in out


def test_a_giant_word_is_counted_as_mostly_unknown(tmp_path, capsys, tiny_bert_dir):
    (tmp_path / "in.csv").write_text("text\n" + "a" * 100_000 + "\nshort words\n")
    code, out, err = run_command(
        embedcache_main,
        capsys,
        "precompute",
        tmp_path / "in.csv",
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--text-col",
        "text",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["mostly_unknown"] == 1 and "mostly tokens" in err


def test_import_of_a_missing_module_is_one_line(work, capsys):
    code, _, err = run_command(
        heads_main,
        capsys,
        "train",
        "--cache",
        work / "c",
        "--data",
        work / "train.csv",
        "--label-col",
        "score",
        "--out",
        work / "m3",
        "--import",
        "nosuchmodule_xyz",
        "--quiet",
    )
    one_line_error(code, err, "--import nosuchmodule_xyz")


def test_precompute_no_wait_fails_at_once_while_another_writer_holds_the_cache(work, capsys, tiny_bert_dir):
    (work / "in.csv").write_text("text\nfirst text\n")
    args = [
        "precompute",
        work / "in.csv",
        "--cache",
        work / "tb",
        "--text-col",
        "text",
        "--model",
        tiny_bert_dir,
        "--quiet",
    ]
    assert run_command(embedcache_main, capsys, *args)[0] == 0
    (work / "in.csv").write_text("text\na new text\n")
    with FileLock(work / "tb" / ".lock"):
        started = time.monotonic()
        code, _, err = run_command(embedcache_main, capsys, *args, "--no-wait")
    assert time.monotonic() - started < 30
    one_line_error(code, err, "being written")
