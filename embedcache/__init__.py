"""embedcache: encode a corpus once with a frozen sentence encoder, keep the vectors in HDF5 shards.

The names below are the contract with the ``heads`` package and with users:
everything else is internal.
"""

__version__ = "0.1.0"

from .cache import EmbeddingCache
from .checks import check_choice, check_float, check_int, check_label_range, flag_type
from .encoders import Encoder, load_encoder, register_encoder
from .errors import (
    CacheDamagedError,
    CacheError,
    CacheLockedError,
    CacheNotFoundError,
    EmbedcacheError,
    EncoderError,
    FingerprintMismatchError,
    InputError,
    MissingDependencyError,
    NotCachedError,
    ParameterError,
    WriteError,
    run_command,
)
from .files import (
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    check_output,
    writing,
)
from .index import text_keys

__all__ = [
    "CacheDamagedError",
    "CacheError",
    "CacheLockedError",
    "CacheNotFoundError",
    "EmbedcacheError",
    "EmbeddingCache",
    "Encoder",
    "EncoderError",
    "FingerprintMismatchError",
    "InputError",
    "MissingDependencyError",
    "NotCachedError",
    "ParameterError",
    "WriteError",
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "check_choice",
    "check_float",
    "check_int",
    "check_label_range",
    "check_output",
    "flag_type",
    "load_encoder",
    "register_encoder",
    "run_command",
    "text_keys",
    "writing",
]
