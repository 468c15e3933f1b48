"""Shared fixtures: a small model with every kind of layer the default selection must tell apart."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one worker per core (pytest -n auto): each uses one thread, and so do the processes it
    # starts (OMP_NUM_THREADS) and compilations (no compile worker pool of its own), instead
    # of every worker oversubscribing every core
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")


class ConvNet(nn.Module):
    """conv -> batch-norm -> linear -> layer-norm -> linear: weights, biases and norm scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(torch.tanh(self.ln(self.fc(x.flatten(1)))))


WEIGHTS = ["conv.weight", "fc.weight", "head.weight"]


def make_model(dtype: torch.dtype = torch.float64, seed: int = 0) -> ConvNet:
    torch.manual_seed(seed)
    model = ConvNet().to(dtype)
    with torch.no_grad():  # non-trivial norm parameters, so wrongly decaying them would show
        for p in (model.bn.weight, model.bn.bias, model.ln.weight, model.ln.bias):
            p.uniform_(0.5, 1.5)
    return model


def make_batches(n: int, dtype: torch.dtype = torch.float64, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 2, 4, 4, generator=g, dtype=dtype), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n)
    ]


@pytest.fixture
def model() -> ConvNet:
    return make_model()
