"""Bad flags give usage errors; bad data gives one line naming the file (exit 2, no traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from ..experiments.files import write_npz
from .helpers import read_results, run_cli


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["compare", "--reg", "l2("],
            "argument --reg: contender 'l2(': invalid penalty spec 'l2('",
        ),
        (["compare", "--reg", "l2(-1)"], "lam must be a finite number >= 0"),
        (["compare", "--epochs", "0"], "argument --epochs: expected a whole number > 0"),
        (["compare", "--lr", "nan"], "argument --lr: expected a finite number >= 0"),
        (["compare", "--optimizer", "sgdx"], "unknown optimizer 'sgdx'; choose from"),
        (["compare", "--mode", "l1"], "argument --mode: invalid choice"),
        (["compare", "--hidden", "200,x"], "argument --hidden"),
        (["compare", "--dropout", "1.5"], "expected a probability in [0, 1)"),
        (["compare", "--device", "nosuchdevice"], "argument --device"),
        (["compare", "--weight-decay", "-1"], "argument --weight-decay"),
        (["compare", "--reg", "none", "--reg", "none"], "the same contender is given twice: none"),
        (
            ["compare", "--model", "cnn", "--data", "synthetic-linear"],
            "--model cnn needs image data",
        ),
        (["compare", "--optimizer", "adam", "--momentum", "0.9"], "Adam has no momentum"),
        (
            [
                "compare",
                "--reg",
                "l2",
                "--data",
                "digits",
                "--model",
                "linear",
                "--optimizer",
                "lbfgs",
                "--weight-decay",
                "0.1",
            ],
            "LBFGS has no weight_decay",
        ),
        (["sweep", "--lams", "1e-3"], "a sweep needs at least 2 strengths"),
        (["sweep", "--lams", "1:2:1"], "a grid needs NUM >= 2 points"),
        (["sweep", "--lams", "0:1:3"], "expected a number > 0"),
        (["sweep", "--reg", "none"], "'none' has no strength to sweep"),
        (["sweep", "--reg", "l9"], "unknown penalty 'l9'"),
        (["demo", "ridge"], "invalid choice: 'ridge'"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_bad_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("torchpenalty") and message in err and "--help" in err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage dump, no traceback


def _npz(tmp_path, **overrides):
    return write_npz(tmp_path / "m.npz", **overrides)


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (lambda p: f"mnist:{p / 'missing.npz'}", [], "missing.npz: no such file or folder"),
        (
            lambda p: f"mnist:{_npz(p, x_train=np.zeros((60, 28, 27), np.uint8))}",
            [],
            "m.npz: training images must have shape (N, 28, 28)",
        ),
        (
            lambda p: f"mnist:{_npz(p, y_test=np.full(20, 10, np.uint8))}",
            [],
            "m.npz: test labels must be in 0..9",
        ),
        (
            lambda p: (p / "t.csv").write_text("a,label\n" + "1,x\n" * 12) and f"csv:{p / 't.csv'}",
            ["--target", "label"],
            "t.csv: line 2, column 'label': non-numeric cell 'x'",
        ),
        (
            lambda p: (p / "t.csv").write_text("a,b\n" + "1,0\n" * 12) and f"csv:{p / 't.csv'}",
            ["--target", "label"],
            "t.csv: no target column 'label'",
        ),
        (lambda p: "cifar10", [], "unknown data 'cifar10'"),
    ],
)
def test_bad_data_is_one_line(tmp_path, make, extra, message, capsys):
    code = run_cli("compare", "--data", make(tmp_path), *extra, "--quiet", "--out", tmp_path / "o")
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("torchpenalty: error:") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("not toml [", "not valid TOML"),
        ('"fc.*" = 3', "rule 'fc.*' must map to a spec string"),
        ('"*" = "l2("', "rule '*': invalid penalty spec"),
        ('"encoder.*" = "l2"', "rules.toml: penalty rule 'encoder.*' selects none"),
        ("", "no rules"),
    ],
)
def test_bad_rules_file(tmp_path, content, message, capsys):
    rules = tmp_path / "rules.toml"
    rules.write_text(content)
    assert run_cli("compare", "--rules", rules, "--quiet", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_missing_rules_file(tmp_path, capsys):
    assert run_cli("compare", "--rules", tmp_path / "none.toml", "--out", tmp_path / "o") == 2
    assert "none.toml: cannot read rules file" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_keeps_finished_runs(tmp_path):
    """A real SIGINT to a real process, after its first run finished."""
    out = tmp_path / "o"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torchpenalty",
            "compare",
            "--quiet",
            "--train-size",
            "20",
            "--batch-size",
            "32",
            "--hidden",
            "16",
            "--epochs",
            # about 3 s a run: the signal lands while the second one trains, even on a loaded
            # machine (at 400 epochs, 1.5 s a run, it once arrived after the second finished)
            "700",
            "--reg",
            "none",
            "--reg",
            "l2(1e-3)",
            "--sequential",  # one after another: the first finishes before the second starts
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    for line in proc.stdout:
        if line.startswith("finished none"):
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: keeping the 1 finished run(s)" in stderr
    assert "\nnone " in stdout and "l2(1e-3)" not in stdout.split("regularizer")[-1]
    results = read_results(out)
    assert results["interrupted"] is True and len(results["runs"]) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "--target", "unit=0.5"], "--target unit=0.5: not a sparsity target"),
        (["compare", "--target", "Units=0.5"], "--target Units=0.5: not a sparsity target"),
        (["compare", "--target", "units:0.5"], "--target units:0.5: not a sparsity target"),
        (["sweep", "--target", "label"], "--target label: not a sparsity target"),
        (["compare", "--target", "units=0.5", "--reg", "none"], "no contender has a penalty"),
        (
            ["compare", "--target", "units=0.5", "--weight-decay", "1e-3"],
            "--target units=0.5: no contender has a penalty",
        ),
        (
            [
                *("compare", "--target", "units=0.5"),
                *("--reg", "group_lasso(1e-3)@proximal", "--model", "linear"),
            ],
            "--target units=0.5: the model has no hidden units to remove (--model linear)",
        ),
        (
            ["compare", "--target", "groups=0.5", "--reg", "l1(1e-4)@proximal"],
            "--target groups=0.5 with l1(1e-4)@proximal: target of='groups' needs a group penalty",
        ),
        (
            ["compare", "--reg", "l1(1e-4)", "--tensorboard", "/proc/no/such/place"],
            "--tensorboard /proc/no/such/place: cannot write there",
        ),
    ],
)
def test_what_cannot_work_is_refused_before_training(tmp_path, argv, message, capsys):
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as info:
        run_cli(*argv, "--epochs", "1", "--quiet", "--out", out)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()  # nothing trained, nothing written


def test_an_unwritable_tensorboard_folder_is_refused(tmp_path, capsys):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where a folder is needed")
    with pytest.raises(SystemExit) as info:
        run_cli("compare", "--tensorboard", blocked / "tb", "--quiet", "--out", tmp_path / "o")
    assert info.value.code == 2
    assert "--tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
