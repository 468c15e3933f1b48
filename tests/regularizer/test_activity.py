"""`ActivityRegularizer` against Keras 3's activity regularizers (torch backend), and its
recording semantics: training mode only, one sum per `act()` call, hooks removable."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from torchpenalty import ActivityRegularizer


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))


def test_value_is_the_penalty_over_the_batch_size_and_gradients_flow():
    model = mlp()
    act = ActivityRegularizer(model, {"0": "l1(0.1)", nn.ReLU: "l2(0.2)"})
    x = torch.randn(8, 5)
    h = nn.functional.linear(x, model[0].weight, model[0].bias)  # no hook runs here
    expected = 0.1 * h.abs().sum() / 8 + 0.2 / 2 * torch.relu(h).square().sum() / 8
    model(x)
    got = act()
    torch.testing.assert_close(got, expected)
    (g,) = torch.autograd.grad(got, model[0].weight)
    (e,) = torch.autograd.grad(expected, model[0].weight)
    torch.testing.assert_close(g, e)
    assert act().item() == 0  # a new sum starts


def test_records_in_training_mode_only_and_sums_micro_batches():
    model = mlp()
    act = ActivityRegularizer(model, {"2": "l1(1.0)"})
    x1, x2 = torch.randn(4, 5), torch.randn(6, 5)
    model.eval()
    model(x1)
    assert act().item() == 0
    model.train()
    model(x1)
    model(x2)
    expected = model(x1).abs().sum() / 4 + model(x2).abs().sum() / 6
    act()  # drop the two just recorded while computing `expected`
    model(x1)
    model(x2)
    torch.testing.assert_close(act(), expected)


def test_remove_and_context_manager():
    model = mlp()
    with ActivityRegularizer(model, {nn.Linear: "l1(1.0)"}) as act:
        model(torch.randn(2, 5))
        assert act().item() > 0
    model(torch.randn(2, 5))
    assert act().item() == 0
    act.remove()  # idempotent


def test_rules_that_match_nothing_or_are_of_another_kind():
    model = mlp()
    with pytest.raises(ValueError, match=r"activity rule 'encoder\.\*' matches no module"):
        ActivityRegularizer(model, {"encoder.*": "l1(0.1)"})
    with pytest.raises(ValueError, match="not a submodule of the model"):
        ActivityRegularizer(model, {nn.Linear(2, 2): "l1(0.1)"})
    with pytest.raises(TypeError, match="an activity rule must be"):
        ActivityRegularizer(model, {3: "l1(0.1)"})
    with pytest.raises(ValueError, match="non-empty mapping"):
        ActivityRegularizer(model, {})


def test_compiled_model_records_without_a_graph_break():
    model = mlp()
    act = ActivityRegularizer(model, {nn.ReLU: "l1(0.5)"})
    x = torch.randn(3, 5)
    compiled = torch.compile(model, fullgraph=True)
    out = compiled(x)
    expected = 0.5 * torch.relu(model[0](x)).abs().sum() / 3
    torch.testing.assert_close(act(), expected)
    assert out.shape == (3, 3)


class TestAgainstKeras:
    @pytest.fixture(autouse=True)
    def keras(self):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        return pytest.importorskip("keras")

    @pytest.mark.parametrize("which", ["l1", "l2"])
    def test_dense_activity_penalty_equals_keras(self, keras, which):
        torch.manual_seed(2)
        x = torch.randn(7, 5)
        theirs_reg = keras.regularizers.L1(0.03) if which == "l1" else keras.regularizers.L2(0.03)
        dense = keras.layers.Dense(4, activity_regularizer=theirs_reg)
        dense(x)  # builds the layer
        linear = nn.Linear(5, 4)
        with torch.no_grad():
            linear.weight.copy_(dense.kernel.value.detach().T)
            linear.bias.copy_(dense.bias.value.detach())
        spec = "l1(0.03)" if which == "l1" else "l2(0.06)"  # Keras L2(x) is our l2(2x)
        act = ActivityRegularizer(nn.Sequential(linear), {"0": spec})
        dense(x)
        theirs = sum(dense.losses)
        nn.Sequential(linear)(x)
        torch.testing.assert_close(act(), torch.as_tensor(theirs).detach(), rtol=1e-5, atol=1e-7)


def test_low_precision_outputs_are_summed_in_float32():
    model = mlp()
    act = ActivityRegularizer(model, {"0": "l2(0.5)"})
    x = torch.randn(16, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model[0](x)  # bf16 under autocast; the hook records this call too
    assert h.dtype == torch.bfloat16
    got = act()
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, 0.5 / 2 * h.float().square().sum() / 16)
