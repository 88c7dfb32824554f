"""Frozen sentence encoders with a fingerprint of everything that changes their output.

``base`` (the Encoder class, its counting and fingerprint), ``device`` (where and
in what precision), ``transformer`` (any sentence-transformers model, on any
runtime), ``use`` (USE multilingual in NumPy), ``hub`` (hub ids without a
network wait), ``registry`` (aliases, ``register_encoder``, ``load_encoder``,
``model_directory``, ``quick_key``).  Runtimes are ``embedcache.backends``.
"""

from .base import UNKNOWN_SHARE, Encoder, installed_version, unknown_warning
from .device import PRECISIONS, resolve_device, resolve_precision
from .layers import LAYER_CHOICES, describe_layers, resolve_layers
from .record import RecordedEncoder
from .registry import (
    DEFAULT_ENCODER,
    EncoderRecord,
    encoder_aliases,
    load_encoder,
    model_directory,
    quick_key,
    register_encoder,
    spec_difference,
)
from .transformer import (
    SentenceTransformerEncoder,
    open_sentence_transformer,
    quiet_sentence_transformers,
    quiet_transformers,
)
from .use import USE_LANGUAGES, USEEncoder

__all__ = [
    "DEFAULT_ENCODER",
    "LAYER_CHOICES",
    "PRECISIONS",
    "UNKNOWN_SHARE",
    "USE_LANGUAGES",
    "Encoder",
    "EncoderRecord",
    "RecordedEncoder",
    "SentenceTransformerEncoder",
    "USEEncoder",
    "describe_layers",
    "encoder_aliases",
    "installed_version",
    "load_encoder",
    "model_directory",
    "open_sentence_transformer",
    "quick_key",
    "quiet_sentence_transformers",
    "quiet_transformers",
    "register_encoder",
    "resolve_layers",
    "resolve_device",
    "resolve_precision",
    "spec_difference",
    "unknown_warning",
]
