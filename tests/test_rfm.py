"""Behaviour of RFMClassifier and RFMRegressor."""

import inspect
import pickle
import warnings

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.linalg import LinAlgWarning, subspace_angles
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdnc import RFMClassifier, RFMRegressor
from skdnc._kernels import Kernel
from skdnc._rfm import _BaseRFM


def test_digits_accuracy_with_defaults(digits_split):
    X_train, X_test, y_train, y_test = digits_split
    clf = RFMClassifier(random_state=0).fit(X_train, y_train)
    assert clf.score(X_test, y_test) >= 0.985
    assert clf.M_.shape == (64, 64)
    # n_iter_ counts the rounds run on the split, best_iter_ is the chosen one.
    assert clf.history_.shape == (clf.n_iter_,)
    assert 1 <= clf.n_iter_ <= 6
    assert clf.history_[clf.best_iter_] == clf.history_.max()
    assert clf.feature_importances_.sum() == pytest.approx(1)


def _low_rank_problem(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 20))
    # The relevant subspace, the same for every seed.
    U = np.linalg.qr(np.random.default_rng(42).normal(size=(20, 2)))[0]
    Z = X @ U
    return X, np.sign(Z[:, 0] * Z[:, 1]), U


def test_feature_learning_recovers_the_relevant_subspace():
    X, y, U = _low_rank_problem(1500, 0)
    X_test, y_test, _ = _low_rank_problem(2000, 1)
    rfm = RFMClassifier(
        bandwidth=10.0, max_iter=5, validation_fraction=0, random_state=0
    )
    rfm.fit(X, y)
    evecs = np.linalg.eigh(rfm.M_)[1][:, -2:]
    cosines = np.cos(subspace_angles(evecs, U))
    assert cosines.min() > 0.95
    plain = RFMClassifier(bandwidth=10.0, max_iter=0).fit(X, y)
    err_rfm = 1 - rfm.score(X_test, y_test)
    err_plain = 1 - plain.score(X_test, y_test)
    # measured: 0.072 against 0.23
    assert err_rfm < 0.5 * err_plain, (err_rfm, err_plain)


def test_agop_method_matches_autograd_of_the_fitted_predictor():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = X[:, 0] - 2 * X[:, 1] ** 2
    reg = RFMRegressor(bandwidth=3.0, max_iter=1, validation_fraction=0).fit(X, y)
    C = torch.tensor(reg.centers_)
    M = torch.tensor(reg.M_)
    alpha = torch.tensor(reg.dual_coef_)
    X_new = rng.normal(size=(5, 4))

    def f(x):
        diff = x - torch.tensor(reg.X_offset_) - C
        dist = torch.sqrt(((diff @ M) * diff).sum(dim=1))
        return torch.exp(-dist / 3.0) @ alpha

    J = torch.stack([torch.func.jacrev(f)(x) for x in torch.tensor(X_new)])
    expected = torch.einsum("mkd,mke->de", J, J).numpy() / len(X_new)
    np.testing.assert_allclose(reg.agop(X_new), expected, rtol=1e-10, atol=1e-14)
    assert reg.agop().shape == (4, 4)


def test_predictions_match_a_float64_reference_kernel_ridge():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 3))
    y = np.sin(X).sum(axis=1)
    reg = RFMRegressor(bandwidth=2.0, reg=0.1, max_iter=0).fit(X, y)
    D = np.linalg.norm(X[:, None] - X[None], axis=2)
    alpha = np.linalg.solve(np.exp(-D / 2.0) + 0.1 * np.eye(60), y - y.mean())
    X_new = rng.normal(size=(7, 3))
    D_new = np.linalg.norm(X_new[:, None] - X[None], axis=2)
    np.testing.assert_allclose(
        reg.predict(X_new), np.exp(-D_new / 2.0) @ alpha + y.mean(), rtol=1e-10
    )


def test_float32_agrees_with_float64(digits_split):
    X_train, X_test, y_train, _ = digits_split
    kw = {"max_iter": 2, "validation_fraction": 0, "random_state": 0}
    f64 = RFMClassifier(**kw).fit(X_train, y_train)
    f32 = RFMClassifier(dtype="float32", **kw).fit(X_train, y_train)
    assert f32.M_.dtype == np.float32
    np.testing.assert_allclose(f32.M_, f64.M_, atol=2e-3)
    assert np.mean(f32.predict(X_test) == f64.predict(X_test)) > 0.99


