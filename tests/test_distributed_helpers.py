"""The spawning helper of the distributed tests never hangs: a rank stuck after saving its
results (as gloo's teardown has been) is killed and the results stand; a run that saves nothing
fails with a timeout."""

from __future__ import annotations

import os
import time

import pytest
import torch

from . import distributed_helpers

pytestmark = pytest.mark.distributed


def _saves_then_hangs(rank: int, init_file: str, out_dir: str) -> None:
    torch.save({"rank": rank}, os.path.join(out_dir, f"rank{rank}.pt"))
    if rank == 1:
        time.sleep(1000)


def _hangs(rank: int, init_file: str, out_dir: str) -> None:
    time.sleep(1000)


def test_a_rank_stuck_after_saving_is_killed_and_the_results_stand(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed_helpers, "TEARDOWN_GRACE", 1.0)
    start = time.monotonic()
    results = distributed_helpers.spawn(_saves_then_hangs, tmp_path, 2)
    assert [r["rank"] for r in results] == [0, 1]
    assert time.monotonic() - start < 60


def test_a_run_that_saves_nothing_times_out(tmp_path, monkeypatch):
    monkeypatch.setattr(distributed_helpers, "TIMEOUT", 2.0)
    with pytest.raises(TimeoutError, match="still running"):
        distributed_helpers.spawn(_hangs, tmp_path, 2)
