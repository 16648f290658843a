"""Tests of NFAProbe: networks, RFM and Deep RFM estimators, pipelines, cloning."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, clone
from sklearn.exceptions import NotFittedError, UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from torch import nn

from skdnc._deep_rfm import DeepRFMTransformer
from skdnc._linalg import psd_power
from skdnc._nfa import NFAProbe
from skdnc._rfm import RFMClassifier
from skdnc.datasets import load_dataset
from skdnc.metrics import nc1_score
from skdnc.nn import make_mlp, nfa_correlation, probe_network


@pytest.fixture(scope="module")
def digits():
    X, y = load_dataset(
        "digits", n_samples=200, balanced=True, standardize=True, return_X_y=True
    )
    return X.astype(np.float64), y


def test_probe_in_pipeline(digits):
    X, y = digits
    net = make_mlp(64, 10, width=32, depth=3, random_state=0)
    pipe = make_pipeline(NFAProbe(net), LogisticRegression(max_iter=200))
    pipe.fit(X, y)
    assert pipe.score(X, y) > 0.9  # the probe passed X through to the classifier
    probe = pipe[0]
    assert probe.nfa_correlation_.shape == (3,) and probe.nc1_.shape == (3, 3)
    assert probe.stages_ == ("input", "projection", "output")
    assert list(probe.layer_names_) == [f"head_layers.{i}" for i in range(3)]
    assert np.all(np.abs(probe.nfa_correlation_) <= 1)
    np.testing.assert_array_equal(probe.transform(X), X)
    assert probe.transform(X.astype(np.float32)).dtype == np.float32
    reference = probe_network(net, X, y)
    np.testing.assert_allclose(probe.nc1_, reference.nc1, rtol=1e-6)
    np.testing.assert_allclose(
        probe.nfa_correlation_, reference.nfa_correlation, rtol=1e-6
    )
    assert probe.svd_share_ == pytest.approx(reference.right_share, rel=1e-6)
    # The stage-0 NC1 of the first layer is the data's own.
    assert probe.nc1_[0, 0] == pytest.approx(nc1_score(X, y), rel=1e-5)
    assert net.training  # mode restored


def test_pandas_output_and_feature_names(digits):
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    probe = NFAProbe(make_mlp(64, 10, width=8, depth=2, random_state=0))
    out = probe.set_output(transform="pandas").fit_transform(df, y)
    assert list(out.columns) == list(df.columns)
    np.testing.assert_array_equal(out.to_numpy(), X)


def test_clone_and_params():
    net = make_mlp(4, 2, width=5, depth=2, random_state=0)
    probe = NFAProbe(net, layers=["head_layers.1"], batch_size=7)
    params = probe.get_params()
    assert params["layers"] == ["head_layers.1"] and params["batch_size"] == 7
    twin = clone(probe)
    assert twin.get_params()["batch_size"] == 7 and twin.layers == ["head_layers.1"]
    assert twin.estimator is not net  # deep-copied, as clone does for non-estimators
    assert not hasattr(twin, "nfa_correlation_")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 4)), np.arange(20) % 2
    twin.set_params(batch_size=3).fit(X, y)
    assert twin.nfa_correlation_.shape == (1,)
    assert list(twin.layer_names_) == ["head_layers.1"]
    again = pickle.loads(pickle.dumps(twin))
    np.testing.assert_array_equal(again.nc1_, twin.nc1_)
    np.testing.assert_array_equal(again.transform(X), X)


def test_input_shape_for_conv_nets(digits):
    X, y = digits
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    ).double()
    # Detection takes the MLP layer and says which weights it leaves out.
    with pytest.warns(UserWarning, match=r"not probed: \['0'\]"):
        probe = NFAProbe(conv, input_shape=(1, 8, 8)).fit(X, y)
    assert list(probe.layer_names_) == ["3"] and probe.nc1_.shape == (1, 3)
    assert np.isfinite(probe.nc1_).all()
    with pytest.warns(UserWarning, match="bare weight"):
        both = NFAProbe(conv, input_shape=(1, 8, 8), layers=["0", "3"]).fit(X, y)
    assert list(both.layer_names_) == ["0", "3"]
    with pytest.raises(ValueError, match="input_shape"):
        NFAProbe(conv, input_shape=(3, 8, 8)).fit(X, y)
    # Without input_shape the flat rows cannot enter the conv layer: the error
    # names the fix instead of surfacing torch's conv2d message.
    with pytest.raises(ValueError, match=r"NFAProbe: pass input_shape"):
        NFAProbe(conv).fit(X, y)


def test_errors(digits):
    X, y = digits
    with pytest.raises(TypeError, match="'estimator' parameter of NFAProbe"):
        NFAProbe(LogisticRegression()).fit(X, y)
    with pytest.raises(ValueError, match="2 classes"):
        NFAProbe(make_mlp(64, 10, width=4)).fit(X, np.zeros(len(X)))
    with pytest.raises(NotFittedError):
        NFAProbe(make_mlp(64, 10, width=4)).transform(X)
    with pytest.raises(ValueError, match="batch_size"):
        NFAProbe(make_mlp(64, 10, width=4), batch_size=0).fit(X, y)


# -- RFM and Deep RFM --------------------------------------------------------------
class _StandInRFM(BaseEstimator):
    """M_ = S and AGOP = S^2: the NFA with AGOP^{1/2} holds exactly."""

    def __init__(self, S):
        self.M_ = S

    def fit(self, X, y):
        return self

    def agop(self, X):
        return self.M_ @ self.M_


def test_rfm_stand_in_exact_nfa(digits):
    X, y = digits
    rng = np.random.default_rng(0)
    B = rng.normal(size=(64, 64))
    S = B @ B.T / 64
    probe = NFAProbe(_StandInRFM(S)).fit(X, y)
    assert probe.nfa_correlation_[0] == pytest.approx(1.0, abs=1e-10)
    assert probe.nfa_correlation_agop_[0] < 0.999  # corr(S, S^2) < 1
    right = X @ psd_power(torch.tensor(S), 0.5).numpy()
    assert probe.nc1_[0, 1] == pytest.approx(nc1_score(right, y), rel=1e-10)
    assert np.isnan(probe.nc1_[0, 2]) and np.isnan(probe.svd_share_)


def test_real_rfm(digits):
    X, y = digits
    rfm = RFMClassifier(max_iter=2, device="cpu", random_state=0).fit(X, y)
    probe = NFAProbe(rfm).fit(X, y)
    assert probe.nfa_correlation_.shape == (1,)
    assert -1 <= probe.nfa_correlation_[0] <= 1
    sqrt_agop = psd_power(torch.tensor(rfm.agop(X)), 0.5)
    assert probe.nfa_correlation_[0] == pytest.approx(
        nfa_correlation(rfm.M_, sqrt_agop), abs=1e-12
    )


class _StandInDeepRFM(BaseEstimator):
    """Orthogonal random weights, so (W M^{1/2})'(W M^{1/2}) = M exactly."""

    agop_power = 0.5

    def __init__(self, d, n_layers, seed=0):
        rng = np.random.default_rng(seed)
        self.agop_powers_, self.weights_ = [], []
        for _ in range(n_layers):
            B = rng.normal(size=(d, d))
            Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
            M = B @ B.T / d
            self.agop_powers_.append(psd_power(torch.tensor(M), 0.5).numpy())
            self.weights_.append(Q)

    def fit(self, X, y):
        return self

    def transform_layers(self, X):
        out, H = [], X
        for index, (P, W) in enumerate(zip(self.agop_powers_, self.weights_)):
            MX = H @ P
            Phi = np.maximum(MX @ W.T, 0)
            out.append(
                {"layer": index + 1, "input": H, "projection": MX, "output": Phi}
            )
            H = Phi
        return out


