"""Peak extra memory of a call: what it allocates beyond what already exists, at its peak."""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_extra_bytes(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """CUDA: the allocator's peak over the call. CPU: the profiler's memory events, allocations
    counted at the op that made them and frees where they happen, summed in time order."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        fn()
    timeline = []
    for e in prof.events():
        if e.name == "[memory]":
            timeline.append((e.time_range.start, e.cpu_memory_usage))
        elif e.self_cpu_memory_usage:
            timeline.append((e.time_range.start, e.self_cpu_memory_usage))
    current = peak = 0
    for _, delta in sorted(timeline):
        current += delta
        peak = max(peak, current)
    return peak
