"""The ``--reg`` contender grammar: a penalty with ``@MODE``, ``dropout(p)``,
``label_smoothing(eps)`` and their sums; each contender's parts in the table and results.json;
a contender's dropout is the model-wide ``--dropout`` for that contender."""

from __future__ import annotations

import pytest

from torchpenalty import parse
from torchpenalty.cli.contender_spec import ContenderText, parse_contender, split_terms

from .helpers import SMALL, read_history, read_results, run_cli


def test_grammar():
    assert split_terms("l1(1) + 0.5 * (l1(2) + l2(3)) + dropout(0.2)") == [
        "l1(1)",
        "0.5 * (l1(2) + l2(3))",
        "dropout(0.2)",
    ]
    assert parse_contender("l2(1e-2)@decoupled") == ContenderText(parse("l2(1e-2)"), "decoupled")
    assert parse_contender("l1(1e-4) + l2(1e-3) + dropout(p=0.2) @ proximal") == ContenderText(
        parse("l1(1e-4) + l2(1e-3)"), "proximal", 0.2
    )
    assert parse_contender("label_smoothing(0.1) + dropout(0.3)") == ContenderText(
        None, None, 0.3, 0.1
    )
    assert parse_contender("dropout(0)").dropout == 0.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("dropout(1)", "dropout must be a number in [0, 1), got 1"),
        ("dropout(-0.1)", "dropout must be a number in [0, 1)"),
        ("dropout(nan)", "dropout must be a number in [0, 1)"),
        ("dropout(0.1, 0.2)", "dropout takes one number"),
        ("dropout(eps=0.1)", "dropout takes one number"),
        ("label_smoothing(-0.1)", "label_smoothing must be a number in [0, 1)"),
        ("label_smoothing(x)", "label_smoothing takes one number, got 'x'"),
        ("dropout(0.1) + dropout(0.2)", "dropout is given twice"),
        ("l2(1)@fast", "unknown mode 'fast' after '@'"),
        ("dropout(0.2)@grad", "@grad sets the mode of a penalty, and there is none"),
        ("none@grad", "@grad sets the mode of a penalty"),
        ("@grad", "nothing before '@MODE'"),
        ("l2(1) + l9(2)", "unknown penalty 'l9'"),
    ],
)
def test_bad_contenders_are_one_line_naming_them(text, reason, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli("compare", "--reg", text, *SMALL)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"contender {text!r}: " in err and reason in err


def test_mode_per_contender_equals_the_mode_flag(tmp_path):
    """``l2(x)@grad`` is ``--mode grad --reg l2(x)``; the other contenders keep ``--mode``."""
    run_cli(
        "compare",
        "--reg",
        "l2(1e-2)@grad",
        "--reg",
        "l1(1e-3)",
        "--mode",
        "proximal",
        *SMALL,
        "--out",
        tmp_path / "mixed",
    )
    run_cli("compare", "--reg", "l2(1e-2)", "--mode", "grad", *SMALL, "--out", tmp_path / "grad")
    mixed, grad = read_results(tmp_path / "mixed"), read_results(tmp_path / "grad")
    assert [c["mode"] for c in mixed["contenders"]] == ["grad", "proximal"]
    assert mixed["contenders"][1]["label"] == "l1(1e-3) [proximal]"
    assert mixed["runs"][0]["final"] == grad["runs"][0]["final"]


def test_dropout_contender_is_the_model_wide_dropout(tmp_path):
    """``dropout(p)`` replaces ``--dropout`` for its contender: the same run, number for number,
    as ``--dropout p``; other contenders keep the model-wide value."""
    run_cli(
        "compare",
        "--reg",
        "dropout(0.3)",
        "--reg",
        "l2(1e-3) + dropout(0.2)",
        "--reg",
        "none",
        "--dropout",
        "0.1",
        *SMALL,
        "--out",
        tmp_path / "ours",
    )
    for p, reg in (("0.3", "none"), ("0.2", "l2(1e-3)"), ("0.1", "none")):
        run_cli("compare", "--reg", reg, "--dropout", p, *SMALL, "--out", tmp_path / p)
    ours = read_results(tmp_path / "ours")
    finals = [r["final"] for r in ours["runs"]]
    for final, p in zip(finals, ("0.3", "0.2", "0.1"), strict=True):
        assert final == read_results(tmp_path / p)["runs"][0]["final"]
    described = {c["label"]: c for c in ours["contenders"]}
    both = described["l2(1e-3) + dropout(0.2)"]
    assert both["description"] == "l2(lam=0.001) in loss mode + dropout 0.2"
    assert both["dropout"] == 0.2 and both["mode"] == "loss"
    assert described["dropout(0.3)"]["mode"] is None  # no penalty, no mode
    assert described["none"]["dropout"] is None  # the model-wide --dropout


def test_label_smoothing_changes_training_not_the_reported_loss(tmp_path):
    run_cli("compare", "--reg", "none", "--reg", "label_smoothing(0.2)", *SMALL, "--out", tmp_path)
    results = read_results(tmp_path)
    plain, smoothed = (r["final"] for r in results["runs"])
    assert smoothed["train_loss"] != plain["train_loss"]
    assert results["contenders"][1]["description"] == "label smoothing 0.2"
    table = {row["contender"]: row for row in results["summary"]}
    assert table["label_smoothing(0.2)"]["description"] == "label smoothing 0.2"
    assert len(read_history(tmp_path)) == 2 * 2  # 2 contenders x 2 epochs


def test_contender_parts_that_do_not_fit_the_setup(capsys):
    with pytest.raises(SystemExit):
        run_cli("compare", "--model", "linear", "--reg", "dropout(0.2)", *SMALL)
    assert "contender 'dropout(0.2)': dropout needs hidden layers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(
            "compare",
            "--data",
            "synthetic-linear",
            "--model",
            "linear",
            "--reg",
            "label_smoothing(0.1)",
            "--epochs",
            "1",
        )
    assert "label_smoothing needs a classification task" in capsys.readouterr().err


def test_sweep_takes_a_mode_after_its_spec(tmp_path, capsys):
    run_cli("sweep", "--reg", "l1@proximal", "--lams", "1e-4,1e-3", *SMALL, "--out", tmp_path)
    assert read_results(tmp_path)["mode"] == "proximal"
    assert "proximal mode" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        run_cli("sweep", "--reg", "l1@fast", *SMALL)
    assert "unknown mode 'fast'" in capsys.readouterr().err


def test_legends_say_what_each_contender_applies():
    from torchpenalty.cli.compare import legend
    from torchpenalty.experiments.training import Contender

    l2 = parse("l2(1e-3)")
    assert legend(Contender("l2(1e-3)", l2)) == "l2(1e-3): l2(lam=0.001) in loss mode"
    assert legend(Contender("dropout(0.3)", dropout=0.3)) == "dropout(0.3): dropout 0.3"
