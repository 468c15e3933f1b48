"""Every mode against torch.optim: L2 must be `weight_decay`, decoupled L2 must be AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, Regularizer

from ..conftest import WEIGHTS, make_batches, make_model
from ..helpers import LogCosh, assert_moved, assert_same_parameters, weight_groups

LAM = 0.05
STEPS = 60


def train(model, optimizer, *, reg=None, mode=None, scheduler=None, steps=STEPS, dtype=None):
    for x, y in make_batches(steps, dtype or torch.float64):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if mode == "loss":
            loss = loss + reg()
        loss.backward()
        if mode == "manual-grad":
            reg.add_to_grad_()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()


OPTIMIZERS = {
    "sgd-momentum": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9),
    "sgd-nesterov": lambda groups: torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True),
    "adam": lambda groups: torch.optim.Adam(groups, lr=1e-2),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("mode", ["loss", "manual-grad", "grad"])
def test_l2_matches_torch_weight_decay(optimizer, mode):
    make = OPTIMIZERS[optimizer]
    reference = make_model()
    ours = copy.deepcopy(reference)
    train(reference, make(weight_groups(reference, weight_decay=LAM)))

    reg = Regularizer(ours, L2(LAM))
    opt = make(list(ours.parameters()))
    if mode == "grad":
        reg.attach(opt, mode="grad")
    train(ours, opt, reg=reg, mode=mode)

    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=1e-9)


def lr_groups(model):
    """Two param groups with different learning rates."""
    first = [p for n, p in model.named_parameters() if n.startswith(("conv", "bn"))]
    second = [p for n, p in model.named_parameters() if not n.startswith(("conv", "bn"))]
    return [{"params": first, "lr": 1e-2}, {"params": second, "lr": 3e-3}]


def test_decoupled_l2_matches_adamw_with_two_lr_groups_and_a_schedule():
    reference = make_model()
    ours = copy.deepcopy(reference)
    ref_groups = []
    for g in lr_groups(reference):
        decayed = [
            p for p in g["params"] if any(p is q for q in weight_groups(reference)[0]["params"])
        ]
        rest = [p for p in g["params"] if not any(p is q for q in decayed)]
        ref_groups += [
            {"params": decayed, "lr": g["lr"]},
            {"params": rest, "lr": g["lr"], "weight_decay": 0.0},
        ]
    ref_opt = torch.optim.AdamW(ref_groups, weight_decay=LAM)
    train(reference, ref_opt, scheduler=torch.optim.lr_scheduler.StepLR(ref_opt, 20, 0.5))

    reg = Regularizer(ours, L2(LAM))
    opt = torch.optim.Adam(lr_groups(ours))
    reg.attach(opt, mode="decoupled")
    train(ours, opt, scheduler=torch.optim.lr_scheduler.StepLR(opt, 20, 0.5))

    assert_moved(ours, make_model())
    assert_same_parameters(ours, reference, rtol=1e-12)


def test_proximal_l1_gives_exact_zeros_and_matches_the_formula():
    """SGD then soft-thresholding at lr*lam, written out independently of the library."""
    lam, lr = 0.02, 0.1
    reference = make_model()
    ours = copy.deepcopy(reference)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=lr)
    for x, y in make_batches(30):
        ref_opt.zero_grad()
        F.cross_entropy(reference(x), y).backward()
        ref_opt.step()
        with torch.no_grad():
            for name, p in reference.named_parameters():
                if name in WEIGHTS:
                    p.copy_(torch.sign(p) * torch.clamp(p.abs() - lr * lam, min=0))

    opt = torch.optim.SGD(ours.parameters(), lr=lr)
    Regularizer(ours, L1(lam)).attach(opt, mode="proximal")
    train(ours, opt, steps=30)

    assert_same_parameters(ours, reference, rtol=1e-12)
    zeros = sum(int((p == 0).sum()) for n, p in ours.named_parameters() if n in WEIGHTS)
    assert zeros > 0.1 * sum(p.numel() for n, p in ours.named_parameters() if n in WEIGHTS)


def test_loss_mode_l1_gives_no_exact_zeros():
    model = make_model()
    reg = Regularizer(model, L1(0.02))
    train(model, torch.optim.SGD(model.parameters(), lr=0.1), reg=reg, mode="loss", steps=30)
    assert reg.report().zero_fraction == 0.0


def test_proximal_follows_the_lr_of_each_group():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)).double()
    opt = torch.optim.SGD(
        [
            {"params": model[0].parameters(), "lr": 1.0},
            {"params": model[1].parameters(), "lr": 0.0},
        ],
        lr=0.5,
    )
    Regularizer(model, L2(1.0)).attach(opt, mode="proximal")
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model[0].weight, before[0] / 2)  # prox of L2: w / (1 + lr*lam)
    torch.testing.assert_close(model[1].weight, before[1])


def test_decoupled_any_penalty_and_tensor_lr():
    model = nn.Sequential(nn.Linear(3, 3, bias=False)).double()
    opt = torch.optim.SGD(model.parameters(), lr=torch.tensor(0.1))
    Regularizer(model, "l1(0.5) + l2(0.2)").attach(opt, mode="decoupled")
    w = model[0].weight.detach().clone()
    model[0].weight.grad = torch.zeros_like(w)
    opt.step()
    torch.testing.assert_close(model[0].weight, w - 0.1 * (0.5 * torch.sign(w) + 0.2 * w))


def test_handle_remove_and_context_manager(model):
    reg = Regularizer(model, L2(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with reg.attach(opt, mode="decoupled") as handle:
        assert handle.mode == "decoupled"
    handle2 = reg.attach(opt, mode="proximal")  # allowed again after removal
    handle2.remove()
    w = model.fc.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.fc.weight, w)  # nothing attached any more


def test_attach_errors(model):
    reg = Regularizer(model, L2(1.0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"optimizer must be a torch\.optim\.Optimizer"):
        reg.attach(model, mode="grad")
    with pytest.raises(ValueError, match="mode='loss' needs no attach"):
        reg.attach(opt, mode="loss")
    with pytest.raises(ValueError, match="mode must be one of 'grad', 'decoupled', 'proximal'"):
        reg.attach(opt, mode="adamw")
    reg.attach(opt, mode="grad")
    with pytest.raises(ValueError, match="already attached to this optimizer"):
        reg.attach(opt, mode="decoupled")
    partial = torch.optim.SGD(model.fc.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"not in the optimizer SGD: conv\.weight, head\.weight"):
        reg.attach(partial, mode="grad")


def test_proximal_refuses_sums_without_a_closed_prox(model):
    reg = Regularizer(model, LogCosh(0.1) + L1(0.1))
    with pytest.raises(ValueError, match="no closed form"):
        reg.attach(torch.optim.SGD(model.parameters(), lr=0.1), mode="proximal")


def test_group_without_lr_is_refused_for_lr_modes(model):
    class NoLr(torch.optim.Optimizer):
        def __init__(self, params):
            super().__init__(params, {})

        def step(self, closure=None):
            return None

    reg = Regularizer(model, L2(1.0))
    with pytest.raises(ValueError, match="needs an 'lr' in every param group"):
        reg.attach(NoLr(model.parameters()), mode="decoupled")
    reg.attach(NoLr(model.parameters()), mode="grad")  # grad mode needs no lr


def test_reloaded_penalties_reach_attached_hooks(model):
    reg = Regularizer(model, L2(0.0))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    reg.attach(opt, mode="proximal")
    reg.load_state_dict(Regularizer(model, L2(1.0)).state_dict())
    w = model.fc.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    torch.testing.assert_close(model.fc.weight, w / 2)


def test_float32_decoupled_matches_adamw_too():
    reference = make_model(torch.float32)
    ours = copy.deepcopy(reference)
    train(
        reference,
        torch.optim.AdamW(weight_groups(reference, weight_decay=LAM), lr=1e-2),
        steps=20,
        dtype=torch.float32,
    )
    opt = torch.optim.Adam(ours.parameters(), lr=1e-2)
    Regularizer(ours, L2(LAM)).attach(opt, mode="decoupled")
    train(ours, opt, steps=20, dtype=torch.float32)
    assert_same_parameters(ours, reference, rtol=1e-6)


def test_check_finite_names_the_parameters(model):
    reg = Regularizer(model, L2(1e-3))
    reg.check_finite()  # all fine: silent
    with torch.no_grad():
        model.fc.weight[0, 0] = float("nan")
        model.head.weight[1, 1] = float("-inf")
    with pytest.raises(
        FloatingPointError, match=r"regularized parameters: fc\.weight, head\.weight"
    ):
        reg.check_finite()


def test_attach_with_check_finite_stops_at_the_step_that_diverged(model):
    reg = Regularizer(model, L2(1e-3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = reg.attach(opt, mode="decoupled", check_finite=True)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # finite: passes
    model.conv.weight.grad.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match=r"conv\.weight"):
        opt.step()
    handle.remove()
    opt.step()  # detached: no check any more


def test_decoupled_without_the_learning_rate_is_adamw_with_weight_decay_over_lr():
    """scale_by_lr=False steps ``w -= lam * w``: AdamW's ``w -= lr * wd * w`` at ``wd = lam / lr``,
    and it stays ``lam`` when a scheduler changes the lr (checked against the formula)."""
    torch.manual_seed(0)
    lam, lr = 1e-2, 0.05
    ours, theirs = (
        torch.nn.Linear(4, 3, bias=False).double(),
        torch.nn.Linear(4, 3, bias=False).double(),
    )
    theirs.load_state_dict(ours.state_dict())
    opt = torch.optim.Adam(ours.parameters(), lr=lr)
    Regularizer(ours, L2(lam)).attach(opt, mode="decoupled", scale_by_lr=False)
    ref = torch.optim.AdamW(theirs.parameters(), lr=lr, weight_decay=lam / lr)
    x = torch.randn(8, 4, dtype=torch.float64)
    for _ in range(10):
        for model, optimizer in ((ours, opt), (theirs, ref)):
            optimizer.zero_grad()
            model(x).square().mean().backward()
            optimizer.step()
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=1e-12, atol=1e-14)

    opt.param_groups[0]["lr"] = 0.0  # a scheduler at zero: the data step stops, the decay does not
    before = ours.weight.detach().clone()
    opt.zero_grad(set_to_none=False)
    opt.step()
    torch.testing.assert_close(ours.weight.detach(), before * (1 - lam), rtol=1e-14, atol=0)


def test_scale_by_lr_is_for_decoupled_mode_only():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="scale_by_lr=False applies to mode='decoupled' only"):
        Regularizer(model, "l2(1e-3)").attach(opt, mode="grad", scale_by_lr=False)
    with pytest.raises(TypeError, match="scale_by_lr must be True or False"):
        Regularizer(model, "l2(1e-3)").attach(opt, mode="decoupled", scale_by_lr="no")


def test_partial_attachments_equal_each_optimizers_weight_decay():
    """Two optimizers, each holding one layer: ``partial=True`` applies L2 in gradient mode to
    the parameters each one holds, which is ``weight_decay`` in each."""
    torch.manual_seed(0)
    make = lambda: nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()  # noqa: E731
    ours, theirs = make(), make()
    theirs.load_state_dict(ours.state_dict())
    lam = 0.05
    opts = [
        torch.optim.SGD(ours[0].parameters(), lr=0.1, momentum=0.9),
        torch.optim.Adam(ours[2].parameters(), lr=0.01),
    ]
    refs = [
        torch.optim.SGD(theirs[0].parameters(), lr=0.1, momentum=0.9, weight_decay=lam),
        torch.optim.Adam(theirs[2].parameters(), lr=0.01, weight_decay=lam),
    ]
    reg = Regularizer(ours, L2(lam), among="all")
    for opt in opts:
        reg.attach(opt, "grad", partial=True)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randn(16, 2, dtype=torch.float64)
    for _ in range(5):
        for model, optimizers in ((ours, opts), (theirs, refs)):
            for opt in optimizers:
                opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            for opt in optimizers:
                opt.step()
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p, q, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="holds none of the regularized parameters"):
        Regularizer(ours[0], L2(lam)).attach(opts[1], "grad", partial=True)
