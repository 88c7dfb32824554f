"""The ``heads`` command: train, predict, evaluate, finetune, pseudolabel, leakage."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from embedcache import EmbeddingCache, InputError, __version__, read_table
from embedcache.toolkit import (
    FORMATS,
    atomic_file,
    check_float,
    check_int,
    check_not_input,
    check_output,
    flag_type,
    quiet_transformers,
    ray_arguments,
    run_command,
)

from .config import FINETUNE_DEFAULTS, FinetuneConfig, TrainConfig, add_arguments, from_arguments
from .labels.pseudolabel import METHODS
from .labels.selftrain import SELECT
from .model import HeadModel

EXAMPLES = """\
examples:
  # one text -> score (prompt quality on 0-1)
  heads train --cache cache/minilm --data prompts.csv --text-col prompt --label-col quality \\
      --label-range 0 1 --out models/quality
  # text + condition -> score (safety per metric on 0-10); an unseen metric name still gets a score
  heads train --cache cache/use --data safety.jsonl --text-col response --condition-col metric \\
      --label-col score --head concat --out models/safety
  # a pair of texts -> score (STS), without a header row
  heads train --cache cache/minilm --data stsb-en-train.csv --no-header --text-col 0 --pair-col 1 \\
      --label-col 2 --head two-tower --out models/sts
  heads evaluate --model models/sts --cache cache/minilm --data stsb-en-dev.csv --no-header --plots plots/
  heads predict --model models/sts --cache cache/minilm --data new.csv --no-header --out preds.csv
  # a corpus of many files on a Ray cluster: one Parquet file of scores per input, resumable
  heads predict --model models/quality --data 'corpus/*.parquet' --ray auto --workers 8 --gpus-per-worker 1 --out scores/
  # no labels yet: score 450k prompts from a few hundred labelled ones, then train on the result
  heads pseudolabel --cache cache/minilm --data prompts.csv --text-col prompt --labeled rated.csv \\
      --label-col score --method self-train --out pseudo.csv
  heads train --cache cache/minilm --data pseudo.csv --text-col prompt --label-col score --out models/quality

Texts missing from the cache are encoded through it with the encoder that
built it. With --json the last line of stdout is one JSON object with n, mse,
rmse, mae, pearson, spearman and r2 (validation metrics for train)."""

FINETUNE_EXAMPLES = """\
examples:
  # the embedded encoder and a cross head on STS pairs (both sentences in one sequence)
  heads finetune --data stsb-en-train.csv --no-header --text-col 0 --pair-col 1 --label-col 2 \\
      --head cross --label-range 0 5 --out models/sts-cross
  # warm start: first a head on the frozen cache, then fine-tune from it
  heads train --cache cache/minilm --data train.csv --text-col s1 --pair-col s2 --label-col score \\
      --head two-tower --out models/sts-frozen
  heads finetune --data train.csv --text-col s1 --pair-col s2 --label-col score --head two-tower \\
      --init-head models/sts-frozen --out models/sts-ft --export-encoder encoders/minilm-sts
  # LoRA adapters only, on a multilingual hub model, 4 GPUs
  torchrun --nproc_per_node 4 -m heads.cli finetune --model sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2 \\
      --data safety.jsonl --text-col response --condition-col metric --label-col score --lora 16 --out models/safety-lora
  # the result is used like a frozen head (no cache needed: it encodes with its own encoder)
  heads evaluate --model models/sts-cross --data dev.csv --json
  heads predict --model models/sts-cross --data new.csv --out preds.csv

The encoder learns at --encoder-lr, the head at --lr; batches are padded to
their longest text and grouped by length; on a GPU training runs in bf16 (or
fp16) mixed precision. Early stopping on validation RMSE restores the best
epoch. With --json the last line of stdout is the validation metrics."""

PSEUDOLABEL_EXAMPLES = """\
examples:
  # no labels at all: the built-in prompt-quality labeling functions (and your own, from my_lfs.py)
  heads pseudolabel --cache cache/minilm --data prompts.csv --text-col prompt --import my_lfs.py --out pseudo.csv
  # a few hundred labels: learn the functions' weights from them
  heads pseudolabel --cache cache/minilm --data prompts.csv --text-col prompt --labeled rated.csv \\
      --label-col quality --method lf --out pseudo.csv
  # a few hundred labels: spread them to the nearest neighbours, or self-train a head
  heads pseudolabel --cache cache/minilm --data prompts.csv --text-col prompt --labeled rated.csv \\
      --label-col quality --method knn --k 20 --out pseudo.csv
  heads pseudolabel --cache cache/minilm --data pairs.csv --text-col s1 --pair-col s2 --labeled rated.csv \\
      --label-col score --label-range 0 5 --out pseudo.csv
  # then: heads train --cache cache/minilm --data pseudo.csv --text-col prompt --label-col score --out models/q

