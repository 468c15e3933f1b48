"""Against Keras 3 itself (torch backend): its constraints on Dense and Conv kernels, and
`from_keras` for every supported class."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
keras = pytest.importorskip("keras")

from torchpenalty import L1, L2, ElasticNet, MaxNorm, MinMaxNorm, NonNeg, UnitNorm, from_keras  # noqa: E402

#: Keras divides by epsilon + norm (1e-7): equal to ours within this, relative, on weights of
#: ordinary norm
KERAS_EPSILON_TOLERANCE = 1e-6


def keras_apply(constraint, kernel: np.ndarray) -> np.ndarray:
    return torch.as_tensor(constraint(keras.ops.convert_to_tensor(kernel))).cpu().numpy()


PAIRS = [
    (lambda axis: keras.constraints.MaxNorm(0.8, axis=axis), MaxNorm(0.8, "rows")),
    (lambda axis: keras.constraints.UnitNorm(axis=axis), UnitNorm("rows")),
    (
        lambda axis: keras.constraints.MinMaxNorm(0.5, 0.9, rate=0.7, axis=axis),
        MinMaxNorm(0.5, 0.9, 0.7, "rows"),
    ),
    (
        lambda axis: keras.constraints.MinMaxNorm(0.5, 0.9, rate=1.0, axis=axis),
        MinMaxNorm(0.5, 0.9, 1.0, "rows"),
    ),
    (lambda axis: keras.constraints.NonNeg(), NonNeg()),
]


@pytest.mark.parametrize("index", range(len(PAIRS)))
def test_constraints_equal_keras_on_dense_and_conv_kernels(index):
    make_keras, ours = PAIRS[index]
    rng = np.random.default_rng(index)
    # PyTorch Linear weight (out, in) is the Keras Dense kernel (in, out) transposed
    linear = rng.normal(size=(6, 10)).astype(np.float32) * 0.4
    dense = keras_apply(make_keras(0), linear.T).T
    # PyTorch Conv2d weight (out, in, kh, kw) is the Keras Conv2D kernel (kh, kw, in, out)
    conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32) * 0.3
    keras_conv = keras_apply(make_keras([0, 1, 2]), conv.transpose(2, 3, 1, 0))
    for w, expected in [(linear, dense), (conv, keras_conv.transpose(3, 2, 0, 1))]:
        got = ours.prox(torch.from_numpy(w), 1.0).numpy()
        np.testing.assert_allclose(got, expected, rtol=KERAS_EPSILON_TOLERANCE, atol=1e-7)
    assert from_keras(make_keras(0)) == ours


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


@pytest.mark.parametrize("axis", [1, -1, [1, 2], [0, 2]])
def test_from_keras_refuses_other_axes_naming_them(axis):
    with pytest.raises(ValueError, match=rf"MaxNorm\(axis={axis!r}\)".replace("[", r"\[")):
        from_keras(keras.constraints.MaxNorm(2.0, axis=axis))


def test_from_keras_refuses_what_it_cannot_convert():
    with pytest.raises(TypeError, match="from_keras takes a Keras regularizer"):
        from_keras("l2")
    with pytest.raises(ValueError, match="needs a 'class_name' key"):
        from_keras({"config": {}})
    with pytest.raises(ValueError, match="no torchpenalty equal of Keras 'Custom'"):
        from_keras({"class_name": "Custom", "config": {}})
