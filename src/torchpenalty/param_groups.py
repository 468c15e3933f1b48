"""`param_groups`: torch.optim parameter groups that decay only the selected parameters."""

from __future__ import annotations

from typing import Any

from torch import nn

from ._checks import check_strength
from .selection import Among, Rule, entries, select_entries


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
