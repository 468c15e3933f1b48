"""Eager kernels of the group penalties: the compiled kernels' math as a few library calls per
tensor, on its detected `Layout`, with nothing compiled.

``R(w) = l1 * sum|w| + group * sum_g c_g ||w_g||``. Every mode is one norm pass over the
tensor's 2-D view (``torch.linalg.vector_norm`` along the rows; for column blocks, the squares'
column sums as one matrix-vector product) and one in-place pass that scales it by a factor per
group (``mul_`` / ``addcmul_`` broadcasting a ``(rows, 1)`` or ``(1, width)`` factor), so a prox
costs about two passes over the weights, whatever the grouping.

Norms are exact, as in `torchpenalty.penalties.norms`, at the cost of one pass in the common
case: the plain norm is taken in the weights' precision, and only groups where it cannot be
trusted (below ``sqrt(tiny / eps * size)``, where squares of the entries underflow, or
infinite, where they overflow) are normed again with their entries scaled by a power of two
(``2**(3/4 * maxexp)`` up, or its inverse down), which puts every nonzero entry's square in the
normal range: a group's norm is 0 exactly when all its entries are 0. On CPU the groups to renorm
are found with a host check (free there) and gathered; elsewhere they are renormed without a
device sync, every tensor in one extra masked pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .layouts import Groups, Indexed, Layout

#: a strength, step or scale: a number, or a 0-dim tensor (a scheduler's lr, a GradScaler's scale)
Number = float | Tensor


def compute_view(w: Tensor, lay: Groups) -> Tensor:
    """The 2-D view the kernels work on, in the dtype figures are computed in: a `Layout`'s
    rows, or an `Indexed` tensor's runs. On CPU float64 stays and the rest is float32 (tiny
    groups are found and handled with host checks, free there); elsewhere everything computes
    in float64, exact with no device sync. A copy where ``w`` has no such view (another dtype,
    channels-last)."""
    rows = lay.group_of.numel() if isinstance(lay, Indexed) else lay.rows
    wide = w.dtype == torch.float64 or w.device.type != "cpu"
    return (w.double() if wide else w.float()).reshape(rows, -1)


def _write_back(w: Tensor, v: Tensor) -> None:
    """Store ``v`` in ``w`` unless it is ``w``'s own memory (updated in place already)."""
    if v.data_ptr() != w.data_ptr() or v.dtype != w.dtype:
        w.copy_(v.view(w.shape) if v.is_contiguous() else v.reshape(w.shape))


