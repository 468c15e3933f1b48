"""Per-parameter reports: penalty value, L2 norm and sparsity of each regularized tensor."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from .penalties.base import accumulation_dtype

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

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dataclasses.asdict(r) | {"shape": list(r.shape)} for r in self.rows]

    def __str__(self) -> str:
        header = ("parameter", "shape", "penalty", "value", "L2 norm", "zeros")
        body = [
            (
                r.name,
                "x".join(map(str, r.shape)) or "scalar",
                r.penalty,
                f"{r.value:.4g}",
                f"{r.l2_norm:.4g}",
                f"{r.zero_fraction:.1%}",
            )
            for r in self.rows
        ]
        body.append(("total", "", "", f"{self.total_value:.4g}", "", f"{self.zero_fraction:.1%}"))
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
        lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row) for row in body]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} parameters, total_value={self.total_value:.4g})"


def report(reg: Regularizer) -> Report:
    """Build the report with one device-to-host copy per device (all figures stacked first)."""
    stats: list[torch.Tensor] = []
    order: list[int] = []
    with torch.no_grad():
        for b in reg.buckets:
            acc = accumulation_dtype(b.params[0].dtype)
            values = torch.stack([b.penalty.value(w).to(acc) for w in b.params])
            norms = torch.stack(torch._foreach_norm(b.params, 2, dtype=acc))
            zeros = torch.stack([(w == 0).sum() for w in b.params]).to(acc)
            numels = torch.tensor(
                [max(w.numel(), 1) for w in b.params], dtype=acc, device=zeros.device
            )
            stats.append(torch.stack([values, norms, zeros / numels]).to(torch.float64))
            order.extend(b.indices)
    device = stats[0].device
    columns = torch.cat([s.to(device) for s in stats], dim=1).tolist()  # the one sync
    by_index = {i: (columns[0][k], columns[1][k], columns[2][k]) for k, i in enumerate(order)}
    rows = []
    named = zip(reg.named_parameters(), reg.named_penalties(), strict=True)
    for i, ((name, param), (_, pen)) in enumerate(named):
        value, norm, zero_fraction = by_index[i]
        rows.append(
            ParameterReport(name, tuple(param.shape), repr(pen), value, norm, zero_fraction)
        )
    return Report(rows)
