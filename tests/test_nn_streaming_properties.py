"""Property-based check of CollapseAccumulator against the in-memory metrics."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skdnc.metrics import CollapseAccumulator, nc1_score, nc2_score


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    n=st.integers(6, 60),
    d=st.integers(1, 7),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    n_cuts=st.integers(0, 5),
    global_mean=st.sampled_from(["class_means", "sample"]),
)
def test_any_batching_equals_in_memory(n, d, k, seed, n_cuts, global_mean):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    y[:2] = [0, 1]  # at least two classes
    X = rng.normal(size=(n, d)) + 3 * rng.normal(size=(k, d))[y]
    cuts = np.unique(np.r_[0, rng.integers(0, n, size=n_cuts), n])
    acc = CollapseAccumulator(global_mean=global_mean)
    for a, b in zip(cuts, cuts[1:]):
        acc.partial_fit(X[a:b], y[a:b])
    for a, b in zip(cuts, cuts[1:]):
        acc.partial_fit_within(X[a:b], y[a:b])
    kw = {"global_mean": global_mean}
    assert acc.n_samples_seen_ == n
    assert acc.nc1() == pytest.approx(nc1_score(X, y, **kw), rel=1e-9)
    assert acc.nc1("pinv") == pytest.approx(
        nc1_score(X, y, kind="pinv", **kw), rel=1e-8, abs=1e-12
    )
    assert acc.nc2() == pytest.approx(nc2_score(X, y, **kw), rel=1e-8, abs=1e-12)
