"""`ActivityRegularizer` under DistributedDataParallel (2 gloo processes): the hooks sit on the
wrapped module, and averaging the ranks' gradients of ``loss + act()`` gives one process's
gradient on the full batch (each rank's penalty is divided by its own batch size)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchpenalty import ActivityRegularizer

from ..distributed_helpers import spawn

pytestmark = pytest.mark.distributed

WORLD, ROWS = 2, 8
RULES = {nn.Tanh: "l1(0.05)", "2": "l2(0.1)"}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def batch():
    g = torch.Generator().manual_seed(3)
    return torch.randn(ROWS, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (ROWS,), generator=g
    )


def step(model: nn.Module, act: ActivityRegularizer, x, y) -> list[torch.Tensor]:
    model.zero_grad()
    (F.cross_entropy(model(x), y) + act()).backward()
    return [p.grad.clone() for p in model.parameters()]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        ddp = nn.parallel.DistributedDataParallel(make_model())
        x, y = batch()
        rows = ROWS // WORLD
        mine = slice(rank * rows, (rank + 1) * rows)
        grads = step(ddp, ActivityRegularizer(ddp, RULES), x[mine], y[mine])
        torch.save(grads, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_activity_gradients_equal_one_process_on_the_full_batch(tmp_path):
    results = spawn(_worker, tmp_path, WORLD)
    model = make_model()
    expected = step(model, ActivityRegularizer(model, RULES), *batch())
    for grads in results:
        for got, want in zip(grads, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
