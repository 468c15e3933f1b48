"""GroupLasso and SparseGroupLasso: values against definitions, grads against autograd, prox
against its optimality conditions, algebra, configs and reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from torchpenalty import (
    L1,
    L2,
    ElasticNet,
    GroupLasso,
    Penalty,
    Regularizer,
    SparseGroupLasso,
    Sum,
    parse,
)


def by_parity(w):
    """A callable grouping: even and odd flat positions."""
    idx = torch.arange(w.numel()) if isinstance(w, torch.Tensor) else np.arange(w.size)
    return (idx % 2).reshape(w.shape)


def reference_groups(w: np.ndarray, groups) -> list[np.ndarray]:
    """The groups as lists of elements, written out with plain indexing."""
    if groups == "rows":
        return [w[i].ravel() for i in range(w.shape[0])]
    if groups == "cols":
        return [w[:, j].ravel() for j in range(w.shape[1])]
    if groups == "tensor":
        return [w.ravel()]
    idx = by_parity(w).ravel()
    return [w.ravel()[idx == g] for g in range(idx.max() + 1)]


GROUPINGS = ["rows", "cols", "tensor", by_parity]


@pytest.mark.parametrize("groups", GROUPINGS, ids=lambda g: getattr(g, "__name__", g))
@pytest.mark.parametrize("scale", ["none", "sqrt_size"])
def test_value_matches_definition(groups, scale):
    w = np.random.default_rng(0).normal(size=(4, 3, 2))
    w[1] = 0.0
    expected = sum(
        (math.sqrt(len(g)) if scale == "sqrt_size" else 1.0) * np.linalg.norm(g)
        for g in reference_groups(w, groups)
    )
    pen = GroupLasso(0.7, groups, scale)
    assert float(pen.value(w)) == pytest.approx(0.7 * expected, rel=1e-12)
    assert float(pen.value(torch.from_numpy(w))) == pytest.approx(0.7 * expected, rel=1e-12)
    sgl = SparseGroupLasso(0.2, 0.7, groups, scale)
    assert float(sgl.value(w)) == pytest.approx(0.7 * expected + 0.2 * np.abs(w).sum(), rel=1e-12)


def test_tensor_groups_are_the_norm_snippet():
    w = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(GroupLasso(0.3, "tensor").value(w), 0.3 * torch.norm(w, 2))


@pytest.mark.parametrize("groups", GROUPINGS, ids=lambda g: getattr(g, "__name__", g))
@pytest.mark.parametrize("pen_cls", [GroupLasso, SparseGroupLasso])
def test_grad_matches_autograd_and_is_zero_at_zero_groups(groups, pen_cls):
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, 2, generator=g, dtype=torch.float64)
    w = w + 0.1 * torch.sign(w)
    pen = (
        pen_cls(0.4, groups=groups, scale="sqrt_size")
        if pen_cls is GroupLasso
        else pen_cls(0.1, 0.4, groups=groups, scale="sqrt_size")
    )
    x = w.clone().requires_grad_()
    (auto,) = torch.autograd.grad(pen.value(x), x)
    torch.testing.assert_close(pen.grad(w), auto, rtol=1e-12, atol=1e-14)

    if groups == "rows":
        w[2] = 0.0
        x = w.clone().requires_grad_()
        (auto,) = torch.autograd.grad(pen.value(x), x)
        assert torch.isfinite(auto).all()  # value stays differentiable at a zero group
        assert pen.grad(w)[2].eq(0).all()
        assert torch.isfinite(pen.grad(w)).all()


def check_group_prox_kkt(pen, w: np.ndarray, step: float) -> None:
    """Exact optimality of ``p = prox(w, step)`` for (sparse) group lasso, group by group:
    a zero group needs ``||soft(w_g, step*l1)|| <= step*group*c_g``; a nonzero group needs
    ``w_g - p_g = step*(l1*s_g + group*c_g*p_g/||p_g||)`` with ``s = sign(p)`` where ``p != 0``
    and ``|s| <= 1`` where ``p == 0``."""
    p = pen.prox(w, step)
    l1, lam = pen._l1, pen._group
    for wg, pg in zip(
        reference_groups(w, pen.groups), reference_groups(p, pen.groups), strict=True
    ):
        c = math.sqrt(len(wg)) if pen.scale == "sqrt_size" else 1.0
        norm = np.linalg.norm(pg)
        if norm == 0:
            soft = np.sign(wg) * np.maximum(np.abs(wg) - step * l1, 0)
            assert np.linalg.norm(soft) <= step * lam * c * (1 + 1e-9) + 1e-12
            continue
        residual = (wg - pg) / step - lam * c * pg / norm
        nz = pg != 0
        np.testing.assert_allclose(residual[nz], l1 * np.sign(pg[nz]), atol=1e-8, rtol=1e-8)
        assert np.all(np.abs(residual[~nz]) <= l1 * (1 + 1e-9) + 1e-9)


@settings(max_examples=60, deadline=None)
@given(
    w=arrays(np.float64, (3, 4), elements=st.floats(-100, 100)),
    l1=st.floats(0, 5),
    lam=st.floats(0, 5),
    step=st.floats(1e-3, 5),
    groups=st.sampled_from(GROUPINGS),
    scale=st.sampled_from(["none", "sqrt_size"]),
)
def test_group_prox_optimality_property(w, l1, lam, step, groups, scale):
    check_group_prox_kkt(GroupLasso(lam, groups, scale), w, step)
    check_group_prox_kkt(SparseGroupLasso(l1, lam, groups, scale), w, step)


EVERY_PENALTY = [
    L1(0.3),
    L2(0.5),
    ElasticNet(0.2, 0.4),
    GroupLasso(0.6, "rows"),
    GroupLasso(0.6, "cols", "sqrt_size"),
    GroupLasso(0.6, "tensor"),
    GroupLasso(0.6, by_parity),
    SparseGroupLasso(0.2, 0.5, "cols"),
    L2(0.3) + GroupLasso(0.4, "rows"),
    ElasticNet(0.1, 0.3) + GroupLasso(0.4, "cols"),
]


@settings(max_examples=40, deadline=None)
@given(
    w=arrays(np.float64, (3, 4), elements=st.floats(-10, 10)),
    step=st.floats(1e-2, 3),
    seed=st.integers(0, 2**16),
)
def test_every_prox_minimizes_its_objective(w, step, seed):
    """A check valid for any penalty: F(x) = step*R(x) + ||x - w||^2/2 is not lower anywhere
    near p = prox(w, step) (random directions, several radii), nor at a few far points."""
    rng = np.random.default_rng(seed)
    for pen in EVERY_PENALTY:
        p = pen.prox(w, step)
        objective = lambda x, pen=pen: step * float(pen.value(x)) + ((x - w) ** 2).sum() / 2  # noqa: E731
        best = objective(p)
        for radius in (1e-4, 1e-2, 1.0):
            for _ in range(8):
                d = rng.normal(size=w.shape)
                assert objective(p + radius * d / np.linalg.norm(d)) >= best - 1e-9 * (
                    1 + abs(best)
                )
        assert objective(np.zeros_like(w)) >= best - 1e-9 * (1 + abs(best))


def test_prox_zeroes_small_groups_exactly():
    w = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]])
    p = GroupLasso(1.0, "rows").prox(w, 1.0)
    torch.testing.assert_close(p[0], torch.tensor([3.0, 4.0]) * (1 - 1 / 5))
    assert p[1:].eq(0).all()


def test_algebra():
    gl = GroupLasso(0.2, "cols")
    assert L1(0.1) + gl == SparseGroupLasso(0.1, 0.2, "cols")
    assert gl + gl == GroupLasso(0.4, "cols")
    assert SparseGroupLasso(0.1, 0.2, "cols") + gl == SparseGroupLasso(0.1, 0.4, "cols")
    mixed = ElasticNet(0.1, 0.3) + gl
    assert mixed == L2(0.3) + SparseGroupLasso(0.1, 0.2, "cols")
    two = GroupLasso(0.2, "rows") + GroupLasso(0.2, "cols")
    assert isinstance(two, Sum)
    with pytest.raises(ValueError, match="no closed form"):
        two.check_prox()
    assert 2 * gl == GroupLasso(0.4, "cols")


def test_sum_with_l2_uses_the_quadratic_prox_identity():
    """prox of L2(mu) + G equals prox_G applied to w/(1+s*mu) with step s/(1+s*mu)."""
    w = np.random.default_rng(2).normal(size=(3, 4))
    s, mu = 0.7, 0.5
    pen = L2(mu) + GroupLasso(0.4, "rows")
    np.testing.assert_allclose(
        pen.prox(w, s), GroupLasso(0.4, "rows").prox(w / (1 + s * mu), s / (1 + s * mu))
    )


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("group_lasso(1e-3, groups=rows)", GroupLasso(1e-3, "rows")),
        (
            "group_lasso(lam=1e-3, groups=COLS, scale=sqrt_size)",
            GroupLasso(1e-3, "cols", "sqrt_size"),
        ),
        ("group_lasso", GroupLasso(0.01, "rows")),
        (
            "sparse_group_lasso(l1=1e-4, group=1e-3, groups=cols)",
            SparseGroupLasso(1e-4, 1e-3, "cols"),
        ),
        ("l1(1e-4) + group_lasso(1e-3, groups=cols)", SparseGroupLasso(1e-4, 1e-3, "cols")),
    ],
)
def test_specs(spec, expected):
    assert parse(spec) == expected
    assert parse(repr(expected)) == expected
    assert Penalty.from_config(expected.get_config()) == expected


def test_bad_arguments():
    with pytest.raises(ValueError, match="groups must be one of rows, cols, tensor or a callable"):
        GroupLasso(0.1, "diag")
    with pytest.raises(ValueError, match="scale must be one of none, sqrt_size"):
        GroupLasso(0.1, "rows", "sqrt")
    with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
        GroupLasso(-1.0)
    with pytest.raises(TypeError, match=r"callable groups=.* has no config"):
        GroupLasso(0.1, by_parity).get_config()
    with pytest.raises(ValueError, match="groups='cols' needs a tensor with ndim >= 2"):
        GroupLasso(0.1, "cols").value(torch.ones(3))
    with pytest.raises(ValueError, match=r"indices of the tensor's shape \(2, 2\)"):
        GroupLasso(0.1, lambda w: torch.zeros(3, dtype=torch.long)).value(torch.ones(2, 2))


@pytest.mark.parametrize(
    "indices, shown",
    [
        (lambda w: torch.full(w.shape, -1), "-1"),
        (lambda w: torch.full(w.shape, 0.5), "0.5"),
        (lambda w: torch.full(w.shape, float("nan")), "nan"),
        (lambda w: np.full(w.shape, -2), "-2"),
    ],
)
def test_callable_indices_must_be_whole_and_non_negative(indices, shown):
    """A negative index names no group; a fraction would be truncated into another group."""
    message = f"groups callable must return whole group indices >= 0, got {shown}"
    w = np.ones((2, 3)) if isinstance(indices(torch.ones(1)), np.ndarray) else torch.ones(2, 3)
    with pytest.raises(ValueError, match=message):
        GroupLasso(0.1, indices).value(w)
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=rf"cannot apply to 'weight': a {message}"):
        Regularizer(model, GroupLasso(0.1, indices), include="weight")


def test_regularizer_refuses_cols_of_a_vector():
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=r"cannot apply to 'bias'.*ndim >= 2"):
        Regularizer(model, GroupLasso(0.1, "cols"), among="all")


@pytest.mark.parametrize(
    "pen", [GroupLasso(0.3, "rows"), SparseGroupLasso(0.1, 0.3, "cols")], ids=repr
)
def test_batched_ops_match_single_tensor_ops(pen):
    g = torch.Generator().manual_seed(0)
    ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(5, 3), (4, 2, 3, 3), (2, 2)]]
    ws[0][1] = 0
    for method, args in (("decay_", (0.1,)), ("prox_", (0.1,))):
        fast = [w.clone() for w in ws]
        slow = [w.clone() for w in ws]
        getattr(pen, method)(fast, *args)
        getattr(Penalty, method)(pen, slow, *args)
        for a, b in zip(fast, slow, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=1e-15)


def test_report_counts_zero_groups_and_units():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Conv1d(6, 5, 1))
    with torch.no_grad():
        model[0].weight[:2] = 0  # two dead hidden units
        model[2].weight[:, 3] = 0  # one input channel unused
        model[2].weight[1] = 0  # one dead filter
    rep = Regularizer(
        model, {"0.weight": GroupLasso(0.1, "rows"), "*": GroupLasso(0.1, "cols")}
    ).report()
    first, second = rep.rows
    assert (first.zero_groups, first.groups, first.zero_units, first.units) == (2, 6, 2, 6)
    assert (second.zero_groups, second.groups, second.zero_units, second.units) == (1, 6, 1, 5)
    assert rep.zero_units == 3 and rep.units == 11 and rep.zero_groups == 3
    assert "2/6" in str(rep)
    plain = Regularizer(model, "l2").report().rows[0]
    assert plain.groups is None and plain.zero_units == 2


@pytest.mark.parametrize("pen", [GroupLasso(0.0, "cols"), GroupLasso(1e-3, "cols")])
def test_subnormal_groups_stay_finite(pen):
    """CPU division treats subnormal divisors as 0 (0 / 1e-39 is NaN): a group of subnormal
    weights at zero strength (a schedule or a target at 0) kept NaN-free, eager and fused."""
    w = torch.randn(10, 6)
    w[:, 2] = 2e-39
    eager = pen.prox(w.clone(), 0.05)
    fused = [w.clone()]
    pen.prox_(fused, 0.05)
    for out in (eager, fused[0]):
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out[:, 2], w[:, 2] if pen.lam == 0 else torch.zeros(10))
