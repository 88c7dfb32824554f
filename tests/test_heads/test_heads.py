import json
import textwrap

import numpy as np
import pandas as pd
import pytest
from helpers import FOOD, SPORT, TEST, TRAIN, similarity_pairs, topic_rows

from embedcache import EmbeddingCache, FingerprintMismatchError
from embedcache.inputs import InputError
from heads import HeadModel
from heads.cli import main


@pytest.fixture(scope="module")
def cache(tmp_path_factory, minilm):
    return EmbeddingCache(tmp_path_factory.mktemp("heads") / "cache", minilm)


@pytest.mark.parametrize("head", ["concat", "ridge"])
def test_one_text_to_score_generalises_to_unseen_words(cache, head):
    model = HeadModel(head=head, label_range=(0, 1)).fit(TRAIN, "food", cache=cache, progress=False)
    pred = model.predict(TEST, cache=cache)
    assert pred.min() >= 0 and pred.max() <= 1
    assert pred[TEST.food == 1].mean() > pred[TEST.food == 0].mean() + 0.4


def condition_rows(words_food, words_sport, conditions):
    rows = []
    for text, is_food in topic_rows(words_food, words_sport).itertuples(index=False):
        for cond, about_food in conditions:
            rows.append((text, cond, 10.0 if bool(is_food) == about_food else 0.0))
    return pd.DataFrame(rows, columns=["response", "metric", "score"])


@pytest.mark.parametrize("head", ["concat", "ridge", "two-tower"])
@pytest.mark.slow
def test_text_and_condition_to_score_with_an_unseen_condition(cache, head):
    train = condition_rows(FOOD[:7], SPORT[:7], [("talks about food", True), ("talks about sport", False)])
    model = HeadModel(head=head).fit(
        train, "score", cache=cache, text_col="response", condition_col="metric", progress=False
    )
    assert set(model.validation_["per_condition"]) == {"talks about food", "talks about sport"}
    test = condition_rows(FOOD[7:], SPORT[7:], [("talks about food", True), ("talks about sport", False)])
    metrics, _, _, _ = model.evaluate(test, cache=cache)
    assert metrics["spearman"] > 0.5
    unseen = model.predict(test.assign(metric="mentions something to eat"), cache=cache)
    assert unseen.shape == (len(test),) and np.isfinite(unseen).all()


@pytest.mark.parametrize("head", ["concat", "two-tower", "ridge"])
def test_pair_to_score(cache, head):
    model = HeadModel(head=head).fit(
        similarity_pairs(FOOD[:7] + SPORT[:7]), "sim", cache=cache, text_col="a", pair_col="b", progress=False
    )
    metrics, _, _, _ = model.evaluate(similarity_pairs(FOOD[7:] + SPORT[7:]), cache=cache)
    assert metrics["spearman"] > 0.7


def test_several_labels_with_missing_values_masked(cache):
    df = TRAIN.assign(sport=1 - TRAIN.food)
    df.loc[::3, "sport"] = np.nan  # a third of the second label is unknown
    model = HeadModel(epochs=20).fit(df, ["food", "sport"], cache=cache, progress=False)
    assert set(model.validation_["per_label"]) == {"food", "sport"}
    pred = model.predict(TEST, cache=cache)
    assert pred.shape == (len(TEST), 2)
    assert np.corrcoef(pred[:, 0], pred[:, 1])[0, 1] < -0.8


@pytest.mark.parametrize("head", ["concat", "two-tower", "ridge"])
def test_save_load_reproduces_predictions_exactly(cache, tmp_path, head):
    df = condition_rows(FOOD[:3], SPORT[:3], [("talks about food", True), ("talks about sport", False)])
    model = HeadModel(head=head, epochs=3).fit(
        df, "score", cache=cache, text_col="response", condition_col="metric", progress=False
    )
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["encoder"]["fingerprint"] == cache.fingerprint and config["validation"]["n"] > 0
    loaded = HeadModel.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.predict(df, cache=cache), model.predict(df, cache=cache))


