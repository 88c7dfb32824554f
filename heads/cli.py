"""The ``heads`` command: train, predict, evaluate, finetune, pseudolabel, leakage."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from embedcache import (
    EmbeddingCache,
    InputError,
    __version__,
    atomic_file,
    check_float,
    check_int,
    check_output,
    flag_type,
    run_command,
)
from embedcache.encoders import quiet_transformers
from embedcache.inputs import FORMATS, read_table

from .finetune import FINETUNE_HEADS
from .model import HEADS, HeadModel
from .pseudolabel import METHODS
from .selftrain import SELECT

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
  # no labels yet: score 450k prompts from a few hundred labelled ones, then train on the result
  heads pseudolabel --cache cache/minilm --data prompts.csv --text-col prompt --labeled rated.csv \
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
    from heads.labeling import labeling_function
    @labeling_function("mentions_audience")
    def mentions_audience(text):
        return 0.9 if " for a " in text.lower() else None
With --json the last line of stdout is a JSON summary (counts, per-round metrics
or per-function coverage, weight and correlation)."""


COUNT = flag_type(check_int)  # a whole number >= 1
POSITIVE = flag_type(check_float, float, low=0, low_open=True)
FRACTION = flag_type(check_float, float, low=0, high=1, low_open=True, high_open=True)
DROPOUT = flag_type(check_float, float, low=0, high=1, high_open=True)


def _add_data(p, train: bool) -> None:
    if train:
        p.add_argument("--cache", required=True, metavar="DIR", help="embedcache cache directory of the vectors")
    else:
        p.add_argument("--cache", metavar="DIR", help="embedcache cache directory of the vectors (required for a frozen "
                       "head; a fine-tuned model encodes with its own encoder, through this cache if it was built with it)")
    p.add_argument("--data", required=True, metavar="FILE", help=f"data file: {', '.join(sorted(FORMATS))}")
    default = "default: text" if train else "default: the model's"
    p.add_argument("--text-col", default="text" if train else None, metavar="COL", help=f"the text column ({default})")
    p.add_argument("--pair-col", metavar="COL", help="second text of a pair (premise/hypothesis, sentence1/sentence2)")
    p.add_argument("--condition-col", metavar="COL", help="condition text per row, e.g. a metric name or description")
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are named 0, 1, ...")
    _add_text_options(p, train)


