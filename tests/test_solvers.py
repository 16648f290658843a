"""Exact and iterative kernel ridge solves, and bounded memory."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import LinAlgWarning
from scipy.spatial.distance import cdist
from sklearn.datasets import load_digits

from skdnc import RFMClassifier
from skdnc._kernels import Kernel, kernel_matrix
from skdnc._solvers import choose_solver, fit_kernel_regression

MiB = 2**20


@pytest.fixture(scope="module")
def digits_problem():
    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X - X.mean(axis=0))
    Y = torch.tensor(2 * np.eye(10)[y] - 1)
    return X, Y


def _reference_solve(X, Y, bandwidth, reg):
    K = np.exp(-cdist(X.numpy(), X.numpy()) / bandwidth)
    return np.linalg.solve(K + reg * np.eye(len(K)), Y.numpy())


@pytest.mark.parametrize("reg", [1e-3, 1e-1])
def test_cholesky_matches_a_float64_reference(digits_problem, reg):
    X, Y = digits_problem
    kernel = Kernel("laplace", 10.0)
    alpha = fit_kernel_regression(
        X, Y, None, kernel, reg, solver="cholesky", budget=2**30
    )
    expected = _reference_solve(X, Y, 10.0, reg)
    np.testing.assert_allclose(alpha.numpy(), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("in_memory", [True, False])
def test_cg_agrees_with_the_exact_solve(digits_problem, in_memory):
    X, Y = digits_problem
    n = len(X)
    kernel = Kernel("laplace", 10.0)
    rank = 300
    nystrom = 3 * n * rank * 8
    budget = 2**30 if in_memory else nystrom + 40 * n * 8 * 3  # 40-row blocks
    assert choose_solver("cg", n, 8, budget, rank) == ("cg", in_memory)
    params = {"rank": rank, "tol": 1e-10}
    exact = fit_kernel_regression(
        X, Y, None, kernel, 1e-3, solver="cholesky", budget=2**30
    )
    logs = []
    iterative = fit_kernel_regression(
        X,
        Y,
        None,
        kernel,
        1e-3,
        solver="cg",
        budget=budget,
        solver_params=params,
        log=logs.append,
    )
    assert ("in memory" if in_memory else "in blocks") in logs[0]
    assert "relative residual" in logs[0]
    K = kernel_matrix(X, X, None, kernel)
    pred_exact, pred_cg = K @ exact, K @ iterative
    rel = torch.linalg.norm(pred_cg - pred_exact) / torch.linalg.norm(pred_exact)
    assert rel < 1e-4


def test_cg_warns_when_it_stops_early(digits_problem):
    X, Y = digits_problem
    with pytest.warns(LinAlgWarning, match="Conjugate gradients stopped"):
        fit_kernel_regression(
            X,
            Y,
            None,
            Kernel("laplace", 10.0),
            1e-6,
            solver="cg",
            budget=2**30,
            solver_params={"rank": 10, "max_iter": 3},
        )


def test_auto_takes_the_exact_solve_while_the_kernel_fits():
    assert choose_solver("auto", 1000, 8, 10 * MiB) == ("cholesky", True)
    assert choose_solver("auto", 1000, 8, 5 * MiB, rank=100)[0] == "cg"
    with pytest.raises(ValueError, match="memory budget of 5.00 GiB"):
        choose_solver("cholesky", 40_000, 4, 5 * 2**30)
    with pytest.raises(ValueError, match="Nystrom"):
        choose_solver("cg", 40_000, 4, 100 * MiB)


def test_estimators_predict_the_same_with_either_solver():
    X, y = load_digits(return_X_y=True)
    kw = {"max_iter": 1, "validation_fraction": 0, "random_state": 0}
    exact = RFMClassifier(solver="cholesky", **kw).fit(X, y)
    cg = RFMClassifier(solver="cg", solver_params={"tol": 1e-10, "rank": 300}, **kw)
    cg.fit(X, y)
    F, G = exact.decision_function(X), cg.decision_function(X)
    assert np.linalg.norm(F - G) / np.linalg.norm(F) < 1e-4


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

    solver, budget_gib, n = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, 20))
    y = np.sin(X[:, 0]) + X[:, 1]
    # warm up torch's kernels on a small problem first, so their one-off
    # allocations are part of the baseline
    warm = RFMRegressor(max_iter=1, solver="cg", solver_params={"rank": 50})
    warm.fit(X[:300], y[:300])
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak resident set size (VmHWM) to the current one
    base = status("VmRSS")
    reg = RFMRegressor(
        max_iter=1, solver=solver, memory_budget=budget_gib, agop_samples=1000,
        validation_fraction=0, solver_params={"rank": 150, "tol": 1e-3},
    ).fit(X, y)
    reg.predict(X)
    print(json.dumps({"extra": status("VmHWM") - base}))
    """
)


