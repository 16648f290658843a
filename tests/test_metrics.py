"""Neural-collapse metrics against closed forms and a direct float64 reference.

The reference below is written independently of ``skdnc.metrics``: Python loops over
samples, explicit ``d x d`` covariance matrices, ``numpy.linalg.pinv`` and the
``N x N`` Gram matrix (reference notes, paper-reference-code.md section 3.1).
"""

import tracemalloc
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils._param_validation import InvalidParameterError

from skdnc.metrics import (
    cdnv_score,
    class_statistics,
    gram_label_correlation,
    nc1_score,
    nc2_score,
    neural_collapse_report,
)

# --------------------------------------------------------------------------------
# Independent reference implementation (loops, explicit matrices)


def ref_moments(X, y, global_mean="class_means"):
    X = np.asarray(X, dtype=np.float64)
    y = list(y)
    classes = sorted(set(y))
    N, d = X.shape
    K = len(classes)
    means = []
    for c in classes:
        acc, n_c = np.zeros(d), 0
        for i in range(N):
            if y[i] == c:
                acc += X[i]
                n_c += 1
        means.append(acc / n_c)
    means = np.array(means)
    pos = {c: k for k, c in enumerate(classes)}
    Sw = np.zeros((d, d))
    for i in range(N):
        r = X[i] - means[pos[y[i]]]
        Sw += np.outer(r, r)
    Sw /= N
    if global_mean == "class_means":
        mu_G = sum(means) / K
    else:
        mu_G = sum(X[i] for i in range(N)) / N
    Sb = sum(np.outer(m - mu_G, m - mu_G) for m in means) / K
    return Sw, Sb, means, mu_G


def ref_nc1(X, y, kind="trace", global_mean="class_means"):
    Sw, Sb, means, _ = ref_moments(X, y, global_mean)
    if kind == "trace":
        return np.trace(Sw) / np.trace(Sb)
    K = means.shape[0]
    return np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K


def ref_nc2(X, y, target="etf", kind="fro", global_mean="class_means"):
    _, _, means, mu_G = ref_moments(X, y, global_mean)
    K = means.shape[0]
    H = means - mu_G if target == "etf" else means
    H = np.array([h / np.linalg.norm(h) for h in H])
    if target == "etf":
        T = np.full((K, K), -1.0 / (K - 1))
        np.fill_diagonal(T, 1.0)
    else:
        T = np.eye(K)
    D = H @ H.T - T
    if kind == "fro":
        return np.sqrt(np.sum(D**2))
    return np.sum(D**2) / K**2


def ref_gram_corr(X, y, global_mean="class_means"):
    _, _, _, mu_G = ref_moments(X, y, global_mean)
    Z = np.asarray(X, dtype=np.float64) - mu_G
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    y = np.asarray(y)
    B = (y[:, None] == y[None, :]).astype(float)
    return np.corrcoef((Z @ Z.T).ravel(), B.ravel())[0, 1]


def ref_cdnv(X, y):
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    classes = sorted(set(y.tolist()))
    mu = {c: X[y == c].mean(axis=0) for c in classes}
    var = {c: np.mean(np.sum((X[y == c] - mu[c]) ** 2, axis=1)) for c in classes}
    vals = []
    for a in range(len(classes)):
        for b in range(a + 1, len(classes)):
            ca, cb = classes[a], classes[b]
            vals.append((var[ca] + var[cb]) / (2 * np.sum((mu[ca] - mu[cb]) ** 2)))
    return np.mean(vals)


# --------------------------------------------------------------------------------
# Data


def random_orthonormal(d, k, rng):
    Q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return Q


def etf_vertices(K, d, rng):
    """K unit vectors in R^d with pairwise inner products -1/(K-1)."""
    E = np.sqrt(K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)
    return E @ random_orthonormal(d, K, rng).T


def isotropic_etf_data(K, d, r, sigma, rng):
    """Section 3.1 construction: samples mu_c +- sigma sqrt(d) e_j, j = 1..d."""
    b = rng.standard_normal(d) * 5
    means = b + r * etf_vertices(K, d, rng)
    steps = sigma * np.sqrt(d) * np.vstack([np.eye(d), -np.eye(d)])
    X = np.vstack([m + steps for m in means])
    y = np.repeat(np.arange(K), 2 * d)
    return X, y, means, b


