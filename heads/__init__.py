"""heads: small regression heads trained on vectors from an embedcache cache."""

from .metrics import regression_metrics, report
from .model import HEADS, HeadModel

__all__ = ["HEADS", "HeadModel", "regression_metrics", "report"]
