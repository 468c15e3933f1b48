"""torchpenalty: exact, fast parameter-norm penalties for PyTorch.

reg = torchpenalty.Regularizer(model, "l2(1e-4)")   # weights only, not biases / norms
loss = criterion(model(x), y) + reg()                 # or reg.attach(opt, mode="decoupled")
"""

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings

from . import kernels
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
from .penalties.keras import from_keras
from .penalties.keras_axes import KerasAxes
from .regularizer import (
    ActivityRegularizer,
    AttachHandle,
    ParameterReport,
    Regularizer,
    Report,
    Stacked,
    schedules,
)
from .selection import Selection, param_groups, select
from .sparsity import TargetSparsity, TargetStatus, compact

__version__ = "0.1.0"

__all__ = [
    "L1",
    "L2",
    "ActivityRegularizer",
    "AttachHandle",
    "ElasticNet",
    "GroupLasso",
    "KerasAxes",
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
    "Stacked",
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

#: modules of earlier releases, now at the place the layout gives them (DEVELOPERS.md): importing
#: the old path gives a module holding the same objects, and warns where it was not public API
MOVED = {
    "activity": "regularizer.activity",
    "amp": "regularizer.amp",
    "attach": "regularizer.attach",
    "binding": "regularizer.binding",
    "compaction": "sparsity.compaction",
    "dtensor": "distributed",
    "group_kernels": "kernels.group",
    "keras_interop": "penalties.keras",
    "penalty_total": "regularizer.loss",
    "references": "regularizer.references",
    "registry": "penalties.registry",
    "reporting": "regularizer.reporting",
    "schedules": "regularizer.schedules",
    "sharding": "distributed",
    "target": "sparsity.target",
}
#: old paths that are documented API: they keep working without a warning
PUBLIC_ALIASES = ("schedules",)


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``import torchpenalty.<old>`` gives a module that forwards to the new one."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != __name__ or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None  # a plain module, filled by exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__.rpartition(".")[2]
        moved = importlib.import_module(f"{__name__}.{MOVED[name]}")
        if name not in PUBLIC_ALIASES:
            warnings.warn(
                f"{module.__name__} moved to {moved.__name__}; import it from there",
                DeprecationWarning,
                stacklevel=2,
            )
        module.__dict__.update({k: v for k, v in vars(moved).items() if not k.startswith("__")})
        module.__getattr__ = lambda attr: getattr(moved, attr)  # type: ignore[method-assign]


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
