"""Multi-tensor kernels of the elementwise family ``l1 * |w| + l2/2 * w**2``: one pass per mode.

The cost floor of a penalty is memory traffic: gradient mode reads ``w`` and ``g`` and writes
``g``; decoupled and proximal modes read and write ``w``; the value reads ``w``. Two
implementations reach it, chosen by measurement (``benchmarks/penalty_paths.py``) and by the
regularizer's backend (`kernels.backend`):

- eager: ``torch._foreach_*`` where one op is one pass (L2: ``g += l2*w``, ``w *= 1 - lr*l2``,
  ``w /= 1 + s*l2``, ``||w||_2``). Where a temporary is unavoidable (``sign(w)``), tensors are
  processed in cache-sized chunks, so the temporary never exceeds the largest selected tensor and
  mostly stays in cache.
- compiled: ``torch.compile``d list kernels that fuse each tensor's update into one loop with no
  temporary (L1 decay, L1 prox and the L1 value have no single-pass eager form). Strengths and
  learning rates enter as 0-dim tensors, so schedules never recompile.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor

from .backend import Kernels, Scalar, Tensors, lists, pack, scalar

CHUNK_NUMEL = 1 << 18  # elements per eager chunk: the sign temporary stays cache-sized


def _chunks(ws: Tensors) -> list[list[int]]:
    """Index runs of at most `CHUNK_NUMEL` elements and at most the largest tensor's size: a
    chunk's temporaries stay cache-sized and never exceed the largest tensor."""
    return pack([w.numel() for w in ws], min(CHUNK_NUMEL, max(w.numel() for w in ws)))


def _precise(value: Scalar) -> Scalar:
    """Scalar tensors (a learning rate from a scheduler, say) in float64, so that coefficients
    such as ``1 - lr * l2`` do not round to the tensor's float32 first."""
    return value.to(torch.float64) if isinstance(value, Tensor) else value


# -- compiled kernels: one fused loop per tensor, no temporaries ---------------------------------
# `has_l2` is a Python bool, so each value compiles its own graph: a term with strength 0 is
# left out rather than multiplied by 0 (which would turn an infinite weight into NaN).
def _fused_grad(gs: list[Tensor], ws: list[Tensor], l1: Tensor, l2: Tensor, has_l2: bool) -> None:
    for g, w in zip(gs, ws, strict=True):
        g.add_(torch.sign(w) * l1 + w * l2 if has_l2 else torch.sign(w) * l1)


def _fused_decay(ws: list[Tensor], l1_lr: Tensor, shrink: Tensor) -> None:
    # w - lr*(l1*sign(w) + l2*w) = w*(1 - lr*l2) - lr*l1*sign(w)
    for w in ws:
        w.copy_(w * shrink - torch.sign(w) * l1_lr)


def _fused_prox(ws: list[Tensor], threshold: Tensor, divisor: Tensor) -> None:
    for w in ws:
        w.copy_((w - w.clamp(-threshold, threshold)) / divisor)


def _fused_value(ws: list[Tensor], l1: Tensor, half_l2: Tensor, has_l2: bool) -> Tensor:
    total = torch.zeros((), dtype=torch.float32, device=ws[0].device)
    for w in ws:
        w32 = w.float()
        term = w32.abs().sum() * l1
        total = total + (term + (w32 * w32).sum() * half_l2 if has_l2 else term)
    return total


# -- the four operations ---------------------------------------------------------------------
def add_grad_(
    ws: Tensors,
    gs: Tensors,
    l1: float,
    l2: float,
    scale: Tensor | None = None,
    runner: Kernels | None = None,
) -> None:
    """``g += scale * (l1 * sign(w) + l2 * w)``; for L2 with no scale, torch.optim's
    ``weight_decay`` op. ``scale`` is a 0-dim tensor (a GradScaler's scale: the gradients are
    still scaled), applied without a device sync."""
    if not ws or not (l1 or l2):
        return
    runner = runner or Kernels()
    if scale is not None:
        _add_scaled_grad_(ws, gs, l1, l2, scale, runner)
        return
    if l1 and runner.use_compiled(_fused_grad, ws):
        ok, _ = runner.run_compiled(
            _fused_grad, *lists(gs, ws), scalar(l1, ws[0]), scalar(l2, ws[0]), bool(l2)
        )
        if ok:
            return
    if l2:
        torch._foreach_add_(gs, ws, alpha=l2)  # torch.optim's `grad.add(param, alpha=wd)`
    if l1:
        for chunk in _chunks(ws):
            cw = [ws[i] for i in chunk]
            torch._foreach_add_([gs[i] for i in chunk], torch._foreach_sign(cw), alpha=l1)


