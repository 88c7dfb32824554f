"""The errors embedcache and heads raise for a failure the user can fix.

Every one derives from :class:`EmbedcacheError`, and its message names the
file (or flag, or parameter), the row, column or field where it can, what was
expected and what to do.  The commands catch this base class only and print
the message on one line; anything else is a bug and keeps its traceback.
Each also derives from the builtin a caller would have caught before
(``ValueError``, ``KeyError``, ``OSError``, ...), so existing ``except``
clauses still work.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings


class EmbedcacheError(Exception):
    """Base class: a failure with a message for the user."""


class InputError(EmbedcacheError, ValueError):
    """Input that cannot be used, with the file, row and column that say where."""


class ParameterError(EmbedcacheError, ValueError):
    """An argument outside its allowed values (a count below 1, a range with lo >= hi, ...)."""


class MissingDependencyError(EmbedcacheError, ImportError):
    """An optional package is needed; the message says which extra installs it."""


class EncoderError(EmbedcacheError, ValueError):
    """An encoder that cannot be loaded: no such directory, not available offline, ..."""


class CacheError(EmbedcacheError):
    """A cache directory that cannot be used as asked."""


class CacheNotFoundError(CacheError, FileNotFoundError):
    """No cache at the path (no manifest and no shards)."""


class CacheDamagedError(CacheError, ValueError):
    """A manifest or shard that fails its checks; the message says whether to verify, repair or rebuild."""


class FingerprintMismatchError(CacheError, ValueError):
    """An encoder other than the cache's own was asked to write into it, or a model met another encoder's cache."""


class CacheLockedError(CacheError, RuntimeError):
    """Another writer held the cache's write lock for longer than the writer would wait."""


class NotCachedError(CacheError, KeyError):
    """Texts asked for are not in the cache and were not to be encoded."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class WriteError(EmbedcacheError, OSError):
    """A file could not be written: no space left, read-only, no such directory, or it exists."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class UnknownTokensWarning(UserWarning):
    """Texts were mostly tokens the encoder does not know (a language it does not cover)."""


class TruncatedTextsWarning(UserWarning):
    """Texts were longer than the encoder's max length and were cut."""


def os_error_message(error: OSError, path, doing: str = "writing") -> str:
    """One line for an OSError met while ``doing`` ``path``, with what to do."""
    code = error.errno
    if code == errno.ENOSPC or code == errno.EDQUOT:
        return f"no space left on device {doing} {path}; free some space and run the same command again"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {'read-only file system' if code == errno.EROFS else 'permission denied'}"
    if code == errno.ENOENT:
        return f"cannot write {path}: its directory does not exist"
    if code == errno.ENOTDIR:
        return f"cannot write {path}: a part of the path is a file, not a directory"
    return f"cannot write {path}: {error.strerror or error}"


def debug_enabled(flag: bool = False) -> bool:
    """Whether a command shows tracebacks: its ``--debug`` flag or ``EMBEDCACHE_DEBUG=1``."""
    return flag or os.environ.get("EMBEDCACHE_DEBUG", "") not in ("", "0")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run_command(prog: str, command, args) -> tuple[int, object]:
    """Run ``command(args)``; an EmbedcacheError becomes one line on stderr and exit status 1.

    Returns ``(status, result)``.  With ``--debug`` or ``EMBEDCACHE_DEBUG=1`` the
    error is raised as it is, with its traceback.  Warnings the library gives
    read as one line each on stderr while the command runs (the caller's
    warning settings are restored after).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = _one_line_warning
            return 0, command(args)
    except EmbedcacheError as e:
        if debug_enabled(getattr(args, "debug", False)):
            raise
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1, None
