"""What this machine offers a runtime: CPU features, cores, the export directory, library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def dist_version(dist: str) -> str:
    from importlib import metadata

    try:
        return ".".join(metadata.version(dist).split(".")[:2])
    except metadata.PackageNotFoundError:
        return "absent"


def export_home() -> Path:
    """The per-user directory of exported models: ``$EMBEDCACHE_HOME/exports``, else under ``$XDG_CACHE_HOME`` or ``~/.cache``."""
    home = os.environ.get("EMBEDCACHE_HOME")
    if home:
        return Path(home) / "exports"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "embedcache" / "exports"


def cpu_info(field: str) -> str | None:
    """A field of /proc/cpuinfo (``flags``, ``model name``; ARM names its flags ``Features``), None where unknown."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), empty where unknown."""
    return set((cpu_info("flags") or cpu_info("Features") or "").split())


def int8_kernel(flags: set[str] | None = None, machine: str | None = None) -> str:
    """The int8 kernel family this CPU runs best, as sentence-transformers names its quantization configs."""
    flags = cpu_flags() if flags is None else flags
    if (machine or platform.machine()).lower() in ("arm64", "aarch64"):
        return "arm64"
    if "avx512_vnni" in flags or "amx_int8" in flags:
        return "avx512_vnni"
    if "avx512f" in flags:
        return "avx512"
    return "avx2"


def cpu_has_bf16(flags: set[str] | None = None) -> bool:
    """Whether bf16 matrix products run natively here (avx512_bf16 or AMX), i.e. faster than fp32."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
