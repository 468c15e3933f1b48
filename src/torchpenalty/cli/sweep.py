"""``torchpenalty sweep``: the regularization path of one penalty over a grid of strengths.

The strength is chosen on the validation split, never on test; its test score is then reported.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from torchpenalty import Penalty, Zero, parse
from torchpenalty.experiments import plots
from torchpenalty.experiments.results import metric_name
from torchpenalty.experiments.training import Contender

from . import argtypes, flags, pipeline
from .contender_spec import split_mode


def lam_grid(text: str) -> list[float]:
    """``START:STOP:NUM`` (a log grid) or a comma-separated list of strengths >= 0."""
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(
                f"expected START:STOP:NUM such as 1e-6:1e-1:13, got {text!r}"
            )
        start, stop = (argtypes.positive_float(p) for p in parts[:2])
        num = argtypes.positive_int(parts[2])
        if num < 2:
            raise argparse.ArgumentTypeError(f"a grid needs NUM >= 2 points, got {text!r}")
        grid = [float(x) for x in np.geomspace(start, stop, num)]
        if len(set(grid)) != len(grid):
            raise argparse.ArgumentTypeError(f"repeated strengths in the grid {text!r}")
        return grid
    values = [argtypes.non_negative_float(p.strip()) for p in text.split(",") if p.strip()]
    if len(values) < 2:
        raise argparse.ArgumentTypeError(f"a sweep needs at least 2 strengths, got {text!r}")
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"repeated strengths in {text!r}")
    return values


def strength_labels(lams: list[float]) -> list[str]:
    """The shortest labels (3 significant digits or more) that tell every strength apart."""
    for digits in range(3, 18):
        labels = [f"{lam:.{digits}g}" for lam in lams]
        if len(set(labels)) == len(labels):
            return labels
    raise ValueError(f"repeated strengths in {lams}")  # lam_grid refuses these already


def unit_penalty(text: str) -> Penalty:
    """The penalty that lambda multiplies: strengths the spec leaves out are 1 (lambda itself)."""
    try:
        penalty = parse(text, default_strength=1.0)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).splitlines()[0]) from None
    if penalty == Zero():
        raise argparse.ArgumentTypeError("'none' has no strength to sweep")
    return penalty


class PenaltyAndMode(argparse.Action):
    """``--reg SPEC[@MODE]``: the penalty goes to ``reg``, the mode (None: ``--mode``) to
    ``reg_mode``."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        try:
            text, mode = split_mode(str(values))
            setattr(namespace, self.dest, unit_penalty(text))
        except (ValueError, argparse.ArgumentTypeError) as exc:
            parser.error(f"argument --reg: {exc}")
        namespace.reg_mode = mode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sweep",
        help="train once per strength and pick lambda on the validation split",
        description="The regularization path: train once per strength in --lams, plot validation "
        "and test metrics, weight norm and sparsity against lambda, and report the strength the "
        "validation split picks with its test score.",
    )
    g = p.add_argument_group("regularizer")
    g.add_argument(
        "--reg",
        action=PenaltyAndMode,
        default=unit_penalty("l2"),
        metavar="SPEC",
        help="a bare name (l2, l1, elastic_net: every strength = lambda) or a spec whose "
        "strengths lambda multiplies, e.g. 'elastic_net(l1=1, l2=4)' (default l2); @MODE "
        "after it overrides --mode: l1@proximal",
    )
    g.add_argument(
        "--lams",
        type=lam_grid,
        default=lam_grid("1e-6:1e-1:11"),
        metavar="GRID",
        help="START:STOP:NUM log grid or a list 0,1e-4,1e-3 (default 1e-6:1e-1:11)",
    )
    flags.add_mode_flag(g)
    g.add_argument(
        "--warm-start",
        action="store_true",
        help="start each strength from the previous one's weights (largest lambda first)",
    )
    flags.add_compact_flag(g)
    flags.add_tensorboard_flag(g)
    flags.add_run_flags(p)
    p.set_defaults(handler=main, command_parser=p, reg_mode=None, sparsity_target=None)


def choose(summary: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """The row the validation split prefers: best metric, then lower validation loss."""
    if task == "classification":
        return max(summary, key=lambda r: (r["val_metric"], -r["val_loss"]))
    return min(summary, key=lambda r: (r["val_metric"], r["val_loss"]))


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    mode = args.reg_mode or args.mode
    lams = sorted(args.lams, reverse=True) if args.warm_start else list(args.lams)
    labels = strength_labels(lams)
    try:
        entrants = [
            Contender(label, lam * args.reg, mode, target=args.sparsity_target)
            for label, lam in zip(labels, lams, strict=True)
        ]
    except ValueError as exc:  # lambda times a strength of the spec overflows
        parser.error(f"--lams: {exc}")

    def present(done: pipeline.Finished) -> pipeline.Presentation:
        summary, task = done.summary, done.data.task
        for row in summary:
            row["lam"] = lams[labels.index(row["contender"])]
        summary.sort(key=lambda r: r["lam"])
        best = choose(summary, task)
        fmt = ".2%" if task == "classification" else ".4g"
        val_name = metric_name(task).replace("test", "validation")
        return pipeline.Presentation(
            columns=[(val_name, "val_metric", fmt)],
            first_column="lambda",
            notes=[
                f"\nchosen on the validation split: lambda = {best['lam']:.4g} "
                f"({val_name} {format(best['val_metric'], fmt)}); "
                f"its {metric_name(task)}: {format(best['test_metric'], fmt)}"
            ],
            fields={
                "penalty": repr(args.reg),
                "mode": mode,
                "chosen": {
                    "lam": best["lam"],
                    "penalty": repr(best["lam"] * args.reg),
                    "val_metric": best["val_metric"],
                    "test_metric": best["test_metric"],
                },
            },
            figures={"sweep.png": lambda path: plots.plot_sweep(summary, task, best["lam"], path)},
        )

    study = pipeline.Study(
        "sweep",
        entrants,
        [
            f"  sweeping {args.reg!r} x lambda over {len(lams)} strengths, {mode} mode"
            + (", warm-started" if args.warm_start else "")
        ],
        present,
        warm_start=args.warm_start,
    )
    return pipeline.run_study(args, parser, study)
