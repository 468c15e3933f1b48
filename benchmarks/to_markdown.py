"""Render a penalty_paths JSON file as the README's Markdown tables.

python benchmarks/to_markdown.py benchmarks/results/penalty_paths-cpu.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PATHS = ["gradient mode", "decoupled", "proximal", "value()", "loss mode"]


def main(path: str) -> None:
    data = json.loads(Path(path).read_text())
    info = data["info"]
    print(
        f"Measured with `{info['command']}` on {info['device']} ({info['threads']} threads), "
        f"torch {info['torch']}, backend `{info['backend']}`, median of {info['repeats']}.\n"
    )
    print("| set | penalty | path | ms | x floor | x faster than tutorial | peak extra MB |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in data["rows"]:
        if r["path"].startswith("floor") and r["penalty"].startswith("l1"):
            continue  # the floors are the same for every penalty
        ratio = "" if r["ratio_to_floor"] is None else f"{r['ratio_to_floor']:.2f}"
        faster = "" if r["speedup_over_tutorial"] is None else f"{r['speedup_over_tutorial']:.1f}"
        peak = "" if r["peak_extra_mb"] is None else f"{r['peak_extra_mb']:.1f}"
        print(
            f"| {r['set']} | `{r['penalty']}` | {r['path']} | {r['ms']:.3f} | {ratio} | "
            f"{faster} | {peak} |"
        )
    if data.get("end_to_end"):
        print("\n| mode (ResNet-18 SGD step, L1(1e-4)) | step ms | overhead |")
        print("| --- | ---: | ---: |")
        for r in data["end_to_end"]:
            print(f"| {r['mode']} | {r['step_ms']:.1f} | {r['overhead_percent']:+.2f}% |")


if __name__ == "__main__":
    main(sys.argv[1])
