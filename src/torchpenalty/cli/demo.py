"""``torchpenalty demo weight-decay``: d2l.ai's weight-decay experiment, checked (``demo adamw``:
see `demo_adamw`).

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

from . import argtypes, common, demo_adamw, flags
from .sweep import lam_grid

EFFECT = 10.0  # the test loss must drop at least this many times with decay


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="reproduce a classic experiment (weight-decay, adamw)",
        description="weight-decay: "
        + __doc__.split("\n\n")[1]
        + " adamw: Loshchilov & Hutter's learning rate x weight decay grid on digits, Adam with "
        "coupled L2 against AdamW's decoupled decay, as two heatmaps.",
    )
    p.add_argument("experiment", choices=EXPERIMENTS)
    p.add_argument(
        "--lam",
        type=argtypes.positive_float,
        help="weight-decay: L2 strength of the regularized run (default 3, as in d2l.ai)",
    )
    p.add_argument(
        "--epochs",
        type=argtypes.positive_int,
        help=f"default 100 (weight-decay), {demo_adamw.DEFAULT_EPOCHS} (adamw)",
    )
    p.add_argument("--lr", type=argtypes.positive_float, help="weight-decay: default 0.003")
    p.add_argument(
        "--lrs",
        type=lam_grid,
        help="adamw: the learning rates (START:STOP:NUM or a list; default "
        f"{','.join(f'{x:g}' for x in demo_adamw.DEFAULT_LRS)})",
    )
    p.add_argument(
        "--decays",
        type=lam_grid,
        help="adamw: the weight decays (default "
        f"{','.join(f'{x:g}' for x in demo_adamw.DEFAULT_DECAYS)})",
    )
    p.add_argument(
        "--seeds",
        type=argtypes.seed_count,
        default=1,
        metavar="K",
        help="adamw: repeat the grid with K seeds and average",
    )
    p.add_argument("--seed", type=argtypes.seed_value, default=0)
    flags.add_batching_flags(p)
    flags.add_output_flags(p)
    p.set_defaults(handler=main, command_parser=p)


#: each experiment's own flags: given to another, they would be ignored, so they are refused
OWN_FLAGS = {"weight-decay": ("lam", "lr"), "adamw": ("lrs", "decays")}
EXPERIMENTS = tuple(OWN_FLAGS)


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    for experiment, own in OWN_FLAGS.items():
        for name in own:
            if experiment != args.experiment and getattr(args, name) is not None:
                parser.error(f"--{name} applies to demo {experiment}, not {args.experiment}")
    if args.experiment == "weight-decay" and args.seeds != 1:
        parser.error("--seeds applies to demo adamw; demo weight-decay runs one seed (--seed)")
    if args.experiment == "adamw":
        args.lrs = args.lrs or list(demo_adamw.DEFAULT_LRS)
        args.decays = args.decays or list(demo_adamw.DEFAULT_DECAYS)
        return demo_adamw.run_adamw(args, parser)
    args.lam = 3.0 if args.lam is None else args.lam
    args.lr = 0.003 if args.lr is None else args.lr
    args.epochs = args.epochs or 100
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
