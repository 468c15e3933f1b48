"""Strength schedules: a factor of the step that multiplies every strength of a regularizer.

``Regularizer(model, "l2(0.05)", schedule=cosine(10_000, end=0.1))`` applies ``L2(0.05 * f(t))``
at step ``t``. A schedule is any callable ``f(step) -> factor`` (a finite number >= 0); the
built-in ones below also save and load with the regularizer's ``state_dict``. Steps count
optimizer steps when the regularizer is attached, else calls of ``reg.step()``.

- ``warmup(steps)``: ``min(1, t / steps)`` — no penalty at first, full strength after ``steps``;
- ``linear(steps, start=1, end=0)``: from ``start`` to ``end`` in ``steps``, then ``end``;
- ``cosine(steps, start=1, end=0)``: ``end + (start - end) * (1 + cos(pi * t / steps)) / 2``,
  then ``end`` (``start < end`` makes it grow, as DINO-style weight-decay schedules do).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from .._checks import check_strength
from ..penalties.registry import Registry

ScheduleLike = Callable[[int], float]


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise ValueError(f"steps must be a whole number > 0, got {steps!r}")
    return steps


#: schedule classes by config name; filled by `register`
SCHEDULES: Registry[type[Schedule]] = Registry("schedule")
S = TypeVar("S", bound=type["Schedule"])


def register(cls: S) -> S:
    """Class decorator: make a schedule class loadable by its ``name`` from a `state_dict`. A name
    that is taken is a `ValueError`."""
    SCHEDULES.register((cls.name,), cls)
    return cls


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Base of the built-in schedules: callable, comparable and serializable."""

    name: ClassVar[str]

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **dataclasses.asdict(self)}

    @staticmethod
    def from_config(config: Mapping[str, Any]) -> Schedule:
        config = dict(config)
        name = config.pop("name", None)
        if name not in SCHEDULES:
            known = ", ".join(SCHEDULES.names())
            raise ValueError(f"unknown schedule {name!r}; known schedules: {known}")
        return SCHEDULES.lookup(name)(**config)


@register
@dataclasses.dataclass(frozen=True)
class Warmup(Schedule):
    steps: int
    name: ClassVar[str] = "warmup"

    def __post_init__(self) -> None:
        _check_steps(self.steps)

    def __call__(self, step: int) -> float:
        return min(1.0, step / self.steps)


@dataclasses.dataclass(frozen=True)
class _FromTo(Schedule):
    """From ``start`` at step 0 to ``end`` at ``steps`` along ``shape(t)``, t in [0, 1]."""

    steps: int
    start: float = 1.0
    end: float = 0.0

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        object.__setattr__(self, "start", check_strength(self.start, "start"))
        object.__setattr__(self, "end", check_strength(self.end, "end"))

    def __call__(self, step: int) -> float:
        t = min(step, self.steps) / self.steps
        return self.start + (self.end - self.start) * self.shape(t)

    @staticmethod
    def shape(t: float) -> float:
        raise NotImplementedError


@register
@dataclasses.dataclass(frozen=True)
class Linear(_FromTo):
    name: ClassVar[str] = "linear"

    @staticmethod
    def shape(t: float) -> float:
        return t


@register
@dataclasses.dataclass(frozen=True)
class Cosine(_FromTo):
    name: ClassVar[str] = "cosine"

    @staticmethod
    def shape(t: float) -> float:
        return (1 - math.cos(math.pi * t)) / 2


def warmup(steps: int) -> Warmup:
    """A linear warm-up: factor ``min(1, t / steps)`` at step ``t``.

    Args:
        steps: optimizer steps to full strength (a whole number > 0).

    Returns:
        A `Warmup` schedule (saved and restored by the regularizer's ``state_dict``).
    """
    return Warmup(steps)


def linear(steps: int, start: float = 1.0, end: float = 0.0) -> Linear:
    """A linear ramp: factor ``start + (end - start) * min(t, steps) / steps`` at step ``t``.

    Args:
        steps: optimizer steps from ``start`` to ``end`` (a whole number > 0).
        start: the factor at step 0 (a number >= 0).
        end: the factor from ``steps`` on (a number >= 0).

    Returns:
        A `Linear` schedule.
    """
    return Linear(steps, start, end)


def cosine(steps: int, start: float = 1.0, end: float = 0.0) -> Cosine:
    """A cosine ramp: factor ``end + (start - end) * (1 + cos(pi * min(t, steps) / steps)) / 2``.

    Args:
        steps: optimizer steps from ``start`` to ``end`` (a whole number > 0).
        start: the factor at step 0 (a number >= 0).
        end: the factor from ``steps`` on; ``end > start`` makes the strength grow.

    Returns:
        A `Cosine` schedule.
    """
    return Cosine(steps, start, end)


def factor_at(schedule: ScheduleLike, step: int) -> float:
    """The schedule's factor at ``step``, checked: a finite number >= 0."""
    value = schedule(step)
    try:
        return check_strength(value, "schedule factor")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"schedule {schedule!r} at step {step}: {exc}") from None
