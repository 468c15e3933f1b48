"""Checkpoints of a comparison: written atomically after every epoch, validated field by field
when read back, so a resumed run continues to bitwise the same results or stops with one line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from .training import EpochRecord


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message is one line naming the file."""


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KIND = "torchpenalty-checkpoint"


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a temporary file in the same folder, then a rename over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `train_all`, or a one-line `CommandError` saying what is wrong."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, a pickle with foreign objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(
            f"{path}: not a torchpenalty checkpoint (a torch file of another kind)"
        )
    if state.get("version") != 1:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')!r} is not supported"
        )
    problem = _checkpoint_problem(state)
    if problem:
        raise CheckpointError(f"{path}: corrupt checkpoint: {problem}")
    return state


RUN_KEYS = {"epoch", "model", "optimizer", "regularizer", "shuffle", "rng", "history", "elapsed"}
#: the state of runs trained at once (`batched.run_stack`): one history and shuffle each
STACK_KEYS = RUN_KEYS - {"shuffle", "history"} | {"shuffles", "histories", "members"}


def _checkpoint_problem(state: dict) -> str | None:
    """What is missing or malformed in a checkpoint's content, or None: every field `train_all`
    and `run` read is checked before anything is trained."""
    argv = state.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "'argv' must be the list of the run's arguments"
    completed = state.get("completed")
    if not isinstance(completed, list):
        return "'completed' must be a list of finished runs"
    for i, run_state in enumerate(completed):
        if not isinstance(run_state, dict) or not {"history", "wall_time", "model"} <= set(
            run_state
        ):
            return f"finished run {i} lacks its history, wall time or model"
        if not _history_ok(run_state["history"]) or not _weights_ok(run_state["model"]):
            return f"finished run {i} has a malformed history or model"
    stacks = state.get("stacks")
    if stacks is not None and not (
        isinstance(stacks, list)
        and all(isinstance(st, list) and st and all(type(i) is int for i in st) for st in stacks)
    ):
        return "'stacks' must be lists of run indices"
    current = state.get("current")
    if current is None:
        return None
    if not isinstance(current, dict) or not isinstance(current.get("index"), int):
        return "'current' must name the run in progress by its index"
    run_state = current.get("state")
    members = current.get("members", 1)
    if isinstance(members, bool) or not isinstance(members, int) or members < 1:
        return "'current' must give the number of runs trained at once as a whole number"
    keys = RUN_KEYS if members == 1 else STACK_KEYS
    if not isinstance(run_state, dict) or not set(run_state) >= keys:
        missing = sorted(keys - set(run_state)) if isinstance(run_state, dict) else ["all"]
        return f"the run in progress lacks {', '.join(missing)}"
    if not isinstance(run_state["epoch"], int) or run_state["epoch"] < 1:
        return "the run in progress has no valid epoch number"
    histories = [run_state["history"]] if members == 1 else run_state["histories"]
    shuffles = [run_state["shuffle"]] if members == 1 else run_state["shuffles"]
    if not isinstance(histories, list) or len(histories) != members:
        return f"the runs in progress must have {members} histories"
    if not all(_history_ok(h) for h in histories) or not _weights_ok(run_state["model"]):
        return "the run in progress has a malformed history or model"
    if not isinstance(shuffles, list) or len(shuffles) != members:
        return f"the runs in progress must have {members} shuffle states"
    for key, value in [*(("shuffle", t) for t in shuffles), ("rng", run_state["rng"])]:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.uint8:
            return f"the run in progress has a malformed random state ({key})"
    return None


def _history_ok(history: object) -> bool:
    fields = {f.name for f in dataclasses.fields(EpochRecord)}
    return isinstance(history, list) and all(
        isinstance(r, dict) and set(r) == fields for r in history
    )


def _weights_ok(weights: object) -> bool:
    return isinstance(weights, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    )
