"""embedcache: encode a corpus once with a frozen sentence encoder, keep the vectors in HDF5 shards."""

__version__ = "0.1.0"

from .cache import CacheLockedError, EmbeddingCache, FingerprintMismatchError
from .encoders import Encoder, load_encoder, register_encoder
from .index import text_keys

__all__ = [
    "CacheLockedError",
    "EmbeddingCache",
    "Encoder",
    "FingerprintMismatchError",
    "load_encoder",
    "register_encoder",
    "text_keys",
]
