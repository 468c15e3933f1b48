"""DTensor helpers (FSDP2): what a parameter's local shard is, and collectives over its group.

A leaf module: it imports nothing from torchpenalty. FSDP2's ``fully_shard`` turns parameters into
DTensors sharded along one dim (``Shard(0)`` by default) of a 1-D device mesh, shards possibly
uneven or empty; ``to_local()`` is a view of the local shard, so in-place edits reach the
parameter without gathering anything.
"""

from __future__ import annotations

import dataclasses
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
