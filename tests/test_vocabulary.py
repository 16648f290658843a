"""One vocabulary: every public output names its stages with ``skdnc.metrics.STAGES``
and its collapse metrics with ``skdnc.metrics.METRIC_NAMES``.

A key is a *metric key* when it starts with ``nc<digit>``, ``gnc<digit>``,
``unc<digit>``, ``cdnv`` or ``gram``.
It must then read ``metric``, ``metric_stage``, ``metric_suffix`` or
``metric_stage_suffix`` with ``metric`` in METRIC_NAMES, ``stage`` in STAGES and
``suffix`` one of the aggregate suffixes below; a list under ``stages`` must be
STAGES itself.
"""

import re

import matplotlib
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from skdnc import DeepRFMTransformer, NFAProbe, probe_layers
from skdnc import __main__ as deep_rfm_command
from skdnc._display import METRIC_LABELS, STAGE_COLORS, CollapseDisplay
from skdnc.metrics import (
    METRIC_NAMES,
    STAGES,
    VocabularyAccumulator,
    neural_collapse_report,
)
from skdnc.metrics._scorer import _METRICS
from skdnc.nn import __main__ as nn_command
from skdnc.nn import layer_collapse, make_mlp, probe_network

matplotlib.use("Agg")

#: Suffixes of aggregated or derived values (over seeds, over layers).
SUFFIXES = (
    "mean",
    "std",
    "first",
    "last",
    "per_layer_factor",
    "log_linear_r2",
    "ratio_last_over_first",
)
_METRIC_LIKE = re.compile(r"^(nc\d|gnc\d|unc\d|cdnv|gram)")
#: Keys that look like metric keys but are not: the layers of the Gram figure.
_NOT_METRICS = {"gram_layers"}


def _parse(key):
    """``(metric, stage, suffix)`` of a metric key, or raise AssertionError."""
    for metric in sorted(METRIC_NAMES, key=len, reverse=True):
        if key == metric:
            return metric, None, None
        if not key.startswith(metric + "_"):
            continue
        rest = key[len(metric) + 1 :]
        stage = next((s for s in STAGES if rest == s or rest.startswith(s + "_")), None)
        if stage is not None:
            rest = rest[len(stage) + 1 :]
        if rest == "" or rest in SUFFIXES:
            return metric, stage, rest or None
    raise AssertionError(
        f"{key!r} is not a metric name of METRIC_NAMES, optionally followed by a "
        f"stage of STAGES and a suffix of {SUFFIXES}."
    )


def _check(obj, where="output"):
    """Walk dicts and lists; check every metric key and every stage list."""
    seen = set()
    if isinstance(obj, dict):
        for key, value in obj.items():
            if (
                isinstance(key, str)
                and _METRIC_LIKE.match(key)
                and key not in _NOT_METRICS
            ):
                seen.add(_parse(key))
            if key in ("stages", "stages_"):
                assert tuple(value) == STAGES, f"{where}[{key!r}] = {value!r}"
            seen |= _check(value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            seen |= _check(item, where)
    return seen


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:120].astype(np.float32), y[:120]


def test_the_parser_rejects_foreign_names():
    for bad in ("gram_corr", "nc1_agop", "nc2_features", "nc1_right", "nc6"):
        with pytest.raises(AssertionError):
            _parse(bad)
    assert _parse("nc2_mse_projection") == ("nc2_mse", "projection", None)
    assert _parse("nc1_input_first") == ("nc1", "input", "first")
    assert _parse("nc1_pinv_mean") == ("nc1_pinv", None, "mean")


def test_metric_tables_use_the_canonical_names():
    assert set(_METRICS) <= set(METRIC_NAMES)
    assert set(METRIC_LABELS) == set(METRIC_NAMES)
    assert tuple(STAGE_COLORS) == STAGES
    report = neural_collapse_report(np.eye(4)[[0, 0, 1, 1, 2, 2]], [0, 0, 1, 1, 2, 2])
    seen = _check(report)
    assert {m for m, _, _ in seen} == set(METRIC_NAMES) - {"nc3", "nc4"} - set(
        VOCABULARY_ONLY
    )


