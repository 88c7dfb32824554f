"""heads: small regression heads trained on vectors from an embedcache cache."""

from .metrics import regression_metrics, report
from .estimator import EmbeddingRegressor
from .model import HEADS, HeadModel

__all__ = ["EmbeddingRegressor", "HEADS", "HeadModel", "regression_metrics", "report"]
