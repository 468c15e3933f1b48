"""DDP: every mode on a 2-process DistributedDataParallel model (gloo, CPU) ends with the same
parameters as one process training on the full batch; penalties apply once per optimizer step
under ``no_sync()`` accumulation; gradients are edited in place (bucket views stay valid)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from torchpenalty import ElasticNet, Regularizer

from .distributed_helpers import spawn

pytestmark = pytest.mark.distributed

MODES = ["loss", "grad", "decoupled", "proximal"]
STEPS, ROWS, WORLD = 6, 8, 2
PENALTY = ElasticNet(0.02, 0.05)


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def batches():
    g = torch.Generator().manual_seed(3)
    return [
        (
            torch.randn(ROWS, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (ROWS,), generator=g),
        )
        for _ in range(STEPS)
    ]


def train(model, mode: str, chunks, accumulate: int = 1, sync=None) -> None:
    """SGD with momentum; ``chunks(x, y)`` gives this process's rows of each batch."""
    reg = Regularizer(model, PENALTY)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if mode != "loss":
        reg.attach(opt, mode=mode)
    for x, y in batches():
        opt.zero_grad()
        xs, ys = chunks(x, y)
        micro = list(zip(xs.chunk(accumulate), ys.chunk(accumulate), strict=True))
        for i, (xm, ym) in enumerate(micro):
            loss = F.cross_entropy(model(xm), ym) / accumulate
            if mode == "loss":
                loss = loss + reg() / accumulate
            context = sync() if (sync is not None and i < len(micro) - 1) else _null()
            with context:
                loss.backward()
        opt.step()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        rows = ROWS // WORLD
        mine = lambda x, y: (x[rank * rows : (rank + 1) * rows], y[rank * rows : (rank + 1) * rows])  # noqa: E731
        results = {}
        for mode in MODES:
            for accumulate in (1, 2):
                ddp = nn.parallel.DistributedDataParallel(
                    make_model(), gradient_as_bucket_view=True
                )
                train(ddp, mode, mine, accumulate, sync=ddp.no_sync)
                results[(mode, accumulate)] = {
                    k: v.clone() for k, v in ddp.module.state_dict().items()
                }
        # in-place edits: add_to_grad_ keeps the bucket views DDP handed out
        ddp = nn.parallel.DistributedDataParallel(make_model(), gradient_as_bucket_view=True)
        x, y = mine(*batches()[0])
        F.cross_entropy(ddp(x), y).backward()
        reg = Regularizer(ddp, PENALTY)
        pointers = [p.grad.data_ptr() for _, p in reg.named_parameters()]
        reg.add_to_grad_()
        results["pointers_kept"] = pointers == [
            p.grad.data_ptr() for _, p in reg.named_parameters()
        ]
        results["names"] = [n for n, _ in reg.named_parameters()]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    return spawn(_worker, out, WORLD)


@pytest.mark.parametrize("accumulate", [1, 2], ids=["one-batch", "no_sync-accumulation"])
@pytest.mark.parametrize("mode", MODES)
def test_ddp_equals_one_process_on_the_full_batch(ddp_results, mode, accumulate):
    reference = make_model()
    train(reference, mode, lambda x, y: (x, y), accumulate * 1)
    expected = reference.state_dict()
    for rank in range(WORLD):
        got = ddp_results[rank][(mode, accumulate)]
        for k, v in expected.items():
            torch.testing.assert_close(got[k], v, rtol=1e-12, atol=1e-14, msg=f"rank {rank}: {k}")


def test_grads_are_edited_in_place_and_names_are_canonical(ddp_results):
    for results in ddp_results:
        assert results["pointers_kept"]
        assert results["names"] == ["0.weight", "2.weight"]  # no "module." prefix
