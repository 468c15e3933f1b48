"""`compact`: a smaller dense model without the dead units and filters that sparsity left behind.

After group-sparse training some output units (Linear rows, Conv filters) are *dead*: their
incoming weights are all zero, so they output a constant; others are *unused*: every layer that
consumes them has all-zero weights for them. `compact` removes both kinds, with the inputs of the
layers that consume them, using Torch-Pruning's dependency graph for the surgery (batch-norm,
flatten, residual and concatenation couplings included). A dead unit's constant output is folded
into the consumers' biases where that is exact (Linear consumers, convolutions without padding).

Every layer's removal is verified on ``example_inputs`` and undone if the outputs move by more
than ``atol``: the compacted model computes the same function, or the unit stays.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..selection import unwrap

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
Prunable = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ModuleNotFoundError:
        raise ModuleNotFoundError(
            "compact() needs Torch-Pruning: pip install 'torchpenalty[prune]' (or torch-pruning)"
        ) from None
    return torch_pruning


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def layer_widths(model: nn.Module) -> dict[str, int]:
    """Output units / filters of every Linear and Conv layer, by name."""
    return {
        name: m.out_features if isinstance(m, nn.Linear) else m.out_channels
        for name, m in unwrap(model).named_modules()
        if isinstance(m, PRUNABLE)
    }


def _outputs(model: nn.Module, inputs: tuple[tuple, dict[str, Any]]) -> list[Tensor]:
    with torch.no_grad():
        out = model(*inputs[0], **inputs[1])
    return [t for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, Tensor)]


def _same(a: list[Tensor], b: list[Tensor], atol: float) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and bool((x - y).abs().max() <= atol)
        if x.numel()
        else x.shape == y.shape
        for x, y in zip(a, b, strict=True)
    )


def consumer_inputs(
    model: nn.Module, consumers: Sequence[nn.Module], inputs: tuple[tuple, dict[str, Any]]
) -> dict:
    """The input each consumer layer sees on the example inputs (one forward pass)."""
    seen: dict[int, Tensor] = {}

    def record(module: nn.Module, args: tuple, output: Tensor) -> None:  # None: output unchanged
        seen.setdefault(id(module), args[0].detach())

    hooks = [c.register_forward_hook(record) for c in consumers]
    try:
        _outputs(model, inputs)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _channel_slices(group: Any, n_channels: int, in_handlers: set[str]) -> list[tuple]:
    """For each consumer in ``group`` (built over all channels): the consumer, and for channel
    ``j`` the block of its input indices ``block[j]`` (flatten expands one channel to k inputs)."""
    out = []
    for dep, idxs in group:
        module = dep.target.module
        if getattr(dep.handler, "__name__", "") not in in_handlers or not isinstance(
            module, PRUNABLE
        ):
            continue
        idxs = list(idxs)
        k = len(idxs) // n_channels
        if k * n_channels != len(idxs):
            return []  # an index mapping we do not understand: find no candidates here
        out.append((module, [idxs[j * k : (j + 1) * k] for j in range(n_channels)]))
    return out


def _in_weight(consumer: Prunable, index: list[int]) -> Tensor:
    """The consumer's weights for the given inputs (Linear columns, Conv input channels)."""
    return consumer.weight[:, index]


def _fold_constant(consumer: Prunable, index: list[int], value: Tensor) -> bool:
    """Add the consumer's response to a constant input block to its bias, if that is exact."""
    if isinstance(consumer, nn.Linear):
        delta = consumer.weight[:, index] @ value.reshape(len(index))
    elif all(p == 0 for p in consumer.padding) and consumer.groups == 1:
        w = consumer.weight[:, index]  # (out, k, *kernel): a constant channel sums the kernel
        delta = (w.flatten(2).sum(-1) * value.reshape(1, len(index))).sum(1)
    else:
        return False  # zero padding makes a constant channel non-constant at the borders
    if consumer.bias is None:
        consumer.bias = nn.Parameter(torch.zeros_like(delta))
    consumer.bias.data += delta
    return True


def _constant(block: Tensor) -> Tensor | None:
    """Per input index, the value if it is the same for every sample and position, else None."""
    flat = block.transpose(0, 1).reshape(block.shape[1], -1)
    lo, hi = flat.min(dim=1).values, flat.max(dim=1).values
    tolerance = 1e-7 * (1 + hi.abs())
    return lo if bool(((hi - lo) <= tolerance).all()) else None


def _ungrouped(layer: nn.Module) -> bool:
    """A Linear, or a Conv that is not grouped: the layers whose units `compact` removes."""
    if isinstance(layer, nn.Linear):
        return True
    return isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d) and layer.groups == 1


