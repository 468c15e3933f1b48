"""Fused multi-tensor kernels of the group penalties: group norms, then scale.

``R(w) = l1 * sum|w| + group * sum_g c_g ||w_g||`` (group lasso: ``l1 = 0``). Each mode is
"group norms, then one elementwise pass that scales": the norms are read in one pass, the update
reads (and writes) in a second one. Compiled with ``torch.compile`` per list of shapes, each
tensor's norm reduction and update fuse into loops with no temporary the size of the tensor, so a
mode costs about its memory floor: one reading pass for the norms plus the update pass.

Norms are exact for groups of tiny entries (whose float32 squares underflow) and of huge ones
(whose squares overflow), like `torchpenalty.penalties.norms`: float32 (and lower) squares are
summed in float64, inside the same reduction loop; float64 groups are scaled by their largest
magnitude first. Groups are ``rows`` (dim-0 slices), ``cols`` (dim-1 slices) or the
whole ``tensor``; callable groups and groups spanning FSDP2 shards take the eager path. Low
precision weights compute in float32 and round once. Strengths, steps and scales enter as 0-dim
tensors, so schedules never recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .kernels import Kernels, Tensors, lists, scalar

GROUPINGS = ("rows", "cols", "tensor")


def _acc(w: Tensor) -> Tensor:
    """``w`` in the dtype its figures are computed in: float64 stays, the rest is float32."""
    return w if w.dtype == torch.float64 else w.float()


def _view(w: Tensor, groups: str) -> tuple[Tensor, tuple[int, ...]]:
    """``w`` as a view whose reduction dims are the groups' elements."""
    if groups == "rows":
        return w.reshape(w.shape[0], -1), (1,)
    if groups == "cols":
        return w.reshape(w.shape[0], w.shape[1], -1), (0, 2)
    return w.reshape(1, -1), (1,)


def group_dims(groups: str, ndim: int) -> tuple[int, ...]:
    """The dims one group spans in a tensor of ``ndim`` dims: every dim but 0 (``rows``), every
    dim but 1 (``cols``), or all of them (``tensor``, and any grouping of a 0-dim tensor)."""
    if groups == "tensor" or ndim == 0:
        return tuple(range(ndim))
    if groups == "rows":
        return tuple(range(1, ndim))
    return (0, *range(2, ndim))


def group_size(w: Tensor, groups: str) -> int:
    """Elements per group of ``w``."""
    return math.prod(w.shape[d] for d in group_dims(groups, w.ndim))


def _norms(v: Tensor, dims: tuple[int, ...]) -> Tensor:
    """``||v_g||`` per group (keepdim), exact for tiny and huge groups: float32 values (and
    lower) are squared and summed in float64, where no square of theirs underflows or overflows;
    float64 values are scaled by the group's largest magnitude first (two reductions)."""
    if v.dtype != torch.float64:
        return (v.double() ** 2).sum(dim=dims, keepdim=True).sqrt()
    a = v.abs().amax(dim=dims, keepdim=True)
    s = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    return s * ((v / s) ** 2).sum(dim=dims, keepdim=True).sqrt()


def _soft(v: Tensor, t: Tensor) -> Tensor:
    return v - v.clamp(-t, t)


def _grad_of(v: Tensor, dims: tuple[int, ...], group_c: Tensor, l1: Tensor, has_l1: bool):
    """``group * c_g * v_g / ||v_g|| (+ l1 * sign(v))``, 0 in a zero group, NaN in a NaN group."""
    n = _norms(v, dims)
    direction = torch.where(n == 0, torch.zeros_like(n), 1 / n) * v  # in float64 for float32 v
    out = (direction * group_c).to(v.dtype)
    # plain sign: a group holding NaN is NaN through its direction already
    return out + torch.sign(v) * l1 if has_l1 else out


# -- the compiled kernels: lists of tensors, static groupings and sizes --------------------------
def _value(ws: list[Tensor], groups: str, coefs: list[float], group: Tensor, l1: Tensor,
           has_l1: bool) -> Tensor:  # fmt: skip
    total = torch.zeros((), dtype=torch.float32, device=ws[0].device)
    for w, c in zip(ws, coefs, strict=True):
        v, dims = _view(_acc(w), groups)
        part = _norms(v, dims).sum().to(v.dtype) * (group * c)
        total = total + (part + v.abs().sum() * l1 if has_l1 else part)
    return total


def _grads(ws: list[Tensor], groups: str, coefs: list[float], group: Tensor, l1: Tensor,
           has_l1: bool, scale: Tensor) -> list[Tensor]:  # fmt: skip
    out = []
    for w, c in zip(ws, coefs, strict=True):
        v, dims = _view(_acc(w), groups)
        out.append((_grad_of(v, dims, group * c, l1, has_l1) * scale).reshape(w.shape).to(w.dtype))
    return out


def _add_grad(gs: list[Tensor], ws: list[Tensor], groups: str, coefs: list[float], group: Tensor,
              l1: Tensor, has_l1: bool, scale: Tensor) -> None:  # fmt: skip
    for g, w, c in zip(gs, ws, coefs, strict=True):
        v, dims = _view(_acc(w), groups)
        d = _grad_of(v, dims, group * c, l1, has_l1) * scale
        g.copy_(_acc(g) + d.reshape(w.shape))


def _decay(ws: list[Tensor], groups: str, coefs: list[float], group: Tensor, l1: Tensor,
           has_l1: bool, lr: Tensor) -> None:  # fmt: skip
    for w, c in zip(ws, coefs, strict=True):
        v, dims = _view(_acc(w), groups)
        d = _grad_of(v, dims, group * c, l1, has_l1)
        w.copy_((v - lr * d).reshape(w.shape))


def _prox(ws: list[Tensor], groups: str, coefs: list[float], group_t: Tensor, l1_t: Tensor,
          has_l1: bool) -> None:  # fmt: skip
    for w, c in zip(ws, coefs, strict=True):
        v, dims = _view(_acc(w), groups)
        u = _soft(v, l1_t) if has_l1 else v
        n = _norms(u, dims)
        t = group_t * c
        factor = torch.where(n <= t, torch.zeros_like(n), (1 - t / n).clamp(min=0))
        w.copy_((u * factor.to(u.dtype)).reshape(w.shape))


_KERNELS: dict[str, Callable[..., Any]] = {
    "value": _value,
    "grads": _grads,
    "add_grad": _add_grad,
    "decay": _decay,
    "prox": _prox,
}


def supported(ws: Tensors, groups: Any) -> bool:
    """Whether the fused kernels apply: whole (unsharded) tensors with named groups, of at least
    the dims the grouping needs, none of them empty."""
    if not isinstance(groups, str) or groups not in GROUPINGS or not ws:
        return False
    least = 2 if groups == "cols" else 1
    return all(w.ndim >= least and w.numel() > 0 for w in ws)


def run(runner: Kernels, mode: str, ws: Tensors, *args: Any) -> tuple[bool, Any]:
    """Run one fused group kernel through ``runner`` (backend, signatures, compile failure):
    ``(True, result)``, or ``(False, None)`` when it should run eagerly instead."""
    kernel = _KERNELS[mode]
    if not runner.use_compiled(kernel, ws):
        return False, None
    return runner.run_compiled(kernel, *args)


def coefs(ws: Tensors, groups: str, scale: str) -> list[float]:
    """``c_g`` of each tensor's groups: 1, or ``sqrt(group size)``."""
    return [math.sqrt(group_size(w, groups)) if scale == "sqrt_size" else 1.0 for w in ws]


__all__ = ["coefs", "lists", "run", "scalar", "supported"]
