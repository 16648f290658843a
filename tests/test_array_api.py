"""Tensors in, tensors out: scikit-learn's Array API rule for the RFM estimators
and AGOPDirections.

Without ``array_api_dispatch`` a tensor (on any device, with or without grad) is
read like an array and the outputs are NumPy, as for any input. With it, the
outputs are tensors on X's device, equal to the NumPy path's, and a method given
another namespace than ``fit`` raises scikit-learn's ValueError.
"""

import numpy as np
import pytest
import sklearn
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skdnc import AGOPDirections, RFMClassifier, RFMRegressor

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture
def dispatch(monkeypatch):
    """``array_api_dispatch=True`` for one test (scikit-learn asks for
    SCIPY_ARRAY_API=1 in the environment before it lets dispatch on)."""
    monkeypatch.setenv("SCIPY_ARRAY_API", "1")
    with sklearn.config_context(array_api_dispatch=True):
        yield


def _data(n=80, d=6, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)
    return X, y


def _clf():
    return RFMClassifier(bandwidth="auto", max_iter=2, random_state=0, device="cpu")


def test_tensors_without_dispatch_give_numpy():
    X, y = _data()
    ref = _clf().fit(X, y)
    Xt = torch.tensor(X, requires_grad=True)
    est = _clf().fit(Xt, torch.tensor(y))
    pred = est.predict(Xt)
    assert isinstance(pred, np.ndarray)
    np.testing.assert_array_equal(pred, ref.predict(X))
    np.testing.assert_allclose(est.decision_function(Xt), ref.decision_function(X))
    # A model fitted on NumPy reads tensors too (no dispatch, no namespace rule).
    np.testing.assert_array_equal(ref.predict(Xt), pred)


@pytest.mark.parametrize("device", DEVICES)
def test_classifier_tensors_follow_X(dispatch, device):
    X, y = _data()
    ref = _clf().fit(X, y)
    Xt = torch.tensor(X, device=device)
    est = _clf().fit(Xt, torch.tensor(y, device=device))
    for method in ("predict", "decision_function", "predict_proba"):
        out = getattr(est, method)(Xt)
        assert isinstance(out, torch.Tensor) and out.device.type == device, method
        np.testing.assert_allclose(out.cpu().numpy(), getattr(ref, method)(X))
    assert est.predict(Xt).dtype == torch.int64
    assert est.decision_function(Xt.float()).dtype == torch.float32
    assert float(est.score(Xt, torch.tensor(y, device=device))) == ref.score(X, y)
    assert isinstance(est.agop(Xt), torch.Tensor)


def test_regressor_and_directions_follow_X(dispatch):
    X, y = _data()
    t = X[:, 0] - X[:, 2]
    reg = RFMRegressor(max_iter=1, random_state=0).fit(torch.tensor(X), torch.tensor(t))
    ref = RFMRegressor(max_iter=1, random_state=0).fit(X, t)
    out = reg.predict(torch.tensor(X))
    assert isinstance(out, torch.Tensor) and out.shape == (len(X),)
    np.testing.assert_allclose(out.numpy(), ref.predict(X))
    d = AGOPDirections(_clf(), n_components=2).fit(torch.tensor(X), torch.tensor(y))
    Z = d.transform(torch.tensor(X))
    assert isinstance(Z, torch.Tensor)
    ref_d = AGOPDirections(_clf(), n_components=2).fit(X, y)
    np.testing.assert_allclose(Z.numpy(), ref_d.transform(X))
    assert isinstance(d.components_, np.ndarray)  # fitted attributes stay NumPy


def test_namespace_mismatch_raises(dispatch):
    X, y = _data()
    on_numpy = _clf().fit(X, y)
    with pytest.raises(ValueError, match=r"namespace.*fit \(numpy\)"):
        on_numpy.predict(torch.tensor(X))
    on_torch = _clf().fit(torch.tensor(X), torch.tensor(y))
    with pytest.raises(ValueError, match=r"fit \(torch on cpu\) and predict_proba"):
        on_torch.predict_proba(X)
    d = AGOPDirections(_clf()).fit(torch.tensor(X), torch.tensor(y))
    with pytest.raises(ValueError, match="transform"):
        d.transform(X)
    # String labels cannot be a tensor: they come back as NumPy.
    labels = np.array(["a", "b"])[y]
    est = _clf().fit(torch.tensor(X), labels)
    assert isinstance(est.predict(torch.tensor(X)), np.ndarray)


@settings(derandomize=True, max_examples=6, deadline=None)
@given(n=st.integers(20, 50), d=st.integers(1, 6), single=st.booleans())
def test_tensor_round_trip_property(n, d, single):
    """Same predictions from a tensor as from its NumPy copy, in its precision."""
    rng = np.random.default_rng(n * 10 + d)
    X = rng.normal(size=(n, d)).astype(np.float32 if single else np.float64)
    y = X[:, 0] + 0.1 * rng.normal(size=n)
    est = RFMRegressor(max_iter=1, random_state=0).fit(X, y)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SCIPY_ARRAY_API", "1")
        with sklearn.config_context(array_api_dispatch=True):
            tensor_est = RFMRegressor(max_iter=1, random_state=0)
            tensor_est.fit(torch.from_numpy(X), torch.from_numpy(y))
            out = tensor_est.predict(torch.from_numpy(X))
    assert out.dtype == (torch.float32 if single else torch.float64)
    np.testing.assert_array_equal(out.numpy(), est.predict(X))
