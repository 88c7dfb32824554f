"""heads: small regression heads trained on vectors from an embedcache cache.

Names are imported on first use: ``import heads`` stays cheap (torch and
scikit-learn load only when a head is built or an estimator is asked for).
"""

from embedcache import __version__

__all__ = [
    "HEAD_TYPES",
    "EmbeddingRegressor",
    "EmbeddingTransformer",
    "FinetuneConfig",
    "HeadModel",
    "TrainConfig",
    "__version__",
    "register_head",
    "regression_metrics",
    "report",
]

_WHERE = {
    "EmbeddingRegressor": "estimator",
    "EmbeddingTransformer": "estimator",
    "HeadModel": "model",
    "HEAD_TYPES": "head_types",
    "register_head": "head_types",
    "TrainConfig": "config",
    "FinetuneConfig": "config",
    "regression_metrics": "metrics",
    "report": "metrics",
}


def __getattr__(name):
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'heads' has no attribute {name!r}")
