"""Heads on layer vectors (``--features layers``): the neural heads learn a mix of the layers, ridge reads them
standardised side by side; saved, loaded, predicted from the cache or the recorded encoder, served."""

import json

import numpy as np
import pytest
from helpers import FOOD, SPORT, TEST, TRAIN, one_line_error, run, similarity_pairs

from embedcache import EmbeddingCache, ParameterError
from heads import HeadModel
from heads.cli import main


@pytest.fixture(scope="module")
def layer_cache(tmp_path_factory, minilm):
    return EmbeddingCache(tmp_path_factory.mktemp("layers") / "cache", minilm, layers="last:3")


@pytest.mark.parametrize("head", ["concat", "ridge"])
def test_a_head_on_layer_vectors_learns_saves_loads_and_predicts_with_or_without_its_cache(layer_cache, tmp_path, head):
    model = HeadModel(head=head, features="layers", label_range=(0, 1)).fit(TRAIN, "food", cache=layer_cache)
    pred = model.predict(TEST, cache=layer_cache)
    assert ((pred > 0.5) == (TEST.food > 0.5)).mean() >= 0.9  # words never seen in training
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["layers"] == [4, 5, 6] and config["params"]["features"] == "layers"
    loaded = HeadModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(TEST, cache=layer_cache), pred)
    # without a cache the recorded encoder gives the layer vectors (not rounded to float16 as stored)
    np.testing.assert_allclose(loaded.predict(TEST), pred, atol=2e-2)
    if head == "concat":
        weights = config["layer_weights"]
        assert len(weights) == 3 and abs(sum(weights) - 1) < 1e-3 and weights == model.layer_weights_


def test_a_two_tower_head_on_layer_vectors_scores_pairs(layer_cache):
    model = HeadModel(head="two-tower", features="layers").fit(
        similarity_pairs(FOOD[:7] + SPORT[:7]), "sim", cache=layer_cache, text_col="a", pair_col="b", progress=False
    )
    metrics, _, _, _ = model.evaluate(similarity_pairs(FOOD[7:] + SPORT[7:]), cache=layer_cache)
    assert metrics["spearman"] > 0.7


def test_layers_need_a_cache_that_has_them_and_the_same_ones(layer_cache, minilm, tmp_path, capsys):
    plain = EmbeddingCache(tmp_path / "plain", minilm)
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    args = ["train", "--data", tmp_path / "train.csv", "--label-col", "food", "--features", "layers", "--quiet"]
    code, _, err = run(main, capsys, *args, "--cache", plain.path, "--out", tmp_path / "m0")
    one_line_error(code, err, "holds none: build a cache with them", "--layers all")
    assert not (tmp_path / "m0").exists()
    code, out, _ = run(main, capsys, *args, "--cache", layer_cache.path, "--out", tmp_path / "m1")
    assert code == 0 and "layer weights (layer: weight) 4: " in out
    other = EmbeddingCache(tmp_path / "other", minilm, layers="all")
    with pytest.raises(ParameterError, match="reads the layer vectors of layers 4, 5, 6, but cache .* holds layers 0"):
        HeadModel.load(tmp_path / "m1").predict(TEST, cache=other)
    with pytest.raises(ParameterError, match="fine-tuning trains the encoder through its sentence vectors"):
        from heads.finetuning.finetune import finetune

        finetune(TRAIN, "food", {"text": "text"}, tmp_path / "ft", features="layers")


def test_a_model_saved_before_features_existed_still_loads(layer_cache, tmp_path):
    model = HeadModel(head="ridge").fit(TRAIN, "food", cache=layer_cache, progress=False)
    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["params"]["features"], config["layers"], config["layer_weights"]  # as an older version wrote it
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    loaded = HeadModel.load(tmp_path / "m")
    assert loaded.config.features == "final"
    np.testing.assert_array_equal(loaded.predict(TEST, cache=layer_cache), model.predict(TEST, cache=layer_cache))


def test_a_head_search_ranks_every_head_on_every_feature_set_and_keeps_the_best(layer_cache, tmp_path, capsys):
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    args = ["train", "--data", tmp_path / "train.csv", "--label-col", "food", "--head", "search", "--quiet"]
    code, out, _ = run(main, capsys, *args, "--cache", layer_cache.path, "--out", tmp_path / "m")
    assert code == 0 and "head search, by validation Pearson:" in out
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    board = config["leaderboard"]
    assert {(r["head"], r["features"]) for r in board} == {
        (h, f) for h in ("concat", "ridge") for f in ("final", "layers")
    }  # two-tower needs a pair, cross the encoder
    assert [r["pearson"] for r in board] == sorted((r["pearson"] for r in board), reverse=True)
    best = board[0]
    assert (config["head"], config["params"]["features"]) == (best["head"], best["features"])
    assert config["validation"]["pearson"] == best["pearson"]
    loaded = HeadModel.load(tmp_path / "m")
    assert loaded.leaderboard_ == board
    again = HeadModel(head=best["head"], features=best["features"]).fit(TRAIN, "food", cache=layer_cache)
    np.testing.assert_array_equal(loaded.predict(TEST, cache=layer_cache), again.predict(TEST, cache=layer_cache))


def test_a_served_model_on_layer_vectors_scores_as_predict_does(layer_cache, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from heads.serving.serve import create_app

    model = HeadModel(head="concat", features="layers", epochs=5).fit(TRAIN, "food", cache=layer_cache)
    model.save(tmp_path / "m")
    texts = TEST.text.tolist()[:6]
    with TestClient(create_app(tmp_path / "m", cache=layer_cache.path)) as client:
        reply = client.post("/score", json={"items": [{"text": t} for t in texts]})
        assert reply.status_code == 200, reply.text
        served = np.asarray(reply.json()["scores"])[:, 0]
    np.testing.assert_allclose(served, model.predict(texts, cache=layer_cache), atol=1e-6)
