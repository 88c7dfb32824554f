"""A corpus into a cache: ``local`` (``precompute`` in this process: the whole corpus, or one rank's slice), ``ranks`` (a rank's slice, from
flags or the launcher), ``ray_data`` (the same on a Ray cluster with Ray Data; named so that it never
shadows ``ray`` itself)."""

from .local import precompute
from .ranks import launcher_rank

__all__ = ["launcher_rank", "precompute"]
