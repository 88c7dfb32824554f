"""Scoring requests: the settings of a server, the model's vectors for request texts (the cache, else a bounded memory of recent ones), one scoring call at a time, and the batcher that gathers requests into it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from embedcache import EmbeddingCache, Encoder
from embedcache.toolkit import template_columns

from ..data import as_table, embed, load_inputs
from ..head_types import head_type
from ..model import HeadModel


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
        return self.recalled(texts, None)

    def encode_layers(self, texts: list[str], layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Only the layer vectors are kept: the first of the pair is None."""
        return None, self.recalled(texts, tuple(layers))  # type: ignore[return-value]

    def recalled(self, texts: list[str], layers: tuple[int, ...] | None) -> np.ndarray:
        """Vectors (with ``layers``: layer vectors) of ``texts``, the recent ones from memory."""
        out, missing = [None] * len(texts), []
        for i, text in enumerate(texts):
            vector = self.recent.get((layers, text))
            if vector is None:
                missing.append(i)
            else:
                self.recent.move_to_end((layers, text))
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
            for i, text, vector in zip(missing, new, embed(self.source, new, layers=layers)):
                out[i] = vector
                self.recent[(layers, text)] = vector
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
            return model.predict_inputs(
                load_inputs(self.vectors, df, model.columns_, path, layers=getattr(model, "layers_", None))
            )
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
