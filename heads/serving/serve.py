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
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedcache import EmbeddingCache, Encoder, InputError, MissingDependencyError, ParameterError
from embedcache.toolkit import template_columns

from ..data import as_table, embed, load_inputs
from ..head_types import head_type
from ..model import HeadModel

API_KEY_VARIABLE = "EMBEDCACHE_API_KEY"


@dataclass
class ServeConfig:
    """Limits and batching of a served model."""

    max_items: int = 256  # items per request
    max_chars: int | None = None  # characters per text; None: 4x what the encoder reads (its max tokens)
    max_batch: int = 512  # items scored together
    batch_wait_ms: float = 2.0  # how long a batch waits for more requests once the queue is empty
    lru_size: int = 100_000  # recent texts whose vectors are kept in memory
    max_request_chars: int = 262_144  # characters of all texts of one request together: the work one client asks
    body_timeout_s: float = 10.0  # a request body must arrive within this many seconds (slow clients hold a slot)
    interval: float | None = None  # the bounds' level when a request names none (None: no bounds unless asked)


CHARS_PER_TOKEN = 4  # a token covers about 4 characters of English (fewer elsewhere): max_chars' default
FALLBACK_MAX_CHARS = 20_000  # where the encoder's maximum length is not known


class RecentVectors(Encoder):
    """Vectors of recent texts kept in memory (least recently used dropped first), the rest from ``source``
    (a cache, read only, or an encoder)."""

    def __init__(self, source, size: int):
        super().__init__()
        self.source, self.size, self.recent = source, size, OrderedDict()
        self.name, self.dim = "recent vectors", None
        self.encoded = self.cache_hits = self.memory_hits = 0

    def describe(self) -> dict:
        return {"recent": True}

    def encode(self, texts: list[str]) -> np.ndarray:
        out, missing = [None] * len(texts), []
        for i, text in enumerate(texts):
            vector = self.recent.get(text)
            if vector is None:
                missing.append(i)
            else:
                self.recent.move_to_end(text)
                out[i] = vector
        self.memory_hits += len(texts) - len(missing)
        if missing:
            new = [texts[i] for i in missing]
            if isinstance(self.source, EmbeddingCache):
                held = int(self.source.contains(new).sum())
                self.cache_hits += held
                self.encoded += len(new) - held
            else:
                self.encoded += len(new)
            for i, text, vector in zip(missing, new, embed(self.source, new)):
                out[i] = vector
                self.recent[text] = vector
            while len(self.recent) > self.size:
                self.recent.popitem(last=False)
        return np.stack(out) if out else np.zeros((0, 1), dtype=np.float32)


