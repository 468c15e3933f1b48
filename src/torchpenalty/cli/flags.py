"""The flag groups the commands share: data, model, training, output, mode and compaction."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from torchpenalty.experiments.models import ACTIVATIONS, MODELS
from torchpenalty.regularizer.attach import ALL_MODES
from torchpenalty.sparsity.target import KINDS

from .argtypes import (
    device_name,
    hidden_sizes,
    non_negative_float,
    optimizer_name,
    positive_float,
    positive_int,
    probability,
    seed_count,
    seed_value,
)

DEFAULT_MOMENTUM = 0.9


class TargetAction(argparse.Action):
    """``--target``: ``KIND=FRACTION`` (a sparsity target) goes to ``sparsity_target``; anything
    else is the csv label column (``target``), as before sparsity targets existed."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        text = str(values)
        kind, eq, fraction = text.partition("=")
        if not eq or kind not in KINDS:
            namespace.target = text  # a csv label column (`check_target` refuses it elsewhere)
            return
        try:
            value = float(fraction)
        except ValueError:
            value = math.nan
        if not 0 < value < 1:  # NaN too
            parser.error(f"argument --target: {kind}= takes a fraction in (0, 1), got {fraction!r}")
        namespace.sparsity_target = (kind, value)


def add_data_flags(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default,
        metavar="SPEC",
        help="digits (default), synthetic-linear, mnist:PATH (mnist.npz or an IDX "
        "folder), csv:PATH",
    )
    g.add_argument(
        "--target",
        action=TargetAction,
        metavar="COLUMN|KIND=FRACTION",
        help="csv data: the label column (also --label); or, with units=, groups= or weights=, "
        "a sparsity target: every penalty contender (in proximal mode) is trained until that "
        "fraction of hidden units, groups or weights is exactly zero by half the training "
        "steps, then frozen and fine-tuned (see --compact)",
    )
    g.add_argument("--label", dest="target", metavar="COLUMN", help="label column of csv data")
    g.add_argument(
        "--task",
        choices=("auto", "classification", "regression"),
        default="auto",
        help="csv data: classification or regression (auto: integer labels, <= 20 classes)",
    )
    g.add_argument(
        "--train-size",
        type=positive_int,
        metavar="N",
        help="subsample N training rows (fixed, stratified)",
    )


def add_model_flags(parser: argparse.ArgumentParser, default: str = "mlp") -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", choices=MODELS, default=default)
    g.add_argument(
        "--hidden",
        type=hidden_sizes,
        default=(200, 100),
        metavar="W1,W2",
        help="MLP hidden widths (default 200,100)",
    )
    g.add_argument("--activation", choices=tuple(ACTIVATIONS), default="relu")
    g.add_argument("--dropout", type=probability, default=0.0, metavar="P")


def add_training_flags(parser: argparse.ArgumentParser, **defaults: Any) -> None:
    g = parser.add_argument_group("training")
    g.add_argument(
        "--optimizer",
        type=optimizer_name,
        default=defaults.get("optimizer", "sgd"),
        help="any torch.optim optimizer by name: sgd, adam, adamw, rmsprop, ...",
    )
    g.add_argument("--lr", type=positive_float, default=defaults.get("lr", 0.05))
    g.add_argument(
        "--momentum",
        type=non_negative_float,
        help=f"default {DEFAULT_MOMENTUM} for optimizers that take momentum (sgd, "
        "rmsprop), none for the others",
    )
    g.add_argument("--epochs", type=positive_int, default=defaults.get("epochs", 60))
    g.add_argument("--batch-size", type=positive_int, default=defaults.get("batch_size", 64))
    g.add_argument(
        "--seeds",
        type=seed_count,
        default=1,
        metavar="K",
        help="repeat with K seeds and report mean ± std",
    )
    g.add_argument("--seed", type=seed_value, default=0, help="first seed (default 0)")
    g.add_argument("--device", type=device_name, default="cpu")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        metavar="DIR",
        help="output folder (default runs/<command>-<timestamp>/)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument(
        "--resume",
        type=Path,
        metavar="CHECKPOINT",
        help="continue a stopped run from its checkpoint.pt (written after every "
        "epoch); the run's own flags are read from it",
    )


def add_compact_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compact",
        action="store_true",
        help="after training, remove dead and unused units (torchpenalty.compact) and report the "
        "compacted parameter count and the inference speed-up on the test set",
    )


def add_tensorboard_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tensorboard",
        type=Path,
        metavar="DIR",
        help="write one TensorBoard run per contender and seed under DIR, one point per epoch "
        "(train and validation loss and metric, penalty, weight norm, zeros); needs "
        "torchpenalty[tensorboard]",
    )


def add_mode_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=ALL_MODES, default="loss", help="how penalties are applied (default loss)"
    )


def add_batching_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("batching")
    g.add_argument(
        "--sequential",
        action="store_true",
        help="train every run alone, one after another (default: runs that differ only in "
        "their penalty and seed train at once, as one stacked model)",
    )
    g.add_argument(
        "--batch-memory",
        type=positive_float,
        metavar="MIB",
        help="the memory a stack of runs trained at once may take, in MiB (default: 2048 on "
        "CPU, half the free memory of a GPU); more runs than fit train in several stacks",
    )


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The data, model, training, batching and output flags of a command that trains
    contenders."""
    add_data_flags(parser)
    add_model_flags(parser)
    add_training_flags(parser)
    add_batching_flags(parser)
    add_output_flags(parser)
