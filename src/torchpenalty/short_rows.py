"""C++ kernels for groups made of short runs of consecutive weights (and of column blocks), on
CPU.

A group lasso over rows of 1 to `WIDEST` weights (a 3x3 conv's kernel windows: 9) has one
norm per few weights. The fused kernels of `torchpenalty.group_kernels` read the rows once for
their norms and once more for the update, and inductor runs both passes as scalar loops over
rows this short (1.7-2.6x the memory floor). `short_rows.cpp` reads each block of 16 rows once,
while it is in cache, for their norms ``n``, factors and update:

- decay: ``w *= 1 - k / n`` (``k = lr * lam * c_g``); prox: ``w *= max(0, 1 - t / n)``, 0 where
  ``n <= t`` (``t = step * lam * c_g``); project: ``w *= target(n) / n``;
- gradient: ``g += k / n * w`` (``k = scale * lam * c_g``); value: ``sum_g n``.

Groups of one weight (a 1x1 conv's or a Linear's kernel windows) have ``n = |w|`` exactly and
run as one flat vector loop.

Irregular groups (a callable's scattered indices, `group_kernels.Indexed`) of float32 or
float64 runs of at most `WIDEST` weights run in `indexed_runs.cpp`: each thread sums its
runs' squares into its own per-group accumulator, then one pass scales each run (the compiled
path scatters a float64 square per weight and gathers a factor per weight: 12-29x the floor).
float64 groups whose plain sum of squares may have underflowed or overflowed are summed again,
scaled by their largest magnitude.

Groups of column blocks (``cols``: a conv's input channels) of float32 weights run in
`column_blocks.cpp`: each thread sums its rows' squares into a float64 accumulator per column
(a contiguous vector add per row), then one pass scales each row by its columns' factors.

The arithmetic is the fused kernels' (`group_factors.h`), so both give the same exact zeros.
The kernels are built once per row width and dtype by inductor's C++ toolchain (the compiler
``torch.compile`` uses on CPU, with its on-disk cache), for contiguous CPU tensors, and run
only where a regularizer would run compiled kernels (never inside a user's compiled region,
which traces the fused kernels instead).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Collection
from importlib import resources

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

#: rows (and irregular groups' runs) of up to this many weights run here: a 7x7 window (49)
#: too, so a model of kernel windows leaves no tensor to a compiled kernel
WIDEST = 64
DTYPES = {torch.float32: "float", torch.float64: "double"}
#: the C++ kernel's mode numbers
MODES = {
    "decay": 0,
    "prox": 1,
    "project": 2,
    "add_grad": 3,
    "add_grad_norms": 3,
    "value": 4,
    "value_norms": 4,
}
#: loss mode's value that keeps each row's norm, and the gradient that reads it
_KEPT_MODES = {"value_norms": 5, "add_grad_norms": 6}
#: the C++ entry points' arguments, in order
_ARGTYPES = [
    "const int64_t*",
    "const int64_t*",
    "const int64_t*",
    "const int64_t*",
    "const double*",
    "const double*",
    "double*",
    "int64_t",
    "int64_t",
]
#: the indexed entry point's, after its two pointers to the weights' dtype
_INDEXED_ARGTYPES = [
    "const int32_t*",
    "const double*",
    "int64_t",
    *["const double*"] * 2,
    *["double*"] * 2,
    *["int64_t"] * 4,
]
#: the column-block entry point's, after its two pointers to the weights
_COLUMN_ARGTYPES = [*["const double*"] * 2, *["double*"] * 2, *["int64_t"] * 5]


def _takes(w: Tensor, dtypes: Collection[torch.dtype]) -> bool:
    """Whether ``w`` is a contiguous CPU tensor of one of ``dtypes``: what the kernels read."""
    return w.dtype in dtypes and w.device.type == "cpu" and w.is_contiguous()


def width_of(w: Tensor, rows: int) -> int | None:
    """The width of ``w``'s ``rows`` equal rows (a group's, or an irregular group's runs) when
    these kernels take it: 1 (groups of one weight, scattered groups) to `WIDEST` weights of a
    float32 or float64 contiguous CPU tensor; else None."""
    width = w.numel() // rows if rows else 0
    return width if 0 < width <= WIDEST and _takes(w, DTYPES) else None


def takes_column_blocks(w: Tensor) -> bool:
    """Whether `column_blocks.cpp` takes ``w`` grouped in blocks of columns: a float32
    contiguous CPU tensor (float32 squares summed in float64 neither underflow nor overflow;
    float64 column blocks keep the fused kernels, which scale them)."""
    return _takes(w, (torch.float32,))


def _build(source: str, argtypes: list[str], defines: dict[str, object]) -> Callable[..., None]:
    """``group_factors.h`` then ``source`` (files of this package), compiled with ``defines``
    by inductor's C++ toolchain and loaded. Raises where no C++ compiler works."""
    from torch._inductor import config as inductor_config
    from torch._inductor.codecache import CppPythonBindingsCodeCache
    from torch._inductor.cpp_builder import is_gcc

    files = resources.files(__package__)
    text = "".join(f"#define {name} {value}\n" for name, value in defines.items())
    text += files.joinpath("group_factors.h").read_text() + files.joinpath(source).read_text()
    # after inductor's flags: square roots may vectorize (a norm is never negative, so no
    # errno is ever set), and so may loops (inductor turns gcc's loop vectorizer off, as it
    # vectorizes its own kernels; clang's stays on)
    flags = ["-fno-math-errno"]
    if is_gcc() and sys.platform != "darwin":
        flags.append("-ftree-loop-vectorize")
    # without inductor's precompiled header (ATen's vector types, unused here): half the time
    with inductor_config.patch({"cpp_cache_precompile_headers": False}):
        return CppPythonBindingsCodeCache.load_pybinding(argtypes, text, extra_flags=tuple(flags))


