"""Assertions and reference setups shared by several test files."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np
import torch

from torchpenalty import Penalty

from .conftest import WEIGHTS


def weight_groups(model, **extra):
    """Hand-built reference groups: the three weights decayed, everything else not."""
    weights = [p for n, p in model.named_parameters() if n in WEIGHTS]
    others = [p for n, p in model.named_parameters() if n not in WEIGHTS]
    return [{"params": weights, **extra}, {"params": others, **extra, "weight_decay": 0.0}]


def assert_same_parameters(a, b, rtol):
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-12, msg=lambda m, n=name: f"{n}: {m}")


#: rtol = atol of fused kernels against the eager path, per dtype
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}


def close(a, b, dtype, equal_nan=False):
    """``a`` and ``b`` equal within `TOLERANCE` of ``dtype``, compared in float64."""
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol, equal_nan=equal_nan)


def last_dim_index(w):
    """A group per position along the last dim, across all other dims (column blocks)."""
    return torch.arange(w.shape[-1]).expand(w.shape)


def last_dim_runs(w):
    """A group per run along the last dim (a conv's kernel window; a Linear's rows)."""
    return torch.arange(w.numel()).view(w.shape) // w.shape[-1]


def assert_moved(model, initial):
    pairs = zip(model.parameters(), initial.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in pairs)


@dataclasses.dataclass(frozen=True, repr=False)
class LogCosh(Penalty):
    """A user-defined smooth penalty: value = lam * sum(log cosh w); no closed-form prox needed."""

    lam: float = 1.0
    name: ClassVar[str] = "test_logcosh"

    def value(self, w):
        return (
            self.lam * np.log(np.cosh(w)).sum()
            if isinstance(w, np.ndarray)
            else (self.lam * torch.log(torch.cosh(w)).sum())
        )

    def grad(self, w):
        return self.lam * (np.tanh(w) if isinstance(w, np.ndarray) else torch.tanh(w))

    def prox(self, w, step):
        # prox by a few Newton steps on x - w + step*lam*tanh(x) = 0 (monotone, converges)
        x = w * 1.0
        for _ in range(50):
            th = np.tanh(x) if isinstance(x, np.ndarray) else torch.tanh(x)
            x = x - (x - w + step * self.lam * th) / (1 + step * self.lam * (1 - th * th))
        return x
