import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

from heads.labels.annotate import AnnotationError, annotate, read_record
from heads.labels.labeling import (
    LABELING_FUNCTIONS,
    apply,
    combine,
    coverage_report,
    labeling_function,
    learn_weights,
)


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("length", "", 0.0),
        ("length", "x" * 200, 1.0),
        ("specificity", "Explain photosynthesis step by step for a child in 100 words.", 1.0),
        ("specificity", "tell me stuff", None),
        ("question_or_instruction", "Please summarise this article.", 0.8),
        ("question_or_instruction", "why is the sky blue?", 0.7),
        ("question_or_instruction", "the sky", None),
        ("punctuation", "WHY DOES THIS NOT WORK", 0.2),
        ("punctuation", "help me!!!", 0.2),
        ("punctuation", "Write a poem.", 0.6),
        ("punctuation", "write a poem", None),
        ("repetition", "buy buy buy buy buy buy now now", 0.1),
        ("repetition", "a normal sentence with many different words", None),
    ],
)
def test_builtin_labeling_functions_on_known_inputs(name, text, expected):
    assert LABELING_FUNCTIONS[name](text) == (pytest.approx(expected) if expected is not None else None)
    assert LABELING_FUNCTIONS["length"]("short") < LABELING_FUNCTIONS["length"]("a much longer prompt " * 3)


def test_registered_functions_are_applied_and_combined_over_non_abstaining_votes():
    @labeling_function("always_half")
    def always_half(text):
        return 0.5

    try:
        out, names = apply(["Write a poem.", "hm"], ["punctuation", "always_half"])
        assert names == ["punctuation", "always_half"]
        np.testing.assert_allclose(out, [[0.6, 0.5], [np.nan, 0.5]])
        np.testing.assert_allclose(combine(out, [3, 1]), [(3 * 0.6 + 0.5) / 4, 0.5])
        assert np.isnan(combine(np.array([[np.nan, np.nan]]))).all()
        with pytest.raises(ValueError, match="unknown labeling function 'nope'; registered: .*always_half"):
            apply(["x"], ["nope"])
    finally:
        del LABELING_FUNCTIONS["always_half"]


def test_learned_weights_recover_which_functions_track_the_truth():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 1, 2000)
    outputs = np.stack(
        [
            y + 0.05 * rng.standard_normal(2000),  # precise
            rng.uniform(0, 1, 2000),  # useless
            y + 0.3 * rng.standard_normal(2000),
        ],
        1,
    )  # noisy
    outputs[rng.uniform(size=2000) < 0.3, 2] = np.nan  # and abstains 30% of the time
    w = learn_weights(outputs, y)
    assert w.sum() == pytest.approx(1) and w[0] > 0.8 and w[1] < 0.02 and w[0] > w[2] > w[1]
    combined = combine(outputs, w)
    assert np.corrcoef(combined, y)[0, 1] > np.corrcoef(combine(outputs), y)[0, 1]
    report = coverage_report(outputs, ["precise", "useless", "noisy"], y)
    assert report["noisy"]["coverage"] == pytest.approx(0.7, abs=0.03)
    assert report["precise"]["correlation"] > 0.95 and abs(report["useless"]["correlation"]) < 0.1


def test_annotation_retries_limits_concurrency_and_records_failures(tmp_path):
    calls, active, peak, lock = {}, [0], [0], threading.Lock()

    def flaky(text):
        with lock:
            calls[text] = calls.get(text, 0) + 1
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.01)
        with lock:
            active[0] -= 1
        if text == "broken" or calls[text] < 2:  # each text fails once; "broken" always
            raise TimeoutError("the model timed out")
        return len(text)

    texts = [f"text {i}" for i in range(20)] + ["broken"]
    with pytest.raises(AnnotationError, match="1 of 21 texts failed after 2 retries"):
        annotate(texts, flaky, tmp_path / "record.jsonl", max_workers=3, retries=2, backoff=0, progress=False)
    assert peak[0] <= 3 and calls["broken"] == 3
    assert len(read_record(tmp_path / "record.jsonl")) == 20
    calls.clear()
    with pytest.raises(AnnotationError):
        annotate(texts, flaky, tmp_path / "record.jsonl", retries=0, backoff=0, progress=False)
    assert calls == {"broken": 1}  # the 20 answers already paid for are not asked again


