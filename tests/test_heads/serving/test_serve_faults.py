"""heads serve against hostile clients, on a real uvicorn server on 127.0.0.1 (issue 22, item 4; issue 28, 6-7)."""

import asyncio
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from embedcache import EmbeddingCache
from heads import HeadModel
from heads.serving.serve import Batcher, ServeConfig, create_app

WORDS = ["apple", "river", "stone", "cloud", "music", "paper", "garden", "window"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("serve-faults")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 3)) for _ in range(80)]
    train = pd.DataFrame({"text": texts, "score": [float("apple" in t) for t in texts]})
    HeadModel(head="ridge").fit(train, "score", cache=EmbeddingCache(root / "cache", tiny_bert), progress=False).save(
        root / "m"
    )
    return root / "m"


@contextmanager
def server(app, seconds: float = 60):
    """The app on a free port of 127.0.0.1, stopped on leaving (or after ``seconds`` at most)."""
    import uvicorn

    s = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=s.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not s.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert s.started
    stopper = threading.Timer(seconds, lambda: setattr(s, "should_exit", True))
    stopper.start()
    try:
        yield f"http://127.0.0.1:{s.servers[0].sockets[0].getsockname()[1]}"
    finally:
        stopper.cancel()
        s.should_exit = True
        thread.join(timeout=15)


def test_a_lone_surrogate_is_a_422_and_fails_no_one_else(model_dir):
    with server(create_app(model_dir)) as url:
        bad = b'{"items": [{"text": "x \\udc80 y"}]}'
        answers = {}

        def good(i):
            with httpx.Client(timeout=60) as http:
                answers[i] = http.post(f"{url}/score", json={"items": [{"text": f"apple river {i}"}]}).status_code

        threads = [threading.Thread(target=good, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        with httpx.Client(timeout=60) as http:
            reply = http.post(f"{url}/score", content=bad, headers={"content-type": "application/json"})
        for t in threads:
            t.join(timeout=60)
        assert reply.status_code == 422 and "items[0].text" in reply.json()["detail"] and "surrogate" in reply.text
        assert answers == {i: 200 for i in range(20)}


def test_a_request_that_fails_inside_a_batch_fails_alone():
    class Scorer:
        def score(self, items):
            if any(item["text"] == "boom" for item in items):
                raise RuntimeError("this request's own failure")
            return np.asarray([[float(len(item["text"]))] for item in items])

    async def run():
        batcher = Batcher(Scorer(), ServeConfig(max_batch=64, batch_wait_ms=50))
        texts = ["a", "bb", "boom", "dddd"]
        waiting = [asyncio.ensure_future(batcher.score([{"text": t}])) for t in texts]
        await asyncio.sleep(0)
        task = asyncio.create_task(batcher.run())
        results = await asyncio.gather(*waiting, return_exceptions=True)
        task.cancel()
        batcher.pool.shutdown()
        return results

    a, b, boom, d = asyncio.run(run())
    assert (a[0, 0], b[0, 0], d[0, 0]) == (1.0, 2.0, 4.0)
    assert isinstance(boom, RuntimeError)


def test_a_chunked_body_is_counted_as_it_arrives(model_dir):
    config = ServeConfig(max_items=2, max_chars=10)
    with server(create_app(model_dir, config=config)) as url:

        def chunks():
            for _ in range(1000):
                yield b"x" * 10_000

        with httpx.Client(timeout=30) as http:
            reply = http.post(f"{url}/score", content=chunks(), headers={"content-type": "application/json"})
            assert reply.status_code == 413 and "at most" in reply.json()["detail"]
            assert http.post(f"{url}/score", json={"items": [{"text": "apple"}]}).status_code == 200


def test_a_body_that_never_finishes_is_cut_off(model_dir):
    config = ServeConfig(body_timeout_s=1.0)
    with server(create_app(model_dir, config=config)) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"items": ['
            )
            started = time.monotonic()
            answer = sock.recv(4096)
            assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 8


def test_limits_follow_the_encoder_and_bound_the_request(model_dir, tiny_bert):
    from fastapi.testclient import TestClient

    limit = 4 * tiny_bert.max_length
    with TestClient(create_app(model_dir, config=ServeConfig(max_request_chars=1000))) as client:
        over = client.post("/score", json={"items": [{"text": "a" * (limit + 1)}]})
        assert over.status_code == 422 and f"at most {limit}" in over.json()["detail"]
        assert client.post("/score", json={"items": [{"text": "a" * limit}]}).status_code == 200
        many = client.post("/score", json={"items": [{"text": "apple " * 40}] * 5})
        assert many.status_code == 422 and "1000 characters in all" in many.json()["detail"]


def test_docs_follow_the_api_key_and_no_path_is_shown(model_dir):
    from fastapi.testclient import TestClient

    with TestClient(create_app(model_dir, api_key="k")) as client:
        assert client.get("/openapi.json").status_code == 404 and client.get("/docs").status_code == 404
    with TestClient(create_app(model_dir)) as client:
        schema = client.get("/openapi.json").text
        reply = client.post("/score", json={"items": [{"text": "apple"}]}).json()
        assert str(model_dir.parent) not in schema and str(model_dir.parent) not in str(reply)


def test_metrics_count_each_encoded_text_once_under_concurrency(model_dir):
    with server(create_app(model_dir, config=ServeConfig(batch_wait_ms=20))) as url:

        def client(i):
            with httpx.Client(timeout=60) as http:
                items = [{"text": f"river stone {i} {j}"} for j in range(5)]
                assert http.post(f"{url}/score", json={"items": items}).status_code == 200

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        text = httpx.get(f"{url}/metrics").text
    assert "heads_texts_encoded_total 80.0" in text


def test_a_server_default_interval(model_dir):
    from fastapi.testclient import TestClient

    with pytest.raises(ValueError, match="0.9 interval"):
        create_app(model_dir, config=ServeConfig(interval=0.9))  # 8 validation rows: refused before serving
    with TestClient(create_app(model_dir, config=ServeConfig(interval=0.5))) as client:
        body = client.post("/score", json={"items": [{"text": "apple"}]}).json()
        assert body["lower"][0][0] < body["scores"][0][0] < body["upper"][0][0]
        assert "lower" not in client.post("/score", json={"items": [{"text": "apple"}], "interval": None}).json()


@pytest.mark.slow
def test_two_workers_start_serve_and_stop_on_sigterm(model_dir, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    log = open(tmp_path / "serve.log", "wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "heads.cli", "serve", str(model_dir), "--workers", "2", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        deadline, answered = time.monotonic() + 120, set()
        while time.monotonic() < deadline and len(answered) < 1:
            try:
                reply = httpx.post(
                    f"http://127.0.0.1:{port}/score", json={"items": [{"text": "apple river"}]}, timeout=10
                )
                if reply.status_code == 200:
                    answered.add(reply.status_code)
            except httpx.HTTPError:
                time.sleep(0.5)
        assert answered == {200}, (tmp_path / "serve.log").read_text()[-2000:]
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)  # the parent and its workers stop
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    text = (tmp_path / "serve.log").read_text()
    assert "died" not in text, text[-2000:]
