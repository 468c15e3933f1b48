"""Training many runs of one architecture at once: every member of a `Stacked` model is one
contender with one seed, trained exactly as `training.run` trains it alone (its own
initialization, its own seed's batches, its own penalty and strength), in one batched forward,
backward and optimizer step per batch.

Runs share a stack when nothing but their penalty and seed differs (`batch_key`): the same
optimizer, learning rate, weight decay, dropout, label smoothing and mode, no sparsity target,
and an elementwise optimizer (one over the stacked tensors is then one per member). Runs whose
only regularizer is their optimizer's ``weight_decay`` stack across decays: each member's decay
becomes ``L2(wd)`` on every parameter, in gradient mode (coupled, as ``weight_decay`` does it)
or, for AdamW, in decoupled mode (AdamW's own rule). The rest trains alone. `plan` cuts the
runs into stacks that fit a memory budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from torchpenalty import L2, Penalty, Regularizer, Stacked, Zero, parse
from torchpenalty.penalties import Members
from torchpenalty.selection import select

from .data import Dataset
from .training import (
    Contender,
    EpochRecord,
    ResumeError,
    RunResult,
    TrainConfig,
    build_model,
    make_optimizer,
)

#: optimizers whose update of each element reads only that element's gradient and state:
#: one over stacked tensors is one per member
ELEMENTWISE_OPTIMIZERS = frozenset(
    {"sgd", "adam", "adamw", "rmsprop", "adagrad", "adamax", "nadam", "radam", "asgd", "rprop"}
)
#: the memory a stack may take by default (bytes), when no budget is given
DEFAULT_BUDGET = 2 * 2**30
#: evaluation rows per forward of the whole stack
EVAL_ROWS = 2048


def batch_key(c: Contender, config: TrainConfig) -> tuple | None:
    """What runs sharing a stack must share; None if ``c`` trains alone (a sparsity target, an
    optimizer that is not elementwise, per-layer rules)."""
    optimizer = (c.optimizer or config.optimizer).lower()
    if c.target is not None or optimizer not in ELEMENTWISE_OPTIMIZERS:
        return None
    if isinstance(c.penalty, Mapping):
        return None
    dropout = config.dropout if c.dropout is None else c.dropout
    if not c.has_penalty and c.weight_decay:
        # the optimizer's own decay, member by member: coupled L2 on every parameter in
        # gradient mode (AdamW's decoupled decay in decoupled mode), at each member's strength
        return (optimizer, c.lr, DECAY, dropout, c.label_smoothing, decay_mode(optimizer))
    mode = c.mode if c.has_penalty else None
    return (optimizer, c.lr, c.weight_decay, dropout, c.label_smoothing, mode)


#: the weight-decay slot of the key of runs whose only regularizer is their optimizer's decay
DECAY = "weight_decay"


def decay_mode(optimizer: str) -> str:
    """The mode in which ``L2(wd)`` on every parameter is ``optimizer(weight_decay=wd)``:
    decoupled for AdamW, gradient mode (``g += wd * w``) for the others."""
    return "decoupled" if optimizer == "adamw" else "grad"


def member_bytes(data: Dataset, config: TrainConfig) -> int:
    """An estimate of one member's memory: weights, gradients and two optimizer states, and the
    activations of a training batch and of an evaluation chunk (float32, 3 copies each)."""
    model = build_model(data, config, 0)
    weights = sum(p.numel() for p in model.parameters())
    widths = (
        sum(m.out_features if isinstance(m, nn.Linear) else 0 for m in model.modules())
        + data.n_features
    )
    activations = 3 * (config.batch_size + EVAL_ROWS) * max(widths, 1)
    if config.model == "cnn":
        activations *= 16  # feature maps: a generous bound for the small LeNet
    return 4 * (4 * weights + activations)


def plan(
    contenders: Sequence[Contender],
    seeds: Sequence[int],
    config: TrainConfig,
    per_member: int,
    budget: int | None,
    sequential: bool,
) -> list[list[int]]:
    """The runs (indices into ``[(c, seed) for c in contenders for seed in seeds]``) cut into
    consecutive stacks: runs of one `batch_key`, at most ``budget // per_member`` of them; a run
    without a key, or every run when ``sequential``, alone."""
    runs = [(c, s) for c in contenders for s in seeds]
    most = max(1, (budget or DEFAULT_BUDGET) // max(per_member, 1))
    stacks: list[list[int]] = []
    shared: tuple | None = None  # the last stack's key (its mode None while none is penalized)
    for index, (c, _) in enumerate(runs):
        key = None if sequential else batch_key(c, config)
        joined = _join(shared, key) if stacks and len(stacks[-1]) < most else None
        if joined is not None:
            stacks[-1].append(index)
            shared = joined
        else:
            stacks.append([index])
            shared = key
    return stacks


def _join(stack: tuple | None, run: tuple | None) -> tuple | None:
    """The key of a stack once ``run`` joins it, or None if it cannot: everything equal, and
    the same mode where both are penalized (a run without a penalty joins any mode)."""
    if stack is None or run is None or stack[:-1] != run[:-1]:
        return None
    if stack[-1] is not None and run[-1] is not None and stack[-1] != run[-1]:
        return None
    return stack if stack[-1] is not None else run


def _member_penalty(contenders: Sequence[Contender]) -> Members | None:
    if not any(c.has_penalty for c in contenders):
        return None
    terms: list[Penalty] = []
    for c in contenders:
        terms.append(parse(c.penalty) if c.has_penalty else Zero())  # type: ignore[arg-type]
    return Members(tuple(terms))


def _losses(
    out: torch.Tensor, y: torch.Tensor, data: Dataset, config: TrainConfig, smoothing: float
):
    """Each member's mean loss over its batch, ``(K,)``: `training.loss_function`'s."""
    members, rows = y.shape[0], y.shape[1]
    if data.task == "classification":
        flat = F.cross_entropy(
            out.reshape(members * rows, -1),
            y.reshape(-1),
            reduction="none",
            label_smoothing=smoothing,
        )
        return flat.view(members, rows).mean(1)
    squared = ((out.squeeze(-1) - y) ** 2).mean(1)
    return squared / 2 if config.half_squared_error else squared


@torch.no_grad()
def _evaluate(
    stacked: Stacked, x: torch.Tensor, y: torch.Tensor, data: Dataset, config: TrainConfig
):
    """``(K, 2)``: each member's mean loss and metric on ``x, y`` (`training.evaluate`)."""
    stacked.eval()
    k = stacked.members
    total = torch.zeros(k, 2, device=x.device)
    for start in range(0, len(x), EVAL_ROWS):
        xb, yb = x[start : start + EVAL_ROWS], y[start : start + EVAL_ROWS]
        out = stacked(xb, shared=True)
        ys = yb.expand(k, *yb.shape)
        total[:, 0] += _losses(out, ys, data, config, 0.0) * len(xb)
        if data.task == "classification":
            total[:, 1] += (out.argmax(-1) == ys).sum(1)
        else:
            total[:, 1] += ((out.squeeze(-1) - ys) ** 2).sum(1)
    stacked.train()
    return total / max(len(x), 1)


