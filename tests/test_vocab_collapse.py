"""VocabularyAccumulator and token_samples against brute-force float64 formulas
written here (not with skdnc's code), streaming with checkpoints, masks and bad
input."""

import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.exceptions import UndefinedMetricWarning

from skdnc._base import NonFiniteError
from skdnc.metrics import (
    METRIC_NAMES,
    VocabularyAccumulator,
    cdnv_score,
    token_samples,
)

TOL = 1e-10


def close(a, b, tol=TOL):
    return abs(a - b) <= tol * max(1.0, abs(b))


def _data(seed=0, n=400, d=6, K=9, spread=2.0):
    rng = np.random.default_rng(seed)
    centers = spread * rng.normal(size=(K, d))
    p = 1.0 / np.arange(1, K + 1)  # Zipf-like, as token frequencies
    y = rng.choice(K, size=n, p=p / p.sum())
    X = centers[y] + rng.normal(size=(n, d))
    return X, y


class Brute:
    """Every metric, by its formula, on the full arrays (float64 NumPy, loops)."""

    def __init__(self, X, y, K, min_count=1):
        counts = np.bincount(y, minlength=K)
        self.kept = np.flatnonzero(counts >= min_count)
        rows = np.isin(y, self.kept)
        self.X, self.y = X[rows], y[rows]
        self.means = np.array([self.X[self.y == c].mean(axis=0) for c in self.kept])
        self.var = np.array(
            [
                np.sum((self.X[self.y == c] - m) ** 2) / np.sum(self.y == c)
                for c, m in zip(self.kept, self.means)
            ]
        )
        self.mu_g = self.means.mean(axis=0)
        self.H = self.means - self.mu_g
        self.K = len(self.kept)

    def pairs(self, f):
        return np.array([f(i, j) for i in range(self.K) for j in range(i + 1, self.K)])

    def cdnv(self, e):
        def f(i, j):
            dist_sq = np.sum((self.means[i] - self.means[j]) ** 2)
            return (self.var[i] + self.var[j]) / 2 / dist_sq**e

        return self.pairs(f).mean()

    def unit(self):
        return self.H / np.linalg.norm(self.H, axis=1, keepdims=True)

    def gnc2(self):
        U = self.unit()
        k = self.pairs(lambda i, j: np.log(1.0 / np.linalg.norm(U[i] - U[j])))
        return k.var(), k.mean()

    def interference(self):
        U = self.unit()
        return self.pairs(lambda i, j: U[i] @ U[j]).var()

    def equinorm(self):
        norms = np.linalg.norm(self.H, axis=1)
        return norms.std(ddof=1) / norms.mean()

    def nc2(self, target="etf"):
        K = self.K
        if target == "etf":
            U = self.unit()
            T = K / (K - 1) * np.eye(K) - np.ones((K, K)) / (K - 1)
        else:
            U = self.means / np.linalg.norm(self.means, axis=1, keepdims=True)
            T = np.eye(K)
        return np.linalg.norm(U @ U.T - T)

    def structure(self, A, B):
        K = self.K
        S = B @ A.T
        S = S / np.linalg.norm(S)
        return np.linalg.norm(S - (np.eye(K) - np.ones((K, K)) / K) / np.sqrt(K - 1))

    def sigma_w(self):
        R = self.X - self.means[np.searchsorted(self.kept, self.y)]
        return R.T @ R / len(self.X)

    def nc1(self, kind="trace"):
        Sb = self.H.T @ self.H / self.K
        Sw = self.sigma_w()
        if kind == "trace":
            return np.trace(Sw) / np.trace(Sb)
        return np.trace(Sw @ np.linalg.pinv(Sb, rtol=1e-10, hermitian=True)) / self.K

    def wk(self, W):
        return W[self.kept]

    def nc3_fro(self, W):
        Wk = self.wk(W)
        return np.linalg.norm(Wk / np.linalg.norm(Wk) - self.H / np.linalg.norm(self.H))

    def unc3(self, W):
        Wk = self.wk(W)
        return np.array([Wk[c] @ self.H[c] for c in range(self.K)]).var(ddof=1)

    def nc5(self, X_ood):
        m = X_ood.mean(axis=0)
        return np.mean(
            [
                abs(mu @ m) / (np.linalg.norm(mu) * np.linalg.norm(m))
                for mu in self.means
            ]
        )

    def nc4(self, W, b):
        Wk, bk = self.wk(W), b[self.kept]
        disagree = 0
        for x in self.X:
            linear = np.argmax(Wk @ x + bk)
            ncc = np.argmin(np.sum((self.means - x) ** 2, axis=1))
            disagree += linear != ncc
        return disagree / len(self.X)


