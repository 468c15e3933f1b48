"""A two-layer NumPy network with hand-written backprop, regularized by torchpenalty's penalties.

The classic from-scratch tutorial, minus its hand-derived (and often wrong) regularization terms:
the penalty's `value` goes into the reported loss and its `grad` into the weight gradients.

    python examples/numpy_mlp.py --penalty "l2(1e-3)" --epochs 30
    python examples/numpy_mlp.py --penalty "l1(1e-4)"
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import torchpenalty


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def train(penalty: str, epochs: int, hidden: int, lr: float, batch: int, seed: int) -> dict:
    pen = torchpenalty.parse(penalty)
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, stratify=y, random_state=seed
    )
    rng = np.random.default_rng(seed)
    W1 = rng.normal(0, np.sqrt(2 / X.shape[1]), (X.shape[1], hidden))
    b1 = np.zeros(hidden)
    W2 = rng.normal(0, np.sqrt(2 / hidden), (hidden, 10))
    b2 = np.zeros(10)
    onehot = np.eye(10)

    for epoch in range(epochs):
        order = rng.permutation(len(X_train))
        data_loss = penalty_loss = 0.0
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            x, t = X_train[idx], onehot[y_train[idx]]
            # forward
            h_pre = x @ W1 + b1
            h = np.maximum(h_pre, 0)
            p = softmax(h @ W2 + b2)
            data_loss += -np.log(p[np.arange(len(idx)), y_train[idx]] + 1e-12).mean() * len(idx)
            penalty_loss += float(pen.value(W1) + pen.value(W2)) * len(idx)
            # backward: mean cross-entropy, then the penalty's gradient on the weights only
            d_out = (p - t) / len(idx)
            gW2 = h.T @ d_out + pen.grad(W2)
            gb2 = d_out.sum(0)
            d_h = (d_out @ W2.T) * (h_pre > 0)
            gW1 = x.T @ d_h + pen.grad(W1)
            gb1 = d_h.sum(0)
            for param, grad in ((W1, gW1), (b1, gb1), (W2, gW2), (b2, gb2)):
                param -= lr * grad
        n = len(X_train)
        test_pred = (np.maximum(X_test @ W1 + b1, 0) @ W2 + b2).argmax(1)
        accuracy = float((test_pred == y_test).mean())
        print(
            f"epoch {epoch + 1:3d}  data loss {data_loss / n:.4f}  penalty {penalty_loss / n:.4f}"
            f"  test accuracy {accuracy:.3f}"
        )
    return {
        "test_accuracy": accuracy,
        "data_loss": data_loss / n,
        "penalty": penalty_loss / n,
        "weight_norm": float(np.sqrt((W1**2).sum() + (W2**2).sum())),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--penalty", default="l2(1e-3)", help="any torchpenalty spec string")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return train(args.penalty, args.epochs, args.hidden, args.lr, args.batch_size, args.seed)


if __name__ == "__main__":
    main()
