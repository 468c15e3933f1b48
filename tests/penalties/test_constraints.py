"""Constraints as penalties: exact projections (checked against a general solver and against
Keras 3), sums with L1, attachment in every mode, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchpenalty import L1, GroupLasso, MaxNorm, MinMaxNorm, NonNeg, Regularizer, UnitNorm, parse

scipy_optimize = pytest.importorskip("scipy.optimize")


def rows_norms(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1)


@pytest.mark.parametrize("groups", ["rows", "cols", "tensor"])
def test_max_norm_is_the_nearest_point_of_the_ball(groups):
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, dtype=torch.float64) * 2
    c = MaxNorm(1.5, groups)
    p = c.prox(w, 0.3)  # the step is ignored
    dims = {"rows": (1, 2), "cols": (0, 2), "tensor": (0, 1, 2)}[groups]
    n = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
    assert (torch.linalg.vector_norm(p, dim=dims) <= 1.5 * (1 + 1e-12)).all()
    # the projection onto a centred ball: scale each group that is outside, keep the rest
    torch.testing.assert_close(p, w * torch.clamp(1.5 / n, max=1.0), rtol=1e-14, atol=0)
    assert c.value(w) == 0 and not c.grad(w).any()


def test_projections_minimize_the_distance_to_the_set():
    """A general constrained solver (SLSQP) finds the same nearest points."""
    rng = np.random.default_rng(0)
    for c, feasible in [
        (MaxNorm(1.0, "tensor"), lambda x: 1.0 - np.linalg.norm(x)),
        (MinMaxNorm(1.0, 2.0, 1.0, "tensor"), lambda x: np.linalg.norm(x) - 1.0),
        (NonNeg(), lambda x: x),
    ]:
        w = rng.normal(size=5) * (0.3 if isinstance(c, MinMaxNorm) else 2.0)
        result = scipy_optimize.minimize(
            lambda x, w=w: 0.5 * np.sum((x - w) ** 2),
            x0=np.abs(w) + 0.1,
            constraints=[{"type": "ineq", "fun": feasible}],
            method="SLSQP",
            options={"ftol": 1e-14, "maxiter": 500},
        )
        np.testing.assert_allclose(c.prox(w, 1.0), result.x, atol=1e-6)


def test_l1_plus_max_norm_prox_is_soft_threshold_then_project():
    """Yu (2013): exact for a centred norm ball plus L1; checked against SLSQP on the sum."""
    rng = np.random.default_rng(1)
    w = rng.normal(size=6) * 2
    penalty = parse("l1(0.4) + max_norm(1.5, groups=tensor)")
    step = 0.5

    def objective(x):
        return step * 0.4 * np.abs(x).sum() + 0.5 * np.sum((x - w) ** 2)

    result = scipy_optimize.minimize(
        objective,
        x0=np.zeros_like(w),
        constraints=[{"type": "ineq", "fun": lambda x: 1.5 - np.linalg.norm(x)}],
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    got = penalty.prox(w, step)
    np.testing.assert_allclose(got, result.x, atol=1e-5)
    soft = L1(0.4).prox(w, step)
    np.testing.assert_allclose(got, MaxNorm(1.5, "tensor").prox(soft, step), rtol=1e-14)


def test_sum_projects_non_neg_before_norm_constraints():
    w = torch.tensor([[3.0, -4.0, 1.0]])
    penalty = MaxNorm(1.0) + NonNeg()
    assert [c.name for c in penalty.constraints()] == ["non_neg", "max_norm"]
    p = penalty.prox(w, 1.0)
    torch.testing.assert_close(p, torch.tensor([[3.0, 0.0, 1.0]]) / 10**0.5)
    assert (p >= 0).all() and rows_norms(p).item() <= 1 + 1e-6


def test_group_lasso_plus_max_norm_shrinks_then_projects():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4]], dtype=torch.float64)
    p = (GroupLasso(1.0) + MaxNorm(2.0)).prox(w, 1.0)  # shrink the norms by 1, then clip at 2
    torch.testing.assert_close(rows_norms(p), torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_schedules_scale_strengths_not_bounds():
    assert 0.5 * MaxNorm(3.0) == MaxNorm(3.0)
    assert 0.5 * (L1(0.2) + MaxNorm(3.0)) == L1(0.1) + MaxNorm(3.0)


def test_unit_norm_and_min_max_leave_zero_groups_at_zero():
    w = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    for c in (UnitNorm(), MinMaxNorm(1.0, 2.0)):
        p = c.prox(w, 1.0)
        assert not p[0].any()
    torch.testing.assert_close(UnitNorm().prox(w, 1.0)[1], torch.tensor([0.6, 0.8]))
    half = MinMaxNorm(0.0, 1.0, rate=0.5).prox(w, 1.0)[1]  # halfway from norm 5 to norm 1
    torch.testing.assert_close(half.norm(), torch.tensor(3.0))


def test_tiny_groups_are_projected_exactly():
    w = torch.full((2, 3), 1e-30)  # squares underflow in float32
    torch.testing.assert_close(rows_norms(UnitNorm().prox(w, 1.0)), torch.ones(2))


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("mode", ["loss", "grad", "decoupled", "proximal"])
def test_attached_constraints_hold_after_every_step(mode):
    m = model()
    reg = Regularizer(m, "l2(1e-3) + max_norm(0.5) + non_neg()")
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    reg.attach(opt, mode=mode)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        if mode == "loss":
            loss = loss + reg()
        loss.backward()
        opt.step()
        for _, w in reg.named_parameters():
            assert (rows_norms(w) <= 0.5 * (1 + 1e-6)).all()
            assert (w >= 0).all()


def test_manual_loops_call_project():
    m = model()
    reg = Regularizer(m, MaxNorm(0.1, "cols"))
    reg.project_()
    for _, w in reg.named_parameters():
        assert (w.norm(dim=0) <= 0.1 * (1 + 1e-6)).all()


def test_loss_mode_attach_needs_a_constraint():
    m = model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="mode='loss' needs no attach"):
        Regularizer(m, "l2(1e-3)").attach(opt, mode="loss")


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MaxNorm(float("inf")), "max_value must be a finite number >= 0"),
        (lambda: MaxNorm(-1.0), "max_value must be a finite number >= 0"),
        (lambda: MinMaxNorm(2.0, 1.0), "min_value must be <= max_value"),
        (lambda: MinMaxNorm(0.0, 1.0, rate=1.5), r"rate must be in \[0, 1\]"),
        (lambda: MinMaxNorm(0.0, 1.0, rate=-0.1), "rate must be a finite number >= 0"),
        (lambda: MaxNorm(1.0, groups="diagonal"), "groups must be one of rows, cols, tensor"),
        (lambda: parse("min_max_norm(2, 1, 1)"), "min_value must be <= max_value"),
    ],
)
def test_bad_bounds_are_value_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bounds_must_be_numbers():
    with pytest.raises(TypeError, match="max_value must be a real number"):
        MaxNorm("3")  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["eager", "compile"])
def test_low_precision_projections_round_once(backend):
    """bf16 weights: norms and factors in float32, one rounding (at most 2^-8 relative over)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(64, 32)).to(torch.bfloat16)
    reg = Regularizer(m, MaxNorm(0.3), backend=backend)
    with torch.no_grad():
        m[0].weight.mul_(10)
    reg.project_()
    norms = m[0].weight.float().norm(dim=1)
    assert (norms <= 0.3 * (1 + 2**-8)).all() and (norms >= 0.3 * (1 - 2**-8)).all()