def test_a_fixed_seed_gives_identical_models(cache):
    a = HeadModel(epochs=3, seed=7).fit(TRAIN, "food", cache=cache, progress=False).predict(TEST, cache=cache)
    b = HeadModel(epochs=3, seed=7).fit(TRAIN, "food", cache=cache, progress=False).predict(TEST, cache=cache)
    c = HeadModel(epochs=3, seed=8).fit(TRAIN, "food", cache=cache, progress=False).predict(TEST, cache=cache)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_validation_split_keeps_each_text_on_one_side(cache):
    df = condition_rows(FOOD[:5], SPORT[:5], [("food?", True), ("sport?", False), ("eating?", True)])
    model = HeadModel(epochs=1).fit(
        df, "score", cache=cache, text_col="response", condition_col="metric", progress=False
    )
    # every held-out text brings all 3 of its metrics: rows per condition are equal
    counts = {c: m["score"]["n"] for c, m in model.validation_["per_condition"].items()}
    assert len(set(counts.values())) == 1 and model.validation_["n"] == 3 * counts["food?"]


def test_a_model_refuses_a_cache_of_another_encoder(cache, tmp_path, tiny_bert):
    model = HeadModel(head="ridge").fit(TRAIN, "food", cache=cache, progress=False)
    other = EmbeddingCache(tmp_path / "other", tiny_bert)
    with pytest.raises(FingerprintMismatchError) as err:
        model.predict(TEST, cache=other)
    assert cache.fingerprint in str(err.value) and tiny_bert.fingerprint in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda df: df.assign(food=df.food.where(df.index != 4, np.nan)), "NaN or empty labels at rows 5 (1-based)"),
        (lambda df: df.assign(food=df.food.where(df.index != 2, np.inf)), "infinite labels at rows 3 (1-based)"),
        (
            lambda df: df.assign(food=df.food.astype(object).where(df.index != 1, "high")),
            "row 2, column 'food': expected a number, found 'high'",
        ),
        (lambda df: df.assign(food=1.0), "label 'food' is constant"),
        (lambda df: df.drop(columns="text"), "no column 'text'; available columns: food"),
        (lambda df: df.iloc[:0], "has no data rows"),
    ],
)
def test_bad_training_data_is_a_clear_error(cache, change, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HeadModel().fit(change(TRAIN), "food", cache=cache, progress=False)


def test_unknown_head_lists_the_choices():
    with pytest.raises(ValueError, match="unknown head 'mlp'; choose one of: auto, search, concat, two-tower, ridge"):
        HeadModel(head="mlp")


def test_cli_train_predict_evaluate_end_to_end(cache, tmp_path, capsys):
    train = condition_rows(FOOD[:7], SPORT[:7], [("talks about food", True), ("talks about sport", False)])
    test = condition_rows(FOOD[7:], SPORT[7:], [("talks about food", True), ("talks about sport", False)])
    train.to_csv(tmp_path / "train.csv", index=False)
    test.assign(id=[f"r{i}" for i in range(len(test))]).to_json(tmp_path / "test.jsonl", orient="records", lines=True)

    assert (
        main(
            [
                "train",
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "train.csv"),
                "--text-col",
                "response",
                "--condition-col",
                "metric",
                "--label-col",
                "score",
                "--label-range",
                "0",
                "10",
                "--out",
                str(tmp_path / "model"),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"n", "mse", "rmse", "mae", "pearson", "spearman", "r2"} <= set(summary)

    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "model"),
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "test.jsonl"),
                "--out",
                str(tmp_path / "preds.csv"),
                "--round",
                "2",
            ]
        )
        == 0
    )
    preds = pd.read_csv(tmp_path / "preds.csv")
    assert list(preds.columns) == ["id", "score"] and preds.id.tolist()[:2] == ["r0", "r1"]
    assert preds.score.between(0, 10).all() and (preds.score.round(2) == preds.score).all()

    capsys.readouterr()
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "model"),
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "test.jsonl"),
                "--plots",
                str(tmp_path / "plots"),
                "--json",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["n"] == len(test) and metrics["spearman"] > 0.5
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        "per_condition.png",
        "pred_vs_true.png",
        "residuals.png",
    ]


