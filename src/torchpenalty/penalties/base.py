"""The `Penalty` interface, its registry, and `+`: value, gradient and proximal operator of one
regularizer, and the canonical sums of several.

A penalty is a small immutable object. Its single-tensor methods (`value`, `grad`, `prox`) accept a
`torch.Tensor` or a `numpy.ndarray` and answer in the same kind. Its fast-path methods
(`total_value`, `grads`, `add_grad_`, `decay_`, `prox_`: torch only, in place, no autograd) take a
list of tensors at once and a `Batch`; they are what `Regularizer` calls on every step. A subclass
only has to implement the single-tensor methods; the fast path then works per tensor, and a
subclass may override it with a multi-tensor version (see `torchpenalty.kernels`).

``a + b`` is canonical: ``L1(a) + L2(b)`` is ``ElasticNet(a, b)``, like terms add up, ``none``
vanishes, ``L1 + GroupLasso`` is ``SparseGroupLasso``. Any other sum is a `Sum`, whose value and
gradient are the sums of its terms' and whose prox uses, for a quadratic part ``mu/2 * ||w||^2``
and one other term ``f``::

    prox_{s * (f + mu/2 ||.||^2)}(w) = prox_{s/(1 + s*mu) * f}(w / (1 + s*mu))

A sum of two or more non-quadratic terms has no closed-form prox: `prox` raises then. The algebra
reads what it needs from each term (`summands`, `elementwise_strengths`, `group_strengths`) and
builds canonical terms by their registered names, so this module imports no penalty family.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import torch
from torch import Tensor

from .._checks import ArrayLike, check_array, check_step, check_strength
from ..dtensor import ShardSpec
from ..kernels import Tensors
from ..registry import Registry
from .batch import Batch

Scalar = float | Tensor
#: ``(groups, scale)``: what makes two group penalties like terms
GroupKey = tuple[Any, str]
P = TypeVar("P", bound=type["Penalty"])


class GroupStats(NamedTuple):
    """The groups of one tensor: how many are exactly zero (a 0-dim tensor, not synced), how
    many there are, and whether they span shards (each process then holds all of them)."""

    zero_groups: Tensor
    groups: int
    spans_shards: bool = False


#: penalty classes by spec name and alias (case-insensitive); filled by `register`
PENALTIES: Registry[type[Penalty]] = Registry("penalty")


def register(cls: P) -> P:
    """Class decorator: make a penalty class known by its ``name`` and ``aliases`` to spec strings
    (if ``in_specs``) and to `Penalty.from_config`. A name that is taken is a `ValueError`."""
    PENALTIES.register((cls.name, *cls.aliases), cls)
    return cls


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of low-precision weights are accumulated in float32 at least."""
    return torch.promote_types(dtype, torch.float32)


