"""Precompute on a Ray cluster with Ray Data (extra ``ray``): ``embedcache.corpus.ray_data.precompute``, ``--ray``.

Ray Data reads the inputs (Parquet, CSV, TSV, JSON Lines) in parallel blocks,
composes each row's texts, and streams them through a pool of encoder actors
(``concurrency=workers``, ``num_gpus=gpus_per_worker``).  Each actor writes its
own part of the cache (``parts/ray-<id>``), skipping texts any part holds
already, so no actor waits for another.  Ray restarts an actor that dies and
retries its batch; what it committed before dying stays, and a job rerun after
a crash encodes only what is missing.  Two actors may encode the same text at
once (a text repeated in two blocks): both copies are kept, readers read the
first, and ``embedcache compact`` drops the other.
"""

from __future__ import annotations

import glob
import time
import uuid
from pathlib import Path

import pandas as pd

from ..cache import MANIFEST, EmbeddingCache
from ..checks import check_float, check_int, flag_type
from ..encoders import load_encoder
from ..errors import EmbedcacheError, InputError, MissingDependencyError, ParameterError
from ..inputs import FORMATS, texts_from_table
from .local import encoder_options, recorded_encoder


def ray_arguments(p) -> None:
    """The flags of a command that can run on a Ray cluster (``embedcache precompute``, ``heads predict``)."""
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="run on a Ray cluster with Ray Data (pip install 'embedcache[ray]'): at ADDRESS (auto: the "
        "running one, local: a new one on this machine, ray://head:10001); without ADDRESS, RAY_ADDRESS's "
        "or one running on this machine, else a new one",
    )
    p.add_argument(
        "--workers", type=flag_type(check_int), default=2, metavar="N", help="with --ray: actors (default 2)"
    )
    p.add_argument(
        "--gpus-per-worker",
        type=flag_type(check_float, float, low=0),
        default=0,
        metavar="G",
        help="with --ray: GPUs each actor holds (default 0: the CPU)",
    )
    p.add_argument(
        "--cpus-per-worker",
        type=flag_type(check_float, float, low=0, low_open=True),
        default=None,
        metavar="C",
        help="with --ray: CPUs each actor holds (default: 1, or less so that the actors leave "
        "one of the cluster's CPUs for reading the inputs)",
    )


RAY_READERS = ("parquet", "csv", "tsv", "jsonl")  # what Ray Data reads in parallel blocks


