"""DeepRFMTransformer: deep neural collapse on digits, reproducibility, conformance.

The collapse tests follow the calibration of the reference notes (sections 3.4-3.7):
sklearn's digits, 50 samples per class, per-feature standardisation, ReLU features
of width 256, Laplace bandwidth 2, ridge 1e-3.
"""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from skdnc._deep_rfm import DeepRFMTransformer
from skdnc._rfm import RFMClassifier
from skdnc.datasets import standardize
from skdnc.metrics import gram_label_correlation, nc1_score, nc2_score


@pytest.fixture(scope="module")
def digits(balanced_digits):
    X, y = balanced_digits(50)
    return standardize(X), y


@pytest.fixture(scope="module")
def deep(digits):
    X, y = digits
    return DeepRFMTransformer(L=8, width=256, random_state=0).fit(X, y)


def _log_linear(values):
    layers = np.arange(len(values))
    slope, intercept = np.polyfit(layers, np.log(values), 1)
    residual = np.log(values) - (slope * layers + intercept)
    total = np.sum((np.log(values) - np.log(values).mean()) ** 2)
    return np.exp(slope), 1 - np.sum(residual**2) / total


# -- the paper's claims on digits -----------------------------------------------------
def test_nc1_of_layer_inputs_falls_exponentially(deep):
    nc1 = deep.collapse_history_["nc1_input"]
    factor, r2 = _log_linear(nc1)
    assert r2 >= 0.95
    assert 0.3 <= factor <= 0.6  # observed 0.44-0.45 over seeds
    assert nc1[-1] < 0.02 * nc1[0]


def test_agop_projection_lowers_nc1_and_feature_map_does_not(deep):
    h = deep.collapse_history_
    # M^{1/2} cuts NC1 at every layer (observed ratios 0.30-0.38)...
    assert np.all(h["nc1_projection"] <= 0.65 * h["nc1_input"])
    # ...and the random feature map does not (observed ratios 1.3-1.5).
    assert np.all(h["nc1_output"] >= 0.9 * h["nc1_projection"])


def test_without_agop_nc1_does_not_fall(digits):
    X, y = digits
    h = (
        DeepRFMTransformer(L=6, width=256, n_agop_steps=0, random_state=0)
        .fit(X, y)
        .collapse_history_
    )
    assert np.allclose(h["nc1_projection"], h["nc1_input"])  # M = I
    assert h["nc1_input"][-1] > h["nc1_input"][0]  # observed 1.63 -> 3.2


def test_nc2_falls(deep):
    h = deep.collapse_history_
    # The paper code's NC2 (mean squared entry) at layer 5: 0.053 -> 0.002-0.005.
    assert h["nc2_mse_input"][4] < 0.2 * h["nc2_mse_input"][0]
    assert h["nc2_input"][4] < 0.5 * h["nc2_input"][0]


def test_gram_matrix_approaches_label_kernel(deep):
    corr = deep.collapse_history_["gram_label_correlation_input"]
    assert np.all(np.diff(corr[:6]) > -0.01)  # observed 0.50, 0.68, 0.82, 0.90, ...
    assert corr[4] >= 0.9
    assert corr[-1] >= 0.93


# -- fitted maps and reproducibility --------------------------------------------------
def test_transform_layers_reproduces_fit_time_representations(deep, digits):
    X, y = digits
    reps = deep.transform_layers(X)
    h = deep.collapse_history_
    assert [r["layer"] for r in reps] == list(range(1, 9))
    for stage in ("input", "projection", "output"):
        nc1 = [nc1_score(r[stage], y) for r in reps]
        nc2 = [nc2_score(r[stage], y) for r in reps]
        gram = [gram_label_correlation(r[stage], y) for r in reps]
        np.testing.assert_allclose(nc1, h[f"nc1_{stage}"], rtol=1e-10)
        np.testing.assert_allclose(nc2, h[f"nc2_{stage}"], rtol=1e-10)
        gram_h = h[f"gram_label_correlation_{stage}"]
        np.testing.assert_allclose(gram, gram_h, rtol=1e-10)
    # Each layer's input is the previous layer's features, row-normalised.
    for prev, nxt in zip(reps[:-1], reps[1:]):
        F = prev["output"]
        np.testing.assert_allclose(
            nxt["input"], F / np.linalg.norm(F, axis=1, keepdims=True), atol=1e-12
        )
    # The stages are the fitted maps applied by hand.
    MX = reps[2]["input"] @ deep.agop_powers_[2]
    np.testing.assert_allclose(reps[2]["projection"], MX, atol=1e-12)
    np.testing.assert_allclose(
        reps[2]["output"], np.maximum(MX @ deep.weights_[2].T, 0), atol=1e-12
    )
    last = reps[-1]["output"]
    np.testing.assert_allclose(
        deep.transform(X),
        last / np.linalg.norm(last, axis=1, keepdims=True),
        atol=1e-12,
    )
    only = deep.transform_layers(X[:20], layers=[3])
    assert len(only) == 1 and only[0]["layer"] == 3
    np.testing.assert_allclose(
        only[0]["projection"], reps[2]["projection"][:20], atol=1e-12
    )