def _add_text_options(p, train: bool) -> None:
    p.add_argument("--template", metavar="TEMPLATE", help="compose the text of each row from columns, e.g. "
                   "'[USER] {prompt}\\n[RESPONSE] {response}' (\\n and \\t are unescaped)"
                   + ("; kept in the model" if train else " (default: the model's)"))
    p.add_argument("--add-missing", action="store_true", help="store texts missing from --cache in it (default: they "
                   "are encoded in memory and the cache is left as it is)")
    p.add_argument("--lock-timeout", type=flag_type(check_float, float, low=0), default=300, metavar="S", help="with --add-missing, seconds to wait "
                   "while another writer holds the cache (default 300)")
    p.add_argument("--no-wait", dest="lock_timeout", action="store_const", const=0, help="fail at once if the cache is being written")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heads", description="Train, evaluate and use regression heads on cached embeddings.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"heads (embedcache) {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error (also EMBEDCACHE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a head", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a head on the cached vectors of a labelled file and save it as a directory.")
    _add_data(t, train=True)
    t.add_argument("--label-col", action="append", required=True, metavar="COL",
                   help="label column; repeat for several labels (one head, one output each; missing labels masked)")
    t.add_argument("--head", default="auto", help=f"one of {', '.join(HEADS)} (default auto: two-tower for a pair of "
                   "texts, as it starts from their calibrated cosine; concat otherwise)")
    t.add_argument("--weight-col", metavar="COL", help="per-row loss weight, e.g. the confidence column of heads pseudolabel")
    t.add_argument("--out", required=True, metavar="MODEL_DIR", help="where to save the model")
    t.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")
    t.add_argument("--val-data", metavar="FILE", help="validation file (default: 10%% of the texts held out)")
    t.add_argument("--val-fraction", type=FRACTION, default=0.1, help="held-out share of distinct texts (default 0.1)")
    t.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"), help="bound predictions to [LO, HI]")
    t.add_argument("--loss", default="mse", choices=["mse", "huber", "l1"])
    t.add_argument("--epochs", type=COUNT, default=30, help="at most this many epochs (default 30)")
    t.add_argument("--patience", type=flag_type(check_int, minimum=0), default=5, help="stop after this many epochs without a better val RMSE")
    t.add_argument("--lr", type=POSITIVE, default=1e-3)
    t.add_argument("--weight-decay", type=flag_type(check_float, float, low=0), default=0.01)
    t.add_argument("--batch-size", type=COUNT, help="rows per step (default: about 100 steps an epoch, 32 to 1024)")
    t.add_argument("--width", type=COUNT, default=256, help="projection width (default 256)")
    t.add_argument("--dropout", type=DROPOUT, default=0.1)
    t.add_argument("--no-shared", action="store_true", help="separate projections for the two texts of a pair")
    t.add_argument("--seed", type=flag_type(check_int, minimum=0), default=0)
    t.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    t.add_argument("--json", action="store_true", help="print the validation metrics as JSON on the last line")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("predict", help="write predictions for a file", description="Write id,score per row (a column per label).")
    p.add_argument("--model", required=True, metavar="MODEL_DIR")
    _add_data(p, train=False)
    p.add_argument("--out", required=True, metavar="CSV", help="predictions file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")
    p.add_argument("--id-col", metavar="COL", help="column copied as id (default: 'id' if present, else the row number)")
    p.add_argument("--round", type=flag_type(check_int, minimum=0), metavar="N", help="round predictions to N decimals")

    e = sub.add_parser("evaluate", help="metrics (and plots) of a model on a labelled file")
    e.add_argument("--model", required=True, metavar="MODEL_DIR")
    _add_data(e, train=False)
    e.add_argument("--label-col", action="append", metavar="COL", help="label columns (default: the model's)")
    e.add_argument("--plots", metavar="DIR", help="write predicted-vs-true, residual and per-condition PNGs here")
    e.add_argument("--json", action="store_true", help="print the metrics as JSON on the last line")
    f = sub.add_parser("finetune", help="fine-tune the encoder together with a head",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=FINETUNE_EXAMPLES,
                       description="Train the encoder end to end with a head (transformers Trainer) and save a model "
                                   "directory that heads predict and heads evaluate use like a frozen head's.")
    f.add_argument("--data", required=True, metavar="FILE", help=f"data file: {', '.join(sorted(FORMATS))}")
    f.add_argument("--text-col", default="text", metavar="COL", help="the text column (default: text)")
    f.add_argument("--pair-col", metavar="COL", help="second text of a pair")
    f.add_argument("--condition-col", metavar="COL", help="condition text per row")
    f.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are named 0, 1, ...")
    f.add_argument("--template", metavar="TEMPLATE", help="compose the text of each row from columns (kept in the model)")
    f.add_argument("--label-col", action="append", required=True, metavar="COL", help="label column; repeat for several")
    f.add_argument("--head", default="concat", choices=FINETUNE_HEADS,
                   help="concat or two-tower (as heads train), or cross: both texts in one sequence (default concat)")
    f.add_argument("--model", metavar="NAME_OR_PATH", help="encoder to fine-tune: a sentence-transformers or transformers "
                   "directory or hub id (default: the embedded all-MiniLM-L6-v2)")
    f.add_argument("--out", required=True, metavar="MODEL_DIR", help="where to save the model (with encoder/ inside)")
    f.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")
    f.add_argument("--val-data", metavar="FILE", help="validation file (default: 10%% of the texts held out)")
    f.add_argument("--val-fraction", type=FRACTION, default=0.1)
    f.add_argument("--init-head", metavar="MODEL_DIR", help="start from a head trained by heads train on this encoder's "
                   "frozen vectors (linear probing, then fine-tuning)")
    f.add_argument("--lora", type=COUNT, metavar="R", help="train rank-R LoRA adapters (peft) instead of every encoder weight")
    f.add_argument("--epochs", type=COUNT, default=3, help="at most this many epochs (default 3)")
    f.add_argument("--patience", type=flag_type(check_int, minimum=0), default=2, help="stop after this many epochs without a better val RMSE (default 2)")
    f.add_argument("--lr", type=flag_type(check_float, float, low=0), default=1e-3, help="the head's learning rate (default 1e-3)")
    f.add_argument("--encoder-lr", type=flag_type(check_float, float, low=0), default=2e-5, help="the encoder's learning rate (default 2e-5)")
    f.add_argument("--weight-decay", type=flag_type(check_float, float, low=0), default=0.01)
    f.add_argument("--batch-size", type=COUNT, default=32, help="rows per device per step (default 32)")
    f.add_argument("--grad-accum", type=COUNT, default=1, help="gradient accumulation steps (default 1)")
    f.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations: less memory, slower")
    f.add_argument("--max-length", type=COUNT, help="tokens per text (default: the encoder's)")
    f.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="auto: bf16 (or fp16) mixed precision on a GPU, fp32 on the CPU")
    f.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"), help="bound predictions to [LO, HI]")
    f.add_argument("--loss", default="mse", choices=["mse", "huber", "l1"])
    f.add_argument("--width", type=COUNT, default=256, help="projection width of the concat/two-tower head (default 256)")
    f.add_argument("--dropout", type=DROPOUT, default=0.1)
    f.add_argument("--export-encoder", metavar="DIR", help="also write the fine-tuned encoder here (a sentence-transformers "
                   "directory: embedcache precompute --model DIR caches its vectors)")
    f.add_argument("--keep-checkpoints", action="store_true", help="keep MODEL_DIR/checkpoints after training")
    f.add_argument("--resume", action="store_true", help="resume from the last checkpoint in MODEL_DIR/checkpoints")
    f.add_argument("--seed", type=flag_type(check_int, minimum=0), default=0)
    f.add_argument("--device", help="cuda or cpu (default: cuda when present)")
    f.add_argument("--json", action="store_true", help="print the validation metrics as JSON on the last line")
    f.add_argument("--quiet", action="store_true", help="no progress bars")

    w = sub.add_parser("pseudolabel", help="score an unlabeled file (labeling functions, neighbours, self-training)",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=PSEUDOLABEL_EXAMPLES,
                       description="Score every row of --data and write source,id,<text columns>,score,confidence: "
                                   "the labelled rows first (their own label, confidence 1), then the rest. "
                                   "Train on it with heads train --label-col score.")
    _add_data(w, train=True)
    w.add_argument("--labeled", metavar="FILE", help="a labelled file with the same text columns")
    w.add_argument("--label-col", metavar="COL", help="the label column of --labeled")
    w.add_argument("--method", choices=METHODS, help="lf: labeling functions; knn: labels spread from the k "
                   "nearest labelled rows; self-train: heads trained on the labels, then on their surest "
                   "predictions (default: self-train with --labeled, else lf)")
    w.add_argument("--lf", action="append", metavar="NAME", help="labeling function to use; repeat (default: all registered)")
    w.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module or .py file to import first, to register your own labeling functions")
    w.add_argument("--k", type=COUNT, default=10, help="neighbours per row for knn (default 10)")
    w.add_argument("--rounds", type=COUNT, default=3, help="self-training rounds after the labelled-only one (default 3)")
    w.add_argument("--committee", type=flag_type(check_int, minimum=2), default=3, help="heads per self-training round; their agreement is the confidence (default 3)")
    w.add_argument("--select", default="rmse", choices=list(SELECT), help="validation metric that judges a "
                   "self-training round (default rmse; spearman where the ranking matters more than the scale)")
    w.add_argument("--head", default="auto", help=f"head for self-training: one of {', '.join(HEADS)} (default auto: "
                   "two-tower for pairs, concat otherwise)")
    w.add_argument("--val-data", metavar="FILE", help="labelled validation file for self-training (default: 10%% of --labeled)")
    w.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"), help="bound scores to [LO, HI]")
    w.add_argument("--min-confidence", type=flag_type(check_float, float, low=0, high=1), default=0.0, help="leave out scored rows below this confidence")
    w.add_argument("--id-col", metavar="COL", help="column copied as id (default: 'id' if present, else the row number)")
    w.add_argument("--seed", type=flag_type(check_int, minimum=0), default=0)
    w.add_argument("--out", required=True, metavar="CSV", help="the scored table")
    w.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")
    w.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    w.add_argument("--quiet", action="store_true", help="no progress bars")

    k = sub.add_parser("leakage", help="find test texts that nearly duplicate a training text",
                       description="List test texts whose nearest training text (cosine of cached vectors, "
                                   "exact faiss search) is at or above --threshold: near-duplicates across "
                                   "splits inflate every metric.")
    k.add_argument("--cache", required=True, metavar="DIR")
    k.add_argument("--train", required=True, metavar="FILE")
    k.add_argument("--test", required=True, metavar="FILE")
    k.add_argument("--text-col", default="text", metavar="COL", help="the text column in both files (default: text)")
    k.add_argument("--threshold", type=flag_type(check_float, float, low=-1, high=1), default=0.95, help="cosine at or above which a pair counts (default 0.95)")
    k.add_argument("--out", metavar="CSV", help="write every leaked pair here")
    k.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")
    k.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are named 0, 1, ...")
    _add_text_options(k, train=True)
    k.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    return parser


