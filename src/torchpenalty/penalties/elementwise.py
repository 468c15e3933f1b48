"""Elementwise penalties: L1, L2 and their sum, the elastic net.

All three are ``R(w) = l1 * sum|w| + l2 / 2 * sum(w**2)`` with one of the coefficients possibly
zero, so they share one implementation of each operation:

- value = ``l1 * sum|w| + l2/2 * sum(w**2)`` (units: those of the loss per unit of strength)
- grad  = ``l1 * sign(w) + l2 * w`` (``sign(0) = 0``: the minimum-norm subgradient)
- prox  = ``soft(w, step*l1) / (1 + step*l2)`` with ``soft(w, t) = w - clip(w, -t, t)``

``L2(lam)`` adds ``lam * w`` to the gradient, exactly what ``torch.optim``'s ``weight_decay=lam``
does. Keras' ``regularizers.L2(l2)`` has no 1/2 (``l2 * sum(w**2)``), so Keras ``L2(x)`` is our
``L2(2 * x)``; Keras ``L1(x)`` is our ``L1(x)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .. import kernels
from .._checks import ArrayLike, check_strength, xp
from ..kernels import Tensors
from . import centered
from .base import Penalty, Scalar, accumulation_dtype, check_input, check_prox_args, register
from .batch import Batch
from .centered import Center, Reference, check_center

DEFAULT_STRENGTH = 0.01  # Keras' default for its L1/L2/L1L2 regularizers


def sign(w: ArrayLike) -> ArrayLike:
    """``sign(w)`` with 0 at 0 and NaN at NaN (``torch.sign`` gives 0 at NaN, NumPy NaN)."""
    if isinstance(w, Tensor):
        return torch.where(torch.isnan(w), w, torch.sign(w))
    return np.sign(w)


def soft_threshold(w: ArrayLike, t: Scalar) -> ArrayLike:
    """``sign(w) * max(|w| - t, 0)``, computed as ``w - clip(w, -t, t)`` (no sign, exact zeros)."""
    return w - xp(w).clip(w, -t, t)


def zero_value(w: ArrayLike) -> ArrayLike:
    """A zero penalty value of the kind and dtype of ``w``, still part of ``w``'s autograd graph.

    Summing an empty view costs O(1) and, unlike ``0 * w.sum()``, does not turn inf into NaN.
    """
    if isinstance(w, Tensor):
        return w.as_strided((0,), (1,)).sum()
    return np.zeros((), np.asarray(w).dtype)[()]


class Elementwise(Penalty):
    """Base of the ``l1 * sum|w| + l2/2 * sum(w**2)`` family; see the module docstring. With a
    ``center`` (``"init"`` or a mapping of reference tensors) it is ``R(w - w0)``
    (`torchpenalty.penalties.centered`)."""

    choices: ClassVar = {"center": ("init",)}
    center: Center

    def params(self) -> dict[str, Any]:
        out = super().params()
        if out.get("center", ()) is None:
            del out["center"]  # uncentered penalties read as they always did
        return out

    def get_config(self) -> dict[str, Any]:
        if isinstance(self.center, Reference):
            raise TypeError(
                f"{self.name} with reference tensors as its center has no config; use "
                "center='init' (the reference is then saved by Regularizer.state_dict())"
            )
        return super().get_config()

    def _plain(self) -> Penalty:
        """The same penalty around 0."""
        return dataclasses.replace(self, center=None)  # type: ignore[type-var]

    def _refuse_centered(self) -> None:
        if self.center is not None:
            raise ValueError(
                f"{self!r} measures w - w0 and needs the reference w0: apply it through a "
                "Regularizer (which holds w0), or call the uncentered penalty on w - w0"
            )

    @property
    def l1_coef(self) -> float:
        return 0.0

    @property
    def l2_coef(self) -> float:
        return 0.0

    def value(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        self._refuse_centered()
        terms = []
        if self.l1_coef:
            terms.append(self.l1_coef * abs(w).sum())
        if self.l2_coef:
            terms.append(self.l2_coef / 2 * (w * w).sum())
        if not terms:  # all strengths zero
            return zero_value(w)
        return terms[0] + terms[1] if len(terms) == 2 else terms[0]

    def grad(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        self._refuse_centered()
        # only the terms present: 0 * w would turn an infinite weight into NaN
        if self.l1_coef and self.l2_coef:
            return self.l2_coef * w + self.l1_coef * sign(w)
        if self.l1_coef:
            return self.l1_coef * sign(w)
        return self.l2_coef * w

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        step = check_prox_args(w, step)
        self._refuse_centered()
        out = soft_threshold(w, step * self.l1_coef) if self.l1_coef else w
        if self.l2_coef:
            out = out / (1 + step * self.l2_coef)
        return out if out is not w else w * 1  # never alias the input

    def elementwise_strengths(self) -> tuple[float, float] | None:
        return None if self.center is not None else (self.l1_coef, self.l2_coef)

    # -- fast path: the fused multi-tensor kernels ------------------------------------------------
    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        if self.center is not None:
            return centered.total_value(self._plain(), self, ws, batch)
        return kernels.value(ws, self.l1_coef, self.l2_coef, _runner(batch))

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        if self.center is not None:
            return centered.grads(self._plain(), self, ws, scale, batch)
        if self.l1_coef:
            out = torch._foreach_sign(ws)
            torch._foreach_mul_(out, self.l1_coef)
            if self.l2_coef:
                torch._foreach_add_(out, ws, alpha=self.l2_coef)
        else:
            out = torch._foreach_mul(ws, self.l2_coef)
        torch._foreach_mul_(out, scale)
        return list(out)

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        if self.center is not None:
            centered.add_grad_(self._plain(), self, ws, gs, scale, batch)
            return
        kernels.add_grad_(ws, gs, self.l1_coef, self.l2_coef, scale, _runner(batch))

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        if self.center is not None:
            centered.decay_(self._plain(), self, ws, lr, batch)
            return
        kernels.decay_(ws, lr, self.l1_coef, self.l2_coef, _runner(batch))

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        if self.center is not None:
            centered.prox_(self._plain(), self, ws, step, batch)
            return
        kernels.prox_(ws, step, self.l1_coef, self.l2_coef, _runner(batch))


def _runner(batch: Batch | None) -> kernels.Kernels | None:
    return None if batch is None else batch.kernels


@register
@dataclasses.dataclass(frozen=True, repr=False)
class L1(Elementwise):
    """Lasso: value = ``lam * sum|w|``, grad = ``lam * sign(w)``, prox = soft-thresholding."""

    lam: float = DEFAULT_STRENGTH
    center: Center = None

    name: ClassVar[str] = "l1"
    keyword_aliases: ClassVar = {"lambd": "lam", "lambda": "lam", "l1": "lam", "alpha": "lam"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_strength(self.lam, "lam"))
        object.__setattr__(self, "center", check_center(self.center))

    @property
    def l1_coef(self) -> float:
        return self.lam


@register
@dataclasses.dataclass(frozen=True, repr=False)
class L2(Elementwise):
    """Ridge / weight decay: value = ``lam/2 * sum(w**2)``, grad = ``lam * w``.

    ``L2(lam)`` is ``torch.optim``'s ``weight_decay=lam``; Keras' ``L2(x)`` is ``L2(2 * x)``.
    """

    lam: float = DEFAULT_STRENGTH
    center: Center = None

    name: ClassVar[str] = "l2"
    keyword_aliases: ClassVar = {"lambd": "lam", "lambda": "lam", "l2": "lam", "alpha": "lam"}

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_strength(self.lam, "lam"))
        object.__setattr__(self, "center", check_center(self.center))

    @property
    def l2_coef(self) -> float:
        return self.lam


@register
@dataclasses.dataclass(frozen=True, repr=False)
class ElasticNet(Elementwise):
    """``L1(l1) + L2(l2)``: value = ``l1 * sum|w| + l2/2 * sum(w**2)``.

    prox = ``soft(w, step*l1) / (1 + step*l2)``. scikit-learn's ``ElasticNet(alpha, l1_ratio)``
    is ``ElasticNet(l1=alpha*l1_ratio, l2=alpha*(1 - l1_ratio))``.
    """

    l1: float = DEFAULT_STRENGTH
    l2: float = DEFAULT_STRENGTH
    center: Center = None

    name: ClassVar[str] = "elastic_net"
    aliases: ClassVar[tuple[str, ...]] = ("l1_l2", "l1l2", "elasticnet")

    def __post_init__(self) -> None:
        object.__setattr__(self, "l1", check_strength(self.l1, "l1"))
        object.__setattr__(self, "l2", check_strength(self.l2, "l2"))
        object.__setattr__(self, "center", check_center(self.center))

    @property
    def l1_coef(self) -> float:
        return self.l1

    @property
    def l2_coef(self) -> float:
        return self.l2


class ZeroGradient(Penalty):
    """A penalty with value 0 and gradient 0 everywhere (`Zero`, and the constraints, which act
    through their prox only): the fast path adds nothing and decays nothing."""

    def value(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        return zero_value(w)

    def grad(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        return xp(w).zeros_like(w)

    def total_value(self, ws: Tensors, batch: Batch | None = None) -> Tensor:
        return torch.zeros((), dtype=accumulation_dtype(ws[0].dtype), device=ws[0].device)

    def grads(self, ws: Tensors, scale: Scalar, batch: Batch | None = None) -> list[Tensor]:
        return [torch.zeros_like(w) for w in ws]

    def add_grad_(
        self,
        ws: Tensors,
        gs: Tensors,
        scale: Tensor | None = None,
        batch: Batch | None = None,
    ) -> None:
        pass

    def decay_(self, ws: Tensors, lr: Scalar, batch: Batch | None = None) -> None:
        pass


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Zero(ZeroGradient):
    """No penalty (spec ``"none"``): value 0, grad 0, prox the identity. The identity of ``+``."""

    name: ClassVar[str] = "none"
    vanishes: ClassVar[bool] = True

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        check_prox_args(w, step)
        return w * 1

    def __repr__(self) -> str:
        return "none"

    def prox_(self, ws: Tensors, step: Scalar, batch: Batch | None = None) -> None:
        pass
