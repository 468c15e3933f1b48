"""Structured sparsity: reaching a requested size and acting on it.

- `target`: `TargetSparsity` and the controller that raises the strength until it is reached;
- `status`: `TargetStatus`, where a target stands;
- `compaction`: `compact()`, removing dead units with Torch-Pruning, verified per layer.
"""

from .compaction import compact
from .status import TargetStatus
from .target import TargetSparsity

__all__ = ["TargetSparsity", "TargetStatus", "compact"]
