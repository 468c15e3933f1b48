"""Applying a `Regularizer` through an optimizer's step hooks (modes grad, decoupled, proximal).

Hooks leave the training loop unchanged and work with any `torch.optim.Optimizer`, third-party
ones included. ``decoupled`` and ``proximal`` read the ``lr`` of each parameter's group at every
step, so learning-rate schedules are followed (the prox threshold is ``lr * lam``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..penalties import Penalty
from .amp import gradient_scale


class Bucket(Protocol):
    """Parameters sharing one penalty (and device and dtype)."""

    penalty: Penalty
    indices: list[int]  # positions in the regularizer's parameter list
    params: list[nn.Parameter]


class Attachable(Protocol):
    """All that `attach` uses of a regularizer (`Regularizer` implements it): its parameters
    in buckets, the two updates, and the schedule, target and projections around a step."""

    @property
    def schedule(self) -> object: ...  # a step -> factor callable, or None

    target: Any  # a TargetController (its after_step), or None

    @property
    def attachments(self) -> dict[int, AttachHandle]: ...

    @property
    def version(self) -> int: ...

    def refresh(self) -> None: ...

    def buckets(self) -> Sequence[Bucket]: ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def has_constraints(self) -> bool: ...

    def add_grad_of(self, penalty: Penalty, indices: Sequence[int], scale: Tensor | None) -> None:
        """``g += scale * grad R(w)`` for the parameters at ``indices``."""

    def apply_step_of(
        self, penalty: Penalty, params: Sequence[Tensor], lr: Any, mode: str, nominal_lr: Any = None
    ) -> None:
        """One decoupled or proximal step of ``penalty`` on ``params``."""

    def value(self) -> Tensor: ...

    def project_(self) -> None: ...

    def check_finite(self) -> None: ...

    def step(self) -> None: ...


#: the four ways to apply a penalty; every mode but "loss" is applied through `attach`
ALL_MODES: tuple[str, ...] = ("loss", "grad", "decoupled", "proximal")
Mode = Literal["grad", "decoupled", "proximal"]
MODES: tuple[str, ...] = ALL_MODES[1:]


@dataclasses.dataclass
class _Slice:
    """Parameters sharing a penalty, an optimizer param group, a device and a dtype."""

    penalty: Penalty
    group: dict[str, Any]
    indices: list[int]  # positions in the regularizer's parameter list
    params: list[nn.Parameter]


@dataclasses.dataclass
class _PlanState:
    """An attachment's plan and the regularizer version it was made for."""

    version: int
    plan: list[_Slice]


class AttachHandle:
    """What `Regularizer.attach` returns: ``.remove()`` detaches (idempotent: a second call, or a
    call on an old handle, never touches a newer attachment); usable as a context manager."""

    def __init__(
        self,
        reg: Attachable,
        optimizer: torch.optim.Optimizer,
        mode: str,
        hooks: list[RemovableHandle],
    ) -> None:
        self.regularizer, self.optimizer, self.mode = reg, optimizer, mode
        self._hooks = hooks
        self._advance: RemovableHandle | None = None  # set while this one advances the schedule
        self.removed = False

    @property
    def advances(self) -> bool:
        """Whether this optimizer's steps advance the regularizer's schedule."""
        return self._advance is not None

    def advance_schedule(self) -> None:
        """Advance the schedule once per step of this optimizer (one attachment does it)."""
        reg = self.regularizer
        self._advance = self.optimizer.register_step_post_hook(lambda opt, a, k: reg.step())

    def remove(self) -> None:
        if self.removed:
            return
        self.removed = True
        for hook in self._hooks:
            hook.remove()
        attachments = self.regularizer.attachments
        if attachments.get(id(self.optimizer)) is self:
            del attachments[id(self.optimizer)]
        if self._advance is not None:
            self._advance.remove()
            self._advance = None
            # the schedule keeps advancing while any attachment remains
            successor = next(iter(attachments.values()), None)
            if successor is not None:
                successor.advance_schedule()

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = ", removed" if self.removed else ""
        return f"AttachHandle(mode={self.mode!r}, optimizer={type(self.optimizer).__name__}{state})"


