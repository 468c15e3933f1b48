"""Sums of penalties, reduced to a canonical form so that value, grad *and* prox stay exact.

``L1(a) + L2(b)`` is ``ElasticNet(a, b)``; like terms add up; ``none`` vanishes. Any other sum is a
`Sum`, whose value and grad are the sums of its terms' and whose prox uses the identity, for a
quadratic part ``mu/2 * ||w||^2`` and one other term ``f``::

    prox_{s * (f + mu/2 ||.||^2)}(w) = prox_{s/(1 + s*mu) * f}(w / (1 + s*mu))

A sum of two or more non-quadratic terms has no closed-form prox: `prox` raises then.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import ArrayLike
from .base import Penalty, Scalar, check_input
from .elementwise import L1, L2, ElasticNet, Elementwise, Zero
from .group import GroupLasso, SparseGroupLasso


def _elementwise(l1: float, l2: float) -> Penalty:
    if l1 and l2:
        return ElasticNet(l1, l2)
    if l1:
        return L1(l1)
    if l2:
        return L2(l2)
    return Zero()


def _merge_elementwise(terms: Sequence[Elementwise]) -> Penalty:
    kinds = {type(t) for t in terms}
    l1 = sum(t.l1_coef for t in terms)
    l2 = sum(t.l2_coef for t in terms)
    if kinds == {L1}:
        return L1(l1)
    if kinds == {L2}:
        return L2(l2)
    return ElasticNet(l1, l2)


def _merge_groups(terms: Sequence[Penalty], l1: float) -> tuple[list[Penalty], float]:
    """Add up group penalties with the same groups and scale, and fold the total ``l1`` (the
    elementwise one plus every sparse group lasso's) into the group penalty when there is exactly
    one grouping (``L1 + GroupLasso`` is ``SparseGroupLasso``). Pooling ``l1`` first keeps ``+``
    associative. Returns the merged terms and the ``l1`` left over."""
    merged: dict[tuple, float] = {}
    for t in terms:
        key = (t.groups, t.scale)
        merged[key] = merged.get(key, 0.0) + t._group
        l1 += t._l1
    if len(merged) == 1 and l1:
        (((groups, scale), group),) = merged.items()
        return [SparseGroupLasso(l1, group, groups, scale)], 0.0
    return [GroupLasso(group, groups, scale) for (groups, scale), group in merged.items()], l1


def combine(*penalties: Penalty) -> Penalty:
    """The canonical sum of ``penalties`` (what ``a + b`` returns)."""
    flat: list[Penalty] = []
    for p in penalties:
        flat.extend(p.terms if isinstance(p, Sum) else (p,))
    elementwise = [p for p in flat if isinstance(p, Elementwise)]
    grouped = [p for p in flat if isinstance(p, GroupLasso | SparseGroupLasso)]
    others = [
        p for p in flat if not isinstance(p, Elementwise | Zero | GroupLasso | SparseGroupLasso)
    ]
    if grouped:
        l1 = sum(t.l1_coef for t in elementwise)
        l2 = sum(t.l2_coef for t in elementwise)
        group_terms, l1 = _merge_groups(grouped, l1)
        elementwise = [_elementwise(l1, l2)] if (l1 or l2) else []
        others = group_terms + others
    terms = ([_merge_elementwise(elementwise)] if elementwise else []) + others
    if not terms:
        return Zero()
    if len(terms) == 1:
        return terms[0]
    return Sum(tuple(terms))


@dataclasses.dataclass(frozen=True, repr=False)
class Sum(Penalty):
    """``R(w) = sum_k R_k(w)``; build it with ``+`` (which keeps it canonical)."""

    terms: tuple[Penalty, ...]

    name: ClassVar[str] = "sum"
    in_specs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if len(self.terms) < 2 or not all(isinstance(t, Penalty) for t in self.terms):
            raise TypeError("Sum needs two or more Penalty terms; build sums with '+'")

    def value(self, w: ArrayLike) -> ArrayLike:
        return sum(t.value(w) for t in self.terms[1:]) + self.terms[0].value(w)

    def grad(self, w: ArrayLike) -> ArrayLike:
        return sum(t.grad(w) for t in self.terms[1:]) + self.terms[0].grad(w)

    def _split_quadratic(self) -> tuple[float, Penalty]:
        """``(mu, f)`` with ``self = f + mu/2 ||w||^2``, or raise if ``f`` has no closed prox."""
        mu = sum(t.l2_coef for t in self.terms if isinstance(t, Elementwise))
        rest = [
            _elementwise(t.l1_coef, 0.0) if isinstance(t, Elementwise) else t for t in self.terms
        ]
        rest = [t for t in rest if not isinstance(t, Zero)]
        if len(rest) > 1:
            raise ValueError(
                f"the prox of {self!r} has no closed form (more than one non-quadratic term); "
                "use mode='loss', 'grad' or 'decoupled' instead of 'proximal'"
            )
        return mu, rest[0]

    def check_prox(self) -> None:
        self._split_quadratic()

    def check_tensor(self, name: str, w: Tensor) -> None:
        for t in self.terms:
            t.check_tensor(name, w)

    def strengths(self) -> list[float]:
        return [s for t in self.terms for s in t.strengths()]

    def group_stats(self, w: Tensor) -> tuple[Tensor, int] | None:
        return next((s for t in self.terms if (s := t.group_stats(w)) is not None), None)

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        step = check_input(w, step)
        mu, f = self._split_quadratic()
        shrink = 1 + step * mu
        return f.prox(w / shrink, step / shrink)

    def _prox_(self, ws: Sequence[Tensor], step: Scalar) -> None:
        mu, f = self._split_quadratic()
        shrink = 1 + step * mu
        torch._foreach_div_(ws, shrink)
        f._prox_(ws, step / shrink)

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
