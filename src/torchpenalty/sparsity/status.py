"""`TargetStatus`: where a `TargetSparsity` stands, as reports and the command line show it."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TargetStatus:
    """Where a `TargetSparsity` run stands: the target ``fraction`` of ``of`` by ``by_step``,
    the fraction of exact zeros now, the strength multiplier (0 once frozen), the optimizer
    steps counted and the step the pattern froze at (None: not yet)."""

    fraction: float
    of: str
    by_step: int
    reached: float
    strength: float
    steps: int
    frozen_at: int | None

    def __str__(self) -> str:
        state = (
            f"frozen at step {self.frozen_at}"
            if self.frozen_at is not None
            else f"strength x{self.strength:.3g}"
        )
        return (
            f"target: {self.fraction:.1%} of {self.of} by step {self.by_step}; now "
            f"{self.reached:.1%} at step {self.steps}, {state}"
        )
