"""Symmetric positive semi-definite matrices: eigendecomposition and powers.

The AGOP and the kernel matrices are PSD; their eigendecompositions (for the
powers ``M^p`` the estimators apply, and for the Nystrom preconditioner) are taken
here, in float64.
"""

import functools

import numpy as np
import torch
from threadpoolctl import ThreadpoolController


def psd_power(M, power=0.5):
    """Power of a symmetric PSD matrix via ``eigh`` in float64, negatives clipped.

    Parameters
    ----------
    M : torch.Tensor of shape (d, d) or (d,)
        Symmetric matrix, or the diagonal of a diagonal one.
    power : float, default=0.5

    Returns
    -------
    M_power : torch.Tensor, same shape, dtype and device as ``M``

    Examples
    --------
    >>> import torch
    >>> from skdnc._linalg import psd_power
    >>> A = torch.tensor([[4.0, 0.0], [0.0, 9.0]], dtype=torch.float64)
    >>> psd_power(A, 0.5)
    tensor([[2., 0.],
            [0., 3.]], dtype=torch.float64)
    """
    if M.ndim == 1:
        return M.double().clamp(min=0).pow(power).to(M.dtype)
    evals, evecs = psd_eigh(M)
    # The reconstruction in M's own precision: a d^3 product, twice as fast in
    # float32, and as accurate as the float32 M it came from.
    evecs = evecs.to(M.dtype)
    return (evecs * evals.clamp(min=0).pow(power).to(M.dtype)) @ evecs.T


def psd_powers(M, powers):
    """Several powers of one symmetric PSD matrix from a single ``eigh``.

    Parameters
    ----------
    M : torch.Tensor of shape (d, d) or (d,)
        Symmetric matrix, or the diagonal of a diagonal one.
    powers : sequence of float

    Returns
    -------
    M_powers : tuple of torch.Tensor
        ``M`` raised to each power, as :func:`psd_power` would return it.

    Examples
    --------
    >>> import torch
    >>> from skdnc._linalg import psd_powers
    >>> A = torch.tensor([[16.0, 0.0], [0.0, 81.0]], dtype=torch.float64)
    >>> half, quarter = psd_powers(A, (0.5, 0.25))
    >>> quarter @ quarter
    tensor([[4., 0.],
            [0., 9.]], dtype=torch.float64)
    """
    if M.ndim == 1:
        return tuple(psd_power(M, p) for p in powers)
    evals, evecs = psd_eigh(M)
    evals, evecs = evals.clamp(min=0), evecs.to(M.dtype)
    return tuple((evecs * evals.pow(p).to(M.dtype)) @ evecs.T for p in powers)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, found once (looking them
    up scans the process's memory map, which costs more than a small ``eigh``)."""
    return ThreadpoolController()


def psd_eigh(M):
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix, in float64.

    On the CPU through NumPy's LAPACK with one thread: torch's two-threaded
    ``eigh`` of a small matrix stalls when the other core is busy.

    Returns
    -------
    evals : torch.Tensor of shape (d,), float64
    evecs : torch.Tensor of shape (d, d), float64
    """
    M64 = M.double()
    S = (M64 + M64.T) / 2
    if S.device.type != "cpu":
        return torch.linalg.eigh(S)
    with _blas_controller().limit(limits=1, user_api="blas"):
        evals, evecs = np.linalg.eigh(S.numpy())
    return torch.from_numpy(evals), torch.from_numpy(evecs)