class Penalty(ABC):
    """A regularizer ``R(w)`` with value, gradient and proximal operator.

    Subclasses are frozen dataclasses whose fields are the strengths; they declare a spec `name`
    (used by `get_config`, `repr` and, once `register`ed, by `torchpenalty.parse`), optional
    `aliases`, and optional `keyword_aliases` mapping extra spellings of argument names onto
    fields.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    keyword_aliases: ClassVar[Mapping[str, str]] = {}
    #: whether spec strings may name it (a `Sum` is written with '+', not by name)
    in_specs: ClassVar[bool] = True
    #: arguments that take one of a few words instead of a number, e.g. ``groups=rows``
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}
    #: whether the penalty is identically zero (it vanishes from sums)
    vanishes: ClassVar[bool] = False

    # -- single tensor -----------------------------------------------------------------------
    @abstractmethod
    def value(self, w: ArrayLike) -> ArrayLike:
        """The penalty of one tensor.

        Args:
            w: a `torch.Tensor` or a `numpy.ndarray`.

        Returns:
            ``R(w)`` in loss units: a 0-dim tensor (differentiable) or a NumPy scalar.
        """

    @abstractmethod
    def grad(self, w: ArrayLike) -> ArrayLike:
        """A (sub)gradient of the penalty, in closed form.

        Args:
            w: a `torch.Tensor` or a `numpy.ndarray`.

        Returns:
            ``grad R(w)``, of ``w``'s shape and kind (the minimum-norm subgradient at kinks).
        """

    @abstractmethod
    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        """The proximal operator.

        Args:
            w: a `torch.Tensor` or a `numpy.ndarray`.
            step: the step ``s >= 0`` (a learning rate).

        Returns:
            ``argmin_x s * R(x) + ||x - w||^2 / 2``, of ``w``'s shape and kind.
        """

    # -- configuration -----------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The penalty's arguments, in declaration order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def get_config(self) -> dict[str, Any]:
        """A JSON-able dict from which `Penalty.from_config` rebuilds an equal penalty."""
        return {"name": self.name, **self.params()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Penalty:
        """Rebuild a penalty from `get_config`'s output.

        Called on `Penalty` it dispatches on ``config["name"]`` (a registered name); called on a
        subclass the name may be omitted (Keras style: ``L2.from_config({"lam": 0.01})``).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        config = dict(config)
        name = config.pop("name", None)
        if name is None:
            if cls is Penalty:
                raise ValueError("config needs a 'name' key naming the penalty")
            target: type[Penalty] = cls
        elif cls is not Penalty and name == getattr(cls, "name", None):
            target = cls
        else:
            target = lookup(name)
            if cls is not Penalty and not issubclass(target, cls):
                raise ValueError(f"config names {name!r}, which is not a {cls.__name__}")
        return target._from_params(config)

    @classmethod
    def _from_params(cls, params: Mapping[str, Any]) -> Penalty:
        fields = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(params) - fields)
        if unknown:
            raise ValueError(
                f"{cls.name} takes the arguments {sorted(fields)}, got unknown {unknown}"
            )
        return cls(**params)

    def check_prox(self) -> None:
        """Raise `ValueError` if `prox` has no closed form (checked when proximal mode attaches)."""
        return None

    def check_tensor(self, name: str, w: Tensor) -> None:
        """Raise `ValueError` if the penalty cannot apply to ``w`` (e.g. ``cols`` of a vector)."""
        return None

    def prepare(self, ws: Tensors, batch: Batch) -> None:
        """Do now, outside any compiled region, what the fast paths would otherwise do on their
        first call with ``ws`` (read a callable's groups: a sync); nothing by default."""
        return None

    def group_stats(self, w: Tensor, shard: ShardSpec | None = None) -> GroupStats | None:
        """`GroupStats` (all-zero groups, groups) for group penalties, else None. ``shard``: ``w``
        is the local shard of a parameter (groups that span shards are then whole here)."""
        return None

    def strengths(self) -> list[float]:
        """Every strength (numeric argument) of the penalty, terms of a sum included."""
        return [v for v in self.params().values() if isinstance(v, float)]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_spec_value(v)}" for k, v in self.params().items())
        return f"{self.name}({args})"

    # -- algebra -----------------------------------------------------------------------------
    def summands(self) -> tuple[Penalty, ...]:
        """The terms this penalty adds up (itself, unless it is a `Sum`)."""
        return (self,)

    def constraints(self) -> tuple[Penalty, ...]:
        """The constraint terms (`constraints.Constraint`) of the penalty, in projection order."""
        return ()

    def elementwise_strengths(self) -> tuple[float, float] | None:
        """``(l1, l2)`` if the penalty is ``l1 * sum|w| + l2/2 * sum(w**2)``, else None."""
        return None

    def group_strengths(self) -> tuple[GroupKey, float, float] | None:
        """``((groups, scale), l1, group)`` for ``l1 * sum|w| + group * sum_g c_g ||w_g||``,
        else None."""
        return None

    def __add__(self, other: object) -> Penalty:
        if not isinstance(other, Penalty):
            return NotImplemented
        return combine(self, other)

    def __mul__(self, factor: object) -> Penalty:
        """``c * R``: every strength multiplied by ``c`` (a finite number >= 0)."""
        if isinstance(factor, bool) or not isinstance(factor, int | float):
            return NotImplemented
        factor = check_strength(factor, "factor")
        return self._from_params(
            {k: v * factor if isinstance(v, float) else v for k, v in self.params().items()}
        )

    __rmul__ = __mul__

    # -- the fast path: batched, in place, torch only --------------------------------------------
    # Regularizer calls these with every tensor that shares the penalty, a device and a dtype,
    # and a Batch (the kernels to use; which tensors are shards). Override them to join the fused
    # paths; the defaults work per tensor through value / grad / prox (whole tensors only).
    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        """``sum_i R(w_i)`` without autograd, in float32 or wider. For local shards: this
        process's share, so that the sum over processes is the global penalty."""
        dtype = accumulation_dtype(ws[0].dtype)
        return torch.stack([self.value(w).to(dtype) for w in ws]).sum()

    def total_value_with_state(self, ws: Tensors, batch: Batch | None = None) -> tuple[Tensor, Any]:
        """`total_value`, and what `add_grad_with_state_` may reuse at the same weights (loss
        mode's forward, then its backward): the group penalties' norms; None by default."""
        return self.total_value(ws, batch), None

    def add_grad_with_state_(
        self, ws: Tensors, gs: Tensors, scale: Tensor, batch: Batch | None, state: Any
    ) -> None:
        """`add_grad_` at the weights `total_value_with_state` returned ``state`` for."""
        self.add_grad_(ws, gs, scale, batch)

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        """New tensors ``scale * grad R(w_i)``."""
        return [self.grad(w).mul_(scale) for w in ws]

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        """``g_i += scale * grad R(w_i)`` (``scale``: a GradScaler's, while grads are scaled)."""
        for w, g in zip(ws, gs, strict=True):
            g.add_(self.grad(w) if scale is None else self.grad(w) * scale)

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        """``w_i -= lr * grad R(w_i)`` (decoupled decay)."""
        for w in ws:
            w.sub_(self.grad(w).mul_(lr))

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        """``w_i = prox(w_i, step)``."""
        for w in ws:
            w.copy_(self.prox(w, step))

    def project_(self, ws: Tensors, batch: Batch | None = None) -> None:
        """Project each ``w_i`` onto the penalty's constraints (none: nothing to do)."""
        for c in self.constraints():
            c.project_(ws, batch)