A labeling function is a plain function text -> score or None (no opinion):
    from heads.labels.labeling import labeling_function
    @labeling_function("mentions_audience")
    def mentions_audience(text):
        return 0.9 if " for a " in text.lower() else None
With --json the last line of stdout is a JSON summary (counts, per-round metrics
or per-function coverage, weight and correlation)."""


POSITIVE_INT = flag_type(check_int)  # a whole number >= 1
NON_NEGATIVE_INT = flag_type(check_int, minimum=0)


def _data_arguments(p, cache: str = "required", trained: bool = False) -> None:
    """Where the texts come from.  ``cache``: required, optional (a fine-tuned model needs none) or none.
    ``trained``: the columns default to the model's."""
    if cache != "none":
        _cache_argument(p, required=cache == "required")
    p.add_argument("--data", required=True, metavar="FILE", help=f"data file: {', '.join(sorted(FORMATS))}")
    default = "default: the model's" if trained else "default: text"
    p.add_argument(
        "--text-col", default=None if trained else "text", metavar="COL", help=f"the text column ({default})"
    )
    p.add_argument("--pair-col", metavar="COL", help="second text of a pair (premise/hypothesis, sentence1/sentence2)")
    p.add_argument("--condition-col", metavar="COL", help="condition text per row, e.g. a metric name or description")
    _table_arguments(p, trained)
    if cache != "none":
        _cache_arguments(p)


def _table_arguments(p, trained: bool) -> None:
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are named 0, 1, ...")
    p.add_argument(
        "--template",
        metavar="TEMPLATE",
        help="compose the text of each row from columns, e.g. "
        "'[USER] {prompt}\\n[RESPONSE] {response}' (\\n and \\t are unescaped)"
        + (" (default: the model's)" if trained else "; kept in the model"),
    )


def _cache_argument(p, required: bool = True, help: str = "") -> None:
    p.add_argument(
        "--cache",
        required=required,
        metavar="DIR",
        help="embedcache cache directory of the vectors"
        + (
            help or ""
            if required
            else help
            or " (optional: vectors of the texts it holds are read from it, never written "
            "unless --add-missing; the rest are encoded with the model's encoder)"
        ),
    )


def _cache_arguments(p) -> None:
    p.add_argument(
        "--add-missing",
        action="store_true",
        help="store texts missing from --cache in it (default: they "
        "are encoded in memory and the cache is left as it is)",
    )
    p.add_argument(
        "--lock-timeout",
        type=flag_type(check_float, float, low=0),
        default=300,
        metavar="S",
        help="with --add-missing, seconds to wait while another writer holds the cache (default 300)",
    )
    p.add_argument(
        "--no-wait",
        dest="lock_timeout",
        action="store_const",
        const=0,
        help="fail at once if the cache is being written",
    )


def _out_arguments(p, metavar: str, help: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, metavar=metavar, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")


def _run_arguments(p, json_help: str = "print a JSON summary as the last line") -> None:
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="a module or .py file to import first: your own head types (heads.head_types.register_head) "
        "or labeling functions (heads.labels.labeling.labeling_function)",
    )


def _labels_argument(
    p,
    required: bool = True,
    help: str = "label column; repeat for several labels (one head, one output each; missing labels masked)",
) -> None:
    p.add_argument("--label-col", action="append", required=required, metavar="COL", help=help)


def _option(p, name: str, **kwargs) -> None:
    """A flag several commands share, declared here once."""
    p.add_argument(name, **{**OPTIONS[name], **kwargs})


