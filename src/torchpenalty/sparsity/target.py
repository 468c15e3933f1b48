"""Training to a requested size: `TargetSparsity` and the controller that reaches it.

``Regularizer(model, "group_lasso(1e-4, rows)", target=TargetSparsity(0.75, by_step=2000))``,
attached in proximal mode: every ``check_every`` optimizer steps the controller counts the exact
zeros (units, groups or weights) and raises the penalty's strength while the count lags a linear
ramp to the target (reached at `RAMP` of ``by_step``), eases it while the count leads: by a
factor per check that could grow it `GROWTH`-fold along the ramp, whatever the number of checks.
Once the count reaches the target it freezes exactly ``round(fraction * total)`` of the zero
items (the least important ones), keeps them exactly zero after every later step, whatever the
optimizer's momentum does, and stops penalizing: the surviving weights recover. If ``by_step``
comes first it freezes what is zero then and says so in one warning.

Units are what `compact` removes: dim-0 slices of a Linear / Conv layer (not the output layer)
whose incoming weights, or all of whose consumers' weights, are zero. A frozen unit has both
zeroed, so `compact` removes it without folding anything. Decisions depend on the weights only,
so DDP ranks (identical weights) take the same ones.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..kernels import Kernels
from ..kernels.layouts import Layout
from ..penalties import GroupLasso, Penalty, SparseGroupLasso
from ..penalties.batch import Batch
from ..penalties.group import layouts_of
from ..selection import unwrap
from .compaction import UnitLayer, consumer_inputs, unit_layers
from .status import TargetStatus

KINDS = ("units", "groups", "weights")
#: how far the strength can rise along the ramp (from the penalty's own strength)
GROWTH = 1e6
#: the ramp to the target ends at this fraction of by_step (time to settle before it)
RAMP = 0.75
#: checks (each one device sync) on the way to the target
CHECKS = 200


@dataclasses.dataclass(frozen=True)
class TargetSparsity:
    """Reach ``fraction`` of exactly-zero ``of`` (``"units"``, ``"groups"`` or ``"weights"``)
    by optimizer step ``by_step``, then freeze that pattern and stop penalizing."""

    fraction: float
    of: str = "units"
    by_step: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.fraction, bool) or not isinstance(self.fraction, numbers.Real):
            raise TypeError(f"fraction must be a number in (0, 1), got {self.fraction!r}")
        if not (0 < self.fraction < 1) or math.isnan(self.fraction):
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction!r}")
        object.__setattr__(self, "fraction", float(self.fraction))  # a NumPy scalar too
        if self.of not in KINDS:
            raise ValueError(f"of must be one of {', '.join(map(repr, KINDS))}, got {self.of!r}")
        by_step = self.by_step
        if isinstance(by_step, bool) or not isinstance(by_step, numbers.Integral) or by_step < 1:
            raise ValueError(f"by_step must be a whole number of steps > 0, got {by_step!r}")
        object.__setattr__(self, "by_step", int(by_step))

    @property
    def check_every(self) -> int:
        return max(1, self.by_step // CHECKS)

    @property
    def raise_factor(self) -> float:
        """The strength multiplier per check while the zeros lag the ramp (its inverse square
        root while they lead)."""
        checks = max(1.0, RAMP * self.by_step / self.check_every)
        return float(GROWTH ** (1 / checks))


def _group_penalty(pen: Penalty) -> GroupLasso | SparseGroupLasso | None:
    return next((t for t in pen.summands() if isinstance(t, GroupLasso | SparseGroupLasso)), None)


def _makes_zeros(pen: Penalty) -> bool:
    """Whether the prox of ``pen`` sets weights exactly to zero (an L1 or group term)."""
    if _group_penalty(pen) is not None:
        return True
    return any((t.elementwise_strengths() or (0.0, 0.0))[0] > 0 for t in pen.summands())


def check_target(target: TargetSparsity, penalties: Sequence[Penalty]) -> None:
    """Raise if the penalties cannot make what ``target`` counts zero."""
    if not isinstance(target, TargetSparsity):
        raise TypeError(f"target must be a TargetSparsity, got {type(target).__name__}")
    if target.of == "weights":
        if not any(_makes_zeros(p) for p in penalties):
            raise ValueError(
                "target of='weights' needs a penalty whose prox makes exact zeros (l1, "
                "elastic_net, group_lasso, sparse_group_lasso); l2 only shrinks"
            )
    elif not any(_group_penalty(p) is not None for p in penalties):
        raise ValueError(
            f"target of={target.of!r} needs a group penalty (group_lasso or sparse_group_lasso, "
            "e.g. rows of a layer or cols of its consumer): an elementwise penalty zeroes "
            "weights one by one, not whole units or groups; use of='weights' for it"
        )


@dataclasses.dataclass
class _Groups:
    """The groups of one regularized tensor on its `Layout`."""

    param: Tensor
    lay: Layout

    def view(self) -> Tensor:
        return self.param.detach().reshape(self.lay.rows, -1)

    def zero(self) -> Tensor:
        v = self.view() == 0
        if not self.lay.cols:
            return v.all(dim=1)
        return v.all(dim=0).view(self.lay.cols, -1).all(dim=1)

    def mask(self, frozen: Tensor) -> Tensor:
        """An elementwise 0/1 mask zeroing the ``frozen`` groups."""
        keep = (~frozen).to(self.param.dtype)
        rows, width = self.lay.rows, self.param.numel() // self.lay.rows
        if not self.lay.cols:
            return keep.view(rows, 1).expand(rows, width).reshape(self.param.shape).clone()
        per_col = keep.repeat_interleave(width // self.lay.cols)
        return per_col.view(1, width).expand(rows, width).reshape(self.param.shape).clone()


class TargetController:
    """The state of a `TargetSparsity` run: the strength multiplier ``scale``, the step count,
    the fraction reached, and once frozen the masks that keep the pattern."""

    def __init__(
        self,
        target: TargetSparsity,
        model: nn.Module,
        names: Sequence[str],
        params: Sequence[Tensor],
        penalties: Sequence[Penalty],
        kernels: Kernels | None = None,
    ) -> None:
        check_target(target, penalties)
        self.target = target
        self.scale = 1.0
        self.steps = 0
        self.reached = 0.0
        self.frozen_at: int | None = None
        self.model = model
        self._names, self._params, self._penalties = list(names), list(params), list(penalties)
        # the regularizer's kernels: a callable's groups as it read them (`layouts_of`)
        self._batch = Batch(kernels or Kernels("eager"))
        # the frozen pattern, by the model's parameter names: a tensor the model replaces later
        # (load_state_dict(assign=True), to_empty()) is found again by name
        self._masks: list[tuple[str, Tensor]] = []
        self._example: tuple[tuple, dict[str, Any]] | None = None
        self._units: list[UnitLayer] | None = None
        self._hook = None
        if target.of == "units":  # the dependency graph needs one input: the first forward's
            self._hook = model.register_forward_pre_hook(self._capture, with_kwargs=True)

    def rebind(self, params: Sequence[Tensor]) -> None:
        """Count and keep the pattern on ``params``, the tensors the regularized names stand for
        now (the regularizer's `refresh` calls it when the model replaced them)."""
        self._params = list(params)

    def _param(self, name: str) -> Tensor:
        return self.model.get_parameter(name)

    def _named(self, masks: list[tuple[Tensor, Tensor]]) -> list[tuple[str, Tensor]]:
        """One mask per parameter name: the product of its masks (a layer's weight is masked
        as a unit's producer and as another unit's consumer)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        merged: dict[str, Tensor] = {}
        for p, m in masks:
            name = names[id(p)]
            merged[name] = merged[name] * m if name in merged else m
        return list(merged.items())

    # -- what is counted -------------------------------------------------------------------
    def _capture(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._example is None:
            self._example = (
                tuple(_first_two(a) for a in args),
                {k: _first_two(v) for k, v in kwargs.items()},
            )
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def _unit_layers(self) -> list[UnitLayer]:
        if self._units is None:
            if self._example is None:
                raise RuntimeError(
                    "TargetSparsity(of='units') learns the model's units from its first forward "
                    "pass; call the model before the first optimizer step"
                )
            args, kwargs = self._example
            try:
                self._units = unit_layers(self.model, args, kwargs)
            except Exception as exc:  # Torch-Pruning's tracing: say what it was tracing
                raise ValueError(
                    "TargetSparsity(of='units') could not trace the model's units from its "
                    f"first forward call ({len(args)} positional inputs, keyword inputs "
                    f"{sorted(kwargs)}): {type(exc).__name__}: {exc}. Use of='groups' instead"
                ) from exc
            if not self._units:
                raise ValueError(
                    "TargetSparsity(of='units'): the model has no Linear or Conv layer whose "
                    "units another layer consumes"
                )
        return self._units

    def _zero_units(self, layers: list[UnitLayer]) -> list[Tensor]:
        """`UnitLayer.zero_units` of each layer, as `compact` finds them: where a dead unit's
        output cannot fold, whether it is exactly 0 at its consumers on the first forward's
        inputs (one forward in eval mode, only then)."""
        if not any(u.needs_inputs() for u in layers):
            return [u.zero_units() for u in layers]
        root = unwrap(self.model)
        training = root.training
        root.eval()
        try:
            assert self._example is not None  # _unit_layers needed it
            consumers = [c for u in layers for c, _ in u.consumers]
            seen = consumer_inputs(root, consumers, self._example)
        finally:
            root.train(training)
        return [u.zero_units(None if u.foldable else u.silent(seen)) for u in layers]

    def _groups(self) -> list[_Groups]:
        out = []
        for param, pen in zip(self._params, self._penalties, strict=True):
            group = _group_penalty(pen)
            if group is None or param.ndim == 0:
                continue
            found = layouts_of(group.groups, [param], self._batch)
            lay = found[0] if found else None
            if not isinstance(lay, Layout):
                raise ValueError(
                    f"TargetSparsity(of='groups'): the callable groups of {group!r} are neither "
                    "rows nor column blocks of the tensor"
                )
            out.append(_Groups(param, lay))
        return out

    def counts(self) -> tuple[int, int]:
        """(exactly-zero items, items) now: one device sync. Units are counted per layer, as
        `compact` removes them: a unit of layers coupled by a residual addition is one unit of
        each."""
        weights: list[int] = []
        if self.target.of == "units":
            layers = self._unit_layers()
            zeros = self._zero_units(layers)
            weights = [_coupled(u) for u in layers]
        elif self.target.of == "groups":
            zeros = [g.zero() for g in self._groups()]
        else:
            zeros = [p.detach().reshape(-1) == 0 for p in self._params]
        weights = weights or [1] * len(zeros)
        total = sum(z.numel() * k for z, k in zip(zeros, weights, strict=True))
        if not zeros:
            return 0, total
        count = int(torch.stack([z.sum() * k for z, k in zip(zeros, weights, strict=True)]).sum())
        return count, total

    # -- every optimizer step ----------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self.frozen_at is not None

    def strength(self) -> float:
        """The multiplier of the penalty's strength now: 0 once frozen."""
        return 0.0 if self.frozen else self.scale

    def after_step(self) -> None:
        """The controller's work after an optimizer step (and the penalty's prox)."""
        self.steps += 1
        if self.frozen:
            self.enforce()
            return
        t = self.target
        if self.steps % t.check_every and self.steps < t.by_step:
            return
        count, total = self.counts()
        self.reached = count / total if total else 0.0
        if self.reached >= t.fraction:
            self._freeze(round(t.fraction * total))
        elif self.steps >= t.by_step:
            warnings.warn(
                f"TargetSparsity: {self.reached:.1%} of the {t.of} are zero at step "
                f"{self.steps} (by_step), short of the target {t.fraction:.1%}; the pattern "
                "is frozen as it is. Raise the penalty's strength or by_step",
                RuntimeWarning,
                stacklevel=2,
            )
            self._freeze(count)
        else:
            planned = t.fraction * min(1.0, self.steps / (RAMP * t.by_step))
            up = t.raise_factor
            self.scale *= up if self.reached < planned else up**-0.5

    def _freeze(self, keep: int) -> None:
        """Keep ``keep`` of the zero items zero from now on (the least important ones)."""
        masks: list[tuple[Tensor, Tensor]] = []
        with torch.no_grad():
            if self.target.of == "units":
                layers = self._unit_layers()
                zero = self._zero_units(layers)
                score = [
                    torch.where(z, u.importance(), math.inf)
                    for u, z in zip(layers, zero, strict=True)
                ]
                chosen = _smallest(score, keep, [_coupled(u) for u in layers])
                for u, frozen in zip(layers, chosen, strict=True):
                    if not bool(frozen.any()):
                        continue
                    # a frozen unit is dead in every coupled layer and unused by every consumer:
                    # `compact` removes it, nothing to fold
                    for producer in u.producers or [u.layer]:
                        weight = producer.weight
                        rows = (~frozen).to(weight.dtype).view(-1, *[1] * (weight.ndim - 1))
                        masks.append((weight, rows.expand_as(weight).clone()))
                    for consumer, index in u.consumers:
                        m = torch.ones_like(consumer.weight)
                        m[:, index[frozen.cpu()].reshape(-1).to(m.device)] = 0
                        masks.append((consumer.weight, m))
            elif self.target.of == "groups":
                groups = self._groups()
                zero = [g.zero() for g in groups]
                score = [torch.where(z, 0.0, math.inf) for z in zero]
                chosen = _smallest(score, keep)
                masks = [
                    (g.param, g.mask(f)) for g, f in zip(groups, chosen, strict=True) if f.any()
                ]
            else:
                zero = [p.detach().reshape(-1) == 0 for p in self._params]
                score = [torch.where(z, 0.0, math.inf) for z in zero]
                chosen = _smallest(score, keep)
                masks = [
                    (p, (~f).to(p.dtype).view(p.shape))
                    for p, f in zip(self._params, chosen, strict=True)
                    if f.any()
                ]
        self._masks = self._named(masks)
        self.frozen_at = self.steps
        self.enforce()
        count, total = self.counts()
        self.reached = count / total if total else 0.0

    def enforce(self) -> None:
        """Zero the frozen pattern again (after a step moved it)."""
        if not self._masks:
            return
        with torch.no_grad():
            for name, mask in self._masks:
                self._param(name).mul_(mask)

    # -- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.target),
            "scale": self.scale,
            "steps": self.steps,
            "reached": self.reached,
            "frozen_at": self.frozen_at,
            "masks": dict(self._masks),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore `state_dict`'s figures and pattern; nothing changes unless all of it is
        valid."""
        config = TargetSparsity(**state["config"])
        if config != self.target:
            raise ValueError(f"state_dict holds another target: {config}, not {self.target}")
        scale, steps, reached = float(state["scale"]), int(state["steps"]), float(state["reached"])
        frozen_at = state["frozen_at"]
        masks = []
        for name, mask in state["masks"].items():
            try:
                param = self._param(name)
            except AttributeError:
                raise ValueError(
                    f"state_dict['target'] masks a parameter the model lacks: {name}"
                ) from None
            if not isinstance(mask, Tensor) or mask.shape != param.shape:
                raise ValueError(
                    f"the saved mask of {name} has shape {tuple(getattr(mask, 'shape', ()))}, "
                    f"the parameter {tuple(param.shape)}"
                )
            masks.append((name, mask.to(device=param.device, dtype=param.dtype)))
        self.scale, self.steps, self.reached = scale, steps, reached
        self.frozen_at = None if frozen_at is None else int(frozen_at)
        self._masks = masks

    def status(self) -> TargetStatus:
        """The target, the fraction of zeros now (counted: one sync), the strength."""
        count, total = self.counts() if self._can_count() else (0, 0)
        t = self.target
        now = count / total if total else self.reached
        return TargetStatus(
            t.fraction, t.of, t.by_step, now, self.strength(), self.steps, self.frozen_at
        )

    def _can_count(self) -> bool:
        return self.target.of != "units" or self._units is not None or self._example is not None


def _first_two(value: Any) -> Any:
    """A captured input, cut to its first two samples where it is a batch of tensors."""
    return value.detach()[:2] if isinstance(value, Tensor) and value.ndim else value


def _coupled(unit: UnitLayer) -> int:
    """How many layers' units one unit of ``unit`` is (residual additions couple layers)."""
    return len(unit.producers) or 1


def _smallest(
    scores: Sequence[Tensor], keep: int, weights: Sequence[int] | None = None
) -> list[Tensor]:
    """Per tensor, a bool mask of the items of smallest finite scores over all tensors, the
    fewest whose weights (one each by default; per tensor) sum to ``keep`` or more."""
    flat = torch.cat([s.reshape(-1).double().cpu() for s in scores])
    each = torch.cat(
        [
            torch.full((s.numel(),), k, dtype=torch.long)
            for s, k in zip(scores, weights or [1] * len(scores), strict=True)
        ]
    )
    chosen = torch.zeros(flat.numel(), dtype=torch.bool)
    order = torch.argsort(flat, stable=True)
    order = order[torch.isfinite(flat[order])]
    if keep > 0 and order.numel():
        # the fewest in score order whose weights reach keep
        reach = torch.cumsum(each[order], 0)
        count = int(torch.searchsorted(reach, torch.tensor([keep]))[0]) + 1
        chosen[order[:count]] = True
    out, start = [], 0
    for s in scores:
        out.append(chosen[start : start + s.numel()].view(s.shape).to(s.device))
        start += s.numel()
    return out


__all__ = ["TargetController", "TargetSparsity", "check_target"]
