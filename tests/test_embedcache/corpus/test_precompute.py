import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
from helpers import ROOT, run_json

from embedcache import EmbeddingCache, load_encoder
from embedcache.cli import main

ROWS = pd.DataFrame(
    {
        "id": [1, 2, 3, 4],
        "system": ["be kind", "be kind", "be brief", "be kind"],
        "prompt": ["how do i bake bread?", "what is 2+2?", "name a colour", "how do i bake bread?"],
        "response": ["knead, rest, bake", "4", "blue", "use an oven"],
    }
)


def run(capsys, *args):
    return run_json(main, capsys, *args)


def write(df, path):
    fmt = path.suffix
    if fmt == ".csv":
        df.to_csv(path, index=False)
    elif fmt == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif fmt == ".json":
        df.to_json(path, orient="records")
    elif fmt == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".json", ".jsonl", ".parquet"])
def test_each_format_caches_each_text_column(tmp_path, capsys, tiny_bert_dir, ext):
    data = write(ROWS, tmp_path / f"rows{ext}")
    code, s, _ = run(
        capsys,
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--text-col",
        "prompt",
        "--text-col",
        "response",
        "--json",
        "--quiet",
    )
    assert code == 0
    assert (s["rows"], s["texts"], s["unique"], s["cached"], s["encoded"], s["skipped"]) == (4, 8, 7, 0, 7, 0)
    assert set(s) >= {"rows", "unique", "cached", "encoded", "skipped", "truncated", "seconds", "texts_per_s"}
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.contains(ROWS["prompt"].tolist() + ROWS["response"].tolist()).all()


def test_rerun_encodes_nothing_and_new_rows_only_once(tmp_path, capsys, tiny_bert_dir):
    data = write(ROWS, tmp_path / "rows.csv")
    args = ["precompute", data, "--cache", tmp_path / "c", "--model", tiny_bert_dir, "--text-col", "prompt", "--json"]
    assert run(capsys, *args)[1]["encoded"] == 3
    s = run(capsys, *args)[1]
    assert (s["cached"], s["encoded"]) == (3, 0)
    more = write(pd.concat([ROWS, ROWS.assign(prompt="a new prompt")]), tmp_path / "more.csv")
    s = run(capsys, "precompute", more, *args[2:])[1]
    assert (s["cached"], s["encoded"]) == (3, 1)


def test_template_composes_columns_into_one_text(tmp_path, capsys, tiny_bert_dir):
    data = write(ROWS, tmp_path / "rows.jsonl")
    template = "[SYSTEM] {system}\\n[USER] {prompt}\\n[RESPONSE] {response}"
    code, s, _ = run(
        capsys,
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--template",
        template,
        "--json",
    )
    assert code == 0 and s["encoded"] == 4
    composed = [f"[SYSTEM] {a}\n[USER] {b}\n[RESPONSE] {c}" for a, b, c in zip(ROWS.system, ROWS.prompt, ROWS.response)]
    assert EmbeddingCache(tmp_path / "c").contains(composed).all()


def test_vectors_from_precompute_equal_direct_encoding(tmp_path, capsys, tiny_bert_dir):
    data = write(ROWS, tmp_path / "rows.csv")
    run(
        capsys,
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--text-col",
        "response",
        "--dtype",
        "float32",
    )
    direct = load_encoder(str(tiny_bert_dir)).encode(ROWS.response.tolist())
    np.testing.assert_allclose(EmbeddingCache(tmp_path / "c").get(ROWS.response.tolist()), direct, atol=1e-5)


def test_truncated_texts_are_reported(tmp_path, capsys, tiny_bert_dir):
    data = write(ROWS.assign(prompt=["word " * 100, "short", "word " * 50, "ok"]), tmp_path / "rows.csv")
    code, s, err = run(
        capsys,
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--max-length",
        "32",
        "--text-col",
        "prompt",
        "--json",
    )
    assert code == 0 and s["truncated"] == 2
    assert "2 texts were longer than 32 tokens" in err


# -- bad input: a clear error, and nothing already cached is lost ------------------


@pytest.fixture
def filled_cache(tmp_path, capsys, tiny_bert_dir):
    data = write(ROWS, tmp_path / "good.csv")
    run(capsys, "precompute", data, "--cache", tmp_path / "c", "--model", tiny_bert_dir, "--text-col", "prompt")
    return tmp_path / "c"


def bad_run(capsys, cache, tiny_bert_dir, data, *extra):
    before = len(EmbeddingCache(cache))
    code, _, err = run(capsys, "precompute", data, "--cache", cache, "--model", tiny_bert_dir, *extra)
    assert code == 1
    assert len(EmbeddingCache(cache)) == before and EmbeddingCache(cache).verify() == []
    return err


def test_missing_file(tmp_path, capsys, tiny_bert_dir, filled_cache):
    err = bad_run(capsys, filled_cache, tiny_bert_dir, tmp_path / "nope.csv", "--text-col", "prompt")
    assert "nope.csv: no such file" in err


