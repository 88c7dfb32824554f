"""Head types as units: a new type is one class and one registration; models saved before the units still load."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import TEST_DATA, HashEncoder

from embedcache import EmbeddingCache
from heads import HEAD_TYPES, HeadModel, TrainConfig
from heads.cli import main

SAVED = TEST_DATA / "saved-0.1.0"

# A head with no torch module at all: the mean label of the k nearest training rows.
NEAREST_HEAD = '''
import numpy as np
import torch

from heads.head_types import register_head


class NearestHead:
    """The mean (standardised) label of the k training rows nearest by cosine (k=1: the nearest row's label)."""

    joint = False

    def __init__(self, dim, sides=("text",), n_outputs=1, k=1, n_rows=None):
        self.dim, self.sides, self.n_outputs, self.k, self.n_rows = dim, tuple(sides), n_outputs, k, n_rows

    @classmethod
    def check_sides(cls, sides):
        if list(sides) != ["text"]:
            raise ValueError("the nearest head reads one text")

    @classmethod
    def build(cls, dim, sides, n_outputs, settings):
        return cls(dim, sides, n_outputs)

    def config(self):
        return {"dim": self.dim, "sides": list(self.sides), "n_outputs": self.n_outputs, "k": self.k, "n_rows": self.n_rows}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def state(self):
        return {"vectors": torch.from_numpy(self.vectors), "labels": torch.from_numpy(self.labels)}

    def load_state(self, tensors):
        self.vectors, self.labels = tensors["vectors"].numpy(), tensors["labels"].numpy()
        return self

    def state_shapes(self):
        return {"vectors": (self.n_rows, self.dim), "labels": (self.n_rows, self.n_outputs)}

    def fit(self, train, y, val, y_val, settings, *, scale, sample_weight=None, device="cpu", progress=True):
        v = train.tables["text"][train.index["text"]].astype(np.float32)
        self.vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        self.labels, self.n_rows = np.nan_to_num(y).astype(np.float32), len(v)
        return []

    def predict(self, inputs):
        v = inputs.tables["text"][inputs.index["text"]]
        cosine = (v / np.linalg.norm(v, axis=1, keepdims=True)) @ self.vectors.T
        nearest = np.argsort(-cosine, axis=1, kind="stable")[:, : self.k]
        return self.labels[nearest].mean(axis=1).astype(np.float64)


register_head("nearest", NearestHead)
'''


@pytest.fixture
def nearest_head(tmp_path):
    path = tmp_path / "nearest_head.py"
    path.write_text(NEAREST_HEAD)
    yield path
    HEAD_TYPES.pop("nearest", None)


def scored_words(n=40, seed=0):
    rng = np.random.default_rng(seed)
    words = [f"word{i}" for i in range(n)]
    return pd.DataFrame({"text": [f"{w} and {w}" for w in words], "score": rng.random(n).round(3)})


def test_a_new_head_type_trains_saves_loads_and_predicts_through_the_cli(nearest_head, tmp_path, capsys):
    data = scored_words()
    data.to_csv(tmp_path / "train.csv", index=False)
    EmbeddingCache(tmp_path / "c", HashEncoder(dim=8)).add(data.text.tolist(), progress=False)
    common = ["--cache", str(tmp_path / "c"), "--data", str(tmp_path / "train.csv"), "--import", str(nearest_head)]
    assert (
        main(
            [
                "train",
                *common,
                "--label-col",
                "score",
                "--head",
                "nearest",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
                "--json",
            ]
        )
        == 0
    ), capsys.readouterr().err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["head"] == "nearest" and config["head_config"]["k"] == 1
    assert main(["predict", *common, "--model", str(tmp_path / "m"), "--out", str(tmp_path / "p.csv")]) == 0
    pred = pd.read_csv(tmp_path / "p.csv")
    # a training text is its own nearest row: its label comes back; only the 4 held-out rows can differ
    assert len(pred) == len(data) and np.isclose(pred.score, data.score, atol=1e-6).sum() >= len(data) - 4
    loaded = HeadModel.load(tmp_path / "m")
    assert type(loaded.unit_).__name__ == "NearestHead" and loaded.unit_.n_rows == config["head_config"]["n_rows"]
    np.testing.assert_allclose(loaded.predict(data, cache=EmbeddingCache(tmp_path / "c")), pred.score)


def test_an_unknown_head_type_in_a_saved_model_is_a_clear_error(nearest_head, tmp_path, capsys):
    data = scored_words()
    data.to_csv(tmp_path / "train.csv", index=False)
    EmbeddingCache(tmp_path / "c", HashEncoder(dim=8)).add(data.text.tolist(), progress=False)
    assert (
        main(
            [
                "train",
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "train.csv"),
                "--import",
                str(nearest_head),
                "--label-col",
                "score",
                "--head",
                "nearest",
                "--out",
                str(tmp_path / "m"),
                "--quiet",
            ]
        )
        == 0
    )
    HEAD_TYPES.pop("nearest")  # a new process that did not --import the module
    code = main(
        [
            "predict",
            "--model",
            str(tmp_path / "m"),
            "--cache",
            str(tmp_path / "c"),
            "--data",
            str(tmp_path / "train.csv"),
            "--out",
            str(tmp_path / "p.csv"),
        ]
    )
    assert code == 1 and "field 'head' must be one of concat, two-tower, ridge, cross" in capsys.readouterr().err


@pytest.mark.parametrize("head", ["concat", "two-tower", "ridge"])
def test_models_saved_before_the_head_units_still_load_and_predict_the_same(head, tmp_path):
    """Saved by embedcache 0.1.0 (commit 0f47ad6) on a HashEncoder cache; expected.txt holds its predictions then."""
    config = json.loads((SAVED / head / "config.json").read_text())
    assert "head_config" not in config
    texts = [f"text number {i}" for i in range(40)] + [f"other text {i}" for i in range(40)]
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=8))
    cache.add(texts, progress=False)
    model = HeadModel.load(SAVED / head)
    assert model.head_ == head and model.config == TrainConfig.from_dict(config["params"])
    data = pd.DataFrame({"text": texts[:5], "pair": texts[40:45]})
    np.testing.assert_allclose(model.predict(data, cache=cache), np.loadtxt(SAVED / head / "expected.txt"), rtol=1e-6)


def test_training_leaves_the_callers_random_state_alone(tmp_path):
    import torch

    data = scored_words()
    cache = EmbeddingCache(tmp_path / "c", HashEncoder(dim=8))
    torch.manual_seed(123)
    np.random.seed(123)
    expected_torch, expected_numpy = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    HeadModel(head="concat", epochs=2, seed=5).fit(data, "score", cache=cache, progress=False)
    np.testing.assert_array_equal(torch.rand(3), expected_torch)
    np.testing.assert_array_equal(np.random.rand(3), expected_numpy)


def test_settings_are_one_object_shared_by_the_model_the_estimator_and_the_flags():
    from heads import EmbeddingRegressor
    from heads.cli import _parser
    from heads.config import from_arguments

    args = _parser().parse_args(
        [
            "train",
            "--cache",
            "c",
            "--data",
            "d.csv",
            "--label-col",
            "y",
            "--out",
            "m",
            "--width",
            "32",
            "--no-shared",
            "--label-range",
            "0",
            "5",
            "--seed",
            "3",
        ]
    )
    config = from_arguments(TrainConfig, args)
    assert config == TrainConfig(width=32, shared=False, label_range=(0.0, 5.0), seed=3)
    assert HeadModel(config).params() == HeadModel(width=32, shared=False, label_range=(0, 5), seed=3).params()
    assert EmbeddingRegressor(width=32, random_state=3).train_config() == TrainConfig(head="concat", width=32, seed=3)


def test_plots_leave_pyplot_and_its_backend_alone(tmp_path):
    import matplotlib

    matplotlib.use("svg")  # a notebook's own choice
    import matplotlib.pyplot as plt

    from heads.metrics import report
    from heads.plots import write_plots

    y = np.linspace(0, 1, 30)[:, None]
    pred = y + np.random.default_rng(0).normal(0, 0.1, y.shape)
    written = write_plots(tmp_path, y, pred, ["score"], report(y, pred, ["score"], ["a", "b", "c"] * 10))
    assert [p.name for p in written] == ["pred_vs_true.png", "residuals.png", "per_condition.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    assert matplotlib.get_backend() == "svg" and plt.get_fignums() == []
