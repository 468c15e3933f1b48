"""Callback settings whose rules are predicates, lambdas, classes, modules and reference
mappings: their checkpoint key must be the same in every process (`test_lightning` compares a
new process's, which imports only torchpenalty, with its own)."""

from __future__ import annotations

import json

import torch
from torch import nn

from torchpenalty import L2
from torchpenalty.integrations.callbacks import CallbackSpec


def is_weight(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    return name.endswith("weight")


def settings() -> list[dict]:
    """Keyword arguments of `RegularizerCallback`, one dict per callback."""
    w0 = {"net.0.weight": torch.zeros(16, 8, dtype=torch.float64)}
    return [
        {"penalty": {is_weight: "l1(1e-3)"}},
        {"penalty": {lambda n, p, m: n.startswith("net.2"): "l2(1e-3)"}, "mode": "proximal"},
        {"penalty": {nn.Linear: "l2(1e-3)"}, "include": is_weight},
        {"penalty": {"net.0.weight": L2(1e-2, center=w0)}, "exclude": [nn.Identity()]},
        {"penalty": "l2(1e-3)", "schedule": lambda step: 1.0 / (1 + step)},
    ]


def spec(penalty, mode="decoupled", include=None, exclude=None, schedule=None) -> CallbackSpec:
    return CallbackSpec(penalty, mode, include, exclude, "weights", schedule)


def keys() -> list[dict[str, str]]:
    return [spec(**s).key() for s in settings()]


if __name__ == "__main__":
    print(json.dumps(keys()))
