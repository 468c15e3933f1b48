"""Attached modes under ``optimizer.step(closure)`` (LBFGS, Lightning) and ``maximize=True``,
against torch.optim itself; and attach handles that never detach a newer attachment."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from torchpenalty import L1, L2, Regularizer

from ..conftest import make_batches, make_model
from ..helpers import assert_moved, assert_same_parameters, weight_groups

STEPS = 25
LAM = 0.05


def batch_closure(model, optimizer, x, y, extra_loss=None):
    """A closure that zeroes the gradients, as Lightning's and LBFGS's closures do."""

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if extra_loss is not None:
            loss = loss + extra_loss()
        loss.backward()
        return loss

    return closure


def train_with_closure(model, optimizer, *, steps=STEPS, keyword=True, extra_loss=None):
    """Every step through ``step(closure)``."""
    for x, y in make_batches(steps):
        closure = batch_closure(model, optimizer, x, y, extra_loss)
        if keyword:
            optimizer.step(closure=closure)
        else:
            optimizer.step(closure)


OPTIMIZERS = {
    "sgd-momentum": lambda groups, **kw: torch.optim.SGD(groups, lr=0.1, momentum=0.9, **kw),
    "adam": lambda groups, **kw: torch.optim.Adam(groups, lr=1e-2, **kw),
    "rmsprop": lambda groups, **kw: torch.optim.RMSprop(groups, lr=1e-3, **kw),
    "adagrad": lambda groups, **kw: torch.optim.Adagrad(groups, lr=1e-2, **kw),
}


@pytest.mark.parametrize("keyword", [True, False], ids=["closure=", "positional"])
@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_grad_mode_with_closure_equals_weight_decay(optimizer, keyword):
    make = OPTIMIZERS[optimizer]
    reference = make_model()
    ours = copy.deepcopy(reference)
    train_with_closure(reference, make(weight_groups(reference, weight_decay=LAM)))
    opt = make(list(ours.parameters()))
    Regularizer(ours, L2(LAM)).attach(opt, mode="grad")
    train_with_closure(ours, opt, keyword=keyword)
    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=1e-10)


@pytest.mark.parametrize("keyword", [True, False], ids=["closure=", "positional"])
def test_decoupled_mode_with_closure_equals_adamw(keyword):
    reference = make_model()
    ours = copy.deepcopy(reference)
    train_with_closure(reference, torch.optim.AdamW(weight_groups(reference, weight_decay=LAM)))
    opt = torch.optim.Adam(ours.parameters())
    Regularizer(ours, L2(LAM)).attach(opt, mode="decoupled")
    train_with_closure(ours, opt, keyword=keyword)
    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=1e-10)


def test_proximal_mode_with_closure_equals_the_loop_without_one():
    plain, closed = make_model(), make_model()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9)
    Regularizer(plain, L1(0.02)).attach(opt_plain, mode="proximal")
    for x, y in make_batches(STEPS):
        opt_plain.zero_grad()
        F.cross_entropy(plain(x), y).backward()
        opt_plain.step()
    opt = torch.optim.SGD(closed.parameters(), lr=0.1, momentum=0.9)
    Regularizer(closed, L1(0.02)).attach(opt, mode="proximal")
    train_with_closure(closed, opt)
    assert_same_parameters(closed, plain, rtol=1e-12)
    assert (closed.fc.weight == 0).any()


def test_the_closure_returns_the_regularized_loss():
    model = make_model()
    reg = Regularizer(model, L2(LAM))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    reg.attach(opt, mode="grad")
    x, y = make_batches(1)[0]
    returned = opt.step(batch_closure(model, opt, x, y))
    expected = F.cross_entropy(model(x), y) + reg()
    torch.testing.assert_close(returned, expected.detach())


@pytest.mark.parametrize("line_search,rtol", [(None, 1e-10), ("strong_wolfe", 1e-8)])
def test_lbfgs_grad_mode_equals_the_penalty_in_the_closures_loss(line_search, rtol):
    """LBFGS re-evaluates the closure along its line search: every evaluation must see the
    gradient (and the loss) of loss + R. (The line search's curvature tests amplify the last-bit
    differences between two ways of summing the same loss to ~1e-12 after 16 iterations.)"""
    reference = make_model()
    ours = copy.deepcopy(reference)
    make = lambda params: torch.optim.LBFGS(  # noqa: E731
        params, lr=0.5, max_iter=5, line_search_fn=line_search
    )
    ref_reg = Regularizer(reference, L2(LAM))
    train_with_closure(reference, make(reference.parameters()), steps=4, extra_loss=ref_reg)
    opt = make(ours.parameters())
    Regularizer(ours, L2(LAM)).attach(opt, mode="grad")
    train_with_closure(ours, opt, steps=4)
    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=rtol)


@pytest.mark.parametrize("mode", ["decoupled", "proximal"])
def test_lbfgs_refuses_modes_that_cannot_be_exact(model, mode):
    reg = Regularizer(model, L2(LAM))
    with pytest.raises(ValueError, match=rf"mode='{mode}' cannot be exact with LBFGS.*mode='grad'"):
        reg.attach(torch.optim.LBFGS(model.parameters()), mode=mode)


def test_decoupled_refuses_an_optimizer_that_calls_the_closure_twice(model):
    class TwiceSGD(torch.optim.SGD):
        def step(self, closure=None):
            if closure is not None:
                with torch.enable_grad():
                    closure()
                    closure()
            return super().step()

    opt = TwiceSGD(model.parameters(), lr=0.1)
    Regularizer(model, L2(LAM)).attach(opt, mode="decoupled")
    with pytest.raises(RuntimeError, match="evaluated the closure more than once"):
        opt.step(batch_closure(model, opt, *make_batches(1)[0]))


# -- maximize=True ----------------------------------------------------------------------------


def maximize_negative_loss(model, optimizer, steps=STEPS):
    for x, y in make_batches(steps):
        optimizer.zero_grad()
        (-F.cross_entropy(model(x), y)).backward()
        optimizer.step()


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_grad_mode_under_maximize_equals_weight_decay(optimizer):
    make = OPTIMIZERS[optimizer]
    reference = make_model()
    ours = copy.deepcopy(reference)
    maximize_negative_loss(
        reference, make(weight_groups(reference, weight_decay=LAM), maximize=True)
    )
    opt = make(list(ours.parameters()), maximize=True, weight_decay=0.0)
    Regularizer(ours, L2(LAM)).attach(opt, mode="grad")
    maximize_negative_loss(ours, opt)
    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=1e-10)


def test_decoupled_under_maximize_equals_adamw():
    reference = make_model()
    ours = copy.deepcopy(reference)
    maximize_negative_loss(
        reference, torch.optim.AdamW(weight_groups(reference, weight_decay=LAM), maximize=True)
    )
    opt = torch.optim.Adam(ours.parameters(), maximize=True)
    Regularizer(ours, L2(LAM)).attach(opt, mode="decoupled")
    maximize_negative_loss(ours, opt)
    assert_same_parameters(ours, reference, rtol=1e-10)


def test_grad_mode_refuses_mixed_maximize_groups(model):
    groups = weight_groups(model)
    groups[1]["maximize"] = True
    with pytest.raises(ValueError, match="maximize"):
        Regularizer(model, L2(LAM)).attach(torch.optim.SGD(groups, lr=0.1), mode="grad")


# -- handles ----------------------------------------------------------------------------------
def one_step_change(model, opt):
    w = model.fc.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    return w - model.fc.weight.detach()


def test_removing_an_old_handle_again_leaves_the_newer_attachment(model):
    reg = Regularizer(model, L2(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    old = reg.attach(opt, mode="decoupled")
    old.remove()
    new = reg.attach(opt, mode="decoupled")
    old.remove()  # a second call on the old handle: a no-op
    w = model.fc.weight.detach().clone()
    torch.testing.assert_close(one_step_change(model, opt), 0.1 * w)  # applied exactly once
    with pytest.raises(ValueError, match="already attached"):
        reg.attach(opt, mode="decoupled")  # never twice
    new.remove()
    new.remove()
    torch.testing.assert_close(one_step_change(model, opt), torch.zeros_like(w))
    assert "removed" in repr(new)


def test_the_schedule_advances_while_any_attachment_remains(model):
    reg = Regularizer(model, L2(1.0), schedule=lambda step: 1.0)
    a = torch.optim.SGD(model.parameters(), lr=0.0)
    b = torch.optim.SGD(model.parameters(), lr=0.0)
    first, second = reg.attach(a, mode="grad"), reg.attach(b, mode="grad")
    a.step()
    b.step()
    assert reg.steps == 1
    first.remove()
    first.remove()
    b.step()
    assert reg.steps == 2
    second.remove()
    b.step()
    assert reg.steps == 2
