"""Linear solves for kernel regression, ``(K_M(X, X) + reg I) alpha = Y``.

One entry point, :func:`fit_kernel_regression`, used by every estimator, and one
for blocked prediction, :func:`kernel_predict`. Two solvers:

``"cholesky"``
    The exact solve: the kernel matrix is built once and factored in place
    (``n^2`` numbers of memory, ``n^3 / 3`` flops).
``"cg"``
    Conjugate gradients on all right-hand sides at once, preconditioned by a
    randomized Nystrom approximation of rank ``q`` (Frangella, Tropp and Udell,
    2023), with the kernel held in memory when it fits the budget (one
    ``n x n`` by ``n x K`` product per iteration) and recomputed in row blocks
    when it does not (memory ``O(n d + block x n)``).

``"auto"`` takes the exact solve while its kernel matrix fits the memory budget,
and conjugate gradients otherwise.

:func:`fit_kernel_regression_path` solves for a grid of ridge values at once
(``reg="auto"`` or a list of values on the RFM estimators): from one
eigendecomposition ``K = Q diag(lambda) Q^T``, every
``alpha(mu) = Q (diag(lambda) + mu I)^{-1} Q^T Y`` costs one product. Where the
eigendecomposition would cost more than the solves it replaces, or does not fit
the memory budget, or the solver is ``"cg"``, it solves one value at a time
(see :func:`ridge_path_method`). :func:`prepare_kernel_machine` does the shared
work once and returns a function that solves any ridge values, so that the
RFM rounds can try a few values, score them, and try more.
"""

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from scipy.linalg import LinAlgWarning

from skdnc._backend import block_rows, iter_row_blocks, kernel_block_rows
from skdnc._kernels import (
    apply_metric,
    kernel_matrix,
    mahalanobis_sqnorms,
    sqdist,
    training_kernel_matrix,
    zero_self_pairs,
)
from skdnc._linalg import psd_eigh

SOLVERS = ("auto", "cholesky", "cg", "nystrom", "falkon")
SOLVER_PARAMS = {"tol": None, "max_iter": 1000, "rank": 1000}

#: ``reg="auto"``: the half-decades from 1e-3 (close to interpolation, right for
#: separable classes) to 1e4 (on centred targets, close to predicting their
#: training mean: the null model that features without signal call for). The
#: kernels are 1 on their diagonal, so these values do not depend on the scale of
#: the data or of the targets.
REG_GRID = tuple(float(10.0 ** (k / 2)) for k in range(-6, 9))
#: The eigendecomposition path needs at least this many ridge values: on CPU
#: cores one ``eigh`` of a kernel matrix costs as much as a few dozen Cholesky
#: solves of it (``benchmarks/bench_hyperparams.py`` measures the ratio), so a
#: shorter grid is solved one value at a time.
EIGH_MIN_VALUES = 24
#: ... and at most this many points, beyond which the gap widens further.
EIGH_MAX_POINTS = 4096


