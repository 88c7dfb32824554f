"""Faults and hostile input against the heads commands: no silent no-ops, whole model directories, no silent
overwrite, and one clear line (no traceback) for every failure."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import FileLock
from helpers import HashEncoder, mount_tmpfs, one_line_error
from helpers import run as run_command

from embedcache import EmbeddingCache, ParameterError
from heads.cli import main
from heads.model import HeadModel, ModelError

N = 120
TRAIN = pd.DataFrame(
    {
        "text": [f"sentence {i}" for i in range(N)],
        "other": [f"other {i}" for i in range(N)],
        "score": np.linspace(0, 10, N).round(2),
    }
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A hash-encoder cache of the training texts, the training CSV and a ridge model trained on it."""
    tmp = tmp_path_factory.mktemp("faults")
    cache = EmbeddingCache(tmp / "c", HashEncoder(dim=16))
    cache.add(TRAIN.text.tolist() + TRAIN.other.tolist())
    TRAIN.to_csv(tmp / "train.csv", index=False)
    assert (
        main(
            [
                "train",
                "--cache",
                str(tmp / "c"),
                "--data",
                str(tmp / "train.csv"),
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(tmp / "model"),
                "--quiet",
            ]
        )
        == 0
    )
    return tmp


def run(capsys, *args):
    return run_command(main, capsys, *args)


def usage_error(capsys, args, words):
    """argparse refuses the flag's value: exit status 2, the flag named."""
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err, err


