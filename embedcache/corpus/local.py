"""``precompute``: the texts of data files (a corpus) into a cache, encoding only what is not cached yet.

What ``embedcache precompute`` runs, for Python users too: every file is read
and checked before the first text is encoded, and a rerun over texts that are
all cached already does not load the model at all (loading sentence-transformers
alone takes seconds): the cache records a quick key of each encoder it verified.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

from ..cache import LOCK_TIMEOUT, MANIFEST, EmbeddingCache
from ..encoders import load_encoder, quick_key, unknown_warning
from ..errors import CacheError, InputError, TruncatedTextsWarning, UnknownTokensWarning
from ..files import check_not_input
from ..index import text_keys
from ..inputs import first_rows, read_table, texts_from_table
from .ranks import launcher_rank


def precompute(
    inputs,
    cache,
    text_cols=(),
    template: str | None = None,
    model: str | None = None,
    *,
    device: str | None = None,
    batch_size: int = 64,
    max_length: int | None = None,
    precision: str | None = None,
    normalize: bool = False,
    dtype: str | None = None,
    backend: str | None = None,
    shard_size: int = 20_000,
    fmt: str | None = None,
    header: bool = True,
    skip_empty: bool = False,
    progress: bool = True,
    rank: int | None = None,
    world_size: int | None = None,
    lock_timeout: float = LOCK_TIMEOUT,
    layers=None,
) -> dict:
    """Encode the texts of ``inputs`` (data files) into the cache directory ``cache``; return a summary.

    ``text_cols`` are columns whose texts are cached, ``template`` composes one text per row
    from columns.  ``model`` defaults to the encoder an existing cache records, else the
    embedded one; so does ``backend`` (torch, onnx, onnx-int8, openvino, openvino-int8, auto:
    int8 and auto are calibrated on a sample of the corpus the first time on a machine).  The summary holds rows, texts, unique, cached, encoded, skipped, truncated,
    mostly_unknown, seconds, encode_seconds, texts_per_s, rows_per_s, cache, cache_rows and backend (where
    the vectors were computed); after ``backend="auto"`` chose, ``auto`` says what it measured and chose.
    Truncated texts and texts the encoder mostly does not know are reported as warnings
    (``TruncatedTextsWarning``, ``UnknownTokensWarning``) naming where they are.

    ``rank``/``world_size`` (default: from the launcher's environment, see
    ``embedcache.corpus.ranks.launcher_rank``) make this process encode only its slice of the
    distinct texts into its own part of the cache, on GPU ``local_rank % device_count``
    when there are GPUs; the summary then also holds rank, world_size, part and
    slice (distinct texts of this rank).  ``lock_timeout``: seconds to wait while another process writes
    the cache (0: fail at once).  ``layers`` (``"all"``, ``"last:K"``, ``"0,3,6"``) also stores each text's
    layer vectors, the means of those hidden states (a new cache; an existing one keeps the layers it has).
    """
    start = time.perf_counter()
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not text_cols and template is None:
        raise InputError(
            "give at least one text column (text_cols=..., --text-col) or a template (template=..., --template)"
        )
    check_not_input(cache, [("input", p) for p in inputs], "cache")
    texts, rows, skipped, tables = [], 0, 0, []
    for path in inputs:  # read and validate everything before the first encoding
        df = read_table(path, fmt=fmt, header=header)
        t, s = texts_from_table(df, path, list(text_cols), template, skip_empty)
        tables.append((path, df))
        texts += t
        rows += len(df)
        skipped += s
    options = encoder_options(max_length, precision, normalize, backend)
    me = launcher_rank(rank, world_size)
    mine = texts
    if me.part is not None:  # this rank's slice of the distinct texts
        distinct = list(dict.fromkeys(texts))
        mine = [t for t, owned in zip(distinct, me.owns(text_keys(distinct))) if owned]
        device = device or _device_of(me.local_rank)
    store = _open(cache, mine, model, options, device, batch_size, dtype, shard_size, me.part, lock_timeout, layers)
    stats = store.add(mine, progress=progress)
    if me.part is not None:
        stats.update(
            rank=me.rank,
            world_size=me.world_size,
            part=me.part,
            rank_from=me.source,
            slice=stats["unique"],
            unique=len(distinct),
        )
    seconds = time.perf_counter() - start
    examples = stats.pop("unknown_examples")
    stats.update(
        rows=rows,
        texts=len(texts),
        skipped=skipped,
        seconds=round(seconds, 3),
        encode_seconds=round(stats["encode_seconds"], 3),
        texts_per_s=round(stats["encoded"] / stats["encode_seconds"], 1) if stats["encoded"] else None,
        rows_per_s=round(rows / seconds, 1),
        cache=str(store.path),
        cache_rows=len(store),
        backend=store.backend,
        layers=list(store.layers) if store.layers is not None else None,
    )
    choice = getattr(store.encoder, "choice", None)
    if choice and choice.get("measured"):  # backend auto: what it measured and why it chose
        stats["auto"] = {
            "chose": f"{choice['backend']} {choice['precision']}",
            "rule": choice.get("rule"),
            "measured": choice["measured"],
        }
    if stats["truncated"]:
        warnings.warn(
            f"{stats['truncated']} texts were longer than {getattr(store.encoder, 'max_length', None)} tokens and were truncated",
            TruncatedTextsWarning,
            stacklevel=2,
        )
    if stats["mostly_unknown"]:
        where = [w or "a composed text" for w in first_rows(examples, tables)]
        warnings.warn(
            unknown_warning(
                stats["mostly_unknown"],
                stats["encoded"],
                store.encoder_name,
                examples,
                store.unknown_report()["languages"],
                where,
            ),
            UnknownTokensWarning,
            stacklevel=2,
        )
    return stats


def encoder_options(max_length=None, precision=None, normalize=False, backend=None) -> dict:
    """``load_encoder`` options from precompute's arguments, leaving out the defaults (so a cache's recorded
    encoder fills in what was not asked for)."""
    return {
        **({"max_length": max_length} if max_length else {}),
        **({"precision": precision} if precision not in (None, "auto") else {}),
        **({"normalize": True} if normalize else {}),
        **({"backend": backend} if backend else {}),
    }


def recorded_encoder(cache: EmbeddingCache | None, model: str | None, options: dict) -> tuple[str | None, dict]:
    """The model and ``load_encoder`` options to fill ``cache`` with: an existing cache's own encoder, as it
    records it, unless ``model`` is given (None: the default encoder)."""
    if model is not None or cache is None:
        return model, options
    return cache.recorded_encoder.model_and_options("pass --model", **options)


def _device_of(local_rank: int) -> str | None:
    """GPU ``local_rank % device_count`` when there are GPUs, else None (the encoder's default)."""
    import torch

    return f"cuda:{local_rank % torch.cuda.device_count()}" if torch.cuda.is_available() else None


def _open(
    cache,
    texts,
    model,
    options: dict,
    device,
    batch_size,
    dtype,
    shard_size,
    part=None,
    lock_timeout: float = LOCK_TIMEOUT,
    layers=None,
) -> EmbeddingCache:
    """The cache to add ``texts`` to: with its encoder loaded, unless every text is cached and the encoder
    asked for is one the cache verified before (then no model is loaded; with ``layers`` asked for, the
    model is loaded to check them)."""
    cache = Path(cache)
    if cache.exists() and not cache.is_dir():
        raise CacheError(f"cache {cache} is a file, not a directory")
    known = (cache / MANIFEST).exists() and EmbeddingCache(cache, dtype=dtype, lock_timeout=lock_timeout)
    model, options = recorded_encoder(known or None, model, options)
    key = quick_key(model, device=device, **options)
    if known and layers is None and known.knows(key) and known.contains(texts).all():
        return known  # everything is cached: no need to load the model
    calibration = {"calibration": texts} if options.get("backend") in ("auto", "openvino-int8") else {}
    encoder = load_encoder(model, device=device, batch_size=batch_size, **options, **calibration)
    store = EmbeddingCache(
        cache, encoder, dtype=dtype, shard_size=shard_size, part=part, lock_timeout=lock_timeout, layers=layers
    )
    store.remember(key)
    return store
