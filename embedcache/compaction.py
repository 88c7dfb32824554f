"""``embedcache.compaction.compact``, where embedcache 0.1 kept it: now ``embedcache.compact``."""

from .cache.compaction import COMPACT_SHARD_SIZE, compact

__all__ = ["COMPACT_SHARD_SIZE", "compact"]
