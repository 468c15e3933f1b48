"""Smaller models on request: accuracy against parameter count at 50 / 75 / 90% of the hidden
units removed, torchpenalty's target group sparsity against Torch-Pruning.

    python benchmarks/size_vs_accuracy.py                    # digits MLP and CNN, 3 seeds
    python benchmarks/size_vs_accuracy.py --models mlp --seeds 1

Every method gets the same budget: ``--epochs`` of training, then the size cut, then
``--finetune`` epochs of plain SGD on the smaller model (SGD lr 0.05, momentum 0.9, batch 64, the
same shuffling per seed).

- ``torchpenalty target``: group lasso (MLP: layer 0's rows and layer 2's columns; CNN: the rows
  of every layer but the output one) with ``TargetSparsity(fraction, of="units", by_step=half
  the training)``, proximal mode; then `torchpenalty.compact`, then fine-tuning.
- ``Torch-Pruning magnitude``: the dense model trained, then ``MagnitudePruner`` (L2 magnitude
  importance, the same fraction of every hidden layer's units), then fine-tuning.
- ``Torch-Pruning GroupNorm``: ``GroupNormPruner``'s sparse training (its ``regularize`` after
  every backward, default strength) instead of plain training, then its pruning, then
  fine-tuning.
- ``dense``: the unpruned model trained for the whole budget.

Reported per method and size (mean ± std over seeds): test accuracy, parameters, and the fraction
of hidden units removed, measured on the final model. Results go to
``benchmarks/results/size_vs_accuracy.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch_pruning
from torch import nn
from torch.nn import functional as F

import torchpenalty
from torchpenalty import GroupLasso, Regularizer, TargetSparsity, compact
from torchpenalty.experiments import data as datasets
from torchpenalty.experiments.models import LeNet
from torchpenalty.sparsity.compaction import layer_widths

LR, MOMENTUM, BATCH = 0.05, 0.9, 64
LAM = 1e-4
FRACTIONS = (0.5, 0.75, 0.9)
OUT = Path(__file__).resolve().parent / "results" / "size_vs_accuracy.json"


def build(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "mlp":  # the digits MLP of the issue: 64-256-10
        return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
    return LeNet((1, 8, 8), 10, "relu")  # the command line's CNN


def output_layer(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def hidden_units(model: nn.Module) -> int:
    """Output units / filters of every Linear and Conv layer but the output layer."""
    widths = layer_widths(model)
    return sum(widths.values()) - widths[list(widths)[-1]]


def penalties(name: str) -> dict:
    if name == "mlp":
        return {
            "0.weight": GroupLasso(LAM, "rows"),
            "2.weight": GroupLasso(LAM, "cols"),
        }
    return {
        "features.*.weight": GroupLasso(LAM, "rows"),
        "classifier.[13].weight": GroupLasso(LAM, "rows"),
    }


def train(
    model: nn.Module,
    data: datasets.Dataset,
    epochs: int,
    seed: int,
    after_backward: Callable[[nn.Module], None] | None = None,
    attach: Callable[[torch.optim.Optimizer], None] | None = None,
) -> nn.Module:
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    if attach is not None:
        attach(opt)
    shuffle = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(data.x_train), generator=shuffle)
        for i in range(0, len(order), BATCH):
            idx = order[i : i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            if after_backward is not None:
                after_backward(model)
            opt.step()
    return model


def accuracy(model: nn.Module, data: datasets.Dataset) -> float:
    model.eval()
    with torch.no_grad():
        return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()


def steps(data: datasets.Dataset, epochs: int) -> int:
    return epochs * -(-len(data.x_train) // BATCH)


def ours(name, data, fraction, seed, epochs, finetune, dense=None):
    model = build(name, seed)
    target = TargetSparsity(fraction, of="units", by_step=steps(data, epochs) // 2)
    reg = Regularizer(model, penalties(name), target=target)
    train(model, data, epochs, seed, attach=lambda opt: reg.attach(opt, "proximal"))
    small = compact(model, data.x_test[:64])
    return train(small, data, finetune, seed + 1000)


def tp_magnitude(name, data, fraction, seed, epochs, finetune, dense=None):
    model = (
        copy.deepcopy(dense) if dense is not None else train(build(name, seed), data, epochs, seed)
    )
    pruner = torch_pruning.pruner.MagnitudePruner(
        model,
        data.x_test[:2],
        importance=torch_pruning.importance.MagnitudeImportance(p=2),
        pruning_ratio=fraction,
        ignored_layers=[output_layer(model)],
    )
    pruner.step()
    return train(model, data, finetune, seed + 1000)


def tp_group_norm(name, data, fraction, seed, epochs, finetune, dense=None):
    model = build(name, seed)
    pruner = torch_pruning.pruner.GroupNormPruner(
        model,
        data.x_test[:2],
        importance=torch_pruning.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=fraction,
        ignored_layers=[output_layer(model)],
    )
    train(model, data, epochs, seed, after_backward=pruner.regularize)
    pruner.step()
    return train(model, data, finetune, seed + 1000)


def summary(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def run(names, seeds, epochs, finetune) -> list[dict]:
    data = datasets.load_digits()
    rows = []
    for name in names:
        full_units = hidden_units(build(name, 0))
        full_params = sum(p.numel() for p in build(name, 0).parameters())
        dense_models = {s: train(build(name, s), data, epochs, s) for s in seeds}
        dense_acc = [
            accuracy(train(copy.deepcopy(dense_models[s]), data, finetune, s + 1000), data)
            for s in seeds
        ]
        rows.append(
            {
                "model": name,
                "method": "dense",
                "fraction": 0.0,
                "accuracy": summary(dense_acc),
                "params": summary([float(full_params)] * len(seeds)),
                "units_removed": summary([0.0] * len(seeds)),
            }
        )
        methods = {
            "torchpenalty target": ours,
            "Torch-Pruning magnitude": tp_magnitude,
            "Torch-Pruning GroupNorm": tp_group_norm,
        }
        for fraction in FRACTIONS:
            for method, make in methods.items():
                start = time.perf_counter()
                models = [
                    make(name, data, fraction, s, epochs, finetune, dense_models[s]) for s in seeds
                ]
                rows.append(
                    {
                        "model": name,
                        "method": method,
                        "fraction": fraction,
                        "accuracy": summary([accuracy(m, data) for m in models]),
                        "params": summary(
                            [float(sum(p.numel() for p in m.parameters())) for m in models]
                        ),
                        "units_removed": summary(
                            [1 - hidden_units(m) / full_units for m in models]
                        ),
                        "seconds": time.perf_counter() - start,
                    }
                )
                r = rows[-1]
                print(
                    f"{name:4s} {fraction:4.0%} {method:24s} acc {r['accuracy']['mean']:.2%} ± "
                    f"{r['accuracy']['std']:.2%}  params {r['params']['mean']:8.0f}  units removed "
                    f"{r['units_removed']['mean']:.1%}",
                    flush=True,
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| model | removed (target) | method | test accuracy | parameters | units removed |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['fraction']:.0%} | {r['method']} | "
            f"{r['accuracy']['mean']:.2%} ± {r['accuracy']['std']:.2%} | "
            f"{r['params']['mean']:,.0f} | {r['units_removed']['mean']:.1%} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,cnn")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--finetune", type=int, default=10)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    rows = run(names, list(range(args.seeds)), args.epochs, args.finetune)
    print()
    print(table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "info": {
                    "torch": torch.__version__,
                    "torchpenalty": torchpenalty.__version__,
                    "torch_pruning": torch_pruning.__version__,
                    "machine": platform.machine(),
                    "threads": torch.get_num_threads(),
                    "seeds": args.seeds,
                    "epochs": args.epochs,
                    "finetune": args.finetune,
                    "lr": LR,
                    "momentum": MOMENTUM,
                    "batch": BATCH,
                    "lam": LAM,
                },
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
