"""Ensembles (``ensemble=K``): K heads on cross-fitted folds, their mean, their spread, and intervals normalised
by it that keep their coverage and narrow where the members agree."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import HashEncoder

from embedcache import EmbeddingCache, ParameterError
from heads import HeadModel
from heads.ensemble import folds


def synthetic(n: int, seed: int, encoder) -> pd.DataFrame:
    """Texts whose (hash) vectors determine a nonlinear target, with noise that depends on the vector."""
    rng = np.random.default_rng(seed)
    texts = [f"row {seed}-{i}" for i in range(n)]
    X = encoder.encode(texts)
    noise = rng.standard_normal(n) * (0.2 + 0.4 * (X[:, 2] > 0))
    y = X[:, 0] + 0.5 * X[:, 1] ** 2 + noise
    return pd.DataFrame({"text": texts, "y": y, "noise": np.where(X[:, 2] > 0, "high", "low")})


def test_folds_keep_each_text_in_one_fold_and_cover_every_row_once():
    groups = np.repeat(np.arange(50), 3)  # each text three times
    parts = folds(groups, 5, seed=0)
    assert sorted(np.concatenate(parts).tolist()) == list(range(150))
    assert all(len(set(groups[p])) * 3 == len(p) for p in parts) and len({len(p) for p in parts}) == 1


def test_an_ensemble_keeps_coverage_narrows_where_members_agree_and_saves(tmp_path):
    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path / "c", encoder)
    train, val, test = synthetic(2000, 0, encoder), synthetic(1000, 1, encoder), synthetic(4000, 2, encoder)
    model = HeadModel(head="ridge", ensemble=4, seed=3).fit(train, "y", cache=cache, val_data=val, progress=False)
    scores, lower, upper, spread = model.predict(test, cache=cache, interval=0.9, std=True)
    assert scores.shape == spread.shape == (4000,) and (spread > 0).all()
    width, y = upper - lower, test.y.to_numpy()
    assert abs(((y >= lower) & (y <= upper)).mean() - 0.9) <= 0.03  # split conformal on rows no member saw
    agree = spread < np.median(spread)
    assert width[agree].mean() < width[~agree].mean()  # narrower where the members agree
    metrics = model.evaluate(test, cache=cache, interval=0.9, group_col="noise")[0]
    assert abs(metrics["interval_constant_width"]["coverage"] - 0.9) <= 0.03  # one width per label, compared
    per_group = metrics["interval_per_group"]
    share = (test.noise == "high").mean()
    assert set(per_group) == {"high", "low"}
    expected = share * per_group["high"]["coverage"] + (1 - share) * per_group["low"]["coverage"]
    assert expected == pytest.approx(metrics["interval"]["coverage"])

    model.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["ensemble"] == 4 and len(config["head_config"]["members"]) == 4
    loaded = HeadModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(test, cache=cache, std=True)[1], spread)


def test_a_neural_ensemble_trains_each_member_on_its_folds_and_loads(tmp_path):
    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path / "c", encoder)
    train = synthetic(150, 0, encoder)
    model = HeadModel(head="concat", ensemble=3, epochs=2, width=16).fit(train, "y", cache=cache, progress=False)
    assert {row["member"] for row in model.history_} == {0, 1, 2}
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(
        HeadModel.load(tmp_path / "m").predict(train, cache=cache), model.predict(train, cache=cache)
    )


def test_std_needs_an_ensemble(tmp_path):
    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path / "c", encoder)
    model = HeadModel(head="ridge").fit(synthetic(200, 0, encoder), "y", cache=cache, progress=False)
    with pytest.raises(ParameterError, match="spread of an ensemble's members: train with ensemble=K"):
        model.predict(["a text"], cache=cache, std=True)


def test_the_commands_train_an_ensemble_write_its_spread_and_compare_its_intervals(tmp_path, capsys):
    from helpers import run

    from heads.cli import main

    encoder = HashEncoder()
    cache = EmbeddingCache(tmp_path / "c", encoder)
    for name, rows, seed in (("train", 600, 0), ("test", 300, 1)):
        table = synthetic(rows, seed, encoder)
        cache.add(table.text)  # the commands read the vectors of this custom encoder from its cache
        table.to_csv(tmp_path / f"{name}.csv", index=False)
    common = ["--cache", cache.path, "--quiet"]
    code, _, err = run(
        main,
        capsys,
        "train",
        "--data",
        tmp_path / "train.csv",
        "--label-col",
        "y",
        "--head",
        "ridge",
        "--ensemble",
        "3",
        "--out",
        tmp_path / "m",
        *common,
    )
    assert code == 0, err
    code, _, err = run(
        main,
        capsys,
        "predict",
        "--model",
        tmp_path / "m",
        "--data",
        tmp_path / "test.csv",
        "--out",
        tmp_path / "p.csv",
        "--std",
        "--interval",
        "0.8",
        *common,
    )
    scored = pd.read_csv(tmp_path / "p.csv")
    assert code == 0 and list(scored.columns) == ["id", "score", "lower", "upper", "std"] and (scored["std"] > 0).all()
    code, out, _ = run(
        main,
        capsys,
        "evaluate",
        "--model",
        tmp_path / "m",
        "--data",
        tmp_path / "test.csv",
        "--interval",
        "0.8",
        "--group-col",
        "noise",
        *common,
    )
    assert code == 0 and "0.8 intervals: coverage" in out and "one width per label instead: coverage" in out
    assert "noise=high: coverage" in out and "noise=low: coverage" in out
