"""The version of embedcache (and heads), in one place every module can import without a cycle."""

__version__ = "0.1.0"
