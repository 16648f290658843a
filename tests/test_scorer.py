"""NeuralCollapseScorer (pass-through probe) and the collapse scorers for CV."""

import pickle

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils._param_validation import InvalidParameterError

from skdnc.metrics import (
    NeuralCollapseScorer,
    gram_label_correlation,
    gram_label_correlation_scorer,
    make_collapse_scorer,
    nc1_score,
    nc2_score,
    neg_nc1_pinv_scorer,
    neg_nc1_scorer,
    neg_nc2_scorer,
)

# --------------------------------------------------------------------------------
# Hand-written NC1 / NC2 (float64, explicit loops), independent of skdnc.metrics


def hand_nc1(Z, y, kind="trace"):
    Z = np.asarray(Z, dtype=np.float64)
    classes = np.unique(y)
    K, N = len(classes), len(y)
    means = np.array([Z[y == c].mean(axis=0) for c in classes])
    mu_G = means.mean(axis=0)
    Sw = sum((Z[y == c] - m).T @ (Z[y == c] - m) for c, m in zip(classes, means)) / N
    Sb = (means - mu_G).T @ (means - mu_G) / K
    if kind == "trace":
        return np.trace(Sw) / np.trace(Sb)
    return np.trace(Sw @ np.linalg.pinv(Sb, rcond=1e-10, hermitian=True)) / K


def hand_nc2(Z, y):
    Z = np.asarray(Z, dtype=np.float64)
    classes = np.unique(y)
    K = len(classes)
    means = np.array([Z[y == c].mean(axis=0) for c in classes])
    H = means - means.mean(axis=0)
    H /= np.linalg.norm(H, axis=1, keepdims=True)
    etf = (np.eye(K) * K - np.ones((K, K))) / (K - 1)
    return np.linalg.norm(H @ H.T - etf)


@pytest.fixture(scope="module")
def digits(balanced_digits):
    return balanced_digits(40)


def classifier_pipeline():
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("pca", PCA(n_components=10, random_state=0)),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    )


# --------------------------------------------------------------------------------
# NeuralCollapseScorer


def test_probe_in_pipeline_passes_data_through_and_measures(digits):
    X, y = digits
    pipe = Pipeline(
        [
            ("scale", StandardScaler()),
            ("nc", NeuralCollapseScorer()),
            ("clf", LogisticRegression(max_iter=1000)),
        ]
    ).fit(X, y)
    Z = StandardScaler().fit_transform(X)
    np.testing.assert_array_equal(pipe[:-1].transform(X), Z)
    np.testing.assert_array_equal(pipe["nc"].transform(Z), Z)
    probe = pipe["nc"]
    assert probe.nc1_ == pytest.approx(hand_nc1(Z, y), rel=1e-10)
    assert probe.nc1_ == nc1_score(Z, y)
    assert probe.nc1_trace_ == probe.nc1_
    assert probe.nc1_pinv_ == pytest.approx(hand_nc1(Z, y, "pinv"), rel=1e-10)
    assert probe.nc2_ == pytest.approx(hand_nc2(Z, y), rel=1e-10)
    assert probe.gram_label_correlation_ == gram_label_correlation(Z, y)
    np.testing.assert_array_equal(probe.classes_, np.arange(10))
    np.testing.assert_array_equal(probe.class_counts_, [40] * 10)
    assert probe.n_features_in_ == 64
    # the classifier downstream sees exactly what it would see without the probe
    plain = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    np.testing.assert_array_equal(
        plain.fit(X, y).predict_proba(X), pipe.predict_proba(X)
    )


def test_probe_options_select_the_stored_forms(digits):
    X, y = digits
    Z = StandardScaler().fit_transform(X)
    probe = NeuralCollapseScorer(
        kind="pinv", scaling="paper_code", nc2_target="orthogonal", nc2_kind="mse"
    ).fit(Z, y)
    assert probe.nc1_ == probe.nc1_pinv_
    assert probe.nc1_pinv_ == pytest.approx(hand_nc1(Z, y, "pinv") / 10, rel=1e-10)
    assert probe.nc1_trace_ == pytest.approx(hand_nc1(Z, y) / 10, rel=1e-10)
    assert probe.nc2_ == nc2_score(Z, y, target="orthogonal", kind="mse")
    unmeasured = NeuralCollapseScorer(gram_correlation=False).fit(Z, y)
    assert np.isnan(unmeasured.gram_label_correlation_)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probe_preserves_dtype_and_values(digits, dtype):
    X, y = digits
    Xd = X.astype(dtype)
    out = NeuralCollapseScorer().fit_transform(Xd, y)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out, Xd)
    probe = NeuralCollapseScorer().fit(Xd, y)
    assert probe.nc1_ == pytest.approx(hand_nc1(Xd, y), rel=1e-10)


def test_probe_with_pandas_output(digits):
    X, y = digits
    columns = [f"px{i}" for i in range(X.shape[1])]
    df = pd.DataFrame(X, columns=columns)
    pipe = make_pipeline(StandardScaler(), NeuralCollapseScorer()).set_output(
        transform="pandas"
    )
    out = pipe.fit_transform(df, pd.Series(y))
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == columns
    np.testing.assert_allclose(
        out.to_numpy(), StandardScaler().fit_transform(X), rtol=1e-12, atol=1e-12
    )
    np.testing.assert_array_equal(out.to_numpy(), pipe[0].transform(df).to_numpy())
    probe = pipe[-1]
    np.testing.assert_array_equal(probe.feature_names_in_, columns)
    np.testing.assert_array_equal(probe.get_feature_names_out(), columns)
    assert probe.nc1_ == pytest.approx(hand_nc1(out.to_numpy(), y), rel=1e-10)


