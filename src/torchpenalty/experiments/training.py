"""One training run of one contender, built only on torchpenalty's public API.

A contender is a regularizer (a penalty or per-layer mapping, applied in one of the four modes) or
``torch.optim``'s own ``weight_decay``. Every contender of a comparison starts from the same
initialisation and sees the same batches in the same order (both follow the seed).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from torchpenalty import L2, Penalty, Regularizer, TargetSparsity, Zero

from . import models
from .data import Dataset


class ResumeError(ValueError):
    """A saved run state (``run(resume=...)``) that cannot continue this run."""


@dataclasses.dataclass(frozen=True)
class Contender:
    """What is compared: ``penalty`` applied in ``mode``, the optimizer's ``weight_decay``,
    ``dropout`` (None: the model-wide one of `TrainConfig`) and ``label_smoothing``; an
    ``optimizer`` and ``lr`` of its own replace `TrainConfig`'s."""

    label: str
    penalty: Penalty | Mapping[Any, Any] | None = None
    mode: str = "loss"
    weight_decay: float = 0.0
    dropout: float | None = None
    label_smoothing: float = 0.0
    optimizer: str | None = None
    lr: float | None = None
    #: ``(of, fraction)`` of a `TargetSparsity` reached by half the training steps
    target: tuple[str, float] | None = None

    @property
    def has_penalty(self) -> bool:
        return self.penalty is not None and self.penalty != Zero()

    def describe(self) -> str:
        """Every part: the penalty and its mode, the optimizer's decay, dropout, smoothing."""
        parts = []
        if self.optimizer is not None:
            lr = "" if self.lr is None else f" lr={self.lr:g}"
            parts.append(f"{self.optimizer}{lr}")
        if self.weight_decay:
            kind = {"adamw": "decoupled, ", "adam": "coupled L2, "}.get(self.optimizer or "", "")
            parts.append(f"torch.optim weight_decay={self.weight_decay:g} ({kind}all parameters)")
        if self.has_penalty:
            parts.append(f"{self.penalty!r} in {self.mode} mode")
        if self.dropout is not None:
            parts.append(f"dropout {self.dropout:g}")
        if self.label_smoothing:
            parts.append(f"label smoothing {self.label_smoothing:g}")
        if self.target is not None and self.has_penalty:
            parts.append(f"target {self.target[1]:.0%} of {self.target[0]}")
        regularized = self.weight_decay or self.has_penalty or self.dropout or self.label_smoothing
        return " + ".join(parts) if regularized else " + ".join([*parts, "no regularization"])


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    model: str = "mlp"
    hidden: tuple[int, ...] = (200, 100)
    activation: str = "relu"
    dropout: float = 0.0
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float | None = None
    epochs: int = 20
    batch_size: int = 64
    device: str = "cpu"
    init_std: float | None = None  # weights ~ N(0, init_std^2), biases 0 (d2l.ai); None: torch's
    half_squared_error: bool = False  # regression loss (y_hat - y)^2 / 2, d2l.ai's squared_loss


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    train_loss: float  # data loss on the whole training split, eval mode
    penalty: float  # the contender's penalty value (loss units)
    val_loss: float
    val_metric: float
    test_loss: float
    test_metric: float
    weight_norm: float  # L2 norm over the model's weights (torchpenalty.select's default)
    zero_fraction: float  # exact zeros among those weights
    zero_units: int  # output units / filters of those weights whose incoming weights are all 0
    zero_groups: float  # all-zero groups of the contender's group penalty (NaN: no groups)
    # accuracy or MSE on the whole training split, eval mode (NaN in checkpoints from before it)
    train_metric: float = math.nan
    # the fraction of zero units / groups / weights a target counts (NaN: no target)
    target_reached: float = math.nan


@dataclasses.dataclass
class RunResult:
    contender: str
    seed: int
    history: list[EpochRecord]
    wall_time: float
    model: nn.Module | None = None

    @property
    def final(self) -> EpochRecord:
        return self.history[-1]

    @property
    def trained_model(self) -> nn.Module:
        """The model, for a run made with ``keep_model=True``."""
        if self.model is None:
            raise ValueError(f"the run of {self.contender} (seed {self.seed}) kept no model")
        return self.model


def optimizer_classes() -> dict[str, type[torch.optim.Optimizer]]:
    """Every optimizer in ``torch.optim``, by lower-case name (sgd, adam, adamw, rmsprop, ...)."""
    return {
        name.lower(): cls
        for name, cls in vars(torch.optim).items()
        if isinstance(cls, type)
        and issubclass(cls, torch.optim.Optimizer)
        and cls is not torch.optim.Optimizer
    }


