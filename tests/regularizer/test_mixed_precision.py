"""GradScaler and low-precision weights: the penalty meets unscaled gradients, skipped steps stay
skipped, and bf16 updates are computed in float32 and rounded once.

The oracle is the same training without a scaler (a power-of-two scale is exact in float32)."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, ElasticNet, Regularizer, kernels

LAM = 0.05


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def batches(n: int = 12):
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)
    ]


def scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10_000)


def train_scaled(model, opt, *, reg=None, order=None):
    """Scaled training; ``reg.add_to_grad_`` is called by hand before or after unscaling."""
    s = scaler()
    for x, y in batches():
        opt.zero_grad()
        s.scale(F.cross_entropy(model(x), y)).backward()
        if order == "before-unscale":
            reg.add_to_grad_(scale=s)
        elif order == "after-unscale":
            s.unscale_(opt)
            reg.add_to_grad_()
        s.step(opt)
        s.update()


def train_plain(model, opt):
    for x, y in batches():
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def weight_groups(model, wd):
    weights = [p for p in model.parameters() if p.ndim >= 2]
    biases = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": weights, "weight_decay": wd}, {"params": biases, "weight_decay": 0.0}]


def assert_same(a, b, rtol=1e-5):
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=1e-6)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_grad_mode_under_gradscaler_is_coupled_l2(fused):
    reference, ours = net(), net()
    train_plain(reference, torch.optim.Adam(weight_groups(reference, LAM), lr=1e-2))
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2, fused=fused)
    Regularizer(ours, L2(LAM)).attach(opt, mode="grad")
    train_scaled(ours, opt)
    assert_same(ours, reference)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_decoupled_mode_under_gradscaler_is_adamw(fused):
    reference, ours = net(), net()
    train_plain(reference, torch.optim.AdamW(weight_groups(reference, LAM), lr=1e-2))
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2, fused=fused)
    Regularizer(ours, L2(LAM)).attach(opt, mode="decoupled")
    train_scaled(ours, opt)
    assert_same(ours, reference)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
@pytest.mark.parametrize("mode", ["grad", "decoupled", "proximal"])
def test_a_step_the_scaler_skips_applies_no_penalty(fused, mode):
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, fused=fused)
    Regularizer(model, ElasticNet(LAM, LAM)).attach(opt, mode=mode)
    s = scaler()
    x, y = batches(1)[0]
    before = copy.deepcopy(model.state_dict())
    s.scale(F.cross_entropy(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("nan")
    s.step(opt)
    s.update()
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert s.get_scale() < 2.0**10  # the scaler did see the overflow


@pytest.mark.parametrize("order", ["before-unscale", "after-unscale"])
def test_manual_add_to_grad_either_side_of_unscale(order):
    reference, ours = net(), net()
    train_plain(reference, torch.optim.SGD(weight_groups(reference, LAM), lr=0.1, momentum=0.9))
    opt = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    train_scaled(ours, opt, reg=Regularizer(ours, L2(LAM)), order=order)
    assert_same(ours, reference)


def test_scaled_l1_gradient_kernels_match_scaled_reference():
    ws = [torch.randn(40, 30), torch.randn(7)]
    gs = [torch.randn_like(w) for w in ws]
    expected = [g + 512.0 * (0.1 * torch.sign(w) + 0.2 * w) for w, g in zip(ws, gs, strict=True)]
    kernels.add_grad_(ws, gs, 0.1, 0.2, torch.tensor(512.0))
    for g, e in zip(gs, expected, strict=True):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("penalty", [ElasticNet(0.3, 0.4), L1(0.3), L2(0.4)], ids=repr)
def test_bf16_updates_are_computed_in_float32_and_rounded_once(penalty):
    kernels.set_backend("eager")
    try:
        w = torch.randn(64, 32).bfloat16()
        w32 = w.float()
        l1, l2 = penalty.l1_coef, penalty.l2_coef
        lr = 0.01
        expected = (w32 * (1 - lr * l2) - torch.sign(w32) * (lr * l1)).bfloat16()
        penalty.decay_([w], lr)
        assert torch.equal(w, expected)
        w = w32.bfloat16()
        soft = w32 - w32.clamp(-lr * l1, lr * l1)
        expected = (soft / (1 + lr * l2)).bfloat16()
        penalty.prox_([w], lr)
        assert torch.equal(w, expected)
    finally:
        kernels.set_backend("auto")


def test_warns_once_when_bf16_cannot_register_the_decay():
    model = net().to(torch.bfloat16)
    reg = Regularizer(model, L2(1e-4))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    reg.attach(opt, mode="decoupled")
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    with pytest.warns(
        RuntimeWarning,
        match=r"below their resolution .* 0\.weight, 2\.weight.*float32 master weights",
    ):
        opt.step()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # once only
        Regularizer(model, L2(1.0)).decay_(1e-1)  # a decay bf16 can register: silent
