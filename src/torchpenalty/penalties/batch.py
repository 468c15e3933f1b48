"""`Batch`: what a penalty's fast-path methods know about the tensors of one call besides their
values: the kernels to run them with, and which tensors are local shards of FSDP2 parameters."""

from __future__ import annotations

import dataclasses

from ..dtensor import ShardSpec
from ..kernels import Kernels


@dataclasses.dataclass(frozen=True)
class Batch:
    """``kernels``: the backend and compile state of the calling regularizer. ``shards``: per
    tensor, its `ShardSpec` when it is the local shard of a sharded parameter, None when it is a
    whole tensor (an empty tuple: no tensor is sharded). Unsharded is the world-of-one case."""

    kernels: Kernels = dataclasses.field(default_factory=Kernels)
    shards: tuple[ShardSpec | None, ...] = ()

    def shard(self, i: int) -> ShardSpec | None:
        """The `ShardSpec` of tensor ``i``, or None."""
        return self.shards[i] if self.shards else None

    def part(self, indices: list[int]) -> Batch:
        """The batch of the tensors at ``indices`` (a chunk or a slice of a bucket)."""
        if not self.shards:
            return self
        return Batch(self.kernels, tuple(self.shards[i] for i in indices))