def _read(args, path):
    return read_table(path, header=not args.no_header)


def _cache(args):
    return EmbeddingCache(args.cache, lock_timeout=args.lock_timeout) if args.cache else None


def _template(args) -> str | None:
    t = getattr(args, "template", None)
    return t.replace("\\n", "\n").replace("\\t", "\t") if t else None


def _columns(args) -> dict:
    template = _template(args)
    return {"text": None if template else args.text_col, "pair": args.pair_col, "condition": args.condition_col,
            "template": template}


def _print_metrics(prefix: str, m: dict) -> None:
    print(f"{prefix}: n={m['n']} rmse={m['rmse']:.4f} mae={m['mae']:.4f} pearson={m['pearson']:.4f} "
          f"spearman={m['spearman']:.4f} r2={m['r2']:.4f}")


def train(args) -> dict:
    start = time.perf_counter()
    model = HeadModel(head=args.head, width=args.width, dropout=args.dropout, shared=not args.no_shared, loss=args.loss,
                      epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
                      patience=args.patience, val_fraction=args.val_fraction,
                      label_range=tuple(args.label_range) if args.label_range else None, seed=args.seed, device=args.device)
    check_output(args.out, [("--data", args.data), ("--val-data", args.val_data)], args.overwrite, "--out")
    val = _read(args, args.val_data) if args.val_data else None
    model.fit(_cache(args), _read(args, args.data), args.label_col, text_col=args.text_col, pair_col=args.pair_col,
              condition_col=args.condition_col, template=_template(args), val_data=val, weight_col=args.weight_col,
              add_missing=args.add_missing, progress=not args.quiet)
    model.save(args.out, overwrite=args.overwrite)
    print(f"validation on {model.validation_rows_}")
    _print_metrics(f"{model.head_} saved to {args.out}; validation", model.validation_)
    return {**_flat(model.validation_), "model": args.out, "epochs": len(model.history_),
            "seconds": round(time.perf_counter() - start, 2)}


