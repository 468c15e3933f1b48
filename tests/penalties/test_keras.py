"""Against Keras 3 itself (torch backend): its constraints on Dense and Conv kernels, and
`from_keras` for every supported class."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from torch import nn

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from torchpenalty import (  # noqa: E402
    L1,
    L2,
    ElasticNet,
    MaxNorm,
    NonNeg,
    Penalty,
    Regularizer,
    from_keras,
)

#: Keras divides by epsilon + norm (1e-7): equal to ours within this, relative, on weights of
#: ordinary norm
KERAS_EPSILON_TOLERANCE = 1e-6


def keras_apply(constraint, kernel: np.ndarray) -> np.ndarray:
    return torch.as_tensor(constraint(keras.ops.convert_to_tensor(kernel))).cpu().numpy()


def keras_to_torch(kernel: np.ndarray) -> np.ndarray:
    """A Keras kernel ``(*window, in, out)`` as the PyTorch weight ``(out, in, *window)``."""
    r = kernel.ndim
    return kernel if r < 2 else kernel.transpose(r - 1, r - 2, *range(r - 2))


def torch_to_keras(weight: np.ndarray) -> np.ndarray:
    r = weight.ndim
    return weight if r < 2 else weight.transpose(*range(2, r), 1, 0)


CONSTRAINTS = [
    lambda axis: keras.constraints.MaxNorm(0.8, axis=axis),
    lambda axis: keras.constraints.UnitNorm(axis=axis),
    lambda axis: keras.constraints.MinMaxNorm(0.5, 0.9, rate=0.7, axis=axis),
    lambda axis: keras.constraints.MinMaxNorm(0.5, 0.9, rate=1.0, axis=axis),
]

#: Dense, Conv1D, Conv2D and Conv3D kernels (PyTorch shapes) and the axes Keras accepts on them
KERNELS = {
    (6, 10): [0, 1, -1, [0, 1], None],
    (5, 3, 4): [0, 1, 2, -1, [0, 1], [1, 2]],
    (4, 3, 3, 2): [0, 1, 2, 3, [0, 1, 2], [0, 1], [2, 3], -2, (1, 3)],
    (3, 2, 2, 3, 2): [0, [0, 1, 2, 3], [0, 1, 2], 4],
}


def check_equal_keras(ours, constraint, weight: np.ndarray) -> None:
    kernel = torch_to_keras(weight)
    expected = keras_to_torch(keras_apply(constraint, kernel))
    got = ours.prox(torch.from_numpy(weight), 1.0).numpy()
    # Keras divides by 1e-7 + n: relative error 1e-7 / n on the smallest group norm n
    axis = getattr(constraint, "axis", None)
    axis = tuple(axis) if isinstance(axis, list | tuple) else axis
    smallest = float(np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=axis)).min())
    rtol = KERAS_EPSILON_TOLERANCE + 2e-7 / smallest
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=1e-7)


@pytest.mark.parametrize("shape", list(KERNELS), ids=str)
@pytest.mark.parametrize("index", range(len(CONSTRAINTS)))
def test_norm_constraints_equal_keras_for_every_axis_and_kernel_rank(index, shape):
    rng = np.random.default_rng(index)
    weight = rng.normal(size=shape).astype(np.float32) * 0.4
    for axis in KERNELS[shape]:
        constraint = CONSTRAINTS[index](axis)
        check_equal_keras(from_keras(constraint), constraint, weight)
        # through the config too (a saved penalty keeps its Keras axes)
        again = Penalty.from_config(json.loads(json.dumps(from_keras(constraint).get_config())))
        check_equal_keras(again, constraint, weight)


def test_default_axis_of_a_conv_kernel_is_keras_own_not_per_filter():
    """Keras' default ``axis=0`` of a Conv2D kernel ``(kh, kw, in, out)`` norms across kh."""
    weight = np.random.default_rng(1).normal(size=(4, 3, 3, 3)).astype(np.float32)
    constraint = keras.constraints.MaxNorm(0.5)
    check_equal_keras(from_keras(constraint), constraint, weight)
    per_filter = MaxNorm(0.5, "rows").prox(torch.from_numpy(weight), 1.0).numpy()
    assert not np.allclose(from_keras(constraint).prox(torch.from_numpy(weight), 1.0), per_filter)
    # the Dense default is each output unit, our rows
    dense = np.random.default_rng(2).normal(size=(6, 10)).astype(np.float32)
    np.testing.assert_array_equal(
        from_keras(constraint).prox(torch.from_numpy(dense), 1.0),
        MaxNorm(0.5, "rows").prox(torch.from_numpy(dense), 1.0),
    )


