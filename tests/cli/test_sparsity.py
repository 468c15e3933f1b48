"""Zero groups and ``--compact`` in the command line: sizes, speed-up and an unchanged function."""

from __future__ import annotations

from .helpers import read_results, run_cli

SMALL = ["--hidden", "32", "--epochs", "5", "--train-size", "300", "--quiet", "--mode", "proximal"]


def test_compare_compact_reports_sizes_and_speedup(tmp_path, capsys):
    rules = tmp_path / "units.toml"  # strong enough to kill units within 5 short epochs
    rules.write_text('"2.weight" = "group_lasso(1.0, groups=cols)"\n')
    code = run_cli(
        "compare",
        *SMALL,
        "--reg",
        "none",
        "--reg",
        "l1(2e-1)",
        "--rules",
        rules,
        "--compact",
        "--out",
        tmp_path,
    )
    assert code == 0
    header = next(
        line for line in capsys.readouterr().out.splitlines() if line.startswith("regularizer")
    )
    for column in (
        "zero units",
        "zero groups",
        "params",
        "compact params",
        "units removed",
        "speed-up",
    ):
        assert column in header
    rows = {r["contender"]: r for r in read_results(tmp_path)["summary"]}
    assert (
        rows["none"]["units_removed"] == 0
        and rows["none"]["compact_params"] == rows["none"]["params"]
    )
    for label in ("l1(2e-1) [proximal]", "rules:units.toml [proximal]"):
        row = rows[label]
        assert row["units_removed"] > 0 and row["compact_params"] < row["params"]
        assert row["max_abs_diff"] <= 1e-5 and row["speedup"] > 0
    assert rows["rules:units.toml [proximal]"]["zero_groups"] > 0
    assert rows["none"]["zero_groups"] is None  # no group penalty: null in strict JSON


def test_sweep_of_a_group_penalty(tmp_path, capsys):
    code = run_cli(
        "sweep",
        *SMALL,
        "--reg",
        "group_lasso(groups=rows)",
        "--lams",
        "1e-3,3e-1",
        "--compact",
        "--out",
        tmp_path,
    )
    assert code == 0
    assert "zero groups" in capsys.readouterr().out
    results = read_results(tmp_path)
    assert results["penalty"] == "group_lasso(lam=1.0, groups=rows, scale=none)"
    weak, strong = results["summary"]
    assert strong["zero_groups"] >= weak["zero_groups"]
    assert strong["compact_params"] <= weak["compact_params"]
