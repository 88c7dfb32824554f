"""``heads predict``, ``heads evaluate`` and ``heads leakage``: scores, metrics, and texts shared across splits."""

from __future__ import annotations

from embedcache import ParameterError
from embedcache.toolkit import (
    check_float,
    check_not_input,
    check_output,
    flag_type,
    ray_arguments,
)

from ..model import HeadModel
from .arguments import (
    NON_NEGATIVE_INT,
    OPTIONS,
    cache_argument,
    cache_arguments,
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
    table_arguments,
    template_of,
    write_csv,
)


def predict_parsers(sub) -> None:
    p = subparser(
        sub,
        "predict",
        "write predictions for a file",
        "Write id,score per row (a column per label). "
        "With --ray, --data may be a glob pattern ('corpus/*.parquet') and --out a directory: each input "
        "file is scored by a pool of Ray actors into OUT/<its name>.parquet, and a rerun scores only the "
        "files without an output.",
    )
    option(p, "--model")
    data_arguments(p, cache="optional", trained=True, several=True)
    out_arguments(p, "CSV", "predictions file")
    option(p, "--id-col")
    p.add_argument("--round", type=NON_NEGATIVE_INT, metavar="N", help="round predictions to N decimals")
    option(p, "--interval", help=OPTIONS["--interval"]["help"] + ": columns lower and upper")
    p.add_argument(
        "--std",
        action="store_true",
        help="a column std: the spread of an ensemble's members on each row (a model trained with --ensemble K)",
    )
    ray_arguments(p)
    run_arguments(p)

    e = subparser(
        sub,
        "evaluate",
        "metrics (and plots) of a model on a labelled file",
        "Metrics of a model on a labelled file: overall, per label and per condition.",
    )
    option(e, "--model")
    data_arguments(e, cache="optional", trained=True, several=True)
    labels_argument(e, required=False, help="label columns (default: the model's)")
    e.add_argument("--plots", metavar="DIR", help="write predicted-vs-true, residual and per-condition PNGs here")
    e.add_argument("--overwrite", action="store_true", help="replace PNGs of the same names in --plots")
    option(e, "--interval", help="report the empirical coverage and mean width of the model's intervals at level C")
    e.add_argument(
        "--group-col",
        metavar="COL",
        action="append",
        help="also report the metrics per value of this "
        "column (a language, a source), in the printout, the JSON and a plot; repeat for every combination "
        "of several (--group-col language --group-col metric)",
    )
    run_arguments(e, "print the metrics as JSON on the last line")


def leakage_parser(sub) -> None:
    k = subparser(
        sub,
        "leakage",
        "find test texts that nearly duplicate a training text",
        "List test texts whose nearest training text (cosine of cached vectors, exact faiss search) is at or "
        "above --threshold: near-duplicates across splits inflate every metric.",
    )
    cache_argument(k)
    k.add_argument("--train", required=True, metavar="FILE")
    k.add_argument("--test", required=True, metavar="FILE")
    k.add_argument("--text-col", default="text", metavar="COL", help="the text column in both files (default: text)")
    k.add_argument("--pair-col", metavar="COL", help="the second text of a pair: both sides are searched against both")
    table_arguments(k, trained=False)
    cache_arguments(k)
    k.add_argument(
        "--threshold",
        type=flag_type(check_float, float, low=-1, high=1),
        default=0.95,
        help="cosine at or above which a pair counts (default 0.95)",
    )
    out_arguments(k, "CSV", "write every leaked pair here", required=False)
    run_arguments(k)


def predict(args) -> dict:
    if args.ray is not None:
        from ..serving.batch_scoring import score_files

        if args.cache and len(args.cache) > 1:
            raise ParameterError("--ray scores with one --cache (a model of several encoders loads the others)")
        summary = score_files(
            args.model,
            [args.data],
            args.out,
            args.cache[0] if args.cache else None,
            columns_of(args),
            id_col=args.id_col,
            interval=args.interval,
            decimals=args.round,
            header=not args.no_header,
            address=args.ray or None,
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            progress=not args.quiet,
            std=args.std,
        )
        print(
            f"scored {summary['files'] - summary['skipped']} files ({summary['rows']} rows) into {args.out} on Ray; "
            f"{summary['skipped']} had their output already"
        )
        return summary
    check_output(args.out, inputs_of(args), args.overwrite, "--out")
    model = HeadModel.load(args.model)
    df = read_data(args, args.data)
    out = model.predict_table(
        df,
        cache_of(args),
        columns_of(args),
        id_col=args.id_col,
        decimals=args.round,
        add_missing=args.add_missing,
        interval=args.interval,
        progress=not args.quiet,
        std=args.std,
    )
    write_csv(out, args.out)
    print(f"wrote {len(out)} predictions to {args.out}")
    return {"n": len(out), "out": args.out}


def evaluate(args) -> dict:
    model = HeadModel.load(args.model)
    metrics, y, pred, _ = model.evaluate(
        read_data(args, args.data),
        cache_of(args),
        args.label_col,
        columns_of(args),
        add_missing=args.add_missing,
        interval=args.interval,
        group_col=args.group_col,
        progress=not args.quiet,
    )
    labels = list(args.label_col or model.labels_)
    print_metrics(f"{args.model} on {args.data}", metrics)
    for key in ("per_condition", "per_group"):
        for value, per in metrics.get(key, {}).items():
            for label, m in per.items():
                print_metrics(
                    f"  {' / '.join(args.group_col) + '=' if key == 'per_group' else ''}{value}"
                    + (f" / {label}" if len(labels) > 1 else ""),
                    m,
                )
    if "interval" in metrics:
        i = metrics["interval"]
        print(f"{i['level']:g} intervals: coverage {i['coverage']:.3f}, mean width {i['mean_width']:.4f}")
    if "interval_constant_width" in metrics:  # an ensemble's, against one width per label
        c = metrics["interval_constant_width"]
        print(f"  (one width per label instead: coverage {c['coverage']:.3f}, mean width {c['mean_width']:.4f})")
    for value, i in metrics.get("interval_per_group", {}).items():
        print(f"  {' / '.join(args.group_col)}={value}: coverage {i['coverage']:.3f}, mean width {i['mean_width']:.4f}")
    if args.plots:
        from ..plots import write_plots

        check_not_input(args.plots, inputs_of(args), "--plots")
        for path in write_plots(
            args.plots, y, pred, labels, metrics, overwrite=args.overwrite, trained=getattr(model, "conditions_", None)
        ):
            print(f"wrote {path}")
    return json_safe(metrics)


def leakage(args) -> dict:
    from ..neighbours import leakage_report

    if args.out:
        check_output(args.out, inputs_of(args), args.overwrite, "--out")
    pairs = leakage_report(
        cache_of(args),
        read_data(args, args.train),
        read_data(args, args.test),
        {"text": args.text_col, "template": template_of(args), "pair": args.pair_col},
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
        write_csv(pairs, args.out)
        print(f"wrote {args.out}")
    return {
        "n_test": n_test,
        "n_leaked": len(pairs),
        "share": len(pairs) / n_test,
        "threshold": args.threshold,
        "n_test_rows": pairs.attrs["n_test_rows"],
        "n_leaked_rows": rows,
    }