def connect_ray(address: str | None = None, num_cpus: int | None = None):
    """The ``ray`` module, connected: to ``address`` (``auto``, ``local`` for a new cluster on this machine,
    ``ray://host:10001``), else as ``ray.init()`` does (``RAY_ADDRESS``, a cluster running on this machine,
    else a new one).  An existing connection is kept."""
    try:
        import ray
        import ray.data  # the extra installs both
    except ImportError:
        raise MissingDependencyError("running on Ray needs Ray Data: pip install 'embedcache[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address or None, num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    return ray


def expand_inputs(inputs) -> list[Path]:
    """Input paths with glob patterns (``'corpus/*.parquet'``) expanded, in order; a pattern that matches
    nothing or a missing file is an InputError naming it."""
    paths = []
    for item in [inputs] if isinstance(inputs, (str, Path)) else inputs:
        item = str(item)
        if glob.has_magic(item):
            found = sorted(glob.glob(item))
            if not found:
                raise InputError(f"{item}: no file matches this pattern")
            paths += [Path(p) for p in found]
        elif not Path(item).exists():
            raise InputError(f"{item}: no such file")
        else:
            paths.append(Path(item))
    return paths


def read_dataset(inputs, fmt: str | None = None):
    """A Ray Dataset of the rows of ``inputs`` with a ``path`` column naming each row's file."""
    ray = connect_ray()
    paths = expand_inputs(inputs)
    by_format: dict[str, list[str]] = {}
    for path in paths:
        kind = fmt or FORMATS.get(path.suffix.lower())
        if kind not in RAY_READERS:
            raise InputError(f"{path}: Ray reads {', '.join(RAY_READERS)} files; convert it or drop --ray")
        by_format.setdefault(kind, []).append(str(path.resolve()))  # workers run in other directories
    parts = []
    for kind, files in by_format.items():
        common = {"include_paths": True}
        if kind == "parquet":
            parts.append(ray.data.read_parquet(files, **common))
        elif kind in ("csv", "tsv"):
            from pyarrow import csv

            options = {"parse_options": csv.ParseOptions(delimiter="\t")} if kind == "tsv" else {}
            parts.append(ray.data.read_csv(files, **options, **common))
        else:
            parts.append(ray.data.read_json(files, lines=True, **common))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def _texts(batch: pd.DataFrame, text_cols, template, skip_empty) -> pd.DataFrame:
    """The texts to cache from one block of rows, checked as ``precompute`` checks a file."""
    where = f"{batch['path'].iloc[0]} (a block of its rows)" if "path" in batch and len(batch) else "a block of rows"
    texts, _ = texts_from_table(batch.drop(columns=["path"], errors="ignore"), where, text_cols, template, skip_empty)
    return pd.DataFrame({"text": texts})


class _EncodingActor:
    """One encoder on one device, writing its own part of the cache."""

    def __init__(self, cache, model, options, batch_size, shard_size, dtype, layers=None):
        encoder = load_encoder(model, batch_size=batch_size, **options)
        part = f"ray-{uuid.uuid4().hex[:12]}"
        self.cache = EmbeddingCache(cache, encoder, dtype=dtype, shard_size=shard_size, part=part, layers=layers)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        stats = self.cache.add(batch["text"].tolist())
        return pd.DataFrame(
            [
                {
                    "texts": stats["rows"],
                    "cached": stats["cached"],
                    "encoded": stats["encoded"],
                    "truncated": stats["truncated"],
                    "encode_seconds": stats["encode_seconds"],
                    "part": self.cache.part,
                }
            ]
        )


def _unwrap(error: BaseException) -> BaseException:
    """The EmbedcacheError a Ray task raised, out of Ray's wrappers; else ``error`` itself."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, EmbedcacheError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return error


def actor_cpus(total: float, workers: int, cpus_per_worker: float | None, gpus_per_worker: float = 0) -> float:
    """CPUs each actor holds: ``cpus_per_worker``, or (None) a share of the cluster's ``total`` CPUs that leaves
    one for the tasks that read the inputs (at most 1 each).  Actors that would hold every CPU are refused: Ray
    would never schedule a read task, and the pipeline would wait forever."""
    spare = 1.0 if total >= 2 else total / 2
    if cpus_per_worker is None:
        cpus_per_worker = min(1.0, (total - spare) / workers) if total else 1.0
        cpus_per_worker = max(round(cpus_per_worker, 2), 0.01)
    if total and workers * cpus_per_worker > total - min(spare, 0.5):
        fit = max(round((total - spare) / workers, 2), 0.01)
        raise ParameterError(
            f"{workers} actors of {cpus_per_worker:g} CPU hold {workers * cpus_per_worker:g} of the cluster's {total:g} "
            f"CPUs and leave none to read the inputs: Ray would wait forever; give --cpus-per-worker {fit:g} (or leave "
            "it out: actors then leave a CPU free), or fewer --workers"
        )
    return cpus_per_worker


def map_with_actors(
    ds,
    actor,
    constructor_kwargs: dict,
    *,
    workers: int,
    gpus_per_worker: float,
    cpus_per_worker: float | None,
    batch_size: int,
    progress: bool,
) -> pd.DataFrame:
    """Run ``ds`` through a pool of ``workers`` actors of class ``actor`` and return what they returned, as
    one table.  Ray Data restarts an actor that dies and retries its batch (``max_restarts=-1`` by default
    for actor pools).  An EmbedcacheError an actor raised comes out as itself, not in Ray's wrappers."""
    import ray

    cpus_per_worker = actor_cpus(ray.cluster_resources().get("CPU", 0), workers, cpus_per_worker, gpus_per_worker)
    ray.data.DataContext.get_current().enable_progress_bars = progress
    ds = ds.map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_gpus=gpus_per_worker,
        num_cpus=cpus_per_worker,
        batch_size=batch_size,
        batch_format="pandas",
    )
    try:
        return ds.to_pandas()
    except Exception as e:  # noqa: BLE001 -- Ray wraps what a task raised: give the user our own error
        raise _unwrap(e) from None


