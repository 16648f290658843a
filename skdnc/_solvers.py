"""Linear solves for kernel regression, ``(K_M(X, X) + reg I) alpha = Y``.

One entry point, :func:`fit_kernel_regression`, used by every estimator, and one
for blocked prediction, :func:`kernel_predict`.
"""

import math
import warnings

import torch
from scipy.linalg import LinAlgWarning

from skdnc._kernels import iter_row_blocks, kernel_matrix

SOLVERS = ("auto", "cholesky")


def _gib(n_bytes):
    return f"{n_bytes / 2**30:.2f} GiB"


def cholesky_bytes(n, itemsize):
    """Memory of the exact solve: the kernel matrix, factored in place."""
    return n * n * itemsize


def choose_solver(solver, n, itemsize, budget):
    """Resolve ``solver="auto"`` and check that the chosen solve fits ``budget``."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")
    need = cholesky_bytes(n, itemsize)
    if need > budget:
        raise ValueError(
            f"The {n} x {n} kernel matrix needs {_gib(need)}, more than the memory "
            f"budget of {_gib(budget)}. Raise memory_budget (in GiB), use "
            "dtype='float32', or fit on fewer samples."
        )
    return "cholesky"


def cholesky_solve_kernel(build_kernel, Y, reg, *, max_tries=6):
    """Solve ``(K + reg I) alpha = Y`` by Cholesky, escalating a jitter on failure.

    Parameters
    ----------
    build_kernel : callable
        ``build_kernel() -> K``, a new ``(n, n)`` kernel matrix (it is factored in
        place, so a retry builds it again).
    Y : torch.Tensor of shape (n, K)
    reg : float
        Ridge; ``0`` asks for the interpolating (ridgeless) solve.
    max_tries : int, default=6

    Returns
    -------
    alpha : torch.Tensor of shape (n, K)

    Warns
    -----
    scipy.linalg.LinAlgWarning
        When a jitter had to be added to the diagonal (the kernel matrix plus ridge
        is not numerically positive definite), or when the factor shows a
        condition number close to the limit of the working precision.
    """
    eps = torch.finfo(Y.dtype).eps
    jitter = 0.0
    for _ in range(max_tries):
        K = build_kernel()
        scale = float(K.diagonal().mean())
        K.diagonal().add_(reg + jitter)
        info = torch.empty((), dtype=torch.int32, device=K.device)
        torch.linalg.cholesky_ex(K, out=(K, info))  # in place: K holds the factor
        if int(info) == 0:
            _warn_conditioning(K.diagonal(), reg, jitter, eps)
            return torch.cholesky_solve(Y, K)
        del K
        jitter = max(100 * jitter, 1e3 * eps * scale)
    raise ValueError(
        f"The kernel matrix is not positive definite even with a jitter of "
        f"{jitter:.3g} added to its diagonal (reg={reg}). Increase reg."
    )


def _warn_conditioning(factor_diagonal, reg, jitter, eps):
    cond_lower_bound = float((factor_diagonal.max() / factor_diagonal.min()) ** 2)
    if jitter > 0:
        warnings.warn(
            f"The kernel matrix with reg={reg} is not numerically positive "
            f"definite; a jitter of {jitter:.3g} was added to its diagonal. Use a "
            "larger reg for a well-posed solve.",
            LinAlgWarning,
            stacklevel=4,
        )
    elif not math.isfinite(cond_lower_bound) or cond_lower_bound > 1e-2 / eps:
        warnings.warn(
            f"The kernel matrix with reg={reg} is ill-conditioned (condition number "
            f">= {cond_lower_bound:.3g}); the dual coefficients may be inaccurate. "
            "Use a larger reg or dtype='float64'.",
            LinAlgWarning,
            stacklevel=4,
        )


def fit_kernel_regression(X, Y, M, kernel, reg, *, solver="auto", budget):
    """Dual coefficients of kernel ridge regression with the kernel ``k_M``.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
        Training points, which become the centres.
    Y : torch.Tensor of shape (n, K)
        Targets.
    M : torch.Tensor of shape (d, d) or (d,), or None
    kernel : skdnc._kernels.Kernel
    reg : float
    solver : {"auto", "cholesky"}, default="auto"
    budget : int
        Memory budget in bytes.

    Returns
    -------
    alpha : torch.Tensor of shape (n, K)
    """
    choose_solver(solver, X.shape[0], X.element_size(), budget)
    return cholesky_solve_kernel(
        lambda: kernel_matrix(X, X, M, kernel, self_offset=0), Y, reg
    )


def kernel_predict(X, centers, alpha, M, kernel, *, budget):
    """``k_M(X, centers) @ alpha`` in row blocks that fit ``budget`` bytes."""
    n = centers.shape[0]
    rows = max(1, budget // max(1, 3 * n * X.element_size()))
    out = X.new_empty(X.shape[0], alpha.shape[1])
    for block in iter_row_blocks(X.shape[0], rows):
        out[block] = kernel_matrix(X[block], centers, M, kernel) @ alpha
    return out
