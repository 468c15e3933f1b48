"""What sparsity buys at inference: the compacted model's size and its measured speed-up."""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from torchpenalty import compact
from torchpenalty.sparsity.compaction import count_parameters, layer_widths


@torch.no_grad()
def _seconds_per_call(model: nn.Module, x: torch.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return (time.perf_counter() - start) / calls


def compare_speed(a: nn.Module, b: nn.Module, x: torch.Tensor, rounds: int = 15) -> float:
    """Median over rounds of ``time(a) / time(b)`` on ``x``, the two timed alternately."""
    a.eval()
    b.eval()
    _seconds_per_call(a, x, 3)  # warm-up
    _seconds_per_call(b, x, 3)
    single = _seconds_per_call(a, x, 3)
    calls = max(1, min(200, int(0.02 / max(single, 1e-7))))  # about 20 ms per measurement
    ratios = [
        _seconds_per_call(a, x, calls) / _seconds_per_call(b, x, calls) for _ in range(rounds)
    ]
    return statistics.median(ratios)


def compaction_figures(model: nn.Module, x_test: torch.Tensor) -> dict[str, Any]:
    """Compact ``model`` on (a slice of) the test inputs; sizes before and after, units removed
    per layer, the largest output difference on the whole test set, and the inference speed-up
    on the whole test set."""
    model = model.eval()
    small = compact(model, x_test[:512])
    before, after = layer_widths(model), layer_widths(small)
    with torch.no_grad():
        max_diff = float((model(x_test) - small(x_test)).abs().max())
    return {
        "params": count_parameters(model),
        "compact_params": count_parameters(small),
        "units": sum(before.values()),
        "units_removed": sum(before.values()) - sum(after.values()),
        "removed_per_layer": {k: before[k] - after[k] for k in before if before[k] != after[k]},
        "max_abs_diff": max_diff,
        "speedup": compare_speed(model, small, x_test),
    }