#: optimizers that refuse dense gradients
SPARSE_GRADIENT_ONLY = (torch.optim.SparseAdam,)


def needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` requires a closure (LBFGS evaluates the loss several times)."""
    closure = inspect.signature(type(optimizer).step).parameters.get("closure")
    return closure is not None and closure.default is inspect.Parameter.empty


def make_optimizer(
    name: str, params, *, lr: float, momentum: float | None, weight_decay: float
) -> torch.optim.Optimizer:
    classes = optimizer_classes()
    if name.lower() not in classes:
        raise ValueError(f"optimizer must be one of {', '.join(sorted(classes))}, got {name!r}")
    cls = classes[name.lower()]
    if cls in SPARSE_GRADIENT_ONLY:
        raise ValueError(
            f"optimizer {cls.__name__} takes sparse gradients only (nn.Embedding(sparse=True)); "
            "the models here have dense gradients: use adam"
        )
    accepted = inspect.signature(cls).parameters
    kwargs: dict[str, Any] = {"lr": lr}
    if "weight_decay" in accepted:
        kwargs["weight_decay"] = weight_decay  # explicit: AdamW's default 0.01 is not "none"
    elif weight_decay:
        raise ValueError(f"optimizer {cls.__name__} has no weight_decay")
    if momentum is not None:
        if "momentum" not in accepted:
            raise ValueError(f"optimizer {cls.__name__} has no momentum; drop --momentum")
        kwargs["momentum"] = momentum
    return cls(params, **kwargs)


def loss_function(
    data: Dataset, config: TrainConfig | None = None, label_smoothing: float = 0.0
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Cross-entropy (with ``label_smoothing``, for training), or the mean squared error (halved
    with ``config.half_squared_error``)."""
    if data.task == "classification":
        if label_smoothing:
            return functools.partial(nn.functional.cross_entropy, label_smoothing=label_smoothing)
        return nn.functional.cross_entropy
    if label_smoothing:
        raise ValueError(
            f"label_smoothing needs a classification task; {data.name} is a regression"
        )
    if config is not None and config.half_squared_error:
        return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y) / 2
    return lambda out, y: nn.functional.mse_loss(out.squeeze(-1), y)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    data: Dataset,
    config: TrainConfig | None = None,
) -> torch.Tensor:
    """``[mean loss, metric]`` as one tensor (no sync): accuracy, or MSE for regression."""
    model.eval()
    loss_fn = loss_function(data, config)
    total_loss = torch.zeros((), device=x.device)
    total_metric = torch.zeros((), device=x.device)
    for start in range(0, len(x), 4096):
        xb, yb = x[start : start + 4096], y[start : start + 4096]
        out = model(xb)
        total_loss += loss_fn(out, yb) * len(xb)
        if data.task == "classification":
            total_metric += (out.argmax(1) == yb).sum()
        else:
            total_metric += ((out.squeeze(-1) - yb) ** 2).sum()
    model.train()
    return torch.stack([total_loss, total_metric]) / max(len(x), 1)


def target_of(contender: Contender, steps: int) -> TargetSparsity | None:
    """The contender's `TargetSparsity` over a run of ``steps`` optimizer steps: reached by half
    of them, so the other half trains the smaller model."""
    if contender.target is None or not contender.has_penalty:
        return None
    of, fraction = contender.target
    return TargetSparsity(fraction, of=of, by_step=max(1, steps // 2))


def build_model(
    data: Dataset, config: TrainConfig, seed: int, dropout: float | None = None
) -> nn.Module:
    """The model of ``config`` for ``data``; ``dropout`` (a contender's) replaces
    ``config.dropout``."""
    torch.manual_seed(seed)
    model = models.build(
        config.model,
        data,
        hidden=config.hidden,
        activation=config.activation,
        dropout=config.dropout if dropout is None else dropout,
    )
    if config.init_std is not None:
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, config.init_std) if p.ndim >= 2 else p.zero_()
    return model.to(config.device)


def run(
    data: Dataset,
    contender: Contender,
    config: TrainConfig,
    seed: int,
    *,
    progress: bool = True,
    init_state: Mapping[str, torch.Tensor] | None = None,
    keep_model: bool = False,
    resume: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Train one model; returns its per-epoch history (figures synced once per epoch).

    ``on_epoch`` receives, after every epoch, everything needed to continue the run exactly
    (weights, optimizer and regularizer state, both random generators, the history so far);
    ``resume`` takes that dict back and continues to bitwise the same result.
    """
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    model = build_model(data, config, seed, contender.dropout)
    if init_state is not None:
        model.load_state_dict(init_state)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    splits = [
        (data.x_val.to(device), data.y_val.to(device)),
        (data.x_test.to(device), data.y_test.to(device)),
    ]

    opt = make_optimizer(
        contender.optimizer or config.optimizer,
        model.parameters(),
        lr=config.lr if contender.lr is None else contender.lr,
        momentum=config.momentum,
        weight_decay=contender.weight_decay,
    )
    reg = None
    if contender.penalty is not None and contender.penalty != Zero():
        steps = config.epochs * -(-len(x_train) // config.batch_size)
        reg = Regularizer(model, contender.penalty, target=target_of(contender, steps))
        if contender.mode != "loss":
            reg.attach(opt, mode=contender.mode)
    # Figures every contender reports alike: the optimizer's own decay is L2 on all parameters.
    shown = reg or Regularizer(model, L2(contender.weight_decay), among="all")
    weights = Regularizer(model, Zero())  # norms and zeros of "the weights", for every contender
    grouped = reg is not None and any(
        pen.group_stats(param) is not None
        for (_, param), (_, pen) in zip(reg.named_parameters(), reg.named_penalties(), strict=True)
    )

    loss_fn = loss_function(data, config, contender.label_smoothing)  # evaluation: unsmoothed
    shuffle = torch.Generator().manual_seed(seed)
    history: list[EpochRecord] = []
    first_epoch, elapsed = 1, 0.0
    if resume is not None:
        try:
            stopped, records = resume["epoch"], len(resume["history"])
            if not (1 <= stopped < config.epochs and records == stopped):
                raise ValueError(
                    f"it stopped after epoch {stopped} with {records} epoch record(s), which "
                    f"does not fit a run of {config.epochs} epochs"
                )
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            if reg is not None:
                reg.load_state_dict(resume["regularizer"])
            shuffle.set_state(resume["shuffle"])
            torch.set_rng_state(resume["rng"])
            history = [EpochRecord(**r) for r in resume["history"]]
            first_epoch, elapsed = resume["epoch"] + 1, float(resume["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResumeError(
                f"the saved state of {contender.label} (seed {seed}) does not fit this run: "
                f"{reason[:200]}"
            ) from None
    start = time.perf_counter() - elapsed
    bar = tqdm(
        range(first_epoch, config.epochs + 1),
        desc=contender.label,
        unit="epoch",
        disable=not progress,
        leave=True,
        dynamic_ncols=True,
    )
    with_closure = needs_closure(opt)
    for epoch in bar:
        order = torch.randperm(len(x_train), generator=shuffle).to(device)
        for i in range(0, len(order), config.batch_size):
            idx = order[i : i + config.batch_size]

            def closure(idx: torch.Tensor = idx) -> Any:
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x_train[idx]), y_train[idx])
                if reg is not None and contender.mode == "loss":
                    loss = loss + reg()
                loss.backward()
                return loss

            if with_closure:
                opt.step(closure)
            else:
                closure()
                opt.step()
        figures = torch.cat(
            [
                evaluate(model, x_train, y_train, data, config),
                shown.value().reshape(1).to(device, torch.float32),
                evaluate(model, *splits[0], data, config),
                evaluate(model, *splits[1], data, config),
            ]
        ).tolist()  # the epoch's one sync
        report = weights.report()
        norm = math.sqrt(sum(r.l2_norm**2 for r in report))
        zero_groups = reg.report().zero_groups if reg is not None and grouped else math.nan
        reached = reg.target.status().reached if reg is not None and reg.target else math.nan
        train_loss, train_metric, penalty, val_loss, val_metric, test_loss, test_metric = figures
        history.append(
            EpochRecord(
                epoch,
                train_loss,
                penalty,
                val_loss,
                val_metric,
                test_loss,
                test_metric,
                norm,
                report.zero_fraction,
                report.zero_units,
                zero_groups,
                train_metric,
                reached,
            )
        )
        metric = "acc" if data.task == "classification" else "mse"
        if on_epoch is not None:
            on_epoch(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "regularizer": None if reg is None else reg.state_dict(),
                    "shuffle": shuffle.get_state(),
                    "rng": torch.get_rng_state(),
                    "history": [dataclasses.asdict(r) for r in history],
                    "elapsed": time.perf_counter() - start,
                }
            )
        bar.set_postfix(
            loss=f"{train_loss:.4g}",
            penalty=f"{penalty:.3g}",
            **{f"val_{metric}": f"{val_metric:.4g}"},
        )
    bar.close()
    return RunResult(
        contender.label,
        seed,
        history,
        time.perf_counter() - start,
        model=model if keep_model else None,
    )


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
