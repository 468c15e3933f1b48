"""examples/hf_trainer.py: the Trainer logs the penalty, proximal L1 zeroes weights exactly and
leaves biases and LayerNorm alone."""

from __future__ import annotations

import pytest

from .helpers import load_example

pytest.importorskip("accelerate")
pytest.importorskip("transformers")


def load():
    return load_example("hf_trainer")


def test_logs_the_penalty_and_zeroes_weights(capsys):
    result = load().main(["--steps", "20", "--penalty", "l1(1e-2)"])
    assert [entry["step"] for entry in result["logs"]] == [10, 20]
    assert result["zero_fraction"] > 0
    assert result["untouched"]
    assert all("bias" in n or "LayerNorm" in n for n in result["untouched"])
    assert "exact zeros" in capsys.readouterr().out