def random_data(counts, d, rng, spread=1.0, noise=1.0):
    K = len(counts)
    means = 3.0 + spread * rng.standard_normal((K, d))
    X = np.vstack(
        [m + noise * rng.standard_normal((n, d)) for m, n in zip(means, counts)]
    )
    y = np.repeat(np.arange(K), counts)
    perm = rng.permutation(len(y))
    return X[perm], y[perm]


def all_nc1(X, y, global_mean="class_means"):
    return {
        (kind, scaling): nc1_score(
            X, y, kind=kind, scaling=scaling, global_mean=global_mean
        )
        for kind in ("trace", "pinv")
        for scaling in ("standard", "paper_code")
    }


def all_nc2(X, y, global_mean="class_means", targets=("etf", "orthogonal")):
    return {
        (target, kind): nc2_score(
            X, y, target=target, kind=kind, global_mean=global_mean
        )
        for target in targets
        for kind in ("fro", "mse")
    }


# --------------------------------------------------------------------------------
# M1: exact collapse


@pytest.mark.parametrize("global_mean", ["class_means", "sample"])
@pytest.mark.parametrize("counts", [[5, 5, 5, 5], [2, 9, 4, 30]])
def test_exact_collapse_gives_zero(counts, global_mean):
    rng = np.random.default_rng(0)
    K, d = len(counts), 10
    means = rng.standard_normal(d) + 2.0 * etf_vertices(K, d, rng)
    X = np.repeat(means, counts, axis=0) + 1e-12 * rng.standard_normal((sum(counts), d))
    y = np.repeat(np.arange(K), counts)
    for value in all_nc1(X, y, global_mean).values():
        assert 0 <= value < 1e-10
    assert cdnv_score(X, y) < 1e-10
    nc2 = all_nc2(X, y, global_mean, targets=("etf",))
    if global_mean == "class_means" or len(set(counts)) == 1:
        for value in nc2.values():
            assert value < 1e-10
        assert gram_label_correlation(X, y, global_mean=global_mean) == pytest.approx(
            1.0, abs=1e-10
        )
    else:
        # Documented: with imbalanced classes the sample mean is not the centre of
        # the ETF, so the centred means are not an ETF.
        assert nc2[("etf", "fro")] > 0.1
        assert nc2[("etf", "fro")] == pytest.approx(
            ref_nc2(X, y, global_mean=global_mean), rel=1e-8
        )


# --------------------------------------------------------------------------------
# M2, M3: closed forms for isotropic within-class noise around ETF means


@pytest.mark.parametrize("K", [2, 5, 10])
def test_isotropic_noise_closed_forms(K):
    rng = np.random.default_rng(K)
    d, r, sigma = 20, 3.0, 0.7
    X, y, _, _ = isotropic_etf_data(K, d, r, sigma, rng)

    trace = sigma**2 * d / r**2
    pinv = sigma**2 * (K - 1) ** 2 / (K * r**2)
    assert nc1_score(X, y) == pytest.approx(trace, rel=1e-12)
    assert nc1_score(X, y, kind="pinv") == pytest.approx(pinv, rel=1e-12)
    assert nc1_score(X, y, scaling="paper_code") == pytest.approx(trace / K, rel=1e-12)
    assert nc1_score(X, y, kind="pinv", scaling="paper_code") == pytest.approx(
        pinv / K, rel=1e-12
    )
    assert cdnv_score(X, y) == pytest.approx(
        sigma**2 * d * (K - 1) / (2 * K * r**2), rel=1e-12
    )
    for value in all_nc2(X, y, targets=("etf",)).values():
        assert value < 1e-12
    if K == 5:
        # the numbers quoted in the reference notes (section 3.1)
        assert nc1_score(X, y) == pytest.approx(1.0889, abs=1e-4)
        assert nc1_score(X, y, kind="pinv") == pytest.approx(0.17422, abs=1e-5)


