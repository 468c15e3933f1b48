"""Models for the experiments: MLP, linear (regression / logistic), and a small LeNet-style CNN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .data import Dataset

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
MODELS = ("mlp", "linear", "cnn")


def mlp(n_in: int, hidden: Sequence[int], n_out: int, activation: str, dropout: float) -> nn.Module:
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class LeNet(nn.Module):
    """conv-pool-conv-pool-fc-fc-fc, sized for the input image (8x8 digits or 28x28 MNIST)."""

    def __init__(
        self, image_shape: tuple[int, int, int], n_out: int, activation: str, dropout: float = 0.0
    ) -> None:
        super().__init__()
        channels, height, width = image_shape
        act = ACTIVATIONS[activation]
        self.image_shape = image_shape
        large = min(height, width) >= 20  # LeNet-5's 5x5 kernels; 3x3 "same" ones for 8x8 digits
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5 if large else 3, padding=2 if large else 1),
            act(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5 if large else 3, padding=0 if large else 1),
            act(),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            n_flat = self.features(torch.zeros(1, *image_shape)).numel()

        def drop() -> list[nn.Module]:  # after each hidden fc layer; none at 0 (same model)
            return [nn.Dropout(dropout)] if dropout else []

        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(n_flat, 120),
            act(),
            *drop(),
            nn.Linear(120, 84),
            act(),
            *drop(),
            nn.Linear(84, n_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x.view(len(x), *self.image_shape)))


def build(
    name: str,
    data: Dataset,
    *,
    hidden: Sequence[int] = (200, 100),
    activation: str = "relu",
    dropout: float = 0.0,
) -> nn.Module:
    """The model ``name`` for ``data``'s input size and outputs; raises ValueError if unsuitable."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
    if name == "mlp":
        return mlp(data.n_features, hidden, data.n_outputs, activation, dropout)
    if name == "linear":
        if dropout:
            raise ValueError(
                "dropout needs hidden layers to drop units of: --model mlp or cnn, not linear"
            )
        return nn.Linear(data.n_features, data.n_outputs)
    if name == "cnn":
        if data.image_shape is None:
            raise ValueError(f"--model cnn needs image data (digits or mnist), not {data.name}")
        return LeNet(data.image_shape, data.n_outputs, activation, dropout)
    raise ValueError(f"model must be one of {', '.join(MODELS)}, got {name!r}")
