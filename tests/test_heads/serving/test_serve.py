"""heads serve: scores over HTTP equal heads predict, bad input is a 422 naming item and field, concurrent
clients are all answered, and requests that arrive together share one scoring call."""

import asyncio
import threading
import time

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient

from embedcache import EmbeddingCache
from heads import HeadModel
from heads.cli import main
from heads.serving.serve import Batcher, ServeConfig, create_app

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


def rows(n, seed):
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(n)]
    metrics = rng.choice(["harm", "help"], n)
    return pd.DataFrame(
        {
            "response": texts,
            "metric": metrics,
            "score": [float(("apple" in t) + 2 * (m == "harm")) for t, m in zip(texts, metrics)],
        }
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("serve")
    cache = EmbeddingCache(root / "cache", tiny_bert)
    train = rows(200, 0)
    HeadModel(head="ridge").fit(
        train, "score", cache=cache, text_col="response", condition_col="metric", progress=False
    ).save(root / "m")
    return root


def test_scores_equal_heads_predict_with_intervals(served, tmp_path, capsys):
    new = rows(20, 1)
    new.to_csv(tmp_path / "new.csv", index=False)
    assert (
        main(
            [
                "predict",
                "--model",
                str(served / "m"),
                "--data",
                str(tmp_path / "new.csv"),
                "--interval",
                "0.9",
                "--out",
                str(tmp_path / "p.csv"),
            ]
        )
        == 0
    )
    expected = pd.read_csv(tmp_path / "p.csv")
    with TestClient(create_app(served / "m")) as client:
        items = [{"text": t, "condition": m} for t, m in zip(new.response, new.metric)]
        reply = client.post("/score", json={"items": items, "interval": 0.9})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        np.testing.assert_allclose(np.asarray(body["scores"])[:, 0], expected.score, atol=1e-6)
        np.testing.assert_allclose(np.asarray(body["lower"])[:, 0], expected.lower, atol=1e-6)
        np.testing.assert_allclose(np.asarray(body["upper"])[:, 0], expected.upper, atol=1e-6)
        assert body["fingerprint"] == HeadModel.load(served / "m").encoder_["fingerprint"]
        assert client.get("/health").json() == {"status": "ok"}
        described = client.get("/model").json()
        assert described["fields"] == ["text", "condition"] and described["labels"] == ["score"]
        by_column = client.post(
            "/score",
            json={
                "items": [
                    {"response": t, "metric": m}  # the trained column names
                    for t, m in zip(new.response[:3], new.metric[:3])
                ]
            },
        )
        np.testing.assert_allclose(by_column.json()["scores"], body["scores"][:3], rtol=1e-12)
        # those 3 texts were seen before: their vectors came from memory, not encoded again
        metrics = client.get("/metrics").text
        distinct = len(set(new.response)) + len(set(new.metric))  # a condition is a text too
        assert "heads_requests_total 2.0" in metrics and f"heads_texts_encoded_total {distinct:.1f}" in metrics
        assert "heads_latency_seconds_count 2.0" in metrics


@pytest.mark.parametrize(
    "body, words",
    [
        ({"items": []}, "items: expected a non-empty list"),
        ({"items": [{"text": "a b", "condition": "harm"}, {"text": "a b"}]}, "items[1].condition: missing"),
        ({"items": [{"text": 5, "condition": "harm"}]}, "items[0].text: expected a string, got int"),
        ({"items": [{"text": "  ", "condition": "harm"}]}, "items[0].text: empty text"),
        ({"items": [{"text": "x" * 101, "condition": "harm"}]}, "items[0].text: 101 characters, at most 100"),
        ({"items": [{"text": "a", "condition": "harm"}] * 5}, "items: 5 items, at most 4 per request"),
        ({"items": [{"text": "a", "condition": "harm", "path": "/etc/passwd"}]}, "items[0]: unknown field 'path'"),
        ({"items": ["a"]}, "items[0]: expected an object with text, condition"),
        (
            {"items": [{"text": "a", "condition": "harm"}], "interval": 1.5},
            "interval: expected a number between 0 and 1",
        ),
    ],
)
def test_bad_input_is_a_422_naming_item_and_field(served, body, words):
    with TestClient(create_app(served / "m", config=ServeConfig(max_items=4, max_chars=100))) as client:
        reply = client.post("/score", json=body)
        assert reply.status_code == 422 and words in reply.json()["detail"]
        assert (
            client.post("/score", content=b"not json", headers={"content-type": "application/json"}).status_code == 422
        )
        assert 'heads_errors_total{status="422"} 1.0' in client.get("/metrics").text


def test_a_body_larger_than_any_valid_request_is_refused_unread(served):
    with TestClient(create_app(served / "m", config=ServeConfig(max_items=2, max_chars=10))) as client:
        reply = client.post("/score", content=b"x" * 1_000_000, headers={"content-type": "application/json"})
        assert reply.status_code == 413 and "at most" in reply.json()["detail"]
        assert client.post("/score", json={"items": [{"text": "apple", "condition": "harm"}]}).status_code == 200


def test_a_template_model_takes_its_fields_by_name(tmp_path, tiny_bert):
    data = rows(120, 5).rename(columns={"response": "answer"}).assign(question="what do you like?")
    cache = EmbeddingCache(tmp_path / "c", tiny_bert)
    HeadModel(head="ridge").fit(
        data, "score", cache=cache, template="Q: {question}\nA: {answer}", condition_col="metric"
    ).save(tmp_path / "m")
    with TestClient(create_app(tmp_path / "m")) as client:
        assert client.get("/model").json()["fields"] == ["question", "answer", "condition"]
        item = {"question": "what do you like?", "answer": data.answer[0], "condition": data.metric[0]}
        reply = client.post("/score", json={"items": [item]})
        # encoded as the server does, not float16
        expected = HeadModel.load(tmp_path / "m").predict(data.head(1), squeeze=False)
        np.testing.assert_allclose(reply.json()["scores"], expected, atol=1e-6)
        missing = client.post("/score", json={"items": [{"answer": "x", "condition": "harm"}]})
        assert missing.status_code == 422 and "items[0].question: missing" in missing.json()["detail"]


def test_an_api_key_is_required_when_set(served):
    with TestClient(create_app(served / "m", api_key="s3cret")) as client:
        item = {"items": [{"text": "apple river", "condition": "harm"}]}
        assert client.post("/score", json=item).status_code == 401
        assert client.post("/score", json=item, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.post("/score", json=item, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert client.get("/health").status_code == 200  # for load balancers


def test_requests_that_arrive_together_share_one_scoring_call():
    class Counting:
        def __init__(self):
            self.calls = []

        def score(self, items):
            self.calls.append(len(items))
            return np.asarray([[float(len(item["text"]))] for item in items])

    async def run():
        batcher = Batcher(counting, ServeConfig(max_batch=8, batch_wait_ms=50))
        waiting = [asyncio.ensure_future(batcher.score([{"text": "x" * i}])) for i in range(1, 11)]
        await asyncio.sleep(0)  # all ten are queued before the batcher starts
        task = asyncio.create_task(batcher.run())
        results = await asyncio.gather(*waiting)
        task.cancel()
        batcher.pool.shutdown()
        return results

    counting = Counting()
    results = asyncio.run(run())
    assert [r[0, 0] for r in results] == list(range(1, 11))  # each request gets its own rows back
    assert counting.calls == [8, 2]  # ten requests, two calls: max_batch bounds a call


def test_a_real_server_answers_32_concurrent_clients_with_new_texts(served):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(create_app(served / "m"), host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    new = rows(32, 7)
    answers = [None] * 32

    def client(i):
        with httpx.Client(timeout=60) as http:
            reply = http.post(
                f"http://127.0.0.1:{port}/score",
                json={"items": [{"text": new.response[i] + f" {i}", "condition": new.metric[i]}]},
            )
            answers[i] = reply.json()["scores"][0][0] if reply.status_code == 200 else reply.text

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    texts = pd.DataFrame({"response": [new.response[i] + f" {i}" for i in range(32)], "metric": new.metric})
    expected = HeadModel.load(served / "m").predict(texts)
    np.testing.assert_allclose(np.asarray(answers, dtype=float), expected, atol=1e-6)
    assert not thread.is_alive()
