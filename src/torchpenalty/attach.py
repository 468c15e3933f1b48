"""Applying a `Regularizer` through an optimizer's step hooks (modes grad, decoupled, proximal).

Hooks leave the training loop unchanged and work with any `torch.optim.Optimizer`, third-party
ones included. ``decoupled`` and ``proximal`` read the ``lr`` of each parameter's group at every
step, so learning-rate schedules are followed (the prox threshold is ``lr * lam``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from .penalties import Penalty

if TYPE_CHECKING:
    from .regularizer import Regularizer

Mode = Literal["grad", "decoupled", "proximal"]
MODES: tuple[str, ...] = ("grad", "decoupled", "proximal")


@dataclasses.dataclass
class _Slice:
    """Parameters sharing a penalty, an optimizer param group, a device and a dtype."""

    penalty: Penalty
    group: dict[str, Any]
    params: list[nn.Parameter]


class AttachHandle:
    """What `Regularizer.attach` returns: ``.remove()`` detaches; usable as a context manager."""

    def __init__(
        self,
        reg: Regularizer,
        optimizer: torch.optim.Optimizer,
        mode: str,
        hooks: list[RemovableHandle],
        *,
        advances: bool = False,
    ) -> None:
        self.regularizer, self.optimizer, self.mode = reg, optimizer, mode
        self.advances = advances  # whether this optimizer's steps advance the schedule
        self._hooks = hooks

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self.regularizer._attachments.pop(id(self.optimizer), None)

    def __enter__(self) -> AttachHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"AttachHandle(mode={self.mode!r}, optimizer={type(self.optimizer).__name__})"


def _group_of(reg: Regularizer, optimizer: torch.optim.Optimizer) -> list[dict[str, Any]]:
    """The optimizer param group of each regularized parameter, or raise naming the strays."""
    where = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    names = [n for n, p in reg.named_parameters() if id(p) not in where]
    if names:
        raise ValueError(
            f"regularized parameters are not in the optimizer {type(optimizer).__name__}: "
            f"{', '.join(names)}; pass them to the optimizer or narrow the selection"
        )
    return [where[id(p)] for _, p in reg.named_parameters()]


def _plan(reg: Regularizer, optimizer: torch.optim.Optimizer) -> list[_Slice]:
    groups = _group_of(reg, optimizer)
    slices: dict[tuple[int, int], _Slice] = {}
    for b_index, bucket in enumerate(reg.buckets):
        for i, p in zip(bucket.indices, bucket.params, strict=True):
            group = groups[i]
            key = (b_index, id(group))
            slices.setdefault(key, _Slice(bucket.penalty, group, [])).params.append(p)
    return list(slices.values())


def attach(
    reg: Regularizer, optimizer: torch.optim.Optimizer, mode: str, *, check_finite: bool = False
) -> AttachHandle:
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    if mode == "loss":
        raise ValueError("mode='loss' needs no attach: add reg() to the loss before backward()")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    if id(optimizer) in reg._attachments:
        raise ValueError(
            f"this regularizer is already attached to this optimizer "
            f"({reg._attachments[id(optimizer)].mode!r}); remove() that handle first"
        )
    plan = _plan(reg, optimizer)
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

    state = {"version": reg.version, "plan": plan}

    def current_plan() -> list[_Slice]:
        if state["version"] != reg.version:  # penalties were reloaded
            state["version"], state["plan"] = reg.version, _plan(reg, optimizer)
        return state["plan"]

    # GradScaler leaves `grad_scale` (gradients still scaled) and `found_inf` on optimizers that
    # unscale inside their own fused step; ordinary ones are unscaled before step(), and skipped.
    def grad_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        reg.add_to_grad_(getattr(opt, "grad_scale", None))

    def lr_of(opt: torch.optim.Optimizer, group: dict) -> Any:
        found_inf = getattr(opt, "found_inf", None)  # a step the fused optimizer will skip
        return group["lr"] if found_inf is None else group["lr"] * (1 - found_inf)

    def step_hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        with torch.no_grad():
            for s in current_plan():
                reg._apply_step(s.penalty, s.params, lr_of(opt, s.group), mode, s.group["lr"])

    if mode == "grad":
        hooks = [optimizer.register_step_pre_hook(grad_hook)]
    elif mode == "decoupled":
        hooks = [optimizer.register_step_pre_hook(step_hook)]
    else:
        hooks = [optimizer.register_step_post_hook(step_hook)]
    if reg.schedule is not None and not any(h.advances for h in reg._attachments.values()):
        hooks.append(optimizer.register_step_post_hook(lambda opt, a, k: reg.step()))
        advances = True
    else:
        advances = False
    if check_finite:
        hooks.append(optimizer.register_step_post_hook(lambda opt, a, k: reg.check_finite()))
    handle = AttachHandle(reg, optimizer, mode, hooks, advances=advances)
    reg._attachments[id(optimizer)] = handle
    return handle
