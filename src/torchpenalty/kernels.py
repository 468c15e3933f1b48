"""Multi-tensor kernels of the elementwise family ``l1 * |w| + l2/2 * w**2``: one pass per mode.

The cost floor of a penalty is memory traffic: gradient mode reads ``w`` and ``g`` and writes
``g``; decoupled and proximal modes read and write ``w``; the value reads ``w``. Two
implementations reach it, chosen by measurement (``benchmarks/penalty_paths.py``):

- eager: ``torch._foreach_*`` where one op is one pass (L2: ``g += l2*w``, ``w *= 1 - lr*l2``,
  ``w /= 1 + s*l2``, ``||w||_2``). Where a temporary is unavoidable (``sign(w)``), tensors are
  processed in cache-sized chunks, so the temporary never exceeds the largest selected tensor and
  mostly stays in cache.
- compiled: ``torch.compile``d list kernels that fuse each tensor's update into one loop with no
  temporary (L1 decay, L1 prox and the L1 value have no single-pass eager form). Strengths and
  learning rates enter as 0-dim tensors, so schedules never recompile.

``backend="auto"`` (the default) compiles kernels for buckets of at least `COMPILE_MIN_NUMEL`
elements, where the traffic saved pays for the compilation, and stays eager below (small models
are launch-bound, and skip the compile latency). A platform where compilation fails falls back to
eager once, with a warning. Inside a user's ``torch.compile``d region the eager ops are traced
and fused by the user's compilation instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from torch import Tensor

Backend = Literal["auto", "eager", "compile"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "compile")
COMPILE_MIN_NUMEL = 1 << 20  # elements in a bucket from which "auto" compiles
CHUNK_NUMEL = 1 << 18  # elements per eager chunk: the sign temporary stays cache-sized
# Each kernel compiles once per list of shapes; past this many lists it stays eager rather than
# reach dynamo's recompile limit, whose fallback would run the fused code unfused.
MAX_SIGNATURES = 32
# dynamo's recompile limits while a kernel runs: its cache is per function, shared by every
# regularizer of the process (a test suite, a sweep over models), each adding up to
# MAX_SIGNATURES lists; past it, the kernel runs eager for new lists (`Kernels.exhausted`)
RECOMPILE_LIMIT = 32 * MAX_SIGNATURES
Scalar = float | Tensor
#: what torch's multi-tensor (``_foreach``) ops take
Tensors = list[Tensor] | tuple[Tensor, ...]

_default = {"backend": "auto"}  # the backend of regularizers built without backend=


def check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    return str(backend)


def set_backend(backend: Backend) -> None:
    """Set the default kernel backend of regularizers built from now on without ``backend=``.

    Regularizers that exist keep theirs: the choice is per regularizer, with no state shared.

    Args:
        backend: ``"auto"`` (default: compiled kernels for buckets of at least
            `COMPILE_MIN_NUMEL` elements, eager below), ``"eager"`` or ``"compile"``.

    Raises:
        ValueError: an unknown backend.
    """
    _default["backend"] = check_backend(backend)


def get_backend() -> str:
    """The default backend of new regularizers (`set_backend`)."""
    return _default["backend"]


@dataclasses.dataclass
class Kernels:
    """How one regularizer runs the kernels: its ``backend``, the shape lists each compiled
    kernel has seen (at most `MAX_SIGNATURES`, so dynamo's recompile limit is never reached),
    and whether compilation failed on this platform (then eager from there on), and the groups
    of callables found per ``(callable, shape, device)`` (a `group_kernels.Layout`, or the
    `group_kernels.Indexed` indices of irregular groups; None: the eager path). Each
    `Regularizer` owns one, so no state is shared between regularizers or threads."""

    backend: str = dataclasses.field(default_factory=get_backend)
    #: per kernel, the shape lists it compiled for (in order: the last one added is the newest)
    signatures: dict[Callable, dict[tuple, None]] = dataclasses.field(
        default_factory=dict, repr=False
    )
    compile_failed: bool = False
    #: kernels whose process-wide recompile limit was reached: no new shape list compiles
    exhausted: set[Callable] = dataclasses.field(default_factory=set, repr=False)
    #: the single-pass short-row kernels failed to build here (`torchpenalty.short_rows`)
    native_failed: bool = False
    group_layouts: dict[tuple, Any] = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.backend = check_backend(self.backend)

    def use_compiled(self, kernel: Callable, ws: Tensors) -> bool:
        if self.backend == "eager" or self.compile_failed:
            return False
        if torch.compiler.is_compiling():  # inside the user's compiled region: theirs fuses ours
            return False
        if self.backend == "auto" and sum(w.numel() for w in ws) < COMPILE_MIN_NUMEL:
            return False
        signature = (ws[0].device, ws[0].dtype, tuple(tuple(w.shape) for w in ws))
        seen = self.signatures.setdefault(kernel, {})
        if signature not in seen:
            if len(seen) >= MAX_SIGNATURES or kernel in self.exhausted:
                return False
            seen[signature] = None
        return True

    def run_compiled(self, kernel: Callable, *args: object) -> tuple[bool, object]:
        """Run the compiled ``kernel``: ``(True, result)``, or ``(False, None)`` and eager from
        now on if this platform cannot compile (no C++ compiler, no Triton, ...)."""
        try:
            with _recompile_limit(RECOMPILE_LIMIT):
                return True, _compiled(kernel)(*args)
        except _RECOMPILE_LIMIT_HIT:
            # only a new shape list compiles, so the newest is the one refused: it runs eager
            seen = self.signatures.get(kernel, {})
            if seen:
                seen.pop(next(reversed(seen)))
            self.exhausted.add(kernel)
            return False, None
        except torch._dynamo.exc.BackendCompilerFailed as exc:
            self.compile_failed = True
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            warnings.warn(
                f"torchpenalty: compiled kernels are unavailable here ({reason}); using eager "
                "kernels",
                RuntimeWarning,
                stacklevel=3,
            )
            return False, None


#: what a fullgraph compile raises at the recompile limit, where torch has it
_RECOMPILE_LIMIT_HIT = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())


#: always eager: for lists that change from call to call (loss-mode chunks), where compiling
#: each would not pay; it never compiles, so it holds no state
EAGER = Kernels("eager")


def _recompile_limit(limit: int) -> contextlib.AbstractContextManager:
    """dynamo's recompile limits for one call, the per-function one and the accumulated one;
    the first is ``recompile_limit`` since torch 2.7 (``cache_size_limit`` before)."""
    config = torch._dynamo.config
    key = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    limits = {key: limit}
    if hasattr(config, "accumulated_recompile_limit"):
        limits["accumulated_recompile_limit"] = limit
    return config.patch(limits)


def pack(sizes: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive index runs whose sizes add up to at most ``budget`` (a larger item stands
    alone)."""
    out: list[list[int]] = []
    current: list[int] = []
    total = 0
    for i, size in enumerate(sizes):
        if current and total + size > budget:
            out.append(current)
            current, total = [], 0
        current.append(i)
        total += size
    if current:
        out.append(current)
    return out


def _chunks(ws: Tensors) -> list[list[int]]:
    """Index runs of at most `CHUNK_NUMEL` elements and at most the largest tensor's size: a
    chunk's temporaries stay cache-sized and never exceed the largest tensor."""
    return pack([w.numel() for w in ws], min(CHUNK_NUMEL, max(w.numel() for w in ws)))


def _precise(value: Scalar) -> Scalar:
    """Scalar tensors (a learning rate from a scheduler, say) in float64, so that coefficients
    such as ``1 - lr * l2`` do not round to the tensor's float32 first."""
    return value.to(torch.float64) if isinstance(value, Tensor) else value


def scalar(value: Scalar, like: Tensor) -> Tensor:
    """A 0-dim tensor on ``like``'s device (compiled kernels take scalars as tensors), float64
    for float64 weights and float32 otherwise (low-precision weights compute in float32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=dtype)
    return torch.tensor(value, dtype=dtype, device=like.device)


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


@functools.cache
def _compiled(kernel: Callable) -> Callable:
    return torch.compile(kernel, fullgraph=True, dynamic=False)


def lists(*tensor_lists: Tensors) -> list[list[Tensor]]:
    """Lists for a compiled kernel: 0-dim tensors as 1-element views of the same storage, as
    compiled code treats 0-dim CPU tensors as scalars and would drop their in-place update."""
    return [[t.view(1) if t.dim() == 0 else t for t in ts] for ts in tensor_lists]


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
