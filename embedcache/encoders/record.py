"""The encoder of some vectors as a cache or a model records it, and the one way to load it again.

A cache's manifest and a model's ``config.json`` both keep the fingerprint of the
encoder whose vectors they hold, its name, and the ``load_encoder`` arguments that
rebuild it (None for a custom ``Encoder``).  ``RecordedEncoder.load`` loads it and
checks that it still has that fingerprint (other weights or library versions would
give other vectors), so no vector of another encoder is ever mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EncoderError, FingerprintMismatchError
from .base import Encoder
from .registry import load_encoder, spec_difference


@dataclass(frozen=True)
class RecordedEncoder:
    """``fingerprint``, ``name`` and ``spec`` (``load_encoder`` arguments; None: a custom encoder) of a recorded
    encoder.  ``owner`` begins the error messages: who records it and how, e.g. ``"cache /data/c was built by"``
    or ``"the model was trained on vectors of"``."""

    fingerprint: str
    name: str
    spec: dict | None
    owner: str = "the vectors were made by"
    short: str = "the record"  # how a list of differences names the record: "the cache", "the model"

    @classmethod
    def of(cls, encoder: Encoder) -> RecordedEncoder:
        return cls(encoder.fingerprint, encoder.name, encoder.spec)

    @classmethod
    def from_json(cls, record: dict, owner: str, short: str) -> RecordedEncoder:
        """From what ``to_json`` wrote (a model's ``config.json``)."""
        return cls(record["fingerprint"], record["name"], record.get("load"), owner, short)

    def to_json(self) -> dict:
        """What a model's ``config.json`` keeps: ``fingerprint``, ``name``, ``load``."""
        return {"fingerprint": self.fingerprint, "name": self.name, "load": self.spec}

    def require_spec(self, otherwise: str) -> dict:
        """The ``load_encoder`` arguments; EncoderError saying ``otherwise`` (what to do) for a custom encoder."""
        if self.spec is None:
            raise EncoderError(f"{self.owner} a custom Encoder ({self.name!r}) it cannot load: {otherwise}")
        return self.spec

    def model_and_options(self, otherwise: str, **options) -> tuple[str, dict]:
        """``(model, options)`` for ``load_encoder`` that rebuild this encoder, ``options`` overriding the
        recorded ones."""
        spec = self.require_spec(otherwise)
        return spec["name_or_path"], {**{k: v for k, v in spec.items() if k != "name_or_path"}, **options}

    def load(self, device: str | None = None, otherwise: str = "pass that encoder", **kwargs) -> Encoder:
        """Load the recorded encoder on ``device`` and check its fingerprint; ``otherwise`` says what to do when
        it cannot be loaded (a custom encoder) or now loads with another fingerprint."""
        encoder = load_encoder(device=device, **self.require_spec(otherwise), **kwargs)
        if encoder.fingerprint != self.fingerprint:
            raise self.mismatch(
                f"loading it now gives fingerprint {encoder.fingerprint} (other weights or library versions); "
                + otherwise
            )
        return encoder

    def check(self, encoder: Encoder, then: str) -> None:
        """FingerprintMismatchError, naming what differs and ending with ``then`` (what to do), unless
        ``encoder`` is the recorded one."""
        if encoder.fingerprint != self.fingerprint:
            differ = spec_difference(self.spec, encoder.spec, (self.short, "the encoder"))
            raise self.mismatch(
                f"the given encoder is {encoder.name!r} (fingerprint {encoder.fingerprint}); they differ in: "
                f"{differ}; {then}"
            )

    def mismatch(self, found: str) -> FingerprintMismatchError:
        """The error for vectors of another encoder: what is recorded, and what was ``found`` instead."""
        return FingerprintMismatchError(
            f"{self.owner} encoder {self.name!r} (fingerprint {self.fingerprint}), but {found}"
        )
