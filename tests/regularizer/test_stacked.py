"""`Stacked` models and per-member strengths (`Regularizer(stacked, spec, strengths=...)`,
`Members`): K members trained at once end where K models trained alone end, in every mode,
for elementwise and group penalties, constraints and sums, under SGD with momentum, Adam and
AdamW; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import torchpenalty as tp
from torchpenalty.penalties import Members

K = 4
STRENGTHS = [1e-3, 1e-2, 1e-1, 1.0]


def model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)).double()


def optimizers():
    return {
        "sgd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
        "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
        "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05),
    }


def train_both(spec, mode, make_optimizer, steps=5):
    singles = [model(s) for s in range(K)]
    stacked = tp.Stacked([copy.deepcopy(m) for m in singles])
    reg = tp.Regularizer(stacked, spec, strengths=STRENGTHS)
    opt = make_optimizer(stacked.parameters())
    if mode != "loss":
        reg.attach(opt, mode=mode)
    alone = []
    for m, s in zip(singles, STRENGTHS, strict=True):
        r = tp.Regularizer(m, tp.parse(spec) * s)
        o = make_optimizer(m.parameters())
        if mode != "loss":
            r.attach(o, mode=mode)
        alone.append((m, r, o))
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(K, 6, 5, generator=g, dtype=torch.float64)
        y = torch.randint(0, 3, (K, 6), generator=g)
        loss = F.cross_entropy(stacked(x).flatten(0, 1), y.flatten(), reduction="none")
        loss = loss.view(K, 6).mean(1).sum()
        if mode == "loss":
            loss = loss + reg()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, (m, r, o) in enumerate(alone):
            single = F.cross_entropy(m(x[k]), y[k])
            if mode == "loss":
                single = single + r()
            o.zero_grad()
            single.backward()
            o.step()
    return stacked, reg, [m for m, _, _ in alone], [r for _, r, _ in alone]


SPECS = [
    "l1",
    "l2",
    "elastic_net(1, 0.5)",
    "group_lasso",
    "sparse_group_lasso",
    "l1 + max_norm(0.5)",
]


@pytest.mark.parametrize("optimizer", list(optimizers()))
@pytest.mark.parametrize("mode", ["loss", "grad", "decoupled", "proximal"])
@pytest.mark.parametrize("spec", SPECS)
def test_members_end_where_models_trained_alone_end(spec, mode, optimizer):
    stacked, reg, singles, regs = train_both(spec, mode, optimizers()[optimizer])
    for k, single in enumerate(singles):
        for name, value in single.state_dict().items():
            torch.testing.assert_close(
                stacked.member_state_dict(k)[name], value, rtol=1e-9, atol=1e-12, msg=name
            )
    # the value is the members' sum; exact zeros where the members have them
    total = sum(r.value() for r in regs)
    torch.testing.assert_close(reg.value(), total, rtol=1e-9, atol=1e-12)


def test_members_fast_paths_equal_their_member_by_member_definition():
    w = torch.randn(K, 6, 5, dtype=torch.float64)
    fast = Members.scaled(tp.parse("elastic_net(1, 0.5)"), STRENGTHS)
    for k in range(K):
        alone = fast.terms[k]
        torch.testing.assert_close(fast.grad(w)[k], alone.grad(w[k]))
        torch.testing.assert_close(fast.prox(w, 0.3)[k], alone.prox(w[k], 0.3))
    prox = w.clone()
    fast.prox_([prox], 0.3)
    torch.testing.assert_close(prox, fast.prox(w, 0.3))
    torch.testing.assert_close(fast.total_value([w]), fast.value(w))
    grads = torch.zeros_like(w)
    fast.add_grad_([w], [grads])
    torch.testing.assert_close(grads, fast.grad(w))


def test_member_models_and_state():
    singles = [model(s) for s in range(K)]
    stacked = tp.Stacked(singles)
    x = torch.randn(7, 5, dtype=torch.float64)
    out = stacked(x, shared=True)
    for k, single in enumerate(singles):
        torch.testing.assert_close(out[k], single(x))
        torch.testing.assert_close(stacked.member(k)(x), single(x))
    # rules read the single model's names; the default selection keeps biases out
    reg = tp.Regularizer(stacked, "l2", strengths=STRENGTHS)
    assert [n for n, _ in reg.named_parameters()] == ["0.weight", "2.weight"]
    state = reg.state_dict()
    again = tp.Regularizer(tp.Stacked(singles), "l2", strengths=[9.0] * K)
    again.load_state_dict(state)
    assert again.state_dict()["penalties"] == state["penalties"]


def test_dropout_draws_differ_per_member():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 64), nn.Dropout(0.5))
    stacked = tp.Stacked([copy.deepcopy(net) for _ in range(2)])
    out = stacked(torch.ones(1, 5), shared=True)
    assert not torch.equal(out[0] == 0, out[1] == 0)


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: tp.Regularizer(model(0), "l2", strengths=[1.0]), ValueError, "needs a Stacked"),
        (
            lambda: tp.Regularizer(tp.Stacked([model(0), model(1)]), "l2", strengths=[1.0]),
            ValueError,
            "strengths holds 1 values for a stack of 2 members",
        ),
        (
            lambda: tp.Stacked([model(0), nn.Linear(2, 2)]),
            ValueError,
            "stacking needs one architecture",
        ),
        (lambda: Members(()), TypeError, "one per member"),
        (
            lambda: tp.Regularizer(
                tp.Stacked([model(0), model(1)]), "l2(1, center=init)", strengths=[1.0, 2.0]
            ),
            ValueError,
            "centered on reference weights",
        ),
        (
            lambda: tp.Regularizer(
                tp.Stacked([model(0), model(1)]),
                "group_lasso",
                strengths=[1.0, 2.0],
                target=tp.TargetSparsity(0.5, by_step=10),
            ),
            ValueError,
            "not supported per member",
        ),
    ],
)
def test_bad_input(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_reports_count_each_members_units():
    singles = [model(s) for s in range(K)]
    with torch.no_grad():
        singles[1][0].weight[:3] = 0  # member 1: three dead units in layer 0
        singles[3][2].weight[1] = 0  # member 3: one in layer 2
    stacked = tp.Stacked(singles)
    report = tp.Regularizer(stacked, "l1", strengths=STRENGTHS).report()
    alone = [tp.Regularizer(m, "l1").report() for m in singles]
    assert report.units == sum(r.units for r in alone) == K * (8 + 3)
    assert report.zero_units == sum(r.zero_units for r in alone) == 4
    assert report.zero_fraction == pytest.approx(sum(r.zero_fraction for r in alone) / K)


def test_a_members_report_is_the_report_of_the_model_trained_alone():
    _, reg, _, regs = train_both("group_lasso", "proximal", optimizers()["sgd"])
    for k, alone in enumerate(regs):
        mine, theirs = reg.report(member=k), alone.report()
        assert [r.name for r in mine.rows] == [r.name for r in theirs.rows]
        for a, b in zip(mine.rows, theirs.rows, strict=True):
            assert a.shape == b.shape and a.penalty == b.penalty
            assert a.value == pytest.approx(b.value, rel=1e-9)
            assert a.l2_norm == pytest.approx(b.l2_norm, rel=1e-9)
            assert (a.zero_fraction, a.zero_groups, a.zero_units) == (
                b.zero_fraction,
                b.zero_groups,
                b.zero_units,
            )
    with pytest.raises(ValueError, match=r"member must be a whole number in \[0, 4\), got 4"):
        reg.report(member=4)
    with pytest.raises(ValueError, match="has no members"):
        regs[0].report(member=0)
