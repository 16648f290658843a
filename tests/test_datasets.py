"""Loaders on tiny files written in each data set's own on-disk format.

The files are written from the formats' specifications (idx for MNIST, pickled
row-major R/G/B planes for CIFAR-10, MATLAB arrays of shape (32, 32, 3, n) for SVHN)
and read back through torchvision's real parsing code. CIFAR-10 and SVHN files are
checked by torchvision against fixed md5 sums; the tests put the md5 sums of the
generated files into torchvision's checksum tables (``monkeypatch``), so the
integrity check runs as well. No test touches the network.
"""

import hashlib
import pickle
import socket
import struct

import numpy as np
import pytest
import scipy.io
import torch
from sklearn.datasets import load_digits
from torchvision import datasets as tvd

from skdnc.datasets import (
    DATASETS,
    DatasetNotFoundError,
    available_datasets,
    get_data_home,
    load_cifar10,
    load_dataset,
    load_default_digits,
    load_mnist,
    load_svhn,
    standardize,
)

# Train labels with unequal class counts (2, 3 or 4 per class), in a scrambled order.
_Y_TRAIN = np.random.default_rng(0).permutation(
    np.repeat(np.arange(10), [c % 3 + 2 for c in range(10)])
)  # 29 points, smallest class has 2
_Y_TEST = np.arange(12) % 10


def _md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def _write_idx(path, array):
    """idx format: 0, 0, type code 0x08 (ubyte), ndim, big-endian uint32 sizes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(1)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    truth = {}
    for prefix, y in (("train", _Y_TRAIN), ("t10k", _Y_TEST)):
        X = rng.integers(0, 256, size=(len(y), 28, 28), dtype=np.uint8)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", X)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))
        truth[prefix] = (X, y)
    return tmp_path, truth


@pytest.fixture
def cifar_root(tmp_path):
    """Five training batches (6 + 6 + 6 + 6 + 5 = 29 images) and a test batch."""
    rng = np.random.default_rng(2)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rows = rng.integers(0, 256, size=(len(_Y_TRAIN), 3 * 32 * 32), dtype=np.uint8)
    bounds = [0, 6, 12, 18, 24, 29]
    for b in range(5):
        batch = {
            "batch_label": f"training batch {b + 1} of 5",
            "data": rows[bounds[b] : bounds[b + 1]],
            "labels": [int(v) for v in _Y_TRAIN[bounds[b] : bounds[b + 1]]],
        }
        (folder / f"data_batch_{b + 1}").write_bytes(pickle.dumps(batch, protocol=2))
    test_rows = rng.integers(0, 256, size=(len(_Y_TEST), 3072), dtype=np.uint8)
    test = {"data": test_rows, "labels": [int(v) for v in _Y_TEST]}
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer"]
    names += ["dog", "frog", "horse", "ship", "truck"]
    meta = {"label_names": names, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return tmp_path, rows, test_rows, names


@pytest.fixture
def cifar_md5(cifar_root, monkeypatch):
    """Point torchvision's checksum tables at the generated files."""
    folder = cifar_root[0] / "cifar-10-batches-py"
    train = [[f"data_batch_{b}", _md5(folder / f"data_batch_{b}")] for b in range(1, 6)]
    monkeypatch.setattr(tvd.CIFAR10, "train_list", train)
    monkeypatch.setattr(
        tvd.CIFAR10, "test_list", [["test_batch", _md5(folder / "test_batch")]]
    )
    meta = dict(tvd.CIFAR10.meta, md5=_md5(folder / "batches.meta"))
    monkeypatch.setattr(tvd.CIFAR10, "meta", meta)
    return cifar_root


@pytest.fixture
def svhn_root(tmp_path, monkeypatch):
    """train_32x32.mat: X of shape (32, 32, 3, n), y of shape (n, 1) in 1..10."""
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(32, 32, 3, len(_Y_TRAIN)), dtype=np.uint8)
    y = np.where(_Y_TRAIN == 0, 10, _Y_TRAIN).astype(np.uint8)[:, None]
    path = tmp_path / "train_32x32.mat"
    scipy.io.savemat(path, {"X": X, "y": y})
    url, name, _ = tvd.SVHN.split_list["train"]
    split_list = dict(tvd.SVHN.split_list, train=[url, name, _md5(path)])
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return tmp_path, X, y


