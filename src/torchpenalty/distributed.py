"""Distributed parameters: DTensor helpers (FSDP2) and `Sharding`, passed explicitly to everything
that reduces over processes.

A leaf module: it imports nothing from torchpenalty. FSDP2's ``fully_shard`` turns parameters into
DTensors sharded along one dim (``Shard(0)`` by default) of a 1-D device mesh, shards possibly
uneven or empty; ``to_local()`` is a view of the local shard, so in-place edits reach the
parameter without gathering anything.

Unsharded parameters are the world-of-one case: every reduction over processes is the identity,
so value, report and check_finite have one path, sharded or not. Sharded parameters are worked on
through their local shards; the figures of all tensors are stacked and all-reduced once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class ShardSpec:
    """How one local tensor is a shard of its parameter: split along ``dim``, whose global length
    is ``global_length``, over ``world`` processes of the process ``group``."""

    dim: int
    global_length: int
    group: Any
    world: int


def is_dtensor(t: object) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_spec(t: Tensor) -> ShardSpec | None:
    """The `ShardSpec` of a DTensor sharded along one dim of a 1-D mesh; None for a plain tensor;
    `ValueError` for other layouts (2-D meshes, partial placements)."""
    if not is_dtensor(t):
        return None
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
    shards = [p for p in placements if isinstance(p, Shard)]
    if (
        mesh.ndim != 1
        or len(shards) != 1
        or any(not isinstance(p, Shard | Replicate) for p in placements)
    ):
        raise ValueError(
            f"torchpenalty supports DTensors sharded along one dim of a 1-D mesh (FSDP2's "
            f"fully_shard); got placements {placements} on a {mesh.ndim}-D mesh"
        )
    group = mesh.get_group()
    dim = shards[0].dim
    return ShardSpec(dim, t.shape[dim], group, torch.distributed.get_world_size(group))


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: in-place edits reach the parameter), else ``t``."""
    return t.to_local() if is_dtensor(t) else t  # type: ignore[attr-defined]


def like(local_tensor: Tensor, param: Tensor) -> Tensor:
    """``local_tensor`` as a DTensor laid out like ``param`` (a plain ``param``: unchanged)."""
    if not is_dtensor(param):
        return local_tensor
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local_tensor,
        param.device_mesh,  # type: ignore[attr-defined]
        param.placements,  # type: ignore[attr-defined]
        shape=param.shape,
        stride=param.stride(),
    )


def all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    """``t`` summed over the processes of ``group``, in place."""
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=group)
    return t


def all_reduce_max(t: Tensor, group: Any) -> Tensor:
    """``t``'s elementwise maximum over the processes of ``group``, in place."""
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX, group=group)
    return t


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
        specs = {id(p): s for p in params if (s := shard_spec(p))}
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
        return [local(p) for p in params]

    def spec(self, param: Tensor) -> ShardSpec | None:
        """The `ShardSpec` of a regularized parameter; None for a whole tensor."""
        return self._specs.get(id(param))

    def specs(self, params: Sequence[Tensor]) -> tuple[ShardSpec | None, ...]:
        """Each parameter's `ShardSpec` (a `Batch`'s ``shards``); empty when unsharded."""
        if not self.sharded:
            return ()
        return tuple(self.spec(p) for p in params)

    def reduce(self, stacked: Tensor) -> Tensor:
        """Per-process figures summed over the processes (one collective; none when unsharded)."""
        return stacked if not self.sharded else all_reduce_sum(stacked, self.group)

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
        return [like(g, p) for g, p in zip(grads, params, strict=True)]

    def __repr__(self) -> str:
        return "Sharding(none)" if not self.sharded else f"Sharding(world={self.world})"
