"""The Nystrom-centre kernel machine (Falkon's model): exactness, preconditioning,
memory, the ridge grid from one factorisation, and the n_centers parameter."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

from skdnc import DeepRFMTransformer, RFMClassifier, RFMRegressor
from skdnc._kernels import Kernel
from skdnc._rfm_core import rfm_rounds
from skdnc._solvers import (
    REG_GRID,
    centre_factor,
    choose_method,
    conjugate_gradient,
    falkon_preconditioner,
    fit_kernel_machine,
    fit_kernel_machine_path,
    refit_centers,
    resolve_centers,
)

MiB = 2**20
GiB = 2**30


def _laplace(A, B, bandwidth):
    return np.exp(-cdist(A, B) / bandwidth)


def _falkon_reference(X, Y, centres, bandwidth, reg):
    """beta of (K_nm' K_nm + reg K_mm) beta = K_nm' Y in float64 NumPy."""
    K_nm = _laplace(X, X[centres], bandwidth)
    K_mm = K_nm[centres]
    return np.linalg.solve(K_nm.T @ K_nm + reg * K_mm, K_nm.T @ Y)


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6))
    Y = np.stack([np.sin(X[:, 0]) + X[:, 1] * X[:, 2], np.cos(X[:, 3])], axis=1)
    return torch.tensor(X), torch.tensor(Y)


@pytest.mark.parametrize("solver", ["nystrom", "falkon"])
def test_every_point_a_centre_is_the_exact_model(problem, solver):
    """C = all points: beta = (K + reg I)^{-1} Y, against a NumPy solve."""
    X, Y = problem
    reg = 1e-2
    centres, beta = fit_kernel_machine(
        X,
        Y,
        None,
        Kernel("laplace", 4.0),
        reg,
        n_centers=len(X),
        solver=solver,
        budget=GiB,
        solver_params={"tol": 1e-14, "max_iter": 200},
    )
    assert centres.tolist() == list(range(len(X)))
    K = _laplace(X.numpy(), X.numpy(), 4.0)
    expected = np.linalg.solve(K + reg * np.eye(len(K)), Y.numpy())
    np.testing.assert_allclose(beta.numpy(), expected, rtol=0, atol=1e-8)


@pytest.mark.parametrize("solver", ["nystrom", "falkon"])
@pytest.mark.parametrize("budget", [GiB, 50 * 60 * 8 * 2])  # held / 50-row blocks
def test_fewer_centres_solve_falkons_system(problem, solver, budget):
    X, Y = problem
    reg = 1e-3
    centres, beta = fit_kernel_machine(
        X,
        Y,
        None,
        Kernel("laplace", 4.0),
        reg,
        n_centers=60,
        solver=solver,
        budget=budget + 4 * 60 * 60 * 8,
        generator=torch.Generator().manual_seed(3),
        solver_params={"tol": 1e-12, "max_iter": 300},
    )
    assert len(centres) == 60 and len(set(centres.tolist())) == 60
    expected = _falkon_reference(X.numpy(), Y.numpy(), centres.numpy(), 4.0, reg)
    np.testing.assert_allclose(beta.numpy(), expected, rtol=1e-7, atol=1e-7)


def test_falkon_preconditioner_needs_few_iterations_where_plain_cg_needs_many():
    """An ill-conditioned Nystrom system (smooth kernel, tiny ridge): Falkon's
    preconditioner reaches the tolerance in <= 30 iterations, plain CG needs at
    least 5x more. The system is formed here in NumPy, independently of the
    solver's blocks."""
    rng = np.random.default_rng(0)
    n, m, reg = 3000, 300, 1e-6
    X = rng.uniform(-1, 1, size=(n, 2))
    y = np.sin(4 * X[:, :1]) + 0.1 * rng.normal(size=(n, 1))
    centres = np.sort(rng.choice(n, m, replace=False))
    K_nm = _laplace(X, X[centres], 1.0)
    K_mm = K_nm[centres]
    H = torch.tensor(K_nm.T @ K_nm + reg * K_mm)
    R = torch.tensor(K_nm.T @ y)
    assert np.linalg.cond(H.numpy()) > 1e8  # ill-conditioned indeed
    L = centre_factor(torch.tensor(K_mm), torch.float64)
    tol = 1e-6

    def solve(precondition):
        return conjugate_gradient(
            lambda V: H @ V, R, 0.0, precondition, tol=tol, max_iter=5000
        )

    beta, falkon_iters, res = solve(falkon_preconditioner(L, n, reg))
    _, plain_iters, _ = solve(lambda V: V)
    assert res <= tol and falkon_iters <= 30, falkon_iters
    assert plain_iters >= 5 * falkon_iters, (plain_iters, falkon_iters)
    np.testing.assert_allclose(
        H.numpy() @ beta.numpy(),
        R.numpy(),
        rtol=0,
        atol=2 * tol * np.abs(R.numpy()).max(),
    )


def test_ridge_grid_from_one_factorisation_equals_separate_solves(problem):
    X, Y = problem
    kernel = Kernel("laplace", 4.0)
    common = {"n_centers": 80, "budget": GiB, "solver": "nystrom"}
    regs, centres, betas = fit_kernel_machine_path(
        X, Y, None, kernel, "auto", generator=torch.Generator().manual_seed(1), **common
    )
    assert regs == REG_GRID and betas.shape == (len(REG_GRID), 80, 2)
    for reg, beta in zip(regs, betas, strict=True):
        same, single = fit_kernel_machine(
            X,
            Y,
            None,
            kernel,
            reg,
            generator=torch.Generator().manual_seed(1),
            **common,
        )
        assert torch.equal(same, centres)
        expected = _falkon_reference(X.numpy(), Y.numpy(), centres.numpy(), 4.0, reg)
        scale = np.abs(expected).max()
        np.testing.assert_allclose(beta.numpy(), single.numpy(), atol=1e-8 * scale)
        np.testing.assert_allclose(beta.numpy(), expected, atol=1e-7 * scale)


def test_solver_auto_rule():
    budget = GiB
    # every point a centre: the exact model, Cholesky while it fits
    assert choose_method("auto", 1000, 1000, 8, budget) == ("cholesky", True)
    assert choose_method("auto", 20_000, 20_000, 8, budget)[0] == "cg"
    # fewer centres: Falkon's CG for one ridge value, the direct solve for a grid
    assert choose_method("auto", 50_000, 1000, 4, budget)[0] == "falkon"
    assert choose_method("auto", 50_000, 1000, 4, budget, grid=True)[0] == "nystrom"
    # K_nm held when it fits half the budget
    assert choose_method("falkon", 50_000, 1000, 4, budget)[1] is True
    assert choose_method("falkon", 500_000, 1000, 4, budget)[1] is False
    for forced in ("cholesky", "cg", "nystrom", "falkon"):
        assert choose_method(forced, 2000, 2000, 8, budget)[0] == forced
    with pytest.raises(ValueError, match="exact model.*n_centers asks for 100"):
        choose_method("cholesky", 2000, 100, 8, budget)
    with pytest.raises(ValueError, match="Nystrom system of 20000 centres"):
        choose_method("nystrom", 10**6, 20_000, 4, budget)


def test_n_centers_auto():
    assert resolve_centers("auto", 2048) == 2048  # exact model up to 2,048 points
    for n in (2049, 5000, 20_000, 10**6, 10**7):
        m = resolve_centers("auto", n)
        assert 1024 <= m < n


def test_n_centers_auto_keeps_the_exact_model_up_to_six_points_per_feature():
    """Given d, every point is a centre up to max(2,048, min(8,192, 6 d)) points;
    past it the rule without d applies."""
    for n, d, exact in [
        (4000, 784, True),
        (4704, 784, True),
        (4705, 784, False),
        (4000, 9, False),
        (2048, 1, True),
        (8192, 10**5, True),
        (8193, 10**5, False),
    ]:
        m = resolve_centers("auto", n, d)
        assert (m == n) == exact, (n, d, m)
        if not exact and d >= 22:  # the per-feature bounds do not bind
            assert m == resolve_centers("auto", n)
    X = torch.tensor(np.random.default_rng(0).normal(size=(2100, 400)))
    Y = X[:, :1].clone()
    params = RFMRegressor(reg=1.0)._round_params()
    for d, centres in [(400, None), (10, 480)]:
        path = []
        rfm_rounds(
            X[:, :d].contiguous(),
            Y,
            None,
            Kernel("laplace", 10.0),
            0,
            params=params,
            budget=GiB,
            generator=torch.Generator().manual_seed(0),
            path=path,
        )
        got = path[0]["centers"]
        assert (got is None) if centres is None else len(got) == centres


def test_n_centers_auto_takes_fewer_centres_for_few_features():
    """Past the exact model, "auto" with d features takes n / 4 centres, at most
    n d / 48, clipped to [min(1024, 48 d), min(4096, max(2048, 6 d))], and at
    most max(1024, 2^26 / n): written out here, value by value."""

    def rule(n, d):
        m = min(n // 4, n * d // 48)
        m = max(min(1024, 48 * d), min(4096, max(2048, 6 * d), m))
        return min(m, max(1024, 2**26 // n))

    for n in (2049, 3200, 4000, 5000, 8192, 16_000, 20_000, 100_000, 10**6):
        for d in (1, 2, 9, 11, 12, 21, 22, 28, 100, 400, 784):
            if n <= 2048 or n <= min(8192, 6 * d):
                continue
            assert resolve_centers("auto", n, d) == rule(n, d), (n, d)
    # The figures of the docs: diamonds (d = 9) at 5,000 points and its split.
    assert [resolve_centers("auto", n, 9) for n in (4000, 5000)] == [750, 937]
    assert resolve_centers("auto", 2049, 9) == 432
    # d >= 22: the rule without d; large n keeps its floor of 1,024.
    for n in (3200, 5000, 20_000, 10**6):
        assert resolve_centers("auto", n, 100) == resolve_centers("auto", n)
    assert resolve_centers("auto", 10**6, 9) == 1024
    # Many features: more centres past the exact model's 6 d points.
    assert [resolve_centers("auto", n, 784) for n in (16_000, 20_000)] == [4000, 3355]


@pytest.mark.parametrize(
    "bad, match",
    [
        (0, "n_centers"),
        (-3, "n_centers"),
        (float("nan"), "n_centers"),
        ("many", "n_centers"),
        (1.5, "n_centers"),
        (0.0, "n_centers"),
    ],
)
@pytest.mark.parametrize("Est", [RFMClassifier, RFMRegressor, DeepRFMTransformer])
def test_bad_n_centers_is_a_clear_error(bad, match, Est):
    X, y = load_digits(return_X_y=True)
    with pytest.raises(ValueError, match=match):
        Est(n_centers=bad).fit(X[:60], y[:60])


@pytest.mark.parametrize("Est", [RFMClassifier, RFMRegressor, DeepRFMTransformer])
def test_more_centres_than_points_is_a_clear_error(Est):
    X, y = load_digits(return_X_y=True)
    # A fixed depth: L="auto" fits its layers on the training part of its split.
    params = {"L": 2} if Est is DeepRFMTransformer else {}
    with pytest.raises(ValueError, match="n_centers=61 must be between 1 and the 60"):
        Est(n_centers=61, **params).fit(X[:60], y[:60])


def test_exact_solver_with_fewer_centres_is_a_clear_error():
    X, y = load_digits(return_X_y=True)
    with pytest.raises(ValueError, match="solver='cholesky' solves the exact model"):
        RFMClassifier(n_centers=10, solver="cholesky").fit(X[:100], y[:100])


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    n_centers=st.one_of(
        st.integers(min_value=1, max_value=120),
        st.floats(min_value=0.005, max_value=1.0),
        st.just("auto"),
    ),
    solver=st.sampled_from(["auto", "nystrom", "falkon"]),
)
def test_any_valid_n_centers_fits_a_model_on_its_centres(n_centers, solver):
    """Any valid n_centers: the model's centres are distinct training rows, as
    many as asked (on all the data: refit), and its predictions are its kernel
    machine on them, computed here in NumPy."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    y = np.sin(X[:, 0]) + X[:, 1]
    reg = RFMRegressor(
        n_centers=n_centers,
        solver=solver,
        reg=1e-2,
        bandwidth=3.0,
        max_iter=1,
        dtype="float64",
        random_state=0,
        solver_params={"tol": 1e-10},
    ).fit(X, y)
    m = resolve_centers(n_centers, 120)
    C = reg.centers_ + reg.X_offset_
    assert C.shape == (m, 4) and reg.dual_coef_.shape[0] == m
    rows = {tuple(r) for r in np.round(X, 12)}
    assert all(tuple(r) in rows for r in np.round(C, 12))
    assert len({tuple(r) for r in C}) == m
    S = np.linalg.cholesky(reg.M_ + 1e-300 * np.eye(4))  # M = S S^T
    K = _laplace(X @ S, C @ S, 3.0)
    np.testing.assert_allclose(
        reg.predict(X), (K @ reg.dual_coef_).ravel() + reg.y_mean_, atol=1e-6
    )


def test_estimator_with_all_points_as_centres_matches_the_exact_estimator():
    X, y = load_digits(return_X_y=True)
    X, y = X[:300] / 16, y[:300]
    common = {"random_state": 0, "dtype": "float64", "max_iter": 2, "reg": 1e-2}
    exact = RFMClassifier(solver="cholesky", **common).fit(X, y)
    nystrom = RFMClassifier(solver="nystrom", n_centers=1.0, **common).fit(X, y)
    np.testing.assert_allclose(nystrom.dual_coef_, exact.dual_coef_, atol=1e-8)
    # M_ is the AGOP's square root: rounding-level AGOP entries (pixels that are
    # almost always 0) become ~1e-8 there, so the AGOP itself is compared tightly.
    np.testing.assert_allclose(nystrom.M_ @ nystrom.M_, exact.M_ @ exact.M_, atol=1e-12)
    np.testing.assert_allclose(nystrom.M_, exact.M_, atol=1e-7)


def _exact_reference(X, y, Z, bandwidth, reg):
    """Predictions at Z of kernel ridge regression on every point, M = I, in
    float64 NumPy: k(Z, X) (K + reg I)^{-1} (y - mean y) + mean y."""
    alpha = np.linalg.solve(
        _laplace(X, X, bandwidth) + reg * np.eye(len(X)), y - y.mean()
    )
    return _laplace(Z, X, bandwidth) @ alpha + y.mean()


def test_auto_centres_refit_the_exact_model_where_its_kernel_matrix_fits():
    """Past the exact model's size, n_centers="auto" fits its final kernel
    machine on every point while the kernel matrix fits half the budget: its
    predictions are those of an independent exact solve. The negative control,
    a budget that the kernel matrix does not fit twice, keeps the Nystrom model
    (162 centres) and misses the same comparison by far."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(2600, 3))
    y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
    Z = rng.normal(size=(200, 3))
    assert resolve_centers("auto", 2600, 3) == 162  # the rounds' model
    expected = _exact_reference(X, y, Z, 2.0, 1e-2)
    common = {"reg": 1e-2, "bandwidth": 2.0, "dtype": "float64", "random_state": 0}
    exact = RFMRegressor(max_iter=0, **common).fit(X, y)
    assert len(exact.centers_) == 2600
    np.testing.assert_allclose(exact.predict(Z), expected, rtol=1e-8, atol=1e-8)
    # 2600^2 float64 numbers are 54 MB: a 80 MB budget does not hold two.
    tight = RFMRegressor(max_iter=0, memory_budget=80 / 1024, **common).fit(X, y)
    assert len(tight.centers_) == 162
    assert np.abs(tight.predict(Z) - expected).max() > 1e-3
    # with a validation split: Nystrom rounds on the split, the exact refit
    split = RFMRegressor(max_iter=1, n_iter_no_change=None, **common).fit(X, y)
    assert len(split.centers_) == 2600 and split.n_iter_ == 2


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 50_000),
    d=st.integers(1, 1000),
    itemsize=st.sampled_from([4, 8]),
    budget_mib=st.integers(1, 65_536),
    n_centers=st.sampled_from(["auto", 100, 0.5]),
    solver=st.sampled_from(["auto", "cg", "falkon"]),
)
def test_refit_centers_rule(n, d, itemsize, budget_mib, n_centers, solver):
    budget = budget_mib * MiB
    got = refit_centers(n_centers, solver, n, itemsize, budget, n_features=d)
    exact = (
        n_centers == "auto"
        and solver == "auto"
        and resolve_centers("auto", n, d) < n
        and n <= 32_768
        and 2 * n * n * itemsize <= budget
    )
    if exact:
        assert got == (1.0, "cg" if n > 8192 else "auto")
    else:
        assert got == (n_centers, solver)


def test_nystrom_classifier_is_close_to_the_exact_one():
    X, y = load_digits(return_X_y=True)
    X = X / 16
    tr, te = slice(0, 1400), slice(1400, None)
    exact = RFMClassifier(random_state=0).fit(X[tr], y[tr])
    nystrom = RFMClassifier(n_centers=700, random_state=0).fit(X[tr], y[tr])
    assert len(nystrom.centers_) == 700
    assert nystrom.score(X[te], y[te]) >= exact.score(X[te], y[te]) - 0.03


def test_deep_rfm_with_centres():
    X, y = load_digits(return_X_y=True)
    X = X[:400] / 16
    y = y[:400]
    deep = DeepRFMTransformer(L=2, width=64, n_centers=100, random_state=0).fit(X, y)
    assert np.isfinite(deep.transform(X)).all()
    full = DeepRFMTransformer(L=2, width=64, n_centers=1.0, random_state=0).fit(X, y)
    exact = DeepRFMTransformer(L=2, width=64, random_state=0).fit(X, y)
    np.testing.assert_allclose(full.transform(X), exact.transform(X), atol=1e-4)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch
    from skdnc import RFMRegressor

    def status(key):  # bytes, from the kernel's accounting of this process
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024

    n, m, budget_gib = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 8))
    y = np.sin(X[:, 0]) + X[:, 1]
    params = dict(
        max_iter=1, n_centers=m, solver="falkon", reg=1e-2, bandwidth=3.0,
        validation_fraction=0, agop_samples=500, memory_budget=budget_gib,
        solver_params={"tol": 1e-3, "max_iter": 4},
    )
    RFMRegressor(**{**params, "n_centers": 50}).fit(X[:2000], y[:2000])  # warm up
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    base = status("VmRSS")
    RFMRegressor(**params).fit(X, y)
    print(json.dumps({"extra": status("VmHWM") - base}))
    """
)


def _extra_memory(n, m, budget_gib):
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, str(n), str(m), str(budget_gib)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


@pytest.mark.slow
def test_memory_grows_with_the_data_not_with_k_nm():
    """Peak RSS of a Falkon fit at n = 5,000 and 40,000 with 800 centres and a
    32 MiB budget (20 MiB of it the m x m matrices). From one n to the other
    the n x d data (0.6 MiB per 10,000 rows in float64) grow by 2.1 MiB, copies
    included a few times that; the guarded object, K_nm, would grow by
    214 MiB. The growth is bounded by 8 copies of the data's growth plus one
    budget and 24 MiB of slack (allocator, threads)."""
    m, budget = 800, 32 * MiB
    n1, n2 = 5_000, 40_000
    data_growth = (n2 - n1) * 8 * 8
    k_nm_growth = (n2 - n1) * m * 8
    bound = 8 * data_growth + budget + 24 * MiB
    assert k_nm_growth > 2.5 * bound
    growth = _extra_memory(n2, m, budget / GiB) - _extra_memory(n1, m, budget / GiB)
    assert growth < bound, growth / MiB
    # the negative control: a budget that holds K_nm fails the same bound
    held = _extra_memory(n2, m, 1.0) - _extra_memory(n1, m, 1.0)
    assert held > bound, held / MiB


def test_whitened_normal_matrix_is_psd_where_the_two_sided_form_is_not():
    """A = W^T W of the whitened rows W = K_nm L^{-T} (K_mm + jitter = L L^T)
    against a float64 reference written here (SciPy), on near-duplicate centres
    (one feature, a bandwidth of 10,000) where forming A as L^{-1} G L^{-T}
    from G = K_nm^T K_nm leaves A + 1e-3 I (the smallest ridge of the grid)
    indefinite: A stays positive semi-definite to rounding."""
    import scipy.linalg

    from skdnc._solvers import _CentreRows, draw_centers, nystrom_normal_equations

    n, m, bandwidth = 1500, 500, 10_000.0
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 1))
    Y = rng.normal(size=(n, 2))
    centres = draw_centers(n, m, torch.Generator().manual_seed(0))
    C = X[centres.numpy()]
    K_nm = np.exp(-np.abs(X - C.T) / bandwidth)  # Laplace kernel, d = 1
    K_mm = np.exp(-np.abs(C - C.T) / bandwidth)
    shift = np.finfo(np.float64).eps * m  # the jitter of a unit diagonal
    L = scipy.linalg.cholesky(K_mm + shift * np.eye(m), lower=True)
    W = scipy.linalg.solve_triangular(L, K_nm.T, lower=True).T
    A_ref, b_ref = W.T @ W, W.T @ Y

    rows = _CentreRows(
        torch.tensor(X), None, centres, Kernel("laplace", bandwidth), budget=GiB
    )
    A, b = nystrom_normal_equations(rows, torch.tensor(Y), None, L=torch.tensor(L))
    scale = np.abs(A_ref).max()
    np.testing.assert_allclose(A.numpy(), A_ref, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(
        b.numpy(), b_ref, rtol=0, atol=1e-9 * np.abs(b_ref).max()
    )
    assert np.linalg.eigvalsh(A.numpy()).min() > -1e-12 * scale
    assert torch.linalg.cholesky_ex(A + 1e-3 * torch.eye(m, dtype=A.dtype))[1] == 0
    # The two-sided form of the same matrix fails here by more than the ridge.
    G = K_nm.T @ K_nm
    Z = scipy.linalg.solve_triangular(L, G, lower=True)
    A_two_sided = scipy.linalg.solve_triangular(L, Z.T, lower=True)
    assert np.linalg.eigvalsh((A_two_sided + A_two_sided.T) / 2).min() < -1e-3
