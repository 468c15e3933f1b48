"""``torchpenalty demo weight-decay``: d2l.ai's weight-decay experiment, checked.

A linear model on 20 rows of a 200-feature regression (``synthetic-linear``), its weight drawn
from N(0, 1), trained with SGD (lr 0.003, batch 5, 100 epochs) on the book's own loss, the squared
error / 2, without and with ``L2(3)`` on its weight (not the bias): lambda = 3 is the book's
lambda = 3. Without decay the training loss falls to ~0 while the test loss stays high; with decay
the test loss falls by orders of magnitude. The command fails (exit 1) if it ran but that effect
is absent.
"""

from __future__ import annotations

import argparse
import sys

from torchpenalty import L2
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments import plots
from torchpenalty.experiments.results import (
    format_table,
    run_records,
    summarize,
    write_history,
    write_json,
)
from torchpenalty.experiments.training import Contender, TrainConfig, run

from . import argtypes, common, flags

EFFECT = 10.0  # the test loss must drop at least this many times with decay


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="reproduce a classic experiment (weight-decay)",
        description=__doc__.split("\n\n")[1],
    )
    p.add_argument("experiment", choices=("weight-decay",))
    p.add_argument(
        "--lam",
        type=argtypes.positive_float,
        default=3.0,
        help="L2 strength of the regularized run (default 3, as in d2l.ai)",
    )
    p.add_argument("--epochs", type=argtypes.positive_int, default=100)
    p.add_argument("--lr", type=argtypes.positive_float, default=0.003)
    p.add_argument("--seed", type=argtypes.seed_value, default=0)
    flags.add_output_flags(p)
    p.set_defaults(handler=main, command_parser=p)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    data = datasets.synthetic_linear()
    config = TrainConfig(
        model="linear",
        optimizer="sgd",
        lr=args.lr,
        epochs=args.epochs,
        batch_size=5,
        init_std=1.0,
        half_squared_error=True,  # d2l's squared_loss, so that its lambda and lr mean the same
    )
    entrants = [Contender("lambda=0"), Contender(f"lambda={args.lam:g}", L2(args.lam), "loss")]
    out = common.output_dir(args, "demo-weight-decay")
    common.echo(common.describe_run(data, config, [args.seed]))
    common.echo(
        "  loss: squared error / 2 (d2l.ai's squared_loss), so lambda and lr are the book's; the "
        "loss columns below are in those units"
    )
    bars = common.show_progress_bars(args)
    results = []
    for c in entrants:
        results.append(run(data, c, config, args.seed, progress=bars))
        if not bars:
            common.echo(f"finished {c.label} in {results[-1].wall_time:.1f} s")
    summary = summarize(results, [c.label for c in entrants])
    common.echo()
    common.echo(format_table(summary, data.task))
    plain, decayed = (r.final for r in results)
    common.echo(
        f"\nwithout decay: train loss {plain.train_loss:.3g}, test loss {plain.test_loss:.3g}, "
        f"|w| {plain.weight_norm:.3g}"
        f"\nwith L2({args.lam:g}):   train loss {decayed.train_loss:.3g}, test loss "
        f"{decayed.test_loss:.3g}, |w| {decayed.weight_norm:.3g}"
    )
    checks = {
        "without decay the model over-fits (train loss < test loss / 10)": plain.train_loss
        < plain.test_loss / EFFECT,
        f"decay lowers the test loss at least {EFFECT:g}x": decayed.test_loss * EFFECT
        < plain.test_loss,
        "decay shrinks the weights": decayed.weight_norm < plain.weight_norm,
    }
    write_json(
        out / "results.json",
        {
            **common.header("demo weight-decay", args, data, [args.seed]),
            "summary": summary,
            "runs": run_records(results),
            "checks": checks,
        },
    )
    write_history(out / "history.csv", results)
    plots.plot_curves(results, [c.label for c in entrants], data.task, out / "demo.png")
    common.echo(f"\nwrote {out}/: results.json, history.csv, demo.png")
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        common.echo(
            "torchpenalty: error: the weight-decay effect is absent: " + "; ".join(failed),
            file=sys.stderr,
        )
        return 1
    common.echo("effect reproduced: " + "; ".join(checks))
    return 0
