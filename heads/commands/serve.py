"""``heads serve``: a model over HTTP."""

from __future__ import annotations

from embedcache.toolkit import (
    check_float,
    check_int,
    flag_type,
)

from .arguments import OPTIONS, POSITIVE_INT, cache_argument, option, subparser

SERVE_EXAMPLES = """\
examples:
  heads serve models/quality --cache cache/minilm
  curl -s localhost:8000/score -H 'content-type: application/json' \\
      -d '{"items": [{"text": "Explain step by step how vaccines work"}], "interval": 0.9}'
  EMBEDCACHE_API_KEY=secret heads serve models/safety --host 0.0.0.0 --workers 2   # clients send X-API-Key

POST /score takes {"items": [...], "interval": C}; each item has the fields the model was trained on
(text, pair, condition, or a template's fields). GET /health, /model, /metrics (Prometheus); docs at /docs."""


def serve_parser(sub) -> None:
    from ..serving.serve import ServeConfig

    defaults = ServeConfig()
    s = subparser(
        sub,
        "serve",
        "serve a model over HTTP (FastAPI)",
        "Serve a saved model over HTTP: requests arriving together are scored in one encoder batch.",
        SERVE_EXAMPLES,
    )
    s.add_argument("model", metavar="MODEL_DIR")
    cache_argument(
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
    option(
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
    from ..serving.serve import ServeConfig
    from ..serving.serve import serve as run_server

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
