"""`compact`: dead and unused units leave, the function stays (to 1e-5 on the example inputs)."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from torchpenalty import compact
from torchpenalty.sparsity.compaction import count_parameters, layer_widths


def assert_same_function(original, compacted, x, atol=1e-5):
    with torch.no_grad():
        assert (original.eval()(x) - compacted(x)).abs().max() <= atol


def test_mlp_dead_units_fold_their_constant_and_unused_units_go():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 3)
    )
    with torch.no_grad():
        model[0].weight[:5] = 0  # dead: output relu(bias), a nonzero constant for some
        model[4].weight[:, 7:] = 0  # unused by the only consumer
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(64, 8)
    small = compact(model, x)
    assert layer_widths(small) == {"0": 11, "2": 7, "4": 3}
    assert count_parameters(small) < count_parameters(model)
    assert_same_function(model, small, x)
    assert_same_function(model, small, torch.randn(64, 8))  # not just on the traced inputs
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


class Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(ch)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(ch)

    def forward(self, x):
        return torch.relu(x + self.b2(self.c2(torch.relu(self.b1(self.c1(x))))))


def resnet():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8),
        Block(8),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net


def test_cnn_with_batchnorm_and_residual_connections():
    net = resnet()
    with torch.no_grad():
        net[3].c1.weight[:3] = 0  # dead filters; batch-norm maps them to a constant ...
        net[3].b1.bias[:3] = -5.0  # ... that the ReLU turns into 0: removable
        net[3].c1.weight[5] = 0  # a dead filter whose constant survives the ReLU: a padded conv
        net[3].b1.bias[5] = 2.0  # consumes it, so folding is not exact and it must stay
        net[4].c2.weight[:, 2:5] = 0  # inner channels unused by their only consumer
        net[3].c2.weight[1] = 0  # on the residual stream: other layers still write channel 1
    x = torch.randn(4, 1, 8, 8)
    small = compact(net, x)
    widths = layer_widths(small)
    assert widths["3.c1"] == 5 and widths["4.c1"] == 5
    assert widths["3.c2"] == 8 and widths["0"] == 8  # the residual stream keeps its width
    assert_same_function(net, small, x)
    assert_same_function(net, small, torch.randn(4, 1, 8, 8))


def test_conv_flatten_linear():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    with torch.no_grad():
        net[0].weight[[1, 4]] = 0
        net[0].bias[[1, 4]] = 0.5  # constant 0.5 maps, folded into the Linear's bias
    x = torch.randn(3, 1, 6, 6)
    small = compact(net, x)
    assert small[0].out_channels == 4 and small[3].in_features == 4 * 16
    assert_same_function(net, small, x)


def test_nothing_to_remove_returns_an_equal_copy():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    small = compact(model, torch.randn(5, 4))
    assert small is not model and layer_widths(small) == layer_widths(model)


def test_a_fully_dead_layer_keeps_one_unit():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].weight.zero_()
    x = torch.randn(5, 4)
    small = compact(model, x)
    assert layer_widths(small)["0"] == 1
    assert_same_function(model, small, x)


def test_missing_torch_pruning_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'torchpenalty\[prune\]'"):
        compact(nn.Linear(2, 2), torch.randn(1, 2))


def test_report_and_compact_agree_on_the_digits_mlp_trained_with_momentum():
    """The issue's model: 64-256-10, group lasso on layer 0's rows and layer 2's columns,
    proximal SGD with momentum 0.9 (whose decaying buffers keep touching zeroed groups). The
    report counts exact zeros only, so its zero groups, its zero units and what compact()
    removes are the same units."""
    from sklearn.datasets import load_digits

    from torchpenalty import Regularizer

    x_np, y_np = load_digits(return_X_y=True)
    x = torch.tensor(x_np / 16.0, dtype=torch.float32)
    y = torch.tensor(y_np)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    reg = Regularizer(
        model,
        {
            "0.weight": "group_lasso(1e-2, groups=rows)",
            "2.weight": "group_lasso(1e-2, groups=cols)",
        },
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    reg.attach(opt, mode="proximal")
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        for idx in torch.randperm(len(x), generator=g).split(16):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    dead = (model[0].weight == 0).all(dim=1)
    unused = (model[2].weight == 0).all(dim=0)
    rows, cols = reg.report().rows
    assert rows.zero_groups == rows.zero_units == int(dead.sum())
    assert cols.zero_groups == int(unused.sum())
    assert 0 < int((dead | unused).sum()) < 256
    removed = 256 - layer_widths(compact(model, x))["0"]
    assert removed == int((dead | unused).sum())


def test_only_the_layers_operated_on_are_copied(monkeypatch):
    """compact() copies the model once, then only the modules a layer's surgery can change
    (its dependency group), and only for layers with units to remove: never the whole model
    once per layer."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(16, 16), nn.ReLU())])
    model.append(nn.Linear(16, 2))
    with torch.no_grad():
        model[4].weight[:3] = 0  # one layer with dead units
        model[4].bias[:3] = 0
    copied = []
    deepcopy = copy.deepcopy

    def counting(obj, *args, **kwargs):
        copied.append(obj)
        return deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(copy, "deepcopy", counting)
    x = torch.randn(32, 16)
    small = compact(model, x)
    whole = [c for c in copied if isinstance(c, nn.Sequential)]
    assert len(whole) == 1  # the working copy, nothing per layer
    assert {type(c) for c in copied if c is not model} <= {nn.Linear}  # the dead layer's group
    assert len(copied) - 1 <= 2  # the layer and its consumer
    assert layer_widths(small)["4"] == 13
    assert_same_function(model, small, x)
