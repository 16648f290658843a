"""NC3 and NC4 where skdnc measures them: NeuralCollapseScorer, Deep RFM's
collapse history and NetworkProbe, against closed forms and direct loops."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.linear_model import Ridge
from sklearn.neighbors import KNeighborsClassifier
from torch import nn

from skdnc import DeepRFMTransformer, NFAProbe
from skdnc.metrics import NeuralCollapseScorer
from skdnc.nn import probe_network


# -- independent references --------------------------------------------------------
def _nearest_mean_loop(X, y):
    """Index (into the sorted classes) of the nearest class mean, sample by sample."""
    classes = sorted(set(np.asarray(y).tolist()))
    means = [np.mean([x for x, t in zip(X, y) if t == c], axis=0) for c in classes]
    out = []
    for x in X:
        dists = [float(np.sum((x - m) ** 2)) for m in means]
        out.append(int(np.argmin(dists)))
    return np.array(out)


def _nc3_closed_form(W, H):
    return float(np.linalg.norm(W / np.linalg.norm(W) - H / np.linalg.norm(H)))


def _centred_means(X, y):
    classes = np.unique(y)
    means = np.array([X[y == c].mean(axis=0) for c in classes])
    return means - means.mean(axis=0)


def _sklearn_ridge_readout(X, y):
    """The documented ridge readout, by scikit-learn's Ridge (an independent solve)."""
    classes = np.unique(y)
    Y = (y[:, None] == classes[None, :]).astype(float)
    Xc = X - X.mean(axis=0)
    lam = 1e-3 * np.sum(Xc**2) / min(X.shape)
    ridge = Ridge(alpha=lam, fit_intercept=True, solver="svd").fit(X, Y)
    return ridge.coef_, ridge.intercept_


def _etf(K, d, seed=0):
    """K unit vectors forming a simplex ETF, turned by a random rotation of R^d."""
    E = np.eye(K) - 1.0 / K
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return np.hstack([E, np.zeros((K, d - K))]) @ Q


def _rotation_of(d, seed):
    Q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return Q


class _FixedReadout(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose weights are given: argmax of X W'."""

    def __init__(self, W=None):
        self.W = W

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.coef_ = np.asarray(self.W)
        return self

    def predict(self, X):
        return self.classes_[np.argmax(np.asarray(X) @ self.coef_.T, axis=1)]


# -- NeuralCollapseScorer ----------------------------------------------------------
def test_scorer_ridge_readout_is_zero_under_exact_collapse_to_an_etf():
    K, d = 4, 7
    y = np.repeat(np.arange(K), 6)
    X = 3.0 * _etf(K, d)[y] + 0.5  # shifted: the readout's intercept takes it
    probe = NeuralCollapseScorer().fit(X, y)
    assert probe.nc3_ == pytest.approx(0.0, abs=1e-9)
    assert probe.nc4_ == 0.0


def test_scorer_ridge_readout_equals_sklearn_ridge():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 10)
    X = rng.normal(size=(3, 5))[y] + 0.3 * rng.normal(size=(30, 5))
    W, b = _sklearn_ridge_readout(X, y)
    probe = NeuralCollapseScorer().fit(X, y)
    assert probe.nc3_ == pytest.approx(_nc3_closed_form(W, _centred_means(X, y)))
    predicted = np.argmax(X @ W.T + b, axis=1)
    expected = np.mean(predicted != _nearest_mean_loop(X, y))
    assert probe.nc4_ == pytest.approx(expected)
    # The readout is invariant to X -> c X (its ridge is relative).
    assert NeuralCollapseScorer().fit(50 * X, y).nc3_ == pytest.approx(probe.nc3_)


@pytest.mark.parametrize("seed", [1, 2])
def test_scorer_given_readout_rotated_and_nc4_loop(seed):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(3), 8)
    X = rng.normal(size=(3, 4))[y] + 0.8 * rng.normal(size=(24, 4))
    H = _centred_means(X, y)
    W = 2.0 * H @ _rotation_of(4, seed)
    probe = NeuralCollapseScorer(readout=_FixedReadout(W)).fit(X, y)
    assert probe.nc3_ == pytest.approx(_nc3_closed_form(W, H))
    predicted = np.argmax(X @ W.T, axis=1)
    expected = np.mean(predicted != _nearest_mean_loop(X, y))
    assert probe.nc4_ == pytest.approx(expected)
    assert 0 < probe.nc3_ < 2