def test_transform_of_new_data_is_per_sample(deep, digits):
    X, _ = digits
    Z = deep.transform(X)
    np.testing.assert_allclose(deep.transform(X[::7]), Z[::7], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0)
    assert Z.shape == (len(X), 256)


def test_fitted_layers(deep):
    assert len(deep.agop_powers_) == len(deep.weights_) == len(deep.offsets_) == 8
    assert deep.agop_powers_[0].shape == (64, 64)
    assert deep.weights_[0].shape == (256, 64)
    assert all(b is None for b in deep.offsets_)  # the ReLU map has no phases
    for S in deep.agop_powers_[1:]:
        assert S.shape == (256, 256)
        np.testing.assert_allclose(S, S.T, atol=1e-12)
        assert np.linalg.eigvalsh(S).min() > -1e-10
    # W ~ N(0, 2 / D): the sample variance of 256 x 256 entries.
    W = deep.weights_[3]
    assert abs(W.var() * 256 / 2 - 1) < 0.03
    names = deep.get_feature_names_out()
    assert names[0] == "deeprfmtransformer0" and len(names) == 256


def test_pickle_and_clone(deep, digits):
    X, y = digits
    restored = pickle.loads(pickle.dumps(deep))
    np.testing.assert_array_equal(restored.transform(X[:30]), deep.transform(X[:30]))
    fresh = clone(deep)
    assert fresh.get_params() == deep.get_params()
    assert not hasattr(fresh, "weights_")


def test_seed_determines_the_maps(digits):
    X, y = digits
    X, y = X[::5], y[::5]
    a = DeepRFMTransformer(L=2, width=32, random_state=1).fit(X, y)
    b = DeepRFMTransformer(L=2, width=32, random_state=1).fit(X, y)
    c = DeepRFMTransformer(L=2, width=32, random_state=2).fit(X, y)
    np.testing.assert_array_equal(a.weights_[1], b.weights_[1])
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert not np.allclose(a.weights_[1], c.weights_[1])


def test_cos_features_and_defaults(digits):
    X, y = digits
    X, y = X[::10], y[::10]
    cos = DeepRFMTransformer(L=1, feature_map="cos", gamma=0.1, random_state=0)
    Z = cos.fit(X, y).transform(X)
    W, b = cos.weights_[0], cos.offsets_[0]
    assert W.shape == (1024, 64) and b.shape == (1024,)  # the default width
    assert np.all((b >= 0) & (b < 2 * np.pi))
    MX = X / np.linalg.norm(X, axis=1, keepdims=True) @ cos.agop_powers_[0]
    Phi = np.sqrt(2 / 1024) * np.cos(MX @ W.T + b)
    np.testing.assert_allclose(
        Z, Phi / np.linalg.norm(Phi, axis=1, keepdims=True), atol=1e-10
    )
    relu = DeepRFMTransformer(L=1, record_metrics=False, random_state=0).fit(X, y)
    assert relu.weights_[0].shape == (1024, 64)
    assert relu.collapse_history_ is None


def test_more_agop_steps_and_power(digits):
    X, y = digits
    X, y = X[::4], y[::4]
    one = DeepRFMTransformer(L=1, width=64, random_state=0).fit(X, y)
    two = DeepRFMTransformer(L=1, width=64, n_agop_steps=2, random_state=0).fit(X, y)
    full = DeepRFMTransformer(L=1, width=64, agop_power=1.0, random_state=0).fit(X, y)
    S1, S2, M = (m.agop_powers_[0] for m in (one, two, full))
    assert not np.allclose(S1, S2)
    # agop_power=1 applies the normalised AGOP itself; 0.5 its square root.
    np.testing.assert_allclose(S1 @ S1, M, atol=1e-10)
    assert np.isclose(np.abs(M).max(), 1.0)  # normalised by its largest entry


def test_dtypes(digits):
    X, y = digits
    X, y = X[::5], y[::5]
    model = DeepRFMTransformer(L=2, width=32, random_state=0)
    assert model.fit(X.astype(np.float32), y).transform(X).dtype == np.float64
    assert model.transform(X.astype(np.float32)).dtype == np.float32
    fast = DeepRFMTransformer(L=2, width=32, dtype="float32", random_state=0)
    Z32 = fast.fit(X, y).transform(X)
    assert Z32.dtype == np.float64 and fast.weights_[0].dtype == np.float32
    np.testing.assert_allclose(Z32, model.fit(X, y).transform(X), atol=1e-3)


