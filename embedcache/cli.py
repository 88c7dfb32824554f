"""The ``embedcache`` command: precompute, verify, info."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from . import __version__
from .cache import MANIFEST, EmbeddingCache
from .checks import check_int, flag_type
from .encoders import (
    DEFAULT_ENCODER,
    encoder_aliases,
    load_encoder,
    quick_key,
    quiet_transformers,
    unknown_warning,
)
from .errors import CacheError, run_command
from .inputs import FORMATS, InputError, first_rows, read_table, texts_from_table

PRECOMPUTE_EXAMPLES = """\
examples:
  # one text column, the embedded English encoder
  embedcache precompute prompts.csv --cache cache/minilm --text-col prompt

  # several files and columns; rerunning encodes only what is new
  embedcache precompute train.jsonl test.jsonl --cache cache/minilm --text-col premise --text-col hypothesis

  # compose columns into one text, as for per-metric safety scoring
  embedcache precompute chats.parquet --cache cache/use --model use-multilingual \\
      --template '[SYSTEM] {system}\\n[USER] {prompt}\\n[RESPONSE] {response}'

  # a CSV without a header row: columns are named 0, 1, 2, ...
  embedcache precompute stsb-en-train.csv --no-header --cache cache/minilm --text-col 0 --text-col 1

The cache directory belongs to the encoder that created it: a different model,
max length, precision or normalisation is refused, so use one directory per
encoder.  A run that is killed keeps every finished shard; run the same command
again to resume.

