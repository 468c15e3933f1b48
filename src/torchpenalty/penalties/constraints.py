"""Constraints: Keras' ``MaxNorm``, ``UnitNorm``, ``MinMaxNorm`` and ``NonNeg`` as penalties
whose prox is the exact Euclidean projection onto their set.

A constraint is the indicator of a closed set ``C``: its value is 0 (it adds nothing to the loss,
as in Keras), its gradient is 0, and ``prox(w, step) = argmin_{x in C} ||x - w||`` whatever the
step. Norm constraints act per group, in GroupLasso's vocabulary: ``rows`` (each output unit's
incoming weights: Keras' default ``axis=0`` of a Dense kernel, ``[0, 1, 2]`` of a Conv kernel),
``cols``, the whole ``tensor``, or a callable. With ``n = ||w_g||``:

- ``MaxNorm(c)``: ``w_g * min(1, c / n)``, the ball ``n <= c``;
- ``UnitNorm()``: ``w_g / n``, the unit sphere (a zero group has no nearest point and stays 0);
- ``MinMaxNorm(lo, hi, rate)``: ``w_g * (rate * clip(n, lo, hi) + (1 - rate) * n) / n``: the
  projection onto the shell ``lo <= n <= hi`` at ``rate = 1``, Keras' partial step toward it
  below (a zero group stays 0);
- ``NonNeg()``: ``max(w, 0)``.

Keras divides by ``epsilon + n`` (``epsilon = 1e-7``) instead of ``n``, so its result is not
exactly on the set: for groups of ordinary norm (``n >= 0.1``) the two differ by at most
``1e-6`` relative. In a sum, the prox of the other terms comes first, then the projections
(``NonNeg`` before norm constraints): ``l1 + max_norm`` is exactly "soft-threshold, then
project" (Yu, "On decomposing the proximal map", 2013), and so is a group lasso plus a norm
constraint on the same groups.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import ArrayLike, check_strength, xp
from ..kernels import Tensors
from ..kernels import group as group_kernels
from .base import Penalty, Scalar, check_input, check_prox_args, register
from .batch import Batch
from .elementwise import ZeroGradient
from .group import (
    GROUPINGS,
    Grouping,
    GroupSpec,
    check_groups,
    check_groups_apply,
    layouts_of,
    prepare_groups,
)


class Constraint(ZeroGradient):
    """The indicator of a closed set: value 0, gradient 0, prox = the projection (any step).
    Scaling a constraint (a schedule's factor) leaves it as it is: its arguments are bounds, not
    strengths."""

    #: projections of a sum run in this order: elementwise ones (NonNeg) before norm ones
    projection_order: ClassVar[int] = 1

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        check_prox_args(w, step)
        return self.project(w)

    def project(self, w: ArrayLike) -> ArrayLike:
        """The Euclidean projection of ``w`` onto the set (a new array)."""
        raise NotImplementedError

    def constraints(self) -> tuple[Penalty, ...]:
        return (self,)

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        check_strength(factor, "factor")
        return self

    __rmul__ = __mul__

    # -- fast path: nothing to add or decay (`ZeroGradient`); the prox projects ----------
    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        self.project_(ws, batch)

    def project_(self, ws: Tensors, batch: Batch | None = None) -> None:
        for w in ws:
            w.copy_(self.project(w))


def _check_bound(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    bound = float(value)
    if not math.isfinite(bound) or bound < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return bound + 0.0


class NormConstraint(Constraint):
    """``w_g * target(n) / n`` per group, ``target(n) = rate * clip(n, lo, hi) + (1 - rate) * n``;
    a zero group stays 0 and a NaN group NaN."""

    choices: ClassVar = {"groups": GROUPINGS}
    groups: GroupSpec

    def bounds(self) -> tuple[float, float, float]:
        """``(lo, hi, rate)``."""
        raise NotImplementedError

    def check_tensor(self, name: str, w: Tensor) -> None:
        check_groups_apply(self, self.groups, name, w)

    def get_config(self) -> dict[str, Any]:
        if callable(self.groups) and not callable(getattr(self.groups, "get_config", None)):
            raise TypeError(
                f"{self.name} with a callable groups={self.groups!r} has no config; "
                "use groups='rows', 'cols' or 'tensor' to save and restore it"
            )
        return super().get_config()

    def prepare(self, ws: Tensors, batch: Batch) -> None:
        prepare_groups(self.groups, ws, batch)

    def _factor(self, n: Any) -> Any:
        lo, hi, rate = self.bounds()
        target = rate * xp(n).clip(n, lo, hi) + (1 - rate) * n
        if isinstance(n, Tensor):
            # a floor on the divisor: CPU division treats subnormal divisors as 0 (NaN factors)
            return torch.where(
                n == 0, torch.ones_like(n), target / n.clamp(min=torch.finfo(n.dtype).tiny)
            )
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(n == 0, 1, target / np.where(n == 0, 1, n)).astype(n.dtype)

    def project(self, w: ArrayLike) -> ArrayLike:
        return self._project(w)

    def _project(self, w: ArrayLike, shard: Any = None) -> ArrayLike:
        check_input(w)
        if isinstance(w, Tensor) and w.dtype != torch.float64 and w.is_floating_point():
            # norms and factors in float64, one rounding at the end (as the fused kernels do):
            # a group of subnormal float32 weights has a norm below float32's normal range
            # and a factor ``target / n`` above its largest value
            return self._project(w.double(), shard).to(w.dtype)
        return w * self._factor(Grouping(self.groups, "none", w, shard).norms)

    def project_(self, ws: Tensors, batch: Batch | None = None) -> None:
        if batch is not None and not batch.shards and group_kernels.supported(ws):
            grouped = layouts_of(self.groups, ws, batch)
            if grouped is not None:
                lo, hi, rate = self.bounds()
                group_kernels.run(batch.kernels, "project", ws, list(ws), grouped, lo, hi, rate)
                return
        with torch.no_grad():
            for i, w in enumerate(ws):
                w.copy_(self._project(w, batch.shard(i) if batch else None))


@register
@dataclasses.dataclass(frozen=True, repr=False)
class MaxNorm(NormConstraint):
    """``||w_g|| <= max_value``: projection ``w_g * min(1, max_value / ||w_g||)``."""

    max_value: float = 2.0
    groups: GroupSpec = "rows"

    name: ClassVar[str] = "max_norm"
    aliases: ClassVar[tuple[str, ...]] = ("maxnorm",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_value", _check_bound(self.max_value, "max_value"))
        object.__setattr__(self, "groups", check_groups(self.groups))

    def bounds(self) -> tuple[float, float, float]:
        return 0.0, self.max_value, 1.0


@register
@dataclasses.dataclass(frozen=True, repr=False)
class UnitNorm(NormConstraint):
    """``||w_g|| = 1``: projection ``w_g / ||w_g||`` (a zero group stays 0)."""

    groups: GroupSpec = "rows"

    name: ClassVar[str] = "unit_norm"
    aliases: ClassVar[tuple[str, ...]] = ("unitnorm",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "groups", check_groups(self.groups))

    def bounds(self) -> tuple[float, float, float]:
        return 1.0, 1.0, 1.0


@register
@dataclasses.dataclass(frozen=True, repr=False)
class MinMaxNorm(NormConstraint):
    """``min_value <= ||w_g|| <= max_value``, approached at ``rate`` per application (1: the
    projection)."""

    min_value: float = 0.0
    max_value: float = 1.0
    rate: float = 1.0
    groups: GroupSpec = "rows"

    name: ClassVar[str] = "min_max_norm"
    aliases: ClassVar[tuple[str, ...]] = ("minmaxnorm",)

    def __post_init__(self) -> None:
        lo = _check_bound(self.min_value, "min_value")
        hi = _check_bound(self.max_value, "max_value")
        rate = _check_bound(self.rate, "rate")
        if lo > hi:
            raise ValueError(f"min_value must be <= max_value, got {lo:g} > {hi:g}")
        if rate > 1:
            raise ValueError(f"rate must be in [0, 1], got {self.rate!r}")
        object.__setattr__(self, "min_value", lo)
        object.__setattr__(self, "max_value", hi)
        object.__setattr__(self, "rate", rate)
        object.__setattr__(self, "groups", check_groups(self.groups))

    def bounds(self) -> tuple[float, float, float]:
        return self.min_value, self.max_value, self.rate


@register
@dataclasses.dataclass(frozen=True, repr=False)
class NonNeg(Constraint):
    """``w >= 0``: projection ``max(w, 0)`` (NaN stays NaN)."""

    name: ClassVar[str] = "non_neg"
    aliases: ClassVar[tuple[str, ...]] = ("nonneg",)
    projection_order: ClassVar[int] = 0

    def project(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        if isinstance(w, Tensor):
            return torch.where(w < 0, torch.zeros_like(w), w)
        return np.where(w < 0, np.zeros_like(w), w)

    def project_(self, ws: Tensors, batch: Batch | None = None) -> None:
        with torch.no_grad():
            torch._foreach_clamp_min_(list(ws), 0.0)  # clamp keeps NaN


__all__ = ["Constraint", "MaxNorm", "MinMaxNorm", "NonNeg", "NormConstraint", "UnitNorm"]
