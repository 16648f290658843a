"""The Average Gradient Outer Product (AGOP) of kernel predictors.

For a kernel predictor :math:`f(x) = \\sum_j \\alpha_j k_M(x, c_j)` with outputs
:math:`f_1, \\dots, f_K`, the AGOP over points :math:`x_1, \\dots, x_m` is

.. math:: \\mathrm{AGOP}(f) = \\frac{1}{m} \\sum_{i=1}^m \\sum_{c=1}^K
          \\nabla f_c(x_i) \\nabla f_c(x_i)^\\top

(Section 3.3 of the paper). For a radial kernel,
:math:`\\nabla_x k_M(x, z) = w(x, z)\\, M (z - x)` (see
:meth:`skdnc._kernels.Kernel.gradient_weights`), so with the weight matrix
:math:`W_{ij} = w(x_i, c_j)`,

.. math:: \\nabla f_c(x_i) = M \\Big(\\sum_j W_{ij}\\alpha_{jc} c_j
          - \\big(\\textstyle\\sum_j W_{ij} \\alpha_{jc}\\big) x_i\\Big)
          = M h_{ic}.

All :math:`h_{ic}` of a block of points come from two matrix products,
``W @ (alpha (x) C)`` and ``W @ alpha``, and the AGOP is
:math:`M (\\frac{1}{m}\\sum h h^\\top) M`: batched GEMMs, never an ``m x n x d`` or
``K x m x n`` tensor. This module is the only place in skdnc that computes an AGOP.
"""

import torch

from skdnc._backend import iter_row_blocks, matmul_precision
from skdnc._kernels import apply_metric, sqdist

AGOP_NORMALIZATIONS = ("max", "trace", None)

#: Largest ``n K d`` for which :func:`kernel_agop` builds every output's weighted
#: centres at once (one GEMM per block); beyond it, one output at a time, so that
#: the buffer stays ``n x d`` (at a million centres, 10 outputs and d = 784 the
#: whole buffer would take 31 GB in float32).
FUSED_CENTRES_MAX_ENTRIES = 2**28


