"""Where an encoder runs and in what precision."""

from __future__ import annotations

import os
from pathlib import Path

from ..checks import check_choice
from ..errors import ParameterError

PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def resolve_device(device: str | None) -> str:
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(
            f"device {device!r} was asked for, but no CUDA GPU is visible here; "
            "use device 'cpu' or leave the device out"
        )
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` is half precision on a GPU (bf16 where supported) and fp32 elsewhere."""
    import torch

    check_choice(precision, "precision", PRECISIONS)
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU may be usable here, without importing torch."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    return any(Path("/dev").glob("nvidia[0-9]*"))
