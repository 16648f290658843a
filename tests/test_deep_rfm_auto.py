"""DeepRFMTransformer: ``L="auto"`` against an independent depth search, ``L=0``,
warnings that name their layer and step, and bad ``L`` values.

The depth search is checked against a loop written here: fixed-depth transformers
fitted on the same stratified split, each scored on the validation part by a
float64 Laplace kernel ridge machine computed with numpy (the next layer's kernel
machine: bandwidth 2, ridge 1e-3, +-1 targets, ``M = I``).
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import LinAlgWarning
from sklearn.model_selection import train_test_split

import skdnc._deep_rfm as deep_rfm_module
from skdnc import DeepRFMTransformer
from skdnc._deep_rfm import AUTO_MAX_LAYERS
from skdnc.datasets import standardize

SMALL = {"width": 32, "record_metrics": False, "random_state": 0}


@pytest.fixture(scope="module")
def digits(balanced_digits):
    X, y = balanced_digits(40)
    return standardize(X), y


def _unit_rows(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


def _kernel_machine_scores(Ztr, ytr, Zva, yva, n_classes):
    """(accuracy, -MSE) on the validation rows of Laplace kernel ridge, float64."""
    Ztr, Zva = np.asarray(Ztr, np.float64), np.asarray(Zva, np.float64)
    Y = -np.ones((len(ytr), n_classes))
    Y[np.arange(len(ytr)), ytr] = 1.0

    def laplace(A, B):
        sq = (A**2).sum(1)[:, None] + (B**2).sum(1)[None, :] - 2 * A @ B.T
        return np.exp(-np.sqrt(np.clip(sq, 0, None)) / 2.0)

    K = laplace(Ztr, Ztr)
    np.fill_diagonal(K, 1.0)
    alpha = np.linalg.solve(K + 1e-3 * np.eye(len(K)), Y)
    F = laplace(Zva, Ztr) @ alpha
    Yva = -np.ones((len(yva), n_classes))
    Yva[np.arange(len(yva)), yva] = 1.0
    return float(np.mean(F.argmax(1) == yva)), -float(np.mean((F - Yva) ** 2))


def test_auto_depth_is_the_best_of_fixed_depths_on_the_same_split(digits):
    X, y = digits
    n = len(y)
    fit, val = train_test_split(
        np.arange(n), test_size=math.ceil(0.2 * n), stratify=y, random_state=0
    )
    scores = []
    for k in range(AUTO_MAX_LAYERS + 1):
        fixed = DeepRFMTransformer(L=k, **SMALL).fit(X[fit], y[fit])
        # Depth k is scored on the normalised input of layer k + 1.
        Z_fit, Z_val = (
            _unit_rows(fixed.transform(X[fit])),
            _unit_rows(fixed.transform(X[val])),
        )
        scores.append(_kernel_machine_scores(Z_fit, y[fit], Z_val, y[val], 10))
        # The documented stop: no better accuracy in the last 2 depths.
        if k >= 2 and max(s[0] for s in scores[-2:]) <= max(s[0] for s in scores[:-2]):
            break
    best = max(range(len(scores)), key=lambda k: (scores[k], -k))

    auto = DeepRFMTransformer(L="auto", **SMALL).fit(X, y)
    np.testing.assert_allclose(auto.validation_scores_, [s[0] for s in scores])
    assert auto.n_layers_ == best
    assert len(auto.weights_) == best
    # The chosen depth is refitted on all the data, as a fixed-depth fit would be.
    refit = DeepRFMTransformer(L=best, **SMALL).fit(X, y)
    np.testing.assert_allclose(auto.transform(X), refit.transform(X), atol=1e-10)


def test_auto_depth_stops_where_the_scores_stop_improving(digits, monkeypatch):
    # Scores that rise for 3 depths then fall: depth 3 is chosen after 2 more.
    X, y = digits
    planned = iter([0.5, 0.6, 0.7, 0.8, 0.7, 0.75, 0.9, 0.9])
    seen = []

    def scripted(F, y_val):
        seen.append(next(planned))
        return seen[-1]

    monkeypatch.setattr(deep_rfm_module, "_accuracy", scripted)
    model = DeepRFMTransformer(L="auto", **SMALL).fit(X, y)
    assert seen == [0.5, 0.6, 0.7, 0.8, 0.7, 0.75]
    assert model.n_layers_ == 3
    np.testing.assert_allclose(model.validation_scores_, seen)


def test_zero_layers_pass_the_input_through(digits):
    # No layer: a pipeline is its next estimator alone.
    X, y = digits
    model = DeepRFMTransformer(L=0).fit(X, y)
    np.testing.assert_array_equal(model.transform(X), X)
    assert model.transform(X.astype(np.float32)).dtype == np.float32
    assert model.n_layers_ == 0 and model.get_feature_names_out().shape == (64,)


# -- warnings that locate themselves --------------------------------------------------
def _warn_on_call(monkeypatch, name, calls, category):
    """Patch ``skdnc._deep_rfm.<name>`` to warn on the listed calls (1-based)."""
    original = getattr(deep_rfm_module, name)
    count = {"n": 0}

    def patched(*args, **kwargs):
        count["n"] += 1
        if count["n"] in calls:
            warnings.warn(f"planted in {name}", category)
        return original(*args, **kwargs)

    monkeypatch.setattr(deep_rfm_module, name, patched)


@pytest.mark.parametrize(
    "name, step",
    [
        ("fit_kernel_machine", "kernel solve"),
        ("agop_step", "AGOP"),
        ("psd_power", "AGOP"),
        ("apply_feature_map", "feature map"),
        ("normalize_rows", "normalisation"),
    ],
)
def test_each_step_names_its_layer_in_fit(digits, monkeypatch, name, step):
    X, y = digits
    _warn_on_call(monkeypatch, name, {2}, RuntimeWarning)
    with pytest.warns(RuntimeWarning) as record:
        DeepRFMTransformer(L=3, **SMALL).fit(X, y)
    messages = [str(w.message) for w in record]
    assert messages == [f"layer 2 ({step}): planted in {name}"]


def test_choosing_the_depth_says_so(digits, monkeypatch):
    X, y = digits
    _warn_on_call(monkeypatch, "agop_step", {1}, UserWarning)
    with pytest.warns(UserWarning) as record:
        DeepRFMTransformer(L="auto", **SMALL).fit(X, y)
    assert [str(w.message) for w in record] == [
        "layer 1 (AGOP, choosing L): planted in agop_step"
    ]


def test_transform_names_the_layer(digits, monkeypatch):
    X, y = digits
    model = DeepRFMTransformer(L=3, **SMALL).fit(X, y)
    _warn_on_call(monkeypatch, "apply_feature_map", {3}, RuntimeWarning)
    with pytest.warns(RuntimeWarning, match=r"^layer 3 \(feature map\): planted"):
        model.transform(X)


def test_real_solver_and_scale_warnings_are_located(digits):
    X, y = digits
    # A bandwidth far below the distances: the kernel check of layer 1.
    with pytest.warns(UserWarning, match=r"^layer 1 \(kernel solve\): .*identity"):
        DeepRFMTransformer(L=1, width=16, bandwidth=1e-12).fit(X, y)
    # Duplicated rows and no ridge: the solve adds a jitter, with its category.
    X2, y2 = np.vstack([X, X]), np.concatenate([y, y])
    with pytest.warns(LinAlgWarning) as record:
        DeepRFMTransformer(L=2, reg=0.0, **SMALL).fit(X2, y2)
    located = [str(w.message) for w in record if w.category is LinAlgWarning]
    assert located and all(
        m.startswith(("layer 1 (kernel solve): ", "layer 2 (kernel solve): "))
        for m in located
    )


# -- parameters -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, message",
    [
        ({"L": -1}, "'L' parameter"),
        ({"L": "deep"}, "'L' parameter"),
        ({"L": 2.5}, "'L' parameter"),
        ({"L": None}, "'L' parameter"),
        ({"validation_fraction": 0.0}, "'validation_fraction' parameter"),
        ({"validation_fraction": 1.0}, "'validation_fraction' parameter"),
        ({"n_iter_no_change": 0}, "'n_iter_no_change' parameter"),
    ],
)
def test_bad_depth_parameters(digits, params, message):
    X, y = digits
    with pytest.raises(ValueError, match=message):
        DeepRFMTransformer(**params).fit(X[::10], y[::10])


def test_auto_without_room_for_a_split_says_why(digits):
    X, y = digits
    with pytest.raises(ValueError, match="L='auto'.*Give an integer L"):
        DeepRFMTransformer(L="auto").fit(X[::20], y[::20])  # 2 per class


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    L=st.one_of(st.integers(0, 3), st.just("auto")),
    fraction=st.floats(0.15, 0.5),
    patience=st.integers(1, 3),
)
def test_depth_properties(balanced_digits, L, fraction, patience):
    X, y = balanced_digits(12)
    model = DeepRFMTransformer(
        L=L,
        validation_fraction=fraction,
        n_iter_no_change=patience,
        width=8,
        record_metrics=False,
        random_state=0,
    ).fit(X, y)
    depth = model.n_layers_
    assert len(model.weights_) == len(model.agop_powers_) == depth
    assert model.transform(X).shape == (len(y), 8 if depth else X.shape[1])
    if L == "auto":
        scores = model.validation_scores_
        assert 0 <= depth < len(scores) <= AUTO_MAX_LAYERS + 1
        assert np.all((scores >= 0) & (scores <= 1))
        assert scores[depth] == scores.max()
        assert len(scores) == AUTO_MAX_LAYERS + 1 or len(scores) > patience
    else:
        assert depth == L and model.validation_scores_ is None
