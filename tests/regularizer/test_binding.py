"""A Regularizer follows the model's current parameters after they are replaced: never a stale
value or an update of a tensor the model no longer holds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, Regularizer

from ..conftest import ConvNet, make_batches, make_model


def true_penalty(model, lam):
    return sum(
        lam / 2 * (p.detach() ** 2).sum()
        for n, p in model.named_parameters()
        if n in ("conv.weight", "fc.weight", "head.weight")
    )


def test_load_state_dict_with_assign_is_followed(model):
    reg = Regularizer(model, L2(0.5))
    other = make_model(seed=7)
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(10)
    model.load_state_dict(other.state_dict(), assign=True)
    torch.testing.assert_close(reg.value(), true_penalty(model, 0.5))
    torch.testing.assert_close(reg().detach(), true_penalty(model, 0.5))
    assert next(p for _, p in reg.named_parameters()) is model.conv.weight
    assert reg.report().total_value == pytest.approx(float(true_penalty(model, 0.5)))
    reg.decay_(1.0)  # acts on the model's tensors
    torch.testing.assert_close(model.fc.weight, 0.5 * 10 * make_model(seed=7).fc.weight)


def test_to_empty_after_meta_initialisation_is_followed():
    with torch.device("meta"):
        model = ConvNet().double()
    reg = Regularizer(model, L1(0.1))
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(2.0)
    expected = (
        0.1
        * 2.0
        * sum(model.get_parameter(n).numel() for n in ("conv.weight", "fc.weight", "head.weight"))
    )
    assert float(reg.value()) == pytest.approx(expected)
    model.zero_grad()
    reg.add_to_grad_()
    torch.testing.assert_close(model.fc.weight.grad, torch.full_like(model.fc.weight, 0.1))


def test_a_swapped_submodule_is_followed_and_a_missing_parameter_named(model):
    reg = Regularizer(model, L2(1.0))
    model.fc = nn.Linear(64, 8).double()
    torch.testing.assert_close(reg.value(), true_penalty(model, 1.0))
    model.fc = nn.Identity()
    with pytest.raises(ValueError, match=r"'fc\.weight' is no longer in the model"):
        reg.value()


def test_attached_hooks_follow_replaced_parameters_or_name_the_stray_ones():
    model = make_model()
    reg = Regularizer(model, L2(0.05))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="grad")
    model.load_state_dict(make_model(seed=3).state_dict(), assign=True)
    x, y = make_batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(ValueError, match=r"not in the optimizer SGD: conv\.weight"):
        opt.step()  # the optimizer still holds the old tensors: an error, not a silent no-op


def test_attached_decay_reaches_the_new_parameters_when_the_optimizer_has_them():
    model = make_model()
    reg = Regularizer(model, L2(1.0))
    model.load_state_dict(make_model(seed=3).state_dict(), assign=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="decoupled")
    w = model.head.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.head.weight, 0.9 * w)
