"""The loss-mode node (`torchpenalty.penalty_total`): backward adds into ``.grad`` itself only
where autograd would do exactly that, and otherwise returns gradients, checked against
``torch.autograd`` through the penalties' closed-form values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import Regularizer
from torchpenalty.experiments.memory import peak_extra_bytes

SPECS = ["l1(0.01) + l2(0.02)", "group_lasso(0.05, groups=cols)", "sparse_group_lasso(0.01, 0.05)"]


def setup(spec: str, backend: str = "eager"):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    reg = Regularizer(model, spec, backend=backend)
    x, y = torch.randn(5, 6, dtype=torch.float64), torch.randint(0, 3, (5,))
    return model, reg, x, y


def autograd_grads(model, reg, x, y, scale: float = 1.0):
    """The oracle: autograd through the data loss plus the penalties' closed-form values."""
    params = list(model.parameters())
    penalties = dict(reg.named_penalties())
    value = sum(penalties[n].value(p) for n, p in reg.named_parameters())
    return torch.autograd.grad(scale * (F.cross_entropy(model(x), y) + value), params)


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("grads_exist", [True, False])
def test_backward_accumulates_like_autograd(spec, grads_exist):
    model, reg, x, y = setup(spec)
    before = [torch.randn_like(p) for p in model.parameters()]
    for p, g in zip(model.parameters(), before, strict=True):
        p.grad = g.clone() if grads_exist else None
    expected = autograd_grads(model, reg, x, y, scale=4.0)  # a GradScaler-like loss scale
    (4.0 * (F.cross_entropy(model(x), y) + reg())).backward()
    for p, g0, e in zip(model.parameters(), before, expected, strict=True):
        torch.testing.assert_close(p.grad, e + g0 if grads_exist else e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spec", SPECS)
def test_autograd_grad_returns_the_penalty_and_leaves_grad_alone(spec):
    model, reg, x, y = setup(spec)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    expected = autograd_grads(model, reg, x, y)
    got = torch.autograd.grad(F.cross_entropy(model(x), y) + reg(), list(model.parameters()))
    for g, e, p in zip(got, expected, model.parameters(), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)
        assert not p.grad.any()


def test_backward_inputs_only_touches_the_chosen_parameters():
    model, reg, x, y = setup(SPECS[0])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    first = model[0].weight
    expected = autograd_grads(model, reg, x, y)[0]
    (F.cross_entropy(model(x), y) + reg()).backward(inputs=[first])
    torch.testing.assert_close(first.grad, expected, rtol=1e-12, atol=1e-12)
    assert all(not p.grad.any() for p in model.parameters() if p is not first)


def test_tensor_hooks_see_the_penalty_gradient():
    model, reg, x, y = setup(SPECS[1])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    expected = autograd_grads(model, reg, x, y)[0]
    seen = []
    model[0].weight.register_hook(lambda g: seen.append(g.clone()) or torch.zeros_like(g))
    (F.cross_entropy(model(x), y) + reg()).backward()
    torch.testing.assert_close(seen[0], expected, rtol=1e-12, atol=1e-12)
    assert not model[0].weight.grad.any()  # the hook's zeros, penalty included


def test_post_accumulate_hooks_see_the_sum():
    model, reg, x, y = setup(SPECS[2])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    expected = autograd_grads(model, reg, x, y)[2]
    seen = []
    model[2].weight.register_post_accumulate_grad_hook(lambda p: seen.append(p.grad.clone()))
    (F.cross_entropy(model(x), y) + reg()).backward()
    torch.testing.assert_close(seen[-1], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_create_graph_gives_a_differentiable_gradient():
    model, reg, x, y = setup(SPECS[0])
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    expected = autograd_grads(model, reg, x, y)
    (F.cross_entropy(model(x), y) + reg()).backward(create_graph=True)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad.detach(), e, rtol=1e-12, atol=1e-12)
        p.grad = None  # break the reference cycle create_graph makes


@pytest.mark.parametrize("spec", ["l2(1e-3)", "group_lasso(1e-3, groups=cols)"])
def test_existing_grads_take_no_new_gradient_tensors(spec):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 256))
    reg = Regularizer(model, spec)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    largest = 256 * 256 * 4
    reg().backward()  # compile first, measure after
    assert peak_extra_bytes(lambda: reg().backward()) < largest / 4
    for p in model.parameters():
        p.grad = None
    assert peak_extra_bytes(lambda: reg().backward()) >= largest  # new gradients, as autograd's
