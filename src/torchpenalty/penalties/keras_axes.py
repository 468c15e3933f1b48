"""`KerasAxes`: the groups of a Keras norm constraint's ``axis``, read on a PyTorch weight.

Keras normalizes over ``axis`` of its own kernel: each group is one slice of the kernel across
those axes. A Keras kernel is the PyTorch weight with its dims permuted, so the same groups on
the PyTorch weight depend on its rank:

- ``layout="kernel"`` (Dense and Conv kernels): Keras ``(*window, in, out)`` is PyTorch
  ``(out, in, *window)``, so Keras axis ``a`` of a rank-``r`` kernel is PyTorch dim
  ``[2, ..., r-1, 1, 0][a]`` (Dense: axis 0 is dim 1, axis 1 is dim 0); a tensor of rank 1 or
  less (a bias) is stored alike in both;
- ``layout="same"`` (Embedding tables, biases, any weight stored alike): axis ``a`` is dim ``a``.

``axis=None`` is the whole tensor. Negative axes count from the end, as in Keras.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

LAYOUTS = ("kernel", "same")


def _check_axes(axis: object) -> tuple[int, ...] | None:
    if axis is None:
        return None
    items = list(axis) if isinstance(axis, list | tuple) else [axis]
    axes = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int | np.integer):
            raise TypeError(f"axis must be an int, a list of ints or None, got {axis!r}")
        axes.append(int(item))
    if not axes:
        raise ValueError(f"axis must name at least one axis, got {axis!r}")
    return tuple(axes)


@dataclasses.dataclass(frozen=True)
class KerasAxes:
    """Groups of the Keras kernel's slices across ``axes`` (None: the whole tensor), read on
    the PyTorch weight (see the module docstring). A callable grouping: ``KerasAxes((0,))(w)`` is
    an integer tensor of ``w``'s shape holding each element's group."""

    axes: tuple[int, ...] | None
    layout: str = "kernel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", _check_axes(self.axes))
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {self.layout!r}")

    def dims(self, ndim: int) -> tuple[int, ...]:
        """The PyTorch dims one group spans in a weight of ``ndim`` dims."""
        if self.axes is None or ndim == 0:
            return tuple(range(ndim))
        order = list(range(ndim))
        if self.layout == "kernel" and ndim >= 2:
            order = [*range(2, ndim), 1, 0]
        dims = []
        for axis in self.axes:
            if not -ndim <= axis < ndim:
                raise ValueError(
                    f"Keras axis {axis} is out of range for a weight of {ndim} dims "
                    f"(keras_axes={list(self.axes)})"
                )
            dims.append(order[axis % ndim])
        return tuple(sorted(set(dims)))

    def __call__(self, w: Any) -> Any:
        dims = self.dims(w.ndim)
        kept = [n if d not in dims else 1 for d, n in enumerate(w.shape)]
        if isinstance(w, Tensor):
            ids = torch.arange(math.prod(kept), device=w.device).reshape(kept)
            return ids.expand(tuple(w.shape))
        return np.broadcast_to(np.arange(math.prod(kept)).reshape(kept), w.shape)

    def get_config(self) -> dict[str, Any]:
        return {"keras_axes": None if self.axes is None else list(self.axes), "layout": self.layout}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> KerasAxes:
        unknown = set(config) - {"keras_axes", "layout"}
        if unknown:
            raise ValueError(f"a keras_axes grouping has no keys {sorted(unknown)}")
        return cls(config["keras_axes"], config.get("layout", "kernel"))

    def __repr__(self) -> str:
        axes = "None" if self.axes is None else ",".join(map(str, self.axes))
        return f"keras_axes({axes}; {self.layout})"


__all__ = ["LAYOUTS", "KerasAxes"]
