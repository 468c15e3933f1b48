"""Flags and helpers shared by the commands: data, model, training and output options."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import torchpenalty
from torchpenalty import Regularizer
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.models import ACTIVATIONS, MODELS, build
from torchpenalty.experiments.results import environment
from torchpenalty.experiments.training import (
    MODES,
    Contender,
    EpochRecord,
    RunResult,
    TrainConfig,
    build_model,
    clone_state,
    make_optimizer,
    optimizer_classes,
    run,
)

DEFAULT_MOMENTUM = 0.9


class CommandError(Exception):
    """A one-line error for the user (exit code 2), e.g. a bad data file."""


# -- argument types: each raises ArgumentTypeError, which argparse turns into a usage error -----
def penalty_spec(text: str) -> torchpenalty.Penalty:
    try:
        return torchpenalty.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).splitlines()[0]) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a whole number > 0, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def probability(text: str) -> float:
    value = non_negative_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1), got {text!r}")
    return value


def hidden_sizes(text: str) -> tuple[int, ...]:
    parts = [p for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("expected layer widths such as 200,100")
    return tuple(positive_int(p.strip()) for p in parts)


def optimizer_name(text: str) -> str:
    if text.lower() not in optimizer_classes():
        names = ", ".join(sorted(optimizer_classes()))
        raise argparse.ArgumentTypeError(f"unknown optimizer {text!r}; choose from {names}")
    return text.lower()


def device_name(text: str) -> str:
    import torch

    try:
        device = torch.device(text)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise argparse.ArgumentTypeError(f"device {text!r} is not usable here ({exc})") from None
    return text


# -- flag groups --------------------------------------------------------------------------------
def add_data_flags(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    g = parser.add_argument_group("data")
    g.add_argument(
        "--data",
        default=default,
        metavar="SPEC",
        help="digits (default), synthetic-linear, mnist:PATH (mnist.npz or an IDX "
        "folder), csv:PATH",
    )
    g.add_argument("--target", metavar="COLUMN", help="label column of csv data")
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
        type=positive_int,
        default=1,
        metavar="K",
        help="repeat with K seeds and report mean ± std",
    )
    g.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
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


COMPACT_COLUMNS = (
    ("params", "params", "d"),
    ("compact params", "compact_params", "d"),
    ("units removed", "units_removed", "d"),
    ("speed-up", "speedup", ".2f"),
)


def add_compaction(
    summary: list[dict], models: dict[str, nn.Module], data: datasets.Dataset, device: str
) -> tuple:
    """Compact each contender's first-seed model; adds its figures to the summary rows and
    returns the table columns that show them."""
    from torchpenalty.experiments.inference import compaction_figures

    x_test = data.x_test.to(device)
    for row in summary:
        model = models.get(row["contender"])
        if model is not None:
            row.update(compaction_figures(model, x_test))
    return COMPACT_COLUMNS


def add_mode_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=MODES, default="loss", help="how penalties are applied (default loss)"
    )


# -- helpers --------------------------------------------------------------------------------------
def load_data(args: argparse.Namespace) -> datasets.Dataset:
    try:
        data = datasets.load(args.data, target=args.target, task=args.task)
        if args.train_size is not None:
            data = data.subsample_train(args.train_size)
    except datasets.DataError as exc:
        raise CommandError(str(exc)) from None
    return data


def train_config(args: argparse.Namespace) -> TrainConfig:
    momentum = args.momentum
    if momentum is None:
        accepted = inspect.signature(optimizer_classes()[args.optimizer]).parameters
        momentum = DEFAULT_MOMENTUM if "momentum" in accepted else None
    return TrainConfig(
        model=args.model,
        hidden=tuple(args.hidden),
        activation=args.activation,
        dropout=args.dropout,
        optimizer=args.optimizer,
        lr=args.lr,
        momentum=momentum,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
    )


def check_setup(
    parser: argparse.ArgumentParser,
    data: datasets.Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
    rules_file: Path | None = None,
) -> None:
    """Fail before any training: the model must suit the data, the optimizer must take the flags,
    and every penalty rule must select something (a usage error, or one line for a rules file)."""
    try:
        model = build(
            config.model,
            data,
            hidden=config.hidden,
            activation=config.activation,
            dropout=config.dropout,
        )
        for c in contenders:
            make_optimizer(
                config.optimizer,
                model.parameters(),
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=c.weight_decay,
            )
    except ValueError as exc:
        parser.error(str(exc))
    for c in contenders:
        if c.penalty is None:
            continue
        try:
            Regularizer(model, c.penalty)
        except ValueError as exc:
            if isinstance(c.penalty, dict) and rules_file is not None:
                raise CommandError(f"{rules_file}: {exc}") from None
            parser.error(f"--reg {c.label}: {exc}")


def output_dir(args: argparse.Namespace, command: str) -> Path:
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def seeds(args: argparse.Namespace) -> list[int]:
    return list(range(args.seed, args.seed + args.seeds))


def _jsonable(value: Any) -> Any:
    if isinstance(value, torchpenalty.Penalty):
        return repr(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def flags(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags as JSON-able values, recorded in results.json."""
    skip = {"handler", "argv", "resume_state"}
    return {k: _jsonable(v) for k, v in vars(args).items() if k not in skip}