#: The metrics only the vocabulary-scale accumulator reports.
VOCABULARY_ONLY = ("nc2_equinorm", "nc2_interference", "gnc2", "unc3", "nc5")


def test_vocabulary_accumulator_report_uses_the_canonical_names():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(120, 5)), np.arange(120) % 6
    acc = VocabularyAccumulator(8).partial_fit(X, y).partial_fit_within(X, y)
    acc.partial_fit_decisions(X, rng.normal(size=(8, 5)), y=y)
    report = acc.report(W=rng.normal(size=(8, 5)), X_ood=rng.normal(size=(4, 5)))
    seen = {m for m, _, _ in _check(report)}
    assert set(VOCABULARY_ONLY) | {"nc1", "nc1_pinv", "nc3", "nc4", "cdnv"} <= seen
    assert seen | {"nc1_paper_code", "nc2_mse", "nc2_orthogonal_mse"} | {
        "gram_label_correlation"
    } == set(METRIC_NAMES)


def test_deep_rfm_history_and_display(digits):
    X, y = digits
    drfm = DeepRFMTransformer(L=2, width=16, random_state=0).fit(X, y)
    seen = _check(drfm.collapse_history_)
    assert {s for _, s, _ in seen} == set(STAGES)
    assert {"nc1", "nc2", "nc3", "nc4"} <= {m for m, _, _ in seen}
    assert set(drfm.collapse_history_) - {"layer"} == {f"{m}_{s}" for m, s, _ in seen}
    metrics = ("nc1", "nc3", "nc4")
    display = CollapseDisplay.from_estimator(drfm, metrics=metrics)
    assert set(display.lines_) == {(m, s) for m in metrics for s in STAGES}
    assert [ax.get_title() for ax in display.axes_] == [
        METRIC_LABELS[m] for m in metrics
    ]


def test_nfa_probe_and_network_probe(digits):
    X, y = digits
    net = make_mlp(64, 10, width=8, depth=2, random_state=0)
    probe = probe_network(net, X, y, nc1_pinv=True)
    seen = _check(probe.to_dict())
    assert {"nc1", "nc2", "nc1_pinv", "nc3", "nc4"} <= {m for m, _, _ in seen}
    frame_keys = _check(dict.fromkeys(probe.to_frame().columns))
    assert {s for _, s, _ in frame_keys} == set(STAGES)
    collapse = layer_collapse(net, X, y)
    _check(collapse.to_dict())
    nfa = NFAProbe(net).fit(X, y)
    assert nfa.stages_ == STAGES
    _check(dict(vars(nfa)))
    display = CollapseDisplay.from_probe(probe)
    assert {s for _, s in display.lines_} == set(STAGES)


def test_deep_rfm_command_json(tmp_path):
    args = deep_rfm_command.parse(
        ["--L", "2", "--width", "16", "--n-samples", "100", "--no-cv", "--quiet"]
        + ["--output", str(tmp_path), "--gram-layers", "1", "2"]
    )
    result = deep_rfm_command.run(args)
    seen = _check(result.data)
    assert {s for _, s, _ in seen} - {None} == set(STAGES)


def test_nn_command_json(tmp_path):
    args = nn_command.parse(
        ["--epochs", "2", "--n-samples", "60", "--seeds", "0", "--width", "8"]
        + ["--depth", "2", "--measure-every", "1", "--quiet"]
        + ["--output", str(tmp_path)]
    )
    result = nn_command.run(args)
    seen = _check(result.data)
    assert {"nc1", "nc3", "nc4"} <= {m for m, _, _ in seen}


def test_layer_probe_outputs(digits):
    """Per-layer probe scores name no collapse metric and index layers as the
    collapse probes do."""
    X, y = digits
    net = make_mlp(64, 10, width=8, depth=2, random_state=0)
    keep = np.isin(y, (0, 1))
    layers = {"a": X[keep][:, :32], "b": X[keep][:, 32:]}
    result = probe_layers(layers, y[keep], estimator=LogisticRegression(), cv=3)
    assert _check(result.to_dict()) == set()
    frame = result.to_frame()
    assert frame.index.name == layer_collapse(net, X, y).to_frame().index.name
    assert _check(dict.fromkeys(frame.columns)) == set()
