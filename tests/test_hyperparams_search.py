"""The narrowed ridge search of the RFM rounds (issue 21): the whole grid in the
first round, then the previous choice and its neighbours, widened while an edge
of the window wins; each value it solves is exact, and on single-peaked
validation curves it picks what the whole grid would. Expected values come from
float64 NumPy solves and a scan of the whole grid written here."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_friedman1

from skdnc import RFMRegressor
from skdnc._kernels import Kernel
from skdnc._rfm_core import bracket_search, rfm_rounds
from skdnc._solvers import REG_GRID, prepare_kernel_machine

BUDGET = 2**30


def _round_params():
    """The ``params`` of :func:`rfm_rounds` at the estimators' defaults, with
    the ridge grid ``"auto"`` and the exact Cholesky solver."""
    return RFMRegressor(reg="auto", solver="cholesky")._round_params()


def _laplace_np(X, Z, bandwidth):
    D = np.linalg.norm(X[:, None, :] - Z[None, :, :], axis=2)
    return np.exp(-D / bandwidth)


def _r2(F, Y):
    return 1 - ((F - Y) ** 2).sum() / ((Y - Y.mean(axis=0)) ** 2).sum()


def _scorer(curve, calls):
    def score(indices):
        calls.append(list(indices))
        return [curve[i] for i in indices]

    return score


# -- bracket_search on given curves ----------------------------------------------------
def test_first_round_is_coarse_to_fine_and_takes_the_smallest_best():
    """The largest value first (the simplest model), every other value from
    the smallest, then the unscored neighbours of the best; ``stride=1``
    scores every value."""
    curve = [0.2, 0.9, 0.5, 0.9, 0.1]
    calls = []
    scores, best = bracket_search(5, _scorer(curve, calls), stride=2)
    assert calls == [[4], [0, 2], [1, 3]] and best == 1
    assert scores == {i: curve[i] for i in (4, 0, 2, 1, 3)}
    calls = []
    scores, best = bracket_search(5, _scorer(curve, calls), stride=1)
    assert calls == [[4], [0, 1, 2, 3]] and best == 1
    assert list(scores) == [4, 0, 1, 2, 3]
    calls = []
    _, best = bracket_search(1, _scorer([0.3], calls))
    assert calls == [[0]] and best == 0


def test_interior_peak_costs_three_values():
    curve = [0.1, 0.2, 0.6, 0.8, 0.7, 0.3, 0.2]
    calls = []
    scores, best = bracket_search(7, _scorer(curve, calls), start=3)
    assert calls == [[2, 3, 4]] and best == 3 and sorted(scores) == [2, 3, 4]


def test_window_widens_while_its_upper_edge_wins():
    """The peak moved from index 2 to index 6: the window [1, 3] widens one value
    at a time up to 7, where the curve falls again."""
    curve = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.65, 0.1, 0.0]
    calls = []
    scores, best = bracket_search(10, _scorer(curve, calls), start=2)
    assert calls == [[1, 2, 3], [4], [5], [6], [7]]
    assert best == 6 and sorted(scores) == [1, 2, 3, 4, 5, 6, 7]


def test_window_widens_down_to_the_grid_end():
    curve = [0.9, 0.8, 0.7, 0.6, 0.5]
    calls = []
    _, best = bracket_search(5, _scorer(curve, calls), start=3)
    assert calls == [[2, 3, 4], [1], [0]] and best == 0


def test_ties_at_the_lower_edge_widen_down():
    """A flat curve: the smallest value among ties wins, so the window widens
    down (the whole grid's choice on a plateau is its smallest value too)."""
    calls = []
    _, best = bracket_search(6, _scorer([0.5] * 6, calls), start=4)
    assert calls == [[3, 4, 5], [2], [1], [0]] and best == 0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    n=st.integers(1, 12),
    data=st.data(),
)
def test_single_peaked_curves_give_the_whole_grids_choice(n, data):
    """On any curve that rises strictly to one peak and then falls strictly, any
    start finds the peak, with at most |start - peak| + 3 values scored."""
    peak = data.draw(st.integers(0, n - 1))
    start = data.draw(st.integers(0, n - 1))
    steps = data.draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
    curve = np.zeros(n)
    for i in range(n):
        curve[i] = -sum(steps[min(i, peak) : max(i, peak)])
    assert int(np.argmax(curve)) == peak
    scores, best = bracket_search(n, lambda idx: [curve[i] for i in idx], start)
    assert best == peak
    assert len(scores) <= abs(start - peak) + 3
    assert sorted(scores) == list(range(min(scores), max(scores) + 1))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(n=st.integers(1, 16), stride=st.integers(1, 4), data=st.data())
