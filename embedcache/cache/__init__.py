"""The storage layer: a cache directory of HDF5 shards and manifests (see ``store`` for the whole story).

``layout`` names and paths, ``manifest`` the schema and its merge rules, ``lock``
the write lock, ``recovery`` what killed writers left, ``writer`` shards then
manifests, ``rows`` the in-memory index, ``integrity`` verify and rebuild,
``compaction`` the merge of parts, ``store`` the ``EmbeddingCache`` that joins them.
"""

from .compaction import COMPACT_SHARD_SIZE, compact
from .layout import MANIFEST
from .lock import LOCK_TIMEOUT
from .schema import manifest_problem
from .store import EmbeddingCache

__all__ = ["COMPACT_SHARD_SIZE", "LOCK_TIMEOUT", "MANIFEST", "EmbeddingCache", "compact", "manifest_problem"]
