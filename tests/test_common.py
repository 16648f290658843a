"""scikit-learn's common estimator checks for every skdnc estimator."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skdnc import RFMClassifier, RFMRegressor

ESTIMATORS = [
    RFMClassifier(n_iter=2, random_state=0),
    RFMRegressor(n_iter=2, random_state=0),
    RFMClassifier(n_iter=1, diag=True, kernel="gaussian", random_state=0),
    RFMClassifier(n_iter=1, dtype="float32", random_state=0),
]

EXPECTED_FAILURES = {}


def _expected_failures(estimator):
    return EXPECTED_FAILURES.get(repr(estimator), {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failures)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
