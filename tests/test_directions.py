"""AGOPDirections: the top eigenvectors of a fitted RFM's M, sign-aligned with y.

Truth comes from outside the code under test: a planted direction the data were
made from, NumPy's float64 eigh of the fitted M, correlations computed here, and
the ablated model (M = I, max_iter=0) as the control that must fail.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression
from sklearn.utils._param_validation import InvalidParameterError
from sklearn.utils.estimator_checks import parametrize_with_checks

from skdnc import AGOPDirections, RFMClassifier, RFMRegressor


def planted(n=300, d=30, seed=0, strength=2.0):
    """Gaussian noise plus ``strength * (y - 1/2) * u`` along a random unit ``u``."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    y = rng.integers(0, 2, size=n)
    X = rng.normal(size=(n, d)) + strength * (y[:, None] - 0.5) * u
    return X, y, u


def _rfm(**params):
    params = {
        "bandwidth": "auto",
        "max_iter": 3,
        "validation_fraction": 0.0,
        "random_state": 0,
        **params,
    }
    return RFMClassifier(**params)


def test_recovers_planted_direction_and_control_does_not():
    X, y, u = planted()
    directions = AGOPDirections(_rfm()).fit(X, y)
    assert directions.directions_from_ == "M"
    cos = float(directions.components_[0] @ u)
    assert cos > 0.9  # and positive: the sign follows the label
    # The control: labels that carry no signal give no direction.
    shuffled = np.random.default_rng(3).permutation(y)
    control = AGOPDirections(_rfm()).fit(X, shuffled)
    assert abs(float(control.components_[0] @ u)) < 0.5
    # A random direction is far from the planted one too.
    v = np.random.default_rng(1).normal(size=X.shape[1])
    assert abs(v @ u) / np.linalg.norm(v) < 0.5


def test_no_update_takes_the_directions_of_the_predictors_agop():
    # With no AGOP update M = I, whose eigenvectors are the coordinate axes,
    # none of them near the planted direction; the AGOP of the fitted predictor
    # (computed here by central differences of its decision function, in float64)
    # holds it.
    X, y, u = planted()
    directions = AGOPDirections(_rfm(max_iter=0), n_components=2).fit(X, y)
    assert directions.estimator_.best_iter_ == 0
    assert directions.directions_from_ == "agop"
    np.testing.assert_allclose(directions.estimator_.M_, np.eye(X.shape[1]))
    assert np.abs(u).max() < 0.6  # no axis is close to u
    assert float(directions.components_[0] @ u) > 0.9
    f = directions.estimator_.decision_function
    h = 1e-5
    G = np.stack(
        [(f(X + h * e) - f(X - h * e)) / (2 * h) for e in np.eye(X.shape[1])],
        axis=1,
    )
    agop = G.T @ G / len(X)
    evals, evecs = np.linalg.eigh(agop)
    top = evecs[:, -1]
    assert abs(float(directions.components_[0] @ top)) > 0.99


def test_components_are_the_eigenvectors_of_M():
    X, y, _ = planted(d=12)
    rfm = _rfm(validation_fraction=0.0)  # three updates: M is not the identity
    directions = AGOPDirections(rfm, n_components=4).fit(X, y)
    M = directions.estimator_.M_
    evals, evecs = np.linalg.eigh(M.astype(np.float64))
    order = np.argsort(evals)[::-1][:4]
    np.testing.assert_allclose(directions.eigenvalues_, evals[order], rtol=1e-8)
    np.testing.assert_allclose(
        directions.explained_ratio_, evals[order] / np.trace(M), rtol=1e-8
    )
    # Equal up to sign, one column at a time.
    overlap = np.abs(directions.components_ @ evecs[:, order])
    np.testing.assert_allclose(np.diag(overlap), 1.0, atol=1e-8)
    np.testing.assert_allclose(
        directions.components_ @ directions.components_.T, np.eye(4), atol=1e-10
    )


