"""Runs that differ only in their penalty and seed train at once (one stacked model) by
default: the same numbers as one after another (``--sequential``), the same choice of
strength, and the output says which runs trained together."""

from __future__ import annotations

import pytest

from .helpers import SMALL, read_results, run_cli

GRID = ["--lams", "1e-4:1e-1:4", "--seeds", "2"]


def summary_by_label(results):
    return {row["contender"]: row for row in results["summary"]}


@pytest.mark.parametrize("reg", ["l2", "l1@proximal"])
def test_a_batched_sweep_agrees_with_the_sequential_one(tmp_path, capsys, reg):
    flags = ["sweep", "--reg", reg, *GRID, *SMALL, "--epochs", "4"]
    assert run_cli(*flags, "--out", tmp_path / "batched") == 0
    assert "trained at once: 8 of 8 runs, in stacks of 8" in capsys.readouterr().out
    assert run_cli(*flags, "--sequential", "--out", tmp_path / "alone") == 0
    assert "trained at once" not in capsys.readouterr().out
    batched, alone = read_results(tmp_path / "batched"), read_results(tmp_path / "alone")
    assert len(batched["stacks"]) == 1 and alone["stacks"] == []
    a, b = summary_by_label(batched), summary_by_label(alone)
    for label, row in b.items():
        assert abs(a[label]["val_metric"] - row["val_metric"]) <= 0.01, label
        assert a[label]["zero_fraction"] == pytest.approx(row["zero_fraction"], abs=0.01)
    assert batched["chosen"]["lam"] == alone["chosen"]["lam"]


def test_a_memory_budget_cuts_the_runs_into_stacks(tmp_path, capsys):
    from torchpenalty.experiments import batched, data
    from torchpenalty.experiments.training import TrainConfig

    digits = data.load_digits().subsample_train(200)
    per_member = batched.member_bytes(digits, TrainConfig(hidden=(16,)))
    budget = 3 * per_member / 2**20  # MiB: three runs per stack
    flags = ["sweep", "--reg", "l2", *GRID, *SMALL, "--epochs", "1", "--batch-memory", budget]
    assert run_cli(*flags, "--out", tmp_path) == 0
    stacks = read_results(tmp_path)["stacks"]
    assert [len(s) for s in stacks] == [3, 3, 2]
    assert "trained at once: 8 of 8 runs, in stacks of 3, 3, 2" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:TargetSparsity:RuntimeWarning")
def test_compare_stacks_what_shares_an_optimizer_and_says_what_trained_alone(tmp_path, capsys):
    flags = ["compare", *SMALL, "--seeds", "2", "--epochs", "1"]
    assert run_cli(*flags, "--out", tmp_path) == 0
    out = capsys.readouterr().out
    # none, l2(1e-3) and l1(1e-4) share one optimizer; weight_decay=0.001 has its own decay
    assert "trained at once: 8 of 8 runs, in stacks of 6, 2" in out
    stacks = read_results(tmp_path)["stacks"]
    assert [sorted({r["contender"] for r in s}) for s in stacks] == [
        ["l1(1e-4)", "l2(1e-3)", "none"],
        ["weight_decay=0.001"],
    ]
    # one seed: weight_decay=0.001 has no run to share a stack with, and the output names it
    assert run_cli("compare", *SMALL, "--epochs", "1", "--out", tmp_path / "one") == 0
    assert "trained at once: 3 of 4 runs, in stacks of 3; alone: weight_decay=0.001" in (
        capsys.readouterr().out
    )
    # a sparsity target trains alone
    flags = ["compare", *SMALL, "--epochs", "1", "--reg", "group_lasso(1e-3)@proximal"]
    assert run_cli(*flags, "--reg", "none", "--target", "units=0.5", "--out", tmp_path / "t") == 0
    assert read_results(tmp_path / "t")["stacks"] == []


def test_a_stack_that_fails_keeps_the_runs_that_finished_before_it(tmp_path, capsys, monkeypatch):
    from torchpenalty.experiments import runner

    def fails(*args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runner, "run_stack", fails)
    # dropout(0.2) first, alone (its own model); then none and l2(1e-3) at once, failing
    flags = ["compare", *SMALL, "--reg", "dropout(0.2)", "--reg", "none", "--reg", "l2(1e-3)"]
    assert run_cli(*flags, "--out", tmp_path) == 1
    err = capsys.readouterr().err
    assert "none (seed 0) (with 1 more runs in its stack) failed during training" in err
    assert [r["contender"] for r in read_results(tmp_path)["summary"]] == ["dropout(0.2)"]
