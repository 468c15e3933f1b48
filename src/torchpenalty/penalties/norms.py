"""Euclidean norms that neither underflow nor overflow: ``||w|| = s * ||w / s||`` with
``s = max|w|``.

The plain ``sqrt(sum(w**2))`` is exactly 0 for a nonzero group of entries below ~1e-23 (float32)
or ~1e-162 (float64), because their squares underflow; it is inf for entries above ~1e19 /
~1e154. Dividing by the group's largest magnitude first puts one entry at exactly 1 and every
other one in [0, 1], so the sum of squares is in [1, n] and the norm is exact to rounding. It
follows that a scaled norm is 0 if and only if every entry is exactly 0, which is what counting
zero groups relies on. ``s`` is treated as a constant for autograd: the norm is homogeneous, so
its gradient is still ``w / ||w||`` (0 at a zero group, not NaN).

A group holding NaN has a NaN norm; one holding +-inf (and no NaN) has an infinite norm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor


def safe_scale(amax: Tensor) -> Tensor:
    """``amax`` where it is a positive finite number, else 1 (zero, inf and NaN groups are then
    normed as they are: 0, inf or NaN)."""
    ok = (amax > 0) & torch.isfinite(amax)
    return torch.where(ok, amax, torch.ones_like(amax))


def _safe_scale_np(amax: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """NumPy twin of `safe_scale`."""
    return np.where((amax > 0) & np.isfinite(amax), amax, 1).astype(dtype)


def scaled_norm(w: Tensor, dims: Sequence[int], keepdim: bool = True) -> tuple[Tensor, Tensor]:
    """``(s, ||w/s||)`` over ``dims``: the group norm is their product, the unit vector of a group
    ``(w / s) / ||w/s||``. Empty groups have norm 0."""
    dims = tuple(dims)
    reduced = [1 if d in dims else n for d, n in enumerate(w.shape)]
    if w.numel() == 0 or any(w.shape[d] == 0 for d in dims):
        shape = reduced if keepdim else [n for d, n in enumerate(w.shape) if d not in dims]
        ones = w.new_ones(shape)
        return ones, ones * 0
    with torch.no_grad():
        scale = safe_scale(
            torch.linalg.vector_norm(w.detach(), float("inf"), dim=dims, keepdim=True)
        )
    unit = torch.linalg.vector_norm(w / scale, 2, dim=dims, keepdim=keepdim)
    return (scale if keepdim else scale.reshape(unit.shape)), unit


def scaled_norm_np(w: np.ndarray, dims: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of `scaled_norm` (keepdims)."""
    dims = tuple(dims)
    if w.size == 0:
        shape = tuple(1 if d in dims else n for d, n in enumerate(w.shape))
        return np.ones(shape, w.dtype), np.zeros(shape, w.dtype)
    with np.errstate(invalid="ignore"):
        amax = np.max(np.abs(w), axis=dims, keepdims=True)
        scale = _safe_scale_np(amax, w.dtype)
        u = w / scale
        return scale, np.sqrt((u * u).sum(axis=dims, keepdims=True))


def index_scaled_norm(flat_w: Tensor, index: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """``(s_g, ||w_g / s_g||)`` per group ``g`` of a flat tensor whose entries belong to
    ``index`` (``count`` groups); differentiable like `scaled_norm`."""
    with torch.no_grad():
        amax = flat_w.new_zeros(count).scatter_reduce(
            0, index, flat_w.detach().abs(), "amax", include_self=True
        )
        scale = safe_scale(amax)
    u = flat_w / scale[index]
    sq = flat_w.new_zeros(count).index_add(0, index, u * u)
    positive = sq > 0
    unit = torch.where(positive, sq, 1).sqrt() * positive  # grad 0, not NaN, at a zero group
    return scale, torch.where(torch.isnan(sq), sq, unit)


def index_scaled_norm_np(
    flat_w: np.ndarray, index: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of `index_scaled_norm`."""
    amax = np.zeros(count, flat_w.dtype)
    np.maximum.at(amax, index, np.abs(flat_w))
    with np.errstate(invalid="ignore"):
        scale = _safe_scale_np(amax, flat_w.dtype)
        u = flat_w / scale[index]
        sq = np.bincount(index, weights=u * u, minlength=count).astype(flat_w.dtype)
    return scale, np.sqrt(sq)


def tensor_norm(w: Tensor) -> Tensor:
    """``||w||_2`` of a whole tensor in float64, without underflow or overflow (for reports)."""
    if w.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=w.device)
    scale, unit = scaled_norm(w.detach().to(torch.float64), range(w.ndim), keepdim=False)
    return (scale * unit).reshape(())
