"""The eager group kernels (`torchpenalty.kernels.group_eager`, the default path: nothing is
compiled) against the penalties' own per-tensor math (`value`, `grad`, `prox` of one tensor,
on scaled norms): every mode, grouping, scale and dtype, with zero, tiny (underflowing), huge
and NaN groups, and the same exact zeros."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from torchpenalty import (
    GroupLasso,
    MaxNorm,
    MinMaxNorm,
    Regularizer,
    SparseGroupLasso,
    UnitNorm,
)
from torchpenalty.kernels import group_eager, layouts

from ..helpers import close, last_dim_index, last_dim_runs


def each_weight(w):
    """Groups of one weight (a Linear's kernel windows): the group term is an L1 term."""
    return torch.arange(w.numel()).view(w.shape)


def scattered(w):
    """Groups in no pattern: each weight's group from a fixed permutation (`Indexed`)."""
    g = torch.Generator().manual_seed(w.numel())
    return (torch.randperm(w.numel(), generator=g) % 3).view(w.shape)


PENALTIES = [
    GroupLasso(0.3, "rows"),
    GroupLasso(0.3, "cols", "sqrt_size"),
    GroupLasso(0.3, "tensor"),
    SparseGroupLasso(0.05, 0.3, "rows"),
    SparseGroupLasso(0.05, 0.3, "cols"),
    GroupLasso(0.3, last_dim_runs, "sqrt_size"),
    SparseGroupLasso(0.05, 0.3, last_dim_index),
    GroupLasso(0.3, scattered, "sqrt_size"),
    SparseGroupLasso(0.05, 0.3, scattered),
    GroupLasso(0.3, each_weight),
    SparseGroupLasso(0.05, 0.3, each_weight, "sqrt_size"),
    MaxNorm(0.5, "cols"),
    UnitNorm("rows"),
    MinMaxNorm(0.2, 0.6, 0.5, last_dim_runs),
    UnitNorm(scattered),
]
TINY = {torch.float32: 1e-30, torch.float64: 1e-170, torch.bfloat16: 1e-30}
HUGE = {torch.float32: 1e30, torch.float64: 1e200, torch.bfloat16: 1e30}


def model(dtype, channels_last=False):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.Conv2d(5, 4, 3), nn.Linear(4, 3)).to(dtype)
    with torch.no_grad():
        m[0].weight[1] = TINY[dtype]  # a group whose squares underflow
        m[0].weight[2] = 0.0  # a zero group
        m[2].weight[:, 0] = TINY[dtype]  # a tiny column
        m[1].weight[0, 0, 0, 0] = HUGE[dtype]  # a huge entry: its squares overflow
        m[0].weight[3, :2] = 1e-44 if dtype == torch.float32 else TINY[dtype]  # subnormal
    if channels_last:
        m[1].to(memory_format=torch.channels_last)
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    return m


def weights(m):
    return [m[0].weight, m[1].weight, m[2].weight]


CASES = [(p, torch.float32) for p in PENALTIES] + [
    (PENALTIES[i], dtype) for i in (0, 3, 7, 10, 12) for dtype in (torch.float64, torch.bfloat16)
]


@pytest.mark.parametrize(
    "penalty, dtype", CASES, ids=[f"{p!r}-{str(d).removeprefix('torch.')}" for p, d in CASES]
)
def test_eager_group_kernels_equal_the_per_tensor_math(penalty, dtype):
    m = model(dtype)
    reg = Regularizer(m, penalty, backend="eager")
    ws = [w.detach().clone() for w in weights(m)]
    expected = sum(penalty.value(w).double() for w in ws)
    close(reg.value(), expected, dtype)

    before = [p.grad.clone() for p in weights(m)]
    reg.add_to_grad_()
    for p, g, w in zip(weights(m), before, ws, strict=True):
        close(p.grad, g + penalty.grad(w), dtype)

    reg.decay_(0.1)
    decayed = [w - 0.1 * penalty.grad(w) for w in ws]
    for p, d in zip(weights(m), decayed, strict=True):
        close(p, d, dtype)

    reg.prox_(0.5)
    for name, p, d in zip(("0", "1", "2"), weights(m), decayed, strict=True):
        want = penalty.prox(d, 0.5)
        close(p, want, dtype)
        assert torch.equal(p == 0, want == 0), name  # the same exact zeros
    if penalty.groups == "rows" and not penalty.constraints():
        assert (m[0].weight[1] == 0).all() and (m[0].weight[2] == 0).all()

    (got,) = torch.autograd.grad(reg(), m[0].weight)  # loss mode: its backward
    close(got, penalty.grad(m[0].weight.detach()), dtype)


