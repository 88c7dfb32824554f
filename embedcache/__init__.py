"""embedcache: encode a corpus once with a frozen sentence encoder, keep the vectors in HDF5 shards.

The names below are the contract with the ``heads`` package and with users:
everything else is internal.  Besides the cache, the encoders and the errors,
they include what a package building on embedcache needs to read tables the
same way (``read_table``, ``check_columns``, ``template_columns``, ...) and to
place and describe an encoder (``resolve_device``, ``model_directory``, ...).
"""

from .cache import EmbeddingCache, compact
from .checks import check_choice, check_float, check_int, check_label_range, flag_type
from .corpus import precompute
from .encoders import (
    Encoder,
    load_encoder,
    model_directory,
    quiet_transformers,
    register_encoder,
    resolve_device,
    resolve_precision,
    spec_difference,
    unknown_warning,
)
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
    run_command,
)
from .files import (
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_json,
    check_not_input,
    check_output,
    is_model_directory,
    writing,
)
from .index import text_keys
from .inputs import (
    FORMATS,
    bad_rows,
    check_columns,
    compose,
    first_rows,
    read_table,
    table_source,
    template_columns,
)
from .ray import connect_ray, expand_inputs, map_with_actors, ray_arguments
from .trust import UnsafeModelError, check_model_directory, inside
from .version import __version__ as __version__

__all__ = [
    "FORMATS",
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
    "atomic_directory",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_json",
    "bad_rows",
    "check_choice",
    "check_columns",
    "check_float",
    "check_int",
    "check_label_range",
    "check_model_directory",
    "check_not_input",
    "check_output",
    "compact",
    "compose",
    "connect_ray",
    "expand_inputs",
    "first_rows",
    "inside",
    "is_model_directory",
    "flag_type",
    "load_encoder",
    "map_with_actors",
    "model_directory",
    "precompute",
    "quiet_transformers",
    "ray_arguments",
    "read_soft_prompt",
    "read_table",
    "register_encoder",
    "resolve_device",
    "resolve_precision",
    "run_command",
    "save_soft_prompt",
    "spec_difference",
    "table_source",
    "template_columns",
    "text_keys",
    "unknown_warning",
    "with_soft_prompt",
    "writing",
]

# Imported on first use: they import sentence-transformers, which takes seconds.
_LAZY = {
    name: "softprompt" for name in ("SoftPromptTransformer", "read_soft_prompt", "save_soft_prompt", "with_soft_prompt")
}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
