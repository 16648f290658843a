"""scikit-learn's common estimator checks for every skdnc estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdnc import RFMClassifier, RFMRegressor

ESTIMATORS = [
    RFMClassifier(n_iter=2, random_state=0),
    RFMRegressor(n_iter=2, random_state=0),
    RFMClassifier(n_iter=1, diag=True, kernel="gaussian", random_state=0),
    RFMClassifier(n_iter=1, dtype="float32", random_state=0),
]

EXPECTED_FAILURES = {
    repr(ESTIMATORS[3]): {
        "check_methods_subset_invariance": (
            "float32: outputs on a batch and on the whole data differ by up to "
            "4e-4, more than the check's 1e-7 tolerance. The matrix products behind "
            "the distances are blocked differently for different numbers of rows, "
            "and the rounding of x'Mx - 2x'Mz + z'Mz is amplified by the square "
            "root of the Laplace kernel at small distances. float64 (the default) "
            "passes."
        ),
    },
}


def _expected_failures(estimator):
    return EXPECTED_FAILURES.get(repr(estimator), {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
