"""Which parameters a penalty applies to, and `param_groups` for torch.optim's own decay.

The default ("the weights", as practitioners mean it) selects a parameter when

- it has ``ndim >= 2`` and its name does not end in ``bias``, and
- the module that owns it is not a normalization layer (BatchNorm, LayerNorm, GroupNorm,
  InstanceNorm, LocalResponseNorm, RMSNorm, or any class whose name contains ``Norm`` that is
  not a Linear / Conv / Embedding / RNN / attention layer: an ``nn.Embedding`` subclass named
  ``...NormedEmbedding`` is an embedding table), and
- it is not vector-shaped outside those layers (at most one dim longer than 1: ConvNeXt-V2's
  GRN ``gamma``/``beta`` of shape ``(1, 1, 1, C)``, layer scales, ``(1, 1, D)`` tokens; the
  ConvNeXt-V2 and timm recipes do not decay them either), and
- the model (or the submodule holding it) does not list it in a timm-style
  ``no_weight_decay()`` method (names or globs, relative to that module).

Embeddings and convolution kernels are weights. Rules (`include`, `exclude`, the keys of a
per-layer mapping) narrow this set; ``among="all"`` starts from every parameter instead, which is
how biases or norm scales are regularized. A rule is a glob on the canonical parameter name
(``"encoder.*.weight"``; ``*`` also crosses dots), a module type (``nn.Linear``), a module object
(``model.head``: its parameters and its submodules'), a parameter object, a predicate
``(name, param, module) -> bool``, or a list of these (any of them). Names are canonical: the
``_orig_mod.`` of ``torch.compile`` and the ``module.`` of DDP / DataParallel are not part of them.
Shared parameters are counted once, under their first name. Frozen parameters
(``requires_grad=False``) are skipped and listed in ``Selection.frozen``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Union, cast

from torch import Tensor, nn

from ._checks import check_strength

Predicate = Callable[[str, nn.Parameter, nn.Module], bool]
Rule = Union[str, type[nn.Module], nn.Module, Tensor, Predicate, Sequence["Rule"]]  # noqa: UP007
#: where a selection starts: the default weights, every parameter, or those a predicate keeps
Among = Union[Literal["weights", "all"], Predicate]  # noqa: UP007

NORM_LAYERS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, SyncBatchNorm, InstanceNorm*
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    nn.RMSNorm,
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One parameter of a model with its canonical name and the module that owns it."""

    name: str
    param: nn.Parameter
    module: nn.Module
    #: where the parameter lives: ``unwrap(model).get_submodule(path)._parameters[attr]``
    path: str = ""
    attr: str = ""


class Selection(list):
    """``list[(name, param)]`` as returned by `select`; ``.frozen`` names the skipped ones."""

    def __init__(self, pairs: Iterable[tuple[str, nn.Parameter]], frozen: Sequence[str]) -> None:
        super().__init__(pairs)
        self.frozen = list(frozen)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``, DDP and DataParallel wrappers, and the module
    tree of a `torchpenalty.regularizer.stacked.Stacked` model (its ``stacked_module``)."""
    while True:
        if type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = cast(nn.Module, model._orig_mod)
        elif isinstance(model, nn.DataParallel | nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "stacked_module", None), nn.Module):
            model = cast(nn.Module, model.stacked_module)
        else:
            return model


def is_stacked(model: nn.Module) -> bool:
    """Whether ``model`` (through its wrappers) is a stack of models: its parameters hold the
    members along dim 0."""
    while True:
        if isinstance(getattr(model, "stacked_module", None), nn.Module):
            return True
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return False
        model = inner


def canonical_name(name: str) -> str:
    """Drop the ``_orig_mod`` segments that compiled submodules add to parameter names."""
    return ".".join(part for part in name.split(".") if part != "_orig_mod")


def entries(model: nn.Module) -> list[Entry]:
    """Every distinct parameter of ``model``, in ``named_parameters`` order."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    seen: set[int] = set()
    out = []
    for prefix, module in unwrap(model).named_modules():
        for pname, param in module._parameters.items():
            if param is None or id(param) in seen:
                continue
            seen.add(id(param))
            name = f"{prefix}.{pname}" if prefix else pname
            out.append(Entry(canonical_name(name), param, module, prefix, pname))
    return out


#: PyTorch's layers whose parameters are weights whatever their class is named or their shape
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.modules.conv._ConvNd,
    nn.Embedding,
    nn.EmbeddingBag,
    nn.RNNBase,
    nn.MultiheadAttention,
)


