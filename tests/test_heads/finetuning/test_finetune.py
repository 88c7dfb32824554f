"""heads finetune: each head on a tiny random BERT, LoRA, warm start, the exported encoder, and the real MiniLM briefly."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT

from embedcache import EmbeddingCache, load_encoder
from heads import HeadModel
from heads.cli import main
from heads.finetuning.backbone import Backbone

pytestmark = pytest.mark.finetune  # the fine-tuning tests

WORDS = ["apple", "banana", "cherry", "dog", "cat", "horse", "red", "blue"]


def pairs(n, seed=0):
    """Sentence pairs scored 0-1: 1 when both name the same word (a task the texts decide)."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        a = rng.choice(WORDS)
        b = a if rng.uniform() < 0.4 else rng.choice(WORDS)
        rows.append((f"the {a} is here", f"a {b} was there", float(a == b)))
    return pd.DataFrame(rows, columns=["s1", "s2", "score"])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    work = tmp_path_factory.mktemp("finetune")
    pairs(160).to_csv(work / "train.csv", index=False)
    pairs(40, seed=1).to_csv(work / "dev.csv", index=False)
    return work


def run(args, capsys) -> dict:
    assert main(args) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize("head, extra", [("concat", []), ("two-tower", []), ("cross", []), ("concat", ["--lora", "4"])])
