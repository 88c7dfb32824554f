"""Backends (ONNX Runtime, OpenVINO, int8, auto) and batching by token count."""

import itertools
import json

import numpy as np
import pytest
from helpers import TEST_DATA
from hypothesis import given, settings
from hypothesis import strategies as st

from embedcache import EmbeddingCache, load_encoder
from embedcache.cli import main
from embedcache.encoders.runtimes.batching import prefetch, token_batches

SENTENCES = (TEST_DATA / "sentences.txt").read_text().splitlines()
EXPORTED = ["onnx", "onnx-int8", "openvino", "openvino-int8"]


def cosines(a, b):
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@given(st.lists(st.integers(1, 300), max_size=200), st.integers(1, 2000), st.integers(1, 70))
@settings(max_examples=200, deadline=None)
def test_token_batches_cover_every_text_once_within_the_budget(lengths, max_tokens, max_rows):
    batches = token_batches(lengths, max_tokens, max_rows)
    taken = np.concatenate(batches) if batches else np.array([], dtype=int)
    assert sorted(taken.tolist()) == list(range(len(lengths)))
    lengths = np.asarray(lengths)
    for batch in batches:
        assert 1 <= len(batch) <= max_rows
        padded = len(batch) * lengths[batch].max()
        assert padded <= max_tokens or len(batch) == 1  # only a text over the budget rides alone
    # shortest first: each batch's longest text is no longer than the next batch's shortest
    for a, b in itertools.pairwise(batches):
        assert lengths[a].max() <= lengths[b].min()


def test_prefetch_keeps_order_and_raises_where_the_producer_failed():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))

    def failing():
        yield 1
        yield 2
        raise ValueError("tokenizer broke")

    seen = []
    with pytest.raises(ValueError, match="tokenizer broke"):
        for item in prefetch(failing()):
            seen.append(item)  # noqa: PERF402 -- the items before the error
    assert seen == [1, 2]
    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    for item in prefetch(endless(), depth=2):
        if item == 5:
            break
    assert len(produced) <= 5 + 1 + 2 + 1  # stopped: at most the queue's depth and one in hand beyond


def test_batches_by_token_count_give_the_vectors_of_fixed_size_batches_in_input_order(tiny_bert_dir):
    texts = [("word " * n).strip() + f" {i}" for i, n in enumerate(np.random.default_rng(0).integers(1, 30, 57))]
    encoder = load_encoder(str(tiny_bert_dir), max_batch_tokens=40, batch_size=8)
    fixed = encoder.model.encode(texts, batch_size=5, convert_to_numpy=True)  # sentence-transformers' own batching
    assert np.allclose(encoder.encode(texts), fixed, atol=1e-5)
    assert np.allclose(encoder.encode(texts[::-1]), fixed[::-1], atol=1e-5)
    encoder.overlap = True  # the GPU path: tokenized ahead in a thread (same code on the CPU)
    assert np.allclose(encoder.encode(texts), fixed, atol=1e-5)


@pytest.fixture(scope="module")
def fp32_vectors(minilm):
    return minilm.encode(SENTENCES)


@pytest.mark.parametrize("backend", EXPORTED)
@pytest.mark.slow
@pytest.mark.export
def test_each_backend_runs_the_embedded_model_offline_close_to_fp32(
    backend, minilm, fp32_vectors, export_home, monkeypatch
):
    encoder = load_encoder("minilm", backend=backend, calibration=SENTENCES)
    vectors = encoder.encode(SENTENCES)
    assert cosines(vectors, fp32_vectors).mean() >= 0.99
    assert encoder.fingerprint != minilm.fingerprint
    assert encoder.spec == {"name_or_path": "minilm", "backend": backend}  # no texts in what a cache records
    # A second load reuses the export (exporting again would fail here) and has the same fingerprint.
    import embedcache.encoders.runtimes.export

    monkeypatch.setattr(embedcache.encoders.runtimes.export, "_export_onnx", lambda *a: pytest.fail("exported twice"))
    again = load_encoder("minilm", backend=backend)
    assert again.fingerprint == encoder.fingerprint
    if backend == "onnx-int8":  # activation scales are set per batch: a text's vector moves a little with its batch
        assert cosines(again.encode(SENTENCES[:5]), vectors[:5]).min() >= 0.97
    else:
        assert np.allclose(again.encode(SENTENCES[:5]), vectors[:5], atol=2e-5)
    weights = encoder.describe()["weights_sha256"]  # other tests export other models into the same home
    mine = [
        d for d in export_home.glob(f"{backend}-*") if json.loads((d / "export.json").read_text())["source"] == weights
    ]
    assert len(mine) == 1