def is_norm_layer(module: nn.Module) -> bool:
    """A normalization layer: one of PyTorch's, or any other class whose name contains
    ``Norm``, except subclasses of `WEIGHT_LAYERS` (an ``nn.Embedding`` subclass named
    ``...NormedEmbedding`` holds an embedding table; the norm layer inside it is its own
    module)."""
    if isinstance(module, NORM_LAYERS):
        return True
    return "Norm" in type(module).__name__ and not isinstance(module, WEIGHT_LAYERS)


def is_vector_shaped(param: Tensor, module: nn.Module) -> bool:
    """A parameter with at most one dim longer than 1, outside `WEIGHT_LAYERS`: a per-channel
    scale or shift stored with broadcast dims (ConvNeXt-V2's GRN ``gamma``/``beta`` of shape
    ``(1, 1, 1, C)``, layer scales), or a token (``(1, 1, D)``): not a weight."""
    return sum(n > 1 for n in param.shape) <= 1 and not isinstance(module, WEIGHT_LAYERS)


def _no_weight_decay_patterns(model: nn.Module) -> list[str]:
    patterns: list[str] = []
    for prefix, module in unwrap(model).named_modules():
        method = getattr(module, "no_weight_decay", None)
        if callable(method):
            names = method()
            if isinstance(names, str):
                names = [names]
            dot = f"{canonical_name(prefix)}." if prefix else ""
            patterns.extend(dot + n for n in names)
    return patterns


def default_rule(model: nn.Module) -> Predicate:
    """The predicate behind the default selection (see the module docstring)."""
    excluded = _no_weight_decay_patterns(model)

    stacked = is_stacked(model)  # a member's parameter is param[0]

    def is_weight(name: str, param: Tensor, module: nn.Module) -> bool:
        if stacked:
            param = param[0]
        return (
            param.ndim >= 2
            and not name.rsplit(".", 1)[-1].endswith("bias")
            and not is_norm_layer(module)
            and not is_vector_shaped(param, module)
            and not any(fnmatch.fnmatchcase(name, p) for p in excluded)
        )

    return is_weight


@dataclasses.dataclass(frozen=True)
class CompiledRule:
    """A rule as a predicate, with the text that names it in error messages."""

    description: str
    predicate: Predicate

    def matches(self, entry: Entry) -> bool:
        return bool(self.predicate(entry.name, entry.param, entry.module))


RULE_KINDS = (
    "a glob on parameter names (str), an nn.Module subclass, a module or parameter of the model, "
    "a predicate (name, param, module) -> bool, or a list of these"
)


def compile_rule(rule: Rule, model: nn.Module) -> list[CompiledRule]:
    """Turn one rule (or a list of rules) into predicates; each list item stays separate."""
    if isinstance(rule, str):
        return [CompiledRule(repr(rule), lambda n, p, m: fnmatch.fnmatchcase(n, rule))]
    if isinstance(rule, type):
        if not issubclass(rule, nn.Module):
            raise TypeError(f"a rule type must be an nn.Module subclass, got {rule.__name__}")
        return [CompiledRule(rule.__name__, lambda n, p, m: isinstance(m, rule))]
    if isinstance(rule, nn.Module):
        if not any(rule is m for m in unwrap(model).modules()):
            raise ValueError(f"rule module {type(rule).__name__} is not a submodule of the model")
        ids = {id(p) for p in rule.parameters()}
        return [CompiledRule(f"module {type(rule).__name__}", lambda n, p, m: id(p) in ids)]
    if isinstance(rule, Tensor):
        owner = next((e.name for e in entries(model) if e.param is rule), None)
        if owner is None:
            raise ValueError(
                f"rule parameter of shape {tuple(rule.shape)} does not belong to the model"
            )
        return [CompiledRule(f"parameter {owner!r}", lambda n, p, m: p is rule)]
    if callable(rule):
        label = getattr(rule, "__qualname__", type(rule).__name__)
        return [CompiledRule(f"predicate {label}", rule)]
    if isinstance(rule, list | tuple | set | frozenset):
        if not rule:
            raise ValueError("an empty list is not a rule; pass None for the default")
        return [c for item in rule for c in compile_rule(item, model)]
    raise TypeError(f"a rule must be {RULE_KINDS}; got {type(rule).__name__} {rule!r}")


