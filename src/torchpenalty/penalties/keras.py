"""`from_keras`: the torchpenalty equal of a Keras 3 regularizer or constraint.

Conversions (Keras kernels are PyTorch weights transposed: Dense ``(in, out)``, Conv
``(*window, in, out)``):

- strengths are read back as written (Keras keeps them as float32);
- ``L1(l1)`` is ``L1(l1)``; ``L2(l2) = l2 * sum(w**2)`` is ``L2(2 * l2)`` (ours has the 1/2 that
  makes ``L2(lam)`` equal ``weight_decay=lam``); ``L1L2(l1, l2)`` is ``ElasticNet(l1, 2 * l2)``;
- ``MaxNorm``, ``UnitNorm``, ``MinMaxNorm`` with their default ``axis=0`` (a Dense kernel's
  per-output-unit norms) or ``axis=[0, ..., k-1]`` (a Conv kernel's: every axis but the last)
  are ours with ``groups="rows"``; any other axis is a `ValueError` naming it;
- ``NonNeg`` is ``NonNeg``;
- ``OrthogonalRegularizer(factor, mode)`` is ``Orthogonal(factor, groups)``: Keras' ``"rows"`` of
  the ``(in, out)`` kernel are our ``"cols"`` of the ``(out, in)`` weight, its ``"columns"`` our
  ``"rows"``.

Keras need not be installed: objects are read through ``get_config()`` and their class name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import L1, L2, ElasticNet, MaxNorm, MinMaxNorm, NonNeg, Orthogonal, Penalty, UnitNorm, Zero


def _rows(config: Mapping[str, Any], class_name: str) -> str:
    """``"rows"`` for Keras' per-output-unit axes, else a `ValueError` naming the axis."""
    axis = config.get("axis", 0)
    axes = list(axis) if isinstance(axis, list | tuple) else [axis]
    if axes == list(range(len(axes))) and axes:
        return "rows"
    raise ValueError(
        f"{class_name}(axis={axis!r}) has no torchpenalty equal: only the per-output-unit axes "
        "convert (axis=0 for a Dense kernel, axis=[0, ..., k-1] for a Conv kernel), to "
        "groups='rows'; use groups='cols' or 'tensor' by hand for other groupings"
    )


def _strength(config: Mapping[str, Any], key: str, default: float) -> float:
    """A Keras strength as the user wrote it: Keras keeps it as a float32 (its config reads
    0.03 as 0.029999999329447746), so the shortest decimal that rounds to that float32."""
    value = config.get(key, default)
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _orthogonal_groups(mode: object) -> str:
    """Keras' mode on its ``(in, out)`` kernel as our grouping of the ``(out, in)`` weight."""
    if mode == "rows":
        return "cols"
    if mode == "columns":
        return "rows"
    raise ValueError(f"OrthogonalRegularizer(mode={mode!r}): mode must be 'rows' or 'columns'")


def _l1l2(l1: float, l2: float) -> Penalty:
    if l1 and l2:
        return ElasticNet(l1, 2 * l2)
    if l1:
        return L1(l1)
    return L2(2 * l2) if l2 else Zero()


CONVERTERS: dict[str, Callable[[Mapping[str, Any], str], Penalty]] = {
    "L1": lambda c, n: L1(_strength(c, "l1", 0.01)),
    "L2": lambda c, n: L2(2 * _strength(c, "l2", 0.01)),
    "L1L2": lambda c, n: _l1l2(_strength(c, "l1", 0.0), _strength(c, "l2", 0.0)),
    "MaxNorm": lambda c, n: MaxNorm(c.get("max_value", 2.0), _rows(c, n)),
    "UnitNorm": lambda c, n: UnitNorm(_rows(c, n)),
    "MinMaxNorm": lambda c, n: MinMaxNorm(
        c.get("min_value", 0.0), c.get("max_value", 1.0), c.get("rate", 1.0), _rows(c, n)
    ),
    "NonNeg": lambda c, n: NonNeg(),
    "OrthogonalRegularizer": lambda c, n: Orthogonal(
        _strength(c, "factor", 0.01), _orthogonal_groups(c.get("mode", "rows"))
    ),
}


def from_keras(obj: Any) -> Penalty:
    """The torchpenalty penalty or constraint equal to a Keras regularizer or constraint.

    Args:
        obj: a Keras object (``keras.regularizers.L2(1e-4)``, ``keras.constraints.MaxNorm(3)``)
            or its serialized ``{"class_name": ..., "config": {...}}`` dict.

    Returns:
        The equal `Penalty` (the conversions are in the module docstring).

    Raises:
        TypeError: ``obj`` is neither.
        ValueError: a class with no equal here, or an axis other than the per-unit ones.
    """
    if isinstance(obj, Mapping):
        if "class_name" not in obj:
            raise ValueError(
                "a serialized Keras object needs a 'class_name' key (and 'config'), got keys "
                f"{sorted(obj)}"
            )
        class_name, config = str(obj["class_name"]), dict(obj.get("config") or {})
    elif callable(getattr(obj, "get_config", None)):
        class_name, config = type(obj).__name__, dict(obj.get_config())
    else:
        raise TypeError(
            "from_keras takes a Keras regularizer or constraint, or its "
            f"{{'class_name', 'config'}} dict; got {type(obj).__name__} {obj!r}"
        )
    if class_name not in CONVERTERS:
        raise ValueError(
            f"no torchpenalty equal of Keras {class_name!r}; supported: "
            f"{', '.join(sorted(CONVERTERS))}"
        )
    return CONVERTERS[class_name](config, class_name)


__all__ = ["from_keras"]