def test_unreadable_format(tmp_path, capsys, tiny_bert_dir, filled_cache):
    (tmp_path / "data.xlsx").write_bytes(b"PK\x03\x04")
    assert "cannot tell the format" in bad_run(
        capsys, filled_cache, tiny_bert_dir, tmp_path / "data.xlsx", "--text-col", "p"
    )
    (tmp_path / "broken.parquet").write_bytes(b"not parquet at all")
    err = bad_run(capsys, filled_cache, tiny_bert_dir, tmp_path / "broken.parquet", "--text-col", "p")
    assert "broken.parquet: not a readable Parquet file" in err
    (tmp_path / "broken.json").write_text('[{"prompt": "a"},\n {"prompt": }]')
    err = bad_run(capsys, filled_cache, tiny_bert_dir, tmp_path / "broken.json", "--text-col", "prompt")
    assert "broken.json: invalid JSON at line 2, column" in err


def test_unknown_column_lists_the_available_ones(tmp_path, capsys, tiny_bert_dir, filled_cache):
    data = write(ROWS, tmp_path / "rows.csv")
    err = bad_run(capsys, filled_cache, tiny_bert_dir, data, "--text-col", "promt")
    assert "no column 'promt'; available columns: id, system, prompt, response" in err
    err = bad_run(capsys, filled_cache, tiny_bert_dir, data, "--template", "{prompt} {answer}")
    assert "no column 'answer'" in err


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_empty_texts_are_errors_naming_rows_or_skipped_with_a_flag(tmp_path, capsys, tiny_bert_dir, filled_cache, ext):
    prompts = ["fine"] * 30
    for row in (2, 5, 6, 9, 11, 13, 17, 19, 21, 23, 25, 27):  # 12 bad rows, 1-based
        prompts[row - 1] = {2: "", 5: "   ", 6: None, 9: float("nan")}.get(row, "\t")
    data = write(pd.DataFrame({"prompt": prompts}), tmp_path / f"rows{ext}")
    err = bad_run(capsys, filled_cache, tiny_bert_dir, data, "--text-col", "prompt")
    assert f"rows{ext}: column 'prompt' has 12 empty, whitespace-only or missing texts" in err
    assert "at rows 2, 5, 6, 9, 11, 13, 17, 19, 21, 23 and 2 more" in err
    code, s, _ = run(
        capsys,
        "precompute",
        data,
        "--cache",
        filled_cache,
        "--model",
        tiny_bert_dir,
        "--text-col",
        "prompt",
        "--skip-empty",
        "--json",
    )
    assert code == 0 and (s["rows"], s["skipped"], s["encoded"]) == (30, 12, 1)


def test_invalid_utf8_names_the_byte_offset(tmp_path, capsys, tiny_bert_dir, filled_cache):
    data = tmp_path / "latin1.csv"
    data.write_bytes(b"prompt\nfine\ncaf" + b"\xe9\n")
    err = bad_run(capsys, filled_cache, tiny_bert_dir, data, "--text-col", "prompt")
    assert "latin1.csv: invalid UTF-8 at byte offset 15 (line 3)" in err


def test_non_text_values_name_row_and_column(tmp_path, capsys, tiny_bert_dir, filled_cache):
    (tmp_path / "rows.jsonl").write_text('{"prompt": "ok"}\n{"prompt": 42}\n')
    err = bad_run(capsys, filled_cache, tiny_bert_dir, tmp_path / "rows.jsonl", "--text-col", "prompt")
    assert "rows.jsonl: row 2, column 'prompt': expected text, found int 42" in err


def test_another_model_on_the_same_cache_is_refused(tmp_path, capsys, tiny_bert_dir, filled_cache):
    data = write(ROWS, tmp_path / "rows.csv")
    err = bad_run(capsys, filled_cache, tiny_bert_dir, data, "--text-col", "prompt", "--max-length", "16")
    assert "was built by encoder" in err and "use another cache directory" in err


# -- verify, info, the script ----------------------------------------------------


def test_verify_names_a_corrupted_shard_and_repair_lets_a_rerun_recompute_it(tmp_path, capsys, tiny_bert_dir):
    data = write(pd.DataFrame({"prompt": [f"prompt number {i}" for i in range(30)]}), tmp_path / "rows.csv")
    args = [
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--text-col",
        "prompt",
        "--shard-size",
        "10",
        "--json",
    ]
    run(capsys, *args)
    assert run(capsys, "verify", tmp_path / "c", "--json")[1]["ok"] is True
    shard = tmp_path / "c" / "shard-000002.h5"
    with h5py.File(shard, "r") as f:
        offset = f["vectors"].id.get_offset()  # where the vector bytes start in the file
    raw = bytearray(shard.read_bytes())
    raw[offset + 8 : offset + 12] = b"\xff\x00\xff\x00"  # silent bit rot inside one vector
    shard.write_bytes(bytes(raw))

    code, report, _ = run(capsys, "verify", tmp_path / "c", "--json")
    assert code == 1 and [b["file"] for b in report["bad"]] == ["shard-000002.h5"]
    assert "checksum mismatch" in report["bad"][0]["reason"]
    code, report, _ = run(capsys, "verify", tmp_path / "c", "--repair", "--json")
    assert report["repaired"] and report["rows"] == 20 and not shard.exists()
    assert run(capsys, *args)[1]["encoded"] == 10
    assert run(capsys, "verify", tmp_path / "c")[0] == 0


