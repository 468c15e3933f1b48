"""Render the group and constraint rows of a penalty_paths JSON file as Markdown: each path's
ratio to its floor, per backend, and where a JSON of the last release is given, how each
compiled ratio compares with that release's.

    python benchmarks/group_table.py benchmarks/results/group_paths-cpu.json \\
        --release benchmarks/results/group_paths-release-0.1.0-cpu.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PATHS = ["gradient mode", "decoupled", "proximal", "value()", "loss mode", "projection"]


def ratios(rows: list[dict], backend: str | None) -> dict[tuple[str, str, str], float]:
    """``(set, penalty, path) -> ratio to the floor`` of one backend (None: any)."""
    return {
        (r["set"], r["penalty"], r["path"]): r["ratio_to_floor"]
        for r in rows
        if r["path"] in PATHS and (backend is None or r.get("backend") == backend)
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--release", type=Path, help="the last release's JSON, to compare with")
    parser.add_argument(
        "--compact", action="store_true", help="one row per penalty: each backend's ratios"
    )
    args = parser.parse_args(argv)
    rows = json.loads(args.results.read_text())["rows"]
    release = ratios(json.loads(args.release.read_text())["rows"], None) if args.release else {}
    eager, compiled = ratios(rows, "eager"), ratios(rows, "compile")
    row_norm = {
        (r["set"], r["penalty"], r["path"]): r.get("ratio_to_row_norm_pass")
        for r in rows
        if r.get("backend") == "eager"
    }
    if args.compact:
        compact(eager, compiled, release, row_norm)
        return
    print("| set | penalty | path | eager | x row-norm pass | compiled | last release | change |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |")
    worst = 0.0
    for key in eager:
        name, penalty, path = key
        old, new = release.get(key), compiled.get(key)
        change = "" if old is None or new is None else f"{new / old:.2f}x"
        if old is not None and new is not None:
            worst = max(worst, min(new, eager[key]) / old)
        rn = row_norm.get(key)
        print(
            f"| {name} | `{penalty}` | {path} | {eager[key]:.2f}x | "
            f"{'' if rn is None else f'{rn:.2f}x'} | {'' if new is None else f'{new:.2f}x'} | "
            f"{'' if old is None else f'{old:.2f}x'} | {change} |"
        )
    if release:
        print(f"\nworst ratio of the faster backend to the last release: {worst:.2f}x")


def compact(eager: dict, compiled: dict, release: dict, row_norm: dict) -> None:
    """One row per set and penalty: gradient / decoupled / proximal / value / loss mode (or the
    projection), eager and compiled, the eager prox against one row-norm pass, and the last
    release's ratios."""
    print(
        "| set | penalty | eager | compiled | last release | eager prox (or projection) "
        "x row-norm pass |"
    )
    print("| --- | --- | --- | --- | --- | ---: |")
    keys = sorted({(k[0], k[1]) for k in eager}, key=list({(k[0], k[1]): 0 for k in eager}).index)
    for name, penalty in keys:
        paths = [p for p in PATHS if (name, penalty, p) in eager]

        def cell(table: dict, key: tuple = (name, penalty), paths: list = paths) -> str:
            values = [table.get((*key, p)) for p in paths]
            return " / ".join("-" if v is None else f"{v:.2f}" for v in values)

        update = "proximal" if "proximal" in paths else "projection"
        rn = row_norm.get((name, penalty, update))
        print(
            f"| {name} | `{penalty}` | {cell(eager)} | {cell(compiled)} | {cell(release)} | "
            f"{'' if rn is None else f'{rn:.2f}x'} |"
        )


if __name__ == "__main__":
    main()