def test_scorer_readout_none_and_bad_readout():
    X, y = np.random.default_rng(0).normal(size=(12, 3)), np.arange(12) % 3
    probe = NeuralCollapseScorer(readout=None).fit(X, y)
    assert np.isnan(probe.nc3_) and np.isnan(probe.nc4_)
    with pytest.raises(ValueError, match="readout"):
        NeuralCollapseScorer(readout="lasso").fit(X, y)


# -- Deep RFM ----------------------------------------------------------------------
def test_deep_rfm_history_readout_matches_sklearn_ridge_on_each_stage():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = rng.normal(size=(3, 8))[y] + 0.7 * rng.normal(size=(60, 8))
    drfm = DeepRFMTransformer(L=2, width=32, random_state=0, record_readout=True).fit(
        X, y
    )
    history = drfm.collapse_history_
    for rep in drfm.transform_layers(X):
        layer = rep["layer"] - 1
        for stage in ("input", "projection", "output"):
            Z = rep[stage]
            W, b = _sklearn_ridge_readout(Z, y)
            nc3 = _nc3_closed_form(W, _centred_means(Z, y))
            nc4 = np.mean(np.argmax(Z @ W.T + b, axis=1) != _nearest_mean_loop(Z, y))
            assert history[f"nc3_{stage}"][layer] == pytest.approx(nc3, rel=1e-6)
            assert history[f"nc4_{stage}"][layer] == pytest.approx(nc4)


def test_deep_rfm_history_readout_is_zero_on_collapsed_input():
    K = 4
    y = np.repeat(np.arange(K), 5)
    X = _etf(K, 6, seed=3)[y]
    drfm = DeepRFMTransformer(L=1, width=16, random_state=0, record_readout=True).fit(
        X, y
    )
    assert drfm.collapse_history_["nc3_input"][0] == pytest.approx(0.0, abs=1e-6)
    assert drfm.collapse_history_["nc4_input"][0] == 0.0


# -- NetworkProbe ------------------------------------------------------------------
def _two_layer_net(d, h, K, seed):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, K)).double()
    return net


def _hidden(net, X):
    W1 = net[0].weight.detach().numpy()
    b1 = net[0].bias.detach().numpy()
    return np.maximum(X @ W1.T + b1, 0.0)


def _set_readout(net, W, b):
    with torch.no_grad():
        net[2].weight.copy_(torch.as_tensor(W))
        net[2].bias.copy_(torch.as_tensor(b))


def _data(n, d, K, seed):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    X = rng.normal(size=(K, d))[y] + 0.5 * rng.normal(size=(n, d))
    return X, y


def test_network_probe_readout_is_zero_for_the_class_mean_classifier():
    X, y = _data(40, 5, 4, seed=0)
    net = _two_layer_net(5, 9, 4, seed=0)
    Hx = _hidden(net, X)
    means = np.array([Hx[y == c].mean(axis=0) for c in range(4)])
    mu_G = means.mean(axis=0)
    W = means - mu_G
    # argmax_c w_c.h + b_c is the nearest-mean rule for this bias.
    b = -W @ mu_G - 0.5 * np.sum(W**2, axis=1)
    _set_readout(net, 3.0 * W, 3.0 * b)
    probe = probe_network(net, X, y, batch_size=7)
    assert probe.readout_name == "2"
    assert probe.nc3 == pytest.approx(0.0, abs=1e-9)
    assert probe.nc4 == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_network_probe_rotated_readout_and_nc4_loop(seed):
    X, y = _data(36, 5, 3, seed=seed)
    net = _two_layer_net(5, 8, 3, seed=seed)
    Hx = _hidden(net, X)
    H = _centred_means(Hx, y)
    W = H @ _rotation_of(8, seed + 10)
    b = np.random.default_rng(seed).normal(size=3)
    _set_readout(net, W, b)
    probe = probe_network(net, X, y, batch_size=10)
    assert probe.nc3 == pytest.approx(_nc3_closed_form(W, H))
    predicted = np.argmax(Hx @ W.T + b, axis=1)
    expected = np.mean(predicted != _nearest_mean_loop(Hx, y))
    assert probe.nc4 == pytest.approx(expected)
    assert probe.to_dict()["nc3"] == probe.nc3


def test_network_probe_readout_rows_follow_output_indices():
    # Labels 0 and 2 of a 3-output network: rows 0 and 2 are their classifiers.
    X, y = _data(30, 4, 3, seed=4)
    keep = y != 1
    X, y = X[keep], y[keep]
    net = _two_layer_net(4, 6, 3, seed=4)
    Hx = _hidden(net, X)
    H = _centred_means(Hx, y)
    W = np.vstack([H[0], np.ones(6), H[1]])
    _set_readout(net, W, np.zeros(3))
    probe = probe_network(net, X, y)
    assert probe.nc3 == pytest.approx(0.0, abs=1e-9)