def _first_per_class(y, m):
    """Positions of the first m points of every class, in file order."""
    return np.sort(np.concatenate([np.flatnonzero(y == c)[:m] for c in range(10)]))


# --- MNIST ------------------------------------------------------------------------


def test_mnist_train_and_test_split(mnist_root):
    root, truth = mnist_root
    for split, prefix in (("train", "train"), ("test", "t10k")):
        X_raw, y = truth[prefix]
        data = load_mnist(root=root, split=split)
        assert data.data.shape == (len(y), 784)
        assert data.data.dtype == np.float32
        assert data.target.dtype == np.int64
        np.testing.assert_array_equal(data.target, y)
        np.testing.assert_allclose(data.data, X_raw.reshape(len(y), -1) / 255.0)
        assert data.images.shape == (len(y), 1, 28, 28)
        assert data.image_shape == (1, 28, 28)
        np.testing.assert_array_equal(data.target_names, np.arange(10))
        assert "MNIST" in data.DESCR


def test_mnist_first_n_samples_and_unflattened(mnist_root):
    root, truth = mnist_root
    X_raw, y = truth["train"]
    X, target = load_dataset(
        "mnist", root=root, n_samples=7, flatten=False, return_X_y=True
    )
    assert X.shape == (7, 1, 28, 28) and X.dtype == np.float32
    np.testing.assert_allclose(X[:, 0], X_raw[:7] / 255.0)
    np.testing.assert_array_equal(target, y[:7])


def test_balanced_subset_takes_first_points_of_each_class(mnist_root):
    root, truth = mnist_root
    X_raw, y = truth["train"]
    data = load_mnist(root=root, n_samples=20, balanced=True)
    expected = _first_per_class(y, 2)
    np.testing.assert_array_equal(data.indices, expected)
    np.testing.assert_array_equal(np.bincount(data.target), np.full(10, 2))
    np.testing.assert_allclose(data.data, X_raw[expected].reshape(20, -1) / 255.0)
    # n_samples=None: the largest balanced subset (2 per class here).
    np.testing.assert_array_equal(
        load_mnist(root=root, balanced=True).indices, expected
    )
    # 23 = 10 * 2 + 3: a third point for the first three classes that have one
    # (classes 0 and 3 have only 2 points).
    counts = np.bincount(load_mnist(root=root, n_samples=23, balanced=True).target)
    np.testing.assert_array_equal(counts, [2, 3, 3, 2, 3, 2, 2, 2, 2, 2])
    # 36 = 10 * 3 + 6 needs 3 of class 0, which has 2; 26 needs 6 classes with 3
    # points, and only classes 1, 2, 4, 5, 7, 8 have 3 or more -- it fits.
    np.testing.assert_array_equal(
        np.bincount(load_mnist(root=root, n_samples=26, balanced=True).target),
        [2, 3, 3, 2, 3, 3, 2, 3, 3, 2],
    )
    with pytest.raises(ValueError, match="smallest class has 2"):
        load_mnist(root=root, n_samples=36, balanced=True)
    with pytest.raises(ValueError, match="smallest class has 2"):
        load_mnist(root=root, n_samples=27, balanced=True)


def test_shuffle_is_seeded_and_consistent(mnist_root):
    root, truth = mnist_root
    X_raw, y = truth["train"]
    a = load_mnist(root=root, n_samples=10, shuffle=True, random_state=0)
    b = load_mnist(root=root, n_samples=10, shuffle=True, random_state=0)
    c = load_mnist(root=root, n_samples=10, shuffle=True, random_state=1)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    assert len(np.unique(a.indices)) == 10
    np.testing.assert_array_equal(a.target, y[a.indices])
    np.testing.assert_allclose(a.data, X_raw[a.indices].reshape(10, -1) / 255.0)
    bal = load_mnist(
        root=root, n_samples=20, balanced=True, shuffle=True, random_state=0
    )
    np.testing.assert_array_equal(np.bincount(bal.target), np.full(10, 2))
    np.testing.assert_array_equal(bal.target, y[bal.indices])


