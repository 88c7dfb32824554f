"""Layer vectors in the cache: the means of chosen hidden states, stored beside each text's sentence vector from
the same forward pass, covered by checksums, parts, compaction and info; one layer set per cache."""

import json

import h5py
import numpy as np
import pytest
from helpers import min_cosine, one_line_error, run, transformers_layer_means

from embedcache import EmbeddingCache, ParameterError, compact, load_encoder
from embedcache.cli import main

TEXTS = [f"text {i} about {i % 7} things" for i in range(45)]


def test_minilm_layer_vectors_are_transformers_own_hidden_states_mean_pooled(minilm, tmp_path):
    texts = ["A short one.", "A much longer sentence with many more words in it than the first.", "x " * 40]
    cache = EmbeddingCache(tmp_path / "c", minilm, layers="all")
    stored = cache.encode(texts, features="layers")
    assert cache.layers == tuple(range(7)) and stored.shape == (3, 7, 384)
    assert min_cosine(stored, transformers_layer_means(minilm, texts)) >= 0.999
    np.testing.assert_array_equal(cache.get(texts), minilm.encode(texts).astype(np.float16))


def test_layer_vectors_survive_parts_and_compaction_and_info_counts_their_bytes(tiny_bert, tmp_path, capsys):
    top = EmbeddingCache(tmp_path / "c", tiny_bert, layers="last:2", shard_size=10)
    top.add(TEXTS[:25])
    EmbeddingCache(tmp_path / "c", tiny_bert, part="rank-1", shard_size=10).add(TEXTS[20:])
    before = EmbeddingCache(tmp_path / "c").get(TEXTS, features="layers")
    _, expected = tiny_bert.encode_layers(TEXTS, (1, 2))
    np.testing.assert_array_equal(before, expected.astype(np.float16))
    compact(tmp_path / "c", shard_size=100)
    after = EmbeddingCache(tmp_path / "c")
    assert after.parts == [] and after.verify() == []
    np.testing.assert_array_equal(after.get(TEXTS, features="layers"), before)
    code, out, _ = run(main, capsys, "info", tmp_path / "c")
    plain = EmbeddingCache(tmp_path / "plain", tiny_bert)
    plain.add(TEXTS)
    assert code == 0 and "layers         1,2" in out
    per_text = int(out.split("bytes_per_text")[1].split()[0])
    assert per_text >= plain.info()["bytes_per_text"] + 2 * 32 * 2  # two float16 layer vectors of dim 32 more


def test_a_flipped_byte_in_the_layer_vectors_is_found_by_verify(tiny_bert, tmp_path, capsys):
    EmbeddingCache(tmp_path / "c", tiny_bert, layers="all", shard_size=20).add(TEXTS)
    with h5py.File(tmp_path / "c" / "shard-000001.h5", "r+") as f:
        f["layers"][3, 1, 5] = f["layers"][3, 1, 5] + 1
    code, out, _ = run(main, capsys, "verify", tmp_path / "c")
    assert code == 1 and "shard-000001.h5: checksum mismatch" in out


@pytest.mark.parametrize("asked", ["all", "0", [1, 2]])
def test_a_cache_is_never_extended_with_another_layer_set(tiny_bert, tmp_path, capsys, asked):
    EmbeddingCache(tmp_path / "c", tiny_bert, layers="last:1").add(TEXTS[:5])
    before = (tmp_path / "c" / "manifest.json").read_text()
    with pytest.raises(ParameterError, match="stores layer vectors of layers 2, but layers=.* use another cache"):
        EmbeddingCache(tmp_path / "c", tiny_bert, layers=asked)
    (tmp_path / "t.csv").write_text("text\n" + "\n".join(TEXTS) + "\n")
    spec = asked if isinstance(asked, str) else ",".join(map(str, asked))
    code, _, err = run(
        main,
        capsys,
        "precompute",
        tmp_path / "t.csv",
        "--cache",
        tmp_path / "c",
        "--text-col",
        "text",
        "--model",
        tiny_bert.spec["name_or_path"],
        "--layers",
        spec,
        "--quiet",
    )
    one_line_error(code, err, "use another cache directory")
    assert (tmp_path / "c" / "manifest.json").read_text() == before
    # without --layers a writer follows the cache: every new text gets its layer vectors too
    assert EmbeddingCache(tmp_path / "c", tiny_bert).encode(TEXTS, features="layers").shape == (45, 1, 32)


def test_layers_that_an_encoder_cannot_give_are_one_clear_error(tiny_bert, hash_encoder, tmp_path):
    with pytest.raises(ParameterError, match="layer 9 does not exist: the encoder has 3 hidden states"):
        EmbeddingCache(tmp_path / "a", tiny_bert, layers="0,9")
    with pytest.raises(ParameterError, match="cannot give layer vectors: it is not a transformer"):
        EmbeddingCache(tmp_path / "b", hash_encoder, layers="all")
    with pytest.raises(ParameterError, match="layers must be 'all', 'last:K'"):
        EmbeddingCache(tmp_path / "c", tiny_bert, layers="every")
    EmbeddingCache(tmp_path / "d", tiny_bert).add(TEXTS[:3])
    with pytest.raises(ParameterError, match="stores sentence vectors only, no layer vectors: build a cache"):
        EmbeddingCache(tmp_path / "d").get(TEXTS[:3], features="layers")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.export
def test_an_exported_backend_refuses_layers_in_one_line(tiny_bert_dir, tmp_path):
    onnx = load_encoder(str(tiny_bert_dir), backend="onnx")
    with pytest.raises(ParameterError, match="backend 'onnx' runs an export that gives the sentence vector only"):
        EmbeddingCache(tmp_path / "c", onnx, layers="all")


def test_texts_not_cached_get_layer_vectors_rounded_as_if_stored(tiny_bert, tmp_path):
    cache = EmbeddingCache(tmp_path / "c", tiny_bert, layers="all")
    cache.add(TEXTS[:10])
    got = EmbeddingCache(tmp_path / "c").get(TEXTS[5:15], encode_missing=True, features="layers")
    cache.add(TEXTS[10:15])
    np.testing.assert_array_equal(got, cache.get(TEXTS[5:15], features="layers"))
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["format"] == "embedcache-2"


def test_a_lost_manifest_is_rebuilt_with_its_layers_from_the_shards(tiny_bert, tmp_path, capsys):
    cache = EmbeddingCache(tmp_path / "c", tiny_bert, layers="0,2", shard_size=20)
    cache.add(TEXTS)
    before = cache.get(TEXTS, features="layers")
    (tmp_path / "c" / "manifest.json").unlink()
    code, out, _ = run(main, capsys, "verify", tmp_path / "c", "--rebuild")
    rebuilt = EmbeddingCache(tmp_path / "c")
    assert code == 0 and rebuilt.layers == (0, 2) and rebuilt.verify() == []
    np.testing.assert_array_equal(rebuilt.get(TEXTS, features="layers"), before)
