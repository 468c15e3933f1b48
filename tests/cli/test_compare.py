"""``torchpenalty compare`` end to end on small settings: the table, the files, the numbers."""

from __future__ import annotations

import statistics

import pytest

from .helpers import SMALL, assert_png, read_history, read_results, run_cli


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    argv = [
        "compare",
        *SMALL,
        "--reg",
        "none",
        "--reg",
        "l2(1e-3)",
        "--reg",
        "l1(1e-4)",
        "--weight-decay",
        "1e-3",
        "--seeds",
        "2",
        "--out",
        out,
    ]
    return out, run_cli(*argv)


def test_exit_code_and_files(compared):
    out, code = compared
    assert code == 0
    for name in ("curves.png", "weights.png"):
        assert_png(out / name)


def test_table_is_printed(tmp_path, capsys):
    assert run_cli("compare", *SMALL, "--reg", "none", "--reg", "l2(1e-2)", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("regularizer"))
    for column in (
        "train data loss",
        "penalty",
        "test loss",
        "test accuracy",
        "weight L2",
        "zeros",
        "time (s)",
    ):
        assert column in header
    assert "\nnone " in out and "\nl2(1e-2) " in out


def test_results_json_records_flags_versions_and_seeds(compared):
    out, _ = compared
    results = read_results(out)
    assert results["command"] == "compare" and results["seeds"] == [0, 1]
    assert results["flags"]["epochs"] == 2 and results["flags"]["reg"] == [
        "none",
        "l2(1e-3)",
        "l1(1e-4)",
    ]
    assert {"torch", "torchpenalty", "numpy", "scikit-learn", "python"} <= set(results["versions"])
    assert [c["label"] for c in results["contenders"]] == [
        "none",
        "l2(1e-3)",
        "l1(1e-4)",
        "weight_decay=0.001",
    ]
    assert results["data"]["train"] == 200 and results["interrupted"] is False
    assert len(results["runs"]) == 8


def test_summary_is_the_mean_of_the_last_epochs_in_history(compared):
    out, _ = compared
    results = read_results(out)
    history = read_history(out)
    for row in results["summary"]:
        last = [
            float(h["test_loss"])
            for h in history
            if h["contender"] == row["contender"] and h["epoch"] == "2"
        ]
        assert len(last) == 2
        assert row["test_loss"] == pytest.approx(statistics.fmean(last), rel=1e-12)
        assert row["test_loss_std"] == pytest.approx(statistics.stdev(last), rel=1e-9)
    by_label = {r["contender"]: r for r in results["summary"]}
    assert by_label["none"]["penalty"] == 0.0
    assert by_label["l2(1e-3)"]["penalty"] > 0 and by_label["weight_decay=0.001"]["penalty"] > 0
    assert 0.0 <= by_label["l1(1e-4)"]["test_metric"] <= 1.0


def test_history_has_one_row_per_epoch_and_run(compared):
    out, _ = compared
    history = read_history(out)
    assert len(history) == 4 * 2 * 2
    assert set(history[0]) >= {
        "contender",
        "seed",
        "epoch",
        "train_loss",
        "penalty",
        "val_loss",
        "val_metric",
        "test_loss",
        "test_metric",
        "weight_norm",
        "zero_fraction",
    }


def test_same_flags_same_numbers(tmp_path):
    argv = ["compare", *SMALL, "--reg", "l1(1e-3)", "--mode", "proximal"]
    assert run_cli(*argv, "--out", tmp_path / "a") == 0
    assert run_cli(*argv, "--out", tmp_path / "b") == 0
    strip = lambda rows: [{k: v for k, v in r.items() if "time" not in k} for r in rows]  # noqa: E731
    assert strip(read_results(tmp_path / "a")["summary"]) == strip(
        read_results(tmp_path / "b")["summary"]
    )
    assert read_results(tmp_path / "a")["summary"][0]["zero_fraction"] > 0  # proximal zeros


def test_rules_file_is_one_more_contender(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('"0.weight" = "l1(1e-3)"\n"*" = "l2(1e-3)"\n')
    assert run_cli("compare", *SMALL, "--rules", rules, "--out", tmp_path / "o") == 0
    results = read_results(tmp_path / "o")
    assert [c["label"] for c in results["contenders"]] == ["rules:rules.toml"]
    assert results["contenders"][0]["penalty"] == {"0.weight": "l1(1e-3)", "*": "l2(1e-3)"}


@pytest.mark.parametrize("model", ["cnn", "linear"])
def test_mnist_npz_and_idx(tmp_path, model):
    from ..experiments.files import write_idx_folder, write_npz

    npz = write_npz(tmp_path / "mnist.npz")
    idx = write_idx_folder(tmp_path / "idx")
    for source in (npz, idx):
        out = tmp_path / f"out-{source.name}"
        code = run_cli(
            "compare",
            "--data",
            f"mnist:{source}",
            "--model",
            model,
            "--epochs",
            "1",
            "--quiet",
            "--reg",
            "l2(1e-3)",
            "--out",
            out,
        )
        assert code == 0
        assert read_results(out)["data"] == {
            "name": "mnist",
            "task": "classification",
            "features": 784,
            "classes": 10,
            "train": 50,
            "validation": 10,
            "test": 20,
        }


def test_csv_regression_and_synthetic_linear(tmp_path, capsys):
    from ..experiments.files import write_csv

    path = write_csv(tmp_path / "r.csv", rows=80, classification=False)
    assert (
        run_cli(
            "compare",
            "--data",
            f"csv:{path}",
            "--target",
            "label",
            "--model",
            "linear",
            "--epochs",
            "3",
            "--quiet",
            "--reg",
            "l1(1e-3)",
            "--out",
            tmp_path / "c",
        )
        == 0
    )
    assert "test MSE" in capsys.readouterr().out
    assert (
        run_cli(
            "compare",
            "--data",
            "synthetic-linear",
            "--model",
            "linear",
            "--epochs",
            "3",
            "--quiet",
            "--out",
            tmp_path / "s",
        )
        == 0
    )
    assert read_results(tmp_path / "s")["data"]["task"] == "regression"


def test_default_contenders(tmp_path):
    assert run_cli("compare", "--epochs", "1", "--hidden", "8", "--quiet", "--out", tmp_path) == 0
    labels = [c["label"] for c in read_results(tmp_path)["contenders"]]
    assert labels == ["none", "l2(1e-3)", "l1(1e-4)", "weight_decay=0.001"]
