"""Collapse histories and probes as pandas tables."""

import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skdnc import DeepRFMTransformer
from skdnc.metrics import STAGES, history_to_frame
from skdnc.nn import layer_collapse, make_mlp, probe_network


def _data(n=48, d=6, K=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % K
    X = rng.normal(size=(K, d))[y] + 0.5 * rng.normal(size=(n, d))
    return X.astype(np.float32), y


def test_history_to_frame_of_a_deep_rfm():
    X, y = _data()
    drfm = DeepRFMTransformer(L=3, width=16, random_state=0).fit(X, y)
    history = drfm.collapse_history_
    frame = history_to_frame(history)
    assert frame.index.name == "layer"
    assert frame.index.tolist() == [1, 2, 3]
    assert list(frame.columns) == [k for k in history if k != "layer"]
    for key in frame.columns:
        np.testing.assert_array_equal(frame[key].to_numpy(), history[key])


def test_history_to_frame_errors():
    with pytest.raises(ValueError, match="record_metrics=False"):
        history_to_frame(None)
    with pytest.raises(TypeError, match="'layer' key"):
        history_to_frame({"nc1_input": [1.0]})
    with pytest.raises(ValueError, match="one value per layer"):
        history_to_frame({"layer": [1, 2], "nc1_input": [1.0]})


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    st.integers(1, 6).flatmap(
        lambda L: st.dictionaries(
            st.sampled_from([f"nc1_{s}" for s in STAGES] + ["nc3_output"]),
            st.lists(st.floats(allow_nan=True), min_size=L, max_size=L),
            min_size=1,
        )
    )
)
def test_history_to_frame_round_trips(columns):
    L = len(next(iter(columns.values())))
    history = {"layer": list(range(1, L + 1)), **columns}
    frame = history_to_frame(history)
    back = {"layer": frame.index.tolist()} | {
        k: frame[k].tolist() for k in frame.columns
    }
    assert back.keys() == history.keys()
    for key, values in history.items():
        np.testing.assert_array_equal(np.asarray(back[key]), np.asarray(values))


def test_network_probe_to_frame():
    X, y = _data()
    net = make_mlp(6, 3, width=8, depth=2, random_state=0)
    probe = probe_network(net, X, y, nc1_pinv=True)
    frame = probe.to_frame()
    assert frame.index.tolist() == probe.layer_names
    for k, stage in enumerate(STAGES):
        np.testing.assert_array_equal(frame[f"nc1_{stage}"], probe.nc1[:, k])
        np.testing.assert_array_equal(frame[f"nc2_{stage}"], probe.nc2[:, k])
        np.testing.assert_array_equal(frame[f"nc1_pinv_{stage}"], probe.nc1_pinv[:, k])
    np.testing.assert_array_equal(frame["nfa_correlation"], probe.nfa_correlation)
    assert frame["layer_kind"].tolist() == ["linear", "linear"]
    assert frame.attrs["nc3"] == probe.nc3 and frame.attrs["nc4"] == probe.nc4
    assert frame.attrs["readout"] == "readout"


def test_collapse_probe_to_frame():
    X, y = _data()
    net = make_mlp(6, 3, width=8, depth=2, random_state=0)
    probe = layer_collapse(net, X, y)
    frame = probe.to_frame()
    assert list(frame.columns) == ["nc1", "nc1_pinv", "nc2", "n_features"]
    np.testing.assert_array_equal(frame["nc1"], probe.nc1)
    assert layer_collapse(net, X, y, pinv=False).to_frame().columns.tolist() == [
        "nc1",
        "nc2",
        "n_features",
    ]


def test_to_frame_without_pandas_says_how_to_get_it(monkeypatch):
    X, y = _data()
    net = make_mlp(6, 3, width=8, depth=2, random_state=0)
    probe = probe_network(net, X, y)
    collapse = layer_collapse(net, X, y, pinv=False)
    monkeypatch.setitem(sys.modules, "pandas", None)
    for call, name in (
        (lambda: history_to_frame({"layer": [1]}), "history_to_frame"),
        (probe.to_frame, "NetworkProbe.to_frame"),
        (collapse.to_frame, "CollapseProbe.to_frame"),
    ):
        with pytest.raises(ImportError, match=f"{name} needs pandas.*pip install"):
            call()
    assert isinstance(pd.DataFrame(), pd.DataFrame)  # the real module is untouched