@functools.cache
def kernel(dtype: torch.dtype, width: int) -> Callable[..., None]:
    """The compiled C++ kernel for rows of ``width`` weights of ``dtype`` (built on first use,
    about a second, then cached on disk by inductor). Raises where no C++ compiler works."""
    return _build("short_rows.cpp", _ARGTYPES, {"WIDTH": width, "SCALAR": DTYPES[dtype]})


@functools.cache
def indexed_kernel(dtype: torch.dtype, width: int) -> Callable[..., None]:
    """The compiled C++ kernel for irregular groups of runs of ``width`` weights of ``dtype``
    (`indexed_runs.cpp`). Raises where no C++ compiler works."""
    scalar = DTYPES[dtype]
    argtypes = [f"{scalar}*", f"{scalar}*", *_INDEXED_ARGTYPES]
    return _build("indexed_runs.cpp", argtypes, {"WIDTH": width, "SCALAR": scalar})


@functools.cache
def column_kernel() -> Callable[..., None]:
    """The compiled C++ kernel for groups of column blocks of float32 weights
    (`column_blocks.cpp`). Raises where no C++ compiler works."""
    argtypes = ["float*", "float*", *_COLUMN_ARGTYPES]
    return _build("column_blocks.cpp", argtypes, {"SCALAR": "float"})


def _two_pass(
    mode: str,
    w: Tensor,
    g: Tensor | None,
    norms: Tensor | None,
    call: Callable[[Tensor, Tensor, Tensor, int], None],
) -> Tensor | None:
    """The two-pass kernels' protocol (`indexed_runs.cpp`, `column_blocks.cpp`): ``call(target,
    value, norms_or_value, keep)`` runs ``mode`` over ``w``, updating ``target`` (``g`` for the
    gradient modes, else ``w``). Returns the value, ``(sum of norms, sum |w|)``, or None after
    an update; ``norms``: loss mode's kept norms, written by ``value_norms`` and read by
    ``add_grad_norms``."""
    value = torch.zeros(2, dtype=torch.float64)
    target = w if g is None else g
    keep = 0 if norms is None else 1 if mode == "value_norms" else 2
    call(target, value, value if norms is None else norms, keep)  # value: a valid pointer
    if mode in ("value", "value_norms"):
        return value
    increment_version(target)  # written through its pointer: autograd must see the update
    return None


def run_columns(
    mode: str,
    w: Tensor,
    g: Tensor | None,
    groups: int,
    k: Tensor,
    shared: Tensor | None = None,
    norms: Tensor | None = None,
) -> Tensor | None:
    """Run ``mode`` over one ``(rows, cols)`` contiguous float32 CPU view ``w`` (``g``: its
    gradient's, for the gradient modes) grouped in ``groups`` equal blocks of consecutive
    columns across all rows; ``k`` (float64, one element): the mode's ``k`` or ``t`` with
    ``c_g``; ``shared`` (`shared_args`). The value returns ``(sum_g ||w_g||, sum |w|)``
    (float64; the second 0 without an L1 term); the other modes update ``w`` (``g``) in place.
    Loss mode: ``value_norms`` writes the groups' norms into ``norms`` (float64, one per
    group), and ``add_grad_norms`` reads them from it."""
    shared = shared_args() if shared is None else shared
    rows, cols = w.shape

    def call(target: Tensor, value: Tensor, out: Tensor, keep: int) -> None:
        width = cols // groups
        column_kernel()(w, target, shared, k, value, out, keep, rows, cols, width, MODES[mode])

    return _two_pass(mode, w, g, norms, call)