With --json the last line of stdout is one JSON object: rows (data rows read),
texts (texts to cache, rows x columns), unique, cached (present before this
run), encoded (new this run), skipped (rows skipped by --skip-empty), truncated
(texts longer than the encoder's max length), mostly_unknown (encoded texts of
which at least a quarter of the tokens are unknown to the encoder: a language it
does not cover), seconds (wall time of the whole command), encode_seconds (time
spent encoding), texts_per_s (encoded texts per second of encoding), rows_per_s
(rows per second of the whole command)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="embedcache",
        description="Encode texts once with a frozen sentence encoder and keep the vectors in a crash-safe HDF5 cache.",
    )
    parser.add_argument("--version", action="version", version=f"embedcache {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also EMBEDCACHE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "precompute", help="encode the texts of data files into a cache",
        description="Encode the texts of one or more data files into a cache, computing only what is not cached yet.",
        epilog=PRECOMPUTE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=f"data files: {', '.join(sorted(FORMATS))}")
    p.add_argument("--cache", required=True, metavar="DIR", help="cache directory (created if absent)")
    p.add_argument("--text-col", action="append", default=[], metavar="COL",
                   help="a column whose texts are cached; repeat for several columns")
    p.add_argument("--template", metavar="TEMPLATE",
                   help="compose one text per row from columns, e.g. '{system}\\n{prompt}' (\\n and \\t are unescaped)")
    p.add_argument("--model", metavar="NAME",
                   help=f"encoder alias ({', '.join(encoder_aliases())}), sentence-transformers id or local "
                        f"directory (default: the encoder an existing cache records, else {DEFAULT_ENCODER}, "
                        "the embedded all-MiniLM-L6-v2)")
    p.add_argument("--device", help="cuda, cuda:1, cpu, ... (default: cuda when present)")
    p.add_argument("--batch-size", type=flag_type(check_int), default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--max-length", type=flag_type(check_int), help="truncate texts to this many tokens (default: the model's)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="compute precision (default auto: bf16/fp16 on a GPU, fp32 on the CPU)")
    p.add_argument("--normalize", action="store_true", help="L2-normalise the vectors")
    p.add_argument("--dtype", choices=["float16", "float32"], help="storage dtype of a new cache (default float16)")
    p.add_argument("--shard-size", type=flag_type(check_int), default=20_000, help="rows per shard; a crash loses at most one (default 20000)")
    p.add_argument("--format", choices=sorted(set(FORMATS.values())), help="input format (default: from the extension)")
    p.add_argument("--no-header", action="store_true", help="CSV/TSV files have no header row; columns are named 0, 1, ...")
    p.add_argument("--skip-empty", action="store_true", help="skip rows with empty or missing texts instead of failing")
    p.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="check every shard against its checksum and the manifest",
                       description="Check every shard of a cache against its checksum and the manifest. "
                                   "Exits 1 when a shard is bad (after repairing, with --repair).",
                       epilog="--repair deletes only shard files of the cache directory that are listed in its manifest "
                              "and fail their own checks (unreadable, or content not matching their own checksum); a "
                              "whole shard that disagrees with the manifest is dropped from it and kept on disk. "
                              "--rebuild writes a new manifest from the shards' own records (for a manifest that is "
                              "lost or damaged) and deletes nothing. Neither touches a file outside the directory.")
    v.add_argument("cache", metavar="DIR")
    mode = v.add_mutually_exclusive_group()
    mode.add_argument("--repair", action="store_true", help="drop bad shards so the next precompute recomputes their texts")
    mode.add_argument("--rebuild", action="store_true", help="rebuild a lost or damaged manifest from the shards")
    v.add_argument("--json", action="store_true", help="print a JSON report as the last line")

    i = sub.add_parser("info", help="print a cache's encoder, fingerprint, size and shards")
    i.add_argument("cache", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    return parser


def precompute(args) -> dict:
    start = time.perf_counter()
    template = args.template.replace("\\n", "\n").replace("\\t", "\t") if args.template else None
    if not args.text_col and template is None:
        raise InputError("give at least one --text-col or a --template")
    texts, rows, skipped, tables = [], 0, 0, []
    for path in args.inputs:  # read and validate everything before the first encoding
        df = read_table(path, fmt=args.format, header=not args.no_header)
        t, s = texts_from_table(df, path, args.text_col, template, args.skip_empty)
        tables.append((path, df))
        texts += t
        rows += len(df)
        skipped += s
    options = {**({"max_length": args.max_length} if args.max_length else {}),
               **({"precision": args.precision} if args.precision != "auto" else {}),
               **({"normalize": True} if args.normalize else {})}
    if Path(args.cache).exists() and not Path(args.cache).is_dir():
        raise CacheError(f"--cache {args.cache} is a file, not a directory")
    known = (Path(args.cache) / MANIFEST).exists() and EmbeddingCache(args.cache, dtype=args.dtype)
    model = args.model
    if model is None and known:  # an existing cache: its own encoder, as it records it
        spec = known.encoder_spec
        if spec is None:
            raise CacheError(f"cache {known.path} was built by a custom encoder ({known.encoder_name!r}) it cannot "
                             "reload; pass --model")
        model, options = spec["name_or_path"], {**{k: v for k, v in spec.items() if k != "name_or_path"}, **options}
    key = quick_key(model, device=args.device, **options)
    if known and known.knows(key) and known.contains(texts).all():
        cache, encoder = known, None  # everything is cached: no need to load the model
    else:
        encoder = load_encoder(model, device=args.device, batch_size=args.batch_size, **options)
        cache = EmbeddingCache(args.cache, encoder, dtype=args.dtype, shard_size=args.shard_size)
        cache.remember(key)
    stats = cache.add(texts, progress=not args.quiet)
    seconds = time.perf_counter() - start
    examples = stats.pop("unknown_examples")
    stats.update(rows=rows, texts=len(texts), skipped=skipped, seconds=round(seconds, 3),
                 encode_seconds=round(stats["encode_seconds"], 3),
                 texts_per_s=round(stats["encoded"] / stats["encode_seconds"], 1) if stats["encoded"] else None,
                 rows_per_s=round(rows / seconds, 1), cache=str(cache.path), cache_rows=len(cache))
    if stats["truncated"]:
        print(f"warning: {stats['truncated']} texts were longer than {cache.encoder.max_length} tokens and were truncated",
              file=sys.stderr)
    if stats["mostly_unknown"]:
        where = [w or "a composed text" for w in first_rows(examples, tables)]
        print("warning: " + unknown_warning(stats["mostly_unknown"], stats["encoded"], cache.encoder_name, examples,
                                            cache.unknown_report()["languages"], where), file=sys.stderr)
    speed = f", {stats['texts_per_s']} texts/s encoding" if stats["encoded"] else ""
    print(f"{rows} rows, {len(texts)} texts, {stats['unique']} unique: {stats['cached']} already cached, "
          f"{stats['encoded']} encoded, {skipped} rows skipped, in {seconds:.1f} s{speed}; "
          f"{cache.path} holds {stats['cache_rows']} vectors")
    return stats


def verify(args) -> dict:
    if args.rebuild:
        report = EmbeddingCache.rebuild(args.cache)
        for name, reason in report["left_out"]:
            print(f"left out {Path(args.cache) / name}: {reason} (file kept)")
        print(f"rebuilt {Path(args.cache) / MANIFEST}: {len(report['listed'])} shards, {report['rows']} vectors, "
              f"fingerprint {report['fingerprint']}; nothing was deleted")
        return {"ok": True, "rebuilt": True, "shards": len(report["listed"]), "rows": report["rows"],
                "left_out": [{"file": n, "reason": r} for n, r in report["left_out"]]}
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
    return {"ok": not bad, "bad": [{"file": n, "reason": r, "action": a} for n, r, a in bad],
            "repaired": bool(bad and args.repair),
            "shards": info["shards"], "rows": info["rows"]}


def info(args) -> dict:
    info = EmbeddingCache(args.cache).info()
    if not args.json:
        for key, value in info.items():
            print(f"{key:12s} {value}")
    return info


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "quiet", False):  # quiet means quiet: no "Loading weights" bar from transformers either
        quiet_transformers()
    status, result = run_command(f"embedcache {args.command}", {"precompute": precompute, "verify": verify,
                                                                "info": info}[args.command], args)
    if status:
        return status
    if args.json:
        print(json.dumps(result))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