def test_isotropic_noise_covariance_matrices():
    rng = np.random.default_rng(1)
    K, d, r, sigma = 4, 12, 2.0, 0.3
    X, y, means, b = isotropic_etf_data(K, d, r, sigma, rng)
    stats = class_statistics(X, y)
    np.testing.assert_allclose(stats.means, means, atol=1e-12)
    np.testing.assert_allclose(stats.global_mean, b, atol=1e-12)
    np.testing.assert_allclose(stats.Sigma_W, sigma**2 * np.eye(d), atol=1e-13)
    # Sigma_B = r^2/(K-1) times the projector onto the span of the centred means
    H = means - b
    P = H.T @ np.linalg.pinv(H @ H.T) @ H
    np.testing.assert_allclose(stats.Sigma_B, r**2 / (K - 1) * P, atol=1e-12)
    assert stats.trace_within == pytest.approx(sigma**2 * d, rel=1e-12)
    assert stats.trace_between == pytest.approx(r**2, rel=1e-12)
    np.testing.assert_array_equal(stats.counts, [2 * d] * K)
    assert (stats.n_samples, stats.n_classes, stats.n_features) == (2 * d * K, K, d)


def test_paper_code_scaling_matches_the_reference_code_normalisation():
    # M3: the reference code divides Sigma_W by K * N (N = all samples) and
    # Sigma_B by K; written out here as the code does it.
    rng = np.random.default_rng(2)
    X, y = random_data([30, 30, 30], 5, rng)
    K, N = 3, 90
    Sw_code = sum(
        (X[y == c] - X[y == c].mean(0)).T @ (X[y == c] - X[y == c].mean(0))
        for c in range(K)
    ) / (K * N)
    mu = np.array([X[y == c].mean(0) for c in range(K)])
    Sb_code = (mu - mu.mean(0)).T @ (mu - mu.mean(0)) / K
    expected = np.trace(Sw_code) / np.trace(Sb_code)
    assert nc1_score(X, y, scaling="paper_code") == pytest.approx(expected, rel=1e-12)


# --------------------------------------------------------------------------------
# Against the direct reference on random and class-imbalanced data