def _gib(n_bytes):
    """A memory size in the unit that shows it: GiB, MiB, KiB or bytes."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n_bytes >= size:
            return f"{n_bytes / size:.2f} {unit}"
    return f"{int(n_bytes)} bytes"


def choose_solver(
    solver, n, itemsize, budget, rank=SOLVER_PARAMS["rank"], *, n_ranks=1
):
    """Resolve ``solver`` into ``("cholesky" | "cg", kernel_in_memory)``.

    The exact solve needs the ``n x n`` kernel matrix (factored in place); conjugate
    gradients need the ``n x q`` Nystrom factor and either the kernel matrix or, when
    that does not fit, a few row blocks of it. With ``n_ranks > 1`` (a distributed
    fit) the exact solve is not available and each rank holds only its
    ``ceil(n / n_ranks)`` rows of the kernel matrix.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")
    if n_ranks > 1:
        if solver == "cholesky":
            raise ValueError(
                f"solver='cholesky' is not distributed, and this fit runs on "
                f"{n_ranks} ranks of a torch.distributed process group. Use "
                "solver='cg' or 'auto', or distributed=False to fit on each rank "
                "alone."
            )
        solver = "cg"
    kernel_bytes = -(-n // n_ranks) * n * itemsize
    nystrom_bytes = 3 * n * min(n, rank) * itemsize
    if solver == "auto":
        solver = "cholesky" if kernel_bytes <= budget else "cg"
    if solver == "cholesky":
        if kernel_bytes > budget:
            raise ValueError(
                f"The {n} x {n} kernel matrix needs {_gib(kernel_bytes)}, more than "
                f"the memory budget of {_gib(budget)}. Raise memory_budget (in "
                "GiB), use solver='cg' or 'auto', or dtype='float32'."
            )
        return "cholesky", True
    if nystrom_bytes + 16 * n * itemsize > budget:
        raise ValueError(
            f"The rank-{min(n, rank)} Nystrom preconditioner for {n} points needs "
            f"{_gib(nystrom_bytes)}, more than the memory budget of {_gib(budget)}. "
            "Raise memory_budget (in GiB) or lower solver_params['rank']."
        )
    return "cg", kernel_bytes + nystrom_bytes <= budget


def cholesky_solve_kernel(
    build_kernel, Y, reg, *, max_tries=6, state=None, spare_bytes=0
):
    """Solve ``(K + reg I) alpha = Y`` by Cholesky, escalating a jitter on failure.

    Parameters
    ----------
    build_kernel : callable
        ``build_kernel() -> K``, a new ``(n, n)`` kernel matrix. It is factored in
        place, so a retry builds it again, unless a copy is kept (see ``state``).
    Y : torch.Tensor of shape (n, K)
    reg : float
        Ridge; ``0`` asks for the interpolating (ridgeless) solve.
    max_tries : int, default=6
    state : dict, optional
        Carries what one solve learnt to the next related one. Deep RFM passes
        one dict through its layers, whose kernel matrices only grow more singular
        as the classes collapse. ``state["jitter"]``: the first try adds it, and
        the jitter that succeeded is stored. ``state["at_risk"]``: set when the
        smallest pivot of the factor came within a small factor of the diagonal
        shift (``reg`` plus jitter), the sign that rounding errors have grown to
        the size of the ridge and that the next, more singular, matrix may fail
        to factor.
    spare_bytes : int, default=0
        Memory the solve may use beyond the kernel matrix. When ``state`` is at
        risk and this holds a second ``n x n`` buffer, the kernel matrix is kept
        and each try factors a copy, so a failed try costs one factorization
        instead of a new kernel matrix as well.

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
    state = {} if state is None else state
    jitter = float(state.get("jitter", 0.0))
    n = Y.shape[0]
    if state.get("at_risk", False) and n * n * Y.element_size() <= spare_bytes:
        build_kernel = build_kernel().clone  # keep it: each try factors a copy
    for _ in range(max_tries):
        F = build_kernel()
        scale = float(F.diagonal().mean())
        F.diagonal().add_(reg + jitter)
        if _factor_in_place(F):
            pivots = F.diagonal().square()  # U's diagonal, squared
            shift = reg + jitter
            state["jitter"] = jitter
            state["at_risk"] = float(pivots.min()) < 2 * shift + 1e3 * eps * scale
            _warn_conditioning(F.diagonal(), reg, jitter, eps)
            return _solve_factored(F, Y)
        del F
        jitter = max(100 * jitter, 1e3 * eps * scale)
    raise ValueError(
        f"The kernel matrix is not positive definite even with a jitter of "
        f"{jitter:.3g} added to its diagonal (reg={reg}). Increase reg."
    )


def _factor_in_place(K):
    """Cholesky factor of the symmetric ``K`` in its own memory; ``True`` on success.

    ``K.mT`` is a Fortran-ordered view of the same (symmetric) matrix, which LAPACK
    factors in place: no second ``n x n`` buffer, which ``torch.linalg.cholesky``
    on ``K`` itself would allocate. Afterwards ``K.mT`` holds ``U`` with
    ``K = U^T U`` in its upper triangle.
    """
    U = K.mT
    info = torch.empty((), dtype=torch.int32, device=K.device)
    torch.linalg.cholesky_ex(U, upper=True, out=(U, info))
    return int(info) == 0


def _solve_factored(K, Y):
    """Solve with the factor from :func:`_factor_in_place`, without copying it
    (``torch.cholesky_solve`` would)."""
    U = K.mT
    Z = torch.linalg.solve_triangular(U.mT, Y, upper=False)
    return torch.linalg.solve_triangular(U, Z, upper=True)


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


def fit_kernel_regression(
    X,
    Y,
    M,
    kernel,
    reg,
    *,
    solver="auto",
    budget,
    solver_params=None,
    generator=None,
    log=None,
    state=None,
    comm=None,
):
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
    solver : {"auto", "cholesky", "cg"}, default="auto"
    budget : int
        Memory budget in bytes.
    solver_params : dict, optional
        For ``"cg"``: ``tol`` (relative residual; default 1e-6 in float64, 1e-4
        in float32), ``max_iter``
        (default 1000) and ``rank`` of the Nystrom preconditioner (default 1000).
    generator : torch.Generator, optional
        Draws the Nystrom landmarks.
    log : callable, optional
        ``log(message)``: one line per solve, with the residual for ``"cg"``.
    state : dict, optional
        Jitter carried between related exact solves (see
        :func:`cholesky_solve_kernel`).
    comm : skdnc._distributed.Comm, optional
        Split the solve over a process group: conjugate gradients in which each
        rank computes its rows of every kernel product, with the preconditioner
        built on rank 0 and broadcast. ``None``: this process alone.

    Returns
    -------
    alpha : torch.Tensor of shape (n, K)
    """
    options = {**SOLVER_PARAMS, **(solver_params or {})}
    if options["tol"] is None:  # what the working precision can reach
        options["tol"] = 1e-6 if X.dtype == torch.float64 else 1e-4
    n = X.shape[0]
    method, in_memory = choose_solver(
        solver,
        n,
        X.element_size(),
        budget,
        options["rank"],
        n_ranks=1 if comm is None else comm.size,
    )
    if method == "cholesky":
        return cholesky_solve_kernel(
            lambda: training_kernel_matrix(X, M, kernel, triangle="lower"),
            Y,
            reg,
            state=state,
            spare_bytes=budget - n * n * X.element_size(),
        )
    tic = time.perf_counter()
    if comm is not None:
        matvec = _sharded_matvec(X, M, kernel, comm, in_memory, budget, options)
    elif in_memory:
        K = training_kernel_matrix(X, M, kernel)

        def matvec(V):
            return K @ _column_major(V)

    else:
        nystrom = 3 * n * options["rank"] * X.element_size()
        rows = kernel_block_rows(n, X, budget - nystrom, n_buffers=2)

        XM = apply_metric(X, M)
        norms = (XM * X).sum(dim=1)

        def matvec(V):
            out = torch.empty_like(V)
            V = _column_major(V)
            for block in iter_row_blocks(n, rows):
                Kb = sqdist(
                    X[block],
                    X,
                    None,
                    X_sqnorms=norms[block],
                    Z_sqnorms=norms,
                    XM=XM[block],
                )
                out[block] = kernel.from_sqdist(zero_self_pairs(Kb, block.start)) @ V
            return out

    precondition = nystrom_preconditioner(
        X, M, kernel, reg, rank=options["rank"], generator=generator, comm=comm
    )
    alpha, n_iter, residual = conjugate_gradient(
        matvec, Y, reg, precondition, tol=options["tol"], max_iter=options["max_iter"]
    )
    mode = "kernel in memory" if in_memory else "kernel in blocks"
    _report_cg(
        f"cg ({mode})",
        n_iter,
        residual,
        options["tol"],
        "Raise solver_params['max_iter'] or ['rank'], or increase reg.",
        tic=tic,
        log=log,
        stacklevel=3,
    )
    return alpha


def _report_cg(what, n_iter, residual, tol, advice, *, tic, log, stacklevel):
    """Log a conjugate-gradient solve and warn when it stopped short of ``tol``."""
    if log is not None:
        log(
            f"{what}: {n_iter} iterations, relative residual {residual:.2e}, "
            f"{time.perf_counter() - tic:.2f} s"
        )
    if residual > tol:
        warnings.warn(
            f"Conjugate gradients stopped after {n_iter} iterations at a relative "
            f"residual of {residual:.2e} > tol={tol:g}. {advice}",
            LinAlgWarning,
            stacklevel=stacklevel,
        )


def _sharded_matvec(X, M, kernel, comm, in_memory, budget, options):
    """``V -> K V`` on a process group: this rank's rows of the kernel matrix
    (held, or recomputed in blocks), the other rows gathered from the others."""
    n = X.shape[0]
    shard = comm.row_shard(n)
    XM = apply_metric(X, M)
    norms = (XM * X).sum(dim=1)

    def rows_of_kernel(block):
        D2 = sqdist(
            X[block], X, None, X_sqnorms=norms[block], Z_sqnorms=norms, XM=XM[block]
        )
        return kernel.from_sqdist(zero_self_pairs(D2, block.start))

    if in_memory:
        K = rows_of_kernel(shard)
        return lambda V: comm.gather_rows(K @ _column_major(V), n)
    nystrom = 3 * n * options["rank"] * X.element_size()
    rows = kernel_block_rows(n, X, budget - nystrom, n_buffers=2)

    def matvec(V):
        local = V.new_empty(shard.stop - shard.start, V.shape[1])
        V = _column_major(V)
        for block in iter_row_blocks(shard.stop - shard.start, rows):
            part = slice(shard.start + block.start, shard.start + block.stop)
            local[block] = rows_of_kernel(part) @ V
        return comm.gather_rows(local, n)

    return matvec


def check_reg(reg):
    """Validate a ridge parameter: a float, ``"auto"``, or a list of values.

    Parameters
    ----------
    reg : float, "auto" or array-like of float

    Returns
    -------
    reg : float, "auto" or tuple of float
        A list comes back sorted, without repeats.

    Raises
    ------
    ValueError
        For a negative or non-finite value, an empty list, or a list that is
        not one-dimensional.

    Examples
    --------
    >>> from skdnc._solvers import check_reg
    >>> check_reg([1.0, 0.01, 1.0])
    (0.01, 1.0)
    >>> check_reg("auto")
    'auto'
    """
    if isinstance(reg, str):
        if reg != "auto":
            raise ValueError(f"reg must be a float, 'auto' or a list; got {reg!r}.")
        return reg
    if isinstance(reg, Real):
        values = np.asarray([float(reg)])
    else:
        try:
            values = np.asarray(reg, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"reg must be a float, 'auto' or a list of non-negative floats; "
                f"got {reg!r}."
            ) from exc
        if values.ndim != 1 or values.size == 0:
            raise ValueError(
                "reg as a list needs at least one value, in a flat list; got "
                f"{reg!r}. Use reg='auto' for skdnc's grid."
            )
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(
            f"reg values must be finite and non-negative; got {reg!r}. Ridge values "
            "are in the units of the kernel (1 on its diagonal), e.g. [1e-3, 0.1, 10]."
        )
    if isinstance(reg, Real):
        return float(reg)
    return tuple(float(v) for v in np.unique(values))


def ridge_path_method(reg, n, itemsize, budget, *, solver="auto", rank=None, n_ranks=1):
    """How :func:`fit_kernel_regression_path` solves: the rule, in one place.

    Parameters
    ----------
    reg : "auto" or tuple of float
    n : int
        Number of training points.
    itemsize : int
        Bytes per number of the computation.
    budget : int
        Memory budget in bytes.
    solver : {"auto", "cholesky", "cg"}, default="auto"
    rank : int, optional
        Rank of the Nystrom preconditioner of ``"cg"``.
    n_ranks : int, default=1
        Ranks of a distributed fit, which always solves by ``"cg"`` (see
        :func:`choose_solver`).

    Returns
    -------
    method : {"eigh", "cholesky", "cg"}
        ``"eigh"`` (every value from one eigendecomposition) when the solver
        resolves to the exact solve, there are at least :data:`EIGH_MIN_VALUES`
        values and at most :data:`EIGH_MAX_POINTS` points, and the
        eigendecomposition's float64 buffers (six ``n x n`` of them) fit the
        budget. Otherwise one solve per value, by ``"cholesky"`` (sharing one
        kernel matrix when two fit the budget) or ``"cg"``.
    regs : tuple of float
        The values solved (``"auto"`` is :data:`REG_GRID`).
    """
    rank = SOLVER_PARAMS["rank"] if rank is None else rank
    method, _ = choose_solver(solver, n, itemsize, budget, rank, n_ranks=n_ranks)
    regs = REG_GRID if reg == "auto" else tuple(reg)
    return _path_method(method, len(regs), n, budget), regs


def _path_method(method, n_values, n, budget):
    """``"eigh"`` where one eigendecomposition of an ``n x n`` matrix pays for
    ``n_values`` ridge values (see :func:`ridge_path_method`), else ``method``."""
    if (
        method == "cholesky"
        and n_values >= EIGH_MIN_VALUES
        and n <= EIGH_MAX_POINTS
        and 6 * n * n * 8 <= budget
    ):
        return "eigh"
    return method


def ridge_path_solve(K, Y, regs):
    """``(K + mu I)^{-1} Y`` for every ``mu`` in ``regs``, from one ``eigh`` of ``K``.

    With ``K = Q diag(lambda) Q^T`` (in float64, negative eigenvalues of rounding
    clipped to 0), ``alpha(mu) = Q diag(1 / (lambda + mu)) Q^T Y``: the
    eigendecomposition is shared, and all values come from one product of ``Q``
    with the ``n x (len(regs) K)`` scaled coefficients.

    Parameters
    ----------
    K : torch.Tensor of shape (n, n)
        Symmetric PSD matrix.
    Y : torch.Tensor of shape (n, K)
    regs : sequence of float
        Ridge values; a ``0`` (the ridgeless solve) takes the pseudo-inverse,
        with eigenvalues under ``n * eps * lambda_max`` treated as zero.

    Returns
    -------
    alphas : torch.Tensor of shape (len(regs), n, K), in ``Y``'s dtype and device

    Examples
    --------
    >>> import torch
    >>> from skdnc._solvers import ridge_path_solve
    >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    >>> Y = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    >>> A = ridge_path_solve(K, Y, [0.0, 1.0])
    >>> torch.allclose(A[1], torch.linalg.solve(K + torch.eye(2), Y))
    True
    """
    return eigen_ridge_path(K, Y)(regs)


def eigen_ridge_path(K, Y):
    """:func:`ridge_path_solve` in two steps: the eigendecomposition of ``K``
    now, and a function ``regs -> alphas`` that any number of ridge values may
    call afterwards without factoring again."""
    evals, Q = psd_eigh(K)
    evals = evals.clamp(min=0)
    floor = K.shape[0] * torch.finfo(torch.float64).eps * float(evals[-1])
    C = Q.T @ Y.to(device=Q.device, dtype=torch.float64)

    def solve(regs):
        mus = torch.tensor(list(regs), dtype=torch.float64, device=Q.device)
        denom = evals[:, None] + mus[None, :]  # (n, G)
        inverse = torch.where(denom > floor, 1.0 / denom, torch.zeros_like(denom))
        W = (C[:, None, :] * inverse[:, :, None]).reshape(len(evals), -1)
        alphas = (Q @ W).reshape(len(evals), len(mus), -1).permute(1, 0, 2)
        return alphas.to(device=Y.device, dtype=Y.dtype).contiguous()

    return solve


def fit_kernel_regression_path(
    X,
    Y,
    M,
    kernel,
    reg,
    *,
    solver="auto",
    budget,
    solver_params=None,
    generator=None,
    log=None,
    comm=None,
):
    """Dual coefficients of kernel ridge regression for a grid of ridge values.

    The method and the grid follow :func:`ridge_path_method`: one
    eigendecomposition of the kernel matrix (:func:`ridge_path_solve`), or one
    :func:`fit_kernel_regression` per value.

    Parameters
    ----------
    X, Y, M, kernel, solver, budget, solver_params, generator, log, comm
        As in :func:`fit_kernel_regression`.
    reg : "auto" or sequence of float
        The ridge values (see :func:`check_reg`).

    Returns
    -------
    regs : tuple of float
        The values solved, ascending.
    alphas : torch.Tensor of shape (len(regs), n, K)
    """
    regs = REG_GRID if reg == "auto" else tuple(reg)
    solve = exact_ridge_path(
        X,
        Y,
        M,
        kernel,
        len(regs),
        solver=solver,
        budget=budget,
        solver_params=solver_params,
        generator=generator,
        log=log,
        comm=comm,
    )
    return regs, solve(regs)


def exact_ridge_path(
    X,
    Y,
    M,
    kernel,
    n_values,
    *,
    solver="auto",
    budget,
    solver_params=None,
    generator=None,
    log=None,
    comm=None,
):
    """The exact kernel machine prepared for about ``n_values`` ridge values.

    What one factorisation or kernel matrix can share is computed now (the
    method follows :func:`ridge_path_method` for ``n_values`` values): the
    eigendecomposition of the kernel matrix, or the kernel matrix itself when a
    second copy fits the budget (each value factors a copy); otherwise each
    value is one :func:`fit_kernel_regression`.

    Returns
    -------
    solve : callable
        ``solve(regs) -> alphas`` of shape ``(len(regs), n, K)``, for any ridge
        values, each solved exactly; it may be called several times.
    """
    rank = {**SOLVER_PARAMS, **(solver_params or {})}["rank"]
    n = X.shape[0]
    n_ranks = 1 if comm is None else comm.size
    method, _ = choose_solver(
        solver, n, X.element_size(), budget, rank, n_ranks=n_ranks
    )
    method = _path_method(method, n_values, n, budget)
    if method == "eigh":
        tic = time.perf_counter()
        solve = eigen_ridge_path(training_kernel_matrix(X, M, kernel), Y)
        if log is not None:
            log(
                f"ridge path (one eigendecomposition): "
                f"{time.perf_counter() - tic:.2f} s"
            )
        return solve
    if method == "cholesky" and 2 * n * n * X.element_size() <= budget:
        K = training_kernel_matrix(X, M, kernel, triangle="lower")
        return lambda regs: torch.stack(
            [cholesky_solve_kernel(K.clone, Y, mu) for mu in regs]
        )
    return lambda regs: torch.stack(
        [
            fit_kernel_regression(
                X,
                Y,
                M,
                kernel,
                mu,
                solver=method,
                budget=budget,
                solver_params=solver_params,
                generator=generator,
                log=log,
                comm=comm,
            )
            for mu in regs
        ]
    )


def _column_major(V):
    """``V`` with columns contiguous: the layout in which the memory-bound,
    tall-by-few product ``K @ V`` streams ``K`` fastest."""
    return V.mT.contiguous().mT


def nystrom_preconditioner(X, M, kernel, reg, *, rank, generator=None, comm=None):
    r"""Randomized Nystrom preconditioner of ``K + reg I``, applied by Woodbury.

    With ``q`` landmark rows ``S`` drawn uniformly, ``K ~ K_nS K_SS^{-1} K_Sn =
    U diag(lam) U^T`` (a thin SVD of ``K_nS L^{-T}``). The preconditioner

    .. math:: P^{-1} = (\lambda_q + \mu)\, U (\Lambda + \mu I)^{-1} U^\top
              + (I - U U^\top)

    leaves the directions outside ``U`` alone and maps the top ``q`` eigenvalues of
    ``K + mu I`` to about ``lambda_q + mu``.

    With a process group ``comm``, rank 0 builds it and broadcasts ``U`` and
    ``lam`` (every rank still draws the landmarks, to keep the generators in
    step).

    Returns
    -------
    apply : callable
        ``apply(R) -> P^{-1} R`` for ``R`` of shape (n, K).
    """
    n = X.shape[0]
    q = min(n, int(rank))
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    landmarks = torch.randperm(n, generator=generator)[:q].to(X.device)
    if comm is not None:
        return _broadcast_preconditioner(X, M, kernel, reg, landmarks, comm)
    U, lam = _nystrom_factor(X, M, kernel, landmarks)
    return _woodbury(U, lam, reg)


def _broadcast_preconditioner(X, M, kernel, reg, landmarks, comm):
    """The Nystrom factor of rank 0 on every rank of ``comm``."""
    size = torch.zeros(1, dtype=torch.long, device=X.device)
    if comm.rank == 0:
        U, lam = _nystrom_factor(X, M, kernel, landmarks)
        size[0] = lam.shape[0]
    comm.broadcast(size)
    if comm.rank != 0:
        U = X.new_empty(X.shape[0], int(size))
        lam = X.new_empty(int(size))
    comm.broadcast(U)
    comm.broadcast(lam)
    return _woodbury(U, lam, reg)


def _nystrom_factor(X, M, kernel, landmarks):
    """``U, lam`` with ``U diag(lam) U^T`` the Nystrom approximation of the kernel
    matrix from the ``landmarks`` (see :func:`nystrom_preconditioner`)."""
    q = landmarks.shape[0]
    K_nq = kernel_matrix(X, X[landmarks], M, kernel)
    K_qq = K_nq[landmarks]
    shift = torch.finfo(X.dtype).eps * q * float(K_qq.diagonal().mean())
    K_qq = K_qq + shift * torch.eye(q, dtype=X.dtype, device=X.device)
    # F F^T = K_nq K_qq^{-1} K_qn with F = K_nq R^{-T} for any K_qq = R R^T
    L, info = torch.linalg.cholesky_ex(K_qq)
    if int(info) == 0:
        F = torch.linalg.solve_triangular(L, K_nq.T, upper=False).T
    else:  # numerically rank-deficient landmarks: R = V diag(sqrt(evals))
        evals, evecs = psd_eigh(K_qq)
        F = K_nq @ (evecs / evals.clamp(min=shift).sqrt()).to(K_nq.dtype)
    del K_nq
    # Thin SVD of the tall F from the eigenpairs of the small F^T F = V S^2 V^T:
    # U = F V S^{-1}. One n x q x q GEMM instead of a tall SVD; eigenvalues under
    # a relative 1e-10 are dropped.
    lam, V = psd_eigh(F.T @ F)
    keep = lam > 1e-10 * lam[-1]
    lam, V = lam[keep].to(F.dtype), V[:, keep].to(F.dtype)
    U = F @ (V / lam.sqrt())
    del F
    return U.contiguous(), lam.contiguous()


def _woodbury(U, lam, reg):
    """``R -> P^{-1} R``, the preconditioner of the factor ``U diag(lam) U^T``."""
    lam_q = float(lam[0])

    def apply(R):
        UR = (R.mT @ U).mT  # the fastest layout for this product here, by 10x
        return R + U @ _column_major(((lam_q + reg) / (lam + reg))[:, None] * UR - UR)

    return apply


def conjugate_gradient(matvec, Y, reg, precondition, *, tol, max_iter):
    """Preconditioned CG for ``(K + reg I) A = Y``, all columns at once.

    Each column runs its own CG recursion (its own step sizes); they share the
    matrix products. Columns that have converged stop moving.

    Returns
    -------
    A : torch.Tensor of shape (n, K)
    n_iter : int
    residual : float
        Largest relative residual ``||y - (K + reg I) a|| / ||y||`` over columns.
    """
    A = torch.zeros_like(Y)
    R = Y.clone()
    y_norm = torch.linalg.vector_norm(Y, dim=0).clamp(min=torch.finfo(Y.dtype).tiny)
    Z = precondition(R)
    P = Z.clone()
    rz = (R * Z).sum(dim=0)
    residual = torch.linalg.vector_norm(R, dim=0) / y_norm
    n_iter = 0
    while n_iter < max_iter and float(residual.max()) > tol:
        n_iter += 1
        KP = matvec(P) + reg * P
        active = residual > tol
        step = torch.where(active, rz / (P * KP).sum(dim=0), torch.zeros_like(rz))
        A += step * P
        R -= step * KP
        Z = precondition(R)
        rz_new = (R * Z).sum(dim=0)
        P = Z + torch.where(active, rz_new / rz, torch.zeros_like(rz)) * P
        rz = rz_new
        residual = torch.linalg.vector_norm(R, dim=0) / y_norm
    return A, n_iter, float(residual.max())


def kernel_predict(X, centers, alpha, M, kernel, *, budget, comm=None):
    """``k_M(X, centers) @ alpha`` in row blocks that fit ``budget`` bytes.

    With a process group ``comm``, each rank computes its rows of ``X`` and every
    rank returns all of them."""
    n = centers.shape[0]
    rows = kernel_block_rows(n, X, budget, n_buffers=2)
    n_points = X.shape[0]
    if comm is not None:
        X = X[comm.row_shard(n_points)]
    out = X.new_empty(X.shape[0], alpha.shape[1])
    alpha = _column_major(alpha)
    center_norms = mahalanobis_sqnorms(centers, M)  # once, not once per block
    for block in iter_row_blocks(X.shape[0], rows):
        D2 = sqdist(X[block], centers, M, Z_sqnorms=center_norms)
        out[block] = kernel.from_sqdist(D2) @ alpha
    return out if comm is None else comm.gather_rows(out, n_points)


# -- Nystrom-centre kernel machines (Falkon's model) ------------------------------

#: ``n_centers="auto"``: a quarter of the points, clipped to this range, and at
#: most ``max(1024, NYSTROM_ENTRIES / n)`` (so that ``K_nm`` holds at most 2^26
#: numbers, 256 MiB in float32, and stays in memory as one block); every point
#: (the exact model) up to ``NYSTROM_CENTERS_RANGE[1]`` points.
NYSTROM_CENTERS_RANGE = (1024, 2048)
NYSTROM_ENTRIES = 2**26
#: ... and, given the number of features ``d``, at most ``n d / 48`` centres and
#: at least ``min(1024, 48 d)``: fewer than a quarter of the points below 12
#: features. Each round's normal matrix costs ``n m^2``, and low-dimensional
#: data need fewer centres for the same fit (measured in the regression section
#: of ``benchmarks/bench_nystrom.py``, with the figures in ``doc/scaling.rst``).
NYSTROM_CENTERS_PER_FEATURE = 48
#: ... and, past the exact model's ``6 d`` points, an upper clip of ``6 d``
#: centres (at most this many) instead of 2,048: many features need more
#: centres to come close to the exact model (the exact section of
#: ``benchmarks/bench_nystrom.py``).
NYSTROM_MAX_CENTERS = 4096
#: ... and, given the number of features ``d``, every point up to
#: ``EXACT_POINTS_PER_FEATURE * d`` points (at most ``EXACT_MAX_POINTS``): there
#: the exact factorisation (``n^3 / 3``) costs no more than the ``n^2 d``
#: distance and AGOP products every round pays anyway, and the exact model is
#: the more accurate (``benchmarks/bench_rfm.py``, image-like, d = 784).
EXACT_POINTS_PER_FEATURE = 6
EXACT_MAX_POINTS = 8192


def resolve_centers(n_centers, n, n_features=None):
    """The number of Nystrom centres ``m`` of ``n_centers`` for ``n`` points.

    Parameters
    ----------
    n_centers : int, float in (0, 1] or "auto"
        A number of centres (at most ``n``), a fraction of ``n``, or ``"auto"``:
        ``n`` up to 2,048 points (the exact model); beyond, ``n / 4`` clipped to
        [1024, 2048] and at most ``max(1024, 2^26 / n)`` (``K_nm`` of at most
        2^26 numbers): 1,250 centres at 5,000 points, 2,048 from 8,192 to
        32,768 points, 1,024 from 65,536 points. With ``n_features`` ``d``
        given, every point is a centre also up to ``6 d`` points (at most
        8,192), the quarter is at most ``n d / 48``, the lower clip
        ``min(1024, 48 d)`` (fewer centres for fewer than 12 features: 750 at
        4,000 points with 9 features) and the upper clip
        ``min(4096, max(2048, 6 d))`` (more for more than 341 features: 4,000
        at 16,000 points with 784 features).
    n : int
    n_features : int, optional
        The number of features ``d`` of the points.

    Returns
    -------
    m : int
        Between 1 and ``n``.

    Raises
    ------
    ValueError
        For 0, a negative number, more centres than points, NaN, a fraction
        outside (0, 1] or a string other than ``"auto"``.

    Examples
    --------
    >>> from skdnc._solvers import resolve_centers
    >>> [resolve_centers(c, 1000) for c in ("auto", 0.5, 10)]
    [1000, 500, 10]
    >>> [resolve_centers("auto", n) for n in (1000, 5000, 20_000, 10**6)]
    [1000, 1250, 2048, 1024]
    >>> [resolve_centers("auto", 4000, d) for d in (9, 100, 784)]
    [750, 1024, 4000]
    """
    if isinstance(n_centers, str):
        if n_centers != "auto":
            raise ValueError(
                f"n_centers must be a positive int, a fraction in (0, 1] or 'auto'; "
                f"got {n_centers!r}."
            )
        low, high = NYSTROM_CENTERS_RANGE
        exact, grow = high, n // 4
        if n_features is not None:
            d = int(n_features)
            exact = max(high, min(EXACT_MAX_POINTS, EXACT_POINTS_PER_FEATURE * d))
            low = min(low, NYSTROM_CENTERS_PER_FEATURE * d)
            grow = min(grow, n * d // NYSTROM_CENTERS_PER_FEATURE)
            high = min(exact, NYSTROM_MAX_CENTERS)
        if n <= exact:
            return n
        m = max(low, min(high, grow))
        return min(m, max(NYSTROM_CENTERS_RANGE[0], NYSTROM_ENTRIES // n))
    if isinstance(n_centers, bool) or not isinstance(n_centers, Real):
        raise ValueError(
            f"n_centers must be a positive int, a fraction in (0, 1] or 'auto'; got "
            f"{n_centers!r}."
        )
    if isinstance(n_centers, Integral):
        if n_centers < 1 or n_centers > n:
            raise ValueError(
                f"n_centers={n_centers} must be between 1 and the {n} training "
                "points (or a fraction in (0, 1], or 'auto')."
            )
        return int(n_centers)
    if not (0 < n_centers <= 1):  # also NaN
        raise ValueError(
            f"n_centers as a fraction must be in (0, 1]; got {n_centers!r}."
        )
    return max(1, min(n, int(round(float(n_centers) * n))))


#: ``n_centers="auto"``: the kernel machine fitted on all the training points
#: (the refit after the rounds on a validation split, or every round of a fit
#: without one) takes every point as a centre up to this many points, while its
#: kernel matrix fits half the memory budget. The rounds on the split need only
#: the metric, which the Nystrom model learns as well; the final predictor
#: needs the exact model's fit of every training point (near interpolation on
#: clean data), which more Nystrom centres do not give (the ``exact`` section
#: of ``benchmarks/bench_nystrom.py`` and ``doc/scaling.rst``).
EXACT_REFIT_MAX_POINTS = 32_768


def refit_centers(
    n_centers, solver, n, itemsize, budget, *, n_features=None, n_ranks=1
):
    """``(n_centers, solver)`` of the kernel machine fitted on all ``n`` points.

    With ``n_centers="auto"`` and ``solver="auto"``, every point is a centre
    (``n_centers=1.0``) when :func:`resolve_centers` would take fewer, ``n`` is
    at most :data:`EXACT_REFIT_MAX_POINTS` and twice this rank's rows of the
    ``n x n`` kernel matrix fit ``budget``; the exact model is then solved by
    Cholesky up to :data:`EXACT_MAX_POINTS` points and by conjugate gradients
    with the kernel matrix held beyond (``n^3 / 3`` against a few dozen
    ``n^2`` products). Anything else is returned as it is: a number of centres
    or a solver the caller chose, or the Nystrom model of ``n_centers="auto"``
    where the kernel matrix would not fit.

    Examples
    --------
    >>> from skdnc._solvers import refit_centers
    >>> gib = 2**30
    >>> refit_centers("auto", "auto", 20_000, 4, 8 * gib, n_features=784)
    (1.0, 'cg')
    >>> refit_centers("auto", "auto", 20_000, 4, gib, n_features=784)
    ('auto', 'auto')
    >>> refit_centers(500, "auto", 20_000, 4, 8 * gib)
    (500, 'auto')
    """
    if n_centers != "auto" or solver != "auto":
        return n_centers, solver
    if resolve_centers("auto", n, n_features) >= n:
        return n_centers, solver  # the exact model already
    kernel_bytes = -(-n // n_ranks) * n * itemsize
    if n > EXACT_REFIT_MAX_POINTS or 2 * kernel_bytes > budget:
        return n_centers, solver
    return 1.0, ("cg" if n > EXACT_MAX_POINTS else "auto")


def choose_method(
    solver,
    n,
    m,
    itemsize,
    budget,
    rank=SOLVER_PARAMS["rank"],
    *,
    grid=False,
    n_ranks=1,
):
    """Resolve ``solver`` for ``n`` points and ``m`` centres: the rule, in one place.

    Parameters
    ----------
    solver : {"auto", "cholesky", "cg", "nystrom", "falkon"}
    n, m : int
        Training points and centres (``m = n``: every point is a centre).
    itemsize : int
        Bytes per number of the computation.
    budget : int
        Memory budget in bytes.
    rank : int
        Rank of the Nystrom preconditioner of ``"cg"``.
    grid : bool, default=False
        Whether a grid of ridge values is solved.
    n_ranks : int, default=1

    Returns
    -------
    method : {"cholesky", "cg", "nystrom", "falkon"}
        ``"auto"`` takes the exact model when ``m = n`` (``"cholesky"`` while
        the kernel matrix fits the budget, else ``"cg"``, see
        :func:`choose_solver`), and the Nystrom model otherwise: ``"falkon"``
        (preconditioned conjugate gradients) for one ridge value, ``"nystrom"``
        (the ``m x m`` normal matrix formed once in float64 and solved directly
        for every value) for a grid.
    in_memory : bool
        ``"cg"``: the kernel matrix is held; ``"falkon"``: this rank's rows of
        ``K_nm`` are held (when they fit half the budget). ``False`` for the
        direct solves.
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}; got {solver!r}.")
    if solver in ("cholesky", "cg") or (solver == "auto" and m >= n):
        if m < n:
            raise ValueError(
                f"solver={solver!r} solves the exact model, with every one of the "
                f"{n} training points a centre, but n_centers asks for {m}. Use "
                "solver='auto', 'nystrom' or 'falkon', or n_centers='auto'."
            )
        return choose_solver(solver, n, itemsize, budget, rank, n_ranks=n_ranks)
    small = 4 * m * m * 8  # K_mm, its factor, the normal matrix and a product
    block = 2 * m * itemsize * 16  # blocks of at least 16 rows
    if small + block > budget:
        raise ValueError(
            f"The Nystrom system of {m} centres needs {_gib(small + block)}, more "
            f"than the memory budget of {_gib(budget)}. Raise memory_budget (in "
            "GiB) or lower n_centers."
        )
    if solver == "auto":
        solver = "nystrom" if grid else "falkon"
    if solver == "nystrom":
        return "nystrom", False
    held = -(-n // n_ranks) * m * itemsize
    return "falkon", small + held <= budget // 2


def draw_centers(n, m, generator):
    """``m`` of the ``n`` training points, drawn uniformly without replacement
    with ``generator``; sorted indices on the CPU (all of them when ``m = n``)."""
    if m >= n:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:m].sort().values


class _CentreRows:
    """The rows of ``K_nm = k_M(X, X[centres])`` this rank computes: held, or
    recomputed in row blocks of at most ``budget`` bytes (two buffers)."""

    def __init__(self, X, M, centres, kernel, *, budget, comm=None, hold=False):
        n, m = X.shape[0], centres.shape[0]
        self.X, self.kernel = X, kernel
        self.XM = apply_metric(X, M)
        self.norms = (self.XM * X).sum(dim=1)
        self.centres = centres.to(X.device)
        self.C = X[self.centres]
        self.shard = slice(0, n) if comm is None else comm.row_shard(n)
        self.rows = block_rows(m, X.element_size(), max(budget, 1), n_buffers=2)
        self.held = self._block(self.shard) if hold else None

    def _block(self, rows):
        D2 = sqdist(
            self.X[rows],
            self.C,
            None,
            X_sqnorms=self.norms[rows],
            Z_sqnorms=self.norms[self.centres],
            XM=self.XM[rows],
        )
        # Points that are centres: distance exactly 0 to themselves, by index.
        bounds = torch.tensor([rows.start, rows.stop], device=self.centres.device)
        lo, hi = (int(i) for i in torch.searchsorted(self.centres, bounds))
        j = torch.arange(lo, hi, device=D2.device)
        D2[self.centres[lo:hi] - rows.start, j] = 0.0
        return self.kernel.from_sqdist(D2)

    def blocks(self):
        """Yield ``(rows, K_rows)``: slices of the points and their kernel rows."""
        if self.held is not None:
            yield self.shard, self.held
            return
        start = self.shard.start
        for block in iter_row_blocks(self.shard.stop - start, self.rows):
            rows = slice(start + block.start, start + block.stop)
            yield rows, self._block(rows)


def _all_reduce(comm, *tensors):
    """Sum every tensor over the ranks of ``comm`` in one all-reduce (in place)."""
    if comm is None:
        return tensors
    flat = comm.all_reduce_sum(torch.cat([t.reshape(-1) for t in tensors]))
    start = 0
    for t in tensors:
        t.copy_(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return tensors


def nystrom_normal_equations(rows, Y, comm=None, L=None):
    """``G = K_nm^T K_nm`` and ``R = K_nm^T Y`` in float64, from the row blocks
    of ``rows`` and, on a process group, one all-reduce; with the lower factor
    ``L`` of ``K_mm``, the whitened ``A = W^T W`` and ``W^T Y`` of
    ``W = K_nm L^{-T}`` instead (``A = L^{-1} G L^{-T}``).

    The kernel rows are computed in the working precision and multiplied in
    float64: ``G`` has about the square of the condition number of ``K_nm``, and
    float32 products left it indefinite by far more than the ridge (HIGGS-like
    data, 100,000 points, 2,048 centres). ``A`` is formed as a Gram matrix of
    the whitened rows, so it is positive semi-definite to rounding whatever the
    condition number of ``L``; forming it from ``G`` by two triangular solves
    left ``A + mu I`` indefinite (diamonds, 16,000 points, 2,048 to 4,096
    centres in float64, where the jitter of ``K_mm`` is ``1e-12``)."""
    m = rows.C.shape[0]
    G = torch.zeros(m, m, dtype=torch.float64, device=Y.device)
    R = torch.zeros(m, Y.shape[1], dtype=torch.float64, device=Y.device)
    # G is symmetric: its lower block triangle in row panels, 5/8 of the flops
    # of the full product with 4 panels, then mirrored.
    step = max(256, -(-m // 4))
    for block, K in rows.blocks():
        V = K.double().T  # (m, rows)
        if L is not None:
            V = torch.linalg.solve_triangular(L, V, upper=False)
        for j in range(0, m, step):
            G[j:, j : j + step].addmm_(V[j:], V[j : j + step].T)
        R.addmm_(V, Y[block].double())
    upper = torch.triu_indices(m, m, 1, device=G.device)
    G[upper[0], upper[1]] = G[upper[1], upper[0]]
    return _all_reduce(comm, G, R)


def centre_factor(K_mm, dtype):
    """Lower Cholesky factor ``L`` (float64) of ``K_mm`` plus a jitter of the
    working precision, ``eps(dtype) m`` times its mean diagonal, raised tenfold
    until it factors."""
    m = K_mm.shape[0]
    K64 = K_mm.double()
    shift = torch.finfo(dtype).eps * m * float(K64.diagonal().mean())
    eye = torch.eye(m, dtype=torch.float64, device=K64.device)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(K64 + shift * eye)
        if int(info) == 0:
            return L
        shift *= 10
    raise ValueError(
        f"The kernel matrix of the {m} Nystrom centres is not positive definite "
        f"even with a jitter of {shift:.3g}: are many centres duplicates? Lower "
        "n_centers or remove duplicate rows."
    )


def falkon_preconditioner(L, n, reg):
    r"""Falkon's preconditioner of ``K_nm^T K_nm + reg K_mm`` (Rudi et al., 2017).

    With ``K_mm = L L^T`` and the ``m`` centres a uniform sample of the ``n``
    points, ``K_nm^T K_nm ~ (n / m) K_mm^2``, so the system is about
    ``L ((n / m) L^T L + reg I) L^T`` and

    .. math:: P^{-1} = L^{-T} \big(\tfrac{n}{m} L^\top L + \mathrm{reg}\, I
              \big)^{-1} L^{-1},

    two triangular solves and one Cholesky solve of an ``m x m`` matrix.

    Returns
    -------
    apply : callable
        ``apply(R) -> P^{-1} R`` for ``R`` of shape (m, K), float64.
    """
    m = L.shape[0]
    B = (n / m) * (L.T @ L)
    B.diagonal().add_(reg + torch.finfo(torch.float64).eps * float(B.diagonal().max()))
    A = torch.linalg.cholesky(B)

    def apply(R):
        Z = torch.linalg.solve_triangular(L, R, upper=False)
        return torch.linalg.solve_triangular(
            L.T, torch.cholesky_solve(Z, A), upper=True
        )

    return apply


def _nystrom_solve(X, Y, M, kernel, regs, centres, method, in_memory, **kwargs):
    """The coefficients ``beta`` of every ridge value in ``regs``, shape
    ``(len(regs), m, K)``, of the Nystrom system on ``X[centres]`` (see
    :func:`nystrom_ridge_path`)."""
    kwargs.setdefault("n_values", len(regs))
    return nystrom_ridge_path(X, Y, M, kernel, centres, method, in_memory, **kwargs)(
        regs
    )


def nystrom_ridge_path(
    X,
    Y,
    M,
    kernel,
    centres,
    method,
    in_memory,
    *,
    n_values,
    budget,
    options,
    log=None,
    state=None,
    comm=None,
):
    """The Nystrom system on ``X[centres]`` prepared for about ``n_values``
    ridge values.

    ``"nystrom"`` forms the factor ``K_mm = L L^T`` and
    ``A = L^{-1} K_nm^T K_nm L^{-T}`` (the Gram matrix of the whitened rows
    ``K_nm L^{-T}``, its lower block triangle) and ``L^{-1} K_nm^T Y``
    now; each value ``mu`` is then one Cholesky solve of ``A + mu I``
    (``m^3 / 3`` flops), since ``(A + mu I) L^T beta = L^{-1} R``, or, for
    :data:`EIGH_MIN_VALUES` values or more, every value comes from one
    eigendecomposition of ``A``. ``"falkon"`` holds ``K_nm`` (or its row
    blocks) and runs one preconditioned CG per value.

    Returns
    -------
    solve : callable
        ``solve(regs) -> betas`` of shape ``(len(regs), m, K)``, for any ridge
        values, each solved exactly (``"nystrom"``) or to ``options["tol"]``
        (``"falkon"``); it may be called several times.
    """
    tic = time.perf_counter()
    m = centres.shape[0]
    n = X.shape[0]
    small = 4 * m * m * 8
    held = -(-n // (1 if comm is None else comm.size)) * m * X.element_size()
    rows = _CentreRows(
        X,
        M,
        centres,
        kernel,
        budget=budget - small - (held if in_memory else 0),
        comm=comm,
        hold=in_memory,
    )
    K_mm = training_kernel_matrix(rows.C, M, kernel).double()
    L = centre_factor(K_mm, X.dtype)
    if method == "nystrom":
        # (G + mu L L^T) beta = R  <=>  (A + mu I) L^T beta = L^{-1} R: A + mu I
        # is well conditioned where G + mu K_mm is not (near-duplicate centres,
        # a float64 jitter of 1e-12: measured singular at 16,000 x 4,096).
        A, b = nystrom_normal_equations(rows, Y, comm, L=L)
        del rows
        if n_values >= EIGH_MIN_VALUES:  # the rule of ridge_path_method
            eigen = eigen_ridge_path(A, b)
        else:

            def eigen(regs):
                return torch.stack(
                    [cholesky_solve_kernel(A.clone, b, mu, state=state) for mu in regs]
                )

        def solve(regs):
            Z = eigen(regs)
            return torch.linalg.solve_triangular(L.T, Z, upper=True).to(Y.dtype)

        if log is not None:
            log(
                f"nystrom ({m} centres, direct): normal matrix "
                f"{time.perf_counter() - tic:.2f} s"
            )
        return solve

    # With its jitter, the model's (and the preconditioner's) matrix: L L^T.
    K_mm.diagonal().copy_(L.square().sum(dim=1))

    def normal_matvec(V):
        out = torch.zeros_like(V)
        Vw = _column_major(V.to(X.dtype))
        for _, K in rows.blocks():
            out += (K.T @ (K @ Vw)).double()
        return _all_reduce(comm, out)[0]

    R = torch.zeros(m, Y.shape[1], dtype=torch.float64, device=Y.device)
    for block, K in rows.blocks():
        R += (K.T @ Y[block]).double()
    _all_reduce(comm, R)

    def solve(regs):
        betas = []
        for mu in regs:
            precondition = falkon_preconditioner(L, n, mu)
            beta, n_iter, residual = conjugate_gradient(
                lambda V, mu=mu: normal_matvec(V) + mu * (K_mm @ V),
                R,
                0.0,
                precondition,
                tol=options["tol"],
                max_iter=options["max_iter"],
            )
            mode = "K_nm in memory" if in_memory else "K_nm in blocks"
            _report_cg(
                f"falkon ({m} centres, {mode})",
                n_iter,
                residual,
                options["tol"],
                "Raise solver_params['max_iter'], or increase reg.",
                tic=tic,
                log=log,
                stacklevel=5,
            )
            betas.append(beta)
        return torch.stack(betas).to(Y.dtype)

    return solve


def fit_kernel_machine_path(
    X,
    Y,
    M,
    kernel,
    reg,
    *,
    n_centers="auto",
    n_features=None,
    solver="auto",
    budget,
    solver_params=None,
    generator=None,
    log=None,
    state=None,
    comm=None,
):
    """A kernel machine ``f(x) = k_M(x, C) beta`` for one or many ridge values.

    The centres ``C`` are every training point (the exact model, solved by
    :func:`fit_kernel_regression` or :func:`fit_kernel_regression_path`) or
    ``m`` of them drawn uniformly with ``generator`` (Falkon's Nystrom model):
    ``beta`` solves

    .. math:: (K_{nm}^\\top K_{nm} + \\mathrm{reg}\\, K_{mm})\\, \\beta
              = K_{nm}^\\top Y,

    Falkon's system with ``lambda n = reg``, so that ``m = n`` gives back the
    exact ``(K + reg I)^{-1} Y``. The method follows :func:`choose_method`.
    The direct Nystrom solve forms ``G = K_nm^T K_nm`` in row blocks (memory
    ``O(n d + m^2 + block)``), factors ``K_mm = L L^T`` and solves every ridge
    value ``mu`` from ``A = L^{-1} G L^{-T}``: ``(A + mu I) L^T beta = L^{-1} R``,
    one ``m x m`` Cholesky per value, or one eigendecomposition of ``A`` for
    :data:`EIGH_MIN_VALUES` values or more (the rule of
    :func:`ridge_path_method`); ``"falkon"`` runs conjugate gradients with Falkon's
    preconditioner (:func:`falkon_preconditioner`), ``K_nm`` held when it fits
    half the budget and recomputed in row blocks otherwise.

    Parameters
    ----------
    X, Y, M, kernel, budget, solver_params, generator, log, state, comm
        As in :func:`fit_kernel_regression`; ``generator`` also draws the
        centres.
    reg : float, "auto" or sequence of float
        One ridge value, or a grid (see :func:`check_reg`).
    n_centers : int, float or "auto", default="auto"
        See :func:`resolve_centers`.
    n_features : int, optional
        The number of features of the data (``"auto"`` centres depend on it;
        ``X`` may hold the fewer columns of a low-rank metric's coordinates).
    solver : {"auto", "cholesky", "cg", "nystrom", "falkon"}, default="auto"

    Returns
    -------
    regs : tuple of float
        The values solved, ascending.
    centres : torch.Tensor of shape (m,), dtype long, or None
        Indices of the centres in ``X`` (sorted); ``None`` for every point.
    coefs : torch.Tensor of shape (len(regs), m, K)
    """
    grid = isinstance(reg, str | tuple | list)
    regs = (REG_GRID if reg == "auto" else tuple(reg)) if grid else (float(reg),)
    centres, solve = prepare_kernel_machine(
        X,
        Y,
        M,
        kernel,
        n_values=len(regs),
        grid=grid,
        n_centers=n_centers,
        n_features=n_features,
        solver=solver,
        budget=budget,
        solver_params=solver_params,
        generator=generator,
        log=log,
        state=state,
        comm=comm,
    )
    return regs, centres, solve(regs)


def prepare_kernel_machine(
    X,
    Y,
    M,
    kernel,
    *,
    n_values,
    grid=True,
    n_centers="auto",
    n_features=None,
    solver="auto",
    budget,
    solver_params=None,
    generator=None,
    log=None,
    state=None,
    comm=None,
):
    """One kernel machine's solves, prepared once for any ridge values.

    The work the ridge values share (the kernel matrix or its
    eigendecomposition; the centres, ``K_mm``'s factor and the normal matrix of
    the Nystrom model) is done now, for the method :func:`choose_method` picks,
    so that a search that tries a few values, looks at their scores and then
    tries more (:func:`~skdnc._rfm_core.rfm_rounds`) pays for it once.

    Parameters
    ----------
    X, Y, M, kernel, n_centers, n_features, solver, budget
        As in :func:`fit_kernel_machine_path`.
    solver_params, generator, log, state, comm
        As in :func:`fit_kernel_machine_path`.
    n_values : int
        About how many ridge values will be solved: it chooses between one
        eigendecomposition and a Cholesky factorisation per value.
    grid : bool, default=True
        Whether several values may be solved (``False``: the single-value
        methods, ``"falkon"`` for the Nystrom model).

    Returns
    -------
    centres : torch.Tensor of shape (m,), dtype long, or None
        Indices of the centres in ``X`` (sorted); ``None`` for every point.
    solve : callable
        ``solve(regs) -> coefs`` of shape ``(len(regs), m, K)``; each value is
        solved as a separate solve would (exactly by the direct methods, to the
        tolerance by conjugate gradients).
    """
    options = {**SOLVER_PARAMS, **(solver_params or {})}
    if options["tol"] is None:
        options["tol"] = 1e-6 if X.dtype == torch.float64 else 1e-4
    n = X.shape[0]
    exact = solver in ("cholesky", "cg") and n_centers == "auto"
    m = n if exact else resolve_centers(n_centers, n, n_features)
    n_ranks = 1 if comm is None else comm.size
    method, in_memory = choose_method(
        solver,
        n,
        m,
        X.element_size(),
        budget,
        options["rank"],
        grid=grid,
        n_ranks=n_ranks,
    )
    common = {
        "solver": method,
        "budget": budget,
        "solver_params": solver_params,
        "generator": generator,
        "log": log,
        "comm": comm,
    }
    if method in ("cholesky", "cg"):
        if grid:
            return None, exact_ridge_path(X, Y, M, kernel, n_values, **common)
        return None, lambda regs: torch.stack(
            [
                fit_kernel_regression(X, Y, M, kernel, mu, state=state, **common)
                for mu in regs
            ]
        )
    centres = draw_centers(n, m, generator)
    solve = nystrom_ridge_path(
        X,
        Y,
        M,
        kernel,
        centres,
        method,
        in_memory,
        n_values=n_values,
        budget=budget,
        options=options,
        log=log,
        state=state,
        comm=comm,
    )
    return centres.to(X.device), solve


def fit_kernel_machine(X, Y, M, kernel, reg, **kwargs):
    """:func:`fit_kernel_machine_path` for one ridge value.

    Returns
    -------
    centres : torch.Tensor of shape (m,), dtype long, or None
    coef : torch.Tensor of shape (m, K)
    """
    _, centres, coefs = fit_kernel_machine_path(X, Y, M, kernel, float(reg), **kwargs)
    return centres, coefs[0]
