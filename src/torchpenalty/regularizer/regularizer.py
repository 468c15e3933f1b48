"""`Regularizer`: a penalty bound to the selected parameters of a model, applied four ways.

1. loss:       ``loss = data_loss + reg()``            (differentiable; reported in the loss)
2. gradient:   ``reg.add_to_grad_()`` after backward   (``g += grad R(w)``, no autograd graph)
3. decoupled:  ``reg.attach(opt, mode="decoupled")``   (``w -= lr * grad R(w)`` before each step)
4. proximal:   ``reg.attach(opt, mode="proximal")``    (``w = prox(w, lr)`` after each step)

``reg.attach(opt, mode="grad")`` runs (2) before each step. All four use the same penalty math,
through the penalties' fast path (`Penalty.total_value`, ``add_grad_``, ``decay_``, ``prox_``),
called once per bucket of parameters that share a penalty, a device and a dtype. The regularizer
holds its `Sharding` (FSDP2 shards, or the world of one) and its `Kernels` (backend and compile
state) and passes both explicitly; value, report and check_finite have one path, sharded or not.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_step
from ..distributed import Sharding, sum_parts
from ..kernels import Backend, Kernels, get_backend, pack
from ..penalties import Penalty, combine, parse
from ..penalties.base import check_strengths_fit
from ..penalties.batch import Batch
from ..penalties.centered import Reference
from ..penalties.members import Members
from ..selection import (
    Among,
    CompiledRule,
    Entry,
    Rule,
    canonical_name,
    compile_rule,
    select_entries,
    unwrap,
)
from ..sparsity.target import TargetController, TargetSparsity
from .amp import RESOLUTION, gradient_scale
from .attach import AttachHandle, Mode, attach
from .binding import Binding
from .loss import PenaltyTotal, grad_accumulators
from .references import capture
from .reporting import Report, build_report
from .schedules import Schedule, ScheduleLike, factor_at
from .stacked import members_of

#: the layout of `Regularizer.state_dict`; `load_state_dict` reads this one only
STATE_VERSION = 1
PenaltyLike = Penalty | str
PenaltyArg = PenaltyLike | Mapping[Any, PenaltyLike]


@dataclasses.dataclass
class _Bucket:
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


def _per_member(
    model: nn.Module,
    assigned: list[Penalty | None],
    strengths: Sequence[float] | Tensor,
    target: TargetSparsity | None,
) -> list[Penalty | None]:
    """Each assigned penalty at every member's strength (`Members.scaled`)."""
    members = members_of(model)
    if members is None:
        raise ValueError(
            "strengths= needs a Stacked model (torchpenalty.Stacked(models)): one strength per "
            f"member; got a {type(model).__name__}"
        )
    count = len(strengths)
    if count != members:
        raise ValueError(f"strengths holds {count} values for a stack of {members} members")
    if target is not None:
        raise ValueError("a TargetSparsity is not supported per member: train members alone")
    return [None if p is None else Members.scaled(p, strengths) for p in assigned]


def _member_entry(entry: tuple, member: int) -> tuple:
    """A report entry ``(name, param, penalty, reference)`` cut to one member of a stack."""
    name, param, pen, ref = entry
    if not isinstance(pen, Members):
        raise ValueError(
            "member= reports one member of a Stacked model's regularizer (strengths=); "
            f"{name!r} has no members"
        )
    if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < pen.members:
        raise ValueError(f"member must be a whole number in [0, {pen.members}), got {member!r}")
    return name, param.detach()[member], pen.terms[member], ref


def _restored(saved: object, fresh: Tensor, name: str) -> Tensor:
    """A reference from a state dict, laid out like the captured one (``fresh`` if none)."""
    if saved is None:
        return fresh
    if not isinstance(saved, Tensor) or tuple(saved.shape) != tuple(fresh.shape):
        raise ValueError(
            f"state['references'][{name!r}] must be a tensor of shape {tuple(fresh.shape)}"
        )
    with torch.no_grad():
        fresh.copy_(saved)
    return fresh


