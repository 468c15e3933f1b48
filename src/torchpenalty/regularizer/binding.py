"""Which tensors a regularizer's parameter names stand for, kept true when the model changes.

A `Regularizer` regularizes named parameters of a model (``"encoder.0.weight"``). The tensor behind
a name can be replaced after the regularizer was built: ``load_state_dict(sd, assign=True)``,
``to_empty()`` after meta-device initialisation, ``fully_shard`` (FSDP2), a submodule swapped for
another. `Binding` notices this in O(number of parameters) identity checks (no tensor is read) and
resolves every name again against the model, so the penalty always applies to the model's current
parameters. A name that no longer exists is an error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..selection import Entry, unwrap


class Binding:
    """The live location of each bound parameter: its owning module and attribute, and the chain
    of submodule links from the model's root down to it."""

    def __init__(
        self, model: nn.Module, names: Sequence[str], locations: Sequence[tuple[str, str]]
    ):
        self.model = model
        self.names = list(names)
        self.locations = list(locations)  # (module path in unwrap(model), attribute)
        self.params = self._resolve()
        self._record()

    @classmethod
    def of_entries(cls, model: nn.Module, entries: Sequence[Entry]) -> Binding:
        return cls(model, [e.name for e in entries], [(e.path, e.attr) for e in entries])

    def _resolve(self) -> list[nn.Parameter]:
        root = unwrap(self.model)
        params = []
        for name, (path, attr) in zip(self.names, self.locations, strict=True):
            try:
                module = root.get_submodule(path)
            except AttributeError:
                module = None
            param = None if module is None else module._parameters.get(attr)
            if param is None:
                raise ValueError(
                    f"regularized parameter {name!r} is no longer in the model (its module or "
                    "parameter was removed or replaced by one without it); build a new "
                    "Regularizer for the model as it is now"
                )
            params.append(param)
        return params

    def _record(self) -> None:
        root = unwrap(self.model)
        self._root = root
        self._owners = [root.get_submodule(path) for path, _ in self.locations]
        links: dict[tuple[int, str], tuple[nn.Module, str, nn.Module]] = {}
        for path, _ in self.locations:
            parent = root
            for part in path.split(".") if path else ():
                child = parent.get_submodule(part)
                links[(id(parent), part)] = (parent, part, child)
                parent = child
        self._links = list(links.values())  # (parent, name, child)

    def intact(self) -> bool:
        """Whether every name still stands for the tensor bound to it (identity checks only)."""
        if unwrap(self.model) is not self._root:
            return False
        for parent, part, child in self._links:
            if parent._modules.get(part) is not child:
                return False
        for owner, (_, attr), param in zip(self._owners, self.locations, self.params, strict=True):
            if owner._parameters.get(attr) is not param:
                return False
        return True

    def rebind(self) -> list[nn.Parameter]:
        """Resolve every name again; returns the model's current parameters."""
        self.params = self._resolve()
        self._record()
        return self.params
