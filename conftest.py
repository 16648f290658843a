"""Test-session set-up shared by the test suite and the doctests."""

import os

# scikit-learn's array-API common check runs only when this is set before SciPy is
# imported; without it the check is silently skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """One BLAS/OpenMP thread per test process: the suite runs on two cores with
    two pytest-xdist workers, and oversubscribed threads slow small torch and
    LAPACK calls by up to an order of magnitude on this machine."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def digits_data():
    """scikit-learn's digits, 1,797 x 64, float64, labels 0-9."""
    from sklearn.datasets import load_digits

    return load_digits(return_X_y=True)


@pytest.fixture(scope="session")
def digits_split(digits_data):
    """A stratified 80/20 split of digits: X_train, X_test, y_train, y_test."""
    from sklearn.model_selection import train_test_split

    X, y = digits_data
    return train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)


@pytest.fixture(scope="session")
def balanced_digits(digits_data):
    """``make(per_class, seed=0) -> (X, y)``: digits with ``per_class`` random
    samples of every class."""
    import numpy as np

    X, y = digits_data

    def make(per_class, seed=0):
        rng = np.random.default_rng(seed)
        idx = np.concatenate(
            [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in range(10)]
        )
        return X[idx], y[idx]

    return make


@pytest.fixture
def generated_mnist(tmp_path):
    """A tiny MNIST folder in torchvision's layout (random 28 x 28 images, 80
    training and 20 test images, 8 and 2 of each digit), for the commands."""
    import struct

    import numpy as np

    def write_idx(path, array):
        header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
        header += struct.pack(f">{array.ndim}I", *array.shape)
        path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())

    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 80), ("t10k", 20)):
        y = np.arange(n) % 10
        X = rng.integers(0, 64, size=(n, 28, 28), dtype=np.uint8)
        X[np.arange(n), 2 * y + 3, 5:23] = 255  # a class-dependent stroke
        write_idx(raw / f"{prefix}-images-idx3-ubyte", X)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y.astype(np.uint8))
    return tmp_path