OPTIONS = {
    "--interval": {
        "type": flag_type(check_float, float, low=0, high=1, low_open=True, high_open=True),
        "metavar": "C",
        "help": "also give bounds that hold the truth for a share C of rows like the validation rows "
        "(split conformal, e.g. 0.9)",
    },
    "--val-data": {"metavar": "FILE", "help": "validation file (default: --val-fraction of the texts held out)"},
    "--device": {"help": "cuda or cpu (default: cuda when present)"},
    "--id-col": {"metavar": "COL", "help": "column copied as id (default: 'id' if present, else the row number)"},
    "--model": {
        "required": True,
        "metavar": "MODEL_DIR",
        "help": "a model directory written by heads train or heads finetune",
    },
}


def _subparser(sub, name: str, help: str, description: str, epilog: str | None = None):
    return sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def _train_parser(sub) -> None:
    t = _subparser(
        sub,
        "train",
        "train a head",
        "Train a head on the cached vectors of a labelled file and save it as a directory.",
        EXAMPLES,
    )
    _data_arguments(t)
    _labels_argument(t)
    t.add_argument(
        "--weight-col", metavar="COL", help="per-row loss weight, e.g. the confidence column of heads pseudolabel"
    )
    _option(t, "--val-data")
    _out_arguments(t, "MODEL_DIR", "where to save the model")
    add_arguments(t, TrainConfig(), "head training")
    _option(t, "--device")
    _run_arguments(t, "print the validation metrics as JSON on the last line")


def _predict_parsers(sub) -> None:
    p = _subparser(
        sub,
        "predict",
        "write predictions for a file",
        "Write id,score per row (a column per label). "
        "With --ray, --data may be a glob pattern ('corpus/*.parquet') and --out a directory: each input "
        "file is scored by a pool of Ray actors into OUT/<its name>.parquet, and a rerun scores only the "
        "files without an output.",
    )
    _option(p, "--model")
    _data_arguments(p, cache="optional", trained=True)
    _out_arguments(p, "CSV", "predictions file")
    _option(p, "--id-col")
    p.add_argument("--round", type=NON_NEGATIVE_INT, metavar="N", help="round predictions to N decimals")
    _option(p, "--interval", help=OPTIONS["--interval"]["help"] + ": columns lower and upper")
    ray_arguments(p)
    _run_arguments(p)

    e = _subparser(
        sub,
        "evaluate",
        "metrics (and plots) of a model on a labelled file",
        "Metrics of a model on a labelled file: overall, per label and per condition.",
    )
    _option(e, "--model")
    _data_arguments(e, cache="optional", trained=True)
    _labels_argument(e, required=False, help="label columns (default: the model's)")
    e.add_argument("--plots", metavar="DIR", help="write predicted-vs-true, residual and per-condition PNGs here")
    e.add_argument("--overwrite", action="store_true", help="replace PNGs of the same names in --plots")
    _option(e, "--interval", help="report the empirical coverage and mean width of the model's intervals at level C")
    e.add_argument(
        "--group-col",
        metavar="COL",
        action="append",
        help="also report the metrics per value of this "
        "column (a language, a source), in the printout, the JSON and a plot; repeat for every combination "
        "of several (--group-col language --group-col metric)",
    )
    _run_arguments(e, "print the metrics as JSON on the last line")


def _finetune_parser(sub) -> None:
    f = _subparser(
        sub,
        "finetune",
        "fine-tune the encoder together with a head",
        "Train the encoder end to end with a head (transformers Trainer) and save a model directory that "
        "heads predict and heads evaluate use like a frozen head's.",
        FINETUNE_EXAMPLES,
    )
    _data_arguments(f, cache="none")
    _labels_argument(f)
    _option(f, "--val-data")
    _out_arguments(f, "MODEL_DIR", "where to save the model (with encoder/ inside)")
    add_arguments(
        f,
        FINETUNE_DEFAULTS,
        "head training (concat, two-tower as heads train; cross: both texts in one sequence)",
        zero_lr=True,
        helps={
            "head": "head type: concat (the default), two-tower, cross (both "
            "texts in one sequence), auto (two-tower for a pair of texts, concat "
            "otherwise) or a registered type",
            "batch_size": "rows per step (default: 32; 16 for the cross head)",
        },
    )
    add_arguments(f, FinetuneConfig(), "encoder training")
    f.add_argument(
        "--export-encoder",
        metavar="DIR",
        help="also write the fine-tuned encoder here (a sentence-transformers "
        "directory: embedcache precompute --model DIR caches its vectors)",
    )
    f.add_argument("--keep-checkpoints", action="store_true", help="keep MODEL_DIR/checkpoints after training")
    f.add_argument(
        "--resume",
        action="store_true",
        help="resume from the last checkpoint a killed run into MODEL_DIR left "
        "(kept beside it, in .MODEL_DIR.finetune/, until the run finishes)",
    )
    _option(f, "--device")
    _run_arguments(f, "print the validation metrics as JSON on the last line")


