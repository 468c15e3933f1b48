"""FSDP2 support: penalties on the local shards of DTensor parameters, global figures by one
batched all-reduce.

``fully_shard`` turns parameters into DTensors (``Shard(0)`` by default, shards possibly uneven
or empty). Elementwise penalties and ``rows`` groups of a dim-0 shard only need the local shard;
``to_local()`` is a view of it, so in-place updates reach the parameter without gathering
anything. Groups that span shards (``cols`` or ``tensor`` of a dim-0 shard) all-reduce their
partial squared norms across the shard group first. Sums over all tensors (the value, a report)
are stacked and all-reduced once.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

#: local shard id -> (sharded dim, process group, that dim's global length) while a regularizer
#: works on shards
_SHARDS: contextvars.ContextVar[dict[int, tuple[int, Any, int]] | None] = contextvars.ContextVar(
    "torchpenalty_shards", default=None
)


def is_dtensor(t: object) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def shard_of(t: Tensor) -> tuple[int, Any] | None:
    """``(dim, group)`` of a DTensor sharded along one dim of a 1-D mesh, else None."""
    if not is_dtensor(t):
        return None
    from torch.distributed.tensor import Replicate, Shard

    mesh, placements = t.device_mesh, t.placements
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
    return shards[0].dim, mesh.get_group()


def local(t: Tensor) -> Tensor:
    """The local shard of a DTensor (a view: in-place edits reach the parameter), else ``t``."""
    return t.to_local() if is_dtensor(t) else t


@contextlib.contextmanager
def shards(params: Sequence[Tensor], locals_: Sequence[Tensor]) -> Iterator[None]:
    """While active, group penalties find which local tensors are shards of what."""
    table = {
        id(lt): (s[0], s[1], p.shape[s[0]])
        for p, lt in zip(params, locals_, strict=True)
        if (s := shard_of(p))
    }
    token = _SHARDS.set(table)
    try:
        yield
    finally:
        _SHARDS.reset(token)


def shard_info(local_tensor: Tensor) -> tuple[int, Any, int] | None:
    table = _SHARDS.get()
    return None if table is None else table.get(id(local_tensor))


def all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=group)
    return t


def group_of(params: Sequence[Tensor]) -> Any | None:
    """The shard group of the DTensors among ``params`` (one for all), or None if none is one."""
    groups = {id(s[1]): s[1] for p in params if (s := shard_of(p))}
    if len(groups) > 1:
        raise ValueError("regularized DTensors must all be sharded over the same device mesh")
    return next(iter(groups.values()), None)


def _local_value(penalty: Any, w: Tensor, world: int) -> Tensor:
    """This shard's share of ``penalty(full tensor)``: elementwise terms sum over shards, and a
    group term whose norms were already all-reduced counts ``1/world`` on every shard."""
    from .penalties import Sum
    from .penalties.group import _GroupBase

    if isinstance(penalty, Sum):
        return sum(
            (_local_value(t, w, world) for t in penalty.terms), torch.zeros((), dtype=w.dtype)
        )
    if isinstance(penalty, _GroupBase):
        grouping = penalty.grouping(w)
        part = penalty._group * grouping.total()
        if grouping.spans_shards:
            part = part / world
        return part + penalty._l1 * w.abs().sum() if penalty._l1 else part
    return penalty.value(w)


def global_value(reg: Any) -> Tensor:
    """``reg.value()`` of sharded parameters: local shares, stacked, one all-reduce."""
    group = reg._shard_group
    world = torch.distributed.get_world_size(group)
    parts = []
    for b in reg.buckets:
        penalty = reg.current(b.penalty)
        ws = [local(p) for p in b.params]
        acc = torch.promote_types(ws[0].dtype, torch.float32)
        with shards(b.params, ws):
            parts += [_local_value(penalty, w, world).to(acc) for w in ws]
    total = torch.stack([p.to(parts[0].dtype) for p in parts])
    return all_reduce_sum(total, group).sum()  # the one collective


def global_report(reg: Any) -> Any:
    """``reg.report()`` of sharded parameters: per tensor its value share, squared norm, zeros,
    dead rows and zero groups, all stacked into one all-reduce."""
    from .reporting import ParameterReport, Report

    group = reg._shard_group
    world = torch.distributed.get_world_size(group)
    names = {id(p): n for n, p in reg.named_parameters()}
    stats, meta = [], []
    for b in reg.buckets:
        penalty = reg.current(b.penalty)
        ws = [local(p) for p in b.params]
        with shards(b.params, ws):
            for p, w in zip(b.params, ws, strict=True):
                w64 = w.detach().double()
                group_stats = penalty.group_stats(w)
                spans = group_stats is not None and penalty.grouping(w).spans_shards
                zero_groups = group_stats[0].double() if group_stats else torch.zeros(())
                rows_local = (s := shard_of(p)) is not None and s[0] == 0 and p.ndim >= 2
                dead = torch.zeros((), dtype=torch.float64)
                if rows_local and w.numel():
                    dead = (w.reshape(w.shape[0], -1) != 0).any(1).logical_not().sum().double()
                stats.append(
                    torch.stack(
                        [
                            _local_value(penalty, w, world).double(),
                            (w64 * w64).sum(),
                            (w == 0).sum().double(),
                            dead,
                            zero_groups.double() / (world if spans else 1),
                        ]
                    )
                )
                meta.append((p, penalty, rows_local, group_stats, spans))
    table = all_reduce_sum(torch.stack(stats), group).tolist()  # the one collective
    rows = []
    for (p, penalty, rows_local, group_stats, spans), figures in zip(meta, table, strict=True):
        value, sq, zeros, dead, zero_groups = figures
        groups = None
        if group_stats is not None:  # spanning groups are whole on every shard; rows are split
            groups = group_stats[1] if spans else p.shape[0]
        units = p.shape[0] if p.ndim >= 2 and rows_local else None
        rows.append(
            ParameterReport(
                names[id(p)],
                tuple(p.shape),
                repr(penalty),
                value,
                sq**0.5,
                zeros / max(p.numel(), 1),
                zero_groups=None if groups is None else round(zero_groups),
                groups=groups,
                zero_units=None if units is None else round(dead),
                units=units,
            )
        )
    order = {n: i for i, (n, _) in enumerate(reg.named_parameters())}
    return Report(sorted(rows, key=lambda r: order[r.name]))


def global_nonfinite(reg: Any) -> list[bool]:
    """Per regularized parameter (in order), whether any shard holds NaN or Inf: one collective."""
    counts = [
        (~torch.isfinite(local(p).detach())).sum().double() for _, p in reg.named_parameters()
    ]
    flags = all_reduce_sum(torch.stack(counts), reg._shard_group).tolist()
    return [c > 0 for c in flags]


class ShardedPenaltyTotal(torch.autograd.Function):
    """Loss mode on DTensor parameters: the global penalty (one all-reduce of the local shares)
    as a plain 0-dim tensor; backward returns each shard's closed-form gradient as a DTensor of
    the parameter's placement, so autograd accumulates it into the sharded ``.grad``."""

    @staticmethod
    def forward(ctx: Any, penalty: Any, group: Any, *params: Tensor) -> Tensor:
        ctx.penalty, ctx.params = penalty, params
        world = torch.distributed.get_world_size(group)
        ws = [local(p).detach() for p in params]  # registered as they are used: by identity
        with shards(params, ws):
            shares = [_local_value(penalty, w, world) for w in ws]
        acc = torch.promote_types(ws[0].dtype, torch.float32)
        return all_reduce_sum(torch.stack([s.to(acc) for s in shares]), group).sum()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        from torch.distributed.tensor import DTensor

        params = ctx.params
        ws = [local(p).detach() for p in params]
        with shards(params, ws):
            grads = ctx.penalty._grads(ws, grad_out.to(ws[0].device))
        out = [
            DTensor.from_local(g, p.device_mesh, p.placements, shape=p.shape, stride=p.stride())
            for p, g in zip(params, grads, strict=True)
        ]
        return (None, None, *out)