def test_pipeline_cross_validation_on_digits(digits):
    X, y = digits
    pipe = Pipeline(
        [
            (
                "deep_rfm",
                DeepRFMTransformer(
                    L=3, width=128, record_metrics=False, random_state=0
                ),
            ),
            ("rfm", RFMClassifier(max_iter=1, random_state=0)),
        ]
    )
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.mean() > 0.9  # observed 0.95


# -- errors -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, message",
    [
        ({"L": -1}, "'L' parameter"),
        ({"n_agop_steps": -1}, "'n_agop_steps' parameter"),
        ({"feature_map": "tanh"}, "'feature_map' parameter"),
        ({"width": 0}, "'width' parameter"),
        ({"gamma": 0.0}, "'gamma' parameter"),
        ({"normalize": "columns"}, "'normalize' parameter"),
        ({"device": "tpu"}, "device must be"),
    ],
)
def test_invalid_parameters(digits, params, message):
    X, y = digits
    with pytest.raises(ValueError, match=message):
        DeepRFMTransformer(**params).fit(X[::25], y[::25])


def test_invalid_targets_and_inputs(digits):
    X, y = digits
    model = DeepRFMTransformer(L=1, width=16)
    with pytest.raises(ValueError, match="Unknown label type"):
        model.fit(X[:30], np.linspace(0, 1, 30))
    with pytest.raises(ValueError, match="at least 2 classes"):
        model.fit(X[:30], np.zeros(30))
    model.fit(X[::10], y[::10])
    with pytest.raises(ValueError, match="features"):
        model.transform(X[:5, :10])
    with pytest.raises(ValueError, match="between 1 and 1"):
        model.transform_layers(X[:5], layers=[2])


def test_string_labels(digits):
    X, y = digits
    labels = np.array(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    )[y]
    a = DeepRFMTransformer(L=2, width=32, random_state=0).fit(X, labels)
    b = DeepRFMTransformer(L=2, width=32, random_state=0).fit(X, y)
    assert a.classes_.dtype.kind == "U"
    # The label order changes the target columns, not the kernel machines' AGOP.
    np.testing.assert_allclose(a.transform(X), b.transform(X), atol=1e-8)


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e200), (np.float32, 1e20)])
def test_huge_inputs_are_normalised_not_zeroed(digits, dtype, scale):
    """The issue's reproducer: rows of 1e200 (1e20 in float32) used to become
    zeros, with a NaN NC1 history. Row normalisation makes the scale irrelevant."""
    X, y = digits
    X, y = X[::3].astype(dtype), y[::3]
    a = DeepRFMTransformer(L=2, width=32, random_state=0).fit(X, y)
    b = DeepRFMTransformer(L=2, width=32, random_state=0).fit(X * dtype(scale), y)
    np.testing.assert_allclose(
        b.transform(X * dtype(scale)),
        a.transform(X),
        atol=1e-5 if dtype is np.float32 else 1e-10,
    )
    assert np.isfinite(b.collapse_history_["nc1_input"]).all()


def test_bandwidth_far_off_the_unit_rows_warns(digits):
    X, y = digits
    with pytest.warns(UserWarning, match="numerically the identity"):
        DeepRFMTransformer(L=1, width=16, bandwidth=1e-12).fit(X[::3], y[::3])


def test_conjugate_gradient_layers_match_the_exact_solve(digits):
    X, y = digits
    X, y = X[::2], y[::2]
    kw = {"L": 2, "width": 32, "random_state": 0}
    exact = DeepRFMTransformer(solver="cholesky", **kw).fit(X, y)
    cg = DeepRFMTransformer(
        solver="cg", solver_params={"rank": 250, "tol": 1e-10}, **kw
    ).fit(X, y)
    # The first layer's AGOP is the same; after it the random draws differ (the
    # Nystrom sketch of CG takes its own draws from the same generator).
    np.testing.assert_allclose(cg.agop_powers_[0], exact.agop_powers_[0], atol=1e-6)
    np.testing.assert_allclose(
        cg.collapse_history_["nc1_projection"][0],
        exact.collapse_history_["nc1_projection"][0],
        rtol=1e-6,
    )


def test_verbose_shows_progress(digits, capsys):
    X, y = digits
    DeepRFMTransformer(L=2, width=16, verbose=1, random_state=0).fit(X, y)
    err = capsys.readouterr().err
    assert "Deep RFM" in err and "2/2" in err and "nc1=" in err
    DeepRFMTransformer(L=2, width=16, random_state=0).fit(X, y)
    assert capsys.readouterr().err == ""
