"""A model directory is data, never code: what it may name is checked before anything in it is loaded.

sentence-transformers and transformers import code a model directory names:
a module ``type`` in ``modules.json`` outside sentence-transformers, or an
``auto_map`` in any of its JSON configs (``config.json``, ``tokenizer_config.json``,
a module's own ``config.json``...).  :func:`check_model_directory` refuses a
directory that names either (the one class of ours it may name is the soft-prompt
module, which we import ourselves), or any path that leaves it (a module path that
is absolute or climbs out, a link to a file outside), with one line and before
any import.  Models then load with remote code off.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import EncoderError

SOFT_PROMPT_TYPE = "embedcache.softprompt.SoftPromptTransformer"
_OUR_TYPES = (SOFT_PROMPT_TYPE,)


class UnsafeModelError(EncoderError):
    """A model directory that would make the library import code, or that reaches outside itself."""


def _refuse(path, why: str) -> None:
    raise UnsafeModelError(
        f"model {path}: {why}; a model directory is data and may name no code of its own (nothing was imported)"
    )


def inside(path, root) -> bool:
    """Whether ``path``, links resolved, is ``root`` or lies inside it."""
    path, root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return path == root or root in path.parents


def _root_of(directory: Path) -> Path:
    """Where the files of a model directory may point: the directory itself, or for a Hugging Face cache
    snapshot (``models--org--name/snapshots/<rev>``, whose files link to ``../../blobs``) the repository's folder."""
    parts = directory.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return directory.parent.parent
    return directory


def _has_auto_map(value) -> bool:
    if isinstance(value, dict):
        return "auto_map" in value or any(_has_auto_map(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_auto_map(v) for v in value)
    return False


def check_model_directory(path) -> None:
    """Refuse a model directory that names code or reaches outside itself (``UnsafeModelError``, one line).

    Checked: every file and link under it (links must stay inside), every JSON file
    (no ``auto_map`` at any depth), and ``modules.json`` (types of sentence-transformers
    or our soft prompt only; module paths relative, inside the directory).
    """
    directory = Path(path)
    if not directory.is_dir():
        return  # a hub id: loaded with remote code off, from a snapshot checked by whoever resolves it
    root = _root_of(Path(os.path.abspath(directory)))
    for base, dirs, files in os.walk(directory, followlinks=False):
        for name in dirs + files:
            entry = Path(base) / name
            if entry.is_symlink() and not inside(entry, root):
                _refuse(
                    path, f"{entry.relative_to(directory)} links outside the directory (to {os.path.realpath(entry)})"
                )
        for name in files:
            if not name.endswith(".json"):
                continue
            entry = Path(base) / name
            try:
                value = json.loads(entry.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                _refuse(path, f"{entry.relative_to(directory)} is not readable JSON ({e})")
            if _has_auto_map(value):
                _refuse(path, f"{entry.relative_to(directory)} has an 'auto_map' (custom code to import)")
    _check_modules(directory, path)


def _check_modules(directory: Path, path) -> None:
    modules = directory / "modules.json"
    if not modules.exists():
        return
    entries = json.loads(modules.read_text(encoding="utf-8"))
    if not isinstance(entries, list) or not all(isinstance(m, dict) for m in entries):
        _refuse(path, "modules.json must be a list of objects")
    for i, module in enumerate(entries):
        kind, sub = module.get("type"), module.get("path", "")
        if not isinstance(kind, str) or not (kind.startswith("sentence_transformers.") or kind in _OUR_TYPES):
            _refuse(path, f"modules.json[{i}].type is {kind!r}, a class outside sentence-transformers")
        if (
            not isinstance(sub, str)
            or os.path.isabs(sub)
            or ".." in Path(sub).parts
            or not inside(directory / sub, directory)
        ):
            _refuse(path, f"modules.json[{i}].path {sub!r} leaves the directory")


def names_soft_prompt(path) -> bool:
    """Whether a (checked) model directory's modules include our soft-prompt module."""
    modules = Path(path) / "modules.json"
    if not modules.exists():
        return False
    return any(m.get("type") == SOFT_PROMPT_TYPE for m in json.loads(modules.read_text(encoding="utf-8")))
