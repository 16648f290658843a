"""The fast paths of issue 13 against independent computations: precision
follows the input, the refit policies, early stopping, the symmetric kernel
build and the AGOP in the coordinates of the metric's square root."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    RFMClassifier,
    RFMRegressor,
)
from skdnc._backend import resolve_dtype
from skdnc._kernels import Kernel, kernel_matrix, training_kernel_matrix
from skdnc._rfm_core import (
    _metric_and_root,
    no_improvement,
    refit_rounds,
    rfm_rounds,
)

BUDGET = 2**30
L_BW, REG, POWER = 4.0, 1e-3, 0.5


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(n_class=4, return_X_y=True)
    return X[:240] / 16, y[:240]


# -- precision follows the input ------------------------------------------------------
ESTIMATORS = [
    RFMClassifier(max_iter=1, random_state=0),
    RFMRegressor(max_iter=1, random_state=0),
    DeepRFMTransformer(L=2, width=32, random_state=0),
]


def _fitted_float_arrays(est):
    if isinstance(est, DeepRFMTransformer):
        return est.agop_powers_ + est.weights_
    return [est.M_, est.dual_coef_, est.centers_, est.X_offset_]


def _outputs(est, X):
    if isinstance(est, RFMClassifier):
        return [est.decision_function(X)]
    if isinstance(est, RFMRegressor):
        return [est.predict(X)]
    return [est.transform(X)]


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_precision_is_computed_and_returned(est, dtype, digits):
    X, y = digits
    Xd = X.astype(dtype)
    est = est.fit(Xd, y)
    for A in _fitted_float_arrays(est):
        assert A.dtype == dtype
    for out in _outputs(est, Xd):
        assert out.dtype == dtype


@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_dtype_parameter_still_forces_the_precision(est, digits):
    X, y = digits
    est = est.set_params(dtype="float64").fit(X.astype(np.float32), y)
    for A in _fitted_float_arrays(est):
        assert A.dtype == np.float64
    # The output keeps the input's dtype, computed in float64.
    assert _outputs(est, X.astype(np.float32))[0].dtype == np.float32


def test_float32_and_float64_fits_agree(digits):
    X, y = digits
    a = RFMClassifier(max_iter=2, random_state=0).fit(X.astype(np.float32), y)
    b = RFMClassifier(max_iter=2, random_state=0).fit(X, y)
    assert a.n_iter_ == b.n_iter_
    np.testing.assert_allclose(a.M_, b.M_, atol=2e-4)
    assert np.mean(a.predict(X) == b.predict(X)) == 1.0


def test_integer_input_is_computed_in_float64(digits):
    X, y = digits
    clf = RFMClassifier(max_iter=1, random_state=0).fit((X * 16).astype(int), y)
    assert clf.M_.dtype == np.float64


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scorer_passthrough_keeps_the_dtype(dtype, digits):
    X, y = digits
    out = NeuralCollapseScorer().fit(X.astype(dtype), y).transform(X.astype(dtype))
    assert out.dtype == dtype


def test_resolve_dtype():
    assert resolve_dtype(None, like=np.zeros(2, np.float32)) == torch.float32
    assert resolve_dtype(None, like=np.zeros(2, int)) == torch.float64
    assert resolve_dtype("float32", like=np.zeros(2)) == torch.float32
    with pytest.raises(ValueError, match="dtype must be None or one of"):
        resolve_dtype("float16")


# -- an independent float64 NumPy RFM ----------------------------------------------
def _np_kernel(A, B, M):
    diff = A[:, None, :] - B[None, :, :]
    dist = np.sqrt(np.maximum(np.einsum("ijk,kl,ijl->ij", diff, M, diff), 0))
    return np.exp(-dist / L_BW), dist, diff


def _np_solve(X, Y, M):
    K, _, _ = _np_kernel(X, X, M)
    return np.linalg.solve(K + REG * np.eye(len(X)), Y)


def _np_next_metric(X, alpha, M):
    """The AGOP at every training point by explicit per-pair gradients (self-pairs
    dropped), divided by its largest entry, raised to POWER."""
    K, dist, diff = _np_kernel(X, X, M)
    with np.errstate(divide="ignore", invalid="ignore"):
        W = np.where(dist > 0, K / (L_BW * dist), 0.0)
    np.fill_diagonal(W, 0.0)
    # grad_x_i f_c = sum_j alpha_jc W_ij M (x_j - x_i) = -M sum_j ... diff_ij
    G = -np.einsum("ij,jc,ijk->ick", W, alpha, diff) @ M
    A = np.einsum("ick,icl->kl", G, G) / len(X)
    A /= np.max(np.diag(A))
    w, V = np.linalg.eigh(A)
    return (V * np.clip(w, 0, None) ** POWER) @ V.T


def _params():
    return RFMRegressor(reg=REG, agop_power=POWER, solver="cholesky")._round_params()


def _np_rounds(X, Y, M, t):
    for _ in range(t):
        M = _np_next_metric(X, _np_solve(X, Y, M), M)
    return M, _np_solve(X, Y, M)


def _sqrt(M):
    w, V = np.linalg.eigh(M)
    return (V * np.sqrt(np.clip(w, 0, None))) @ V.T


@pytest.fixture(scope="module")
def small_problem():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    Y = np.column_stack([np.sign(X[:, 0] * X[:, 1]), np.tanh(X[:, 2])])
    return X, Y


@pytest.mark.parametrize("policy", ["solve", "warm", "rounds"])
def test_refit_policies_against_numpy(policy, small_problem):
    X, Y = small_problem
    part = slice(0, 45)  # the "split" the metrics were learned on
    t = 2
    metrics = [np.eye(4)]
    for _ in range(t):
        M = metrics[-1]
        metrics.append(_np_next_metric(X[part], _np_solve(X[part], Y[part], M), M))
    T = [(torch.tensor(M), torch.tensor(_sqrt(M))) for M in metrics]
    M, alpha = refit_rounds(
        policy,
        torch.tensor(X),
        torch.tensor(Y),
        T,
        t,
        Kernel("laplace", L_BW),
        params=_params(),
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
    )
    if policy == "solve":
        M_ref, alpha_ref = metrics[t], _np_solve(X, Y, metrics[t])
    elif policy == "warm":
        M_ref, alpha_ref = _np_rounds(X, Y, metrics[t - 1], 1)
    else:
        M_ref, alpha_ref = _np_rounds(X, Y, np.eye(4), t)
    np.testing.assert_allclose(M.numpy(), M_ref, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(alpha.numpy(), alpha_ref, rtol=1e-6, atol=1e-8)


def test_policies_differ(small_problem):
    X, Y = small_problem
    metrics = [np.eye(4)]
    metrics.append(
        _np_next_metric(X[:45], _np_solve(X[:45], Y[:45], metrics[0]), metrics[0])
    )
    T = [(torch.tensor(M), torch.tensor(_sqrt(M))) for M in metrics]
    out = {
        p: refit_rounds(
            p,
            torch.tensor(X),
            torch.tensor(Y),
            T,
            1,
            Kernel("laplace", L_BW),
            params=_params(),
            budget=BUDGET,
            generator=torch.Generator(),
        )[0]
        for p in ("solve", "rounds")
    }
    assert not torch.allclose(out["solve"], out["rounds"], atol=1e-4)


@pytest.mark.parametrize("refit", ["solve", "warm", "rounds"])
def test_estimator_final_solve_uses_its_metric(refit, digits):
    """Whatever the policy, dual_coef_ solves the ridge system of M_ on all the
    (centred) training data, for the codes less their training mean (the class
    prior, ``intercept_``): checked with NumPy in float64."""
    X, y = digits
    X = X[:, ::4]  # 16 features keep the NumPy reference small
    clf = RFMClassifier(
        bandwidth=L_BW, reg=REG, max_iter=2, refit=refit, random_state=0
    )
    clf.fit(X, y)
    Y = np.where(np.eye(4)[y] > 0, 1.0, -1.0)
    np.testing.assert_allclose(clf.intercept_, Y.mean(axis=0), rtol=0, atol=1e-12)
    alpha = _np_solve(clf.centers_, Y - Y.mean(axis=0), clf.M_)
    np.testing.assert_allclose(clf.dual_coef_, alpha, rtol=1e-6, atol=1e-6)


def test_refit_rejects_unknown_policy(small_problem):
    X, Y = small_problem
    with pytest.raises(ValueError, match="refit must be one of"):
        refit_rounds(
            "again",
            torch.tensor(X),
            torch.tensor(Y),
            [(None, None)],
            0,
            Kernel(),
            params=_params(),
            budget=BUDGET,
            generator=torch.Generator(),
        )
    with pytest.raises(ValueError, match="'refit' parameter"):
        RFMClassifier(refit="again").fit(X, Y[:, 0] > 0)


# -- early stopping -----------------------------------------------------------------
def _scripted_rounds(X, Y, scores, n_iter_no_change, tol=1e-4):
    it = iter(scores)
    return rfm_rounds(
        torch.tensor(X),
        torch.tensor(Y),
        None,
        Kernel("laplace", L_BW),
        len(scores) - 1,
        params=_params(),
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
        evaluate=lambda predict: (next(it),),
        n_iter_no_change=n_iter_no_change,
        tol=tol,
    )[2]


def test_early_stopping_stops_on_a_flat_history(small_problem):
    X, Y = small_problem
    measured = _scripted_rounds(X, Y, [0.8, 0.9, 0.9, 0.9, 0.9, 0.9], 2)
    assert [s[0] for s in measured] == [0.8, 0.9, 0.9, 0.9]


def test_early_stopping_runs_on_while_rising(small_problem):
    X, Y = small_problem
    rising = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert len(_scripted_rounds(X, Y, rising, 2)) == 6
    assert len(_scripted_rounds(X, Y, [0.9] * 6, None)) == 6


def test_early_stopping_tolerance(small_problem):
    X, Y = small_problem
    creeping = [0.9, 0.90001, 0.90002, 0.90003, 0.90004, 0.90005]
    assert len(_scripted_rounds(X, Y, creeping, 2, tol=1e-3)) == 3
    assert len(_scripted_rounds(X, Y, creeping, 2, tol=0.0)) == 6


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(0, 1), min_size=1, max_size=8),
    st.integers(1, 4),
    st.floats(0, 0.1),
)
def test_no_improvement_definition(values, patience, tol):
    scores = [(v,) for v in values]
    stop = no_improvement(scores, patience, tol)
    if len(values) <= patience:
        assert not stop
    else:
        best_before = max(values[:-patience])
        assert stop == all(v <= best_before + tol for v in values[-patience:])


def test_estimator_history_keeps_what_was_measured():
    # Separable from the start: the validation R^2 of the codes is close to 1
    # in every round, and early stopping ends the rounds before max_iter.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    y = (X[:, 0] > 0).astype(int)
    X[:, 0] += np.where(y == 1, 3.0, -3.0)
    stopped = RFMClassifier(max_iter=5, random_state=0).fit(X, y)
    history = stopped.history_
    assert history.shape == (stopped.n_iter_,) and stopped.n_iter_ < 6
    assert np.all(history > 0.99) and np.all(history <= 1.0)
    np.testing.assert_array_equal(history, np.nanmax(stopped.validation_curve_, axis=1))
    full = RFMClassifier(max_iter=5, n_iter_no_change=None, random_state=0)
    assert full.fit(X, y).history_.shape == (6,)


# -- kernel build and AGOP paths ------------------------------------------------------
@pytest.mark.parametrize("name", ["laplace", "gaussian", "exponential"])
@pytest.mark.parametrize("metric", ["full", "diag", "identity"])
def test_training_kernel_matrix_matches_the_general_one(name, metric):
    g = torch.Generator().manual_seed(1)
    X = torch.randn(300, 6, generator=g, dtype=torch.float64)
    M = {
        "full": torch.eye(6, dtype=torch.float64) + 0.1,
        "diag": torch.rand(6, generator=g, dtype=torch.float64) + 0.5,
        "identity": None,
    }[metric]
    kernel = Kernel(name, 3.0, 1.4)
    full = kernel_matrix(X, X, M, kernel, self_offset=0)
    built = training_kernel_matrix(X, M, kernel, block_size=70)
    torch.testing.assert_close(built, full, rtol=1e-12, atol=1e-12)
    lower = training_kernel_matrix(X, M, kernel, triangle="lower", block_size=70)
    torch.testing.assert_close(lower.tril(), full.tril(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("diag", [False, True])
def test_agop_in_root_coordinates_matches_autograd(diag):
    """The rounds' AGOP, taken on X S, equals the autograd AGOP of the predictor
    with M = S S, normalised and raised to the power; so does its root."""
    g = torch.Generator().manual_seed(3)
    n, d = 40, 5
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    alpha = torch.randn(n, 2, generator=g, dtype=torch.float64)
    if diag:
        S = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
        M = torch.diag(S * S)
    else:
        B = torch.randn(d, d, generator=g, dtype=torch.float64)
        M = B @ B.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
        w, V = torch.linalg.eigh(M)
        S = (V * w.sqrt()) @ V.T
    kernel = Kernel("laplace", 3.0)

    def f(x, skip):
        diff = x[None, :] - X
        keep = torch.arange(n) != skip
        dist = torch.sqrt(((diff[keep] @ M) * diff[keep]).sum(dim=1))
        return torch.exp(-dist / 3.0) @ alpha[keep]

    A = torch.zeros(d, d, dtype=torch.float64)
    for i in range(n):
        J = torch.func.jacrev(lambda x, i=i: f(x, i))(X[i])
        A += J.T @ J
    A /= n
    if diag:
        A = torch.diag(torch.diagonal(A))
    A /= torch.diagonal(A).max()
    w, V = torch.linalg.eigh(A)
    expected = (V * w.clamp(min=0).pow(POWER)) @ V.T
    root_expected = (V * w.clamp(min=0).pow(POWER / 2)) @ V.T
    params = {**_params(), "diag": diag}
    M_next, S_next = _metric_and_root(
        X * S if diag else X @ S,
        alpha,
        S,
        kernel,
        params=params,
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
    )
    if diag:
        expected, root_expected = (
            torch.diagonal(expected),
            torch.diagonal(root_expected),
        )
    torch.testing.assert_close(M_next, expected, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(S_next, root_expected, rtol=1e-9, atol=1e-11)


def test_default_number_of_agop_points():
    from skdnc._agop import sample_points

    g = torch.Generator().manual_seed(0)
    assert len(sample_points(5000, None, g, 784)) == 500_000 // 784
    assert len(sample_points(5000, None, g, 64)) == 5000  # all of them
    assert len(sample_points(50_000, None, g, 4096)) == 500
    assert len(sample_points(50_000, None, g, 10)) == 20_000


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    st.lists(st.floats(0, 0.5), min_size=2, max_size=8),
    st.integers(1, 3),
    st.floats(0.001, 0.2),
    st.sampled_from([0.01, 0.1, 10.0]),
)
def test_relative_no_improvement_is_scale_free(errors, patience, tol, c):
    """``relative=True`` measures an improvement against the error ``1 - score``
    left: multiplying every error by ``c`` changes no decision, and a round
    counts exactly when it removes more than ``tol`` of the best's error."""
    as_scores = lambda e: [(1.0 - x,) for x in e]  # noqa: E731
    stop = no_improvement(as_scores(errors), patience, tol, relative=True)
    scaled = [c * x for x in errors]
    assert no_improvement(as_scores(scaled), patience, tol, relative=True) == stop
    if len(errors) > patience:
        best = min(errors[:-patience])
        cut = [best - e for e in errors[-patience:]]
        assert stop == all(g <= tol * best * (1 + 1e-12) + 1e-15 for g in cut)


def test_relative_tolerance_goes_on_where_the_absolute_one_stops():
    """At R^2 0.99 a round that removes 5% of the error left is 5e-4: below an
    absolute 3e-3, above a relative 3%."""
    scores = [(0.98,), (0.99,), (0.9905,)]
    assert no_improvement(scores, 1, 3e-3)
    assert not no_improvement(scores, 1, 0.03, relative=True)
    assert no_improvement(scores + [(0.99052,)], 1, 0.03, relative=True)