def _add_scaled_grad_(
    ws: Tensors,
    gs: Tensors,
    l1: float,
    l2: float,
    scale: Tensor,
    runner: Kernels,
) -> None:
    if runner.use_compiled(_fused_grad, ws):
        s = scalar(scale, ws[0])
        ok, _ = runner.run_compiled(
            _fused_grad, *lists(gs, ws), scalar(l1, ws[0]) * s, scalar(l2, ws[0]) * s, bool(l2)
        )
        if ok:
            return
    for chunk in _chunks(ws):
        cw, cg = [ws[i] for i in chunk], [gs[i] for i in chunk]
        if l2:
            torch._foreach_add_(cg, torch._foreach_mul(cw, scale), alpha=l2)
        if l1:
            signs = torch._foreach_sign(cw)
            torch._foreach_mul_(signs, scale)
            torch._foreach_add_(cg, signs, alpha=l1)
            del signs


LOW_PRECISION = (torch.bfloat16, torch.float16)


def _decay_low_precision_(ws: Tensors, lr: Scalar, l1: float, l2: float) -> None:
    """In float32, rounded once: bf16 ops would round the coefficient, and each op's result."""
    for w in ws:
        w32 = w.float()
        w.copy_(w32 * (1 - lr * l2) - torch.sign(w32) * (lr * l1))


def decay_(ws: Tensors, lr: Scalar, l1: float, l2: float, runner: Kernels | None = None) -> None:
    """``w -= lr * (l1 * sign(w) + l2 * w)``; for L2 alone AdamW's ``w *= 1 - lr*l2``."""
    if not ws or not (l1 or l2):
        return
    runner = runner or Kernels()
    lr = _precise(lr)
    if l1 and runner.use_compiled(_fused_decay, ws):
        shrink = scalar(1 - lr * l2, ws[0])
        ok, _ = runner.run_compiled(_fused_decay, *lists(ws), scalar(lr * l1, ws[0]), shrink)
        if ok:
            return
    if l1 and ws[0].dtype in LOW_PRECISION:  # a bf16 coefficient would round first
        _decay_low_precision_(ws, lr, l1, l2)
    elif l1:
        for chunk in _chunks(ws):
            cw = [ws[i] for i in chunk]
            signs = list(torch._foreach_sign(cw))  # the sign before the shrink
            if l2:
                torch._foreach_mul_(cw, 1 - lr * l2)
            _axpy_(cw, signs, -lr * l1)
            del signs  # before the next chunk's are made: one chunk of temporaries at a time
    else:
        torch._foreach_mul_(ws, 1 - lr * l2)  # AdamW's `param.mul_(1 - lr * weight_decay)`


def prox_(ws: Tensors, step: Scalar, l1: float, l2: float, runner: Kernels | None = None) -> None:
    """``w = soft(w, step*l1) / (1 + step*l2)``."""
    if not ws or not (l1 or l2):
        return
    runner = runner or Kernels()
    step = _precise(step)
    if l1 and runner.use_compiled(_fused_prox, ws):
        args = (scalar(step * l1, ws[0]), scalar(1 + step * l2, ws[0]))
        ok, _ = runner.run_compiled(_fused_prox, *lists(ws), *args)
        if ok:
            return
    if l1 and ws[0].dtype in LOW_PRECISION:
        t: Any = step * l1  # a number or a 0-dim tensor
        for w in ws:  # both terms in float32, rounded once
            w32 = w.float()
            w.copy_((w32 - w32.clamp(-t, t)) / (1 + step * l2))
        return
    if l1:
        t = step * l1
        for w in ws:  # one temporary at a time, never larger than the largest tensor
            w.sub_(w.clamp(-t, t))
    if l2:
        torch._foreach_div_(ws, 1 + step * l2)


def value(ws: Tensors, l1: float, l2: float, runner: Kernels | None = None) -> Tensor:
    """``sum_i l1 * ||w_i||_1 + l2/2 * ||w_i||_2^2``, accumulated in float32 or wider."""
    runner = runner or Kernels()
    dtype = torch.promote_types(ws[0].dtype, torch.float32)
    if l1 and dtype == torch.float32 and runner.use_compiled(_fused_value, ws):
        ok, total = runner.run_compiled(
            _fused_value, *lists(ws), scalar(l1, ws[0]), scalar(l2 / 2, ws[0]), bool(l2)
        )
        if ok:
            return cast(Tensor, total)
    total = torch.zeros((), dtype=dtype, device=ws[0].device)
    if l1:
        total += l1 * torch.stack(torch._foreach_norm(ws, 1, dtype=dtype)).sum()
    if l2:
        total += l2 / 2 * torch.stack(torch._foreach_norm(ws, 2, dtype=dtype)).square().sum()
    return total


def _axpy_(ys: list[Tensor], xs: list[Tensor], a: Scalar) -> None:
    """``y += a * x`` for a number or a 0-dim tensor ``a``."""
    if isinstance(a, Tensor):
        torch._foreach_mul_(xs, a)
        torch._foreach_add_(ys, xs)
    else:
        torch._foreach_add_(ys, xs, alpha=a)
