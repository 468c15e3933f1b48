"""`torchpenalty.kernels.backend`: any failure of a compilation falls back to the eager kernels,
with one warning per process, and the same figures."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from torchpenalty import L1, GroupLasso, Regularizer
from torchpenalty.kernels import backend


@pytest.fixture
def failing_compiler(monkeypatch, request):
    """``torch.compile``'s product raising ``request.param`` (not only dynamo's own errors)."""
    error = request.param

    def compile_that_fails(kernel):
        def run(*args):
            raise error

        return run

    monkeypatch.setattr(backend, "_compiled", compile_that_fails)
    monkeypatch.setitem(backend._fallback_warned, "done", False)
    return error


@pytest.mark.parametrize(
    "failing_compiler",
    [
        OSError("[Errno 30] Read-only file system: '/cache'"),
        RuntimeError("Compiler: cc is not found"),
        ImportError("cannot import name 'triton'"),
        AssertionError("dynamo internal"),
    ],
    indirect=True,
    ids=["unwritable-cache", "no-compiler", "no-triton", "dynamo-bug"],
)
def test_any_compile_failure_falls_back_once_per_process(failing_compiler):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Linear(16, 16))
    penalties = [L1(0.1), GroupLasso(0.1, "rows")]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for penalty in penalties:
            compiled = Regularizer(model, penalty, backend="compile")
            eager = Regularizer(model, penalty, backend="eager")
            torch.testing.assert_close(compiled.value(), eager.value())
            assert compiled._kernels.compile_failed  # that regularizer stays eager
            torch.testing.assert_close(compiled.value(), eager.value())
    said = [str(w.message) for w in seen if issubclass(w.category, RuntimeWarning)]
    assert len(said) == 1, said  # once per process, for every regularizer and kernel
    assert type(failing_compiler).__name__ in said[0]
