"""How long does ``import torchpenalty`` take, against ``import torch`` alone?

    python benchmarks/import_time.py              # 15 pairs, prints the ratio, writes JSON

Each import runs in a fresh interpreter (``python -X importtime`` is not used: its own cost
distorts small modules); the two are timed alternately, pair by pair, so that a drift of the
shared machine hits both alike. The figure is the median of the per-pair ratios of the wall
time of ``python -c "import torchpenalty"`` to ``python -c "import torch"``, and which compiler
modules (``torch._dynamo``, ``torch._inductor``) each import loaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

PROBE = (
    "import sys, time; t = time.perf_counter(); import {module}; "
    "print(time.perf_counter() - t); "
    "print(sorted({{m.split('.')[1] for m in sys.modules "
    "if m.startswith(('torch._dynamo', 'torch._inductor'))}}))"
)


def timed_import(module: str) -> tuple[float, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return float(out[0]), out[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument(
        "--out", type=Path, help="JSON (default benchmarks/results/import_time.json)"
    )
    args = parser.parse_args(argv)
    for module in ("torch", "torchpenalty"):  # warm the file cache
        timed_import(module)
    torch_s, ours_s, ratios = [], [], []
    loaded = {}
    for _ in range(args.pairs):
        t, loaded["torch"] = timed_import("torch")
        o, loaded["torchpenalty"] = timed_import("torchpenalty")
        torch_s.append(t)
        ours_s.append(o)
        ratios.append(o / t)
    result = {
        "import torch (s)": statistics.median(torch_s),
        "import torchpenalty (s)": statistics.median(ours_s),
        "ratio (median of pairs)": statistics.median(ratios),
        "compiler modules loaded": loaded,
        "pairs": args.pairs,
        "python": sys.version.split()[0],
    }
    for key, value in result.items():
        print(f"{key}: {value}")
    out = args.out or Path(__file__).resolve().parent / "results" / "import_time.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
