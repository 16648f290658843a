"""NC3 and NC4 against closed forms and direct loops."""

import numpy as np
import pytest
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdnc import RFMClassifier
from skdnc.metrics import make_collapse_scorer, nc3_score, nc4_score


def _rotation(theta):
    c, s = np.cos(theta), np.sin(theta)
    return np.array([[c, -s], [s, c]])


def _etf_data(n_per_class=5, noise=0.0, seed=0):
    """Three classes whose means form a simplex ETF in the plane."""
    angles = 2 * np.pi * np.arange(3) / 3
    means = np.column_stack([np.cos(angles), np.sin(angles)])
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), n_per_class)
    X = means[y] + noise * rng.normal(size=(len(y), 2))
    return X, y, means


@pytest.mark.parametrize("theta", [0.0, 0.3, np.pi / 2, 2.0])
def test_nc3_of_a_rotated_readout(theta):
    X, y, means = _etf_data()
    W = 7.0 * means @ _rotation(theta).T  # every row turned by theta
    # Each normalised row moves by 2 sin(theta / 2); the rows carry equal weight.
    assert nc3_score(X, y, W) == pytest.approx(2 * np.sin(theta / 2), abs=1e-12)
    assert nc3_score(X, y, W, kind="cosine") == pytest.approx(
        1 - np.cos(theta), abs=1e-12
    )


def test_nc3_is_zero_under_exact_collapse_and_positive_otherwise():
    X, y, means = _etf_data(noise=0.0)
    assert nc3_score(X, y, 0.5 * means) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(1)
    assert nc3_score(X, y, rng.normal(size=(3, 2))) > 0.1


def test_nc3_binary_single_row_and_errors():
    X = np.array([[0.0, 1.0], [0.0, 3.0], [2.0, 0.0], [4.0, 0.0]])
    y = np.array([0, 0, 1, 1])
    # centred means: (-1.5, 1) and (1.5, -1); one row w stands for (-w, w).
    assert nc3_score(X, y, [[1.5, -1.0]]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"W must have shape \(n_classes"):
        nc3_score(X, y, np.ones((3, 2)))
    with pytest.warns(UndefinedMetricWarning, match="NC3 is undefined"):
        assert np.isnan(nc3_score(X, y, np.zeros((2, 2))))


def test_nc4_equals_a_nearest_mean_loop():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = rng.integers(0, 3, size=60)
    y_pred = rng.integers(0, 3, size=60)
    means = {c: X[y == c].mean(axis=0) for c in range(3)}
    mismatches = 0
    for x, p in zip(X, y_pred):
        nearest = min(means, key=lambda c: np.sum((x - means[c]) ** 2))
        mismatches += nearest != p
    assert nc4_score(X, y, y_pred) == pytest.approx(mismatches / 60)
    # The nearest-mean rule itself has NC4 = 0.
    ncc = np.array([min(means, key=lambda c: np.sum((x - means[c]) ** 2)) for x in X])
    assert nc4_score(X, y, ncc) == 0.0
    with pytest.raises(ValueError, match="not among the classes"):
        nc4_score(X, y, np.full(60, 7))
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        nc4_score(X, y, y_pred[:-1])


def test_nc3_nc4_scorers_on_a_pipeline(balanced_digits):
    X, y = balanced_digits(30)
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    pipe.fit(X, y)
    Z = pipe[:-1].transform(X)
    nc3 = make_collapse_scorer("nc3")(pipe, X, y)
    assert nc3 == pytest.approx(-nc3_score(Z, y, pipe[-1].coef_))
    nc4 = make_collapse_scorer("nc4")(pipe, X, y)
    assert nc4 == pytest.approx(-nc4_score(Z, y, pipe.predict(X)))
    assert -2 <= nc3 <= 0 and -1 <= nc4 <= 0
    scores = cross_val_score(pipe, X, y, cv=3, scoring=make_collapse_scorer("nc4"))
    assert np.all(np.isfinite(scores))
    kernel = make_pipeline(StandardScaler(), RFMClassifier(max_iter=0)).fit(X, y)
    with pytest.raises(TypeError, match="NC3 needs a linear readout"):
        make_collapse_scorer("nc3")(kernel, X, y)