def test_first_round_finds_the_peak_of_single_peaked_curves(n, stride, data):
    """Coarse to fine: on any curve that rises strictly to one peak and then
    falls strictly, the first round's search finds the peak, with the largest
    value scored first and at most 1 + ceil((n - 1) / stride) + stride values
    scored."""
    peak = data.draw(st.integers(0, n - 1))
    steps = data.draw(st.lists(st.floats(0.01, 1.0), min_size=n, max_size=n))
    curve = np.array(
        [-sum(steps[min(i, peak) : max(i, peak)]) for i in range(n)], dtype=float
    )
    calls = []
    scores, best = bracket_search(n, _scorer(curve, calls), stride=stride)
    assert best == int(np.argmax(curve)) == peak
    assert calls[0] == [n - 1]
    assert len(scores) <= 1 + -(-(n - 1) // stride) + stride
    assert len(scores) == len(set(scores))


# -- the rounds against the whole grid, in NumPy float64 -------------------------------
@pytest.fixture(scope="module")
def rounds_problem():
    X, y = make_friedman1(n_samples=260, noise=3.0, random_state=0)
    X = X - X.mean(axis=0)
    y = (y - y.mean())[:, None]
    return X[:200], y[:200], X[200:], y[200:]


def test_rounds_choose_the_whole_grids_best_each_round(rounds_problem):
    """Each round's chosen ridge is the argmax of the whole grid's validation
    R^2, computed here for every value by np.linalg.solve on the round's metric
    (the curves are single-peaked here, so the narrowed search must agree); the
    values it skipped are None in the path, and from the second round on it
    solves a window of consecutive values around its choice."""
    X, Y, Xv, Yv = rounds_problem
    bandwidth = 4.0
    Xv_t = torch.tensor(Xv)

    def evaluate(predict):
        return (_r2(predict(Xv_t).numpy(), Yv),)

    params = _round_params()
    metrics, path = [], []
    rfm_rounds(
        torch.tensor(X),
        torch.tensor(Y),
        None,
        Kernel("laplace", bandwidth),
        4,
        params=params,
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
        evaluate=evaluate,
        metrics=metrics,
        path=path,
    )
    assert len(path) == 5
    widened = False
    for t, ((_, S), entry) in enumerate(zip(metrics, path, strict=True)):
        S = np.eye(X.shape[1]) if S is None else S.numpy()
        XS, XvS = X @ S, Xv @ S
        K = _laplace_np(XS, XS, bandwidth)
        Kv = _laplace_np(XvS, XS, bandwidth)
        full = np.array(
            [
                _r2(Kv @ np.linalg.solve(K + mu * np.eye(len(K)), Y), Yv)
                for mu in REG_GRID
            ]
        )
        peak = int(np.argmax(full))
        rising, falling = np.diff(full[: peak + 1]), np.diff(full[peak:])
        assert (rising > 0).all() and (falling < 0).all(), f"round {t}: {full}"
        assert entry["reg"] == REG_GRID[peak]
        tried = [i for i, s in enumerate(entry["scores"]) if s is not None]
        for i in tried:  # every value solved is the float64 solve's score
            assert entry["scores"][i][0] == pytest.approx(full[i], abs=1e-9)
        if t == 0:  # coarse to fine: the largest value, every other one, ...
            assert entry["solved"][0] == len(REG_GRID) - 1
            assert set(range(0, len(REG_GRID), 2)) <= set(tried)
            assert len(tried) < len(REG_GRID)
        else:
            assert tried == list(range(tried[0], tried[-1] + 1))
            assert len(tried) < len(REG_GRID)
            previous = REG_GRID.index(path[t - 1]["reg"])
            widened |= not (previous - 1 <= tried[0] and tried[-1] <= previous + 1)
    assert widened, "no round widened its window: the case tests less than it says"


def test_prepared_solves_are_exact_for_every_value_and_call(rounds_problem):
    """Exact and Nystrom preparations: values asked for in separate calls equal
    float64 NumPy solves of (K + mu I) and of (K_nm' K_nm + mu K_mm)."""
    X, Y, _, _ = rounds_problem
    Xt, Yt = torch.tensor(X), torch.tensor(Y)
    kernel = Kernel("laplace", 3.0)
    K = _laplace_np(X, X, 3.0)
    centres, solve = prepare_kernel_machine(
        Xt, Yt, None, kernel, n_values=3, solver="cholesky", budget=BUDGET
    )
    assert centres is None
    for regs in ([1e-3, 0.1], [10.0]):
        for mu, alpha in zip(regs, solve(regs), strict=True):
            ref = np.linalg.solve(K + mu * np.eye(len(K)), Y)
            np.testing.assert_allclose(alpha.numpy(), ref, atol=1e-9 * abs(ref).max())
    centres, solve = prepare_kernel_machine(
        Xt,
        Yt,
        None,
        kernel,
        n_values=3,
        n_centers=50,
        solver="nystrom",
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
    )
    c = centres.numpy()
    K_nm, K_mm = K[:, c], K[np.ix_(c, c)]
    for regs in ([1e-3, 0.1], [10.0]):
        for mu, beta in zip(regs, solve(regs), strict=True):
            ref = np.linalg.solve(K_nm.T @ K_nm + mu * K_mm, K_nm.T @ Y)
            np.testing.assert_allclose(
                beta.numpy(), ref, rtol=1e-6, atol=1e-8 * abs(ref).max()
            )


def test_estimator_curve_marks_skipped_values(rounds_problem):
    X, Y, _, _ = rounds_problem
    est = RFMRegressor(max_iter=3, n_iter_no_change=None, random_state=0)
    est.fit(X, Y[:, 0])
    curve = est.validation_curve_
    assert curve.shape == (4, len(REG_GRID))
    assert np.isfinite(curve[0, ::2]).all()  # the first round's coarse values
    assert np.isnan(curve).any(axis=1).all()
    np.testing.assert_array_equal(np.nanmax(curve, axis=1), est.history_)


# -- K-fold cross-validation (cv) against NumPy float64 --------------------------------
def test_folds_score_the_pooled_out_of_fold_r2(rounds_problem):
    """With ``folds``, every ridge value the first round tries is solved by
    every fold and scored once, on the folds' validation outputs pooled: each
    score equals the R^2 of the out-of-fold predictions computed here by
    np.linalg.solve per fold, and the choice is the whole grid's best."""
    X, Y, _, _ = rounds_problem
    bandwidth = 4.0
    test_fold = np.arange(len(X)) % 3
    folds = [
        (np.flatnonzero(test_fold != k), np.flatnonzero(test_fold == k))
        for k in range(3)
    ]
    Y_val = Y[np.concatenate([v for _, v in folds])]
    seen = []

    def evaluate(F):
        seen.append(F.shape)
        return (_r2(F.numpy(), Y_val),)

    params = _round_params()
    path = []
    rfm_rounds(
        torch.tensor(X),
        torch.tensor(Y),
        None,
        Kernel("laplace", bandwidth),
        0,
        params=params,
        budget=BUDGET,
        generator=torch.Generator().manual_seed(0),
        evaluate=evaluate,
        path=path,
        folds=[(torch.tensor(f), torch.tensor(v)) for f, v in folds],
    )
    full = []
    for mu in REG_GRID:
        F = [
            _laplace_np(X[v], X[f], bandwidth)
            @ np.linalg.solve(
                _laplace_np(X[f], X[f], bandwidth) + mu * np.eye(len(f)), Y[f]
            )
            for f, v in folds
        ]
        full.append(_r2(np.concatenate(F), Y_val))
    tried = [i for i, s in enumerate(path[0]["scores"]) if s is not None]
    assert len(seen) == len(tried) and all(shape == Y.shape for shape in seen)
    for i in tried:
        assert path[0]["scores"][i][0] == pytest.approx(full[i], abs=1e-9)
    assert path[0]["reg"] == REG_GRID[int(np.argmax(full))]


def test_classifier_cv_against_numpy(monkeypatch):
    """RFMClassifier(cv=3) with no AGOP update, on folds the test fixes: the
    first round's curve is the out-of-fold R^2 of the class codes computed here
    per fold by np.linalg.solve, the ridge is its best (a clear signal: the
    one-standard-error rule keeps the best), and the final model is the solve
    on all the points at that ridge."""
    from sklearn.model_selection import PredefinedSplit

    from skdnc import RFMClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 3))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 + 0.3 * rng.normal(size=150) > 0.5).astype(int)
    test_fold = np.arange(150) % 3
    monkeypatch.setattr(
        RFMClassifier, "_kfold", lambda self, k, y: PredefinedSplit(test_fold)
    )
    regs = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
    bw = 2.0
    est = RFMClassifier(cv=3, max_iter=0, reg=regs, bandwidth=bw, random_state=0)
    est.fit(X, y)
    codes = np.where(y == 1, 1.0, -1.0)[:, None]
    intercept = codes.mean()
    Yc = codes - intercept
    folds = [
        (np.flatnonzero(test_fold != k), np.flatnonzero(test_fold == k))
        for k in range(3)
    ]
    pooled = codes[np.concatenate([v for _, v in folds])]
    curve = []
    for mu in regs:
        F = [
            _laplace_np(X[v], X[f], bw)
            @ np.linalg.solve(_laplace_np(X[f], X[f], bw) + mu * np.eye(len(f)), Yc[f])
            + intercept
            for f, v in folds
        ]
        curve.append(_r2(np.concatenate(F), pooled))
    got = est.validation_curve_[0]
    finite = np.isfinite(got)
    np.testing.assert_allclose(got[finite], np.array(curve)[finite], atol=1e-9)
    assert est.reg_ == regs[int(np.argmax(curve))] < max(regs)
    X_new = rng.normal(size=(20, 3))
    alpha = np.linalg.solve(_laplace_np(X, X, bw) + est.reg_ * np.eye(150), Yc)
    expected = _laplace_np(X_new, X, bw) @ alpha + intercept
    np.testing.assert_allclose(est.decision_function(X_new), expected[:, 0], atol=1e-8)