def predict(args) -> dict:
    import pandas as pd

    check_output(args.out, [("--data", args.data), ("--model", args.model)], args.overwrite, "--out")
    model = HeadModel.load(args.model)
    df = _read(args, args.data)
    pred = model.predict(_cache(args), df, _columns(args), add_missing=args.add_missing)
    if args.round is not None:
        pred = pred.round(args.round)
        if args.round <= 0:  # whole numbers: written as 5, not 5.0
            pred = pred.astype(np.int64)
    id_col = args.id_col or ("id" if "id" in df.columns else None)
    if args.id_col and args.id_col not in df.columns:
        raise InputError(f"{args.data}: no column {args.id_col!r}; available columns: {', '.join(df.columns)}")
    ids = df[id_col].tolist() if id_col else list(range(1, len(df) + 1))
    names = ["score"] if len(model.labels_) == 1 else model.labels_
    out = pd.DataFrame({"id": ids, **{n: pred[:, j] for j, n in enumerate(names)}})
    _write_csv(out, args.out)
    print(f"wrote {len(out)} predictions to {args.out}")
    return {"n": len(out), "out": args.out}


def evaluate(args) -> dict:
    model = HeadModel.load(args.model)
    metrics, y, pred, _ = model.evaluate(_cache(args), _read(args, args.data), args.label_col, _columns(args),
                                         add_missing=args.add_missing)
    labels = list(args.label_col or model.labels_)
    _print_metrics(f"{args.model} on {args.data}", metrics)
    for cond, per in metrics.get("per_condition", {}).items():
        for label, m in per.items():
            _print_metrics(f"  {cond}" + (f" / {label}" if len(labels) > 1 else ""), m)
    if args.plots:
        from .plots import write_plots

        for path in write_plots(args.plots, y, pred, labels, metrics):
            print(f"wrote {path}")
    return _flat(metrics)