def test_verify_names_a_missing_or_truncated_shard(tmp_path, capsys, tiny_bert_dir):
    data = write(pd.DataFrame({"prompt": [f"p{i}" for i in range(20)]}), tmp_path / "rows.csv")
    run(
        capsys,
        "precompute",
        data,
        "--cache",
        tmp_path / "c",
        "--model",
        tiny_bert_dir,
        "--text-col",
        "prompt",
        "--shard-size",
        "5",
    )
    (tmp_path / "c" / "shard-000001.h5").unlink()
    (tmp_path / "c" / "shard-000003.h5").write_bytes(b"\x89HDF\r\n")
    code, report, _ = run(capsys, "verify", tmp_path / "c", "--json")
    assert code == 1
    reasons = {b["file"]: b["reason"] for b in report["bad"]}
    assert reasons["shard-000001.h5"] == "file is missing" and "cannot be read" in reasons["shard-000003.h5"]


def test_info_prints_fingerprint_model_dimension_count_and_size(tmp_path, capsys, tiny_bert_dir, filled_cache):
    code, info, _ = run(capsys, "info", filled_cache, "--json")
    encoder = load_encoder(str(tiny_bert_dir))
    assert code == 0 and info["fingerprint"] == encoder.fingerprint and info["encoder"] == str(tiny_bert_dir)
    assert (info["dim"], info["rows"], info["shards"], info["dtype"]) == (32, 3, 1, "float16") and info["bytes"] > 0


def test_script_and_console_command_teach_with_help():
    for cmd in (
        [sys.executable, str(ROOT / "scripts" / "precompute.py"), "--help"],
        [sys.executable, "-m", "embedcache.cli", "precompute", "--help"],
    ):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "--text-col" in out and "examples:" in out and "resume" in out


@pytest.mark.slow
@pytest.mark.parametrize("layers", [None, "all"])
def test_a_killed_precompute_leaves_a_whole_cache_and_a_rerun_completes_it(tmp_path, tiny_bert_dir, layers):
    n = 60_000
    data = write(
        pd.DataFrame({"prompt": [f"prompt {i} about {i % 97} things" for i in range(n)]}), tmp_path / "big.csv"
    )
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "precompute.py"),
        str(data),
        "--cache",
        str(tmp_path / "c"),
        "--model",
        str(tiny_bert_dir),
        "--text-col",
        "prompt",
        "--shard-size",
        "1000",
        "--quiet",
        "--json",
        *(["--layers", layers] if layers else []),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    manifest = tmp_path / "c" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.005)
    assert proc.poll() is None, "precompute finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    cache = EmbeddingCache(tmp_path / "c")
    assert cache.verify() == []
    done = len(cache)
    assert 3000 <= done < n
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["cached"], summary["encoded"]) == (done, n - done)
    cache = EmbeddingCache(tmp_path / "c")
    assert len(cache) == n and cache.verify() == []
    sample = [f"prompt {i} about {i % 97} things" for i in (0, 1234, n - 1)]
    np.testing.assert_allclose(cache.get(sample), load_encoder(str(tiny_bert_dir)).encode(sample), atol=2e-3)
    if layers:  # every text, before and after the kill, has its layer vectors
        _, expected = load_encoder(str(tiny_bert_dir)).encode_layers(sample, (0, 1, 2))
        np.testing.assert_allclose(cache.get(sample, features="layers"), expected, atol=2e-3)


def test_a_rerun_with_nothing_new_skips_loading_the_model_but_notices_new_weights(tmp_path, capsys, monkeypatch):
    from helpers import make_tiny_bert

    import embedcache.corpus.local

    model_dir = make_tiny_bert(tmp_path / "bert")
    data = write(ROWS, tmp_path / "rows.csv")
    args = ["precompute", data, "--cache", tmp_path / "c", "--model", model_dir, "--text-col", "prompt", "--json"]
    assert run(capsys, *args)[1]["encoded"] == 3
    with monkeypatch.context() as m:
        m.setattr(embedcache.corpus.local, "load_encoder", lambda *a, **k: pytest.fail("the model was loaded"))
        s = run(capsys, *args)[1]
        assert (s["cached"], s["encoded"]) == (3, 0)
        # the same from Python: the command's summary, the same shortcut
        s = embedcache.precompute(data, tmp_path / "c", ["prompt"], model=str(model_dir), progress=False)
        assert (s["rows"], s["cached"], s["encoded"], s["cache_rows"]) == (len(ROWS), 3, 0, 3)
    more = write(pd.concat([ROWS, ROWS.assign(prompt="something new")]), tmp_path / "more.csv")
    assert run(capsys, "precompute", more, *args[2:])[1]["encoded"] == 1  # new text: the model is loaded
    make_tiny_bert(model_dir, seed=5)  # other weights in the same directory
    code, _, err = run(capsys, *args)
    assert code == 1 and "was built by encoder" in err
