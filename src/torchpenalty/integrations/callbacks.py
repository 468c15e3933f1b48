"""What the framework callbacks share, framework-free: their arguments, the regularizer they
build and attach to every optimizer, the figures they log, and the check that a loss holds it."""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..regularizer import PenaltyArg, Regularizer
from ..regularizer.attach import ALL_MODES, AttachHandle
from ..regularizer.loss import PenaltyTotal
from ..regularizer.schedules import ScheduleLike
from ..selection import Among, Rule

#: the keys the callbacks log: the total penalty (loss units) and, in proximal mode, the
#: fraction of exact zeros among the regularized weights
PENALTY_KEY = "penalty"
ZEROS_KEY = "penalty_zero_fraction"


@dataclasses.dataclass(frozen=True)
class CallbackSpec:
    """A callback's arguments, checked at construction: what `build` makes a `Regularizer` of
    once the framework has the model."""

    penalty: PenaltyArg
    mode: str
    include: Rule | None = None
    exclude: Rule | None = None
    among: Among = "weights"
    schedule: ScheduleLike | None = None
    log: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ALL_MODES:
            raise ValueError(
                f"mode must be one of {', '.join(map(repr, ALL_MODES))}, got {self.mode!r}"
            )
        if not isinstance(self.log, bool):
            raise TypeError(f"log must be True or False, got {self.log!r}")

    def key(self) -> dict[str, str]:
        """The settings as text that is the same in every process (no memory addresses; a
        function is its qualified name), so a checkpoint finds its callback again after a
        restart, whatever its rules are."""
        return {
            "penalty": stable_repr(self.penalty),
            "mode": self.mode,
            **{
                name: stable_repr(getattr(self, name))
                for name in ("include", "exclude", "among", "schedule")
                if getattr(self, name) not in (None, "weights")
            },
        }

    def build(self, model: nn.Module, among: Among | None = None) -> Regularizer:
        """The regularizer over ``model``; ``among`` (a framework's own rule) replaces
        ``self.among``."""
        return Regularizer(
            model,
            self.penalty,
            include=self.include,
            exclude=self.exclude,
            among=self.among if among is None else among,
            schedule=self.schedule,
        )


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def stable_repr(value: Any) -> str:
    """``repr(value)`` without what changes from one process or edit to the next: functions
    (lambdas included) and classes by qualified name (not their module, which is ``__main__`` in
    a script, nor their line), mappings and sequences item by item, memory addresses left out
    of any other repr."""
    if isinstance(value, functools.partial):
        args = ", ".join(map(stable_repr, [*value.args, *value.keywords.items()]))
        return f"partial({stable_repr(value.func)}, {args})"
    if isinstance(value, types.FunctionType | types.MethodType | types.BuiltinFunctionType):
        bound = getattr(value, "__self__", None)
        owner = f"[{stable_repr(bound)}]" if isinstance(value, types.MethodType) else ""
        return f"{value.__qualname__}{owner}"
    if isinstance(value, type):
        return value.__qualname__
    if isinstance(value, Mapping):
        items = ", ".join(f"{stable_repr(k)}: {stable_repr(v)}" for k, v in value.items())
        return "{" + items + "}"
    if isinstance(value, list | tuple):
        inner = ", ".join(map(stable_repr, value))
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    return _ADDRESS.sub("", repr(value))


def base_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The `torch.optim.Optimizer` inside a framework's wrapper (Lightning's
    ``LightningOptimizer``, accelerate's ``AcceleratedOptimizer``): its step hooks are the ones
    that run."""
    seen = 0
    while seen < 8:  # wrappers of wrappers, never a cycle
        inner = getattr(optimizer, "optimizer", None) or getattr(optimizer, "_optimizer", None)
        if not isinstance(inner, torch.optim.Optimizer):
            break
        optimizer, seen = inner, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"the framework's optimizer {type(optimizer).__name__} is no torch.optim.Optimizer, "
            "so torchpenalty cannot hook its steps"
        )
    return optimizer


def attach_all(
    reg: Regularizer, optimizers: Sequence[torch.optim.Optimizer], mode: str
) -> list[AttachHandle]:
    """Attach ``reg`` in ``mode`` to every optimizer holding regularized parameters (each to the
    ones it holds); raise naming the regularized parameters no optimizer holds, or held twice."""
    holders: dict[int, int] = {}
    for opt in optimizers:
        for group in opt.param_groups:
            for p in group["params"]:
                holders[id(p)] = holders.get(id(p), 0) + 1
    named = list(reg.named_parameters())
    strays = [n for n, p in named if id(p) not in holders]
    if strays:
        raise ValueError(
            f"regularized parameters are in no optimizer: {', '.join(strays)}; pass them to an "
            "optimizer in configure_optimizers or narrow the selection (include=, exclude=)"
        )
    twice = [n for n, p in named if holders[id(p)] > 1]
    if twice:
        raise ValueError(
            f"regularized parameters are in several optimizers, so each would apply the penalty: "
            f"{', '.join(twice)}"
        )
    constrained = any(pen.constraints() for _, pen in reg.named_penalties())
    if mode == "loss" and not constrained:  # the loss carries the penalty
        return []
    ids = {id(p) for _, p in named}
    partial = len(optimizers) > 1
    return [
        reg.attach(opt, mode, partial=partial)
        for opt in optimizers
        if any(id(p) in ids for g in opt.param_groups for p in g["params"])
    ]


def advance_schedule(reg: Regularizer, optimizer: torch.optim.Optimizer) -> Any:
    """Advance ``reg``'s schedule at every step of ``optimizer`` (the loss mode, where no
    attachment does it); returns the removable hook."""
    return optimizer.register_step_post_hook(lambda opt, args, kwargs: reg.step())


def figures(reg: Regularizer, mode: str) -> dict[str, Tensor]:
    """What a callback logs, as 0-dim tensors (no device sync): the penalty and, in proximal
    mode, the fraction of exact zeros."""
    out = {PENALTY_KEY: reg.value()}
    if mode == "proximal":
        out[ZEROS_KEY] = reg.zero_fraction()
    return out


def _graph_nodes(roots: Iterable[Any]) -> Iterable[Any]:
    seen: set[int] = set()
    stack = [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        stack.extend(n for n, _ in node.next_functions if n is not None)


def holds_penalty(loss: Tensor) -> bool:
    """Whether ``loss`` was computed from a regularizer's ``reg()`` (its autograd graph has the
    penalty's node): one walk over the graph."""
    backward = PenaltyTotal._backward_cls
    return any(isinstance(node, backward) for node in _graph_nodes([loss.grad_fn]))


__all__ = [
    "PENALTY_KEY",
    "ZEROS_KEY",
    "CallbackSpec",
    "advance_schedule",
    "attach_all",
    "base_optimizer",
    "figures",
    "holds_penalty",
]
