"""heads: small regression heads trained on vectors from an embedcache cache."""

from .estimator import EmbeddingRegressor
from .metrics import regression_metrics, report
from .model import HEADS, HeadModel

__all__ = ["HEADS", "EmbeddingRegressor", "HeadModel", "regression_metrics", "report"]
