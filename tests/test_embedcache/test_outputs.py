"""Outputs never destroy inputs, with or without --overwrite (issue 22, item 2)."""

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import HashEncoder, one_line_error
from helpers import run as run_command

from embedcache import EmbeddingCache, WriteError
from embedcache.cli import main as embedcache_main
from embedcache.toolkit import check_output
from heads.cli import main

N = 60
TRAIN = pd.DataFrame({"text": [f"sentence {i}" for i in range(N)], "score": np.linspace(0, 1, N).round(3)})


def snapshot(directory: Path) -> dict:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def work(tmp_path):
    """A cache, a data folder with train.csv and a ridge model trained from them."""
    EmbeddingCache(tmp_path / "c", HashEncoder(dim=8)).add(TRAIN.text.tolist())
    (tmp_path / "d").mkdir()
    TRAIN.to_csv(tmp_path / "d" / "train.csv", index=False)
    assert (
        main(
            [
                "train",
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "d" / "train.csv"),
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


def refused(capsys, work, args, *words):
    before = {name: snapshot(work / name) for name in ("c", "d", "m")}
    code, _, err = run_command(main if args[0] != "precompute" else embedcache_main, capsys, *args)
    one_line_error(code, err, *words)
    assert {name: snapshot(work / name) for name in ("c", "d", "m")} == before


@pytest.mark.parametrize(
    "out, how",
    [
        ("c", "is the input --cache"),
        ("d", "contains the input --data"),
        ("c/sub", "lies inside the input --cache"),
    ],
)
def test_train_never_writes_its_model_over_an_input(work, capsys, out, how):
    refused(
        capsys,
        work,
        [
            "train",
            "--cache",
            work / "c",
            "--data",
            work / "d" / "train.csv",
            "--label-col",
            "score",
            "--head",
            "ridge",
            "--out",
            work / out,
            "--overwrite",
            "--quiet",
        ],
        how,
    )


@pytest.mark.parametrize(
    "out, how",
    [
        ("m/config.json", "lies inside the input --model"),
        ("c/manifest.json", "lies inside the input --cache"),
        ("d/train.csv", "is the input --data"),
    ],
)
def test_predict_never_writes_over_an_input(work, capsys, out, how):
    refused(
        capsys,
        work,
        [
            "predict",
            "--model",
            work / "m",
            "--cache",
            work / "c",
            "--data",
            work / "d" / "train.csv",
            "--out",
            work / out,
            "--overwrite",
            "--quiet",
        ],
        how,
    )


def test_a_link_to_an_input_is_the_input(work, capsys):
    (work / "alias").symlink_to(work / "c")
    refused(
        capsys,
        work,
        [
            "train",
            "--cache",
            work / "c",
            "--data",
            work / "d" / "train.csv",
            "--label-col",
            "score",
            "--head",
            "ridge",
            "--out",
            work / "alias",
            "--overwrite",
            "--quiet",
        ],
        "is the input --cache",
    )


def test_an_existing_directory_that_is_not_a_model_is_never_replaced(work, capsys):
    (work / "notes").mkdir()
    (work / "notes" / "keep.txt").write_text("mine")
    code, _, err = run_command(
        main,
        capsys,
        "train",
        "--cache",
        work / "c",
        "--data",
        work / "d" / "train.csv",
        "--label-col",
        "score",
        "--head",
        "ridge",
        "--out",
        work / "notes",
        "--overwrite",
        "--quiet",
    )
    one_line_error(code, err, "not a model directory")
    assert (work / "notes" / "keep.txt").read_text() == "mine"
    code, _, err = run_command(
        main,
        capsys,
        "predict",
        "--model",
        work / "m",
        "--cache",
        work / "c",
        "--data",
        work / "d" / "train.csv",
        "--out",
        work / "notes",
        "--overwrite",
        "--quiet",
    )
    one_line_error(code, err, "is a directory")


@pytest.mark.parametrize("cache", ["/", "/etc", "~"])
def test_precompute_refuses_a_system_directory_as_cache(work, capsys, cache):
    cache = str(Path(cache).expanduser())
    code, _, err = run_command(
        embedcache_main, capsys, "precompute", work / "d" / "train.csv", "--cache", cache, "--text-col", "text"
    )
    one_line_error(code, err, "system directory")
    assert not Path(cache, "manifest.json").exists()


def test_precompute_refuses_a_directory_that_is_not_a_cache_or_holds_its_input(work, capsys):
    before = snapshot(work / "d")
    code, _, err = run_command(
        embedcache_main, capsys, "precompute", work / "d" / "train.csv", "--cache", work / "d", "--text-col", "text"
    )
    one_line_error(code, err, "contains the input")
    shutil.copy(work / "d" / "train.csv", work / "other.csv")
    code, _, err = run_command(
        embedcache_main, capsys, "precompute", work / "other.csv", "--cache", work / "d", "--text-col", "text"
    )
    one_line_error(code, err, "not an embedcache cache")
    assert snapshot(work / "d") == before


def test_finetune_resume_and_export_never_replace_what_is_not_theirs(work, capsys, tiny_bert_dir):
    before = snapshot(work / "c")
    code, _, err = run_command(
        main,
        capsys,
        "finetune",
        "--data",
        work / "d" / "train.csv",
        "--label-col",
        "score",
        "--model",
        tiny_bert_dir,
        "--out",
        work / "c",
        "--resume",
        "--quiet",
    )
    one_line_error(code, err, "neither a model nor checkpoints")
    assert snapshot(work / "c") == before
    code, _, err = run_command(
        main,
        capsys,
        "finetune",
        "--data",
        work / "d" / "train.csv",
        "--label-col",
        "score",
        "--model",
        tiny_bert_dir,
        "--out",
        work / "new",
        "--export-encoder",
        work / "new",
        "--quiet",
    )
    one_line_error(code, err, "--export-encoder", "is the input --out")
    code, _, err = run_command(
        main,
        capsys,
        "finetune",
        "--data",
        work / "d" / "train.csv",
        "--label-col",
        "score",
        "--model",
        tiny_bert_dir,
        "--out",
        work / "m",
        "--export-encoder",
        work / "d",
        "--overwrite",
        "--quiet",
    )
    one_line_error(code, err, "--export-encoder")
    assert (work / "d" / "train.csv").exists()


def test_evaluate_plots_refuse_to_replace_pngs_and_write_into_a_read_only_folder(work, capsys):
    args = [
        "evaluate",
        "--model",
        work / "m",
        "--cache",
        work / "c",
        "--data",
        work / "d" / "train.csv",
        "--quiet",
        "--plots",
        work / "plots",
    ]
    code, _, err = run_command(main, capsys, *args)
    assert code == 0, err
    stamp = snapshot(work / "plots")
    code, _, err = run_command(main, capsys, *args)
    one_line_error(code, err, "--overwrite")
    assert snapshot(work / "plots") == stamp
    code, _, err = run_command(main, capsys, *args, "--overwrite")
    assert code == 0, err
    (work / "plots.png").write_text("x")
    code, _, err = run_command(main, capsys, *args[:-1], work / "plots.png")
    one_line_error(code, err, "is a file")


def test_the_python_api_uses_the_same_check(work):
    with pytest.raises(WriteError, match="lies inside the input"):
        check_output(work / "c" / "x.csv", [("cache", work / "c")], overwrite=True)
    with pytest.raises(WriteError, match="contains the input"):
        check_output(work, [("data", work / "d" / "train.csv")], overwrite=True)
