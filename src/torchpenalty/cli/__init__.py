"""The ``torchpenalty`` command: ``compare``, ``sweep`` and ``demo``.

Exit codes: 0 done, 1 a demo whose effect is absent, 2 bad flags or bad data (one line, no
traceback), 130 interrupted (the finished runs are kept and reported).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from torchpenalty.experiments.checkpoints import CheckpointError, load_checkpoint

from . import compare, demo, sweep
from .common import CommandError


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line (exit 2), pointing to ``--help`` instead of printing the usage."""

    def error(self, message: str) -> NoReturn:
        first = message.strip().splitlines()[0] if message.strip() else "invalid arguments"
        self.exit(2, f"{self.prog}: error: {first} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="torchpenalty",
        description="Train and compare parameter-norm regularizers on real data.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (compare, sweep, demo):
        module.add_parser(subparsers)
    return parser


def _check_extras() -> None:
    missing = [m for m in ("sklearn", "matplotlib", "tqdm") if importlib.util.find_spec(m) is None]
    if missing:
        raise CommandError(
            f"the command-line tool needs {', '.join(missing)}: pip install 'torchpenalty[cli]'"
        )


def resumed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """The stopped run's own arguments, writing into the checkpoint's folder."""
    state = load_checkpoint(args.resume)
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said):
            saved = parser.parse_args(state["argv"])
    except SystemExit:
        reason = said.getvalue().strip().partition("error: ")[2]
        raise CommandError(
            f"{args.resume}: corrupt checkpoint: the arguments it records do not parse ({reason})"
        ) from None
    if saved.command != args.command:
        raise CommandError(
            f"{args.resume}: a checkpoint of '{saved.command}', not '{args.command}'"
        )
    saved.argv = state["argv"]
    saved.out = args.resume.parent
    saved.quiet = args.quiet
    saved.resume_state = state
    return saved


def main(argv: Sequence[str] | None = None) -> int:
    try:
        _check_extras()
    except CommandError as exc:
        print(f"torchpenalty: error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "resume", None) is not None:
            args = resumed(parser, args)
        else:
            args.argv = argv
        return args.handler(args, args.command_parser)
    except (CommandError, CheckpointError) as exc:
        print(f"torchpenalty: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output left (`| head`): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
