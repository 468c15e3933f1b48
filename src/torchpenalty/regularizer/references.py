"""The reference weights ``w0`` of penalties centered on them (``center="init"`` or a mapping):
captured once per regularized parameter, laid out like it (a DTensor sharded like an FSDP2
parameter), one copy of the selected weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..distributed import is_dtensor
from ..penalties import Penalty
from ..penalties.centered import Reference


def center_of(penalty: Penalty) -> object:
    """The one center of ``penalty``'s terms (None: uncentered); two different ones are an
    error."""
    centers = {id(c): c for t in penalty.summands() if (c := getattr(t, "center", None))}
    if len(centers) > 1:
        raise ValueError(f"{penalty!r} mixes two centers; give every term the same one")
    return next(iter(centers.values()), None)


def _laid_out_like(reference: Tensor, param: Tensor) -> Tensor:
    ref = reference.detach()
    if is_dtensor(param) and not is_dtensor(ref):
        from torch.distributed.tensor import distribute_tensor

        ref = distribute_tensor(
            ref.to(param.device, param.dtype),
            param.device_mesh,  # type: ignore[attr-defined]
            param.placements,  # type: ignore[attr-defined]
        )
        return ref
    return ref.to(device=param.device, dtype=param.dtype).clone()


def capture(
    names: Sequence[str], params: Sequence[Tensor], penalties: Sequence[Penalty]
) -> list[Tensor | None]:
    """Each parameter's ``w0``: a copy of the parameter now (``"init"``), the mapping's tensor
    for its name (a `Reference`), or None for an uncentered penalty."""
    out: list[Tensor | None] = []
    with torch.no_grad():
        for name, param, pen in zip(names, params, penalties, strict=True):
            center = center_of(pen)
            if center is None:
                out.append(None)
            elif center == "init":
                out.append(param.detach().clone())
            else:
                assert isinstance(center, Reference)
                out.append(_lookup(center, name, param))
    return out


def _lookup(reference: Reference, name: str, param: Tensor) -> Tensor:
    tensors = reference.tensors
    found = tensors.get(name, tensors.get(f"module.{name}"))
    if found is None:
        raise ValueError(
            f"the reference mapping has no tensor for regularized parameter {name!r} (it has "
            f"{len(tensors)} entries, e.g. {sorted(tensors)[:3]})"
        )
    if tuple(found.shape) != tuple(param.shape):
        raise ValueError(
            f"the reference of {name!r} has shape {tuple(found.shape)}, the parameter "
            f"{tuple(param.shape)}"
        )
    return _laid_out_like(found, param)


__all__ = ["capture", "center_of"]
