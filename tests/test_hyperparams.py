"""Hyperparameters from the data (issue 15): the ridge path against separate
float64 solves, the chosen ridge against separate fits, the bandwidth rule's
invariance to the scale of X, reg="auto" with conjugate gradients, bad input."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_friedman1

from skdnc import DeepRFMTransformer, RFMClassifier, RFMRegressor
from skdnc._kernels import Kernel, median_distance
from skdnc._rfm_core import rfm_rounds
from skdnc._solvers import (
    EIGH_MAX_POINTS,
    EIGH_MIN_VALUES,
    REG_GRID,
    check_reg,
    fit_kernel_regression_path,
    ridge_path_method,
    ridge_path_solve,
)

BUDGET = 2**30
REGS = [1e-3, 1e-2, 0.1, 1.0, 10.0]


def _laplace_np(X, Z, M, bandwidth):
    """The Laplace kernel of the Mahalanobis distance, in NumPy float64."""
    M = np.diag(M) if M.ndim == 1 else M
    D = X[:, None, :] - Z[None, :, :]
    d2 = np.einsum("ijk,kl,ijl->ij", D, M, D)
    return np.exp(-np.sqrt(np.maximum(d2, 0)) / bandwidth)


def _kernel_problem(n=120, d=5, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    Y = rng.normal(size=(n, k))
    K = _laplace_np(X, X, np.eye(d), 3.0)
    return X, Y, K


@pytest.fixture(scope="module")
def friedman():
    X, y = make_friedman1(n_samples=240, noise=1.0, random_state=0)
    return X, y


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=180)
    X = rng.normal(size=(180, 6)) + 1.5 * np.eye(3, 6)[y]
    return X, y


# -- the ridge path -------------------------------------------------------------------
def test_ridge_path_equals_separate_float64_solves():
    _, Y, K = _kernel_problem()
    alphas = ridge_path_solve(torch.tensor(K), torch.tensor(Y), REGS).numpy()
    assert alphas.shape == (len(REGS), *Y.shape)
    for mu, alpha in zip(REGS, alphas):
        A = K + mu * np.eye(len(K))
        ref_np = np.linalg.solve(A, Y)
        ref_torch = torch.linalg.solve(torch.tensor(A), torch.tensor(Y)).numpy()
        scale = np.abs(ref_np).max()
        np.testing.assert_allclose(alpha, ref_np, rtol=0, atol=1e-8 * scale)
        np.testing.assert_allclose(alpha, ref_torch, rtol=0, atol=1e-8 * scale)


def test_ridge_path_ridgeless_value_is_the_pseudo_inverse():
    """reg=0 on a singular matrix: the minimum-norm least-squares solution."""
    rng = np.random.default_rng(0)
    B = rng.normal(size=(30, 4))
    K, Y = B @ B.T, rng.normal(size=(30, 2))
    alpha = ridge_path_solve(torch.tensor(K), torch.tensor(Y), [0.0])[0].numpy()
    np.testing.assert_allclose(alpha, np.linalg.pinv(K) @ Y, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fit_kernel_regression_path_methods_agree(dtype):
    """The eigendecomposition path (a long grid) and the one-value-at-a-time
    path (a short one) against NumPy float64 solves of the same kernel."""
    X, Y, K = _kernel_problem()
    long_grid = tuple(np.logspace(-3, 1, EIGH_MIN_VALUES))
    Xt, Yt = torch.tensor(X, dtype=dtype), torch.tensor(Y, dtype=dtype)
    for grid, method in [(long_grid, "eigh"), (tuple(REGS), "cholesky")]:
        assert ridge_path_method(grid, len(X), 8, BUDGET)[0] == method
        regs, alphas = fit_kernel_regression_path(
            Xt, Yt, None, Kernel("laplace", 3.0), grid, budget=BUDGET
        )
        assert regs == grid and alphas.dtype == dtype
        for mu, alpha in zip(regs, alphas.numpy()):
            ref = np.linalg.solve(K + mu * np.eye(len(K)), Y)
            tol = 1e-8 if dtype == torch.float64 else 2e-3
            np.testing.assert_allclose(alpha, ref, atol=tol * np.abs(ref).max())


def test_ridge_path_rule():
    """The stated rule: eigendecomposition for long grids of small problems that
    fit the budget and use the exact solve, one solve per value otherwise."""
    long_grid = tuple(np.logspace(-3, 1, EIGH_MIN_VALUES))
    assert ridge_path_method(long_grid, 500, 8, BUDGET) == ("eigh", long_grid)
    assert ridge_path_method("auto", 500, 8, BUDGET) == ("cholesky", REG_GRID)
    assert ridge_path_method(long_grid, 500, 8, BUDGET, solver="cg")[0] == "cg"
    assert ridge_path_method("auto", 500, 8, BUDGET, solver="cg") == ("cg", REG_GRID)
    n = EIGH_MAX_POINTS + 1
    assert ridge_path_method(long_grid, n, 4, BUDGET)[0] == "cholesky"
    # the kernel fits, the eigendecomposition's float64 buffers do not
    assert ridge_path_method(long_grid, 500, 8, 3 * 500 * 500 * 8)[0] == "cholesky"


# -- the chosen ridge -----------------------------------------------------------------
LONG_GRID = [float(v) for v in np.logspace(-3, 2, EIGH_MIN_VALUES)]


@pytest.mark.parametrize(
    "Est, regs",
    [
        (RFMRegressor, REGS),
        (RFMClassifier, REGS),
        (RFMRegressor, LONG_GRID),  # the eigendecomposition path
    ],
    ids=["regressor", "classifier", "regressor-eigh"],
)
def test_chosen_reg_is_argmax_of_separate_fits(Est, regs, friedman, blobs):
    """reg_ is the best of the validation scores of separate fits with each
    fixed reg (same seed, so the same split; round 0 has M = I); the first
    round's coarse-to-fine search scores every other value, the largest and
    the neighbours of the best, each as a separate fit would."""
    X, y = friedman if Est is RFMRegressor else blobs
    common = {"bandwidth": 5.0, "random_state": 0}
    separate = [
        Est(reg=r, max_iter=1, n_iter_no_change=None, **common).fit(X, y).history_[0]
        for r in regs
    ]
    grid = Est(reg=regs, max_iter=0, **common).fit(X, y)
    curve = grid.validation_curve_[0]
    tried = np.isfinite(curve)
    assert tried[::2].all() and tried[-1]
    best = int(np.argmax(separate))
    assert tried[max(best - 1, 0) : best + 2].all()
    np.testing.assert_allclose(curve[tried], np.array(separate)[tried], rtol=1e-8)
    assert grid.reg_ == regs[int(np.argmax(separate))]
    np.testing.assert_array_equal(grid.reg_grid_, regs)
    assert grid.best_iter_ == 0 and grid.n_iter_ == 1


def test_rounds_refuse_a_grid_without_scores():
    X, Y, _ = _kernel_problem(n=20)
    params = {"reg": "auto", "solver": "auto", "solver_params": None}
    with pytest.raises(ValueError, match="pass evaluate"):
        rfm_rounds(
            torch.tensor(X),
            torch.tensor(Y),
            None,
            Kernel(),
            0,
            params=params,
            budget=BUDGET,
            generator=torch.Generator(),
        )


def test_final_model_solves_with_reg_and_bandwidth(friedman):
    """The refit uses the chosen ridge and the measured bandwidth: dual_coef_
    solves (K_M + reg_ I) alpha = y - mean in NumPy float64."""
    X, y = friedman
    est = RFMRegressor(reg="auto", bandwidth="auto", max_iter=2, random_state=0)
    est.fit(X, y)
    assert est.reg_ in REG_GRID
    np.testing.assert_array_equal(est.reg_grid_, REG_GRID)
    np.testing.assert_allclose(np.nanmax(est.validation_curve_, axis=1), est.history_)
    C = est.centers_
    K = _laplace_np(C, C, est.M_, est.bandwidth_)
    alpha = np.linalg.solve(K + est.reg_ * np.eye(len(C)), y - y.mean())
    np.testing.assert_allclose(est.dual_coef_[:, 0], alpha, rtol=1e-6, atol=1e-8)


def test_no_split_falls_back_to_the_value_nearest_1e_3():
    X = np.arange(8.0).reshape(4, 2)
    y = np.array([0.0, 1.0, 0.5, 2.0])
    assert RFMRegressor(reg="auto", random_state=0).fit(X, y).reg_ == 1e-3
    est = RFMRegressor(reg=[10.0, 0.1], random_state=0).fit(X, y)
    assert est.reg_ == 0.1 and est.history_ is None
    X, y = np.random.default_rng(0).normal(size=(50, 3)), np.arange(50.0)
    est = RFMRegressor(reg=[1e-4, 1.0], validation_fraction=0, max_iter=1).fit(X, y)
    assert est.reg_ == 1e-4 and est.validation_curve_ is None


# -- the bandwidth rule ---------------------------------------------------------------
def test_median_distance_against_numpy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    i, j = np.random.default_rng(7).integers(0, 50, size=(2, 2000))
    keep = i != j
    ref = np.median(np.linalg.norm(X[i[keep]] - X[j[keep]], axis=1))
    assert median_distance(X, seed=7) == pytest.approx(ref, rel=1e-12)
    assert median_distance(torch.tensor(X), seed=7) == pytest.approx(ref, rel=1e-12)
    assert median_distance(X[:1]) is None
    assert Kernel(bandwidth="auto").at_scale(np.zeros((5, 2))).bandwidth == 1.0


@pytest.mark.parametrize("Est", [RFMRegressor, RFMClassifier])
def test_auto_bandwidth_is_invariant_to_the_scale_of_X(Est, friedman, blobs):
    X, y = friedman if Est is RFMRegressor else blobs
    params = {"bandwidth": "auto", "reg": "auto", "max_iter": 2, "random_state": 0}
    small = Est(**params).fit(X, y)
    large = Est(**params).fit(1000 * X, y)
    assert large.bandwidth_ == pytest.approx(1000 * small.bandwidth_, rel=1e-9)
    assert large.reg_ == small.reg_ and large.n_iter_ == small.n_iter_
    out = "predict" if Est is RFMRegressor else "decision_function"
    np.testing.assert_allclose(
        getattr(large, out)(1000 * X), getattr(small, out)(X), rtol=1e-6, atol=1e-9
    )
    # A fixed bandwidth does depend on the scale (the test can fail).
    fixed = {**params, "bandwidth": 5.0}
    a = Est(**fixed).fit(X, y)
    b = Est(**fixed).fit(3 * X, y)
    assert not np.allclose(getattr(a, out)(X), getattr(b, out)(3 * X), atol=1e-3)


# -- reg="auto" with conjugate gradients ------------------------------------------
def test_auto_reg_with_cg_solves_the_same_grid(friedman):
    """Documented: with solver="cg" every value of the grid is one CG solve, so
    the choice and the model match the exact solver's (a preconditioner of full
    rank makes CG converge to the float64 tolerance)."""
    X, y = friedman
    params = {"reg": "auto", "max_iter": 1, "random_state": 0, "bandwidth": 5.0}
    exact = RFMRegressor(solver="cholesky", **params).fit(X, y)
    cg = RFMRegressor(solver="cg", solver_params={"tol": 1e-10}, **params).fit(X, y)
    np.testing.assert_array_equal(cg.reg_grid_, REG_GRID)
    assert cg.reg_ == exact.reg_
    np.testing.assert_allclose(cg.validation_curve_, exact.validation_curve_, atol=1e-6)
    np.testing.assert_allclose(cg.predict(X), exact.predict(X), rtol=1e-5, atol=1e-5)


# -- bad input ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, match",
    [
        ({"reg": "foo"}, "'reg' parameter"),
        ({"reg": -1.0}, "'reg' parameter"),
        ({"reg": [0.1, -1.0]}, "non-negative"),
        ({"reg": [0.1, np.nan]}, "finite"),
        ({"reg": []}, "at least one value"),
        ({"reg": [[0.1, 1.0]]}, "flat list"),
        ({"reg": ["a", "b"]}, "list of non-negative floats"),
        ({"bandwidth": "bogus"}, "'bandwidth' parameter"),
        ({"bandwidth": 0.0}, "'bandwidth' parameter"),
    ],
)
@pytest.mark.parametrize("Est", [RFMRegressor, RFMClassifier])
def test_bad_hyperparameters_raise(Est, params, match, blobs):
    X, y = blobs
    with pytest.raises(ValueError, match=match):
        Est(**params).fit(X, y)


@pytest.mark.parametrize("params", [{"reg": "auto"}, {"bandwidth": "auto"}])
def test_deep_rfm_takes_numbers_only(params, blobs):
    X, y = blobs
    with pytest.raises(ValueError, match="must be a float"):
        DeepRFMTransformer(L=1, **params).fit(X, y)


# -- properties -----------------------------------------------------------------------
@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 40),
    regs=st.lists(st.floats(1e-3, 1e2), min_size=1, max_size=6),
    seed=st.integers(0, 2**16),
)
def test_ridge_path_property(n, regs, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    K = _laplace_np(X, X, np.eye(3), 2.0)
    Y = rng.normal(size=(n, 2))
    alphas = ridge_path_solve(torch.tensor(K), torch.tensor(Y), regs).numpy()
    for mu, alpha in zip(regs, alphas):
        ref = np.linalg.solve(K + mu * np.eye(n), Y)
        np.testing.assert_allclose(alpha, ref, atol=1e-8 * max(np.abs(ref).max(), 1))


@settings(max_examples=20, deadline=None, derandomize=True)
@given(values=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=8))
def test_check_reg_property(values):
    assert check_reg(values) == tuple(sorted(set(values)))
    with pytest.raises(ValueError, match="non-negative"):
        check_reg([*values, -1.0])


@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    regs=st.lists(st.sampled_from(REGS), min_size=1, max_size=4, unique=True),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    seed=st.integers(0, 100),
)
def test_regressor_grid_property(regs, scale, seed):
    """Any grid: reg_ is in it, the curve's best row entries are history_, the
    chosen round is the best of history_, and a grid of one value is that
    value's fixed-reg fit."""
    rng = np.random.default_rng(seed)
    X = scale * rng.normal(size=(80, 4))
    y = np.sin(X[:, 0] / scale) + 0.1 * rng.normal(size=80)
    est = RFMRegressor(reg=regs, bandwidth="auto", max_iter=2, random_state=seed)
    est.fit(X, y)
    assert est.reg_ in regs
    assert est.validation_curve_.shape == (len(est.history_), len(regs))
    np.testing.assert_array_equal(
        np.nanmax(est.validation_curve_, axis=1), est.history_
    )
    assert est.history_[est.best_iter_] == est.history_.max()
    assert np.isfinite(est.predict(X)).all()
    if len(regs) == 1:
        fixed = RFMRegressor(reg=regs[0], bandwidth="auto", max_iter=2)
        fixed.set_params(random_state=seed).fit(X, y)
        np.testing.assert_allclose(fixed.predict(X), est.predict(X), rtol=1e-8)


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 60),
    d=st.integers(1, 8),
    scale=st.floats(1e-6, 1e6),
    seed=st.integers(0, 2**16),
)
def test_auto_bandwidth_scales_with_the_data_property(n, d, scale, seed):
    X = np.random.default_rng(seed).normal(size=(n, d))
    kernel = Kernel("laplace", "auto")
    base = kernel.at_scale(X).bandwidth
    assert kernel.at_scale(scale * X).bandwidth == pytest.approx(scale * base)
    assert Kernel("laplace", 3.0).at_scale(scale * X).bandwidth == 3.0