def test_deep_rfm_stand_in(digits):
    X, y = digits
    est = _StandInDeepRFM(64, 2)
    probe = NFAProbe(est).fit(X, y)
    assert list(probe.layer_names_) == ["layer1", "layer2"]
    np.testing.assert_allclose(probe.nfa_correlation_agop_, 1.0, atol=1e-10)
    for index, sqrt_M in enumerate(est.agop_powers_):
        M = sqrt_M @ sqrt_M
        assert probe.nfa_correlation_[index] == pytest.approx(
            nfa_correlation(M, sqrt_M), abs=1e-10
        )
        assert probe.nfa_correlation_uncentered_[index] == pytest.approx(
            nfa_correlation(M, sqrt_M, centered=False), abs=1e-10
        )
    reps = est.transform_layers(X)
    assert probe.nc1_[1, 2] == pytest.approx(nc1_score(reps[1]["output"], y))


def test_real_deep_rfm(digits):
    X, y = digits
    est = DeepRFMTransformer(
        L=2, width=64, n_agop_steps=1, device="cpu", random_state=0
    ).fit(X, y)
    probe = NFAProbe(est).fit(X, y)
    assert probe.nc1_.shape == (2, 3)
    assert np.all(np.abs(probe.nfa_correlation_) <= 1)
    history = est.collapse_history_
    # Deep RFM's fit records the stages before rows are normalised for the next
    # layer; transform_layers must return the same (un-normalised) features.
    np.testing.assert_allclose(probe.nc1_[:, 0], history["nc1_input"], rtol=1e-8)
    np.testing.assert_allclose(probe.nc1_[:, 1], history["nc1_projection"], rtol=1e-8)
    np.testing.assert_allclose(probe.nc1_[:, 2], history["nc1_output"], rtol=1e-8)


