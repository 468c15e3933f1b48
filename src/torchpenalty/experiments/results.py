"""Summaries of runs: aggregated over seeds, printed as tables, written as JSON and CSV."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .training import EpochRecord, RunResult

FINAL_COLUMNS = (
    "train_loss",
    "penalty",
    "test_loss",
    "test_metric",
    "weight_norm",
    "zero_fraction",
    "zero_units",
    "zero_groups",
    "target_reached",
)


def metric_name(task: str) -> str:
    return "test accuracy" if task == "classification" else "test MSE"


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value); NaN stays NaN."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def summarize(results: Sequence[RunResult], labels: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of each contender's final figures."""
    rows = []
    for label in labels:
        runs = [r for r in results if r.contender == label]
        if not runs:
            continue
        row: dict[str, Any] = {"contender": label, "seeds": [r.seed for r in runs]}
        for column in (*FINAL_COLUMNS, "val_loss", "val_metric"):
            row[column], row[f"{column}_std"] = _mean_std([getattr(r.final, column) for r in runs])
        row["wall_time"], row["wall_time_std"] = _mean_std([r.wall_time for r in runs])
        rows.append(row)
    return rows


def _cell(row: dict[str, Any], key: str, fmt: str, with_std: bool) -> str:
    if key not in row or (isinstance(row[key], float) and math.isnan(row[key])):
        return "-"
    text = format(row[key], fmt)
    if not with_std:
        return text
    spread = row.get(key + "_std")
    if spread is None:
        return text
    return f"{text} ± {format(spread, '.2g' if fmt.endswith('g') else fmt)}"


def format_table(
    summary: Sequence[dict[str, Any]],
    task: str,
    extra: Sequence[tuple] = (),
    first: str = "regularizer",
) -> str:
    """One row per contender. ``extra`` adds ``(header, key, format)`` columns."""
    with_std = any(len(r["seeds"]) > 1 for r in summary)
    metric_fmt = ".2%" if task == "classification" else ".4g"
    columns = [
        (first, None, None),
        ("train data loss", "train_loss", ".4g"),
        ("penalty", "penalty", ".4g"),
        *([("test loss", "test_loss", ".4g")] if task == "classification" else []),
        (metric_name(task), "test_metric", metric_fmt),  # for regression the loss is the MSE
        ("weight L2", "weight_norm", ".4g"),
        ("zeros", "zero_fraction", ".1%"),
        ("zero units", "zero_units", ".4g"),
        *(
            [("zero groups", "zero_groups", ".4g")]
            if any(not math.isnan(r["zero_groups"]) for r in summary)
            else []
        ),
        *(
            [("target reached", "target_reached", ".1%")]
            if any(not math.isnan(r.get("target_reached", math.nan)) for r in summary)
            else []
        ),
        *extra,
        ("time (s)", "wall_time", ".1f"),
    ]
    body = [
        [r["contender"] if key is None else _cell(r, key, fmt, with_std) for _, key, fmt in columns]
        for r in summary
    ]
    header = [c[0] for c in columns]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def environment() -> dict[str, Any]:
    """Versions and platform, recorded with every run."""
    import numpy
    import sklearn
    import torch

    import torchpenalty

    return {
        "torchpenalty": torchpenalty.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scikit-learn": sklearn.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch_threads": torch.get_num_threads(),
    }


def run_records(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    return [
        {
            "contender": r.contender,
            "seed": r.seed,
            "wall_time": r.wall_time,
            "final": dataclasses.asdict(r.final),
        }
        for r in results
    ]


def strict_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float replaced by None, so that strict JSON parsers
    (jq, JavaScript's JSON.parse) read the file; other objects become their ``str``."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return str(value)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write strict JSON (no NaN or Infinity: null) atomically (temporary file, then rename), so
    a reader never sees half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(strict_json(payload), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)


def write_history(path: Path, results: Sequence[RunResult], key: str = "contender") -> None:
    fields = [f.name for f in dataclasses.fields(EpochRecord)]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([key, "seed", *fields])
        for r in results:
            for rec in r.history:
                writer.writerow([r.contender, r.seed, *(getattr(rec, k) for k in fields)])
