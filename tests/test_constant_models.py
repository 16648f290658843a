"""No silent constant models: a kernel that is numerically constant or the
identity on its own training data, or targets whose squares overflow, give an
error or a warning that names the cause (the scale of X or y, the bandwidth), on
every solver. Reproducers of issue 25 (class 2) and properties over scale."""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from skdnc import DeepRFMTransformer, RFMClassifier, RFMRegressor
from skdnc._rfm import target_scale

SOLVERS = ("auto", "cholesky", "cg")
FEW = settings(max_examples=25, deadline=None, derandomize=True)


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:200] / 16, y[:200]


def _regression_data(n=120):
    """A smooth target of the digits: its R^2 at scale 1 is near 1."""
    X, _ = load_digits(return_X_y=True)
    X = X[:n] / 16
    w = np.random.default_rng(0).normal(size=X.shape[1])
    return X, np.tanh(X @ w / 4)


def _r2(pred, y):
    """R^2 computed after dividing by max|y| (its squares never overflow)."""
    s = np.abs(y).max()
    pred, y = pred / s, y / s
    return 1 - np.sum((pred - y) ** 2) / np.sum((y - y.mean()) ** 2)


# -- the reproducers ------------------------------------------------------------------
@pytest.mark.parametrize("bandwidth", [10.0, "auto"])
@pytest.mark.parametrize("solver", SOLVERS)
def test_tiny_X_is_an_error_naming_its_scale(digits, bandwidth, solver):
    X, y = digits
    clf = RFMClassifier(max_iter=1, bandwidth=bandwidth, solver=solver)
    with pytest.raises(ValueError, match="X's distances .* square to below") as err:
        clf.fit(X * 1e-200, y)
    assert "Standardise X" in str(err.value)


def test_tiny_X_in_float32_is_an_error_suggesting_float64(digits):
    X, y = digits
    with pytest.raises(ValueError, match="compute in float64"):
        RFMClassifier(max_iter=0).fit((X * 1e-20).astype(np.float32), y)
    # The same data in float64 fit, and as accurately as at scale 1.
    clf = RFMClassifier(max_iter=0, bandwidth="auto").fit(X * 1e-20, y)
    assert clf.score(X * 1e-20, y) == 1.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_a_bandwidth_the_ridge_swamps_warns(digits, solver):
    X, y = digits
    clf = RFMClassifier(max_iter=1, bandwidth=1e12, solver=solver)
    with pytest.warns(UserWarning, match="The ridge swamps the kernel") as record:
        clf.fit(X, y)
    assert "bandwidth=1e+12" in str(record[0].message)
    # ... and so does one of the regressor.
    with pytest.warns(UserWarning, match="The ridge swamps the kernel"):
        RFMRegressor(max_iter=0, bandwidth=1e12, solver=solver).fit(X, y * 1.0)
    # Lowering reg enough, or a bandwidth near the distances, is silent (warnings
    # are errors in the test suite) and accurate.
    assert (
        RFMClassifier(max_iter=0, bandwidth=1e4, reg=1e-4).fit(X, y).score(X, y) > 0.9
    )
    assert RFMClassifier(max_iter=0, bandwidth=10.0).fit(X, y).score(X, y) == 1.0


@pytest.mark.parametrize("kernel", ["laplace", "gaussian", "exponential"])
def test_a_bandwidth_whose_inverse_overflows_is_an_error(digits, kernel):
    X, y = digits
    clf = RFMClassifier(max_iter=1, bandwidth=1e-320, kernel=kernel, exponent=1.5)
    with pytest.raises(ValueError, match="bandwidth=1e-320: its inverse overflows"):
        clf.fit(X, y)


@pytest.mark.parametrize("solver", SOLVERS)
def test_targets_whose_squares_overflow_are_an_error(digits, solver):
    X, y = digits
    reg = RFMRegressor(max_iter=1, solver=solver)
    with pytest.raises(ValueError, match="y holds values up to .* Standardise y"):
        reg.fit(X, y * 1e155)