class Scorer:
    """A loaded model scoring lists of items (dicts of fields)."""

    def __init__(self, model: HeadModel, cache: EmbeddingCache | None, config: ServeConfig):
        self.model, self.config = model, config
        self.joint = head_type(model.head_).joint
        self.vectors = None if self.joint else RecentVectors(model.vector_source(cache), config.lru_size)
        columns = model.columns_
        if columns.get("template"):
            self.fields = list(dict.fromkeys(template_columns(columns["template"])))
        else:
            self.fields = ["text"]
        self.fields += [s for s in ("pair", "condition") if columns.get(s) is not None]
        # an item may name a side by the column it was trained from ({"prompt": ...} for {"text": ...})
        self.aliases = {c: s for s, c in columns.items() if s in self.fields and c is not None and c != s}
        self.max_chars = config.max_chars or FALLBACK_MAX_CHARS  # until the encoder is loaded (warm_up)
        self.metrics = None  # a ServeMetrics to count encoded texts and cache hits in
        self._trained = None  # vectors of the trained conditions, for naming the nearest to an unseen one

    def check(self, items) -> tuple[str | None, list]:
        """What is wrong with a request's items, naming the item and field (None when they can be scored),
        and the items with their fields under the names the model reads."""
        if not isinstance(items, list) or not items:
            return "items: expected a non-empty list of objects", []
        if len(items) > self.config.max_items:
            return f"items: {len(items)} items, at most {self.config.max_items} per request", []
        items = [
            {self.aliases.get(k, k): v for k, v in item.items()} if isinstance(item, dict) else item for item in items
        ]
        return self._problem(items), items

    def _problem(self, items: list) -> str | None:
        total = 0
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                return f"items[{i}]: expected an object with {', '.join(self.fields)}"
            for field in self.fields:
                value = item.get(field)
                if value is None:
                    return f"items[{i}].{field}: missing (this model reads {', '.join(self.fields)})"
                if not isinstance(value, str):
                    return f"items[{i}].{field}: expected a string, got {type(value).__name__}"
                if not value.strip():
                    return f"items[{i}].{field}: empty text"
                if len(value) > self.max_chars:
                    return f"items[{i}].{field}: {len(value)} characters, at most {self.max_chars}"
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError as e:
                    return f"items[{i}].{field}: not valid Unicode text (a lone surrogate at character {e.start})"
                total += len(value)
                if total > self.config.max_request_chars:
                    return (
                        f"items: more than {self.config.max_request_chars} characters in all; split the request "
                        "into smaller ones"
                    )
            extra = sorted(set(item) - set(self.fields))
            if extra:
                return f"items[{i}]: unknown field {extra[0]!r} (this model reads {', '.join(self.fields)})"
        return None

    def warm_up(self) -> None:
        """Load the encoder now (a cache loads its own on first use)."""
        source = self.vectors.source if self.vectors else None
        encoder = None
        if isinstance(source, EmbeddingCache):
            if source.encoder is None and source.encoder_spec is not None:
                source.load_encoder()
            encoder = source.encoder
        else:
            encoder = self.model.own_encoder()
        reads = getattr(encoder, "max_length", None)
        if self.config.max_chars is None and isinstance(reads, int):
            self.max_chars = CHARS_PER_TOKEN * reads  # beyond it the encoder reads nothing more of a text

    def unseen(self, items: list[dict]) -> list[dict]:
        """The conditions of ``items`` the model never saw in training, each with its nearest trained condition
        and their cosine (runs on the scoring thread: it may encode)."""
        trained = getattr(self.model, "conditions_", None)
        values = sorted({item["condition"] for item in items if "condition" in item} - set(trained or ()))
        if not trained or not values or self.vectors is None:
            return []
        from ..neighbours import nearest

        if self._trained is None:
            self._trained = self.vectors.encode(list(trained))
        cosine, position = nearest(self._trained, self.vectors.encode(values), k=1)
        return [
            {"condition": v, "nearest_trained": trained[int(j)], "cosine": round(float(c), 4)}
            for v, c, j in zip(values, cosine[:, 0], position[:, 0])
        ]

    def score(self, items: list[dict]) -> np.ndarray:
        """Scores of ``items`` (one call at a time: the batcher's one thread); the texts it encoded and read
        from the cache are added to ``self.metrics`` once, by the call that did the work."""
        model = self.model
        if self.joint:
            return model.predict(items, squeeze=False)
        before = (self.vectors.encoded, self.vectors.cache_hits)
        try:
            df, path = as_table(items, model.columns_, model.sides_)
            return model.predict_inputs(load_inputs(self.vectors, df, model.columns_, path))
        finally:
            if self.metrics is not None:
                self.metrics.texts.inc(self.vectors.encoded - before[0])
                self.metrics.hits.inc(self.vectors.cache_hits - before[1])


class Batcher:
    """Requests queued and scored together: the first waits up to ``batch_wait_ms`` for others."""

    def __init__(self, scorer: Scorer, config: ServeConfig, on_batch=None):
        self.scorer, self.config, self.on_batch = scorer, config, on_batch
        self.queue: asyncio.Queue = asyncio.Queue()
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="scorer")  # one forward pass at a time uses every core

    async def score(self, items: list[dict]) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((items, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size, deadline = len(batch[0][0]), loop.time() + self.config.batch_wait_ms / 1000
            while size < self.config.max_batch:
                try:  # what queued up while the last batch was scored joins at once
                    batch.append(self.queue.get_nowait())
                except asyncio.QueueEmpty:
                    left = deadline - loop.time()
                    if left <= 0:
                        break
                    try:
                        batch.append(await asyncio.wait_for(self.queue.get(), left))
                    except TimeoutError:
                        break
                size += len(batch[-1][0])
            items = [item for request, _ in batch for item in request]
            if self.on_batch is not None:
                self.on_batch()
            try:
                scores = await loop.run_in_executor(self.pool, self.scorer.score, items)
            except Exception as e:  # noqa: BLE001 -- scored again request by request: an error is its own
                if len(batch) == 1:
                    if not batch[0][1].done():
                        batch[0][1].set_exception(e)
                    continue
                for request, future in batch:
                    try:
                        result = await loop.run_in_executor(self.pool, self.scorer.score, request)
                    except Exception as own:  # noqa: BLE001 -- this request's own failure
                        if not future.done():
                            future.set_exception(own)
                    else:
                        if not future.done():
                            future.set_result(result)
                continue
            start = 0
            for request, future in batch:
                if not future.done():
                    future.set_result(scores[start : start + len(request)])
                start += len(request)


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