@pytest.mark.parametrize("penalty", [GroupLasso(0.3, "rows"), GroupLasso(0.3, last_dim_runs)])
def test_channels_last_weights_are_updated_in_place(penalty):
    """A channels-last conv weight has no (rows, width) view: the kernels work on a copy and
    write it back into the parameter itself."""
    m, plain = model(torch.float32, channels_last=True), model(torch.float32)
    assert not m[1].weight.is_contiguous()
    param = m[1].weight
    Regularizer(m, penalty, backend="eager").prox_(0.5)
    Regularizer(plain, penalty, backend="eager").prox_(0.5)
    assert m[1].weight is param
    torch.testing.assert_close(m[1].weight, plain[1].weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-42, 1e-20, 1.0, 1e18, 3e38])
def test_row_norms_are_exact_from_subnormal_to_the_largest(dtype, scale):
    """Norms in the weights' precision with only doubtful groups renormed: each row's norm
    equals float64's exact one (the per-tensor scaled norm), and only zero rows are zero."""
    if dtype == torch.float64:
        scale = {1e-42: 1e-310, 1e-20: 1e-160, 1.0: 1.0, 1e18: 1e152, 3e38: 1e307}[scale]
    torch.manual_seed(0)
    v = torch.rand(6, 40, dtype=torch.float64) * scale
    v[2] = 0.0
    v[4, 1:] = 0.0  # one nonzero entry
    v = v.to(dtype)
    lay = layouts.Layout(6)
    got = group_eager.group_norms(v.clone(), lay).double()
    exact = (v.double() / v.double().abs().amax(1, keepdim=True).clamp(min=1e-320)).norm(
        dim=1, keepdim=True
    ) * v.double().abs().amax(1, keepdim=True)
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)
    assert torch.equal(got == 0, (v == 0).all(dim=1, keepdim=True))


def test_column_block_norms_are_exact_for_tiny_and_huge_blocks():
    v = torch.randn(5, 12)
    v[:, 0:4] *= 1e-30
    v[:, 4:8] *= 1e25
    lay = layouts.Layout(5, 3)
    got = group_eager.group_norms(v.clone(), lay).double()
    exact = v.double().view(5, 3, 4).norm(dim=(0, 2)).view(1, 3)
    torch.testing.assert_close(got, exact, rtol=1e-6, atol=0)


def test_subnormal_groups_project_to_the_exact_unit_norm():
    """A unit-norm projection of a group of subnormal float32 weights multiplies them by ~1e40,
    past float32's range: applied in two factors, the group ends at norm 1."""
    m = nn.Linear(4, 3)
    with torch.no_grad():
        m.weight[0] = torch.tensor([1e-40, 2e-40, 0.0, 2e-40])
    stored = m.weight[0].detach().double()  # subnormals hold fewer digits than written
    reg = Regularizer(m, UnitNorm("rows"), backend="eager")
    reg.project_()
    torch.testing.assert_close(m.weight[0].double(), stored / stored.norm(), rtol=1e-6, atol=0)


def test_the_eager_path_loads_no_compiler():
    """Every group mode on the eager backend runs without importing dynamo or inductor."""
    code = (
        "import sys, torch, torchpenalty as tp\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Conv2d(8, 8, 3))\n"
        "for p in m.parameters(): p.grad = torch.zeros_like(p)\n"
        "pens = [tp.GroupLasso(0.1), tp.SparseGroupLasso(0.1, 0.1, 'cols'), tp.MaxNorm(1.0)]\n"
        "for pen in pens:\n"
        "    reg = tp.Regularizer(m, pen)\n"
        "    reg.value(); reg().backward(); reg.add_to_grad_(); reg.decay_(0.1)\n"
        "    reg.project_()\n"
        "    reg.prox_(0.1)\n"
        "loaded = [n for n in sys.modules if n.startswith(('torch._dynamo', 'torch._inductor'))]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_callable_groups_are_read_once_and_kept():
    """The contract of callable groups: read once per shape when the regularizer is built, and
    kept in every mode. A value-dependent callable (groups by sign) keeps the groups of the
    weights it first saw after signs flip, in the value, gradient and prox alike."""
    calls = []

    def by_sign(w):
        calls.append(tuple(w.shape))
        return (w > 0).long()

    torch.manual_seed(0)
    m = nn.Linear(8, 6)
    groups_at_build = (m.weight.detach() > 0).long()
    reg = Regularizer(m, GroupLasso(0.3, by_sign), backend="eager")
    built = len(calls)
    with torch.no_grad():
        m.weight[:3].neg_()  # half the rows flip sign: a re-read would group them anew
    kept = GroupLasso(0.3, lambda w: groups_at_build)
    w = m.weight.detach().clone()
    regrouped = GroupLasso(0.3, lambda w: (w > 0).long())
    assert not torch.allclose(regrouped.value(w), kept.value(w))  # the two readings differ
    close(reg.value(), kept.value(w), torch.float32)
    m.weight.grad = torch.zeros_like(w)
    reg.add_to_grad_()
    close(m.weight.grad, kept.grad(w), torch.float32)
    reg.prox_(0.1)
    close(m.weight, kept.prox(w, 0.1), torch.float32)
    assert len(calls) == built