def tree(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


# -- 3. values that used to be silent no-ops -----------------------------------------------


@pytest.mark.parametrize(
    "flag,value,words",
    [
        ("--epochs", "0", "argument --epochs: must be >= 1, got 0"),
        ("--epochs", "-3", "argument --epochs: must be >= 1, got -3"),
        ("--batch-size", "-1", "argument --batch-size: must be >= 1, got -1"),
        ("--width", "0", "argument --width: must be >= 1, got 0"),
        ("--dropout", "1", "argument --dropout: must be a finite number >= 0 and < 1"),
        ("--val-fraction", "0", "argument --val-fraction: must be a finite number > 0 and < 1"),
        ("--lr", "nan", "argument --lr: must be a finite number > 0"),
    ],
)
def test_train_refuses_values_that_would_save_an_untrained_or_constant_model(
    setup, capsys, tmp_path, flag, value, words
):
    usage_error(
        capsys,
        [
            "train",
            "--cache",
            setup / "c",
            "--data",
            setup / "train.csv",
            "--label-col",
            "score",
            "--out",
            tmp_path / "m",
            flag,
            value,
        ],
        words,
    )
    assert not (tmp_path / "m").exists()


def test_the_python_api_refuses_the_same_values_before_encoding_anything(setup, tmp_path):
    encoder = HashEncoder(dim=16)
    cache = EmbeddingCache(tmp_path / "c", encoder)
    for params, words in (
        ({"epochs": 0}, "epochs must be >= 1, got 0"),
        ({"width": 0}, "width must be >= 1"),
        ({"batch_size": -1}, "batch_size must be >= 1"),
        ({"label_range": (1, 0)}, "label_range must be two finite numbers with lo < hi"),
    ):
        with pytest.raises(ParameterError, match=words.replace("(", r"\(")):
            HeadModel(**params).fit(TRAIN, "score", cache=cache, progress=False)
    assert encoder.calls == [] and len(cache) == 0


def test_a_label_range_that_is_backwards_or_misses_the_labels_is_an_error_naming_how_many(setup, capsys, tmp_path):
    base = [
        "train",
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--label-col",
        "score",
        "--out",
        tmp_path / "m",
    ]
    code, _, err = run(capsys, *base, "--label-range", "1", "0")
    one_line_error(code, err, "label_range must be two finite numbers with lo < hi, got (1, 0)")
    code, _, err = run(capsys, *base, "--label-range", "0", "1")  # labels on 0-10
    one_line_error(
        code, err, f"{setup / 'train.csv'}: 108 labels lie outside label_range [0, 1]", "row 13, column 'score': 1.01"
    )
    code, _, err = run(
        capsys,
        "pseudolabel",
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--labeled",
        setup / "train.csv",
        "--label-col",
        "score",
        "--method",
        "knn",
        "--label-range",
        "1",
        "0",
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, "lo < hi")
    assert not (tmp_path / "m").exists() and not (tmp_path / "p.csv").exists()


@pytest.mark.parametrize(
    "args,words",
    [
        (["predict", "--round", "-1"], "argument --round: must be >= 0, got -1"),
        (["leakage", "--threshold", "2"], "argument --threshold: must be a finite number >= -1 and <= 1, got 2.0"),
        (["leakage", "--threshold", "nan"], "argument --threshold: must be a finite number"),
        (["pseudolabel", "--k", "0"], "argument --k: must be >= 1, got 0"),
        (["pseudolabel", "--committee", "1"], "argument --committee: must be >= 2, got 1"),
        (["finetune", "--max-length", "0"], "argument --max-length: must be >= 1, got 0"),
        (["finetune", "--grad-accum", "0"], "argument --grad-accum: must be >= 1, got 0"),
    ],
)
def test_other_commands_refuse_out_of_range_flags(capsys, args, words):
    required = {
        "predict": ["--model", "m", "--data", "d.csv", "--out", "o.csv"],
        "leakage": ["--cache", "c", "--train", "a.csv", "--test", "b.csv"],
        "pseudolabel": ["--cache", "c", "--data", "d.csv", "--out", "o.csv"],
        "finetune": ["--data", "d.csv", "--label-col", "y", "--out", "m"],
    }[args[0]]
    usage_error(capsys, [args[0], *required, *args[1:]], words)


# -- 4. model directories are whole or absent ------------------------------------------------

KILL_WHILE_SAVING = """
import json, os, signal, sys
import heads.model_files

real = json.dumps
def dumps(obj, *a, **k):  # the config is written after the weights: die in between
    if isinstance(obj, dict) and "weights_sha256" in obj:
        os.kill(os.getpid(), signal.SIGKILL)
    return real(obj, *a, **k)
heads.model_files.json.dumps = dumps
from heads.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_train_killed_while_saving_over_a_model_leaves_the_old_model_whole(setup, tmp_path):
    model = tmp_path / "model"
    assert (
        main(
            [
                "train",
                "--cache",
                str(setup / "c"),
                "--data",
                str(setup / "train.csv"),
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(model),
                "--quiet",
            ]
        )
        == 0
    )
    before, preds = tree(model), HeadModel.load(model).predict(TRAIN, cache=EmbeddingCache(setup / "c"))
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            KILL_WHILE_SAVING,
            "train",
            "--cache",
            str(setup / "c"),
            "--data",
            str(setup / "train.csv"),
            "--label-col",
            "score",
            "--head",
            "concat",
            "--epochs",
            "2",
            "--out",
            str(model),
            "--overwrite",
            "--quiet",
        ],
        check=False,
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    assert tree(model) == before  # the old model, untouched
    np.testing.assert_array_equal(HeadModel.load(model).predict(TRAIN, cache=EmbeddingCache(setup / "c")), preds)
    assert (
        main(
            [
                "train",
                "--cache",
                str(setup / "c"),
                "--data",
                str(setup / "train.csv"),
                "--label-col",
                "score",
                "--head",
                "concat",
                "--epochs",
                "2",
                "--out",
                str(model),
                "--overwrite",
                "--quiet",
            ]
        )
        == 0
    )
    assert HeadModel.load(model).head_ == "concat" and not list(tmp_path.glob(".tmp-*"))


def test_weights_that_do_not_match_the_config_never_load(setup, tmp_path):
    model = tmp_path / "m"
    HeadModel.load(setup / "model").save(model)
    other = tmp_path / "other"
    HeadModel(head="ridge").fit(
        TRAIN.assign(score=TRAIN.score[::-1].to_numpy()), "score", cache=EmbeddingCache(setup / "c"), progress=False
    ).save(other)
    (model / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())  # new weights, old config
    with pytest.raises(ModelError, match="does not match the checksum.*weights_sha256"):
        HeadModel.load(model)


# -- 5. outputs: never an input, never replaced without --overwrite ------------------------------


def test_predict_never_writes_over_its_input_and_asks_before_replacing_an_output(setup, capsys, tmp_path):
    data = tmp_path / "data.csv"
    TRAIN.to_csv(data, index=False)
    before = data.read_bytes()
    base = ["predict", "--model", setup / "model", "--cache", setup / "c", "--data", data]
    for extra in ([], ["--overwrite"]):
        code, _, err = run(capsys, *base, "--out", data, *extra)
        one_line_error(code, err, "is the input --data", "would destroy the input")
    assert data.read_bytes() == before
    assert run(capsys, *base, "--out", tmp_path / "p.csv")[0] == 0
    code, _, err = run(capsys, *base, "--out", tmp_path / "p.csv")
    one_line_error(code, err, "exists; pass --overwrite")
    assert run(capsys, *base, "--out", tmp_path / "p.csv", "--overwrite")[0] == 0
    assert run(capsys, *base, "--out", tmp_path / "new" / "dir" / "p.csv")[0] == 0  # a missing directory is made


def test_train_asks_before_replacing_a_model(setup, capsys):
    before = tree(setup / "model")
    code, _, err = run(
        capsys,
        "train",
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--label-col",
        "score",
        "--out",
        setup / "model",
        "--quiet",
    )
    one_line_error(code, err, "--out", "a directory of that name exists; pass --overwrite")
    assert tree(setup / "model") == before


# -- 6. tampered model directories --------------------------------------------------------------


@pytest.mark.parametrize(
    "change,words",
    [
        (lambda c: c.update(dim="16"), "field 'dim' must be a whole number >= 1"),
        (lambda c: c.update(dim=17), "needs (1, 17)"),
        (lambda c: c["params"].update(width=-5), "width must be >= 1, got -5"),
        (lambda c: c["params"].update(colour="red"), "unknown: colour"),
        (lambda c: c.pop("labels"), "field 'labels' is missing"),
        (lambda c: c.update(label_std=[0.0]), "field 'label_std' must be 1 finite number(s) > 0"),
        (lambda c: c["params"].update(label_range=[1, 0]), "lo < hi"),
        (lambda c: c.update(head="forest"), "field 'head' must be one of"),
    ],
)
def test_a_tampered_config_is_one_line_naming_the_field(setup, capsys, tmp_path, change, words):
    model = tmp_path / "m"
    HeadModel.load(setup / "model").save(model)
    config = json.loads((model / "config.json").read_text())
    change(config)
    (model / "config.json").write_text(json.dumps(config))
    code, _, err = run(
        capsys,
        "predict",
        "--model",
        model,
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, str(model), words)


def test_a_huge_width_in_a_concat_config_is_refused_without_allocating_it(setup, tmp_path):
    model = tmp_path / "m"
    HeadModel(head="concat", epochs=1).fit(TRAIN, "score", cache=EmbeddingCache(setup / "c"), progress=False).save(
        model
    )
    config = json.loads((model / "config.json").read_text())
    config["params"]["width"] = 10**9  # 1.5 TB of weights if it were built
    (model / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match="do not belong together"):
        HeadModel.load(model)


def test_damaged_weights_are_one_line(setup, capsys, tmp_path):
    model = tmp_path / "m"
    HeadModel.load(setup / "model").save(model)
    config = json.loads((model / "config.json").read_text())
    config.pop("weights_sha256")  # as a model saved before checksums were recorded
    (model / "config.json").write_text(json.dumps(config))
    (model / "model.safetensors").write_bytes(b"\x00" * 40)
    code, _, err = run(
        capsys,
        "predict",
        "--model",
        model,
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, "model.safetensors cannot be read")


# -- 6. everything else that used to print a traceback ---------------------------------------------


def test_a_cache_held_by_another_writer_is_one_line_with_no_wait(capsys, tmp_path, tiny_bert_dir):
    from embedcache.cli import main as embedcache_main

    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    assert (
        embedcache_main(
            [
                "precompute",
                str(tmp_path / "train.csv"),
                "--cache",
                str(tmp_path / "c"),
                "--model",
                str(tiny_bert_dir),
                "--text-col",
                "text",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        run(
            capsys,
            "train",
            "--cache",
            tmp_path / "c",
            "--data",
            tmp_path / "train.csv",
            "--label-col",
            "score",
            "--head",
            "ridge",
            "--out",
            tmp_path / "m",
            "--quiet",
        )[0]
        == 0
    )
    (tmp_path / "new.csv").write_text("text\nnot cached yet\n")
    with FileLock(tmp_path / "c" / ".lock"):  # another process is writing
        code, _, err = run(
            capsys,
            "predict",
            "--model",
            tmp_path / "m",
            "--cache",
            tmp_path / "c",
            "--data",
            tmp_path / "new.csv",
            "--out",
            tmp_path / "p.csv",
            "--add-missing",
            "--no-wait",
        )
    one_line_error(code, err, "is being written by", "gave up after 0 s")
    assert not (tmp_path / "p.csv").exists()


def test_inputs_that_used_to_end_in_a_traceback(setup, capsys, tmp_path):
    header_only = tmp_path / "empty.csv"
    header_only.write_text("text\n")
    code, _, err = run(capsys, "leakage", "--cache", setup / "c", "--train", setup / "train.csv", "--test", header_only)
    one_line_error(code, err, f"{header_only}: has no data rows")

    surrogate = tmp_path / "s.jsonl"
    surrogate.write_text('{"text": "fine", "score": 1}\n{"text": "bad \\ud800 escape", "score": 2}\n')
    code, _, err = run(
        capsys,
        "predict",
        "--model",
        setup / "model",
        "--cache",
        setup / "c",
        "--data",
        surrogate,
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, f"{surrogate}: row 2, column 'text'", "lone UTF-16 surrogate")

    code, _, err = run(
        capsys,
        "predict",
        "--model",
        setup / "model",
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--template",
        "{text",
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, "template '{text'")

    code, _, err = run(
        capsys,
        "predict",
        "--model",
        setup / "model",
        "--cache",
        setup / "train.csv",
        "--data",
        setup / "train.csv",
        "--out",
        tmp_path / "p.csv",
    )
    one_line_error(code, err, "is a file, not a directory")

    dup = tmp_path / "dup.csv"
    dup.write_text("text,score,score\na,1,2\n")
    code, _, err = run(
        capsys, "train", "--cache", setup / "c", "--data", dup, "--label-col", "score", "--out", tmp_path / "m"
    )
    one_line_error(code, err, f"{dup}: the header names column 'score' more than once")


def test_errors_name_the_validation_file_not_data(setup, capsys, tmp_path):
    val = tmp_path / "val.csv"
    TRAIN.head(5).assign(score=["1", "x", "2", "3", "4"]).to_csv(val, index=False)
    code, _, err = run(
        capsys,
        "train",
        "--cache",
        setup / "c",
        "--data",
        setup / "train.csv",
        "--val-data",
        val,
        "--label-col",
        "score",
        "--out",
        tmp_path / "m",
    )
    one_line_error(code, err, f"{val}: row 2, column 'score': expected a number, found 'x'")


def test_finetune_from_a_missing_directory_says_so(setup, capsys, tmp_path):
    pytest.importorskip("accelerate")
    code, _, err = run(
        capsys,
        "finetune",
        "--data",
        setup / "train.csv",
        "--label-col",
        "score",
        "--model",
        "/nonexistent/dir",
        "--out",
        tmp_path / "m",
    )
    one_line_error(code, err, "/nonexistent/dir: no such directory")


def test_a_read_only_output_directory_is_one_line(setup, capsys, tmp_path):
    where = tmp_path / "ro"
    where.mkdir()
    mount_tmpfs(where, "size=1m,ro")
    try:
        code, _, err = run(
            capsys,
            "predict",
            "--model",
            setup / "model",
            "--cache",
            setup / "c",
            "--data",
            setup / "train.csv",
            "--out",
            where / "p.csv",
        )
        one_line_error(code, err, f"cannot write {where / 'p.csv'}: read-only file system")
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_debug_shows_the_traceback(setup, tmp_path):
    with pytest.raises(ModelError):
        main(
            [
                "--debug",
                "predict",
                "--model",
                str(tmp_path / "none"),
                "--data",
                "x.csv",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
