"""examples/lightning_digits.py: Lightning trains digits with the callback, zeros are exact."""

from __future__ import annotations

import pytest

from .helpers import load_example

pytest.importorskip("lightning")


def load():
    return load_example("lightning_digits")


def test_trains_with_exact_zeros(capsys):
    result = load().main(["--epochs", "3", "--penalty", "l1(5e-3)"])
    assert result["val_acc"] > 0.85
    assert result["zero_fraction"] > 0 and result["penalty"] > 0
    assert "exact zeros" in capsys.readouterr().out