def _pearson(A, B):
    a, b = A.ravel() - A.mean(), B.ravel() - B.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _numpy_power(S, power):
    evals, evecs = np.linalg.eigh((S + S.T) / 2)
    return (evecs * np.clip(evals, 0, None) ** power) @ evecs.T


@pytest.mark.parametrize("agop_power", [1.0, 0.25])
def test_deep_rfm_nfa_for_any_agop_power(digits, agop_power):
    """The layer applies P = M^p; the NFA compares (W P)'(W P) with M^{1/2} and M,
    recovered here from P with NumPy's eigh, independently of the probe."""
    X, y = digits
    est = DeepRFMTransformer(
        L=2, width=48, agop_power=agop_power, device="cpu", random_state=0
    ).fit(X, y)
    probe = NFAProbe(est).fit(X, y)
    for index, (P, W) in enumerate(zip(est.agop_powers_, est.weights_)):
        F = (W @ P).T @ (W @ P)
        M = _numpy_power(P, 1 / agop_power)
        expected = _pearson(F, _numpy_power(M, 0.5))
        assert probe.nfa_correlation_[index] == pytest.approx(expected, abs=1e-8)
        assert probe.nfa_correlation_agop_[index] == pytest.approx(
            _pearson(F, M), abs=1e-8
        )
        # Reading P as M^{1/2} (the power the paper uses) gives another number.
        assert abs(probe.nfa_correlation_[index] - _pearson(F, P)) > 1e-3


def test_unfitted_estimator_is_rejected(digits):
    X, y = digits
    with pytest.raises(NotFittedError):
        NFAProbe(RFMClassifier()).fit(X, y)
    with pytest.raises(NotFittedError):
        NFAProbe(DeepRFMTransformer()).fit(X, y)


def test_dataframe_fitted_estimators_are_probed_without_name_warnings(digits):
    """The probe hands the estimator X as given, so a model fitted on a DataFrame
    sees its feature names (pytest turns the warning into an error)."""
    pd = pytest.importorskip("pandas")
    X, y = digits
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(X.shape[1])])
    rfm = RFMClassifier(max_iter=1, random_state=0).fit(df, y)
    deep = DeepRFMTransformer(L=1, width=16, random_state=0).fit(df, y)
    for est in (rfm, deep):
        probe = NFAProbe(est).fit(df, y)
        np.testing.assert_array_equal(probe.nc1_, NFAProbe(est).fit(df, y).nc1_)
    assert NFAProbe(rfm).fit(df, y).nc1_[0, 0] == pytest.approx(nc1_score(X, y))


# -- scale (issue 25, class 3) ---------------------------------------------------------
class _ScaledStandInRFM(BaseEstimator):
    """M_ = a S and AGOP = b S^2: the NFA correlation is 1 whatever a, b > 0."""

    def __init__(self, S, a, b):
        self.S, self.a, self.b = S, a, b
        self.M_ = a * S

    def fit(self, X, y):
        return self

    def agop(self, X):
        return self.b * (self.S @ self.S)


def _pearson(A, B):
    return np.corrcoef(np.ravel(A), np.ravel(B))[0, 1]


