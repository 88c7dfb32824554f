"""The ``embedcache`` command: precompute, verify, compact, info."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cache import COMPACT_SHARD_SIZE, LOCK_TIMEOUT, MANIFEST, EmbeddingCache
from .cache import compact as run_compact
from .checks import check_float, check_int, flag_type
from .corpus import precompute as run_precompute
from .corpus.ray_data import ray_arguments
from .encoders import DEFAULT_ENCODER, PRECISIONS, describe_layers, encoder_aliases, quiet_transformers
from .encoders.runtimes import BACKENDS
from .errors import run_command
from .inputs import FORMATS
from .shards import DTYPES
from .version import __version__

PRECOMPUTE_EXAMPLES = """\
examples:
  # one text column, the embedded English encoder
  embedcache precompute prompts.csv --cache cache/minilm --text-col prompt

  # several files and columns; rerunning encodes only what is new
  embedcache precompute train.jsonl test.jsonl --cache cache/minilm --text-col premise --text-col hypothesis

  # compose columns into one text, as for per-metric safety scoring
  embedcache precompute chats.parquet --cache cache/e5 --model multilingual-e5-small \\
      --template '[SYSTEM] {system}\\n[USER] {prompt}\\n[RESPONSE] {response}'

  # a large corpus on the CPU: int8 through OpenVINO (pip install 'embedcache[openvino]'), about 4x
  # faster; --backend auto measures every installed backend on the corpus and keeps the fastest
  embedcache precompute prompts.parquet --cache cache/minilm-int8 --text-col prompt --backend openvino-int8

  # many processes into one cache, each its slice of the texts into its own part:
  # torchrun (RANK/WORLD_SIZE), srun or a Slurm array are read from the environment
  torchrun --nproc-per-node 8 -m embedcache.cli precompute corpus/*.parquet --cache cache/e5 --text-col text
  embedcache precompute corpus/*.parquet --cache cache/e5 --text-col text --rank 3 --world-size 8
  embedcache compact cache/e5    # afterwards: merge the parts into large shards

  # on a Ray cluster (pip install 'embedcache[ray]'): 16 actors with a GPU each
  embedcache precompute '/shared/corpus/*.parquet' --cache /shared/cache/e5 --model multilingual-e5-small \\
      --text-col text --ray auto --workers 16 --gpus-per-worker 1

  # a CSV without a header row: columns are named 0, 1, 2, ...
  embedcache precompute stsb-en-train.csv --no-header --cache cache/minilm --text-col 0 --text-col 1

The cache directory belongs to the encoder that created it: a different model,
max length, precision, backend or normalisation is refused, so use one directory per
encoder.  A run that is killed keeps every finished shard; run the same command
again to resume (a rank: the same command with the same rank and world size).

With --json the last line of stdout is one JSON object: rows (data rows read),
texts (texts to cache, rows x columns), unique, cached (present before this
run), encoded (new this run), skipped (rows skipped by --skip-empty), truncated
(texts longer than the encoder's max length), mostly_unknown (encoded texts of
which at least a quarter of the tokens are unknown to the encoder: a language it
does not cover), seconds (wall time of the whole command), encode_seconds (time
spent encoding), texts_per_s (encoded texts per second of encoding), rows_per_s
(rows per second of the whole command); for a rank also rank, world_size, part,
rank_from (where the rank came from) and slice (this rank's distinct texts; the
counts above other than unique are of the slice)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedcache",
        description="Encode texts once with a frozen sentence encoder and keep the vectors in a crash-safe HDF5 cache.",
    )
    parser.add_argument("--version", action="version", version=f"embedcache {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also EMBEDCACHE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "precompute",
        help="encode the texts of data files into a cache",
        description="Encode the texts of one or more data files into a cache, computing only what is not cached yet.",
        epilog=PRECOMPUTE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=f"data files: {', '.join(sorted(FORMATS))}")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory (created if absent)")
    p.add_argument(
        "--text-col",
        action="append",
        default=[],
        metavar="COL",
        help="a column whose texts are cached; repeat for several columns",
    )
    p.add_argument(
        "--template",
        metavar="TEMPLATE",
        help="compose one text per row from columns, e.g. '{system}\\n{prompt}' (\\n and \\t are unescaped)",
    )
    p.add_argument(
        "--model",
        metavar="NAME",
        help=f"encoder alias ({', '.join(encoder_aliases())}), sentence-transformers id or local "
        f"directory (default: the encoder an existing cache records, else {DEFAULT_ENCODER}, "
        "the embedded all-MiniLM-L6-v2)",
    )
    p.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when present)")
    p.add_argument("--batch-size", type=flag_type(check_int), default=64, help="texts per forward pass (default: 64)")
    p.add_argument(
        "--max-length", type=flag_type(check_int), help="truncate texts to this many tokens (default: the model's)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="compute precision (default auto: bf16/fp16 on a GPU, fp32 on the CPU)",
    )
    p.add_argument(
        "--backend",
        choices=[*BACKENDS, "auto"],
        help="where the model runs (default: the one an existing cache records, else torch, the exact fp32 "
        "path): onnx/openvino are exports made once for this machine, -int8 their quantized forms "
        "(about 3-4.5x faster on a CPU, cosine about 0.99 to fp32); auto measures them on the corpus "
        "and keeps the fastest with mean cosine >= 0.99; see embedcache info for what a cache used",
    )
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument(
        "--layers",
        metavar="SPEC",
        help="also store each text's layer vectors, the means of these hidden states from the same forward "
        "pass (torch backend): 'all', 'last:K' or indices like '0,3,6' (0 is the embeddings' output). Heads "
        "trained with --features layers read them; they cost n_layers x the disk of the sentence vector. A new "
        "cache only: an existing one keeps the layers it was built with",
    )
    p.add_argument("--dtype", choices=DTYPES, help="storage dtype of a new cache (default float16)")
    p.add_argument(
        "--shard-size",
        type=flag_type(check_int),
        default=20_000,
        help="rows per shard; a crash loses at most one (default 20000)",
    )
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="input format (default: from the extension)")
    p.add_argument(
        "--no-header", action="store_true", help="CSV/TSV files have no header row; columns are named 0, 1, ..."
    )
    p.add_argument("--skip-empty", action="store_true", help="skip rows with empty or missing texts instead of failing")
    p.add_argument(
        "--rank",
        type=flag_type(check_int, minimum=0),
        metavar="R",
        help="encode only slice R of the distinct texts, into part rank-R-of-W of the cache (default: from "
        "torchrun's RANK, srun's SLURM_PROCID or a Slurm array's SLURM_ARRAY_TASK_ID, else everything)",
    )
    p.add_argument(
        "--world-size",
        type=flag_type(check_int),
        metavar="W",
        help="how many ranks share the corpus (default: WORLD_SIZE, SLURM_STEP_NUM_TASKS, "
        "SLURM_ARRAY_TASK_COUNT, else 1)",
    )
    ray_arguments(p)
    p.add_argument(
        "--rows-per-batch",
        type=flag_type(check_int),
        default=1024,
        metavar="N",
        help="with --ray: texts per actor call, at most one shard each (default 1024): small batches even "
        "out when the actors finish, large ones leave fewer shards; run embedcache compact afterwards",
    )
    p.add_argument(
        "--lock-timeout",
        type=flag_type(check_float, float, low=0),
        default=LOCK_TIMEOUT,
        metavar="S",
        help=f"seconds to wait while another process writes the cache (default {LOCK_TIMEOUT:g})",
    )
    p.add_argument(
        "--no-wait",
        dest="lock_timeout",
        action="store_const",
        const=0,
        help="fail at once if the cache is being written",
    )
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    c = sub.add_parser(
        "compact",
        help="merge a cache's parts and small shards into large shards",
        description="Merge the parts many writers left (ranks, Ray actors) and the small shards of a "
        "cache into large shards, so readers open few files. One atomic commit: a crash "
        "leaves the old cache or the new one, never half; parts a writer holds now are left "
        "for a later run.",
    )
    c.add_argument("cache", metavar="DIR")
    c.add_argument(
        "--shard-size",
        type=flag_type(check_int),
        default=COMPACT_SHARD_SIZE,
        help=f"rows per merged shard; smaller top-level shards are merged too (default {COMPACT_SHARD_SIZE})",
    )
    c.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser(
        "verify",
        help="check every shard against its checksum and the manifest",
        description="Check every shard of a cache against its checksum and the manifest. "
        "Exits 1 when a shard is bad (after repairing, with --repair).",
        epilog="--repair deletes only shard files of the cache directory that are listed in its manifest "
        "and fail their own checks (unreadable, or content not matching their own checksum); a "
        "whole shard that disagrees with the manifest is dropped from it and kept on disk. "
        "--rebuild writes a new manifest from the shards' own records (for a manifest that is "
        "lost or damaged) and deletes nothing. Neither touches a file outside the directory.",
    )
    v.add_argument("cache", metavar="DIR")
    mode = v.add_mutually_exclusive_group()
    mode.add_argument(
        "--repair", action="store_true", help="drop bad shards so the next precompute recomputes their texts"
    )
    mode.add_argument("--rebuild", action="store_true", help="rebuild a lost or damaged manifest from the shards")
    v.add_argument("--json", action="store_true", help="print a JSON report as the last line")

    i = sub.add_parser("info", help="print a cache's encoder, fingerprint, size and shards")
    i.add_argument("cache", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return parser


def precompute(args) -> dict:
    template = args.template.replace("\\n", "\n").replace("\\t", "\t") if args.template else None
    if args.ray is not None:
        return ray_precompute(args, template)
    stats = run_precompute(
        args.inputs,
        args.cache,
        args.text_col,
        template,
        args.model,
        device=args.device,
        batch_size=args.batch_size,
        max_length=args.max_length,
        precision=args.precision,
        normalize=args.normalize,
        dtype=args.dtype,
        backend=args.backend,
        shard_size=args.shard_size,
        fmt=args.format,
        header=not args.no_header,
        skip_empty=args.skip_empty,
        progress=not args.quiet,
        rank=args.rank,
        world_size=args.world_size,
        lock_timeout=args.lock_timeout,
        layers=args.layers,
    )
    speed = f", {stats['texts_per_s']} texts/s encoding" if stats["encoded"] else ""
    if "part" in stats:
        print(
            f"rank {stats['rank']} of {stats['world_size']} (from {stats['rank_from']}): {stats['slice']} of the "
            f"{stats['unique']} distinct texts are this rank's; it writes {Path(stats['cache']) / 'parts' / stats['part']}"
        )
    print(
        f"{stats['rows']} rows, {stats['texts']} texts, {stats['unique']} unique: {stats['cached']} already cached, "
        f"{stats['encoded']} encoded, {stats['skipped']} rows skipped, in {stats['seconds']:.1f} s{speed}; "
        f"{stats['cache']} holds {stats['cache_rows']} vectors ({stats['backend']})"
        + (f" and their layer vectors (layers {describe_layers(stats['layers'])})" if stats["layers"] else "")
    )
    if "auto" in stats:
        timed = ", ".join(
            f"{m['backend']} {m['precision']} {m['texts_per_s']:g}/s cosine {m['mean_cosine']:.4f}"
            for m in stats["auto"]["measured"]
        )
        print(f"backend auto chose {stats['auto']['chose']}: {stats['auto']['rule']} ({timed})")
    return stats


def ray_precompute(args, template) -> dict:
    from .corpus.ray_data import precompute as on_ray

    stats = on_ray(
        args.inputs,
        args.cache,
        args.text_col,
        template,
        args.model,
        address=args.ray or None,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        batch_size=args.batch_size,
        rows_per_batch=args.rows_per_batch,
        shard_size=args.shard_size,
        dtype=args.dtype,
        skip_empty=args.skip_empty,
        progress=not args.quiet,
        max_length=args.max_length,
        precision=args.precision,
        normalize=args.normalize,
        backend=args.backend,
        layers=args.layers,
    )
    print(
        f"{stats['texts']} texts on Ray ({stats['workers']} actors, {len(stats['parts'])} parts): {stats['cached']} "
        f"already cached, {stats['encoded']} encoded in {stats['seconds']:.1f} s; {stats['cache']} holds "
        f"{stats['cache_rows']} vectors (embedcache compact merges the parts)"
    )
    return stats


def verify(args) -> dict:
    if args.rebuild:
        report = EmbeddingCache.rebuild(args.cache)
        for name, reason in report["left_out"]:
            print(f"left out {Path(args.cache) / name}: {reason} (file kept)")
        parts = f" and the manifests of parts {', '.join(report['parts'])}" if report["parts"] else ""
        print(
            f"rebuilt {Path(args.cache) / MANIFEST}{parts}: {len(report['listed'])} shards, {report['rows']} vectors, "
            f"fingerprint {report['fingerprint']}; nothing was deleted"
        )
        return {
            "ok": True,
            "rebuilt": True,
            "shards": len(report["listed"]),
            "rows": report["rows"],
            "left_out": [{"file": n, "reason": r} for n, r in report["left_out"]],
        }
    cache = EmbeddingCache(args.cache)
    bad = cache.verify(repair=args.repair)
    for name, reason, action in bad:
        print(f"BAD {cache.path / name}: {reason}" + (f" ({action})" if action else ""))
    info = cache.info()
    if bad and args.repair:
        print(f"repaired {len(bad)} bad shards; run precompute again to recompute their texts")
    elif bad:
        print(f"{len(bad)} bad shards; run 'embedcache verify {args.cache} --repair' to drop them")
    else:
        print(f"ok: {info['shards']} shards, {info['rows']} vectors, checksums match")
    return {
        "ok": not bad,
        "bad": [{"file": n, "reason": r, "action": a} for n, r, a in bad],
        "repaired": bool(bad and args.repair),
        "shards": info["shards"],
        "rows": info["rows"],
    }


def compact(args) -> dict:
    summary = run_compact(args.cache, shard_size=args.shard_size, progress=not args.quiet)
    busy = (
        f"; left {len(summary['parts_busy'])} parts a writer holds: {', '.join(summary['parts_busy'])}"
        if summary["parts_busy"]
        else ""
    )
    print(
        f"merged {summary['parts_merged']} parts: {summary['shards_before']} shards, {summary['rows_before']} vectors -> "
        f"{summary['shards_after']} shards, {summary['rows_after']} vectors ({summary['duplicates_dropped']} duplicate "
        f"copies dropped) in {summary['seconds']:.1f} s{busy}"
    )
    return summary


def info(args) -> dict:
    info = EmbeddingCache(args.cache).info()
    if not args.json:
        for key, value in info.items():
            print(f"{key:14s} {describe_layers(value) if key == 'layers' else value}")
    return info


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False):  # quiet means quiet: no "Loading weights" bar from transformers either
        quiet_transformers()
    status, result = run_command(
        f"embedcache {args.command}",
        {"precompute": precompute, "verify": verify, "compact": compact, "info": info}[args.command],
        args,
    )
    if status:
        return status
    if args.json:
        print(json.dumps(result))
    return 0 if not isinstance(result, dict) or result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