def _out_fn(tp: Any, layer: Prunable) -> Any:
    """Torch-Pruning's function removing ``layer``'s output units."""
    linear = isinstance(layer, nn.Linear)
    return tp.prune_linear_out_channels if linear else tp.prune_conv_out_channels


def _consumers(tp: Any, graph: Any, layer: Prunable) -> list[tuple]:
    """`_channel_slices` of the layers consuming ``layer``'s units, from the dependency group
    over all of them."""
    n = layer.weight.shape[0]
    full = graph.get_pruning_group(layer, _out_fn(tp, layer), idxs=list(range(n)))
    return _channel_slices(full, n, {"prune_in_channels"})


#: normalizations that mix a unit with the others: a dead unit's output is not constant after them
MIXING = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def _dependents(tp: Any, graph: Any, layer: Prunable) -> tuple[list[Prunable], bool]:
    """The layers whose units are ``layer``'s (residual additions couple them: removing unit
    ``j`` of one removes it from all), ``layer`` first; and whether a dead unit's constant output
    can be folded into every consumer (Linear, or unpadded ungrouped Conv, with no normalization
    across units on the way), which is when `compact` removes dead units."""
    n = layer.weight.shape[0]
    full = graph.get_pruning_group(layer, _out_fn(tp, layer), idxs=list(range(n)))
    producers: list[Prunable] = [layer]
    foldable = True
    for dep, _ in full:
        module = dep.target.module
        handler = getattr(dep.handler, "__name__", "")
        if isinstance(module, MIXING):
            foldable = False
        if handler == "prune_out_channels" and isinstance(module, PRUNABLE):
            if not any(module is p for p in producers):
                producers.append(module)
        elif handler == "prune_in_channels" and isinstance(module, PRUNABLE):
            padded = not isinstance(module, nn.Linear) and (
                module.groups != 1 or not all(p == 0 for p in module.padding)
            )
            foldable = foldable and not padded
    return producers, foldable


def keep_one(removable: Tensor, importance: Tensor) -> Tensor:
    """``removable`` without the most important unit when it holds them all: a layer keeps
    one unit (a layer of width 0 breaks the shapes downstream), in `compact` and in the count of
    `TargetSparsity` alike."""
    if removable.numel() and bool(removable.all()):
        removable = removable.clone()
        removable[int(torch.argmax(importance))] = False
    return removable


def _prune_layer(
    tp: Any, model: nn.Module, graph: Any, layer: Prunable, inputs: tuple[tuple, dict[str, Any]]
) -> bool:
    """Remove the units `UnitLayer.zero_units` finds in ``layer`` (and the layers coupled to
    it), folding dead units' constant outputs into the consumers; True if anything was removed."""
    if not _ungrouped(layer):
        return False
    unit = _unit_layer(tp, graph, "", layer)
    if unit is None:
        return False
    seen = consumer_inputs(model, [c for c, _ in unit.consumers], inputs)
    with torch.no_grad():
        unused = unit.unused()
        removable = unit.zero_units(unit.silent(seen))
    candidates = [j for j in range(unit.units) if bool(removable[j])]
    with torch.no_grad():
        for j in list(candidates):
            if unused[j]:
                continue
            for consumer, blocks in unit.consumers:
                block = blocks[j].tolist()
                values = _constant(seen[id(consumer)][:, block])
                if values is None or (
                    bool(values.any()) and not _fold_constant(consumer, block, values)
                ):
                    candidates.remove(j)
                    break
    if not candidates:
        return False
    group = graph.get_pruning_group(layer, _out_fn(tp, layer), idxs=candidates)
    if not graph.check_pruning_group(group):
        return False
    group.prune()
    return True


