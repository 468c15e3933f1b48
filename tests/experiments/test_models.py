"""Experiment models: each fits the data it is built for, and refuses data it cannot use."""

from __future__ import annotations

import pytest
import torch

from torchpenalty.experiments import data, models


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


@pytest.mark.parametrize("name", models.MODELS)
def test_models_map_inputs_to_class_scores(digits, name):
    dropout = 0.0 if name == "linear" else 0.1
    model = models.build(name, digits, hidden=(16,), activation="tanh", dropout=dropout)
    assert model(digits.x_train[:5]).shape == (5, 10)
    dropped = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert len(dropped) == (0 if name == "linear" else 1 if name == "mlp" else 2)


def test_dropout_is_never_silently_ignored(digits):
    with pytest.raises(ValueError, match="dropout needs hidden layers"):
        models.build("linear", digits, dropout=0.1)
    # without dropout, the CNN is the same model as ever (same parameters, same names)
    plain, dropped = (models.build("cnn", digits, dropout=p) for p in (0.0, 0.5))
    assert [p.shape for p in plain.parameters()] == [p.shape for p in dropped.parameters()]


def test_cnn_on_mnist_sized_images():
    mnist_like = data.Dataset(
        "m",
        "classification",
        *(torch.zeros(4, 784), torch.zeros(4, dtype=torch.long)) * 3,
        n_classes=10,
        image_shape=(1, 28, 28),
    )
    model = models.build("cnn", mnist_like)
    assert model(torch.zeros(4, 784)).shape == (4, 10)
    assert model.features[0].kernel_size == (5, 5)  # LeNet-5's kernels at 28x28


def test_mlp_layout(digits):
    model = models.build("mlp", digits, hidden=(32, 16), activation="sigmoid", dropout=0.5)
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Linear", "Sigmoid", "Dropout", "Linear", "Sigmoid", "Dropout", "Linear"]


def test_bad_model_requests(digits):
    with pytest.raises(ValueError, match="--model cnn needs image data"):
        models.build("cnn", data.synthetic_linear())
    with pytest.raises(ValueError, match="model must be one of mlp, linear, cnn"):
        models.build("resnet", digits)
    with pytest.raises(ValueError, match="activation must be one of relu, sigmoid, tanh"):
        models.build("mlp", digits, activation="gelu")