@pytest.mark.parametrize("mode", ["proximal", "decoupled"])
def test_attached_conversions_project_as_keras_on_a_conv_net(mode):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    constraint = keras.constraints.MaxNorm(0.3)  # default axis, on a Conv and a Dense kernel
    reg = Regularizer(model, from_keras(constraint))
    before = [w.detach().numpy().copy() for _, w in reg.named_parameters()]
    reg.project_()
    for (_, w), weight in zip(reg.named_parameters(), before, strict=True):
        expected = keras_to_torch(keras_apply(constraint, torch_to_keras(weight)))
        np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-6, atol=1e-7)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    reg.attach(opt, mode=mode)
    loss = model(torch.randn(2, 3, 6, 6)).square().sum()
    loss.backward()
    opt.step()
    for _, w in reg.named_parameters():
        kernel = torch_to_keras(w.detach().numpy())
        norms = np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=0))
        assert (norms <= 0.3 * (1 + 1e-6)).all()


def test_embedding_tables_read_keras_axes_as_they_are():
    table = np.random.default_rng(3).normal(size=(7, 4)).astype(np.float32)
    for axis in (0, 1, -1):
        constraint = keras.constraints.UnitNorm(axis=axis)
        expected = keras_apply(constraint, table)  # Keras' Embedding is (input_dim, output_dim)
        got = from_keras(constraint, layout="same").prox(torch.from_numpy(table), 1.0).numpy()
        np.testing.assert_allclose(got, expected, rtol=KERAS_EPSILON_TOLERANCE, atol=1e-7)
    with pytest.raises(ValueError, match="layout must be one of kernel, same, got 'keras'"):
        from_keras(keras.constraints.UnitNorm(), layout="keras")


def test_non_neg_equals_keras():
    weight = np.random.default_rng(4).normal(size=(4, 3, 3, 3)).astype(np.float32)
    check_equal_keras(from_keras(keras.constraints.NonNeg()), keras.constraints.NonNeg(), weight)
    assert from_keras(keras.constraints.NonNeg()) == NonNeg()


def test_from_keras_regularizers_convert_l2_by_two():
    assert from_keras(keras.regularizers.L1(0.03)) == L1(0.03)
    assert from_keras(keras.regularizers.L2(0.03)) == L2(0.06)
    assert from_keras(keras.regularizers.L1L2(0.01, 0.02)) == ElasticNet(0.01, 0.04)
    assert from_keras(keras.regularizers.L1L2(0.0, 0.02)) == L2(0.04)
    # the values agree: Keras' penalty of a weight equals ours
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for reg in (keras.regularizers.L1(0.03), keras.regularizers.L2(0.03)):
        theirs = float(reg(keras.ops.convert_to_tensor(w)))
        ours = float(from_keras(reg).value(torch.from_numpy(w)))
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_from_keras_takes_serialized_dicts():
    for obj in (keras.constraints.MaxNorm(3.0), keras.regularizers.L1L2(0.01, 0.02)):
        serialized = keras.saving.serialize_keras_object(obj)
        assert from_keras(serialized) == from_keras(obj)
    assert from_keras({"class_name": "NonNeg", "config": {}}) == NonNeg()


#: arguments Keras accepts, as a user writes them: None (the default), ints, bools, NumPy
REGULARIZER_ARGS = [
    ("L1", {"l1": None}),
    ("L1", {"l1": 1}),
    ("L1", {"l1": np.float64(0.003)}),
    ("L1", {"l1": True}),
    ("L2", {"l2": None}),
    ("L2", {"l2": 0}),
    ("L2", {"l2": np.float64(0.25)}),
    ("L1L2", {"l1": None, "l2": 0.02}),
    ("L1L2", {"l1": 0.01, "l2": None}),
    ("L1L2", {}),
    ("L1L2", {"l1": 2, "l2": 3}),
    ("OrthogonalRegularizer", {"factor": 0.02}),
    ("OrthogonalRegularizer", {"factor": 1, "mode": "columns"}),
]


