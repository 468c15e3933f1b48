"""The ``+`` algebra of penalties: `combine` keeps every sum canonical, `Sum` holds the rest.

Elementwise terms merge into one (``L1 + L2`` is `ElasticNet`), group terms with the same groups
merge, ``L1 + GroupLasso`` is `SparseGroupLasso`, and a term that vanishes is dropped. Any other
sum is a `Sum`, whose value and gradient add up its terms' and whose prox uses, for a quadratic
part ``mu/2 * ||w||^2`` and one other term ``f``::

    prox_{s * (f + mu/2 ||.||^2)}(w) = prox_{s/(1 + s*mu) * f}(w / (1 + s*mu))

A sum of two or more non-quadratic terms has no closed-form prox: `prox` raises then. The algebra
reads what it needs from each term (`summands`, `elementwise_strengths`, `group_strengths`) and
builds canonical terms by their registered names, so it imports no penalty family.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import ArrayLike
from ..distributed import ShardSpec
from ..kernels import Tensors
from .base import GroupKey, GroupStats, Penalty, Scalar, check_prox_args, lookup, register
from .batch import Batch


def _build(name: str, *args: Any) -> Penalty:
    """A canonical term, by its registered name."""
    return lookup(name)(*args)


def _elementwise(l1: float, l2: float) -> Penalty:
    if l1 and l2:
        return _build("elastic_net", l1, l2)
    if l1:
        return _build("l1", l1)
    if l2:
        return _build("l2", l2)
    return _build("none")


def _merge_elementwise(terms: Sequence[Penalty]) -> Penalty:
    kinds = {t.name for t in terms}
    strengths = [t.elementwise_strengths() or (0.0, 0.0) for t in terms]
    l1 = sum(s[0] for s in strengths)
    l2 = sum(s[1] for s in strengths)
    if kinds == {"l1"}:
        return _build("l1", l1)
    if kinds == {"l2"}:
        return _build("l2", l2)
    return _build("elastic_net", l1, l2)


def _merge_groups(terms: Sequence[Penalty], l1: float) -> tuple[list[Penalty], float]:
    """Add up group penalties with the same groups and scale, and fold the total ``l1`` (the
    elementwise one plus every sparse group lasso's) into the group penalty when there is exactly
    one grouping (``L1 + GroupLasso`` is ``SparseGroupLasso``). Pooling ``l1`` first keeps ``+``
    associative. Returns the merged terms and the ``l1`` left over."""
    merged: dict[GroupKey, float] = {}
    for t in terms:
        key, t_l1, t_group = t.group_strengths()  # type: ignore[misc]
        merged[key] = merged.get(key, 0.0) + t_group
        l1 += t_l1
    if len(merged) == 1 and l1:
        (((groups, scale), group),) = merged.items()
        return [_build("sparse_group_lasso", l1, group, groups, scale)], 0.0
    built = [_build("group_lasso", g, groups, scale) for (groups, scale), g in merged.items()]
    return built, l1


def combine(*penalties: Penalty) -> Penalty:
    """The canonical sum of ``penalties`` (what ``a + b`` returns)."""
    flat = [t for p in penalties for t in p.summands()]
    elementwise = [p for p in flat if p.elementwise_strengths() is not None]
    grouped = [p for p in flat if p.group_strengths() is not None]
    others = [
        p
        for p in flat
        if not p.vanishes and p.elementwise_strengths() is None and p.group_strengths() is None
    ]
    if grouped:
        l1 = sum(s[0] for s in (t.elementwise_strengths() for t in elementwise) if s)
        l2 = sum(s[1] for s in (t.elementwise_strengths() for t in elementwise) if s)
        group_terms, l1 = _merge_groups(grouped, l1)
        elementwise = [_elementwise(l1, l2)] if (l1 or l2) else []
        others = group_terms + others
    terms = ([_merge_elementwise(elementwise)] if elementwise else []) + others
    if not terms:
        return _build("none")
    if len(terms) == 1:
        return terms[0]
    return Sum(tuple(terms))


def _sum_lists(lists: Sequence[list[Tensor]]) -> list[Tensor]:
    total = lists[0]
    for more in lists[1:]:
        torch._foreach_add_(total, more)
    return total


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Sum(Penalty):
    """``R(w) = sum_k R_k(w)``; build it with ``+`` (which keeps it canonical)."""

    terms: tuple[Penalty, ...]

    name: ClassVar[str] = "sum"
    in_specs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if len(self.terms) < 2 or not all(isinstance(t, Penalty) for t in self.terms):
            raise TypeError("Sum needs two or more Penalty terms; build sums with '+'")

    @staticmethod
    def of(*penalties: Penalty) -> Penalty:
        """The canonical sum of ``penalties`` (`combine`): what ``a + b`` returns."""
        return combine(*penalties)

    def summands(self) -> tuple[Penalty, ...]:
        return self.terms

    def value(self, w: ArrayLike) -> ArrayLike:
        total = self.terms[0].value(w)
        for t in self.terms[1:]:
            total = total + t.value(w)
        return total

    def grad(self, w: ArrayLike) -> ArrayLike:
        total = self.terms[0].grad(w)
        for t in self.terms[1:]:
            total = total + t.grad(w)
        return total

    def constraints(self) -> tuple[Penalty, ...]:
        found = [c for t in self.terms for c in t.constraints()]
        return tuple(sorted(found, key=lambda c: getattr(c, "projection_order", 1)))

    def _split_quadratic(self) -> tuple[float, Penalty | None]:
        """``(mu, f)`` with ``self = f + mu/2 ||w||^2 + constraints`` (``f`` None: no such term),
        or raise if ``f`` has no closed prox."""
        strengths = [t.elementwise_strengths() for t in self.terms]
        mu = sum(s[1] for s in strengths if s)
        rest = [
            _elementwise(s[0], 0.0) if s else t
            for t, s in zip(self.terms, strengths, strict=True)
            if not t.constraints()
        ]
        rest = [t for t in rest if not t.vanishes]
        if len(rest) > 1:
            raise ValueError(
                f"the prox of {self!r} has no closed form (more than one non-quadratic term); "
                "use mode='loss', 'grad' or 'decoupled' instead of 'proximal'"
            )
        return mu, (rest[0] if rest else None)

    def check_prox(self) -> None:
        self._split_quadratic()

    def check_tensor(self, name: str, w: Tensor) -> None:
        for t in self.terms:
            t.check_tensor(name, w)

    def prepare(self, ws: Tensors, batch: Batch) -> None:
        for t in self.terms:
            t.prepare(ws, batch)

    def strengths(self) -> list[float]:
        return [s for t in self.terms for s in t.strengths()]

    def group_stats(self, w: Tensor, shard: ShardSpec | None = None) -> GroupStats | None:
        return next((s for t in self.terms if (s := t.group_stats(w, shard)) is not None), None)

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        """``prox_f(w / (1 + s mu), s / (1 + s mu))``, then each constraint's projection."""
        step = check_prox_args(w, step)
        mu, f = self._split_quadratic()
        shrink = 1 + step * mu
        out = w / shrink if f is None else f.prox(w / shrink, step / shrink)
        for c in self.constraints():
            out = c.prox(out, step)
        return out

    # fast path: term by term, each with its own kernels (and shard-aware group terms)
    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        total = self.terms[0].total_value(ws, batch)
        for t in self.terms[1:]:
            total = total + t.total_value(ws, batch)
        return total

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        return _sum_lists([t.grads(ws, scale, batch) for t in self.terms])

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        for t in self.terms:
            t.add_grad_(ws, gs, scale, batch)

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        # every term's gradient at the same w, then one update
        torch._foreach_sub_(list(ws), self.grads(ws, lr, batch))

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        mu, f = self._split_quadratic()
        shrink = 1 + step * mu
        if mu:
            torch._foreach_div_(list(ws), shrink)
        if f is not None:
            f.prox_(ws, step / shrink, batch)
        self.project_(ws, batch)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "terms": [t.get_config() for t in self.terms]}

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Penalty:
        if set(params) != {"terms"}:
            raise ValueError(f"sum takes exactly the argument 'terms', got {sorted(params)}")
        return combine(*(Penalty.from_config(t) for t in params["terms"]))

    def __mul__(self, factor: object) -> Penalty:
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        return combine(*(t * factor for t in self.terms))

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return " + ".join(repr(t) for t in self.terms)