def _group_of(
    reg: Attachable, optimizer: torch.optim.Optimizer, partial: bool = False
) -> list[dict[str, Any] | None]:
    """The optimizer param group of each regularized parameter (None: not held, ``partial``
    only), or raise naming the strays."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    named = list(reg.named_parameters())
    names = [n for n, p in named if id(p) not in where]
    if partial and len(names) == len(named):
        raise ValueError(
            f"the optimizer {type(optimizer).__name__} holds none of the regularized parameters"
        )
    if names and not partial:
        raise ValueError(
            f"regularized parameters are not in the optimizer {type(optimizer).__name__}: "
            f"{', '.join(names)}; pass them to the optimizer (after replacing a model's "
            "parameters, build the optimizer again) or narrow the selection"
        )
    return [where.get(id(p)) for _, p in named]


def _plan(reg: Attachable, optimizer: torch.optim.Optimizer, partial: bool) -> list[_Slice]:
    groups = _group_of(reg, optimizer, partial)
    slices: dict[tuple[int, int], _Slice] = {}
    for b_index, bucket in enumerate(reg.buckets()):
        for i, p in zip(bucket.indices, bucket.params, strict=True):
            group = groups[i]
            if group is None:  # held by another optimizer (partial)
                continue
            key = (b_index, id(group))
            s = slices.setdefault(key, _Slice(bucket.penalty, group, [], []))
            s.indices.append(i)
            s.params.append(p)
    return list(slices.values())


#: optimizers that evaluate the closure several times per step, along a direction of their own
MULTI_EVALUATION = (torch.optim.LBFGS,)


def _closure_position(args: tuple, kwargs: dict) -> str | int | None:
    """Where ``step``'s closure is in a step hook's ``(args, kwargs)`` (``args[0]`` is the
    optimizer), or None for a step without one."""
    if kwargs.get("closure") is not None:
        return "closure"
    if len(args) > 1 and args[1] is not None:
        return 1
    return None


def _with_closure(args: tuple, kwargs: dict, wrap: Any) -> tuple[tuple, dict] | None:
    """``(args, kwargs)`` with the closure replaced by ``wrap(closure)``; None without one."""
    where = _closure_position(args, kwargs)
    if where is None:
        return None
    if where == "closure":
        return args, {**kwargs, "closure": wrap(kwargs["closure"])}
    return (args[0], wrap(args[1]), *args[2:]), kwargs


def _before_update(
    opt: torch.optim.Optimizer,
    args: tuple,
    kwargs: dict,
    action: Any,
    *,
    result: Any = None,
    once: str | None = None,
) -> tuple[tuple, dict] | None:
    """A step pre-hook's work: ``action(opt)`` right before the update. Without a closure that is
    now; with one, the closure is wrapped to run ``action`` after it computed the gradients (and
    to return ``result(loss)``). ``once`` names a mode that cannot be exact if the optimizer
    evaluates the closure more than once per step."""

    def wrap(closure: Any) -> Any:
        calls = 0

        def closure_then_action() -> Any:
            nonlocal calls
            calls += 1
            if once is not None and calls > 1:
                raise RuntimeError(
                    f"{once}: {type(opt).__name__} evaluated the closure more than once in one "
                    "step, so the update has no single place to go; use mode='grad' or the loss "
                    "mode with this optimizer"
                )
            loss = closure()
            action(opt)
            return loss if result is None else result(loss)

        return closure_then_action

    wrapped = _with_closure(args, kwargs, wrap)
    if wrapped is None:
        action(opt)
    return wrapped


def _signed(loss: Any, value: Any) -> Any:
    """``loss + value`` for a closure's loss of any kind (tensor, number or None)."""
    if loss is None:
        return None
    if isinstance(loss, torch.Tensor):
        return loss + value.to(loss.device)
    return loss + float(value)


