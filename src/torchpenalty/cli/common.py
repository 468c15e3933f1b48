"""Flags and helpers shared by the commands: data, model, training and output options."""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import torchpenalty
from torchpenalty import L2, Regularizer
from torchpenalty.experiments import batched, runner
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.results import environment
from torchpenalty.experiments.runner import Trained
from torchpenalty.experiments.tensorboard_runs import TensorBoardRuns
from torchpenalty.experiments.training import (
    Contender,
    TrainConfig,
    build_model,
    loss_function,
    make_optimizer,
    optimizer_classes,
    target_of,
)
from torchpenalty.sparsity.compaction import unit_layers

from .argtypes import MAX_SEED
from .flags import DEFAULT_MOMENTUM


class CommandError(Exception):
    """A one-line error for the user (exit code 2), e.g. a bad data file."""


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
    """Fail before any training, for every contender: the model must suit the data, the optimizer
    must take the flags, every penalty rule must select something, every strength must fit the
    model's dtype, and the optimizer must support the contender's mode (a usage error, or one
    line for a rules file). Each contender is set up exactly as `run` will set it up."""
    try:
        model = build_model(data, config, seed=0)
    except ValueError as exc:
        parser.error(str(exc))
    except (RuntimeError, MemoryError) as exc:  # a model too large for this machine
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"the model cannot be built here ({reason[:200]})") from None
    for c in contenders:
        where = f"contender {c.label!r}: "
        try:  # the contender's own parts: always named
            net = model if c.dropout is None else build_model(data, config, 0, c.dropout)
            loss_function(data, config, c.label_smoothing)
        except ValueError as exc:
            parser.error(where + str(exc))
        try:
            opt = make_optimizer(
                c.optimizer or config.optimizer,
                net.parameters(),
                lr=config.lr if c.lr is None else c.lr,
                momentum=config.momentum,
                weight_decay=c.weight_decay,
            )
        except ValueError as exc:
            parser.error(str(exc) if len(contenders) == 1 else where + str(exc))
        if c.weight_decay:
            try:  # run() reports the optimizer's decay as L2 on every parameter
                Regularizer(net, L2(c.weight_decay), among="all")
            except ValueError as exc:
                parser.error(f"--weight-decay {c.weight_decay:g}: {exc}")
        if c.penalty is None or not c.has_penalty:
            continue
        if c.target is not None and c.mode != "proximal":
            parser.error(
                f"{where}--target {c.target[0]}={c.target[1]:g} needs proximal mode (its zeros "
                f"are the prox's exact zeros): --mode proximal or @proximal, not {c.mode}"
            )
        try:
            reg = Regularizer(net, c.penalty)
            if c.mode != "loss":
                reg.attach(opt, mode=c.mode).remove()
        except ValueError as exc:
            if isinstance(c.penalty, dict) and rules_file is not None:
                raise CommandError(f"{rules_file}: {exc}") from None
            parser.error(f"--reg {c.label}: {exc}")
        target = target_of(c, 1)
        if target is not None and c.target is not None:
            try:
                Regularizer(net, c.penalty, target=target)
            except ValueError as exc:
                parser.error(f"--target {c.target[0]}={c.target[1]:g} with {c.label}: {exc}")


def check_target(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    data: datasets.Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
) -> None:
    """``--target`` before any training: on data other than csv it must be exactly
    ``units=F``, ``groups=F`` or ``weights=F``; a sparsity target needs a penalty contender, and
    ``units=`` a model with hidden units."""
    label = getattr(args, "target", None)
    if label is not None and not str(args.data).startswith("csv:"):
        parser.error(
            f"--target {label}: not a sparsity target (units=F, groups=F or weights=F, F in "
            f"(0, 1)), and {args.data} data has no label column to name"
        )
    wanted = getattr(args, "sparsity_target", None)
    if wanted is None:
        return
    kind, fraction = wanted
    flag = f"--target {kind}={fraction:g}"
    if not any(c.has_penalty for c in contenders):
        parser.error(f"{flag}: no contender has a penalty to reach it (give one with --reg)")
    if kind == "units":
        model = build_model(data, config, seed=0)
        example = data.x_train[:2].to(config.device)
        if not unit_layers(model, example):
            hidden = (
                f" --hidden {','.join(map(str, config.hidden))}" if config.model == "mlp" else ""
            )
            parser.error(
                f"{flag}: the model has no hidden units to remove "
                f"(--model {config.model}{hidden}); use groups= or weights=, or a model with "
                "hidden layers"
            )


