"""Penalties centered on reference weights: ``R(w - w0)`` (L2-SP and its L1 / elastic net
siblings; Li, Grandvalet & Davoine, ICML 2018).

- value = ``R(w - w0)``; grad = ``R'(w - w0)``; decoupled ``w -= lr * R'(w - w0)``;
- prox = ``w0 + prox_R(w - w0, step)`` (for L2: ``(w + s*lam*w0) / (1 + s*lam)``).

``center="init"`` takes ``w0`` as the weights when the `Regularizer` is built; a `Reference`
wraps a mapping ``{name: w0}`` given instead. The regularizer keeps one copy of the selected
weights and hands each call its references in the `Batch`. The fast path works on the
differences ``w - w0`` chunk by chunk (at most the largest tensor's size at a time), through the
uncentered penalty's own kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..kernels import Tensors, pack
from .base import Penalty, Scalar
from .batch import Batch


class Reference:
    """Reference tensors by parameter name (``{name: w0}``), as a `center`: compared by identity,
    so that penalties holding one stay hashable."""

    def __init__(self, tensors: Mapping[str, Tensor]) -> None:
        if not isinstance(tensors, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()
        ):
            raise TypeError("a reference must map parameter names (str) to tensors")
        self.tensors = dict(tensors)

    def __repr__(self) -> str:
        return f"<reference of {len(self.tensors)} tensors>"


Center = str | Reference | None


def check_center(center: object) -> Center:
    """``None``, ``"init"``, or a mapping of reference tensors (wrapped in a `Reference`)."""
    if center is None or isinstance(center, Reference):
        return center
    if isinstance(center, str) and center.lower() == "init":
        return "init"
    if isinstance(center, Mapping):
        return Reference(center)
    raise ValueError(
        "center must be 'init' (the weights when the Regularizer is built) or a mapping of "
        f"parameter names to reference tensors, got {center!r}"
    )


def _differences(ws: Tensors, batch: Batch | None, who: Penalty) -> list[Tensor]:
    centers = [batch.center(i) if batch else None for i in range(len(ws))]
    if any(c is None for c in centers):
        raise ValueError(
            f"{who!r} measures w - w0 and needs the reference w0: apply it through a "
            "Regularizer, which holds w0"
        )
    return list(torch._foreach_sub(list(ws), centers))  # type: ignore[arg-type]


def _runs(ws: Tensors) -> list[list[int]]:
    return pack([w.numel() for w in ws], max(w.numel() for w in ws))


def _uncentered(part: Batch | None) -> Batch | None:
    """A run's batch without its centers: the uncentered penalty sees the differences."""
    return None if part is None else Batch(part.kernels, part.shards)


def _each_run(
    ws: Tensors,
    batch: Batch | None,
    who: Penalty,
    act: Callable[[list[int], Batch | None, list[Tensor]], Any],
) -> list[Any]:
    """``act(run, its batch, its differences w - w0)`` for each run of at most the largest
    tensor's size (so no temporary is larger than that)."""
    out = []
    for run in _runs(ws):
        part = batch.part(run) if batch else None
        out.append(act(run, part, _differences([ws[i] for i in run], part, who)))
    return out


def total_value(plain: Penalty, who: Penalty, ws: Tensors, batch: Batch | None) -> Tensor:
    parts = _each_run(ws, batch, who, lambda run, part, d: plain.total_value(d, _uncentered(part)))
    return torch.stack(parts).sum()


def grads(plain: Penalty, who: Penalty, ws: Tensors, scale: Scalar, batch: Batch | None):
    def act(run: list[int], part: Batch | None, d: list[Tensor]) -> list[Tensor]:
        return plain.grads(d, scale, _uncentered(part))

    return [g for run in _each_run(ws, batch, who, act) for g in run]


def add_grad_(plain: Penalty, who: Penalty, ws: Tensors, gs: Tensors, scale, batch) -> None:
    def act(run: list[int], part: Batch | None, d: list[Tensor]) -> None:
        plain.add_grad_(d, [gs[i] for i in run], scale, _uncentered(part))

    _each_run(ws, batch, who, act)


def decay_(plain: Penalty, who: Penalty, ws: Tensors, lr: Scalar, batch) -> None:
    def act(run: list[int], part: Batch | None, d: list[Tensor]) -> None:
        torch._foreach_sub_([ws[i] for i in run], plain.grads(d, lr, _uncentered(part)))

    _each_run(ws, batch, who, act)


def prox_(plain: Penalty, who: Penalty, ws: Tensors, step: Scalar, batch) -> None:
    def act(run: list[int], part: Batch | None, d: list[Tensor]) -> None:
        plain.prox_(d, step, _uncentered(part))  # d = prox(w - w0)
        assert part is not None  # `_differences` found every center
        torch._foreach_add_(d, [c for c in part.centers if c is not None])
        torch._foreach_copy_([ws[i] for i in run], d)

    _each_run(ws, batch, who, act)


__all__ = ["Center", "Reference", "check_center"]
