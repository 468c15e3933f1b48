"""`ActivityRegularizer`: penalties on module outputs, Keras' ``activity_regularizer``.

For each recorded output tensor ``y`` of a matched module (forward hooks, training mode only)::

    act = penalty(y) / batch_size        # Keras 3: the penalty summed over the elements, divided
                                         # by the number of samples (0 for an empty batch)

so Keras ``L1(x)`` is our ``l1(x)`` and Keras ``L2(x)`` (``x * sum(y**2)``) is our ``l2(2x)``.
The batch is the module's, not dim 0 of whatever it returns: recurrent layers (``RNN``, ``LSTM``,
``GRU``) batch along dim 1 of their sequence-first outputs and of their hidden states, packed
sequences count ``batch_sizes[0]`` samples, attention and Transformer layers follow their
``batch_first``, and unbatched inputs are one sample; other modules batch along dim 0 (a 0-dim
output is one sample). Each tensor is penalized with its batch dim moved first, so ``rows``
groups are samples.
``act()`` returns the sum recorded since the previous call and starts a new one; gradients flow
through autograd (``loss = data_loss + act()``). Each output costs one pass (the penalty's value).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

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


#: where a module's outputs hold their batch: each output tensor's batch dim (None: unbatched),
#: and the number of samples
Batched = list[tuple[Tensor, int | None, int]]


def _leaves(output: Any, where: str) -> Iterator[Tensor]:
    """The tensors of a module's output (a tensor, or tuples, lists and dicts of them; None is
    nothing); anything else is refused."""
    if isinstance(output, Tensor):
        if not output.is_floating_point():
            raise ValueError(
                f"{where} returned a {output.dtype} tensor: activity penalties apply to "
                "floating-point outputs; narrow the rule to the modules whose outputs to penalize"
            )
        yield output
    elif isinstance(output, PackedSequence):
        yield output.data
    elif isinstance(output, list | tuple):
        for item in output:
            yield from _leaves(item, where)
    elif isinstance(output, Mapping):
        for item in output.values():
            yield from _leaves(item, where)
    elif output is not None:
        raise ValueError(
            f"{where} returned a {type(output).__name__}, which an activity penalty cannot read "
            "(it reads tensors, and tuples, lists and dicts of them)"
        )


def _first_input(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str) -> Any:
    return args[0] if args else kwargs.get(name)


def _is_batch_first(module: nn.Module) -> bool:
    """``batch_first`` of a Transformer module: its own (``nn.Transformer``), or its (first
    layer's) self-attention's."""
    if isinstance(module, nn.TransformerEncoder | nn.TransformerDecoder):
        module = module.layers[0]
    if hasattr(module, "batch_first"):
        return bool(module.batch_first)
    return bool(getattr(module.self_attn, "batch_first", False))


def batched_outputs(
    module: nn.Module, args: tuple[Any, ...], kwargs: Mapping[str, Any], output: Any, where: str
) -> Batched:
    """Each floating output tensor of one call of ``module`` with its batch dim and the call's
    number of samples (see the module docstring)."""
    if isinstance(module, nn.RNNBase):
        x = _first_input(args, kwargs, "input")
        sequence, hidden = output
        if isinstance(x, PackedSequence):
            samples = int(x.batch_sizes[0]) if x.batch_sizes.numel() else 0
            return [(t, None, samples) for t in _leaves(sequence, where)] + [
                (t, 1, samples) for t in _leaves(hidden, where)
            ]
        if x.dim() == 2:  # unbatched: one sample
            return [(t, None, 1) for t in _leaves(output, where)]
        first = bool(module.batch_first)
        samples = x.shape[0 if first else 1]
        return [(t, 0 if first else 1, samples) for t in _leaves(sequence, where)] + [
            (t, 1, samples) for t in _leaves(hidden, where)
        ]
    if isinstance(module, nn.MultiheadAttention):
        query = _first_input(args, kwargs, "query")
        attended, weights = output
        if query.dim() == 2:
            return [(t, None, 1) for t in _leaves(output, where)]
        first = bool(module.batch_first)
        samples = query.shape[0 if first else 1]
        return [(t, 0 if first else 1, samples) for t in _leaves(attended, where)] + [
            (t, 0, samples) for t in _leaves(weights, where)
        ]
    if isinstance(module, SEQUENCE_FIRST):
        x = _first_input(args, kwargs, "src" if "src" in kwargs else "tgt")
        if isinstance(x, Tensor) and x.dim() == 2:
            return [(t, None, 1) for t in _leaves(output, where)]
        dim = 0 if _is_batch_first(module) else 1
        return [(t, dim, t.shape[dim]) for t in _leaves(output, where)]
    return [(t, 0, t.shape[0]) if t.ndim else (t, None, 1) for t in _leaves(output, where)]


#: modules whose tensors are sequence-first unless ``batch_first``
SEQUENCE_FIRST = (
    nn.Transformer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)


def activity_value(
    penalty: Penalty, y: Tensor, batch_dim: int | None = 0, samples: int | None = None
) -> Tensor:
    """Keras' activity penalty of one output: ``penalty(y) / samples`` (float32 or wider),
    with ``y``'s batch dim moved first; 0 for an empty batch. ``samples`` defaults to the
    length of the batch dim (1 without one, or for a 0-dim ``y``)."""
    if y.ndim == 0:
        batch_dim = None
    if samples is None:
        samples = y.shape[batch_dim] if batch_dim is not None else 1
    if batch_dim:
        y = y.movedim(batch_dim, 0)
    value = penalty.value(y if y.dtype in (torch.float32, torch.float64) else y.float())
    # Keras divides "no NaN": an empty batch adds 0
    return value / samples if samples else value * 0


def check_activity_penalty(penalty: Penalty, rule: object) -> None:
    """Refuse penalties that have no meaning on activations: constraints (projections of
    weights) and penalties centered on reference weights."""
    for term in penalty.summands():
        if term.constraints():
            raise ValueError(
                f"activity rule {rule!r}: {term!r} is a constraint, a projection of weights; it "
                "cannot apply to a module's outputs (use it in Regularizer)"
            )
        if getattr(term, "center", None) is not None:
            raise ValueError(
                f"activity rule {rule!r}: {term!r} is centered on reference weights; outputs "
                "have none (use the uncentered penalty)"
            )


class ActivityRegularizer:
    """Penalties on the outputs of ``model``'s modules.

    Args:
        model: the model (DDP and ``torch.compile`` wrappers are looked through).
        rules: an ordered mapping ``{rule: penalty}``; a rule is a glob on qualified module names,
            a module class, a module of the model, or a predicate ``(name, module) -> bool``; the
            first matching rule wins for each module. A penalty is a `Penalty` or a spec string.

    Raises:
        ValueError: a rule that matches no module (naming it), an empty mapping, a bad spec, a
            constraint or a centered penalty (meaningless on outputs); at a forward, an output
            that is not floating-point tensors (never skipped silently).
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
            check_activity_penalty(pen, rule)
            match = _matcher(rule, model)
            hits = [(n, m) for n, m in named if match(n, m)]
            if not hits:
                raise ValueError(f"activity rule {rule!r} matches no module of the model")
            for name, module in hits:
                taken.setdefault(id(module), (name, module, pen))
        self.entries = [(name, pen) for name, _, pen in taken.values()]
        self._total: Tensor | None = None
        self._handles = [
            module.register_forward_hook(self._recorder(name, pen), with_kwargs=True)
            for name, module, pen in taken.values()
        ]

    def _recorder(self, name: str, penalty: Penalty) -> Callable[..., None]:
        where = f"module {name or '<model>'!r}"

        def record(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            if not module.training:
                return
            for y, batch_dim, samples in batched_outputs(module, args, kwargs, output, where):
                value = activity_value(penalty, y, batch_dim, samples)
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


__all__ = ["ActivityRegularizer", "activity_value", "batched_outputs"]
