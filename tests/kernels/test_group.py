"""The group kernels (`torchpenalty.kernels.group`, compiled, and `kernels.group_eager`) against
the penalties' per-tensor path: every mode, grouping, scale and dtype, with zero, tiny
(underflowing), huge and NaN groups."""

from __future__ import annotations

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
from torchpenalty.kernels import group as group_kernels
from torchpenalty.kernels import layouts
from torchpenalty.kernels.layouts import Layout, detect_layout

from ..helpers import close, last_dim_index, last_dim_runs

pytestmark = pytest.mark.slow  # each case compiles its kernels (about 10 s each, cold)

#: the rest of the compiled matrix: every case compiles its own kernels (about 10 s each with a
#: cold cache on 2 cores), so the default run keeps one case per kind and `pytest -m
#: compile_matrix` runs the others (DEVELOPERS.md: run it before changing the compiled kernels)
MATRIX = pytest.mark.compile_matrix


def matrix(cases, keep, ids=None):
    """``cases`` as parameters, all but the indices in ``keep`` marked `MATRIX`."""
    return [
        pytest.param(
            *(c if isinstance(c, tuple) else (c,)),
            marks=() if i in keep else MATRIX,
            id=None if ids is None else ids[i],
        )
        for i, c in enumerate(cases)
    ]


PENALTIES = [
    GroupLasso(0.3, "rows"),
    GroupLasso(0.3, "cols", "sqrt_size"),
    GroupLasso(0.3, "tensor"),
    SparseGroupLasso(0.05, 0.3, "rows"),
    SparseGroupLasso(0.05, 0.3, "cols"),
    GroupLasso(0.3, last_dim_runs, "sqrt_size"),
    SparseGroupLasso(0.05, 0.3, last_dim_index),
    MaxNorm(0.5, "cols"),
    UnitNorm("rows"),
    MinMaxNorm(0.2, 0.6, 0.5, last_dim_runs),
]


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


# every penalty in float32; rows groups in float64 and sparse rows groups in bfloat16 too (the
# eager kernels, the default path, have every dtype: tests/kernels/test_group_eager.py)
CASES = [(p, torch.float32) for p in PENALTIES] + [
    (PENALTIES[0], torch.float64),
    (PENALTIES[3], torch.bfloat16),
]


