"""`RegularizerCallback` for the ``lightning`` 2.x `Trainer` (``pip install
torchpenalty[lightning]``).

Lightning calls ``optimizer.step(closure)`` in automatic optimization: forward, backward (and
``on_before_optimizer_step``, gradient clipping) run inside ``step()``. The regularizer's step
hooks wrap that closure, so the penalty lands after the gradients exist and before the update,
exactly as in a plain loop; under ``16-mixed`` the GradScaler unscales first and skips the step
(and the penalty) on overflow. Gradient accumulation steps the optimizer once per boundary, and
the penalty follows. Manual optimization works the same way: ``opt.step()`` reaches the hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy
from torch import Tensor
from torch.utils.hooks import RemovableHandle

from ..regularizer import PenaltyArg, Regularizer
from ..regularizer.attach import AttachHandle
from ..regularizer.schedules import ScheduleLike
from ..selection import Among, Rule
from .callbacks import (
    CallbackSpec,
    advance_schedule,
    attach_all,
    base_optimizer,
    figures,
    holds_penalty,
)

#: strategies whose parameters are not the model's own tensors at step time
UNSUPPORTED_STRATEGIES = {
    FSDPStrategy: "FSDP (FSDP1) flattens and shards the parameters into flat buffers, so no "
    "per-parameter penalty can be applied; use the DDP strategy, or FSDP2 (fully_shard) with "
    "a Regularizer in a plain loop",
    DeepSpeedStrategy: "DeepSpeed steps its own partitioned copies of the parameters, out of "
    "reach of torch.optim step hooks",
}


class RegularizerCallback(pl.Callback):
    """A `Regularizer` applied in ``mode`` at every optimizer step of a Lightning fit.

    At fit start it builds the regularizer over the LightningModule (rules match its parameter
    names) and attaches it to every optimizer of ``configure_optimizers`` (each to the
    regularized parameters it holds). After every training batch it logs ``penalty`` (loss
    units) and, in proximal mode, ``penalty_zero_fraction`` through ``pl_module.log``, without a
    device sync. Its state (the schedule's step, L2-SP references) goes into the checkpoints, so
    a resumed fit continues exactly.

    ``mode="loss"``: the callback builds, logs and checkpoints the regularizer, and the
    ``training_step`` adds it to its loss::

        penalty = RegularizerCallback("l1(1e-4)", mode="loss")

        class Model(L.LightningModule):
            def training_step(self, batch, batch_idx):
                x, y = batch
                return F.cross_entropy(self(x), y) + penalty.regularizer()

    The first backward checks that the loss holds it (an error otherwise, not a silent no-op).

    Args:
        penalty: a `Penalty`, a spec string, or ``{rule: penalty}`` (see `Regularizer`).
        mode: ``"decoupled"`` (default), ``"grad"``, ``"proximal"`` or ``"loss"``.
        include: rules selecting parameters, as in `Regularizer`.
        exclude: rules removing parameters, as in `Regularizer`.
        among: where the selection starts, as in `Regularizer`.
        schedule: a strength schedule, as in `Regularizer` (one step per optimizer step).
        log: log the figures after every training batch.

    Raises:
        ValueError: at construction, an unknown mode; at fit start, a rule that selects nothing,
            regularized parameters in no optimizer, the callback twice on one Trainer, a strategy
            it cannot support (FSDP1, DeepSpeed), or a mode the optimizer cannot make exact.
    """

    def __init__(
        self,
        penalty: PenaltyArg,
        *,
        mode: str = "decoupled",
        include: Rule | None = None,
        exclude: Rule | None = None,
        among: Among = "weights",
        schedule: ScheduleLike | None = None,
        log: bool = True,
    ) -> None:
        self.spec = CallbackSpec(penalty, mode, include, exclude, among, schedule, log)
        self._regularizer: Regularizer | None = None
        self._handles: list[AttachHandle | RemovableHandle] = []
        self._saved: Mapping[str, Any] | None = None  # a checkpoint's state, loaded before fit
        self._check_loss = False

    @property
    def mode(self) -> str:
        return self.spec.mode

    @property
    def state_key(self) -> str:
        # stable across runs (checkpoints find it again) and distinct for distinct settings, so
        # two callbacks reach the clear error of `setup` instead of Lightning's key clash
        return self._generate_state_key(**self.spec.key())

    @property
    def regularizer(self) -> Regularizer:
        """The regularizer of the current fit (built when the fit starts)."""
        if self._regularizer is None:
            raise RuntimeError(
                "RegularizerCallback.regularizer is built when trainer.fit starts; use it in "
                "training_step or later hooks"
            )
        return self._regularizer

    # -- fit start ----------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        callbacks = trainer.callbacks  # type: ignore[attr-defined]  # set in Trainer.__init__
        mine = [cb for cb in callbacks if isinstance(cb, RegularizerCallback)]
        if len(mine) > 1:
            raise ValueError(
                f"{len(mine)} RegularizerCallbacks on one Trainer would each apply their "
                "penalty; use one, with per-layer rules: RegularizerCallback({'encoder.*': "
                "'l2(1e-4)', 'head.*': 'l1(1e-5)'})"
            )
        for strategy, why in UNSUPPORTED_STRATEGIES.items():
            if isinstance(trainer.strategy, strategy):
                raise ValueError(
                    f"RegularizerCallback cannot run under {type(trainer.strategy).__name__}: {why}"
                )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after strategy.setup: the module is on its device, the optimizers exist
        reg = self.spec.build(pl_module)
        if self._saved is not None:
            reg.load_state_dict(self._saved)
            self._saved = None
        optimizers = [base_optimizer(opt) for opt in trainer.optimizers]
        if not optimizers:
            raise ValueError("RegularizerCallback needs an optimizer from configure_optimizers")
        self._handles = list(attach_all(reg, optimizers, self.spec.mode))
        if self.spec.mode == "loss" and reg.schedule is not None and not self._handles:
            self._handles.append(advance_schedule(reg, optimizers[0]))
        self._regularizer = reg
        self._check_loss = self.spec.mode == "loss"

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor
    ) -> None:
        if not self._check_loss:
            return
        self._check_loss = False  # one walk over the first step's graph
        if not holds_penalty(loss):
            raise RuntimeError(
                "RegularizerCallback(mode='loss'): the loss of training_step does not hold the "
                "penalty; add callback.regularizer() to it, or use mode='decoupled', 'grad' or "
                "'proximal', which need no change to training_step"
            )

    # -- every batch --------------------------------------------------------------------------
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.spec.log or self._regularizer is None:
            return
        for key, value in figures(self._regularizer, self.spec.mode).items():
            # the weights are the same on every rank (DDP): nothing to reduce
            pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)

    # -- fit end ------------------------------------------------------------------------------
    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._detach()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._detach()

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._regularizer is not None:
            return self._regularizer.state_dict()
        return dict(self._saved or {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if self._regularizer is not None:  # a strategy that restores after on_fit_start
            self._regularizer.load_state_dict(state_dict)
        else:
            self._saved = state_dict


__all__ = ["RegularizerCallback"]
