"""The collapse metrics are scale-free at every scale float64 (or float32) holds.

Each metric, scorer and accumulator of :mod:`skdnc.metrics` is compared, on data
multiplied by ``s`` from ``1e-300`` to ``1e300`` (float64) and ``1e-30`` to
``1e30`` (float32), with a brute-force float64 formula written here and evaluated
on the data at scale 1: dense ``d x d`` covariances, an ``N x N`` Gram matrix,
loops over class pairs. The data sit in ``[-8, 8]``, so ``s * X`` is finite and
normal for every ``s`` drawn.
"""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import load_digits
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from skdnc.metrics import (
    METRIC_NAMES,
    CollapseAccumulator,
    NeuralCollapseScorer,
    cdnv_score,
    class_statistics,
    gram_label_correlation,
    make_collapse_scorer,
    nc1_score,
    nc2_score,
    nc3_score,
    nc4_score,
    neural_collapse_report,
)

SCALES = settings(max_examples=20, deadline=None, derandomize=True)
K, N, D = 3, 36, 5


# -- brute force, float64, on the data at scale 1 -----------------------------------
def _moments(X, y):
    classes = np.unique(y)
    means = np.array([X[y == c].mean(axis=0) for c in classes])
    return classes, means, means.mean(axis=0)


def ref_nc1(X, y, kind="trace"):
    classes, means, mu_G = _moments(X, y)
    Sw = sum(np.outer(x - means[c], x - means[c]) for x, c in zip(X, y)) / len(X)
    H = means - mu_G
    Sb = H.T @ H / len(classes)
    if kind == "trace":
        return np.trace(Sw) / np.trace(Sb)
    lam, V = np.linalg.eigh(Sb)
    lam, V = lam[::-1][: len(classes) - 1], V[:, ::-1][:, : len(classes) - 1]
    keep = lam > 1e-10 * lam[0]
    Sb_pinv = (V[:, keep] / lam[keep]) @ V[:, keep].T
    return np.trace(Sw @ Sb_pinv) / len(classes)


def ref_nc2(X, y, target="etf", kind="fro"):
    classes, means, mu_G = _moments(X, y)
    k = len(classes)
    H = means - mu_G if target == "etf" else means
    H = H / np.linalg.norm(H, axis=1, keepdims=True)
    T = k / (k - 1) * np.eye(k) - 1 / (k - 1) if target == "etf" else np.eye(k)
    G = H @ H.T - T
    return np.linalg.norm(G) if kind == "fro" else np.mean(G**2)


def ref_cdnv(X, y):
    classes, means, _ = _moments(X, y)
    var = [np.mean(np.sum((X[y == c] - means[c]) ** 2, axis=1)) for c in classes]
    pairs = [(a, b) for a in classes for b in classes if a < b]
    return np.mean(
        [(var[a] + var[b]) / (2 * np.sum((means[a] - means[b]) ** 2)) for a, b in pairs]
    )


def ref_gram(X, y):
    _, _, mu_G = _moments(X, y)
    Z = X - mu_G
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    Y = (y[:, None] == np.unique(y)[None, :]).astype(float)
    return np.corrcoef((Z @ Z.T).ravel(), (Y @ Y.T).ravel())[0, 1]


def ref_nc3(X, y, W, kind="fro"):
    _, means, mu_G = _moments(X, y)
    H = means - mu_G
    if kind == "fro":
        return np.linalg.norm(W / np.linalg.norm(W) - H / np.linalg.norm(H))
    cos = np.sum(H * W, axis=1) / np.linalg.norm(H, axis=1) / np.linalg.norm(W, axis=1)
    return np.mean(1 - cos)


def ref_nearest_mean(X, y):
    classes, means, _ = _moments(X, y)
    D2 = np.array([[np.sum((x - m) ** 2) for m in means] for x in X])
    return classes[np.argmin(D2, axis=1)]


def ref_ridge_readout(X, y, ridge=1e-3):
    """NeuralCollapseScorer's readout: ridge on centred one-hot labels."""
    Y = (y[:, None] == np.unique(y)[None, :]).astype(float)
    Xc, Yc = X - X.mean(axis=0), Y - Y.mean(axis=0)
    lam = ridge * np.trace(Xc.T @ Xc) / min(X.shape)
    W = np.linalg.solve(Xc.T @ Xc + lam * np.eye(X.shape[1]), Xc.T @ Yc).T
    return W, Y.mean(axis=0) - W @ X.mean(axis=0)


