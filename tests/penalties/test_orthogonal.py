"""`Orthogonal` against autograd, gradcheck and Keras 3's OrthogonalRegularizer."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

from torchpenalty import Orthogonal, Regularizer, from_keras, parse


@pytest.mark.parametrize("groups", ["rows", "cols"])
@pytest.mark.parametrize("shape", [(5, 7), (4, 3, 2, 2)])
def test_gradient_is_autograds(groups, shape):
    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    penalty = Orthogonal(0.3, groups)
    (expected,) = torch.autograd.grad(penalty.value(w), w)
    torch.testing.assert_close(penalty.grad(w.detach()), expected, rtol=1e-12, atol=1e-14)
    torch.autograd.gradcheck(penalty.value, (w,))
    np.testing.assert_allclose(
        penalty.grad(w.detach().numpy()), expected.numpy(), rtol=1e-12, atol=1e-14
    )
    assert penalty.value(w.detach().numpy()) == pytest.approx(penalty.value(w).item(), rel=1e-12)


def test_orthogonal_rows_have_zero_value_and_a_zero_row_adds_nothing():
    w = torch.eye(4, dtype=torch.float64)[:3] * torch.tensor([[2.0], [0.5], [3.0]])
    assert Orthogonal(1.0).value(w) == 0
    with_zero = torch.cat([w, torch.zeros(1, 4, dtype=torch.float64)])
    torch.testing.assert_close(
        Orthogonal(1.0).grad(with_zero)[3], torch.zeros(4, dtype=torch.float64)
    )


def test_bad_input_names_what_was_given():
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        Orthogonal(0.1).value(torch.randn(1, 5))
    with pytest.raises(ValueError, match="groups must be one of rows, cols"):
        Orthogonal(0.1, "tensor")
    model = nn.Sequential(nn.Linear(4, 1))
    with pytest.raises(ValueError, match="needs at least 2 rows"):
        Regularizer(model, "orthogonal(0.1)")
    reg = Regularizer(nn.Sequential(nn.Linear(4, 3)), "orthogonal(0.1)")
    opt = torch.optim.SGD(reg.named_parameters().__next__()[1:], lr=0.1)
    with pytest.raises(ValueError, match="no closed-form prox"):
        reg.attach(opt, mode="proximal")


def test_spec_and_training_modes():
    assert parse("orthogonal(0.01, groups=cols)") == Orthogonal(0.01, "cols")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    reg = Regularizer(model, "orthogonal(0.5)")
    before = reg.value().item()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    reg.attach(opt, mode="decoupled")
    for _ in range(20):
        opt.step()  # no data loss: the decay alone decorrelates the rows
    assert reg.value().item() < before


class TestAgainstKeras:
    @pytest.fixture(autouse=True)
    def keras(self):
        os.environ.setdefault("KERAS_BACKEND", "torch")
        return pytest.importorskip("keras")

    @pytest.mark.parametrize("mode, groups", [("rows", "cols"), ("columns", "rows")])
    def test_value_and_gradient_equal_keras_on_a_dense_kernel(self, keras, mode, groups):
        torch.manual_seed(1)
        weight = torch.randn(5, 8)  # PyTorch Linear (out, in); Keras' kernel is its transpose
        kernel = weight.T.clone().requires_grad_(True)
        theirs_reg = keras.regularizers.OrthogonalRegularizer(0.2, mode=mode)
        theirs = theirs_reg(kernel)
        (theirs_grad,) = torch.autograd.grad(theirs, kernel)  # Keras' ops are torch ops here
        ours = Orthogonal(0.2, groups)
        assert from_keras(theirs_reg) == ours
        torch.testing.assert_close(ours.value(weight), theirs.detach(), rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(ours.grad(weight), theirs_grad.T, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("groups", ["rows", "cols"])
@pytest.mark.parametrize("shape", [(5,), (), (2,)])
def test_vectors_and_scalars_are_refused(groups, shape):
    penalty = Orthogonal(0.1, groups)
    w = torch.randn(shape)
    for call in (penalty.value, penalty.grad):
        with pytest.raises(ValueError, match=r"needs a tensor of 2 or more dims"):
            call(w)
    model = nn.Linear(3, 5)
    with pytest.raises(ValueError, match=r"cannot apply to 'bias': .* 2 or more dims"):
        Regularizer(model, {"bias": penalty}, among="all")
