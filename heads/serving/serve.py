"""``heads serve``: a saved model over HTTP (FastAPI), requests micro-batched into one encoder call.

``create_app(model_dir, cache=None)`` returns the FastAPI app:

- ``POST /score`` ``{"items": [{"text": ..., "pair": ..., "condition": ...}], "interval": 0.9}`` (fields as the
  model was trained; a template's fields by name) -> ``{"scores", "lower", "upper", "model", "fingerprint"}``;
- ``GET /health``, ``GET /model`` (head, columns, labels, encoder, validation metrics), ``GET /metrics``
  (Prometheus text: requests, errors, latency, texts encoded, cache hits), ``/docs``.

Requests that arrive within ``batch_wait_ms`` of each other are scored together, up to ``max_batch`` items:
one encoder call serves them all, so throughput grows with concurrency.  Recent texts' vectors stay in an
in-memory LRU in front of the cache, which is only read.  Bad input is a 422 naming the item and field.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np

from embedcache import EmbeddingCache, InputError, MissingDependencyError, ParameterError

from ..model import HeadModel
from .scoring import FALLBACK_MAX_CHARS, Batcher, Scorer, ServeConfig

API_KEY_VARIABLE = "EMBEDCACHE_API_KEY"


class ServeMetrics:
    """The app's Prometheus counters, in a registry of its own (nothing global)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("heads_requests", "scoring requests", registry=self.registry)
        self.errors = Counter("heads_errors", "requests answered with an error", ["status"], registry=self.registry)
        self.latency = Histogram(
            "heads_latency_seconds",
            "seconds per scoring request",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.texts = Counter(
            "heads_texts_encoded", "texts encoded (neither in memory nor in the cache)", registry=self.registry
        )
        self.hits = Counter("heads_cache_hits", "texts whose vectors came from the cache", registry=self.registry)
        self.batches = Counter(
            "heads_batches", "scoring calls (each serves the requests that arrived together)", registry=self.registry
        )

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class RequestError(Exception):
    """A request answered with ``status`` and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def score_request(body: dict, scorer: Scorer, batcher: Batcher, metrics: ServeMetrics) -> dict:
    """The reply to ``POST /score``: scores (and bounds) for the request's items, or a RequestError."""
    metrics.requests.inc()
    start = time.perf_counter()
    problem, items = scorer.check(body.get("items"))
    interval = body.get("interval", scorer.config.interval)
    if problem is None and interval is not None and not (isinstance(interval, (int, float)) and 0 < interval < 1):
        problem = f"interval: expected a number between 0 and 1, got {interval!r}"
    if problem:
        raise RequestError(422, problem)
    try:
        scores = await batcher.score(items)
        out = {"scores": scores.tolist()}
        if "condition" in scorer.fields:
            unseen = await asyncio.get_running_loop().run_in_executor(batcher.pool, scorer.unseen, items)
            if unseen:  # scored from their vectors alone: the reply says so
                out["unseen_conditions"] = unseen
        if interval is not None:
            lower, upper = scorer.model.bounds(scores, interval)
            out.update(lower=lower.tolist(), upper=upper.tolist())
    except (ParameterError, InputError) as e:
        raise RequestError(422, str(e)) from None
    metrics.latency.observe(time.perf_counter() - start)
    return out


class BodyLimit:
    """ASGI middleware: a request body is read here as it arrives, counted in bytes (chunked ones too): past
    ``max_bytes`` it gets a 413, and a body that does not arrive within ``timeout`` seconds a 408, before the
    app sees it.  The app then reads the body from memory.

    Plain ASGI rather than ``@app.middleware("http")`` (Starlette's BaseHTTPMiddleware, which wraps every
    request in extra tasks): with that, the serve benchmark measured 2.55x the baseline at 32 clients against
    3.2-3.5x with this (single runs on a noisy 2-core machine)."""

    def __init__(self, app, max_bytes: int, refused, timeout: float = 10.0):
        self.app, self.max_bytes, self.refused, self.timeout = app, max_bytes, refused, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(
                scope,
                receive,
                send,
                413,
                f"request body of {length.decode(errors='replace')} bytes, at most {self.max_bytes}",
            )
            return
        chunks, size, deadline = [], 0, asyncio.get_running_loop().time() + self.timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                await self._refuse(
                    scope, receive, send, 408, f"the request body did not arrive within {self.timeout:g} s"
                )
                return
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._refuse(
                    scope,
                    receive,
                    send,
                    413,
                    f"request body of more than {self.max_bytes} bytes, at most {self.max_bytes}",
                )
                return
            if not message.get("more_body", False):
                break
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, status: int, detail: str) -> None:
        from fastapi.responses import JSONResponse

        self.refused(status)
        response = JSONResponse({"detail": detail}, status_code=status, headers={"connection": "close"})
        await response(scope, receive, send)


