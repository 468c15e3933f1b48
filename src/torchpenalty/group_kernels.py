"""Fused multi-tensor kernels of the group penalties: group norms, then scale.

``R(w) = l1 * sum|w| + group * sum_g c_g ||w_g||`` (group lasso: ``l1 = 0``). Each mode is
"group norms, then one elementwise pass that scales": the norms are read in one pass, the update
reads (and writes) in a second one. Compiled with ``torch.compile`` per list of shapes, each
tensor's norm reduction and update fuse into loops with no temporary the size of the tensor, so a
mode costs about its memory floor: one reading pass for the norms plus the update pass.

Every grouping runs over a 2-D view of the tensor, its `Layout`: each row a group (``rows``, the
whole ``tensor`` as one row, a callable's runs of consecutive elements), or each block of columns
a group across all rows (``cols``: dim-1 slices; a callable's column blocks). Callable groups
whose indices have neither form, and groups spanning FSDP2 shards, take the eager path.

Norms are exact for groups of tiny entries (whose float32 squares underflow) and of huge ones
(whose squares overflow), like `torchpenalty.penalties.norms`: float32 (and lower) squares are
summed in float64, inside the same reduction loop; float64 groups are scaled by their largest
magnitude first. Low precision weights compute in float32 and round once. Strengths, steps and
scales enter as 0-dim tensors, so schedules never recompile.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .kernels import Kernels, Tensors, lists, scalar

GROUPINGS = ("rows", "cols", "tensor")
#: rows summed per block before the blocks are summed: a column sum read in row-major blocks
BLOCK_ROWS = 16
#: rows this short are summed column by column: a reduction per row of a few elements costs a
#: horizontal reduction each (4-10x the memory floor), while summing the columns vectorizes
#: across rows (blocks of 16 weights: 1.1-1.9x)
SHORT_ROWS = 32


class Layout(NamedTuple):
    """A tensor's groups on its 2-D view ``w.reshape(rows, -1)``: each row is a group when
    ``cols == 0``; otherwise the view's columns form ``cols`` equal consecutive blocks, and each
    block, across all rows, is a group."""

    rows: int
    cols: int = 0

    def group_size(self, numel: int) -> int:
        return numel // (self.cols or self.rows)


def layout(w: Tensor, groups: str) -> Layout:
    """The `Layout` of a named grouping (a 1-D tensor's rows are its elements)."""
    if groups == "tensor" or w.ndim == 0:
        return Layout(1)
    return Layout(w.shape[0], w.shape[1] if groups == "cols" else 0)


def detect_layout(index: Tensor) -> Layout | None:
    """The `Layout` of a callable's group indices (a tensor of the weight's shape), or None when
    its groups have neither form: runs of equal length with distinct labels (rows), or the same
    sequence of distinct-label runs repeated (column blocks). Reads ``index`` once (a sync)."""
    flat = index.detach().reshape(-1).to("cpu", torch.long)
    n = flat.numel()
    if n == 0:
        return None
    changes = torch.nonzero(flat[1:] != flat[:-1])
    run = int(changes[0]) + 1 if changes.numel() else n
    if n % run or not bool((flat.view(-1, run) == flat[::run].view(-1, 1)).all()):
        return None
    labels = flat[::run]
    if labels.unique().numel() == labels.numel():
        return Layout(labels.numel())
    repeats = torch.nonzero(labels == labels[0])
    period = int(repeats[1]) if repeats.numel() > 1 else labels.numel()
    block = labels[:period]
    if labels.numel() % period or block.unique().numel() != period:
        return None
    if not bool((labels.view(-1, period) == block).all()):
        return None
    return Layout(labels.numel() // period, period)


def group_dims(groups: str, ndim: int) -> tuple[int, ...]:
    """The dims one group spans in a tensor of ``ndim`` dims: every dim but 0 (``rows``), every
    dim but 1 (``cols``), or all of them (``tensor``, and any grouping of a 0-dim tensor)."""
    if groups == "tensor" or ndim == 0:
        return tuple(range(ndim))
    if groups == "rows":
        return tuple(range(1, ndim))
    return (0, *range(2, ndim))


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


def _norms(v: Tensor, lay: Layout) -> Tensor:
    """``||w_g||`` per group (`_sum_sq` shape), exact for tiny and huge groups: float32 values
    (and lower) are squared and summed in float64, where no square of theirs underflows or
    overflows; float64 values are scaled by the group's largest magnitude first (one reduction
    more)."""
    if v.dtype != torch.float64:
        return _sum_sq(v.double() ** 2, lay).sqrt()
    a = _amax(v, lay)
    s = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    return s * _sum_sq((v / _expand(s, v, lay)) ** 2, lay).sqrt()


def _update_norms(v: Tensor, lay: Layout) -> Tensor:
    """`_norms` for an in-place update pass. Short rows' norms are column sums, elementwise code
    that inductor would inline into the update and recompute per weight (decay and prox of
    blocks of 16 weights at 1.8-1.9x their floor); a product with a 1x1 one is a library call
    it cannot inline, so the norms are computed once (1.4x)."""
    n = _norms(v, lay)
    if lay.cols or v.shape[1] > SHORT_ROWS:
        return n
    return n @ torch.ones(1, 1, dtype=n.dtype, device=n.device)


def _expand(coef: Tensor, v: Tensor, lay: Layout) -> Tensor:
    """A per-group ``coef`` (`_sum_sq` shape) broadcastable against the flat view ``v``. Column
    blocks wider than one column are spelled out per column of ``v`` (the view's width, far
    below its size) by an outer product with ones: broadcasting per block instead makes inductor
    run the update in loops as short as a block (9 for a 3x3 conv's input channel)."""
    width = v.shape[1] // lay.cols if lay.cols else 1
    if width == 1:
        return coef
    ones = torch.ones(1, width, dtype=coef.dtype, device=coef.device)
    return (coef.view(-1, 1) @ ones).view(1, -1)


def _floor(n: Tensor) -> Tensor:
    """``n`` as a divisor: CPU division treats subnormal divisors as 0 (``0 / 1e-39`` is NaN), so
    they are raised to the smallest normal number."""
    return n.clamp(min=torch.finfo(n.dtype).tiny)


def _soft(v: Tensor, t: Tensor) -> Tensor:
    return v - v.clamp(-t, t)


def _grad_of(
    v: Tensor, lay: Layout, group_c: Tensor, l1: Tensor, has_l1: bool, n: Tensor | None = None
) -> Tensor:
    """``group * c_g * v_g / ||v_g|| (+ l1 * sign(v))``, 0 in a zero group, NaN in a NaN group;
    ``n``: the group norms, when known already."""
    n = _norms(v, lay) if n is None else n
    coef = torch.where(n == 0, torch.zeros_like(n), group_c / _floor(n))  # float64 for float32 v
    out = (v * _expand(coef, v, lay)).to(v.dtype)
    # plain sign: a group holding NaN is NaN through its norm already
    return out + torch.sign(v) * l1 if has_l1 else out


def _flat(w: Tensor, lay: Layout) -> Tensor:
    return _acc(w).reshape(lay.rows, -1)


# -- the compiled kernels: lists of tensors, static layouts and sizes ----------------------------
def _value(
    ws: list[Tensor],
    layouts: list[Layout],
    coefs: list[float],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
) -> Tensor:
    # the norms are no output here: the compiled graph keeps only the total
    return _value_norms(ws, layouts, coefs, group, l1, has_l1)[0]


def _grads(
    ws: list[Tensor],
    layouts: list[Layout],
    coefs: list[float],
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
    layouts: list[Layout],
    coefs: list[float],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    scale: Tensor,
) -> None:
    norms: list[Tensor | None] = [None] * len(ws)  # computed in the same pass
    _add_grad_norms(gs, ws, norms, layouts, coefs, group, l1, has_l1, scale)


def _decay(
    ws: list[Tensor],
    layouts: list[Layout],
    coefs: list[float],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    lr: Tensor,
) -> None:
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        d = _grad_of(v, lay, group * c, l1, has_l1, _update_norms(v, lay))
        w.copy_((v - lr * d).reshape(w.shape))


def _prox(
    ws: list[Tensor],
    layouts: list[Layout],
    coefs: list[float],
    group_t: Tensor,
    l1_t: Tensor,
    has_l1: bool,
) -> None:
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        u = _soft(v, l1_t) if has_l1 else v
        n = _update_norms(u, lay)
        t = group_t * c
        factor = torch.where(n <= t, torch.zeros_like(n), (1 - t / _floor(n)).clamp(min=0))
        w.copy_((u * _expand(factor, u, lay).to(u.dtype)).reshape(w.shape))


def _project(ws: list[Tensor], layouts: list[Layout], lo: Tensor, hi: Tensor, rate: Tensor) -> None:
    """``w_g *= target(n) / n``, ``target(n) = rate * clip(n, lo, hi) + (1 - rate) * n`` (the
    norm constraints); a zero group stays 0."""
    for w, lay in zip(ws, layouts, strict=True):
        v = _flat(w, lay)
        n = _update_norms(v, lay)
        target = rate * n.clamp(lo, hi) + (1 - rate) * n
        factor = torch.where(n == 0, torch.ones_like(n), target / _floor(n))
        w.copy_((v * _expand(factor, v, lay)).reshape(w.shape))


def _value_norms(
    ws: list[Tensor],
    layouts: list[Layout],
    coefs: list[float],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
) -> tuple[Tensor, list[Tensor]]:
    """The total value, and each tensor's group norms (for `_add_grad_norms` to reuse in loss
    mode's backward)."""
    total = torch.zeros((), dtype=torch.float32, device=ws[0].device)
    norms = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = _flat(w, lay)
        n = _norms(v, lay)
        norms.append(n)
        part = n.sum().to(v.dtype) * (group * c)
        if has_l1:
            part = part + _sum_sq(v.abs(), lay).sum() * l1
        total = total + part
    return total, norms


def _add_grad_norms(
    gs: list[Tensor],
    ws: list[Tensor],
    norms: list[Tensor | None],
    layouts: list[Layout],
    coefs: list[float],
    group: Tensor,
    l1: Tensor,
    has_l1: bool,
    scale: Tensor,
) -> None:
    """``g += scale * grad R(w)``; with the group norms given (loss mode's forward kept them),
    one read-read-write pass and no norms pass."""
    for g, w, n, lay, c in zip(gs, ws, norms, layouts, coefs, strict=True):
        v = _flat(w, lay)
        d = _grad_of(v, lay, group * c, l1, has_l1, n) * scale
        g.copy_(_acc(g) + d.reshape(w.shape))


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


def run(runner: Kernels, mode: str, ws: Tensors, *args: Any) -> tuple[bool, Any]:
    """Run one fused group kernel through ``runner`` (backend, signatures, compile failure):
    ``(True, result)``, or ``(False, None)`` when it should run eagerly instead."""
    kernel = _KERNELS[mode]
    if torch.compiler.is_compiling():  # inside the user's compiled region: it fuses the kernel
        return True, kernel(*args)
    if not runner.use_compiled(kernel, ws):
        return False, None
    return runner.run_compiled(kernel, *args)


def coefs(ws: Tensors, layouts: list[Layout], scale: str) -> list[float]:
    """``c_g`` of each tensor's groups (equal within a tensor): 1, or ``sqrt(group size)``."""
    if scale != "sqrt_size":
        return [1.0] * len(ws)
    return [math.sqrt(lay.group_size(w.numel())) for w, lay in zip(ws, layouts, strict=True)]


__all__ = ["Layout", "coefs", "detect_layout", "layout", "lists", "run", "scalar", "supported"]
