"""Data loaders: the real formats (mnist.npz, IDX, CSV) on small files, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchpenalty.experiments import data

from .files import idx_bytes, mnist_arrays, write_csv, write_idx_folder, write_npz


def test_digits_split_is_fixed_stratified_and_scaled():
    d = data.load_digits()
    assert (len(d.x_train), len(d.x_val), len(d.x_test)) == (1077, 360, 360)
    assert d.x_train.min() >= 0 and d.x_train.max() <= 1 and d.image_shape == (1, 8, 8)
    for split in (d.y_train, d.y_val, d.y_test):
        counts = torch.bincount(split, minlength=10).double()
        assert counts.min() / counts.max() > 0.85  # stratified: classes stay balanced
    again = data.load_digits()
    assert torch.equal(d.x_test, again.x_test)


def test_synthetic_linear_matches_its_definition():
    d = data.synthetic_linear()
    assert d.x_train.shape == (20, 200) and d.x_test.shape == (100, 200) and d.task == "regression"
    residual = d.y_test - (0.05 + 0.01 * d.x_test.sum(1))
    assert residual.std() == pytest.approx(0.01, rel=0.3)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_and_npz_load_the_same_images(tmp_path, gz):
    from_idx = data.load_mnist(write_idx_folder(tmp_path / "idx", gz=gz))
    from_npz = data.load_mnist(write_npz(tmp_path / "mnist.npz"))
    for a, b in ((from_idx.x_train, from_npz.x_train), (from_idx.y_test, from_npz.y_test)):
        assert torch.equal(a, b)
    x_train, y_train, _, _ = mnist_arrays()
    assert from_npz.x_train.shape == (50, 784) and len(from_npz.x_val) == 10
    torch.testing.assert_close(
        from_npz.x_train[0], torch.tensor(x_train[0].ravel() / 255.0, dtype=torch.float32)
    )
    assert from_npz.y_train.tolist() == y_train[:50].tolist()


def test_read_idx_round_trip(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(idx_bytes(array))
    np.testing.assert_array_equal(data.read_idx(tmp_path / "a"), array)


def test_subsample_train_is_stratified_and_fixed():
    d = data.load_digits().subsample_train(200)
    assert len(d.x_train) == 200 and torch.bincount(d.y_train).min() >= 18
    assert torch.equal(d.x_train, data.load_digits().subsample_train(200).x_train)
    with pytest.raises(data.DataError, match="--train-size must be between 1 and 1077"):
        data.load_digits().subsample_train(5000)


def test_csv_classification_and_regression(tmp_path):
    cls = data.load_csv(write_csv(tmp_path / "c.csv"), "label")
    assert cls.task == "classification" and cls.n_classes == 2 and cls.n_features == 3
    reg = data.load_csv(write_csv(tmp_path / "r.csv", classification=False), "label")
    assert reg.task == "regression" and reg.y_train.dtype == torch.float32
    forced = data.load_csv(tmp_path / "c.csv", "label", task="regression")
    assert forced.task == "regression"


def _bad_idx_folder(tmp_path, name, content):
    folder = write_idx_folder(tmp_path / "idx", gz=False)
    (folder / name).write_bytes(content)
    return folder


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "nope.npz", "no such file or folder"),
        (lambda p: (p / "x.npz").write_text("hello") and p / "x.npz", "not a readable .npz file"),
        (lambda p: write_npz(p / "m.npz", y_test=None), r"missing arrays \['y_test'\]"),
        (
            lambda p: write_npz(p / "m.npz", x_train=np.zeros((60, 27, 28), np.uint8)),
            r"training images must have shape \(N, 28, 28\), got \(60, 27, 28\)",
        ),
        (
            lambda p: write_npz(p / "m.npz", y_train=np.full(60, 12, np.uint8)),
            r"training labels must be in 0\.\.9, found 12\.\.12",
        ),
        (
            lambda p: write_npz(p / "m.npz", y_test=np.zeros(5, np.uint8)),
            r"test labels must have shape \(20,\)",
        ),
        (lambda p: (p / "empty").mkdir() or p / "empty", "missing train-images-idx3-ubyte"),
        (
            lambda p: _bad_idx_folder(
                p, "train-labels-idx1-ubyte", idx_bytes(np.zeros(60, np.uint8))[:-3]
            ),
            "IDX header promises shape",
        ),
        (
            lambda p: _bad_idx_folder(
                p, "train-labels-idx1-ubyte", b"\x00\x00\x0d\x01" + b"\x00" * 8
            ),
            "not an unsigned-byte IDX file",
        ),
    ],
)
def test_mnist_errors_name_the_file_and_the_problem(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(data.DataError, match=message) as info:
        data.load_mnist(path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_gzip_idx(tmp_path):
    folder = write_idx_folder(tmp_path / "idx")
    raw = (folder / "t10k-images-idx3-ubyte.gz").read_bytes()
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DataError, match=r"t10k-images-idx3-ubyte\.gz: cannot read IDX file"):
        data.load_mnist(folder)


@pytest.mark.parametrize(
    "content, target, message",
    [
        ("a,b,label\n1,2,x\n", "label", "line 2, column 'label': non-numeric cell 'x'"),
        ("a,b,label\n" + "1,2,0\n" * 5, "label", "needs at least 10 rows"),
        (
            "a,b,label\n" + "1,2,0\n" * 5 + "1,oops,1\n" + "1,2,1\n" * 6,
            "label",
            r"line 7, column 'b': non-numeric cell 'oops'",
        ),
        ("a,b,label\n" + "1,2,0\n" * 12, "y", r"no target column 'y'; columns are a, b, label"),
        ("a,b,label\n" + "1,2\n" * 12, "label", "line 2 has 2 cells, the header has 3"),
        ("a,b,label\n" + "1,nan,0\n" * 12, "label", "contains NaN or infinite values"),
        (
            "a,b,label\n" + "1,2,0\n" * 12 + "1,2,1\n",
            "label",
            "every class in 'label' needs at least 5 rows",
        ),
        ("label\n" + "1\n" * 12, "label", "no feature columns"),
        ("a,label\n", "label", "needs a header row and at least one data row"),
    ],
)
def test_csv_errors(tmp_path, content, target, message):
    path = tmp_path / "data.csv"
    path.write_text(content)
    with pytest.raises(data.DataError, match=message) as info:
        data.load_csv(path, target)
    assert "data.csv" in str(info.value)


def test_csv_requires_target_and_file(tmp_path):
    with pytest.raises(data.DataError, match="--target COLUMN is required"):
        data.load_csv(tmp_path / "x.csv", None)
    with pytest.raises(data.DataError, match="cannot read CSV"):
        data.load_csv(tmp_path / "x.csv", "label")


def test_unknown_data_spec():
    with pytest.raises(data.DataError, match="unknown data 'cifar'; use digits"):
        data.load("cifar")
