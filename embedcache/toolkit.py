"""What a package building on embedcache (``heads`` is one) needs besides the user API: reading tables the
same way, argument checks and flags, atomic files and output checks, trust checks on model directories,
Ray helpers, encoder placement and descriptions, soft-prompt files.

``embedcache`` itself keeps the user API (the cache, the encoders, precompute, compact, the errors).
"""

from .checks import check_choice, check_float, check_int, check_label_range, flag_type
from .corpus.ray_data import connect_ray, expand_inputs, map_with_actors, ray_arguments
from .encoders import (
    PRECISIONS,
    RecordedEncoder,
    installed_version,
    quiet_transformers,
    resolve_device,
    resolve_precision,
    spec_difference,
    unknown_warning,
)
from .errors import run_command
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
from .inputs import FORMATS, bad_rows, check_columns, compose, first_rows, table_source, template_columns
from .trust import check_model_directory, inside

__all__ = [
    "FORMATS",
    "PRECISIONS",
    "RecordedEncoder",
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
    "compose",
    "connect_ray",
    "expand_inputs",
    "first_rows",
    "flag_type",
    "inside",
    "installed_version",
    "is_model_directory",
    "map_with_actors",
    "quiet_transformers",
    "ray_arguments",
    "read_soft_prompt",  # noqa: F822 -- resolved on first use by __getattr__
    "resolve_device",
    "resolve_precision",
    "run_command",
    "save_soft_prompt",  # noqa: F822
    "spec_difference",
    "table_source",
    "template_columns",
    "text_keys",
    "unknown_warning",
    "with_soft_prompt",  # noqa: F822
    "writing",
]

_LAZY = ("read_soft_prompt", "save_soft_prompt", "with_soft_prompt")  # they import sentence-transformers: seconds


def __getattr__(name: str):
    if name in _LAZY:
        from . import softprompt

        return getattr(softprompt, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
