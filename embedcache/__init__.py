"""embedcache: encode a corpus once with a frozen sentence encoder, keep the vectors in HDF5 shards.

The names below are the user API: the cache, the encoders, precompute and compact, reading a table, and
the errors.  What a package building on embedcache needs besides (argument checks, atomic files, Ray
helpers...) is in ``embedcache.toolkit``; those names still resolve here, with a DeprecationWarning.
"""

from .cache import EmbeddingCache, compact
from .corpus import precompute
from .encoders import Encoder, load_encoder, model_directory, register_encoder
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
    TruncatedTextsWarning,
    UnknownTokensWarning,
    WriteError,
)
from .inputs import read_table
from .trust import UnsafeModelError
from .version import __version__ as __version__

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
    "SoftPromptTransformer",
    "TruncatedTextsWarning",
    "UnknownTokensWarning",
    "UnsafeModelError",
    "WriteError",
    "compact",
    "load_encoder",
    "model_directory",
    "precompute",
    "read_table",
    "register_encoder",
]


def __getattr__(name: str):
    if name == "SoftPromptTransformer":  # imports sentence-transformers, which takes seconds
        from .softprompt import SoftPromptTransformer

        return SoftPromptTransformer
    from importlib import import_module

    toolkit = import_module(f"{__name__}.toolkit")  # not "from . import": that asks this function again
    if name == "toolkit":
        return toolkit
    if name in toolkit.__all__:
        import warnings

        warnings.warn(
            f"embedcache.{name} moved to embedcache.toolkit.{name} (the top level keeps the user API)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(toolkit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