def kernel_agop(
    X,
    centers,
    alpha,
    M,
    kernel,
    *,
    self_index=None,
    centering=False,
    diag=False,
    block_size=None,
    allow_tf32=False,
    comm=None,
    factor=False,
):
    """AGOP of ``f(x) = k_M(x, centers) @ alpha`` over the rows of ``X``.

    Parameters
    ----------
    X : torch.Tensor of shape (m, d)
        Points at which the gradients are taken.
    centers : torch.Tensor of shape (n, d)
        The kernel machine's centres.
    alpha : torch.Tensor of shape (n, K)
        Dual coefficients.
    M : torch.Tensor of shape (d, d) or (d,), or None
        Mahalanobis matrix (full, diagonal, or the identity).
    kernel : skdnc._kernels.Kernel
    self_index : torch.Tensor of shape (m,), dtype long, optional
        ``self_index[i] = j`` when ``X[i]`` is ``centers[j]`` (``-1`` when it is not
        a centre). Those self-pairs, where the gradient of a Laplace kernel is not
        defined, are dropped by index, as in the paper's code.
    centering : bool, default=False
        Subtract each output's mean gradient before the outer products (the AGOP
        is then the gradients' covariance rather than their second moment).
    diag : bool, default=False
        Return only the diagonal of the AGOP.
    block_size : int, optional
        Rows of ``X`` per block; default all at once.
    allow_tf32 : bool, default=False
        On a CUDA device in float32, compute the two gradient products (the
        weights times the weighted centres, and ``H'H``) on TensorFloat-32
        tensor cores. The distance products stay in full float32 either way: the
        rounding of :math:`\\|x\\|^2 - 2 x^\\top z + \\|z\\|^2` would swamp
        small distances.
    comm : skdnc._distributed.Comm, optional
        Split the points over a process group: each rank takes the gradients at
        its rows of ``X`` and one all-reduce sums the outer products (and, for
        ``centering``, the gradients). Every rank passes all of ``X`` and returns
        the whole AGOP. ``None``: this process alone.
    factor : bool, default=False
        Return the AGOP as its factor: the ``m K`` gradients (centred when
        ``centering``) scaled by :math:`1/\\sqrt{m}`, rows of a matrix ``H``
        with ``AGOP = H^T H``, of rank at most ``m K``. When ``m K < d`` it is
        smaller than the AGOP and costs no ``d x d`` product. Needs a full ``M``
        or ``None``, and no ``comm``.

    Returns
    -------
    agop : torch.Tensor of shape (d, d), or (d,) when ``diag``, or (m K, d) when
        ``factor``
        Averaged over the ``m`` points and summed over the ``K`` outputs.
    """
    m, d = X.shape
    n, n_outputs = alpha.shape
    if factor and (diag or comm is not None or (M is not None and M.ndim == 1)):
        raise ValueError("factor=True needs a full M or None, no diag and no comm.")
    if comm is not None:
        shard = comm.row_shard(m)
        X = X[shard]
        self_index = None if self_index is None else self_index[shard]
    # alpha (x) C: row j holds alpha_jc * c_j for every output c, shape (n, K * d),
    # so that one GEMM gives every output's weighted sum of centres.
    alpha = alpha.contiguous()
    fused = n * n_outputs * d <= FUSED_CENTRES_MAX_ENTRIES
    if fused:
        alpha_centers = torch.mul(alpha[:, :, None], centers[:, None, :]).view(n, -1)
    CM = apply_metric(centers, M)
    c_sqnorms = (CM * centers).sum(dim=1)
    # When every point is a centre, its row norms and X M are the centres' own.
    all_centres = self_index is not None and bool((self_index >= 0).all())
    acc = None if factor else X.new_zeros(d if diag else (d, d))
    blocks = []  # the gradients themselves, for factor=True
    hsum = X.new_zeros(n_outputs, d)
    for rows in iter_row_blocks(X.shape[0], block_size or m):
        Xb = X[rows]
        if all_centres:
            idx = self_index[rows]
            D2 = sqdist(
                Xb,
                centers,
                M,
                X_sqnorms=c_sqnorms[idx],
                Z_sqnorms=c_sqnorms,
                XM=CM[idx],
            )
        else:
            D2 = sqdist(Xb, centers, M, Z_sqnorms=c_sqnorms)
        if self_index is not None:
            # Distance 0 to itself: the weight of the self-pair becomes 0.
            idx = self_index[rows]
            hit = (idx >= 0).nonzero().squeeze(1)
            D2[hit, idx[hit]] = 0.0
        W = kernel.gradient_weights(D2)
        del D2
        with matmul_precision(X.device, allow_tf32):
            if fused:
                H = (W @ alpha_centers).view(-1, n_outputs, d)
            else:
                H = Xb.new_empty(Xb.shape[0], n_outputs, d)
                for c in range(n_outputs):
                    H[:, c] = W @ (alpha[:, c, None] * centers)
            H.addcmul_((W @ alpha)[:, :, None], Xb[:, None, :], value=-1.0)
            del W
            hsum += H.sum(dim=0)
            if factor:
                blocks.append(H)
                continue
            H = H.view(-1, d)
            acc += (H * H).sum(dim=0) if diag else H.T @ H
    if factor:
        H = torch.cat(blocks) if blocks else X.new_zeros(0, n_outputs, d)
        if centering:
            H -= hsum / m
        H = H.view(-1, d).div_(m**0.5)
        return H if M is None else H @ M
    if comm is not None:  # one all-reduce of both sums
        sums = comm.all_reduce_sum(torch.cat([acc.reshape(-1), hsum.reshape(-1)]))
        acc, hsum = sums[: acc.numel()].view_as(acc), sums[acc.numel() :].view_as(hsum)
    acc /= m
    if centering:
        hbar = hsum / m
        acc -= (hbar * hbar).sum(dim=0) if diag else hbar.T @ hbar
    if M is None:
        return acc
    if M.ndim == 1:  # diagonal metric: M h scales coordinates
        return acc * M * M if diag else acc * M[:, None] * M[None, :]
    if diag:
        raise ValueError("diag=True needs a diagonal M (a 1-D tensor) or None.")
    return M @ acc @ M


