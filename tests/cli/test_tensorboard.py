"""``--tensorboard DIR``: one run per contender and seed, one point per epoch, read back with
TensorBoard's own EventAccumulator; a rewritten run replaces its earlier points."""

from __future__ import annotations

import pytest

from .helpers import SMALL, read_history, run_cli

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from torchpenalty.experiments.tensorboard_runs import TensorBoardRuns, run_name  # noqa: E402

FIELDS = {
    "loss/train": "train_loss",
    "loss/validation": "val_loss",
    "accuracy/train": "train_metric",
    "accuracy/validation": "val_metric",
    "penalty": "penalty",
    "weights/l2_norm": "weight_norm",
    "weights/zero_fraction": "zero_fraction",
    "weights/zero_units": "zero_units",
}


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    events = event_accumulator.EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


@pytest.mark.parametrize("command", ["compare", "sweep"])
def test_one_run_per_contender_and_seed_with_every_epoch(tmp_path, command):
    board, out = tmp_path / "board", tmp_path / "out"
    what = (
        ["--reg", "none", "--reg", "l1(1e-3)", "--mode", "proximal"]
        if command == "compare"
        else ["--reg", "l1", "--lams", "1e-4,1e-3"]
    )
    args = [command, *what, *SMALL, "--seeds", "2", "--out", out, "--tensorboard", board]
    assert run_cli(*args) == 0
    history = read_history(out)
    labels = list(dict.fromkeys(row["contender"] for row in history))
    assert len(labels) == 2
    for index, label in enumerate(labels):
        for seed in (0, 1):
            written = scalars(board / run_name(index, label, seed))
            rows = [r for r in history if r["contender"] == label and int(r["seed"]) == seed]
            assert set(written) >= set(FIELDS)
            for tag, field in FIELDS.items():
                assert [step for step, _ in written[tag]] == [int(r["epoch"]) for r in rows]
                expected = [float(r[field]) for r in rows]
                assert [v for _, v in written[tag]] == pytest.approx(expected, rel=1e-6)


def test_a_rewritten_run_replaces_its_points(tmp_path):
    """A resumed run reopens its folder: the points of the interrupted attempt are dropped from
    the first epoch on, and every epoch appears once."""
    record = dict.fromkeys(FIELDS.values(), 1.0)
    first = TensorBoardRuns(tmp_path, ["l1"], "classification")
    first.record("l1", 0, [{**record, "epoch": 1}, {**record, "epoch": 2, "penalty": 5.0}])
    first.close()
    again = TensorBoardRuns(tmp_path, ["l1"], "classification")
    history = [{**record, "epoch": e, "penalty": float(e)} for e in (1, 2, 3)]
    again.record("l1", 0, history[:2])
    again.record("l1", 0, history)
    again.close()
    assert scalars(tmp_path / run_name(0, "l1", 0))["penalty"] == [(1, 1.0), (2, 2.0), (3, 3.0)]


def test_a_file_in_place_of_the_folder_is_refused(tmp_path, capsys):
    target = tmp_path / "board"
    target.write_text("")
    with pytest.raises(SystemExit) as exit_:
        run_cli("compare", *SMALL, "--out", tmp_path / "out", "--tensorboard", target)
    assert exit_.value.code == 2
    assert "--tensorboard" in capsys.readouterr().err