def test_cli_encodes_texts_missing_from_the_cache_with_its_own_encoder(tmp_path, capsys, minilm):
    from embedcache.cli import main as embedcache_main

    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    TEST.to_csv(tmp_path / "test.csv", index=False)
    assert (
        embedcache_main(
            ["precompute", str(tmp_path / "train.csv"), "--cache", str(tmp_path / "c"), "--text-col", "text", "--quiet"]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "train.csv"),
                "--label-col",
                "food",
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
                "predict",
                "--model",
                str(tmp_path / "m"),
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "test.csv"),
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    assert not EmbeddingCache(tmp_path / "c").contains(TEST.text.tolist()).any()  # reading never writes
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "m"),
                "--cache",
                str(tmp_path / "c"),
                "--data",
                str(tmp_path / "test.csv"),
                "--out",
                str(tmp_path / "p.csv"),
                "--add-missing",
                "--overwrite",
            ]
        )
        == 0
    )
    cache = EmbeddingCache(tmp_path / "c")
    assert cache.contains(TEST.text.tolist()).all() and cache.fingerprint == minilm.fingerprint
    np.testing.assert_allclose(cache.get(TEST.text.tolist()[:3]), minilm.encode(TEST.text.tolist()[:3]), atol=1e-3)


def test_cli_errors_name_the_problem(cache, tmp_path, capsys):
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    base = ["train", "--cache", str(cache.path), "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m")]
    assert main(base + ["--label-col", "food", "--head", "lasso"]) == 1
    assert "unknown head 'lasso'; choose one of: auto, search, concat, two-tower, ridge" in capsys.readouterr().err
    assert main(base + ["--label-col", "quality"]) == 1
    assert "no column 'quality'; available columns: text, food" in capsys.readouterr().err
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path / "nothing"),
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "train.csv"),
            ]
        )
        == 1
    )
    assert "nothing: no such model directory" in capsys.readouterr().err


def test_knn_propagation_recovers_cluster_labels_with_confidence():
    from heads.neighbours import propagate

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((5, 32))

    def points(n):
        c = rng.integers(0, 5, n)
        return centers[c] + 0.3 * rng.standard_normal((n, 32)), c * 1.0

    labeled, y_labeled = points(50)
    unlabeled, truth = points(500)
    scores, confidence = propagate(labeled, y_labeled, unlabeled, k=5)
    assert np.abs(scores - truth).mean() < 0.05 and confidence.mean() > 0.8
    far = rng.standard_normal((20, 32)) * 5  # points between clusters: low confidence
    assert propagate(labeled, y_labeled, far, k=5)[1].mean() < confidence.mean() - 0.3


