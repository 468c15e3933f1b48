"""Training every contender of a comparison with every seed: checkpointed after every epoch,
resumable, and keeping the finished runs when Ctrl-C or a failure stops it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .checkpoints import CHECKPOINT, CHECKPOINT_KIND, CheckpointError, save_checkpoint
from .data import Dataset
from .training import (
    Contender,
    EpochRecord,
    ResumeError,
    RunResult,
    TrainConfig,
    build_model,
    clone_state,
    run,
)


@dataclasses.dataclass
class Trained:
    """What `train_all` finished: the runs, each contender's first-seed model, whether Ctrl-C
    stopped it, and the one-line reason if a run failed during training."""

    results: list[RunResult]
    first_models: dict[str, nn.Module]
    interrupted: bool = False
    failure: str | None = None


def train_all(
    data: Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
    seed_list: Sequence[int],
    out: Path,
    *,
    argv: Sequence[str],
    resume_state: dict | None = None,
    progress_bars: bool = False,
    warm_start: bool = False,
    say: Callable[[str], None] = print,
    on_history: Callable[[str, int, list[dict[str, Any]]], None] | None = None,
) -> Trained:
    """Every contender with every seed, in order; the finished runs are kept when Ctrl-C stops it
    or when a run fails during training (its reason in ``failure``). With ``warm_start`` each run
    starts from the previous contender's weights (same seed). Without ``progress_bars``, ``say``
    gets one line per finished run.

    After every epoch the whole state, with the ``argv`` that started the run, goes to
    ``out/checkpoint.pt``; ``resume_state`` (a `load_checkpoint`) continues from there to bitwise
    the same results. ``on_history(label, seed, history)`` gets each run's epoch records so
    far after every epoch, and once for a finished run read back from the checkpoint.
    """
    resume = resume_state or {}
    completed: list[dict[str, Any]] = list(resume.get("completed", []))
    checkpoint: dict[str, Any] = {
        "kind": CHECKPOINT_KIND,
        "version": 1,
        "argv": list(argv),
        "completed": completed,
        "current": None,
    }
    trained = Trained([], {})
    previous: dict[int, dict] = {}
    pending = resume.get("current")
    total = len(contenders) * len(seed_list)
    done = len(completed)
    if done > total or (pending is not None and (pending["index"] != done or done == total)):
        raise CheckpointError(
            f"checkpoint: corrupt checkpoint: it records {done} finished run(s)"
            + ("" if pending is None else f" and run {pending['index']} in progress")
            + f", which does not fit this run's {total} run(s)"
        )
    runs = [(c, seed) for c in contenders for seed in seed_list]
    try:  # Ctrl-C anywhere, inside a run or between two, keeps the finished runs
        for index, (c, seed) in enumerate(runs):
            try:
                if index < len(completed):
                    result = _restored(completed[index], c, seed, data, config)
                    if on_history is not None:
                        on_history(c.label, seed, completed[index]["history"])
                else:

                    def on_epoch(
                        state: dict, index: int = index, label: str = c.label, seed: int = seed
                    ) -> None:
                        checkpoint["current"] = {"index": index, "state": state}
                        save_checkpoint(out / CHECKPOINT, checkpoint)
                        if on_history is not None:
                            on_history(label, seed, state["history"])

                    state = pending["state"] if pending and pending["index"] == index else None
                    result = run(
                        data,
                        c,
                        config,
                        seed,
                        progress=progress_bars,
                        init_state=previous.get(seed),
                        keep_model=True,
                        resume=state,
                        on_epoch=on_epoch,
                    )
                    completed.append(
                        {
                            "history": [dataclasses.asdict(r) for r in result.history],
                            "wall_time": result.wall_time,
                            "model": result.trained_model.state_dict(),
                        }
                    )
                    checkpoint["current"] = None
                    save_checkpoint(out / CHECKPOINT, checkpoint)
            except CheckpointError:
                raise
            except ResumeError as exc:
                raise CheckpointError(f"checkpoint: {exc}") from None
            except Exception as exc:  # a failure only training could reveal: keep what finished
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                trained.failure = (
                    f"{c.label} (seed {seed}) failed during training: {type(exc).__name__}"
                    + (f": {reason[:300]}" if reason else "")
                )
                return trained
            if warm_start:
                previous[seed] = clone_state(result.trained_model)
            if seed == seed_list[0]:
                trained.first_models[c.label] = result.trained_model
            result.model = None
            trained.results.append(result)
            if not progress_bars:
                say(f"finished {result.contender} (seed {result.seed}) in {result.wall_time:.1f} s")
    except KeyboardInterrupt:
        trained.interrupted = True
    return trained


def _restored(
    saved: dict, c: Contender, seed: int, data: Dataset, config: TrainConfig
) -> RunResult:
    """A finished run read back from the checkpoint."""
    if len(saved["history"]) != config.epochs:
        raise CheckpointError(
            f"checkpoint: corrupt checkpoint: finished run {c.label} (seed {seed}) records "
            f"{len(saved['history'])} epoch(s), not the run's {config.epochs}"
        )
    model = build_model(data, config, seed, c.dropout)
    result = RunResult(
        c.label, seed, [EpochRecord(**r) for r in saved["history"]], saved["wall_time"], model
    )
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint: the weights of finished run {c.label} (seed {seed}) do not fit the "
            f"model ({str(exc).strip().splitlines()[0][:200]})"
        ) from None
    return result
