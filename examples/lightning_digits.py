"""Lightning on scikit-learn's digits, regularized by a callback: no change to the LightningModule.

Proximal L1 on the weights (not biases) gives exact zeros; the callback logs the penalty and the
fraction of zeros after every batch, and its state rides in Lightning's checkpoints.

    python examples/lightning_digits.py                          # l1(1e-3), proximal
    python examples/lightning_digits.py --penalty "l2(1e-2)" --mode decoupled --epochs 20
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from torchpenalty.integrations.lightning import RegularizerCallback


class DigitsMLP(L.LightningModule):
    def __init__(self, hidden: int = 128, lr: float = 0.05):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_acc", (self(x).argmax(1) == y).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def loaders(batch: int, seed: int) -> tuple[DataLoader, DataLoader]:
    x, y = load_digits(return_X_y=True)
    x_train, x_val, y_train, y_val = train_test_split(
        x / 16.0, y, test_size=0.25, random_state=seed, stratify=y
    )

    def loader(x, y, shuffle):
        data = TensorDataset(torch.tensor(x, dtype=torch.float32), torch.tensor(y))
        return DataLoader(data, batch_size=batch, shuffle=shuffle)

    return loader(x_train, y_train, True), loader(x_val, y_val, False)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--penalty", default="l1(1e-3)")
    parser.add_argument("--mode", default="proximal")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    L.seed_everything(args.seed, verbose=False)
    train, val = loaders(batch=64, seed=args.seed)
    penalty = RegularizerCallback(args.penalty, mode=args.mode)
    trainer = L.Trainer(
        max_epochs=args.epochs,
        callbacks=[penalty],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DigitsMLP(), train, val)
    report = penalty.regularizer.report()
    result = {
        "val_acc": trainer.callback_metrics["val_acc"].item(),
        "penalty": report.total_value,
        "zero_fraction": report.zero_fraction,
    }
    print(report)
    print(
        f"{args.penalty} ({args.mode}): validation accuracy {result['val_acc']:.2%}, "
        f"penalty {result['penalty']:.4g}, exact zeros {result['zero_fraction']:.1%}"
    )
    return result


if __name__ == "__main__":
    main()
