"""`ActivityRegularizer`: penalties on module outputs, Keras' ``activity_regularizer``.

For each recorded output tensor ``y`` of a matched module (forward hooks, training mode only)::

    act = penalty(y) / y.shape[0]        # Keras 3: the penalty summed over the elements, divided
                                         # by the batch size (a 0-dim output is not divided)

so Keras ``L1(x)`` is our ``l1(x)`` and Keras ``L2(x)`` (``x * sum(y**2)``) is our ``l2(2x)``.
``act()`` returns the sum recorded since the previous call and starts a new one; gradients flow
through autograd (``loss = data_loss + act()``). Each output costs one pass (the penalty's value).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from ..penalties import Penalty, parse
from ..selection import canonical_name, unwrap

ModuleRule = str | type[nn.Module] | nn.Module | Callable[[str, nn.Module], bool]

RULE_KINDS = (
    "a glob on qualified module names (str), an nn.Module subclass, a module of the model, or a "
    "predicate (name, module) -> bool"
)


def _matcher(rule: object, model: nn.Module) -> Callable[[str, nn.Module], bool]:
    if isinstance(rule, str):
        return lambda name, module: fnmatch.fnmatchcase(name, rule)
    if isinstance(rule, type) and issubclass(rule, nn.Module):
        return lambda name, module: isinstance(module, rule)
    if isinstance(rule, nn.Module):
        if not any(rule is m for m in unwrap(model).modules()):
            raise ValueError(f"rule module {type(rule).__name__} is not a submodule of the model")
        return lambda name, module: module is rule
    if callable(rule):
        return lambda name, module: bool(rule(name, module))
    raise TypeError(f"an activity rule must be {RULE_KINDS}; got {type(rule).__name__} {rule!r}")


def _tensors(output: Any) -> Iterator[Tensor]:
    """The floating-point tensors of a module's output (a tensor, or tuples, lists and dicts of
    them)."""
    if isinstance(output, Tensor):
        if output.is_floating_point():
            yield output
    elif isinstance(output, list | tuple):
        for item in output:
            yield from _tensors(item)
    elif isinstance(output, Mapping):
        for item in output.values():
            yield from _tensors(item)


def activity_value(penalty: Penalty, y: Tensor) -> Tensor:
    """Keras' activity penalty of one output: ``penalty(y) / batch size`` (float32 or wider)."""
    value = penalty.value(y if y.dtype in (torch.float32, torch.float64) else y.float())
    return value / y.shape[0] if y.ndim > 0 else value


class ActivityRegularizer:
    """Penalties on the outputs of ``model``'s modules.

    Args:
        model: the model (DDP and ``torch.compile`` wrappers are looked through).
        rules: an ordered mapping ``{rule: penalty}``; a rule is a glob on qualified module names,
            a module class, a module of the model, or a predicate ``(name, module) -> bool``; the
            first matching rule wins for each module. A penalty is a `Penalty` or a spec string.

    Raises:
        ValueError: a rule that matches no module (naming it), an empty mapping, a bad spec.
        TypeError: a rule of another kind.
    """

    def __init__(self, model: nn.Module, rules: Mapping[Any, Penalty | str]) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(rules, Mapping) or not rules:
            raise ValueError("rules must be a non-empty mapping {rule: penalty}")
        named = [(canonical_name(n), m) for n, m in unwrap(model).named_modules()]
        taken: dict[int, tuple[str, nn.Module, Penalty]] = {}
        for rule, penalty in rules.items():
            pen = parse(penalty) if isinstance(penalty, str) else penalty
            if not isinstance(pen, Penalty):
                raise TypeError(
                    f"the penalty of rule {rule!r} must be a Penalty or a spec string, got "
                    f"{type(penalty).__name__}"
                )
            match = _matcher(rule, model)
            hits = [(n, m) for n, m in named if match(n, m)]
            if not hits:
                raise ValueError(f"activity rule {rule!r} matches no module of the model")
            for name, module in hits:
                taken.setdefault(id(module), (name, module, pen))
        self.entries = [(name, pen) for name, _, pen in taken.values()]
        self._total: Tensor | None = None
        self._handles = [
            module.register_forward_hook(self._recorder(pen)) for _, module, pen in taken.values()
        ]

    def _recorder(self, penalty: Penalty) -> Callable[..., None]:
        def record(module: nn.Module, inputs: Any, output: Any) -> None:
            if not module.training:
                return
            for y in _tensors(output):
                value = activity_value(penalty, y)
                self._total = value if self._total is None else self._total + value

        return record

    def __call__(self) -> Tensor:
        """The activity penalty recorded since the previous call (0 if none), differentiable;
        a new sum starts."""
        total = self._total
        self._total = None
        return torch.zeros(()) if total is None else total

    def remove(self) -> None:
        """Remove the forward hooks (idempotent); nothing is recorded after."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._total = None

    def __enter__(self) -> ActivityRegularizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        rows = ", ".join(f"{name or '<model>'}: {pen!r}" for name, pen in self.entries)
        return f"ActivityRegularizer({rows})"


__all__ = ["ActivityRegularizer", "activity_value"]
