"""Kill a training process right after a checkpoint, resume it in a new process: the weights,
the schedule, the `TargetSparsity` pattern and the L2-SP references continue bitwise as in an
uninterrupted run."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

WORKER = Path(__file__).with_name("resume_worker.py")
STEPS = 24


def run(folder: Path, *extra: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(folder), str(STEPS), *map(str, extra)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_killed_run_resumes_bitwise_in_a_new_process(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir()
    killed.mkdir()
    done = run(straight)
    assert done.returncode == 0, done.stderr[-2000:]
    for kill_after in (5, 15):  # killed before the target freezes, resumed, killed after it
        crashed = run(killed, kill_after)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        assert not (killed / "final.pt").exists()
    resumed = run(killed)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected = torch.load(straight / "final.pt", weights_only=True)
    got = torch.load(killed / "final.pt", weights_only=True)
    assert got["status"] == expected["status"]
    assert "frozen at step" in got["status"]
    for name, weight in expected["weights"].items():
        assert torch.equal(got["weights"][name], weight), name
