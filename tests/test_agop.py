"""Kernels and the closed-form AGOP against independent computations."""

import pytest
import torch

import skdnc._agop
from skdnc._agop import kernel_agop, normalize_agop, sample_points
from skdnc._kernels import Kernel, kernel_matrix
from skdnc._linalg import psd_power

KERNELS = [
    Kernel("laplace", 3.0),
    Kernel("gaussian", 2.0),
    Kernel("exponential", 2.5, 1.5),
    Kernel("exponential", 4.0, 0.7),
]


def _profile(kernel, dist):
    """Radial profile written from the kernel's definition, for the references."""
    L, p = kernel.bandwidth, kernel.exponent
    if kernel.name == "laplace":
        return torch.exp(-dist / L)
    if kernel.name == "gaussian":
        return torch.exp(-(dist**2) / (2 * L**2))
    return torch.exp(-(dist**p) / L**p)


def _metric(M, d):
    if M is None:
        return torch.eye(d, dtype=torch.float64)
    return torch.diag(M) if M.ndim == 1 else M


def _reference_predictor(C, alpha, M, kernel, skip=None):
    """f(x) = sum_j alpha_j k(x, c_j) with the distance taken as sqrt of the
    quadratic form of the difference (not the expanded form the library uses)."""
    Mf = _metric(M, C.shape[1])

    def f(x):
        diff = x[None, :] - C
        keep = torch.ones(len(C), dtype=torch.bool)
        if skip is not None:
            keep[skip] = False
        diff = diff[keep]
        dist = torch.sqrt(((diff @ Mf) * diff).sum(dim=1))
        return _profile(kernel, dist) @ alpha[keep]

    return f


def _autograd_agop(X, C, alpha, M, kernel, self_index=None):
    total = torch.zeros(X.shape[1], X.shape[1], dtype=torch.float64)
    for i, x in enumerate(X):
        skip = None if self_index is None else int(self_index[i])
        J = torch.func.jacrev(_reference_predictor(C, alpha, M, kernel, skip))(x)
        total += J.T @ J
    return total / len(X)


def _random_problem(seed, n=30, d=5, n_outputs=3, metric="full"):
    g = torch.Generator().manual_seed(seed)
    C = torch.randn(n, d, generator=g, dtype=torch.float64)
    alpha = torch.randn(n, n_outputs, generator=g, dtype=torch.float64)
    if metric == "full":
        A = torch.randn(d, d, generator=g, dtype=torch.float64)
        M = A @ A.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    elif metric == "diag":
        M = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    else:
        M = None
    X = torch.randn(7, d, generator=g, dtype=torch.float64)
    return X, C, alpha, M


def _rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k.name}{k.exponent}")
@pytest.mark.parametrize("metric", ["full", "diag", "identity"])
def test_agop_matches_autograd_at_new_points(kernel, metric):
    X, C, alpha, M = _random_problem(0, metric=metric)
    expected = _autograd_agop(X, C, alpha, M, kernel)
    got = kernel_agop(X, C, alpha, M, kernel, block_size=3)
    assert _rel(got, expected) < 1e-10


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k.name}{k.exponent}")
@pytest.mark.parametrize("metric", ["full", "diag"])
def test_agop_matches_autograd_at_centres_without_self_pairs(kernel, metric):
    _, C, alpha, M = _random_problem(1, metric=metric)
    index = torch.tensor([0, 4, 9, 17, 29])
    expected = _autograd_agop(C[index], C, alpha, M, kernel, self_index=index)
    got = kernel_agop(C[index], C, alpha, M, kernel, self_index=index, block_size=2)
    assert _rel(got, expected) < 1e-10


@pytest.mark.parametrize("centering", [False, True])
def test_agop_one_output_at_a_time_matches_autograd(monkeypatch, centering):
    """Beyond FUSED_CENTRES_MAX_ENTRIES the weighted centres are built one output
    at a time (an n x d buffer instead of n x K d): the same AGOP."""
    monkeypatch.setattr(skdnc._agop, "FUSED_CENTRES_MAX_ENTRIES", 0)
    _, C, alpha, M = _random_problem(4)
    index = torch.tensor([1, 5, 8, 20])
    # Each point's gradient without its own centre, by autograd.
    J = torch.stack(
        [
            torch.func.jacrev(_reference_predictor(C, alpha, M, KERNELS[0], int(i)))(
                C[i]
            )
            for i in index
        ]
    )
    if centering:
        J = J - J.mean(dim=0)
    expected = torch.einsum("mkd,mke->de", J, J) / len(index)
    got = kernel_agop(
        C[index],
        C,
        alpha,
        M,
        KERNELS[0],
        self_index=index,
        centering=centering,
        block_size=3,
    )
    assert _rel(got, expected) < 1e-10