def test_labels_of_any_type():
    X, y = load_digits(n_class=3, return_X_y=True)
    names = np.array(["zero", "one", "two"])[y]
    clf = RFMClassifier(max_iter=1, random_state=0).fit(X, names)
    assert set(clf.predict(X)) <= set(names)
    assert clf.score(X, names) > 0.95
    sparse_ints = np.array([3, 10, 42])[y]
    clf = RFMClassifier(max_iter=1, random_state=0).fit(X, sparse_ints)
    np.testing.assert_array_equal(clf.classes_, [3, 10, 42])
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1)
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], clf.predict(X))


def test_binary_problem_uses_one_output():
    X, y = load_digits(n_class=2, return_X_y=True)
    labels = np.where(y == 1, "yes", "no")
    clf = RFMClassifier(max_iter=1, random_state=0).fit(X, labels)
    assert clf.dual_coef_.shape == (len(X), 1)
    scores = clf.decision_function(X)
    assert scores.shape == (len(X),)
    np.testing.assert_array_equal(clf.predict(X), np.where(scores > 0, "yes", "no"))
    assert clf.proba_scale_ > 0
    onehot = RFMClassifier(max_iter=1, target_coding="onehot", random_state=0)
    assert onehot.fit(X, labels).score(X, labels) > 0.99


def test_validation_split_chooses_rounds_and_refits(digits_split):
    X_train, _, y_train, _ = digits_split
    clf = RFMClassifier(max_iter=3, random_state=0).fit(X_train, y_train)
    best = np.flatnonzero(clf.history_ == clf.history_.max())
    assert clf.best_iter_ in best
    assert clf.n_iter_ == len(clf.history_)
    assert clf.centers_.shape == X_train.shape  # refit on all the data
    no_val = RFMClassifier(max_iter=3, validation_fraction=0).fit(X_train, y_train)
    assert no_val.best_iter_ == 3 and no_val.n_iter_ == 4
    assert no_val.history_ is None


def test_warm_start_continues_from_M():
    X, y = load_digits(n_class=4, return_X_y=True)
    kw = {"validation_fraction": 0, "random_state": 0}
    two = RFMClassifier(max_iter=2, **kw).fit(X, y)
    warm = RFMClassifier(max_iter=1, warm_start=True, **kw).fit(X, y)
    warm.fit(X, y)
    # The rounds work with the square root of M: a warm start takes it from M_
    # ((A^(1/2))^(1/2)), two rounds in a row from the AGOP (A^(1/4)); they differ
    # by rounding in the near-null directions of M (the constant pixels).
    np.testing.assert_allclose(warm.M_, two.M_, rtol=1e-6, atol=1e-7)
    cold = RFMClassifier(max_iter=1, **kw).fit(X, y).fit(X, y)
    assert not np.allclose(cold.M_, two.M_)


def test_diag_mode_learns_a_feature_weighting():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 10))
    y = X[:, 3] ** 2 + np.sin(X[:, 7])
    reg = RFMRegressor(bandwidth=5.0, diag=True, max_iter=3, random_state=0).fit(X, y)
    assert reg.M_.shape == (10,)
    assert set(np.argsort(reg.feature_importances_)[-2:]) == {3, 7}
    assert reg.agop(X[:5]).shape == (10,)


def test_regressor_multioutput():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 5))
    Y = np.column_stack([X[:, 0], X[:, 1] * X[:, 2]])
    reg = RFMRegressor(bandwidth=5.0, max_iter=2, random_state=0).fit(X, Y)
    assert reg.predict(X).shape == (200, 2)
    assert reg.score(X, Y) > 0.9


def test_pickle_joblib_clone_round_trips(tmp_path, digits_split):
    X_train, X_test, y_train, _ = digits_split
    clf = RFMClassifier(max_iter=1, random_state=0).fit(X_train, y_train)
    expected = clf.decision_function(X_test)
    np.testing.assert_array_equal(
        pickle.loads(pickle.dumps(clf)).decision_function(X_test), expected
    )
    joblib.dump(clf, tmp_path / "rfm.joblib")
    np.testing.assert_array_equal(
        joblib.load(tmp_path / "rfm.joblib").decision_function(X_test), expected
    )
    fresh = clone(clf)
    assert fresh.get_params() == clf.get_params() and not hasattr(fresh, "M_")


