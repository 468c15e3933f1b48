"""`TargetSparsity`: the digits MLP trained to 50 / 75 / 90% removed hidden units, the frozen
pattern kept whatever the momentum does, `compact` removing exactly it, state_dict resumes, the
other kinds (groups, weights), DDP decisions, and bad input."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

import torchpenalty as tp
from torchpenalty import GroupLasso, TargetSparsity
from torchpenalty.experiments import data as datasets

from ..distributed_helpers import spawn

EPOCHS, BATCH = 60, 64


@pytest.fixture(scope="module")
def digits():
    return datasets.load_digits()


def mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))


def unit_penalties(lam: float = 1e-4) -> dict:
    """Group lasso on layer 0's rows (a unit's incoming weights) and layer 2's columns (its
    outgoing ones)."""
    return {"0.weight": GroupLasso(lam, "rows"), "2.weight": GroupLasso(lam, "cols")}


def steps_per_epoch(digits) -> int:
    return -(-len(digits.x_train) // BATCH)


def train(digits, model, opt, seed, epochs=EPOCHS, first_epoch=0):
    shuffle = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(digits.x_train), generator=shuffle)
        if epoch < first_epoch:
            continue
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx]).backward()
            opt.step()
    return model


def accuracy(model, digits) -> float:
    with torch.no_grad():
        return (model.eval()(digits.x_test).argmax(1) == digits.y_test).float().mean().item()


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


@pytest.fixture(scope="module")
def dense_accuracy(digits):
    model = mlp(0)
    return accuracy(train(digits, model, sgd(model), 0), digits)


@pytest.mark.parametrize("fraction", [0.5, 0.75, 0.9])
def test_digits_mlp_reaches_the_target_and_compacts_to_it(digits, dense_accuracy, fraction):
    model = mlp(0)
    opt = sgd(model)
    by_step = 30 * steps_per_epoch(digits)
    reg = tp.Regularizer(
        model, unit_penalties(), target=TargetSparsity(fraction, of="units", by_step=by_step)
    )
    reg.attach(opt, "proximal")
    train(digits, model, opt, 0)
    status = reg.report().target
    assert status.frozen_at is not None and status.frozen_at <= by_step
    assert abs(status.reached - fraction) <= 0.03  # counted now, at the end of training
    assert status.strength == 0.0  # the penalty stopped at the freeze
    assert accuracy(model, digits) >= dense_accuracy - 0.01
    small = tp.compact(model, digits.x_test[:64])
    kept = sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters())
    assert abs(kept - (1 - fraction)) <= 0.03
    with torch.no_grad():
        torch.testing.assert_close(small(digits.x_test), model(digits.x_test), atol=1e-5, rtol=0)


def test_frozen_units_stay_zero_whatever_the_momentum_does(digits):
    model = mlp(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.99)  # heavy momentum
    reg = tp.Regularizer(
        model, unit_penalties(1e-2), target=TargetSparsity(0.5, of="units", by_step=40)
    )
    reg.attach(opt, "proximal")
    train(digits, model, opt, 1, epochs=10)
    frozen_at = reg.target.frozen_at
    assert frozen_at is not None
    masks = reg.state_dict()["target"]["masks"]
    assert set(masks) == {"0.weight", "2.weight"}
    rows = masks["0.weight"][:, 0] == 0
    assert int(rows.sum()) == 128  # exactly round(0.5 * 256) units frozen
    assert bool((model[0].weight[rows] == 0).all()) and bool((model[2].weight[:, rows] == 0).all())


def test_a_resumed_run_continues_exactly(digits):
    def run(stop: int | None):
        model = mlp(2)
        opt = sgd(model)
        target = TargetSparsity(0.75, of="units", by_step=100)
        reg = tp.Regularizer(model, unit_penalties(), target=target)
        reg.attach(opt, "proximal")
        train(digits, model, opt, 2, epochs=stop or 12)
        if stop is None:
            return model, reg
        saved = (model.state_dict(), opt.state_dict(), reg.state_dict())
        model = mlp(2)
        model.load_state_dict(saved[0])
        opt = sgd(model)
        opt.load_state_dict(saved[1])
        reg = tp.Regularizer(model, unit_penalties(), target=target)
        reg.load_state_dict(saved[2])
        reg.attach(opt, "proximal")
        train(digits, model, opt, 2, epochs=12, first_epoch=stop)
        return model, reg

    straight, reg = run(None)
    for stop in (3, 9):  # before and after the freeze
        resumed, again = run(stop)
        for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=0, rtol=0)
        assert again.target.frozen_at == reg.target.frozen_at
        assert again.target.scale == reg.target.scale


def test_groups_and_weights_targets(digits):
    for of, penalty, fraction in (
        ("groups", {"0.weight": GroupLasso(1e-4, "rows")}, 0.6),
        ("weights", "l1(1e-5)", 0.8),
    ):
        model = mlp(3)
        opt = sgd(model)
        reg = tp.Regularizer(model, penalty, target=TargetSparsity(fraction, of=of, by_step=200))
        reg.attach(opt, "proximal")
        train(digits, model, opt, 3, epochs=15)
        status = reg.report().target
        assert status.frozen_at is not None and abs(status.reached - fraction) <= 0.03, (of, status)
        assert f"target: {fraction:.1%} of {of}" in str(reg.report())


def test_an_unreachable_target_warns_with_the_fraction_reached(digits):
    model = mlp(4)
    opt = sgd(model)
    reg = tp.Regularizer(model, unit_penalties(), target=TargetSparsity(0.9, by_step=1))
    reg.attach(opt, "proximal")
    with pytest.warns(RuntimeWarning, match=r"0\.0% of the units are zero at step 1"):
        train(digits, model, opt, 4, epochs=1)
    assert reg.target.frozen_at == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"fraction": 0.0, "by_step": 10}, ValueError, r"fraction must be in \(0, 1\)"),
        ({"fraction": 1.0, "by_step": 10}, ValueError, r"fraction must be in \(0, 1\)"),
        ({"fraction": float("nan"), "by_step": 10}, ValueError, "fraction must be in"),
        ({"fraction": "0.5", "by_step": 10}, TypeError, "fraction must be a number"),
        ({"fraction": 0.5, "by_step": 0}, ValueError, "by_step must be a whole number"),
        ({"fraction": 0.5, "by_step": 2.5}, ValueError, "by_step must be a whole number"),
        ({"fraction": 0.5, "by_step": True}, ValueError, "by_step must be a whole number"),
        ({"fraction": 0.5, "by_step": 10, "of": "filters"}, ValueError, "of must be one of"),
    ],
)
def test_bad_targets(kwargs, error, match):
    with pytest.raises(error, match=match):
        TargetSparsity(**kwargs)


def test_penalties_that_cannot_reach_the_kind_are_refused():
    model = mlp(0)
    with pytest.raises(ValueError, match="needs a group penalty"):
        tp.Regularizer(model, "l1(1e-4)", target=TargetSparsity(0.5, of="units", by_step=10))
    with pytest.raises(ValueError, match="l2 only shrinks"):
        tp.Regularizer(model, "l2(1e-4)", target=TargetSparsity(0.5, of="weights", by_step=10))


def test_a_target_runs_in_proximal_mode_only():
    model = mlp(0)
    reg = tp.Regularizer(model, unit_penalties(), target=TargetSparsity(0.5, by_step=10))
    with pytest.raises(ValueError, match="attaches in mode='proximal'"):
        reg.attach(sgd(model), "decoupled")
    with pytest.raises(ValueError, match="not added to a loss"):
        reg()


def _ddp_worker(rank: int, init: str, out: str) -> None:
    """Each rank trains on its own half of every batch under DDP; both must freeze the same
    units at the same step (their weights are identical, and so are the decisions)."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    digits = datasets.load_digits()
    model = nn.parallel.DistributedDataParallel(mlp(5))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reg = tp.Regularizer(
        model, unit_penalties(1e-3), target=TargetSparsity(0.75, of="units", by_step=60)
    )
    reg.attach(opt, "proximal")
    shuffle = torch.Generator().manual_seed(5)
    for _ in range(6):
        order = torch.randperm(len(digits.x_train), generator=shuffle)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH][rank::2]
            opt.zero_grad()
            F.cross_entropy(model(digits.x_train[idx]), digits.y_train[idx]).backward()
            opt.step()
    state = reg.state_dict()["target"]
    torch.save(
        {"frozen_at": state["frozen_at"], "masks": state["masks"], "scale": state["scale"]},
        os.path.join(out, f"rank{rank}.pt"),
    )
    dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_ranks_take_the_same_decisions(tmp_path):
    first, second = spawn(_ddp_worker, tmp_path, 2)
    assert first["frozen_at"] is not None
    assert first["frozen_at"] == second["frozen_at"] and first["scale"] == second["scale"]
    for name, mask in first["masks"].items():
        assert torch.equal(mask, second["masks"][name])


