"""Backend selection: when a kernel runs eager and when through public ``torch.compile``.

``backend="auto"`` (the default) compiles kernels for buckets of at least `COMPILE_MIN_NUMEL`
elements, where the traffic saved pays for the compilation, and stays eager below (small models
are launch-bound, and skip the compile latency). ``"eager"`` never compiles, ``"compile"`` always
does. Nothing is compiled at import or when a regularizer is built: the first call of a compiled
kernel compiles it, through public ``torch.compile`` (C++ on CPU, Triton on GPU), and only then
are ``torch._dynamo`` and ``torch._inductor`` loaded.

Any failure of a compilation (no C++ compiler, no Triton, an unwritable compile cache, a dynamo
error) falls back to the eager kernels, with one `RuntimeWarning` per process; the regularizer
then stays eager. Inside a user's ``torch.compile``d region the eager ops are traced and fused by
the user's compilation instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

Backend = Literal["auto", "eager", "compile"]
BACKENDS: tuple[str, ...] = ("auto", "eager", "compile")
COMPILE_MIN_NUMEL = 1 << 20  # elements in a bucket from which "auto" compiles
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
#: whether this process has said that compilation failed (one warning per process)
_fallback_warned = {"done": False}


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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def warn_fallback(exc: BaseException, stacklevel: int = 4) -> None:
    """Say once per process that compiled kernels are unavailable, and why."""
    if _fallback_warned["done"]:
        return
    _fallback_warned["done"] = True
    warnings.warn(
        f"torchpenalty: compiled kernels are unavailable here ({type(exc).__name__}: "
        f"{_first_line(exc)}); using eager kernels",
        RuntimeWarning,
        stacklevel=stacklevel,
    )


@dataclasses.dataclass
class Kernels:
    """How one regularizer runs the kernels: its ``backend``, the shape lists each compiled
    kernel has seen (at most `MAX_SIGNATURES`, so dynamo's recompile limit is never reached),
    whether compilation failed on this platform (then eager from there on), and the groups of
    callables found per ``(callable, shape, device)`` (a `kernels.layouts.Layout`, or the
    `kernels.layouts.Indexed` indices of irregular groups; None: the per-tensor path). Each
    `Regularizer` owns one, so no state is shared between regularizers or threads."""

    backend: str = dataclasses.field(default_factory=get_backend)
    #: per kernel, the shape lists it compiled for (in order: the last one added is the newest)
    signatures: dict[Callable, dict[tuple, None]] = dataclasses.field(
        default_factory=dict, repr=False
    )
    compile_failed: bool = False
    #: kernels whose process-wide recompile limit was reached: no new shape list compiles
    exhausted: set[Callable] = dataclasses.field(default_factory=set, repr=False)
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
        now on if it cannot compile here (any failure of the compilation: no C++ compiler, no
        Triton, an unwritable cache, a dynamo error)."""
        try:
            with _recompile_limit(RECOMPILE_LIMIT):
                return True, _compiled(kernel)(*args)
        except Exception as exc:
            if _is_recompile_limit(exc):
                # only a new shape list compiles, so the newest is the one refused: it runs eager
                seen = self.signatures.get(kernel, {})
                if seen:
                    seen.pop(next(reversed(seen)))
                self.exhausted.add(kernel)
                return False, None
            self.compile_failed = True
            warn_fallback(exc)
            return False, None


def _is_recompile_limit(exc: Exception) -> bool:
    """Whether ``exc`` is what a fullgraph compile raises at dynamo's recompile limit (private:
    ``torch._dynamo.exc.FailOnRecompileLimitHit``, matched by name so that a torch without it
    only loses this distinction)."""
    return type(exc).__name__ == "FailOnRecompileLimitHit"


def _recompile_limit(limit: int) -> contextlib.AbstractContextManager:
    """dynamo's recompile limits for one call, the per-function one and the accumulated one
    (private ``torch._dynamo.config``: ``recompile_limit`` since torch 2.7, and
    ``accumulated_recompile_limit``; a torch without them keeps its defaults)."""
    import torch._dynamo  # loaded on first use of a compiled kernel, never at import

    config = torch._dynamo.config
    limits = {
        key: limit
        for key in ("recompile_limit", "accumulated_recompile_limit")
        if hasattr(config, key)
    }
    return config.patch(limits) if limits else contextlib.nullcontext()


@functools.cache
def _compiled(kernel: Callable) -> Callable:
    return torch.compile(kernel, fullgraph=True, dynamic=False)


#: always eager: for lists that change from call to call (loss-mode chunks), where compiling
#: each would not pay; it never compiles, so it holds no state
EAGER = Kernels("eager")


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


def scalar(value: Scalar, like: Tensor) -> Tensor:
    """A 0-dim tensor on ``like``'s device (compiled kernels take scalars as tensors), float64
    for float64 weights and float32 otherwise (low-precision weights compute in float32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=dtype)
    return torch.tensor(value, dtype=dtype, device=like.device)


def lists(*tensor_lists: Tensors) -> list[list[Tensor]]:
    """Lists for a compiled kernel: 0-dim tensors as 1-element views of the same storage, as
    compiled code treats 0-dim CPU tensors as scalars and would drop their in-place update."""
    return [[t.view(1) if t.dim() == 0 else t for t in ts] for ts in tensor_lists]
