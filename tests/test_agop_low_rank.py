"""The low-rank AGOP algebra (M = F'F kept as its factor when the AGOP's rank is
below d) against the dense path and against float64 formulas written here.

The dense path is forced with ``est._low_rank = False`` (``params["low_rank"]``);
the factor path is what ``"auto"`` takes whenever the AGOP points times the
outputs are fewer than the features.
"""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from skdnc import AGOPDirections, RFMClassifier, RFMRegressor
from skdnc._agop import kernel_agop
from skdnc._kernels import Kernel
from skdnc._linalg import psd_factor_power, psd_top_eigh


def _pair(cls, **params):
    """The same estimator twice: dense M forced, and the default (factor)."""
    dense = cls(**params)
    dense._low_rank = False
    return dense, cls(**params)


def _data(n=120, d=150, seed=0, classes=2):
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.normal(size=(d, classes)))[0]
    y = rng.integers(0, classes, n)
    X = rng.normal(size=(n, d)) + 3.0 * U[:, y].T
    return X, y


def test_factor_power_matches_float64_eigh():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(40, 7)) @ np.diag([5, 3, 1, 0.5, 0.1, 1e-3, 0])[:, :7]
    A = B @ B.T
    w, V = np.linalg.eigh(A)
    w[w < 1e-12 * w.max()] = 0.0  # rounding noise, not directions
    for p in (0.25, 0.5, 1.0, 1.5):
        R = psd_factor_power(torch.tensor(B), p).numpy()
        expected = (V * w**p) @ V.T
        np.testing.assert_allclose(R @ R.T, expected, atol=1e-10 * np.abs(A).max())
        assert R.shape[1] == 6  # the zero column is not a direction


def test_top_eigh_of_factor_equals_dense():
    rng = np.random.default_rng(1)
    F = torch.tensor(rng.normal(size=(5, 30)))
    e1, v1 = psd_top_eigh(factor=F, n_components=4)
    e2, v2 = psd_top_eigh(F.T @ F, n_components=4)
    np.testing.assert_allclose(e1, e2, rtol=1e-10)
    np.testing.assert_allclose(v1, v2, atol=1e-10)  # same sign rule
    # More components than the rank: the null space completes them (eigenvalue 0).
    e3, v3 = psd_top_eigh(factor=F, n_components=7)
    np.testing.assert_allclose(e3[5:], 0.0, atol=1e-10)
    np.testing.assert_allclose(v3.T @ v3, np.eye(7), atol=1e-10)


@pytest.mark.parametrize("centering", [False, True])
def test_agop_factor_against_autograd(centering):
    """H'H from ``factor=True`` equals the AGOP of the predictor computed by autograd
    (self-pairs dropped, as the fit does), and the dense AGOP."""
    rng = np.random.default_rng(2)
    X = torch.tensor(rng.normal(size=(25, 9)))
    alpha = torch.tensor(rng.normal(size=(25, 2)))
    kernel = Kernel("laplace", 3.0)
    idx = torch.arange(0, 25, 3)
    H = kernel_agop(
        X[idx], X, alpha, None, kernel, self_index=idx, centering=centering, factor=True
    )
    assert H.shape == (len(idx) * 2, 9)
    grads = []
    for i in idx.tolist():
        x = X[i].clone().requires_grad_(True)
        keep = torch.arange(25) != i
        dist = (x - X[keep]).norm(dim=1)
        f = torch.exp(-dist / 3.0) @ alpha[keep]
        grads.append(
            [torch.autograd.grad(f[c], x, retain_graph=True)[0] for c in range(2)]
        )
    G = torch.stack([torch.stack(g) for g in grads])  # (m, K, d)
    if centering:
        G = G - G.mean(dim=0)
    expected = torch.einsum("mkd,mke->de", G, G) / len(idx)
    np.testing.assert_allclose(H.T @ H, expected, rtol=1e-10, atol=1e-12)
    dense = kernel_agop(
        X[idx], X, alpha, None, kernel, self_index=idx, centering=centering
    )
    np.testing.assert_allclose(H.T @ H, dense, rtol=1e-10, atol=1e-12)


