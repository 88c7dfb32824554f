"""A model, cache or export directory can never make the library import code (issue 22, item 1)."""

import json
import shutil

import numpy as np
import pytest
import torch
from helpers import one_line_error, run
from safetensors.torch import save_file

from embedcache import EmbeddingCache, EncoderError, UnsafeModelError, load_encoder
from embedcache.cli import main as embedcache_main

PAYLOAD = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n"


@pytest.fixture(scope="module")
def st_dir(tmp_path_factory, tiny_bert):
    """The tiny BERT saved as a sentence-transformers directory (modules.json, pooling)."""
    path = tmp_path_factory.mktemp("st") / "model"
    tiny_bert.model.save(str(path))
    return path


def soft_prompt_dir(st_dir, where):
    """What heads finetune --prompt-tuning writes: the soft-prompt module type and its vectors."""
    shutil.copytree(st_dir, where)
    modules = json.loads((where / "modules.json").read_text())
    modules[0]["type"] = "embedcache.softprompt.SoftPromptTransformer"
    (where / "modules.json").write_text(json.dumps(modules))
    save_file({"soft_prompt": torch.zeros(2, 32)}, str(where / "soft_prompt.safetensors"))
    return where


def evil_tokenizer(d, marker):
    config = json.loads((d / "tokenizer_config.json").read_text())
    config.update(
        auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizerFast"]}, tokenizer_class="EvilTokenizerFast"
    )
    (d / "tokenizer_config.json").write_text(json.dumps(config))
    (d / "tokenization_evil.py").write_text(PAYLOAD.format(marker=str(marker)))


def evil_subfolder_config(d, marker):
    (d / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                **json.loads((d / "1_Pooling" / "config.json").read_text()),
                "auto_map": {"AutoConfig": "configuration_evil.EvilConfig"},
            }
        )
    )
    (d / "1_Pooling" / "configuration_evil.py").write_text(PAYLOAD.format(marker=str(marker)))


