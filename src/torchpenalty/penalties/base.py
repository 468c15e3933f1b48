"""The `Penalty` interface: value, (sub)gradient and proximal operator of one regularizer.

A penalty is a small immutable object. Its single-tensor methods (`value`, `grad`, `prox`) accept a
`torch.Tensor` or a `numpy.ndarray` and answer in the same kind. Its batched methods (underscored,
torch only, in place, no autograd) are what `Regularizer` calls on the hot path; a subclass only
has to implement the single-tensor methods, and may override the batched ones with a faster
multi-tensor version.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from .._checks import ArrayLike, check_array, check_step, check_strength

#: spec name (and alias) -> penalty class; filled by `Penalty.__init_subclass__`.
REGISTRY: dict[str, type[Penalty]] = {}

Scalar = float | Tensor


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Sums of low-precision weights are accumulated in float32 at least."""
    return torch.promote_types(dtype, torch.float32)


class Penalty(ABC):
    """A regularizer ``R(w)`` with value, gradient and proximal operator.

    Subclasses are frozen dataclasses whose fields are the strengths; they declare a spec `name`
    (used by `torchpenalty.parse`, `get_config` and `repr`), optional `aliases`, and optional
    `keyword_aliases` mapping extra spellings of argument names onto fields.
    """

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    keyword_aliases: ClassVar[Mapping[str, str]] = {}
    #: whether spec strings may name it (a `Sum` is written with '+', not by name)
    in_specs: ClassVar[bool] = True
    #: arguments that take one of a few words instead of a number, e.g. ``groups=rows``
    choices: ClassVar[Mapping[str, tuple[str, ...]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            for key in (cls.name, *cls.aliases):
                REGISTRY[key.lower()] = cls

    # -- single tensor -----------------------------------------------------------------------
    @abstractmethod
    def value(self, w: ArrayLike) -> ArrayLike:
        """``R(w)`` as a 0-dim tensor (differentiable) or NumPy scalar."""

    @abstractmethod
    def grad(self, w: ArrayLike) -> ArrayLike:
        """A (sub)gradient of ``R`` at ``w``, same shape as ``w``, in closed form."""

    @abstractmethod
    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        """``argmin_x step * R(x) + ||x - w||^2 / 2``."""

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

        Called on `Penalty` it dispatches on ``config["name"]``; called on a subclass the name may
        be omitted (Keras style: ``L2.from_config({"lam": 0.01})``).
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping, got {type(config).__name__}")
        config = dict(config)
        name = config.pop("name", None)
        if name is None:
            if cls is Penalty:
                raise ValueError("config needs a 'name' key naming the penalty")
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

    def group_stats(self, w: Tensor) -> tuple[Tensor, int] | None:
        """``(number of all-zero groups, number of groups)`` for group penalties, else None."""
        return None

    def strengths(self) -> list[float]:
        """Every strength (numeric argument) of the penalty, terms of a sum included."""
        return [v for v in self.params().values() if isinstance(v, float)]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={_spec_value(v)}" for k, v in self.params().items())
        return f"{self.name}({args})"

    # -- algebra -----------------------------------------------------------------------------
    def __add__(self, other: object) -> Penalty:
        if not isinstance(other, Penalty):
            return NotImplemented
        from .composite import combine

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

    # -- batched, in place, torch only (the Regularizer's hot path) --------------------------
    def _total_value(self, ws: Sequence[Tensor]) -> Tensor:
        """``sum_i R(w_i)`` without autograd, in float32 or wider."""
        dtype = accumulation_dtype(ws[0].dtype)
        return torch.stack([self.value(w).to(dtype) for w in ws]).sum()

    def _grads(self, ws: Sequence[Tensor], scale: Scalar) -> list[Tensor]:
        """New tensors ``scale * grad R(w_i)``."""
        return [self.grad(w).mul_(scale) for w in ws]

    def _add_grad_(
        self, ws: Sequence[Tensor], gs: Sequence[Tensor], scale: Tensor | None = None
    ) -> None:
        """``g_i += scale * grad R(w_i)`` (``scale``: a GradScaler's, while grads are scaled)."""
        for w, g in zip(ws, gs, strict=True):
            g.add_(self.grad(w) if scale is None else self.grad(w) * scale)

    def _decay_(self, ws: Sequence[Tensor], lr: Scalar) -> None:
        """``w_i -= lr * grad R(w_i)`` (decoupled decay)."""
        for w in ws:
            w.sub_(self.grad(w).mul_(lr))

    def _prox_(self, ws: Sequence[Tensor], step: Scalar) -> None:
        """``w_i = prox(w_i, step)``."""
        for w in ws:
            w.copy_(self.prox(w, step))


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
    try:
        return REGISTRY[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown penalty {name!r}; known penalties: {', '.join(known_names())}"
        ) from None


def known_names() -> list[str]:
    """The names spec strings accept."""
    return sorted(k for k, cls in REGISTRY.items() if cls.in_specs)


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


def check_input(w: object, step: object | None = None) -> Scalar | None:
    """Validate the arguments of a single-tensor call; returns the validated step."""
    check_array(w)
    return None if step is None else check_step(step)
