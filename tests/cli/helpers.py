"""Running the command in-process, and checking what it wrote."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from torchpenalty.cli import main

SMALL = ["--epochs", "2", "--hidden", "16", "--train-size", "200", "--quiet"]


def run_cli(*argv: str) -> int:
    return main([str(a) for a in argv])


def read_results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def read_history(out: Path) -> list[dict]:
    with open(out / "history.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path: Path) -> None:
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    height, width, _ = matplotlib.image.imread(path).shape
    assert width > 600 and height > 300
