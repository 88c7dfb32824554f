"""Head types, by name.  A head type is one class (see ``base`` for what it provides) and one line here.

``register_head("name", cls)`` adds a type from outside the package (a test, a
user's module passed to ``heads train --import``); ``HeadModel``, the commands,
saving and loading then use it like the built-in ones.
"""

from __future__ import annotations

from embedcache import ParameterError

from .base import Head, TorchHead
from .concat import ConcatHead
from .cross import CrossHead
from .ridge import RidgeHead
from .two_tower import TwoTowerHead

HEAD_TYPES: dict[str, type] = {
    "concat": ConcatHead,
    "two-tower": TwoTowerHead,
    "ridge": RidgeHead,
    "cross": CrossHead,
}

__all__ = [
    "HEAD_TYPES",
    "ConcatHead",
    "CrossHead",
    "Head",
    "RidgeHead",
    "TorchHead",
    "TwoTowerHead",
    "check_head_name",
    "head_type",
    "layer_weights",
    "reading_layers",
    "register_head",
    "resolve_head",
]


def register_head(name: str, cls: type) -> type:
    """Make ``cls`` the head type called ``name``; returns ``cls``."""
    for method in (
        "build",
        "config",
        "from_config",
        "state",
        "load_state",
        "state_shapes",
        "fit",
        "predict",
        "check_sides",
    ):
        if not callable(getattr(cls, method, None)):
            raise ParameterError(f"head type {cls.__name__} has no method {method!r}; see heads.head_types.base")
    HEAD_TYPES[name] = cls
    return cls


def check_head_name(name, allow_auto: bool = False) -> str:
    """``name`` when it is a registered head type (or, with ``allow_auto``, ``auto`` or ``search``)."""
    if name not in HEAD_TYPES and not (allow_auto and name in ("auto", "search")):
        raise ParameterError(
            f"unknown head {name!r}; choose one of: {'auto, search, ' if allow_auto else ''}{', '.join(HEAD_TYPES)}"
        )
    return name


def head_type(name: str) -> type:
    return HEAD_TYPES[check_head_name(name)]


def resolve_head(head: str, sides) -> str:
    """``auto``: two-tower for a pair of texts (it starts from their calibrated cosine, so it is never
    below it), concat otherwise."""
    if head != "auto":
        return head
    return "two-tower" if "pair" in sides and "condition" not in sides else "concat"


def check_frozen_head(head: str, sides) -> str:
    """The head type ``head`` resolves to for ``sides``, refused (ParameterError) where it cannot train on cached
    vectors (a head that reads both texts in one sequence needs the encoder) or cannot read those sides."""
    name = resolve_head(head, sides)
    if head_type(name).joint:
        raise ParameterError(
            f"the {name} head reads both texts in one sequence through the encoder: train it with heads finetune"
        )
    head_type(name).check_sides(sides)
    return name


def reading_layers(unit, n_layers: int):
    """``unit`` made to read ``(m, n_layers, dim)`` layer vectors; ParameterError for a type that cannot."""
    if not callable(getattr(unit, "with_layers", None)):
        raise ParameterError(f"the {type(unit).__name__} head cannot read layer vectors: use --features final")
    return unit.with_layers(n_layers)


def layer_weights(unit) -> list[float] | None:
    """What ``unit`` learned of each layer's worth (a head on layer vectors that mixes them); else None."""
    weights = getattr(unit, "layer_weights", None)
    return weights() if callable(weights) else None
