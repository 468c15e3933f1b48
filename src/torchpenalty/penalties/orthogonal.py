"""`Orthogonal`: Keras' ``OrthogonalRegularizer``, a penalty on the cosines between the rows (or
columns) of a weight.

With ``u_i = w_i / ||w_i||`` the unit rows of ``w.reshape(k, -1)`` (``groups="rows"``: PyTorch
dim-0 slices, conv filters flattened) or its columns (``groups="cols"``: dim-1 slices), and
``c_ij = u_i . u_j``::

    value = factor * 0.5 * sum_{i != j} |c_ij| / (k (k - 1) / 2)     # = factor * mean |c_ij|
    grad_i = factor / (k (k - 1) / 2) * sum_{j != i} sign(c_ij) (u_j - c_ij u_i) / ||w_i||

over distinct pairs (a zero row has no direction: its cosines are 0, and so is its gradient).
``rows`` of a PyTorch ``Linear`` weight ``(out, in)`` are the columns of the Keras Dense kernel
``(in, out)``: Keras' ``mode="columns"``; our ``cols`` is its ``mode="rows"``. There is no
closed-form prox: proximal mode refuses it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor

from .._checks import ArrayLike, check_strength
from ..distributed import is_dtensor
from .base import Penalty, Scalar, check_input, register
from .elementwise import DEFAULT_STRENGTH

GROUPINGS = ("rows", "cols")


def _vectors(w: ArrayLike, groups: str) -> ArrayLike:
    """The ``k`` vectors whose cosines are penalized, as the rows of a 2-D array."""
    if groups == "rows":
        return w.reshape(w.shape[0], -1)
    moved = w.swapaxes(0, 1) if isinstance(w, np.ndarray) else w.transpose(0, 1)
    return moved.reshape(w.shape[1], -1)


def _unvector(g: ArrayLike, w: ArrayLike) -> ArrayLike:
    """The inverse of `_vectors` for ``cols``: rows of ``g`` back to dim-1 slices of ``w``."""
    if isinstance(g, np.ndarray):
        return g.reshape(w.swapaxes(0, 1).shape).swapaxes(0, 1)
    return g.reshape(w.transpose(0, 1).shape).transpose(0, 1)


def _unit(v: ArrayLike) -> tuple[ArrayLike, ArrayLike]:
    """``(v / ||v_i||, ||v_i||)`` per row, a zero row staying 0."""
    if isinstance(v, Tensor):
        n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
        return v / torch.where(n == 0, torch.ones_like(n), n), n
    n = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(n == 0, 1, n), n


@register
@dataclasses.dataclass(frozen=True, repr=False)
class Orthogonal(Penalty):
    """value = ``factor * mean |cos(w_i, w_j)|`` over distinct pairs of rows (or columns); see
    the module docstring for the gradient and the mapping to Keras' modes."""

    factor: float = DEFAULT_STRENGTH
    groups: str = "rows"

    name: ClassVar[str] = "orthogonal"
    aliases: ClassVar[tuple[str, ...]] = ("orthogonal_regularizer",)
    choices: ClassVar = {"groups": GROUPINGS}

    def __post_init__(self) -> None:
        object.__setattr__(self, "factor", check_strength(self.factor, "factor"))
        groups = self.groups.lower() if isinstance(self.groups, str) else self.groups
        if groups not in GROUPINGS:
            raise ValueError(f"groups must be one of rows, cols, got {self.groups!r}")
        object.__setattr__(self, "groups", groups)

    def _count(self, w: Any) -> int:
        dim = 0 if self.groups == "rows" else 1
        if w.ndim < 2:  # the rows of a vector are scalars: every cosine is +-1
            raise ValueError(
                f"{self!r} needs a tensor of 2 or more dims (vectors to compare), got shape "
                f"{tuple(w.shape)}"
            )
        if w.shape[dim] < 2:
            raise ValueError(
                f"{self!r} needs at least 2 {self.groups} to compare, got shape {tuple(w.shape)}"
            )
        return int(w.shape[dim])

    def check_tensor(self, name: str, w: Tensor) -> None:
        if is_dtensor(w):
            raise ValueError(
                f"{self!r} cannot apply to {name!r}: it compares whole rows of the weight, which "
                "FSDP2 shards split; regularize it unsharded"
            )
        try:
            self._count(w)
        except ValueError as exc:
            raise ValueError(f"{self!r} cannot apply to {name!r}: {exc}") from None

    def _cosines(self, w: ArrayLike) -> tuple[ArrayLike, ArrayLike, ArrayLike, float]:
        """``(u, ||w_i||, c with a zero diagonal, number of distinct pairs)``."""
        k = self._count(w)
        u, n = _unit(_vectors(w, self.groups))
        c = u @ u.T
        if isinstance(c, Tensor):
            c = c * (1 - torch.eye(k, dtype=c.dtype, device=c.device))
        else:
            c = c * (1 - np.eye(k, dtype=c.dtype))
        return u, n, c, k * (k - 1) / 2

    def value(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        _, _, c, pairs = self._cosines(w)
        return self.factor * 0.5 * abs(c).sum() / pairs

    def grad(self, w: ArrayLike) -> ArrayLike:
        check_input(w)
        u, n, c, pairs = self._cosines(w)
        if isinstance(c, Tensor):
            s = torch.sign(c)
            g = (s @ u - (s * c).sum(1, keepdim=True) * u) / torch.where(n == 0, 1.0, n)
        else:
            s = np.sign(c)
            g = (s @ u - (s * c).sum(1, keepdims=True) * u) / np.where(n == 0, 1, n)
        g = g * (self.factor / pairs)
        if self.groups == "rows":
            return g.reshape(w.shape)
        return _unvector(g, w)

    def prox(self, w: ArrayLike, step: Scalar) -> ArrayLike:
        self.check_prox()
        raise AssertionError("unreachable")

    def check_prox(self) -> None:
        raise ValueError(
            f"{self!r} has no closed-form prox; use mode='loss', 'grad' or 'decoupled' instead "
            "of 'proximal'"
        )


__all__ = ["Orthogonal"]