def _scales(dtype: torch.dtype) -> tuple[float, float]:
    """``(lo_per_sqrt_size, up)``: plain norms below ``lo_per_sqrt_size * sqrt(size)`` may have
    lost (squares of) entries to underflow; ``up`` puts the smallest subnormal's square in the
    normal range and keeps a group below that bound far from overflow."""
    info = torch.finfo(dtype)
    max_exponent = math.frexp(info.max)[1]  # 128 for float32, 1024 for float64
    return math.sqrt(info.tiny / info.eps), 2.0 ** (3 * max_exponent // 4)


def _power_of_two(n: Tensor, lo: float, up: float) -> Tensor:
    """Per group: ``up`` below ``lo``, ``1 / up`` where infinite, else 1 (float64)."""
    one = n.new_ones((), dtype=torch.float64)
    return torch.where(n < lo, one * up, torch.where(n == math.inf, one / up, one))


def _resolved(resolve: float, lo: float) -> bool:
    """Whether plain norms serve a prox of threshold ``resolve`` as they are: every group whose
    plain norm is below ``lo`` has a true norm below ``lo * (1 + eps)`` (it lost at most
    underflowed squares), so at or below the threshold: zeroed alike; an infinite plain norm
    (squares past float32's range) stands for a norm so large that the prox's factor
    ``1 - t / n`` is 1 to rounding either way."""
    return resolve >= lo * (1 + 1e-4)


def _doubtful(n: Tensor, lo: float) -> bool:
    """Whether some norm is below ``lo`` or infinite (one reduction and a host check; a NaN norm
    makes it answer yes, so the elementwise mask decides)."""
    low, high = (x.item() for x in torch.aminmax(n))
    return not (low >= lo and high < math.inf)


def _renormed(
    n: Tensor,
    amax: Tensor,
    lo: float,
    up: float,
    norms_of: Callable[[Tensor], Tensor],
    scaled: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``n`` (float64) with its doubtful groups normed again: those below ``lo`` holding a
    nonzero entry (``amax > 0``: a group of exact zeros has its exact norm, 0) and infinite
    ones. ``scaled(mask, s)`` gives those groups' entries times their power of two ``s``. Off
    CPU nothing is read back: the doubtful groups are renormed masked, whatever their number."""
    suspect = ((n < lo) & (amax > 0)) | (n == math.inf)
    n = n.double()  # a renormed group's norm may be outside float32's range
    if n.device.type == "cpu" and not bool(suspect.any()):
        return n
    s = _power_of_two(n, lo, up)
    return torch.where(suspect, norms_of(scaled(suspect, s)).double() / s, n)


#: rows of at most this many weights are normed as a matrix product of their squares with ones
#: (BLAS, vectorized across rows): 25-30% faster than a reduction over rows this short
SHORT_ROWS = 32


def _row_norms(v: Tensor, resolve: float) -> Tensor:
    width = v.shape[1]
    if width == 1:  # groups of one weight: sqrt(w**2) is |w| exactly
        return v.abs()
    if width <= SHORT_ROWS:
        ones = torch.ones(width, 1, dtype=v.dtype, device=v.device)
        n = torch.mm(v * v, ones).sqrt_()
    else:
        n = torch.linalg.vector_norm(v, dim=1, keepdim=True)
    lo_unit, up = _scales(v.dtype)
    lo = lo_unit * math.sqrt(v.shape[1])
    if _resolved(resolve, lo):
        return n
    lo_needed = lo if resolve < lo else 0.0  # norms below `resolve` need not be exact

    def norms_of(x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True)

    if v.device.type != "cpu":  # no host checks: every doubtful row normed again, masked
        s = _power_of_two(n, lo, up)
        suspect = (n < lo_needed) | (n == math.inf)
        return torch.where(suspect, norms_of(v * s.to(v.dtype)).double() / s, n.double())
    if not _doubtful(n, lo_needed):
        return n  # every norm trusted, in the weights' precision
    # a group of exact zeros has its exact norm; the rest are few: gathered and normed again
    amax = torch.linalg.vector_norm(v, math.inf, dim=1, keepdim=True)
    suspect = ((n < lo_needed) & (amax > 0)) | (n == math.inf)
    n = n.double()  # a renormed group's norm may be outside float32's range
    if bool(suspect.any()):
        rows = suspect.view(-1).nonzero().view(-1)
        s = _power_of_two(n[rows], lo, up)
        n[rows] = norms_of(v.index_select(0, rows) * s.to(v.dtype)).double() / s
    return n


def _column_norms(v: Tensor, lay: Layout, resolve: float) -> Tensor:
    """``(1, cols)``: each block of ``width`` columns across all rows is a group."""

    def norms_of(x: Tensor) -> Tensor:
        ones = torch.ones(1, x.shape[0], dtype=x.dtype, device=x.device)
        per_column = torch.mm(ones, x * x)  # a contiguous read, unlike a reduction over dim 0
        return per_column.view(lay.cols, -1).sum(dim=1).view(1, lay.cols).sqrt()

    n = norms_of(v)
    lo_unit, up = _scales(v.dtype)
    lo = lo_unit * math.sqrt(lay.group_size(v.numel()))
    if _resolved(resolve, lo):
        return n
    lo_needed = lo if resolve < lo else 0.0
    if v.device.type == "cpu" and not _doubtful(n, lo_needed):
        return n
    per_column = torch.linalg.vector_norm(v, math.inf, dim=0)
    amax = per_column.view(lay.cols, -1).amax(dim=1).view(1, lay.cols)

    def scaled(suspect: Tensor, s: Tensor) -> Tensor:
        return v * _expand(torch.where(suspect, s, 0.0), v, lay).to(v.dtype)

    return _renormed(n, amax, lo_needed, up, norms_of, scaled)


def indexed_norms(v: Tensor, lay: Indexed, resolve: float = 0.0) -> Tensor:
    """``(size,)`` norms of irregular groups: each run's squares summed, added up per group.
    On CPU, float32 squares are summed in float32 where every group's norm is then trusted (or
    below a prox's ``resolve``); otherwise float32 squares are summed in float64, where none
    underflows or overflows, and float64 runs are scaled by their group's largest magnitude
    first."""
    index = lay.group_of
    if v.dtype == torch.float32 and v.device.type == "cpu":
        squares = v * v if v.shape[1] == 1 else (v * v).sum(dim=1, keepdim=True)
        n = v.new_zeros(lay.size).index_add_(0, index, squares.view(-1)).sqrt_()
        lo_unit, _ = _scales(v.dtype)
        lo = lo_unit * float(lay.sqrt_sizes.max())
        if _resolved(resolve, lo) or not _doubtful(n, lo):
            return n
    if v.dtype != torch.float64:
        wide = v.double()
        sums = torch.linalg.vector_norm(wide, dim=1) ** 2
        return v.new_zeros(lay.size, dtype=torch.float64).index_add_(0, index, sums).sqrt()
    run_max = v.abs().amax(dim=1)
    a = v.new_zeros(lay.size).scatter_reduce_(0, index.long(), run_max, "amax")
    s = torch.where((a > 0) & torch.isfinite(a), a, torch.ones_like(a))
    sums = ((v / s.index_select(0, index).view(-1, 1)) ** 2).sum(dim=1)
    return s * v.new_zeros(lay.size).index_add_(0, index, sums).sqrt()


def group_norms(v: Tensor, lay: Groups, resolve: float = 0.0) -> Tensor:
    """``||w_g||`` per group: ``(rows, 1)`` for rows, ``(1, cols)`` for column blocks,
    ``(size,)`` for irregular groups. In ``v``'s precision where every norm was trusted (in
    its normal range, or 0 for a group of exact zeros), else float64. A prox passes its
    threshold as ``resolve``: norms below it need not be exact (`_resolved`)."""
    if isinstance(lay, Indexed):
        return indexed_norms(v, lay, resolve)
    return _column_norms(v, lay, resolve) if lay.cols else _row_norms(v, resolve)


def _expand(coef: Tensor, v: Tensor, lay: Groups) -> Tensor:
    """A per-group ``coef`` broadcastable against ``v`` with a contiguous inner dim: ``(rows,
    1)``; column blocks spelled out per column ``(1, cols * width)``; irregular groups gathered
    per run."""
    if isinstance(lay, Indexed):
        return coef.index_select(0, lay.group_of).view(-1, 1)  # 3-4x faster than coef[index]
    width = v.shape[1] // lay.cols if lay.cols else 1
    if width == 1:
        return coef
    return coef.view(-1, 1).expand(-1, width).reshape(1, -1)


#: float32 factors up to this multiply a float32 weight exactly enough; larger ones (a group of
#: subnormal weights scaled towards a unit norm) are applied in two factors or in float64
SAFE_FACTOR = 2.0**64


def _floor(n: Tensor) -> Tensor:
    """``n`` as a divisor: CPU division treats subnormal divisors as 0."""
    return n.clamp(min=torch.finfo(n.dtype).tiny)


def _as(x: Number, dtype: torch.dtype) -> Number:
    """A strength, step or scale (a number, or a 0-dim tensor: a scheduler's lr) in ``dtype``."""
    return x.to(dtype) if isinstance(x, Tensor) else x


def _per_group(c: float | Tensor, n: Tensor) -> float | Tensor:
    """``c_g`` against the norms: a number, or irregular groups' ``(size,)`` tensor."""
    return _as(c, n.dtype)


def _gradient_coef(n: Tensor, k: Number, c: float | Tensor) -> Tensor:
    """``k * c_g / ||w_g||`` in the norms' dtype (float64 where a group needed renorming: then
    it may exceed float32's range), 0 in a zero group (its gradient: ``coef * w``)."""
    coef = (_as(k, n.dtype) * _per_group(c, n)) / _floor(n)
    return coef.masked_fill_(n == 0, 0.0)


def _is_safe(f: Tensor, v: Tensor) -> bool:
    """Whether the factors ``f`` can multiply ``v`` in ``v``'s dtype: factors made from trusted
    norms (in ``v``'s dtype) can; float64 ones are checked (a host check, on CPU only: elsewhere
    ``v`` is float64)."""
    if f.dtype != torch.float64 or v.dtype == torch.float64:
        return True
    return not bool((f.abs() > SAFE_FACTOR).any())


def _scale_(v: Tensor, factor: Tensor, lay: Groups) -> None:
    """``v *= factor`` per group, in place; huge factors in two float32 steps."""
    f = _expand(factor, v, lay)
    if _is_safe(f, v):
        v.mul_(f.to(v.dtype))
        return
    root = torch.where(f.abs() > SAFE_FACTOR, f.abs().sqrt(), 1.0)
    v.mul_(root.to(v.dtype)).mul_((f / root).to(v.dtype))


def _times(v: Tensor, coef: Tensor, lay: Groups) -> Tensor:
    """``coef * v`` per group, a new tensor like ``v`` (huge coefficients in float64)."""
    f = _expand(coef, v, lay)
    if _is_safe(f, v):
        return v * f.to(v.dtype)
    return (v.double() * f).to(v.dtype)


def _one_weight(lay: Groups, v: Tensor) -> bool:
    """Groups of one weight (a Linear's or a 1x1 conv's kernel windows): ``||w_g|| = |w|``,
    so the group term is ``group * c * |w|`` (``c = 1``), an L1 term, run as one."""
    return isinstance(lay, Layout) and not lay.cols and v.shape[1] == 1


def _one_weight_strength(group: Number, l1: Number, has_l1: bool, c: float | Tensor) -> Number:
    """The L1 strength of groups of one weight: ``group * c (+ l1)``."""
    k = group * c if isinstance(c, float) else group
    return k + l1 if has_l1 else k


def keeps_norms(n: Tensor, w: Tensor) -> bool:
    """As in the compiled kernels: norms kept for loss mode's backward when they take at most
    an eighth of the tensor's bytes."""
    return n.numel() * n.element_size() * 8 <= w.numel() * w.element_size()


def _value_norms(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
) -> tuple[Tensor, list[Tensor | None]]:
    parts: list[Tensor] = []
    kept: list[Tensor | None] = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = compute_view(w, lay)
        if _one_weight(lay, v):
            k = _one_weight_strength(group, l1, has_l1, c)
            parts.append(torch.linalg.vector_norm(v, 1).double() * _as(k, torch.float64))
            kept.append(None)
            continue
        n = group_norms(v, lay)
        kept.append(n if keeps_norms(n, w) else None)
        part = (n * _per_group(c, n)).sum(dtype=torch.float64) * _as(group, torch.float64)
        if has_l1:
            l1_part = torch.linalg.vector_norm(v, 1).double()
            part = part + l1_part * _as(l1, torch.float64)
        parts.append(part.reshape(()))
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total, kept


def _value(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
) -> Tensor:
    return _value_norms(ws, layouts, coefs, group, l1, has_l1)[0]


def _gradient(
    v: Tensor, lay: Groups, c: float | Tensor, k: Number, l1: Number, has_l1: bool, n: Tensor
) -> Tensor:
    """``k * c_g * v_g / ||v_g|| (+ l1 * sign(v))``, a new tensor like ``v``."""
    d = _times(v, _gradient_coef(n, k, c), lay)
    return d.add_(torch.sign(v).mul_(_as(l1, v.dtype))) if has_l1 else d


def _grads(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
    scale: Number,
) -> list[Tensor]:
    out = []
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = compute_view(w, lay)
        d = _gradient(v, lay, c, group * scale, l1 * scale, has_l1, group_norms(v, lay))
        out.append(d.reshape(w.shape).to(w.dtype))
    return out


def _add_grad_norms(
    gs: list[Tensor],
    ws: list[Tensor],
    norms: list[Tensor | None],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
    scale: Number,
) -> None:
    """``g += scale * grad R(w)``; with the norms loss mode's forward kept, no norm pass."""
    for g, w, n, lay, c in zip(gs, ws, norms, layouts, coefs, strict=True):
        v = compute_view(w, lay)
        if _one_weight(lay, v) and g.dtype == v.dtype and g.is_contiguous():
            k = _one_weight_strength(group, l1, has_l1, c) * scale
            g.view(v.shape).add_(torch.sign(v).mul_(_as(k, v.dtype)))
            continue
        n = group_norms(v, lay) if n is None else n
        coef = _expand(_gradient_coef(n, group * scale, c), v, lay)
        if g.dtype == v.dtype and g.is_contiguous() and _is_safe(coef, v):
            gv = g.view(v.shape)
            gv.addcmul_(v, coef.to(v.dtype))  # one pass: g += coef * w
            if has_l1:  # g += l1 * scale * sign(w)
                gv.add_(torch.sign(v).mul_(_as(l1 * scale, v.dtype)))
            continue
        d = _gradient(v, lay, c, group * scale, l1 * scale, has_l1, n)
        if g.dtype == d.dtype:
            g.add_(d.view(g.shape) if d.is_contiguous() else d.reshape(g.shape))
        else:  # low precision: added in float32, rounded once
            g.copy_(g.float() + d.reshape(g.shape))


def _add_grad(
    gs: list[Tensor],
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
    scale: Number,
) -> None:
    _add_grad_norms(gs, ws, [None] * len(ws), layouts, coefs, group, l1, has_l1, scale)


def _decay(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group: Number,
    l1: Number,
    has_l1: bool,
    lr: Number,
) -> None:
    """``w -= lr * grad R(w)``: ``w *= 1 - lr * group * c_g / ||w_g||``, then the L1 term's
    ``- lr * l1 * sign(w)`` with the sign taken before the shrink."""
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = compute_view(w, lay)
        if _one_weight(lay, v):  # w -= lr * k * sign(w)
            k = _one_weight_strength(group, l1, has_l1, c) * lr
            v.sub_(torch.sign(v).mul_(_as(k, v.dtype)))
            _write_back(w, v)
            continue
        n = group_norms(v, lay)
        signs = torch.sign(v) if has_l1 else None
        _scale_(v, 1 - _gradient_coef(n, lr * group, c), lay)
        if signs is not None:
            v.sub_(signs.mul_(_as(lr * l1, v.dtype)))
        _write_back(w, v)


def _prox(
    ws: list[Tensor],
    layouts: list[Groups],
    coefs: list[float | Tensor],
    group_t: Number,
    l1_t: Number,
    has_l1: bool,
) -> None:
    """Soft-threshold by ``l1_t``, then ``w_g *= max(0, 1 - group_t * c_g / ||w_g||)``: every
    group whose norm is at or below its threshold becomes exact zeros."""
    for w, lay, c in zip(ws, layouts, coefs, strict=True):
        v = compute_view(w, lay)
        if _one_weight(lay, v):  # soft-thresholds by l1_t, then by group_t: by their sum
            t = _as(_one_weight_strength(group_t, l1_t, has_l1, c), v.dtype)
            v.sub_(v.clamp(-t, t))  # type: ignore[arg-type]
            _write_back(w, v)
            continue
        if has_l1:
            t = _as(l1_t, v.dtype)
            v.sub_(v.clamp(-t, t))  # type: ignore[arg-type]
        # only a host check reads it (on CPU, where reading a tensor threshold costs no sync)
        resolve = 0.0
        if v.device.type == "cpu":  # the smallest threshold; c_g per group for irregular ones
            resolve = float(group_t) * (float(c.min()) if isinstance(c, Tensor) else c)
        n = group_norms(v, lay, resolve)
        t_g = _as(group_t, n.dtype) * _per_group(c, n)
        # n <= t_g: 1 - t_g / n <= 0. With t_g > 0 a zero or subnormal n (CPU division takes it
        # for 0) gives -inf, so 0; only t_g = 0 needs the floor (0 / 0)
        positive = resolve > 0 if v.device.type == "cpu" else False
        factor = (1 - t_g / (n if positive else _floor(n))).clamp_(min=0)
        v.mul_(_expand(factor, v, lay).to(v.dtype))  # in [0, 1]
        _write_back(w, v)


def _project(ws: list[Tensor], layouts: list[Groups], lo: Number, hi: Number, rate: Number) -> None:
    """``w_g *= target(n) / n``, ``target(n) = rate * clip(n, lo, hi) + (1 - rate) * n``; a zero
    group stays 0."""
    for w, lay in zip(ws, layouts, strict=True):
        v = compute_view(w, lay)
        n = group_norms(v, lay).double()
        clipped = torch.clamp(n, _as(lo, torch.float64), _as(hi, torch.float64))  # type: ignore[arg-type]
        rate_n = _as(rate, torch.float64)
        target = clipped * rate_n + n * (1 - rate_n)
        _scale_(v, torch.where(n == 0, 1.0, target / _floor(n)), lay)
        _write_back(w, v)


#: each mode's eager kernel, taking the compiled kernel's arguments (`kernels.group.run`)
KERNELS: dict[str, Callable[..., Any]] = {
    "value": _value,
    "value_norms": _value_norms,
    "grads": _grads,
    "add_grad": _add_grad,
    "add_grad_norms": _add_grad_norms,
    "decay": _decay,
    "prox": _prox,
    "project": _project,
}
