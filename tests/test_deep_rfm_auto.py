"""DeepRFMTransformer: ``L="auto"`` against an independent depth search, ``L=0``,
warnings that name their layer and step, and bad ``L`` values.

The depth search is checked against a loop written here: fixed-depth transformers
fitted on the same stratified split, each scored on the validation part by a
float64 Laplace kernel ridge machine computed with numpy (the next layer's kernel
machine: bandwidth 2, ridge 1e-3, +-1 targets, ``M = I``), a deeper depth taken
only when it beats the best shallower one by more than two standard errors of
the paired difference (written here from the counts of wins and losses).
"""

import math
import warnings

import numpy as np
import pytest
from hypothesis import assume, given, settings
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


def _kernel_machine_correct(Ztr, ytr, Zva, yva, n_classes):
    """Per validation row, whether Laplace kernel ridge (float64) classifies it
    right."""
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
    return F.argmax(1) == yva


def _clearly_better(new, old):
    """The documented rule, from the counts of wins and losses: the accuracy
    gain (wins - losses) / n beats twice the standard error of the paired
    difference, whose sample variance is (wins + losses - (wins - losses)^2 / n)
    / (n - 1)."""
    n = len(new)
    wins = int(np.sum(new & ~old))
    losses = int(np.sum(old & ~new))
    variance = (wins + losses - (wins - losses) ** 2 / n) / (n - 1)
    return (wins - losses) / n > 2.0 * math.sqrt(variance / n)


def _xor(n=200, d=10):
    """4 classes from the signs of 2 of ``d`` Gaussian coordinates: the AGOP of
    one layer finds them, and ``L="auto"`` takes that layer."""
    X = np.random.default_rng(0).normal(size=(n, d))
    return X, 2 * (X[:, 0] > 0) + (X[:, 1] > 0)


@pytest.mark.parametrize("problem, depth", [("digits", 0), ("xor", 1)])
def test_auto_depth_is_the_best_of_fixed_depths_on_the_same_split(
    digits, problem, depth
):
    X, y = digits if problem == "digits" else _xor()
    n, n_classes = len(y), len(np.unique(y))
    fit, val = train_test_split(
        np.arange(n), test_size=math.ceil(0.2 * n), stratify=y, random_state=0
    )
    correct, best = [], 0
    for k in range(AUTO_MAX_LAYERS + 1):
        fixed = DeepRFMTransformer(L=k, **SMALL).fit(X[fit], y[fit])
        # Depth k is scored on the normalised input of layer k + 1.
        Z_fit, Z_val = (
            _unit_rows(fixed.transform(X[fit])),
            _unit_rows(fixed.transform(X[val])),
        )
        correct.append(_kernel_machine_correct(Z_fit, y[fit], Z_val, y[val], n_classes))
        # A deeper depth counts only when clearly better than the best so far;
        # the search stops 2 depths after the last that counted.
        if k > 0 and _clearly_better(correct[k], correct[best]):
            best = k
        if k - best >= 2:
            break

    auto = DeepRFMTransformer(L="auto", **SMALL).fit(X, y)
    np.testing.assert_allclose(auto.validation_scores_, [c.mean() for c in correct])
    assert auto.n_layers_ == best == depth  # both cases are exercised
    assert len(auto.weights_) == best
    # The chosen depth is refitted on all the data, as a fixed-depth fit would be.
    refit = DeepRFMTransformer(L=best, **SMALL).fit(X, y)
    np.testing.assert_allclose(auto.transform(X), refit.transform(X), atol=1e-10)


def _scripted_correctness(n, plan):
    """Correctness vectors over ``n`` validation rows: depth 0 right on the first
    ``plan[0]`` rows; each later entry ``(base, wins, losses)`` takes depth
    ``base``'s vector, makes ``wins`` wrong rows right and ``losses`` right rows
    wrong."""
    vectors = [np.arange(n) < plan[0]]
    for base, wins, losses in plan[1:]:
        v = vectors[base].copy()
        v[np.flatnonzero(~v)[:wins]] = True
        v[np.flatnonzero(vectors[base])[:losses]] = False
        vectors.append(v)
    return vectors


def test_auto_depth_needs_a_clear_win_and_stops_after_two_without(digits, monkeypatch):
    # 80 validation rows. Depth 1 wins 3 rows against depth 0 (accuracy up,
    # within the noise), depth 2 wins 8 (clear: it becomes the best), depths 3
    # and 4 win 3, and 2 with a loss, against depth 2 (not clear): the search
    # stops after depth 4 with depth 2, though depth 3 scored highest (the
    # plain argmax would take it).
    X, y = digits
    n_val = math.ceil(0.2 * len(y))
    plan = [50, (0, 3, 0), (0, 8, 0), (2, 3, 0), (2, 2, 1)]
    vectors = iter(_scripted_correctness(n_val, plan))
    seen = []

    def scripted(F, y_val):
        assert len(y_val) == n_val
        seen.append(next(vectors))
        return seen[-1]

    monkeypatch.setattr(deep_rfm_module, "_correct", scripted)
    model = DeepRFMTransformer(L="auto", **SMALL).fit(X, y)
    accuracy = [v.mean() for v in seen]
    np.testing.assert_allclose(accuracy, np.array([50, 53, 58, 61, 59]) / n_val)
    assert model.n_layers_ == 2 and len(model.weights_) == 2
    assert int(np.argmax(accuracy)) == 3
    np.testing.assert_allclose(model.validation_scores_, accuracy)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    n=st.integers(2, 300),
    data=st.data(),
)
def test_improves_is_the_two_standard_error_rule(n, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    p_old, p_flip = data.draw(st.floats(0, 1)), data.draw(st.floats(0, 0.3))
    old = rng.random(n) < p_old
    new = old ^ (rng.random(n) < p_flip)
    # Exact ties of the rule, (w - l)^2 (n + 3) = 4 n (w + l), are left to rounding.
    w, l = int(np.sum(new & ~old)), int(np.sum(old & ~new))
    assume(w == l or (w - l) ** 2 * (n + 3) != 4 * n * (w + l))
    assert deep_rfm_module._improves(new, old) == _clearly_better(new, old)
    assert not deep_rfm_module._improves(old, old)


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
        # A chosen layer beat depth 0; the search ran `patience` depths past it.
        assert depth == 0 or scores[depth] > scores[0]
        assert len(scores) == min(depth + patience, AUTO_MAX_LAYERS) + 1
    else:
        assert depth == L and model.validation_scores_ is None
