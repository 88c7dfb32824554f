"""Several encoders in one head: the vectors of several caches (or encoders) side by side.

Concatenating the vectors of two different encoders (meta-embeddings, e.g. MiniLM and
multilingual-e5-small) gains a few points over each alone.  ``Joined`` is a source of
vectors like a cache or an encoder: a text's vector is its vectors from each source,
concatenated in order.  A model trained on one records every encoder (``encoders_``)
and reads them again in the same order: from the caches given (each checked by
fingerprint, a swapped or foreign one refused by name), else from the recorded
encoders, loaded.
"""

from __future__ import annotations

import numpy as np

from embedcache import EmbeddingCache, ParameterError


class Joined:
    """``sources`` (EmbeddingCaches or Encoders of different encoders) whose vectors stand side by side."""

    def __init__(self, sources: list):
        if len(sources) < 2:
            raise ParameterError("vectors side by side need at least two caches or encoders")
        self.sources = list(sources)

    @property
    def layers(self) -> None:
        return None  # layer vectors of several encoders are not mixed: one cache's layers per head

    def vectors(self, embed, texts: list[str], add_missing: bool, progress: bool) -> np.ndarray:
        """The vectors of ``texts`` from each source (``embed(source, texts, add_missing, progress)``), joined."""
        return np.concatenate([embed(s, texts, add_missing, progress) for s in self.sources], axis=1)

    def __repr__(self) -> str:
        names = [s.encoder_name if isinstance(s, EmbeddingCache) else s.name for s in self.sources]
        return f"Joined({', '.join(names)})"
