"""Argument types of the command line: each parses one flag's text or raises
`argparse.ArgumentTypeError`, which argparse turns into a one-line usage error."""

from __future__ import annotations

import argparse

import numpy as np
import torch

import torchpenalty
from torchpenalty.experiments.training import optimizer_classes


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


#: more seeds than this is a typo, not a study (each is a full training run per contender)
MAX_SEEDS = 1000


def seed_count(text: str) -> int:
    value = positive_int(text)
    if value > MAX_SEEDS:
        raise argparse.ArgumentTypeError(f"expected at most {MAX_SEEDS} seeds, got {value}")
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
