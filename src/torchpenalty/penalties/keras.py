"""`from_keras`: the torchpenalty equal of a Keras 3 regularizer or constraint.

Conversions (Keras kernels are PyTorch weights transposed: Dense ``(in, out)``, Conv
``(*window, in, out)``):

- arguments are read as Keras reads them: ``None`` is the default strength of ``L1``, ``L2``
  and ``L1L2`` (refused elsewhere, as Keras does), ints, bools and NumPy
  floats are floats, and a value Keras refuses (a negative strength, a NaN) is refused, naming
  the Keras argument and the value; a config key Keras' constructor does not take is refused;
- ``L1(l1)`` is ``L1(l1)``; ``L2(l2) = l2 * sum(w**2)`` is ``L2(2 * l2)`` (ours has the 1/2 that
  makes ``L2(lam)`` equal ``weight_decay=lam``); ``L1L2(l1, l2)`` is ``ElasticNet(l1, 2 * l2)``;
  ``L1`` and ``OrthogonalRegularizer`` keep their strength as a float32 tensor, so a config reads
  ``0.03`` as ``0.029999999329447746``: the shortest decimal of that float32 is read back;
- ``MaxNorm``, ``UnitNorm``, ``MinMaxNorm`` are ours with groups `KerasAxes` of their ``axis``:
  Keras' slices of its kernel, found on the PyTorch weight whatever its rank (the default
  ``axis=0`` is each output unit of a Dense kernel, but on a Conv kernel each slice across the
  first window axis, as in Keras); ``axis=None`` is ``groups="tensor"``;
- ``NonNeg`` is ``NonNeg``;
- ``OrthogonalRegularizer(factor, mode)`` is ``Orthogonal(factor, groups)``: Keras' ``"rows"`` of
  the ``(in, out)`` kernel are our ``"cols"`` of the ``(out, in)`` weight, its ``"columns"`` our
  ``"rows"``.

``layout="same"`` reads a weight stored alike in both (an Embedding table): Keras axis ``a`` is
dim ``a``, and Keras' rows are our rows. Keras need not be installed: objects are read through
``get_config()`` and their class name; names are Keras' class names or their snake-case forms
(``"l1_l2"``, ``"max_norm"``), as ``keras.regularizers.get`` takes them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import L1, L2, ElasticNet, MaxNorm, MinMaxNorm, NonNeg, Orthogonal, Penalty, UnitNorm, Zero
from .keras_axes import LAYOUTS, KerasAxes


def _number(
    config: Mapping[str, Any], key: str, default: float, class_name: str, none_ok: bool = False
) -> float:
    """A Keras argument as Keras reads it (absent, or None where Keras allows it: the default),
    or a `ValueError` naming it."""
    if key not in config:
        return default
    value = config[key]
    if value is None and none_ok:
        return default
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"Keras {class_name}({key}={value!r}): {key} must be a number")
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"Keras {class_name}({key}={value!r}): {key} must be a finite number >= 0")
    return number


def _float32(value: float) -> float:
    """The shortest decimal that rounds to the float32 Keras keeps."""
    return float(np.format_float_positional(np.float32(value), unique=True, trim="-"))


def _groups(config: Mapping[str, Any], class_name: str, layout: str) -> Any:
    """Our groups for Keras' ``axis`` (default 0)."""
    axis = config.get("axis", 0)
    try:
        groups = KerasAxes(axis, layout)
    except (TypeError, ValueError):
        raise ValueError(
            f"Keras {class_name}(axis={axis!r}): axis must be an int, a list of ints or None"
        ) from None
    return "tensor" if groups.axes is None else groups


def _orthogonal_groups(mode: object, layout: str) -> str:
    """Keras' mode on its ``(in, out)`` kernel as our grouping of the ``(out, in)`` weight."""
    if mode not in ("rows", "columns"):
        raise ValueError(
            f"Keras OrthogonalRegularizer(mode={mode!r}): mode must be 'rows' or 'columns'"
        )
    if layout == "same":
        return "rows" if mode == "rows" else "cols"
    return "cols" if mode == "rows" else "rows"


def _l1l2(l1: float, l2: float) -> Penalty:
    if l1 and l2:
        return ElasticNet(l1, 2 * l2)
    if l1:
        return L1(l1)
    return L2(2 * l2) if l2 else Zero()


Converter = Callable[[Mapping[str, Any], str, str], Penalty]

