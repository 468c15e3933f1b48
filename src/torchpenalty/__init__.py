"""torchpenalty: exact, fast parameter-norm penalties for PyTorch.

reg = torchpenalty.Regularizer(model, "l2(1e-4)")   # weights only, not biases / norms
loss = criterion(model(x), y) + reg()                 # or reg.attach(opt, mode="decoupled")
"""

from . import kernels, schedules
from .attach import AttachHandle
from .compaction import compact
from .param_groups import param_groups
from .penalties import L1, L2, ElasticNet, GroupLasso, Penalty, SparseGroupLasso, Sum, Zero, parse
from .regularizer import Regularizer
from .reporting import ParameterReport, Report
from .selection import Selection, select

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "AttachHandle",
    "ElasticNet",
    "GroupLasso",
    "ParameterReport",
    "Penalty",
    "Regularizer",
    "Report",
    "Selection",
    "SparseGroupLasso",
    "Sum",
    "Zero",
    "__version__",
    "compact",
    "kernels",
    "param_groups",
    "parse",
    "schedules",
    "select",
]
