"""Every contender is validated before the first one trains; a failure only training can reveal
keeps the finished runs; every bad input is one line with exit 2; output files are strict."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from torchpenalty.cli import argtypes
from torchpenalty.experiments import runner
from torchpenalty.experiments.checkpoints import CHECKPOINT_KIND
from torchpenalty.experiments.training import EpochRecord

from ..experiments.files import write_npz
from .helpers import SMALL, read_history, read_results, run_cli


def one_line_error(capsys, message: str) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "finished" not in captured.out  # nothing trained before the error
    return err


def usage_error(capsys, message: str, *argv) -> None:
    with pytest.raises(SystemExit) as info:
        run_cli(*argv)
    assert info.value.code == 2
    one_line_error(capsys, message)


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--reg", "l2(1e-3)", "--reg", "group_lasso(1e-3, groups=cols) + group_lasso(1e-3)"],
            "has no closed form",
        ),
        (["--reg", "l2(1e-3)", "--reg", "l2(1e39)"], "overflows its dtype float32"),
        (["--reg", "l2(1e-3)", "--optimizer", "sparseadam"], "sparse gradients only"),
        (["--reg", "l2(1e-3)", "--optimizer", "lbfgs"], "cannot be exact with LBFGS"),
    ],
)
def test_compare_validates_every_contender_before_training(tmp_path, capsys, argv, message):
    out = tmp_path / "o"
    usage_error(capsys, message, "compare", *SMALL, "--mode", "proximal", *argv, "--out", out)
    assert not out.exists()  # nothing was started, so nothing was written


def test_an_overflowing_weight_decay_is_refused_before_training(tmp_path, capsys):
    argv = ["compare", *SMALL, "--reg", "none", "--weight-decay", "1e39", "--out", tmp_path / "o"]
    usage_error(capsys, "--weight-decay 1e+39", *argv)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--lams", "1e30,1e39"], "overflows its dtype float32"),
        (["--reg", "elastic_net(l1=1e300, l2=1)", "--lams", "1e10,1e20"], "--lams"),
        (["--reg", "group_lasso + group_lasso(groups=cols)", "--mode", "proximal"], "closed"),
    ],
)
def test_sweep_validates_every_strength_before_training(tmp_path, capsys, argv, message):
    usage_error(capsys, message, "sweep", *SMALL, *argv, "--out", tmp_path / "o")


def test_lbfgs_trains_with_a_closure_in_loss_and_grad_modes(tmp_path):
    for mode in ("loss", "grad"):
        out = tmp_path / mode
        code = run_cli(
            "compare", *SMALL, "--optimizer", "lbfgs", "--lr", "0.5",
            "--reg", "l2(1e-3)", "--mode", mode, "--out", out,
        )  # fmt: skip
        assert code == 0
        assert np.isfinite(read_results(out)["summary"][0]["test_loss"])


def test_a_failure_during_training_keeps_the_finished_runs(tmp_path, capsys, monkeypatch):
    """Something only training reveals (here: the second run dies as if out of memory); runs
    one after another (``--sequential``: stacked, the two would train at once)."""
    real_run = runner.run

    def run_that_fails_second(data, contender, *args, **kwargs):
        if contender.label.startswith("l2"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
        return real_run(data, contender, *args, **kwargs)

    monkeypatch.setattr(runner, "run", run_that_fails_second)
    out = tmp_path / "o"
    code = run_cli(
        "compare", *SMALL, "--sequential", "--reg", "none", "--reg", "l2(1e-3)", "--out", out
    )
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "l2(1e-3) (seed 0) failed during training: RuntimeError: CUDA out of memory" in err
    results = read_results(out)
    assert [r["contender"] for r in results["summary"]] == ["none"]
    assert results["failure"].startswith("l2(1e-3) (seed 0) failed")
    assert {r["contender"] for r in read_history(out)} == {"none"}
    assert (out / "curves.png").is_file() and (out / "weights.png").is_file()


# -- CSV labels ---------------------------------------------------------------------------------
CSV_FLAGS = ["--epochs", "2", "--hidden", "16", "--quiet"]


def labelled_csv(path, labels):
    rng = np.random.default_rng(0)
    rows = [f"{rng.normal():.5f},{rng.normal():.5f},{label}" for label in labels]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    return f"csv:{path}"


def test_csv_labels_become_classes_by_value_never_by_size(tmp_path):
    data = labelled_csv(tmp_path / "ids.csv", [0, 10**12] * 15)
    out = tmp_path / "o"
    code = run_cli(
        "compare", *CSV_FLAGS, "--data", data, "--target", "label",
        "--task", "classification", "--reg", "none", "--out", out,
    )  # fmt: skip
    assert code == 0
    summary = read_results(out)["data"]
    assert summary["classes"] == 2 and summary["class_labels"] == [0, 10**12]


def test_csv_years_are_classes_and_prices_are_regression(tmp_path):
    years = labelled_csv(tmp_path / "years.csv", [1990 + i % 4 for i in range(40)])
    out = tmp_path / "y"
    assert run_cli("compare", *CSV_FLAGS, "--data", years, "--target", "label", "--out", out) == 0
    summary = read_results(out)["data"]
    assert summary["task"] == "classification" and summary["class_labels"] == [
        1990,
        1991,
        1992,
        1993,
    ]
    prices = labelled_csv(tmp_path / "prices.csv", [100_000 + 997 * i for i in range(40)])
    out = tmp_path / "p"
    assert run_cli("compare", *CSV_FLAGS, "--data", prices, "--target", "label", "--out", out) == 0
    assert read_results(out)["data"]["task"] == "regression"  # many values: --task auto


def test_csv_with_too_many_classes_is_one_line(tmp_path, capsys):
    prices = labelled_csv(tmp_path / "prices.csv", list(range(250_000, 250_000 + 5 * 1200)))
    code = run_cli(
        "compare", *CSV_FLAGS, "--data", prices, "--target", "label",
        "--task", "classification", "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 2
    one_line_error(capsys, "too many classes")


# -- sweep strengths ----------------------------------------------------------------------------
def test_sweep_keeps_close_strengths_apart(tmp_path):
    code = run_cli("sweep", *SMALL, "--lams", "0.001,0.0010001", "--out", tmp_path)
    assert code == 0
    summary = read_results(tmp_path)["summary"]
    assert [r["lam"] for r in summary] == [0.001, 0.0010001]
    assert len({r["contender"] for r in summary}) == 2
    assert all(r["seeds"] == [0] for r in summary)  # not merged as if they were seeds


@pytest.mark.parametrize("lams", ["0.001,0.0010", "1e-3:1e-3:3"])
def test_sweep_refuses_repeated_strengths(tmp_path, capsys, lams):
    usage_error(capsys, "repeated strengths", "sweep", *SMALL, "--lams", lams)


# -- bad inputs ---------------------------------------------------------------------------------
def test_out_that_cannot_be_a_folder_is_one_line(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out, message in [
        (a_file, "is a file, not a folder"),
        (a_file / "under", "cannot write there"),
        ("/proc/torchpenalty-out", "cannot write there"),
    ]:
        assert run_cli("compare", *SMALL, "--out", out) == 2
        one_line_error(capsys, f"--out {out}")
        assert message


@pytest.mark.parametrize(
    "arrays, message",
    [
        (
            {"x_test": np.zeros((0, 28, 28), np.uint8), "y_test": np.zeros(0, np.uint8)},
            "test image",
        ),
        (
            {"x_train": np.zeros((1, 28, 28), np.uint8), "y_train": np.zeros(1, np.uint8)},
            "needs at least 2 training image",
        ),
        ({"y_train": np.linspace(0, 9, 60)}, "labels must be whole numbers"),
    ],
)
def test_degenerate_mnist_files_are_one_line(tmp_path, capsys, arrays, message):
    data = f"mnist:{write_npz(tmp_path / 'm.npz', **arrays)}"
    assert run_cli("compare", *SMALL, "--data", data, "--out", tmp_path / "o") == 2
    one_line_error(capsys, message)


HISTORY = [
    dataclasses.asdict(EpochRecord(e, 1.0, 0.0, 1.0, 0.5, 1.0, 0.5, 1.0, 0.0, 0, float("nan")))
    for e in (1, 2)
]


BAD_WEIGHTS = {"0.weight": torch.zeros(2)}


def run_state(epoch):
    """A run-in-progress state whose fields all have the right types."""
    return {
        "epoch": epoch,
        "model": {},
        "optimizer": {},
        "regularizer": None,
        "shuffle": torch.Generator().get_state(),
        "rng": torch.get_rng_state(),
        "history": HISTORY[:1],
        "elapsed": 1.0,
    }


def checkpoint_with(tmp_path, **content):
    state = {"kind": CHECKPOINT_KIND, "version": 1, "argv": ["compare", *SMALL]}
    state.update({"completed": [], "current": None, **content})
    path = tmp_path / "checkpoint.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        ({"argv": "compare"}, "'argv' must be the list"),
        ({"completed": [{"history": []}]}, "finished run 0 lacks"),
        ({"current": {"index": 0, "state": {"epoch": 1}}}, "the run in progress lacks"),
        ({"completed": [{"history": HISTORY, "wall_time": 1.0, "model": BAD_WEIGHTS}]},
         "do not fit the model"),
        ({"completed": [{"history": [], "wall_time": 1.0, "model": {}}]}, "records 0 epoch(s)"),
        ({"current": {"index": 0, "state": run_state(epoch=99)}}, "does not fit a run of 2 epochs"),
        ({"completed": [{"history": [], "wall_time": 1.0, "model": {}}] * 9},
         "which does not fit this run's 4 run(s)"),
        ({"argv": ["compare", "--epochs", "zero"]}, "the arguments it records do not parse"),
    ],
)  # fmt: skip
def test_corrupt_checkpoint_content_is_one_line(tmp_path, capsys, content, message):
    path = checkpoint_with(tmp_path, **content)
    assert run_cli("compare", "--resume", path) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_a_model_too_large_for_memory_is_one_line(tmp_path, capsys):
    assert run_cli("compare", *SMALL[:-3], "--hidden", "2000000000", "--out", tmp_path) == 2
    one_line_error(capsys, "the model cannot be built here")


def test_absurd_seed_counts_are_a_usage_error(capsys):
    usage_error(capsys, "expected at most 1000 seeds", "compare", "--seeds", "1000000000")


@pytest.mark.parametrize("seed", ["-1", str(2**64), "1.5"])
def test_out_of_range_seed_is_a_usage_error(capsys, seed):
    usage_error(capsys, "argument --seed", "compare", "--seed", seed)


def test_seeds_past_the_range_are_one_line(tmp_path, capsys):
    argv = ["compare", *SMALL, "--seed", str(argtypes.MAX_SEED), "--seeds", "2"]
    assert run_cli(*argv, "--out", tmp_path) == 2
    one_line_error(capsys, "goes past")


@pytest.mark.parametrize(
    "device, message",
    [("meta", "cannot train a model"), ("nosuch", "unknown device"), ("cuda:99", "not usable")],
)
def test_unsupported_device_is_a_usage_error(capsys, device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 99:
        pytest.skip("a machine with 100 GPUs")
    usage_error(capsys, message, "compare", "--device", device)


# -- output files and progress ------------------------------------------------------------------
def strict_load(path):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_results_json_is_strict_json(tmp_path):
    # elementwise and group contenders: "zero groups" is missing (not NaN) for some
    argv = ["--reg", "none", "--reg", "group_lasso(1e-3)", "--mode", "proximal"]
    assert run_cli("compare", *SMALL, *argv, "--out", tmp_path / "c") == 0
    results = strict_load(tmp_path / "c" / "results.json")
    assert results["summary"][0]["zero_groups"] is None
    assert run_cli("sweep", *SMALL, "--lams", "0,1e-3", "--out", tmp_path / "s") == 0
    strict_load(tmp_path / "s" / "results.json")


def test_without_a_terminal_progress_is_one_line_per_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torchpenalty", "compare", *SMALL[:-1], "--epochs", "5",
         "--reg", "none", "--reg", "l2(1e-3)", "--out", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "epoch/s" not in proc.stderr and "it/s" not in proc.stderr and "\r" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 1  # at most a library warning
    finished = [line for line in proc.stdout.splitlines() if line.startswith("finished")]
    assert [line.split(" (")[0] for line in finished] == ["finished none", "finished l2(1e-3)"]
