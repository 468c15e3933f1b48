"""Group penalties: group lasso and sparse group lasso, for structured (unit / filter) sparsity.

``GroupLasso(lam, groups, scale)``: value = ``lam * sum_g c_g * ||w_g||_2`` (the norm, not its
square), where the groups are

- ``"rows"``: one group per slice along dim 0 (an output unit of a Linear, a filter of a Conv);
- ``"cols"``: one group per slice along dim 1 (an input feature / input channel; all other dims
  belong to the group);
- ``"tensor"``: the whole tensor (what the popular ``torch.norm(w, 2)`` snippet computes);
- a callable mapping a tensor to an integer tensor of the same shape holding group indices.

``c_g = 1`` (``scale="none"``, the default) or ``c_g = sqrt(|g|)`` (``scale="sqrt_size"``, Yuan &
Lin 2006); published code disagrees on this, so it is explicit.

- grad = ``lam * c_g * w_g / ||w_g||``, and 0 for a group whose norm is 0;
- prox = block soft-thresholding ``w_g * max(0, 1 - step * lam * c_g / ||w_g||)``: every group
  whose norm is at or below ``step * lam * c_g`` becomes exact zeros (0 stays 0).

Group norms are computed scaled (`norms`), so a group of tiny nonzero entries (a momentum buffer
decaying after the prox zeroed the group leaves ~1e-23 behind in float32) has its true norm and is
zeroed again, instead of an underflowed norm of 0 that would leave it as it is forever.

``SparseGroupLasso(l1, group, ...)`` adds ``l1 * sum|w|``; its prox soft-thresholds each element by
``step * l1``, then shrinks each group of the result by ``step * group * c_g``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import ArrayLike, check_strength
from ..distributed import ShardSpec, all_reduce_max, all_reduce_sum, is_dtensor, local
from ..kernels import Tensors, layouts
from ..kernels import group as group_kernels
from . import norms
from .base import (
    GroupKey,
    GroupStats,
    Penalty,
    Scalar,
    accumulation_dtype,
    check_input,
    check_prox_args,
    register,
)
from .batch import Batch
from .elementwise import DEFAULT_STRENGTH, sign, soft_threshold
from .keras_axes import KerasAxes

GROUPINGS = layouts.GROUPINGS
SCALES = ("none", "sqrt_size")
GroupSpec = str | Callable[[Tensor], Tensor]


def check_groups(groups: object) -> GroupSpec:
    if isinstance(groups, Mapping) and "keras_axes" in groups:
        return KerasAxes.from_config(groups)  # a `KerasAxes` grouping's config
    if callable(groups):
        return groups
    if isinstance(groups, str) and groups.lower() in GROUPINGS:
        return groups.lower()
    raise ValueError(f"groups must be one of {', '.join(GROUPINGS)} or a callable, got {groups!r}")


def _check_scale(scale: object) -> str:
    if isinstance(scale, str) and scale.lower() in SCALES:
        return scale.lower()
    raise ValueError(f"scale must be one of {', '.join(SCALES)}, got {scale!r}")


class Grouping:
    """Group norms of one tensor, broadcast against it, with each group's ``c_g``.

    Norms are scaled (`torchpenalty.penalties.norms`): a group of tiny entries, whose squares
    underflow, still has its true norm, so the prox zeroes it and only a group of exact zeros
    has norm 0. For ``rows`` / ``cols`` / ``tensor`` the norms keep the reduced dims (size 1), so
    every operation broadcasts against ``w``; for a callable they are gathered per element.
    """

    def __init__(
        self, groups: GroupSpec, scale: str, w: Any, shard: ShardSpec | None = None
    ) -> None:
        # torch or NumPy alike: the attributes are arrays of w's kind
        self.is_torch = isinstance(w, Tensor)
        self.spans_shards = False
        self.count = 0
        self._scale: Any
        self._unit: Any
        self.norms: Any
        self.coef: Any
        self.group_norms: Any
        self.group_coef: Any
        self._w: Any = w
        if callable(groups):
            if shard is not None:
                raise ValueError("callable groups are not supported on sharded (FSDP2) parameters")
            self._by_index(groups(w), scale, w)
            return
        if groups == "cols" and w.ndim < 2:
            raise ValueError(
                f"groups='cols' needs a tensor with ndim >= 2, got shape {tuple(w.shape)}"
            )
        dims = layouts.group_dims(groups, w.ndim)
        size = math.prod([w.shape[d] for d in dims])
        self.count = math.prod(w.shape) // size if size else 0
        if shard is not None and shard.dim in dims:
            # the group spans shards: a global scale, then the partial sums of all shards
            self._scale, self._unit = _spanning_norm(w, dims, shard.group)
            size = math.prod([w.shape[d] if d != shard.dim else shard.global_length for d in dims])
            self.spans_shards = True
        elif self.is_torch:
            self._scale, self._unit = norms.scaled_norm(w, dims)
        else:
            self._scale, self._unit = norms.scaled_norm_np(w, dims)
        self.norms = self._scale * self._unit
        self.coef = math.sqrt(size) if scale == "sqrt_size" else 1.0
        self.group_norms, self.group_coef = self.norms, self.coef

    def _by_index(self, index: Any, scale: str, w: Any) -> None:
        if tuple(index.shape) != tuple(w.shape):
            raise ValueError(
                f"a groups callable must return indices of the tensor's shape {tuple(w.shape)}, "
                f"got {tuple(index.shape)}"
            )
        _check_indices(index)
        flat: Any
        sizes: Any
        group_scale: Any
        group_unit: Any
        if self.is_torch:
            flat = index.to(device=w.device, dtype=torch.long).reshape(-1)
            self.count = int(flat.max()) + 1 if flat.numel() else 0
            group_scale, group_unit = norms.index_scaled_norm(w.reshape(-1), flat, self.count)
            sizes = torch.bincount(flat, minlength=self.count).to(w.dtype)
        else:
            flat = np.asarray(index).astype(np.int64).reshape(-1)
            self.count = int(flat.max()) + 1 if flat.size else 0
            group_scale, group_unit = norms.index_scaled_norm_np(w.reshape(-1), flat, self.count)
            sizes = np.bincount(flat, minlength=self.count).astype(w.dtype)
        self.group_norms = group_scale * group_unit
        self.group_coef = sizes**0.5 if scale == "sqrt_size" else sizes * 0 + 1
        self._scale = group_scale[flat].reshape(w.shape)
        self._unit = group_unit[flat].reshape(w.shape)
        self.norms = self.group_norms[flat].reshape(w.shape)
        self.coef = self.group_coef[flat].reshape(w.shape)

    def total(self) -> Any:
        """``sum_g c_g ||w_g||``."""
        return (self.group_coef * self.group_norms).sum()

    def direction(self) -> Any:
        """``w_g / ||w_g||`` (computed on the scaled group, so tiny groups keep full precision),
        0 in a zero group; NaN in a group holding NaN."""
        u = self._w / self._scale
        if self.is_torch:
            return torch.where(self._unit == 0, 0, u / self._unit)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(self._unit == 0, 0, u / np.where(self._unit == 0, 1, self._unit))

    def shrink_factor(self, threshold: Scalar) -> Any:
        """``max(0, 1 - threshold * c_g / ||w_g||)``, exactly 0 for every group whose norm is at
        or below its threshold ``threshold * c_g`` (so zero groups stay zero); NaN groups stay
        NaN."""
        t = threshold * self.coef
        n = self.norms
        if self.is_torch:
            # CPU division treats subnormal divisors as 0 (0 / 1e-39 is NaN): a floor keeps a
            # subnormal group at zero strength finite
            return torch.where(
                n <= t, 0, (1 - t / n.clamp(min=torch.finfo(n.dtype).tiny)).clamp(min=0)
            )
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(n <= t, 0, np.maximum(1 - t / n, 0)).astype(n.dtype)

    def zero_groups(self) -> Any:
        """How many groups are entirely (exactly) zero: a scaled norm is 0 only for those."""
        return (self.group_norms == 0).sum()


def _check_indices(index: Any) -> None:
    """Raise `ValueError` unless a groups callable's indices are whole numbers >= 0 (a negative
    one names no group; a fraction would be truncated into a group it does not name)."""
    if isinstance(index, Tensor):
        bad = index < 0
        if index.is_floating_point():
            bad |= index != index.floor()  # NaN too
        found = bool(bad.any())
        first = float(index[bad].reshape(-1)[0]) if found else 0.0
    else:
        values = np.asarray(index)
        bad_np = values < 0
        if np.issubdtype(values.dtype, np.floating):
            bad_np |= values != np.floor(values)
        found = bool(bad_np.any())
        first = float(values[bad_np].reshape(-1)[0]) if found else 0.0
    if found:
        raise ValueError(f"a groups callable must return whole group indices >= 0, got {first:g}")


def _spanning_norm(w: Tensor, dims: tuple[int, ...], group: Any) -> tuple[Tensor, Tensor]:
    """`norms.scaled_norm` of groups split across shards: the largest magnitude, then the scaled
    squared sums, each all-reduced over the shard group."""
    with torch.no_grad():
        amax = w.new_zeros([1 if d in dims else n for d, n in enumerate(w.shape)])
        if w.numel():
            amax = torch.linalg.vector_norm(w.detach(), float("inf"), dim=dims, keepdim=True)
        scale = norms.safe_scale(all_reduce_max(amax, group))
    acc = torch.promote_types(w.dtype, torch.float32)
    u = w / scale
    partial = (u * u).sum(dim=dims, keepdim=True, dtype=acc)
    return scale, all_reduce_sum(partial, group).sqrt().to(w.dtype)


def check_groups_apply(penalty: Penalty, groups: GroupSpec, name: str, w: Tensor) -> None:
    """Raise `ValueError` naming ``penalty`` and parameter ``name`` if ``groups`` cannot group
    ``w`` (``cols`` of a vector, a callable's wrong shape, a callable on an FSDP2 shard)."""
    if is_dtensor(w):
        if callable(groups):
            raise ValueError(
                f"{penalty!r} cannot apply to {name!r}: callable groups are not supported on "
                "sharded (FSDP2) parameters"
            )
        w = local(w)
    try:
        Grouping(groups, "none", w.detach() if w.ndim else w.detach().reshape(1))
    except ValueError as exc:
        raise ValueError(f"{penalty!r} cannot apply to {name!r}: {exc}") from None


def layouts_of(groups: GroupSpec, ws: Tensors, batch: Batch) -> list[layouts.Groups] | None:
    """Each whole tensor's grouping for the group kernels, eager or compiled: its
    `kernels.layouts.Layout`, or a callable's `kernels.layouts.Indexed` groups where its indices
    have no layout; None where the per-tensor path runs (``cols`` of a 1-D tensor, which it
    refuses; a tensor of 2**31 elements or more under callable groups).

    The contract of callable groups: a callable is called once per parameter shape and device
    (when the regularizer is built, or when it first meets that shape), outside compiled code,
    and the groups it returned are kept by the regularizer's kernels for its lifetime, in every
    mode and on every backend. Groups are structure, not data: a callable whose indices depend
    on the weights' values sees them at that first call."""
    if isinstance(groups, str):
        if groups == "cols" and any(w.ndim < 2 for w in ws):
            return None
        return [layouts.layout(w, groups) for w in ws]
    found = batch.kernels.group_layouts
    out = []
    for w in ws:
        key = (groups, tuple(w.shape), w.device)
        if key not in found:
            if torch.compiler.is_compiling():  # finding it reads the indices: a sync
                return None
            found[key] = _callable_groups(groups, w)
        if found[key] is None:
            return None
        out.append(found[key])
    return out


def prepare_groups(groups: GroupSpec, ws: Tensors, batch: Batch) -> None:
    """Read a callable's groups now (`layouts_of`), when the regularizer is built: every mode
    and backend then uses the same groups, and a training step the user compiles finds them
    kept and never breaks its graph to read them. Not for shards or meta tensors (nothing to
    read)."""
    if not callable(groups) or batch.shards:
        return
    if group_kernels.supported(ws) and not any(w.is_meta for w in ws):
        layouts_of(groups, ws, batch)


def _callable_groups(groups: Callable[[Tensor], Tensor], w: Tensor) -> layouts.Groups | None:
    """The groups a callable gives ``w`` (indices validated as the per-tensor path does)."""
    with torch.no_grad():
        index = groups(w.detach())
    if not isinstance(index, Tensor) or tuple(index.shape) != tuple(w.shape):
        raise ValueError(
            f"a groups callable must return a tensor of indices of the tensor's shape "
            f"{tuple(w.shape)}, got {type(index).__name__} "
            f"{tuple(getattr(index, 'shape', ()))}"
        )
    if index.dtype.is_complex:
        raise ValueError(f"a groups callable must return whole group indices, got {index.dtype}")
    _check_indices(index)
    if index.dtype.is_floating_point or index.dtype == torch.bool:
        index = index.long()
    found = layouts.detect_layout(index)
    if found is not None:
        return found
    return layouts.indexed(index, w.device)


class _GroupBase(Penalty):
    """Shared machinery; subclasses define ``_l1`` and ``_group`` strengths."""

    choices: ClassVar[dict[str, tuple[str, ...]]] = {"groups": GROUPINGS, "scale": SCALES}
    groups: GroupSpec
    scale: str

    @property
    def _l1(self) -> float:
        return 0.0

    @property
    def _group(self) -> float:
        raise NotImplementedError

    def grouping(self, w: ArrayLike, shard: ShardSpec | None = None) -> Grouping:
        return Grouping(self.groups, self.scale, w, shard)

    def group_strengths(self) -> tuple[GroupKey, float, float]:
        return (self.groups, self.scale), self._l1, self._group

    def check_tensor(self, name: str, w: Tensor) -> None:
        check_groups_apply(self, self.groups, name, w)

    def prepare(self, ws: Tensors, batch: Batch) -> None:
        prepare_groups(self.groups, ws, batch)

    def value(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        return self._value(w, self.grouping(w))

    def _value(self, w: ArrayLike, g: Grouping) -> ArrayLike:
        total = self._group * g.total()
        if self._l1:
            total = total + self._l1 * abs(w).sum()
        return total

    def grad(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        return self._grad(w, self.grouping(w))

    def _grad(self, w: ArrayLike, g: Grouping) -> ArrayLike:
        out = g.direction() * (self._group * g.coef)
        if self._l1:
            out = out + self._l1 * sign(w)
        return out

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        step = check_prox_args(w, step)
        u = soft_threshold(w, step * self._l1) if self._l1 else w
        return u * self.grouping(u).shrink_factor(step * self._group)

    def group_stats(self, w: Tensor, shard: ShardSpec | None = None) -> GroupStats:
        g = self.grouping(w.detach(), shard)
        return GroupStats(g.zero_groups(), g.count, g.spans_shards)

    # -- fast path: fused "group norms, then scale" kernels, else per tensor -------------------
    def _fused(self, mode: str, ws: Tensors, batch: Batch | None, *extra: Any) -> tuple[bool, Any]:
        """Run the group kernel of ``mode`` (`kernels.group`: compiled or eager, on each tensor's
        layout); ``(False, None)`` where the per-tensor path runs (shards, empty tensors, no
        batch: a penalty called on its own)."""
        if batch is None or batch.shards or not group_kernels.supported(ws):
            return False, None
        grouped = layouts_of(self.groups, ws, batch)
        if grouped is None:
            return False, None
        strengths = (self._group, self._l1, bool(self._l1))
        coefs = layouts.coefs(ws, grouped, self.scale)
        ws = list(ws)
        if mode == "add_grad":
            gs, scale = extra
            args: tuple = (list(gs), ws, grouped, coefs, *strengths, scale)
        elif mode == "add_grad_norms":
            gs, norms, scale = extra
            args = (list(gs), ws, norms, grouped, coefs, *strengths, scale)
        elif mode == "prox":
            (step,) = extra
            t_group, t_l1 = step * self._group, step * self._l1
            args = (ws, grouped, coefs, t_group, t_l1, bool(self._l1))
        else:  # value; grads and decay take their scale / lr last
            args = (ws, grouped, coefs, *strengths, *extra)
        return True, group_kernels.run(batch.kernels, mode, ws, *args)

    def total_value_with_state(self, ws: Tensors, batch: Batch | None = None) -> tuple[Tensor, Any]:
        ok, out = self._fused("value_norms", ws, batch)
        if not ok:
            return self.total_value(ws, batch), None
        total, norms = out
        return total.to(accumulation_dtype(ws[0].dtype)), list(norms)

    def add_grad_with_state_(
        self, ws: Tensors, gs: Tensors, scale: Tensor, batch: Batch | None, state: Any
    ) -> None:
        if state is not None:
            ok, _ = self._fused("add_grad_norms", ws, batch, gs, state, scale)
            if ok:
                return
        self.add_grad_(ws, gs, scale, batch)

    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        """``sum_i R(w_i)``; for a local shard, this process's share: its elements' L1 and its
        groups, where a group spanning shards (whole on every process) counts ``1/world``."""
        dtype = accumulation_dtype(ws[0].dtype)
        ok, total = self._fused("value", ws, batch)
        if ok:
            return total.to(dtype)
        parts = []
        for i, w in enumerate(ws):
            shard = batch.shard(i) if batch else None
            g = self.grouping(w, shard)
            part = self._group * g.total()
            if g.spans_shards:
                part = part / shard.world  # type: ignore[union-attr]
            if self._l1:
                part = part + self._l1 * w.abs().sum()
            parts.append(part.to(dtype))
        return torch.stack(parts).sum()

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        ok, out = self._fused("grads", ws, batch, scale)
        if ok:
            return list(out)
        return [
            self._grad(w, self.grouping(w, batch.shard(i) if batch else None)).mul_(scale)
            for i, w in enumerate(ws)
        ]

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        ok, _ = self._fused("add_grad", ws, batch, gs, 1.0 if scale is None else scale)
        if ok:
            return
        for g, d in zip(gs, self.grads(ws, 1.0 if scale is None else scale, batch), strict=True):
            g.add_(d)

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        ok, _ = self._fused("decay", ws, batch, lr)
        if ok:
            return
        for w, d in zip(ws, self.grads(ws, lr, batch), strict=True):
            w.sub_(d)

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        ok, _ = self._fused("prox", ws, batch, step)
        if ok:
            return
        for i, w in enumerate(ws):
            if self._l1:
                t: Any = step * self._l1
                w.sub_(w.clamp(-t, t))
            shard = batch.shard(i) if batch else None
            w.mul_(self.grouping(w, shard).shrink_factor(step * self._group))

    def get_config(self) -> dict[str, Any]:
        if callable(self.groups) and not isinstance(self.groups, KerasAxes):
            raise TypeError(
                f"{self.name} with a callable groups={self.groups!r} has no config; "
                "use groups='rows', 'cols' or 'tensor' to save and restore it"
            )
        return super().get_config()


@register
@dataclasses.dataclass(frozen=True, repr=False)
class GroupLasso(_GroupBase):
    """value = ``lam * sum_g c_g ||w_g||_2``; see the module docstring for groups and ``c_g``."""

    lam: float = DEFAULT_STRENGTH
    groups: GroupSpec = "rows"
    scale: str = "none"

    name: ClassVar[str] = "group_lasso"
    aliases: ClassVar[tuple[str, ...]] = ("grouplasso",)
    keyword_aliases: ClassVar = {"lambd": "lam", "lambda": "lam", "alpha": "lam"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_strength(self.lam, "lam"))
        object.__setattr__(self, "groups", check_groups(self.groups))
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def _group(self) -> float:
        return self.lam


@register
@dataclasses.dataclass(frozen=True, repr=False)
class SparseGroupLasso(_GroupBase):
    """value = ``l1 * sum|w| + group * sum_g c_g ||w_g||_2``; prox: soft-threshold, then shrink."""

    l1: float = DEFAULT_STRENGTH
    group: float = DEFAULT_STRENGTH
    groups: GroupSpec = "rows"
    scale: str = "none"

    name: ClassVar[str] = "sparse_group_lasso"
    aliases: ClassVar[tuple[str, ...]] = ("sparsegrouplasso",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "l1", check_strength(self.l1, "l1"))
        object.__setattr__(self, "group", check_strength(self.group, "group"))
        object.__setattr__(self, "groups", check_groups(self.groups))
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def _l1(self) -> float:
        return self.l1

    @property
    def _group(self) -> float:
        return self.group