def evil_root_config(d, marker):
    config = json.loads((d / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(config))
    (d / "modeling_evil.py").write_text(PAYLOAD.format(marker=str(marker)))


def evil_module_type(d, marker):
    modules = json.loads((d / "modules.json").read_text())
    modules[1]["type"] = "evil_module.Evil"
    (d / "modules.json").write_text(json.dumps(modules))
    (d / "evil_module.py").write_text(PAYLOAD.format(marker=str(marker)))


def module_path_out(d, marker):
    outside = d.parent / "elsewhere"
    shutil.copytree(d / "1_Pooling", outside, dirs_exist_ok=True)
    modules = json.loads((d / "modules.json").read_text())
    modules[1]["path"] = "../elsewhere"
    (d / "modules.json").write_text(json.dumps(modules))


def link_out(d, marker):
    outside = d.parent / "outside.json"
    outside.write_text("{}")
    (d / "special_tokens_map.json").unlink(missing_ok=True)
    (d / "special_tokens_map.json").symlink_to(outside)


ATTACKS = [evil_tokenizer, evil_subfolder_config, evil_root_config, evil_module_type, module_path_out, link_out]


def test_a_soft_prompt_directory_loads_without_remote_code(st_dir, tmp_path):
    encoder = load_encoder(str(soft_prompt_dir(st_dir, tmp_path / "soft")))
    assert "SoftPromptTransformer" in repr(encoder.model)
    assert encoder.encode(["hello there"]).shape == (1, 32)


@pytest.mark.parametrize("soft", [True, False], ids=["soft-prompt", "plain"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_directory_naming_code_is_refused_before_anything_runs(st_dir, tmp_path, attack, soft):
    d = soft_prompt_dir(st_dir, tmp_path / "m") if soft else shutil.copytree(st_dir, tmp_path / "m")
    marker = tmp_path / "payload-ran"
    attack(d, marker)
    with pytest.raises(UnsafeModelError, match=str(d)):
        load_encoder(str(d))
    assert not marker.exists()


def test_precompute_and_a_manifest_naming_such_a_directory_run_nothing(st_dir, tmp_path, capsys, hash_encoder):
    d = soft_prompt_dir(st_dir, tmp_path / "m")
    marker = tmp_path / "payload-ran"
    evil_tokenizer(d, marker)
    (tmp_path / "in.csv").write_text("text\nhello\n")
    code, _, err = run(
        embedcache_main,
        capsys,
        "precompute",
        tmp_path / "in.csv",
        "--cache",
        tmp_path / "c",
        "--model",
        d,
        "--text-col",
        "text",
    )
    one_line_error(code, err, "auto_map")
    # a cache whose manifest records such a directory as its encoder
    cache = EmbeddingCache(tmp_path / "c2", hash_encoder)
    cache.add(["hello"])
    manifest = json.loads((tmp_path / "c2" / "manifest.json").read_text())
    manifest["encoder"]["load"] = {"name_or_path": str(d)}
    (tmp_path / "c2" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UnsafeModelError):
        EmbeddingCache(tmp_path / "c2").get(["new text"], encode_missing=True)
    assert not marker.exists()


def test_the_finetune_backbone_refuses_it_too(st_dir, tmp_path):
    from heads.finetuning.backbone import Backbone

    d = shutil.copytree(st_dir, tmp_path / "m")
    marker = tmp_path / "payload-ran"
    evil_root_config(d, marker)
    with pytest.raises(UnsafeModelError):
        Backbone.from_directory(str(d))
    assert not marker.exists()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_bert_dir):
    """A fine-tuned concat model (tiny BERT, one epoch) and a data file it scores."""
    import pandas as pd

    from heads.finetuning.finetune import finetune

    work = tmp_path_factory.mktemp("ft")
    data = pd.DataFrame({"text": [f"text number {i}" for i in range(40)], "score": [i % 3 / 2 for i in range(40)]})
    data.to_csv(work / "data.csv", index=False)
    finetune(
        data,
        "score",
        {"text": "text"},
        work / "model",
        head="concat",
        model=str(tiny_bert_dir),
        epochs=1,
        batch_size=16,
        progress=False,
    )
    return work


def _tampered(finetuned, tmp_path, change):
    model = shutil.copytree(finetuned / "model", tmp_path / "model")
    config = json.loads((model / "config.json").read_text())
    change(config, model)
    (model / "config.json").write_text(json.dumps(config))
    return model


def _elsewhere(config, model):
    shutil.copytree(model / "encoder", model.parent / "elsewhere")
    config["finetuned"]["encoder"] = str(model.parent / "elsewhere")


def _climbs(config, model):
    shutil.copytree(model / "encoder", model.parent / "elsewhere")
    config["finetuned"]["encoder"] = "../elsewhere"


def _linked(config, model):
    shutil.copytree(model / "encoder", model.parent / "elsewhere")
    (model / "enc").symlink_to(model.parent / "elsewhere")
    config["finetuned"]["encoder"] = "enc"


@pytest.mark.parametrize(
    "change, words",
    [
        (_elsewhere, ["finetuned.encoder"]),
        (_climbs, ["finetuned.encoder"]),
        (_linked, ["finetuned.encoder"]),
        (lambda config, model: config.update(finetuned=5), ["finetuned"]),
        (lambda config, model: config["finetuned"].update(encoder=["x"]), ["finetuned"]),
        (lambda config, model: (model / "encoder" / "modules.json").write_text("{not json"), ["modules.json"]),
        (lambda config, model: (model / "encoder" / "modules.json").write_text('{"a": 1}'), ["modules.json"]),
    ],
    ids=[
        "absolute",
        "climbs-out",
        "link-out",
        "not-an-object",
        "encoder-not-a-string",
        "modules-garbage",
        "modules-not-a-list",
    ],
)
def test_a_fine_tuned_model_whose_encoder_record_is_bent_is_one_line(finetuned, tmp_path, capsys, change, words):
    from heads.cli import main as heads_main

    model = _tampered(finetuned, tmp_path, change)
    code, _, err = run(
        heads_main,
        capsys,
        "predict",
        "--model",
        model,
        "--data",
        finetuned / "data.csv",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
    )
    one_line_error(code, err, *words)
    assert not (tmp_path / "p.csv").exists()


def test_a_fine_tuned_encoder_with_other_weights_is_refused(finetuned, tmp_path, capsys, tiny_bert):
    from heads.cli import main as heads_main

    def swap(config, model):
        shutil.rmtree(model / "encoder")
        tiny_bert.model.save(str(model / "encoder"))  # the original weights: not what the head was trained with

    model = _tampered(finetuned, tmp_path, swap)
    capsys.readouterr()  # the save's own progress bar
    code, _, err = run(
        heads_main,
        capsys,
        "predict",
        "--model",
        model,
        "--data",
        finetuned / "data.csv",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
    )
    one_line_error(code, err, "fingerprint", "altered")
    code, _, err = run(
        heads_main,
        capsys,
        "predict",
        "--model",
        finetuned / "model",
        "--data",
        finetuned / "data.csv",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
    )
    assert code == 0, err


# -- exports are verified on load (item 3) ------------------------------------------------------


def precompute_onnx(capsys, tmp_path, model):
    """``embedcache precompute`` of ``tmp_path/in.csv`` with the ONNX backend: (status, stdout, stderr)."""
    args = ["precompute", tmp_path / "in.csv", "--cache", tmp_path / "c", "--model", model, "--backend", "onnx"]
    return run(embedcache_main, capsys, *args, "--text-col", "text", "--quiet")


@pytest.fixture
def own_home(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDCACHE_HOME", str(tmp_path / "home"))
    return tmp_path / "home" / "exports"


def _only_export(home):
    (directory,) = [p for p in home.iterdir() if not p.name.startswith(".")]
    return directory


@pytest.mark.parametrize("damage", ["foreign", "truncated", "garbage-record", "added-file"])
def test_a_poisoned_or_damaged_export_is_refused_in_one_line(tiny_bert_dir, tmp_path, own_home, capsys, damage):
    from helpers import make_tiny_bert

    honest = load_encoder(str(tiny_bert_dir), backend="onnx").encode(["the same text"])
    export = _only_export(own_home)
    if damage == "foreign":
        other = make_tiny_bert(tmp_path / "other", seed=1)
        load_encoder(str(other), backend="onnx")
        foreign = next(p for p in own_home.iterdir() if p != export)
        shutil.copy(foreign / "model.onnx", export / "model.onnx")
    elif damage == "truncated":
        data = (export / "model.onnx").read_bytes()
        (export / "model.onnx").write_bytes(data[: len(data) // 2])
    elif damage == "garbage-record":
        (export / "export.json").write_text("{garbage")
    else:
        (export / "extra.bin").write_bytes(b"x")
    with pytest.raises(EncoderError, match="delete that directory"):
        load_encoder(str(tiny_bert_dir), backend="onnx")
    (tmp_path / "in.csv").write_text("text\nthe same text\n")
    capsys.readouterr()
    code, _, err = precompute_onnx(capsys, tmp_path, tiny_bert_dir)
    one_line_error(code, err, str(export))
    assert (
        not (tmp_path / "c" / "manifest.json").exists()
        or not EmbeddingCache(tmp_path / "c").contains(["the same text"]).any()
    )
    shutil.rmtree(export)  # as the message says: exported anew, and the vectors are the honest ones again
    np.testing.assert_allclose(
        load_encoder(str(tiny_bert_dir), backend="onnx").encode(["the same text"]), honest, atol=1e-5
    )


def test_a_read_only_export_home_is_one_line(tiny_bert_dir, tmp_path, own_home, capsys):
    import os

    if os.geteuid() == 0:
        from helpers import mount_tmpfs

        own_home.parent.mkdir(parents=True)
        mount_tmpfs(own_home.parent, "size=1m,ro")
    else:
        own_home.parent.mkdir(parents=True)
        own_home.parent.chmod(0o500)
    (tmp_path / "in.csv").write_text("text\nhello\n")
    try:
        code, _, err = precompute_onnx(capsys, tmp_path, tiny_bert_dir)
        one_line_error(code, err, str(own_home))
    finally:
        if os.geteuid() == 0:
            import subprocess

            subprocess.run(["umount", str(own_home.parent)], check=False)