# -- data ----------------------------------------------------------------------------
def blobs(seed):
    """Three separated classes in [-8, 8]^5 (entries rounded to 1/64, so exact)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-4, 4, size=(K, D))
    X = centres[np.arange(N) % K] + rng.normal(scale=1.0, size=(N, D))
    return np.round(np.clip(X, -8, 8) * 64) / 64, np.arange(N) % K


def readout(seed):
    return np.random.default_rng(seed + 1).normal(size=(K, D))


scale_exponents = st.floats(-300, 300, allow_nan=False)
ISSUE_SCALES = (155, -170, 200, 300, -300, 307.5)


def _close(actual, expected, rel=1e-9):
    assert actual == pytest.approx(expected, rel=rel, abs=1e-12)


def _all_metrics(Xs, y, W):
    """Every scale-free number skdnc.metrics gives on (Xs, y): name -> value."""
    out = {
        "nc1": nc1_score(Xs, y),
        "nc1_pinv": nc1_score(Xs, y, kind="pinv"),
        "nc1_paper_code": nc1_score(Xs, y, scaling="paper_code"),
        "nc2": nc2_score(Xs, y),
        "nc2_mse": nc2_score(Xs, y, kind="mse"),
        "nc2_orthogonal": nc2_score(Xs, y, target="orthogonal"),
        "nc2_orthogonal_mse": nc2_score(Xs, y, target="orthogonal", kind="mse"),
        "cdnv": cdnv_score(Xs, y),
        "gram_label_correlation": gram_label_correlation(Xs, y),
        "nc3": nc3_score(Xs, y, W),
        "nc3_cosine": nc3_score(Xs, y, W, kind="cosine"),
        "nc4": nc4_score(Xs, y, np.where(np.arange(N) % 7 == 0, (y + 1) % K, y)),
    }
    report = neural_collapse_report(Xs, y)
    out.update({f"report_{k}": v for k, v in report.items() if k in METRIC_NAMES})
    return out


def _references(X, y, W):
    y_pred = np.where(np.arange(N) % 7 == 0, (y + 1) % K, y)
    ref = {
        "nc1": ref_nc1(X, y),
        "nc1_pinv": ref_nc1(X, y, "pinv"),
        "nc1_paper_code": ref_nc1(X, y) / K,
        "nc2": ref_nc2(X, y),
        "nc2_mse": ref_nc2(X, y, kind="mse"),
        "nc2_orthogonal": ref_nc2(X, y, "orthogonal"),
        "nc2_orthogonal_mse": ref_nc2(X, y, "orthogonal", "mse"),
        "cdnv": ref_cdnv(X, y),
        "gram_label_correlation": ref_gram(X, y),
        "nc3": ref_nc3(X, y, W),
        "nc3_cosine": ref_nc3(X, y, W, "cosine"),
        "nc4": np.mean(ref_nearest_mean(X, y) != y_pred),
    }
    for k in list(ref):
        if not k.startswith(("nc3", "nc4")):
            ref[f"report_{k}"] = ref[k]
    return ref


# -- the issue's reproducers -----------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:200] / 16, y[:200]


@pytest.mark.parametrize("scale", [1e155, 1e-170, 1e-300, 1e300])
def test_nc1_of_digits_at_extreme_scales(digits, scale):
    # nc1_score(X * 1e155, y) and (X * 1e-170, y) were NaN with "the class means
    # coincide"; the true value is 0.74.
    X, y = digits
    expected = ref_nc1(X, y)
    assert expected == pytest.approx(0.7412, abs=1e-4)
    _close(nc1_score(X * scale, y), expected)
    _close(nc1_score(X * scale, y, kind="pinv"), ref_nc1(X, y, "pinv"))


def test_nc3_of_digits_at_1e200(digits):
    # nc3_score(X * 1e200, y, W) was 1.0 (overflowed norms) against the true value.
    X, y = digits
    W = LogisticRegression(max_iter=2000).fit(X, y).coef_
    expected = ref_nc3(X, y, W)
    _close(nc3_score(X * 1e200, y, W), expected)
    _close(nc3_score(X, y, W * 1e300), expected)
    _close(
        nc3_score(X * 1e-300, y, W * 1e-300, kind="cosine"), ref_nc3(X, y, W, "cosine")
    )


@pytest.mark.parametrize("scale", [1e308, 1e307, 1e-307])
def test_report_of_digits_near_the_float64_limits(digits, scale):
    # neural_collapse_report near 1e308 raised LinAlgError (an SVD of infinities).
    X, y = digits
    report = neural_collapse_report(X * scale, y)
    _close(report["nc1"], ref_nc1(X, y))
    _close(report["nc1_pinv"], ref_nc1(X, y, "pinv"))
    _close(report["nc2"], ref_nc2(X, y))
    _close(report["cdnv"], ref_cdnv(X, y))
    _close(report["gram_label_correlation"], ref_gram(X, y))
    # The traces are in X's units: beyond float64's range they are inf or 0.
    for name in ("trace_within", "trace_between"):
        assert report[name] == (np.inf if scale > 1 else 0.0)


# -- the properties --------------------------------------------------------------------
@SCALES
@given(seed=st.integers(0, 2**16), exponent=scale_exponents)
@example(seed=0, exponent=0.0)
@example(seed=1, exponent=155.0)
@example(seed=2, exponent=-170.0)
@example(seed=3, exponent=300.0)
@example(seed=4, exponent=-300.0)
def test_every_metric_is_scale_free_in_float64(seed, exponent):
    X, y = blobs(seed)
    W = readout(seed)
    s = 10.0**exponent
    ref = _references(X, y, W)
    got = _all_metrics(X * s, y, W)
    assert set(ref) == set(got)
    for name, value in got.items():
        assert isinstance(value, float), name
        assert value == pytest.approx(ref[name], rel=1e-8, abs=1e-12), name


@SCALES
@given(seed=st.integers(0, 2**16), exponent=st.floats(-30, 30, allow_nan=False))
@example(seed=0, exponent=-30.0)
@example(seed=0, exponent=30.0)
def test_every_metric_is_scale_free_in_float32(seed, exponent):
    X, y = blobs(seed)
    W = readout(seed)
    s = 10.0**exponent
    X32 = (X * s).astype(np.float32)
    ref = _references(X32.astype(np.float64) / s, y, W)
    got = _all_metrics(X32, y, W)
    for name, value in got.items():
        assert value == pytest.approx(ref[name], rel=1e-7, abs=1e-10), name


@SCALES
@given(seed=st.integers(0, 2**16), exponent=scale_exponents)
@example(seed=0, exponent=155.0)
@example(seed=0, exponent=-170.0)
def test_class_statistics_are_in_the_units_of_X(seed, exponent):
    X, y = blobs(seed)
    s = 10.0**exponent
    stats = class_statistics(X * s, y)
    _, means, mu_G = _moments(X, y)
    np.testing.assert_allclose(stats.means / s, means, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(stats.global_mean / s, mu_G, rtol=1e-12, atol=1e-13)
    assert stats.unit <= np.abs(X * s).max() < 2 * stats.unit
    second_moments = {
        "trace_within": np.mean(np.sum((X - means[y]) ** 2, axis=1)),
        "trace_between": np.mean(np.sum((means - mu_G) ** 2, axis=1)),
        "scale": np.mean(np.sum(X**2, axis=1)),
    }
    for name, at_one in second_moments.items():
        value, log10 = getattr(stats, name), np.log10(at_one) + 2 * exponent
        if log10 > 308.3:  # beyond float64's range
            assert value == np.inf, name
        elif log10 < -307.7:
            assert 0 <= value < 2.3e-308, name  # zero or subnormal
        elif -300 < log10 < 308:
            assert value / s / s == pytest.approx(at_one, rel=1e-12), name


class _FixedReadout(ClassifierMixin, BaseEstimator):
    """A linear classifier with fixed weights and no intercept: its coef_ and its
    predictions do not depend on the scale of X."""

    def __init__(self, W):
        self.W = W

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.coef_ = self.W
        return self

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        return self.classes_[np.argmax((X / np.abs(X).max()) @ self.W.T, axis=1)]


@SCALES
@given(seed=st.integers(0, 2**16), exponent=scale_exponents)
@example(seed=0, exponent=155.0)
@example(seed=0, exponent=-300.0)
def test_scorers_are_scale_free(seed, exponent):
    X, y = blobs(seed)
    W = readout(seed)
    s = 10.0**exponent
    pipe = make_pipeline(FunctionTransformer(), _FixedReadout(W)).fit(X, y)
    y_pred = pipe.predict(X)
    expected = {
        "nc1": -ref_nc1(X, y),
        "nc2": -ref_nc2(X, y),
        "nc3": -ref_nc3(X, y, W),
        "nc4": -np.mean(ref_nearest_mean(X, y) != y_pred),
        "cdnv": -ref_cdnv(X, y),
        "gram_label_correlation": ref_gram(X, y),
    }
    for metric, value in expected.items():
        got = make_collapse_scorer(metric)(pipe, X * s, y)
        assert got == pytest.approx(value, rel=1e-8, abs=1e-12), metric
    got = make_collapse_scorer("nc1", kind="pinv")(pipe, X * s, y)
    assert got == pytest.approx(-ref_nc1(X, y, "pinv"), rel=1e-8)


@SCALES
@given(
    seed=st.integers(0, 2**16),
    exponent=scale_exponents,
    float32=st.booleans(),
)
@example(seed=0, exponent=155.0, float32=False)
@example(seed=0, exponent=-300.0, float32=False)
def test_neural_collapse_scorer_is_scale_free(seed, exponent, float32):
    X, y = blobs(seed)
    if float32:
        exponent = exponent / 10  # within float32's range
    s = 10.0**exponent
    Xs = (X * s).astype(np.float32) if float32 else X * s
    Xr = Xs.astype(np.float64) / s
    probe = NeuralCollapseScorer().fit(Xs, y)
    W, b = ref_ridge_readout(Xr, y)
    predicted = np.argmax(Xr @ W.T + b, axis=1)
    expected = {
        "nc1_": ref_nc1(Xr, y),
        "nc1_trace_": ref_nc1(Xr, y),
        "nc1_pinv_": ref_nc1(Xr, y, "pinv"),
        "nc2_": ref_nc2(Xr, y),
        "cdnv_": ref_cdnv(Xr, y),
        "gram_label_correlation_": ref_gram(Xr, y),
        "nc3_": ref_nc3(Xr, y, W),
        "nc4_": np.mean(predicted != ref_nearest_mean(Xr, y)),
    }
    rel = 1e-6 if float32 else 1e-8
    for name, value in expected.items():
        assert getattr(probe, name) == pytest.approx(value, rel=rel, abs=1e-10), name


@SCALES
@given(
    seed=st.integers(0, 2**16),
    exponents=st.lists(scale_exponents, min_size=2, max_size=2),
    float32=st.booleans(),
)
@example(seed=0, exponents=[155.0, 155.0], float32=False)
@example(seed=0, exponents=[-300.0, 0.0], float32=False)
@example(seed=0, exponents=[300.0, -300.0], float32=False)
def test_accumulator_is_scale_free(seed, exponents, float32):
    # Two batches at two scales: the accumulator must agree with the brute force
    # on their concatenation (where the smaller batch may be negligible).
    X, y = blobs(seed)
    if float32:
        exponents = [e / 10 for e in exponents]
    half = N // 2
    scales = [10.0**e for e in exponents]
    batches = [X[:half] * scales[0], X[half:] * scales[1]]
    if float32:
        batches = [torch.tensor(B, dtype=torch.float32) for B in batches]
    # The reference at a common scale that keeps both batches finite.
    top = max(scales)
    parts = [np.asarray(B, dtype=np.float64) / top for B in batches]
    Xr = np.vstack(parts)
    acc = CollapseAccumulator()
    for B, labels in zip(batches, (y[:half], y[half:])):
        acc.partial_fit(B, labels)
    for B, labels in zip(batches, (y[:half], y[half:])):
        acc.partial_fit_within(B, labels)
    with warnings.catch_warnings():
        # A batch 1e600 times smaller than the other is all zeros in the
        # reference, and its classes' means may then coincide.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        ref = {
            "nc1": ref_nc1(Xr, y),
            "nc1_pinv": ref_nc1(Xr, y, "pinv"),
            "nc2": ref_nc2(Xr, y),
        }
        got = {
            "nc1": acc.nc1(),
            "nc1_pinv": acc.nc1(kind="pinv"),
            "nc2": acc.nc2(),
        }
    for name in ref:
        if np.isfinite(ref[name]):
            assert got[name] == pytest.approx(ref[name], rel=1e-7), name
