"""`Regularizer`: loss and gradient modes, per-layer rules, state, and its errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpenalty import L1, L2, ElasticNet, Regularizer
from torchpenalty.regularizer.schedules import linear

from ..conftest import WEIGHTS, make_model


def naive_penalty(model, lam1: float = 0.0, lam2: float = 0.0) -> torch.Tensor:
    """The tutorials' way, written out: the oracle for values and gradients."""
    params = dict(model.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for name in WEIGHTS:
        total = total + lam1 * params[name].abs().sum() + lam2 / 2 * (params[name] ** 2).sum()
    return total


@pytest.mark.parametrize("lam1, lam2", [(0.3, 0.0), (0.0, 0.7), (0.2, 0.5)])
def test_value_and_gradient_match_the_naive_sum(model, lam1, lam2):
    reg = Regularizer(model, ElasticNet(lam1, lam2))
    torch.testing.assert_close(reg(), naive_penalty(model, lam1, lam2), rtol=1e-13, atol=0)
    torch.testing.assert_close(reg.value(), naive_penalty(model, lam1, lam2), rtol=1e-13, atol=0)
    params = [p for _, p in model.named_parameters()]
    ours = torch.autograd.grad(reg(), params, allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad(naive_penalty(model, lam1, lam2), params, materialize_grads=True)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_gradcheck_on_the_total(model):
    reg = Regularizer(model, {"conv.*": "l1(0.3)", nn.Linear: "l1(0.1) + l2(0.4)"})
    names = [n for n, _ in reg.named_parameters()]
    inputs = tuple(
        (p.detach() + 0.05 * torch.sign(p.detach())).requires_grad_()  # keep off L1's kink
        for _, p in reg.named_parameters()
    )
    assert torch.autograd.gradcheck(lambda *xs: reg(dict(zip(names, xs, strict=True))), inputs)


def test_value_has_no_graph_and_is_a_tensor(model):
    value = Regularizer(model, "l2").value()
    assert isinstance(value, torch.Tensor) and value.shape == () and not value.requires_grad


def test_loss_mode_trains_through_autograd(model):
    reg = Regularizer(model, L2(0.5))
    reg().backward()
    for name, p in model.named_parameters():
        expected = 0.5 * p.detach() if name in WEIGHTS else torch.zeros_like(p)
        torch.testing.assert_close(p.grad if p.grad is not None else torch.zeros_like(p), expected)


def test_add_to_grad_edits_in_place_and_creates_missing_grads(model):
    reg = Regularizer(model, ElasticNet(0.1, 0.2))
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    storage = model.fc.weight.grad.data_ptr()
    reg.add_to_grad_()
    assert model.fc.weight.grad.data_ptr() == storage
    w = model.fc.weight.detach()
    torch.testing.assert_close(model.fc.weight.grad, 1 + 0.1 * torch.sign(w) + 0.2 * w)
    torch.testing.assert_close(
        model.head.weight.grad, 0.1 * torch.sign(model.head.weight) + 0.2 * model.head.weight
    )
    assert model.fc.bias.grad is None and model.bn.weight.grad is None


def test_add_to_grad_refuses_sparse_gradients():
    model = nn.Sequential(nn.Embedding(10, 3, sparse=True))
    reg = Regularizer(model, "l2")
    model(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match=r"parameter '0.weight' has a torch.sparse_coo gradient"):
        reg.add_to_grad_()


def test_per_layer_mapping_first_match_wins(model):
    reg = Regularizer(model, {"head.*": "l1(1e-3)", nn.Linear: "l2(1e-4)", "*": L2(1e-2)})
    assert dict(reg.named_penalties()) == {
        "conv.weight": L2(1e-2),
        "fc.weight": L2(1e-4),
        "head.weight": L1(1e-3),
    }
    partial = Regularizer(model, {nn.Conv2d: "l2"})  # unmatched weights are not regularized
    assert [n for n, _ in partial.named_parameters()] == ["conv.weight"]


@pytest.mark.parametrize(
    "penalty, kwargs, error, match",
    [
        ({}, {}, ValueError, "penalty mapping is empty"),
        ({"nothing.*": "l2"}, {}, ValueError, r"penalty rule 'nothing\.\*' selects none"),
        ({"*": "l2", "fc.*": "l1"}, {}, ValueError, r"penalty rule 'fc\.\*' is shadowed"),
        ("l2(", {}, ValueError, "invalid penalty spec"),
        (3.0, {}, TypeError, "spec must be a string or a Penalty"),
        ("l2", {"include": "fc.bias"}, ValueError, "among='all'"),
    ],
)
def test_bad_arguments(model, penalty, kwargs, error, match):
    with pytest.raises(error, match=match):
        Regularizer(model, penalty, **kwargs)


def test_functional_params_mapping(model):
    reg = Regularizer(model, L2(1.0))
    doubled = {f"module.{n}": 2 * p.detach() for n, p in model.named_parameters()}
    torch.testing.assert_close(reg(doubled), 4 * reg.value())
    with pytest.raises(ValueError, match=r"params is missing regularized parameters: head\.weight"):
        reg({"conv.weight": model.conv.weight, "fc.weight": model.fc.weight})


def test_state_dict_round_trip(model):
    reg = Regularizer(model, {nn.Conv2d: "l1(0.1)", "*": "l2(0.2)"})
    other = Regularizer(model, "none")
    other.load_state_dict(reg.state_dict())
    assert dict(other.named_penalties()) == dict(reg.named_penalties())
    torch.testing.assert_close(other.value(), reg.value())
    narrow = Regularizer(model, "l2", include="fc.*")
    with pytest.raises(ValueError, match="regularizes other parameters"):
        narrow.load_state_dict(reg.state_dict())
    with pytest.raises(ValueError, match="'penalties' entry"):
        reg.load_state_dict({"version": 1})


@pytest.mark.parametrize(
    "change, match",
    [
        ({"version": 2}, "version 2 is not one this torchpenalty reads"),
        ({"version": None}, "version None"),
        ({"steps": -1}, r"state\['steps'\] must be an integer >= 0"),
        ({"steps": 2.5}, r"state\['steps'\]"),
        ({"schedule": {"name": "no_such_schedule"}}, "no_such_schedule"),
        ({"schedule": "callable"}, "callable schedule"),
        ({"references": ["not", "a", "mapping"]}, "references"),
        ({"target": {}}, "disagree on a target"),
    ],
)
def test_load_state_dict_is_atomic_and_checks_the_version(model, change, match):
    """A state that fails any check leaves the regularizer as it was: its penalties (checked
    first, and valid here), steps, schedule and value."""
    saved = Regularizer(model, {nn.Conv2d: "l1(0.1)", "*": "l2(0.2)"}).state_dict()
    reg = Regularizer(model, "l2(0.5)")
    reg.set_step(7)
    before, value = reg.state_dict(), reg.value()
    with pytest.raises(ValueError, match=match):
        reg.load_state_dict({**saved, **change})
    assert reg.state_dict() == before
    assert torch.equal(reg.value(), value)
    assert reg.steps == 7 and reg.schedule is None


def test_repr_lists_penalties_and_frozen(model):
    model.conv.weight.requires_grad_(False)
    text = repr(Regularizer(model, {"fc.*": "l1(0.001)", "*": "l2(0.01)"}))
    assert "l1(lam=0.001): fc.weight (8, 64)" in text
    assert "l2(lam=0.01): head.weight (3, 8)" in text
    assert "skipped (frozen): conv.weight" in text


def test_report(model):
    with torch.no_grad():
        model.fc.weight[:2] = 0
    reg = Regularizer(model, {"fc.*": "l1(0.1)", "*": "l2(0.2)"})
    rep = reg.report()
    rows = {r.name: r for r in rep}
    assert set(rows) == set(WEIGHTS)
    fc = rows["fc.weight"]
    assert fc.shape == (8, 64) and fc.penalty == "l1(lam=0.1)"
    assert fc.value == pytest.approx(0.1 * model.fc.weight.abs().sum().item(), rel=1e-12)
    assert fc.l2_norm == pytest.approx(torch.linalg.norm(model.fc.weight).item(), rel=1e-12)
    assert fc.zero_fraction == pytest.approx(2 / 8)
    assert rep.total_value == pytest.approx(reg.value().item(), rel=1e-12)
    assert "fc.weight" in str(rep) and "25.0%" in str(rep)
    assert rep.to_dicts()[0]["shape"] == list(rows[rep[0].name].shape)


def test_bf16_and_float32_values_accumulate_in_float32():
    model = make_model(torch.float32)
    model.fc.to(torch.bfloat16)
    reg = Regularizer(model, "l2(0.1)")
    assert reg.value().dtype == torch.float32 and reg().dtype == torch.float32
    reg().backward()
    assert model.fc.weight.grad.dtype == torch.bfloat16


def test_decay_and_prox_steps_without_an_optimizer(model):
    reg = Regularizer(model, ElasticNet(0.5, 0.2))
    w = model.fc.weight.detach().clone()
    reg.decay_(0.1)
    torch.testing.assert_close(model.fc.weight, w - 0.1 * (0.5 * torch.sign(w) + 0.2 * w))
    w = model.fc.weight.detach().clone()
    reg.prox_(torch.tensor(0.1, dtype=torch.float64))
    soft = torch.sign(w) * torch.clamp(w.abs() - 0.05, min=0)
    torch.testing.assert_close(model.fc.weight, soft / (1 + 0.1 * 0.2))
    with pytest.raises(ValueError, match="lr must be a finite number >= 0"):
        reg.decay_(-1.0)


@pytest.mark.parametrize("spec", ["l2(1e39)", "l1(1e-3) + group_lasso(1e39)"])
def test_strengths_that_overflow_the_dtype_are_refused(spec):
    single = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"overflows its dtype float32 \(largest finite value"):
        Regularizer(single, spec)
    double = nn.Sequential(nn.Linear(3, 3)).double()
    saved = Regularizer(double, spec).state_dict()  # float64 holds it
    reg = Regularizer(single, "l2")
    with pytest.raises(ValueError, match="overflows its dtype float32"):
        reg.load_state_dict(saved)


def test_zero_fraction_counts_exact_zeros_without_a_sync():
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].weight[:2] = 0.0
        model[1].weight[0, 0] = 0.0
    reg = Regularizer(model, L1(1e-3))
    fraction = reg.zero_fraction()
    assert isinstance(fraction, torch.Tensor) and fraction.ndim == 0
    assert fraction.item() == (10 + 1) / (20 + 12) == reg.report().zero_fraction


def test_set_step_moves_the_schedule():
    model = nn.Linear(3, 2)
    reg = Regularizer(model, L2(1.0), schedule=linear(10))
    reg.set_step(4)
    assert reg.steps == 4 and reg.factor == pytest.approx(0.6)
    reg.step()
    assert reg.steps == 5 and reg.factor == pytest.approx(0.5)
    with pytest.raises(ValueError, match="step must be an integer >= 0"):
        reg.set_step(-1)
