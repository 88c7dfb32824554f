"""Scale-out overhead on one machine: 1 process vs 2 ranks vs Ray with 2 actors, same corpus and encoder.

    python benchmarks/scale.py                  # about 10 minutes on 2 CPU cores
    python benchmarks/scale.py --texts 4000 --repeats 1

Every row runs ``embedcache precompute`` as a user would, into a fresh cache, with the
embedded MiniLM on torch fp32, and times the whole command (imports, model loading,
reading, writing) on the same CPU threads: 1 process gets both cores, 2 ranks or 2
actors one each (OMP_NUM_THREADS=1).  On 2 cores scaling out cannot speed anything
up: the rows measure what sharding, parts and Ray cost.  Rows:

  1 process                      the baseline
  2 ranks (--rank/--world-size)  two processes at once, each its slice into its part
  2 ranks + compact              and then merging the parts
  Ray, 2 actors, new cluster     --ray: the command starts a local Ray cluster
  Ray, 2 actors, running cluster --ray auto on a cluster started beforehand (as on a real one)

Goal: <= 10% of the single process's texts/s lost (ratio >= 0.90).  Then the cost of
reading a cache back with many parts against the compacted one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd

from embedcache import EmbeddingCache
from embedcache.encoders.runtimes import cpu_info

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "stsb-multi-mt"
COMMAND = [sys.executable, "-m", "embedcache.cli"]


def corpus(n: int) -> list[str]:
    texts = []
    for lang in ("en", "de", "es", "fr"):
        for split in ("train", "dev"):
            df = pd.read_csv(DATA / f"stsb-{lang}-{split}.csv", header=None, dtype=str, keep_default_na=False)
            texts += df[0].tolist() + df[1].tolist()
    texts = list(dict.fromkeys(texts))
    if len(texts) < n:
        raise SystemExit(f"the corpus has {len(texts)} distinct texts; ask for at most that many")
    return texts[:n]


def precompute(data: Path, cache: Path, *extra, threads: int | None = None) -> subprocess.Popen:
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    return subprocess.Popen(
        [*COMMAND, "precompute", str(data), "--cache", str(cache), "--text-col", "text", "--quiet", "--json", *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(*procs) -> list[dict]:
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"a run failed:\n{stderr[-3000:]}")
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def one_process(data, cache):
    return finish(precompute(data, cache))


def two_ranks(data, cache):
    return finish(*[precompute(data, cache, "--rank", str(r), "--world-size", "2", threads=1) for r in (0, 1)])


def two_ranks_compacted(data, cache):
    stats = two_ranks(data, cache)
    subprocess.run([*COMMAND, "compact", str(cache), "--quiet"], check=True, capture_output=True)
    return stats


def ray_new_cluster(data, cache):
    return finish(precompute(data, cache, "--ray", "local", "--workers", "2", "--cpus-per-worker", "0.5", threads=1))


def ray_running_cluster(data, cache):
    return finish(precompute(data, cache, "--ray", "auto", "--workers", "2", "--cpus-per-worker", "0.5", threads=1))


ROWS = {
    "1 process": one_process,
    "2 ranks (--rank/--world-size)": two_ranks,
    "2 ranks + compact": two_ranks_compacted,
    "Ray, 2 actors, new local cluster": ray_new_cluster,
    "Ray, 2 actors, running cluster": ray_running_cluster,
}


def read_back(cache: Path, texts: list[str]) -> float:
    began = time.perf_counter()
    EmbeddingCache(cache).get(texts)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=24_000, help="distinct texts in the corpus (default 24000)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds; each row keeps its fastest (default 2)")
    args = parser.parse_args()
    texts = corpus(args.texts)
    work = Path(tempfile.mkdtemp(prefix="scale-"))
    data = work / "corpus.parquet"
    pd.DataFrame({"text": texts}).to_parquet(data)
    subprocess.run(
        ["ray", "start", "--head", "--num-cpus", "2", "--include-dashboard=false", "--disable-usage-stats"],
        check=True,
        capture_output=True,
    )
    best: dict[str, float] = {}
    parted = None  # the first 2-rank cache, kept for the read-back rows
    try:
        for round_ in range(args.repeats):  # rows interleaved, so a slow minute of the machine hits every row
            for i, (name, run) in enumerate(ROWS.items()):
                cache = work / f"cache-{round_}-{i}"
                began = time.perf_counter()
                stats = run(data, cache)
                seconds = time.perf_counter() - began
                got = len(EmbeddingCache(cache))
                if got != len(texts) or sum(s.get("encoded", 0) for s in stats) < len(texts):
                    raise SystemExit(f"{name}: the cache holds {got} of {len(texts)} texts")
                best[name] = min(best.get(name, float("inf")), seconds)
                print(f"round {round_ + 1} {name}: {seconds:.1f} s", flush=True)
                if parted is None and run is two_ranks:
                    parted = cache
                else:
                    shutil.rmtree(cache)
    finally:
        subprocess.run(["ray", "stop", "--force"], check=False, capture_output=True)
    base = len(texts) / best["1 process"]
    print(
        f"\n{len(texts)} distinct STS-B sentences (en, de, es, fr), all-MiniLM-L6-v2 torch fp32, best of {args.repeats}; "
        f"{cpu_info('model name')}, {os.cpu_count()} cores, Python {platform.python_version()}\n"
    )
    print("| run | seconds (whole command) | texts/s | vs 1 process |")
    print("|---|---:|---:|---:|")
    for name, seconds in best.items():
        rate = len(texts) / seconds
        print(f"| {name} | {seconds:.1f} | {rate:.0f} | {rate / base:.2f}x |")

    parts = EmbeddingCache(parted).info()
    slow = min(read_back(parted, texts) for _ in range(3))
    subprocess.run([*COMMAND, "compact", str(parted), "--quiet"], check=True, capture_output=True)
    fast = min(read_back(parted, texts) for _ in range(3))
    compacted = EmbeddingCache(parted).info()
    print(
        f"\nreading every vector back (open, index, get): {parts['parts']} parts / {parts['shards']} shards "
        f"{slow:.2f} s; compacted to {compacted['shards']} shards {fast:.2f} s ({slow / fast:.2f}x)"
    )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
