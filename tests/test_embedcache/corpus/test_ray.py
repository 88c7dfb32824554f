"""Ray Data on a local cluster: precompute and batch scoring with 2 actors, one of them killed mid-run."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from embedcache import EmbeddingCache, InputError, compact, load_encoder
from heads import HeadModel

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

N_FILES, ROWS = 8, 2500


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray cluster for this module: 2 CPUs, as on this machine, stopped at the end."""
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    texts = [f"prompt {i} about {i % 97} things" for i in range(N_FILES * ROWS)]
    for k in range(N_FILES):
        rows = range(k * ROWS, (k + 1) * ROWS)
        pd.DataFrame({"id": list(rows), "prompt": [texts[i] for i in rows]}).to_parquet(root / f"part-{k}.parquet")
    return root, texts


def _processes(marker: str) -> list[int]:
    """PIDs of the processes whose command line holds ``marker`` (Ray names actor processes after their class)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _in_background(target):
    """Run ``target`` in a thread; return the thread and a dict that gets its result or its error."""
    result = {}

    def run():
        try:
            result["value"] = target()
        except BaseException as e:  # noqa: BLE001 -- handed to the test
            result["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _kill_one_when(ready, marker: str, thread, timeout: float = 240) -> bool:
    """Once ``ready()`` holds, SIGKILL one process named ``marker``; True if the job was still running then."""
    deadline = time.time() + timeout
    while time.time() < deadline and thread.is_alive() and not ready():
        time.sleep(0.01)
    pids = _processes(marker)
    alive = thread.is_alive()
    if alive and pids:
        os.kill(pids[0], signal.SIGKILL)
    return alive and bool(pids)


def _part_shards(cache: Path) -> int:
    return sum(len(json.loads(m.read_text())["shards"]) for m in cache.glob("parts/ray-*/manifest.json"))


@pytest.mark.slow
def test_ray_precompute_with_an_actor_killed_mid_run_then_batch_scoring(local_ray, corpus, tmp_path, tiny_bert_dir):
    from embedcache.corpus.ray_data import precompute

    root, texts = corpus
    cache = tmp_path / "c"
    thread, result = _in_background(
        lambda: precompute(
            str(root / "*.parquet"),
            cache,
            ["prompt"],
            model=str(tiny_bert_dir),
            workers=2,  # no CPU flag: sized to fit
            rows_per_batch=500,
            progress=False,
            layers="last:1",  # the actors store layer vectors too
        )
    )
    killed = _kill_one_when(lambda: _part_shards(cache) >= 2, "MapBatches(_EncodingActor)", thread)
    thread.join(300)
    assert "error" not in result, result.get("error")
    assert killed, "the job ended before an actor could be killed"
    summary = result["value"]
    # a killed actor's batch is counted again when Ray retries it; what it committed before stays
    assert summary["texts"] >= len(texts) and summary["encoded"] >= len(texts) - summary["cached"]

    whole = EmbeddingCache(cache)
    assert len(whole) == len(texts) and whole.verify() == []  # every text, whatever the kill cost
    sample = texts[:: len(texts) // 40]
    vectors, layers = load_encoder(str(tiny_bert_dir)).encode_layers(sample, (2,))
    np.testing.assert_allclose(whole.get(sample), vectors, atol=2e-3)
    np.testing.assert_allclose(whole.get(sample, features="layers"), layers, atol=2e-3)
    again = precompute(str(root / "*.parquet"), cache, ["prompt"], workers=2, cpus_per_worker=0.5, progress=False)
    assert again["encoded"] == 0 and again["cached"] == len(texts)  # a rerun finds everything
    merged = compact(cache)
    assert merged["rows_after"] == len(texts) and EmbeddingCache(cache).parts == []

    # Batch scoring: a head trained on the cache scores each file into its own Parquet file.
    labels = pd.DataFrame({"prompt": texts[:400], "y": [i % 7 / 7 for i in range(400)]})
    model = HeadModel(head="ridge").fit(labels, "y", cache=EmbeddingCache(cache), text_col="prompt", progress=False)
    model.save(tmp_path / "m")
    (tmp_path / "scores").mkdir()
    first = root / "part-0.parquet"
    model.predict_table(pd.read_parquet(first), interval=0.9).to_parquet(tmp_path / "scores" / "part-0.parquet")
    # what a writer killed mid-write leaves (whether this run's kill lands mid-write is chance): cleared at the end
    (tmp_path / "scores" / ".tmp-part-1.parquet-99999").write_bytes(b"half a file")

    from heads.cli import main

    def score():
        return main(
            [
                "predict",
                "--model",
                str(tmp_path / "m"),
                "--data",
                str(root / "*.parquet"),
                "--ray",
                "--workers",
                "2",
                "--cpus-per-worker",
                "0.5",
                "--interval",
                "0.9",
                "--out",
                str(tmp_path / "scores"),
                "--quiet",
                "--json",
            ]
        )

    thread, result = _in_background(score)
    _kill_one_when(lambda: len(list((tmp_path / "scores").glob("*.parquet"))) >= 3, "MapBatches(_ScoringActor)", thread)
    thread.join(300)
    assert result.get("value") == 0, result.get("error")
    for k in range(N_FILES):
        path = root / f"part-{k}.parquet"
        got = pd.read_parquet(tmp_path / "scores" / f"part-{k}.parquet")
        assert list(got.columns) == ["id", "score", "lower", "upper"] and len(got) == ROWS
        want = model.predict_table(pd.read_parquet(path), interval=0.9)
        np.testing.assert_array_equal(got["id"], want["id"])
        np.testing.assert_allclose(got["score"], want["score"], atol=1e-4)
    assert not list((tmp_path / "scores").glob(".tmp-*"))  # no half-written file


def test_batch_scoring_refuses_two_inputs_that_would_share_an_output(tmp_path):
    from heads.serving.batch_scoring import score_files

    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        pd.DataFrame({"text": ["x"]}).to_parquet(tmp_path / d / "same.parquet")
    with pytest.raises(InputError, match="same.parquet"):
        score_files(
            tmp_path / "m",
            [str(tmp_path / "a" / "same.parquet"), str(tmp_path / "b" / "same.parquet")],
            tmp_path / "out",
        )
    with pytest.raises(InputError, match="no file matches"):
        score_files(tmp_path / "m", [str(tmp_path / "none-*.parquet")], tmp_path / "out")


def test_actors_that_would_hold_every_cpu_are_refused_naming_the_flag(local_ray, corpus, tmp_path, tiny_bert_dir):
    """2 actors of 1 CPU on this 2-CPU cluster used to hang forever (no CPU left to read the inputs); the default
    sizing (the test above, with no CPU flag) leaves one free."""
    from embedcache import ParameterError
    from embedcache.corpus.ray_data import actor_cpus, precompute

    root, _ = corpus
    started = time.monotonic()
    with pytest.raises(ParameterError, match="--cpus-per-worker 0.5"):
        precompute(
            str(root / "part-1.parquet"),
            tmp_path / "c",
            ["prompt"],
            model=str(tiny_bert_dir),
            workers=2,
            cpus_per_worker=1,
            progress=False,
        )
    assert time.monotonic() - started < 60
    assert actor_cpus(2, 2, None) == 0.5 and actor_cpus(16, 8, None) == 1.0
