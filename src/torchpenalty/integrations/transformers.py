"""`RegularizerCallback` for the Hugging Face `transformers.Trainer` (``pip install
torchpenalty[transformers]``).

The Trainer wraps its optimizer in accelerate's ``AcceleratedOptimizer``, whose ``step()`` calls
the torch optimizer's: the regularizer attaches there, so it acts once per optimizer step,
gradient accumulation included. The default selection is the Trainer's own decay rule
(`Trainer.get_decay_parameter_names`: parameters outside ``nn.LayerNorm`` modules whose
lower-cased names match none of ``bias``, ``layernorm``, ``rmsnorm``, ``(^|.)norm($|.)``,
``_norm($|.)``), so ``l2(wd)`` in decoupled mode with ``weight_decay=0`` is the Trainer's AdamW
with ``weight_decay=wd``. A Trainer whose own ``weight_decay`` is also on decays the same
parameters twice: the callback warns once.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import transformers
from torch import nn
from transformers.trainer_callback import CallbackHandler, TrainerCallback

from ..regularizer import PenaltyArg, Regularizer
from ..regularizer.attach import AttachHandle
from ..regularizer.schedules import ScheduleLike
from ..selection import Among, Rule
from .callbacks import CallbackSpec, attach_all, base_optimizer, figures

#: frames between a callback's hook and ``Trainer.train`` (handler, event dispatch, loops)
_SEARCH_DEPTH = 16

LOSS_MODE_REFUSAL = (
    "mode='loss' cannot run as a Trainer callback: the Trainer computes and back-propagates the "
    "loss inside training_step / compute_loss, out of a callback's reach. mode='grad' adds the "
    "same gradient through the optimizer; or override Trainer.compute_loss to add a Regularizer"
)


def _trainer() -> transformers.Trainer | None:
    """The `transformers.Trainer` whose ``train()`` is running the current callback event."""
    frame = inspect.currentframe()
    for _ in range(_SEARCH_DEPTH):
        if frame is None:
            return None
        owner = frame.f_locals.get("self")
        if isinstance(owner, transformers.Trainer):
            return owner
        frame = frame.f_back
    return None


class RegularizerCallback(TrainerCallback):
    """A `Regularizer` applied in ``mode`` at every optimizer step of ``Trainer.train()``.

    When training begins it builds the regularizer over the Trainer's model and attaches it to
    the Trainer's optimizer. Every training log gets ``penalty`` (loss units) and, in proximal
    mode, ``penalty_zero_fraction`` (exact zeros): they are in ``trainer.state.log_history`` and
    reach every ``report_to`` backend (the callback runs its ``on_log`` first).

    Args:
        penalty: a `Penalty`, a spec string, or ``{rule: penalty}`` (see `Regularizer`).
        mode: ``"decoupled"`` (default), ``"grad"`` or ``"proximal"``.
        include: rules selecting parameters, as in `Regularizer`.
        exclude: rules removing parameters, as in `Regularizer`.
        schedule: a strength schedule, as in `Regularizer` (one step per optimizer step).
        among: ``"trainer"`` (default: the parameters the Trainer's own weight decay applies
            to, `Trainer.get_decay_parameter_names`), or as in `Regularizer`.
        log: add the figures to the Trainer's logs.

    Raises:
        ValueError: at construction, an unknown mode or ``"loss"`` (a callback never sees the
            loss); when training begins, rules that select nothing, the callback twice on one
            Trainer, or resuming a run whose references (``center="init"``) were not saved.
    """

    def __init__(
        self,
        penalty: PenaltyArg,
        *,
        mode: str = "decoupled",
        include: Rule | None = None,
        exclude: Rule | None = None,
        among: Among | str = "trainer",
        schedule: ScheduleLike | None = None,
        log: bool = True,
    ) -> None:
        if mode == "loss":
            raise ValueError(LOSS_MODE_REFUSAL)
        self._trainer_rule = among == "trainer"
        start: Any = "all" if self._trainer_rule else among
        self.spec = CallbackSpec(penalty, mode, include, exclude, start, schedule, log)
        self._regularizer: Regularizer | None = None
        self._handles: list[AttachHandle] = []
        self._warned_double_decay = False

    @property
    def regularizer(self) -> Regularizer:
        """The regularizer of the current training (built when training begins)."""
        if self._regularizer is None:
            raise RuntimeError("RegularizerCallback.regularizer is built when training begins")
        return self._regularizer

    def _build(self, trainer: transformers.Trainer, model: nn.Module) -> Regularizer:
        if not self._trainer_rule:
            return self.spec.build(model)
        # the Trainer's names are those of the unwrapped model, like the canonical ones here
        decay = set(trainer.get_decay_parameter_names(model))
        return self.spec.build(model, among=lambda name, param, module: name in decay)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = _trainer()
        if trainer is None:
            raise RuntimeError("RegularizerCallback runs inside transformers.Trainer.train()")
        handler: CallbackHandler = trainer.callback_handler
        mine = [cb for cb in handler.callbacks if isinstance(cb, RegularizerCallback)]
        if len(mine) > 1:
            raise ValueError(
                f"{len(mine)} RegularizerCallbacks on one Trainer would each apply their penalty; "
                "use one, with per-layer rules: RegularizerCallback({'*.attention.*': "
                "'l2(1e-4)', 'classifier.*': 'l1(1e-5)'})"
            )
        # first in line, so the reporting callbacks (report_to) log what on_log adds; moving
        # an element before the current one keeps the dispatch loop's order for the rest
        handler.callbacks.remove(self)
        handler.callbacks.insert(0, self)

        self._detach()  # a train() that raised left its hooks
        model = kwargs.get("model") or trainer.model
        if not isinstance(model, nn.Module):
            raise RuntimeError("RegularizerCallback: the Trainer has no model")
        reg = self._build(trainer, model)
        if state.global_step:  # resuming: the schedule continues at the Trainer's step
            if reg.state_dict()["references"]:
                raise ValueError(
                    "resuming from a checkpoint with center='init' (L2-SP): the initial weights "
                    "are not in the Trainer's checkpoint; pass center={name: tensor} instead"
                )
            reg.set_step(state.global_step)
        optimizer = base_optimizer(kwargs.get("optimizer") or trainer.optimizer)
        self._warn_double_decay(optimizer, reg)
        self._handles = attach_all(reg, [optimizer], self.spec.mode)
        self._regularizer = reg

    def _warn_double_decay(self, optimizer: Any, reg: Regularizer) -> None:
        """Warn once when the Trainer's optimizer decays some of the parameters this callback
        regularizes (``TrainingArguments(weight_decay=...)``): they would decay twice."""
        if self._warned_double_decay:
            return
        regularized = {id(p) for _, p in reg.named_parameters()}
        decayed = [
            group["weight_decay"]
            for group in optimizer.param_groups
            if group.get("weight_decay") and any(id(p) in regularized for p in group["params"])
        ]
        if decayed:
            self._warned_double_decay = True
            warnings.warn(
                f"the Trainer's optimizer also decays parameters this RegularizerCallback "
                f"regularizes (weight_decay={decayed[0]:g}), so they decay twice: set "
                "TrainingArguments(weight_decay=0) to leave regularization to the callback",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any
    ) -> None:
        if not self.spec.log or self._regularizer is None or logs is None or "loss" not in logs:
            return  # training logs only (not evaluation, not the final summary)
        values = {k: v.item() for k, v in figures(self._regularizer, self.spec.mode).items()}
        logs.update(values)
        # Trainer.log appended a copy of these logs to the history just before on_log
        if state.log_history and state.log_history[-1].get("loss") == logs["loss"]:
            state.log_history[-1].update(values)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._detach()

    def _detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


__all__ = ["RegularizerCallback"]