def test_probe_errors():
    X = np.arange(12.0).reshape(6, 2)
    with pytest.raises(ValueError, match="requires y to be passed"):
        NeuralCollapseScorer().fit(X)
    with pytest.raises(ValueError, match="at least 2 classes"):
        NeuralCollapseScorer().fit(X, [0] * 6)
    with pytest.raises(InvalidParameterError, match="'nc2_kind' parameter"):
        NeuralCollapseScorer(nc2_kind="l1").fit(X, [0, 0, 0, 1, 1, 1])


# --------------------------------------------------------------------------------
# Scorers for cross-validation


def test_cross_val_score_equals_held_out_nc1_by_hand(digits):
    X, y = digits
    pipe = classifier_pipeline()
    cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    scorer = make_collapse_scorer("nc1")
    scores = cross_val_score(pipe, X, y, cv=cv, scoring=scorer, error_score="raise")
    assert np.all(np.isfinite(scores)) and np.all(scores < 0)
    for score, (train, test) in zip(scores, cv.split(X, y)):
        fitted = clone(pipe).fit(X[train], y[train])
        Z = fitted.named_steps["pca"].transform(
            fitted.named_steps["scale"].transform(X[test])
        )
        assert Z.shape == (len(test), 10)
        assert score == pytest.approx(-hand_nc1(Z, y[test]), rel=1e-10)


def test_ready_made_scorers(digits):
    X, y = digits
    pipe = classifier_pipeline().fit(X, y)
    Z = pipe[:-1].transform(X)
    assert neg_nc1_scorer(pipe, X, y) == pytest.approx(-hand_nc1(Z, y), rel=1e-10)
    assert neg_nc1_pinv_scorer(pipe, X, y) == pytest.approx(
        -hand_nc1(Z, y, "pinv"), rel=1e-10
    )
    assert neg_nc2_scorer(pipe, X, y) == pytest.approx(-hand_nc2(Z, y), rel=1e-10)
    value = gram_label_correlation_scorer(pipe, X, y)
    assert 0 < value == gram_label_correlation(Z, y)
    orth = make_collapse_scorer("nc2", target="orthogonal", kind="mse")
    assert orth(pipe, X, y) == -nc2_score(Z, y, target="orthogonal", kind="mse")
    assert repr(orth) == "make_collapse_scorer('nc2', target='orthogonal', kind='mse')"
    restored = pickle.loads(pickle.dumps(orth))
    assert restored(pipe, X, y) == orth(pipe, X, y)


def test_scorer_representation_rules(digits):
    X, y = digits
    # a transformer (or a pipeline ending in one): its transform output
    features = make_pipeline(StandardScaler(), PCA(n_components=5)).fit(X, y)
    assert neg_nc1_scorer(features, X, y) == pytest.approx(
        -hand_nc1(features.transform(X), y), rel=1e-10
    )
    pca = PCA(n_components=5).fit(X)
    assert neg_nc1_scorer(pca, X, y) == pytest.approx(
        -hand_nc1(pca.transform(X), y), rel=1e-10
    )
    # a pipeline ending in a probe: the representation before the probe
    probed = make_pipeline(StandardScaler(), NeuralCollapseScorer()).fit(X, y)
    assert neg_nc1_scorer(probed, X, y) == pytest.approx(-probed[-1].nc1_)
    # a one-step pipeline with a classifier: the input itself
    single = Pipeline([("clf", LogisticRegression(max_iter=1000))]).fit(X, y)
    assert neg_nc1_scorer(single, X, y) == pytest.approx(-hand_nc1(X, y), rel=1e-10)
    with pytest.raises(TypeError, match="needs a fitted transformer or a Pipeline"):
        neg_nc1_scorer(single["clf"], X, y)


def test_grid_search_with_collapse_scoring(digits):
    X, y = digits
    cv = StratifiedKFold(n_splits=2, shuffle=True, random_state=1)
    grid = {"pca__n_components": [2, 10]}
    search = GridSearchCV(
        classifier_pipeline(), grid, scoring=neg_nc1_scorer, cv=cv, error_score="raise"
    ).fit(X, y)
    for k, n_components in enumerate(grid["pca__n_components"]):
        pipe = classifier_pipeline().set_params(pca__n_components=n_components)
        expected = cross_val_score(pipe, X, y, cv=cv, scoring=neg_nc1_scorer)
        assert search.cv_results_["mean_test_score"][k] == pytest.approx(
            expected.mean(), rel=1e-10
        )
    best = int(np.argmax(search.cv_results_["mean_test_score"]))
    assert search.best_params_ == {"pca__n_components": grid["pca__n_components"][best]}


def test_make_collapse_scorer_validates_eagerly():
    with pytest.raises(InvalidParameterError, match="'metric' parameter"):
        make_collapse_scorer("nc5")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['target'\\]"):
        make_collapse_scorer("nc1", target="etf")
    with pytest.raises(InvalidParameterError, match="'kind' parameter"):
        make_collapse_scorer("nc1", kind="svd")