def select_entries(
    model: nn.Module,
    include: Rule | None = None,
    exclude: Rule | None = None,
    *,
    among: Among = "weights",
) -> tuple[list[Entry], list[str]]:
    """The selected trainable entries and the names of the frozen ones that were skipped."""
    everything = entries(model)
    if among == "weights":
        is_weight = default_rule(model)
        candidates = [e for e in everything if is_weight(e.name, e.param, e.module)]
    elif among == "all":
        candidates = everything
    elif callable(among):
        candidates = [e for e in everything if among(e.name, e.param, e.module)]
    else:
        raise ValueError(
            f"among must be 'weights', 'all' or a predicate (name, param, module) -> bool, "
            f"got {among!r}"
        )

    if include is not None:
        chosen: list[Entry] = []
        for rule in compile_rule(include, model):
            hits = [e for e in candidates if rule.matches(e)]
            if not hits:
                raise _nothing_selected(rule, everything, among)
            if not any(e.param.requires_grad for e in hits):
                raise ValueError(
                    f"rule {rule.description} selects only frozen parameters "
                    f"(requires_grad=False): {', '.join(e.name for e in hits)}"
                )
            chosen.extend(hits)
        chosen_ids = {id(e.param) for e in chosen}
        candidates = [e for e in candidates if id(e.param) in chosen_ids]

    if exclude is not None:
        for rule in compile_rule(exclude, model):
            if not any(rule.matches(e) for e in everything):
                raise ValueError(
                    f"exclude rule {rule.description} matches no parameter of the model"
                )
            candidates = [e for e in candidates if not rule.matches(e)]

    frozen = [e.name for e in candidates if not e.param.requires_grad]
    selected = [e for e in candidates if e.param.requires_grad]
    if not selected:
        raise ValueError(
            f"the selection is empty (include={include!r}, exclude={exclude!r}, among={among!r}); "
            + (f"frozen parameters skipped: {', '.join(frozen)}" if frozen else "no parameter left")
        )
    return selected, frozen


def _nothing_selected(rule: CompiledRule, everything: list[Entry], among: Among) -> ValueError:
    outside = [e.name for e in everything if rule.matches(e)]
    if outside and among == "weights":
        return ValueError(
            f"rule {rule.description} selects nothing among the default weights; it matches "
            f"{', '.join(outside)}, which the default excludes (biases, norm layers, ndim < 2, "
            "no_weight_decay()); pass among='all' to select them"
        )
    names = ", ".join(e.name for e in everything[:8]) + (", ..." if len(everything) > 8 else "")
    return ValueError(f"rule {rule.description} selects nothing; the model's parameters: {names}")


def select(
    model: nn.Module,
    include: Rule | None = None,
    exclude: Rule | None = None,
    *,
    among: Among = "weights",
) -> Selection:
    """The parameters to regularize (see the module docstring for the rules).

    Args:
        model: the model (wrappers are looked through).
        include: a rule or list of rules (module types, globs on canonical names, modules,
            parameters, predicates ``(name, param, module) -> bool``) selecting parameters.
        exclude: rules removing parameters from the selection.
        among: ``"weights"`` (default: ``ndim >= 2``, not biases, not normalization layers, not
            ``no_weight_decay()`` names), ``"all"``, or a predicate ``(name, param, module) ->
            bool`` keeping the parameters to start from (a framework's own decay rule).

    Returns:
        A `Selection`: ``[(canonical name, parameter), ...]`` with ``.frozen`` naming the
        skipped frozen parameters.

    Raises:
        ValueError: naming the rule when a rule selects nothing, and when nothing is left.
    """
    selected, frozen = select_entries(model, include, exclude, among=among)
    return Selection(((e.name, e.param) for e in selected), frozen)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    include: Rule | None = None,
    exclude: Rule | None = None,
    among: Among = "weights",
) -> list[dict[str, Any]]:
    """Optimizer parameter groups that decay the selected parameters only.

    Frozen parameters are left out, as timm does; the second group is omitted when empty. Pass
    the result to any optimizer: ``torch.optim.AdamW(param_groups(model, 0.05), lr=1e-3)``.

    Args:
        model: the model.
        weight_decay: the selected parameters' ``weight_decay`` (a number >= 0).
        include: rules selecting parameters, as in `torchpenalty.select`.
        exclude: rules removing parameters.
        among: ``"weights"`` (default), ``"all"`` or a predicate (see `select`).

    Returns:
        ``[{"params": selected, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}]``.
    """
    weight_decay = check_strength(weight_decay, "weight_decay")
    selected, _ = select_entries(model, include, exclude, among=among)
    chosen = {id(e.param) for e in selected}
    others = [
        e.param for e in entries(model) if e.param.requires_grad and id(e.param) not in chosen
    ]
    groups = [{"params": [e.param for e in selected], "weight_decay": weight_decay}]
    if others:
        groups.append({"params": others, "weight_decay": 0.0})
    return groups