def _pseudolabel_parser(sub) -> None:
    w = _subparser(
        sub,
        "pseudolabel",
        "score an unlabeled file (labeling functions, neighbours, self-training)",
        "Score every row of --data and write source,id,<text columns>,score,confidence: the labelled rows "
        "first (their own label, confidence 1), then the rest. Train on it with heads train --label-col "
        "score.",
        PSEUDOLABEL_EXAMPLES,
    )
    _data_arguments(w)
    w.add_argument("--labeled", metavar="FILE", help="a labelled file with the same text columns")
    w.add_argument("--label-col", metavar="COL", help="the label column of --labeled")
    _option(w, "--val-data", help="labelled validation file for self-training (default: --val-fraction of --labeled)")
    w.add_argument(
        "--method",
        choices=METHODS,
        help="lf: labeling functions; knn: labels spread from the k "
        "nearest labelled rows; self-train: heads trained on the labels, then on their surest "
        "predictions (default: self-train with --labeled, else lf)",
    )
    w.add_argument(
        "--lf", action="append", metavar="NAME", help="labeling function to use; repeat (default: all registered)"
    )
    w.add_argument(
        "--combine",
        default="ridge",
        choices=["ridge", "weighted"],
        help="with --labeled, how lf combines the functions: ridge (default: a ridge regression from each "
        "function's vote and output to the labels) or weighted (a learned weighted mean, mapped onto "
        "the labels' scale)",
    )
    w.add_argument("--k", type=POSITIVE_INT, default=10, help="neighbours per row for knn (default 10)")
    w.add_argument(
        "--rounds", type=POSITIVE_INT, default=3, help="self-training rounds after the labelled-only one (default 3)"
    )
    w.add_argument(
        "--committee",
        type=flag_type(check_int, minimum=2),
        default=3,
        help="heads per self-training round; their agreement is the confidence (default 3)",
    )
    w.add_argument(
        "--select",
        default="rmse",
        choices=list(SELECT),
        help="validation metric that judges a "
        "self-training round (default rmse; spearman where the ranking matters more than the scale)",
    )
    w.add_argument(
        "--min-confidence",
        type=flag_type(check_float, float, low=0, high=1),
        default=0.0,
        help="leave out scored rows below this confidence",
    )
    _option(w, "--id-col")
    _out_arguments(w, "CSV", "the scored table")
    add_arguments(w, TrainConfig(), "head training (self-training)")
    _run_arguments(w)


SELECT_EXAMPLES = """\
examples:
  # the 500 prompts to label next: the batch that covers the corpus best, avoiding what is rated already
  heads select --cache cache/minilm --data prompts.csv --text-col prompt --labeled rated.csv --budget 500 \\
      --strategy diversity --out to_label.csv
  # every language gets its share of the budget
  heads select --cache cache/e5 --data replies.csv --text-col response --group-col language --budget 300 \\
      --out to_label.csv

The output holds id, the text columns, group (with --group-col) and why each row
was picked; rate it, then train (or pseudolabel) with the rated rows."""