@pytest.mark.parametrize(
    "counts, d",
    [([3, 10, 40, 7], 5), ([12, 5, 9], 30), ([20, 20, 20, 20, 20], 8)],
    ids=["imbalanced", "wide-d>N", "balanced"],
)
@pytest.mark.parametrize("global_mean", ["class_means", "sample"])
def test_metrics_match_direct_reference(counts, d, global_mean):
    rng = np.random.default_rng(len(counts) * d)
    X, y = random_data(counts, d, rng)
    for (kind, scaling), value in all_nc1(X, y, global_mean).items():
        expected = ref_nc1(X, y, kind, global_mean)
        if scaling == "paper_code":
            expected /= len(counts)
        assert value == pytest.approx(expected, rel=1e-10), (kind, scaling)
    for (target, kind), value in all_nc2(X, y, global_mean).items():
        assert value == pytest.approx(
            ref_nc2(X, y, target, kind, global_mean), rel=1e-10
        ), (target, kind)
    assert gram_label_correlation(X, y, global_mean=global_mean) == pytest.approx(
        ref_gram_corr(X, y, global_mean), rel=1e-10
    )
    assert cdnv_score(X, y) == pytest.approx(ref_cdnv(X, y), rel=1e-10)

    Sw, Sb, means, mu_G = ref_moments(X, y, global_mean)
    stats = class_statistics(X, y, global_mean=global_mean)
    np.testing.assert_allclose(stats.Sigma_W, Sw, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(stats.Sigma_B, Sb, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(stats.means, means, rtol=1e-12)
    np.testing.assert_allclose(stats.global_mean, mu_G, rtol=1e-12)
    assert stats.global_mean_kind == global_mean


def test_global_mean_conventions_on_imbalanced_data():
    rng = np.random.default_rng(3)
    X, y = random_data([4, 60, 15], 6, rng, spread=2.0)
    stats_c = class_statistics(X, y, global_mean="class_means")
    stats_s = class_statistics(X, y, global_mean="sample")
    np.testing.assert_allclose(stats_c.global_mean, stats_c.means.mean(axis=0))
    np.testing.assert_allclose(stats_s.global_mean, X.mean(axis=0))
    # Sigma_W does not depend on the convention, Sigma_B does
    np.testing.assert_allclose(stats_c.Sigma_W, stats_s.Sigma_W)
    for kind in ("trace", "pinv"):
        a = nc1_score(X, y, kind=kind, global_mean="class_means")
        b = nc1_score(X, y, kind=kind, global_mean="sample")
        assert abs(a - b) > 0.01 * a
    a = nc2_score(X, y, global_mean="class_means")
    b = nc2_score(X, y, global_mean="sample")
    assert abs(a - b) > 0.01 * a


def test_global_mean_conventions_agree_on_balanced_data():
    rng = np.random.default_rng(4)
    X, y = random_data([25, 25, 25], 6, rng)
    a, b = (
        neural_collapse_report(X, y, global_mean=g) for g in ("class_means", "sample")
    )
    for key, value in a.items():
        if key != "global_mean":
            assert b[key] == pytest.approx(value, rel=1e-10), key


# --------------------------------------------------------------------------------
# M4: invariance to X -> c X Q + b


def test_invariance_to_scaling_rotation_translation():
    rng = np.random.default_rng(5)
    d = 7
    X, y = random_data([8, 20, 13, 30], d, rng)
    Q = random_orthonormal(d, d, rng)
    c, b = 2.7, 10 * rng.standard_normal(d)
    Xt = c * X @ Q + b
    for global_mean in ("class_means", "sample"):
        for key, value in all_nc1(X, y, global_mean).items():
            assert all_nc1(Xt, y, global_mean)[key] == pytest.approx(value, rel=1e-10)
        nc2, nc2t = (all_nc2(A, y, global_mean, targets=("etf",)) for A in (X, Xt))
        for key, value in nc2.items():
            assert nc2t[key] == pytest.approx(value, rel=1e-10)
        assert gram_label_correlation(Xt, y, global_mean=global_mean) == (
            pytest.approx(gram_label_correlation(X, y, global_mean=global_mean))
        )
    assert cdnv_score(Xt, y) == pytest.approx(cdnv_score(X, y), rel=1e-10)
    # the orthogonal frame is about uncentred means: invariant to c X Q only
    Xr = c * X @ Q
    for kind in ("fro", "mse"):
        assert nc2_score(Xr, y, target="orthogonal", kind=kind) == pytest.approx(
            nc2_score(X, y, target="orthogonal", kind=kind), rel=1e-10
        )


# --------------------------------------------------------------------------------
# M5: pinv form on near-collapsed float32 input


@pytest.mark.parametrize("noise", [1e-2, 1e-3, 1e-4, 1e-5])
def test_pinv_nc1_nonnegative_and_accurate_on_float32(noise):
    rng = np.random.default_rng(6)
    K, d, n = 10, 20, 30
    means = 5.0 + rng.standard_normal((K, d))
    X64 = np.repeat(means, n, axis=0) + noise * rng.standard_normal((K * n, d))
    y = np.repeat(np.arange(K), n)
    X32 = X64.astype(np.float32)
    exact = nc1_score(X64, y, kind="pinv")
    assert exact == pytest.approx(ref_nc1(X64, y, kind="pinv"), rel=1e-8)
    value = nc1_score(X32, y, kind="pinv")
    assert value >= 0
    assert abs(value - exact) <= 1e-3 * exact
    # a float32 torch tensor gives exactly the float32 NumPy value
    assert nc1_score(torch.from_numpy(X32), torch.from_numpy(y), kind="pinv") == value


def test_pinv_drops_directions_without_between_class_spread():
    # Collinear class means (K = 3, rank Sigma_B = 1 < K - 1), rotated so that the
    # second eigenvalue of Sigma_B is rounding noise (~1e-32 lambda_max) that must
    # not be inverted. Samples mu_c +- a e1, mu_c +- b e2 give
    # Sigma_W = diag(a^2, b^2) / 2 and Sigma_B = (2/3) e1 e1', so
    # tr(Sigma_W Sigma_B^+) / K = (a^2 / 2) / (2 / 3) / 3 = a^2 / 4.
    rng = np.random.default_rng(14)
    a, b, d = 0.3, 5.0, 6
    E = np.eye(d)
    steps = np.array([a * E[0], -a * E[0], b * E[1], -b * E[1]])
    X = np.vstack([c * E[0] + steps for c in (0.0, 1.0, 2.0)])
    y = np.repeat([0, 1, 2], 4)
    X = X @ random_orthonormal(d, d, rng) + rng.standard_normal(d)
    assert nc1_score(X, y, kind="pinv") == pytest.approx(a**2 / 4, rel=1e-10)
    assert nc1_score(X, y) == pytest.approx(3 * (a**2 + b**2) / 4, rel=1e-10)


# --------------------------------------------------------------------------------
# NC2 targets, Gram correlation


@pytest.mark.parametrize("counts", [[6, 6, 6, 6], [3, 8, 1, 20]])
def test_orthogonal_means_give_zero_for_both_targets(counts):
    rng = np.random.default_rng(7)
    K, d, r = len(counts), 9, 4.0
    means = r * random_orthonormal(d, K, rng).T  # one-hot-like, rotated
    X = np.repeat(means, counts, axis=0)
    y = np.repeat(np.arange(K), counts)
    for kind in ("fro", "mse"):
        assert nc2_score(X, y, target="orthogonal", kind=kind) < 1e-12
        # centred, equal-norm orthogonal means form a simplex ETF
        assert nc2_score(X, y, target="etf", kind=kind) < 1e-12


@pytest.mark.parametrize("K", [3, 6])
def test_etf_means_against_orthogonal_target_closed_form(K):
    rng = np.random.default_rng(8)
    means = 2.0 * etf_vertices(K, 10, rng)  # uncentred means at the ETF
    X = np.repeat(means, 3, axis=0)
    y = np.repeat(np.arange(K), 3)
    fro = nc2_score(X, y, target="orthogonal", kind="fro")
    mse = nc2_score(X, y, target="orthogonal", kind="mse")
    assert fro == pytest.approx(np.sqrt(K / (K - 1)), rel=1e-12)
    assert mse == pytest.approx(1 / (K * (K - 1)), rel=1e-12)
    assert nc2_score(X, y) < 1e-12


def test_gram_label_correlation_one_on_collapsed_etf_and_not_otherwise():
    rng = np.random.default_rng(9)
    K, d = 5, 40
    means = rng.standard_normal(d) + 3.0 * etf_vertices(K, d, rng)
    counts = [7, 2, 11, 5, 9]
    X = np.repeat(means, counts, axis=0)
    y = np.repeat(np.arange(K), counts)
    assert gram_label_correlation(X, y) == pytest.approx(1.0, abs=1e-12)
    X_noisy = X + 0.5 * rng.standard_normal(X.shape)
    value = gram_label_correlation(X_noisy, y)
    assert 0 < value < 0.99
    assert value == pytest.approx(ref_gram_corr(X_noisy, y), rel=1e-10)


# --------------------------------------------------------------------------------
# Input handling


def test_label_types_do_not_matter():
    rng = np.random.default_rng(10)
    X, y = random_data([9, 14, 6], 4, rng)
    base = neural_collapse_report(X, y)
    names = np.array(["cat", "dog", "eel"])
    for labels in (names[y], np.array([3, 10, 42])[y], y.astype(float), list(names[y])):
        assert neural_collapse_report(X, labels) == base
    # relabelling classes (a permutation) changes nothing either
    assert neural_collapse_report(X, (2 - y)) == pytest.approx(base)
    stats = class_statistics(X, names[y])
    np.testing.assert_array_equal(stats.classes, names)
    np.testing.assert_array_equal(stats.counts, [9, 14, 6])


def test_array_types_and_dtypes():
    rng = np.random.default_rng(11)
    X, y = random_data([9, 14, 6], 4, rng)
    X32 = X.astype(np.float32)
    expected = nc1_score(X32.astype(np.float64), y)
    assert nc1_score(X32, y) == expected
    assert nc1_score(torch.from_numpy(X32), torch.from_numpy(y)) == expected
    assert nc1_score(pd.DataFrame(X32), pd.Series(y)) == expected
    assert nc1_score(X32.tolist(), y.tolist()) == expected
    half = torch.from_numpy(X).to(torch.bfloat16)
    assert nc1_score(half, y) == nc1_score(half.double().numpy(), y)
    assert nc1_score(X.astype(int), y) == nc1_score(X.astype(int).astype(float), y)


def test_errors():
    X = np.arange(12.0).reshape(6, 2)
    with pytest.raises(ValueError, match="at least 2 classes; got 1 class"):
        nc1_score(X, [1] * 6)
    X_nan = X.copy()
    X_nan[2, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        nc1_score(X_nan, [0, 0, 0, 1, 1, 1])
    X_inf = X.copy()
    X_inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="Input X contains infinity"):
        nc2_score(X_inf, [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        gram_label_correlation(X, [0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="Expected 2D array"):
        cdnv_score(np.arange(6.0), [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="Unknown label type"):
        nc1_score(X, [0.5, 1.5, 0.25, 1.0, 2.0, 3.5])
    with pytest.raises(InvalidParameterError, match="'kind' parameter"):
        nc1_score(X, [0, 0, 0, 1, 1, 1], kind="frobenius")
    with pytest.raises(InvalidParameterError, match="'global_mean' parameter"):
        nc2_score(X, [0, 0, 0, 1, 1, 1], global_mean="weighted")


def test_degenerate_between_class_spread():
    # identical class means: every metric is undefined, NaN with a warning
    X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    y = [0, 0, 1, 1]
    for metric in (
        nc1_score,
        lambda X, y: nc1_score(X, y, kind="pinv"),
        nc2_score,
        cdnv_score,
    ):
        with pytest.warns(UndefinedMetricWarning, match="class means coincide|mean"):
            assert np.isnan(metric(X, y))


@pytest.mark.parametrize(
    "X, y",
    [
        # 200 identical rows in two classes: the old NC1 was 5.095, the ratio of
        # two rounding errors.
        (np.tile([[0.3, 1.7, -2.2]], (200, 1)), np.arange(200) % 2),
        (np.zeros((6, 4)), [0, 0, 1, 1, 2, 2]),  # all-zero rows (NC2 was 3.333)
        (np.array([[0.0], [0.0]]), [0, 1]),  # a hypothesis counterexample
        (np.full((4, 2), 1e150), [0, 1, 0, 1]),  # identical rows at a large scale
    ],
)
def test_undefined_collapse_is_nan_with_a_warning(X, y):
    for metric in (nc1_score, nc2_score, cdnv_score):
        with pytest.warns(UndefinedMetricWarning, match="undefined"):
            assert np.isnan(metric(X, y))
    with pytest.warns(UndefinedMetricWarning):
        assert np.isnan(nc1_score(X, y, kind="pinv"))


def test_small_but_real_between_scatter_is_measured():
    """The rounding threshold is relative to the data's scale: a tiny but real
    class separation, far above float64 rounding, still gives a number."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 3)) * 1e-3 + 1e3
    y = np.arange(40) % 2
    X[y == 1, 0] += 1e-6  # 1e-9 relative to the norm, far above (64 eps)^2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = nc1_score(X, y)
    assert np.isfinite(value) and value > 0
    assert value == pytest.approx(ref_nc1(X, y), rel=1e-6)


def test_report_contents():
    rng = np.random.default_rng(12)
    X, y = random_data([10, 12, 8], 5, rng)
    report = neural_collapse_report(X, y)
    assert report["nc1"] == pytest.approx(ref_nc1(X, y), rel=1e-10)
    assert report["nc1_pinv"] == pytest.approx(ref_nc1(X, y, "pinv"), rel=1e-10)
    assert report["nc1_paper_code"] == pytest.approx(ref_nc1(X, y) / 3, rel=1e-10)
    assert report["nc2"] == pytest.approx(ref_nc2(X, y), rel=1e-10)
    assert report["nc2_mse"] == pytest.approx(ref_nc2(X, y, kind="mse"), rel=1e-10)
    assert report["nc2_orthogonal"] == pytest.approx(
        ref_nc2(X, y, target="orthogonal"), rel=1e-10
    )
    assert report["gram_label_correlation"] == pytest.approx(
        ref_gram_corr(X, y), rel=1e-10
    )
    assert (report["n_samples"], report["n_features"], report["n_classes"]) == (
        30,
        5,
        3,
    )
    assert all(type(v) in (int, float, str) for v in report.values())
    assert "gram_label_correlation" not in neural_collapse_report(
        X, y, gram_correlation=False
    )


def test_wide_features_never_form_a_d_by_d_matrix():
    rng = np.random.default_rng(13)
    N, d = 200, 4000
    X, y = random_data([50, 80, 70], d, rng)
    assert X.shape == (N, d)
    dxd = d * d * 8
    tracemalloc.start()
    try:
        nc1_score(X, y)
        nc1_score(X, y, kind="pinv")
        nc2_score(X, y)
        neural_collapse_report(X, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < dxd / 4, f"peak {peak / 2**20:.1f} MiB"
