"""The RFM algorithm: target encoding, one AGOP step, and the rounds of an RFM.

Recursive Feature Machines alternate a kernel ridge solve (:mod:`skdnc._solvers`)
with an AGOP update of the Mahalanobis matrix ``M`` (:mod:`skdnc._agop`). This
module holds that loop, which :class:`~skdnc.RFMClassifier`,
:class:`~skdnc.RFMRegressor` and every layer of
:class:`~skdnc.DeepRFMTransformer` run; the estimators only validate, encode and
store.
"""

import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from skdnc._agop import kernel_agop, normalize_agop, sample_points
from skdnc._backend import block_rows
from skdnc._base import DEVICE_CONSTRAINT
from skdnc._kernels import KERNELS
from skdnc._linalg import psd_power
from skdnc._solvers import SOLVERS, fit_kernel_regression

#: ``_parameter_constraints`` of the parameters every kernel machine of skdnc has
#: (RFMClassifier, RFMRegressor and each layer of DeepRFMTransformer).
KERNEL_MACHINE_CONSTRAINTS = {
    "kernel": [StrOptions(set(KERNELS))],
    "bandwidth": [Interval(Real, 0, None, closed="neither")],
    "exponent": [Interval(Real, 0, 2, closed="right")],
    "reg": [Interval(Real, 0, None, closed="left")],
    "agop_samples": [
        Interval(Integral, 1, None, closed="left"),
        Interval(Real, 0, 1, closed="right"),
        None,
    ],
    "agop_normalization": [StrOptions({"max", "trace"}), None],
    "agop_power": [Interval(Real, 0, None, closed="neither")],
    "solver": [StrOptions(set(SOLVERS))],
    "solver_params": [dict, None],
    "device": DEVICE_CONSTRAINT,
    "dtype": [StrOptions({"float32", "float64"})],
    "memory_budget": [Interval(Real, 0, None, closed="neither"), None],
    "random_state": ["random_state"],
    "verbose": ["verbose"],
}


def class_targets(y_index, n_classes, coding="pm1", *, binary_column=False):
    """Regression targets of class labels: the one target encoder of skdnc.

    Parameters
    ----------
    y_index : array-like of int of shape (n_samples,)
        Class indices ``0, ..., n_classes - 1``.
    n_classes : int
    coding : {"pm1", "onehot"}, default="pm1"
        1 in the sample's own class column, and -1 (``"pm1"``, the paper's) or 0
        (``"onehot"``) elsewhere.
    binary_column : bool, default=False
        For two classes, return the single column of the second class (what a
        binary classifier regresses on) instead of two columns.

    Returns
    -------
    Y : ndarray of shape (n_samples, n_classes), or (n_samples, 1), float64

    Examples
    --------
    >>> from skdnc._rfm_core import class_targets
    >>> class_targets([0, 2], 3)
    array([[ 1., -1., -1.],
           [-1., -1.,  1.]])
    >>> class_targets([0, 1, 1], 2, "onehot", binary_column=True).ravel()
    array([0., 1., 1.])
    """
    y_index = np.asarray(y_index, dtype=np.intp).reshape(-1)
    Y = np.full((len(y_index), int(n_classes)), -1.0 if coding == "pm1" else 0.0)
    Y[np.arange(len(y_index)), y_index] = 1.0
    if binary_column and n_classes == 2:
        return Y[:, 1:]
    return Y


def agop_step(X, alpha, M, kernel, *, params, budget, generator):
    """One feature-learning step: the next metric from a fitted kernel machine.

    The AGOP of ``f(x) = k_M(x, X) @ alpha`` at a random subset of the training
    points (``params["agop_samples"]``, self-pairs dropped), normalised by
    ``params["agop_normalization"]`` and raised to ``params["agop_power"]``.
    A zero AGOP (a constant predictor) leaves ``M`` as it is.

    Returns
    -------
    M : torch.Tensor of shape (d, d), or (d,) when ``params["diag"]``
    """
    n = X.shape[0]
    idx = sample_points(n, params["agop_samples"], generator).to(X.device)
    A = kernel_agop(
        X[idx],
        X,
        alpha,
        M,
        kernel,
        self_index=idx,
        centering=params["centering"],
        diag=params["diag"],
        block_size=block_rows(n, X.element_size(), budget, n_buffers=3),
    )
    A = normalize_agop(A, params["agop_normalization"])
    if torch.count_nonzero(A) == 0:
        return M
    power = params["agop_power"]
    return A if power == 1 else psd_power(A, power)


def rfm_rounds(
    X, Y, M, kernel, n_rounds, *, params, budget, generator, evaluate=None, log=None
):
    """Alternate the kernel ridge solve and the AGOP update of ``M``.

    Round ``t = 0, ..., n_rounds``: solve with ``M_t``, call ``evaluate`` on the
    predictor, and (for ``t < n_rounds``) set ``M_{t+1}`` to the normalised AGOP
    of that predictor raised to ``params["agop_power"]``.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    Y : torch.Tensor of shape (n, K)
    M : torch.Tensor of shape (d, d) or (d,), or None
        Starting metric; ``None`` is the identity.
    kernel : skdnc._kernels.Kernel
    n_rounds : int
        Number of AGOP updates.
    params : dict
        ``reg``, ``diag``, ``agop_samples``, ``agop_normalization``,
        ``agop_power``, ``centering``, ``solver``.
    budget : int
        Memory budget in bytes.
    generator : torch.Generator
        Draws the points at which the AGOP is taken.
    evaluate : callable, optional
        ``evaluate(alpha, M) -> float``, called after every solve.
    log : callable, optional
        ``log(message)`` for progress lines.

    Returns
    -------
    M : torch.Tensor or None
        The metric of the last solve.
    alpha : torch.Tensor of shape (n, K)
        Its dual coefficients.
    scores : list of float
        ``evaluate``'s values, one per round (empty without ``evaluate``).
    """
    scores = []
    for t in range(n_rounds + 1):
        tic = time.perf_counter()
        alpha = fit_kernel_regression(
            X,
            Y,
            M,
            kernel,
            params["reg"],
            solver=params["solver"],
            budget=budget,
            solver_params=params["solver_params"],
            generator=generator,
            log=log,
        )
        if evaluate is not None:
            scores.append(evaluate(alpha, M))
        if t < n_rounds:
            M = agop_step(X, alpha, M, kernel, params=params, budget=budget,
                          generator=generator)  # fmt: skip
        if log is not None:
            score = f", validation score {scores[-1][0]:.4f}" if scores else ""
            log(f"round {t}: {time.perf_counter() - tic:.2f} s{score}")
    return M, alpha, scores