def _check_applies(
    names: Sequence[str], params: Sequence[Tensor], penalties: Sequence[Penalty]
) -> None:
    """Raise `ValueError` naming the first parameter its penalty cannot apply to (its shape, or a
    strength its dtype cannot hold)."""
    for name, param, pen in zip(names, params, penalties, strict=True):
        pen.check_tensor(name, param)
        check_strengths_fit(pen, name, param.dtype)


def _loss_chunks(buckets: Sequence[_Bucket], params: Sequence[Tensor]) -> list[tuple]:
    """``(penalty, indices)`` runs of at most the largest tensor's size: one autograd node each,
    so backward holds at most one chunk's gradients before they are accumulated into ``.grad``."""
    budget = max(p.numel() for p in params)
    return [
        (b.penalty, [b.indices[k] for k in run])
        for b in buckets
        for run in pack([params[i].numel() for i in b.indices], budget)
    ]


class Regularizer:
    """A penalty bound to parameters of ``model``: ``R(model) = sum_i R_i(w_i)``.

    Args:
        model: the model (DDP, DataParallel and ``torch.compile`` wrappers are looked through).
        penalty: a `Penalty`, a spec string (``"l1(1e-5) + l2(1e-4)"``), or an ordered mapping
            ``{rule: penalty}`` for per-layer strengths, first matching rule wins (parameters no
            rule matches are not regularized).
        include: rules selecting parameters, as in `torchpenalty.select`.
        exclude: rules removing parameters from the selection.
        among: ``"weights"`` (default: not biases or normalization parameters), ``"all"``, or a
            predicate ``(name, param, module) -> bool`` (the set the rules start from).
        schedule: a callable ``step -> factor`` multiplying every strength (see
            `torchpenalty.schedules`).
        backend: this regularizer's kernels, ``"auto"``, ``"eager"`` or ``"compile"``; by default
            `torchpenalty.kernels.get_backend()` at construction.
        target: a `TargetSparsity`: attached in proximal mode, the strength is raised until
            that fraction of units, groups or weights is exactly zero, then the pattern is
            frozen and the penalty stops (see `torchpenalty.target`); ``reg.target`` is its
            state.
        strengths: for a `Stacked` model of ``K`` members, ``K`` factors: member ``k`` is
            regularized by ``strengths[k]`` times its penalty, exactly as if trained alone
            (`torchpenalty.penalties.members.Members`).

    Raises:
        ValueError: a rule selects nothing, a penalty cannot apply to a parameter (``cols`` of a
            vector, a strength its dtype cannot hold), or nothing is selected.
        TypeError: ``schedule`` is not callable.
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
        backend: Backend | None = None,
        target: TargetSparsity | None = None,
        strengths: Sequence[float] | Tensor | None = None,
    ) -> None:
        if schedule is not None and not callable(schedule):
            raise TypeError(
                "schedule must be callable (step -> factor), e.g. "
                f"torchpenalty.schedules.cosine(1000); got {type(schedule).__name__}"
            )
        self._kernels = Kernels(get_backend() if backend is None else backend)
        self.schedule = schedule
        self.steps = 0
        self._warned: set[int] = set()
        self.factor = 1.0 if schedule is None else factor_at(schedule, 0)
        selected, self.frozen = select_entries(model, include, exclude, among=among)
        assigned = _assign(selected, penalty, model)
        if strengths is not None:
            assigned = _per_member(model, assigned, strengths, target)
        kept = [(e, p) for e, p in zip(selected, assigned, strict=True) if p is not None]
        self._names = [e.name for e, _ in kept]
        _check_applies(self._names, [e.param for e, _ in kept], [p for _, p in kept])
        self._binding = Binding.of_entries(model, [e for e, _ in kept])
        self._params = self._binding.params
        self._sharding = Sharding.of(self._params)
        self._version = 0
        # w0 of centered penalties (L2-SP): one copy, taken before any step
        self._references = capture(self._names, self._params, [p for _, p in kept])
        self._set_penalties([p for _, p in kept])
        self._attachments: dict[int, AttachHandle] = {}
        self.target: TargetController | None = None
        if target is not None:
            self.target = TargetController(
                target, unwrap(model), self._names, self._params, self._penalties, self._kernels
            )

    @property
    def backend(self) -> str:
        """This regularizer's kernel backend: ``"auto"``, ``"eager"`` or ``"compile"``."""
        return self._kernels.backend

    # -- what `attach` uses (its `Attachable` protocol) ----------------------------------------
    @property
    def attachments(self) -> dict[int, AttachHandle]:
        """The optimizers this regularizer is attached to: ``id(optimizer) -> AttachHandle``."""
        return self._attachments

    @property
    def version(self) -> int:
        """Bumped whenever the buckets change (penalties loaded, parameters rebound)."""
        return self._version

    def buckets(self) -> Sequence[_Bucket]:
        """Parameters sharing a penalty, device and dtype: ``(penalty, indices, params)``."""
        return self._buckets

    @property
    def sharding(self) -> Sharding:
        """How the regularized parameters are split over processes (FSDP2), or not."""
        return self._sharding

    def refresh(self) -> None:
        """Follow the model (every public method does): if a regularized name now stands for
        another tensor (``load_state_dict(assign=True)``, ``to_empty()``, ``fully_shard``, a
        swapped submodule), bind the new tensors, so no figure or update ever uses a stale one.
        Identity checks only; skipped while ``torch.compile`` traces (its guards cover parameter
        identity)."""
        if torch.compiler.is_compiling() or self._binding.intact():
            return
        params = self._binding.rebind()
        _check_applies(self._names, params, self._penalties)
        self._params = params
        self._sharding = Sharding.of(params)
        if self.target is not None:
            self.target.rebind(params)
        self._set_penalties(self._penalties)  # new buckets; attachments rebuild their plans

    # -- schedule ---------------------------------------------------------------------------
    def step(self) -> None:
        """Advance the strength schedule by one step (done by the first attached optimizer)."""
        self.set_step(self.steps + 1)

    def set_step(self, step: int) -> None:
        """Move the schedule to ``step`` (a resumed run whose framework counts the steps)."""
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be an integer >= 0, got {step!r}")
        self.steps = step
        if self.schedule is not None:
            self.factor = factor_at(self.schedule, step)

    def _warn_if_rounded_away(
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

    def _current(self, penalty: Penalty) -> Penalty:
        """``penalty`` at the schedule's current factor (and a target's strength multiplier)."""
        factor = self.factor if self.target is None else self.factor * self.target.strength()
        return penalty if factor == 1.0 else factor * penalty

    # -- structure --------------------------------------------------------------------------
    def _set_penalties(self, penalties: Sequence[Penalty]) -> None:
        self._penalties = list(penalties)
        groups: dict[tuple, _Bucket] = {}
        for i, (param, pen) in enumerate(zip(self._params, self._penalties, strict=True)):
            key = (pen, param.device, param.dtype)
            bucket = groups.setdefault(key, _Bucket(pen, [], []))
            bucket.indices.append(i)
            bucket.params.append(param)
        self._buckets = list(groups.values())
        self._reference_of = {
            id(p): r for p, r in zip(self._params, self._references, strict=True) if r is not None
        }
        self._chunks = _loss_chunks(self._buckets, self._params)
        self._bucket_runs = [(b.penalty, b.indices) for b in self._buckets]
        sharded = self._sharding.sharded
        if not sharded:
            for b in self._buckets:
                b.penalty.prepare(tuple(b.params), self._batch(b.params))
        self._accumulators = (
            [None] * len(self._params) if sharded else grad_accumulators(self._params)
        )
        self._version += 1  # attachments rebuild their plans

    def _batch(self, params: Sequence[Tensor], kernels: Kernels | None = None) -> Batch:
        batch = Batch(self._kernels if kernels is None else kernels, self._sharding.specs(params))
        if not self._reference_of:
            return batch
        refs = [self._reference_of.get(id(p)) for p in params]
        centers = tuple(None if r is None else self._sharding.locals([r])[0] for r in refs)
        return dataclasses.replace(batch, centers=centers)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """``(canonical name, parameter)`` of every regularized parameter (the model's current
        tensors)."""
        self.refresh()
        yield from zip(self._names, self._params, strict=True)

    def named_penalties(self) -> Iterator[tuple[str, Penalty]]:
        """``(canonical name, penalty)`` of every regularized parameter."""
        yield from zip(self._names, self._penalties, strict=True)

    def __len__(self) -> int:
        return len(self._params)

    def apply_step_of(
        self, penalty: Penalty, params: Sequence[Tensor], lr: Any, mode: str, nominal_lr: Any = None
    ) -> None:
        """One decoupled (``w -= lr * grad R``) or proximal (``w = prox(w, lr)``) step of
        ``penalty`` at its current strength, on the local shards when sharded. ``nominal_lr`` is
        the group's lr when ``lr`` is an adjusted tensor (for the low-precision warning)."""
        if self.target is not None and self.target.frozen and not penalty.constraints():
            return  # the target's pattern is frozen: no penalty any more
        pen = self._current(penalty)
        self._warn_if_rounded_away(pen, params, lr if nominal_lr is None else nominal_lr, mode)
        ws, batch = self._sharding.locals(params), self._batch(params)
        (pen.decay_ if mode == "decoupled" else pen.prox_)(ws, lr, batch)

    def has_constraints(self) -> bool:
        """Whether any penalty has constraints (projected after every optimizer step)."""
        return any(p.constraints() for p in self._penalties)

    def project_(self) -> None:
        """Project every regularized parameter onto its penalty's constraints (`MaxNorm`,
        `UnitNorm`, `MinMaxNorm`, `NonNeg`): what an attached regularizer does after every
        optimizer step. Penalties without constraints are left alone; no device sync."""
        self.refresh()
        with torch.no_grad():
            for b in self._buckets:
                if b.penalty.constraints():
                    ws = self._sharding.locals(b.params)
                    b.penalty.project_(ws, self._batch(b.params))

    def check_finite(self) -> None:
        """Check that no regularized parameter holds NaN or Inf.

        One pass per tensor (its max-abs norm), one reduction over processes when sharded, and
        one device sync.

        Raises:
            FloatingPointError: naming every parameter holding NaN or Inf.
        """
        self.refresh()
        flags: list[Tensor] = []
        with torch.no_grad():
            for b in self._buckets:
                ws = [w for w in self._sharding.locals(b.params) if w.numel()]
                amax = iter(torch._foreach_norm(ws, float("inf")) if ws else ())
                for w in self._sharding.locals(b.params):
                    bad = (
                        ~torch.isfinite(next(amax))
                        if w.numel()
                        else torch.zeros((), dtype=torch.bool)
                    )
                    flags.append(bad.to(flags[0].device if flags else w.device, torch.float64))
            order = [i for b in self._buckets for i in b.indices]
            counts = self._sharding.reduce(torch.stack(flags)).tolist()  # the one sync
        bad_names = [self._names[i] for i, c in sorted(zip(order, counts, strict=True)) if c > 0]
        if bad_names:
            raise FloatingPointError(
                "non-finite values (NaN or Inf) in regularized parameters: "
                + ", ".join(bad_names)
                + "; lower the learning rate, check the data and loss, or keep float32 master "
                "weights for low-precision training"
            )

    # -- 1. loss ----------------------------------------------------------------------------
    def __call__(self, params: Mapping[str, Tensor] | None = None) -> Tensor:
        """The total penalty ``sum_i R_i(w_i)``, differentiable: ``loss = data_loss + reg()``.

        Each chunk of tensors is one autograd node whose backward is the closed-form gradient
        (no graph over the weights).

        Args:
            params: optionally, canonical names -> tensors to evaluate instead of the bound
                parameters (``torch.func.functional_call`` style); other keys are ignored.

        Returns:
            A 0-dim tensor in loss units (float32 or wider).
        """
        self.refresh()
        if self.target is not None:
            raise ValueError(
                "a Regularizer with a target runs through attach(optimizer, mode='proximal'), "
                "where it counts the zeros after every step; it is not added to a loss"
            )
        if params is not None and self._sharding.sharded:
            raise ValueError("params= is not supported on FSDP2-sharded parameters")
        tensors = self._params if params is None else self._lookup(params)
        # Backward may add into .grad itself only for the bound parameters, outside compiled
        # code. Where every .grad exists already it will (see `penalty_total`): then one node per
        # bucket, as it returns no gradient to bound; otherwise chunks bound what it returns.
        in_place = params is None and not torch.compiler.is_compiling()
        whole = in_place and all(p.grad is not None for p in self._params)
        return sum_parts(
            [
                PenaltyTotal.apply(
                    self._current(pen),
                    self._sharding,
                    self._batch([self._params[i] for i in idx]),
                    [self._accumulators[i] for i in idx] if in_place else None,
                    *(tensors[i] for i in idx),
                )
                for pen, idx in (self._bucket_runs if whole else self._chunks)
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
        """The total penalty ``sum_i R_i(w_i)`` without autograd.

        Returns:
            A 0-dim tensor in loss units, on the parameters' device: no device sync (one
            all-reduce over processes when sharded).
        """
        self.refresh()
        with torch.no_grad():
            return self._sharding.total(
                [
                    self._current(b.penalty).total_value(
                        self._sharding.locals(b.params), self._batch(b.params)
                    )
                    for b in self._buckets
                ]
            )

    def zero_fraction(self) -> Tensor:
        """Exact zeros over all regularized elements, as a 0-dim float64 tensor on the
        parameters' device: no device sync (one all-reduce over processes when sharded), so it
        can be logged every step; `report` gives the same figure per tensor."""
        self.refresh()
        with torch.no_grad():
            local = self._sharding.locals(self._params)
            device = local[0].device
            zeros = [(w == 0).sum().to(device) for w in local]
            count = self._sharding.total([torch.stack(zeros).sum()])  # int64: exact
        return count.double() / sum(p.numel() for p in self._params)

    # -- 2. gradient ------------------------------------------------------------------------
    def add_to_grad_(self, scale: float | Tensor | torch.amp.GradScaler | None = None) -> None:
        """``p.grad += scale * grad R(p)`` for every regularized ``p``, in place.

        ``.grad`` is created when None. Gradients are edited in place, never replaced, so DDP
        bucket views stay valid. Optimizers with ``maximize=True`` negate the gradient: attach
        them (mode ``"grad"``), which subtracts the penalty gradient in their groups, as
        ``weight_decay`` behaves there.

        Args:
            scale: the factor the gradients carry: a `torch.amp.GradScaler` (call this before
                ``scaler.unscale_``; no device sync), a number or a 0-dim tensor; None after
                unscaling. ``attach(optimizer, mode="grad")`` does the right thing by itself.

        Raises:
            TypeError: a parameter has a sparse gradient.
        """
        self.refresh()
        scale = gradient_scale(scale)
        with torch.no_grad():
            for b in self._buckets:
                self.add_grad_of(b.penalty, b.indices, scale)

    def add_grad_of(self, penalty: Penalty, indices: Sequence[int], scale: Tensor | None) -> None:
        """``g += scale * grad R(w)`` for the parameters at ``indices`` (one bucket or part)."""
        params = [self._params[i] for i in indices]
        grads = [self._dense_grad(i) for i in indices]
        ws, gs = self._sharding.locals(params), self._sharding.locals(grads)
        self._current(penalty).add_grad_(ws, gs, scale, self._batch(params))

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
        """One decoupled step ``w -= lr * grad R(w)`` for every regularized ``w``, in place.

        Args:
            lr: the step (the learning rate), a number >= 0 or a 0-dim tensor (not synced).
        """
        lr = check_step(lr, "lr")
        self.refresh()
        with torch.no_grad():
            for b in self._buckets:
                self.apply_step_of(b.penalty, b.params, lr, "decoupled")

    def prox_(self, step: float | Tensor) -> None:
        """One proximal step ``w = prox_{step * R}(w)`` for every regularized ``w``, in place.

        Args:
            step: the step (the learning rate), a number >= 0 or a 0-dim tensor (not synced).

        Raises:
            ValueError: a penalty has no closed-form prox.
        """
        step = check_step(step, "step")
        self.refresh()
        with torch.no_grad():
            for b in self._buckets:
                b.penalty.check_prox()
                self.apply_step_of(b.penalty, b.params, step, "proximal")

    # -- optimizer hooks: the same steps at every optimizer.step() -----------------------------
    def attach(
        self,
        optimizer: torch.optim.Optimizer,
        mode: Mode | str,
        *,
        check_finite: bool = False,
        scale_by_lr: bool = True,
        partial: bool = False,
    ) -> AttachHandle:
        """Apply the penalty at every ``optimizer.step()`` through its step hooks.

        Exact under ``step(closure)`` too (LBFGS, Lightning): the closure is wrapped so that the
        penalty lands after it computed the gradients.

        Args:
            optimizer: any `torch.optim.Optimizer` holding every regularized parameter.
            mode: ``"grad"``: ``g += grad R(w)`` before the step (``L2`` is ``weight_decay``).
                ``"decoupled"``: ``w -= lr * grad R(w)`` before the step, with the ``lr`` of the
                parameter's group (``L2`` is AdamW's decay). ``"proximal"``: ``w = prox(w, lr)``
                after the step (exact zeros for L1). Constraints (`MaxNorm`, ...) are
                projected after every step in each mode; ``"loss"`` attaches only that
                projection (for a penalty with constraints), the loss still adds ``reg()``.
            check_finite: run `check_finite` after every step (one device sync per step).
            scale_by_lr: decoupled mode only. True (AdamW's convention): the step is
                ``lr * grad R(w)``, with ``R`` at the schedule's current factor. False
                (Loshchilov & Hutter's): ``grad R(w)`` alone, so ``w -= lam * factor(t) * w`` for
                ``L2(lam)``, whatever the learning rate: the decay then follows the
                regularizer's own schedule, not the optimizer's lr (see the modes guide).
            partial: apply the penalty only to the regularized parameters this optimizer holds
                (several optimizers, each attached, such as a GAN's two); by default every
                regularized parameter must be in it.

        Returns:
            An `AttachHandle`; ``.remove()`` detaches (also a context manager).

        Raises:
            ValueError: an unknown mode, parameters missing from the optimizer, attaching twice,
                a mode the optimizer cannot make exact (decoupled/proximal on LBFGS).
        """
        self.refresh()
        return attach(
            self,
            optimizer,
            mode,
            check_finite=check_finite,
            scale_by_lr=scale_by_lr,
            partial=partial,
        )

    # -- reporting and state ----------------------------------------------------------------
    def report(self, member: int | None = None) -> Report:
        """Per regularized parameter: its penalty value, L2 norm and exact zeros.

        Args:
            member: for a regularizer of a `Stacked` model (``strengths=``), the report of
                member ``member`` alone: its slice of every parameter with its own penalty, as
                if it were trained alone; None (default): all members together.

        Returns:
            A `Report`: one `ParameterReport` per parameter (value in loss units, ``||w||_2``,
            fraction of exact zeros, all-zero groups and all-zero dim-0 units). Synchronizes the
            device once (and one all-reduce when sharded).

        Raises:
            ValueError: ``member`` on a regularizer without members, or out of range.
        """
        self.refresh()
        entries = [
            (name, param, self._current(pen), ref)
            for name, param, pen, ref in zip(
                self._names, self._params, self._penalties, self._references, strict=True
            )
        ]
        if member is not None:
            entries = [_member_entry(entry, member) for entry in entries]
        report = build_report(entries, self._sharding)
        if self.target is not None:
            report.target = self.target.status()
        return report

    def state_dict(self) -> dict[str, Any]:
        """Penalties (unscaled), the schedule's step and, for built-in schedules, its config, the
        reference weights of centered penalties (tensors: save with ``torch.save``), and a
        target's state; ``version`` is `STATE_VERSION`."""
        schedule: dict[str, Any] | str | None
        if self.schedule is None:
            schedule = None
        elif isinstance(self.schedule, Schedule):
            schedule = self.schedule.get_config()
        else:
            schedule = "callable"
        return {
            "version": STATE_VERSION,
            "penalties": {n: _saved_config(p) for n, p in self.named_penalties()},
            "steps": self.steps,
            "schedule": schedule,
            # w0 of centered penalties (L2-SP), by name
            "references": {
                n: r for n, r in zip(self._names, self._references, strict=True) if r is not None
            },
            **({} if self.target is None else {"target": self.target.state_dict()}),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what `state_dict` saved (the same parameters must be selected). Atomic:
        everything is read and checked first, and a state that fails any check leaves the
        regularizer as it was.

        Raises:
            ValueError: another ``version``, other parameters, a malformed penalty, reference,
                schedule, step or target.
        """
        if not isinstance(state, Mapping) or "penalties" not in state:
            raise ValueError("state must be a mapping with a 'penalties' entry, from state_dict()")
        version = state.get("version")
        if version != STATE_VERSION:
            raise ValueError(
                f"state_dict version {version!r} is not one this torchpenalty reads "
                f"({STATE_VERSION}); save it again with this version's state_dict()"
            )
        saved = state["penalties"]
        if not isinstance(saved, Mapping) or list(saved) != self._names:
            names = list(saved) if isinstance(saved, Mapping) else []
            raise ValueError(
                "state_dict regularizes other parameters: saved "
                f"{sorted(set(names) - set(self._names))} not here, "
                f"{sorted(set(self._names) - set(names))} missing"
            )
        penalties = [Penalty.from_config(saved[n]) for n in self._names]
        _check_applies(self._names, self._params, penalties)
        saved_refs = state.get("references") or {}
        if not isinstance(saved_refs, Mapping):
            raise ValueError("state['references'] must map parameter names to tensors")
        fresh = capture(self._names, self._params, penalties)  # for centers saved without w0
        references = [
            None if f is None else _restored(saved_refs.get(n), f, n)
            for n, f in zip(self._names, fresh, strict=True)
        ]
        schedule_config = state.get("schedule")
        schedule = self.schedule
        if schedule_config == "callable":
            if self.schedule is None:
                raise ValueError(
                    "this state was saved with a callable schedule, which cannot be stored: "
                    "pass the same schedule= to the Regularizer before load_state_dict"
                )
        elif schedule_config is not None:
            schedule = Schedule.from_config(schedule_config)
        steps = state.get("steps", 0)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"state['steps'] must be an integer >= 0, got {steps!r}")
        factor = 1.0 if schedule is None else factor_at(schedule, steps)
        if (self.target is None) != ("target" not in state):
            raise ValueError(
                "state_dict and regularizer disagree on a target: "
                + ("the state has one" if self.target is None else "the state has none")
            )
        if self.target is not None:  # atomic itself: the last check, then the first change
            self.target.load_state_dict(state["target"])
        self._references = references
        self._set_penalties(penalties)
        self.schedule, self.steps, self.factor = schedule, steps, factor

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


def _saved_config(penalty: Penalty) -> dict[str, Any]:
    """A penalty's config for `Regularizer.state_dict`. A penalty centered on reference tensors
    (``center={name: w0}``) has no config of its own; the state saves its w0 under
    ``references``, so it is saved as centered on ``"init"``, which `load_state_dict` restores
    with those saved w0: the same penalty of the same weights."""
    terms = penalty.summands()
    if not any(isinstance(getattr(t, "center", None), Reference) for t in terms):
        return penalty.get_config()
    saved = [
        dataclasses.replace(t, center="init")  # type: ignore[type-var]
        if isinstance(getattr(t, "center", None), Reference)
        else t
        for t in terms
    ]
    return combine(*saved).get_config()