@settings(max_examples=15, deadline=None, derandomize=True)
@given(a=st.floats(-300, 300, allow_nan=False), b=st.floats(-300, 300, allow_nan=False))
@example(a=0.0, b=-300.0)
@example(a=300.0, b=300.0)
@example(a=-300.0, b=150.0)
def test_nfa_correlations_do_not_depend_on_the_scale_of_the_matrices(digits, a, b):
    X, y = digits
    S = np.diag(np.linspace(1.0, 3.0, 64)) + np.ones((64, 64)) / 64
    probe = NFAProbe(_ScaledStandInRFM(S, 10.0**a, 10.0**b)).fit(X[:40], y[:40])
    assert probe.nfa_correlation_[0] == pytest.approx(1.0, abs=1e-10)
    assert probe.nfa_correlation_uncentered_[0] == pytest.approx(1.0, abs=1e-10)
    assert probe.nfa_correlation_agop_[0] == pytest.approx(
        _pearson(S, S @ S), rel=1e-10
    )


def test_rfm_nfa_at_a_scale_where_the_agop_is_tiny(digits):
    # At 600 times the training scale the AGOP's entries are ~1e-210: its
    # correlation with M was NaN (its squares underflowed), though it is defined.
    X, y = digits
    rfm = RFMClassifier(max_iter=2, device="cpu", random_state=0).fit(X, y)
    probe = NFAProbe(rfm).fit(X * 600, y)
    A = rfm.agop(X * 600)
    assert 0 < np.abs(A).max() < 1e-200
    A = A / np.abs(A).max()
    evals, evecs = np.linalg.eigh(A)
    sqrt_A = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    assert probe.nfa_correlation_agop_[0] == pytest.approx(_pearson(rfm.M_, A), 1e-9)
    assert probe.nfa_correlation_[0] == pytest.approx(_pearson(rfm.M_, sqrt_A), 1e-9)


def test_rfm_probed_far_from_its_training_data_says_why_it_is_nan(digits):
    # NFAProbe(fitted_rfm).fit(X * 1e6, y).nfa_correlation_ was [nan], silently:
    # every kernel value between X * 1e6 and the training points is 0.
    X, y = digits
    rfm = RFMClassifier(max_iter=2, device="cpu", random_state=0).fit(X, y)
    with pytest.warns(UndefinedMetricWarning, match="AGOP of the fitted") as caught:
        probe = NFAProbe(rfm).fit(X * 1e6, y)
    message = str(caught[0].message)
    assert "another scale" in message and f"{np.abs(X * 1e6).max():.3g}" in message
    assert np.isnan(probe.nfa_correlation_).all()
    # Collapse is measured all the same, and is scale-free.
    assert probe.nc1_[0, 0] == pytest.approx(nc1_score(X, y), rel=1e-12)


def test_a_zero_agop_of_any_rfm_like_object_is_explained(digits):
    # An object with only M_ and agop(X) (no centres, no bandwidth) gets the
    # same explanation, without the figures it cannot give.
    X, y = digits
    S = np.eye(64)
    with pytest.warns(UndefinedMetricWarning, match="on another scale"):
        probe = NFAProbe(_ScaledStandInRFM(S, 1.0, 0.0)).fit(X, y)
    assert np.isnan(probe.nfa_correlation_).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    a=st.integers(min_value=-300, max_value=300),
    b=st.integers(min_value=-300, max_value=300),
    centered=st.booleans(),
)
@example(a=200, b=-200, centered=True)
def test_network_nfa_correlation_is_scale_free(a, b, centered):
    # The network path of the NFA (nfa_correlation, and the factored form that
    # never builds P'P) at any float64 scale equals the Pearson correlation (or
    # cosine) of the entries at scale 1, written here in float64.
    from skdnc.nn._layer_agop import _gram_correlation

    rng = np.random.default_rng(0)
    P, Q = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
    A, B = P.T @ P, Q.T @ Q + _shared_term(P)

    def ref(U, V):
        u, v = U.ravel(), V.ravel()
        if centered:
            u, v = u - u.mean(), v - v.mean()
        return float(u @ v / np.sqrt((u @ u) * (v @ v)))

    sa, sb = 10.0**a, 10.0**b
    assert nfa_correlation(A * sa, B * sb, centered=centered) == pytest.approx(
        ref(A, B), rel=1e-9
    )
    got = _gram_correlation(
        torch.tensor(P * np.sqrt(sa)), torch.tensor(Q * np.sqrt(sb)), centered=centered
    )
    assert got == pytest.approx(ref(P.T @ P, Q.T @ Q), rel=1e-9)


def _shared_term(P):
    """A rank-one term shared with A, so the two matrices correlate."""
    v = P.sum(axis=0)
    return np.outer(v, v) / 10
