"""Radial kernels with a Mahalanobis matrix M, evaluated in memory-bounded blocks.

Every kernel here is a function of the Mahalanobis distance

.. math:: d_M(x, z) = \\sqrt{(x - z)^\\top M (x - z)}

computed from the quadratic form :math:`x^\\top M x - 2 x^\\top M z + z^\\top M z`
(clamped at 0), so no square root of M is needed. ``M`` is a full ``(d, d)`` matrix,
a ``(d,)`` vector holding a diagonal, or ``None`` for the identity.

This module is the single place where kernels, their radial profiles and the
weights of their gradients are defined; the AGOP (:mod:`skdnc._agop`) and the
solvers (:mod:`skdnc._solvers`) call it.
"""

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from skdnc._backend import to_numpy

KERNELS = ("laplace", "gaussian", "exponential")


def overflow_limit(n_features, dtype):
    """Largest ``|x|`` whose squared distances (at most ``4 d^2 max|x|^2`` with a
    metric normalised to a largest entry of 1) stay finite in ``dtype``."""
    return math.sqrt(float(np.finfo(dtype).max)) / (2 * max(int(n_features), 1))


@dataclass(frozen=True)
class Kernel:
    """A radial kernel :math:`k(x, z) = \\phi(d_M(x, z))`.

    Parameters
    ----------
    name : {"laplace", "gaussian", "exponential"}
        ``"laplace"``: :math:`\\exp(-d/L)`; ``"gaussian"``:
        :math:`\\exp(-d^2 / (2L^2))`; ``"exponential"`` (the generalized exponent):
        :math:`\\exp(-d^p / L^p)`.
    bandwidth : float or "auto"
        The bandwidth :math:`L > 0`. ``"auto"`` is a rule, not yet a kernel:
        :meth:`at_scale` resolves it on the data of a round.
    exponent : float, default=1.0
        The exponent :math:`p \\in (0, 2]` of the ``"exponential"`` kernel; ignored
        by the others.
    median_multiple : float, default=1.0
        The rule ``"auto"`` takes this multiple of the median distance; ignored
        by a numeric bandwidth.
    """

    name: str = "laplace"
    bandwidth: float = 10.0
    exponent: float = 1.0
    median_multiple: float = 1.0

    def at_scale(self, X, *, seed=0, n_pairs=2000):
        """This kernel with ``bandwidth="auto"`` resolved on the points ``X``.

        The rule: the bandwidth is ``median_multiple`` times the median distance
        between random pairs of distinct rows of ``X`` (:func:`median_distance`;
        ``O(n_pairs d)``, a fixed-size sample whatever the number of rows). Given
        the points of a round in the coordinates ``X M^{1/2}`` of its metric, it
        is that multiple of the median Mahalanobis distance: the bandwidth
        follows the data's scale, and multiplying ``X`` by ``c`` multiplies it by
        ``c`` (the pairs are drawn with a fixed seed), which leaves the kernel
        matrix unchanged. A number is
        returned as it is; when every sampled distance is 0 the bandwidth is 1.

        Parameters
        ----------
        X : ndarray or torch.Tensor of shape (n, d)
        seed, n_pairs : int
            As in :func:`median_distance`.

        Returns
        -------
        kernel : Kernel
            With a numeric bandwidth.
        """
        if not isinstance(self.bandwidth, str):
            return self
        median = median_distance(X, seed=seed, n_pairs=n_pairs)
        return replace(self, bandwidth=self.median_multiple * median if median else 1.0)

    def profile(self, distance):
        """Kernel value :math:`\\phi` at a Euclidean distance (a float)."""
        r = float(distance) / float(self.bandwidth)
        if self.name == "laplace":
            return math.exp(-r)
        if self.name == "gaussian":
            return math.exp(-0.5 * r * r)
        return math.exp(-(r ** float(self.exponent)))

    def check_scale(self, X, dtype, *, reg=None, seed=0, n_pairs=2000, n_rows=256):
        """Stop inputs whose kernel overflows or is numerically constant, and warn
        about a kernel that is the identity or that the ridge swamps, before any
        kernel matrix is built.

        The check is independent of the solver: the kernel (``bandwidth="auto"``
        resolved with :meth:`at_scale`) is evaluated by the code and in the
        precision of the solves on a seeded sample of ``n_rows`` training rows, and
        its entries between distinct rows are compared with the kernel at their
        true distances, computed scale-free in float64.

        Parameters
        ----------
        X : ndarray or torch.Tensor of shape (n, d)
            The (centred) training data.
        dtype : numpy dtype
            Precision of the computation.
        reg : float, optional
            The ridge of the solves; ``None`` skips the comparison with it.
        seed : int, default=0
            Seed of the random pairs whose median distance is taken, and of the
            sampled rows.
        n_pairs : int, default=2000
        n_rows : int, default=256

        Raises
        ------
        ValueError
            When squared distances (up to :math:`4 d^2 \\max|x|^2` with a metric
            normalised to a largest entry of 1) overflow ``dtype``, or when the
            median distance squares to below ``tiny / eps`` of ``dtype`` (the
            kernel matrix would be numerically all ones whatever the bandwidth,
            and the model constant): the scale of ``X``; when the kernel is not
            finite (a bandwidth so small that its inverse overflows).

        Warns
        -----
        UserWarning
            When the kernel at the median distance between training points is
            below the precision's epsilon (the kernel matrix is numerically the
            identity: predictions away from the training points fall to zero) or
            within it of 1 (numerically all ones: the points cannot be told
            apart), or when ``n`` times its distance from 1 is below a tenth of
            ``reg`` (the ridge swamps the kernel's variation: a nearly constant
            predictor). Each names the bandwidth and the data's distances.
        """
        finfo = np.finfo(dtype)
        n, d = X.shape
        if isinstance(X, torch.Tensor):
            largest = float(X.abs().max()) if X.numel() else 0.0
        else:
            largest = float(np.max(np.abs(X))) if X.size else 0.0
        limit = overflow_limit(d, dtype)
        if largest > limit:
            raise ValueError(
                f"X holds values up to {largest:.3g} (after centring): squared "
                f"distances overflow {np.dtype(dtype).name} beyond {limit:.3g} with "
                f"{d} features. Standardise X (e.g. with StandardScaler)"
                + (
                    " or compute in float64 (dtype='float64')."
                    if finfo.bits < 64
                    else "."
                )
            )
        median = median_distance(X, seed=seed, n_pairs=n_pairs)
        if median is None:  # fewer than two distinct rows: nothing to tell apart
            return
        name = np.dtype(dtype).name
        if median * median < finfo.tiny / finfo.eps:
            raise ValueError(
                f"X's distances (median {median:.3g} after centring) square to "
                f"below the precision of {name} (squares under "
                f"{finfo.tiny / finfo.eps:.3g}): the kernel matrix would be "
                "numerically all ones, whatever the bandwidth, and the model "
                "constant. Standardise X (e.g. with StandardScaler)"
                + (" or compute in float64." if finfo.bits < 64 else ".")
            )
        kernel = self.at_scale(X, seed=seed, n_pairs=n_pairs)
        bandwidth = f"bandwidth={kernel.bandwidth:.3g}" + (
            " (bandwidth='auto')" if isinstance(self.bandwidth, str) else ""
        )
        rows = np.random.default_rng(seed).permutation(n)[: min(n, n_rows)]
        sample = np.unique(to_numpy(X[np.sort(rows)], np.float64), axis=0)
        if len(sample) < 2:
            return
        sample = torch.tensor(sample.astype(dtype))
        try:
            K = kernel_matrix(sample, sample, None, kernel, self_offset=0).double()
        except (OverflowError, ZeroDivisionError):  # 1 / L**p in Python floats
            K = None
        if K is None or not bool(torch.isfinite(K).all()) or (K.diagonal() != 1).any():
            raise ValueError(
                f"The kernel is not finite in {name} with {bandwidth}: its inverse "
                f"overflows. The median distance between training points is "
                f"{median:.3g}; choose a bandwidth near it."
            )
        distinct = ~torch.eye(len(sample), dtype=torch.bool)
        typical = float(torch.quantile(K[distinct], 0.5))
        advice = (
            f"the median distance between training points is {median:.3g} and "
            f"{bandwidth}. Standardise X, or choose a bandwidth near the data's "
            "distances."
        )
        if typical < finfo.eps:
            warnings.warn(
                "The kernel matrix is numerically the identity (the kernel at "
                f"typical distances is {typical:.3g}): predictions away from the "
                f"training points fall to 0; {advice}",
                UserWarning,
                stacklevel=4,
            )
            return
        gap = 1.0 - typical
        if gap < finfo.eps:
            warnings.warn(
                "The kernel matrix is numerically all ones (the kernel at typical "
                f"distances is 1 - {gap:.3g}): the training points cannot be told "
                f"apart and the model is nearly constant; {advice}",
                UserWarning,
                stacklevel=4,
            )
        elif reg is not None and n * gap < 0.1 * reg:
            warnings.warn(
                f"The ridge swamps the kernel: reg={reg:g} is above ten times the "
                f"kernel's variation over the training points ({n} points x "
                f"{gap:.3g}, the kernel's distance from 1 at typical distances, "
                f"= {n * gap:.3g}), so the predictor is nearly constant; {advice} "
                "Or lower reg.",
                UserWarning,
                stacklevel=4,
            )

    def from_sqdist(self, D2):
        """Kernel values from squared distances, in place (``D2`` is overwritten)."""
        L = float(self.bandwidth)
        if self.name == "laplace":
            return D2.sqrt_().mul_(-1.0 / L).exp_()
        if self.name == "gaussian":
            return D2.mul_(-0.5 / L**2).exp_()
        p = float(self.exponent)
        return D2.pow_(p / 2).mul_(-(L**-p)).exp_()

    def gradient_weights(self, D2):
        """Weights :math:`w` with :math:`\\nabla_x k(x, z) = w \\, M (z - x)`.

        For :math:`k = \\phi(s)`, :math:`s = d_M^2`, :math:`w = -2\\phi'(s)`:
        Laplace :math:`k / (L d)`, Gaussian :math:`k / L^2`, generalized exponent
        :math:`p\\,k\\,d^{p-2} / L^p`. Pairs at distance 0 get weight 0 (their
        difference vector is 0); callers mask self-pairs by index as well, because
        a point's computed distance to itself need not be exactly 0.

        Computed from the squared distances ``D2`` alone (the kernel values are
        not needed), which are overwritten; the Gaussian's weights are returned
        in ``D2``'s memory, the others in one new buffer.
        """
        L = float(self.bandwidth)
        if self.name == "gaussian":
            return D2.mul_(-0.5 / L**2).exp_().mul_(1.0 / L**2)
        zero = D2 <= 0
        if self.name == "laplace":
            R = D2.sqrt_()
            W = torch.mul(R, -1.0 / L).exp_()
            W.div_(R.mul_(L))
        else:
            p = float(self.exponent)
            T = D2.pow(p / 2).mul_(L**-p)  # (d / L)^p
            W = torch.neg(T).exp_().mul_(T).mul_(p).div_(D2)  # p k (d/L)^p / d^2
        return W.masked_fill_(zero, 0.0)


