"""Penalties centered on reference weights (L2-SP and its L1 / elastic net siblings): every mode
against the same plain penalty on a model reparametrized as ``w = w0 + d``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, ElasticNet, Regularizer, parse


class Reparametrized(nn.Module):
    """``y = (w0 + d) x + b``: ``w0`` a buffer, ``d`` the trained offset (starts at 0)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.register_buffer("w0", linear.weight.detach().clone())
        self.d = nn.Parameter(torch.zeros_like(linear.weight))
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def forward(self, x):
        return F.linear(x, self.w0 + self.d, self.bias)


def pair():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4).double()
    return linear, Reparametrized(linear)


@pytest.mark.parametrize("mode", ["loss", "grad", "decoupled", "proximal"])
@pytest.mark.parametrize(
    "make",
    [
        lambda center: L2(0.3, center=center),
        lambda center: L1(0.05, center=center),
        lambda center: ElasticNet(0.05, 0.3, center=center),
    ],
    ids=["l2", "l1", "elastic_net"],
)
def test_centered_penalty_is_the_plain_one_on_the_offset(mode, make):
    centered_model, offset_model = pair()
    centered = Regularizer(centered_model, {"weight": make("init")})
    plain = Regularizer(offset_model, {"d": make(None)}, among="all")
    opts = [
        torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
        for m in (centered_model, offset_model)
    ]
    if mode != "loss":
        centered.attach(opts[0], mode=mode)
        plain.attach(opts[1], mode=mode)
    g = torch.Generator().manual_seed(1)
    for _ in range(15):
        x = torch.randn(8, 6, generator=g, dtype=torch.float64)
        y = torch.randint(0, 4, (8,), generator=g)
        for model, reg, opt in (
            (centered_model, centered, opts[0]),
            (offset_model, plain, opts[1]),
        ):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            (loss + reg() if mode == "loss" else loss).backward()
            opt.step()
    torch.testing.assert_close(
        centered_model.weight, offset_model.w0 + offset_model.d, rtol=1e-10, atol=1e-12
    )
    torch.testing.assert_close(centered.value(), plain.value(), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(
        centered.report().total_value, plain.report().total_value, rtol=1e-10, atol=1e-14
    )


def test_proximal_l1_around_w0_leaves_exact_copies_of_w0():
    torch.manual_seed(0)
    model = nn.Linear(10, 5)
    w0 = model.weight.detach().clone()
    reg = Regularizer(model, "l1(1.0, center=init)")
    with torch.no_grad():
        model.weight.add_(0.01 * torch.randn_like(model.weight))
    reg.prox_(0.5)  # threshold 0.5 >> every offset
    assert torch.equal(model.weight, w0)


def test_references_are_saved_and_restored():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reg = Regularizer(model, "l2(1e-2, center=init)")
    state = reg.state_dict()
    torch.testing.assert_close(state["references"]["weight"], model.weight.detach())
    with torch.no_grad():
        model.weight.mul_(3.0)
    later = Regularizer(model, "l2(1e-2, center=init)")  # would take the new weights as w0
    later.load_state_dict(state)
    expected = 1e-2 / 2 * (model.weight - state["references"]["weight"]).square().sum()
    torch.testing.assert_close(later.value(), expected.detach())


def test_reference_mapping_and_its_errors():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    w0 = torch.randn(3, 4)
    reg = Regularizer(model, L2(2.0, center={"weight": w0}))
    torch.testing.assert_close(reg.value(), (model.weight - w0).square().sum().detach())
    with pytest.raises(ValueError, match="no tensor for regularized parameter 'weight'"):
        Regularizer(model, L2(2.0, center={"other": w0}))
    with pytest.raises(ValueError, match="the reference of 'weight' has shape"):
        Regularizer(model, L2(2.0, center={"weight": torch.zeros(4, 3)}))
    with pytest.raises(ValueError, match=r"center must be 'init'.*got 'pretrained'"):
        L2(1.0, center="pretrained")
    with pytest.raises(ValueError, match="center must be one of init"):
        parse("l2(1e-3, center=zero)")
    with pytest.raises(TypeError, match="has no config"):
        L2(2.0, center={"weight": w0}).get_config()


def test_single_tensor_calls_need_the_regularizer():
    with pytest.raises(ValueError, match="needs the reference w0"):
        L2(0.1, center="init").value(torch.ones(3))


def test_centered_terms_are_not_merged_with_plain_ones():
    penalty = parse("l2(1e-3, center=init) + l2(1e-4)")
    assert len(penalty.summands()) == 2
    assert parse("l2(1e-3, center=init)").get_config() == {
        "name": "l2",
        "lam": 1e-3,
        "center": "init",
    }
