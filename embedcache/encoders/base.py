"""The encoder base class: batching, truncation and unknown-token counting, and the fingerprint.

An encoder turns a list of texts into an ``(n, dim)`` float32 array.  Its
``fingerprint`` is a hash of ``describe()``: two encoders that could give
different vectors for the same text never share one, so a cache built by one
is never extended by the other.

A new backend is a subclass of :class:`Encoder` that implements ``_encode`` and
``describe`` and sets ``name``, ``dim`` and ``max_length``; register an alias
for it with :func:`embedcache.register_encoder`.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from importlib import metadata

import numpy as np

from ..errors import EncoderError
from ..files import json_sha256


def installed_version(dist: str) -> str:
    """The full installed version of a distribution, ``absent`` where it is not installed."""
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
        return json_sha256(self.describe())[:32]

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
            self._count(texts)
            vectors = np.asarray(self._encode(texts), dtype=np.float32)
        self._check_shape(vectors, (len(texts), self.dim))
        return vectors

    def encode_layers(self, texts: list[str], layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, layer_vectors)`` of ``texts`` from one forward pass: the ``(n, dim)`` sentence vectors, as
        ``encode`` gives them, and the ``(n, len(layers), dim)`` attention-masked means of the hidden states
        ``layers`` (0: the embeddings' output), float32.  EncoderError where the encoder cannot give them."""
        problem = self.layers_problem()
        if problem:
            raise EncoderError(f"encoder {self.name!r} cannot give layer vectors: {problem}")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, len(layers), self.dim), np.float32)
        with self._calls:
            self._count(texts)
            vectors, means = self._encode_layers(texts, tuple(layers))
        self._check_shape(vectors, (len(texts), self.dim))
        self._check_shape(means, (len(texts), len(layers), self.dim))
        return vectors, means

    @property
    def layer_count(self) -> int | None:
        """How many hidden states layer vectors can be taken from (the embeddings' output and each layer);
        None where the encoder has none."""
        return None

    def layers_problem(self) -> str | None:
        """Why this encoder cannot give layer vectors, in words; None where it can."""
        return "it is not a transformer run by torch (USE and custom encoders give the sentence vector only)"

    def _count(self, texts: list[str]) -> None:
        self.truncated += self.count_truncated(texts)
        self._count_unknown([t for t in texts if not t.isascii() or _LONG_WORD.search(t)])

    def _check_shape(self, array: np.ndarray, expected: tuple) -> None:
        if array.shape != expected:
            raise RuntimeError(f"encoder {self.name!r} returned shape {array.shape}, expected {expected}")

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

    def _encode_layers(self, texts: list[str], layers: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, fingerprint={self.fingerprint[:12]})"


def hash_state_dict(module) -> str:
    """Hash of every parameter and buffer: a fine-tuned copy never matches the original."""
    import torch

    h = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        h.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        if tensor.numel():
            h.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def hash_tokenizer(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return json_sha256(tokenizer.get_vocab())
    # Calling the tokenizer stores its last truncation and padding settings in this
    # JSON; they are per call, not part of the tokenizer, so leave them out.
    tok = json.loads(backend.to_str())
    tok.pop("truncation", None)
    tok.pop("padding", None)
    return json_sha256(tok)
