"""FSDP2: every penalty path on DTensor shards (uneven and empty ones included) equals the same
path on the unsharded model; global figures cost one batched all-reduce.

The test sets gradients and weights on the shards directly and compares with an unsharded copy,
so it checks torchpenalty's part independently of FSDP2's own gradient reduction (whose
averaging with gloo is known to sum instead, pytorch/pytorch#162338)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn

from torchpenalty import L1, L2, ElasticNet, GroupLasso, MaxNorm, Regularizer, SparseGroupLasso

from .distributed_helpers import spawn

pytestmark = pytest.mark.distributed

WORLD = 2
PENALTIES = [
    ElasticNet(0.1, 0.2),
    GroupLasso(0.3, "rows"),
    GroupLasso(0.3, "cols", "sqrt_size"),  # groups span shards: partial norms all-reduced
    GroupLasso(0.3, "tensor"),
    SparseGroupLasso(0.05, 0.3, "cols"),
    L1(0.05) + GroupLasso(0.3, "rows"),
    MaxNorm(0.5, "cols"),  # a projection whose groups span shards
    L1(0.01) + MaxNorm(0.5, "rows"),
    L2(0.3, center="init"),  # the reference w0 is sharded like its parameter
]


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # 7 rows shard 4/3 (uneven), 3 rows 2/1, 1 row 1/0 (an empty shard)
    return nn.Sequential(
        nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Tanh(), nn.Linear(3, 1)
    ).double()


def full(model: nn.Module) -> list[torch.Tensor]:
    """The whole parameters of a sharded model (gathered), for comparison."""
    return [p.full_tensor() for p in model.parameters()]


def full_grads(model: nn.Module) -> list[torch.Tensor]:
    return [
        p.grad.full_tensor() if p.grad is not None else torch.zeros(p.shape, dtype=p.dtype)
        for p in model.parameters()
    ]


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import distribute_tensor

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    calls = {"all_reduce": 0}
    original = dist.all_reduce

    def counting(*args, **kwargs):
        calls["all_reduce"] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting
    results: dict = {}
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        g = torch.Generator().manual_seed(7)
        for k, penalty in enumerate(PENALTIES):
            reference, sharded = make_model(), make_model()
            for layer in sharded:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(sharded, mesh=mesh)
            grads = [
                torch.randn(p.shape, generator=g, dtype=torch.float64)
                for p in reference.parameters()
            ]
            for p, q, grad in zip(reference.parameters(), sharded.parameters(), grads, strict=True):
                p.grad = grad.clone()
                q.grad = distribute_tensor(grad.clone(), mesh, q.placements)
            ref, ours = Regularizer(reference, penalty), Regularizer(sharded, penalty)

            before = calls["all_reduce"]
            value = ours.value()
            value_calls = calls["all_reduce"] - before
            ref.add_to_grad_()
            ours.add_to_grad_()
            step = {
                "value": (value.item(), ref.value().item(), value_calls),
                "grads": (full_grads(sharded), [p.grad for p in reference.parameters()]),
            }
            ref.decay_(0.1)
            ours.decay_(0.1)
            step["decay"] = (full(sharded), [p.detach().clone() for p in reference.parameters()])
            ref.prox_(0.5)
            ours.prox_(0.5)
            step["prox"] = (full(sharded), [p.detach().clone() for p in reference.parameters()])
            before = calls["all_reduce"]
            report = ours.report()
            step["report"] = (
                [r.__dict__ for r in report],
                [r.__dict__ for r in ref.report()],
                calls["all_reduce"] - before,
            )
            # an attached proximal step through a real optimizer on the shards
            opt = torch.optim.SGD(sharded.parameters(), lr=0.5)
            ours.attach(opt, mode="proximal")
            for q in sharded.parameters():
                q.grad.zero_()
            opt.step()
            ref.prox_(0.5)
            step["attached"] = (full(sharded), [p.detach().clone() for p in reference.parameters()])
            # loss mode: reg() on the shards, backward into the sharded .grad
            for p, q in zip(reference.parameters(), sharded.parameters(), strict=True):
                p.grad, q.grad = None, None
            loss_ref, loss_ours = ref(), ours()
            loss_ref.backward()
            loss_ours.backward()
            step["loss"] = (
                loss_ours.item(),
                loss_ref.item(),
                full_grads(sharded),
                [torch.zeros_like(p) if p.grad is None else p.grad for p in reference.parameters()],
            )
            results[k] = step
        refusals = []
        by_parity = lambda w: (torch.arange(w.numel()) % 2).reshape(w.shape)  # noqa: E731
        for call in (
            lambda: Regularizer(sharded, GroupLasso(0.1, by_parity)).prox_(0.1),
            lambda: Regularizer(sharded, L1(0.1))({"0.weight": torch.ones(7, 5)}),
        ):
            try:
                call()
            except ValueError as exc:
                refusals.append(str(exc))
        results["refusals"] = refusals
        with torch.no_grad():
            sharded[0].weight.to_local().view(-1)[0] = float("nan")
        try:
            Regularizer(sharded, L1(0.1)).check_finite()
        except FloatingPointError as exc:
            results["finite"] = str(exc)
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.all_reduce = original
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def fsdp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp2")
    return spawn(_worker, out, WORLD)


def close(a, b):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", range(len(PENALTIES)), ids=[repr(p) for p in PENALTIES])
def test_every_path_on_shards_equals_the_unsharded_model(fsdp_results, k):
    for rank in range(WORLD):
        step = fsdp_results[rank][k]
        value, expected, _ = step["value"]
        assert value == pytest.approx(expected, rel=1e-12)
        for path in ("grads", "decay", "prox", "attached"):
            close(*step[path])
        loss_ours, loss_ref, grads_ours, grads_ref = step["loss"]
        assert loss_ours == pytest.approx(loss_ref, rel=1e-12)
        close(
            grads_ours,
            [
                g if g is not None else torch.zeros_like(o)
                for g, o in zip(grads_ref, grads_ours, strict=True)
            ],
        )


@pytest.mark.parametrize("k", range(len(PENALTIES)), ids=[repr(p) for p in PENALTIES])
def test_global_figures_match_and_batch_their_collectives(fsdp_results, k):
    step = fsdp_results[0][k]
    ours, ref, report_calls = step["report"]
    for a, b in zip(ours, ref, strict=True):
        assert a["name"] == b["name"] and a["shape"] == b["shape"]
        assert a["value"] == pytest.approx(b["value"], rel=1e-10, abs=1e-12)
        assert a["l2_norm"] == pytest.approx(b["l2_norm"], rel=1e-12)
        assert a["zero_fraction"] == pytest.approx(b["zero_fraction"])
        assert (a["zero_groups"], a["groups"]) == (b["zero_groups"], b["groups"])
        assert (a["zero_units"], a["units"]) == (b["zero_units"], b["units"])
    _, _, value_calls = step["value"]
    spanning = any(
        t.group_strengths() is not None and t.groups != "rows" for t in PENALTIES[k].summands()
    )
    # groups that span shards: their largest magnitude (the norm's scale, so tiny groups do not
    # underflow), then their scaled partial sums; two all-reduces for each of the 3 tensors
    per_tensor = 2 * 3 if spanning else 0
    assert value_calls == 1 + per_tensor  # plus one batched all-reduce for all tensors
    assert report_calls == 1 + 2 * per_tensor  # report also re-derives group stats


def test_check_finite_finds_nan_on_a_shard(fsdp_results):
    for results in fsdp_results:
        assert "0.weight" in results["finite"]


def test_unsupported_uses_of_shards_are_clear_errors(fsdp_results):
    for results in fsdp_results:
        callable_groups, functional = results["refusals"]
        assert "callable groups are not supported on sharded (FSDP2) parameters" in callable_groups
        assert "params= is not supported on FSDP2-sharded parameters" in functional
