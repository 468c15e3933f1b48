"""Kernels: how penalties run on many tensors at once.

- `backend`: when a kernel runs eager and when through public ``torch.compile``
  (`set_backend`, `Kernels`, the fallback when compilation fails);
- `elementwise`: the L1 / L2 / elastic-net family, one pass per mode;
- `layouts`: how a tensor is grouped (rows, column blocks, irregular groups);
- `group`: group norms then one scaling pass, compiled; `group_eager`: the same, eager.
"""

from .backend import (
    BACKENDS,
    COMPILE_MIN_NUMEL,
    EAGER,
    MAX_SIGNATURES,
    Backend,
    Kernels,
    Scalar,
    Tensors,
    check_backend,
    get_backend,
    lists,
    pack,
    scalar,
    set_backend,
)
from .elementwise import CHUNK_NUMEL, add_grad_, decay_, prox_, value

__all__ = [
    "BACKENDS",
    "CHUNK_NUMEL",
    "COMPILE_MIN_NUMEL",
    "EAGER",
    "MAX_SIGNATURES",
    "Backend",
    "Kernels",
    "Scalar",
    "Tensors",
    "add_grad_",
    "check_backend",
    "decay_",
    "get_backend",
    "lists",
    "pack",
    "prox_",
    "scalar",
    "set_backend",
    "value",
]
