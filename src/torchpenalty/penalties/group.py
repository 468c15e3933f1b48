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
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import ArrayLike, check_strength
from ..distributed import all_reduce_sum, is_dtensor, shard_info
from . import norms
from .base import Penalty, Scalar, check_input
from .elementwise import DEFAULT_STRENGTH, sign, soft_threshold

GROUPINGS = ("rows", "cols", "tensor")
SCALES = ("none", "sqrt_size")
GroupSpec = str | Callable[[Tensor], Tensor]


def _check_groups(groups: object) -> GroupSpec:
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

    def __init__(self, groups: GroupSpec, scale: str, w: ArrayLike) -> None:
        self.is_torch = isinstance(w, Tensor)
        shard = shard_info(w) if self.is_torch else None
        self.spans_shards = False
        if callable(groups):
            if shard is not None:
                raise ValueError("callable groups are not supported on sharded (FSDP2) parameters")
            self._by_index(groups(w), scale, w)
            return
        if groups == "tensor" or w.ndim == 0:
            dims: tuple[int, ...] = tuple(range(w.ndim))
        elif groups == "rows":
            dims = tuple(range(1, w.ndim))
        else:
            if w.ndim < 2:
                raise ValueError(
                    f"groups='cols' needs a tensor with ndim >= 2, got shape {tuple(w.shape)}"
                )
            dims = (0, *range(2, w.ndim))
        size = math.prod(w.shape[d] for d in dims)
        self.count = math.prod(w.shape) // size if size else 0
        if shard is not None and shard[0] in dims:
            # the group spans shards: a global scale, then the partial sums of all shards
            dim, process_group, global_length = shard
            self._scale, self._unit = _spanning_norm(w, dims, process_group)
            size = math.prod(w.shape[d] if d != dim else global_length for d in dims)
            self.spans_shards = True
        elif self.is_torch:
            self._scale, self._unit = norms.scaled_norm(w, dims)
        else:
            self._scale, self._unit = norms.scaled_norm_np(w, dims)
        self.norms = self._scale * self._unit
        self.coef: Any = math.sqrt(size) if scale == "sqrt_size" else 1.0
        self.group_norms, self.group_coef = self.norms, self.coef
        self._w = w

    def _by_index(self, index: ArrayLike, scale: str, w: ArrayLike) -> None:
        if tuple(index.shape) != tuple(w.shape):
            raise ValueError(
                f"a groups callable must return indices of the tensor's shape {tuple(w.shape)}, "
                f"got {tuple(index.shape)}"
            )
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
        self._w = w

    def total(self) -> ArrayLike:
        """``sum_g c_g ||w_g||``."""
        return (self.group_coef * self.group_norms).sum()

    def direction(self) -> ArrayLike:
        """``w_g / ||w_g||`` (computed on the scaled group, so tiny groups keep full precision),
        0 in a zero group; NaN in a group holding NaN."""
        u = self._w / self._scale
        if self.is_torch:
            return torch.where(self._unit == 0, 0, u / self._unit)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(self._unit == 0, 0, u / np.where(self._unit == 0, 1, self._unit))

    def shrink_factor(self, threshold: Scalar) -> ArrayLike:
        """``max(0, 1 - threshold * c_g / ||w_g||)``, exactly 0 for every group whose norm is at
        or below its threshold ``threshold * c_g`` (so zero groups stay zero); NaN groups stay
        NaN."""
        t = threshold * self.coef
        n = self.norms
        if self.is_torch:
            return torch.where(n <= t, 0, (1 - t / n).clamp(min=0))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return np.where(n <= t, 0, np.maximum(1 - t / n, 0)).astype(n.dtype)

    def zero_groups(self) -> ArrayLike:
        """How many groups are entirely (exactly) zero: a scaled norm is 0 only for those."""
        return (self.group_norms == 0).sum()


def _spanning_norm(w: Tensor, dims: tuple[int, ...], group: Any) -> tuple[Tensor, Tensor]:
    """`norms.scaled_norm` of groups split across shards: the largest magnitude, then the scaled
    squared sums, each all-reduced over the shard group."""
    with torch.no_grad():
        amax = w.new_zeros([1 if d in dims else n for d, n in enumerate(w.shape)])
        if w.numel():
            amax = torch.linalg.vector_norm(w.detach(), float("inf"), dim=dims, keepdim=True)
        torch.distributed.all_reduce(amax, op=torch.distributed.ReduceOp.MAX, group=group)
        scale = norms.safe_scale(amax)
    acc = torch.promote_types(w.dtype, torch.float32)
    u = w / scale
    partial = (u * u).sum(dim=dims, keepdim=True, dtype=acc)
    return scale, all_reduce_sum(partial, group).sqrt().to(w.dtype)


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

    def grouping(self, w: ArrayLike) -> Grouping:
        return Grouping(self.groups, self.scale, w)

    def check_tensor(self, name: str, w: Tensor) -> None:
        if is_dtensor(w):
            if callable(self.groups):
                raise ValueError(
                    f"{self!r} cannot apply to {name!r}: callable groups are not supported on "
                    "sharded (FSDP2) parameters"
                )
            w = w.to_local()
        try:
            self.grouping(w.detach())
        except ValueError as exc:
            raise ValueError(f"{self!r} cannot apply to {name!r}: {exc}") from None

    def value(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        total = self._group * self.grouping(w).total()
        if self._l1:
            total = total + self._l1 * abs(w).sum()
        return total

    def grad(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        g = self.grouping(w)
        out = g.direction() * (self._group * g.coef)
        if self._l1:
            out = out + self._l1 * sign(w)
        return out

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        step = check_input(w, step)
        u = soft_threshold(w, step * self._l1) if self._l1 else w
        return u * self.grouping(u).shrink_factor(step * self._group)

    def group_stats(self, w: Tensor) -> tuple[Tensor, int]:
        g = self.grouping(w.detach())
        return g.zero_groups(), g.count

    def _prox_(self, ws: Sequence[Tensor], step: Scalar) -> None:
        for w in ws:
            if self._l1:
                t = step * self._l1
                w.sub_(w.clamp(-t, t))
            w.mul_(self.grouping(w).shrink_factor(step * self._group))

    def get_config(self) -> dict[str, Any]:
        if callable(self.groups):
            raise TypeError(
                f"{self.name} with a callable groups={self.groups!r} has no config; "
                "use groups='rows', 'cols' or 'tensor' to save and restore it"
            )
        return super().get_config()


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
        object.__setattr__(self, "groups", _check_groups(self.groups))
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def _group(self) -> float:
        return self.lam


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
        object.__setattr__(self, "groups", _check_groups(self.groups))
        object.__setattr__(self, "scale", _check_scale(self.scale))

    @property
    def _l1(self) -> float:
        return self.l1

    @property
    def _group(self) -> float:
        return self.group
