"""Several encoders in one head: the vectors of several caches side by side, every encoder recorded, each cache
checked by fingerprint in its place, texts a cache lacks encoded by that cache's encoder."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import TEST, TRAIN, make_tiny_bert, one_line_error, run

from embedcache import EmbeddingCache, FingerprintMismatchError, load_encoder
from heads import HeadModel
from heads.cli import main


@pytest.fixture(scope="module")
def two_caches(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("joined")
    other = load_encoder(str(make_tiny_bert(root / "other-bert", seed=1)))
    a, b = EmbeddingCache(root / "a", tiny_bert), EmbeddingCache(root / "b", other)
    for cache in (a, b):
        cache.add(TRAIN.text.tolist() + TEST.text.tolist())
    return a, b


def test_a_head_reads_two_caches_side_by_side_and_refuses_them_swapped(two_caches, tmp_path):
    a, b = two_caches
    model = HeadModel(head="ridge").fit(TRAIN, "food", cache=[a, b], progress=False)
    assert model.dim_ == a.dim + b.dim
    assert [e["fingerprint"] for e in model.encoders_] == [a.fingerprint, b.fingerprint]
    model.save(tmp_path / "m")
    assert len(json.loads((tmp_path / "m" / "config.json").read_text())["encoders"]) == 2
    loaded = HeadModel.load(tmp_path / "m")
    pred = loaded.predict(TEST, cache=[a, b])
    np.testing.assert_array_equal(pred, model.predict(TEST, cache=[a, b]))
    # no caches, or one: the rest is encoded by the recorded encoders (not rounded to float16 as stored)
    np.testing.assert_allclose(loaded.predict(TEST), pred, atol=2e-2)
    np.testing.assert_allclose(loaded.predict(TEST, cache=[a]), pred, atol=2e-2)
    with pytest.raises(FingerprintMismatchError, match=f"cache {b.path} holds encoder"):
        loaded.predict(TEST, cache=[b, a])


def test_the_commands_take_cache_twice(two_caches, tmp_path, capsys):
    a, b = two_caches
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    TEST.to_csv(tmp_path / "test.csv", index=False)
    both = ["--cache", a.path, "--cache", b.path]
    code, _, err = run(
        main,
        capsys,
        "train",
        "--data",
        tmp_path / "train.csv",
        "--label-col",
        "food",
        "--head",
        "ridge",
        "--out",
        tmp_path / "m",
        "--quiet",
        *both,
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
        "--quiet",
        *both,
    )
    assert code == 0, err
    expected = HeadModel.load(tmp_path / "m").predict(TEST, cache=[a, b])
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p.csv").score, expected, atol=1e-6)
    code, _, err = run(
        main,
        capsys,
        "evaluate",
        "--model",
        tmp_path / "m",
        "--data",
        tmp_path / "test.csv",
        "--quiet",
        "--cache",
        b.path,
        "--cache",
        a.path,
    )
    one_line_error(code, err, f"cache {b.path} holds encoder")
