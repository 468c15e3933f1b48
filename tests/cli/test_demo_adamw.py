"""``torchpenalty demo adamw``: the learning rate x weight decay grid, Adam's coupled L2 against
AdamW, each cell a real torch.optim run; outputs, honesty of the verdict, resume, bad flags."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.models import build

from .helpers import assert_png, read_results, run_cli

GRID = ["--lrs", "1e-3,1e-2", "--decays", "1e-3,1", "--epochs", "2", "--quiet"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("adamw")
    assert run_cli("demo", "adamw", *GRID, "--out", out) == 0
    return out


def test_grid_outputs(demo):
    results = read_results(demo)
    assert results["learning_rates"] == [1e-3, 1e-2] and results["weight_decays"] == [1e-3, 1.0]
    assert len(results["runs"]) == 2 * 2 * 2
    for opt in ("adam", "adamw"):
        for field in ("test_loss", "test_metric"):
            grid = results["grids"][opt][field]
            assert len(grid) == 2 and all(len(row) == 2 for row in grid)
    assert_png(demo / "demo.png")
    assert (demo / "history.csv").exists() and (demo / "checkpoint.pt").exists()
    # the decays of one optimizer and learning rate train at once
    assert [sorted(r["contender"] for r in s) for s in results["stacks"]] == [
        [f"{opt} lr={lr} wd=0.001", f"{opt} lr={lr} wd=1"]
        for opt in ("adam", "adamw")
        for lr in ("0.001", "0.01")
    ]


def test_each_cell_is_the_torch_optim_run(demo):
    """The adam cell at (lr, wd) is torch.optim.Adam(lr, weight_decay=wd) on the MLP, and the
    adamw cell AdamW: rebuilt here from the seed, the same test loss."""
    results = read_results(demo)
    data = datasets.load_digits()
    for opt, cls in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        torch.manual_seed(0)  # the seed of the run, then the model, as the CLI builds it
        model = build("mlp", data, hidden=(200, 100))
        optimizer = cls(model.parameters(), lr=1e-2, weight_decay=1.0)
        shuffle = torch.Generator().manual_seed(0)
        for _ in range(2):
            order = torch.randperm(len(data.x_train), generator=shuffle)
            for i in range(0, len(order), 64):
                idx = order[i : i + 64]
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(model(data.x_test), data.y_test).item()
        assert results["grids"][opt]["test_loss"][1][1] == pytest.approx(loss, rel=1e-5)


def test_the_verdict_follows_the_numbers(demo, capsys):
    results = read_results(demo)
    found, verdict = results["findings"], results["verdict"]
    for opt in ("adam", "adamw"):
        best = found[opt]["best"]
        val = results["grids"][opt]["val_loss"]
        i, j = (
            results["learning_rates"].index(best["lr"]),
            results["weight_decays"].index(best["weight_decay"]),
        )
        assert val[i][j] == min(min(row) for row in val)  # chosen on validation, never test
    a, w = found["adam"]["distinct_best_decays"], found["adamw"]["distinct_best_decays"]
    line = verdict[2]
    if w < a:
        assert "depends less on the learning rate with AdamW" in line
    elif w > a:
        assert "does not show their separability" in line
    else:
        assert "does not tell them apart" in line
    assert "1 seed(s)" in verdict[-1] and "no evidence" in verdict[-1]


def test_resume_reads_back_the_finished_grid(demo, tmp_path, capsys):
    assert run_cli("demo", "adamw", "--resume", demo / "checkpoint.pt", "--quiet") == 0
    assert "lr \\ wd" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "adamw", "--lam", "3"], "--lam applies to demo weight-decay, not adamw"),
        (["demo", "weight-decay", "--lrs", "1e-3,1e-2"], "--lrs applies to demo adamw"),
        (["demo", "weight-decay", "--seeds", "2"], "--seeds applies to demo adamw"),
        (["demo", "adamw", "--decays", "1e-3"], "at least 2 strengths"),
    ],
)
def test_flags_of_another_experiment_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(*argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
