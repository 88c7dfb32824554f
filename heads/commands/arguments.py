"""What the heads commands share: their flags (data, cache, outputs, run options) and how they read them."""

from __future__ import annotations

import argparse
import math

from embedcache import EmbeddingCache, read_table
from embedcache.toolkit import (
    FORMATS,
    atomic_file,
    check_float,
    check_int,
    flag_type,
)

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


POSITIVE_INT = flag_type(check_int)  # a whole number >= 1


NON_NEGATIVE_INT = flag_type(check_int, minimum=0)


def data_arguments(p, cache: str = "required", trained: bool = False, several: bool = False) -> None:
    """Where the texts come from.  ``cache``: required, optional (a fine-tuned model needs none) or none;
    ``several``: --cache may be given again, for the vectors of other encoders side by side.
    ``trained``: the columns default to the model's."""
    if cache != "none":
        cache_argument(p, required=cache == "required", several=several)
    p.add_argument("--data", required=True, metavar="FILE", help=f"data file: {', '.join(sorted(FORMATS))}")
    default = "default: the model's" if trained else "default: text"
    p.add_argument(
        "--text-col", default=None if trained else "text", metavar="COL", help=f"the text column ({default})"
    )
    p.add_argument("--pair-col", metavar="COL", help="second text of a pair (premise/hypothesis, sentence1/sentence2)")
    p.add_argument("--condition-col", metavar="COL", help="condition text per row, e.g. a metric name or description")
    table_arguments(p, trained)
    if cache != "none":
        cache_arguments(p)


def table_arguments(p, trained: bool) -> None:
    p.add_argument("--no-header", action="store_true", help="CSV/TSV without a header row: columns are named 0, 1, ...")
    p.add_argument(
        "--template",
        metavar="TEMPLATE",
        help="compose the text of each row from columns, e.g. "
        "'[USER] {prompt}\\n[RESPONSE] {response}' (\\n and \\t are unescaped)"
        + (" (default: the model's)" if trained else "; kept in the model"),
    )


def cache_argument(p, required: bool = True, help: str = "", several: bool = False) -> None:
    p.add_argument(
        "--cache",
        required=required,
        metavar="DIR",
        action="append" if several else "store",
        help="embedcache cache directory of the vectors"
        + ("; give --cache again for the caches of other encoders, read side by side in that order" if several else "")
        + (
            help or ""
            if required
            else help
            or " (optional: vectors of the texts it holds are read from it, never written "
            "unless --add-missing; the rest are encoded with the model's encoder)"
        ),
    )


def cache_arguments(p) -> None:
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


def out_arguments(p, metavar: str, help: str, required: bool = True) -> None:
    p.add_argument("--out", required=required, metavar=metavar, help=help)
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists (an input is never replaced)")


def run_arguments(p, json_help: str = "print a JSON summary as the last line") -> None:
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


def labels_argument(
    p,
    required: bool = True,
    help: str = "label column; repeat for several labels (one head, one output each; missing labels masked)",
) -> None:
    p.add_argument("--label-col", action="append", required=required, metavar="COL", help=help)


def option(p, name: str, **kwargs) -> None:
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


def subparser(sub, name: str, help: str, description: str, epilog: str | None = None):
    return sub.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )


def inputs_of(args) -> list[tuple[str, str]]:
    """Every input a command reads (data files, caches, models): an output may be none of them, nor contain
    one, nor lie inside one."""
    flags = ("data", "val_data", "labeled", "train", "test", "cache", "model", "init_head")
    given = [(f"--{f.replace('_', '-')}", getattr(args, f, None)) for f in flags]
    return [
        (flag, v) for flag, value in given if value is not None for v in (value if isinstance(value, list) else [value])
    ]


def read_data(args, path):
    return read_table(path, header=not args.no_header)


def cache_of(args):
    """The cache of ``--cache``, or (given several times) the list of caches; None without one."""
    if not args.cache:
        return None
    if isinstance(args.cache, list):
        caches = [EmbeddingCache(c, lock_timeout=args.lock_timeout) for c in args.cache]
        return caches[0] if len(caches) == 1 else caches
    return EmbeddingCache(args.cache, lock_timeout=args.lock_timeout)


def template_of(args) -> str | None:
    t = getattr(args, "template", None)
    return t.replace("\\n", "\n").replace("\\t", "\t") if t else None


def columns_of(args) -> dict:
    template = template_of(args)
    return {
        "text": None if template else args.text_col,
        "pair": args.pair_col,
        "condition": args.condition_col,
        "template": template,
    }


def print_metrics(prefix: str, m: dict) -> None:
    print(
        f"{prefix}: n={m['n']} rmse={m['rmse']:.4f} mae={m['mae']:.4f} pearson={m['pearson']:.4f} "
        f"spearman={m['spearman']:.4f} r2={m['r2']:.4f}"
    )


def write_csv(df, path) -> None:
    """Whole or not at all: a crash or a full disk never leaves half a table at ``path``."""
    with atomic_file(path) as tmp:
        df.to_csv(tmp, index=False)


def json_safe(metrics: dict) -> dict:
    """JSON-safe: NaN (an undefined correlation) becomes null."""

    def clean(v):
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return None if isinstance(v, float) and math.isnan(v) else v

    return clean(metrics)
