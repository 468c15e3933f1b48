"""`Regularizer`: a penalty bound to the selected parameters of a model, applied four ways.

1. loss:       ``loss = data_loss + reg()``            (differentiable; reported in the loss)
2. gradient:   ``reg.add_to_grad_()`` after backward   (``g += grad R(w)``, no autograd graph)
3. decoupled:  ``reg.attach(opt, mode="decoupled")``   (``w -= lr * grad R(w)`` before each step)
4. proximal:   ``reg.attach(opt, mode="proximal")``    (``w = prox(w, lr)`` after each step)

``reg.attach(opt, mode="grad")`` runs (2) before each step. All four use the same penalty math.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import distributed, kernels
from ._checks import check_step
from .binding import Binding
from .penalties import Penalty, parse
from .penalties.base import check_strengths_fit
from .schedules import Schedule, ScheduleLike, factor_at
from .selection import (
    Among,
    CompiledRule,
    Entry,
    Rule,
    canonical_name,
    compile_rule,
    select_entries,
)

if TYPE_CHECKING:
    from .attach import AttachHandle, Mode
    from .reporting import Report

PenaltyLike = Penalty | str
PenaltyArg = PenaltyLike | Mapping[Any, PenaltyLike]


@dataclasses.dataclass
class Bucket:
    """Parameters that share one penalty, device and dtype: one batched call each."""

    penalty: Penalty
    indices: list[int]  # positions in the regularizer's parameter list
    params: list[nn.Parameter]


def _assign(entries: list[Entry], penalty: PenaltyArg, model: nn.Module) -> list[Penalty | None]:
    """The penalty of each entry: one for all, or the first matching rule of a mapping."""
    if not isinstance(penalty, Mapping):
        return [parse(penalty)] * len(entries)
    if not penalty:
        raise ValueError("penalty mapping is empty; give at least one {rule: penalty} pair")
    assigned: list[Penalty | None] = [None] * len(entries)
    for key, spec in penalty.items():
        rules: list[CompiledRule] = compile_rule(key, model)
        pen = parse(spec)
        hits = [i for i, e in enumerate(entries) if any(r.matches(e) for r in rules)]
        if not hits:
            raise ValueError(
                f"penalty rule {key!r} selects none of the selected parameters: "
                + ", ".join(e.name for e in entries)
            )
        fresh = [i for i in hits if assigned[i] is None]
        if not fresh:
            raise ValueError(f"penalty rule {key!r} is shadowed: earlier rules took all it matches")
        for i in fresh:
            assigned[i] = pen
    return assigned


RESOLUTION = {torch.bfloat16: 2.0**-9, torch.float16: 2.0**-12}


def _gradient_scale(scale: object) -> Tensor | None:
    """The factor the gradients currently carry, as a 0-dim tensor (None: unscaled)."""
    if scale is None:
        return None
    if isinstance(scale, torch.amp.GradScaler):
        if not scale.is_enabled():
            return None
        # the scale tensor itself (get_scale() would sync the device); None before scale()
        return scale._get_scale_async()
    if isinstance(scale, Tensor):
        return scale
    return torch.tensor(check_step(scale, "scale"))


class _PenaltyTotal(torch.autograd.Function):
    """``sum_i R(w_i)`` over a chunk of tensors as one autograd node whose backward is the
    closed-form gradient: no graph over the weights, and only the returned gradients allocated.
    """

    @staticmethod
    def forward(ctx: Any, penalty: Penalty, *tensors: Tensor) -> Tensor:
        ctx.penalty = penalty
        ctx.save_for_backward(*tensors)
        with kernels.eager_only():  # chunks differ call to call: compiling each would not pay
            return penalty._total_value(tensors)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        tensors = ctx.saved_tensors
        return (None, *ctx.penalty._grads(tensors, grad_out.to(tensors[0].device)))


def _loss_chunks(buckets: Sequence[Bucket], params: Sequence[Tensor]) -> list[tuple]:
    """``(penalty, indices)`` runs of at most the largest tensor's size: one autograd node each,
    so backward holds at most one chunk's gradients before they are accumulated into ``.grad``."""
    budget = max(p.numel() for p in params)
    return [
        (b.penalty, [b.indices[k] for k in run])
        for b in buckets
        for run in kernels.pack([params[i].numel() for i in b.indices], budget)
    ]


