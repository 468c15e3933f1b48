"""``torchpenalty demo adamw``: Loshchilov & Hutter's learning rate x weight decay grid on digits.

Adam with coupled L2 (``torch.optim.Adam(weight_decay=wd)``: ``wd * w`` joins the gradient and is
rescaled by Adam's second-moment estimate) against decoupled decay (``torch.optim.AdamW``:
``w -= lr * wd * w`` beside the Adam step), on the same MLP, data split, seed and grid. Their
paper's claim: with decoupled decay the best ``wd`` depends far less on the learning rate (the
good region of the grid is separable). The demo measures, per optimizer, the best cell and the
best decay of every learning rate, and says only what those numbers show.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from torchpenalty.experiments import data as datasets
from torchpenalty.experiments import plots
from torchpenalty.experiments.results import run_records, summarize, write_history, write_json
from torchpenalty.experiments.training import Contender, TrainConfig

from . import common

OPTIMIZERS = {"adam": "Adam, coupled L2", "adamw": "AdamW, decoupled"}
DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
DEFAULT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
DEFAULT_EPOCHS = 30
#: a cell is "good" when its test accuracy is within this of its optimizer's best cell's
GOOD_WITHIN = 0.01


def label(optimizer: str, lr: float, decay: float) -> str:
    return f"{optimizer} lr={lr:g} wd={decay:g}"


def grid_contenders(lrs: list[float], decays: list[float]) -> list[Contender]:
    return [
        Contender(label(opt, lr, wd), weight_decay=wd, optimizer=opt, lr=lr)
        for opt in OPTIMIZERS
        for lr in lrs
        for wd in decays
    ]


def _grids(summary: list[dict[str, Any]], lrs: list[float], decays: list[float]) -> dict:
    """``{optimizer: {field: lrs x decays array}}`` of the final figures (mean over seeds)."""
    rows = {r["contender"]: r for r in summary}
    out: dict[str, dict[str, np.ndarray]] = {}
    for opt in OPTIMIZERS:
        out[opt] = {}
        for field in ("test_loss", "test_metric", "val_loss", "val_metric"):
            grid = np.full((len(lrs), len(decays)), np.nan)
            for i, lr in enumerate(lrs):
                for j, wd in enumerate(decays):
                    row = rows.get(label(opt, lr, wd))
                    if row is not None:
                        grid[i, j] = row[field]
            out[opt][field] = grid
    return out


def findings(grids: dict, lrs: list[float], decays: list[float], seeds: int) -> dict[str, Any]:
    """What the grid shows, chosen on the validation split: each optimizer's best cell (its test
    figures) and the best decay of every learning rate."""
    found: dict[str, Any] = {}
    for opt, g in grids.items():
        val = np.where(np.isnan(g["val_loss"]), np.inf, g["val_loss"])
        i, j = np.unravel_index(np.argmin(val), val.shape)
        per_lr = [decays[int(np.argmin(val[k]))] for k in range(len(lrs))]
        found[opt] = {
            "best": {
                "lr": lrs[i],
                "weight_decay": decays[j],
                "test_loss": float(g["test_loss"][i, j]),
                "test_accuracy": float(g["test_metric"][i, j]),
            },
            "best_decay_per_lr": dict(zip(map(str, lrs), per_lr, strict=True)),
            "distinct_best_decays": len(set(per_lr)),
            # the size of the good region: cells within GOOD_WITHIN of the best test accuracy
            "good_cells": int(
                np.sum(g["test_metric"] >= np.nanmax(g["test_metric"]) - GOOD_WITHIN)
            ),
            "cells": int(np.sum(~np.isnan(g["test_metric"]))),
        }
    found["seeds"] = seeds
    return found


def verdict(found: dict[str, Any]) -> list[str]:
    """Sentences that claim no more than the numbers: the best cells, and which optimizer's best
    decay moves less with the learning rate (a tie says so)."""
    adam, adamw = found["adam"], found["adamw"]
    lines = [
        f"best cell (validation loss): {OPTIMIZERS[opt]} at lr={f['best']['lr']:g}, "
        f"wd={f['best']['weight_decay']:g}: test loss {f['best']['test_loss']:.4f}, "
        f"test accuracy {f['best']['test_accuracy']:.2%}"
        for opt, f in (("adam", adam), ("adamw", adamw))
    ]
    a, w = adam["distinct_best_decays"], adamw["distinct_best_decays"]
    if w < a:
        lines.append(
            f"the best decay depends less on the learning rate with AdamW ({w} distinct best "
            f"values over the learning rates) than with Adam ({a}), as Loshchilov & Hutter report"
        )
    elif w > a:
        lines.append(
            f"here the best decay moves more with the learning rate under AdamW ({w} distinct "
            f"best values) than under Adam ({a}): this grid does not show their separability"
        )
    else:
        lines.append(
            f"the best decay moves as much with the learning rate under both ({a} distinct best "
            "values): this grid does not tell them apart on that point"
        )
    lines.append(
        f"cells within {GOOD_WITHIN:.0%} of their optimizer's best test accuracy: Adam "
        f"{adam['good_cells']} of {adam['cells']}, AdamW {adamw['good_cells']} of "
        f"{adamw['cells']}"
        + (
            " (a wider good region for AdamW)"
            if adamw["good_cells"] > adam["good_cells"]
            else " (a wider good region for Adam)"
            if adam["good_cells"] > adamw["good_cells"]
            else ""
        )
    )
    difference = adam["best"]["test_loss"] - adamw["best"]["test_loss"]
    lines.append(
        f"best test loss difference (Adam - AdamW): {difference:+.4f}, from "
        f"{found['seeds']} seed(s); a gap smaller than the seed-to-seed spread is no evidence "
        "either way (run --seeds 3 to see the spread)"
    )
    return lines


def grid_table(grid: np.ndarray, lrs: list[float], decays: list[float], fmt: str) -> str:
    head = ["lr \\ wd", *(f"{wd:g}" for wd in decays)]
    body = [[f"{lr:g}", *(format(v, fmt) for v in row)] for lr, row in zip(lrs, grid, strict=True)]
    widths = [max(len(r[k]) for r in [head, *body]) for k in range(len(head))]
    return "\n".join(
        "  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in [head, *body]
    )


def run_adamw(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    data = datasets.load_digits()
    lrs, decays = list(args.lrs), list(args.decays)
    config = TrainConfig(
        model="mlp",
        hidden=(200, 100),
        optimizer="adam",
        lr=lrs[0],
        epochs=args.epochs or DEFAULT_EPOCHS,
        batch_size=64,
    )
    entrants = grid_contenders(lrs, decays)
    seed_list = common.seeds(args)
    common.check_setup(parser, data, config, entrants)
    out = common.output_dir(args, "demo-adamw")
    common.echo(common.describe_run(data, config, seed_list))
    common.echo(
        f"  grid: {len(lrs)} learning rates x {len(decays)} weight decays, "
        f"{', '.join(OPTIMIZERS.values())}: {len(entrants) * len(seed_list)} runs"
    )
    trained = common.train_all(args, data, config, entrants, seed_list, out)
    if not trained.results:
        return common.finish(trained)
    stacked = common.describe_stacks(trained, len(entrants) * len(seed_list))
    if stacked:
        common.echo(stacked)
    summary = summarize(trained.results, [c.label for c in entrants])
    grids = _grids(summary, lrs, decays)
    found = findings(grids, lrs, decays, len(seed_list))
    for opt, name in OPTIMIZERS.items():
        common.echo(f"\n{name}: test accuracy")
        common.echo(grid_table(grids[opt]["test_metric"], lrs, decays, ".1%"))
        common.echo(f"{name}: test loss")
        common.echo(grid_table(grids[opt]["test_loss"], lrs, decays, ".3f"))
    said = verdict(found)
    common.echo()
    for line in said:
        common.echo(line)
    write_json(
        out / "results.json",
        {
            **common.header("demo adamw", args, data, seed_list),
            "learning_rates": lrs,
            "weight_decays": decays,
            "grids": {
                opt: {field: g.tolist() for field, g in fields.items()}
                for opt, fields in grids.items()
            },
            "findings": found,
            "verdict": said,
            "summary": summary,
            "runs": run_records(trained.results),
            "stacks": [[{"contender": c, "seed": s} for c, s in st] for st in trained.stacks],
            "interrupted": trained.interrupted,
            "failure": trained.failure,
        },
    )
    write_history(out / "history.csv", trained.results)
    plots.plot_lr_decay_grids(grids, OPTIMIZERS, lrs, decays, out / "demo.png")
    common.echo(f"\nwrote {out}/: results.json, history.csv, demo.png")
    return common.finish(trained)