def test_an_annotation_record_survives_a_kill_and_is_not_paid_twice(tmp_path):
    record = tmp_path / "record.jsonl"
    script = textwrap.dedent(f"""
        import time
        from heads.labels.annotate import annotate
        def slow(text):
            time.sleep(0.02)
            return float(len(text))
        annotate([f"prompt {{i}}" for i in range(300)], slow, {str(record)!r}, max_workers=2, progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while time.time() < deadline and (not record.exists() or len(record.read_text().splitlines()) < 20):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(record, "a") as f:
        f.write('{"key": "cut by the kil')  # a line the dead process was writing
    done = len(read_record(record))
    assert 20 <= done < 300

    paid = []
    scores = annotate(
        [f"prompt {i}" for i in range(300)], lambda t: paid.append(t) or float(len(t)), record, progress=False
    )
    assert len(paid) == 300 - done and len(scores) == 300
    assert all(scores[f"prompt {i}"] == len(f"prompt {i}") for i in range(300))
    assert os.path.getsize(record) > 0 and len(read_record(record)) == 300
    assert all(json.loads(line)["text"].startswith("prompt") for line in record.read_text().splitlines()[-5:])


def clustered(n, rng, centers, values):
    from heads.data import Inputs

    c = rng.integers(0, len(centers), n)
    X = centers[c] + 0.35 * rng.standard_normal((n, centers.shape[1]))
    return Inputs({"text": X.astype(np.float32)}, {"text": np.arange(n)}), (values[c] + 0.05 * rng.standard_normal(n))[
        :, None
    ]


@pytest.mark.slow
def test_self_training_beats_the_labeled_only_head_on_clustered_data():
    """40 labels over 8 clusters, 2,000 unlabeled points: the clusters are there to be learned from the unlabeled rows."""
    from heads import HeadModel
    from heads.labels.selftrain import committee_predict, self_train
    from heads.metrics import regression_metrics

    rng = np.random.default_rng(1)
    centers, values = rng.standard_normal((8, 32)), rng.uniform(0, 1, 8)
    labeled, y = clustered(40, rng, centers, values)
    unlabeled, _ = clustered(2000, rng, centers, values)
    val, y_val = clustered(40, rng, centers, values)
    test, y_test = clustered(1000, rng, centers, values)
    settings = {"width": 64, "epochs": 30, "seed": 1}
    alone = HeadModel(**settings).fit_inputs(labeled, y, val, y_val, progress=False)
    result = self_train(HeadModel(**settings), labeled, y, unlabeled, val, y_val, rounds=2, committee=3, progress=False)
    rounds = result.rounds
    assert [r["round"] for r in rounds] == list(range(len(rounds))) and rounds[0]["n_pseudo"] == 0
    assert rounds[1]["n_pseudo"] == 1000 and rounds[1]["n_train"] == 1040  # round 1 of 2 keeps the surest half
    assert result.best_round >= 1 and rounds[result.best_round]["rmse"] < rounds[0]["rmse"]
    self_trained, _ = committee_predict(result.models, test, y.std(0))
    assert (
        regression_metrics(y_test, self_trained)["rmse"]
        < 0.95 * regression_metrics(y_test, alone.predict_inputs(test))["rmse"]
    )
    assert result.scores.shape == (2000, 1) and ((result.confidence >= 0) & (result.confidence <= 1)).all()
    with pytest.raises(ValueError, match=r"committee \(its disagreement is the confidence\) must be >= 2"):
        self_train(HeadModel(), labeled, y, unlabeled, val, y_val, committee=1)
