"""Data sets for the experiments, split into train / validation / test, validated on load.

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images), pixels scaled to [0, 1],
  a fixed stratified 60 / 20 / 20 split.
- ``mnist:PATH``: Keras' ``mnist.npz`` or a folder of IDX files (``train-images-idx3-ubyte[.gz]``
  ...); pixels scaled to [0, 1]; the last 10,000 training images are the validation split.
- ``synthetic-linear``: ``y = 0.05 + sum_i 0.01 x_i + N(0, 0.01^2)``, 200 features, 20 training
  rows, 100 validation rows and 100 test rows (the classic over-fitting regression of d2l.ai).
- ``csv:PATH``: a numeric CSV with a header; ``target`` names the label column.

Every problem with a file raises `DataError` with one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import struct
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Task = Literal["classification", "regression"]
SPLIT_SEED = 0  # the data split is fixed; --seed varies initialisation and batch order
AUTO_MAX_CLASSES = 20  # --task auto: whole-number labels with at most this many values are classes


class DataError(ValueError):
    """A data file or data specification that cannot be used; the message is one line."""


@dataclasses.dataclass
class Dataset:
    name: str
    task: Task
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int | None = None
    image_shape: tuple[int, int, int] | None = None  # (channels, height, width) for CNNs
    #: the original label of each class index (CSV data: classes are the distinct values, sorted)
    class_labels: list[int | float] | None = None

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        return self.n_classes or 0 if self.task == "classification" else 1

    def subsample_train(self, size: int, seed: int = SPLIT_SEED) -> Dataset:
        """The first ``size`` rows of a fixed (stratified for classification) shuffle."""
        n = len(self.x_train)
        if not 0 < size <= n:
            raise DataError(f"{self.name}: --train-size must be between 1 and {n}, got {size}")
        if self.task == "classification" and size < n:
            from sklearn.model_selection import train_test_split

            labels = self.y_train.numpy()
            stratify = labels if size >= (self.n_classes or 0) else None
            idx, _ = train_test_split(
                np.arange(n), train_size=size, stratify=stratify, random_state=seed
            )
            idx = np.sort(idx)
        else:
            idx = np.random.default_rng(seed).permutation(n)[:size]
        return dataclasses.replace(self, x_train=self.x_train[idx], y_train=self.y_train[idx])


def _split(
    name: str, x: np.ndarray, y: np.ndarray, task: Task, n_classes: int | None, image_shape=None
) -> Dataset:
    """A fixed 60 / 20 / 20 split, stratified for classification."""
    from sklearn.model_selection import train_test_split

    stratify = y if task == "classification" else None
    x_tv, x_test, y_tv, y_test = train_test_split(
        x, y, test_size=0.2, stratify=stratify, random_state=SPLIT_SEED
    )
    stratify = y_tv if task == "classification" else None
    x_train, x_val, y_train, y_val = train_test_split(
        x_tv, y_tv, test_size=0.25, stratify=stratify, random_state=SPLIT_SEED
    )
    return _dataset(
        name, task, (x_train, y_train), (x_val, y_val), (x_test, y_test), n_classes, image_shape
    )


def _dataset(
    name: str,
    task: Task,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    n_classes: int | None = None,
    image_shape: tuple[int, int, int] | None = None,
) -> Dataset:
    label_dtype = torch.long if task == "classification" else torch.float32
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        (torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=label_dtype))
        for x, y in (train, val, test)
    )
    return Dataset(
        name,
        task,
        x_train,
        y_train,
        x_val,
        y_val,
        x_test,
        y_test,
        n_classes=n_classes,
        image_shape=image_shape,
    )


def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    x, y = sk_load_digits(return_X_y=True)
    return _split("digits", x / 16.0, y, "classification", 10, image_shape=(1, 8, 8))


def synthetic_linear(seed: int = SPLIT_SEED) -> Dataset:
    """d2l.ai's high-dimensional linear regression: 200 features, 20 training rows."""
    n_features, true_w, true_b, noise = 200, 0.01, 0.05, 0.01
    rng = np.random.default_rng(seed)

    def rows(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, n_features))
        return x, x.sum(1) * true_w + true_b + rng.normal(scale=noise, size=n)

    return _dataset("synthetic-linear", "regression", rows(20), rows(100), rows(100))


# -- MNIST ------------------------------------------------------------------------------------
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_VALIDATION = 10_000


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not, as a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read IDX file ({exc})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: IDX header promises shape {shape} ({expected} bytes) "
            f"but the file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (
        stem,
        stem + ".gz",
        stem.replace("-idx", ".idx"),
        stem.replace("-idx", ".idx") + ".gz",
    ):
        if (folder / candidate).is_file():
            return folder / candidate
    raise DataError(
        f"{folder}: missing {stem}[.gz] (MNIST IDX folder needs {', '.join(MNIST_FILES.values())})"
    )


#: training images needed: at least one for training and one for validation
MIN_TRAIN_IMAGES = 2


