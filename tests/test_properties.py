"""Property-based tests of the public entry points (hypothesis, fixed seed).

Each property: on any input from the strategy, the entry point either raises a
ValueError with a message, or returns finite values of the right shape and dtype,
or (collapse metrics only) NaN together with an UndefinedMetricWarning naming why.
The examples are derandomised and bounded so that CI is deterministic and short.
"""

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.exceptions import UndefinedMetricWarning

from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    RFMClassifier,
    RFMRegressor,
)
from skdnc.metrics import (
    cdnv_score,
    gram_label_correlation,
    nc1_score,
    nc2_score,
    neural_collapse_report,
)

FEW = settings(max_examples=25, deadline=None, derandomize=True)
VERY_FEW = settings(max_examples=8, deadline=None, derandomize=True)


@st.composite
def labelled(draw, *, min_rows=2, max_rows=24, max_features=5, bound=1e6):
    """A float matrix and integer labels (1 to 4 classes)."""
    n = draw(st.integers(min_rows, max_rows))
    d = draw(st.integers(1, max_features))
    dtype = draw(st.sampled_from([np.float64, np.float32]))
    values = st.floats(-bound, bound, allow_nan=False, width=32)
    X = draw(arrays(dtype, (n, d), elements=values))
    k = draw(st.integers(1, 4))
    y = draw(arrays(np.int64, (n,), elements=st.integers(0, k - 1)))
    return X, y


METRICS = {
    "nc1": nc1_score,
    "nc1_pinv": lambda X, y: nc1_score(X, y, kind="pinv"),
    "nc2": nc2_score,
    "nc2_orthogonal": lambda X, y: nc2_score(X, y, target="orthogonal"),
    "cdnv": cdnv_score,
    "gram_label_correlation": gram_label_correlation,
}


@pytest.mark.parametrize("name", sorted(METRICS))
@FEW
@given(data=labelled())
@example(data=(np.array([[0.0], [0.0]]), np.array([0, 1])))
@example(data=(np.zeros((6, 3)), np.array([0, 0, 1, 1, 2, 2])))
@example(data=(np.tile([[0.3, 1.7]], (20, 1)), np.arange(20) % 2))
def test_metrics_give_a_number_an_error_or_a_warned_nan(name, data):
    X, y = data
    metric = METRICS[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = metric(X, y)
        except ValueError as exc:
            assert "at least 2 classes" in str(exc)
            assert len(np.unique(y)) < 2
            return
    assert isinstance(value, float)
    undefined = [w for w in caught if issubclass(w.category, UndefinedMetricWarning)]
    if np.isnan(value):
        assert undefined, f"{name} returned NaN without saying why"
    else:
        assert np.isfinite(value) and not undefined
        if name == "gram_label_correlation":
            assert -1 - 1e-9 <= value <= 1 + 1e-9
        else:
            assert value >= 0


@FEW
@given(data=labelled(min_rows=4))
def test_report_and_scorer_agree_with_the_metrics(data):
    X, y = data
    if len(np.unique(y)) < 2:
        with pytest.raises(ValueError, match="at least 2 classes"):
            NeuralCollapseScorer().fit(X, y)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        report = neural_collapse_report(X, y)
        scorer = NeuralCollapseScorer().fit(X, y)
        expected = nc1_score(X, y)
    np.testing.assert_equal(scorer.nc1_, expected)
    np.testing.assert_equal(report["nc1"], expected)
    Z = scorer.transform(X)
    assert Z.dtype == X.dtype and np.array_equal(Z, X)


def _fit_or_error(estimator, X, y):
    """Fit; a ValueError must carry a message. Returns the estimator or None.

    A bandwidth far off the data's scale is allowed to warn (the kernel matrix
    is then numerically the identity or all ones); outputs must still be finite.
    """
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", "The kernel matrix is numerically", UserWarning
            )
            return estimator.fit(X, y)
    except ValueError as exc:
        assert str(exc), "a ValueError without a message"
        return None


@VERY_FEW
@given(data=labelled(min_rows=6, max_rows=30, bound=1e3))
def test_rfm_classifier_predicts_known_labels_with_finite_scores(data):
    X, y = data
    clf = _fit_or_error(RFMClassifier(max_iter=1, random_state=0), X, y)
    if clf is None:
        assert len(np.unique(y)) < 2
        return
    proba = clf.predict_proba(X)
    assert proba.shape == (len(X), len(clf.classes_)) and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert set(clf.predict(X)) <= set(clf.classes_)
    assert np.isfinite(clf.M_).all()


@VERY_FEW
@given(data=labelled(min_rows=6, max_rows=30, bound=1e3))
def test_rfm_regressor_predicts_finite_values(data):
    X, y = data
    target = y.astype(np.float64) + X[:, 0].astype(np.float64) / 1e3
    reg = _fit_or_error(RFMRegressor(max_iter=1, random_state=0), X, target)
    assert reg is not None
    pred = reg.predict(X)
    assert pred.shape == (len(X),) and np.isfinite(pred).all()


@VERY_FEW
@given(data=labelled(min_rows=6, max_rows=30, bound=1e3))
def test_deep_rfm_transforms_into_unit_rows(data):
    X, y = data
    model = DeepRFMTransformer(L=2, width=16, record_metrics=False, random_state=0)
    model = _fit_or_error(model, X, y)
    if model is None:
        assert len(np.unique(y)) < 2
        return
    Z = model.transform(X)
    assert Z.shape == (len(X), 16) and np.isfinite(Z).all()
    norms = np.linalg.norm(Z, axis=1)
    # Unit rows, or zero rows where every random feature of a sample is off.
    assert np.all((np.abs(norms - 1) < 1e-4) | (norms == 0))


@VERY_FEW
@given(data=labelled(min_rows=6, max_rows=30, max_features=6, bound=10.0))
def test_probe_network_measures_or_explains(data):
    from skdnc.nn import make_mlp, probe_network

    X, y = data
    net = make_mlp(X.shape[1], 4, width=8, depth=2, random_state=0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UndefinedMetricWarning)
            probe = probe_network(net, X.astype(np.float32), y)
    except ValueError as exc:
        assert "at least 2 classes" in str(exc)
        assert len(np.unique(y)) < 2
        return
    assert probe.nc1.shape == (2, 3) and probe.nfa_correlation.shape == (2,)
    finite = np.isfinite(probe.nfa_correlation)
    assert np.all(np.abs(probe.nfa_correlation[finite]) <= 1 + 1e-9)
    assert np.all((probe.nc1 >= 0) | np.isnan(probe.nc1))
