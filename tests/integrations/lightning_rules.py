"""Callbacks whose rules are predicates, classes, modules and reference mappings: their
``state_key`` must be the same in every process (`test_lightning` compares two)."""

from __future__ import annotations

import json

import torch
from torch import nn

from torchpenalty import L2
from torchpenalty.integrations.lightning import RegularizerCallback


def is_weight(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    return name.endswith("weight")


def callbacks() -> list[RegularizerCallback]:
    w0 = {"net.0.weight": torch.zeros(16, 8, dtype=torch.float64)}
    return [
        RegularizerCallback({is_weight: "l1(1e-3)"}),
        RegularizerCallback({lambda n, p, m: n.startswith("net.2"): "l2(1e-3)"}, mode="proximal"),
        RegularizerCallback({nn.Linear: "l2(1e-3)"}, include=is_weight),
        RegularizerCallback({"net.0.weight": L2(1e-2, center=w0)}, exclude=[nn.Identity()]),
        RegularizerCallback("l2(1e-3)", schedule=lambda step: 1.0 / (1 + step)),
    ]


def keys() -> list[str]:
    return [c.state_key for c in callbacks()]


if __name__ == "__main__":
    print(json.dumps(keys()))