def _check_mnist(source: str, images: np.ndarray, labels: np.ndarray, split: str) -> None:
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{source}: {split} images must have shape (N, 28, 28), got {images.shape}")
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataError(f"{source}: {split} images must be numbers, got dtype {images.dtype}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(
            f"{source}: {split} labels must have shape ({len(images)},), got {labels.shape}"
        )
    least = MIN_TRAIN_IMAGES if split == "training" else 1
    if len(images) < least:
        raise DataError(
            f"{source}: needs at least {least} {split} image(s) "
            f"({'one to train on and one to validate with' if least > 1 else 'to test on'}), "
            f"has {len(images)}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        whole = np.issubdtype(labels.dtype, np.floating) and np.all(labels == np.round(labels))
        if not whole:
            raise DataError(
                f"{source}: {split} labels must be whole numbers 0..9, got dtype {labels.dtype}"
            )
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataError(
            f"{source}: {split} labels must be in 0..9, found {labels.min()}..{labels.max()}"
        )


NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _read_npz(path: Path) -> list[np.ndarray]:
    """The four arrays of Keras' ``mnist.npz``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = sorted(set(NPZ_KEYS) - set(f.files))
            if missing:
                raise DataError(
                    f"{path}: missing arrays {missing} (mnist.npz holds {', '.join(NPZ_KEYS)})"
                )
            return [f[k] for k in NPZ_KEYS]
    except DataError:
        raise
    except Exception as exc:  # zipfile, pickle and format errors all mean "not an npz"
        raise DataError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None


def load_mnist(path: str | Path) -> Dataset:
    """MNIST from Keras' ``mnist.npz`` or from a folder of the four IDX files."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (expected mnist.npz or an IDX folder)")
    if path.is_dir():
        arrays = {k: read_idx(_find_idx(path, stem)) for k, stem in MNIST_FILES.items()}
        x_train, y_train = arrays["train_images"], arrays["train_labels"]
        x_test, y_test = arrays["test_images"], arrays["test_labels"]
    else:
        x_train, y_train, x_test, y_test = _read_npz(path)
    _check_mnist(str(path), x_train, y_train, "training")
    _check_mnist(str(path), x_test, y_test, "test")
    # small files (tests, subsets) keep a sixth of the training images for validation
    n_val = MNIST_VALIDATION if len(x_train) > MNIST_VALIDATION else max(len(x_train) // 6, 1)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / 255.0  # noqa: E731
    return _dataset(
        "mnist",
        "classification",
        (flat(x_train[:-n_val]), y_train[:-n_val].astype(np.int64)),
        (flat(x_train[-n_val:]), y_train[-n_val:].astype(np.int64)),
        (flat(x_test), y_test.astype(np.int64)),
        n_classes=10,
        image_shape=(1, 28, 28),
    )


# -- CSV --------------------------------------------------------------------------------------
def load_csv(
    path: str | Path, target: str | None, task: Task | Literal["auto"] = "auto"
) -> Dataset:
    """A numeric CSV with a header row; ``target`` names the label column."""
    path = Path(path)
    if target is None:
        raise DataError(f"{path}: --target COLUMN is required with csv data")
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read CSV ({exc})") from None
    if len(rows) < 2:
        raise DataError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if target not in header:
        raise DataError(f"{path}: no target column {target!r}; columns are {', '.join(header)}")
    values = np.empty((len(rows) - 1, len(header)))
    for r, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: line {r} has {len(row)} cells, the header has {len(header)}")
        for c, cell in enumerate(row):
            try:
                values[r - 2, c] = float(cell)
            except ValueError:
                raise DataError(
                    f"{path}: line {r}, column {header[c]!r}: non-numeric cell {cell!r}"
                ) from None
    if not np.isfinite(values).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    t = header.index(target)
    y = values[:, t]
    x = np.delete(values, t, axis=1)
    if x.shape[1] == 0:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    if task == "auto":  # whole-number labels with at most 20 distinct values are classes
        task = (
            "classification"
            if np.all(y == np.round(y)) and len(np.unique(y)) <= AUTO_MAX_CLASSES
            else "regression"
        )
    if len(y) < 10:
        raise DataError(
            f"{path}: needs at least 10 rows for a train/validation/test split, has {len(y)}"
        )
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    if task == "classification":
        # classes are the distinct label values, in order: never allocate by a label's value
        labels, y_class = np.unique(y, return_inverse=True)
        if len(labels) < 2:
            raise DataError(f"{path}: classification needs 2 or more classes in {target!r}")
        if len(labels) > MAX_CLASSES:
            raise DataError(
                f"{path}: {len(labels)} distinct values in {target!r} are too many classes "
                f"(at most {MAX_CLASSES}); use --task regression"
            )
        counts = np.bincount(y_class)
        if counts.min() < 5:
            rare = labels[counts.argmin()]
            raise DataError(
                f"{path}: every class in {target!r} needs at least 5 rows for a stratified "
                f"split; class {_label_text(rare)} has {counts.min()}"
            )
        data = _split(path.name, x, y_class.astype(np.int64), "classification", len(labels))
        data.class_labels = [_label_value(v) for v in labels]
        return data
    return _split(path.name, x, y, "regression", None)


#: more distinct labels than this make classification over a CSV column an error
MAX_CLASSES = 1000


def _label_value(v: float) -> int | float:
    return int(v) if float(v).is_integer() else float(v)


def _label_text(v: float) -> str:
    return str(_label_value(v))


def load(spec: str, *, target: str | None = None, task: str = "auto") -> Dataset:
    """``digits``, ``synthetic-linear``, ``mnist:PATH`` or ``csv:PATH``."""
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits()
    if kind == "synthetic-linear" and not arg:
        return synthetic_linear()
    if kind == "mnist" and arg:
        return load_mnist(arg)
    if kind == "csv" and arg:
        return load_csv(arg, target, task)  # type: ignore[arg-type]
    raise DataError(f"unknown data {spec!r}; use digits, synthetic-linear, mnist:PATH or csv:PATH")
