"""The single-pass short-row kernels (`torchpenalty.short_rows`) against the eager group
penalties and torch's own norms: every mode, float32 and float64, row widths from 1 to 49, row
counts with and without a partial last block, and zero, tiny, huge, subnormal and NaN rows."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch._inductor.config as inductor_config
from torch import nn

from torchpenalty import (
    GroupLasso,
    MinMaxNorm,
    Regularizer,
    SparseGroupLasso,
    UnitNorm,
    short_rows,
)

from . import helpers
from .helpers import TOLERANCE, last_dim_runs

pytestmark = pytest.mark.slow  # each width and dtype builds its C++ kernel once (about a second)

SPECIAL = {  # row -> value of every entry: zero, tiny (squares underflow), huge (overflow)
    torch.float32: {0: 0.0, 1: 1e-30, 2: 1e30, 3: 1e-44},  # 1e-44: subnormal, 7 ulps
    # (float64 groups of subnormal norm are left out: every fused path floors their norm at
    # the smallest normal number, and the eager path does not)
    torch.float64: {0: 0.0, 1: 1e-170, 2: 1e200, 3: 1e-305},
}


def layer(rows: int, width: int, dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(rows + width)
    m = nn.Linear(width, rows, bias=False).to(dtype)
    with torch.no_grad():
        for r, value in SPECIAL[dtype].items():
            m.weight[r] = value
        m.weight[4, 0] = 1e-3  # one tiny entry next to normal ones
    m.weight.grad = torch.randn_like(m.weight)
    return m


def close(a, b, dtype):
    helpers.close(a, b, dtype, equal_nan=True)  # NaN rows stay NaN on both paths


CASES = [
    (rows, width, dtype)
    for dtype in (torch.float32, torch.float64)
    for rows, width in ((37, 9), (16, 3), (20, 17), (64, 32), (5, 9), (40, 1), (12, 49))
]


@pytest.mark.parametrize(
    "rows, width, dtype", CASES, ids=[f"{r}x{w}-{str(d)[6:]}" for r, w, d in CASES]
)
def test_short_rows_equal_the_eager_path_in_every_mode(rows, width, dtype):
    a, b = layer(rows, width, dtype), layer(rows, width, dtype)
    penalty = GroupLasso(0.3, last_dim_runs)
    eager = Regularizer(a, penalty, backend="eager", among="all")
    native = Regularizer(b, penalty, backend="compile", among="all")
    hits = short_rows.kernel.cache_info().hits
    close(eager.value(), native.value(), dtype)
    eager.add_to_grad_()
    native.add_to_grad_(torch.tensor(1.0, dtype=torch.float64))
    close(a.weight.grad, b.weight.grad, dtype)
    eager.prox_(0.5)
    native.prox_(0.5)
    close(a.weight, b.weight, dtype)
    assert torch.equal(a.weight == 0, b.weight == 0)  # the same exact zeros
    assert (b.weight[[0, 1, 3]] == 0).all() and (b.weight[2] != 0).all()  # all but the huge row
    eager.decay_(0.01)
    native.decay_(torch.tensor(0.01, dtype=torch.float64))  # a scheduler's tensor lr
    close(a.weight, b.weight, dtype)
    (ga,) = torch.autograd.grad(3.0 * eager(), a.weight)  # loss mode, as under GradScaler
    (gb,) = torch.autograd.grad(3.0 * native(), b.weight)
    close(ga, gb, dtype)
    assert short_rows.kernel.cache_info().hits > hits  # the short-row kernels ran
    assert not native._kernels.native_failed


SGL_CASES = [
    (37, 9, torch.float32),
    (16, 3, torch.float32),
    (20, 17, torch.float64),
    (64, 32, torch.float64),
    (12, 49, torch.float32),
]


@pytest.mark.parametrize(
    "rows, width, dtype", SGL_CASES, ids=[f"{r}x{w}-{str(d)[6:]}" for r, w, d in SGL_CASES]
)
def test_sparse_group_lasso_short_rows_equal_the_eager_path_in_every_mode(rows, width, dtype):
    """The L1 term in the same single pass: value + l1 * sum|w|, gradient and decay with
    l1 * sign(w), prox soft-thresholding each block before its norms (the same exact zeros:
    single weights and whole rows)."""
    a, b = layer(rows, width, dtype), layer(rows, width, dtype)
    penalty = SparseGroupLasso(0.1, 0.3, last_dim_runs)
    eager = Regularizer(a, penalty, backend="eager", among="all")
    native = Regularizer(b, penalty, backend="compile", among="all")
    hits = short_rows.kernel.cache_info().hits
    close(eager.value(), native.value(), dtype)
    eager.add_to_grad_(2.0)
    native.add_to_grad_(torch.tensor(2.0, dtype=torch.float64))
    close(a.weight.grad, b.weight.grad, dtype)
    eager.decay_(0.01)
    native.decay_(torch.tensor(0.01, dtype=torch.float64))
    close(a.weight, b.weight, dtype)
    eager.prox_(0.5)
    native.prox_(0.5)
    close(a.weight, b.weight, dtype)
    assert torch.equal(a.weight == 0, b.weight == 0)  # the same exact zeros
    alive = (b.weight != 0).any(dim=1)
    assert alive.any() and (b.weight[alive] == 0).any()  # the L1 term zeroed single weights
    assert (~alive).any()  # and the group term whole rows
    (3.0 * eager()).backward()  # loss mode into the existing .grad, as under GradScaler
    (3.0 * native()).backward()
    close(a.weight.grad, b.weight.grad, dtype)
    assert short_rows.kernel.cache_info().hits > hits  # the short-row kernels ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "constraint", [UnitNorm(last_dim_runs), MinMaxNorm(0.2, 0.6, 0.5, last_dim_runs)]
)
def test_short_row_projections_equal_the_eager_path(constraint, dtype):
    a, b = layer(37, 9, dtype), layer(37, 9, dtype)
    Regularizer(a, constraint, backend="eager", among="all").project_()
    Regularizer(b, constraint, backend="compile", among="all").project_()
    close(a.weight, b.weight, dtype)
    norms = torch.linalg.vector_norm(b.weight.double(), dim=1)
    assert norms[0] == 0  # a zero row stays zero
    if isinstance(constraint, UnitNorm):  # every other row has norm 1, subnormal ones too
        torch.testing.assert_close(norms[1:], torch.ones_like(norms[1:]), rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_and_inf_rows_propagate_as_in_torch(dtype):
    w = torch.randn(33, 9, dtype=dtype)
    w[3, 2], w[20, 0] = float("nan"), float("inf")
    got = short_rows.run("value", [w[:16], w[16:]], None, torch.zeros(2, dtype=torch.float64))[0]
    want = torch.linalg.vector_norm(w.double(), dim=1)
    assert torch.isnan(got[0]) and torch.isinf(got[1])
    k = torch.tensor([0.1, 0.1], dtype=torch.float64)
    decayed = w.clone()
    short_rows.run("decay", [decayed[:16], decayed[16:]], None, k)
    finite = torch.isfinite(want)
    assert torch.isnan(decayed[3]).all() and torch.equal(decayed[20], w[20])  # factor 1 at inf
    expected = w * (1 - 0.1 / want).to(dtype).view(-1, 1)
    close(decayed[finite], expected[finite], dtype)


def test_norms_of_float64_rows_are_exact_over_the_whole_range():
    """A row of equal entries ``x`` has norm ``3 * |x|`` (9 entries) for every ``x``, from the
    smallest subnormal to the largest float64 value."""
    x = torch.tensor([5e-324, 1e-310, 1e-200, 1e-154, 1.0, 1e154, 1e200, 1e307]).double()
    w = x.view(-1, 1).expand(-1, 9).repeat(4, 1).contiguous()  # 32 rows: two whole blocks
    one_per_row = [w[i : i + 1] for i in range(32)]  # each row alone: the partial-block path
    got = short_rows.run("value", one_per_row, None, torch.zeros(32).double())[0]
    torch.testing.assert_close(got, 3 * x.repeat(4), rtol=1e-15, atol=0)
    got = short_rows.run("value", [w], None, torch.zeros(1).double())[0]
    torch.testing.assert_close(got, (3 * x).sum().view(1) * 4, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "w",
    [
        torch.randn(8, 9).t(),  # not contiguous
        torch.randn(8, 9, dtype=torch.bfloat16),  # not float32 / float64
        torch.randn(8, 72),  # rows longer than WIDEST
        torch.randn(0, 9),  # no rows
    ],
    ids=["strided", "bfloat16", "long-rows", "empty"],
)
def test_width_of_refuses_what_the_kernels_do_not_take(w):
    assert short_rows.width_of(w, w.shape[0]) is None


def test_without_a_working_compiler_the_regularizer_falls_back_and_says_so():
    """Where the C++ kernels cannot be built, the regularizer warns once and keeps its other
    kernels: the same results as the eager path."""
    a, b = layer(21, 31, torch.float32), layer(21, 31, torch.float32)  # a width built nowhere else
    eager = Regularizer(a, GroupLasso(0.3, last_dim_runs), backend="eager", among="all")
    native = Regularizer(b, GroupLasso(0.3, last_dim_runs), backend="compile", among="all")
    with (
        inductor_config.patch({"cpp.cxx": (None, "no-such-c++-compiler")}),
        warnings.catch_warnings(record=True) as caught,
    ):
        warnings.simplefilter("always")
        native.prox_(0.5)
        native.prox_(0.5)
    eager.prox_(0.5)
    eager.prox_(0.5)
    close(a.weight, b.weight, torch.float32)
    said = [str(w.message) for w in caught if "short-row kernels are unavailable" in str(w.message)]
    assert len(said) == 1 and "no-such-c++-compiler" in said[0]
    assert native._kernels.native_failed


def test_autograd_sees_the_in_place_update():
    """An update written through the tensor's pointer still counts as an in-place change: a
    backward through a graph that saved the old weights raises, as it does on the eager path."""
    for backend in ("eager", "compile"):
        m = layer(37, 9, torch.float32)
        reg = Regularizer(m, GroupLasso(0.3, last_dim_runs), backend=backend, among="all")
        loss = (m.weight**3).sum()  # saves the weight for its backward
        reg.decay_(0.01)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()


def scattered_runs(run):
    """Irregular groups: runs of ``run`` consecutive weights dealt at random to groups of
    about 8 runs, with a group left empty (label 1 is never dealt)."""

    def groups(w):
        generator = torch.Generator().manual_seed(w.numel())
        runs = w.numel() // run
        labels = torch.randperm(runs, generator=generator) % max(2, runs // 8)
        labels = torch.where(labels == 1, 0, labels)
        return labels.repeat_interleave(run).view(w.shape)

    return groups


@pytest.mark.parametrize("l1", [0.0, 0.2], ids=["group_lasso", "sparse_group_lasso"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("scale", ["none", "sqrt_size"])
@pytest.mark.parametrize("run", [1, 3])
def test_irregular_groups_of_short_runs_equal_the_eager_path(run, scale, dtype, l1):
    """float64 groups mix the tiny and huge rows with normal ones: their plain sums overflow,
    and the kernel sums them again scaled. Sparse group lasso adds its L1 term in the same
    passes."""
    a, b = layer(24, 9, dtype), layer(24, 9, dtype)
    for m in (a, b):
        with torch.no_grad():
            m.weight[5, 0] = float("nan")  # one NaN group
    groups = scattered_runs(run)
    penalty = SparseGroupLasso(l1, 0.3, groups, scale) if l1 else GroupLasso(0.3, groups, scale)
    eager = Regularizer(a, penalty, backend="eager", among="all")
    native = Regularizer(b, penalty, backend="compile", among="all")
    hits = short_rows.indexed_kernel.cache_info().hits
    for reg in (eager, native):
        reg.add_to_grad_()
        reg.prox_(0.2)
        reg.decay_(0.01)
    close(a.weight.grad, b.weight.grad, dtype)
    close(a.weight, b.weight, dtype)
    assert torch.equal(a.weight == 0, b.weight == 0) and (b.weight == 0).any()
    assert torch.isnan(b.weight).sum() == torch.isnan(a.weight).sum() > 0
    with torch.no_grad():  # without the NaN group, the values and loss-mode gradients
        a.weight.nan_to_num_(0.0)
        b.weight.nan_to_num_(0.0)
    close(eager.value(), native.value(), dtype)
    (ga,) = torch.autograd.grad(eager(), a.weight)
    (gb,) = torch.autograd.grad(native(), b.weight)
    close(ga, gb, dtype)
    assert short_rows.indexed_kernel.cache_info().hits > hits  # the indexed kernels ran


@pytest.mark.parametrize("run", [1, 4])
def test_float64_irregular_groups_of_extreme_weights_have_exact_norms(run):
    """Groups of equal weights ``v`` (norm ``|v| sqrt(weights)``) from 1e-300 to 1e300: whose
    squares underflow or overflow, next to groups of exact zeros (which alone would not need
    a second pass) and of normal weights."""
    values = [0.0, 1e-300, 1e-170, 1e-160, 0.5, 1e160, 1e200, 1e300, -1e-200, 0.0]
    groups, weights = len(values), 8 * run  # weights per group
    labels = torch.arange(groups).repeat_interleave(8)
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))]
    labels = labels.repeat_interleave(run)
    w = torch.tensor(values, dtype=torch.float64)[labels].contiguous()
    index = labels[::run].to(torch.int32)
    c = k = torch.ones(1, dtype=torch.float64)  # one c_g for all groups
    norms = torch.empty(groups, dtype=torch.float64)
    short_rows.run_indexed("value_norms", w, None, index, groups, c, k, None, norms)
    want = torch.tensor(values, dtype=torch.float64).abs() * weights**0.5
    torch.testing.assert_close(norms, want, rtol=1e-15, atol=0)
    # the update divides by those norms: a gradient of v / ||w_g|| = sign(v) / sqrt(weights)
    g = torch.zeros_like(w)
    short_rows.run_indexed("add_grad", w, g, index, groups, c, k)
    torch.testing.assert_close(g, w.sign() / weights**0.5, rtol=1e-15, atol=0)


@pytest.mark.parametrize("run", [1, 4])
def test_float64_sparse_group_lasso_prox_of_extreme_irregular_groups(run):
    """Prox soft-thresholds before the group norms: where those norms need the scaled second
    pass (huge and tiny weights), the soft-thresholded weights are what it norms, once."""
    values = [0.0, 1e-300, 0.3, 0.5, -2.0, 1e160, 1e300, -1e300]
    labels = torch.arange(len(values)).repeat_interleave(8)
    labels = labels[torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(1))]

    def groups(w):
        return labels.repeat_interleave(run).view(w.shape)

    w = torch.tensor(values, dtype=torch.float64)[labels].repeat_interleave(run)
    w = w * torch.linspace(0.5, 1.5, w.numel(), dtype=torch.float64)  # unequal within groups
    penalty = SparseGroupLasso(0.5, 2.0, groups)
    want = penalty.prox(w.clone(), 0.25)
    got = w.clone()
    index = labels.to(torch.int32)
    t_group, t_l1 = torch.tensor([2.0 * 0.25]).double(), torch.tensor(0.5 * 0.25).double()
    c = torch.ones(1, dtype=torch.float64)
    short_rows.run_indexed(
        "prox", got, None, index, len(values), c, t_group, short_rows.shared_args(t_l1)
    )
    torch.testing.assert_close(got, want, rtol=1e-14, atol=0)
    assert torch.equal(got == 0, want == 0) and (got == 0).any() and (got != 0).any()


def conv_and_linear(dtype: torch.dtype) -> nn.Module:
    """A conv (column blocks of 9: its input channels) and a Linear (columns), with a zero, a
    tiny (squares underflow in float32), a huge and a NaN column group."""
    torch.manual_seed(3)
    m = nn.Sequential(nn.Conv2d(6, 20, 3), nn.Flatten(), nn.Linear(13, 12)).to(dtype)
    with torch.no_grad():
        m[0].weight[:, 0] = 0.0
        m[0].weight[:, 1] = 1e-30
        m[0].weight[:, 2] = 1e30
        m[2].weight[3, 4] = float("nan")
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    return m


@pytest.mark.parametrize(
    "penalty",
    [
        GroupLasso(0.3, "cols"),
        GroupLasso(0.3, "cols", "sqrt_size"),
        SparseGroupLasso(0.1, 0.3, "cols"),
        MinMaxNorm(0.2, 0.6, 0.5, "cols"),
    ],
    ids=str,
)
def test_column_blocks_equal_the_eager_path_in_every_mode(penalty):
    """`column_blocks.cpp` (float32 column blocks): every mode, loss mode with kept norms, the
    same exact zeros, NaN groups staying NaN."""
    a, b = conv_and_linear(torch.float32), conv_and_linear(torch.float32)
    eager = Regularizer(a, penalty, backend="eager")
    native = Regularizer(b, penalty, backend="compile")
    hits = short_rows.column_kernel.cache_info().hits
    if penalty.constraints():
        eager.project_()
        native.project_()
    else:
        with torch.no_grad():  # the values, without the NaN group
            for m in (a, b):
                m[2].weight[3, 4] = 0.0
        close(eager.value(), native.value(), torch.float32)
        (3.0 * eager()).backward()  # loss mode into the existing .grad
        (3.0 * native()).backward()
        with torch.no_grad():
            for m in (a, b):
                m[2].weight[3, 4] = float("nan")
        eager.add_to_grad_(2.0)
        native.add_to_grad_(torch.tensor(2.0, dtype=torch.float64))
        eager.decay_(0.01)
        native.decay_(0.01)
        eager.prox_(0.5)
        native.prox_(0.5)
        assert (b[0].weight[:, :2] == 0).all() and (b[0].weight[:, 2] != 0).all()
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        close(p, q, torch.float32)
        close(p.grad, q.grad, torch.float32)
        assert torch.equal(p == 0, q == 0) and torch.equal(p.isnan(), q.isnan())
    assert short_rows.column_kernel.cache_info().hits > hits  # the column kernel ran


def test_irregular_groups_of_short_runs_project_as_the_eager_path():
    a, b = layer(24, 9, torch.float32), layer(24, 9, torch.float32)
    constraint = MinMaxNorm(0.2, 0.6, 0.5, scattered_runs(1))
    Regularizer(a, constraint, backend="eager", among="all").project_()
    Regularizer(b, constraint, backend="compile", among="all").project_()
    close(a.weight, b.weight, torch.float32)


def test_loss_mode_of_irregular_groups_reuses_the_forward_norms():
    """With every .grad present, the forward keeps the groups' norms (8 bytes a group) and the
    backward adds into .grad with them: the same gradients as the eager path."""
    a, b = layer(24, 9, torch.float32), layer(24, 9, torch.float32)
    penalty = GroupLasso(0.3, scattered_runs(1), "sqrt_size")
    eager = Regularizer(a, penalty, backend="eager", among="all")
    native = Regularizer(b, penalty, backend="compile", among="all")
    (3.0 * eager()).backward()  # a loss scale, as under GradScaler
    (3.0 * native()).backward()
    close(a.weight.grad, b.weight.grad, torch.float32)
    # the kernels themselves: the kept norms are torch's, and the backward that reads them
    # adds what the one that sums the groups again adds
    w = b.weight.detach().reshape(-1)
    index = scattered_runs(1)(w).to(torch.int32)
    size = int(index.max()) + 1
    c = torch.linspace(0.5, 2.0, size, dtype=torch.float64)  # a c_g of each group's own
    k = torch.tensor([0.3], dtype=torch.float64)
    norms = torch.empty(size, dtype=torch.float64)
    short_rows.run_indexed("value_norms", w, None, index, size, c, k, None, norms)
    want = torch.zeros(size, dtype=torch.float64).index_add_(0, index.long(), w.double() ** 2)
    torch.testing.assert_close(norms, want.sqrt(), rtol=1e-12, atol=0)
    g1, g2 = torch.zeros_like(w), torch.zeros_like(w)
    short_rows.run_indexed("add_grad_norms", w, g1, index, size, c, k, None, norms)
    short_rows.run_indexed("add_grad", w, g2, index, size, c, k)
    assert torch.equal(g1, g2) and g1.abs().sum() > 0
    factor = (0.3 * c / norms.clamp_min(torch.finfo(torch.float64).tiny))[index.long()]
    torch.testing.assert_close(g2, (factor * w.double()).float(), rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "rows, width, dtype",
    [
        (37, 9, torch.float32),
        (37, 9, torch.float64),
        (20, 17, torch.float32),
        (16, 3, torch.float32),
    ],
    ids=["9-float32", "9-float64", "17-float32", "3-float32 (norms not kept)"],
)
def test_loss_mode_of_short_rows_reuses_the_forward_norms(rows, width, dtype):
    """With every .grad present, the forward keeps each row's norm where rows have 8 weights or
    more, and the backward divides by them; rows whose norm float32 cannot hold (the subnormal
    row) are normed again: the same gradients as the eager path."""
    a, b = layer(rows, width, dtype), layer(rows, width, dtype)
    eager = Regularizer(a, GroupLasso(0.3, last_dim_runs), backend="eager", among="all")
    native = Regularizer(b, GroupLasso(0.3, last_dim_runs), backend="compile", among="all")
    (3.0 * eager()).backward()  # a loss scale, as under GradScaler
    (3.0 * native()).backward()
    close(a.weight.grad, b.weight.grad, dtype)
    # the kernels themselves: the kept norms are torch's, and the backward that reads them
    # adds what the one that norms the rows again adds
    w = b.weight.detach()
    kept = torch.empty(rows, dtype=dtype)
    k = torch.tensor([0.3], dtype=torch.float64)
    short_rows.run("value_norms", [w], None, k, None, [kept])
    top = w.double().abs().amax(dim=1, keepdim=True).clamp(min=1e-300)  # no overflow (1e200)
    want = (top.view(-1) * torch.linalg.vector_norm(w.double() / top, dim=1)).to(dtype)
    torch.testing.assert_close(kept, want, rtol=TOLERANCE[dtype], atol=0)
    g1, g2 = torch.zeros_like(w), torch.zeros_like(w)
    short_rows.run("add_grad_norms", [w], [g1], k, None, [kept])
    short_rows.run("add_grad", [w], [g2], k)
    close(g1, g2, dtype)
