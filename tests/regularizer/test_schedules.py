"""Strength schedules: their curves against torch's LR schedulers, and scheduled decoupled decay
against AdamW whose weight_decay is set by hand at every step."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, Regularizer, schedules
from torchpenalty.regularizer.schedules import Schedule

from ..conftest import WEIGHTS, make_batches, make_model


def lr_curve(make_scheduler, steps: int) -> list[float]:
    """The lr factors a torch.optim scheduler produces, the oracle for our curves."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return out


def test_cosine_is_cosine_annealing():
    ours = [schedules.cosine(20, start=1.0, end=0.1)(t) for t in range(25)]
    ref = lr_curve(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 20, eta_min=0.1), 21)
    assert ours[:21] == pytest.approx(ref, rel=1e-12)
    assert ours[21:] == pytest.approx([0.1] * 4)


def test_linear_is_linear_lr():
    ours = [schedules.linear(10, start=0.5, end=1.0)(t) for t in range(13)]
    ref = lr_curve(lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, total_iters=10), 13)
    assert ours == pytest.approx(ref, rel=1e-12)


def test_warmup_and_growing_cosine():
    assert [schedules.warmup(4)(t) for t in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    grow = schedules.cosine(10, start=0.1, end=1.0)
    assert grow(0) == pytest.approx(0.1) and grow(10) == pytest.approx(1.0) and grow(5) > grow(4)


def test_scheduled_decoupled_decay_is_adamw_with_a_hand_set_weight_decay():
    lam, steps = 0.05, 40
    schedule = schedules.cosine(steps, start=1.0, end=0.2)
    reference = make_model()
    ours = copy.deepcopy(reference)
    weights = [p for n, p in reference.named_parameters() if n in WEIGHTS]
    others = [p for n, p in reference.named_parameters() if n not in WEIGHTS]
    ref_opt = torch.optim.AdamW(
        [{"params": weights, "weight_decay": lam}, {"params": others, "weight_decay": 0.0}], lr=1e-2
    )
    for t, (x, y) in enumerate(make_batches(steps)):
        ref_opt.param_groups[0]["weight_decay"] = lam * schedule(t)
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()

    reg = Regularizer(ours, L2(lam), schedule=schedule)
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2)
    reg.attach(opt, mode="decoupled")
    for x, y in make_batches(steps):
        opt.zero_grad()
        F.cross_entropy(ours(x), y).backward()
        opt.step()
    assert reg.steps == steps
    for p, q in zip(ours.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)


def test_every_path_uses_the_current_strength(model):
    reg = Regularizer(model, L1(0.2), schedule=schedules.warmup(4))
    assert reg.value().item() == 0.0 and reg().item() == 0.0  # step 0: no penalty yet
    reg.step()
    reg.step()
    half = L1(0.1).value(model.fc.weight).item()
    assert reg.report().rows[1].value == pytest.approx(half)
    assert reg.value().item() == pytest.approx(
        sum(L1(0.1).value(p).item() for _, p in reg.named_parameters())
    )
    assert "at step 2 (x0.5)" in repr(reg)


def test_only_the_first_attached_optimizer_advances(model):
    reg = Regularizer(model, L2(0.1), schedule=schedules.linear(10))
    a = torch.optim.SGD(model.parameters(), lr=0.0)
    b = torch.optim.SGD(model.parameters(), lr=0.0)
    first, _ = reg.attach(a, mode="grad"), reg.attach(b, mode="decoupled")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    a.step()
    b.step()
    assert reg.steps == 1
    first.remove()  # the schedule keeps advancing while any attachment remains: b takes over
    b.step()
    assert reg.steps == 2
    third = torch.optim.SGD(model.parameters(), lr=0.0)
    reg.attach(third, mode="grad")
    third.step()
    assert reg.steps == 2  # b advances, third does not
    b.step()
    assert reg.steps == 3


def test_state_dict_carries_the_schedule_and_its_step(model):
    reg = Regularizer(model, L2(0.1), schedule=schedules.cosine(100, end=0.5))
    for _ in range(7):
        reg.step()
    fresh = Regularizer(model, L2(0.1))
    fresh.load_state_dict(reg.state_dict())
    assert fresh.schedule == reg.schedule and fresh.steps == 7 and fresh.factor == reg.factor
    torch.testing.assert_close(fresh.value(), reg.value())

    custom = Regularizer(model, L2(0.1), schedule=lambda t: 1.0 / (1 + t))
    custom.step()
    state = custom.state_dict()
    assert state["schedule"] == "callable"
    with pytest.raises(ValueError, match="saved with a callable schedule"):
        Regularizer(model, L2(0.1)).load_state_dict(state)
    same = Regularizer(model, L2(0.1), schedule=lambda t: 1.0 / (1 + t))
    same.load_state_dict(state)
    assert same.factor == pytest.approx(0.5)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda m: Regularizer(m, L2(0.1), schedule=3.0), TypeError, "schedule must be callable"),
        (lambda m: Regularizer(m, L2(0.1), schedule=lambda t: -1.0), ValueError, "at step 0"),
        (lambda m: Regularizer(m, L2(0.1), schedule=lambda t: float("nan")), ValueError, "finite"),
        (lambda m: schedules.cosine(0), ValueError, "steps must be a whole number > 0"),
        (lambda m: schedules.linear(10, start=-1), ValueError, "start must be a finite number"),
        (lambda m: Schedule.from_config({"name": "step"}), ValueError, "unknown schedule 'step'"),
    ],
)
def test_bad_schedules(model, make, error, match):
    with pytest.raises(error, match=match):
        make(model)


def test_a_schedule_name_registers_once():
    from torchpenalty.regularizer.schedules import SCHEDULES, Linear, register

    with pytest.raises(ValueError, match="schedule name linear is already registered"):
        register(type("Other", (Linear,), {"name": "linear"}))
    assert SCHEDULES.lookup("linear") is Linear
