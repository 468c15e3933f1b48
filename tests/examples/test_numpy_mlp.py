"""examples/numpy_mlp.py: the from-scratch NumPy network runs and its penalty takes effect."""

from __future__ import annotations

import pytest

from .helpers import load_example


@pytest.fixture(scope="module")
def numpy_mlp():
    return load_example("numpy_mlp")


def test_trains_and_penalty_shrinks_weights(numpy_mlp, capsys):
    plain = numpy_mlp.main(["--penalty", "none", "--epochs", "3"])
    decayed = numpy_mlp.main(["--penalty", "l2(0.05)", "--epochs", "3"])
    assert plain["test_accuracy"] > 0.8
    assert plain["penalty"] == 0.0 and decayed["penalty"] > 0.0
    assert decayed["weight_norm"] < 0.8 * plain["weight_norm"]
    assert "epoch   3" in capsys.readouterr().out


def test_l1_spec_runs(numpy_mlp):
    result = numpy_mlp.main(["--penalty", "l1(1e-4)", "--epochs", "1", "--hidden", "16"])
    assert result["penalty"] > 0.0
