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
from collections.abc import Sequence
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


def _outputs(model: nn.Module, inputs: tuple) -> list[Tensor]:
    with torch.no_grad():
        out = model(*inputs)
    return [t for t in (out if isinstance(out, tuple | list) else (out,)) if isinstance(t, Tensor)]


def _same(a: list[Tensor], b: list[Tensor], atol: float) -> bool:
    return len(a) == len(b) and all(
        x.shape == y.shape and bool((x - y).abs().max() <= atol)
        if x.numel()
        else x.shape == y.shape
        for x, y in zip(a, b, strict=True)
    )


def _consumer_inputs(model: nn.Module, consumers: Sequence[nn.Module], inputs: tuple) -> dict:
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


def _prune_layer(tp: Any, model: nn.Module, graph: Any, layer: Prunable, inputs: tuple) -> bool:
    """Remove the dead and unused units of ``layer``; True if anything was removed."""
    if not _ungrouped(layer):
        return False
    n = layer.weight.shape[0]
    consumers = _consumers(tp, graph, layer)
    with torch.no_grad():
        dead = (layer.weight.reshape(n, -1) == 0).all(dim=1)
        unused = torch.ones(n, dtype=torch.bool, device=dead.device) if consumers else dead & False
        for consumer, blocks in consumers:
            for j, block in enumerate(blocks):
                if unused[j] and bool(_in_weight(consumer, block).any()):
                    unused[j] = False
    candidates = [j for j in range(n) if bool(dead[j]) or bool(unused[j])]
    if not candidates:
        return False
    if len(candidates) == n:
        candidates = candidates[1:]  # keep one unit: layers of width 0 break shapes downstream
    seen = _consumer_inputs(model, [c for c, _ in consumers], inputs)
    with torch.no_grad():
        for j in list(candidates):
            if unused[j]:
                continue
            for consumer, blocks in consumers:
                values = _constant(seen[id(consumer)][:, blocks[j]])
                if values is None or (
                    bool(values.any()) and not _fold_constant(consumer, blocks[j], values)
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
    ``layer.weight[j]`` and each consumer's weights for it are ``consumer.weight[:, index[j]]``
    (``index``: one row of input indices per unit; flatten maps a channel to several)."""

    name: str
    layer: Prunable
    consumers: list[tuple[Prunable, Tensor]]

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

    def zero_units(self) -> Tensor:
        """Per unit: its incoming weights are all zero (dead) or every consumer's weights for
        it are (unused): what `compact` removes. On the weights' device, no sync."""
        dead = (self.layer.weight.detach().reshape(self.units, -1) == 0).all(dim=1)
        unused = torch.ones_like(dead)
        for rows in self._outgoing():
            unused &= (rows == 0).all(dim=1)
        return dead | unused

    def importance(self) -> Tensor:
        """Per unit: the norm of its incoming weights plus its consumers' weights for it."""
        total = self.layer.weight.detach().reshape(self.units, -1).double().norm(dim=1)
        for rows in self._outgoing():
            total = total + rows.double().norm(dim=1)
        return total


def unit_layers(model: nn.Module, example_inputs: Tensor | Sequence[Tensor]) -> list[UnitLayer]:
    """Every Linear / Conv layer (not grouped) whose units other layers consume, found with
    Torch-Pruning's dependency graph on ``example_inputs`` (traced in eval mode)."""
    tp = _torch_pruning()
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    root = unwrap(model)
    training = root.training
    root.eval()
    try:
        with torch.enable_grad():  # Torch-Pruning traces through autograd (no backward)
            graph = tp.DependencyGraph().build_dependency(root, example_inputs=inputs)
    finally:
        root.train(training)
    found = []
    for name, layer in root.named_modules():
        if not _ungrouped(layer):
            continue
        consumers = [
            (module, torch.tensor(blocks, dtype=torch.long))
            for module, blocks in _consumers(tp, graph, cast(Prunable, layer))
        ]
        if consumers:
            found.append(UnitLayer(name, layer, consumers))
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


def compact(
    model: nn.Module, example_inputs: Tensor | Sequence[Tensor], *, atol: float = 1e-5
) -> nn.Module:
    """A smaller copy of ``model`` (eval mode) without its dead and unused units and filters.

    A unit is removed when its incoming weights are all exactly zero (its constant output is
    folded into the consumers' biases where that is exact) or when every consumer's weights for
    it are exactly zero. The original model is not modified.

    Args:
        model: the trained model.
        example_inputs: a tensor or a tuple of them, to trace the model and verify the result.
        atol: the largest difference allowed between the outputs of the original and the
            compacted model on ``example_inputs`` (a layer's surgery is undone past it).

    Returns:
        The compacted model, computing the same function.

    Raises:
        ModuleNotFoundError: Torch-Pruning is not installed (``pip install 'torchpenalty[prune]'``).
    """
    tp = _torch_pruning()
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    working = copy.deepcopy(unwrap(model)).eval()
    reference = _outputs(working, inputs)
    graph = tp.DependencyGraph().build_dependency(working, example_inputs=inputs)
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
            graph = tp.DependencyGraph().build_dependency(working, example_inputs=inputs)
    if not _same(_outputs(working, inputs), reference, atol):
        raise RuntimeError("compact() changed the model's outputs; please report this model")
    return working