def agop_scale(diagonal, normalization="max"):
    """The number :func:`normalize_agop` divides an AGOP by, from its diagonal
    (``None`` leaves it as it is: a zero or non-finite scale, or no
    normalisation)."""
    if normalization is None:
        return None
    if normalization == "max":
        scale = diagonal.max()
    elif normalization == "trace":
        scale = diagonal.sum() / diagonal.shape[0]
    else:
        raise ValueError(
            f"agop_normalization must be one of {AGOP_NORMALIZATIONS}; got "
            f"{normalization!r}."
        )
    if not torch.isfinite(scale) or scale <= 0:
        return None
    return scale


def normalize_agop(A, normalization="max"):
    """Rescale an AGOP (full or diagonal).

    Parameters
    ----------
    A : torch.Tensor of shape (d, d) or (d,)
    normalization : {"max", "trace", None}
        ``"max"``: divide by the largest entry (for a PSD matrix, the largest
        diagonal entry), what the paper's code and the ``rfm`` package do.
        ``"trace"``: scale to trace ``d``, the trace of the identity M starts
        from, so that distances keep the scale the bandwidth was chosen for.
        ``None``: leave as it is.

    Returns
    -------
    A : torch.Tensor
        A new tensor; unchanged when the AGOP is zero (a constant predictor).
    """
    scale = agop_scale(A if A.ndim == 1 else torch.diagonal(A), normalization)
    return A.clone() if scale is None else A / scale


def normalize_agop_factor(B, normalization="max"):
    """:func:`normalize_agop` of the AGOP ``B B^T`` given by its factor ``B``
    (shape ``(d, s)``): ``B`` divided by the square root of the scale, whose
    diagonal is the squared row norms of ``B``; ``O(d s)``.

    Returns
    -------
    B : torch.Tensor of shape (d, s)
        A new tensor.
    """
    scale = agop_scale((B * B).sum(dim=1), normalization)
    return B.clone() if scale is None else B / scale.sqrt()


#: ``agop_samples=None`` takes ``AGOP_POINTS_PER_FEATURE / d`` points, clipped to
#: ``AGOP_POINTS_RANGE`` (and to ``n``).
AGOP_POINTS_PER_FEATURE = 500_000
AGOP_POINTS_RANGE = (500, 20_000)


def default_agop_points(n_features):
    """Number of AGOP points of ``agop_samples=None`` for ``d = n_features``.

    The gradients cost ``2 m n K d`` flops for ``m`` points, so
    ``m = 5 * 10^5 / d`` (at least 500, at most 20,000) keeps the AGOP's cost
    linear in ``n`` at about ``10^6 n K``: all the points of a small or
    low-dimensional problem, and 500 to 640 points of 784-pixel images or of
    Deep RFM's 1024 random features, where more points changed neither an RFM's
    accuracy nor Deep RFM's collapse (``benchmarks/``, and the user guide).

    Examples
    --------
    >>> from skdnc._agop import default_agop_points
    >>> default_agop_points(64), default_agop_points(784), default_agop_points(4096)
    (7812, 637, 500)
    """
    low, high = AGOP_POINTS_RANGE
    return int(min(high, max(low, AGOP_POINTS_PER_FEATURE // max(1, int(n_features)))))


def sample_points(n, agop_samples, generator, n_features=1):
    """Indices of a seeded random subset of ``range(n)`` (sorted).

    Parameters
    ----------
    n : int
    agop_samples : int, float in (0, 1] or None
        A number of points, a fraction of ``n``, or ``None`` for
        :func:`default_agop_points` of ``n_features``.
    generator : torch.Generator
    n_features : int, default=1
        Dimension of the points (used by ``agop_samples=None``).

    Returns
    -------
    index : torch.Tensor of shape (m,), dtype long, on the CPU
    """
    if agop_samples is None:
        m = default_agop_points(n_features)
    elif isinstance(agop_samples, float):
        m = max(1, int(round(agop_samples * n)))
    else:
        m = min(n, int(agop_samples))
    if m >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:m].sort().values
