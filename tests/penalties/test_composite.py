"""`+` on penalties: canonical sums whose value, grad and prox stay right."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from torchpenalty import L1, L2, ElasticNet, Penalty, Sum, Zero, parse
from torchpenalty.penalties import PENALTIES, known_names, register

from ..helpers import LogCosh


def test_elementwise_sums_fold():
    assert L1(0.1) + L2(0.2) == ElasticNet(0.1, 0.2)
    assert L2(0.2) + L1(0.1) == ElasticNet(0.1, 0.2)
    assert L1(0.1) + L1(0.2) == L1(0.1 + 0.2)
    assert L2(0.1) + L2(0.2) == L2(0.1 + 0.2)
    assert ElasticNet(0.1, 0.2) + L1(0.3) == ElasticNet(0.1 + 0.3, 0.2)
    assert L1(0.1) + Zero() == L1(0.1) and Zero() + Zero() == Zero()
    assert sum([L1(0.1), L2(0.2)], Zero()) == ElasticNet(0.1, 0.2)


def test_adding_a_non_penalty_is_a_type_error():
    with pytest.raises(TypeError):
        L1(0.1) + 0.5


def test_custom_penalty_sums_value_grad_and_quadratic_prox():
    pen = LogCosh(0.5) + L2(0.3)
    assert isinstance(pen, Sum)
    w = np.random.default_rng(0).normal(size=6)
    np.testing.assert_allclose(pen.value(w), LogCosh(0.5).value(w) + L2(0.3).value(w))
    np.testing.assert_allclose(pen.grad(w), np.tanh(w) * 0.5 + 0.3 * w)
    step = 0.7
    got = pen.prox(w, step)
    ref = minimize(
        lambda x: step * pen.value(x) + ((x - w) ** 2).sum() / 2,
        w,
        jac=lambda x: step * pen.grad(x) + (x - w),
        tol=1e-14,
        method="BFGS",
    ).x
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # the batched path agrees with the single-tensor one
    t = torch.from_numpy(w.copy())
    pen.prox_([t], step)
    np.testing.assert_allclose(t.numpy(), got, rtol=1e-12)


def test_sum_with_two_nonquadratic_terms_has_no_prox():
    pen = LogCosh(0.5) + ElasticNet(0.1, 0.2)
    assert pen.grad(np.ones(2)).shape == (2,)
    with pytest.raises(ValueError, match="no closed form"):
        pen.prox(np.ones(2), 0.1)
    with pytest.raises(ValueError, match="no closed form"):
        pen.check_prox()


def test_sum_config_and_repr_round_trip():
    pen = LogCosh(0.5) + L1(0.1)
    assert repr(pen) == "l1(lam=0.1) + test_logcosh(lam=0.5)"  # canonical: elementwise first
    with PENALTIES.scoped():  # the spec name works while registered, and only then
        register(LogCosh)
        assert Penalty.from_config(pen.get_config()) == pen
        assert parse(repr(pen)) == pen
    assert "test_logcosh" not in known_names()
    with pytest.raises(ValueError, match="unknown penalty 'test_logcosh'"):
        parse(repr(pen))


def test_scaling_a_sum_scales_each_term():
    pen = LogCosh(0.5) + L1(0.1)
    assert 2 * pen == LogCosh(1.0) + L1(0.2)


def test_sum_needs_two_penalties():
    with pytest.raises(TypeError, match="two or more"):
        Sum((L1(0.1),))


def test_batched_grads_of_sum():
    pen = LogCosh(0.5) + L2(0.3)
    ws = [torch.randn(3, 2, dtype=torch.float64), torch.randn(4, dtype=torch.float64)]
    for w, g in zip(ws, pen.grads(ws, 2.0), strict=True):
        torch.testing.assert_close(g, 2.0 * pen.grad(w))


def test_a_name_registers_once_and_scoped_registrations_leave_nothing():
    with PENALTIES.scoped():
        register(LogCosh)
        assert "test_logcosh" in known_names()
        with pytest.raises(ValueError, match="penalty name test_logcosh is already registered"):
            register(LogCosh)
    assert "test_logcosh" not in known_names()
    with pytest.raises(ValueError, match="penalty name l2 is already registered"):
        register(type("MyL2", (L2,), {"name": "l2"}))
    assert PENALTIES.lookup("l2") is L2  # never silently replaced