def test_model_fitted_on_a_gpu_machine_predicts_on_a_cpu_only_one(monkeypatch):
    X, y = load_digits(n_class=3, return_X_y=True)
    clf = RFMClassifier(max_iter=1, device="cpu", random_state=0).fit(X, y)
    expected = clf.predict_proba(X)
    clf.device = "cuda"  # as fitted with device="cuda"; fitted state is NumPy
    loaded = pickle.loads(pickle.dumps(clf))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="not available"):
        np.testing.assert_allclose(loaded.predict_proba(X), expected)
    with pytest.raises(ValueError, match="CUDA"):
        loaded.fit(X, y)


def test_sklearn_tooling(digits_split):
    X_train, _, y_train, _ = digits_split
    X_small, y_small = X_train[:400], y_train[:400]
    pipe = make_pipeline(StandardScaler(), RFMClassifier(max_iter=1, random_state=0))
    scores = cross_val_score(pipe, X_small, y_small, cv=3)
    assert scores.mean() > 0.9
    grid = GridSearchCV(
        RFMClassifier(max_iter=1, random_state=0), {"bandwidth": [2.0, 20.0]}, cv=2
    ).fit(X_small, y_small)
    # Each grid point scored on its own: the search must find the same scores and
    # pick the better one.
    separate = {
        bw: cross_val_score(
            RFMClassifier(max_iter=1, bandwidth=bw, random_state=0),
            X_small,
            y_small,
            cv=2,
        ).mean()
        for bw in (2.0, 20.0)
    }
    assert separate[2.0] != separate[20.0]
    assert grid.best_params_["bandwidth"] == max(separate, key=separate.get)
    np.testing.assert_allclose(
        grid.cv_results_["mean_test_score"], [separate[2.0], separate[20.0]]
    )


def test_feature_names_and_set_output():
    pd = pytest.importorskip("pandas")
    X, y = load_digits(n_class=3, return_X_y=True)
    df = pd.DataFrame(X, columns=[f"px{i}" for i in range(64)])
    pipe = make_pipeline(StandardScaler(), RFMClassifier(max_iter=1, random_state=0))
    pipe.set_output(transform="pandas").fit(df, y)
    clf = pipe[-1]
    assert list(clf.feature_names_in_) == list(df.columns)
    with pytest.raises(ValueError, match="feature names"):
        RFMClassifier(max_iter=0).fit(df, y).predict(df.rename(columns=str.upper))


@pytest.mark.parametrize(
    "X, message",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0]] * 5), "NaN"),
        (np.array([[0.0, np.inf], [1.0, 2.0]] * 5), "infinity"),
        (np.empty((0, 3)), "0 sample"),
        (sp.random(10, 4, density=0.5, random_state=0, format="csr"), "Sparse"),
    ],
)
def test_bad_input_gets_clear_errors(X, message):
    y = np.arange(X.shape[0]) % 2
    with pytest.raises((ValueError, TypeError), match=message):
        RFMClassifier().fit(X, y)


def test_parameter_and_shape_errors():
    X, y = load_digits(n_class=3, return_X_y=True)
    with pytest.raises(ValueError, match="bandwidth"):
        RFMClassifier(bandwidth=0).fit(X, y)
    with pytest.raises(ValueError, match="at least 2 classes"):
        RFMClassifier().fit(X, np.zeros(len(X)))
    clf = RFMClassifier(max_iter=0).fit(X, y)
    with pytest.raises(ValueError, match="64 features"):
        clf.predict(X[:, :10])
    with pytest.raises(ValueError, match="memory budget of 104.86 KiB"):
        RFMClassifier(memory_budget=1e-4).fit(X, y)
    with pytest.raises(ValueError, match="warm_start"):
        clf.set_params(warm_start=True).fit(X[:, :10], y)


def test_ridgeless_solve_warns_on_an_ill_conditioned_kernel():
    X = np.repeat(np.random.default_rng(0).normal(size=(20, 3)), 2, axis=0)
    y = np.arange(40) % 2
    with pytest.warns(LinAlgWarning, match="reg=0"):
        clf = RFMClassifier(reg=0, max_iter=0).fit(X, y)
    assert np.isfinite(clf.dual_coef_).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RFMClassifier(reg=1e-3, max_iter=0).fit(X, y)