def attach(
    reg: Attachable,
    optimizer: torch.optim.Optimizer,
    mode: str,
    *,
    check_finite: bool = False,
    scale_by_lr: bool = True,
    partial: bool = False,
) -> AttachHandle:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    constrained = reg.has_constraints()
    if mode == "loss" and not constrained:
        raise ValueError("mode='loss' needs no attach: add reg() to the loss before backward()")
    if mode not in ALL_MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if id(optimizer) in reg.attachments:
        raise ValueError(
            f"this regularizer is already attached to this optimizer "
            f"({reg.attachments[id(optimizer)].mode!r}); remove() that handle first"
        )
    if mode != "grad" and isinstance(optimizer, MULTI_EVALUATION):
        raise ValueError(
            f"mode={mode!r} cannot be exact with {type(optimizer).__name__}: it evaluates the "
            "closure several times per step and moves along a search direction of its own, while "
            "decoupled and proximal updates are defined for one gradient per step; use "
            "mode='grad' (the gradient of loss + R at every evaluation) or add reg() to the "
            "closure's loss"
        )
    if not isinstance(scale_by_lr, bool):
        raise TypeError(f"scale_by_lr must be True or False, got {scale_by_lr!r}")
    if not scale_by_lr and mode != "decoupled":
        raise ValueError(
            f"scale_by_lr=False applies to mode='decoupled' only (its step is lam * schedule "
            f"instead of lr * lam * schedule), got mode={mode!r}"
        )
    if reg.target is not None and mode != "proximal":
        raise ValueError(
            f"a Regularizer with a target attaches in mode='proximal' (its zeros are the prox's "
            f"exact zeros; {mode!r} makes none), got mode={mode!r}"
        )
    plan = _plan(reg, optimizer, partial)
    if mode in ("decoupled", "proximal"):
        missing = [i for i, g in enumerate(optimizer.param_groups) if "lr" not in g]
        if missing:
            raise ValueError(
                f"mode={mode!r} needs an 'lr' in every param group; "
                f"{type(optimizer).__name__}'s groups {missing} have none"
            )
    if mode == "proximal":
        for s in plan:
            s.penalty.check_prox()
    maximizing = {bool(g.get("maximize", False)) for g in optimizer.param_groups}
    if mode == "grad" and len(maximizing) > 1:
        raise ValueError(
            "mode='grad' needs maximize to be the same in every param group of "
            f"{type(optimizer).__name__} (the closure's loss gets +R or -R); got both"
        )

    state = _PlanState(reg.version, plan)

    def current_plan() -> list[_Slice]:
        reg.refresh()  # follows parameters replaced in the model
        if state.version != reg.version:  # penalties reloaded or parameters rebound
            state.version, state.plan = reg.version, _plan(reg, optimizer, partial)
        return state.plan

    # GradScaler leaves `grad_scale` (gradients still scaled) and `found_inf` on optimizers that
    # unscale inside their own fused step; ordinary ones are unscaled before step(), and skipped.
    def add_grads(opt: torch.optim.Optimizer) -> None:
        scale = gradient_scale(getattr(opt, "grad_scale", None))
        with torch.no_grad():
            for s in current_plan():
                # maximize=True negates the gradient inside step(); weight_decay is added after
                # that negation, so the penalty gradient goes in with the opposite sign
                if s.group.get("maximize", False):
                    signed = -scale if scale is not None else torch.tensor(-1.0)
                    reg.add_grad_of(s.penalty, s.indices, signed)
                else:
                    reg.add_grad_of(s.penalty, s.indices, scale)

    def lr_of(opt: torch.optim.Optimizer, group: dict) -> Any:
        lr = group["lr"] if scale_by_lr else 1.0  # Loshchilov & Hutter's eta_t * lam, no lr
        found_inf = getattr(opt, "found_inf", None)  # a step the fused optimizer will skip
        return lr if found_inf is None else lr * (1 - found_inf)

    def apply_steps(opt: torch.optim.Optimizer) -> None:
        with torch.no_grad():
            for s in current_plan():
                nominal = s.group["lr"] if scale_by_lr else 1.0
                reg.apply_step_of(s.penalty, s.params, lr_of(opt, s.group), mode, nominal)

    # With step(closure) the pre-hooks run before the closure computes the gradients (LBFGS,
    # Lightning): the closure is wrapped so the penalty lands after it, exactly as without one.
    def grad_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        sign = -1.0 if opt.param_groups and opt.param_groups[0].get("maximize", False) else 1.0
        # the closure returns the loss whose gradient the optimizer gets (line searches read it)
        return _before_update(
            opt, args, kwargs, add_grads, result=lambda loss: _signed(loss, sign * reg.value())
        )

    def decoupled_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # after the gradient, before the update: AdamW's order
        return _before_update(opt, args, kwargs, apply_steps, once="mode='decoupled'")

    def proximal_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        apply_steps(opt)

    def project_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        current_plan()  # follows replaced parameters, like the other hooks
        reg.project_()

    hooks = []
    if mode == "grad":
        hooks.append(optimizer.register_step_pre_hook(grad_hook))
    elif mode == "decoupled":
        hooks.append(optimizer.register_step_pre_hook(decoupled_hook))
    elif mode == "proximal":  # its prox ends with the projections
        hooks.append(optimizer.register_step_post_hook(proximal_hook))
        if reg.target is not None:  # counts the prox's zeros, then keeps the frozen ones
            target = reg.target
            hooks.append(optimizer.register_step_post_hook(lambda o, a, k: target.after_step()))
    if constrained and mode != "proximal":  # constraints hold after every step, as in Keras
        hooks.append(optimizer.register_step_post_hook(project_hook))
    if check_finite:
        hooks.append(optimizer.register_step_post_hook(lambda opt, a, k: reg.check_finite()))
    handle = AttachHandle(reg, optimizer, mode, hooks)
    if reg.schedule is not None and not any(h.advances for h in reg.attachments.values()):
        handle.advance_schedule()
    reg.attachments[id(optimizer)] = handle
    return handle