def test_sign_follows_the_label():
    X, y, _ = planted()
    a = AGOPDirections(_rfm(), n_components=2).fit(X, y)
    b = AGOPDirections(_rfm(), n_components=2).fit(X, 1 - y)
    # The class-1 mean lies on the positive side of the direction, whichever
    # class is called 1 (the mean difference is computed here, independently).
    gap = X[y == 1].mean(axis=0) - X[y == 0].mean(axis=0)
    assert a.components_[0] @ gap > 0
    assert b.components_[0] @ gap < 0
    assert abs(a.components_[0] @ b.components_[0]) > 0.9
    P = a.transform(X)
    corr = np.corrcoef(P[:, 0], y)[0, 1]
    assert corr > 0.5
    np.testing.assert_allclose(a.correlations_[0, 0], corr, rtol=1e-6)
    assert (a.correlations_[np.arange(2), np.abs(a.correlations_).argmax(1)] >= 0).all()


def test_multiclass_and_regression_signs():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(240, 8))
    y = np.digitize(X[:, 2], [-0.5, 0.5])  # three classes along feature 2
    d = AGOPDirections(_rfm()).fit(X, y)
    assert d.correlations_.shape == (1, 3)
    assert np.abs(d.components_[0]).argmax() == 2
    # The class whose indicator correlates most (class 2 or class 0) is positive.
    best = np.abs(d.correlations_[0]).argmax()
    assert d.correlations_[0, best] > 0
    t = 2.0 * X[:, 5] + 0.1 * rng.normal(size=240)
    r = AGOPDirections(RFMRegressor(max_iter=2, random_state=0)).fit(X, -t)
    assert r.components_[0, 5] < -0.9  # aligned with -t, so pointing along -e_5
    assert isinstance(r.estimator_, RFMRegressor)
    default = AGOPDirections(random_state=0).fit(X[:60], t[:60])
    assert isinstance(default.estimator_, RFMRegressor)
    assert default.estimator_.random_state == 0


def test_transform_and_feature_names():
    X, y, _ = planted(n=120, d=6)
    d = AGOPDirections(_rfm(), n_components=3).fit(X, y)
    np.testing.assert_allclose(
        d.transform(X), (X - X.mean(axis=0)) @ d.components_.T, rtol=1e-10
    )
    assert list(d.get_feature_names_out()) == [
        "agopdirections0",
        "agopdirections1",
        "agopdirections2",
    ]
    assert d.transform(X.astype(np.float32)).dtype == np.float32


def test_bad_inputs():
    X, y, _ = planted(n=60, d=5)
    with pytest.raises(ValueError, match="n_components=6 must be at most n_features=5"):
        AGOPDirections(n_components=6).fit(X, y)
    with pytest.raises(InvalidParameterError, match="n_components"):
        AGOPDirections(n_components=0).fit(X, y)
    with pytest.raises(TypeError, match="feature matrix M_.*LogisticRegression"):
        AGOPDirections(LogisticRegression()).fit(X, y)
    d = AGOPDirections(_rfm()).fit(X, y)
    with pytest.raises(ValueError, match="5 features"):
        d.transform(X[:, :4])


@settings(derandomize=True, max_examples=10, deadline=None)
@given(
    n=st.integers(20, 60),
    d=st.integers(2, 9),
    k=st.integers(1, 3),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_properties(n, d, k, scale):
    k = min(k, d)
    rng = np.random.default_rng(n * 31 + d)
    X = scale * rng.normal(size=(n, d))
    y = (X[:, 0] + 0.3 * scale * rng.normal(size=n) > 0).astype(int)
    if len(np.unique(y)) < 2:
        y[:2] = [0, 1]
    est = AGOPDirections(_rfm(max_iter=1), n_components=k).fit(X, y)
    C = est.components_
    np.testing.assert_allclose(C @ C.T, np.eye(k), atol=1e-8)
    assert np.all(np.diff(est.eigenvalues_) <= 1e-12)
    assert np.all(est.explained_ratio_ >= 0) and est.explained_ratio_.sum() <= 1 + 1e-9
    Z = est.transform(X)
    np.testing.assert_allclose(Z, (X - X.mean(axis=0)) @ C.T, atol=1e-8 * scale)
    # The sign rule: the largest correlation in magnitude is not negative.
    C = est.correlations_
    assert C[np.arange(k), np.abs(C).argmax(1)].min() >= 0


@parametrize_with_checks(
    [
        AGOPDirections(
            RFMClassifier(
                max_iter=1, bandwidth="auto", validation_fraction=0.0, random_state=0
            )
        )
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
