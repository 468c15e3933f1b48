"""L1, L2, ElasticNet and Zero: value, grad and prox against definitions and independent oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize_scalar

from torchpenalty import L1, L2, ElasticNet, Zero
from torchpenalty.penalties import soft_threshold

PENALTIES = [L1(0.3), L2(0.7), ElasticNet(0.2, 0.5), Zero(), L1(0.0), ElasticNet(0.0, 0.0)]


def _away_from_kinks(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=dtype)
    return w + 0.1 * torch.sign(w)  # |w| >= 0.1: finite differences never cross 0


@pytest.mark.parametrize("pen", PENALTIES, ids=repr)
def test_value_matches_definition(pen):
    w = _away_from_kinks((5, 7))
    l1, l2 = getattr(pen, "l1_coef", 0.0), getattr(pen, "l2_coef", 0.0)
    expected = l1 * w.abs().sum() + l2 / 2 * (w**2).sum()
    torch.testing.assert_close(pen.value(w), expected, rtol=1e-14, atol=0)
    assert pen.value(w).shape == ()


def test_l2_is_not_the_norm_snippet():
    # `torch.norm(w, 2)` is sqrt(sum w^2), not lam/2 * sum w^2.
    w = torch.tensor([3.0, 4.0], dtype=torch.float64)
    assert L2(1.0).value(w).item() == pytest.approx(12.5)
    assert torch.norm(w, 2).item() == pytest.approx(5.0)


@pytest.mark.parametrize("pen", PENALTIES, ids=repr)
def test_grad_matches_autograd(pen):
    w = _away_from_kinks((4, 3, 2)).requires_grad_()
    (auto,) = torch.autograd.grad(pen.value(w), w, allow_unused=True, materialize_grads=True)
    torch.testing.assert_close(pen.grad(w.detach()), auto, rtol=1e-14, atol=1e-15)


def test_l1_grad_at_zero_is_zero():
    assert L1(0.5).grad(torch.zeros(3)).eq(0).all()


@pytest.mark.parametrize("pen", [L1(0.3), L2(0.7), ElasticNet(0.2, 0.5)], ids=repr)
@pytest.mark.parametrize("step", [0.05, 1.0, 3.0])
def test_prox_matches_scalar_minimization(pen, step):
    """The penalty is separable, so each coordinate's prox is a 1-D problem scipy can solve."""
    w = np.linspace(-2.0, 2.0, 41)
    got = pen.prox(w, step)
    for wi, pi in zip(w, got, strict=True):
        objective = lambda x, wi=wi: step * float(pen.value(np.array([x]))) + (x - wi) ** 2 / 2  # noqa: E731
        ref = minimize_scalar(objective, bounds=(-3, 3), method="bounded", options={"xatol": 1e-10})
        assert pi == pytest.approx(ref.x, abs=1e-7)


def _check_prox_optimality(pen, w: np.ndarray, step: float) -> None:
    """``(w - p) / step`` must lie in the subdifferential of R at ``p``."""
    p = pen.prox(w, step)
    l1, l2 = pen.l1_coef, pen.l2_coef
    residual = (w - p) / step - l2 * p
    nonzero = p != 0
    np.testing.assert_allclose(residual[nonzero], l1 * np.sign(p[nonzero]), atol=1e-9, rtol=1e-9)
    assert np.all(np.abs(residual[~nonzero]) <= l1 * (1 + 1e-12) + 1e-12)


@settings(max_examples=60, deadline=None)
@given(
    w=arrays(np.float64, st.integers(0, 20), elements=st.floats(-1e3, 1e3)),
    l1=st.floats(0, 10),
    l2=st.floats(0, 10),
    step=st.floats(1e-3, 10),
)
def test_prox_optimality_property(w, l1, l2, step):
    for pen in (L1(l1), L2(l2), ElasticNet(l1, l2)):
        _check_prox_optimality(pen, w, step)


def test_prox_gives_exact_zeros_and_keeps_dtype():
    w = torch.tensor([-0.5, -0.1, 0.0, 0.05, 0.2], dtype=torch.float32)
    p = L1(0.1).prox(w, 1.0)
    assert p.dtype == torch.float32
    assert p.tolist() == pytest.approx([-0.4, 0.0, 0.0, 0.0, 0.1])
    assert (p == 0).sum() == 3


def test_prox_accepts_tensor_step_and_does_not_alias():
    w = torch.randn(10)
    p = L1(0.5).prox(w, torch.tensor(0.1))
    torch.testing.assert_close(p, soft_threshold(w, 0.05))
    assert Zero().prox(w, 1.0) is not w and L1(0).prox(w, 1.0).data_ptr() != w.data_ptr()


@pytest.mark.parametrize("pen", PENALTIES, ids=repr)
def test_numpy_and_torch_agree(pen):
    w = np.random.default_rng(0).normal(size=(6, 5))
    t = torch.from_numpy(w)
    for method, args in (("value", ()), ("grad", ()), ("prox", (0.3,))):
        out = getattr(pen, method)(w, *args)
        assert not isinstance(out, torch.Tensor)
        np.testing.assert_allclose(
            np.asarray(out), getattr(pen, method)(t, *args).numpy(), rtol=1e-14, atol=1e-15
        )


def test_numpy_dtype_is_kept():
    w = np.ones(4, dtype=np.float32)
    assert L1(0.1).grad(w).dtype == np.float32
    assert ElasticNet(0.1, 0.1).prox(w, 0.5).dtype == np.float32


def test_empty_and_zero_dim():
    for pen in PENALTIES:
        assert float(pen.value(torch.zeros(0))) == 0.0
        assert pen.grad(torch.zeros(0)).shape == (0,)
        assert pen.prox(torch.tensor(2.0, dtype=torch.float64), 0.1).shape == ()
    assert float(L2(2.0).value(torch.tensor(3.0))) == 9.0


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: L1(-0.1), ValueError, "lam must be a finite number >= 0"),
        (lambda: L2(float("nan")), ValueError, "lam must be a finite number >= 0"),
        (lambda: L2(math.inf), ValueError, "lam must be a finite number >= 0"),
        (lambda: ElasticNet(0.1, -1), ValueError, "l2 must be"),
        (lambda: L2("0.01"), TypeError, "lam must be a real number"),
        (lambda: L1(True), TypeError, "lam must be a real number"),
        (lambda: L1(0.1).value([1.0, 2.0]), TypeError, "torch.Tensor or a numpy.ndarray"),
        (lambda: L1(0.1).prox(torch.ones(2), -1.0), ValueError, "step must be a finite number"),
        (lambda: L1(0.1).prox(torch.ones(2), torch.ones(2)), ValueError, "step must be a scalar"),
    ],
)
def test_bad_input(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_zero_strength_means_off():
    w = torch.randn(3, 3)
    assert L1(0).value(w) == 0 and L2(0).grad(w).eq(0).all()
    torch.testing.assert_close(ElasticNet(0, 0).prox(w, 1.0), w)


def test_penalties_are_immutable_and_comparable():
    pen = L2(0.1)
    with pytest.raises(AttributeError):
        pen.lam = 0.2
    assert L2(0.1) == L2(0.1) and L2(0.1) != L1(0.1) and hash(L2(0.1)) == hash(L2(0.1))
    assert L2(-0.0) == L2(0.0) and repr(L2(-0.0)) == "l2(lam=0.0)"