CASES = {
    "binary": (RFMClassifier, 2, {}),
    "multiclass": (RFMClassifier, 3, {"kernel": "gaussian", "centering": True}),
    "trace-power1": (
        RFMClassifier,
        2,
        {"agop_normalization": "trace", "agop_power": 1.0},
    ),
    "nystrom": (RFMClassifier, 2, {"n_centers": 60}),
    "regressor": (RFMRegressor, None, {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_dense_and_factor_paths_agree(case):
    cls, classes, extra = CASES[case]
    X, y = _data(classes=classes or 2)
    if classes is None:
        y = X[:, :3].sum(axis=1) + X[:, 0] * X[:, 1]
    params = {
        "bandwidth": "auto",
        "max_iter": 3,
        "validation_fraction": 0.0,
        "agop_samples": 40,
        "dtype": "float64",
        "random_state": 0,
        **extra,
    }
    dense, low = _pair(cls, **params)
    dense.fit(X, y)
    low.fit(X, y)
    assert dense.M_factor_ is None
    r = low.M_factor_.shape[0]
    assert r <= 40 * (1 if classes in (None, 2) else classes) < X.shape[1]
    np.testing.assert_allclose(low.M_, dense.M_, atol=1e-6)
    assert np.abs(low.M_ - dense.M_).max() <= 1e-6 * np.abs(dense.M_).max()
    out = "decision_function" if cls is RFMClassifier else "predict"
    np.testing.assert_allclose(
        getattr(low, out)(X[:30]), getattr(dense, out)(X[:30]), atol=1e-6
    )
    np.testing.assert_allclose(low.agop(X[:20]), dense.agop(X[:20]), atol=1e-6)
    np.testing.assert_allclose(
        low.feature_importances_, dense.feature_importances_, atol=1e-6
    )
    assert low.bandwidth_ == pytest.approx(dense.bandwidth_, rel=1e-6)


def test_top_components_agree():
    X, y = _data()
    params = {"bandwidth": "auto", "max_iter": 2, "dtype": "float64", "random_state": 0}
    dense, low = _pair(RFMClassifier, agop_samples=50, **params)
    a = AGOPDirections(dense, n_components=3)
    a.fit(X, y)  # the clone loses _low_rank: fit the dense one by hand
    dense.fit(X, y)
    M = torch.tensor(dense.M_)
    _, V = psd_top_eigh(M, n_components=3)
    b = AGOPDirections(low, n_components=3).fit(X, y)
    assert b.estimator_.M_factor_ is not None
    overlap = np.abs(np.sum(b.components_ * V.numpy().T, axis=1))
    np.testing.assert_allclose(overlap, 1.0, atol=1e-6)


def test_memory_check_and_warm_start():
    X, y = _data(n=80, d=120)
    est = RFMClassifier(bandwidth="auto", max_iter=1, agop_samples=30, random_state=0)
    est.fit(X, y)
    assert est.M_factor_ is not None
    F = est.M_factor_
    np.testing.assert_allclose(est.M_, F.T @ F)
    est.set_params(memory_budget=1e-6)
    with pytest.raises(MemoryError, match="use M_factor_"):
        est.M_  # noqa: B018
    with pytest.raises(AttributeError, match="not fitted"):
        RFMClassifier().M_  # noqa: B018
    est.set_params(memory_budget=None, warm_start=True, max_iter=0)
    est.fit(X, y)  # no update: the fit starts from, and keeps, the factor
    np.testing.assert_array_equal(est.M_factor_, F)
    with pytest.raises(ValueError, match=r"M_ has shape \(120, 120\), X has 119"):
        est.fit(X[:, 1:], y)


@settings(derandomize=True, max_examples=8, deadline=None)
@given(
    n=st.integers(30, 60),
    d=st.integers(40, 90),
    m=st.integers(5, 25),
    power=st.sampled_from([0.5, 1.0]),
)
def test_factor_path_properties(n, d, m, power):
    rng = np.random.default_rng(n + 7 * d)
    X = rng.normal(size=(n, d))
    y = X[:, 0] - X[:, 1] + 0.1 * rng.normal(size=n)
    params = {
        "bandwidth": "auto",
        "reg": 1e-2,
        "max_iter": 2,
        "validation_fraction": 0.0,
        "agop_samples": m,
        "agop_power": power,
        "dtype": "float64",
        "random_state": 0,
    }
    dense, low = _pair(RFMRegressor, **params)
    dense.fit(X, y)
    low.fit(X, y)
    F = low.M_factor_
    assert F.shape[0] <= m and F.shape[1] == d
    assert np.diag(low.M_).max() == pytest.approx(1.0 if power == 1.0 else 1.0, abs=1)
    np.testing.assert_allclose(low.M_, dense.M_, atol=1e-6)
    np.testing.assert_allclose(low.predict(X[:10]), dense.predict(X[:10]), atol=1e-6)


def test_warm_start_from_a_factor_on_either_path():
    """A model holding a factor continues on the dense path (S G S^T with the
    (d, r) root) or on the factor path to the same M."""
    X, y = _data(n=80, d=120)
    params = {
        "bandwidth": "auto",
        "max_iter": 1,
        "validation_fraction": 0.0,
        "agop_samples": 30,
        "dtype": "float64",
        "random_state": 0,
    }
    first = RFMClassifier(**params).fit(X, y)
    dense, low = _pair(RFMClassifier, warm_start=True, **params)
    for est in (dense, low):
        est.__dict__.update(
            {k: v for k, v in first.__dict__.items() if k.endswith("_")}
        )
        est.__dict__["_M"] = None
        est.fit(X, y)
    assert dense.M_factor_ is None and low.M_factor_ is not None
    np.testing.assert_allclose(low.M_, dense.M_, atol=1e-6)


def test_default_agop_points_follow_d_on_the_factor_path(monkeypatch):
    """agop_samples=None takes default_agop_points(d) on every round, as the dense
    path does, not the count for the r columns of X R (which would be all n)."""
    import skdnc._rfm_core as core

    seen = []
    original = core.sample_points

    def spy(n, agop_samples, generator, n_features=1):
        seen.append(n_features)
        return original(n, agop_samples, generator, n_features)

    monkeypatch.setattr(core, "sample_points", spy)
    X, y = _data(n=120, d=2000)
    est = RFMClassifier(
        bandwidth="auto", max_iter=2, validation_fraction=0.0, random_state=0
    ).fit(X, y)
    assert est.M_factor_ is not None and est.M_factor_.shape[0] <= 120
    assert seen == [2000, 2000]