def median_distance(X, *, seed=0, n_pairs=2000):
    """Median Euclidean distance between random pairs of distinct rows of ``X``.

    The data-scale statistic of skdnc: :meth:`Kernel.check_scale` compares the
    bandwidth with it, and ``bandwidth="auto"`` of the RFM estimators is it,
    taken in the coordinates ``X M^{1/2}`` of each round's metric. The cost is
    ``n_pairs`` row differences (``O(n_pairs d)``), whatever the number of rows.

    Parameters
    ----------
    X : ndarray or torch.Tensor of shape (n, d)
    seed : int, default=0
        Seed of the pairs: a fixed seed makes the statistic a deterministic
        function of ``X``, so rescaling ``X`` rescales it exactly.
    n_pairs : int, default=2000
        Pairs drawn (with replacement; pairs of a row with itself are dropped,
        and so are pairs at distance 0, duplicates of each other).

    Returns
    -------
    median : float or None
        ``None`` when there are fewer than two rows or every drawn pair is at
        distance 0.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._kernels import median_distance
    >>> X = np.random.default_rng(0).normal(size=(100, 3))
    >>> bool(np.isclose(median_distance(1000 * X), 1000 * median_distance(X)))
    True
    """
    n = X.shape[0]
    if n < 2:
        return None
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, size=(2, n_pairs))
    keep = i != j
    diffs = to_numpy(X[i[keep]], np.float64) - to_numpy(X[j[keep]], np.float64)
    # Scaled by the largest difference, so that no square under- or overflows.
    scale = float(np.abs(diffs).max()) if diffs.size else 0.0
    if scale == 0.0 or not np.isfinite(scale):
        return None
    diffs /= scale
    distances = scale * np.sqrt(np.einsum("ij,ij->i", diffs, diffs))
    distances = distances[distances > 0]
    if distances.size == 0:
        return None
    return float(np.median(distances))


