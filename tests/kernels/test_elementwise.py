"""The fused multi-tensor kernels against the simple reference math, for both backends.

Shapes include empty and 0-dim tensors; dtypes float32, float64 and bfloat16. float64 eager
results are within one rounding of the reference (bitwise where the op is the same: the L2 gradient
is torch.optim's ``grad.add(param, alpha=wd)``); compiled kernels fuse and may round differently,
so they get tight tolerances.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torchpenalty import L1, L2, ElasticNet, Regularizer, kernels
from torchpenalty.experiments.memory import peak_extra_bytes
from torchpenalty.kernels import backend as kernel_backend

SHAPES = [(7, 5), (3, 4, 2, 2), (11,), (), (0,), (0, 3), (300, 70)]
DTYPES = [torch.float64, torch.float32, torch.bfloat16]
STRENGTHS = [(0.3, 0.0), (0.0, 0.7), (0.2, 0.5)]


@pytest.fixture(params=["eager", "compile"])
def backend(request):
    kernels.set_backend(request.param)
    yield request.param
    kernels.set_backend("auto")


def tensors(dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = [torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for s in SHAPES]
    if out[0].numel():
        out[0].view(-1)[:3] = 0  # exact zeros: sign(0) = 0 must hold in every path
    return out


def reference_grad(w, g, l1, l2):
    return g.double() + l1 * torch.sign(w.double()) + l2 * w.double()


def reference_decay(w, lr, l1, l2):
    w = w.double()
    return w - lr * (l1 * torch.sign(w) + l2 * w)


def reference_prox(w, step, l1, l2):
    w = w.double()
    return torch.sign(w) * torch.clamp(w.abs() - step * l1, min=0) / (1 + step * l2)


def tolerance(dtype, backend):
    if dtype == torch.bfloat16:
        return {"rtol": 1.6e-2, "atol": 1e-2}
    if dtype == torch.float32:
        return {"rtol": 1e-6, "atol": 1e-6}
    # float64: one rounding apart at most (multiply-add vs multiply then add); the bitwise
    # oracle, torch.optim's own op, has its own test below
    return {"rtol": 1e-15, "atol": 1e-16} if backend == "eager" else {"rtol": 1e-14, "atol": 1e-15}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("l1, l2", STRENGTHS)
def test_add_grad(backend, dtype, l1, l2):
    ws, gs = tensors(dtype), tensors(dtype, seed=1)
    expected = [reference_grad(w, g, l1, l2) for w, g in zip(ws, gs, strict=True)]
    kernels.add_grad_(ws, gs, l1, l2)
    for g, e in zip(gs, expected, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), e, **tolerance(dtype, backend))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("l1, l2", STRENGTHS)
@pytest.mark.parametrize("lr", [0.1, torch.tensor(0.05)], ids=["float-lr", "tensor-lr"])
def test_decay(backend, dtype, l1, l2, lr):
    ws = tensors(dtype)
    expected = [reference_decay(w, float(lr), l1, l2) for w in ws]
    kernels.decay_(ws, lr, l1, l2)
    for w, e in zip(ws, expected, strict=True):
        torch.testing.assert_close(w.double(), e, **tolerance(dtype, backend))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("l1, l2", STRENGTHS)
def test_prox(backend, dtype, l1, l2):
    ws = tensors(dtype)
    expected = [reference_prox(w, 0.4, l1, l2) for w in ws]
    kernels.prox_(ws, 0.4, l1, l2)
    for w, e in zip(ws, expected, strict=True):
        torch.testing.assert_close(w.double(), e, **tolerance(dtype, backend))
        assert torch.equal(w == 0, e.to(w.dtype) == 0) or dtype == torch.bfloat16


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("l1, l2", STRENGTHS)
def test_value(backend, dtype, l1, l2):
    ws = tensors(dtype)
    expected = sum(l1 * w.double().abs().sum() + l2 / 2 * (w.double() ** 2).sum() for w in ws)
    got = kernels.value(ws, l1, l2)
    assert got.dtype == torch.promote_types(dtype, torch.float32)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), expected, rtol=rtol, atol=1e-9)


def test_float64_eager_l2_grad_is_torch_optims_op_bitwise():
    kernels.set_backend("eager")
    try:
        ws, gs = tensors(torch.float64), tensors(torch.float64, seed=1)
        expected = [g.add(w, alpha=0.3) for w, g in zip(ws, gs, strict=True)]  # SGD's own op
        kernels.add_grad_(ws, gs, 0.0, 0.3)
        assert all(torch.equal(g, e) for g, e in zip(gs, expected, strict=True))
    finally:
        kernels.set_backend("auto")


def test_set_backend_validates():
    with pytest.raises(ValueError, match="backend must be one of auto, eager, compile"):
        kernels.set_backend("triton")


def unique_graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def test_changing_lr_and_strength_does_not_recompile():
    kernels.set_backend("compile")
    try:
        ws = tensors(torch.float32)
        kernels.decay_(ws, 0.1, 0.01, 0.02)
        kernels.prox_(ws, 0.1, 0.01, 0.0)
        before = unique_graphs()
        for lr in (0.05, 0.01, torch.tensor(0.003)):  # a schedule
            kernels.decay_(ws, lr, 0.03, 0.01)  # and another strength
            kernels.prox_(ws, lr, 0.02, 0.0)
        assert unique_graphs() == before
    finally:
        kernels.set_backend("auto")


@pytest.mark.parametrize("penalty", [L1(1e-3), L2(1e-3), ElasticNet(1e-3, 1e-3)], ids=repr)
def test_temporaries_never_exceed_the_largest_tensor(backend, penalty):
    model = nn.Sequential(*(nn.Linear(256, 256) for _ in range(12)))  # 12 equal weights
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    reg = Regularizer(model, penalty)
    largest = 256 * 256 * 4
    for fn in (reg.add_to_grad_, lambda: reg.decay_(0.1), lambda: reg.prox_(0.1), reg.value):
        fn()  # compile first, measure after
        assert peak_extra_bytes(fn) <= largest


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_compiled_training_step_has_no_graph_break_in_the_loss():
    torch.manual_seed(0)
    model = Net()
    reg = Regularizer(model, "l1(1e-2) + l2(1e-2)")
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))

    def loss_fn():
        return F.cross_entropy(model(x), y) + reg()

    compiled = torch.compile(loss_fn, fullgraph=True)  # raises on any graph break
    expected = loss_fn()
    (expected_grads) = torch.autograd.grad(expected, list(model.parameters()))
    got = compiled()
    torch.testing.assert_close(got, expected)
    for a, b in zip(
        torch.autograd.grad(got, list(model.parameters())), expected_grads, strict=True
    ):
        torch.testing.assert_close(a, b)


def test_compiled_add_to_grad_has_no_graph_break():
    torch.manual_seed(0)
    model = Net()
    reg = Regularizer(model, "l1(1e-2) + l2(1e-2)")
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    F.cross_entropy(model(x), y).backward()
    expected = {n: p.grad + 1e-2 * torch.sign(p) + 1e-2 * p for n, p in reg.named_parameters()}
    torch.compile(reg.add_to_grad_, fullgraph=True)()
    for n, p in reg.named_parameters():
        torch.testing.assert_close(p.grad, expected[n].detach())


def test_each_regularizer_has_its_own_backend_and_compile_state():
    from torch import nn

    from torchpenalty import Regularizer

    model = nn.Sequential(nn.Linear(4, 4))
    eager = Regularizer(model, L1(0.1), backend="eager")
    compiled = Regularizer(model, L1(0.1), backend="compile")
    default = Regularizer(model, L1(0.1))
    assert (eager.backend, compiled.backend, default.backend) == ("eager", "compile", "auto")
    kernels.set_backend("eager")
    try:  # the global setting is the default of regularizers built from now on, no others
        assert Regularizer(model, L1(0.1)).backend == "eager" and default.backend == "auto"
    finally:
        kernels.set_backend("auto")
    assert eager._kernels is not compiled._kernels  # no shared signatures or failure flags
    with pytest.raises(ValueError, match="backend must be one of auto, eager, compile"):
        Regularizer(model, L1(0.1), backend="triton")
    for reg in (eager, compiled):  # both give the same numbers
        torch.testing.assert_close(reg.value(), eager.value())


def test_a_kernel_past_dynamos_recompile_limit_runs_eager_for_new_shapes(monkeypatch):
    """dynamo's cache is per kernel function, shared by every regularizer of the process: where
    its limit is reached (here lowered to the entries the kernel already has), a new list of
    shapes runs eager, with the same numbers, instead of raising; the lists compiled before it
    keep running compiled."""
    torch.manual_seed(0)
    first = nn.Sequential(nn.Linear(13, 17))
    compiled = Regularizer(first, L1(0.1), backend="compile")
    compiled.value()  # at least one compiled entry
    monkeypatch.setattr(kernel_backend, "RECOMPILE_LIMIT", 1)
    second = nn.Sequential(nn.Linear(19, 23), nn.Linear(23, 29))  # shapes no test compiles
    refused = Regularizer(second, L1(0.1), backend="compile")
    eager = Regularizer(second, L1(0.1), backend="eager")
    for _ in range(2):  # refused once, then eager without asking dynamo again
        torch.testing.assert_close(refused.value(), eager.value())
    assert refused._kernels.exhausted and not any(refused._kernels.signatures.values())
    torch.testing.assert_close(
        compiled.value(), Regularizer(first, L1(0.1), backend="eager").value()
    )
