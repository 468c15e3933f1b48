"""Spawning gloo worker processes for the distributed tests, robust to gloo's teardown abort.

Gloo's worker threads sometimes abort the interpreter's teardown ("terminate called without an
active exception", SIGABRT) after a process has finished its work: about 1 run in 4 to 10 under
load, with or without torchpenalty (pytorch/pytorch#179291). Workers therefore leave through
``os._exit(0)`` once their results are saved and the process group is destroyed, which skips that
teardown; and should a process still die of SIGABRT after every rank saved its results, that, and
only that, is tolerated. Under load, a rank has also been seen to hang in gloo's
``destroy_process_group`` after every rank saved its results (its peer already gone): once every
result is saved, a process still alive `TEARDOWN_GRACE` seconds later is killed, and the results
stand. A run that saves nothing within `TIMEOUT` seconds fails rather than hangs.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.multiprocessing as mp


def _run_then_exit(rank: int, worker: Callable[..., None], *args: object) -> None:
    worker(rank, *args)  # an exception propagates: mp.spawn reports it with its traceback
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


#: seconds a process may stay alive after every rank saved its results (gloo's teardown)
TEARDOWN_GRACE = 20.0
#: seconds a distributed test may run at all
TIMEOUT = 240.0


def spawn(worker: Callable[..., None], out: Path, world: int) -> list[dict]:
    """Run ``worker(rank, init_file, out_dir)`` in ``world`` processes; each saves
    ``out_dir/rank{r}.pt``. Returns the saved results, rank by rank."""
    files = [out / f"rank{r}.pt" for r in range(world)]
    args = (worker, str(out / "init"), str(out))
    context = mp.spawn(_run_then_exit, args=args, nprocs=world, join=False)
    start, saved = time.monotonic(), None
    try:
        while not context.join(timeout=0.5):
            now = time.monotonic()
            if saved is None and all(f.is_file() for f in files):
                saved = now
            if saved is not None and now - saved > TEARDOWN_GRACE:
                break  # every result saved: what is left is stuck in gloo's teardown
            if now - start > TIMEOUT:
                raise TimeoutError(f"distributed workers still running after {TIMEOUT:.0f} s")
    except mp.ProcessExitedException as exc:
        aborted = exc.exit_code == -signal.SIGABRT
        if not (aborted and all(f.is_file() for f in files)):
            raise
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join()
    return [torch.load(f, weights_only=False) for f in files]
