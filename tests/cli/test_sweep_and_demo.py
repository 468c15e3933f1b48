"""``torchpenalty sweep`` and ``torchpenalty demo weight-decay`` end to end."""

from __future__ import annotations

import pytest

from .helpers import SMALL, assert_png, read_results, run_cli


def test_sweep_picks_lambda_on_validation_not_test(tmp_path, capsys):
    code = run_cli("sweep", *SMALL, "--reg", "l2", "--lams", "1e-4:1e-1:4", "--out", tmp_path)
    assert code == 0
    results = read_results(tmp_path)
    rows = results["summary"]
    assert [r["lam"] for r in rows] == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1])
    best_val = max(rows, key=lambda r: (r["val_metric"], -r["val_loss"]))
    assert results["chosen"]["lam"] == best_val["lam"]
    assert results["chosen"]["test_metric"] == best_val["test_metric"]
    assert results["chosen"]["penalty"] == repr(
        best_val["lam"] * __import__("torchpenalty").L2(1.0)
    )
    assert "chosen on the validation split: lambda =" in capsys.readouterr().out
    assert_png(tmp_path / "sweep.png")
    norms = [r["weight_norm"] for r in rows]
    assert norms[-1] < norms[0]  # stronger decay, smaller weights


def test_sweep_warm_start_and_list_grid(tmp_path):
    code = run_cli(
        "sweep",
        *SMALL,
        "--reg",
        "elastic_net(l1=1, l2=4)",
        "--lams",
        "0,1e-3",
        "--warm-start",
        "--mode",
        "proximal",
        "--out",
        tmp_path,
    )
    assert code == 0
    results = read_results(tmp_path)
    assert [r["lam"] for r in results["summary"]] == [0.0, 1e-3]
    assert results["penalty"] == "elastic_net(l1=1.0, l2=4.0)"


def test_demo_weight_decay_reproduces_the_effect(tmp_path, capsys):
    assert run_cli("demo", "weight-decay", "--quiet", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert "without decay: train loss" in out and "effect reproduced" in out
    assert "squared error / 2" in out  # the book's loss, so lambda = 3 is the book's lambda = 3
    results = read_results(tmp_path)
    assert all(results["checks"].values())
    plain, decayed = (r["final"] for r in results["runs"])
    assert decayed["test_loss"] * 100 < plain["test_loss"]  # orders of magnitude
    assert plain["train_loss"] < 1e-6 * plain["test_loss"]
    # the loss is the squared error / 2 while the metric is the mean squared error
    assert plain["test_loss"] == pytest.approx(plain["test_metric"] / 2, rel=1e-5)
    # d2l.ai reports |w| ~ 13.9 without decay and ~ 0.38 with lambda = 3
    assert 10 < plain["weight_norm"] < 18 and 0.2 < decayed["weight_norm"] < 0.6
    assert_png(tmp_path / "demo.png")


def test_demo_fails_loudly_when_the_effect_is_absent(tmp_path, capsys):
    # one epoch at a tiny learning rate: nothing over-fits, so the checks must fail
    code = run_cli(
        "demo", "weight-decay", "--epochs", "1", "--lr", "1e-6", "--quiet", "--out", tmp_path
    )
    assert code == 1
    assert "the weight-decay effect is absent" in capsys.readouterr().err
    assert not all(read_results(tmp_path)["checks"].values())