def data_summary(data: datasets.Dataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "task": data.task,
        "features": data.n_features,
        "classes": data.n_classes,
        "train": len(data.x_train),
        "validation": len(data.x_val),
        "test": len(data.x_test),
    }


def echo(*parts: object, file=None) -> None:
    print(*parts, file=file or sys.stdout, flush=True)


CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KIND = "torchpenalty-checkpoint"


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomically: a temporary file in the same folder, then a rename over the old one."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `train_all`, or a one-line `CommandError` saying what is wrong."""
    if not path.is_file():
        raise CommandError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, a pickle with foreign objects
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"{path}: not a readable checkpoint ({reason[:160]})") from None
    if not isinstance(state, dict) or state.get("kind") != CHECKPOINT_KIND:
        raise CommandError(f"{path}: not a torchpenalty checkpoint (a torch file of another kind)")
    if state.get("version") != 1:
        raise CommandError(f"{path}: checkpoint version {state.get('version')!r} is not supported")
    return state


def train_all(
    args: argparse.Namespace,
    data: datasets.Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
    seed_list: Sequence[int],
    out: Path,
    *,
    warm_start: bool = False,
) -> tuple[list[RunResult], dict[str, nn.Module], bool]:
    """Every contender with every seed, in order. Returns the finished runs, each contender's
    model from its first seed, and whether Ctrl-C stopped it (the finished runs are kept).
    With ``warm_start`` each run starts from the previous contender's weights (same seed).

    After every epoch the whole state goes to ``out/checkpoint.pt``; ``args.resume_state``
    (from ``--resume``) continues from there to bitwise the same results.
    """
    resume = getattr(args, "resume_state", None) or {}
    checkpoint = {
        "kind": CHECKPOINT_KIND,
        "version": 1,
        "argv": list(args.argv),
        "completed": list(resume.get("completed", [])),
        "current": None,
    }
    results: list[RunResult] = []
    first_models: dict[str, nn.Module] = {}
    previous: dict[int, dict] = {}
    pending = resume.get("current")
    try:
        for index, (c, seed) in enumerate((c, s) for c in contenders for s in seed_list):
            if index < len(checkpoint["completed"]):
                saved = checkpoint["completed"][index]
                result = RunResult(
                    c.label,
                    seed,
                    [EpochRecord(**r) for r in saved["history"]],
                    saved["wall_time"],
                    model=build_model(data, config, seed),
                )
                result.model.load_state_dict(saved["model"])
            else:

                def on_epoch(state: dict, index: int = index) -> None:
                    checkpoint["current"] = {"index": index, "state": state}
                    save_checkpoint(out / CHECKPOINT, checkpoint)

                state = pending["state"] if pending and pending["index"] == index else None
                result = run(
                    data,
                    c,
                    config,
                    seed,
                    progress=not args.quiet,
                    init_state=previous.get(seed),
                    keep_model=True,
                    resume=state,
                    on_epoch=on_epoch,
                )
                checkpoint["completed"].append(
                    {
                        "history": [dataclasses.asdict(r) for r in result.history],
                        "wall_time": result.wall_time,
                        "model": result.model.state_dict(),
                    }
                )
                checkpoint["current"] = None
                save_checkpoint(out / CHECKPOINT, checkpoint)
            if warm_start:
                previous[seed] = clone_state(result.model)
            if seed == seed_list[0]:
                first_models[c.label] = result.model
            result.model = None
            results.append(result)
            finished(args, result)
    except KeyboardInterrupt:
        echo(f"\ninterrupted: keeping the {len(results)} finished run(s)", file=sys.stderr)
        return results, first_models, True
    return results, first_models, False


def header(command: str, args: argparse.Namespace, data: datasets.Dataset, seed_list) -> dict:
    """What every results.json starts with: how to reproduce it."""
    return {
        "command": command,
        "argv": sys.argv[1:],
        "flags": flags(args),
        "versions": environment(),
        "seeds": list(seed_list),
        "data": data_summary(data),
    }


def finished(args: argparse.Namespace, result: RunResult) -> None:
    """Without progress bars, one line per finished run."""
    if args.quiet:
        echo(f"finished {result.contender} (seed {result.seed}) in {result.wall_time:.1f} s")


def describe_run(data: datasets.Dataset, config: TrainConfig, seed_list: Sequence[int]) -> str:
    model = config.model + (
        f" {','.join(map(str, config.hidden))} {config.activation}" if config.model == "mlp" else ""
    )
    momentum = f" momentum {config.momentum:g}" if config.momentum is not None else ""
    return (
        f"data {data.name} ({len(data.x_train)} train / {len(data.x_val)} validation / "
        f"{len(data.x_test)} test), model {model}, {config.optimizer} lr {config.lr:g}{momentum}, "
        f"{config.epochs} epochs, batch {config.batch_size}, seeds {list(seed_list)}"
    )