def _sum(parts: Sequence[Tensor]) -> Tensor:
    """Partial totals of several devices and dtypes, added on the first one's device."""
    dtype = parts[0].dtype
    for p in parts[1:]:
        dtype = torch.promote_types(dtype, p.dtype)
    total = parts[0].to(dtype)
    for p in parts[1:]:
        total = total + p.to(device=total.device, dtype=dtype)
    return total


def _total(buckets: Sequence[tuple[Bucket, Penalty]], tensors: Sequence[Tensor]) -> Tensor:
    return _sum([pen._total_value([tensors[i] for i in b.indices]) for b, pen in buckets])


class Regularizer:
    """A penalty bound to parameters of ``model``.

    ``penalty`` is a `Penalty`, a spec string (``"l1(1e-5) + l2(1e-4)"``), or an ordered mapping
    ``{rule: penalty}`` for per-layer strengths, first matching rule wins (parameters no rule
    matches are not regularized). ``include`` / ``exclude`` / ``among`` choose the parameters as in
    `torchpenalty.select`; by default the weights, not biases or normalization parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        penalty: PenaltyArg,
        *,
        include: Rule | None = None,
        exclude: Rule | None = None,
        among: Among = "weights",
        schedule: ScheduleLike | None = None,
    ) -> None:
        if schedule is not None and not callable(schedule):
            raise TypeError(
                "schedule must be callable (step -> factor), e.g. "
                f"torchpenalty.schedules.cosine(1000); got {type(schedule).__name__}"
            )
        self.schedule = schedule
        self.steps = 0
        self._warned: set[int] = set()
        self.factor = 1.0 if schedule is None else factor_at(schedule, 0)
        selected, self.frozen = select_entries(model, include, exclude, among=among)
        assigned = _assign(selected, penalty, model)
        kept = [(e, p) for e, p in zip(selected, assigned, strict=True) if p is not None]
        for e, p in kept:
            p.check_tensor(e.name, e.param)
            check_strengths_fit(p, e.name, e.param.dtype)
        self._names = [e.name for e, _ in kept]
        self._binding = Binding.of_entries(model, [e for e, _ in kept])
        self._params = self._binding.params
        self._shard_group = distributed.group_of(self._params)  # FSDP2: None when unsharded
        self._set_penalties([p for _, p in kept])
        self._attachments: dict[int, AttachHandle] = {}

    def _refresh(self) -> None:
        """Follow the model: if a regularized name now stands for another tensor
        (``load_state_dict(assign=True)``, ``to_empty()``, ``fully_shard``, a swapped submodule),
        bind the new tensors, so no figure or update ever uses a stale one. Identity checks only;
        skipped while ``torch.compile`` traces (its guards cover parameter identity)."""
        if torch.compiler.is_compiling() or self._binding.intact():
            return
        params = self._binding.rebind()
        for name, param, pen in zip(self._names, params, self._penalties, strict=True):
            pen.check_tensor(name, param)
            check_strengths_fit(pen, name, param.dtype)
        self._params = params
        self._shard_group = distributed.group_of(params)
        self._set_penalties(self._penalties)  # new buckets; attachments rebuild their plans

    # -- schedule ---------------------------------------------------------------------------
    def step(self) -> None:
        """Advance the strength schedule by one step (done by the first attached optimizer)."""
        self.steps += 1
        if self.schedule is not None:
            self.factor = factor_at(self.schedule, self.steps)

    def warn_if_rounded_away(
        self, penalty: Penalty, params: Sequence[Tensor], lr: object, mode: str
    ) -> None:
        """Warn once when a low-precision weight cannot register the step's relative shrink
        (``lr * l2`` below half the format's resolution: bf16 2^-9, fp16 2^-12)."""
        dtype = params[0].dtype
        l2 = getattr(penalty, "l2_coef", 0.0)
        if dtype not in RESOLUTION or not l2 or not isinstance(lr, int | float) or not lr:
            return
        relative = lr * l2 if mode == "decoupled" else lr * l2 / (1 + lr * l2)
        if relative >= RESOLUTION[dtype] or id(params[0]) in self._warned:
            return
        names = [n for n, p in self.named_parameters() if any(p is q for q in params)]
        self._warned.update(id(p) for p in params)
        warnings.warn(
            f"torchpenalty: {mode} step of {penalty!r} at lr={lr:g} shrinks {dtype} weights by "
            f"{relative:.2g} per step, below their resolution ({RESOLUTION[dtype]:.2g}): the "
            f"decay rounds away on {', '.join(names)}. Keep float32 master weights (e.g. train "
            "in float32 under torch.autocast) or raise lr * lam",
            RuntimeWarning,
            stacklevel=3,
        )

    def current(self, penalty: Penalty) -> Penalty:
        """``penalty`` at the schedule's current factor."""
        return penalty if self.factor == 1.0 else self.factor * penalty

    # -- structure --------------------------------------------------------------------------
    def _set_penalties(self, penalties: Sequence[Penalty]) -> None:
        self._penalties = list(penalties)
        groups: dict[tuple, Bucket] = {}
        for i, (param, pen) in enumerate(zip(self._params, self._penalties, strict=True)):
            key = (pen, param.device, param.dtype)
            bucket = groups.setdefault(key, Bucket(pen, [], []))
            bucket.indices.append(i)
            bucket.params.append(param)
        self._buckets = list(groups.values())
        self._chunks = _loss_chunks(self._buckets, self._params)
        self.version = getattr(self, "version", 0) + 1  # attachments rebuild their plans

    @property
    def buckets(self) -> list[Bucket]:
        return self._buckets

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(canonical name, parameter)`` of every regularized parameter (the model's current
        tensors)."""
        self._refresh()
        yield from zip(self._names, self._params, strict=True)

    def named_penalties(self) -> Iterator[tuple[str, Penalty]]:
        """``(canonical name, penalty)`` of every regularized parameter."""
        yield from zip(self._names, self._penalties, strict=True)

    def __len__(self) -> int:
        return len(self._params)

    def _apply_step(
        self, penalty: Penalty, params: Sequence[Tensor], lr: Any, mode: str, nominal_lr: Any = None
    ) -> None:
        """One decoupled (``w -= lr * grad R``) or proximal (``w = prox(w, lr)``) step of
        ``penalty`` at its current strength, on the local shards when sharded. ``nominal_lr`` is
        the group's lr when ``lr`` is an adjusted tensor (for the low-precision warning)."""
        pen = self.current(penalty)
        self.warn_if_rounded_away(pen, params, lr if nominal_lr is None else nominal_lr, mode)
        ws, _, context = self._on_shards(params)
        with context:
            (pen._decay_ if mode == "decoupled" else pen._prox_)(ws, lr)

    def _on_shards(self, params: Sequence[Tensor], grads: Sequence[Tensor] | None = None):
        """Local tensors of ``params`` (and ``grads``) and a context naming what they shard;
        plain tensors and a null context when nothing is sharded."""
        if self._shard_group is None:
            return list(params), grads, contextlib.nullcontext()
        ws = [distributed.local(p) for p in params]
        gs = None if grads is None else [distributed.local(g) for g in grads]
        return ws, gs, distributed.shards(params, ws)

    def check_finite(self) -> None:
        """Raise `FloatingPointError` naming every regularized parameter holding NaN or Inf.

        One pass per tensor (its max-abs norm, NaN/Inf if any element is) and one device sync.
        """
        self._refresh()
        with torch.no_grad():
            if self._shard_group is not None:
                bad = [i for i, b in enumerate(distributed.global_nonfinite(self)) if b]
            else:
                flags = [
                    torch.isfinite(torch.stack(torch._foreach_norm(b.params, float("inf"))))
                    for b in self._buckets
                ]
                ok = torch.cat([f.to(flags[0].device) for f in flags]).tolist()  # the one sync
                order = [i for b in self._buckets for i in b.indices]
                bad = sorted(i for i, fine in zip(order, ok, strict=True) if not fine)
        if bad:
            raise FloatingPointError(
                "non-finite values (NaN or Inf) in regularized parameters: "
                + ", ".join(self._names[i] for i in bad)
                + "; lower the learning rate, check the data and loss, or keep float32 master "
                "weights for low-precision training"
            )

    # -- 1. loss ----------------------------------------------------------------------------
    def __call__(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """The total penalty, differentiable: ``loss = data_loss + reg()``.

        ``params`` optionally maps canonical names to tensors to evaluate instead of the bound
        parameters (``torch.func.functional_call`` style); other keys are ignored.
        """
        self._refresh()
        if self._shard_group is not None:
            if params is not None:
                raise ValueError("params= is not supported on FSDP2-sharded parameters")
            return _sum(
                [
                    distributed.ShardedPenaltyTotal.apply(
                        self.current(b.penalty), self._shard_group, *b.params
                    )
                    for b in self._buckets
                ]
            )
        tensors = self._params if params is None else self._lookup(params)
        return _sum(
            [
                _PenaltyTotal.apply(self.current(pen), *(tensors[i] for i in idx))
                for pen, idx in self._chunks
            ]
        )

    def _lookup(self, params: Mapping[str, Tensor]) -> list[Tensor]:
        canonical: dict[str, Tensor] = {}
        for key, tensor in params.items():
            name = canonical_name(key)
            canonical.setdefault(name, tensor)
            # Names taken from a DDP-wrapped model carry "module."; a real submodule may too.
            canonical.setdefault(name.removeprefix("module."), tensor)
        missing = [n for n in self._names if n not in canonical]
        if missing:
            raise ValueError(f"params is missing regularized parameters: {', '.join(missing)}")
        return [canonical[n] for n in self._names]

    def value(self) -> Tensor:
        """The total penalty as a 0-dim tensor: no autograd, no device sync."""
        self._refresh()
        with torch.no_grad():
            if self._shard_group is not None:
                return distributed.global_value(self)
            return _total([(b, self.current(b.penalty)) for b in self._buckets], self._params)

    # -- 2. gradient ------------------------------------------------------------------------
    def add_to_grad_(self, scale: float | Tensor | torch.amp.GradScaler | None = None) -> None:
        """``p.grad += grad R(p)`` for every regularized ``p`` in place (``.grad`` made if None).

        Gradients are edited in place, never replaced, so DDP bucket views stay valid. With mixed
        precision, call it after ``scaler.unscale_(optimizer)``, or before with
        ``scale=scaler`` (the gradients are still scaled: the penalty gradient is scaled alike,
        without a device sync); ``attach(optimizer, mode="grad")`` does the right thing by itself.
        Optimizers with ``maximize=True`` negate the gradient: attach them (mode ``"grad"``),
        which subtracts the penalty gradient in their groups, as ``weight_decay`` behaves there.
        """
        self._refresh()
        scale = _gradient_scale(scale)
        with torch.no_grad():
            for b in self._buckets:
                self._add_grad(b.penalty, b.indices, scale)

    def _add_grad(self, penalty: Penalty, indices: Sequence[int], scale: Tensor | None) -> None:
        """``g += scale * grad R(w)`` for the parameters at ``indices`` (one bucket or part)."""
        grads = [self._dense_grad(i) for i in indices]
        ws, gs, context = self._on_shards([self._params[i] for i in indices], grads)
        with context:
            self.current(penalty)._add_grad_(ws, gs, scale)

    def _dense_grad(self, i: int) -> Tensor:
        p = self._params[i]
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        elif p.grad.layout != torch.strided:
            raise TypeError(
                f"parameter {self._names[i]!r} has a {p.grad.layout} gradient; gradient mode needs "
                "dense gradients (e.g. nn.Embedding(sparse=False)), or use mode='decoupled' or "
                "'proximal', which do not touch gradients"
            )
        return p.grad

    # -- 3./4. decoupled and proximal steps ------------------------------------------------------
    def decay_(self, lr: float | Tensor) -> None:
        """``w -= lr * grad R(w)`` for every regularized ``w`` (a decoupled step), in place."""
        lr = check_step(lr, "lr")
        self._refresh()
        with torch.no_grad():
            for b in self._buckets:
                self._apply_step(b.penalty, b.params, lr, "decoupled")

    def prox_(self, step: float | Tensor) -> None:
        """``w = prox(w, step)`` for every regularized ``w``, in place."""
        step = check_step(step, "step")
        self._refresh()
        with torch.no_grad():
            for b in self._buckets:
                b.penalty.check_prox()
                self._apply_step(b.penalty, b.params, step, "proximal")

    # -- optimizer hooks: the same steps at every optimizer.step() -----------------------------
    def attach(
        self, optimizer: torch.optim.Optimizer, mode: Mode, *, check_finite: bool = False
    ) -> AttachHandle:
        """Apply the penalty at every ``optimizer.step()`` through its step hooks.

        ``mode="grad"``: ``add_to_grad_()`` before the step. ``"decoupled"``: ``w -= lr *
        grad R(w)`` before the step, with the ``lr`` of the parameter's group (AdamW-style for
        any optimizer and penalty). ``"proximal"``: ``w = prox(w, lr)`` after the step (exact
        zeros for L1). Returns a handle with ``.remove()``. With ``check_finite=True``,
        `check_finite` runs after every step (one device sync per step).
        """
        from .attach import attach

        self._refresh()
        return attach(self, optimizer, mode, check_finite=check_finite)

    # -- reporting and state ----------------------------------------------------------------
    def report(self) -> Report:
        """One row per parameter: name, shape, penalty, value, L2 norm, fraction of exact zeros.

        Synchronizes the device once.
        """
        self._refresh()
        if self._shard_group is not None:
            return distributed.global_report(self)
        from .reporting import report

        return report(self)

    def state_dict(self) -> dict[str, Any]:
        """Penalties (unscaled), the schedule's step and, for built-in schedules, its config."""
        if self.schedule is None:
            schedule = None
        elif isinstance(self.schedule, Schedule):
            schedule = self.schedule.get_config()
        else:
            schedule = "callable"
        return {
            "version": 1,
            "penalties": {n: p.get_config() for n, p in self.named_penalties()},
            "steps": self.steps,
            "schedule": schedule,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the penalties saved by `state_dict` (the same parameters must be selected)."""
        if not isinstance(state, Mapping) or "penalties" not in state:
            raise ValueError("state must be a mapping with a 'penalties' entry, from state_dict()")
        saved = state["penalties"]
        if list(saved) != self._names:
            raise ValueError(
                "state_dict regularizes other parameters: saved "
                f"{sorted(set(saved) - set(self._names))} not here, "
                f"{sorted(set(self._names) - set(saved))} missing"
            )
        penalties = [Penalty.from_config(saved[n]) for n in self._names]
        for name, param, pen in zip(self._names, self._params, penalties, strict=True):
            pen.check_tensor(name, param)
            check_strengths_fit(pen, name, param.dtype)
        self._set_penalties(penalties)
        schedule = state.get("schedule")
        if schedule == "callable":
            if self.schedule is None:
                raise ValueError(
                    "this state was saved with a callable schedule, which cannot be stored: "
                    "pass the same schedule= to the Regularizer before load_state_dict"
                )
        elif schedule is not None:
            self.schedule = Schedule.from_config(schedule)
        self.steps = int(state.get("steps", 0))
        self.factor = 1.0 if self.schedule is None else factor_at(self.schedule, self.steps)

    def __repr__(self) -> str:
        lines = ["Regularizer("]
        for b in self._buckets:
            items = ", ".join(f"{self._names[i]} {tuple(self._params[i].shape)}" for i in b.indices)
            lines.append(f"  {b.penalty!r}: {items}")
        if self.frozen:
            lines.append(f"  skipped (frozen): {', '.join(self.frozen)}")
        if self.schedule is not None:
            lines.append(f"  schedule: {self.schedule!r} at step {self.steps} (x{self.factor:.4g})")
        lines.append(")")
        return "\n".join(lines)
