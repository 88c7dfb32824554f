"""Any sentence-transformers model, frozen, on any runtime (torch, ONNX Runtime, OpenVINO)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ..checks import check_choice, check_int
from ..errors import ParameterError
from ..files import json_sha256
from ..trust import SOFT_PROMPT_TYPE, check_model_directory
from .base import Encoder, hash_state_dict, hash_tokenizer
from .device import PRECISIONS, resolve_device, resolve_precision
from .runtimes import BACKENDS, dist_version, load_runtime
from .runtimes.batching import prefetch, token_batches


class SentenceTransformerEncoder(Encoder):
    """Any sentence-transformers model id or local directory, frozen.

    ``backend`` is where it runs: ``torch`` (the default), ``onnx``, ``onnx-int8``,
    ``openvino`` or ``openvino-int8`` (exports made once into ``export_home()``;
    ``calibration`` texts are needed the first time ``openvino-int8`` is exported), or
    ``auto``: the fastest of those on this machine whose vectors keep a mean cosine of
    at least 0.99 with torch fp32 ones on the ``calibration`` texts (see
    :func:`embedcache.encoders.runtimes.auto.choose_backend`).  Texts are batched by token count:
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
        self._weights = hash_state_dict(self.model)
        self._tokenizer = hash_tokenizer(self.model.tokenizer)
        self.choice = None  # what backend="auto" measured, where it chose
        if backend == "auto":
            from .runtimes.auto import choose_backend

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
        return {json_sha256({**self.source(), "precision": p})[:32] for p in PRECISIONS[1:]} | {self.fingerprint}

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

    @property
    def layer_count(self) -> int | None:
        config = getattr(getattr(self.model[0], "auto_model", None), "config", None)
        layers = getattr(config, "num_hidden_layers", None)
        return layers + 1 if isinstance(layers, int) else None

    def layers_problem(self) -> str | None:
        if self.layer_count is None:
            return "its first module is not a transformer with hidden states"
        if self.backend != "torch":
            return f"backend {self.backend!r} runs an export that gives the sentence vector only; use backend 'torch'"
        return None

    def _encode(self, texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for positions, batch in self._batches(texts):
            out[positions] = self.runtime(batch)
        return self._normalized(out)

    def _encode_layers(self, texts: list[str], layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        means = np.empty((len(texts), len(layers), self.dim), dtype=np.float32)
        for positions, batch in self._batches(texts):
            out[positions], means[positions] = self.runtime.with_layers(batch, layers)
        return self._normalized(out), means

    def _batches(self, texts: list[str]):
        batches = self.batches(texts)
        return prefetch(batches) if self.overlap else batches

    def _normalized(self, out: np.ndarray) -> np.ndarray:
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

    from ..softprompt import SoftPromptTransformer

    check_model_directory(name_or_path)

    class _Ours(SentenceTransformer):
        # sentence-transformers 6 resolves these modules.json types to the classes given, remote code off
        _module_classes = {SOFT_PROMPT_TYPE: SoftPromptTransformer}

    with quiet_sentence_transformers():
        return _Ours(str(name_or_path), device=device, trust_remote_code=False)


def quiet_transformers() -> None:
    """No "Loading weights" bars or info lines from transformers (the commands' --quiet)."""
    import sys

    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "transformers" in sys.modules:  # already imported: the variables above came too late
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
