"""Symmetric positive semi-definite matrices: eigendecomposition and powers; units.

The AGOP and the kernel matrices are PSD; their eigendecompositions (for the
powers ``M^p`` the estimators apply, and for the Nystrom preconditioner) are taken
here, in float64. :func:`rescale` divides arrays by a power of two before squares
or Gram matrices of them are formed, which is what keeps the scale-free
statistics (the neural-collapse metrics, the NFA correlation) from overflowing or
underflowing at any scale of the data.
"""

import functools

import numpy as np
import torch
from threadpoolctl import ThreadpoolController


def power_of_two_unit(*arrays):
    """The power of two ``u`` with ``1 <= max |a| / u < 2`` over all ``arrays``.

    Parameters
    ----------
    *arrays : ndarray or torch.Tensor
        Finite values.

    Returns
    -------
    unit : float
        ``1.0`` when every entry is zero (or the arrays are empty).

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._linalg import power_of_two_unit
    >>> power_of_two_unit(np.array([3.0, -5.0])), power_of_two_unit(np.zeros(2))
    (4.0, 1.0)
    """
    largest = 0.0
    for A in arrays:
        if A.size if isinstance(A, np.ndarray) else A.numel():
            largest = max(largest, float(abs(A).max()))
    if not 0.0 < largest < np.inf:
        return 1.0
    return float(np.ldexp(1.0, int(np.frexp(largest)[1]) - 1))


def rescale(*arrays):
    """Divide ``arrays`` by their common :func:`power_of_two_unit`.

    Dividing by a power of two is exact (short of the subnormal range), so a
    quantity that does not depend on the scale of the data (a ratio of traces, a
    correlation, a cosine) computed on the results equals the one computed on the
    arrays themselves wherever that does not overflow or underflow, and stays
    finite where it would: the largest magnitude is in ``[1, 2)``, so squares and
    Gram matrices of up to ``2^1020`` terms are within float64's range.

    Parameters
    ----------
    *arrays : ndarray or torch.Tensor
        Finite floating-point values.

    Returns
    -------
    unit : float
        The power of two.
    *scaled : ndarray or torch.Tensor
        ``a / unit`` for every array, new arrays unless ``unit`` is 1 (then the
        arrays themselves).

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._linalg import rescale
    >>> unit, scaled = rescale(np.array([3 * 2.0**900, -(2.0**900)]))
    >>> unit == 2.0**901, scaled.tolist()
    (True, [1.5, -0.5])
    """
    unit = power_of_two_unit(*arrays)
    return (unit, *(A if unit == 1.0 else A / unit for A in arrays))


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