def precompute(
    data,
    cache,
    text_cols=(),
    template: str | None = None,
    model: str | None = None,
    *,
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
    batch_size: int = 64,
    rows_per_batch: int = 1024,
    shard_size: int = 20_000,
    dtype: str | None = None,
    skip_empty: bool = False,
    progress: bool = True,
    max_length: int | None = None,
    precision: str | None = None,
    normalize: bool = False,
    backend: str | None = None,
    layers=None,
) -> dict:
    """Encode the texts of ``data`` (paths, glob patterns or a Ray Dataset) into ``cache`` on a Ray cluster.

    ``workers`` encoder actors each hold ``gpus_per_worker`` GPUs (0: the CPU) and
    ``cpus_per_worker`` CPUs (default: sized so that one of the cluster's CPUs stays free
    for reading; with 2 CPUs, 2 actors of 0.5 each).  Each batch of ``rows_per_batch`` rows becomes at most one shard:
    small batches even out when the actors finish, large ones leave fewer shards
    (``embedcache compact`` merges them either way).  The encoder arguments are those of
    ``embedcache.precompute``.  Returns texts, cached, encoded, truncated, parts,
    workers, seconds, encode_seconds and texts_per_s.
    """
    began = time.perf_counter()
    cache = Path(cache).resolve()  # actors run in other directories, on other machines
    ray = connect_ray(address)
    known = EmbeddingCache(cache) if (cache / MANIFEST).exists() else None
    model, options = recorded_encoder(known, model, encoder_options(max_length, precision, normalize, backend))
    ds = data if isinstance(data, ray.data.Dataset) else read_dataset(data)
    ds = ds.map_batches(
        _texts,
        fn_kwargs={"text_cols": list(text_cols), "template": template, "skip_empty": skip_empty},
        batch_format="pandas",
    )
    # Blocks of one batch each, streamed: a few large files still spread over every actor.
    ds = ds.repartition(target_num_rows_per_block=rows_per_batch)
    done = map_with_actors(
        ds,
        _EncodingActor,
        {
            "cache": str(cache),
            "model": model,
            "options": options,
            "batch_size": batch_size,
            "shard_size": shard_size,
            "dtype": dtype,
            "layers": layers,
        },
        workers=workers,
        gpus_per_worker=gpus_per_worker,
        cpus_per_worker=cpus_per_worker,
        batch_size=rows_per_batch,
        progress=progress,
    )
    seconds = time.perf_counter() - began
    totals = {
        c: done[c].sum() if len(done) else 0 for c in ("texts", "cached", "encoded", "truncated", "encode_seconds")
    }
    return {
        **{c: int(totals[c]) for c in ("texts", "cached", "encoded", "truncated")},
        "parts": sorted(set(done["part"])) if len(done) else [],
        "workers": workers,
        "seconds": round(seconds, 3),
        "encode_seconds": round(float(totals["encode_seconds"]), 3),
        "texts_per_s": round(totals["encoded"] / seconds, 1) if totals["encoded"] else None,
        "cache": str(cache),
        "cache_rows": len(EmbeddingCache(cache)) if (cache / MANIFEST).exists() else 0,
    }