def test_leakage_report_finds_planted_near_duplicates(cache, tmp_path, capsys):
    test = pd.concat(
        [TEST, pd.DataFrame({"text": ["I really  enjoy pizza. ", "tell me more about football."], "food": [1.0, 0.0]})]
    )
    TRAIN.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    assert (
        main(
            [
                "leakage",
                "--cache",
                str(cache.path),
                "--train",
                str(tmp_path / "train.csv"),
                "--test",
                str(tmp_path / "test.csv"),
                "--out",
                str(tmp_path / "leaks.csv"),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["n_test"], summary["n_leaked"]) == (len(test), 2)
    leaks = pd.read_csv(tmp_path / "leaks.csv")
    assert set(leaks.train_text) == {"I really enjoy pizza.", "Tell me more about football."}
    assert set(leaks.test_row) == {len(test) - 1, len(test)}


@pytest.mark.parametrize("method", ["knn", "self-train"])
@pytest.mark.slow
def test_pseudolabel_spreads_a_few_labels_and_its_output_trains_a_head(cache, tmp_path, capsys, method):
    labeled = topic_rows(FOOD[:2], SPORT[:2])
    data = pd.concat([TRAIN, TEST], ignore_index=True).drop(columns="food")
    labeled.to_csv(tmp_path / "labeled.csv", index=False)
    data.to_csv(tmp_path / "data.csv", index=False)
    out = tmp_path / "pseudo.csv"
    assert (
        main(
            [
                "pseudolabel",
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "data.csv"),
                "--labeled",
                str(tmp_path / "labeled.csv"),
                "--label-col",
                "food",
                "--method",
                method,
                "--label-range",
                "0",
                "1",
                "--rounds",
                "2",
                "--out",
                str(out),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    pseudo = pd.read_csv(out)
    assert list(pseudo.columns) == ["source", "id", "text", "score", "confidence"]
    # every labelled row once with its own label, then every data row not among them
    assert (pseudo.source == "labeled").sum() == len(labeled) and (pseudo.source == "data").sum() == len(data) - len(
        labeled
    )
    assert summary["n_written"] == len(data) and pseudo.text.is_unique
    scored = pseudo[pseudo.source == "data"].merge(pd.concat([TRAIN, TEST]), on="text")
    right = (scored.score > 0.5) == (scored.food > 0.5)
    sure = scored.confidence >= scored.confidence.median()
    assert right.mean() > 0.9
    if method == "knn":  # closer, agreeing neighbours: the confidence means something
        assert right[sure].mean() >= right.mean()
    assert pseudo.confidence.between(0, 1).all()
    if method == "self-train":
        assert summary["rounds"][0]["round"] == 0 and summary["rounds"][-1]["n_pseudo"] > 0
    # the output is a training file as it is
    assert (
        main(
            [
                "train",
                "--cache",
                str(cache.path),
                "--data",
                str(out),
                "--label-col",
                "score",
                "--out",
                str(tmp_path / "model"),
                "--label-range",
                "0",
                "1",
                "--quiet",
                "--json",
            ]
        )
        == 0
    )
    model = HeadModel.load(tmp_path / "model")
    assert ((model.predict(TEST, cache=cache) > 0.5) == (TEST.food > 0.5)).mean() > 0.8


def test_pseudolabel_with_labeling_functions_imported_from_a_file(cache, tmp_path, capsys):
    (tmp_path / "my_lfs.py").write_text(
        textwrap.dedent("""
        from heads.labels.labeling import labeling_function

        @labeling_function("test_mentions_food")
        def mentions_food(text):
            return 1.0 if any(w in text.lower() for w in ("pizza", "cake", "soup")) else None
    """)
    )
    data = pd.DataFrame(
        {"text": ["I really enjoy pizza.", "cake", "Tell me more about golf.", "the"], "id": [7, 8, 9, 10]}
    )
    data.to_csv(tmp_path / "prompts.csv", index=False)
    args = [
        "pseudolabel",
        "--cache",
        str(cache.path),
        "--data",
        str(tmp_path / "prompts.csv"),
        "--import",
        str(tmp_path / "my_lfs.py"),
        "--lf",
        "test_mentions_food",
        "--lf",
        "length",
        "--out",
        str(tmp_path / "lf.csv"),
        "--json",
    ]
    try:
        assert main(args) == 0
    finally:
        from heads.labels.labeling import LABELING_FUNCTIONS

        LABELING_FUNCTIONS.pop("test_mentions_food", None)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    out = pd.read_csv(tmp_path / "lf.csv").set_index("id")
    assert (
        summary["functions"]["test_mentions_food"]["coverage"] == 0.5
        and summary["functions"]["length"]["coverage"] == 1
    )
    # equal weights: the food function lifts the two food prompts above their length score alone
    assert (
        out.loc[7, "score"] > out.loc[9, "score"]
        and out.loc[8, "confidence"] == 1.0
        and out.loc[9, "confidence"] == 0.5
    )
    assert (
        main(
            [
                "pseudolabel",
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "prompts.csv"),
                "--method",
                "knn",
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 1
    )
    assert (
        "method 'knn' needs labelled rows (labeled=..., label_col=...; --labeled FILE --label-col COL)"
        in capsys.readouterr().err
    )
    assert (
        main(
            [
                "pseudolabel",
                "--cache",
                str(cache.path),
                "--data",
                str(tmp_path / "prompts.csv"),
                "--lf",
                "nope",
                "--out",
                str(tmp_path / "x.csv"),
            ]
        )
        == 1
    )
    assert "unknown labeling function 'nope'" in capsys.readouterr().err
