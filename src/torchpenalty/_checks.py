"""Argument validation shared by the public API: one place for the wording of errors."""

from __future__ import annotations

import math
import numbers
from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

#: a torch tensor or a NumPy array; single-tensor methods answer in the same kind
ArrayLike = TypeVar("ArrayLike", Tensor, np.ndarray)


def check_strength(value: object, name: str) -> float:
    """Return ``value`` as a float if it is a finite real number >= 0, else raise.

    Strengths are plain numbers: booleans, strings and tensors are refused so that a typo such as
    ``L2("0.01")`` or ``L2(True)`` fails where it is written, not in the first training step.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a real number (int or float), got {type(value).__name__} {value!r}"
        )
    result = float(value)
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (0 turns it off), got {value!r}")
    return result + 0.0  # folds -0.0 into 0.0


def check_step(step: object, name: str = "step") -> float | Tensor:
    """Validate a proximal step size: a finite number >= 0 or a 0-dim tensor (not synced)."""
    if isinstance(step, Tensor):
        if step.dim() != 0:
            raise ValueError(
                f"{name} must be a scalar (0-dim tensor), got shape {tuple(step.shape)}"
            )
        return step
    return check_strength(step, name)


def check_array(w: object, name: str = "w") -> None:
    """Refuse anything that is neither a torch tensor nor a NumPy array."""
    if not isinstance(w, Tensor | np.ndarray | np.generic):
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(w).__name__}")


def is_torch(w: ArrayLike) -> bool:
    return isinstance(w, Tensor)


def xp(w: ArrayLike):
    """The array namespace of ``w``: ``torch`` for tensors, ``numpy`` for arrays."""
    return torch if isinstance(w, Tensor) else np
