"""The ``heads`` command: train, predict, evaluate, finetune, pseudolabel, select, leakage, serve."""

from __future__ import annotations

import argparse
import json
import sys

from embedcache import InputError, __version__
from embedcache.toolkit import (
    quiet_transformers,
    run_command,
)

from .commands.arguments import EXAMPLES
from .commands.labels import pseudolabel, pseudolabel_parser, select, select_parser
from .commands.score import evaluate, leakage, leakage_parser, predict, predict_parsers
from .commands.serve import serve, serve_parser
from .commands.train import finetune, finetune_parser, train, train_parser


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
        train_parser,
        predict_parsers,
        finetune_parser,
        pseudolabel_parser,
        select_parser,
        leakage_parser,
        serve_parser,
    ):
        build(sub)
    return parser


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