def shared_args(
    l1: Tensor | None = None, bounds: tuple[Tensor, Tensor, Tensor] | None = None
) -> Tensor:
    """The kernels' shared arguments, float64: a projection's ``(lo, hi, rate)`` (zeros for
    the other modes), then the L1 term's coefficient (``scale * l1`` for the gradient, ``lr *
    l1`` for decay, ``step * l1`` for prox, the strength itself for the value; 0: no L1 term)."""
    parts = [t.reshape(()) for t in bounds] if bounds else [torch.zeros(())] * 3
    parts.append(torch.zeros(()) if l1 is None else l1.reshape(()))
    return torch.stack([p.to(torch.float64) for p in parts])


def run_indexed(
    mode: str,
    w: Tensor,
    g: Tensor | None,
    group_of: Tensor,
    groups: int,
    c: Tensor,
    k: Tensor,
    shared: Tensor | None = None,
    norms: Tensor | None = None,
) -> Tensor | None:
    """Run ``mode`` over one contiguous float32 or float64 CPU tensor ``w`` (``g``: its
    gradient, for the gradient modes) whose runs of ``numel // len(group_of)`` weights belong
    to the ``groups`` groups ``group_of`` (int32), of coefficients ``c`` (float64: one per
    group, or one for all); ``k`` (float64, one element): the mode's ``k`` or ``t`` before
    ``c_g``; ``shared`` (`shared_args`): the projection's bounds and the L1 term's
    coefficient. The value returns ``(sum_g c_g ||w_g||, sum |w|)`` (float64; the second 0
    without an L1 term); the other modes update ``w`` (``g``) in place.

    Loss mode: ``value_norms`` writes the groups' norms into ``norms`` (float64, one per
    group), and ``add_grad_norms`` reads them from it instead of summing the groups again."""
    shared = shared_args() if shared is None else shared
    runs = group_of.numel()
    kernel = indexed_kernel(w.dtype, w.numel() // runs)
    step = int(c.numel() > 1)  # one coefficient for all groups, or one per group

    def call(target: Tensor, value: Tensor, out: Tensor, keep: int) -> None:
        kernel(w, target, group_of, c, step, shared, k, value, out, keep, runs, groups, MODES[mode])

    return _two_pass(mode, w, g, norms, call)


def run(
    mode: str,
    ws: list[Tensor],
    gs: list[Tensor] | None,
    params: Tensor,
    shared: Tensor | None = None,
    kept: list[Tensor | None] | None = None,
) -> Tensor | None:
    """Run ``mode`` over ``ws``: ``(rows, width)`` views of tensors `width_of` accepts (``gs``:
    their gradients' views, for the gradient modes), one call per dtype and width. ``params``
    holds each tensor's ``k`` (decay, gradient) or ``t`` (prox), float64; ``shared``
    (`shared_args`) the projection's bounds and the L1 term's coefficient. The value returns
    each tensor's sum of row norms and, in a second row, its sum of ``|w|`` (float64, ``(2,
    len(ws))``; 0 without an L1 term); the other modes update ``ws`` (``gs`` for the
    gradient) in place.

    Loss mode: ``value_norms`` fills each given ``kept`` tensor (one entry per row, the
    weights' dtype) with its rows' norms, and ``add_grad_norms`` divides by them instead of
    norming the rows again (where ``kept`` has None, it norms them)."""
    values = mode in ("value", "value_norms")
    sums = torch.zeros(2, len(ws), dtype=torch.float64) if values else None
    shared = shared_args() if shared is None else shared
    kept = kept or [None] * len(ws)
    buckets: dict[tuple[torch.dtype, int, bool], list[int]] = {}
    for i, w in enumerate(ws):
        buckets.setdefault((w.dtype, int(w.shape[-1]), kept[i] is not None), []).append(i)
    targets = gs if gs is not None else ws
    for (dtype, width, keeps), idx in buckets.items():
        code = _KEPT_MODES.get(mode, MODES[mode]) if keeps else MODES[mode]
        kept_or_w = [kept[i] if keeps else ws[i] for i in idx]  # ws: unread, a valid pointer
        pointers = [
            torch.tensor([t.data_ptr() for t in ts if t is not None], dtype=torch.int64)
            for ts in ([ws[i] for i in idx], [targets[i] for i in idx], kept_or_w)
        ]
        rows = torch.tensor([ws[i].shape[0] for i in idx], dtype=torch.int64)
        out = torch.zeros(2, len(idx), dtype=torch.float64)
        kernel(dtype, width)(*pointers, rows, params[idx], shared, out, len(idx), code)
        if sums is not None:
            sums[:, idx] = out
        else:  # written through pointers: autograd must still see the in-place update
            for i in idx:
                increment_version(targets[i])
    return sums
