"""Displays draw onto the Axes they are given, and their artists carry the data."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from skdnc import CollapseDisplay, DeepRFMTransformer, GramDisplay, NFAProbe
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
