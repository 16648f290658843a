"""Displays draw onto the Axes they are given, and their artists carry the data."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from skdnc import CollapseDisplay, DeepRFMTransformer, GramDisplay, NFAProbe
from skdnc.metrics._collapse import STAGES
from skdnc.nn import make_mlp


@pytest.fixture(scope="module")
def fitted(balanced_digits):
    X, y = balanced_digits(20)
    return DeepRFMTransformer(L=4, width=32, random_state=0).fit(X, y), X, y


def test_collapse_display_from_estimator_on_given_axes(fitted):
    deep, _, _ = fitted
    fig, axes = plt.subplots(1, 2)
    display = CollapseDisplay.from_estimator(deep, ax=axes)
    assert display.axes_ == list(axes) and display.figure_ is fig
    for (metric, stage), line in display.lines_.items():
        np.testing.assert_array_equal(line.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_array_equal(
            line.get_ydata(), deep.collapse_history_[f"{metric}_{stage}"]
        )
    assert axes[0].get_yscale() == "log"
    ticks = axes[0].xaxis.get_major_locator().tick_values(1, 4)
    assert np.allclose(ticks, np.round(ticks))  # integer layer ticks
    assert "$M_l^{1/2} X_l$" in [t.get_text() for t in axes[0].get_legend().texts]
    plt.close(fig)


def test_collapse_display_errors(fitted):
    _, X, y = fitted
    quiet = DeepRFMTransformer(L=1, width=8, record_metrics=False).fit(X, y)
    with pytest.raises(ValueError, match="record_metrics=True"):
        CollapseDisplay.from_estimator(quiet)
    deep = fitted[0]
    with pytest.raises(ValueError, match="not in collapse_history_"):
        CollapseDisplay.from_estimator(deep, metrics=("nc9",))
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="must hold 2 Axes"):
        CollapseDisplay.from_estimator(deep, ax=ax)
    plt.close("all")


def test_collapse_display_from_probe(fitted):
    _, X, y = fitted
    probe = NFAProbe(make_mlp(64, 10, width=16, depth=3, random_state=0)).fit(X, y)
    display = CollapseDisplay.from_probe(probe)
    np.testing.assert_array_equal(
        display.lines_["nc1", "projection"].get_ydata(), probe.nc1_[:, 1]
    )
    with pytest.raises(TypeError, match="NetworkProbe or a fitted NFAProbe"):
        CollapseDisplay.from_probe(object())
    plt.close("all")


def test_gram_display_images_are_the_centred_normalised_grams(fitted):
    deep, X, y = fitted
    fig, axes = plt.subplots(1, 2)
    display = GramDisplay.from_estimator(deep, X, y, layers=[1, 4], ax=axes)
    rep = deep.transform_layers(X, layers=[4])[0]["projection"]
    order = np.argsort(y, kind="stable")
    Z, ys = rep[order], y[order]
    Z = Z - np.mean([Z[ys == c].mean(axis=0) for c in np.unique(ys)], axis=0)
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    np.testing.assert_allclose(display.images_[1].get_array(), Z @ Z.T, atol=1e-10)
    assert display.colorbar_.ax.get_ylabel() == "cosine similarity"
    assert [a.get_title() for a in axes] == ["layer 1", "layer 4"]
    with pytest.raises(ValueError, match="stage must be one of"):
        GramDisplay.from_estimator(deep, X, y, stage="agop")
    plt.close("all")


@pytest.fixture(scope="module")
def histories(balanced_digits):
    from skdnc.nn import make_mlp, train_network

    X, y = balanced_digits(10)
    X = (X / 16).astype(np.float32)
    return [
        train_network(
            make_mlp(64, 10, width=16, depth=2, random_state=seed),
            X,
            y,
            epochs=4,
            lr=0.2,
            measure_every=2,
            device="cpu",
            progress=False,
            random_state=seed,
        )
        for seed in (0, 1)
    ]


def test_training_history_display_bands_and_lines(histories):
    from skdnc import TrainingHistoryDisplay

    fig, axes = plt.subplots(1, 3)
    display = TrainingHistoryDisplay.from_histories(histories, ax=axes, title="mlp")
    assert display.figure_ is fig and display.figure_._suptitle.get_text() == (
        "mlp (2 seeds)"
    )
    losses = np.array([h.loss for h in histories])
    np.testing.assert_allclose(display.lines_["loss"].get_ydata(), losses.mean(0))
    name = histories[0].probes[-1]["layer_names"][0]
    nfa = np.array([[p["nfa_correlation"][0] for p in h.probes] for h in histories])
    np.testing.assert_allclose(display.lines_["nfa", name].get_ydata(), nfa.mean(0))
    # the band's lower edge is truncated at 1% of the mean
    band = axes[2].collections[0].get_paths()[0].vertices[:, 1]
    assert band.min() >= 0.01 * losses.mean(0).min() - 1e-12
    one = TrainingHistoryDisplay.from_histories(histories[:1])
    assert one.figure_._suptitle.get_text() == "1 seed"
    plt.close("all")


def test_svd_split_display_draws_every_layer_and_stage(histories):
    from skdnc import SVDSplitDisplay

    display = SVDSplitDisplay.from_histories(histories)
    names = histories[0].probes[-1]["layer_names"]
    assert set(display.lines_) == {(n, s) for n in names for s in STAGES}
    nc1 = np.array([[p["nc1"][1][0] for p in h.probes] for h in histories])
    np.testing.assert_allclose(
        display.lines_[names[1], "input"].get_ydata(), nc1.mean(0)
    )
    with pytest.raises(ValueError, match="probe=True"):
        SVDSplitDisplay.from_histories([])
    plt.close("all")
