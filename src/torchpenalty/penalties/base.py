"""The `Penalty` interface and its registry: value, gradient and proximal operator of one
regularizer, its config, and the fast path every penalty has.

A penalty is a small immutable object. Its single-tensor methods (`value`, `grad`, `prox`) accept a
`torch.Tensor` or a `numpy.ndarray` and answer in the same kind. Its fast-path methods
(`total_value`, `grads`, `add_grad_`, `decay_`, `prox_`: torch only, in place, no autograd) take a
list of tensors at once and a `Batch`; they are what `Regularizer` calls on every step. A subclass
only has to implement the single-tensor methods; the fast path then works per tensor, and a
subclass may override it with a multi-tensor version (see `torchpenalty.kernels`).

``a + b`` is the canonical sum of `penalties.algebra` (``L1(a) + L2(b)`` is
``ElasticNet(a, b)``), found through the registry by the name ``sum``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any, ClassVar, NamedTuple, TypeVar, cast

import torch
from torch import Tensor

from .._checks import ArrayLike, check_array, check_step, check_strength
from ..distributed import ShardSpec
from ..kernels import Tensors
from .batch import Batch
from .registry import Registry

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
        # an argument object with a config of its own (a `KerasAxes` grouping) gives that
        return {
            "name": self.name,
            **{
                key: value.get_config() if callable(getattr(value, "get_config", None)) else value
                for key, value in self.params().items()
            },
        }

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
        # the algebra (`penalties.algebra`) subclasses Penalty, so it is found by its registered
        # name rather than imported here
        return cast(Any, lookup("sum")).of(self, other)

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
