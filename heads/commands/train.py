"""``heads train`` and ``heads finetune``: a head on cached vectors, or the encoder and a head together."""

from __future__ import annotations

import time

from embedcache.toolkit import (
    check_output,
)

from ..config import FINETUNE_DEFAULTS, FinetuneConfig, TrainConfig, add_arguments, from_arguments
from ..model import HeadModel
from .arguments import (
    EXAMPLES,
    cache_of,
    columns_of,
    data_arguments,
    inputs_of,
    json_safe,
    labels_argument,
    option,
    out_arguments,
    print_metrics,
    read_data,
    run_arguments,
    subparser,
    template_of,
)

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


def train_parser(sub) -> None:
    t = subparser(
        sub,
        "train",
        "train a head",
        "Train a head on the cached vectors of a labelled file and save it as a directory.",
        EXAMPLES,
    )
    data_arguments(t, several=True)
    labels_argument(t)
    t.add_argument(
        "--weight-col", metavar="COL", help="per-row loss weight, e.g. the confidence column of heads pseudolabel"
    )
    option(t, "--val-data")
    out_arguments(t, "MODEL_DIR", "where to save the model")
    add_arguments(t, TrainConfig(), "head training")
    option(t, "--device")
    run_arguments(t, "print the validation metrics as JSON on the last line")


def finetune_parser(sub) -> None:
    f = subparser(
        sub,
        "finetune",
        "fine-tune the encoder together with a head",
        "Train the encoder end to end with a head (transformers Trainer) and save a model directory that "
        "heads predict and heads evaluate use like a frozen head's.",
        FINETUNE_EXAMPLES,
    )
    data_arguments(f, cache="none")
    labels_argument(f)
    option(f, "--val-data")
    out_arguments(f, "MODEL_DIR", "where to save the model (with encoder/ inside)")
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
    option(f, "--device")
    run_arguments(f, "print the validation metrics as JSON on the last line")


def train(args) -> dict:
    start = time.perf_counter()
    model = HeadModel(from_arguments(TrainConfig, args), device=args.device)
    check_output(args.out, inputs_of(args), args.overwrite, "--out", kind="model")
    val = read_data(args, args.val_data) if args.val_data else None
    model.fit(
        read_data(args, args.data),
        args.label_col,
        cache=cache_of(args),  # several: their vectors side by side
        text_col=args.text_col,
        pair_col=args.pair_col,
        condition_col=args.condition_col,
        template=template_of(args),
        val_data=val,
        weight_col=args.weight_col,
        add_missing=args.add_missing,
        progress=not args.quiet,
    )
    model.save(args.out, overwrite=args.overwrite)
    print(f"validation on {model.validation_rows_}")
    if getattr(model, "leaderboard_", None):  # a head search: every candidate, best first
        print("head search, by validation Pearson:")
        for row in model.leaderboard_:
            print(
                f"  {row['head']:10s} {row['features']:7s} pearson {row['pearson']:.4f} spearman "
                f"{row['spearman']:.4f} rmse {row['rmse']:.4f} ({row['seconds']:.1f} s)"
            )
    if model.layer_weights_ is not None:  # what the mix of layer vectors learned
        shown = ", ".join(f"{i}: {w:.2f}" for i, w in zip(model.layers_, model.layer_weights_))
        print(f"layer weights (layer: weight) {shown}")
    print_metrics(f"{model.head_} saved to {args.out}; validation", model.validation_)
    return {
        **json_safe(model.validation_),
        "model": args.out,
        "epochs": len(model.history_),
        "seconds": round(time.perf_counter() - start, 2),
        **({"layer_weights": model.layer_weights_} if model.layer_weights_ is not None else {}),
    }


def finetune(args) -> dict:
    from ..finetuning.finetune import finetune as run_finetune

    start = time.perf_counter()
    model = run_finetune(
        read_data(args, args.data),
        args.label_col,
        columns_of(args),
        args.out,
        from_arguments(TrainConfig, args),
        from_arguments(FinetuneConfig, args),
        val_data=read_data(args, args.val_data) if args.val_data else None,
        export_encoder=args.export_encoder,
        keep_checkpoints=args.keep_checkpoints,
        resume=args.resume,
        overwrite=args.overwrite,
        device=args.device,
        paths=(args.data, args.val_data),
        inputs=inputs_of(args),
        progress=not args.quiet,
    )
    if model is None:  # a non-zero rank of a multi-GPU run: rank 0 saves and reports
        return {}
    print_metrics(f"fine-tuned {model.head_} saved to {args.out}; validation", model.validation_)
    if args.export_encoder:
        print(f"fine-tuned encoder written to {args.export_encoder}")
    return {**json_safe(model.validation_), "model": args.out, "seconds": round(time.perf_counter() - start, 2)}
