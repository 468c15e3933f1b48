"""Group norms that underflow or overflow: the prox still zeroes every group at or below its
threshold, value and gradient stay exact, and only exact zeros count as zero groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from torchpenalty import GroupLasso, Regularizer, SparseGroupLasso


def by_rows_of_two(w):
    """A callable grouping: pairs of rows (torch or NumPy)."""
    rows = np.arange(w.shape[0]).reshape(-1, *([1] * (w.ndim - 1))) // 2
    index = np.broadcast_to(rows, w.shape)
    return torch.as_tensor(index.copy(), device=w.device) if torch.is_tensor(w) else index


GROUPS = ["rows", "cols", "tensor", by_rows_of_two]
TINY = {torch.float32: 1e-30, torch.float64: 1e-170}  # squares underflow to exactly 0
HUGE = {torch.float32: 1e30, torch.float64: 1e200}  # squares overflow to inf


def penalties(groups):
    return [GroupLasso(0.1, groups=groups), SparseGroupLasso(1e-40, 0.1, groups=groups)]


def tiny_tensor(dtype, tiny):
    """Rows 0-1 normal, rows 2-3 tiny nonzero (a decaying momentum's leftovers)."""
    w = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    w[2:] = tiny * torch.tensor([[1.0, -2.0, 3.0], [0.5, 0.0, -1.0]], dtype=dtype)
    return w


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", GROUPS, ids=lambda g: g if isinstance(g, str) else "callable")
@pytest.mark.parametrize("kind", ["torch", "numpy"])
def test_prox_zeroes_groups_whose_norm_underflows(dtype, groups, kind):
    w = tiny_tensor(dtype, TINY[dtype])
    if groups in ("cols", "tensor"):
        w = w[2:]  # only tiny entries, so the whole group underflows
    for pen in penalties(groups):
        x = w if kind == "torch" else w.numpy()
        out = pen.prox(x, 0.5)
        tiny_part = out[2:] if groups in ("rows", by_rows_of_two) else out
        assert (tiny_part == 0).all(), f"{pen!r}: {tiny_part}"
        batched = w.clone()
        pen.prox_([batched], 0.5)  # the Regularizer's in-place path
        torch.testing.assert_close(batched, torch.as_tensor(out), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tiny_groups_are_not_zero_groups_and_keep_their_gradient(dtype):
    tiny = TINY[dtype]
    w = torch.tensor([[3 * tiny, 4 * tiny], [0.0, 0.0]], dtype=dtype)
    pen = GroupLasso(1.0, groups="rows")
    zero_groups, count, _ = pen.group_stats(w)
    assert (int(zero_groups), count) == (1, 2)  # only the exact-zero row
    torch.testing.assert_close(pen.grad(w), torch.tensor([[0.6, 0.8], [0, 0]], dtype=dtype))
    assert float(pen.value(w)) == pytest.approx(5 * tiny, rel=1e-6)
    assert float(pen.value(w.numpy())) == pytest.approx(5 * tiny, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", GROUPS, ids=lambda g: g if isinstance(g, str) else "callable")
def test_huge_groups_do_not_overflow(dtype, groups):
    big = HUGE[dtype]
    w = torch.full((2, 2), big, dtype=dtype, requires_grad=True)
    pen = GroupLasso(1.0, groups=groups)
    n_groups = {"rows": 2, "cols": 2, "tensor": 1}.get(groups, 1)
    value = pen.value(w)
    expected = n_groups * big * (4 / n_groups) ** 0.5
    assert torch.isfinite(value) and float(value.detach()) == pytest.approx(expected, rel=1e-5)
    (g,) = torch.autograd.grad(value, w)
    closed = pen.grad(w.detach())
    torch.testing.assert_close(g, closed)
    torch.testing.assert_close(closed, torch.full_like(closed, (n_groups / 4) ** 0.5))
    np.testing.assert_allclose(pen.grad(w.detach().numpy()), closed.numpy(), rtol=1e-6)


def _momentum_run(dtype, steps):
    """The mechanism: proximal group lasso zeroes rows; SGD momentum keeps adding a geometrically
    decaying buffer to them. Returns the trained layer and its regularizer."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5, bias=False).to(dtype)
    reg = Regularizer(layer, GroupLasso(0.5, groups="rows"), among="all")
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    reg.attach(opt, mode="proximal")
    x = torch.randn(16, 6, dtype=dtype)
    for step in range(steps):
        opt.zero_grad(set_to_none=False)
        scale = 1.0 if step < 3 else 0.0  # a real gradient first, then the buffer only decays
        (scale * layer(x).mean()).backward()
        opt.step()
    return layer, reg


@pytest.mark.parametrize("dtype,steps", [(torch.float32, 700), (torch.float64, 4000)])
def test_momentum_leftovers_are_zeroed_and_the_report_counts_exact_zeros(dtype, steps):
    layer, reg = _momentum_run(dtype, steps)
    zero_rows = int((layer.weight == 0).all(dim=1).sum())
    report = reg.report()
    assert zero_rows == layer.weight.shape[0]  # every row went below its threshold
    assert report.rows[0].zero_groups == zero_rows
    assert report.rows[0].zero_units == zero_rows
    assert report.zero_fraction == float((layer.weight == 0).float().mean())
