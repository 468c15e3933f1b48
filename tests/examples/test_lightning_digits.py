"""examples/lightning_digits.py: Lightning trains digits with the callback, zeros are exact."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("lightning")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_digits.py"


def load():
    spec = importlib.util.spec_from_file_location("lightning_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_trains_with_exact_zeros(capsys):
    result = load().main(["--epochs", "3", "--penalty", "l1(5e-3)"])
    assert result["val_acc"] > 0.85
    assert result["zero_fraction"] > 0 and result["penalty"] > 0
    assert "exact zeros" in capsys.readouterr().out
