"""Displays given empty or mismatched input stop with a clear error before
matplotlib draws anything."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from skdnc import CollapseDisplay, DeepRFMTransformer, GramDisplay
from skdnc._display import SVDSplitDisplay, TrainingHistoryDisplay, centred_gram


@pytest.fixture(scope="module")
def fitted(balanced_digits):
    X, y = balanced_digits(20)
    return DeepRFMTransformer(L=2, width=16, random_state=0).fit(X, y), X, y


@pytest.fixture(autouse=True)
def no_new_figures():
    before = set(plt.get_fignums())
    yield
    opened = set(plt.get_fignums()) - before
    plt.close("all")
    assert not opened, "a figure was opened before the error"


def test_gram_display_refuses_a_y_of_the_wrong_length(fitted):
    deep, X, y = fitted
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        GramDisplay.from_estimator(deep, X, y[:-1], layers=[1])
    with pytest.raises(ValueError, match="inconsistent numbers of samples"):
        GramDisplay.from_estimator(deep, X, np.concatenate([y, y]), layers=[1])


@pytest.mark.parametrize(
    "make",
    [
        lambda deep, X, y: GramDisplay.from_estimator(deep, X, y, layers=[]),
        lambda deep, X, y: GramDisplay(grams=[], layers=[]).plot(),
        lambda deep, X, y: GramDisplay(grams=[np.zeros((0, 0))], layers=[1]).plot(),
        lambda deep, X, y: GramDisplay(grams=[np.eye(3)], layers=[1, 2]).plot(),
        lambda deep, X, y: GramDisplay(grams=[np.ones(3)], layers=[1]).plot(),
    ],
    ids=["no-layers", "no-grams", "empty-gram", "layers-mismatch", "not-square"],
)
def test_gram_display_with_empty_input_is_a_clear_error(fitted, make):
    with pytest.raises(ValueError, match="GramDisplay|Gram matrix|at least one"):
        make(*fitted)


def test_centred_gram_checks_its_input():
    with pytest.raises(ValueError, match="n_samples >= 1"):
        centred_gram(np.zeros((0, 3)), [])
    with pytest.raises(ValueError, match="y of shape"):
        centred_gram(np.zeros((4, 3)), [0, 1, 1])


class _EmptyProbe:
    nc1 = np.zeros((0, 3))
    nc2 = np.zeros((0, 3))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda deep: CollapseDisplay(layers=[], values={}).plot(), "Nothing to draw"),
        (
            lambda deep: CollapseDisplay(layers=[1, 2], values={}).plot(),
            "at least one of each",
        ),
        (
            lambda deep: CollapseDisplay.from_estimator(deep, metrics=()),
            "Nothing to draw",
        ),
        (
            lambda deep: CollapseDisplay(
                layers=[1, 2], values={"nc1": {"input": [0.5]}}
            ).plot(),
            r"values\['nc1'\]\['input'\] has shape \(1,\)",
        ),
        (lambda deep: CollapseDisplay.from_probe(_EmptyProbe()), "0 layers"),
    ],
    ids=["empty", "no-metrics", "no-metrics-asked", "short-series", "empty-probe"],
)
def test_collapse_display_with_empty_input_is_a_clear_error(fitted, make, message):
    with pytest.raises(ValueError, match=message):
        make(fitted[0])


@pytest.mark.parametrize("display", [SVDSplitDisplay, TrainingHistoryDisplay])
def test_history_displays_with_no_layers_are_a_clear_error(display):
    with pytest.raises(ValueError, match="Nothing to draw"):
        display(summary={"epochs": []}, layer_names=[]).plot()
    with pytest.raises(ValueError, match="Nothing to draw"):
        display(summary={"epochs": [0, 1]}, layer_names=[]).plot()
    with pytest.raises(ValueError, match="probe=True"):
        display.from_histories([])
