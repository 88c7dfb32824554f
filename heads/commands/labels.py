"""``heads pseudolabel`` and ``heads select``: scores for unlabeled rows, and what to label next."""

from __future__ import annotations

from embedcache.toolkit import (
    check_float,
    check_int,
    check_output,
    flag_type,
)

from ..config import TrainConfig, add_arguments, from_arguments
from ..labels.pseudolabel import METHODS
from ..labels.selftrain import SELECT
from ..model import HeadModel
from .arguments import (
    NON_NEGATIVE_INT,
    POSITIVE_INT,
    cache_of,
    columns_of,
    data_arguments,
    inputs_of,
    json_safe,
    option,
    out_arguments,
    read_data,
    run_arguments,
    subparser,
    write_csv,
)

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


def pseudolabel_parser(sub) -> None:
    w = subparser(
        sub,
        "pseudolabel",
        "score an unlabeled file (labeling functions, neighbours, self-training)",
        "Score every row of --data and write source,id,<text columns>,score,confidence: the labelled rows "
        "first (their own label, confidence 1), then the rest. Train on it with heads train --label-col "
        "score.",
        PSEUDOLABEL_EXAMPLES,
    )
    data_arguments(w)
    w.add_argument("--labeled", metavar="FILE", help="a labelled file with the same text columns")
    w.add_argument("--label-col", metavar="COL", help="the label column of --labeled")
    option(w, "--val-data", help="labelled validation file for self-training (default: --val-fraction of --labeled)")
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
    option(w, "--id-col")
    out_arguments(w, "CSV", "the scored table")
    add_arguments(w, TrainConfig(), "head training (self-training)")
    run_arguments(w)


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


def select_parser(sub) -> None:
    from ..labels.selection import STRATEGIES

    c = subparser(
        sub,
        "select",
        "choose the rows to label next",
        "Choose the --budget rows of --data to label next from their cached vectors: random (the default, the "
        "baseline); diversity, which picks each row farthest from everything labelled or picked so far; "
        "uncertainty, the rows an ensemble (--model, trained with --ensemble K on the labels so far) disagrees "
        "on most; hybrid, their disagreement times their distance from what is labelled or picked. Rows "
        "that nearly duplicate a labelled one are never picked.",
        SELECT_EXAMPLES,
    )
    data_arguments(c)
    c.add_argument("--labeled", metavar="FILE", help="rows labelled already (same text columns): avoided")
    c.add_argument("--budget", type=POSITIVE_INT, required=True, metavar="K", help="how many rows to pick")
    c.add_argument(
        "--strategy",
        choices=STRATEGIES,
        default="random",
        help="random (the default: no strategy has beaten it on a benchmark here yet), diversity, uncertainty "
        "or hybrid (these two need --model)",
    )
    c.add_argument("--model", metavar="DIR", help="a model trained with --ensemble K: its members' disagreement")
    c.add_argument("--group-col", metavar="COL", help="split the budget over this column's values in proportion")
    c.add_argument(
        "--skip-above",
        type=flag_type(check_float, float, low=-1, high=1),
        default=0.95,
        metavar="C",
        help="never pick a row with cosine >= C to a labelled or picked one (default 0.95)",
    )
    c.add_argument("--seed", type=NON_NEGATIVE_INT, default=0, help="(default 0)")
    option(c, "--id-col")
    out_arguments(c, "CSV", "the rows to label")
    run_arguments(c)


def select(args) -> dict:
    from ..labels.selection import select as choose

    check_output(args.out, inputs_of(args), args.overwrite, "--out")
    out = choose(
        cache_of(args),
        read_data(args, args.data),
        columns_of(args),
        args.budget,
        args.strategy,
        labeled=read_data(args, args.labeled) if args.labeled else None,
        group_col=args.group_col,
        skip_above=args.skip_above,
        seed=args.seed,
        id_col=args.id_col,
        paths=(args.data, args.labeled),
        add_missing=args.add_missing,
        progress=not args.quiet,
        model=HeadModel.load(args.model) if args.model else None,
    )
    write_csv(out, args.out)
    per = (
        f" ({', '.join(f'{g}: {n}' for g, n in out.group.value_counts().sort_index().items())})"
        if "group" in out
        else ""
    )
    print(f"{args.strategy}: picked {len(out)} of {args.budget} rows{per}; wrote {args.out}")
    return {"n": len(out), "strategy": args.strategy, "out": args.out}


def pseudolabel(args) -> dict:
    from ..labels.pseudolabel import pseudolabel as score_rows

    check_output(args.out, inputs_of(args), args.overwrite, "--out")
    method = args.method or ("self-train" if args.labeled else "lf")
    config = from_arguments(TrainConfig, args)
    out, summary = score_rows(
        cache_of(args),
        read_data(args, args.data),
        columns_of(args),
        method,
        read_data(args, args.labeled) if args.labeled else None,
        args.label_col,
        args.lf,
        k=args.k,
        model=HeadModel(config),
        rounds=args.rounds,
        committee=args.committee,
        select=args.select,
        label_range=config.label_range,
        val_data=read_data(args, args.val_data) if args.val_data else None,
        id_col=args.id_col,
        paths=(args.data, args.labeled),
        add_missing=args.add_missing,
        min_confidence=args.min_confidence,
        progress=not args.quiet,
        combine_with=args.combine,
    )
    summary.pop("models", None)  # the committee; the table is what this command gives
    write_csv(out, args.out)
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
    return {**json_safe(summary), "n_written": len(out), "out": args.out}