@pytest.mark.slow
def test_each_head_fine_tunes_and_predicts_through_the_same_commands(
    files, tiny_bert_dir, tmp_path, capsys, head, extra
):
    out = tmp_path / "model"
    summary = run(
        [
            "finetune",
            "--data",
            str(files / "train.csv"),
            "--text-col",
            "s1",
            "--pair-col",
            "s2",
            "--label-col",
            "score",
            "--head",
            head,
            "--model",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--label-range",
            "0",
            "1",
            "--quiet",
            "--json",
            *extra,
        ],
        capsys,
    )
    assert {"rmse", "spearman"} <= set(summary) and summary["n"] > 0
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "encoder"}  # checkpoints removed
    config = json.loads((out / "config.json").read_text())
    assert config["finetuned"]["lora"] == (4 if extra else None) and config["head"] == head
    # the encoder moved: its fingerprint is not the original's
    assert config["encoder"]["fingerprint"] != load_encoder(str(tiny_bert_dir)).fingerprint
    # predict and evaluate need no cache: the model encodes with its own encoder
    assert (
        main(["predict", "--model", str(out), "--data", str(files / "dev.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    )
    predicted = pd.read_csv(tmp_path / "p.csv")
    assert len(predicted) == 40 and predicted.score.between(0, 1).all()
    metrics = run(["evaluate", "--model", str(out), "--data", str(files / "dev.csv"), "--json"], capsys)
    dev = pd.read_csv(files / "dev.csv")
    model = HeadModel.load(out)
    np.testing.assert_allclose(model.predict(dev), predicted.score, atol=1e-6)
    assert metrics["rmse"] == pytest.approx(np.sqrt(((predicted.score - dev.score) ** 2).mean()), rel=1e-5)


def test_fine_tuning_learns_a_task_the_random_encoder_knows_nothing_of(tiny_bert_dir, tmp_path):
    """Whether a sentence names an animal: the random encoder and head learn it together."""
    from heads.finetuning.finetune import finetune

    rng = np.random.default_rng(0)

    def animals(n):
        words = rng.choice(WORDS, n)
        return pd.DataFrame(
            {"text": [f"the {w} is here" for w in words], "score": [float(w in ("dog", "cat", "horse")) for w in words]}
        )

    train, dev = animals(400), animals(80)
    model = finetune(
        train,
        "score",
        {"text": "text"},
        tmp_path / "m",
        head="concat",
        model=str(tiny_bert_dir),
        epochs=6,
        patience=6,
        encoder_lr=1e-3,
        batch_size=32,
        progress=False,
    )
    losses = [e["loss"] for e in model.history_ if "loss" in e]
    assert losses[-1] < 0.5 * losses[0]
    rmse = np.sqrt(((model.predict(dev) - dev.score) ** 2).mean())
    assert rmse < 0.5 * dev.score.std()


def test_exported_encoder_gives_the_training_vectors_and_a_cache_of_its_own(files, tiny_bert_dir, tmp_path, capsys):
    out, exported = tmp_path / "model", tmp_path / "exported"
    run(
        [
            "finetune",
            "--data",
            str(files / "train.csv"),
            "--text-col",
            "s1",
            "--pair-col",
            "s2",
            "--label-col",
            "score",
            "--model",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--export-encoder",
            str(exported),
            "--quiet",
            "--json",
        ],
        capsys,
    )
    texts = ["the apple is here", "a dog was there", "blue"]
    encoder = load_encoder(str(exported))  # sentence-transformers loads it, with the pooling of training
    np.testing.assert_allclose(encoder.encode(texts), Backbone.from_directory(str(exported)).encode(texts), atol=1e-5)
    model = HeadModel.load(out)
    assert encoder.fingerprint == model.encoder_["fingerprint"] != load_encoder(str(tiny_bert_dir)).fingerprint
    # a cache precomputed with the exported encoder is used by predict; another encoder's cache is not
    dev = pd.read_csv(files / "dev.csv")
    cache = EmbeddingCache(tmp_path / "cache", encoder)
    cache.add(dev.s1.tolist() + dev.s2.tolist(), progress=False)
    np.testing.assert_allclose(
        model.predict(dev, cache=cache), model.predict(dev), atol=1e-3
    )  # the cache keeps float16
    other = EmbeddingCache(tmp_path / "other", load_encoder(str(tiny_bert_dir)))
    np.testing.assert_allclose(model.predict(dev, cache=other), model.predict(dev), atol=1e-5)
    assert len(other) == 0  # not written to: its vectors are not the fine-tuned encoder's


def test_warm_start_begins_from_the_frozen_head(files, tiny_bert_dir, tiny_bert, tmp_path, capsys):
    from heads.finetuning.finetune import finetune

    train, dev = pd.read_csv(files / "train.csv"), pd.read_csv(files / "dev.csv")
    cache = EmbeddingCache(tmp_path / "cache", tiny_bert)
    frozen = HeadModel(head="two-tower", epochs=5).fit(
        train, "score", cache=cache, text_col="s1", pair_col="s2", progress=False
    )
    frozen.save(tmp_path / "frozen")
    # with nothing learned (both rates 0) the fine-tuned model is the frozen head on the same encoder
    warm = finetune(
        train,
        "score",
        {"text": "s1", "pair": "s2"},
        tmp_path / "warm",
        head="two-tower",
        model=str(tiny_bert_dir),
        init_head=tmp_path / "frozen",
        epochs=1,
        lr=0.0,
        encoder_lr=0.0,
        progress=False,
    )
    np.testing.assert_allclose(
        warm.predict(dev), frozen.predict(dev, cache=cache), atol=2e-3
    )  # the cache keeps float16
    with pytest.raises(ValueError, match="is a 'two-tower' head; fine-tuning a 'concat' head needs a 'concat' one"):
        finetune(
            train,
            "score",
            {"text": "s1", "pair": "s2"},
            tmp_path / "x",
            head="concat",
            model=str(tiny_bert_dir),
            init_head=tmp_path / "frozen",
            progress=False,
        )
    train.rename(columns={"score": "other"}).to_csv(tmp_path / "renamed.csv", index=False)
    assert (
        main(
            [
                "finetune",
                "--data",
                str(tmp_path / "renamed.csv"),
                "--text-col",
                "s1",
                "--pair-col",
                "s2",
                "--label-col",
                "other",
                "--head",
                "two-tower",
                "--model",
                str(tiny_bert_dir),
                "--init-head",
                str(tmp_path / "frozen"),
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 1
    )
    assert "predicts ['score']; this fine-tuning has labels ['other']" in capsys.readouterr().err


def test_bad_input_names_the_file_and_column(files, tiny_bert_dir, tmp_path, capsys):
    base = ["finetune", "--data", str(files / "train.csv"), "--model", str(tiny_bert_dir), "--out", str(tmp_path / "m")]
    assert main([*base, "--text-col", "sentence1", "--label-col", "score"]) == 1
    assert f"{files / 'train.csv'}: no column 'sentence1'; available columns: s1, s2, score" in capsys.readouterr().err
    assert main([*base, "--text-col", "s1", "--label-col", "score", "--head", "two-tower"]) == 1
    assert "two-tower head needs exactly one of a pair column or a condition column" in capsys.readouterr().err
    assert (
        main(["predict", "--model", str(tmp_path / "nothing"), "--data", str(files / "dev.csv"), "--out", "x.csv"]) == 1
    )
    assert "nothing: no such model directory" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()  # nothing written for a run refused before training


def test_a_frozen_head_without_its_cache_encodes_with_the_encoder_it_records(files, tiny_bert, tmp_path, capsys):
    from helpers import HashEncoder

    cache = EmbeddingCache(tmp_path / "cache", tiny_bert)
    train = pd.read_csv(files / "train.csv")
    HeadModel(head="ridge").fit(train, "score", cache=cache, text_col="s1", pair_col="s2", progress=False).save(
        tmp_path / "ridge"
    )
    with_cache = run(
        [
            "evaluate",
            "--model",
            str(tmp_path / "ridge"),
            "--cache",
            str(cache.path),
            "--data",
            str(files / "dev.csv"),
            "--json",
        ],
        capsys,
    )
    without = run(["evaluate", "--model", str(tmp_path / "ridge"), "--data", str(files / "dev.csv"), "--json"], capsys)
    assert without["rmse"] == pytest.approx(with_cache["rmse"], abs=1e-3)  # the cache keeps float16
    custom = EmbeddingCache(tmp_path / "custom", HashEncoder(dim=8))  # an encoder no config can reload
    HeadModel(head="ridge").fit(train, "score", cache=custom, text_col="s1", pair_col="s2", progress=False).save(
        tmp_path / "hash"
    )
    assert main(["evaluate", "--model", str(tmp_path / "hash"), "--data", str(files / "dev.csv")]) == 1
    assert "it cannot load: pass the cache of those vectors (cache=..., --cache DIR)" in capsys.readouterr().err


@pytest.mark.slow
def test_minilm_fine_tunes_on_a_few_hundred_sts_pairs(minilm, tmp_path, capsys):

    data = ROOT.parent / "shared" / "data" / "stsb-multi-mt" / "stsb-en-train.csv"
    if not data.exists():
        pytest.skip(f"{data} not present")
    df = pd.read_csv(data, header=None, names=["s1", "s2", "score"], nrows=300)
    df.to_csv(tmp_path / "sts.csv", index=False)
    out = tmp_path / "minilm-sts"
    summary = run(
        [
            "finetune",
            "--data",
            str(tmp_path / "sts.csv"),
            "--text-col",
            "s1",
            "--pair-col",
            "s2",
            "--label-col",
            "score",
            "--epochs",
            "2",
            "--patience",
            "2",
            "--label-range",
            "0",
            "5",
            "--out",
            str(out),
            "--quiet",
            "--json",
        ],
        capsys,
    )
    model = HeadModel.load(out)
    losses = [e["loss"] for e in model.history_ if "loss" in e]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert summary["spearman"] > 0.5  # MiniLM's vectors already carry the similarity
    metrics = run(["evaluate", "--model", str(out), "--data", str(tmp_path / "sts.csv"), "--json"], capsys)
    assert metrics["n"] == 300 and metrics["spearman"] > 0.6


def test_prompt_tuning_trains_only_a_soft_prompt_that_the_exported_encoder_reads(
    files, tiny_bert_dir, tmp_path, capsys
):
    out, exported = tmp_path / "model", tmp_path / "exported"
    summary = run(
        [
            "finetune",
            "--data",
            str(files / "train.csv"),
            "--text-col",
            "s1",
            "--pair-col",
            "s2",
            "--label-col",
            "score",
            "--model",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--epochs",
            "2",
            "--prompt-tuning",
            "4",
            "--lr",
            "0.01",
            "--export-encoder",
            str(exported),
            "--quiet",
            "--json",
        ],
        capsys,
    )
    assert summary["rmse"] > 0
    from safetensors.torch import load_file

    base, tuned = load_file(str(tiny_bert_dir / "model.safetensors")), load_file(str(exported / "model.safetensors"))
    assert all(np.array_equal(base[k].numpy(), tuned[k].numpy()) for k in base)  # the encoder is frozen
    prompt = load_file(str(exported / "soft_prompt.safetensors"))["soft_prompt"]
    assert prompt.shape == (4, 32)
    texts = ["the apple is here", "a dog was there", "blue"]
    encoder = load_encoder(str(exported))  # sentence-transformers loads the soft prompt module by itself
    assert "SoftPromptTransformer" in repr(encoder.model)
    np.testing.assert_allclose(encoder.encode(texts), Backbone.from_directory(str(exported)).encode(texts), atol=1e-5)
    assert not np.allclose(encoder.encode(texts), load_encoder(str(tiny_bert_dir)).encode(texts), atol=1e-3)
    # the ONNX export traces the soft prompt too
    np.testing.assert_allclose(
        load_encoder(str(exported), backend="onnx").encode(texts), encoder.encode(texts), atol=1e-4
    )
    model = HeadModel.load(out)
    assert model.encoder_["fingerprint"] == encoder.fingerprint
    assert model.finetuned_["prompt_tuning"] == 4
    assert (
        main(
            [
                "finetune",
                "--data",
                str(files / "train.csv"),
                "--text-col",
                "s1",
                "--label-col",
                "score",
                "--out",
                str(tmp_path / "x"),
                "--lora",
                "2",
                "--prompt-tuning",
                "2",
            ]
        )
        != 0
    )
    assert "not both" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_fine_tuning_leaves_the_old_model_as_it_was_and_resumes(files, tiny_bert_dir, tmp_path):
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    from heads.finetuning.finetune import finetune

    out, train = tmp_path / "model", pd.read_csv(files / "train.csv")
    settings = {"head": "concat", "model": str(tiny_bert_dir), "batch_size": 16, "progress": False}
    finetune(train, "score", {"text": "s1", "pair": "s2"}, out, epochs=1, **settings)
    before = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    work = tmp_path / ".model.finetune"
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "heads.cli",
            "finetune",
            "--data",
            str(files / "train.csv"),
            "--text-col",
            "s1",
            "--pair-col",
            "s2",
            "--label-col",
            "score",
            "--model",
            str(tiny_bert_dir),
            "--out",
            str(out),
            "--batch-size",
            "16",
            "--epochs",
            "40",
            "--patience",
            "40",
            "--overwrite",
            "--quiet",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(work.glob("checkpoints/checkpoint-*/trainer_state.json")) and time.monotonic() < deadline:
        assert run.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(0.2)  # the checkpoint's other files
    run.send_signal(signal.SIGKILL)
    run.wait()
    after = {p.relative_to(out): hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.is_file()}
    assert after == before  # nothing of the killed run inside the old model directory
    resumed = finetune(train, "score", {"text": "s1", "pair": "s2"}, out, epochs=3, resume=True, **settings)
    assert resumed.history_ and not work.exists()
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "encoder"}
    assert HeadModel.load(out).predict(pairs(4, seed=3)).shape == (4,)
