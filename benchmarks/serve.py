"""Serving throughput: heads serve (micro-batched) against the seed notebook's FastAPI recipe, on loopback.

    python benchmarks/serve.py                 # about 3 minutes on 2 CPU cores
    python benchmarks/serve.py --requests 200 --levels 1 8 32

A concat head on the embedded all-MiniLM-L6-v2 is trained on synthetic prompts.
Each server runs in its own process on 127.0.0.1 (an ephemeral port), stops
itself after --max-seconds, and is stopped when its rounds are done.  Clients
are threads sending single-item requests of texts never seen before (each one
encoded), --requests per concurrency level.  The baseline is the notebook's
deployment recipe: a FastAPI endpoint calling ``HeadModel.predict`` once per
request, no batching.  Goal: at concurrency 32, at least 3x its throughput with
p99 latency no worse.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd

TOPICS = [
    "vaccines",
    "tax returns",
    "a haiku",
    "python decorators",
    "the French revolution",
    "sourdough bread",
    "black holes",
    "a job interview",
    "climate policy",
    "chess openings",
    "a wedding speech",
    "SQL joins",
]
ASKS = [
    "Explain {} step by step for a beginner.",
    "Write a short poem about {}.",
    "{}?",
    "List five facts about {}.",
    "Compare two views on {} in a table.",
    "help {}",
    "Summarise {} in 3 sentences for a busy manager.",
]


def prompts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"{rng.choice(ASKS).format(rng.choice(TOPICS))} (case {seed}-{i})" for i in range(n)]


def train(work: Path) -> Path:
    from embedcache import EmbeddingCache, load_encoder
    from heads import HeadModel

    texts = prompts(400, 0)
    data = pd.DataFrame({"text": texts, "quality": [min(1.0, len(t) / 80) for t in texts]})
    cache = EmbeddingCache(work / "cache", load_encoder())
    HeadModel(head="concat", epochs=5).fit(data, "quality", cache=cache, progress=False).save(
        work / "model", overwrite=True
    )
    return work / "model"


def notebook_app(model_dir):
    """The seed notebook's recipe: one predict call per request."""
    from fastapi import FastAPI

    from heads import HeadModel

    model = HeadModel.load(model_dir)
    model.own_encoder()
    app = FastAPI()

    @app.post("/score")
    def score(body: dict):
        return {"scores": model.predict([item["text"] for item in body["items"]], squeeze=False).tolist()}

    return app


def run_server(kind: str, model_dir: str, port_file: str, max_seconds: float, wait_ms: float) -> None:
    import uvicorn

    from heads.serving.serve import ServeConfig, create_app

    app = (
        notebook_app(model_dir)
        if kind == "notebook"
        else create_app(model_dir, config=ServeConfig(batch_wait_ms=wait_ms))
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Timer(max_seconds, lambda: setattr(server, "should_exit", True)).start()  # never outlives its bound

    def announce():
        while not server.started:
            time.sleep(0.05)
        Path(port_file).write_text(str(server.servers[0].sockets[0].getsockname()[1]))

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    os._exit(0)  # the bound's timer thread must not keep the process


def load(port: int, concurrency: int, n_requests: int, seed: int) -> dict:
    import httpx

    texts, latencies, failures, lock = prompts(n_requests, seed), [], [0], threading.Lock()
    counter = iter(range(n_requests))

    def client():
        with httpx.Client(timeout=120) as http:
            for i in counter:
                start = time.perf_counter()
                reply = http.post(f"http://127.0.0.1:{port}/score", json={"items": [{"text": texts[i]}]})
                with lock:
                    latencies.append(time.perf_counter() - start)
                    failures[0] += reply.status_code != 200

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    ms = np.asarray(latencies) * 1000
    return {
        "rps": n_requests / seconds,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "failures": failures[0],
    }


def measure(kind: str, model_dir: Path, levels, n_requests: int, max_seconds: float, wait_ms: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve",
                kind,
                "--model",
                str(model_dir),
                "--port-file",
                str(port_file),
                "--max-seconds",
                str(max_seconds),
                "--batch-wait-ms",
                str(wait_ms),
            ]
        )
        try:
            deadline = time.monotonic() + 120
            while not port_file.exists():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"the {kind} server did not start")
                time.sleep(0.1)
            port = int(port_file.read_text())
            load(port, 4, 16, seed=99)  # warm-up: the first forward passes are slower
            return {c: load(port, c, n_requests, seed=1000 * c + (kind == "notebook")) for c in levels}
        finally:
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=300, help="requests per concurrency level")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-seconds", type=float, default=600, help="each server stops itself after this")
    ap.add_argument(
        "--batch-wait-ms", type=float, default=None, help="heads serve's --batch-wait-ms (default: its own)"
    )
    ap.add_argument("--serve", choices=["notebook", "batched"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--port-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        run_server(args.serve, args.model, args.port_file, args.max_seconds, args.batch_wait_ms)
        return
    import torch

    from heads.serving.serve import ServeConfig

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, no GPU"
        if not torch.cuda.is_available()
        else f"machine: {torch.cuda.get_device_name()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = train(Path(tmp))
        wait = ServeConfig().batch_wait_ms if args.batch_wait_ms is None else args.batch_wait_ms
        results = {
            kind: measure(kind, model_dir, args.levels, args.requests, args.max_seconds, wait)
            for kind in ("notebook", "batched")
        }
    print(
        f"\n### Serving: single-item requests of new texts, {args.requests} per level, loopback, "
        f"--batch-wait-ms {wait:g}\n"
    )
    print(
        "| concurrency | notebook req/s | heads serve req/s | ratio | notebook p50 / p99 ms | heads serve p50 / p99 ms |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for c in args.levels:
        a, b = results["notebook"][c], results["batched"][c]
        print(
            f"| {c} | {a['rps']:.1f} | {b['rps']:.1f} | {b['rps'] / a['rps']:.2f} x | {a['p50']:.0f} / {a['p99']:.0f} | "
            f"{b['p50']:.0f} / {b['p99']:.0f} |"
        )
    failed = {k: sum(r["failures"] for r in v.values()) for k, v in results.items()}
    print(f"\nfailed requests: {failed}")


if __name__ == "__main__":
    main()
