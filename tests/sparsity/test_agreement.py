"""`TargetSparsity`'s count, its status and `compact` agree on every model: the units the
target counts as zero are exactly the units `compact` removes (whole layers keep one unit,
residual additions couple layers, dead units count only where their constant output folds),
with positional or keyword inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

pytest.importorskip("torch_pruning")

import torchpenalty as tp
from torchpenalty import GroupLasso, TargetSparsity, compact
from torchpenalty.sparsity.compaction import layer_widths

from .test_compaction import resnet


class Residual(nn.Module):
    """A stem and a residual branch whose last conv adds onto the stem: their units are one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        h = F.relu(self.stem(x))
        h = h + self.conv2(F.relu(self.conv1(h)))
        return self.head(h.mean((2, 3)))


class KeywordMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, *, features, scale=1.0):
        return self.out(F.relu(self.fc2(F.relu(self.fc1(features))))) * scale


def mlp():
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3))


def zero_mlp_layer(model):
    with torch.no_grad():
        model[0].weight.zero_()  # every unit of a layer dead: compact keeps one
        model[2].weight[:, 1].zero_()  # a unit of layer 0 unused too
        model[4].weight[:, [2, 5]].zero_()  # two units of layer 2 unused


def zero_residual(model):
    with torch.no_grad():
        model.conv1.weight[:2].zero_()  # dead, but before a padded conv: not removable
        model.conv2.weight[:, 2].zero_()  # conv1's unit 2 unused: removable
        model.conv1.weight[:, 3].zero_()  # the stem/conv2 unit 3 unused by both consumers
        model.head.weight[:, 3].zero_()
        model.stem.weight[5].zero_()  # dead in the stem only: conv2's unit 5 is alive


def zero_keyword(model):
    with torch.no_grad():
        model.fc1.weight[[0, 2]].zero_()
        model.out.weight[:, 1].zero_()


def zero_bn_resnet(net):
    with torch.no_grad():
        net[3].c1.weight[:3] = 0  # dead; batch-norm and ReLU make their output exactly 0
        net[3].b1.bias[:3] = -5.0
        net[3].c1.weight[5] = 0  # dead, its constant survives the ReLU: a padded conv consumes it
        net[3].b1.bias[5] = 2.0
        net[4].c2.weight[:, 2:5] = 0  # unused inner channels
        net[3].c2.weight[1] = 0  # on the residual stream: other layers still write channel 1


CASES = {
    "batch-norm resnet": (
        resnet,
        zero_bn_resnet,
        lambda: (torch.randn(4, 1, 8, 8),),
        {},
        {"3.c1.weight": GroupLasso(1e-3), "4.c1.weight": GroupLasso(1e-3)},
    ),
    "mlp whole layer": (
        mlp,
        zero_mlp_layer,
        lambda: (torch.randn(5, 6),),
        {},
        {"0.weight": GroupLasso(1e-3, "rows"), "2.weight": GroupLasso(1e-3, "rows")},
    ),
    "residual": (
        Residual,
        zero_residual,
        lambda: (torch.randn(4, 3, 6, 6),),
        {},
        {"stem.weight": GroupLasso(1e-3), "conv1.weight": GroupLasso(1e-3)},
    ),
    "keyword inputs": (
        KeywordMLP,
        zero_keyword,
        lambda: (),
        {"features": torch.randn(5, 6), "scale": 2.0},
        {"fc1.weight": GroupLasso(1e-3), "fc2.weight": GroupLasso(1e-3)},
    ),
}


def removed_by_compact(model, args, kwargs) -> int:
    example = kwargs if kwargs else args
    small = compact(model, example)
    before, after = layer_widths(model), layer_widths(small)
    return sum(before.values()) - sum(after.values())


@pytest.mark.parametrize("case", list(CASES))
def test_the_target_counts_exactly_the_units_compact_removes(case):
    make, zero, make_args, kwargs, penalties = CASES[case]
    torch.manual_seed(0)
    model = make()
    zero(model)
    args = make_args()
    reg = tp.Regularizer(model, penalties, target=TargetSparsity(0.5, by_step=10))
    model(*args, **kwargs)  # the target learns the units from the first forward
    count, total = reg.target.counts()
    assert 0 < count < total
    assert count == removed_by_compact(model, args, kwargs)
    status = reg.target.status()
    assert status.reached == count / total


def synthetic(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 6, 6, generator=g)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y


@pytest.mark.parametrize("fraction", [0.4, np.float64(0.7), np.float32(0.8)])
def test_a_trained_residual_model_compacts_to_what_its_status_says(fraction):
    torch.manual_seed(1)
    model = Residual()
    x, y = synthetic()
    penalties = {
        "stem.weight": GroupLasso(1e-3, "rows"),
        "conv1.weight": GroupLasso(1e-3, "rows"),
        "conv2.weight": GroupLasso(1e-3, "cols"),
        "head.weight": GroupLasso(1e-3, "cols"),
    }
    reg = tp.Regularizer(model, penalties, target=TargetSparsity(fraction, by_step=40))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reg.attach(opt, mode="proximal")
    for step in range(60):
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
    status = reg.target.status()
    count, total = reg.target.counts()
    assert status.frozen_at is not None
    assert status.reached >= float(fraction) - 1 / total
    assert count == removed_by_compact(model, (x[:8],), {})


def test_a_target_of_every_unit_of_a_layer_leaves_one():
    """The rounded target covering a whole layer: the status and compact both keep one unit."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(10, 2), nn.ReLU(), nn.Linear(2, 30), nn.ReLU(), nn.Linear(30, 3)
    )
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    penalties = {"0.weight": GroupLasso(5e-2, "rows"), "2.weight": GroupLasso(1e-4, "rows")}
    reg = tp.Regularizer(model, penalties, target=TargetSparsity(0.1, by_step=30))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode="proximal")
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    count, total = reg.target.counts()
    assert (model[0].weight.detach() == 0).all()  # the penalty killed the whole layer
    assert count <= total - 2  # one unit of each layer stays, in the count
    assert count == removed_by_compact(model, (x[:8],), {})


def test_state_dict_keeps_both_masks_of_a_layer_that_is_producer_and_consumer():
    torch.manual_seed(3)
    model = mlp()
    x = torch.randn(16, 6)
    penalties = {"0.weight": GroupLasso(1.0), "2.weight": GroupLasso(1.0)}
    reg = tp.Regularizer(model, penalties, target=TargetSparsity(0.5, by_step=4))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    reg.attach(opt, mode="proximal")
    for _ in range(6):
        opt.zero_grad()
        model(x).square().sum().backward()
        opt.step()
    masks = reg.target.state_dict()["masks"]
    # layer 2 is both a unit layer (its rows) and layer 0's consumer (its columns)
    assert "2.weight" in masks
    fresh = mlp()
    again = tp.Regularizer(fresh, penalties, target=TargetSparsity(0.5, by_step=4))
    again.target.load_state_dict(reg.target.state_dict())
    with torch.no_grad():
        fresh[2].weight.fill_(1.0)
    again.target.enforce()
    expected = masks["2.weight"]
    torch.testing.assert_close(fresh[2].weight.detach(), expected)