@dataclasses.dataclass
class UnitLayer:
    """A layer whose output units feed other layers: for unit ``j``, its incoming weights are
    ``weight[j]`` of each of ``producers`` (the layer, and the layers a residual addition couples
    to it) and each consumer's weights for it are ``consumer.weight[:, index[j]]`` (``index``:
    one row of input indices per unit; flatten maps a channel to several). ``foldable``: a dead
    unit's constant output folds into every consumer."""

    name: str
    layer: Prunable
    consumers: list[tuple[Prunable, Tensor]]
    producers: list[Prunable] = dataclasses.field(default_factory=list)
    foldable: bool = True

    @property
    def units(self) -> int:
        return self.layer.weight.shape[0]

    def _outgoing(self) -> list[Tensor]:
        """Per consumer, its weights for each unit as rows: ``(units, out * k * ...)``."""
        out = []
        for consumer, index in self.consumers:
            w = consumer.weight.detach()[:, index.to(consumer.weight.device)]  # (out, n, k, ...)
            out.append(w.transpose(0, 1).reshape(self.units, -1))
        return out

    def _incoming(self) -> list[Tensor]:
        return [p.weight.detach().reshape(self.units, -1) for p in self.producers or [self.layer]]

    def dead(self) -> Tensor:
        """Per unit: the incoming weights of every producer are all zero."""
        dead = torch.ones(self.units, dtype=torch.bool, device=self.layer.weight.device)
        for rows in self._incoming():
            dead &= (rows == 0).all(dim=1)
        return dead

    def unused(self) -> Tensor:
        """Per unit: every consumer's weights for it are all zero."""
        unused = torch.ones(self.units, dtype=torch.bool, device=self.layer.weight.device)
        for rows in self._outgoing():
            unused &= (rows == 0).all(dim=1)
        return unused

    def silent(self, seen: Mapping[int, Tensor]) -> Tensor:
        """Per unit: every consumer's input from it is exactly 0 on the example inputs
        (``seen``: each consumer's input, by ``id``), as a dead unit's is after a ReLU that its
        bias or batch-norm shift keeps below 0."""
        quiet = torch.ones(self.units, dtype=torch.bool, device=self.layer.weight.device)
        for consumer, index in self.consumers:
            x = seen[id(consumer)]
            zero = (x == 0).transpose(0, 1).reshape(x.shape[1], -1).all(dim=1)  # per input
            quiet &= zero[index.to(zero.device)].all(dim=1).to(quiet.device)
        return quiet

    def needs_inputs(self) -> bool:
        """Whether `zero_units` depends on what the consumers see: some dead unit is still used
        and its constant output cannot fold (one sync)."""
        return not self.foldable and bool((self.dead() & ~self.unused()).any())

    def zero_units(self, silent: Tensor | None = None) -> Tensor:
        """Per unit: what `compact` removes: unused, or dead where its constant output folds
        into the consumers or is exactly 0 there (``silent``: `silent` on the example inputs;
        None: where `needs_inputs` is False); one unit of a layer stays (`keep_one`). On the
        weights' device; a sync only when every unit is removable."""
        zero = self.unused()
        if self.foldable:
            zero |= self.dead()
        elif silent is not None:
            zero |= self.dead() & silent
        return keep_one(zero, self.importance())

    def importance(self) -> Tensor:
        """Per unit: the norm of its incoming weights plus its consumers' weights for it."""
        total = torch.zeros(self.units, dtype=torch.float64, device=self.layer.weight.device)
        for rows in [*self._incoming(), *self._outgoing()]:
            total = total + rows.double().norm(dim=1)
        return total


def _unit_layer(tp: Any, graph: Any, name: str, layer: Prunable) -> UnitLayer | None:
    consumers = [
        (module, torch.tensor(blocks, dtype=torch.long))
        for module, blocks in _consumers(tp, graph, layer)
    ]
    if not consumers:
        return None
    producers, foldable = _dependents(tp, graph, layer)
    return UnitLayer(name, layer, consumers, producers, foldable)


def trace_inputs(inputs: Any) -> tuple[tuple, dict[str, Any]]:
    """``(args, kwargs)`` of example inputs: a tensor, a sequence of positional inputs, or a
    mapping of keyword inputs."""
    if isinstance(inputs, Tensor):
        return (inputs,), {}
    if isinstance(inputs, Mapping):
        return (), dict(inputs)
    return tuple(inputs), {}