def test_kernel_parameter_reaches_the_kernel():
    X, y = load_digits(n_class=3, return_X_y=True)
    for name in ("gaussian", "exponential"):
        clf = RFMClassifier(
            kernel=name, bandwidth=10.0, exponent=1.5, max_iter=1, random_state=0
        )
        assert clf.fit(X, y).score(X, y) > 0.95
        assert clf._kernel() == Kernel(name, 10.0, 1.5)


def test_overflowing_inputs_are_stopped_with_the_fix():
    """The issue's reproducer: 1e155 squared overflows float64 and the fit used to
    return NaN probabilities without a word."""
    with pytest.raises(ValueError, match="squared distances overflow float64"):
        RFMClassifier(max_iter=1).fit([[1e155, 0.0], [0.0, 0.0]], [0, 1])
    X32 = np.array([[1e19, 0.0], [0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="dtype='float64'"):
        RFMRegressor(max_iter=0).fit(X32, [0.0, 1.0, 2.0])
    # The same data, rescaled, fits and predicts finite probabilities.
    X = np.array([[1e155, 0.0], [0.0, 0.0], [1e154, 1.0]]) / 1e154
    proba = RFMClassifier(max_iter=0).fit(X, [0, 1, 0]).predict_proba(X)
    assert np.isfinite(proba).all()


@pytest.mark.parametrize(
    "scale, bandwidth, match",
    [
        (1e30, 10.0, "numerically the identity"),
        (1.0, 1e-12, "numerically the identity"),
        (1.0, 1e18, "numerically all ones"),
    ],
)
def test_bandwidth_far_off_the_data_scale_warns(scale, bandwidth, match):
    X, y = load_digits(n_class=3, return_X_y=True)
    with pytest.warns(UserWarning, match=match):
        RFMClassifier(bandwidth=bandwidth, max_iter=0).fit(X * scale, y)
    # A bandwidth near the data's distances is silent (pytest errors on warnings).
    RFMClassifier(bandwidth=30.0, max_iter=0).fit(X * 1.0, y)


def test_predictions_that_overflow_raise_instead_of_nan():
    X, y = load_digits(n_class=3, return_X_y=True)
    clf = RFMClassifier(max_iter=0).fit(X, y)
    bad = X[:5].copy()
    bad[2, 0] = 1e200
    with pytest.raises(ValueError, match=r"first in row 2, after centring"):
        clf.predict_proba(bad)
    assert np.isfinite(clf.predict_proba(X[:5])).all()


def test_verbose_prints_a_line_per_round(capsys):
    X, y = load_digits(n_class=3, return_X_y=True)
    RFMClassifier(max_iter=2, verbose=1, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert "[RFMClassifier] choosing the number of AGOP updates" in out
    assert "round 0" in out and "round 1" in out and "validation score" in out
    RFMClassifier(max_iter=2, random_state=0).fit(X, y)
    assert capsys.readouterr().out == ""


_FOLDS_SCRIPT = """
import json
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_validate
from skdnc import DeepRFMTransformer, RFMClassifier

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) * 1024

X, y = load_digits(return_X_y=True)
sizes = []
for _ in range(5):
    cross_validate(RFMClassifier(max_iter=1, random_state=0), X, y, cv=2)
    DeepRFMTransformer(L=1, width=64, random_state=0).fit(X, y)
    sizes.append(rss())
print(json.dumps(sizes))
"""


def test_memory_does_not_grow_across_cv_folds():
    """Resident memory after repeated cross-validation on digits: a fold that kept
    its 900 x 900 or 1797 x 1797 kernel matrix (6 to 25 MiB) would add it each
    time, four times over; the bound is 12 MiB in all."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _FOLDS_SCRIPT],
        capture_output=True,
        text=True,
        check=True,
        env={"OMP_NUM_THREADS": "1", "PATH": "", "MALLOC_MMAP_THRESHOLD_": "65536"},
    )
    sizes = json.loads(out.stdout.strip().splitlines()[-1])
    assert sizes[-1] - sizes[0] < 12 * 2**20, np.diff(sizes) / 2**20


@pytest.mark.parametrize("Estimator", [RFMClassifier, RFMRegressor])
def test_every_shared_parameter_reaches_get_params(Estimator):
    """Each estimator's own ``__init__`` (they differ in defaults) takes every
    parameter of the shared base, so ``clone`` and ``set_params`` see them all."""
    shared = set(inspect.signature(_BaseRFM.__init__).parameters) - {"self"}
    assert shared <= set(Estimator().get_params())
    assert Estimator(distributed=False).get_params()["distributed"] is False