def finetune(args) -> dict:
    from .finetune import finetune as run_finetune

    start = time.perf_counter()
    model = run_finetune(
        _read(args, args.data), args.label_col, _columns(args), args.out, head=args.head, model=args.model,
        val_data=_read(args, args.val_data) if args.val_data else None, init_head=args.init_head, lora=args.lora,
        epochs=args.epochs, lr=args.lr, encoder_lr=args.encoder_lr, weight_decay=args.weight_decay,
        batch_size=args.batch_size, grad_accum=args.grad_accum, gradient_checkpointing=args.gradient_checkpointing,
        max_length=args.max_length, patience=args.patience, val_fraction=args.val_fraction,
        label_range=tuple(args.label_range) if args.label_range else None, loss=args.loss, width=args.width,
        dropout=args.dropout, precision=args.precision, device=args.device, seed=args.seed,
        export_encoder=args.export_encoder, keep_checkpoints=args.keep_checkpoints, resume=args.resume,
        paths=(args.data, args.val_data), overwrite=args.overwrite, progress=not args.quiet)
    if model is None:  # a non-zero rank of a multi-GPU run: rank 0 saves and reports
        return {}
    _print_metrics(f"fine-tuned {args.head} saved to {args.out}; validation", model.validation_)
    if args.export_encoder:
        print(f"fine-tuned encoder written to {args.export_encoder}")
    return {**_flat(model.validation_), "model": args.out, "seconds": round(time.perf_counter() - start, 2)}