def test_download_true_with_files_present_needs_no_network(mnist_root, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the network must not be used")

    monkeypatch.setattr(socket, "create_connection", no_network)
    data = load_mnist(root=mnist_root[0], download=True)
    assert data.data.shape == (len(_Y_TRAIN), 784)


# --- CIFAR-10 ---------------------------------------------------------------------


def test_cifar10_rows_are_channel_planes(cifar_md5):
    root, rows, test_rows, names = cifar_md5
    data = load_cifar10(root=root)
    # A CIFAR row is the red, green and blue 32x32 planes, i.e. a (3, 32, 32) image
    # flattened in C order: the loader's flattening must give the row back.
    np.testing.assert_allclose(data.data, rows / 255.0)
    np.testing.assert_array_equal(data.target, _Y_TRAIN)
    np.testing.assert_array_equal(data.target_names, names)
    assert data.images.shape == (29, 3, 32, 32)
    np.testing.assert_allclose(
        data.images[:, 0], rows[:, :1024].reshape(29, 32, 32) / 255
    )
    test = load_cifar10(root=root, split="test", flatten=False)
    assert test.data.shape == (12, 3, 32, 32)
    np.testing.assert_allclose(test.data.reshape(12, -1), test_rows / 255.0)
    np.testing.assert_array_equal(test.target, _Y_TEST)


def test_cifar10_paper_subset_spans_batches(cifar_md5):
    root, rows, _, _ = cifar_md5
    X, y = load_cifar10(root=root, n_samples=14, return_X_y=True)  # batches 1 to 3
    np.testing.assert_allclose(X, rows[:14] / 255.0)
    np.testing.assert_array_equal(y, _Y_TRAIN[:14])


def test_cifar10_checksum_mismatch_is_reported(cifar_root):
    root = cifar_root[0]  # torchvision's real md5 sums: the generated files fail
    with pytest.raises(DatasetNotFoundError, match="torchvision rejected") as info:
        load_cifar10(root=root)
    assert str(root / "cifar-10-batches-py" / "data_batch_1") in str(info.value)


# --- SVHN -------------------------------------------------------------------------


def test_svhn_layout_and_label_ten_is_zero(svhn_root):
    root, X_mat, y_mat = svhn_root
    data = load_svhn(root=root)
    assert data.data.shape == (29, 3 * 32 * 32)
    assert set(np.unique(y_mat)) == set(range(1, 11))
    np.testing.assert_array_equal(data.target, y_mat[:, 0] % 10)
    # .mat images are (height, width, channel, sample).
    expected = X_mat.transpose(3, 2, 0, 1) / 255.0
    np.testing.assert_allclose(data.images, expected)
    np.testing.assert_allclose(data.data, expected.reshape(29, -1))
    bal = load_svhn(root=root, n_samples=10, balanced=True, flatten=False)
    assert bal.data.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(bal.indices, _first_per_class(_Y_TRAIN, 1))
    np.testing.assert_array_equal(bal.target, _Y_TRAIN[bal.indices])
    np.testing.assert_array_equal(np.bincount(bal.target), np.ones(10))


def test_svhn_missing_test_file_is_named(svhn_root):
    root = svhn_root[0]
    with pytest.raises(DatasetNotFoundError) as info:
        load_svhn(root=root, split="test")
    assert str(root / "test_32x32.mat") in str(info.value)
    assert "train_32x32.mat" not in str(info.value)


def test_download_fails_fast_without_network(tmp_path, monkeypatch):
    def unreachable(address, timeout=None, *args, **kwargs):
        assert timeout is not None and timeout <= 30
        raise OSError("Network is unreachable")

    def no_download(self):
        raise AssertionError("torchvision's download must not start")

    for var in ("http_proxy", "https_proxy", "all_proxy"):  # the probe skips proxies
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    monkeypatch.setattr(tvd.SVHN, "download", no_download)
    with pytest.raises(DatasetNotFoundError, match="ufldl.stanford.edu") as info:
        load_svhn(root=tmp_path, download=True)
    assert str(tmp_path / "train_32x32.mat") in str(info.value)


# --- missing files, root, digits and helpers --------------------------------------


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("mnist", "MNIST/raw/t10k-labels-idx1-ubyte"),
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar10", "cifar-10-batches-py/batches.meta"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_missing_files_error_names_the_paths(tmp_path, name, expected):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(name, root=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path / expected) in message
    assert "download=True" in message and "SKDNC_DATA" in message


def test_root_from_environment(mnist_root, monkeypatch, tmp_path_factory):
    monkeypatch.setenv("SKDNC_DATA", str(mnist_root[0]))
    assert get_data_home() == mnist_root[0]
    assert load_mnist().data.shape == (29, 784)
    monkeypatch.delenv("SKDNC_DATA")
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    assert get_data_home() == home / "skdnc_data"
    with pytest.raises(DatasetNotFoundError, match="skdnc_data"):
        load_mnist()


def test_digits_default():
    ref = load_digits()
    data = load_default_digits()
    assert data.data.shape == (1797, 64) and data.data.dtype == np.float32
    np.testing.assert_array_equal(data.data, ref.data / 16.0)
    np.testing.assert_array_equal(data.target, ref.target)
    assert data.target.dtype == np.int64
    assert data.images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(data.images[:, 0], ref.images / 16.0)
    X, y = load_dataset(n_samples=100, return_X_y=True)  # digits is the default
    np.testing.assert_array_equal(X, ref.data[:100] / 16.0)
    np.testing.assert_array_equal(y, ref.target[:100])
    with pytest.raises(ValueError, match="no test split"):
        load_dataset("digits", split="test")


def test_standardize_matches_paper_preprocess():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 6)) * [1, 2, 3, 4, 5, 6] + 7
    X[:, 2] = 3.0  # constant feature -> 0, as nan_to_num makes it
    Xt = torch.tensor(X)
    ref = torch.nan_to_num((Xt - Xt.mean(dim=0)) / Xt.std(dim=0)).numpy()
    np.testing.assert_allclose(standardize(X), ref, atol=1e-12)
    images = X.reshape(50, 1, 2, 3).astype(np.float32)
    out = standardize(images)
    assert out.dtype == np.float32 and out.shape == (50, 1, 2, 3)
    np.testing.assert_allclose(out.reshape(50, -1), ref, atol=1e-5)
    data = load_dataset("digits", n_samples=300, standardize=True)
    std = data.data.astype(np.float64).std(axis=0, ddof=1)
    np.testing.assert_allclose(data.data.mean(axis=0), 0, atol=1e-6)
    np.testing.assert_allclose(std[std > 0], 1, rtol=1e-5)
    assert np.all(data.data[:, std == 0] == 0) and np.any(std == 0)


def test_registry_and_argument_errors(mnist_root):
    assert available_datasets() == ["cifar10", "digits", "mnist", "svhn"]
    a = DATASETS["mnist"](root=mnist_root[0], n_samples=5)
    np.testing.assert_array_equal(a.data, load_mnist(root=mnist_root[0]).data[:5])
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split must be"):
        load_dataset("digits", split="valid")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n_samples must be"):
            load_dataset("digits", n_samples=bad)
    with pytest.raises(ValueError, match="exceeds the 29 points"):
        load_mnist(root=mnist_root[0], n_samples=30)


def test_garbled_mnist_files_are_reported_not_asserted(mnist_root):
    """torchvision's MNIST reader fails on a garbled header with a bare
    AssertionError; the loader names the files and the fix instead."""
    root = mnist_root[0]
    images = root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(b"\x00\x00\x08\x07" + b"\xff" * 64)  # 7 dimensions
    with pytest.raises(DatasetNotFoundError, match="torchvision rejected") as info:
        load_mnist(root=root)
    assert str(images) in str(info.value) and "delete them" in str(info.value)
