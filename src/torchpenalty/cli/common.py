"""Flags and helpers shared by the commands: data, model, training and output options."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import torchpenalty
from torchpenalty import L2, Regularizer
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.models import ACTIVATIONS, MODELS
from torchpenalty.experiments.results import environment
from torchpenalty.experiments.training import (
    MODES,
    Contender,
    EpochRecord,
    ResumeError,
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


#: torch.manual_seed and torch.Generator take seeds in [0, 2**64); results.json stays portable
#: (JavaScript reads integers exactly below 2**53)
MAX_SEED = 2**53 - 1


def seed_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"expected a seed in 0..{MAX_SEED} (2**53 - 1), got {text}"
        )
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


#: devices that hold real data a model can train on (not "meta")
DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")


def device_name(text: str) -> str:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"unknown device {text!r}; use one of {', '.join(DEVICE_TYPES)} (e.g. cuda:0)"
        ) from None
    if device.type not in DEVICE_TYPES:
        raise argparse.ArgumentTypeError(
            f"device {text!r} cannot train a model; use one of {', '.join(DEVICE_TYPES)}"
        )
    try:
        torch.ones(1, device=device).add_(1).cpu()
    except Exception as exc:  # each backend fails in its own way: say what it said, in one line
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise argparse.ArgumentTypeError(f"device {text!r} is not usable here ({reason})") from None
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
    """Fail before any training, for every contender: the model must suit the data, the optimizer
    must take the flags, every penalty rule must select something, every strength must fit the
    model's dtype, and the optimizer must support the contender's mode (a usage error, or one
    line for a rules file). Each contender is set up exactly as `run` will set it up."""
    try:
        model = build_model(data, config, seed=0)
    except ValueError as exc:
        parser.error(str(exc))
    for c in contenders:
        where = f"contender {c.label!r}: "
        try:
            opt = make_optimizer(
                config.optimizer,
                model.parameters(),
                lr=config.lr,
                momentum=config.momentum,
                weight_decay=c.weight_decay,
            )
        except ValueError as exc:
            parser.error(str(exc) if len(contenders) == 1 else where + str(exc))
        if c.weight_decay:
            try:  # run() reports the optimizer's decay as L2 on every parameter
                Regularizer(model, L2(c.weight_decay), among="all")
            except ValueError as exc:
                parser.error(f"--weight-decay {c.weight_decay:g}: {exc}")
        if c.penalty is None:
            continue
        try:
            reg = Regularizer(model, c.penalty)
            if c.mode != "loss":
                reg.attach(opt, mode=c.mode).remove()
        except ValueError as exc:
            if isinstance(c.penalty, dict) and rules_file is not None:
                raise CommandError(f"{rules_file}: {exc}") from None
            parser.error(f"--reg {c.label}: {exc}")


def output_dir(args: argparse.Namespace, command: str) -> Path:
    """The output folder, created and proven writable before any training, or a one-line
    `CommandError` (a file in the way, a path under a file, no permission)."""
    out = args.out
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"{command}-{stamp}"
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out {out}: is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test-"):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(out) else ""
        raise CommandError(f"--out {out}: cannot write there: {reason}{where}") from None
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
    problem = _checkpoint_problem(state)
    if problem:
        raise CommandError(f"{path}: corrupt checkpoint: {problem}")
    return state


RUN_KEYS = {"epoch", "model", "optimizer", "regularizer", "shuffle", "rng", "history", "elapsed"}


def _checkpoint_problem(state: dict) -> str | None:
    """What is missing or malformed in a checkpoint's content, or None: every field `train_all`
    and `run` read is checked before anything is trained."""
    argv = state.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return "'argv' must be the list of the run's arguments"
    completed = state.get("completed")
    if not isinstance(completed, list):
        return "'completed' must be a list of finished runs"
    for i, run_state in enumerate(completed):
        if not isinstance(run_state, dict) or not {"history", "wall_time", "model"} <= set(
            run_state
        ):
            return f"finished run {i} lacks its history, wall time or model"
        if not _history_ok(run_state["history"]) or not _weights_ok(run_state["model"]):
            return f"finished run {i} has a malformed history or model"
    current = state.get("current")
    if current is None:
        return None
    if not isinstance(current, dict) or not isinstance(current.get("index"), int):
        return "'current' must name the run in progress by its index"
    run_state = current.get("state")
    if not isinstance(run_state, dict) or not set(run_state) >= RUN_KEYS:
        missing = sorted(RUN_KEYS - set(run_state)) if isinstance(run_state, dict) else ["all"]
        return f"the run in progress lacks {', '.join(missing)}"
    if not isinstance(run_state["epoch"], int) or run_state["epoch"] < 1:
        return "the run in progress has no valid epoch number"
    if not _history_ok(run_state["history"]) or not _weights_ok(run_state["model"]):
        return "the run in progress has a malformed history or model"
    for key in ("shuffle", "rng"):
        if not isinstance(run_state[key], torch.Tensor) or run_state[key].dtype != torch.uint8:
            return f"the run in progress has a malformed random state ({key})"
    return None


def _history_ok(history: object) -> bool:
    fields = {f.name for f in dataclasses.fields(EpochRecord)}
    return isinstance(history, list) and all(
        isinstance(r, dict) and set(r) == fields for r in history
    )


def _weights_ok(weights: object) -> bool:
    return isinstance(weights, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()
    )


@dataclasses.dataclass
class Trained:
    """What `train_all` finished: the runs, each contender's first-seed model, whether Ctrl-C
    stopped it, and the one-line reason if a run failed during training."""

    results: list[RunResult]
    first_models: dict[str, nn.Module]
    interrupted: bool = False
    failure: str | None = None


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
    """Every contender with every seed, in order; the finished runs are kept when Ctrl-C stops it
    or when a run fails during training (its reason in ``failure``). With ``warm_start`` each run
    starts from the previous contender's weights (same seed).

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
    trained = Trained([], {})
    previous: dict[int, dict] = {}
    pending = resume.get("current")
    total = len(contenders) * len(seed_list)
    done = len(checkpoint["completed"])
    if done > total or (pending is not None and (pending["index"] != done or done == total)):
        raise CommandError(
            f"checkpoint: corrupt checkpoint: it records {done} finished run(s)"
            + ("" if pending is None else f" and run {pending['index']} in progress")
            + f", which does not fit this run's {total} run(s)"
        )
    bars = show_progress_bars(args)
    for index, (c, seed) in enumerate((c, s) for c in contenders for s in seed_list):
        try:
            if index < len(checkpoint["completed"]):
                result = _restored(checkpoint["completed"][index], c, seed, data, config)
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
                    progress=bars,
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
        except KeyboardInterrupt:
            echo(
                f"\ninterrupted: keeping the {len(trained.results)} finished run(s)",
                file=sys.stderr,
            )
            trained.interrupted = True
            return trained
        except CommandError:
            raise
        except ResumeError as exc:
            raise CommandError(f"checkpoint: {exc}") from None
        except Exception as exc:  # a failure only training could reveal: keep what finished
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            trained.failure = (
                f"{c.label} (seed {seed}) failed during training: {type(exc).__name__}"
                + (f": {reason[:300]}" if reason else "")
            )
            return trained
        if warm_start:
            previous[seed] = clone_state(result.model)
        if seed == seed_list[0]:
            trained.first_models[c.label] = result.model
        result.model = None
        trained.results.append(result)
        if not bars:
            echo(f"finished {result.contender} (seed {result.seed}) in {result.wall_time:.1f} s")
    return trained


def _restored(
    saved: dict, c: Contender, seed: int, data: datasets.Dataset, config: TrainConfig
) -> RunResult:
    """A finished run read back from the checkpoint."""
    result = RunResult(
        c.label,
        seed,
        [EpochRecord(**r) for r in saved["history"]],
        saved["wall_time"],
        model=build_model(data, config, seed),
    )
    try:
        result.model.load_state_dict(saved["model"])
    except RuntimeError as exc:
        raise CommandError(
            f"checkpoint: the weights of finished run {c.label} (seed {seed}) do not fit the "
            f"model ({str(exc).strip().splitlines()[0][:200]})"
        ) from None
    return result


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