@pytest.mark.parametrize(
    ("params", "y", "match"),
    [
        ({"cv": 1}, np.arange(40) % 2, "'cv' parameter"),
        ({"cv": 2.5}, np.arange(40) % 2, "'cv' parameter"),
        ({"cv": "5"}, np.arange(40) % 2, "'cv' parameter"),
        ({"cv": 5}, np.r_[np.zeros(37), np.ones(3)], "cv=5 needs at least 5 samples"),
    ],
)
def test_cv_is_validated(params, y, match):
    from skdnc import RFMClassifier

    X = np.random.default_rng(0).normal(size=(40, 2))
    with pytest.raises(ValueError, match=match):
        RFMClassifier(max_iter=1, **params).fit(X, y)
    with pytest.raises(ValueError, match="cv=3 needs at least 6 samples"):
        RFMRegressor(cv=3).fit(X[:5], np.arange(5.0))


@settings(derandomize=True, max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    cv=st.integers(2, 4),
    max_iter=st.integers(0, 2),
    regressor=st.booleans(),
)
def test_cv_fits_property(seed, cv, max_iter, regressor):
    """Any number of folds: the rounds run on the pooled folds (one score per
    round), the chosen round is among them, and the predictions are the
    shapes and labels of the targets."""
    from skdnc import RFMClassifier

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(48, 3))
    target = np.sin(2 * X[:, 0]) + 0.3 * rng.normal(size=48)
    Est = RFMRegressor if regressor else RFMClassifier
    y = target if regressor else np.where(target > 0, "a", "b")
    est = Est(cv=cv, max_iter=max_iter, random_state=seed).fit(X, y)
    assert 1 <= est.n_iter_ <= max_iter + 1
    assert 0 <= est.best_iter_ < est.n_iter_
    assert est.history_.shape == (est.n_iter_,)
    assert est.validation_curve_.shape == (est.n_iter_, len(REG_GRID))
    pred = est.predict(X)
    assert pred.shape == (48,)
    if not regressor:
        assert set(pred) <= {"a", "b"}
    again = Est(cv=cv, max_iter=max_iter, random_state=seed).fit(X, y)
    np.testing.assert_array_equal(again.predict(X), pred)