def _select_parser(sub) -> None:
    from .labels.selection import STRATEGIES

    c = _subparser(
        sub,
        "select",
        "choose the rows to label next",
        "Choose the --budget rows of --data to label next from their cached vectors: random (the default, the "
        "baseline) or diversity, which picks each row farthest from everything labelled or picked so far. Rows "
        "that nearly duplicate a labelled one are never picked.",
        SELECT_EXAMPLES,
    )
    _data_arguments(c)
    c.add_argument("--labeled", metavar="FILE", help="rows labelled already (same text columns): avoided")
    c.add_argument("--budget", type=POSITIVE_INT, required=True, metavar="K", help="how many rows to pick")
    c.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="random",
        help="random (the default: no strategy has beaten it on a benchmark here yet) or diversity",
    )
    c.add_argument("--group-col", metavar="COL", help="split the budget over this column's values in proportion")
    c.add_argument(
        "--skip-above",
        type=flag_type(check_float, float, low=-1, high=1),
        default=0.95,
        metavar="C",
        help="never pick a row with cosine >= C to a labelled or picked one (default 0.95)",
    )
    c.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="(default 0)")
    _option(c, "--id-col")
    _out_arguments(c, "CSV", "the rows to label")
    _run_arguments(c)


def select(args) -> dict:
    from .labels.selection import select as choose

    check_output(args.out, _inputs(args), args.overwrite, "--out")
    out = choose(
        _cache(args),
        _read(args, args.data),
        _columns(args),
        args.budget,
        args.strategy,
        labeled=_read(args, args.labeled) if args.labeled else None,
        group_col=args.group_col,
        skip_above=args.skip_above,
        seed=args.seed,
        id_col=args.id_col,
        paths=(args.data, args.labeled),
        add_missing=args.add_missing,
        progress=not args.quiet,
    )
    _write_csv(out, args.out)
    per = (
        f" ({', '.join(f'{g}: {n}' for g, n in out.group.value_counts().sort_index().items())})"
        if "group" in out
        else ""
    )
    print(f"{args.strategy}: picked {len(out)} of {args.budget} rows{per}; wrote {args.out}")
    return {"n": len(out), "strategy": args.strategy, "out": args.out}


def _leakage_parser(sub) -> None:
    k = _subparser(
        sub,
        "leakage",
        "find test texts that nearly duplicate a training text",
        "List test texts whose nearest training text (cosine of cached vectors, exact faiss search) is at or "
        "above --threshold: near-duplicates across splits inflate every metric.",
    )
    _cache_argument(k)
    k.add_argument("--train", required=True, metavar="FILE")
    k.add_argument("--test", required=True, metavar="FILE")
    k.add_argument("--text-col", default="text", metavar="COL", help="the text column in both files (default: text)")
    k.add_argument("--pair-col", metavar="COL", help="the second text of a pair: both sides are searched against both")
    _table_arguments(k, trained=False)
    _cache_arguments(k)
    k.add_argument(
        "--threshold",
        type=flag_type(check_float, float, low=-1, high=1),
        default=0.95,
        help="cosine at or above which a pair counts (default 0.95)",
    )
    _out_arguments(k, "CSV", "write every leaked pair here", required=False)
    _run_arguments(k)


SERVE_EXAMPLES = """\
examples:
  heads serve models/quality --cache cache/minilm
  curl -s localhost:8000/score -H 'content-type: application/json' \\
      -d '{"items": [{"text": "Explain step by step how vaccines work"}], "interval": 0.9}'
  EMBEDCACHE_API_KEY=secret heads serve models/safety --host 0.0.0.0 --workers 2   # clients send X-API-Key

POST /score takes {"items": [...], "interval": C}; each item has the fields the model was trained on
(text, pair, condition, or a template's fields). GET /health, /model, /metrics (Prometheus); docs at /docs."""


