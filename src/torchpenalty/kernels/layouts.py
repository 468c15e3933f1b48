"""How a tensor is grouped, as the group kernels read it: a `Layout` (each row a group, or each
block of columns a group across all rows) or `Indexed` runs of irregular groups.

Every grouping runs over a 2-D view of the tensor: each row a group (``rows``, the whole
``tensor`` as one row, a callable's runs of consecutive elements), or each block of columns a
group across all rows (``cols``: dim-1 slices; a callable's column blocks). A callable's groups
in neither form are `Indexed`: runs of consecutive elements that share a group (whole rows for
groups of output units of unequal size; single elements for scattered groups), whose sums are
scattered by group.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .backend import Tensors

GROUPINGS = ("rows", "cols", "tensor")


class Layout(NamedTuple):
    """A tensor's groups on its 2-D view ``w.reshape(rows, -1)``: each row is a group when
    ``cols == 0``; otherwise the view's columns form ``cols`` equal consecutive blocks, and each
    block, across all rows, is a group."""

    rows: int
    cols: int = 0

    def group_size(self, numel: int) -> int:
        return numel // (self.cols or self.rows)


class Indexed(NamedTuple):
    """Irregular groups (a callable's indices with no `Layout`). The flat tensor is cut into
    runs of equal length whose elements share a group (the longest such runs: a row for groups
    of whole rows, one element for scattered groups); ``group_of`` holds each run's group
    (int32, on the weights' device), ``size`` is the number of groups, ``sqrt_sizes`` each
    group's ``c_g`` for ``scale="sqrt_size"`` (float64). Norms sum each run, then scatter the
    run sums by group; updates gather each run's group factor."""

    group_of: Tensor
    size: int
    sqrt_sizes: Tensor


#: how a tensor is grouped, for the kernels
Groups = Layout | Indexed


def indexed(index: Tensor, device: torch.device) -> Indexed | None:
    """The `Indexed` groups of a callable's indices, or None where the fused path does not
    apply (no elements, a negative index, more than 2**31 elements: the eager path refuses or
    handles them). Reads ``index`` once (a sync)."""
    flat = index.detach().reshape(-1).to("cpu", torch.long)
    n = flat.numel()
    if n == 0 or n >= 2**31 or int(flat.min()) < 0:
        return None
    size = int(flat.max()) + 1
    sizes = torch.bincount(flat, minlength=size).to(torch.float64)
    starts = (torch.nonzero(flat[1:] != flat[:-1]).reshape(-1) + 1).numpy()
    run = int(np.gcd.reduce(np.append(starts, n)))  # every run's length is a multiple of it
    group_of = flat[::run].to(device, torch.int32)
    return Indexed(group_of, size, sizes.sqrt().to(device))


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


def coefs(ws: Tensors, layouts: list[Groups], scale: str) -> list[float | Tensor]:
    """``c_g`` of each tensor's groups: 1, or ``sqrt(group size)`` (equal within a tensor of a
    `Layout`; per group, a ``(size,)`` tensor, for `Indexed` groups)."""
    if scale != "sqrt_size":
        return [1.0] * len(ws)
    return [
        lay.sqrt_sizes if isinstance(lay, Indexed) else math.sqrt(lay.group_size(w.numel()))
        for w, lay in zip(ws, layouts, strict=True)
    ]
