"""The paper's theory: Proposition A.1, l1-Laplace random features, the linear-kernel
collapse, Theorem 4.3's linearised Deep RFM and Theorem 4.4's optimal kernel."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skdnc._backend import make_generator
from skdnc._deep_rfm import apply_feature_map, draw_feature_map
from skdnc._theory import (
    krr_objective,
    label_kernel_optimality,
    linear_agop_layer,
    linearized_deep_rfm,
    relu_kernel_closed_form,
    relu_kernel_monte_carlo,
)
from skdnc.metrics import nc1_score, nc2_score


# -- Proposition A.1 ------------------------------------------------------------------
def _paper_formula(r):
    """Equation (5) of the paper, typed in as printed."""
    s = np.sqrt(1 - r**2)
    return s**3 / np.pi + r**2 * s / np.pi + r / 2 + r / np.pi * np.arctan(r / s)


def test_closed_form_matches_the_paper_and_special_values():
    r = np.linspace(-0.99, 0.99, 41)
    np.testing.assert_allclose(
        relu_kernel_closed_form(r), _paper_formula(r), rtol=1e-12, atol=1e-15
    )
    assert relu_kernel_closed_form(1.0) == pytest.approx(1.0, abs=1e-15)
    assert relu_kernel_closed_form(0.0) == pytest.approx(1 / np.pi)
    assert relu_kernel_closed_form(-1.0) == pytest.approx(0.0, abs=1e-15)
    # Appendix A: the map moves unit vectors apart, never closer (k(r) >= r).
    assert np.all(relu_kernel_closed_form(r) >= r)
    with pytest.raises(ValueError, match="cosine"):
        relu_kernel_closed_form(1.5)


@pytest.mark.parametrize("r", [0.6, -0.3])
def test_closed_form_against_monte_carlo(r):
    d = 20
    x = np.zeros(d)
    x[0] = 1.0
    y = np.zeros(d)
    y[:2] = r, np.sqrt(1 - r**2)
    mean, sem = relu_kernel_monte_carlo(x, y, width=1024, n_draws=200, random_state=0)
    assert abs(mean - relu_kernel_closed_form(r)) < 5 * sem
    assert sem < 0.01
    # E ||Phi(x)||^2 = ||x||^2 with N(0, 2/D) weights.
    sq, _ = relu_kernel_monte_carlo(x, x, width=1024, n_draws=200, random_state=1)
    assert abs(sq - 1) < 0.03


# -- l1-Laplace random Fourier features (the "cos" map) --------------------------------
def test_cos_feature_map_approximates_the_l1_laplace_kernel():
    gamma, D, draws = 0.5, 4096, 20
    rng = np.random.default_rng(0)
    d = 8
    base = rng.normal(size=d)
    # Pairs at equal l2 distance 1 whose l1 distances differ (1 and sqrt(d)), and
    # random pairs.
    deltas = [np.eye(d)[0], np.ones(d) / np.sqrt(d)]
    deltas += list(rng.normal(size=(6, d)) * 0.4)
    X = torch.tensor(np.stack([base] * len(deltas)))
    Z = torch.tensor(np.stack([base + delta for delta in deltas]))
    l1 = np.array([np.abs(delta).sum() for delta in deltas])
    l2 = np.array([np.linalg.norm(delta) for delta in deltas])
    generator = make_generator(0)
    estimates = []
    for _ in range(draws):
        W, b = draw_feature_map("cos", d, D, gamma=gamma, generator=generator)
        estimates.append(
            (apply_feature_map(X, W, b, "cos") * apply_feature_map(Z, W, b, "cos"))
            .sum(dim=1)
            .numpy()
        )
    estimates = np.array(estimates)  # (draws, pairs)
    target = np.exp(-gamma * l1)
    rms = np.sqrt(np.mean((estimates - target) ** 2))
    assert rms < 2 / np.sqrt(D)  # observed 1.03 / sqrt(D)
    mean_error = np.abs(estimates.mean(axis=0) - target)
    assert np.all(mean_error < 4 * rms / np.sqrt(draws))
    # The first two pairs are at the same l2 distance; an l2 kernel (Gaussian or
    # l2-Laplace) would give them the same value. They get exp(-gamma ||.||_1).
    assert l2[0] == pytest.approx(l2[1])
    assert estimates[:, 0].mean() - estimates[:, 1].mean() > 0.2
    for l2_kernel in (np.exp(-gamma * l2), np.exp(-gamma * l2**2 / 2)):
        assert np.max(np.abs(estimates.mean(axis=0) - l2_kernel)) > 10 * rms


def test_relu_feature_map_draws():
    W, b = draw_feature_map("relu", 50, 400, generator=make_generator(0))
    assert b is None and W.shape == (400, 50)
    assert abs(float(W.var()) * 400 / 2 - 1) < 0.02
    with pytest.raises(ValueError, match="feature_map"):
        draw_feature_map("tanh", 5, 5)


# -- linear kernel: one AGOP layer collapses exactly ---------------------------------
def _mixture(n_per_class=20, d=300, K=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(K), n_per_class)
    X = rng.normal(size=(K * n_per_class, d)) + 0.5 * rng.normal(size=(K, d))[y]
    return X, y


def test_linear_kernel_ridgeless_collapses_in_one_layer_when_n_le_d():
    X, y = _mixture()
    assert nc1_score(X, y) > 1
    Xn, M = linear_agop_layer(X, y, reg=0.0)
    assert nc1_score(Xn, y) < 1e-10
    assert nc2_score(Xn, y) < 1e-10
    assert nc2_score(Xn, y, kind="mse") < 1e-10
    # The Gram matrix is that of the one-hot labels (the training predictions).
    Y = np.eye(5)[y]
    np.testing.assert_allclose(Xn @ Xn.T, Y @ Y.T, atol=1e-8)
    assert np.linalg.matrix_rank(M, tol=1e-8 * np.abs(M).max()) == 5


def test_linear_kernel_ridge_delays_collapse():
    X, y = _mixture()
    nc1 = [
        nc1_score(linear_agop_layer(X, y, reg=reg)[0], y) for reg in (1e-3, 1e-1, 10.0)
    ]
    assert nc1[0] < nc1[1] < nc1[2] < 1e-2  # observed 2e-12, 2e-8, 2e-4


def test_linear_kernel_does_not_collapse_when_n_gt_d():
    X, y = load_digits(return_X_y=True)
    X = X[:500] - X[:500].mean(axis=0)
    assert nc1_score(linear_agop_layer(X, y[:500])[0], y[:500]) > 1e-3


# -- Theorem 4.3: linearised Deep RFM ------------------------------------------------
def test_linearized_deep_rfm_one_step_equals_feature_level_computation():
    X, y = _mixture(n_per_class=10, d=120, K=3)
    lk, lp = 0.05, 1.0
    out = linearized_deep_rfm(X, y, L=1, lambda_k=lk, lambda_phi=lp)
    # Feature level: kernel X X' + lk I, ridgeless; AGOP M = B B' of the linear part
    # f(x) = alpha' X x; features X M^{1/2} / sqrt(kappa).
    Y = np.eye(3)[y]
    alpha = np.linalg.solve(X @ X.T + lk * np.eye(len(X)), Y)
    B = X.T @ alpha
    evals, evecs = np.linalg.eigh(B @ B.T)
    sqrt_M = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    Xt = X @ sqrt_M / np.sqrt(out["kappa"])
    np.testing.assert_allclose(out["gram"], Xt @ Xt.T, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        out["distances"][1], np.linalg.norm(Xt @ Xt.T - Y @ Y.T, 2), rtol=1e-8
    )


def test_linearized_deep_rfm_contracts_geometrically():
    X, y = _mixture(n_per_class=10, d=120, K=3)
    d = linearized_deep_rfm(X, y, L=8, lambda_k=0.1, lambda_phi=1.0)["distances"]
    ratios = d[2:] / d[1:-1]
    big = d[1:-1] > 1e-10  # before the float64 floor
    assert big.sum() >= 4
    assert np.all(ratios[big] < 0.5)  # observed 0.02-0.08
    # A larger kernel perturbation lambda_k delays the collapse; a larger
    # lambda_phi speeds it up.
    d_k = linearized_deep_rfm(X, y, L=3, lambda_k=0.3, lambda_phi=1.0)["distances"]
    d_p = linearized_deep_rfm(X, y, L=3, lambda_k=0.1, lambda_phi=3.0)["distances"]
    assert d_k[3] > d[3] > d_p[3]


def test_linearized_deep_rfm_with_the_papers_kappa_plateaus():
    X, y = _mixture(n_per_class=10, d=120, K=3)
    lk, lp, m = 0.01, 1.0, 10
    out = linearized_deep_rfm(X, y, L=12, lambda_k=lk, lambda_phi=lp, kappa="paper")
    kappa = 1 - 2 * lk * (1 + 1 / lp)
    assert out["kappa"] == pytest.approx(kappa)
    # Scalar fixed point s = rho(s)^2 / kappa with rho(s) = (sm + lp)/(sm + lp + lk);
    # the Gram matrices tend to s y y', at spectral distance |s - 1| m from y y'.
    s = 1.0
    for _ in range(200):
        s = ((s * m + lp) / (s * m + lp + lk)) ** 2 / kappa
    assert out["distances"][-1] == pytest.approx(abs(s - 1) * m, rel=1e-6)
    assert out["distances"][-1] > 0.1


def test_linearized_deep_rfm_errors():
    X, y = _mixture(n_per_class=10, d=60, K=3)
    with pytest.raises(ValueError, match="balanced"):
        linearized_deep_rfm(X[1:], y[1:], L=1, lambda_k=0.1, lambda_phi=1.0)
    with pytest.raises(ValueError, match="kappa"):
        linearized_deep_rfm(X, y, L=1, lambda_k=0.1, lambda_phi=1.0, kappa="x")
    out = linearized_deep_rfm(
        X[1:], y[1:], L=1, lambda_k=0.1, lambda_phi=1.0, kappa=1.0
    )
    assert out["kappa"] == 1.0


# -- Theorem 4.4: the label kernel is optimal -----------------------------------------
def test_krr_objective_is_the_minimum_of_the_training_objective():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(30, 12))
    K, Y, mu = G @ G.T, rng.normal(size=(30, 3)), 0.3
    A = np.linalg.solve(K + mu * np.eye(30), Y)

    def objective(A):
        return np.sum((Y - K @ A) ** 2) + mu * np.trace(A.T @ K @ A)

    assert krr_objective(K, Y, mu) == pytest.approx(objective(A), rel=1e-10)
    for _ in range(5):  # any other coefficients do worse
        assert objective(A + 0.01 * rng.normal(size=A.shape)) > objective(A)
    with pytest.raises(ValueError, match="mu"):
        krr_objective(K, Y, 0.0)


def test_label_kernel_beats_random_kernels_of_equal_trace():
    y = np.repeat(np.arange(5), 20)
    mu = 0.1
    result = label_kernel_optimality(y, mu, n_kernels=200, random_state=0)
    # Closed form for balanced one-hot labels: mu * sum_c n_c / (n_c + mu).
    assert result["label"] == pytest.approx(mu * 5 * 20 / (20 + mu), rel=1e-10)
    assert np.all(result["random"] >= result["label"] - 1e-9)
    # Kernels near y y' (same trace) are nearly optimal, and still not better.
    Y = np.eye(5)[y]
    rng = np.random.default_rng(1)
    for eps in (1e-3, 1e-2, 1e-1):
        G = rng.normal(size=(100, 100))
        K = Y @ Y.T + eps * G @ G.T / 100
        K *= 100 / np.trace(K)
        j = krr_objective(K, Y, mu)
        assert result["label"] <= j < result["label"] + 50 * eps