#: Keras class name -> (its constructor's arguments, the conversion)
CONVERTERS: dict[str, tuple[tuple[str, ...], Converter]] = {
    "L1": (("l1",), lambda c, n, lay: L1(_float32(_number(c, "l1", 0.01, n, none_ok=True)))),
    "L2": (("l2",), lambda c, n, lay: L2(2 * _number(c, "l2", 0.01, n, none_ok=True))),
    "L1L2": (
        ("l1", "l2"),
        lambda c, n, lay: _l1l2(
            _number(c, "l1", 0.0, n, none_ok=True), _number(c, "l2", 0.0, n, none_ok=True)
        ),
    ),
    "MaxNorm": (
        ("max_value", "axis"),
        lambda c, n, lay: MaxNorm(_number(c, "max_value", 2.0, n), _groups(c, n, lay)),
    ),
    "UnitNorm": (("axis",), lambda c, n, lay: UnitNorm(_groups(c, n, lay))),
    "MinMaxNorm": (
        ("min_value", "max_value", "rate", "axis"),
        lambda c, n, lay: MinMaxNorm(
            _number(c, "min_value", 0.0, n),
            _number(c, "max_value", 1.0, n),
            _number(c, "rate", 1.0, n),
            _groups(c, n, lay),
        ),
    ),
    "NonNeg": ((), lambda c, n, lay: NonNeg()),
    "OrthogonalRegularizer": (
        ("factor", "mode"),
        lambda c, n, lay: Orthogonal(
            _float32(_number(c, "factor", 0.01, n)),
            _orthogonal_groups(c.get("mode", "rows"), lay),
        ),
    ),
}


def snake_case(class_name: str) -> str:
    """Keras' ``to_snake_case``: ``"L1L2"`` -> ``"l1l2"``, ``"MaxNorm"`` -> ``"max_norm"``."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


#: every name Keras' ``get`` takes for a class we convert
NAMES = {alias: name for name in CONVERTERS for alias in (name, snake_case(name))}


def _class_name(name: object) -> str:
    if isinstance(name, str) and name in NAMES:
        return NAMES[name]
    raise ValueError(
        f"no torchpenalty equal of Keras {name!r}; supported: {', '.join(sorted(CONVERTERS))} "
        "(or their snake-case names)"
    )


def from_keras(obj: Any, layout: str = "kernel") -> Penalty:
    """The torchpenalty penalty or constraint equal to a Keras regularizer or constraint.

    Args:
        obj: a Keras object (``keras.regularizers.L2(1e-4)``, ``keras.constraints.MaxNorm(3)``),
            its serialized ``{"class_name": ..., "config": {...}}`` dict, or a name Keras' ``get``
            takes (``"l2"``, ``"max_norm"``: the class with its defaults).
        layout: how the PyTorch weight stores Keras' tensor: ``"kernel"`` (Dense and Conv
            kernels, transposed) or ``"same"`` (Embedding tables, biases).

    Returns:
        The equal `Penalty` (the conversions are in the module docstring).

    Raises:
        TypeError: ``obj`` is none of these.
        ValueError: a class with no equal here, a config key Keras does not take, a value Keras
            refuses, an unknown ``layout``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if isinstance(obj, str):
        class_name, config = _class_name(obj), {}
    elif isinstance(obj, Mapping):
        if "class_name" not in obj:
            raise ValueError(
                "a serialized Keras object needs a 'class_name' key (and 'config'), got keys "
                f"{sorted(obj)}"
            )
        raw = obj.get("config") or {}
        if not isinstance(raw, Mapping):
            raise ValueError(f"a serialized Keras object's 'config' must be a dict, got {raw!r}")
        class_name, config = _class_name(obj["class_name"]), dict(raw)
    elif callable(getattr(obj, "get_config", None)):
        class_name, config = _class_name(type(obj).__name__), dict(obj.get_config())
    else:
        raise TypeError(
            "from_keras takes a Keras regularizer or constraint, its "
            f"{{'class_name', 'config'}} dict or its name; got {type(obj).__name__} {obj!r}"
        )
    arguments, convert = CONVERTERS[class_name]
    unknown = sorted(set(config) - set(arguments))
    if unknown:
        raise ValueError(
            f"Keras {class_name} takes no argument {', '.join(map(repr, unknown))} "
            f"(its arguments: {', '.join(arguments) or 'none'})"
        )
    return convert(config, class_name, layout)


__all__ = ["from_keras"]
