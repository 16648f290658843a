"""CollapseAccumulator keeps one type of label for its life.

Fed int labels and then string labels of the same classes, it used to count 20
classes for digits' 10 and return NC1 0.58 instead of 0.74, silently: ``3`` and
``"3"`` were two classes. The expected values are brute-force float64 formulas.
"""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdnc.metrics import CollapseAccumulator


def ref_nc1(X, y):
    """tr(Sigma_W) / tr(Sigma_B), class means centred by their mean."""
    classes = np.unique(y)
    means = np.array([X[y == c].mean(axis=0) for c in classes])
    within = np.mean(np.sum((X - means[np.searchsorted(classes, y)]) ** 2, axis=1))
    between = np.mean(np.sum((means - means.mean(axis=0)) ** 2, axis=1))
    return within / between


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:200] / 16, y[:200]


def test_int_then_string_labels_is_an_error(digits):
    X, y = digits
    acc = CollapseAccumulator().partial_fit(X[:100], y[:100])
    with pytest.raises(ValueError, match="labels of type str.*type number"):
        acc.partial_fit(X[100:], y[100:].astype(str))
    # The refused batch left nothing behind: the same batch with int labels
    # completes the right statistics (10 classes, NC1 0.74).
    acc.partial_fit(X[100:], y[100:])
    assert acc.statistics().n_classes == 10
    assert acc.nc1() == pytest.approx(ref_nc1(X, y), rel=1e-12)
    assert ref_nc1(X, y) == pytest.approx(0.7412, abs=1e-4)


@pytest.mark.parametrize(
    ("first", "second", "old", "new"),
    [
        (str, int, "str", "number"),
        (int, bool, "number", "bool"),
        (str, bytes, "str", "bytes"),
        (str, object, "str", "number"),  # an object array of Python ints
        (object, str, "number", "str"),
    ],
)
def test_every_change_of_label_type_is_an_error(first, second, old, new):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))
    y = np.arange(12) % 2

    def as_type(labels, kind):
        if kind is object:
            return np.array([int(v) for v in labels], dtype=object)
        if kind is bytes:
            return labels.astype(str).astype(bytes)
        return labels.astype(kind)

    acc = CollapseAccumulator().partial_fit(X[:6], as_type(y[:6], first))
    with pytest.raises(ValueError, match=f"labels of type {new}.*type {old}"):
        acc.partial_fit(X[6:], as_type(y[6:], second))


def test_the_second_pass_takes_the_first_pass_type(digits):
    X, y = digits
    acc = CollapseAccumulator().partial_fit(X, y.astype(str))
    with pytest.raises(ValueError, match="labels of type number.*type str"):
        acc.partial_fit_within(X, y)


def test_a_batch_mixing_types_is_an_error():
    X = np.eye(4)
    y = np.array([0, "0", 1, "1"], dtype=object)
    with pytest.raises(ValueError, match="Mix of label input types"):
        CollapseAccumulator().partial_fit(X, y)


def test_int_and_float_labels_are_one_type(digits):
    # 3 == 3.0: numbers of either dtype name the same class, as in scikit-learn.
    X, y = digits
    acc = CollapseAccumulator()
    acc.partial_fit(X[:100], y[:100])
    acc.partial_fit(torch.tensor(X[100:]), torch.tensor(y[100:], dtype=torch.float64))
    assert acc.statistics().n_classes == 10
    assert acc.nc1() == pytest.approx(ref_nc1(X, y), rel=1e-12)


def test_string_labels_throughout_are_fine(digits):
    X, y = digits
    acc = CollapseAccumulator()
    for rows in (slice(0, 70), slice(70, 200)):
        acc.partial_fit(X[rows], y[rows].astype(str))
    assert acc.statistics().classes.tolist() == [str(c) for c in range(10)]
    assert acc.nc1() == pytest.approx(ref_nc1(X, y), rel=1e-12)


def test_uint8_images_are_numbers(digits):
    # torchvision loads images as uint8: they are features like any other. Main
    # refused them with "X must hold numbers; got dtype torch.uint8".
    X, y = digits
    pixels = np.round(X * 16).astype(np.uint8)
    for batch in (pixels, torch.from_numpy(pixels)):
        acc = CollapseAccumulator().partial_fit(batch, y)
        assert acc.nc1() == pytest.approx(ref_nc1(pixels.astype(float), y), rel=1e-12)


@pytest.mark.parametrize("kind", ["complex", "bool"])
def test_complex_and_boolean_features_are_refused(digits, kind):
    X, y = digits
    Z = X + 1j * X if kind == "complex" else X > 0.5
    with pytest.raises(TypeError, match="X must hold real numbers"):
        CollapseAccumulator().partial_fit(torch.as_tensor(Z), y)