def create_app(model_dir, cache=None, config: ServeConfig | None = None, api_key: str | None = None):
    """The FastAPI app serving the model in ``model_dir`` (``api_key``: default ``$EMBEDCACHE_API_KEY``)."""
    try:
        import prometheus_client  # noqa: F401 -- ServeMetrics needs it: say so before loading anything
        from fastapi import FastAPI, Header, HTTPException, Response
    except ImportError as e:
        raise MissingDependencyError(
            "heads serve needs fastapi, uvicorn and prometheus-client: pip install -e '.[serve]'"
        ) from e
    config = config or ServeConfig()
    model = HeadModel.load(model_dir)
    cache = EmbeddingCache(cache) if cache is not None and not isinstance(cache, EmbeddingCache) else cache
    if config.interval is not None:  # a default the model cannot give is one error now, not one per request
        model.bounds(np.zeros((1, len(model.labels_))), config.interval)
    scorer, metrics = Scorer(model, cache, config), ServeMetrics()
    scorer.metrics = metrics
    batcher = Batcher(scorer, config, on_batch=metrics.batches.inc)
    api_key = os.environ.get(API_KEY_VARIABLE) if api_key is None else api_key
    name = Path(model_dir).name  # what clients see: the model's name, not where it lies on this machine

    @asynccontextmanager
    async def lifespan(app):
        # the encoder loads before the first request, not during it
        await asyncio.get_running_loop().run_in_executor(batcher.pool, scorer.warm_up)
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.pool.shutdown(wait=True)

    # nothing about where the model lies on this machine; with an API key, no unauthenticated schema or docs
    hidden = {"openapi_url": None, "docs_url": None, "redoc_url": None} if api_key else {}
    app = FastAPI(title="heads", description="Scores from a saved heads model", lifespan=lifespan, **hidden)
    # a body larger than the largest valid request is refused as soon as that many bytes arrived
    max_chars = min(config.max_request_chars, config.max_items * (config.max_chars or FALLBACK_MAX_CHARS))
    max_bytes = 6 * max_chars + 200 * config.max_items * len(scorer.fields) + 4096  # \uXXXX escapes, field names

    app.add_middleware(
        BodyLimit,
        max_bytes=max_bytes,
        timeout=config.body_timeout_s,
        refused=lambda status: metrics.errors.labels(str(status)).inc(),
    )

    def authorise(key: str | None) -> None:
        if api_key and not (key and hmac.compare_digest(key.encode(), api_key.encode())):
            metrics.errors.labels("401").inc()
            raise HTTPException(401, "missing or wrong API key (header X-API-Key)")

    @app.post("/score")
    async def score(body: dict, x_api_key: str | None = Header(default=None)):
        authorise(x_api_key)
        try:
            out = await score_request(body, scorer, batcher, metrics)
        except RequestError as e:
            metrics.errors.labels(str(e.status)).inc()
            raise HTTPException(e.status, str(e)) from None
        except Exception:
            metrics.errors.labels("500").inc()
            raise
        return {**out, "model": name, "fingerprint": model.encoder_["fingerprint"]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def describe(x_api_key: str | None = Header(default=None)):
        authorise(x_api_key)
        return {
            "model": name,
            "head": model.head_,
            "columns": model.columns_,
            "fields": scorer.fields,
            "labels": model.labels_,
            "encoder": model.encoder_,
            "validation": model.validation_,
            "intervals": model.calibration_ is not None,
        }

    @app.get("/metrics")
    async def prometheus():
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    return app


WORKER_HEALTHCHECK_S = 60  # seconds a worker of --workers N may take to answer while it loads
CONFIG_VARIABLE = "HEADS_SERVE"  # what each worker process of heads serve --workers N builds its app from


def app_from_environment():
    """The app of ``heads serve`` in a worker process (uvicorn's ``factory``): its arguments come as JSON in
    ``$HEADS_SERVE``."""
    import json

    spec = json.loads(os.environ[CONFIG_VARIABLE])
    return create_app(spec["model"], spec["cache"], ServeConfig(**spec["config"]))


def serve(
    model_dir,
    cache=None,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    config: ServeConfig | None = None,
) -> None:
    """Run the app with uvicorn until stopped (SIGINT/SIGTERM finish the requests in flight first)."""
    import json
    import warnings
    from dataclasses import asdict

    try:
        import uvicorn
    except ImportError as e:
        raise MissingDependencyError(
            "heads serve needs fastapi, uvicorn and prometheus-client: pip install -e '.[serve]'"
        ) from e
    config = config or ServeConfig()
    if host not in ("127.0.0.1", "localhost", "::1") and not os.environ.get(API_KEY_VARIABLE):
        warnings.warn(
            f"serving on {host} without an API key: anyone who can reach it can score; set {API_KEY_VARIABLE}",
            UserWarning,
            stacklevel=2,
        )
    HeadModel.load(model_dir)  # a damaged model is one error here, not one per worker
    try:
        if workers == 1:
            uvicorn.run(create_app(model_dir, cache, config), host=host, port=port, timeout_graceful_shutdown=30)
            return
        os.environ[CONFIG_VARIABLE] = json.dumps(
            {"model": str(model_dir), "cache": None if cache is None else str(cache), "config": asdict(config)}
        )
        # A worker answers the parent's health check from a thread while it loads the model; loading (torch, the
        # encoder) can starve that thread for many seconds, and uvicorn's 5 s default then kills and restarts
        # workers that are merely slow to start, over and over.
        uvicorn.run(
            "heads.serving.serve:app_from_environment",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            timeout_graceful_shutdown=30,
            timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
        )
    except KeyboardInterrupt:  # uvicorn finished the requests in flight, then passed Ctrl-C on
        pass