def _serve_parser(sub) -> None:
    from .serving.serve import ServeConfig

    defaults = ServeConfig()
    s = _subparser(
        sub,
        "serve",
        "serve a model over HTTP (FastAPI)",
        "Serve a saved model over HTTP: requests arriving together are scored in one encoder batch.",
        SERVE_EXAMPLES,
    )
    s.add_argument("model", metavar="MODEL_DIR")
    _cache_argument(
        s,
        required=False,
        help=" (optional, only read: the vectors of the texts it holds; the rest "
        "are encoded with the model's encoder and kept in memory)",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument(
        "--port",
        type=flag_type(check_int, minimum=0, maximum=65535),
        default=8000,
        metavar="N",
        help="(default 8000; 0: any free port)",
    )
    s.add_argument(
        "--workers", type=POSITIVE_INT, metavar="N", default=1, help="processes, each with its own model (default 1)"
    )
    s.add_argument(
        "--max-items",
        type=POSITIVE_INT,
        metavar="N",
        default=defaults.max_items,
        help="items per request (default %(default)s)",
    )
    s.add_argument(
        "--max-chars",
        type=POSITIVE_INT,
        metavar="N",
        default=defaults.max_chars,
        help="characters per text (default: 4x the tokens the encoder reads; longer texts are refused)",
    )
    s.add_argument(
        "--max-request-chars",
        type=POSITIVE_INT,
        metavar="N",
        default=defaults.max_request_chars,
        help="characters of all the texts of one request (default %(default)s)",
    )
    s.add_argument(
        "--max-batch",
        type=POSITIVE_INT,
        metavar="N",
        default=defaults.max_batch,
        help="items scored together (default %(default)s)",
    )
    _option(
        s,
        "--interval",
        help=OPTIONS["--interval"]["help"] + ": lower and upper in every reply unless a request names its own interval",
    )
    s.add_argument(
        "--batch-wait-ms",
        type=flag_type(check_float, float, low=0),
        default=defaults.batch_wait_ms,
        metavar="MS",
        help="how long a request waits for others to share its batch (default %(default)s)",
    )
    s.set_defaults(quiet=False, imports=[], json=False)


def serve(args) -> dict:
    from .serving.serve import ServeConfig
    from .serving.serve import serve as run_server

    run_server(
        args.model,
        args.cache,
        args.host,
        args.port,
        args.workers,
        ServeConfig(
            max_items=args.max_items,
            max_chars=args.max_chars,
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            max_request_chars=args.max_request_chars,
            interval=args.interval,
        ),
    )
    return {}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="heads",
        description="Train, evaluate and use regression heads on cached embeddings.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"heads (embedcache) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also EMBEDCACHE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for build in (
        _train_parser,
        _predict_parsers,
        _finetune_parser,
        _pseudolabel_parser,
        _select_parser,
        _leakage_parser,
        _serve_parser,
    ):
        build(sub)
    return parser


def _inputs(args) -> list[tuple[str, str]]:
    """Every input a command reads (data files, caches, models): an output may be none of them, nor contain
    one, nor lie inside one."""
    flags = ("data", "val_data", "labeled", "train", "test", "cache", "model", "init_head")
    return [(f"--{f.replace('_', '-')}", getattr(args, f)) for f in flags if getattr(args, f, None) is not None]


def _read(args, path):
    return read_table(path, header=not args.no_header)


def _cache(args):
    return EmbeddingCache(args.cache, lock_timeout=args.lock_timeout) if args.cache else None


def _template(args) -> str | None:
    t = getattr(args, "template", None)
    return t.replace("\\n", "\n").replace("\\t", "\t") if t else None


def _columns(args) -> dict:
    template = _template(args)
    return {
        "text": None if template else args.text_col,
        "pair": args.pair_col,
        "condition": args.condition_col,
        "template": template,
    }


def _print_metrics(prefix: str, m: dict) -> None:
    print(
        f"{prefix}: n={m['n']} rmse={m['rmse']:.4f} mae={m['mae']:.4f} pearson={m['pearson']:.4f} "
        f"spearman={m['spearman']:.4f} r2={m['r2']:.4f}"
    )


def train(args) -> dict:
    start = time.perf_counter()
    model = HeadModel(from_arguments(TrainConfig, args), device=args.device)
    check_output(args.out, _inputs(args), args.overwrite, "--out", kind="model")
    val = _read(args, args.val_data) if args.val_data else None
    model.fit_table(
        _cache(args),
        _read(args, args.data),
        args.label_col,
        text_col=args.text_col,
        pair_col=args.pair_col,
        condition_col=args.condition_col,
        template=_template(args),
        val_data=val,
        weight_col=args.weight_col,
        add_missing=args.add_missing,
        progress=not args.quiet,
    )
    model.save(args.out, overwrite=args.overwrite)
    print(f"validation on {model.validation_rows_}")
    _print_metrics(f"{model.head_} saved to {args.out}; validation", model.validation_)
    return {
        **_flat(model.validation_),
        "model": args.out,
        "epochs": len(model.history_),
        "seconds": round(time.perf_counter() - start, 2),
    }


def predict(args) -> dict:
    if args.ray is not None:
        from .serving.batch_scoring import score_files

        summary = score_files(
            args.model,
            [args.data],
            args.out,
            args.cache,
            _columns(args),
            id_col=args.id_col,
            interval=args.interval,
            decimals=args.round,
            header=not args.no_header,
            address=args.ray or None,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            progress=not args.quiet,
        )
        print(
            f"scored {summary['files'] - summary['skipped']} files ({summary['rows']} rows) into {args.out} on Ray; "
            f"{summary['skipped']} had their output already"
        )
        return summary
    check_output(args.out, _inputs(args), args.overwrite, "--out")
    model = HeadModel.load(args.model)
    df = _read(args, args.data)
    out = model.predict_table(
        df,
        _cache(args),
        _columns(args),
        id_col=args.id_col,
        decimals=args.round,
        add_missing=args.add_missing,
        interval=args.interval,
        progress=not args.quiet,
    )
    _write_csv(out, args.out)
    print(f"wrote {len(out)} predictions to {args.out}")
    return {"n": len(out), "out": args.out}


def evaluate(args) -> dict:
    model = HeadModel.load(args.model)
    metrics, y, pred, _ = model.evaluate(
        _read(args, args.data),
        _cache(args),
        args.label_col,
        _columns(args),
        add_missing=args.add_missing,
        interval=args.interval,
        group_col=args.group_col,
        progress=not args.quiet,
    )
    labels = list(args.label_col or model.labels_)
    _print_metrics(f"{args.model} on {args.data}", metrics)
    for key in ("per_condition", "per_group"):
        for value, per in metrics.get(key, {}).items():
            for label, m in per.items():
                _print_metrics(
                    f"  {' / '.join(args.group_col) + '=' if key == 'per_group' else ''}{value}"
                    + (f" / {label}" if len(labels) > 1 else ""),
                    m,
                )
    if "interval" in metrics:
        i = metrics["interval"]
        print(f"{i['level']:g} intervals: coverage {i['coverage']:.3f}, mean width {i['mean_width']:.4f}")
    if args.plots:
        from .plots import write_plots

        check_not_input(args.plots, _inputs(args), "--plots")
        for path in write_plots(
            args.plots, y, pred, labels, metrics, overwrite=args.overwrite, trained=getattr(model, "conditions_", None)
        ):
            print(f"wrote {path}")
    return _flat(metrics)


def finetune(args) -> dict:
    from .finetuning.finetune import finetune as run_finetune

    start = time.perf_counter()
    model = run_finetune(
        _read(args, args.data),
        args.label_col,
        _columns(args),
        args.out,
        from_arguments(TrainConfig, args),
        from_arguments(FinetuneConfig, args),
        val_data=_read(args, args.val_data) if args.val_data else None,
        export_encoder=args.export_encoder,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        paths=(args.data, args.val_data),
        inputs=_inputs(args),
        progress=not args.quiet,
    )
    if model is None:  # a non-zero rank of a multi-GPU run: rank 0 saves and reports
        return {}
    _print_metrics(f"fine-tuned {model.head_} saved to {args.out}; validation", model.validation_)
    if args.export_encoder:
        print(f"fine-tuned encoder written to {args.export_encoder}")
    return {**_flat(model.validation_), "model": args.out, "seconds": round(time.perf_counter() - start, 2)}


def pseudolabel(args) -> dict:
    from .labels.pseudolabel import pseudolabel as score_rows

    check_output(args.out, _inputs(args), args.overwrite, "--out")
    method = args.method or ("self-train" if args.labeled else "lf")
    config = from_arguments(TrainConfig, args)
    out, summary = score_rows(
        _cache(args),
        _read(args, args.data),
        _columns(args),
        method,
        _read(args, args.labeled) if args.labeled else None,
        args.label_col,
        args.lf,
        k=args.k,
        model=HeadModel(config),
        rounds=args.rounds,
        committee=args.committee,
        select=args.select,
        label_range=config.label_range,
        val_data=_read(args, args.val_data) if args.val_data else None,
        id_col=args.id_col,
        paths=(args.data, args.labeled),
        add_missing=args.add_missing,
        min_confidence=args.min_confidence,
        progress=not args.quiet,
        combine_with=args.combine,
    )
    summary.pop("models", None)  # the committee; the table is what this command gives
    _write_csv(out, args.out)
    for name, entry in summary.get("functions", {}).items():
        corr, voted, other = entry.get("correlation"), entry.get("mean_label_voted"), entry.get("mean_label_abstained")
        print(
            f"  {name}: coverage {entry['coverage']:.1%}, weight {entry['weight']:.3g}"
            + (f", correlation with labels where it votes {corr:.3f}" if corr is not None else "")
            + (
                f", labels average {voted:.3g} where it votes, {other:.3g} elsewhere"
                if voted is not None and other is not None
                else ""
            )
        )
    for r in summary.get("rounds", []):
        print(
            f"  round {r['round']}: {r['n_pseudo']} pseudo-labelled + labelled = {r['n_train']} rows, "
            f"val rmse {r['rmse']:.4f} spearman {r['spearman']:.4f} ({r['seconds']:.1f} s)"
        )
    if "best_round" in summary:
        print(f"  kept round {summary['best_round']} (best validation {args.select})")
    scored = int((out.source == "data").sum())
    print(
        f"{method}: scored {scored} of {summary['n_data']} rows ({summary['n_data'] - summary['n_scored']} already "
        f"labelled, {summary['n_abstained']} with no vote, {summary['n_below_min_confidence']} below --min-confidence); "
        f"wrote {len(out)} rows to {args.out}"
    )
    return {**_flat(summary), "n_written": len(out), "out": args.out}


def leakage(args) -> dict:
    from .neighbours import leakage_report

    if args.out:
        check_output(args.out, _inputs(args), args.overwrite, "--out")
    pairs = leakage_report(
        _cache(args),
        _read(args, args.train),
        _read(args, args.test),
        {"text": args.text_col, "template": _template(args), "pair": args.pair_col},
        args.threshold,
        args.add_missing,
        paths=(args.train, args.test),
    )
    n_test = pairs.attrs["n_test"]
    rows = int(pairs.test_rows.sum()) if len(pairs) else 0
    print(
        f"{len(pairs)} of {n_test} distinct test texts ({len(pairs) / n_test:.1%}; {rows} of "
        f"{pairs.attrs['n_test_rows']} test rows) have a training text with cosine >= {args.threshold}"
    )
    for row in pairs.head(10).itertuples():
        print(
            f"  test row {row.test_row} ({row.side}) ~ train row {row.train_row} ({row.cosine:.3f}): "
            f"{row.where_they_differ}"
        )
    if args.out:
        _write_csv(pairs, args.out)
        print(f"wrote {args.out}")
    return {
        "n_test": n_test,
        "n_leaked": len(pairs),
        "share": len(pairs) / n_test,
        "threshold": args.threshold,
        "n_test_rows": pairs.attrs["n_test_rows"],
        "n_leaked_rows": rows,
    }


def _with_imports(command):
    """``command`` run after importing the modules of ``--import`` (a user's head types or labeling functions)."""

    def run(args):
        import_modules(args.imports)
        return command(args)

    return run


def import_modules(names) -> None:
    """Import each module name or ``.py`` file (an InputError names one that is missing)."""
    import importlib
    import importlib.util
    from pathlib import Path

    for name in names:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(name).stem, name)
            if spec is None or not Path(name).exists():
                raise InputError(f"--import {name}: no such file")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as e:
                if e.name is None or not name.startswith(e.name):
                    raise  # the module exists, and itself imports what is missing: its own traceback says where
                raise InputError(
                    f"--import {name}: no module of that name (give a module on the Python path, or a .py file)"
                ) from None


def _write_csv(df, path) -> None:
    """Whole or not at all: a crash or a full disk never leaves half a table at ``path``."""
    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)


def _flat(metrics: dict) -> dict:
    """JSON-safe: NaN (an undefined correlation) becomes null."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean(metrics)


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.quiet:
        quiet_transformers()
    status, result = run_command(
        f"heads {args.command}",
        _with_imports(
            {
                "train": train,
                "predict": predict,
                "evaluate": evaluate,
                "finetune": finetune,
                "pseudolabel": pseudolabel,
                "leakage": leakage,
                "select": select,
                "serve": serve,
            }[args.command]
        ),
        args,
    )
    if status:
        return status
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
