"""probe_layers, make_layer_stack and LayerProbeDisplay: per-layer and stacked
scores against loops written here with scikit-learn's own pieces."""

import json

import matplotlib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import accuracy_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict, cross_val_score
from sklearn.svm import LinearSVC

from skdnc import (
    LayerProbe,
    LayerProbeDisplay,
    RFMClassifier,
    make_layer_stack,
    probe_layers,
)

matplotlib.use("Agg")


def _layers(n=90, seed=0):
    """Three layers: noise, a weak signal, a strong signal of the label."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    return {
        "noise": rng.normal(size=(n, 4)),
        "weak": rng.normal(size=(n, 3)) + 0.6 * y[:, None],
        "strong": rng.normal(size=(n, 5)) + 2.5 * y[:, None],
    }, y


def test_per_layer_scores_equal_a_cross_val_score_loop():
    acts, y = _layers()
    probe = LogisticRegression(C=0.5)
    result = probe_layers(acts, y, estimator=probe, cv=4, random_state=3, stack=False)
    folds = StratifiedKFold(4, shuffle=True, random_state=3)
    for index, name in enumerate(acts):
        for metric in ("accuracy", "roc_auc"):
            expected = cross_val_score(
                clone(probe), acts[name], y, cv=folds, scoring=metric
            )
            np.testing.assert_array_equal(result.scores[metric][index], expected)
    assert result.layer_names == ["noise", "weak", "strong"]
    assert result.best_layer == "strong"
    assert result.scores["roc_auc"][2].mean() > 0.95
    assert result.scores["roc_auc"][0].mean() < 0.75
    assert result.stack is None and result.stacked_scores is None
    # the refitted probes are fitted on all the data
    coef = clone(probe).fit(acts["weak"], y).coef_
    np.testing.assert_array_equal(result.probes["weak"].coef_, coef)


def test_stacked_scores_equal_stacking_written_out():
    acts, y = _layers(n=80, seed=1)
    probe = LogisticRegression()
    result = probe_layers(acts, y, estimator=probe, cv=3, random_state=0)
    outer = StratifiedKFold(3, shuffle=True, random_state=0)
    inner = StratifiedKFold(3, shuffle=True, random_state=0)
    for k, (train, test) in enumerate(outer.split(acts["noise"], y)):
        meta_train, meta_test = [], []
        for X in acts.values():
            oof = cross_val_predict(
                clone(probe), X[train], y[train], cv=inner, method="predict_proba"
            )
            meta_train.append(oof[:, 1])
            full = clone(probe).fit(X[train], y[train])
            meta_test.append(full.predict_proba(X[test])[:, 1])
        final = LogisticRegression().fit(np.column_stack(meta_train), y[train])
        Z = np.column_stack(meta_test)
        accuracy = accuracy_score(y[test], final.predict(Z))
        auc = roc_auc_score(y[test], final.predict_proba(Z)[:, 1])
        assert result.stacked_scores["accuracy"][k] == pytest.approx(
            accuracy, abs=1e-12
        )
        assert result.stacked_scores["roc_auc"][k] == pytest.approx(auc, abs=1e-12)
    assert result.stacked_scores["roc_auc"].mean() > 0.95
    # the stack detects from the layers side by side
    X = result.stack_input(acts)
    assert X.shape == (80, 12)
    assert result.stack.score(X, y) > 0.9
    assert list(result.stack.named_estimators_) == [
        "layer_noise",
        "layer_weak",
        "layer_strong",
    ]


def test_each_stack_member_sees_only_its_layer():
    acts, y = _layers(n=60)
    stack = make_layer_stack(acts, estimator=LogisticRegression(), cv=3)
    X = np.hstack(list(acts.values()))
    stack.fit(X, y)
    for name, width in (("noise", 4), ("weak", 3), ("strong", 5)):
        member = stack.named_estimators_[f"layer_{name}"]
        assert member["probe"].coef_.shape == (1, width)
        np.testing.assert_array_equal(member["columns"].transform(X), acts[name])
    assert make_layer_stack([2, 3]).estimators[0][1]["probe"].bandwidth == "auto"


def test_default_probe_is_an_rfm_and_any_classifier_is_accepted():
    acts, y = _layers(n=60)
    small = {k: acts[k] for k in ("noise", "strong")}
    result = probe_layers(small, y, cv=3, random_state=0, stack=False)
    assert isinstance(result.probes["strong"], RFMClassifier)
    assert result.scores["accuracy"][1].mean() > 0.85
    svc = probe_layers(small, y, estimator=LinearSVC(), cv=3, random_state=0)
    assert svc.stacked_scores["roc_auc"].mean() > 0.85


def test_multiclass_uses_one_vs_rest_auc():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    acts = [rng.normal(size=(90, 3)) + y[:, None]]
    result = probe_layers(acts, y, estimator=LogisticRegression(), cv=3, stack=False)
    assert result.layer_names == [0]
    assert result.scores["roc_auc"].mean() > 0.8
    named = probe_layers(
        acts,
        y,
        estimator=LogisticRegression(),
        cv=3,
        stack=False,
        scoring=["balanced_accuracy"],
    )
    assert list(named.scores) == ["balanced_accuracy"]


def test_frame_dict_and_display():
    acts, y = _layers(n=60)
    result = probe_layers(acts, y, estimator=LogisticRegression(), cv=3, random_state=0)
    frame = result.to_frame()
    assert list(frame.index) == ["noise", "weak", "strong", "stacked"]
    assert list(frame.columns) == [
        "accuracy_mean",
        "accuracy_std",
        "roc_auc_mean",
        "roc_auc_std",
        "n_features",
    ]
    assert frame.loc["strong", "roc_auc_mean"] == pytest.approx(
        result.scores["roc_auc"][2].mean()
    )
    assert frame.loc["stacked", "n_features"] == 12
    json.dumps(result.to_dict())
    display = result.plot()
    assert isinstance(display, LayerProbeDisplay)
    assert set(display.lines_) == set(display.stacked_lines_) == {"accuracy", "roc_auc"}
    np.testing.assert_allclose(
        display.lines_["accuracy"].get_ydata(), result.scores["accuracy"].mean(axis=1)
    )
    assert display.stacked_lines_["roc_auc"].get_ydata()[0] == pytest.approx(
        result.stacked_scores["roc_auc"].mean()
    )
    with pytest.raises(ValueError, match="rows for 2 layers"):
        LayerProbeDisplay(layer_names=["a", "b"], scores={"x": np.ones((3, 2))}).plot()
    matplotlib.pyplot.close("all")


def test_bad_inputs():
    acts, y = _layers(n=30)
    with pytest.raises(ValueError, match="inconsistent"):
        probe_layers(acts, y[:20])
    with pytest.raises(ValueError, match="Unknown label type|continuous"):
        probe_layers(acts, y + 0.5)
    with pytest.raises(ValueError, match="at least one layer"):
        probe_layers({}, y)
    with pytest.raises(ValueError, match="must be a classifier"):
        probe_layers(acts, y, estimator=Ridge())
    with pytest.raises(ValueError, match="activations lacks"):
        probe_layers(acts, y, estimator=LogisticRegression(), cv=3).stack_input(
            {"noise": acts["noise"]}
        )
    with pytest.raises(ValueError, match="NaN"):
        probe_layers({"a": np.full((30, 2), np.nan)}, y)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(
    n_layers=st.integers(1, 3),
    n=st.integers(12, 40),
    seed=st.integers(0, 2**16),
    cv=st.integers(2, 4),
)
def test_property_shapes_bounds_and_the_loop(n_layers, n, seed, cv):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    acts = {f"l{i}": rng.normal(size=(n, 1 + i)) for i in range(n_layers)}
    result = probe_layers(
        acts, y, estimator=LogisticRegression(), cv=cv, random_state=seed
    )
    assert isinstance(result, LayerProbe)
    for metric, values in result.scores.items():
        assert values.shape == (n_layers, cv)
        assert np.all((values >= 0) & (values <= 1))
        assert result.stacked_scores[metric].shape == (cv,)
    folds = StratifiedKFold(cv, shuffle=True, random_state=seed)
    expected = cross_val_score(LogisticRegression(), acts["l0"], y, cv=folds)
    np.testing.assert_array_equal(result.scores["accuracy"][0], expected)
