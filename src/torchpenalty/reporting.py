"""Per-parameter reports: penalty value, L2 norm and sparsity of each regularized tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .penalties.norms import tensor_norm

if TYPE_CHECKING:
    from .regularizer import Regularizer


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
    """Rows of `ParameterReport`; ``str(report)`` is a table, `to_dicts` feeds JSON or pandas."""

    def __init__(self, rows: list[ParameterReport]) -> None:
        self.rows = rows

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
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} parameters, total_value={self.total_value:.4g})"


def _zero_units(w: torch.Tensor) -> torch.Tensor:
    """Slices along dim 0 that are entirely zero (dead output units / filters)."""
    if w.numel() == 0:
        return torch.zeros((), dtype=torch.long, device=w.device)
    return (w.reshape(w.shape[0], -1) != 0).any(dim=1).logical_not().sum()


def report(reg: Regularizer) -> Report:
    """Build the report with one device-to-host copy (all figures stacked first)."""
    stats: list[torch.Tensor] = []
    counts: dict[int, tuple[int | None, int | None]] = {}
    order: list[int] = []
    missing = torch.tensor(-1.0)
    with torch.no_grad():
        for b in reg.buckets:
            acc = torch.float64  # exact counts and norms that neither underflow nor round
            device = b.params[0].device
            penalty = reg.current(b.penalty)
            values = torch.stack([penalty.value(w).to(acc) for w in b.params])
            norms = torch.stack([tensor_norm(w) for w in b.params]).to(acc)
            zeros = torch.stack([(w == 0).sum() for w in b.params]).to(acc)
            numels = torch.tensor([max(w.numel(), 1) for w in b.params], dtype=acc, device=device)
            zero_groups, zero_units = [], []
            for i, w in zip(b.indices, b.params, strict=True):
                group = b.penalty.group_stats(w)
                zero_groups.append(group[0].to(device, acc) if group else missing.to(device, acc))
                units = w.shape[0] if w.ndim >= 2 else None
                zero_units.append(_zero_units(w).to(acc) if units else missing.to(device, acc))
                counts[i] = (group[1] if group else None, units)
            columns = [
                values,
                norms,
                zeros / numels,
                torch.stack(zero_groups),
                torch.stack(zero_units),
            ]
            stats.append(torch.stack(columns).to(torch.float64))
            order.extend(b.indices)
    device = stats[0].device
    table = torch.cat([s.to(device) for s in stats], dim=1).T.tolist()  # the one sync
    by_index = dict(zip(order, table, strict=True))
    rows = []
    named = zip(reg.named_parameters(), reg.named_penalties(), strict=True)
    for i, ((name, param), (_, pen)) in enumerate(named):
        value, norm, zero_fraction, zero_groups, zero_units = by_index[i]
        groups, units = counts[i]
        rows.append(
            ParameterReport(
                name,
                tuple(param.shape),
                repr(pen),
                value,
                norm,
                zero_fraction,
                zero_groups=None if groups is None else int(zero_groups),
                groups=groups,
                zero_units=None if units is None else int(zero_units),
                units=units,
            )
        )
    return Report(rows)
