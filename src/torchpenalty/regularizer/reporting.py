"""Per-parameter reports: penalty value, L2 norm and sparsity of each regularized tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from ..distributed import Sharding
from ..kernels import EAGER
from ..penalties import Penalty
from ..penalties.batch import Batch
from ..penalties.norms import tensor_norm
from ..sparsity.status import TargetStatus


@dataclasses.dataclass(frozen=True)
class ParameterReport:
    """One regularized tensor. ``value`` is its penalty (loss units); ``l2_norm`` is ``||w||_2``."""

    name: str
    shape: tuple[int, ...]
    penalty: str
    value: float
    l2_norm: float
    zero_fraction: float  # exact zeros / numel (0 for empty tensors)
    zero_groups: int | None = None  # all-zero groups of a group penalty (None: no groups)
    groups: int | None = None
    zero_units: int | None = None  # slices along dim 0 (output units, filters) entirely zero
    units: int | None = None  # dim 0 of tensors with ndim >= 2, else None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


class Report:
    """Rows of `ParameterReport`; ``str(report)`` is a table, `to_dicts` feeds JSON or pandas;
    ``target`` is a `TargetStatus` when the regularizer has a target."""

    def __init__(self, rows: list[ParameterReport], target: TargetStatus | None = None) -> None:
        self.rows = rows
        self.target = target

    def __iter__(self) -> Iterator[ParameterReport]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ParameterReport:
        return self.rows[index]

    @property
    def total_value(self) -> float:
        return sum(r.value for r in self.rows)

    @property
    def zero_fraction(self) -> float:
        """Exact zeros over all regularized elements."""
        numel = sum(r.numel for r in self.rows)
        return sum(r.zero_fraction * r.numel for r in self.rows) / numel if numel else 0.0

    @property
    def zero_units(self) -> int:
        """All-zero output units / filters over all regularized tensors with ndim >= 2."""
        return sum(r.zero_units or 0 for r in self.rows)

    @property
    def units(self) -> int:
        return sum(r.units or 0 for r in self.rows)

    @property
    def zero_groups(self) -> int:
        return sum(r.zero_groups or 0 for r in self.rows)

    @property
    def groups(self) -> int:
        return sum(r.groups or 0 for r in self.rows)

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) | {"shape": list(r.shape)} for r in self.rows]

    def __str__(self) -> str:
        header = (
            "parameter",
            "shape",
            "penalty",
            "value",
            "L2 norm",
            "zeros",
            "zero groups",
            "zero units",
        )
        ratio = lambda k, n: "" if n is None else f"{k}/{n}"  # noqa: E731
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "scalar",
                r.penalty,
                f"{r.value:.4g}",
                f"{r.l2_norm:.4g}",
                f"{r.zero_fraction:.1%}",
                ratio(r.zero_groups, r.groups),
                ratio(r.zero_units, r.units),
            )
            for r in self.rows
        ]
        body.append(
            (
                "total",
                "",
                "",
                f"{self.total_value:.4g}",
                "",
                f"{self.zero_fraction:.1%}",
                ratio(self.zero_groups, self.groups) if self.groups else "",
                ratio(self.zero_units, self.units) if self.units else "",
            )
        )
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        if self.target is not None:
            lines.append(str(self.target))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} parameters, total_value={self.total_value:.4g})"


def _zero_units(w: Tensor) -> Tensor:
    """Slices along dim 0 that are entirely (exactly) zero: dead output units / filters."""
    if w.numel() == 0:
        return torch.zeros((), dtype=torch.float64, device=w.device)
    return (w.reshape(w.shape[0], -1) != 0).any(dim=1).logical_not().sum().double()


def build_report(
    entries: Sequence[tuple[str, Tensor, Penalty, Tensor | None]], sharding: Sharding
) -> Report:
    """The report of ``(name, parameter, penalty at its current strength, reference w0 or None)``
    entries: every figure of every tensor stacked, summed over processes once
    (`Sharding.reduce`; nothing when unsharded) and copied to the host once. Counts are of exact
    zeros only."""
    stats: list[Tensor] = []
    shapes: list[tuple[int | None, int | None]] = []
    device = None
    with torch.no_grad():
        for param, w, pen, spec, ref in (
            (p, sharding.locals([p])[0], pen, sharding.spec(p), ref) for _, p, pen, ref in entries
        ):
            device = device or w.device
            centers = () if ref is None else (sharding.locals([ref])[0],)
            value = pen.total_value([w.detach()], Batch(EAGER, (spec,) if spec else (), centers))
            group = pen.group_stats(w, spec)
            rows_local = spec is None or spec.dim == 0  # whole rows here: dead units countable
            # a stacked tensor (`Members`): each member's units, all members together
            members = getattr(pen, "members", None)
            unit_rows = w.flatten(0, 1) if members and w.ndim >= 3 else w
            # the global count (param, not the local shard w): rows of a stack's members
            unit_count = param.shape[0] * param.shape[1] if members and param.ndim >= 3 else None
            if not members:
                unit_count = param.shape[0] if param.ndim >= 2 else None
            units = unit_count if rows_local else None
            zero_groups = torch.zeros((), dtype=torch.float64, device=w.device)
            groups = None
            if group is not None:
                # groups spanning shards are whole on every process: count each once
                share = sharding.world if group.spans_shards else 1
                zero_groups = group.zero_groups.to(torch.float64) / share
                groups = group.groups if spec is None or group.spans_shards else param.shape[0]
            figures = [
                value.to(torch.float64),
                sharding.norm_part(tensor_norm(w)),
                (w == 0).sum().to(torch.float64),
                _zero_units(unit_rows) if units else torch.zeros((), dtype=torch.float64),
                zero_groups,
            ]
            stats.append(torch.stack([f.to(w.device, torch.float64) for f in figures]))
            shapes.append((groups, units))
        if not stats:
            return Report([])
        table = sharding.reduce(torch.stack([s.to(device) for s in stats])).tolist()  # one sync
    rows = []
    for (name, param, pen, _), (groups, units), figures in zip(entries, shapes, table, strict=True):
        value, norm_part, zeros, dead, zero_groups = figures
        rows.append(
            ParameterReport(
                name,
                tuple(param.shape),
                repr(pen),
                value,
                sharding.norm_from(norm_part),
                zeros / max(param.numel(), 1),
                zero_groups=None if groups is None else round(zero_groups),
                groups=groups,
                zero_units=None if units is None else round(dead),
                units=units,
            )
        )
    return Report(rows)