@pytest.mark.parametrize("of", ["units", "groups", "weights"])
def test_the_target_follows_tensors_the_model_replaced(digits, of):
    """``load_state_dict(assign=True)`` puts new tensors in the model: the status counts them
    (not the replaced ones), and a frozen pattern is kept on them."""
    model = mlp(5)
    penalty = "l1(1e-5)" if of == "weights" else unit_penalties()
    target = TargetSparsity(0.5, of=of, by_step=100)
    reg = tp.Regularizer(model, penalty, target=target)
    opt = sgd(model)
    handle = reg.attach(opt, "proximal")
    model(digits.x_train[:2])  # units: the dependency graph learns from a forward
    sparse = {k: v.clone() for k, v in model.state_dict().items()}
    sparse["0.weight"][:200] = 0  # 200 of 256 units dead, their rows zero groups
    sparse["2.weight"][:, :200] = 0  # and unused: their columns zero groups
    model.load_state_dict(sparse, assign=True)
    w0, w2 = model[0].weight, model[2].weight
    expected = {
        "units": 200 / 256,
        "groups": 400 / 512,
        "weights": float((w0 == 0).sum() + (w2 == 0).sum()) / (w0.numel() + w2.numel()),
    }[of]
    assert reg.report().target.reached == pytest.approx(expected)
    # the optimizer holds the replaced tensors: a new one, attached; one step freezes the pattern
    handle.remove()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    handle = reg.attach(opt, "proximal")
    for _ in range(target.check_every):
        opt.zero_grad()
        F.cross_entropy(model(digits.x_train[:8]), digits.y_train[:8]).backward()
        opt.step()
    assert reg.target.frozen
    dense = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    model.load_state_dict(dense, assign=True)  # every weight nonzero again, in new tensors
    handle.remove()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    reg.attach(opt, "proximal")
    opt.step()  # the frozen pattern is put back on the new tensors
    assert reg.report().target.reached == pytest.approx(0.5, abs=0.02)


def test_groups_target_counts_the_callable_groups_read_when_built():
    """The target counts the groups the regularizer read when it was built (the contract of
    callable groups), not a second reading: a callable that groups rows while the weights sum
    positive, and columns otherwise, still counts rows after the weights change sign."""

    def rows_while_positive(w):
        rows, cols = torch.meshgrid(
            torch.arange(w.shape[0]), torch.arange(w.shape[1]), indexing="ij"
        )
        return rows if bool(w.sum() > 0) else cols

    model = nn.Sequential(nn.Linear(8, 6))
    with torch.no_grad():
        model[0].weight.abs_()
    target = TargetSparsity(0.5, of="groups", by_step=100)
    reg = tp.Regularizer(model, GroupLasso(1e-4, rows_while_positive), target=target)
    with torch.no_grad():
        model[0].weight.neg_()  # a second reading would group columns
        model[0].weight[:3] = 0  # three of six rows: no column is zero
    assert reg.report().target.reached == pytest.approx(3 / 6)
