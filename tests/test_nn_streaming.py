"""Streaming probes: DataLoaders and batches give the in-memory results, and memory
does not grow with the number of samples.

The in-memory references are skdnc.metrics on features computed here by explicit
forward passes of the sub-networks, and dense float64 AGOPs of one full batch.
"""

import tracemalloc

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.data import DataLoader, Dataset, TensorDataset

from skdnc.metrics import CollapseAccumulator, nc1_score, nc2_score
from skdnc.nn import layer_agops, layer_collapse, probe_network


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 25, 6),
        nn.LayerNorm(6),
        nn.GELU(),
        nn.Linear(6, 3),
    ).double()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(50, 1, 5, 5, dtype=torch.float64, generator=g)
    return X, torch.arange(50) % 3


def test_streaming_equals_in_memory(data):
    X, y = data
    net = _net()
    loader = DataLoader(TensorDataset(X, y), batch_size=16)  # last batch: 2
    assert len(X) % 16 == 2
    layers = [("0", "1"), ("3", "5")]
    streamed = probe_network(
        net, loader, layers=layers, nc1_pinv=True, return_agops=True
    )
    whole = probe_network(
        net, X, y, layers=layers, nc1_pinv=True, return_agops=True, batch_size=len(X)
    )
    # Independent in-memory truth: the metrics on explicitly computed features.
    with torch.no_grad():
        features = [
            (
                X.flatten(1),
                net[0](X).flatten(1) - net[0].bias.repeat_interleave(25),
                net[:2](X).flatten(1),
            ),
            (net[:3](X), net[:4](X) - net[3].bias, net[:6](X)),
        ]
    for index, stages in enumerate(features):
        for k, Z in enumerate(stages):
            for probe in (streamed, whole):
                assert probe.nc1[index, k] == pytest.approx(nc1_score(Z, y), rel=1e-10)
                assert probe.nc1_pinv[index, k] == pytest.approx(
                    nc1_score(Z, y, kind="pinv"), rel=1e-10
                )
                assert probe.nc2[index, k] == pytest.approx(
                    nc2_score(Z, y), rel=1e-10, abs=1e-12
                )
    for A, B in zip(streamed.agops, whole.agops):
        assert np.linalg.norm(A - B) <= 1e-10 * np.linalg.norm(B)
    # The square root of the AGOP amplifies rounding in its null space (the
    # LayerNorm makes G singular): 1e-10 on the AGOP, 1e-7 on its square root.
    np.testing.assert_allclose(
        streamed.nfa_correlation, whole.nfa_correlation, rtol=1e-7
    )
    # layer_agops: a loader of inputs only, and arrays in one batch.
    inputs_only = DataLoader(X, batch_size=16)
    streamed = layer_agops(net, inputs_only, layers=layers)
    whole = layer_agops(net, X.numpy(), layers=layers, batch_size=None)
    for A, B in zip(streamed, whole):
        assert torch.linalg.norm(A - B) <= 1e-10 * torch.linalg.norm(B)


def test_layer_collapse_streaming_any_iterable(data):
    X, y = data
    net = _net()
    batches = [(X[s : s + 16], y[s : s + 16].numpy()) for s in range(0, 50, 16)]
    probe = layer_collapse(net, batches, layers=["2", "5", ""])
    with torch.no_grad():
        refs = [net[:3](X), net[:6](X), net(X)]
    for k, Z in enumerate(refs):
        assert probe.nc1[k] == pytest.approx(nc1_score(Z, y), rel=1e-10)
        assert probe.nc1_pinv[k] == pytest.approx(
            nc1_score(Z, y, kind="pinv"), rel=1e-10
        )
        assert probe.nc2[k] == pytest.approx(nc2_score(Z, y), rel=1e-10)
    # A one-shot iterator cannot give the second pass of the pinv form.
    with pytest.raises(ValueError, match="one-shot"):
        layer_collapse(net, iter(batches), layers="2")
    single = layer_collapse(net, iter(batches), layers="2", pinv=False)
    assert single.nc1[0] == pytest.approx(probe.nc1[0], rel=1e-12)


class _Synthetic(Dataset):
    """Images made on demand, so that the data take no memory that grows with n."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(int(i))
        return torch.randn(1, 8, 8, generator=g), i % 4


class _LargestTensor(TorchDispatchMode):
    """Bytes of the largest tensor any torch operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _streamed_probe_memory(n, trace=True):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 8),
        nn.ReLU(),
        nn.Linear(8, 4),
    )
    loader = DataLoader(_Synthetic(n), batch_size=48)
    if trace:
        tracemalloc.start()
    try:
        with _LargestTensor() as mode:
            probe = probe_network(
                net, loader, layers=[("0", "1"), ("3", "4")], nc1_pinv=True
            )
            collapse = layer_collapse(net, loader, layers=["1", "4"])
        _, peak = tracemalloc.get_traced_memory() if trace else (0, 0)
    finally:
        tracemalloc.stop()
    assert np.isfinite(probe.nc1).all() and np.isfinite(collapse.nc1).all()
    return mode.largest, peak


def test_streamed_probe_memory_does_not_grow_with_n():
    """The largest tensor and the Python-side peak (tracemalloc) at n = 48 and at
    n = 480 (batches of 48). Measured: 96 KiB at both; 567 kB and 621 kB."""
    _streamed_probe_memory(48, trace=False)  # first-use allocations of torch
    largest_small, peak_small = _streamed_probe_memory(48)
    largest_large, peak_large = _streamed_probe_memory(480)
    assert largest_small == largest_large
    # Ten times the samples; a buffer that grew with n would be ten times larger.
    assert peak_large <= 1.5 * peak_small + 64 * 1024


def test_accumulator_matches_metrics_on_hard_cases():
    rng = np.random.default_rng(0)
    # Nearly collapsed features far from the origin: a sum-of-squares formula
    # would lose the within-class variance to cancellation.
    centers = rng.normal(size=(4, 6)) * 10 + 1e4
    y = np.array(["d", "a", "c", "b"] * 25)
    codes = np.searchsorted(np.array(["a", "b", "c", "d"]), y)
    X = centers[codes] + 1e-3 * rng.normal(size=(100, 6))
    acc = CollapseAccumulator(global_mean="sample")
    cuts = [0, 1, 2, 37, 38, 100]  # a first batch with one class only
    for a, b in zip(cuts, cuts[1:]):
        acc.partial_fit(torch.tensor(X[a:b]), y[a:b])
    for a, b in zip(cuts, cuts[1:]):
        acc.partial_fit_within(X[a:b], y[a:b])
    kw = {"global_mean": "sample"}
    assert acc.nc1() == pytest.approx(nc1_score(X, y, **kw), rel=1e-8)
    assert acc.nc1("pinv") == pytest.approx(
        nc1_score(X, y, kind="pinv", **kw), rel=1e-8
    )
    assert acc.nc2() == pytest.approx(nc2_score(X, y, **kw), rel=1e-10)
    assert acc.statistics().classes.tolist() == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="partial_fit_within"):
        acc.partial_fit(X[:3], y[:3])
    fresh = CollapseAccumulator().partial_fit(X, y)
    with pytest.raises(ValueError, match="second pass"):
        fresh.nc1("pinv")
    with pytest.raises(ValueError, match="needs the samples"):
        fresh.statistics().Sigma_W
    with pytest.raises(ValueError, match="2-D"):
        fresh.partial_fit(X[:, :, None], y)
    with pytest.raises(ValueError, match="features"):
        fresh.partial_fit(X[:, :3], y)
