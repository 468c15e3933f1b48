"""Training every contender of a comparison with every seed: checkpointed after every epoch,
resumable, and keeping the finished runs when Ctrl-C or a failure stops it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from .batched import run_stack
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
    #: the (label, seed) runs of each stack trained at once (runs trained alone: none)
    stacks: list[list[tuple[str, int]]] = dataclasses.field(default_factory=list)


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
    stacks: Sequence[Sequence[int]] | None = None,
) -> Trained:
    """Every contender with every seed, in order; the finished runs are kept when Ctrl-C stops it
    or when a run fails during training (its reason in ``failure``). With ``warm_start`` each run
    starts from the previous contender's weights (same seed). Without ``progress_bars``, ``say``
    gets one line per finished run.

    After every epoch the whole state, with the ``argv`` that started the run, goes to
    ``out/checkpoint.pt``; ``resume_state`` (a `load_checkpoint`) continues from there to bitwise
    the same results. ``on_history(label, seed, history)`` gets each run's epoch records so
    far after every epoch, and once for a finished run read back from the checkpoint.
    ``stacks`` (`batched.plan`) cuts the runs, in order, into groups trained at once as one
    `Stacked` model (`batched.run_stack`); by default each run trains alone.
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
    if resume_state is not None:
        # a resumed run groups its runs as it did at first (each alone before stacks existed)
        stacks = resume.get("stacks")
    stacks = [list(s) for s in stacks] if stacks is not None else [[i] for i in range(total)]
    if [i for s in stacks for i in s] != list(range(total)):
        raise CheckpointError(
            f"checkpoint: corrupt checkpoint: its stacks of runs do not cut this run's {total} "
            "run(s) in order"
        )
    checkpoint["stacks"] = stacks
    if pending is not None and pending.get("members", 1) != len(
        next((s for s in stacks if s[0] == pending["index"]), [])
    ):
        raise CheckpointError(
            f"checkpoint: corrupt checkpoint: the runs in progress from run {pending['index']} "
            "are not one of its stacks"
        )
    try:  # Ctrl-C anywhere, inside a run or between two, keeps the finished runs
        for stack in stacks:
            first = stack[0]
            label = runs[first][0].label
            try:
                if first < len(completed):
                    results = [_restored(completed[i], *runs[i], data, config) for i in stack]
                    for i in stack:
                        if on_history is not None:
                            on_history(runs[i][0].label, runs[i][1], completed[i]["history"])
                else:
                    state = pending["state"] if pending and pending["index"] == first else None
                    results = _train(
                        data,
                        config,
                        [runs[i] for i in stack],
                        first,
                        state,
                        previous,
                        progress_bars,
                        checkpoint,
                        out,
                        on_history,
                    )
                    for result in results:
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
                seed = runs[first][1]
                together = (
                    f" (with {len(stack) - 1} more runs in its stack)" if len(stack) > 1 else ""
                )
                trained.failure = (
                    f"{label} (seed {seed}){together} failed during training: "
                    f"{type(exc).__name__}" + (f": {reason[:300]}" if reason else "")
                )
                return trained
            if len(stack) > 1:
                trained.stacks.append([(runs[i][0].label, runs[i][1]) for i in stack])
            for result in results:
                if warm_start:
                    previous[result.seed] = clone_state(result.trained_model)
                if result.seed == seed_list[0]:
                    trained.first_models[result.contender] = result.trained_model
                result.model = None
                trained.results.append(result)
                if not progress_bars:
                    together = f", {len(stack)} runs at once" if len(stack) > 1 else ""
                    say(
                        f"finished {result.contender} (seed {result.seed}) in "
                        f"{result.wall_time:.1f} s{together}"
                    )
    except KeyboardInterrupt:
        trained.interrupted = True
    return trained


def _train(
    data: Dataset,
    config: TrainConfig,
    members: list[tuple[Contender, int]],
    index: int,
    state: dict | None,
    previous: dict[int, dict],
    progress_bars: bool,
    checkpoint: dict[str, Any],
    out: Path,
    on_history: Callable[[str, int, list[dict[str, Any]]], None] | None,
) -> list[RunResult]:
    """Train ``members`` (runs ``index``, ``index + 1``, ...): alone, or as one stack;
    checkpointed after every epoch."""

    def on_epoch(saved: dict) -> None:
        checkpoint["current"] = {"index": index, "members": len(members), "state": saved}
        save_checkpoint(out / CHECKPOINT, checkpoint)
        if on_history is not None:
            if len(members) == 1:
                on_history(members[0][0].label, members[0][1], saved["history"])
            else:
                for (c, seed), history in zip(members, saved["histories"], strict=True):
                    on_history(c.label, seed, history)

    if len(members) > 1:
        return run_stack(
            data, members, config, progress=progress_bars, resume=state, on_epoch=on_epoch
        )
    c, seed = members[0]
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
    return [result]


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