def build_graph(tp: Any, model: nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
    """Torch-Pruning's dependency graph of ``model`` called as ``model(*args, **kwargs)``."""
    return tp.DependencyGraph().build_dependency(
        model, example_inputs=(args, kwargs), forward_fn=lambda m, ex: m(*ex[0], **ex[1])
    )


def unit_layers(
    model: nn.Module, example_inputs: Any, example_kwargs: Mapping[str, Any] | None = None
) -> list[UnitLayer]:
    """Every Linear / Conv layer (not grouped) whose units other layers consume, found with
    Torch-Pruning's dependency graph on ``model(*example_inputs, **example_kwargs)`` (traced in
    eval mode); layers coupled by residual additions are one entry (their units are removed
    together)."""
    tp = _torch_pruning()
    args, kwargs = trace_inputs(example_inputs)
    kwargs = {**kwargs, **(example_kwargs or {})}
    root = unwrap(model)
    training = root.training
    root.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd (no backward)
            graph = build_graph(tp, root, args, kwargs)
    finally:
        root.train(training)
    found: list[UnitLayer] = []
    covered: set[int] = set()
    for name, layer in root.named_modules():
        if not _ungrouped(layer) or id(layer) in covered:
            continue
        unit = _unit_layer(tp, graph, name, cast(Prunable, layer))
        if unit is not None:
            covered.update(id(p) for p in unit.producers)
            found.append(unit)
    return found


def _snapshot(tp: Any, graph: Any, model: nn.Module, layer: Prunable) -> dict[str, nn.Module]:
    """Copies of the modules a surgery of ``layer`` can change, by name: the layers of its
    dependency group (itself, its consumers, the norms between them); ``{"": model}`` (a copy of
    the whole model) where the group cannot be read. Nothing for a layer with nothing to
    remove, so `compact` copies only the layers it operates on, not the model once per layer."""
    if not _ungrouped(layer):
        return {}
    n = layer.weight.shape[0]
    with torch.no_grad():
        if not bool((layer.weight.reshape(n, -1) == 0).all(dim=1).any()) and not _has_unused(
            tp, graph, layer
        ):
            return {}
    names = {id(m): name for name, m in model.named_modules()}
    try:
        group = graph.get_pruning_group(layer, _out_fn(tp, layer), idxs=list(range(n)))
        touched = {
            names[id(dep.target.module)] for dep, _ in group if id(dep.target.module) in names
        }
    except (RuntimeError, ValueError, IndexError, AttributeError):
        touched = {""}
    if "" in touched:
        return {"": copy.deepcopy(model)}
    return {name: copy.deepcopy(model.get_submodule(name)) for name in touched}


def _has_unused(tp: Any, graph: Any, layer: Prunable) -> bool:
    """Whether some unit of ``layer`` has all-zero weights in every consumer."""
    consumers = _consumers(tp, graph, layer)
    if not consumers:
        return False
    n = layer.weight.shape[0]
    with torch.no_grad():
        return any(
            all(not bool(_in_weight(c, blocks[j]).any()) for c, blocks in consumers)
            for j in range(n)
        )


def _restore(model: nn.Module, snapshot: dict[str, nn.Module]) -> nn.Module:
    """``model`` with the modules of a `_snapshot` put back (the whole copy for ``""``)."""
    if "" in snapshot:
        return snapshot[""]
    for name, module in snapshot.items():
        model.set_submodule(name, module)
    return model


def compact(model: nn.Module, example_inputs: Any, *, atol: float = 1e-5) -> nn.Module:
    """A smaller copy of ``model`` (eval mode) without its dead and unused units and filters.

    A unit is removed when its incoming weights (in every layer a residual addition couples to
    its layer) are all exactly zero, its constant output folded into the consumers' biases where
    that is exact, or when every consumer's weights for it are exactly zero; each layer keeps at
    least one unit. `UnitLayer.zero_units` counts the same units (what `TargetSparsity` counts).
    The original model is not modified.

    Args:
        model: the trained model.
        example_inputs: a tensor, a tuple of positional inputs or a dict of keyword inputs, to
            trace the model and verify the result.
        atol: the largest difference allowed between the outputs of the original and the
            compacted model on ``example_inputs`` (a layer's surgery is undone past it).

    Returns:
        The compacted model, computing the same function.

    Raises:
        ModuleNotFoundError: Torch-Pruning is not installed (``pip install 'torchpenalty[prune]'``).
    """
    tp = _torch_pruning()
    inputs = trace_inputs(example_inputs)
    working = copy.deepcopy(unwrap(model)).eval()
    reference = _outputs(working, inputs)
    graph = build_graph(tp, working, *inputs)
    names = [name for name, m in working.named_modules() if isinstance(m, PRUNABLE)]
    for name in names:
        snapshot: dict[str, nn.Module] = {}
        try:
            layer = cast(Prunable, working.get_submodule(name))
            snapshot = _snapshot(tp, graph, working, layer)
            changed = _prune_layer(tp, working, graph, layer, inputs)
        except (RuntimeError, ValueError, IndexError) as exc:
            warnings.warn(f"compact: left layer {name!r} as it is ({exc})", stacklevel=2)
            changed, ok = True, False  # undo whatever part of the surgery happened
        else:
            ok = not changed or _same(_outputs(working, inputs), reference, atol)
        if changed and not ok:
            working = _restore(working, snapshot)
            graph = build_graph(tp, working, *inputs)
    if not _same(_outputs(working, inputs), reference, atol):
        raise RuntimeError("compact() changed the model's outputs; please report this model")
    return working
