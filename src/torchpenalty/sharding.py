"""`Sharding`: how a regularizer's parameters are split over processes, passed explicitly to
everything that reduces over them.

Unsharded parameters are the world-of-one case: every reduction over processes is the identity,
so value, report and check_finite have one path, sharded or not. FSDP2 parameters (DTensors
sharded along one dim of a 1-D mesh) are worked on through their local shards; the figures of
all tensors are stacked and all-reduced once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from . import dtensor
from .dtensor import ShardSpec
from .kernels import Kernels
from .penalties.batch import Batch


def _common_dtype(parts: Sequence[Tensor]) -> torch.dtype:
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    return dtype


def sum_parts(parts: Sequence[Tensor]) -> Tensor:
    """Partial totals of several devices and dtypes, added on the first one's device."""
    dtype = _common_dtype(parts)
    total = parts[0].to(dtype)
    for p in parts[1:]:
        total = total + p.to(device=total.device, dtype=dtype)
    return total


class Sharding:
    """The process group the regularized parameters are sharded over (None: not sharded)."""

    def __init__(self, group: Any = None, specs: dict[int, ShardSpec] | None = None) -> None:
        self.group = group
        self._specs = specs or {}  # id(parameter) -> its ShardSpec, read once by `of`

    @classmethod
    def of(cls, params: Sequence[Tensor]) -> Sharding:
        """The sharding of ``params``: one process group for all sharded ones, or none."""
        specs = {id(p): s for p in params if (s := dtensor.shard_spec(p))}
        groups = {id(s.group): s.group for s in specs.values()}
        if len(groups) > 1:
            raise ValueError("regularized DTensors must all be sharded over the same device mesh")
        return cls(next(iter(groups.values()), None), specs)

    @property
    def sharded(self) -> bool:
        return self.group is not None

    @property
    def world(self) -> int:
        return 1 if self.group is None else torch.distributed.get_world_size(self.group)

    def locals(self, params: Sequence[Tensor]) -> list[Tensor]:
        """What this process holds of each parameter (views: in-place edits reach them)."""
        if not self.sharded:
            return list(params)
        return [dtensor.local(p) for p in params]

    def spec(self, param: Tensor) -> ShardSpec | None:
        """The `ShardSpec` of a regularized parameter; None for a whole tensor."""
        return self._specs.get(id(param))

    def batch(self, params: Sequence[Tensor], kernels: Kernels) -> Batch:
        """The `Batch` the fast path gets for the local tensors of ``params``."""
        if not self.sharded:
            return Batch(kernels)
        return Batch(kernels, tuple(self.spec(p) for p in params))

    def reduce(self, stacked: Tensor) -> Tensor:
        """Per-process figures summed over the processes (one collective; none when unsharded)."""
        return stacked if not self.sharded else dtensor.all_reduce_sum(stacked, self.group)

    def total(self, parts: Sequence[Tensor]) -> Tensor:
        """The sum of every process's partial totals, on the first part's device."""
        if not self.sharded:
            return sum_parts(parts)
        dtype = _common_dtype(parts)
        stacked = torch.stack([p.to(device=parts[0].device, dtype=dtype) for p in parts])
        return self.reduce(stacked).sum()

    def norm_part(self, local_norm: Tensor) -> Tensor:
        """What one process contributes to a whole tensor's L2 norm: the norm itself unsharded
        (exact, however small), else its square (summed over processes by `reduce`)."""
        return local_norm if not self.sharded else local_norm * local_norm

    def norm_from(self, reduced: float) -> float:
        """The whole tensor's L2 norm from its reduced `norm_part`."""
        return reduced if not self.sharded else reduced**0.5

    def like_params(self, grads: Sequence[Tensor], params: Sequence[Tensor]) -> list[Tensor]:
        """Local gradients as tensors laid out like their parameters (DTensors when sharded)."""
        if not self.sharded:
            return list(grads)
        return [dtensor.like(g, p) for g, p in zip(grads, params, strict=True)]

    def __repr__(self) -> str:
        return "Sharding(none)" if not self.sharded else f"Sharding(world={self.world})"