def pseudolabel(args) -> dict:
    import importlib
    import importlib.util
    from pathlib import Path

    from .labeling import LABELING_FUNCTIONS
    from .pseudolabel import pseudolabel as score_rows

    for name in args.imports:
        if name.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(name).stem, name)
            if spec is None or not Path(name).exists():
                raise InputError(f"--import {name}: no such file")
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
        else:
            importlib.import_module(name)
    check_output(args.out, [("--data", args.data), ("--labeled", args.labeled), ("--val-data", args.val_data)],
                 args.overwrite, "--out")
    method = args.method or ("self-train" if args.labeled else "lf")
    labeled = _read(args, args.labeled) if args.labeled else None
    model = HeadModel(head=args.head, label_range=tuple(args.label_range) if args.label_range else None, seed=args.seed)
    out, summary = score_rows(
        _cache(args), _read(args, args.data), _columns(args), method, labeled, args.label_col, args.lf,
        k=args.k, model=model, rounds=args.rounds, committee=args.committee, select=args.select,
        label_range=tuple(args.label_range) if args.label_range else None,
        val_data=_read(args, args.val_data) if args.val_data else None, id_col=args.id_col,
        paths=(args.data, args.labeled), add_missing=args.add_missing, progress=not args.quiet)
    summary.pop("models", None)  # the committee; the table is what this command gives
    dropped = int(((out.source == "data") & (out.confidence < args.min_confidence)).sum())
    out = out[(out.source == "labeled") | (out.confidence >= args.min_confidence)]
    _write_csv(out, args.out)
    for name, entry in summary.get("functions", {}).items():
        corr = entry.get("correlation")
        print(f"  {name}: coverage {entry['coverage']:.1%}, weight {entry['weight']:.3g}"
              + (f", correlation with labels {corr:.3f}" if corr is not None else ""))
    for r in summary.get("rounds", []):
        print(f"  round {r['round']}: {r['n_pseudo']} pseudo-labelled + labelled = {r['n_train']} rows, "
              f"val rmse {r['rmse']:.4f} spearman {r['spearman']:.4f} ({r['seconds']:.1f} s)")
    if "best_round" in summary:
        print(f"  kept round {summary['best_round']} (best validation rmse)")
    scored = int((out.source == "data").sum())
    print(f"{method}: scored {scored} of {summary['n_data']} rows ({summary['n_data'] - summary['n_scored']} already "
          f"labelled, {summary['n_abstained']} with no vote, {dropped} below --min-confidence); wrote {len(out)} rows to {args.out}")
    return {**_flat(summary), "n_written": len(out), "n_below_min_confidence": dropped, "out": args.out,
            "labeling_functions": args.lf or (list(LABELING_FUNCTIONS) if method == "lf" else None)}


def leakage(args) -> dict:
    import pandas as pd

    from .data import embed, side_texts
    from .neighbours import leakage as find_leaks

    if args.out:
        check_output(args.out, [("--train", args.train), ("--test", args.test)], args.overwrite, "--out")
    cache = _cache(args)
    columns = {"text": args.text_col, "template": _template(args)}
    train, test = (side_texts(_read(args, path), columns, path)["text"] for path in (args.train, args.test))
    test_rows, train_rows, cosines = find_leaks(embed(cache, train, args.add_missing), embed(cache, test, args.add_missing),
                                                args.threshold)
    pairs = pd.DataFrame({"test_row": test_rows + 1, "train_row": train_rows + 1, "cosine": cosines.round(4),
                          "test_text": [test[i] for i in test_rows], "train_text": [train[i] for i in train_rows]})
    pairs = pairs.sort_values("cosine", ascending=False)
    print(f"{len(pairs)} of {len(test)} test texts ({len(pairs) / len(test):.1%}) have a training text "
          f"with cosine >= {args.threshold}")
    for row in pairs.head(10).itertuples():
        print(f"  test row {row.test_row} ~ train row {row.train_row} ({row.cosine:.3f}): {row.test_text[:70]!r}")
    if args.out:
        _write_csv(pairs, args.out)
        print(f"wrote {args.out}")
    return {"n_test": len(test), "n_leaked": len(pairs), "share": len(pairs) / len(test), "threshold": args.threshold}


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


def _one_line_warnings(message, category, filename, lineno, file=None, line=None) -> str:
    return f"warning: {message}\n"


def main(argv=None) -> int:
    import warnings

    args = _parser().parse_args(argv)
    warnings.formatwarning = _one_line_warnings  # this process is the command: warnings read as one line each
    if getattr(args, "quiet", False):
        quiet_transformers()
    status, result = run_command(f"heads {args.command}", {
        "train": train, "predict": predict, "evaluate": evaluate, "finetune": finetune, "pseudolabel": pseudolabel,
        "leakage": leakage}[args.command], args)
    if status:
        return status
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