def check_tensorboard(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--tensorboard DIR`` needs the package and a folder it can write to (created now)."""
    where = getattr(args, "tensorboard", None)
    if where is None:
        return
    if importlib.util.find_spec("tensorboard") is None:
        parser.error(
            "--tensorboard needs the tensorboard package: pip install 'torchpenalty[tensorboard]'"
        )
    if where.exists() and not where.is_dir():
        parser.error(f"--tensorboard {where}: not a folder")
    problem = cannot_write(where)
    if problem:
        parser.error(f"--tensorboard {where}: cannot write there: {problem}")


def cannot_write(folder: Path) -> str | None:
    """Why ``folder`` cannot be created and written (its reason and the path it failed on),
    or None once a file was written and removed there."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(folder) else ""
        return reason + where
    return None


def output_dir(args: argparse.Namespace, command: str) -> Path:
    """The output folder, created and proven writable before any training, or a one-line
    `CommandError` (a file in the way, a path under a file, no permission)."""
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: is a file, not a folder")
    problem = cannot_write(out)
    if problem:
        raise CommandError(f"--out {out}: cannot write there: {problem}")
    return out


def seeds(args: argparse.Namespace) -> list[int]:
    last = args.seed + args.seeds - 1
    if last > MAX_SEED:
        raise CommandError(f"--seed {args.seed} with --seeds {args.seeds} goes past {MAX_SEED}")
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
    skip = {"handler", "command_parser", "argv", "resume_state"}
    return {k: _jsonable(v) for k, v in vars(args).items() if k not in skip}


def data_summary(data: datasets.Dataset) -> dict[str, Any]:
    return {
        "name": data.name,
        "task": data.task,
        "features": data.n_features,
        "classes": data.n_classes,
        # class index -> the label it stands for in the file (CSV data)
        **({"class_labels": data.class_labels} if data.class_labels is not None else {}),
        "train": len(data.x_train),
        "validation": len(data.x_val),
        "test": len(data.x_test),
    }


def echo(*parts: object, file=None) -> None:
    """Print; when the reader of the output has gone (``| head``), the run goes on silently and
    still writes its files."""
    stream = file or sys.stdout
    try:
        print(*parts, file=stream, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


def show_progress_bars(args: argparse.Namespace) -> bool:
    """Bars only on a terminal: without one (CI logs, pipes, ``| tee``) every refresh would be a
    new line, so one line per finished run is printed instead."""
    return not args.quiet and sys.stderr.isatty()


def train_all(
    args: argparse.Namespace,
    data: datasets.Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
    seed_list: Sequence[int],
    out: Path,
    *,
    warm_start: bool = False,
) -> Trained:
    """`runner.train_all` with the command's flags: its argv, its resume state, its output,
    its TensorBoard runs."""
    board = None
    if getattr(args, "tensorboard", None) is not None:
        board = TensorBoardRuns(args.tensorboard, [c.label for c in contenders], data.task)
    stacks = stacks_of(args, data, config, contenders, seed_list, warm_start)
    try:
        trained = runner.train_all(
            data,
            config,
            contenders,
            seed_list,
            out,
            argv=args.argv,
            resume_state=getattr(args, "resume_state", None),
            progress_bars=show_progress_bars(args),
            warm_start=warm_start,
            say=echo,
            on_history=None if board is None else board.record,
            stacks=stacks,
        )
    finally:
        if board is not None:
            board.close()
    if trained.interrupted:
        echo(f"\ninterrupted: keeping the {len(trained.results)} finished run(s)", file=sys.stderr)
    return trained


def stacks_of(
    args: argparse.Namespace,
    data: datasets.Dataset,
    config: TrainConfig,
    contenders: Sequence[Contender],
    seed_list: Sequence[int],
    warm_start: bool,
) -> list[list[int]] | None:
    """How the runs train: stacks of runs at once (`batched.plan`), or None (each alone:
    ``--sequential``, a warm start, a command without the batching flags)."""
    if getattr(args, "sequential", True) or warm_start:
        return None
    budget_mib = getattr(args, "batch_memory", None)
    if budget_mib is not None:
        budget = int(budget_mib * 2**20)
    elif config.device.startswith("cuda"):
        budget = torch.cuda.mem_get_info(torch.device(config.device))[0] // 2
    else:
        budget = batched.DEFAULT_BUDGET
    per_member = batched.member_bytes(data, config)
    return batched.plan(contenders, seed_list, config, per_member, budget, sequential=False)


def describe_stacks(trained: Trained, runs: int) -> str | None:
    """One line: which runs trained at once, and how many alone."""
    if not trained.stacks:
        return None
    together = sum(len(s) for s in trained.stacks)
    sizes = ", ".join(str(len(s)) for s in trained.stacks)
    stacked = {run for stack in trained.stacks for run in stack}
    alone = sorted({r.contender for r in trained.results if (r.contender, r.seed) not in stacked})
    return f"trained at once: {together} of {runs} runs, in stacks of {sizes}" + (
        f"; alone: {', '.join(alone)}" if alone else ""
    )


def finish(trained: Trained) -> int:
    """The exit code once the outputs are written: 130 after Ctrl-C, 1 (and one line) after a
    failure during training, else 0."""
    if trained.failure:
        echo(
            f"torchpenalty: error: {trained.failure}; the {len(trained.results)} finished "
            "run(s) are in the outputs",
            file=sys.stderr,
        )
        return 1
    return 130 if trained.interrupted else 0


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