@pytest.fixture(scope="module")
def fitted():
    X, y = _data()
    K = 12  # three classes of the vocabulary are never seen
    acc = VocabularyAccumulator(K, min_count=30, tile_size=4)
    acc.partial_fit(X, y).partial_fit_within(X, y)
    return acc, Brute(X, y, K, min_count=30), X, y


def test_every_metric_equals_its_formula(fitted):
    acc, ref, X, y = fitted
    assert 2 < ref.K < 9  # min_count drops some seen classes
    np.testing.assert_array_equal(acc.kept_classes_, ref.kept)
    gnc2_var, gnc2_mean = ref.gnc2()
    rng = np.random.default_rng(1)
    W, b = rng.normal(size=(12, 6)), rng.normal(size=12)
    X_ood = rng.normal(size=(40, 6)) + 1.0
    checks = {
        "cdnv e=1": (acc.cdnv(1), ref.cdnv(1)),
        "cdnv e=2": (acc.cdnv(2), ref.cdnv(2)),
        "gnc2": (acc.gnc2(), gnc2_var),
        "gnc2 mean": (acc.gnc2("mean"), gnc2_mean),
        "interference": (acc.nc2_interference(), ref.interference()),
        "equinorm": (acc.nc2_equinorm(), ref.equinorm()),
        "nc2": (acc.nc2(), ref.nc2()),
        "nc2 mse": (acc.nc2(kind="mse"), ref.nc2() ** 2 / ref.K**2),
        "nc2 orthogonal": (acc.nc2("orthogonal"), ref.nc2("orthogonal")),
        "nc2 structure": (acc.nc2(kind="structure"), ref.structure(ref.H, ref.H)),
        "nc1": (acc.nc1(), ref.nc1()),
        "nc1 pinv": (acc.nc1("pinv"), ref.nc1("pinv")),
        "nc3": (acc.nc3(W), ref.nc3_fro(W)),
        "nc3 structure": (
            acc.nc3(W, kind="structure"),
            ref.structure(ref.H, ref.wk(W)),
        ),
        "unc3": (acc.unc3(W), ref.unc3(W)),
        "nc5": (acc.nc5(X_ood), ref.nc5(X_ood)),
    }
    for name, (got, want) in checks.items():
        assert close(got, want), (name, got, want)
    np.testing.assert_allclose(acc.within_covariance(), ref.sigma_w(), rtol=1e-12)
    acc.partial_fit_decisions(X, W, b, y=y)
    assert close(acc.nc4(), ref.nc4(W, b))


def test_structure_forms_through_the_d_by_d_gram():
    """K > d: the structure errors go through the d x d Gram matrix."""
    X, y = _data(seed=3, n=900, d=3, K=20)
    acc = VocabularyAccumulator(20).partial_fit(X, y)
    ref = Brute(X, y, 20)
    W = np.random.default_rng(0).normal(size=(20, 3))
    assert close(acc.nc2(kind="structure"), ref.structure(ref.H, ref.H))
    assert close(acc.nc3(W, kind="structure"), ref.structure(ref.H, W))
    assert close(acc.nc2("orthogonal"), ref.nc2("orthogonal"))


def test_cdnv_exponents_follow_the_two_sources():
    """Library (neural_collapse, dist_exp=1): (s_i^2 + s_j^2)/2 / ||d||^2; study
    (linguistic-collapse analyze.py, dist_exp=2): the same over ||d||^4."""
    X = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 2.0], [4.0, -2.0]])
    y = np.array([0, 0, 1, 1])
    acc = VocabularyAccumulator(2).partial_fit(X, y)
    var0, var1, dist_sq = 1.0, 4.0, 16.0
    assert acc.cdnv(1) == pytest.approx((var0 + var1) / 2 / dist_sq, rel=1e-15)
    assert acc.cdnv(2) == pytest.approx((var0 + var1) / 2 / dist_sq**2, rel=1e-15)
    assert acc.cdnv(1) == pytest.approx(cdnv_score(X, y), rel=1e-15)
    # scale: e=1 is invariant, e=2 is not
    acc3 = VocabularyAccumulator(2).partial_fit(3 * X, y)
    assert acc3.cdnv(1) == pytest.approx(acc.cdnv(1), rel=1e-14)
    assert acc3.cdnv(2) == pytest.approx(acc.cdnv(2) / 9, rel=1e-14)
    with pytest.raises(ValueError, match="dist_exp"):
        acc.cdnv(4)


