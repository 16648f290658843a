"""Persistence with skops (no pickle code execution) and with pickle/joblib."""

import pickle

import numpy as np
import pytest
import skops.io as sio

from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    NFAProbe,
    RFMClassifier,
    RFMRegressor,
)
from skdnc.nn import make_mlp


@pytest.fixture(scope="module")
def data(balanced_digits):
    X, y = balanced_digits(20)
    return X / 16.0, y


def _cases(X, y):
    return [
        (RFMClassifier(max_iter=1, random_state=0), "predict_proba"),
        (RFMRegressor(max_iter=1, random_state=0), "predict"),
        (DeepRFMTransformer(L=2, width=16, random_state=0), "transform"),
        (NeuralCollapseScorer(), "transform"),
    ]


@pytest.mark.parametrize("index", range(4))
def test_skops_round_trip_trusts_only_skdnc_classes(data, index):
    X, y = data
    est, method = _cases(X, y)[index]
    target = y.astype(float) if isinstance(est, RFMRegressor) else y
    est.fit(X, target)
    blob = sio.dumps(est)
    untrusted = sio.get_untrusted_types(data=blob)
    assert untrusted == [f"{type(est).__module__}.{type(est).__name__}"]
    with pytest.raises(sio.exceptions.UntrustedTypesFoundException):
        sio.loads(blob)  # nothing is trusted by default
    restored = sio.loads(blob, trusted=untrusted)
    np.testing.assert_array_equal(getattr(restored, method)(X), getattr(est, method)(X))


def test_skops_round_trip_of_nfa_probe_on_an_rfm(data):
    X, y = data
    probe = NFAProbe(RFMClassifier(max_iter=1, random_state=0).fit(X, y)).fit(X, y)
    blob = sio.dumps(probe)
    untrusted = sio.get_untrusted_types(data=blob)
    assert all(name.startswith("skdnc.") for name in untrusted)
    restored = sio.loads(blob, trusted=untrusted)
    np.testing.assert_array_equal(restored.nfa_correlation_, probe.nfa_correlation_)
    np.testing.assert_array_equal(restored.nc1_, probe.nc1_)


def test_nfa_probe_on_a_network_pickles_but_not_through_skops(data):
    """The documented limitation: skops cannot serialise torch modules (torch
    refuses to construct a bare tensor); pickle and joblib work."""
    X, y = data
    probe = NFAProbe(make_mlp(64, 10, width=8, depth=2, random_state=0)).fit(X, y)
    with pytest.raises(RuntimeError, match="TensorBase"):
        sio.dumps(probe)
    again = pickle.loads(pickle.dumps(probe))
    np.testing.assert_array_equal(again.nc1_, probe.nc1_)
