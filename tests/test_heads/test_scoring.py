"""Scoring plain Python data in one line, and prediction intervals that hold their coverage."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import HashEncoder

from embedcache import EmbeddingCache, ParameterError
from heads import HeadModel
from heads.cli import main

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "music",
    "paper",
    "garden",
    "window",
    "forest",
    "engine",
    "coffee",
    "bridge",
]


def pairs(n, seed):
    rng = np.random.default_rng(seed)
    a = [" ".join(rng.choice(WORDS, 3)) for _ in range(n)]
    b = [" ".join(rng.choice(WORDS, 3)) for _ in range(n)]
    return pd.DataFrame({"a": a, "b": b, "score": [len(set(x.split()) & set(y.split())) for x, y in zip(a, b)]})


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny_bert):
    """A frozen ridge head on pairs, saved; the cache built with the tiny BERT (its directory is in the config)."""
    root = tmp_path_factory.mktemp("scoring")
    cache = EmbeddingCache(root / "cache", tiny_bert)
    HeadModel(head="ridge").fit(pairs(200, 0), "score", cache=cache, text_col="a", pair_col="b", progress=False).save(
        root / "m"
    )
    return root / "m", cache


def test_texts_in_scores_out_without_a_cache(saved):
    directory, cache = saved
    model = HeadModel.load(directory)
    dev, before = pairs(12, 1), len(cache)
    expected = model.predict(dev, cache)
    plain = model.predict(list(zip(dev.a, dev.b)))  # the recorded encoder is loaded on first use
    np.testing.assert_allclose(plain, expected, atol=1e-2)  # the cache keeps float16: about 3 significant digits
    as_dicts = model.predict([{"text": a, "pair": b} for a, b in zip(dev.a, dev.b)])
    by_column = model.predict([{"a": a, "b": b} for a, b in zip(dev.a, dev.b)])
    np.testing.assert_array_equal(as_dicts, plain)
    np.testing.assert_array_equal(by_column, plain)
    assert model.predict([(dev.a[0], dev.b[0])]).shape == (1,)
    assert len(EmbeddingCache(cache.path)) == before  # texts missing from the cache were encoded, not stored


def test_a_single_text_and_conditions(tmp_path, tiny_bert):
    rng = np.random.default_rng(2)
    rows = pd.DataFrame(
        {"response": [" ".join(rng.choice(WORDS, 4)) for _ in range(120)], "metric": rng.choice(["harm", "help"], 120)}
    )
    rows["score"] = [float(("apple" in r) + 2 * (m == "harm")) for r, m in zip(rows.response, rows.metric)]
    cache = EmbeddingCache(tmp_path / "c", tiny_bert)
    model = HeadModel(head="ridge").fit(
        rows, "score", cache=cache, text_col="response", condition_col="metric", progress=False
    )
    one = model.predict("apple river stone cloud", conditions=["harm"])
    assert isinstance(one, float)  # one text, one label: a number, as sentence-transformers and SetFit give
    assert one == pytest.approx(model.predict(["apple river stone cloud"], conditions=["harm"], squeeze=False)[0, 0])
    np.testing.assert_allclose(
        model.predict(rows.response.tolist()[:10], conditions=rows.metric.tolist()[:10]),
        model.predict(rows.head(10), cache),
        atol=1e-2,
    )  # float16 in the cache
    with pytest.raises(ParameterError, match="conditions has 2 values for 1 texts"):
        model.predict("apple", conditions=["harm", "help"])
    with pytest.raises(ParameterError, match=r"data\[1\]: expected a text, a tuple or a dict, got int"):
        model.predict(["apple", 3], conditions=["harm", "help"])


def linear_rows(n, seed, dim=16):
    """Texts whose label is a fixed linear function of their hash vector plus Gaussian noise (sd 0.5)."""
    encoder, rng = HashEncoder(dim=dim), np.random.default_rng(seed)
    texts = [f"row {seed} {i}" for i in range(n)]
    w = np.random.default_rng(99).standard_normal(dim)
    return pd.DataFrame({"text": texts, "y": encoder.encode(texts) @ w + rng.normal(0, 0.5, n)})


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_intervals_cover_their_share_of_held_out_rows(tmp_path, coverage):
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=16))
    model = HeadModel(head="ridge", val_fraction=0.3).fit(linear_rows(3000, 0), "y", cache=cache, progress=False)
    test = linear_rows(4000, 1)
    scores, lower, upper = model.predict(test, cache, interval=coverage)
    inside = ((test.y.to_numpy() >= lower) & (test.y.to_numpy() <= upper)).mean()
    assert abs(inside - coverage) < 0.03
    assert np.all(lower <= scores) and np.all(scores <= upper)
    # the width is that of the noise's central interval: 2 * 1.28 * 0.5 at 0.8, 2 * 1.64 * 0.5 at 0.9
    assert np.mean(upper - lower) == pytest.approx({0.8: 1.28, 0.9: 1.64}[coverage], rel=0.1)


def test_predict_and_evaluate_commands_give_intervals(tmp_path, capsys):
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=16))
    for name, rows in (("train", linear_rows(2000, 0)), ("test", linear_rows(2000, 1))):
        rows.to_csv(tmp_path / f"{name}.csv", index=False)
        cache.add(rows.text.tolist(), progress=False)  # as embedcache precompute would
    common = ["--cache", str(cache.path)]
    assert (
        main(
            [
                "train",
                *common,
                "--data",
                str(tmp_path / "train.csv"),
                "--label-col",
                "y",
                "--head",
                "ridge",
                "--val-fraction",
                "0.3",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "predict",
                *common,
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(tmp_path / "test.csv"),
                "--interval",
                "0.9",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    out = pd.read_csv(tmp_path / "p.csv")
    assert list(out.columns) == ["id", "score", "lower", "upper"] and (out.lower <= out.score).all()
    assert (
        main(
            [
                "evaluate",
                *common,
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(tmp_path / "test.csv"),
                "--interval",
                "0.9",
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    report = json.loads(printed[-1])["interval"]
    assert abs(report["coverage"] - 0.9) < 0.03 and printed[-2].startswith("0.9 intervals: coverage")
    assert report["mean_width"] == pytest.approx((out.upper - out.lower).mean())


def test_an_interval_needs_validation_residuals(tmp_path):
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=16))
    model = HeadModel(head="ridge").fit(linear_rows(100, 0), "y", cache=cache, progress=False)
    with pytest.raises(ParameterError, match="interval must be a finite number > 0 and < 1"):
        model.predict(linear_rows(5, 1), cache, interval=1.5)
    with pytest.raises(ParameterError, match="10 validation rows cannot give a 0.99 interval"):
        model.predict(linear_rows(5, 1), cache, interval=0.99)


def test_fit_on_plain_texts_and_labels_in_memory_or_through_a_new_cache(tmp_path, tiny_bert):
    data = pairs(150, 3)
    texts, labels = list(zip(data.a, data.b)), data.score.to_numpy()
    in_memory = HeadModel(head="ridge").fit(texts, labels, encoder=tiny_bert)
    assert in_memory.encoder_["fingerprint"] == tiny_bert.fingerprint and in_memory.columns_["pair"] == "pair"
    through = HeadModel(head="ridge").fit(texts, labels, cache=tmp_path / "new-cache", encoder=tiny_bert)
    built = EmbeddingCache(tmp_path / "new-cache")  # fit built and filled it
    assert built.fingerprint == tiny_bert.fingerprint and built.contains(data.a.tolist()).all()
    dev = pairs(10, 4)
    np.testing.assert_allclose(
        through.predict(list(zip(dev.a, dev.b))), in_memory.predict(list(zip(dev.a, dev.b))), atol=1e-2
    )  # the cache keeps float16
    conditioned = HeadModel(head="ridge").fit(
        data.a.tolist(), np.stack([labels, -labels], axis=1), conditions=["harm", "help"] * 75, encoder=tiny_bert
    )
    assert conditioned.labels_ == ["score_0", "score_1"]
    assert conditioned.predict("apple", conditions=["harm"]).shape == (2,)  # one text: a score per label
    assert conditioned.predict(["apple", "river"], conditions=["harm", "help"]).shape == (2, 2)
    scores, lower, upper = conditioned.predict(["apple"] * 3, conditions=["harm"] * 3, interval=0.9)
    assert scores.shape == lower.shape == upper.shape == (3, 2)
    assert conditioned.predict("apple", conditions=["harm"], squeeze=False).shape == (1, 2)
    with pytest.raises(ParameterError, match=r"labels has shape \(3,\) for 150 texts"):
        HeadModel().fit(texts, [1, 2, 3], encoder=tiny_bert)


def test_evaluate_reports_metrics_per_group(tmp_path, capsys):
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=16))
    train, test = linear_rows(600, 0), linear_rows(300, 1)
    test = test.assign(lang=["hi", "bn", "en"] * 100, y=test.y + np.tile([0.0, 3.0, 0.0], 100))  # bn rows are off
    for name, rows in (("train", train), ("test", test)):
        rows.to_csv(tmp_path / f"{name}.csv", index=False)
        cache.add(rows.text.tolist(), progress=False)
    assert (
        main(
            [
                "train",
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "train.csv"),
                "--label-col",
                "y",
                "--head",
                "ridge",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "m"),
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "test.csv"),
                "--group-col",
                "lang",
                "--plots",
                str(tmp_path / "plots"),
                "--json",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out.strip().splitlines()
    groups = json.loads(printed[-1])["per_group"]
    assert list(groups) == ["hi", "bn", "en"] and all(groups[g]["y"]["n"] == 100 for g in groups)
    assert groups["bn"]["y"]["rmse"] > 2.5 and groups["hi"]["y"]["rmse"] < 1  # the shifted group stands out
    assert any(line.startswith("  lang=bn: n=100") for line in printed)
    assert (tmp_path / "plots" / "per_group.png").read_bytes().startswith(b"\x89PNG")
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "m"),
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "test.csv"),
                "--group-col",
                "language",
            ]
        )
        == 1
    )
    assert "no column 'language'" in capsys.readouterr().err


def test_one_argument_order_data_first_and_the_old_order_still_works_with_a_warning(tmp_path):
    from heads.model import ArgumentOrderWarning

    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=16))
    train, test = linear_rows(300, 0), linear_rows(50, 1)
    model = HeadModel(head="ridge").fit(train, "y", cache=cache, progress=False)
    with pytest.warns(ArgumentOrderWarning, match=r"fit\(table, label_cols, cache=cache\)"):
        old = HeadModel(head="ridge").fit(cache, train, "y", progress=False)
    np.testing.assert_array_equal(old.predict(test, cache=cache), model.predict(test, cache=cache))
    for method in ("predict", "predict_table", "evaluate"):
        new_result = getattr(model, method)(test, cache=cache)
        with pytest.warns(ArgumentOrderWarning, match=rf"{method}\(data, cache=cache\)"):
            old_result = getattr(model, method)(cache, test)
        if method == "evaluate":
            new_result, old_result = new_result[0], old_result[0]
        if method == "predict_table":
            pd.testing.assert_frame_equal(new_result, old_result)
        elif method == "evaluate":
            assert new_result == old_result
        else:
            np.testing.assert_array_equal(new_result, old_result)