def _spec_value(value: object) -> str:
    """How an argument reads in a spec string: numbers by repr, words bare, callables by name."""
    if isinstance(value, str):
        return value
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return repr(value)


def lookup(name: str) -> type[Penalty]:
    """The penalty class registered under ``name`` (case-insensitive)."""
    if not isinstance(name, str):
        raise TypeError(f"penalty name must be a string, got {type(name).__name__}")
    if name not in PENALTIES:
        raise ValueError(f"unknown penalty {name!r}; known penalties: {', '.join(known_names())}")
    return PENALTIES.lookup(name)


def known_names() -> list[str]:
    """The names spec strings accept."""
    return [k for k, cls in PENALTIES.items() if cls.in_specs]


def check_strengths_fit(penalty: Penalty, name: str, dtype: torch.dtype) -> None:
    """Raise `ValueError` if a strength of ``penalty`` is not representable in ``dtype`` (it
    would turn every value, gradient and update of parameter ``name`` into inf or NaN)."""
    if not dtype.is_floating_point:
        return
    largest = torch.finfo(dtype).max
    over = [s for s in penalty.strengths() if s > largest]
    if over:
        raise ValueError(
            f"{penalty!r} cannot apply to {name!r}: strength {over[0]:g} overflows its dtype "
            f"{str(dtype).removeprefix('torch.')} (largest finite value {largest:.4g})"
        )


def check_input(w: object) -> None:
    """Validate the tensor of a single-tensor call."""
    check_array(w)


def check_prox_args(w: object, step: object) -> Scalar:
    """Validate the arguments of a prox call; returns the validated step."""
    check_array(w)
    return check_step(step)


# -- sums ----------------------------------------------------------------------------------------
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
