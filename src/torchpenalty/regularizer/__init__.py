"""The training-time side: a `Regularizer` binds penalties to a model's parameters and applies
them in four modes.

- `regularizer`: `Regularizer` (binding, loss and gradient modes, decay / prox steps, state);
- `attach`: optimizer step hooks (modes grad, decoupled, proximal), through `Attachable`;
- `binding`: which tensor each regularized name stands for, followed as the model changes;
- `loss`: the loss-mode autograd node; `amp`: GradScaler's scale, low-precision resolutions;
- `references`: the ``w0`` of centered penalties; `schedules`: strength schedules;
- `reporting`: per-parameter reports; `activity`: penalties on module outputs.
"""

from . import schedules
from .activity import ActivityRegularizer
from .attach import ALL_MODES, MODES, AttachHandle
from .regularizer import PenaltyArg, Regularizer
from .reporting import ParameterReport, Report
from .stacked import Stacked

__all__ = [
    "ALL_MODES",
    "MODES",
    "ActivityRegularizer",
    "AttachHandle",
    "ParameterReport",
    "PenaltyArg",
    "Regularizer",
    "Report",
    "Stacked",
    "schedules",
]
