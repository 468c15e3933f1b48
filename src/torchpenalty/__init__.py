"""torchpenalty: exact, fast parameter-norm penalties for PyTorch.

reg = torchpenalty.Regularizer(model, "l2(1e-4)")   # weights only, not biases / norms
loss = criterion(model(x), y) + reg()                 # or reg.attach(opt, mode="decoupled")
"""

from . import kernels, schedules
from .activity import ActivityRegularizer
from .attach import AttachHandle
from .compaction import compact
from .keras_interop import from_keras
from .param_groups import param_groups
from .penalties import (
    L1,
    L2,
    ElasticNet,
    GroupLasso,
    MaxNorm,
    MinMaxNorm,
    NonNeg,
    Orthogonal,
    Penalty,
    SparseGroupLasso,
    Sum,
    UnitNorm,
    Zero,
    parse,
)
from .regularizer import Regularizer
from .reporting import ParameterReport, Report, TargetStatus
from .selection import Selection, select
from .target import TargetSparsity

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "ActivityRegularizer",
    "AttachHandle",
    "ElasticNet",
    "GroupLasso",
    "MaxNorm",
    "MinMaxNorm",
    "NonNeg",
    "Orthogonal",
    "ParameterReport",
    "Penalty",
    "Regularizer",
    "Report",
    "Selection",
    "SparseGroupLasso",
    "Sum",
    "TargetSparsity",
    "TargetStatus",
    "UnitNorm",
    "Zero",
    "__version__",
    "compact",
    "from_keras",
    "kernels",
    "param_groups",
    "parse",
    "schedules",
    "select",
]
