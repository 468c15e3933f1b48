"""Assertions and reference setups shared by several test files."""

from __future__ import annotations

import torch

from .conftest import WEIGHTS


def weight_groups(model, **extra):
    """Hand-built reference groups: the three weights decayed, everything else not."""
    weights = [p for n, p in model.named_parameters() if n in WEIGHTS]
    others = [p for n, p in model.named_parameters() if n not in WEIGHTS]
    return [{"params": weights, **extra}, {"params": others, **extra, "weight_decay": 0.0}]


def assert_same_parameters(a, b, rtol):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


def assert_moved(model, initial):
    pairs = zip(model.parameters(), initial.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)