@pytest.mark.parametrize("metric", ["full", "diag"])
def test_diagonal_agop_is_the_diagonal_of_the_full_one(metric):
    X, C, alpha, M = _random_problem(2, metric=metric)
    if metric == "full":
        M = torch.diagonal(M).clone()
    full = _autograd_agop(X, C, alpha, M, KERNELS[0])
    got = kernel_agop(X, C, alpha, M, KERNELS[0], diag=True)
    assert _rel(got, torch.diagonal(full)) < 1e-10


def test_centered_agop_is_the_covariance_of_the_gradients():
    X, C, alpha, M = _random_problem(3)
    f = _reference_predictor(C, alpha, M, KERNELS[0])
    J = torch.stack([torch.func.jacrev(f)(x) for x in X])  # (m, K, d)
    J = J - J.mean(dim=0)
    expected = torch.einsum("mkd,mke->de", J, J) / len(X)
    got = kernel_agop(X, C, alpha, M, KERNELS[0], centering=True)
    assert _rel(got, expected) < 1e-10


@pytest.mark.parametrize("kernel", KERNELS, ids=lambda k: f"{k.name}{k.exponent}")
@pytest.mark.parametrize("metric", ["full", "diag", "identity"])
def test_kernel_matrix_matches_pairwise_definition(kernel, metric):
    X, C, _, M = _random_problem(4, metric=metric)
    Mf = _metric(M, X.shape[1])
    diff = X[:, None, :] - C[None, :, :]
    dist = torch.sqrt(torch.einsum("ijd,de,ije->ij", diff, Mf, diff))
    expected = _profile(kernel, dist)
    assert torch.allclose(kernel_matrix(X, C, M, kernel), expected, atol=1e-12)


def test_self_pairs_give_kernel_one_in_float32():
    g = torch.Generator().manual_seed(0)
    X = 255 * torch.rand(50, 784, generator=g)  # raw pixel scale: big cancellation
    K = kernel_matrix(X, X, None, Kernel("laplace", 10.0), self_offset=0)
    assert torch.equal(torch.diagonal(K), torch.ones(50))


def test_exponent_one_is_the_laplace_kernel():
    X, C, _, M = _random_problem(5)
    a = kernel_matrix(X, C, M, Kernel("exponential", 3.0, 1.0))
    b = kernel_matrix(X, C, M, Kernel("laplace", 3.0))
    assert torch.allclose(a, b, atol=1e-14)


def test_normalizations():
    _, _, _, M = _random_problem(6)
    assert float(torch.diagonal(normalize_agop(M, "max")).max()) == pytest.approx(1)
    assert float(torch.trace(normalize_agop(M, "trace"))) == pytest.approx(5)
    assert torch.equal(normalize_agop(M, None), M)
    zero = torch.zeros(3, 3)
    assert torch.equal(normalize_agop(zero, "max"), zero)
    with pytest.raises(ValueError, match="agop_normalization"):
        normalize_agop(M, "frobenius")


def test_psd_power_square_root_and_clipping():
    _, _, _, M = _random_problem(7)
    root = psd_power(M, 0.5)
    assert torch.allclose(root @ root, M, atol=1e-10)
    evecs = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    A = evecs @ torch.diag(torch.tensor([4.0, 1.0, 0.0, -1e-9], dtype=torch.float64))
    A = A @ evecs.T
    root = psd_power(A, 0.5)
    assert torch.linalg.eigvalsh(root).min() > -1e-12
    assert torch.allclose(root @ root, A, atol=1e-8)
    assert torch.allclose(
        psd_power(torch.tensor([4.0, -1.0]), 0.5), torch.tensor([2.0, 0])
    )


def test_agop_points_are_a_seeded_random_subset():
    a = sample_points(1000, 100, torch.Generator().manual_seed(0))
    b = sample_points(1000, 100, torch.Generator().manual_seed(0))
    c = sample_points(1000, 100, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(torch.unique(a)) == 100 and a.max() > 500  # not the first rows
    assert len(sample_points(1000, 0.25, torch.Generator())) == 250
    assert torch.equal(sample_points(10, None, torch.Generator()), torch.arange(10))