def test_int8_calibration_comes_from_the_caller(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDCACHE_HOME", str(tmp_path))  # nothing exported yet
    with pytest.raises(ValueError, match="calibrated on your own texts"):
        load_encoder("minilm", backend="openvino-int8")


@pytest.mark.slow
@pytest.mark.export
def test_auto_picks_a_backend_close_to_fp32_and_records_it(minilm, fp32_vectors, export_home, monkeypatch):
    encoder = load_encoder("minilm", backend="auto", calibration=SENTENCES)
    choice = encoder.choice
    assert (encoder.backend, encoder.precision) == (choice["backend"], choice["precision"])
    assert encoder.spec == {"name_or_path": "minilm", "backend": choice["backend"], "precision": choice["precision"]}
    measured = {(m["backend"], m["precision"]): m for m in choice["measured"]}
    assert {("torch", "fp32"), ("onnx", "fp32"), ("openvino", "fp32"), ("openvino-int8", "fp32")} <= set(measured)
    assert ("onnx-int8", "fp32") not in measured  # its vectors depend on the batch
    winner = measured[(choice["backend"], choice["precision"])]
    assert winner["mean_cosine"] >= 0.99
    assert all(m["texts_per_s"] <= winner["texts_per_s"] for m in measured.values() if m["mean_cosine"] >= 0.99)
    assert cosines(encoder.encode(SENTENCES), fp32_vectors).mean() >= 0.99
    # Recorded for this machine: the next auto load measures nothing.
    import embedcache.encoders.runtimes.auto

    monkeypatch.setattr(embedcache.encoders.runtimes.auto, "_measure", lambda *a: pytest.fail("measured again"))
    again = load_encoder("minilm", backend="auto")
    assert again.fingerprint == encoder.fingerprint
    assert list((export_home.parent / "auto").glob("*.json"))


def test_precompute_records_the_backend_and_refuses_to_mix_it_with_another(tmp_path, capsys):
    data = tmp_path / "texts.csv"
    data.write_text("text\n" + "\n".join(f'"{s}"' for s in SENTENCES[:30]) + "\n")
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "precompute",
                str(data),
                "--cache",
                str(cache),
                "--text-col",
                "text",
                "--backend",
                "onnx-int8",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backend"].startswith("onnx-int8 (int8")
    assert EmbeddingCache(cache).info()["backend"] == "onnx-int8 (int8 weights, fp32 float operations)"
    assert main(["info", str(cache)]) == 0
    assert "onnx-int8 (int8 weights, fp32 float operations)" in capsys.readouterr().out
    # A rerun without --backend keeps the cache's own; the exact path is another encoder, refused.
    more = tmp_path / "more.csv"
    more.write_text("text\n" + "\n".join(f'"{s}"' for s in SENTENCES[30:40]) + "\n")
    assert main(["precompute", str(more), "--cache", str(cache), "--text-col", "text", "--quiet"]) == 0
    assert len(EmbeddingCache(cache)) == 40
    assert (
        main(
            [
                "precompute",
                str(data),
                str(more),
                "--cache",
                str(cache),
                "--text-col",
                "text",
                "--quiet",
                "--backend",
                "torch",
            ]
        )
        != 0
    )
    assert "fingerprint" in capsys.readouterr().err
    assert len(EmbeddingCache(cache)) == 40