@pytest.mark.parametrize("solver", SOLVERS)
def test_targets_at_extreme_scales_fit_as_at_scale_1(solver):
    """A power-of-two scale gives the fit at scale 1 to round-off; a decimal one
    rounds the targets (1e-16), which the ridge solve may amplify."""
    X, y = _regression_data()
    base = RFMRegressor(max_iter=1, solver=solver, random_state=0).fit(X, y)
    for scale, tol in ((2.0**-1000, 1e-12), (2.0**500, 1e-12), (1e-300, 1e-6)):
        model = RFMRegressor(max_iter=1, solver=solver, random_state=0)
        model.fit(X, y * scale)
        np.testing.assert_allclose(
            model.predict(X) / scale, base.predict(X), rtol=10 * tol, atol=0
        )
        # M_ has a largest entry of 1.
        np.testing.assert_allclose(model.M_, base.M_, rtol=0, atol=10 * tol)
        assert model.reg_ == base.reg_


def test_target_scale_is_a_power_of_two_and_checks_overflow():
    assert target_scale(np.array([[0.75], [-0.5]]), np.float64) == 1.0
    assert target_scale(np.array([[3e-300]]), np.float64) == 2.0 ** round(
        math.log2(3e-300)
    )
    assert target_scale(np.array([[3e100]]), np.float64, exact=True) == 1.0
    with pytest.raises(ValueError, match="compute in float64"):
        target_scale(np.array([[1e20]]), np.float32)
    assert target_scale(np.zeros((3, 1)), np.float64) == 1.0


def test_deep_rfm_tiny_inputs_are_an_error(digits):
    X, y = digits
    deep = DeepRFMTransformer(L=1, width=32, normalize=None, random_state=0)
    with pytest.raises(ValueError, match="X's distances"):
        deep.fit(X * 1e-200, y)


# -- properties over scale ------------------------------------------------------------
def _fit_outcome(estimator, X, y):
    """``("error", message)``, ``("warning", messages)`` or ``("fit", model)``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model = estimator.fit(X, y)
        except ValueError as exc:
            return "error", str(exc)
    messages = [str(w.message) for w in caught]
    if messages:
        return "warning", messages
    return "fit", model


@FEW
@given(
    exponent=st.integers(-300, 300),
    bandwidth=st.sampled_from([10.0, "auto"]),
    solver=st.sampled_from(SOLVERS),
)
def test_classifier_over_scales_of_X_is_accurate_or_says_why(
    exponent, bandwidth, solver
):
    X, y = load_digits(return_X_y=True)
    X, y = X[:150] / 16, y[:150]
    scale = 10.0**exponent
    clf = RFMClassifier(max_iter=1, bandwidth=bandwidth, solver=solver, random_state=0)
    kind, value = _fit_outcome(clf, X * scale, y)
    if kind == "error":
        assert "X" in value and ("Standardise X" in value or "bandwidth" in value)
    elif kind == "warning":
        assert all("bandwidth=" in m for m in value), value
    else:
        assert value.score(X * scale, y) >= 0.9
    if bandwidth == "auto" and abs(exponent) <= 140:
        assert kind == "fit"  # the bandwidth follows the scale: nothing to say


@FEW
@given(
    x_exponent=st.integers(-300, 300),
    y_exponent=st.integers(-300, 300),
    solver=st.sampled_from(SOLVERS),
)
def test_regressor_over_scales_of_X_and_y_is_accurate_or_says_why(
    x_exponent, y_exponent, solver
):
    X, y = _regression_data(100)
    x_scale, y_scale = 10.0**x_exponent, 10.0**y_exponent
    model = RFMRegressor(max_iter=1, bandwidth="auto", solver=solver, random_state=0)
    kind, value = _fit_outcome(model, X * x_scale, y * y_scale)
    if kind == "error":
        assert ("Standardise X" in value) or ("Standardise y" in value), value
        if "Standardise y" in value:
            assert abs(y_exponent) > 150
    else:
        assert kind == "fit", value
        assert _r2(value.predict(X * x_scale), y * y_scale) >= 0.9
    if abs(x_exponent) <= 140 and abs(y_exponent) <= 150:
        assert kind == "fit"


@FEW
@given(exponent=st.integers(-38, 38), bandwidth=st.sampled_from([10.0, "auto"]))
def test_float32_classifier_over_scales_is_accurate_or_says_why(exponent, bandwidth):
    X, y = load_digits(return_X_y=True)
    X, y = X[:150] / 16, y[:150]
    X32 = (X * 10.0**exponent).astype(np.float32)
    clf = RFMClassifier(max_iter=0, bandwidth=bandwidth, random_state=0)
    kind, value = _fit_outcome(clf, X32, y)
    if kind == "error":
        assert "float64" in value
    elif kind == "warning":
        assert all("bandwidth=" in m for m in value), value
    else:
        assert value.score(X32, y) >= 0.9