def _weight_figures(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(K, 4)``: each member's squared weight norm, exact zeros, elements and all-zero units
    over ``weights`` (stacked; the default selection)."""
    columns = []
    for w in weights:
        flat = w.detach().flatten(1)
        units = (
            (w.detach().flatten(2) != 0).any(2).logical_not().sum(1)
            if w.ndim >= 3
            else torch.zeros(w.shape[0], device=w.device)
        )
        columns.append(
            torch.stack(
                [
                    flat.double().pow(2).sum(1),
                    (flat == 0).sum(1).double(),
                    torch.full((w.shape[0],), float(flat.shape[1]), device=w.device).double(),
                    units.double(),
                ],
                dim=1,
            )
        )
    return torch.stack(columns).sum(0)


def run_stack(
    data: Dataset,
    members: Sequence[tuple[Contender, int]],
    config: TrainConfig,
    *,
    progress: bool = True,
    resume: Mapping[str, Any] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> list[RunResult]:
    """Train ``members`` (contender, seed) as one `Stacked` model; one `RunResult` each, with
    its model. ``on_epoch`` / ``resume`` as in `training.run`, for the whole stack."""
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    first = members[0][0]
    models = [build_model(data, config, seed, c.dropout) for c, seed in members]
    stacked = Stacked(models).to(device)
    k = stacked.members
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    splits = [
        (data.x_val.to(device), data.y_val.to(device)),
        (data.x_test.to(device), data.y_test.to(device)),
    ]
    optimizer = (first.optimizer or config.optimizer).lower()
    decaying = batch_key(first, config)[2] == DECAY  # type: ignore[index]
    opt = make_optimizer(
        optimizer,
        stacked.parameters(),
        lr=config.lr if first.lr is None else first.lr,
        momentum=config.momentum,
        weight_decay=0.0 if decaying else first.weight_decay,
    )
    reg: Regularizer | None = None
    penalty: Members | None
    if decaying:  # each member's optimizer decay, as L2 on every parameter at its strength
        penalty = Members(tuple(L2(c.weight_decay) for c, _ in members))
        mode = decay_mode(optimizer)
        reg = Regularizer(stacked, penalty, among="all")
    else:
        penalty = _member_penalty([c for c, _ in members])
        mode = next((c.mode for c, _ in members if c.has_penalty), "loss")
        reg = None if penalty is None else Regularizer(stacked, penalty)
    if reg is not None and mode != "loss":
        reg.attach(opt, mode=mode)
    # what each member reports as its penalty: its own, or its optimizer's decay as L2 on all
    decays = [c.weight_decay if not c.has_penalty else 0.0 for c, _ in members]
    weights = [p for _, p in select(stacked)]
    everything = list(stacked.parameters())
    grouped = reg is not None and any(
        pen.group_stats(p) is not None
        for (_, p), (_, pen) in zip(reg.named_parameters(), reg.named_penalties(), strict=True)
    )
    smoothing = first.label_smoothing
    shuffles = [torch.Generator().manual_seed(seed) for _, seed in members]
    histories: list[list[EpochRecord]] = [[] for _ in members]
    first_epoch, elapsed = 1, 0.0
    if resume is not None:
        try:
            stopped = resume["epoch"]
            if not (1 <= stopped < config.epochs) or len(resume["histories"]) != k:
                raise ValueError(f"it stopped after epoch {stopped}, which does not fit this run")
            stacked.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            if reg is not None:
                reg.load_state_dict(resume["regularizer"])
            for g, state in zip(shuffles, resume["shuffles"], strict=True):
                g.set_state(state)
            torch.set_rng_state(resume["rng"])
            histories = [[EpochRecord(**r) for r in h] for h in resume["histories"]]
            first_epoch, elapsed = stopped + 1, float(resume["elapsed"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ResumeError(
                f"the saved state of the stack from {first.label} does not fit this run: "
                f"{reason[:200]}"
            ) from None
    start = time.perf_counter() - elapsed
    bar = tqdm(
        range(first_epoch, config.epochs + 1),
        desc=f"{k} runs at once",
        unit="epoch",
        disable=not progress,
        leave=True,
        dynamic_ncols=True,
    )
    rows = len(x_train)
    for epoch in bar:
        orders = torch.stack([torch.randperm(rows, generator=g) for g in shuffles]).to(device)
        for i in range(0, rows, config.batch_size):
            idx = orders[:, i : i + config.batch_size]
            opt.zero_grad(set_to_none=True)
            loss = _losses(stacked(x_train[idx]), y_train[idx], data, config, smoothing).sum()
            if reg is not None and mode == "loss":
                loss = loss + reg()
            loss.backward()
            opt.step()
        with torch.no_grad():
            values = torch.zeros(k, dtype=torch.float64, device=device)
            if reg is not None and penalty is not None:
                for (_, p), (_, pen) in zip(
                    reg.named_parameters(), reg.named_penalties(), strict=True
                ):
                    assert isinstance(pen, Members)
                    values += pen.member_values(p.detach()).to(device, torch.float64)
            decay = torch.tensor(decays, dtype=torch.float64, device=device)
            if any(decays) and not decaying:
                squares = sum(p.detach().double().flatten(1).pow(2).sum(1) for p in everything)
                values += decay / 2 * squares
            table = torch.cat(
                [
                    _evaluate(stacked, x_train, y_train, data, config).double(),
                    values.view(k, 1),
                    _evaluate(stacked, *splits[0], data, config).double(),
                    _evaluate(stacked, *splits[1], data, config).double(),
                    _weight_figures(weights),
                ],
                dim=1,
            ).tolist()  # the epoch's one sync
        zero_groups = [math.nan] * k
        if grouped and reg is not None:
            zero_groups = [0.0] * k
            for (_, p), (_, pen) in zip(reg.named_parameters(), reg.named_penalties(), strict=True):
                for m, term in enumerate(pen.terms):  # type: ignore[attr-defined]
                    stats = term.group_stats(p[m])
                    zero_groups[m] += float(stats.zero_groups) if stats is not None else 0.0
        for m, figures in enumerate(table):
            train_loss, train_metric, penalty_value, val_loss, val_metric = figures[:5]
            test_loss, test_metric, squares, zeros, numel, units = figures[5:]
            histories[m].append(
                EpochRecord(
                    epoch,
                    train_loss,
                    penalty_value,
                    val_loss,
                    val_metric,
                    test_loss,
                    test_metric,
                    math.sqrt(squares),
                    zeros / numel if numel else 0.0,
                    round(units),
                    zero_groups[m],
                    train_metric,
                    math.nan,
                )
            )
        if on_epoch is not None:
            on_epoch(
                {
                    "epoch": epoch,
                    "members": k,
                    "model": stacked.state_dict(),
                    "optimizer": opt.state_dict(),
                    "regularizer": None if reg is None else reg.state_dict(),
                    "shuffles": [g.get_state() for g in shuffles],
                    "rng": torch.get_rng_state(),
                    "histories": [[dataclasses.asdict(r) for r in h] for h in histories],
                    "elapsed": time.perf_counter() - start,
                }
            )
    bar.close()
    wall = (time.perf_counter() - start) / k  # each run's share of the stack's time
    return [
        RunResult(c.label, seed, histories[m], wall, model=stacked.member(m))
        for m, (c, seed) in enumerate(members)
    ]


__all__ = ["ELEMENTWISE_OPTIMIZERS", "batch_key", "member_bytes", "plan", "run_stack"]
