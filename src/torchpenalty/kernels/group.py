"""Fused multi-tensor kernels of the group penalties: group norms, then scale.

``R(w) = l1 * sum|w| + group * sum_g c_g ||w_g||`` (group lasso: ``l1 = 0``). Each mode is
"group norms, then one elementwise pass that scales": the norms are read in one pass, the update
reads (and writes) in a second one, over each tensor's `Layout` (or `Indexed` runs). `run` picks
the path: compiled with public ``torch.compile`` per list of shapes (each tensor's norm
reduction and update fuse into loops with no temporary the size of the tensor), or the eager
kernels of `kernels.group_eager` (the same math as a few library calls per tensor, no
compilation). Groups spanning FSDP2 shards take the penalties' per-tensor path.

In the compiled kernels, rows too short to fill a vector have their update split: the compiled
kernel computes one factor per row, and one eager broadcasting pass applies it (`finish`).
Norms are exact for groups of tiny entries (whose float32 squares underflow) and of huge ones
(whose squares overflow), like `torchpenalty.penalties.norms`: float32 (and lower) squares are
summed in float64, inside the same reduction loop; float64 groups are scaled by their largest
magnitude first. Low precision weights compute in float32 and round once. Strengths, steps and
scales enter as 0-dim tensors, so schedules never recompile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from . import group_eager
from .backend import Kernels, Tensors, lists, scalar
from .layouts import Groups, Indexed, Layout

# Rows of at most SHORT_ROWS weights are summed column by column in the compiled kernels: a
# reduction per row of a few elements costs a horizontal reduction each (4-10x the memory
# floor), while summing the columns vectorizes across rows (blocks of 16: 1.1-1.9x).
SHORT_ROWS = 32
#: rows summed per block before the blocks are summed: a column sum read in row-major blocks
BLOCK_ROWS = 16
#: float dtypes whose short-row updates run as row factors, then one eager broadcast pass
#: (`_scaled_rows`); lower precision keeps the fused update, which rounds once
ROW_FACTOR_DTYPES = (torch.float32, torch.float64)
#: float32 lanes of the widest CPU vector (AVX-512): rows of a multiple of it fill whole vectors
FULL_VECTOR = 16


def _acc(w: Tensor) -> Tensor:
    """``w`` in the dtype its figures are computed in: float64 stays, the rest is float32."""
    return w if w.dtype == torch.float64 else w.float()


def _sum_sq(v: Tensor, lay: Layout) -> Tensor:
    """Per-group sums over the flat view ``v``: ``(rows, 1)``, or ``(1, cols)`` for column
    blocks, taken as column sums over the rows in row-major blocks of `BLOCK_ROWS` (a
    contiguous read, where reducing the strided outer dim directly is 2-3x slower), folded per
    block."""
    if not lay.cols:
        width = v.shape[1]
        if width <= SHORT_ROWS:  # one strided column at a time, each a vectorized pass
            total = v[:, :1]
            for j in range(1, width):
                total = total + v[:, j : j + 1]
            return total
        return v.sum(dim=1, keepdim=True)
    block = max(d for d in range(1, BLOCK_ROWS + 1) if lay.rows % d == 0)
    columns = v.view(lay.rows // block, block, -1).sum(dim=1).sum(dim=0)
    return columns.view(lay.cols, -1).sum(dim=1).view(1, lay.cols)


def _amax(v: Tensor, lay: Layout) -> Tensor:
    if not lay.cols:
        if v.shape[1] <= SHORT_ROWS:
            a = v.abs()
            out = a[:, :1]
            for j in range(1, v.shape[1]):
                out = torch.maximum(out, a[:, j : j + 1])
            return out
        return v.abs().amax(dim=1, keepdim=True)
    return v.abs().amax(dim=0).view(lay.cols, -1).amax(dim=1).view(1, lay.cols)


def _norms(v: Tensor, lay: Groups) -> Tensor:
    """``||w_g||`` per group (`_sum_sq` shape), exact for tiny and huge groups: float32 values
    (and lower) are squared and summed in float64, where no square of theirs underflows or
    overflows; float64 values are scaled by the group's largest magnitude first (one reduction
    more)."""
    if isinstance(lay, Indexed):
        return _indexed_norms(v, lay)
    if not lay.cols and v.shape[1] == 1:  # groups of one weight: sqrt(w**2) is |w| exactly
        return v.double().abs()
    if v.dtype != torch.float64:
        return _sum_sq(v.double() ** 2, lay).sqrt()
    a = _amax(v, lay)
    s = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    return s * _sum_sq((v / _expand(s, v, lay)) ** 2, lay).sqrt()


def _update_norms(v: Tensor, lay: Groups) -> Tensor:
    """`_norms` for an in-place update pass. Short rows' norms are column sums, elementwise code
    that inductor would inline into the update and recompute per weight (decay and prox of
    blocks of 16 weights at 1.8-1.9x their floor); a product with a 1x1 one is a library call
    it cannot inline, so the norms are computed once (1.4x)."""
    n = _norms(v, lay)
    if isinstance(lay, Indexed) or lay.cols or not 1 < v.shape[1] <= SHORT_ROWS:
        return n  # a row of one weight: its norm is elementwise, nothing to recompute
    return n @ torch.ones(1, 1, dtype=n.dtype, device=n.device)


def _expand(coef: Tensor, v: Tensor, lay: Groups) -> Tensor:
    """A per-group ``coef`` (`_sum_sq` shape) broadcastable against the flat view ``v``. Column
    blocks wider than one column are spelled out per column of ``v`` (the view's width, far
    below its size) by an outer product with ones: broadcasting per block instead makes inductor
    run the update in loops as short as a block (9 for a 3x3 conv's input channel). Irregular
    groups gather each element's coefficient."""
    if isinstance(lay, Indexed):
        return coef[lay.group_of].view(-1, 1)
    width = v.shape[1] // lay.cols if lay.cols else 1
    if width == 1:
        return coef
    ones = torch.ones(1, width, dtype=coef.dtype, device=coef.device)
    return (coef.view(-1, 1) @ ones).view(1, -1)


def _scaled_rows(w: Tensor, lay: Groups, has_l1: bool = False) -> bool:
    """Whether ``w``'s update is split: the compiled kernel computes one factor per short row
    (2 to `SHORT_ROWS` weights, not a multiple of `FULL_VECTOR`: a 3x3 kernel window), and
    `finish` applies it in one eager broadcast pass. Inductor runs a broadcast over rows this
    short in masked partial vectors (a 3x3 window's decay at 3.9x its floor, 2.0x split); rows
    of whole vectors (blocks of 16) run fused at 1.4x. The L1 term of the sparse group lasso is
    no per-row factor: it stays fused. So does a tensor with no ``(rows, width)`` view
    (channels-last conv weights), which `finish` could not broadcast over."""
    if isinstance(lay, Indexed) or not w.is_contiguous():
        return False
    width = w.numel() // lay.rows if lay.rows else 0
    return (
        not lay.cols
        and not has_l1
        and 1 < width <= SHORT_ROWS
        and width % FULL_VECTOR != 0
        and w.dtype in ROW_FACTOR_DTYPES
    )


def _row_factor(f: Tensor, w: Tensor) -> Tensor:
    """A per-row factor ``(rows, 1)`` in ``w``'s dtype, for `finish` to broadcast."""
    return f.to(w.dtype).reshape(-1, 1)


def _floor(n: Tensor) -> Tensor:
    """``n`` as a divisor: CPU division treats subnormal divisors as 0 (``0 / 1e-39`` is NaN), so
    they are raised to the smallest normal number."""
    return n.clamp(min=torch.finfo(n.dtype).tiny)


def _soft(v: Tensor, t: Tensor) -> Tensor:
    return v - v.clamp(-t, t)


def _grad_of(
    v: Tensor, lay: Groups, group_c: Tensor, l1: Tensor, has_l1: bool, n: Tensor | None = None
) -> Tensor:
    """``group * c_g * v_g / ||v_g|| (+ l1 * sign(v))``, 0 in a zero group, NaN in a NaN group;
    ``n``: the group norms, when known already."""
    n = _norms(v, lay) if n is None else n
    coef = torch.where(n == 0, torch.zeros_like(n), group_c / _floor(n))  # float64 for float32 v
    out = (v * _expand(coef, v, lay)).to(v.dtype)
    # plain sign: a group holding NaN is NaN through its norm already
    return out + torch.sign(v) * l1 if has_l1 else out


def _flat(w: Tensor, lay: Groups) -> Tensor:
    """The 2-D view the kernels work on: a `Layout`'s rows, or an `Indexed` tensor's runs."""
    rows = lay.group_of.numel() if isinstance(lay, Indexed) else lay.rows
    return _acc(w).reshape(rows, -1)


def _indexed_norms(v: Tensor, lay: Indexed) -> Tensor:
    """`_norms` of irregular groups, ``(size,)``: each run's sum (`_sum_sq` over the runs as
    rows), scattered by group; float64 runs are scaled by their group's largest magnitude."""
    index, runs = lay.group_of, Layout(lay.group_of.numel())
    if v.dtype != torch.float64:
        run_sums = _sum_sq(v.double() ** 2, runs).view(-1)
        return v.new_zeros(lay.size, dtype=torch.float64).index_add_(0, index, run_sums).sqrt()
    run_max = _amax(v, runs).view(-1)
    a = v.new_zeros(lay.size).scatter_reduce_(0, index.long(), run_max, "amax")
    s = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    run_sums = _sum_sq((v / s[index].view(-1, 1)) ** 2, runs).view(-1)
    return s * v.new_zeros(lay.size).index_add_(0, index, run_sums).sqrt()


# -- the compiled kernels: lists of tensors, static layouts and sizes ----------------------------
def _value(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
) -> Tensor:
    # the norms are no output here: the compiled graph keeps only the total
    return _value_norms(ws, layouts, coefs, group, l1, has_l1)[0]


def _grads(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    scale: Tensor,
) -> list[Tensor]:
    out = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        d = _grad_of(v, lay, group * c, l1, has_l1) * scale
        out.append(d.reshape(w.shape).to(w.dtype))
    return out


def _add_grad(
    gs: list[Tensor],
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    scale: Tensor,
) -> list[Tensor | None]:
    norms: list[Tensor | None] = [None] * len(ws)  # computed in the same pass
    return _add_grad_norms(gs, ws, norms, layouts, coefs, group, l1, has_l1, scale)


def _decay(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    lr: Tensor,
) -> list[Tensor | None]:
    factors: list[Tensor | None] = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        if _scaled_rows(w, lay, has_l1):  # w - lr * c * w / n = w * (1 - lr * c / n)
            n = _norms(v, lay)
            factors.append(_row_factor(1 - torch.where(n == 0, 0, lr * group * c / _floor(n)), w))
            continue
        d = _grad_of(v, lay, group * c, l1, has_l1, _update_norms(v, lay))
        w.copy_((v - lr * d).reshape(w.shape))
        factors.append(None)
    return factors


def _prox(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group_t: Tensor,
    l1_t: Tensor,
    has_l1: bool,
) -> list[Tensor | None]:
    factors: list[Tensor | None] = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        u = _soft(v, l1_t) if has_l1 else v
        split = _scaled_rows(w, lay, has_l1)
        n = _norms(u, lay) if split else _update_norms(u, lay)
        t = group_t * c
        factor = torch.where(n <= t, torch.zeros_like(n), (1 - t / _floor(n)).clamp(min=0))
        if split:
            factors.append(_row_factor(factor, w))
            continue
        w.copy_((u * _expand(factor, u, lay).to(u.dtype)).reshape(w.shape))
        factors.append(None)
    return factors


def _project(
    ws: list[Tensor], layouts: list[Groups], lo: Tensor, hi: Tensor, rate: Tensor
) -> list[Tensor | None]:
    """``w_g *= target(n) / n``, ``target(n) = rate * clip(n, lo, hi) + (1 - rate) * n`` (the
    norm constraints); a zero group stays 0."""
    factors: list[Tensor | None] = []
    for w, lay in zip(ws, layouts, strict=True):
        v = _flat(w, lay)
        split = _scaled_rows(w, lay)
        n = _norms(v, lay) if split else _update_norms(v, lay)
        target = rate * n.clamp(lo, hi) + (1 - rate) * n
        factor = torch.where(n == 0, torch.ones_like(n), target / _floor(n))
        if split:
            factors.append(_row_factor(factor, w))
            continue
        w.copy_((v * _expand(factor, v, lay)).reshape(w.shape))
        factors.append(None)
    return factors


def _value_norms(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
) -> tuple[Tensor, list[Tensor | None]]:
    """The total value, and each tensor's group norms (for `_add_grad_norms` to reuse in loss
    mode's backward)."""
    total = torch.zeros((), dtype=torch.float32, device=ws[0].device)
    norms: list[Tensor | None] = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        n = _norms(v, lay)
        norms.append(n if group_eager.keeps_norms(n, w) else None)
        if isinstance(c, Tensor):  # per-group c_g of irregular groups
            part = (n * c).sum().to(v.dtype) * group
        else:
            part = n.sum().to(v.dtype) * (group * c)
        if has_l1:
            runs = Layout(v.shape[0]) if isinstance(lay, Indexed) else lay
            part = part + _sum_sq(v.abs(), runs).sum() * l1
        total = total + part
    return total, norms


def _add_grad_norms(
    gs: list[Tensor],
    ws: list[Tensor],
    norms: list[Tensor | None],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    scale: Tensor,
) -> list[Tensor | None]:
    """``g += scale * grad R(w)``; with the group norms given (loss mode's forward kept them),
    one read-read-write pass and no norms pass. Split rows (`_scaled_rows`) return their
    coefficient ``scale * group * c / n`` instead, for `finish` to add ``coef * w``."""
    coefs_out: list[Tensor | None] = []
    for g, w, n, lay, c in zip(gs, ws, norms, layouts, coefs, strict=True):
        v = _flat(w, lay)
        if _scaled_rows(w, lay, has_l1) and g.dtype == w.dtype and g.is_contiguous():
            n = _norms(v, lay) if n is None else n
            coef = torch.where(n == 0, 0, scale * group * c / _floor(n))
            coefs_out.append(_row_factor(coef, w))
            continue
        d = _grad_of(v, lay, group * c, l1, has_l1, n) * scale
        g.copy_(_acc(g) + d.reshape(w.shape))
        coefs_out.append(None)
    return coefs_out


_KERNELS: dict[str, Callable[..., Any]] = {
    "value": _value,
    "grads": _grads,
    "add_grad": _add_grad,
    "decay": _decay,
    "prox": _prox,
    "project": _project,
    "value_norms": _value_norms,
    "add_grad_norms": _add_grad_norms,
}


def supported(ws: Tensors) -> bool:
    """Whether the fused kernels apply to ``ws`` (whole, unsharded tensors): none is empty."""
    return bool(ws) and all(w.numel() > 0 for w in ws)


def finish(mode: str, args: tuple, pending: list[Tensor | None]) -> None:
    """Apply the row factors an update kernel left for its split tensors (`_scaled_rows`), one
    eager broadcast pass each: ``w *= f`` (decay, prox, project) or ``g += f * w`` (gradients),
    over the ``(rows, width)`` view."""
    if mode in ("add_grad", "add_grad_norms"):
        gs, ws = args[0], args[1]
        for g, w, f in zip(gs, ws, pending, strict=True):
            if f is not None:
                g.view(f.shape[0], -1).addcmul_(w.view(f.shape[0], -1), f)
        return
    for w, f in zip(args[0], pending, strict=True):
        if f is not None:
            w.view(f.shape[0], -1).mul_(f)


#: the kernels that may leave row factors for `finish`
_SPLIT_MODES = ("add_grad", "add_grad_norms", "decay", "prox", "project")


#: each kernel's arguments, by name (`run`'s ``named``); ``group``, ``l1`` are the prox's
#: thresholds
_ARGS = {
    "value": ("ws", "layouts", "coefs", "group", "l1", "has_l1"),
    "value_norms": ("ws", "layouts", "coefs", "group", "l1", "has_l1"),
    "grads": ("ws", "layouts", "coefs", "group", "l1", "has_l1", "scale"),
    "add_grad": ("gs", "ws", "layouts", "coefs", "group", "l1", "has_l1", "scale"),
    "add_grad_norms": ("gs", "ws", "norms", "layouts", "coefs", "group", "l1", "has_l1", "scale"),
    "decay": ("ws", "layouts", "coefs", "group", "l1", "has_l1", "lr"),
    "prox": ("ws", "layouts", "coefs", "group", "l1", "has_l1"),
    "project": ("ws", "layouts", "lo", "hi", "rate"),
}


#: the arguments that are strengths, steps or scales: numbers or 0-dim tensors for the eager
#: kernels, 0-dim tensors for the compiled ones (so that schedules never recompile)
_SCALARS = ("group", "l1", "scale", "lr", "lo", "hi", "rate")


def _compiled_args(mode: str, args: tuple) -> tuple:
    """``args`` as the compiled kernel takes them: scalars as 0-dim tensors on the weights'
    device, 0-dim tensors in lists as 1-element views (`backend.lists`)."""
    ws = args[_ARGS[mode].index("ws")]
    return tuple(
        scalar(a, ws[0]) if name in _SCALARS else lists(a)[0] if name in ("ws", "gs") else a
        for name, a in zip(_ARGS[mode], args, strict=True)
    )


def _eager_is_faster(runner: Kernels, mode: str, ws: Tensors, args: tuple) -> bool:
    """``backend="auto"`` on CPU keeps irregular (`Indexed`) groups eager: the compiled kernels
    scatter and gather one float64 entry per weight, 1.5-3x slower than the eager index_add
    (``benchmarks/penalty_paths.py``, scattered groups on ResNet-18)."""
    if runner.backend != "auto" or ws[0].device.type != "cpu":
        return False
    return any(isinstance(lay, Indexed) for lay in args[_ARGS[mode].index("layouts")])


def run(runner: Kernels, mode: str, ws: Tensors, *args: Any) -> Any:
    """Run one group kernel: compiled through ``runner`` (backend, signatures, compile failure)
    where it applies, else the eager kernel of the same arguments. Returns the kernel's result
    (the value, the gradients, or None for the update modes, which work in place)."""
    kernel = _KERNELS[mode]
    if torch.compiler.is_compiling():  # inside the user's compiled region: it fuses the kernel
        args = _compiled_args(mode, args)
        out = kernel(*args)
    elif _eager_is_faster(runner, mode, ws, args) or not runner.use_compiled(kernel, ws):
        return group_eager.KERNELS[mode](*args)
    else:
        args = _compiled_args(mode, args)
        ok, out = runner.run_compiled(kernel, *args)
        if not ok:
            return group_eager.KERNELS[mode](*args)
    if mode in _SPLIT_MODES:
        finish(mode, args, out)
        out = None
    return out
