"""Penalties: value, gradient and proximal operator of each regularizer, and their spec strings."""

from .base import Penalty, known_names, lookup
from .composite import Sum, combine
from .elementwise import L1, L2, ElasticNet, Elementwise, Zero, soft_threshold
from .group import GroupLasso, SparseGroupLasso
from .spec import parse

__all__ = [
    "L1",
    "L2",
    "ElasticNet",
    "Elementwise",
    "GroupLasso",
    "Penalty",
    "SparseGroupLasso",
    "Sum",
    "Zero",
    "combine",
    "known_names",
    "lookup",
    "parse",
    "soft_threshold",
]
