"""What a new user hit in three real jobs (issue 28): each row a test that failed before."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import HashEncoder
from helpers import run as run_command

from embedcache import EmbeddingCache, FingerprintMismatchError
from embedcache.toolkit import spec_difference
from heads import HeadModel
from heads.cli import main
from heads.labels.labeling import resolve
from heads.labels.pseudolabel import label_with_functions
from heads.training_rows import PseudoLabelValidationWarning

RNG = np.random.default_rng(0)
GOOD, BAD = ["clear", "specific", "detailed", "precise"], ["vague", "lazy", "short", "messy"]


def prompts(n, seed):
    rng = np.random.default_rng(seed)
    texts, scores = [], []
    for i in range(n):
        good, bad = rng.integers(0, 3), rng.integers(0, 3)
        words = list(rng.choice(GOOD, good)) + list(rng.choice(BAD, bad)) + [f"topic{i}"]
        texts.append(" ".join(words))
        scores.append(float(np.clip(0.4 + 0.15 * good - 0.12 * bad + rng.normal(0, 0.05), 0, 1)))
    return texts, np.array(scores)


def cue(words, value):
    def fn(text):
        return value if any(w in text.split() for w in words) else None

    return fn


FUNCTIONS = [cue(GOOD[:2], 0.9), cue(GOOD[2:], 0.9), cue(BAD[:2], 0.9), cue(BAD[2:], 0.9)]  # the documented pattern
SCALED = [cue(GOOD[:2], 0.9), cue(GOOD[2:], 0.8), cue(BAD[:2], 0.1), cue(BAD[2:], 0.2)]  # values on the label scale


@pytest.mark.parametrize("combine_with, functions", [("ridge", FUNCTIONS), ("ridge", SCALED), ("weighted", SCALED)])
def test_labeling_function_scores_land_on_the_label_scale(combine_with, functions):
    """Row 2: the fitted map is applied; row 3: informative functions of the documented kind get weight (the
    default, ridge, reads a constant vote as information; a weighted mean needs values on the label scale)."""
    texts, y = prompts(300, 1)
    labeled, y_lab = texts[:100], y[:100]
    scores, _, report = label_with_functions(texts[100:], functions, labeled, y_lab, combine_with)
    ok = ~np.isnan(scores)
    assert abs(scores[ok].mean() - y[100:][ok].mean()) < 0.25 * y.std()
    assert 0.3 * y.std() < scores[ok].std() < 1.2 * y.std()
    assert np.corrcoef(scores[ok], y[100:][ok])[0, 1] > 0.5
    weights = [entry["weight"] for entry in report["functions"].values()]
    assert min(weights) > 0.05  # every function here is informative
    # a constant vote says what it says by voting: the labels where it votes differ from elsewhere
    first = next(iter(report["functions"].values()))
    assert first["mean_label_voted"] > first["mean_label_abstained"]


def test_functions_of_the_same_name_all_count():
    assert len(resolve(FUNCTIONS)) == 4 and len(resolve([lambda t: 1.0, lambda t: 0.0])) == 2


def test_training_on_pseudo_labels_alone_warns_that_validation_is_agreement(tmp_path):
    texts, y = prompts(60, 2)
    table = pd.DataFrame({"source": "data", "id": range(60), "prompt": texts, "score": y, "confidence": 1.0})
    cache = EmbeddingCache(tmp_path / "c", HashEncoder())
    cache.add(texts)
    with pytest.warns(PseudoLabelValidationWarning, match="agreement with the labeler"):
        model = HeadModel(head="ridge").fit(table, "score", cache=cache, text_col="prompt", progress=False)
    assert "labeler" in model.validation_rows_


def test_fit_takes_template_fields_as_predict_does(tiny_bert):
    items = [{"metric_name": m, "response": f"reply {i}"} for i, m in enumerate(["harm", "help"] * 20)]
    y = [float(i % 3) for i in range(40)]
    model = HeadModel(head="ridge").fit(
        items, y, encoder=tiny_bert, template="{metric_name}: {response}", progress=False
    )
    assert model.columns_["template"] == "{metric_name}: {response}"
    predicted = model.predict(items[:2])  # the same dicts predict takes
    assert predicted.shape == (2,) and np.isfinite(predicted).all()


def test_a_cache_of_another_backend_is_named_in_the_mismatch(tmp_path, tiny_bert):
    from embedcache import load_encoder

    EmbeddingCache(tmp_path / "c", tiny_bert).add(["a text"])
    other = load_encoder(tiny_bert.spec["name_or_path"], normalize=True)
    with pytest.raises(FingerprintMismatchError, match="normalize False in the cache, True in the encoder"):
        EmbeddingCache(tmp_path / "c", other)
    assert (
        spec_difference({"name_or_path": "m", "backend": "openvino-int8"}, {"name_or_path": "m"})
        == "backend 'openvino-int8' in the model, 'torch' in the cache"
    )


def test_heads_pseudolabel_prints_what_a_constant_vote_says(tmp_path, capsys):
    texts, y = prompts(120, 3)
    pd.DataFrame({"prompt": texts[:40], "score": y[:40]}).to_csv(tmp_path / "rated.csv", index=False)
    pd.DataFrame({"prompt": texts}).to_csv(tmp_path / "all.csv", index=False)
    (tmp_path / "lfs.py").write_text(
        "from heads.labels.labeling import labeling_function\n"
        "@labeling_function('mentions_clear')\n"
        "def mentions_clear(text):\n    return 0.9 if 'clear' in text.split() else None\n"
    )
    EmbeddingCache(tmp_path / "c", HashEncoder()).add(texts)
    code, out, err = run_command(
        main,
        capsys,
        "pseudolabel",
        "--cache",
        tmp_path / "c",
        "--data",
        tmp_path / "all.csv",
        "--text-col",
        "prompt",
        "--labeled",
        tmp_path / "rated.csv",
        "--label-col",
        "score",
        "--method",
        "lf",
        "--import",
        tmp_path / "lfs.py",
        "--lf",
        "mentions_clear",
        "--out",
        tmp_path / "p.csv",
        "--quiet",
        "--json",
    )
    assert code == 0, err
    assert "mentions_clear" in out and "where it votes" in out
    table = pd.read_csv(tmp_path / "p.csv")
    assert abs(table.score.mean() - y[:40].mean()) < 0.2


def test_quiet_means_no_bars_anywhere(tmp_path, capsys, tiny_bert):
    texts, y = prompts(40, 4)
    cache = EmbeddingCache(tmp_path / "c", tiny_bert)
    HeadModel(head="ridge").fit(texts, y, cache=cache, progress=False).save(tmp_path / "m")
    new, _ = prompts(30, 5)
    pd.DataFrame({"text": [t + " new" for t in new], "score": y[:30]}).to_csv(tmp_path / "new.csv", index=False)
    capsys.readouterr()
    for command in ("predict", "evaluate"):
        args = ["--model", tmp_path / "m", "--cache", tmp_path / "c", "--data", tmp_path / "new.csv", "--quiet"]
        code, _, err = run_command(
            main, capsys, command, *args, *(["--out", tmp_path / "p.csv"] if command == "predict" else [])
        )
        assert code == 0 and err == "", err


@pytest.fixture(scope="module")
def conditioned(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("conditioned")
    rng = np.random.default_rng(7)
    rows = []
    for i in range(160):
        metric, language = ["harm", "help"][i % 2], ["en", "hi"][(i // 2) % 2]
        rows.append(
            {
                "text": f"reply {i} {rng.choice(GOOD + BAD)}",
                "metric": metric,
                "language": language,
                "score": float(i % 5) + (2.0 if metric == "harm" else 0.0),
            }
        )
    data = pd.DataFrame(rows)
    data.to_csv(root / "data.csv", index=False)
    cache = EmbeddingCache(root / "c", tiny_bert)
    HeadModel(head="ridge").fit(
        data, "score", cache=cache, text_col="text", condition_col="metric", progress=False
    ).save(root / "m")
    return root


def test_serve_names_conditions_it_never_saw(conditioned):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from heads.serving.serve import create_app

    with TestClient(create_app(conditioned / "m")) as client:
        seen = client.post("/score", json={"items": [{"text": "reply 1 clear", "condition": "harm"}]}).json()
        assert "unseen_conditions" not in seen
        reply = client.post(
            "/score",
            json={
                "items": [
                    {"text": "reply 1 clear", "condition": "harmful content"},
                    {"text": "reply 2", "condition": "help"},
                ]
            },
        ).json()
        (unseen,) = reply["unseen_conditions"]
        assert unseen["condition"] == "harmful content" and unseen["nearest_trained"] in ("harm", "help")


def test_evaluate_groups_by_several_columns_and_plots_them_sorted(conditioned, tmp_path, capsys):
    code, out, err = run_command(
        main,
        capsys,
        "evaluate",
        "--model",
        conditioned / "m",
        "--cache",
        conditioned / "c",
        "--data",
        conditioned / "data.csv",
        "--group-col",
        "language",
        "--group-col",
        "metric",
        "--plots",
        tmp_path / "plots",
        "--json",
        "--quiet",
    )
    assert code == 0, err
    groups = json.loads(out.strip().splitlines()[-1])["per_group"]
    assert set(groups) == {"en / harm", "en / help", "hi / harm", "hi / help"}
    assert "language / metric=en / harm" in out
    assert (tmp_path / "plots" / "per_group.png").exists() and (tmp_path / "plots" / "per_condition.png").exists()


def test_fine_tuning_knows_the_frozen_cosine_it_must_beat(tiny_bert_dir):
    from heads.finetuning.backbone import Backbone
    from heads.finetuning.finetune import _frozen_cosine

    backbone = Backbone.from_directory(str(tiny_bert_dir))
    words = ["apple", "river", "stone", "cloud", "music", "paper"]
    a = [f"{w} {w} {w}" for w in words for _ in words]
    b = [f"{v} {v} {v}" for _ in words for v in words]
    y = np.array([[float(x == z)] for x, z in zip(a, b)])  # the same word: related
    baseline = _frozen_cosine(backbone, {"text": np.array(a), "pair": np.array(b)}, y)
    assert baseline is not None and baseline > 0.2  # identical texts have cosine 1: the cosine ranks them first
    assert _frozen_cosine(backbone, {"text": np.array(a)}, y) is None


def test_leakage_counts_distinct_texts_shows_where_they_differ_and_checks_both_sides(tmp_path, capsys):
    system = "You are a careful assistant who answers in full sentences. " * 3
    train = pd.DataFrame(
        {"system": system, "user": [f"question {i}" for i in range(20)], "other": [f"other {i}" for i in range(20)]}
    )
    test = pd.DataFrame(
        {
            "system": system,
            "user": ["question 3"] * 3 + ["question new"],
            "other": ["unrelated a", "unrelated b", "question 7", "unrelated c"],
        }
    )
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    composed = [f"{system}\n{u}" for u in pd.concat([train.user, test.user])]
    cache = EmbeddingCache(tmp_path / "c", HashEncoder())
    cache.add(composed + list(train.user) + list(train.other) + list(test.user) + list(test.other))
    code, out, err = run_command(
        main,
        capsys,
        "leakage",
        "--cache",
        tmp_path / "c",
        "--train",
        tmp_path / "train.csv",
        "--test",
        tmp_path / "test.csv",
        "--template",
        "{system}\\n{user}",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert (summary["n_test"], summary["n_leaked"], summary["n_leaked_rows"]) == (2, 1, 3)  # distinct texts
    assert "question 3" in out  # the preview starts where the texts differ, past the shared system prompt
    code, out, err = run_command(
        main,
        capsys,
        "leakage",
        "--cache",
        tmp_path / "c",
        "--train",
        tmp_path / "train.csv",
        "--test",
        tmp_path / "test.csv",
        "--text-col",
        "user",
        "--pair-col",
        "other",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["n_leaked"] == 2 and "(pair)" in out  # "question 7" leaked through the second side
