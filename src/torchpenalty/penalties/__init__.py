"""Penalties: value, gradient and proximal operator of each regularizer, and their spec strings."""

from .algebra import Sum, combine
from .base import PENALTIES, GroupStats, Penalty, known_names, lookup, register
from .batch import Batch
from .constraints import Constraint, MaxNorm, MinMaxNorm, NonNeg, UnitNorm
from .elementwise import L1, L2, ElasticNet, Elementwise, Zero, soft_threshold
from .group import GroupLasso, SparseGroupLasso
from .members import Members
from .orthogonal import Orthogonal
from .spec import parse

__all__ = [
    "L1",
    "L2",
    "PENALTIES",
    "Batch",
    "Constraint",
    "ElasticNet",
    "Elementwise",
    "GroupLasso",
    "GroupStats",
    "MaxNorm",
    "Members",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "Penalty",
    "SparseGroupLasso",
    "Sum",
    "UnitNorm",
    "Zero",
    "combine",
    "known_names",
    "lookup",
    "parse",
    "register",
    "soft_threshold",
]
