"""`Members`: one penalty per member of a stack of models trained at once.

A stacked parameter holds ``K`` members' copies of one weight along a leading dim:
``w[k]`` is member ``k``'s. ``Members((R_1, ..., R_K))`` applies ``R_k`` to ``w[k]``, exactly
as if each member were trained alone::

    value(w) = sum_k R_k(w[k]),   grad(w)[k] = grad R_k(w[k]),   prox(w, s)[k] = prox_{s R_k}(w[k])

The members are independent, so the gradient of the summed value is each member's own. When
every ``R_k`` is elementwise (``l1_k * sum|w| + l2_k/2 * sum(w**2)``: L1, L2, elastic net, any
strengths) the fast paths work on the whole stack at once, with the strengths as ``(K, 1, ...)``
tensors; any other penalty (group lasso, constraints, orthogonal, centered) is applied member by
member through its own fast path. `Members.scaled` builds the common case, one penalty at ``K``
strengths (a sweep).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import ArrayLike, xp
from ..kernels import Tensors
from .base import GroupStats, Penalty, Scalar, accumulation_dtype, check_prox_args, register
from .batch import Batch


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Members(Penalty):
    """``terms[k]`` on member ``k`` of a stacked tensor (see the module docstring)."""

    terms: tuple[Penalty, ...]

    name: ClassVar[str] = "members"
    in_specs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        terms = tuple(self.terms)
        if not terms or not all(isinstance(t, Penalty) for t in terms):
            raise TypeError("Members takes a non-empty sequence of penalties, one per member")
        if any(isinstance(t, Members) for t in terms):
            raise TypeError("a member's penalty cannot itself be Members")
        for t in terms:
            if any(getattr(s, "center", None) is not None for s in t.summands()):
                raise ValueError(
                    f"{t!r} is centered on reference weights, which members do not hold: "
                    "train centered penalties member by member"
                )
        object.__setattr__(self, "terms", terms)
        object.__setattr__(self, "_strengths", {})
        # read once: every fast-path call asks which path applies
        pairs = [t.elementwise_strengths() for t in terms]
        elementwise = (
            None
            if any(p is None for p in pairs)
            else ([p[0] for p in pairs if p], [p[1] for p in pairs if p])
        )
        object.__setattr__(self, "_pairs", elementwise)

    @classmethod
    def scaled(cls, penalty: Penalty, strengths: Sequence[float] | Tensor) -> Members:
        """``penalty`` at each strength: member ``k``'s penalty is ``strengths[k] * penalty``."""
        if isinstance(strengths, Tensor):
            if strengths.ndim != 1:
                raise ValueError(
                    f"strengths must be 1-D, one per member; got shape {tuple(strengths.shape)}"
                )
            strengths = strengths.tolist()
        factors = [float(s) for s in strengths]
        if not factors:
            raise ValueError("strengths must hold one strength per member, got none")
        return cls(tuple(penalty * s for s in factors))

    @property
    def members(self) -> int:
        return len(self.terms)

    # -- configuration ------------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "terms": [t.get_config() for t in self.terms]}

    @classmethod
    def _from_params(cls, params: Any) -> Penalty:
        terms = params.get("terms")
        if not isinstance(terms, list | tuple):
            raise ValueError("a members config needs 'terms', a list of penalty configs")
        return cls(tuple(t if isinstance(t, Penalty) else Penalty.from_config(t) for t in terms))

    def __repr__(self) -> str:
        return f"members({', '.join(map(repr, self.terms))})"

    def strengths(self) -> list[float]:
        return [s for t in self.terms for s in t.strengths()]

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return Members(tuple(t * factor for t in self.terms))

    __rmul__ = __mul__

    def constraints(self) -> tuple[Penalty, ...]:
        return (self,) if any(t.constraints() for t in self.terms) else ()

    # -- one stacked tensor -------------------------------------------------------------------
    def _check(self, w: Any) -> None:
        if w.ndim == 0 or w.shape[0] != self.members:
            raise ValueError(
                f"{self.members} members need tensors stacked along dim 0 with {self.members} "
                f"entries, got shape {tuple(w.shape)}"
            )

    def check_tensor(self, name: str, w: Tensor) -> None:
        try:
            self._check(w)
        except ValueError as exc:
            raise ValueError(f"{self!r} cannot apply to {name!r}: {exc}") from None
        for term in self.terms:
            term.check_tensor(name, w[0])

    def prepare(self, ws: Tensors, batch: Batch) -> None:
        for k, term in enumerate(self.terms):
            term.prepare([w[k] for w in ws], batch)

    def member_values(self, w: ArrayLike) -> ArrayLike:
        """Each member's penalty, ``(K,)``."""
        self._check(w)
        values = [t.value(w[k]) for k, t in enumerate(self.terms)]
        return torch.stack(values) if isinstance(w, Tensor) else xp(w).stack(values)

    def value(self, w: ArrayLike) -> ArrayLike:
        return self.member_values(w).sum()

    def grad(self, w: ArrayLike) -> ArrayLike:
        self._check(w)
        grads = [t.grad(w[k]) for k, t in enumerate(self.terms)]
        return torch.stack(grads) if isinstance(w, Tensor) else xp(w).stack(grads)

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        step = check_prox_args(w, step)
        self._check(w)
        out = [t.prox(w[k], step) for k, t in enumerate(self.terms)]
        return torch.stack(out) if isinstance(w, Tensor) else xp(w).stack(out)

    def group_stats(self, w: Tensor, shard: Any = None) -> GroupStats | None:
        stats = [t.group_stats(w[k]) for k, t in enumerate(self.terms)]
        if any(s is None for s in stats):
            return None
        found = [s for s in stats if s is not None]
        zero = torch.stack([s.zero_groups for s in found]).sum()
        return GroupStats(zero, sum(s.groups for s in found), found[0].spans_shards)

    # -- the fast path -------------------------------------------------------------------------
    def _elementwise(self) -> tuple[list[float], list[float]] | None:
        """Every member's ``(l1, l2)``, if every member is elementwise (read at construction)."""
        return self._pairs  # type: ignore[attr-defined]

    def _per_member(self, w: Tensor, which: int) -> Tensor | None:
        """Member strengths ``l1`` (``which=0``) or ``l2`` (1) as a ``(K, 1, ...)`` tensor of
        ``w``'s device and dtype (made once per device, dtype and rank), None if all zero."""
        found = self._elementwise()
        assert found is not None
        values = found[which]
        if not any(values):
            return None
        key = (which, w.device, w.dtype, w.ndim)
        cache = self._strengths  # type: ignore[attr-defined]
        if key not in cache:
            shape = (self.members,) + (1,) * (w.ndim - 1)
            cache[key] = torch.tensor(values, dtype=w.dtype, device=w.device).view(shape)
        return cache[key]

    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        dtype = accumulation_dtype(ws[0].dtype)
        if self._elementwise() is None:
            return torch.stack(
                [t.total_value([w[k] for w in ws]).to(dtype) for k, t in enumerate(self.terms)]
            ).sum()
        total = torch.zeros((), dtype=dtype, device=ws[0].device)
        for w in ws:
            l1, l2 = self._per_member(w, 0), self._per_member(w, 1)
            if l1 is not None:
                total = total + (l1 * w.abs()).sum(dtype=dtype)
            if l2 is not None:
                total = total + (l2 / 2 * w * w).sum(dtype=dtype)
        return total

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        if self._elementwise() is None:
            return [self.grad(w).mul_(scale) for w in ws]
        out = []
        for w in ws:
            g = torch.zeros_like(w)
            self._add_elementwise_grad(w, g)
            out.append(g.mul_(scale))
        return out

    def _add_elementwise_grad(self, w: Tensor, g: Tensor, scale: Any = None) -> None:
        l1, l2 = self._per_member(w, 0), self._per_member(w, 1)
        # only the terms present: 0 * w would turn an infinite weight into NaN
        if l1 is not None:
            term = l1 * torch.sign(w)
            g.add_(term if scale is None else term * scale)
        if l2 is not None:
            term = l2 * w
            g.add_(term if scale is None else term * scale)

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        if self._elementwise() is None:
            for k, t in enumerate(self.terms):
                t.add_grad_([w[k] for w in ws], [g[k] for g in gs], scale)
            return
        for w, g in zip(ws, gs, strict=True):
            self._add_elementwise_grad(w, g, scale)

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        if self._elementwise() is None:
            for k, t in enumerate(self.terms):
                t.decay_([w[k] for w in ws], lr)
            return
        for w in ws:
            step = torch.zeros_like(w)
            self._add_elementwise_grad(w, step)
            w.sub_(step.mul_(lr))

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        if self._elementwise() is None:
            for k, t in enumerate(self.terms):
                t.prox_([w[k] for w in ws], step)
            return
        for w in ws:
            l1, l2 = self._per_member(w, 0), self._per_member(w, 1)
            if l1 is not None:  # soft-threshold by step * l1_k: w - clamp(w, -t, t)
                threshold = l1 * step
                w.sub_(torch.minimum(torch.maximum(w, -threshold), threshold))
            if l2 is not None:
                w.div_(l2 * step + 1)

    def project_(self, ws: Tensors, batch: Batch | None = None) -> None:
        for k, t in enumerate(self.terms):
            t.project_([w[k] for w in ws])


__all__ = ["Members"]
