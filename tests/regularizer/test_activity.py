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


# -- per sample, as Keras defines it: the batch is the module's, not dim 0 of its output ----------


def per_sample_mean(module, penalty, inputs, batch_dim, **kwargs):
    """The oracle: the activity penalty of each sample run alone (a batch of one), averaged."""
    act = ActivityRegularizer(module, {"": penalty})
    samples = inputs[0].shape[batch_dim]
    total = 0.0
    for i in range(samples):
        alone = [x.narrow(batch_dim, i, 1) for x in inputs]
        module(*alone, **kwargs)
        total += act().detach().item()
    act.remove()
    return total / samples


RECURRENT = [
    (lambda: nn.LSTM(3, 4, num_layers=2), 1),  # sequence-first; returns (out, (h, c))
    (lambda: nn.GRU(3, 4, batch_first=True), 0),
    (lambda: nn.RNN(3, 4, bidirectional=True), 1),
    (lambda: nn.LSTM(3, 4, batch_first=True, num_layers=3), 0),
]


@pytest.mark.parametrize("index", range(len(RECURRENT)))
@pytest.mark.parametrize("penalty", ["l1(0.1)", "l2(0.3)", "group_lasso(0.2)"])
def test_recurrent_outputs_and_states_are_divided_by_the_batch_not_the_sequence(index, penalty):
    make, batch_dim = RECURRENT[index]
    torch.manual_seed(index)
    module = make()
    x = torch.randn(7, 5, 3) if batch_dim == 1 else torch.randn(5, 7, 3)
    act = ActivityRegularizer(module, {"": penalty})
    module(x)
    got = act().detach().item()
    assert got == pytest.approx(per_sample_mean(module, penalty, [x], batch_dim), rel=1e-5)


def test_packed_sequences_count_their_samples():
    torch.manual_seed(0)
    lstm = nn.LSTM(3, 4)
    x = torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 5, 3, 2])
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths)
    act = ActivityRegularizer(lstm, {"": "l1(1.0)"})
    lstm(packed)
    got = act().detach().item()
    expected = 0.0
    for i in range(4):
        lstm(x[: lengths[i], i : i + 1])  # sample i alone, its own length
        expected += act().detach().item()
    assert got == pytest.approx(expected / 4, rel=1e-5)


@pytest.mark.parametrize("batch_first", [False, True])
def test_attention_and_transformer_layers_follow_batch_first(batch_first):
    torch.manual_seed(1)
    dim = 0 if batch_first else 1
    shape = (3, 5, 8) if batch_first else (5, 3, 8)
    x = torch.randn(shape)
    attention = nn.MultiheadAttention(8, 2, batch_first=batch_first)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first)
    encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=batch_first),
        2,
        enable_nested_tensor=False,
    )
    for module, inputs in [(attention, [x, x, x]), (layer, [x]), (encoder, [x])]:
        act = ActivityRegularizer(module, {"": "l2(0.5)"})
        module(*inputs)
        got = act().detach().item()
        act.remove()
        assert got == pytest.approx(per_sample_mean(module, "l2(0.5)", inputs, dim), rel=1e-5)


def test_unbatched_inputs_are_one_sample():
    torch.manual_seed(2)
    gru = nn.GRU(3, 4)
    x = torch.randn(7, 3)  # unbatched: (sequence, features)
    act = ActivityRegularizer(gru, {"": "l1(1.0)"})
    out, h = gru(x)
    assert act().detach().item() == pytest.approx(
        (out.abs().sum() + h.abs().sum()).item(), rel=1e-6
    )


def test_an_empty_batch_adds_zero_not_nan():
    model = mlp()
    lstm = nn.LSTM(5, 2)
    act = ActivityRegularizer(model, {"0": "l1(1.0)", "2": "l2(1.0)"})
    model(torch.randn(0, 5))
    value = act()
    assert value.item() == 0 and not value.isnan()
    act_lstm = ActivityRegularizer(lstm, {"": "l1(1.0)"})
    lstm(torch.randn(4, 0, 5))
    assert act_lstm().item() == 0


@pytest.mark.parametrize(
    ("penalty", "message"),
    [
        ("max_norm(1.0)", "is a constraint"),
        ("l1(0.1) + non_neg()", "is a constraint"),
        ("l2(0.1, center=init)", "centered on reference weights"),
    ],
)
def test_penalties_without_meaning_on_outputs_are_refused_when_built(penalty, message):
    with pytest.raises(ValueError, match=message):
        ActivityRegularizer(mlp(), {"0": penalty})


class TopK(nn.Module):
    def forward(self, x):
        return torch.topk(x, 2)  # values and int64 indices


class Named(nn.Module):
    def forward(self, x):
        return x, "label"


@pytest.mark.parametrize(
    ("module", "message"),
    [(TopK(), r"module '<model>' returned a torch.int64 tensor"), (Named(), "returned a str")],
)
def test_outputs_it_cannot_penalize_are_refused_not_skipped(module, message):
    ActivityRegularizer(module, {"": "l1(0.1)"})
    with pytest.raises(ValueError, match=message):
        module(torch.randn(3, 4))
