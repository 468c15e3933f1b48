"""`Batch`: what a penalty's fast-path methods know about the tensors of one call besides their
values: the kernels to run them with, which tensors are local shards of FSDP2 parameters, and the
reference tensors of penalties centered on them (L2-SP)."""

from __future__ import annotations

import dataclasses

from torch import Tensor

from ..distributed import ShardSpec
from ..kernels import Kernels


@dataclasses.dataclass(frozen=True)
class Batch:
    """``kernels``: the backend and compile state of the calling regularizer. ``shards``: per
    tensor, its `ShardSpec` when it is the local shard of a sharded parameter, None when it is a
    whole tensor (an empty tuple: no tensor is sharded). Unsharded is the world-of-one case.
    ``centers``: per tensor, its reference ``w0`` (laid out like the tensor: a local shard for a
    shard), or None; an empty tuple: no tensor has one."""

    kernels: Kernels = dataclasses.field(default_factory=Kernels)
    shards: tuple[ShardSpec | None, ...] = ()
    centers: tuple[Tensor | None, ...] = ()

    def shard(self, i: int) -> ShardSpec | None:
        """The `ShardSpec` of tensor ``i``, or None."""
        return self.shards[i] if self.shards else None

    def center(self, i: int) -> Tensor | None:
        """The reference of tensor ``i``, or None."""
        return self.centers[i] if self.centers else None

    def part(self, indices: list[int]) -> Batch:
        """The batch of the tensors at ``indices`` (a chunk or a slice of a bucket)."""
        if not self.shards and not self.centers:
            return self
        shards = tuple(self.shards[i] for i in indices) if self.shards else ()
        centers = tuple(self.centers[i] for i in indices) if self.centers else ()
        return Batch(self.kernels, shards, centers)