def _extra_memory(solver, budget_gib, n):
    out = subprocess.run(
        [sys.executable, "-c", _MEMORY_SCRIPT, solver, str(budget_gib), str(n)],
        capture_output=True,
        text=True,
        check=True,
        # A fixed mmap threshold makes glibc return every freed block to the
        # system, so that the peak RSS measures live memory, not heap fragments.
        env={"OMP_NUM_THREADS": "1", "PATH": "", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["extra"]


@pytest.mark.slow
def test_blocked_path_stays_within_the_memory_budget():
    """Peak RSS of a fit and predict with a 24 MiB budget. Stated overhead: 48 MiB
    (torch's allocator, LAPACK workspaces, the data and its copies). The guarded
    object, the 6000 x 6000 float64 kernel matrix, is 275 MiB: about 4x the bound,
    so holding it (or any sizeable part of it) fails the test."""
    n = 6000
    budget, overhead = 24 * MiB, 48 * MiB
    assert n * n * 8 >= 3.8 * (budget + overhead)
    extra = _extra_memory("cg", budget / 2**30, n)
    assert extra < budget + overhead, extra / MiB
    # the negative control fails the same bound: the exact solve holds the whole
    # kernel matrix (once: it is factored in place)
    assert _extra_memory("cholesky", 1.0, n) > budget + overhead


def test_jitter_carried_between_solves_spares_the_failed_factorizations():
    from skdnc._solvers import cholesky_solve_kernel

    rng = np.random.default_rng(0)
    B = torch.tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    builds = []

    def build():  # rank 3 with rounding: not positive definite in float32
        builds.append(1)
        return B @ B.T

    Y = torch.ones(200, 1)
    state = {}
    with pytest.warns(LinAlgWarning, match="jitter"):
        first = cholesky_solve_kernel(build, Y, 0.0, state=state)
    tries_first = len(builds)
    assert tries_first >= 2 and state["jitter"] > 0
    builds.clear()
    with pytest.warns(LinAlgWarning, match="jitter"):
        second = cholesky_solve_kernel(build, Y, 0.0, state=state)
    assert len(builds) == 1  # the carried jitter works at the first try
    torch.testing.assert_close(first, second)


@pytest.mark.parametrize("spare", [0, 2**30])
def test_at_risk_solve_keeps_the_kernel_matrix_when_the_budget_allows(spare):
    """A factor whose smallest pivot sits at the diagonal shift marks the next solve
    at risk; that solve keeps its kernel matrix (when a second copy fits the spare
    memory) and retries on copies instead of rebuilding it. The answer is the solve
    with the jitter it reports (its float64 residual is small)."""
    from skdnc._solvers import cholesky_solve_kernel

    rng = np.random.default_rng(1)
    B = torch.tensor(rng.normal(size=(200, 3)), dtype=torch.float32)
    builds = []

    def build():
        builds.append(1)
        return B @ B.T

    Y = torch.tensor(rng.normal(size=(200, 2)), dtype=torch.float32)
    state = {}
    cholesky_solve_kernel(build, Y, 1e-2, state=state)  # rank 3 + ridge: succeeds
    assert state["at_risk"] and state["jitter"] == 0.0
    builds.clear()
    with pytest.warns(LinAlgWarning, match="jitter"):
        alpha = cholesky_solve_kernel(build, Y, 0.0, state=state, spare_bytes=spare)
    assert state["jitter"] > 0
    # without the spare copy, every failed try rebuilt the matrix
    assert len(builds) == 1 if spare else len(builds) >= 2
    # the float64 residual of the system it reports solving
    K = (B @ B.T).double().numpy() + state["jitter"] * np.eye(200)
    residual = K @ alpha.double().numpy() - Y.double().numpy()
    assert np.linalg.norm(residual) < 5e-2 * np.linalg.norm(Y.numpy())


def test_well_conditioned_solve_is_not_at_risk():
    from skdnc._solvers import cholesky_solve_kernel

    rng = np.random.default_rng(2)
    A = torch.tensor(rng.normal(size=(50, 50)), dtype=torch.float64)
    state = {}
    cholesky_solve_kernel(
        lambda: A @ A.T + 50 * torch.eye(50, dtype=A.dtype),
        torch.ones(50, 1, dtype=A.dtype),
        1e-3,
        state=state,
    )
    assert state == {"jitter": 0.0, "at_risk": False}


@pytest.mark.parametrize("M_kind", ["none", "diag", "full"])
def test_prediction_in_cache_sized_blocks_against_scipy(monkeypatch, M_kind):
    """``kernel_predict`` in many small blocks (a cap of 64 entries: one row of
    48 centres per block) equals ``k_M(X, C) @ alpha`` computed by SciPy in one
    piece, in float64; the centres' norms are computed once for all blocks."""
    import skdnc._backend as backend
    from skdnc._solvers import kernel_predict

    rng = np.random.default_rng(0)
    X, C = rng.normal(size=(37, 5)), rng.normal(size=(48, 5))
    alpha = rng.normal(size=(48, 2))
    A = rng.normal(size=(5, 5))
    M = {"none": None, "diag": rng.random(5) + 0.5, "full": A @ A.T / 5}[M_kind]
    if M is None:
        D = cdist(X, C)
    elif M.ndim == 1:
        D = cdist(X * np.sqrt(M), C * np.sqrt(M))
    else:
        D = cdist(X, C, "mahalanobis", VI=M)
    expected = np.exp(-D / 2.5) @ alpha
    monkeypatch.setattr(backend, "CPU_KERNEL_BLOCK_ENTRIES", 64)
    t = lambda a: None if a is None else torch.tensor(a)  # noqa: E731
    got = kernel_predict(
        t(X), t(C), t(alpha), t(M), Kernel("laplace", 2.5), budget=2**30
    )
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-12)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.integers(1, 50_000),
    st.sampled_from([torch.float32, torch.float64]),
    st.integers(2**10, 2**34),
)
def test_kernel_block_rows_on_a_cpu_stay_in_cache(n_cols, dtype, budget):
    """On a CPU a kernel block has at most ``CPU_KERNEL_BLOCK_ENTRIES`` entries
    (or one row), and two buffers of it fit the budget (or one row)."""
    from skdnc._backend import CPU_KERNEL_BLOCK_ENTRIES, kernel_block_rows

    X = torch.empty(3, 2, dtype=dtype)
    rows = kernel_block_rows(n_cols, X, budget, n_buffers=2)
    assert rows >= 1
    assert rows == 1 or rows * n_cols <= CPU_KERNEL_BLOCK_ENTRIES
    assert rows == 1 or 2 * rows * n_cols * X.element_size() <= budget
    assert rows * n_cols > CPU_KERNEL_BLOCK_ENTRIES - n_cols or (
        2 * (rows + 1) * n_cols * X.element_size() > budget
    )
