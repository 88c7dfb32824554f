"""Argument checks shared by the Python API and the commands.

A library function calls ``check_int(value, "epochs")``; a command declares
``type=flag_type(check_int)`` for ``--epochs``, so both refuse the same values
with the same words (the command through argparse: usage and exit status 2).
"""

from __future__ import annotations

import argparse
import math

from .errors import ParameterError


def check_int(value, name: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole number in ``[minimum, maximum]``."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole:
        raise ParameterError(f"{name} must be a whole number, got {value!r}")
    value = int(value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ParameterError(f"{name} must be {bound}, got {value}")
    return value


def check_float(
    value,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """A finite number within the bounds (``low_open``/``high_open``: the bound itself is excluded)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a number, got {value!r}") from None
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        raise ParameterError(
            f"{name} must be a finite number{' ' if lo or hi else ''}{' and '.join(filter(None, (lo, hi)))}, "
            f"got {value!r}"
        )
    return value


def check_label_range(value, name: str = "label_range") -> tuple[float, float] | None:
    """None, or ``(lo, hi)`` with finite ``lo < hi``."""
    if value is None:
        return None
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be two numbers (lo, hi), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise ParameterError(f"{name} must be two finite numbers with lo < hi, got ({lo:g}, {hi:g})")
    return lo, hi


def check_choice(value, name: str, choices) -> str:
    if value not in choices:
        raise ParameterError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def flag_type(check, convert=int, **bounds):
    """An argparse ``type=`` that converts a flag's text and applies ``check`` with ``bounds``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if convert is int else 'a number'}, got {text!r}"
            ) from None
        try:
            return check(value, "the value", **bounds)
        except ParameterError as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("the value ")) from None

    parse.__name__ = convert.__name__  # argparse names the type in its messages
    return parse
