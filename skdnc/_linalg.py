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


def psd_top_eigh(M=None, *, factor=None, n_components=None):
    """Largest eigenpairs of a symmetric PSD matrix, given whole or as a factor.

    The one place of skdnc that computes eigenvectors of an AGOP or of a
    feature matrix ``M`` for their directions (:class:`~skdnc.AGOPDirections`
    and anything else that ranks directions). With ``factor=F`` (``M = F^T F``,
    ``F`` of shape ``(r, d)``) only the ``r x r`` Gram matrix ``F F^T`` is
    decomposed: its eigenvectors ``u`` give those of ``M`` as ``F^T u / s``
    with the same eigenvalues ``s^2`` (the thin SVD of ``F``), in
    ``O(r^2 d)`` instead of the ``O(d^3)`` of the whole matrix.

    Each eigenvector's sign is fixed so that its entry of largest magnitude is
    positive (as scikit-learn's ``svd_flip`` does), so that the result does not
    depend on the LAPACK build.

    Parameters
    ----------
    M : torch.Tensor of shape (d, d) or (d,), optional
        The matrix, or the diagonal of a diagonal one.
    factor : torch.Tensor of shape (r, d), optional
        A factor of the matrix instead of ``M``.
    n_components : int, optional
        Number of pairs; default all (``d``, or ``r`` of a factor). A factor
        asked for more than ``r`` pairs is completed by ``M``'s null space,
        with eigenvalue 0, from the whole matrix.

    Returns
    -------
    evals : torch.Tensor of shape (k,), float64
        In decreasing order, negatives (rounding) clipped to 0.
    evecs : torch.Tensor of shape (d, k), float64
        Orthonormal columns.

    Examples
    --------
    >>> import torch
    >>> from skdnc._linalg import psd_top_eigh
    >>> F = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 2.0]], dtype=torch.float64)
    >>> evals, evecs = psd_top_eigh(factor=F, n_components=2)
    >>> evals.tolist(), evecs.T.tolist()
    ([9.0, 4.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    >>> psd_top_eigh(F.T @ F, n_components=2)[0].tolist()
    [9.0, 4.0]
    """
    if (M is None) == (factor is None):
        raise ValueError("psd_top_eigh takes either M or factor.")
    if factor is not None:
        F = factor.double()
        r, d = F.shape
        k = r if n_components is None else int(n_components)
        if k > r:
            return psd_top_eigh(F.T @ F, n_components=k)
        evals, U = psd_eigh(F @ F.T)
        evals, U = evals.flip(0)[:k].clamp(min=0), U.flip(1)[:, :k]
        s = evals.sqrt()
        keep = s > s[:1].clamp(min=torch.finfo(torch.float64).tiny) * r * 1e-15
        if not bool(keep.all()):  # null directions of F: from the whole matrix
            return psd_top_eigh(F.T @ F, n_components=k)
        evecs = (F.T @ U) / s
    elif M.ndim == 1 or not bool(torch.count_nonzero(M - torch.diag(M.diagonal()))):
        diagonal = (M if M.ndim == 1 else M.diagonal()).double().clamp(min=0)
        k = diagonal.shape[0] if n_components is None else int(n_components)
        evals, order = torch.sort(diagonal, descending=True, stable=True)
        evals, order = evals[:k], order[:k]
        evecs = diagonal.new_zeros(diagonal.shape[0], k)
        evecs[order, torch.arange(k, device=order.device)] = 1.0
    else:
        k = M.shape[0] if n_components is None else int(n_components)
        evals, evecs = psd_eigh(M)
        evals, evecs = evals.flip(0)[:k].clamp(min=0), evecs.flip(1)[:, :k]
    rows = evecs.abs().argmax(dim=0)
    signs = torch.sign(evecs[rows, torch.arange(evecs.shape[1], device=rows.device)])
    return evals, evecs * torch.where(signs == 0, 1.0, signs)


def psd_factor_power(B, power=0.5, *, rtol=None):
    """A root ``R`` of ``(B B^T)^p`` (``R R^T = (B B^T)^p``), from ``B`` alone.

    The low-rank counterpart of :func:`psd_power`: for ``B`` of shape ``(d, s)``
    with ``s < d``, the small ``s x s`` eigenproblem of ``B^T B = U S^2 U^T``
    gives the thin SVD ``B = V S U^T`` (``V = B U S^{-1}``), so that
    ``(B B^T)^p = V S^{2p} V^T`` and ``R = V S^p = B U S^{p-1}``: two
    ``d x s x s`` products instead of the ``O(d^3)`` of the ``d x d`` matrix.
    ``(B B^T)^p`` acts as 0 on the null space of ``B^T``, as ``psd_power`` with
    its clipped eigenvalues does. The products run in ``B``'s precision, as the
    ``d x d`` AGOP of the dense path is accumulated in it, and the
    eigenproblem in float64; directions whose eigenvalue is below ``rtol``
    times the largest are dropped (below the rounding of ``B^T B``: the rank
    is their count).

    Parameters
    ----------
    B : torch.Tensor of shape (d, s)
    power : float, default=0.5
    rtol : float, optional
        Relative to the largest eigenvalue of ``B^T B``; default ``s`` times
        the epsilon of ``B``'s dtype.

    Returns
    -------
    R : torch.Tensor of shape (d, r), ``r <= s``
        In ``B``'s dtype and on its device.

    Examples
    --------
    >>> import torch
    >>> from skdnc._linalg import psd_factor_power
    >>> B = torch.tensor([[4.0], [0.0], [0.0]], dtype=torch.float64)
    >>> R = psd_factor_power(B, 0.5)
    >>> (R @ R.T).diagonal().tolist()
    [4.0, 0.0, 0.0]
    """
    if rtol is None:
        rtol = max(B.shape[1], 1) * float(torch.finfo(B.dtype).eps)
    evals, U = psd_eigh(B.T @ B)
    evals, U = evals.to(B.device), U.to(B.device)
    top = float(evals[-1]) if len(evals) else 0.0
    keep = evals > max(top * rtol, float(torch.finfo(torch.float64).tiny))
    evals, U = evals[keep].flip(0), U[:, keep].flip(1)
    return B @ (U * evals.pow((power - 1) / 2)).to(B.dtype)
