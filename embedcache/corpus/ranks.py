"""Which slice of a corpus this process encodes, from flags or from the launcher's environment.

Every rank reads the whole corpus and keeps the distinct texts whose key falls in
its slice (the key's first 8 bytes modulo the world size), so ranks agree on the
split without talking to each other, and a rank rerun alone redoes only its own
slice.  Each writes its own part of the cache (``rank-00003-of-00008``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from ..errors import ParameterError


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0  # the process's index on its machine: picks its GPU
    source: str = "single process"  # where rank and world size came from, for the summary

    @property
    def part(self) -> str | None:
        """The cache part this rank writes; None for a single process, which writes the top level."""
        return None if self.world_size == 1 else f"rank-{self.rank:05d}-of-{self.world_size:05d}"

    def owns(self, keys: np.ndarray) -> np.ndarray:
        """Which of the ``(n, 16)`` text keys fall in this rank's slice."""
        first = np.ascontiguousarray(keys[:, :8]).view("<u8").ravel()
        return first % np.uint64(self.world_size) == np.uint64(self.rank)


def _int(env, name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ParameterError(f"environment variable {name} must be a whole number, found {value!r}") from None


def launcher_rank(rank: int | None = None, world_size: int | None = None, env=None) -> Rank:
    """This process's rank: from ``rank``/``world_size`` when given, else from the launcher.

    Read in this order: torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); a Slurm job
    step started by ``srun`` (``SLURM_PROCID`` of ``SLURM_STEP_NUM_TASKS``,
    ``SLURM_LOCALID``), within a Slurm array job when there is one
    (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``, so
    each array task's steps take their own slice); else a single process.
    """
    env = os.environ if env is None else env
    if rank is not None or world_size is not None:
        if rank is None or world_size is None:
            raise ParameterError("give both --rank and --world-size (or neither, to read them from the launcher)")
        found = Rank(
            rank, world_size, _int(env, "LOCAL_RANK") or _int(env, "SLURM_LOCALID") or 0, "--rank/--world-size"
        )
    elif (world := _int(env, "WORLD_SIZE")) is not None:
        found = Rank(_int(env, "RANK") or 0, world, _int(env, "LOCAL_RANK") or 0, "torchrun (RANK, WORLD_SIZE)")
    else:
        task, tasks, sources = 0, 1, []
        if (count := _int(env, "SLURM_ARRAY_TASK_COUNT")) is not None:
            task = (_int(env, "SLURM_ARRAY_TASK_ID") or 0) - (_int(env, "SLURM_ARRAY_TASK_MIN") or 0)
            tasks = count
            sources.append("SLURM_ARRAY_TASK_ID/COUNT")
        step = _int(env, "SLURM_STEP_NUM_TASKS")  # set by srun for its tasks; a batch script alone has none
        procid = _int(env, "SLURM_PROCID") or 0
        if step is not None and step > 1:
            sources.append("SLURM_PROCID/SLURM_STEP_NUM_TASKS")
        else:
            step, procid = 1, 0
        found = Rank(
            task * step + procid,
            tasks * step,
            _int(env, "SLURM_LOCALID") or 0,
            "Slurm (" + ", ".join(sources) + ")" if sources else "single process",
        )
    if found.world_size < 1 or not 0 <= found.rank < found.world_size:
        raise ParameterError(
            f"rank must be in 0..world_size-1 with world_size >= 1, found rank {found.rank} of "
            f"world size {found.world_size} (from {found.source})"
        )
    return found
