"""``--target KIND=FRACTION``: every penalty contender trained to the fraction of zero units,
groups or weights, its achieved fraction and (with --compact) its compacted size in the table and
results.json; ``--target COLUMN`` still names a csv label column; bad input."""

from __future__ import annotations

import pytest

from .helpers import SMALL, read_results, run_cli

RUN = ["--hidden", "32", "--train-size", "300", "--epochs", "6", "--quiet"]


def test_units_target_with_compact(tmp_path):
    args = ["--reg", "none", "--reg", "group_lasso(1e-4, groups=rows)", "--mode", "proximal"]
    assert (
        run_cli("compare", *args, *RUN, "--target", "units=0.75", "--compact", "--out", tmp_path)
        == 0
    )
    results = read_results(tmp_path)
    rows = {r["contender"]: r for r in results["summary"]}
    target = rows["group_lasso(1e-4, groups=rows) [proximal]"]
    assert target["target_reached"] == 0.75  # 24 of the 32 hidden units, frozen exactly
    assert target["zero_units"] >= 24 and target["units_removed"] >= 24
    assert target["compact_params"] < 0.3 * target["params"]
    assert rows["none"]["target_reached"] is None  # no penalty, no target: null in strict JSON
    assert "target 75% of units" in target["description"]


def test_sweep_takes_a_weights_target(tmp_path):
    """Weights frozen at zero are exactly half; weights of units that died on the way get no
    gradient and stay zero too: the count is the target or a little more, never less."""
    run = ["--hidden", "32", "--train-size", "300", "--epochs", "20", "--quiet"]
    args = ["--reg", "l1@proximal", "--lams", "1e-5,1e-4", "--target", "weights=0.5"]
    assert run_cli("sweep", *args, *run, "--out", tmp_path) == 0
    for row in read_results(tmp_path)["summary"]:
        assert 0.5 <= row["target_reached"] <= 0.6


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "units=1.5"], "units= takes a fraction in (0, 1), got '1.5'"),
        (["--target", "units=x"], "units= takes a fraction in (0, 1)"),
        (["--reg", "group_lasso(1e-4)", "--target", "units=0.5"], "needs proximal mode"),
        (["--reg", "l2(1e-4)@proximal", "--target", "units=0.5"], "needs a group penalty"),
        (["--reg", "l2(1e-4)@proximal", "--target", "weights=0.5"], "l2 only shrinks"),
    ],
)
def test_bad_targets_are_one_line(args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli("compare", *args, *SMALL)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