@pytest.mark.parametrize(
    "penalty, dtype",
    matrix(CASES, {4}, [f"{p!r}-{str(d).removeprefix('torch.')}" for p, d in CASES]),
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
    if (
        penalty.groups == "rows" and not penalty.constraints()
    ):  # the tiny (underflowing) row and the zero row end as zeros
        assert (b[0].weight[1] == 0).all() and (b[0].weight[2] == 0).all()
    (ga,) = torch.autograd.grad(eager(), a[0].weight)
    (gb,) = torch.autograd.grad(fused(), b[0].weight)
    close(ga, gb, dtype)
    assert not fused._kernels.compile_failed
    assert fused._kernels.signatures  # the fused kernels ran, not the eager fallback


@pytest.mark.parametrize(
    "index, expected",
    [
        (torch.zeros(4, 3, dtype=torch.long), Layout(1)),  # one group: the whole tensor
        (torch.arange(12).view(4, 3) // 3, Layout(4)),  # rows
        (torch.arange(24).view(2, 4, 3) // 3, Layout(8)),  # a conv's kernel windows
        (torch.arange(24).view(6, 4) // 8, Layout(3)),  # blocks of 2 rows (attention heads)
        (torch.tensor([[7, 7], [2, 2], [9, 9]]), Layout(3)),  # rows labelled in any order
        (torch.tensor([[5, 2, 9], [5, 2, 9]]).expand(4, 2, 3), Layout(8, 3)),  # columns, too
        (torch.arange(3).expand(4, 3), Layout(4, 3)),  # columns
        (torch.arange(6).view(1, 6).expand(4, 6) // 2, Layout(4, 3)),  # blocks of 2 columns
        (torch.arange(4).view(1, 4, 1).expand(5, 4, 9), Layout(5, 4)),  # conv input channels
    ],
)
def test_detect_layout_finds_rows_and_column_blocks(index, expected):
    assert detect_layout(index) == expected


@pytest.mark.parametrize(
    "index",
    [
        torch.randperm(12).view(4, 3) % 5,  # scattered
        torch.tensor([0, 0, 1, 1, 0, 0]),  # a label in two runs that are not column blocks
        torch.tensor([0, 0, 1, 1, 1, 2]),  # runs of unequal length
        torch.tensor([0, 1, 2, 0, 1, 3]),  # rows of column blocks that differ
        torch.tensor([0, 1, 0, 1, 0]),  # a partial last row
    ],
)
def test_detect_layout_refuses_irregular_groups(index):
    assert detect_layout(index) is None


def scattered(w):
    """The same groups for every tensor of a shape, in no regular pattern, some labels unused."""
    generator = torch.Generator().manual_seed(w.numel())
    return (torch.randperm(w.numel(), generator=generator) % 3).view(w.shape) * 2


def unequal_row_runs(w):
    """Output units in runs of 1, 2, 1, 2, ... rows: whole rows, groups of unequal size."""
    rows = torch.arange(w.shape[0])
    return ((rows * 2) // 3).view(-1, *[1] * (w.ndim - 1)).expand(w.shape)


IRREGULAR = [
    (GroupLasso(0.3, scattered, "sqrt_size"), torch.float32),
    (SparseGroupLasso(0.05, 0.3, scattered), torch.float32),
    (SparseGroupLasso(0.05, 0.3, unequal_row_runs, "sqrt_size"), torch.float32),
    (MaxNorm(0.5, scattered), torch.float32),
]


@pytest.mark.parametrize(
    "penalty, dtype",
    matrix(IRREGULAR, set(), [f"{p!r}-{str(d).removeprefix('torch.')}" for p, d in IRREGULAR]),
)
def test_irregular_callable_groups_run_fused_and_equal_the_eager_path(penalty, dtype):
    tiny = {torch.float32: 1e-30, torch.float64: 1e-170}[dtype]
    a, b = model(dtype, tiny), model(dtype, tiny)
    eager = Regularizer(a, penalty, backend="eager")
    fused = Regularizer(b, penalty, backend="compile")
    if not penalty.constraints():
        close(eager.value(), fused.value(), dtype)
        eager.add_to_grad_()
        fused.add_to_grad_()
        for p, q in zip(a.parameters(), b.parameters(), strict=True):
            close(p.grad, q.grad, dtype)
        eager.decay_(0.1)
        fused.decay_(0.1)
        eager.prox_(0.5)
        fused.prox_(0.5)
        (ga,) = torch.autograd.grad(eager(), a[0].weight)
        (gb,) = torch.autograd.grad(fused(), b[0].weight)
        close(ga, gb, dtype)
    eager.project_()
    fused.project_()
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        close(p, q, dtype)
        assert torch.equal(p == 0, q == 0), name  # the same exact zeros
    found = fused._kernels.group_layouts.values()
    assert any(isinstance(lay, layouts.Indexed) for lay in found)
    assert fused._kernels.signatures  # the fused kernels ran, not the eager fallback


@pytest.mark.parametrize(
    "index, run, size",
    [
        (torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 1]), 3, 2),  # runs of 3 and 6: cut by 3
        (torch.tensor([[2], [2], [0]]).expand(3, 4), 4, 3),  # whole rows, unequal groups
        (torch.tensor([1, 0, 1, 0, 0]), 1, 2),  # scattered
    ],
)
def test_indexed_cuts_the_longest_runs_that_share_a_group(index, run, size):
    got = layouts.indexed(index, torch.device("cpu"))
    assert got is not None and got.size == size
    assert got.group_of.numel() * run == index.numel()  # one label per run of `run` elements
    assert torch.equal(got.group_of.long(), index.reshape(-1)[::run])
    sizes = torch.bincount(index.reshape(-1), minlength=size).double()
    torch.testing.assert_close(got.sqrt_sizes, sizes.sqrt())


@pytest.mark.parametrize("index", [torch.tensor([0, -1]), torch.zeros(0, dtype=torch.long)])
def test_indexed_leaves_negative_and_empty_indices_to_the_eager_path(index):
    assert layouts.indexed(index, torch.device("cpu")) is None


def test_irregular_groups_with_negative_labels_are_refused_as_before():
    def negative(w):
        return torch.full(w.shape, -1)

    m = model(torch.float32, 1e-30)
    with pytest.raises(ValueError, match="whole group indices >= 0, got -1"):
        Regularizer(m, GroupLasso(0.3, negative), backend="compile").prox_(0.5)


def test_nan_groups_stay_nan_and_the_rest_is_untouched():
    a, b = model(torch.float32, 1e-30), model(torch.float32, 1e-30)
    for m in (a, b):
        with torch.no_grad():
            m[0].weight[3, 0] = float("nan")
    Regularizer(a, GroupLasso(0.3), backend="eager").prox_(0.5)
    Regularizer(b, GroupLasso(0.3), backend="compile").prox_(0.5)
    assert torch.isnan(b[0].weight[3]).all()
    torch.testing.assert_close(a[0].weight, b[0].weight, equal_nan=True)


GROUP_SPECS = [
    "group_lasso(0.05, groups=rows)",
    "group_lasso(0.05, groups=cols, scale=sqrt_size)",
    "sparse_group_lasso(0.01, 0.05, groups=cols)",
    GroupLasso(0.05, last_dim_index),
    GroupLasso(0.05, scattered),  # irregular: indexed groups, read when the regularizer is built
]


@pytest.mark.parametrize("spec", matrix([GROUP_SPECS[0], GROUP_SPECS[2], GROUP_SPECS[-1]], set()))
def test_user_compiled_steps_have_no_graph_break(spec):
    """Inside the user's ``torch.compile(fullgraph=True)`` (which raises on a graph break), every
    mode traces through, and matches eager."""
    a, b = model(torch.float32, 1.0), model(torch.float32, 1.0)
    x = torch.randn(7, 6)
    # a callable's groups are read once, when the regularizer is built: no eager call first
    eager, compiled = Regularizer(a, spec, backend="eager"), Regularizer(b, spec)

    def loss(m, reg):
        return m[0](x).square().sum() + reg()

    got = torch.compile(loss, fullgraph=True)(b, compiled)
    want = loss(a, eager)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    for fn in ("add_to_grad_", "value"):
        got = torch.compile(getattr(compiled, fn), fullgraph=True)()
        want = getattr(eager, fn)()
        if want is not None:
            torch.testing.assert_close(got, want)
    torch.compile(lambda: compiled.decay_(0.1), fullgraph=True)()
    torch.compile(lambda: compiled.prox_(0.01), fullgraph=True)()
    eager.decay_(0.1)
    eager.prox_(0.01)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("spec", matrix([GROUP_SPECS[0], GROUP_SPECS[-1]], {0}))
def test_changing_strengths_and_steps_never_recompiles(spec):
    """Strengths, schedule factors, learning rates and loss scales enter the fused kernels as
    0-dim tensors: after the first call of each mode, new values reuse the compiled code."""
    m = model(torch.float32, 1.0)
    reg = Regularizer(m, spec, backend="compile", schedule=lambda step: 1.0 / (1 + step))

    def every_mode(lr: float) -> None:
        reg.value()
        reg.add_to_grad_(torch.tensor(lr * 10))
        reg.decay_(lr)
        reg.prox_(lr)
        reg().backward()

    every_mode(0.1)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for lr in (0.05, 0.02, 0.3):
            reg.step()  # a new strength factor
            every_mode(lr)
    assert reg.steps == 3 and reg._kernels.signatures


@pytest.mark.parametrize("penalty", matrix(PENALTIES[:7], {0}, [repr(p) for p in PENALTIES[:7]]))
def test_loss_mode_reuses_the_forward_norms_and_equals_the_eager_path(penalty):
    """With every .grad present, the fused forward keeps its group norms and the backward adds
    into .grad with them (no second norms pass): the same gradients as the eager path."""
    a, b = model(torch.float32, 1e-30), model(torch.float32, 1e-30)
    eager = Regularizer(a, penalty, backend="eager")
    fused = Regularizer(b, penalty, backend="compile")
    (3.0 * eager()).backward()  # a loss scale, as under GradScaler
    (3.0 * fused()).backward()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        close(p.grad, q.grad, torch.float32)
    assert group_kernels._add_grad_norms in fused._kernels.signatures  # the reusing kernel ran


def kernel_windows(w):
    """A group per (out, in) kernel window of a conv: 9 weights for 3x3."""
    return torch.arange(w.numel()).view(w.shape) // w[0, 0].numel()


WINDOWS = [GroupLasso(0.3, kernel_windows), SparseGroupLasso(0.05, 0.3, kernel_windows)]


@pytest.mark.parametrize("penalty", matrix(WINDOWS, set(), [repr(p) for p in WINDOWS]))
def test_kernel_window_groups_equal_the_eager_path(penalty):
    """3x3 kernel windows: 32 short rows of 9 weights (summed column by column)."""

    def conv():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False))
        with torch.no_grad():
            m[0].weight[0, 0] = 0.0  # a zero window
            m[0].weight[1, 1] = 1e-30  # a tiny one
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        return m

    a, b = conv(), conv()
    eager = Regularizer(a, penalty, backend="eager", among="all")
    fused = Regularizer(b, penalty, backend="compile", among="all")
    eager.add_to_grad_()
    fused.add_to_grad_()
    eager.decay_(0.1)
    fused.decay_(0.1)
    eager.prox_(0.5)
    fused.prox_(0.5)
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        close(p.grad, q.grad, torch.float32)
        close(p, q, torch.float32)
        assert torch.equal(p == 0, q == 0)
    assert fused._kernels.group_layouts  # the windows were matched to a layout


@pytest.mark.parametrize(
    "penalty", matrix([GroupLasso(0.3, kernel_windows), UnitNorm(kernel_windows)], set())
)
def test_channels_last_kernel_windows_equal_the_eager_path(penalty):
    """Channels-last conv weights have no (windows, 9) view: the fused kernels update them
    whole (the short-row kernels and the split broadcast both need that view)."""

    def conv():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(4, 8, 3, bias=False)).to(memory_format=torch.channels_last)
        for p in m.parameters():
            p.grad = torch.randn_like(p)
        return m

    a, b = conv(), conv()
    assert not b[0].weight.is_contiguous()
    eager = Regularizer(a, penalty, backend="eager", among="all")
    fused = Regularizer(b, penalty, backend="compile", among="all")
    for reg in (eager, fused):
        if penalty.constraints():
            reg.project_()
        else:
            reg.add_to_grad_()
            reg.decay_(0.1)
            reg.prox_(0.5)
    close(a[0].weight.grad, b[0].weight.grad, torch.float32)
    close(a[0].weight, b[0].weight, torch.float32)
    assert torch.equal(a[0].weight == 0, b[0].weight == 0)