def mahalanobis_sqnorms(X, M):
    """Row norms :math:`x_i^\\top M x_i` (``M`` full, diagonal or ``None``)."""
    return (apply_metric(X, M) * X).sum(dim=1)


def apply_metric(X, M):
    """Rows :math:`x_i^\\top M` of ``X M`` (``M`` full, diagonal or ``None``)."""
    if M is None:
        return X
    if M.ndim == 1:
        return X * M
    return X @ M


def sqdist(X, Z, M=None, *, X_sqnorms=None, Z_sqnorms=None, XM=None, out=None):
    """Squared Mahalanobis distances between rows of ``X`` and ``Z``, clamped at 0.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    Z : torch.Tensor of shape (m, d)
    M : torch.Tensor of shape (d, d) or (d,), or None
    X_sqnorms, Z_sqnorms, XM : torch.Tensor, optional
        Precomputed :math:`x^\\top M x`, :math:`z^\\top M z` and ``X M``.
    out : torch.Tensor of shape (n, m), optional
        Where to write the result (it may be a row-strided view of a larger
        matrix).

    Returns
    -------
    D2 : torch.Tensor of shape (n, m)
    """
    XM = apply_metric(X, M) if XM is None else XM
    if X_sqnorms is None:
        X_sqnorms = (XM * X).sum(dim=1)
    if Z_sqnorms is None:
        Z_sqnorms = mahalanobis_sqnorms(Z, M)
    # One GEMM with the column norms as its bias, one pass for the row norms.
    D2 = torch.addmm(Z_sqnorms[None, :], XM, Z.T, alpha=-2.0, out=out)
    return D2.add_(X_sqnorms[:, None]).clamp_(min=0.0)