def test_network_probe_readout_none_named_and_mismatched():
    X, y = _data(20, 4, 2, seed=0)
    net = _two_layer_net(4, 6, 2, seed=0)
    probe = probe_network(net, X, y, readout=None)
    assert np.isnan(probe.nc3) and np.isnan(probe.nc4) and probe.readout_name is None
    assert probe_network(net, X, y, readout="2").readout_name == "2"
    with pytest.raises(ValueError, match="nn.Linear"):
        probe_network(net, X, y, readout="1")
    with pytest.raises(ValueError, match="no submodule"):
        probe_network(net, X, y, readout="head")
    # A last Linear that is not the model's classifier: NaN and a warning.
    wide = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.Softmax(1))
    y5 = np.array(["a", "b"])[y]
    with pytest.warns(UserWarning, match="NC3 and NC4 are not measured"):
        probe = probe_network(wide.double(), X, y5)
    assert np.isnan(probe.nc3)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 1000),
    K=st.integers(2, 4),
    batch_size=st.integers(3, 50),
)
def test_network_probe_nc4_is_the_nearest_mean_disagreement(seed, K, batch_size):
    X, y = _data(24, 3, K, seed=seed)
    net = _two_layer_net(3, 5, K, seed=seed)
    probe = probe_network(net, X, y, batch_size=batch_size)
    Hx = _hidden(net, X)
    predicted = net(torch.as_tensor(X)).argmax(1).numpy()
    expected = np.mean(predicted != _nearest_mean_loop(Hx, y))
    assert probe.nc4 == pytest.approx(expected)


@settings(max_examples=8, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(1e-3, 1e3),
    shift=st.floats(-10.0, 10.0),
)
def test_scorer_ridge_readout_is_invariant_to_similarity_maps(seed, scale, shift):
    # The relative ridge and the intercept make NC3 and NC4 of the ridge readout
    # invariant to X -> c X Q + b, as NC1 and NC2 are.
    rng = np.random.default_rng(seed)
    y = np.arange(30) % 3
    X = rng.normal(size=(3, 4))[y] + 0.7 * rng.normal(size=(30, 4))
    Q = _rotation_of(4, seed)
    base = NeuralCollapseScorer().fit(X, y)
    moved = NeuralCollapseScorer().fit(scale * X @ Q + shift, y)
    assert np.isfinite(base.nc3_)
    assert moved.nc3_ == pytest.approx(base.nc3_, rel=1e-6, abs=1e-9)
    assert moved.nc4_ == base.nc4_


def test_scorer_readout_without_coef_is_refused():
    X, y = np.random.default_rng(0).normal(size=(12, 3)), np.arange(12) % 3
    with pytest.raises(TypeError, match="NC3 needs a linear readout with coef_"):
        NeuralCollapseScorer(readout=KNeighborsClassifier(n_neighbors=1)).fit(X, y)


def test_deep_rfm_record_readout_false_leaves_nan_and_the_rest_unchanged():
    X, y = _data(45, 6, 3, seed=2)
    full = DeepRFMTransformer(L=2, width=16, random_state=0, record_readout=True).fit(
        X, y
    )
    lean = DeepRFMTransformer(L=2, width=16, random_state=0, record_readout=False)
    lean.fit(X, y)
    assert full.collapse_history_.keys() == lean.collapse_history_.keys()
    for key, values in lean.collapse_history_.items():
        if key.startswith(("nc3_", "nc4_")):
            assert np.all(np.isnan(values))
            assert np.all(np.isfinite(full.collapse_history_[key]))
        else:
            np.testing.assert_array_equal(values, full.collapse_history_[key])


def test_nfa_probe_reports_the_network_readout():
    X, y = _data(30, 4, 3, seed=5)
    net = _two_layer_net(4, 6, 3, seed=5)
    nfa = NFAProbe(net).fit(X, y)
    direct = probe_network(net, X, y)
    assert nfa.nc3_ == pytest.approx(direct.nc3)
    assert nfa.nc4_ == pytest.approx(direct.nc4)
    drfm = DeepRFMTransformer(L=1, width=8, random_state=0).fit(X, y)
    assert np.isnan(NFAProbe(drfm).fit(X, y).nc3_)
