"""Checkpoints: a killed run resumes to bitwise the same weights and numbers; bad checkpoint
files give one line naming the file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from .helpers import run_cli

#: long enough that the run is caught mid-run by a poll every 20 ms (an epoch here takes tens of
#: milliseconds), short enough to keep the test near 15 s
EPOCHS = 40
ARGS = [
    "compare",
    "--quiet",
    "--hidden",
    "16",
    "--train-size",
    "300",
    "--epochs",
    str(EPOCHS),
    "--reg",
    "none",
    "--reg",
    "l1(1e-3)",
    "--mode",
    "proximal",
]


def cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "torchpenalty", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        **kwargs,
    )


def kill_when(proc: subprocess.Popen, checkpoint, index: int) -> dict:
    """SIGKILL ``proc`` once its checkpoint shows run ``index`` (or the stack it starts) at
    epoch 5 or later; the checkpoint it left."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            state = torch.load(checkpoint, weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            state = None
        current = state and state["current"]
        if current and current["index"] == index and current["state"]["epoch"] >= 5:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL
    return torch.load(checkpoint, weights_only=True)  # loads as plain tensors and containers


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_weights_and_numbers(tmp_path):
    """none and l1(1e-3) train at once (one stack), then weight_decay=1e-3 alone: killed in the
    middle of the stack, resumed in a new process, killed again while the run after the stack
    trains, resumed again; the same numbers and weights as a run never killed."""
    args = [*ARGS, "--weight-decay", "1e-3"]
    straight = cli(*args, "--out", tmp_path / "straight")
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    state = kill_when(cli(*args, "--out", tmp_path / "killed"), checkpoint, 0)
    assert state["completed"] == [] and state["current"]["members"] == 2
    assert state["stacks"] == [[0, 1], [2]] and state["current"]["state"]["epoch"] < EPOCHS
    state = kill_when(cli("compare", "--resume", checkpoint, "--quiet"), checkpoint, 2)
    assert len(state["completed"]) == 2 and state["current"].get("members", 1) == 1
    assert not (tmp_path / "killed" / "results.json").exists()

    resumed = cli("compare", "--resume", checkpoint, "--quiet")
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    _, err = straight.communicate(timeout=120)  # reads and closes its pipes
    assert straight.returncode == 0, err

    a, b = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("killed", "straight"))
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k} for r in rows]  # noqa: E731
    assert strip(a["summary"]) == strip(b["summary"])
    assert (tmp_path / "killed" / "history.csv").read_text() == (
        tmp_path / "straight" / "history.csv"
    ).read_text()
    ca, cb = (
        torch.load(tmp_path / d / "checkpoint.pt", weights_only=True)
        for d in ("killed", "straight")
    )
    for x, y in zip(ca["completed"], cb["completed"], strict=True):
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])


def _truncated(path):
    run_cli(
        "compare",
        "--epochs",
        "1",
        "--hidden",
        "8",
        "--quiet",
        "--reg",
        "none",
        "--out",
        path.parent,
    )
    data = (path.parent / "checkpoint.pt").read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such checkpoint file"),
        (_truncated, "not a readable checkpoint"),
        (lambda p: p.write_bytes(os.urandom(2048)), "not a readable checkpoint"),
        (lambda p: torch.save({"weight": torch.ones(2)}, p), "not a torchpenalty checkpoint"),
        (lambda p: torch.save({"kind": "torchpenalty-checkpoint", "version": 99}, p), "version 99"),
    ],
    ids=["missing", "truncated", "corrupted", "foreign", "future"],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, capsys, make, message):
    path = tmp_path / "ck" / "bad.pt"
    path.parent.mkdir()
    make(path)
    capsys.readouterr()
    assert run_cli("compare", "--resume", path) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchpenalty: error:") and message in err and "bad.pt" in err
    assert len(err.splitlines()) == 1


def test_resume_refuses_another_command(tmp_path, capsys):
    run_cli(
        "compare", "--epochs", "1", "--hidden", "8", "--quiet", "--reg", "none", "--out", tmp_path
    )
    assert run_cli("sweep", "--resume", tmp_path / "checkpoint.pt") == 2
    assert "a checkpoint of 'compare', not 'sweep'" in capsys.readouterr().err
