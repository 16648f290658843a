"""Every public estimator and metric against the same bad inputs: a clear
scikit-learn-style error (type and message checked) or a documented result."""

import numpy as np
import pytest
import scipy.sparse as sp

import skdnc.nn as nn_api
from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    NFAProbe,
    RFMClassifier,
    RFMRegressor,
)
from skdnc.metrics import (
    cdnv_score,
    gram_label_correlation,
    nc1_score,
    nc2_score,
    nc3_score,
    nc4_score,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(30, 4))
Y = np.arange(30) % 3


def _with(value, at=(0, 0)):
    A = X.copy()
    A[at] = value
    return A


#: case -> (X, y, exception, message fragment)
CASES = {
    "nan": (_with(np.nan), Y, ValueError, "Input X contains NaN"),
    "inf": (_with(np.inf), Y, ValueError, "Input X contains infinity"),
    "empty": (X[:0], Y[:0], ValueError, "0 sample(s)"),
    "no features": (X[:, :0], Y, ValueError, "0 feature(s)"),
    "1-D X": (X[:, 0], Y, ValueError, "2D array, got 1D array"),
    "3-D X": (X.reshape(30, 2, 2), Y, ValueError, "dim 3|must be 2-D"),
    "one class": (X, np.zeros(30), ValueError, "at least 2 classes; got 1 class: 0.0"),
    "NaN in y": (X, np.where(Y == 0, np.nan, Y), ValueError, "Input y contains NaN"),
    "continuous y": (X, RNG.normal(size=30), ValueError, "Unknown label type"),
    "sparse X": (sp.csr_matrix(X), Y, TypeError, "parse"),
    "complex X": (X + 1j, Y, ValueError, "Complex data not supported"),
    "lengths differ": (X, Y[:-1], ValueError, "inconsistent numbers of samples"),
}

ENTRY_POINTS = {
    "RFMClassifier": lambda X, y: RFMClassifier(max_iter=1).fit(X, y),
    "DeepRFMTransformer": lambda X, y: DeepRFMTransformer(L=1, width=8).fit(X, y),
    "NeuralCollapseScorer": lambda X, y: NeuralCollapseScorer().fit(X, y),
    "NFAProbe": lambda X, y: NFAProbe(_FITTED_RFM).fit(X, y),
    "nc1_score": nc1_score,
    "nc2_score": nc2_score,
    "cdnv_score": cdnv_score,
    "gram_label_correlation": gram_label_correlation,
    "nc3_score": lambda X, y: nc3_score(X, y, np.ones((3, 4))),
    "nc4_score": lambda X, y: nc4_score(X, y, y),
}
_FITTED_RFM = RFMClassifier(max_iter=0).fit(X, Y)


def _pattern(message):
    """The message as a regex: parentheses literal, '|' an alternative."""
    return message.replace("(", r"\(").replace(")", r"\)")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_bad_input_gives_a_clear_error(name, case):
    A, b, error, message = CASES[case]
    with pytest.raises(error, match=_pattern(message)):
        ENTRY_POINTS[name](A, b)


@pytest.mark.parametrize("case", ["nan", "inf", "empty", "1-D X", "3-D X", "sparse X"])
def test_regressor_bad_input(case):
    A, _, error, message = CASES[case]
    with pytest.raises(error, match=_pattern(message)):
        RFMRegressor(max_iter=1).fit(A, np.linspace(0, 1, len(A)))


def test_documented_results():
    # Numbers written as strings are numbers (scikit-learn's conversion).
    RFMClassifier(max_iter=0).fit(X.astype(str), Y)
    # A regressor fits a single sample (a constant predictor).
    pred = RFMRegressor(max_iter=0).fit(X[:1], [3.0]).predict(X[:2])
    np.testing.assert_allclose(pred, 3.0)


# -- skdnc.nn -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, param",
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 2.7}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": -5}, "batch_size"),
        ({"measure_every": -3}, "measure_every"),
        ({"lr": -1.0}, "lr"),
    ],
)
def test_train_network_validates_its_settings(kwargs, param):
    from sklearn.utils._param_validation import InvalidParameterError

    from skdnc.nn import make_mlp, train_network

    net = make_mlp(4, 3, width=4, depth=2, random_state=0)
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter"):
        train_network(net, X.astype(np.float32), Y, progress=False, **kwargs)


def test_networks_reject_non_finite_inputs_and_labels():
    from skdnc.nn import layer_agops, make_mlp, probe_network, train_network

    net = make_mlp(4, 3, width=4, depth=2, random_state=0)
    Xf = X.astype(np.float32)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        layer_agops(net, _with(np.nan).astype(np.float32))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        train_network(net, _with(np.nan).astype(np.float32), Y, progress=False)
    with pytest.raises(ValueError, match="Input y contains NaN"):
        train_network(net, Xf, np.where(Y == 0, np.nan, Y), progress=False)
    # float64 values that a float32 model cannot hold: the model's range is named
    with pytest.raises(ValueError, match="beyond the range of the model's"):
        probe_network(net, _with(1e200), Y)


def test_memory_messages_use_a_readable_unit():
    """A tiny budget used to be reported as 'needs 0.00 GiB, more than ... 0.00 GiB'."""
    with pytest.raises(ValueError, match=r"needs 7\.03 KiB, more than the memory "):
        RFMClassifier(reg=1e-3, max_iter=0, solver="cholesky", memory_budget=1e-9).fit(
            X, Y
        )


@pytest.mark.parametrize(
    "call, param",
    [
        (lambda X, y, net: nn_api.make_mlp(4, 2, width=0), "width"),
        (lambda X, y, net: nn_api.make_mlp(4, 2, depth=-1), "depth"),
        (
            lambda X, y, net: nn_api.probe_network(net, X, y, batch_size=0),
            "batch_size",
        ),
        (
            lambda X, y, net: nn_api.layer_agops(net, X, batch_size=-1),
            "batch_size",
        ),
        (
            lambda X, y, net: nn_api.layer_collapse("not a module", X, y),
            "model",
        ),
    ],
)
def test_nn_functions_validate_their_parameters(call, param):
    """make_mlp, probe_network, layer_agops and layer_collapse refuse bad
    settings in scikit-learn's words."""
    from sklearn.utils._param_validation import InvalidParameterError

    from skdnc.nn import make_mlp

    net = make_mlp(4, 3, width=4, depth=2, random_state=0)
    with pytest.raises(InvalidParameterError, match=f"'{param}' parameter"):
        call(X.astype(np.float32), Y, net)
