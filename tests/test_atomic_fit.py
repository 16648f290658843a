"""A fit that raises leaves the estimator exactly as it was (issue reproducers)."""

import pickle

import numpy as np
import pytest

from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    NFAProbe,
    RFMClassifier,
)


@pytest.fixture(scope="module")
def data(balanced_digits):
    X, y = balanced_digits(15)
    return X / 16.0, y


def _state(est):
    return pickle.dumps(est.__dict__)


@pytest.mark.parametrize(
    "make, method",
    [
        (lambda: RFMClassifier(max_iter=1, random_state=0), "predict_proba"),
        (lambda: DeepRFMTransformer(L=2, width=16, random_state=0), "transform"),
        (lambda: NeuralCollapseScorer(), "transform"),
    ],
)
def test_failed_refit_keeps_the_previous_fit(data, make, method):
    X, y = data
    est = make().fit(X, y)
    before, expected = _state(est), getattr(est, method)(X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        est.fit(X[:, :10], np.zeros(len(X)))  # other width and one class
    assert _state(est) == before
    np.testing.assert_array_equal(getattr(est, method)(X), expected)


def test_failed_warm_start_keeps_the_previous_fit(data):
    X, y = data
    clf = RFMClassifier(max_iter=1, warm_start=True, random_state=0).fit(X, y)
    before, expected = _state(clf), clf.predict(X)
    with pytest.raises(ValueError, match="warm_start=True needs a previous M_"):
        clf.fit(X[:, :10], y)
    assert clf.n_features_in_ == 64 and clf.M_.shape == (64, 64)
    assert _state(clf) == before
    np.testing.assert_array_equal(clf.predict(X), expected)


@pytest.mark.parametrize("make", [RFMClassifier, DeepRFMTransformer])
def test_failed_first_fit_leaves_the_estimator_unfitted(data, make):
    X, _ = data
    est = make()
    # validate_data sets n_features_in_ before the labels are found wanting
    with pytest.raises(ValueError, match="at least 2 classes"):
        est.fit(X, np.zeros(len(X)))
    assert not any(k.endswith("_") for k in vars(est))


def test_failed_probe_keeps_the_previous_measurements(data):
    X, y = data
    probe = NFAProbe(RFMClassifier(max_iter=1, random_state=0).fit(X, y)).fit(X, y)
    before = _state(probe)
    with pytest.raises(ValueError):
        probe.fit(X[:, :10], y)  # the RFM was fitted on 64 features
    assert _state(probe) == before
