"""A training run that checkpoints after every step and can kill itself (SIGKILL) right after a
checkpoint: `test_resume` runs it in new processes, killed and resumed, and uninterrupted.

Usage: ``python resume_worker.py DIR STEPS [KILL_AFTER]``. The regularizer holds what a resumed
run must restore: a schedule's step, a `TargetSparsity` controller and its frozen masks, L2-SP
references given as a mapping, and rules that are predicates."""

from __future__ import annotations

import os
import signal
import sys

import torch
from torch import nn
from torch.nn import functional as F

import torchpenalty as tp


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 3)
    )


def is_first_weight(name: str, param: torch.Tensor, module: nn.Module) -> bool:
    return name == "0.weight"


def regularizer(net: nn.Module) -> tp.Regularizer:
    g = torch.Generator().manual_seed(1)
    w0 = {"4.weight": torch.randn(3, 10, generator=g) * 0.1}
    rules = {
        is_first_weight: tp.GroupLasso(3e-2, "rows"),
        "2.weight": tp.GroupLasso(3e-2, "cols"),
        "4.weight": tp.L2(1e-2, center=w0),
    }
    target = tp.TargetSparsity(0.5, of="units", by_step=12)
    return tp.Regularizer(net, rules, schedule=tp.schedules.linear(20, 1.0, 0.5), target=target)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def main(folder: str, steps: int, kill_after: int | None) -> None:
    torch.set_num_threads(1)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    reg = regularizer(net)
    reg.attach(opt, mode="proximal")
    path = os.path.join(folder, "checkpoint.pt")
    start = 0
    if os.path.exists(path):
        state = torch.load(path, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        reg.load_state_dict(state["regularizer"])
        start = state["step"]
        net(batch(start)[0])  # the target learns the units from a forward, as at the start
    for step in range(start, steps):
        x, y = batch(step)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
        state = {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "regularizer": reg.state_dict(),
            "step": step + 1,
        }
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)
        if kill_after is not None and step + 1 == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
    torch.save(
        {"weights": net.state_dict(), "status": str(reg.target.status())},
        os.path.join(folder, "final.pt"),
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