def kernel_matrix(X, Z, M, kernel, *, self_offset=None):
    """Kernel matrix ``k_M(X, Z)``.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    Z : torch.Tensor of shape (m, d)
    M : torch.Tensor of shape (d, d) or (d,), or None
    kernel : Kernel
    self_offset : int, optional
        When the rows of ``X`` are the rows ``self_offset:self_offset + n`` of ``Z``,
        their distances to themselves are set to exactly 0 (the quadratic form
        leaves rounding noise there).

    Returns
    -------
    K : torch.Tensor of shape (n, m)
    """
    D2 = sqdist(X, Z, M)
    if self_offset is not None:
        zero_self_pairs(D2, self_offset)
    return kernel.from_sqdist(D2)


def training_kernel_matrix(X, M, kernel, *, triangle="full", block_size=None):
    """The symmetric kernel matrix ``k_M(X, X)``, built one triangle at a time.

    Row block ``[r0, r1)`` is computed against the points ``[0, r1)`` only, into its
    place in one ``(n, n)`` buffer: about half the distance GEMM and the
    elementwise passes of :func:`kernel_matrix`, with the row norms ``x^T M x`` and
    ``X M`` computed once. Self-pairs get distance exactly 0.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    M : torch.Tensor of shape (d, d) or (d,), or None
    kernel : Kernel
    triangle : {"full", "lower"}, default="full"
        ``"lower"`` leaves the strictly upper triangle unset (what a Cholesky
        factorization of the lower triangle reads); ``"full"`` mirrors it.
    block_size : int, optional
        Rows per block; default ``n / 8`` (at least 256), which wastes an eighth
        of a triangle on the diagonal blocks.

    Returns
    -------
    K : torch.Tensor of shape (n, n)
    """
    n = X.shape[0]
    XM = apply_metric(X, M)
    norms = (XM * X).sum(dim=1)
    K = X.new_empty(n, n)
    block = int(block_size or triangle_block(n))
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        V = sqdist(
            X[r0:r1],
            X[:r1],
            None,
            X_sqnorms=norms[r0:r1],
            Z_sqnorms=norms[:r1],
            XM=XM[r0:r1],
            out=K[r0:r1, :r1],
        )
        zero_self_pairs(V, r0)
        kernel.from_sqdist(V)
        if triangle == "full" and r0 > 0:
            K[:r0, r0:r1].copy_(V[:, :r0].T)
    return K


def triangle_block(n):
    """Rows per block of :func:`training_kernel_matrix` (and of products with its
    lower triangle): ``n / 8``, at least 256."""
    return max(256, -(-int(n) // 8))


def zero_self_pairs(D2, offset):
    """Set ``D2[i, offset + i] = 0``: a point's distance to itself, by index."""
    D2.diagonal(offset).fill_(0.0)
    return D2
