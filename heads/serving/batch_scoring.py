"""Batch scoring on a Ray cluster: every input file scored by a pool of actors into its own Parquet file.

What users at scale do with a trained head: score a corpus of many files.  Ray
Data hands each input file to one of ``workers`` actors (each loads the model
once, with its encoder, on ``gpus_per_worker`` GPUs), which reads it, scores it
with ``HeadModel.predict_table`` (vectors from the cache where it holds them)
and writes ``OUT/<file stem>.parquet`` (``id, score[, lower, upper]``) whole,
through a temporary file and a rename.  A file whose output exists is skipped,
so a job killed at any point and rerun scores only what is missing; Ray restarts
an actor that dies and gives its file to it again.
"""

from __future__ import annotations

import glob
import time
from pathlib import Path

import pandas as pd

from embedcache import EmbeddingCache, InputError, ParameterError, read_table
from embedcache.toolkit import atomic_file, check_not_input, connect_ray, expand_inputs, map_with_actors, writing

from ..model import HeadModel


class _ScoringActor:
    def __init__(self, model, cache, out, columns, id_col, interval, decimals, header, std=False):
        self.model = HeadModel.load(model)
        self.cache = EmbeddingCache(cache) if cache else None
        self.out, self.columns, self.id_col = Path(out), columns, id_col
        self.interval, self.decimals, self.header, self.std = interval, decimals, header, std

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        done = []
        for path in batch["path"]:
            began = time.perf_counter()
            table = self.model.predict_table(
                read_table(path, header=self.header),
                self.cache,
                self.columns,
                id_col=self.id_col,
                decimals=self.decimals,
                interval=self.interval,
                std=self.std,
            )
            with atomic_file(output_of(self.out, Path(path))) as tmp:
                table.to_parquet(tmp, index=False)
            done.append({"path": path, "rows": len(table), "seconds": time.perf_counter() - began})
        return pd.DataFrame(done)


def output_of(out: Path, path: Path) -> Path:
    return out / f"{path.stem}.parquet"


def score_files(
    model,
    data,
    out,
    cache=None,
    columns=None,
    *,
    id_col=None,
    interval=None,
    decimals=None,
    header: bool = True,
    address: str | None = None,
    workers: int = 2,
    gpus_per_worker: float = 0,
    cpus_per_worker: float | None = None,
    progress: bool = True,
    std: bool = False,
) -> dict:
    """Score every file of ``data`` (paths or glob patterns) with the model directory ``model`` into the
    directory ``out``, one Parquet file per input; return files, skipped (outputs there already), rows, seconds."""
    began = time.perf_counter()
    # Actors run in other directories, on other machines: every path they get is absolute.
    files = [p.resolve() for p in expand_inputs(data)]
    out, model, cache = Path(out).resolve(), Path(model).resolve(), Path(cache).resolve() if cache else None
    check_not_input(out, [("--data", p) for p in files] + [("--model", model), ("--cache", cache)], "--out")
    seen = {}
    for path in files:
        other = seen.setdefault(output_of(out, path).name, path)
        if other != path:
            raise InputError(
                f"{other} and {path} would both be scored into {output_of(out, path)}: give files "
                "with different names, or score them into different --out directories"
            )
    loaded = HeadModel.load(model)  # a wrong directory fails here, in one line, before any actor starts
    if std and loaded.config.ensemble == 1:
        raise ParameterError("std=True (--std) is the spread of an ensemble's members: train with ensemble=K")
    with writing(out, "creating"):
        out.mkdir(parents=True, exist_ok=True)
    todo = [p for p in files if not output_of(out, p).exists()]
    summary = {"files": len(files), "skipped": len(files) - len(todo), "rows": 0, "out": str(out)}
    if todo:
        ray = connect_ray(address)
        files_ds = ray.data.from_items([{"path": str(p)} for p in todo], override_num_blocks=len(todo))
        done = map_with_actors(
            files_ds,
            _ScoringActor,
            {
                "model": str(model),
                "cache": str(cache) if cache else None,
                "out": str(out),
                "columns": columns,
                "id_col": id_col,
                "interval": interval,
                "decimals": decimals,
                "header": header,
                "std": std,
            },
            workers=workers,
            gpus_per_worker=gpus_per_worker,
            cpus_per_worker=cpus_per_worker,
            batch_size=1,
            progress=progress,
        )
        summary["rows"] = int(done["rows"].sum())
        _remove_orphans([output_of(out, p) for p in todo])
    summary["seconds"] = round(time.perf_counter() - began, 3)
    return summary


def _remove_orphans(outputs: list[Path]) -> None:
    """Delete the temporary files that writers killed mid-write left beside ``outputs`` (an actor lost and its
    file scored again by another): every output is whole now, so what is left of theirs is litter."""
    for output in outputs:
        if not output.exists():
            continue
        for tmp in output.parent.glob(f".tmp-{glob.escape(output.name)}-*"):
            if tmp.is_file() and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
