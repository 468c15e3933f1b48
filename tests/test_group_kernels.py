"""The fused group kernels (`torchpenalty.group_kernels`) against the eager group penalties:
every mode, grouping, scale and dtype, with zero, tiny (underflowing), huge and NaN groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchpenalty import GroupLasso, Regularizer, SparseGroupLasso

pytestmark = pytest.mark.slow  # each case compiles its kernels (a few seconds)

PENALTIES = [
    GroupLasso(0.3, "rows"),
    GroupLasso(0.3, "cols", "sqrt_size"),
    GroupLasso(0.3, "tensor"),
    SparseGroupLasso(0.05, 0.3, "rows"),
    SparseGroupLasso(0.05, 0.3, "cols"),
]
TOLERANCE = {torch.float32: 1e-6, torch.float64: 1e-12, torch.bfloat16: 1e-2}


def model(dtype, tiny):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 5), nn.Conv1d(5, 4, 3), nn.Linear(4, 3)).to(dtype)
    with torch.no_grad():
        m[0].weight[1] = tiny  # a group whose squares underflow
        m[0].weight[2] = 0.0  # a zero group
        m[2].weight[:, 0] = tiny  # a tiny column
        m[1].weight[0, 0, 0] = 1e30  # a huge entry: its squares overflow float32
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    return m


def close(a, b, dtype):
    tol = TOLERANCE[dtype]
    return torch.testing.assert_close(a.double(), b.double(), rtol=tol, atol=tol)


# every penalty in float32; rows groups (plain and sparse) in float64 and bfloat16 too
CASES = [(p, torch.float32) for p in PENALTIES] + [
    (PENALTIES[i], dtype) for i in (0, 3) for dtype in (torch.float64, torch.bfloat16)
]


@pytest.mark.parametrize(
    "penalty, dtype", CASES, ids=[f"{p!r}-{str(d).removeprefix('torch.')}" for p, d in CASES]
)
def test_fused_group_kernels_equal_the_eager_path(penalty, dtype):
    tiny = {torch.float32: 1e-30, torch.float64: 1e-170, torch.bfloat16: 1e-30}[dtype]
    a, b = model(dtype, tiny), model(dtype, tiny)
    eager = Regularizer(a, penalty, backend="eager")
    fused = Regularizer(b, penalty, backend="compile")
    close(eager.value(), fused.value(), dtype)
    eager.add_to_grad_()
    fused.add_to_grad_(torch.tensor(1.0, dtype=torch.float64))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        close(p.grad, q.grad, dtype)
    eager.decay_(0.1)
    fused.decay_(torch.tensor(0.1, dtype=torch.float64))  # a scheduler's tensor lr
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        close(p, q, dtype)
    eager.prox_(0.5)
    fused.prox_(0.5)
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        close(p, q, dtype)
        assert torch.equal(p == 0, q == 0), name  # the same exact zeros
    if penalty.groups == "rows":  # the tiny (underflowing) row and the zero row end as zeros
        assert (b[0].weight[1] == 0).all() and (b[0].weight[2] == 0).all()
    (ga,) = torch.autograd.grad(eager(), a[0].weight)
    (gb,) = torch.autograd.grad(fused(), b[0].weight)
    close(ga, gb, dtype)
    assert not fused._kernels.compile_failed


def test_nan_groups_stay_nan_and_the_rest_is_untouched():
    a, b = model(torch.float32, 1e-30), model(torch.float32, 1e-30)
    for m in (a, b):
        with torch.no_grad():
            m[0].weight[3, 0] = float("nan")
    Regularizer(a, GroupLasso(0.3), backend="eager").prox_(0.5)
    Regularizer(b, GroupLasso(0.3), backend="compile").prox_(0.5)
    assert torch.isnan(b[0].weight[3]).all()
    torch.testing.assert_close(a[0].weight, b[0].weight, equal_nan=True)