@pytest.mark.parametrize(("class_name", "args"), REGULARIZER_ARGS, ids=str)
def test_regularizer_arguments_read_as_keras_reads_them(class_name, args):
    obj = getattr(keras.regularizers, class_name)(**args)
    w = np.random.default_rng(5).normal(size=(4, 6)).astype(np.float32)
    theirs = float(obj(keras.ops.convert_to_tensor(torch_to_keras(w))))
    for source in (
        obj,
        keras.saving.serialize_keras_object(obj),
        {"class_name": class_name, "config": args},
    ):
        ours = from_keras(source)
        assert float(ours.value(torch.from_numpy(w))) == pytest.approx(theirs, rel=2e-6, abs=1e-9)


CONSTRAINT_ARGS = [
    ("MaxNorm", {"max_value": np.float32(0.7)}),
    ("MaxNorm", {"max_value": 1, "axis": -4}),
    ("MinMaxNorm", {"min_value": 0, "max_value": np.float64(0.6), "rate": 0.5}),
    ("UnitNorm", {"axis": [0, np.int32(1)]}),
]


@pytest.mark.parametrize(("class_name", "args"), CONSTRAINT_ARGS, ids=str)
def test_constraint_arguments_read_as_keras_reads_them(class_name, args):
    obj = getattr(keras.constraints, class_name)(**args)
    weight = np.random.default_rng(6).normal(size=(4, 3, 3, 2)).astype(np.float32)
    check_equal_keras(from_keras(obj), obj, weight)
    check_equal_keras(from_keras({"class_name": class_name, "config": args}), obj, weight)


def test_names_keras_get_takes():
    for name in ("l1", "L2", "l1l2", "max_norm", "MinMaxNorm", "non_neg", "unit_norm"):
        keras_obj = keras.regularizers.get(name) if name.lower().startswith("l") else None
        keras_obj = keras_obj or keras.constraints.get(name)
        assert from_keras(name) == from_keras(keras_obj)
    assert from_keras({"class_name": "max_norm", "config": {"max_value": 3}}) == from_keras(
        keras.constraints.MaxNorm(3)
    )


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (
            {"class_name": "L2", "config": {"l2": 0.1, "l1": 0.2}},
            r"Keras L2 takes no argument 'l1'",
        ),
        ({"class_name": "MaxNorm", "config": {"max_value": 2, "axes": 0}}, r"no argument 'axes'"),
        ({"class_name": "L1", "config": {"l1": -0.5}}, r"Keras L1\(l1=-0.5\)"),
        ({"class_name": "L1L2", "config": {"l2": float("nan")}}, r"Keras L1L2\(l2=nan\)"),
        (
            {"class_name": "MaxNorm", "config": {"max_value": "3"}},
            r"Keras MaxNorm\(max_value='3'\)",
        ),
        ({"class_name": "MaxNorm", "config": {"axis": "0"}}, r"Keras MaxNorm\(axis='0'\)"),
        ({"class_name": "OrthogonalRegularizer", "config": {"mode": "cols"}}, r"mode='cols'"),
        ({"config": {}}, "needs a 'class_name' key"),
        ({"class_name": "Custom", "config": {}}, "no torchpenalty equal of Keras 'Custom'"),
        ("l3", "no torchpenalty equal of Keras 'l3'"),
        ({"class_name": "OrthogonalRegularizer", "config": {"factor": None}}, r"factor=None"),
        ({"class_name": "MaxNorm", "config": {"max_value": None}}, r"max_value=None"),
    ],
    ids=str,
)
def test_refusals_name_the_keras_argument_and_value(source, message):
    with pytest.raises(ValueError, match=message):
        from_keras(source)


def test_keras_axis_out_of_range_is_refused_on_the_weight():
    penalty = from_keras(keras.constraints.MaxNorm(1.0, axis=3))
    with pytest.raises(ValueError, match="Keras axis 3 is out of range for a weight of 2 dims"):
        penalty.prox(torch.ones(3, 4), 1.0)


def test_from_keras_refuses_what_it_cannot_convert():
    with pytest.raises(TypeError, match="from_keras takes a Keras regularizer"):
        from_keras(3.0)