def test_nc5_orthogonal_features_give_zero_and_the_means_do_not():
    rng = np.random.default_rng(0)
    X = np.zeros((60, 6))
    X[:, :3] = rng.normal(size=(60, 3)) + 2.0
    y = np.arange(60) % 4
    acc = VocabularyAccumulator(4).partial_fit(X, y)
    X_ood = np.zeros((30, 6))
    X_ood[:, 3:] = rng.normal(size=(30, 3)) + 1.0
    assert acc.nc5(X_ood) <= 1e-15
    assert acc.nc5(acc.means_) > 0.5
    assert acc.nc5([X_ood[:10], X_ood[10:]]) <= 1e-15  # batches


def _report(acc, W):
    out = acc.report(W=W)
    out["cdnv2"] = acc.cdnv(2)
    out["nc1_pinv"] = acc.nc1("pinv")
    return out


def test_uneven_batches_with_checkpoint_and_resume_equal_one_pass():
    X, y = _data(seed=5, n=500, K=9)
    W = np.random.default_rng(2).normal(size=(10, 6))
    cuts = [0, 7, 50, 51, 260, 500]
    batches = [(X[a:b], y[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]
    first = VocabularyAccumulator(10, tile_size=3)
    for xb, yb in batches[:2]:
        first.partial_fit(xb, yb)
    resumed = VocabularyAccumulator(10, tile_size=3)
    resumed.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    for xb, yb in batches[2:]:
        resumed.partial_fit(xb, yb)
    for xb, yb in batches[:3]:
        resumed.partial_fit_within(xb, yb)
    again = VocabularyAccumulator(10, tile_size=3)
    again.load_state_dict(pickle.loads(pickle.dumps(resumed.state_dict())))
    for xb, yb in batches[3:]:
        again.partial_fit_within(xb, yb)
    whole = VocabularyAccumulator(10, tile_size=64)
    whole.partial_fit(X, y).partial_fit_within(X, y)
    got, want = _report(again, W), _report(whole, W)
    ref = Brute(X, y, 10)
    assert set(got) == set(want)
    for key in want:
        assert close(got[key], want[key]), key
    assert close(got["cdnv"], ref.cdnv(1)) and close(got["nc1_pinv"], ref.nc1("pinv"))


def test_a_second_pass_on_other_means_is_refused():
    X, y = _data(seed=6)
    half = VocabularyAccumulator(9).partial_fit(X[:200], y[:200])
    half.partial_fit_within(X[:100], y[:100])  # begun too early: means of half
    checkpoint = half.state_dict(part="within")
    full = VocabularyAccumulator(9).partial_fit(X, y)
    with pytest.raises(ValueError, match="other class means"):
        full.load_state_dict(checkpoint)
    # the same means are accepted
    same = VocabularyAccumulator(9).partial_fit(X[:200], y[:200])
    same.load_state_dict(checkpoint)
    with pytest.raises(ValueError, match="second pass"):
        same.nc1("pinv")  # 100 of 200 rows seen
    same.partial_fit_within(X[100:200], y[100:200])
    assert same.nc1("pinv") == pytest.approx(Brute(X[:200], y[:200], 9).nc1("pinv"))
    with pytest.raises(ValueError, match="second pass has begun"):
        same.partial_fit(X, y)


def _padded(seed=0, b=6, t=9, d=5, K=7):
    rng = np.random.default_rng(seed)
    centers = 3 * rng.normal(size=(K, d))
    ids = rng.integers(0, K, size=(b, t))
    H = centers[ids] + rng.normal(size=(b, t, d))
    lengths = rng.integers(3, t + 1, size=b)
    lengths[0] = t
    mask = np.arange(t)[None, :] < lengths[:, None]
    H[~mask] = 50 * rng.normal(size=(int((~mask).sum()), d))  # junk at padding
    ids[~mask] = 0
    return H, ids, mask


def test_per_token_labels_and_the_mask_is_used():
    H, ids, mask = _padded()
    acc = VocabularyAccumulator(7).partial_fit(H, ids, attention_mask=mask)
    ref = Brute(H[mask], ids[mask], 7)
    assert close(acc.cdnv(), ref.cdnv(1)) and close(acc.gnc2(), ref.gnc2()[0])
    ignored = VocabularyAccumulator(7).partial_fit(H, ids)
    assert not close(ignored.cdnv(), acc.cdnv(), tol=1e-3)
    assert ignored.n_samples_seen_ > acc.n_samples_seen_ == mask.sum()


def test_next_token_labels_from_input_ids():
    H, ids, mask = _padded(seed=1)
    acc = VocabularyAccumulator(7).partial_fit(H, input_ids=ids, attention_mask=mask)
    rows, labels = [], []
    for s in range(H.shape[0]):
        for t in range(H.shape[1] - 1):
            if mask[s, t] and mask[s, t + 1]:
                rows.append(H[s, t])
                labels.append(ids[s, t + 1])
    ref = Brute(np.array(rows), np.array(labels), 7)
    assert acc.n_samples_seen_ == len(rows)
    assert close(acc.cdnv(), ref.cdnv(1)) and close(acc.nc1(), ref.nc1())
    Z, lab = token_samples(torch.tensor(H), input_ids=torch.tensor(ids))
    assert Z.shape == (H.shape[0] * (H.shape[1] - 1), H.shape[2])
    assert lab.tolist() == ids[:, 1:].reshape(-1).tolist()


def test_per_class_covariances_when_they_fit():
    X, y = _data(seed=7, K=4)
    acc = VocabularyAccumulator(4, covariance="per_class")
    acc.partial_fit(X, y).partial_fit_within(X[:150], y[:150])
    acc.partial_fit_within(X[150:], y[150:])
    for k, c in enumerate(acc.kept_classes_):
        R = X[y == c] - X[y == c].mean(axis=0)
        np.testing.assert_allclose(
            acc.class_covariances()[k], R.T @ R / len(R), rtol=1e-12, atol=1e-14
        )
    small = VocabularyAccumulator(4, covariance="per_class", max_covariance_bytes=100)
    small.partial_fit(X, y)
    with pytest.raises(ValueError, match="max_covariance_bytes"):
        small.partial_fit_within(X, y)


def test_bad_input_gets_clear_errors():
    X, y = _data()
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        VocabularyAccumulator(1)
    acc = VocabularyAccumulator(9)
    with pytest.raises(ValueError, match=r"\[0, 9\); got 9"):
        acc.partial_fit(X, np.where(y == 0, 9, y))
    with pytest.raises(ValueError, match="got -100"):
        acc.partial_fit(X, np.where(y == 0, -100, y))
    skip = VocabularyAccumulator(9, ignore_index=-100)
    skip.partial_fit(X, np.where(y == 0, -100, y))
    assert skip.n_samples_seen_ == np.sum(y != 0)
    with pytest.raises(TypeError, match="integer token ids"):
        acc.partial_fit(X, y.astype(float))
    H, ids, mask = _padded()
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        acc.partial_fit(H, ids, attention_mask=mask[:, :-1])
    X_nan = X.copy()
    X_nan[3, 2] = np.nan
    with pytest.raises(NonFiniteError, match="NaN"):
        acc.partial_fit(X_nan, y)
    with pytest.raises(ValueError, match="No samples yet"):
        acc.cdnv()
    rare = VocabularyAccumulator(9, min_count=10_000).partial_fit(X, y)
    with pytest.raises(ValueError, match="min_count=10000"):
        rare.cdnv()
    with pytest.raises(ValueError, match="W must be"):
        VocabularyAccumulator(9).partial_fit(X, y).unc3(np.ones((3, 6)))
    with pytest.raises(ValueError, match="exactly one of y"):
        token_samples(H, ids, input_ids=ids)


def test_coinciding_means_give_documented_nan():
    X = np.array([[0.0, 1.0], [0.0, -1.0], [0.0, 2.0], [0.0, -2.0], [5.0, 0.0]])
    y = np.array([0, 0, 1, 1, 2])  # classes 0 and 1 share a mean
    acc = VocabularyAccumulator(3).partial_fit(X, y)
    with pytest.warns(UndefinedMetricWarning, match="CDNV"):
        assert np.isnan(acc.cdnv())


def test_report_keys_are_metric_names(fitted):
    acc, *_ = fitted
    report = acc.report(W=np.ones((12, 6)), X_ood=np.ones((3, 6)))
    metric_keys = set(report) - {"n_samples", "n_classes_kept"}
    assert metric_keys <= set(METRIC_NAMES)
    assert {"gnc2", "unc3", "nc2_equinorm", "nc2_interference", "nc5"} <= metric_keys


@settings(derandomize=True, max_examples=20, deadline=None)
@given(
    cuts=st.lists(st.integers(1, 119), max_size=5, unique=True),
    tile=st.integers(1, 9),
    min_count=st.integers(1, 15),
)
def test_property_any_batching_and_tiling_equals_the_formula(cuts, tile, min_count):
    X, y = _data(seed=11, n=120, K=8)
    acc = VocabularyAccumulator(8, tile_size=tile, min_count=min_count)
    edges = [0, *sorted(cuts), 120]
    for a, b in zip(edges[:-1], edges[1:]):
        acc.partial_fit(X[a:b], y[a:b])
    ref = Brute(X, y, 8, min_count=min_count)
    if ref.K < 2:
        with pytest.raises(ValueError, match="min_count"):
            acc.cdnv()
        return
    assert close(acc.cdnv(), ref.cdnv(1)) and close(acc.gnc2(), ref.gnc2()[0])
    assert close(acc.nc2_interference(), ref.interference())
    assert close(acc.nc2(), ref.nc2())


@settings(derandomize=True, max_examples=25, deadline=None)
@given(
    b=st.integers(1, 4),
    t=st.integers(2, 6),
    data=st.data(),
)
def test_property_token_samples_keeps_exactly_the_masked_positions(b, t, data):
    mask = np.array(
        data.draw(st.lists(st.booleans(), min_size=b * t, max_size=b * t))
    ).reshape(b, t)
    H = np.arange(b * t * 2, dtype=float).reshape(b, t, 2)
    ids = np.arange(b * t).reshape(b, t)
    Z, labels = token_samples(H, ids, attention_mask=mask)
    assert labels.tolist() == ids[mask].tolist()
    np.testing.assert_array_equal(Z.numpy(), H[mask])
    Z, labels = token_samples(H, input_ids=ids, attention_mask=mask)
    both = mask[:, :-1] & mask[:, 1:]
    assert labels.tolist() == ids[:, 1:][both].tolist()
    np.testing.assert_array_equal(Z.numpy(), H[:, :-1][both])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_matches_cpu():
    X, y = _data(seed=9)
    W = np.random.default_rng(0).normal(size=(9, 6))
    cpu = VocabularyAccumulator(9, tile_size=4).partial_fit(X, y)
    gpu = VocabularyAccumulator(9, tile_size=4)
    gpu.partial_fit(torch.tensor(X, device="cuda"), torch.tensor(y, device="cuda"))
    gpu.partial_fit_within(
        torch.tensor(X, device="cuda"), torch.tensor(y, device="cuda")
    )
    got, want = gpu.report(W=W), cpu.report(W=W)
    for key in want:
        assert close(got[key], want[key], tol=1e-9), key
    resumed = VocabularyAccumulator(9).load_state_dict(gpu.state_dict())
    assert close(resumed.cdnv(), cpu.cdnv())


def test_sample_global_mean():
    """global_mean="sample": mu_G is the count-weighted mean (the library's
    ``weighted=True``)."""
    X, y = _data(seed=4)
    acc = VocabularyAccumulator(9, global_mean="sample").partial_fit(X, y)
    ref = Brute(X, y, 9)
    H = ref.means - X.mean(axis=0)
    norms = np.linalg.norm(H, axis=1)
    assert close(acc.nc2_equinorm(), norms.std(ddof=1) / norms.mean())
    U = H / norms[:, None]
    cos = [U[i] @ U[j] for i in range(ref.K) for j in range(i + 1, ref.K)]
    assert close(acc.nc2_interference("mean"), np.mean(cos))
