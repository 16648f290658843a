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
from sklearn.utils._param_validation import Interval, Options, StrOptions

from skdnc._agop import (
    kernel_agop,
    normalize_agop,
    normalize_agop_factor,
    sample_points,
)
from skdnc._backend import block_rows
from skdnc._base import DEVICE_CONSTRAINT
from skdnc._kernels import KERNELS, kernel_matrix
from skdnc._linalg import psd_factor_power, psd_power, psd_powers
from skdnc._solvers import (
    REG_GRID,
    SOLVERS,
    kernel_predict,
    prepare_kernel_machine,
)

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
    "n_centers": [
        Interval(Integral, 1, None, closed="left"),
        Interval(Real, 0, 1, closed="right"),
        StrOptions({"auto"}),
    ],
    "solver_params": [dict, None],
    "device": DEVICE_CONSTRAINT,
    "dtype": [StrOptions({"float32", "float64"}), None],
    "allow_tf32": ["boolean"],
    "memory_budget": [Interval(Real, 0, None, closed="neither"), None],
    "distributed": [StrOptions({"auto"}), Options(bool, {False})],
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


class LowRank:
    """A metric ``M = R R^T`` kept as its root ``R`` of shape ``(d, r)``, ``r < d``.

    What the rounds hold instead of ``M`` when the AGOP's rank (at most its
    points times outputs) is below ``d``: ``k_M(x, z) = k(R^T x, R^T z)``, so
    every solve, distance and gradient runs on the ``r`` columns of ``X R``.
    The estimators expose ``R^T`` as ``M_factor_``.
    """

    __slots__ = ("root",)

    def __init__(self, root):
        self.root = root

    def dense(self):
        """``M = R R^T`` of shape ``(d, d)``."""
        return self.root @ self.root.T


#: ``params["low_rank"]`` values: ``"auto"`` keeps ``M`` as a factor when the
#: AGOP's points times outputs are fewer than ``d`` (and neither ``diag`` nor a
#: process group asks otherwise), ``True`` whenever possible, ``False`` never.
LOW_RANK_OPTIONS = ("auto", True, False)


def _wants_factor(n_points, n_outputs, S, n_cols, params):
    """Whether the next AGOP is taken as a factor (see :class:`LowRank`)."""
    option = params.get("low_rank", "auto")
    if option not in LOW_RANK_OPTIONS:
        raise ValueError(f"low_rank must be one of {LOW_RANK_OPTIONS}; got {option!r}.")
    if option is False or params["diag"] or params.get("comm") is not None:
        return False
    if S is not None and S.ndim == 2 and S.shape[0] != S.shape[1]:
        return True  # already low rank: M's rank stays below d
    d = n_cols if S is None else S.shape[0]
    return option is True or n_points * n_outputs < d


def _sampled_agop(
    X, alpha, M, kernel, *, params, budget, generator, centres=None, root=False
):
    """The AGOP of ``f(x) = k_M(x, C) @ alpha`` at a random subset of the training
    points (``params["agop_samples"]``, each point's own centre dropped), not yet
    normalised. The centres ``C`` are ``X[centres]`` (sorted indices), or all of
    ``X`` when ``centres`` is ``None``.

    With ``root`` (``False``, or the current root ``S``, ``None`` for the
    identity), the AGOP comes as its factor (``kernel_agop(factor=True)``) when
    :func:`_wants_factor` says so; returns ``(agop, is_factor)`` then."""
    n = X.shape[0]
    # agop_samples=None counts points by the data's dimension d, also when X
    # holds the r < d columns X R of a LowRank root R (shape (d, r)).
    d = X.shape[1] if root is False or root is None else root.shape[0]
    idx = sample_points(n, params["agop_samples"], generator, d)
    idx = idx.to(X.device)
    factor = root is not False and _wants_factor(
        len(idx), alpha.shape[1], root, X.shape[1], params
    )
    if centres is None:
        C, self_index = X, idx
    else:  # the position of each sampled point among the centres, or -1
        C = X[centres]
        pos = torch.searchsorted(centres, idx).clamp_(max=len(centres) - 1)
        self_index = torch.where(centres[pos] == idx, pos, -1)
    A = kernel_agop(
        X[idx],
        C,
        alpha,
        M,
        kernel,
        self_index=self_index,
        centering=params["centering"],
        diag=params["diag"],
        block_size=block_rows(len(C), X.element_size(), budget, n_buffers=3),
        allow_tf32=params.get("allow_tf32", False),
        comm=params.get("comm"),
        factor=factor,
    )
    return A if root is False else (A, factor)


def agop_step(X, alpha, M, kernel, *, params, budget, generator, centres=None):
    """One feature-learning step: the next metric from a fitted kernel machine.

    The AGOP of ``f(x) = k_M(x, C) @ alpha`` (``C = X[centres]``, or ``X``) at a
    random subset of the training points (``params["agop_samples"]``, self-pairs
    dropped), normalised by ``params["agop_normalization"]`` and raised to
    ``params["agop_power"]``. A zero AGOP (a constant predictor) leaves ``M`` as
    it is.

    Returns
    -------
    M : torch.Tensor of shape (d, d), or (d,) when ``params["diag"]``
    """
    A = _sampled_agop(
        X,
        alpha,
        M,
        kernel,
        params=params,
        budget=budget,
        generator=generator,
        centres=centres,
    )
    A = normalize_agop(A, params["agop_normalization"])
    if torch.count_nonzero(A) == 0:
        return M
    power = params["agop_power"]
    return A if power == 1 else psd_power(A, power)


def apply_root(X, S):
    """The rows of ``X`` mapped by the metric's square root ``S`` (``S S = M``):
    ``k_M(x, z) = k(S x, S z)``. ``S`` is full, a diagonal (a vector), a
    :class:`LowRank` root ``R`` of shape ``(d, r)`` (``R R^T = M``: ``X R`` has
    ``r`` columns) or ``None`` (the identity)."""
    if S is None:
        return X
    return X * S if S.ndim == 1 else X @ S


def _metric_and_root(XS, alpha, S, kernel, *, params, budget, generator, centres=None):
    """:func:`agop_step` in the coordinates ``XS = X S`` of the current metric.

    With ``M = S S``, the gradient of ``f(x) = \\sum_j a_j k(S x, S x_j)`` is
    ``S`` times the gradient taken in the mapped coordinates, so the AGOP is
    ``S G S`` with ``G`` the AGOP of the kernel machine on ``XS`` with ``M = I``:
    no product with ``M`` on any block of points. Returns the next metric and its
    square root, both from one eigendecomposition, or ``None`` when the AGOP is
    zero (a constant predictor: the metric stays).

    Low rank (:func:`_wants_factor`): the AGOP in the mapped coordinates comes
    as its factor ``H`` (``G = H^T H``, ``m K`` rows), so the AGOP is
    ``B B^T`` with ``B = S H^T`` (``d x m K``); it is normalised through the row
    norms of ``B`` and raised to the power by the ``m K x m K`` eigenproblem of
    :func:`~skdnc._linalg.psd_factor_power`. The next metric is then a
    :class:`LowRank` and its root the factor itself: ``O(n m K d + (m K)^2 d)``
    per round, never a ``d x d`` matrix.
    """
    G, factor = _sampled_agop(
        XS,
        alpha,
        None,
        kernel,
        params=params,
        budget=budget,
        generator=generator,
        centres=centres,
        root=S,
    )
    if factor:
        B = G.T if S is None else S @ G.T
        B = normalize_agop_factor(B, params["agop_normalization"])
        if torch.count_nonzero(B) == 0:
            return None
        R = psd_factor_power(B, params["agop_power"])
        return LowRank(R), R
    if S is not None:
        G = G * S * S if S.ndim == 1 else S @ G @ S.T  # S symmetric, or a LowRank root
    A = normalize_agop(G, params["agop_normalization"])
    if torch.count_nonzero(A) == 0:
        return None
    power = params["agop_power"]
    return psd_powers(A, (power, power / 2))


def _round_predictor(S, CS, kernel, budget, comm):
    """``predict(Z, alphas) -> (len(Z), G, K)``: the outputs on the points ``Z``
    of the kernel machines with coefficients ``alphas`` (``(G, m, K)``) over the
    centres ``CS`` (in the metric's coordinates). The kernel matrix of the last
    ``Z`` is kept while it fits a quarter of ``budget``, so that ridge values
    solved later in a round's search cost one product each."""
    cache = {}

    def predict(Z, alphas):
        G, m, K = alphas.shape
        flat = alphas.permute(1, 0, 2).reshape(m, G * K)
        if cache.get("Z") is not Z:
            cache.clear()
            ZS = apply_root(Z, S)
            if comm is None and ZS.shape[0] * m * ZS.element_size() <= budget // 4:
                cache["K"] = kernel_matrix(ZS, CS, None, kernel)
            else:
                cache["ZS"] = ZS
            cache["Z"], cache["alphas"] = Z, None
        if cache["alphas"] is not alphas:  # one product per batch of values
            if "K" in cache:
                F = cache["K"] @ flat
            else:
                F = kernel_predict(
                    cache["ZS"], CS, flat, None, kernel, budget=budget, comm=comm
                )
            cache["alphas"], cache["F"] = alphas, F.reshape(-1, G, K)
        return cache["F"]

    return predict


#: The first round's search scores every ``ROUND0_STRIDE``-th ridge value, then
#: refines around the best (:func:`bracket_search`).
ROUND0_STRIDE = 2


def bracket_search(n_values, score, start=None, stride=ROUND0_STRIDE):
    """The ridge values a round tries, by their index in the ascending grid, and
    their scores.

    Without ``start`` (the first round), the largest value is scored first (the
    simplest model, against which :func:`select_model`'s rule compares the
    best), then every ``stride``-th value from the smallest, then the values
    next to the best scored, one at a time, until both neighbours of the best
    are scored: coarse to fine, at about ``n_values / stride + 3`` values
    instead of ``n_values`` (``stride=1`` scores every value). From the value
    ``start`` that the round before chose, only it and its two neighbours are;
    then, while the best value scored is the lowest (highest) scored and a lower
    (higher) one exists, the next lower (higher) value is scored too, so that
    the window widens until the best is inside it or at the grid's end. On a
    validation curve with one peak both find the value the whole grid would.

    Parameters
    ----------
    n_values : int
        Length of the grid.
    score : callable
        ``score(indices) -> scores`` (greater is better, compared as Python
        values), called once per batch of new indices (ascending).
    start : int, optional
        Index of the previous round's choice.
    stride : int, default=ROUND0_STRIDE
        Spacing of the first round's coarse values.

    Returns
    -------
    scores : dict
        ``{index: score}`` of every value scored, in the order scored.
    best : int
        The index with the best score, the smallest among ties.

    Examples
    --------
    >>> from skdnc._rfm_core import bracket_search
    >>> curve = [0.1, 0.5, 0.7, 0.9, 0.8, 0.2]
    >>> scores, best = bracket_search(6, lambda idx: [curve[i] for i in idx], 1)
    >>> sorted(scores), best
    ([0, 1, 2, 3, 4], 3)
    >>> scores, best = bracket_search(6, lambda idx: [curve[i] for i in idx])
    >>> list(scores), best
    ([5, 0, 2, 4, 3], 3)
    """
    scores = {}

    def best_scored():
        top = max(scores.values())
        return min(i for i, s in scores.items() if s == top)

    if start is None:
        for todo in ([n_values - 1], list(range(0, n_values - 1, stride))):
            if todo:
                scores.update(zip(todo, score(todo), strict=True))
        while True:
            best = best_scored()
            todo = [i for i in (best - 1, best + 1) if 0 <= i < n_values]
            todo = [i for i in todo if i not in scores]
            if not todo:
                return scores, best
            scores.update(zip(todo, score(todo), strict=True))
    todo = list(range(max(0, start - 1), min(n_values, start + 2)))
    while True:
        scores.update(zip(todo, score(todo), strict=True))
        best = best_scored()
        low, high = min(scores), max(scores)
        if best == low and low > 0:
            todo = [low - 1]
        elif best == high and high < n_values - 1:
            todo = [high + 1]
        else:
            return scores, best


REFIT_POLICIES = ("solve", "warm", "rounds")


def clearly_better(gain, n_se):
    """Whether paired per-sample gains (new minus old, greater is better) have a
    mean above ``n_se`` standard errors of it, ``std(gain, ddof=1) / sqrt(n)``.

    The one rule behind the validation choices that prefer the simpler model
    unless the other is clearly better: RFM's one-standard-error choice between
    its best and its simplest candidate (``n_se=1``) and Deep RFM's
    ``L="auto"`` depth search (``n_se=2``).

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._rfm_core import clearly_better
    >>> gain = np.r_[np.ones(4), -np.ones(1), np.zeros(155)]
    >>> clearly_better(gain, 1.0), clearly_better(gain, 2.0)
    (True, False)
    """
    gain = np.asarray(gain, dtype=np.float64)
    return bool(gain.mean() > n_se * gain.std(ddof=1) / np.sqrt(len(gain)))


def no_improvement(scores, n_iter_no_change, tol, *, relative=False):
    """Whether the last ``n_iter_no_change`` scores failed to improve on the best
    before them by more than ``tol`` (the first entry of each score tuple).

    With ``relative=True`` the improvement must exceed ``tol`` times the best's
    remaining error ``1 - score`` (for scores of at most 1, such as
    :math:`R^2`): a round counts when it removes more than that fraction of
    the unexplained variance. ``n_iter_no_change=None`` never stops.

    Examples
    --------
    >>> from skdnc._rfm_core import no_improvement
    >>> no_improvement([(0.9,), (0.95,), (0.95,), (0.95,)], 2, 1e-4)
    True
    >>> no_improvement([(0.9,), (0.95,), (0.95,), (0.96,)], 2, 1e-4)
    False

    From 0.99 to 0.9905 removes 5% of the error left: an improvement of less
    than 3e-3, but of more than 3% of that error.

    >>> no_improvement([(0.99,), (0.9905,)], 1, 3e-3)
    True
    >>> no_improvement([(0.99,), (0.9905,)], 1, 0.03, relative=True)
    False
    """
    if n_iter_no_change is None or len(scores) <= n_iter_no_change:
        return False
    best_before = max(s[0] for s in scores[:-n_iter_no_change])
    recent = max(s[0] for s in scores[-n_iter_no_change:])
    if relative:
        return recent <= best_before + tol * max(1.0 - best_before, 0.0)
    return recent <= best_before + tol


def rfm_rounds(
    X,
    Y,
    M,
    kernel,
    n_rounds,
    *,
    params,
    budget,
    generator,
    root=None,
    evaluate=None,
    log=None,
    n_iter_no_change=None,
    tol=0.0,
    relative_tol=False,
    metrics=None,
    path=None,
    folds=None,
):
    """Alternate the kernel ridge solve and the AGOP update of ``M``.

    Round ``t = 0, ..., n_rounds``: solve with ``M_t``, call ``evaluate`` on the
    predictor, and (for ``t < n_rounds``) set ``M_{t+1}`` to the normalised AGOP
    of that predictor raised to ``params["agop_power"]``. With ``evaluate`` and
    ``n_iter_no_change``, the rounds stop early once the last ``n_iter_no_change``
    scores have not improved on the best before them by more than ``tol``
    (no AGOP is taken after the last evaluated solve).

    Every round works in the coordinates ``X S`` of the metric's square root
    ``S`` (``M = S S``, so ``k_M(x, z) = k(S x, S z)``): one product with ``S``
    per round serves the kernel matrix, the AGOP and the validation
    predictions, and ``S`` comes with ``M`` out of the AGOP's one
    eigendecomposition. A kernel with ``bandwidth="auto"`` is resolved in these
    coordinates each round (:meth:`~skdnc._kernels.Kernel.at_scale`: the median
    distance in the metric ``M_t``).

    A grid of ridge values (``params["reg"]`` ``"auto"`` or a tuple) is
    searched by :func:`bracket_search`: every value in the first round, then
    the previous round's choice and its neighbours, widened while an edge of
    that window scores best. The values of a round share its kernel matrix or
    normal matrix (:func:`~skdnc._solvers.prepare_kernel_machine`), each is
    scored by ``evaluate``, and the best one (the smallest value among ties)
    gives the round's predictor, its score and its AGOP.

    Parameters
    ----------
    X : torch.Tensor of shape (n, d)
    Y : torch.Tensor of shape (n, K)
    M : torch.Tensor of shape (d, d) or (d,), or None
        Starting metric; ``None`` is the identity.
    kernel : skdnc._kernels.Kernel
    n_rounds : int
        Largest number of AGOP updates.
    params : dict
        ``reg`` (a float, ``"auto"`` or a tuple of floats; a grid needs
        ``evaluate``), ``diag``, ``agop_samples``, ``agop_normalization``,
        ``agop_power``, ``centering``, ``solver``, ``solver_params``,
        optionally ``n_centers`` (see :func:`~skdnc._solvers.resolve_centers`;
        default ``"auto"``) and
        optionally ``allow_tf32`` (TF32 for the AGOP's gradient products on CUDA)
        and ``comm`` (a :class:`skdnc._distributed.Comm` that splits the solves,
        AGOPs and predictions over a process group).
    budget : int
        Memory budget in bytes.
    generator : torch.Generator
        Draws the points at which the AGOP is taken.
    root : torch.Tensor, optional
        The square root of the starting ``M``, when it is known.
    evaluate : callable, optional
        ``evaluate(predict) -> tuple``, a score (greater is better, compared
        lexicographically) of the predictor after every solve, where
        ``predict(Z)`` returns its outputs on the points ``Z`` (a tensor). With
        a grid of ridge values it is called once per value solved, always on
        the same points ``Z`` (the kernel matrix of ``Z`` against the centres is
        kept for the round while it fits a quarter of the budget).
    log : callable, optional
        ``log(message)`` for progress lines.
    n_iter_no_change : int or None, default=None
        Early stopping patience (needs ``evaluate``); ``None`` runs every round.
    tol : float, default=0.0
        Smallest improvement of the score's first entry that counts.
    relative_tol : bool, default=False
        Measure ``tol`` as a fraction of the best score's remaining error
        ``1 - score`` (:func:`no_improvement`).
    metrics : list, optional
        Receives ``(M_t, S_t)``, the metric of every solve and its square root,
        in order.
    path : list, optional
        Receives one dict per solve: ``kernel`` (with its resolved bandwidth),
        ``regs`` (the grid), ``scores`` (``evaluate``'s value for each, ``None``
        for a value the search skipped; ``None`` without ``evaluate``),
        ``solved`` (the indices in ``regs`` in the order ``evaluate`` scored
        them), ``reg`` (the value chosen) and ``centers`` (the indices in ``X`` of the
        solve's Nystrom centres, or ``None`` when every point is a centre); with
        ``folds``, the first fold's kernel and centres.
    folds : list of (torch.Tensor, torch.Tensor), optional
        K-fold cross-validation instead of a split made by the caller: the
        ``(fit, validation)`` row indices in ``X`` of each fold. One machine per
        fold runs the rounds on its fit rows, in lockstep: every ridge value the
        search tries is solved by every fold, and ``evaluate(F)`` receives
        their validation outputs pooled (``F`` of shape ``(n_val, K)``, the
        folds' validation rows in order) instead of a ``predict``; the search,
        early stopping and the scores then follow the pooled, out-of-fold
        score. Each fold takes its AGOP from its own machine at the chosen
        value. ``metrics`` receives the first fold's metrics, and the returned
        ``M`` and ``alpha`` are the first fold's.

    Returns
    -------
    M : torch.Tensor or None
        The metric of the last solve.
    alpha : torch.Tensor of shape (m, K)
        Its dual coefficients, over the centres of the last ``path`` entry
        (every point, ``m = n``, unless ``params["n_centers"]`` asks for fewer).
    scores : list of tuple
        ``evaluate``'s values, one per solve (the best over the ridge values;
        empty without ``evaluate``).
    """
    reg = params["reg"]
    grid = isinstance(reg, str | tuple | list)
    if grid and evaluate is None:
        raise ValueError(
            f"A grid of ridge values (reg={reg!r}) is chosen on validation "
            "scores: pass evaluate, or a single reg."
        )
    if folds is not None and evaluate is None:
        raise ValueError("folds are scored by evaluate: pass evaluate.")
    if isinstance(M, LowRank):
        S = M.root
    else:
        S = psd_power(M, 0.5) if M is not None and root is None else root
    scores = []
    n_centers = params.get("n_centers", "auto")
    n_fit = X.shape[0] if folds is None else min(len(f) for f, _ in folds)
    if isinstance(n_centers, Integral):  # a split may have fewer points
        n_centers = min(int(n_centers), n_fit)
    solve = {
        "n_centers": n_centers,
        "n_features": X.shape[1],
        "solver": params["solver"],
        "budget": budget,
        "solver_params": params["solver_params"],
        "generator": generator,
        "log": log,
        "comm": params.get("comm"),
    }
    regs = (REG_GRID if reg == "auto" else tuple(reg)) if grid else (float(reg),)
    # One machine per fold, run in lockstep: [fit points, fit targets,
    # validation points, metric, its root]; without folds, one on all of X.
    if folds is None:
        machines = [[X, Y, None, M, S]]
    else:
        machines = [[X[f], Y[f], X[v], M, S] for f, v in folds]
    previous = None  # the grid index the last round chose
    for t in range(n_rounds + 1):
        tic = time.perf_counter()
        if metrics is not None:
            metrics.append((machines[0][3], machines[0][4]))
        rounds = []  # per machine: [XS, kernel, centres, solve, predict]
        for Xk, Yk, _, _, Sk in machines:
            XS = apply_root(Xk, Sk)
            round_kernel = kernel.at_scale(XS)
            centres, solve_regs = prepare_kernel_machine(
                XS,
                Yk,
                None,
                round_kernel,
                n_values=len(regs) if previous is None else min(3, len(regs)),
                grid=grid,
                **solve,
            )
            predict = None
            if evaluate is not None:
                CS = XS if centres is None else XS[centres]
                predict = _round_predictor(Sk, CS, round_kernel, budget, solve["comm"])
            rounds.append([XS, round_kernel, centres, solve_regs, predict])
        if evaluate is None:
            round_scores, solved, best = None, [], 0
            alpha_of = [r[3](regs)[0] for r in rounds]
        else:
            coefs = [{} for _ in machines]

            def score_values(indices, rounds=rounds, coefs=coefs):
                values = [regs[i] for i in indices]
                alphas = [r[3](values) for r in rounds]
                for kept, a in zip(coefs, alphas, strict=True):
                    kept.update(zip(indices, a, strict=True))
                if folds is None:
                    predict, a = rounds[0][4], alphas[0]
                    return [
                        evaluate(lambda Z, g=g: predict(Z, a)[:, g])
                        for g in range(len(indices))
                    ]
                F = torch.cat(  # out-of-fold outputs, pooled in the folds' order
                    [
                        r[4](m[2], a)
                        for m, r, a in zip(machines, rounds, alphas, strict=True)
                    ]
                )
                return [evaluate(F[:, g]) for g in range(len(indices))]

            tried, best = bracket_search(len(regs), score_values, previous)
            round_scores = [tried.get(i) for i in range(len(regs))]
            solved = list(tried)  # the order in which evaluate saw them
            scores.append(tried[best])
            previous, alpha_of = best, [kept[best] for kept in coefs]
            del coefs
        for r in rounds:  # the prepared solves and kept kernel matrices go first
            r[3] = r[4] = None
        stop = t == n_rounds or (
            evaluate is not None
            and no_improvement(scores, n_iter_no_change, tol, relative=relative_tol)
        )
        if path is not None:
            path.append(
                {
                    "kernel": rounds[0][1],
                    "regs": regs,
                    "scores": round_scores,
                    "solved": solved,
                    "reg": regs[best],
                    "centers": rounds[0][2],
                }
            )
        for m, r, alpha in zip(machines, rounds, alpha_of, strict=True):
            step = None
            if not stop:
                step = _metric_and_root(
                    r[0],
                    alpha,
                    m[4],
                    r[1],
                    params=params,
                    budget=budget,
                    generator=generator,
                    centres=r[2],
                )
            if step is not None:
                m[3], m[4] = step
        del rounds
        if log is not None:
            score = f", validation score {scores[-1][0]:.4f}" if scores else ""
            ridge = f", reg {regs[best]:g}" if len(regs) > 1 else ""
            log(f"round {t}: {time.perf_counter() - tic:.2f} s{score}{ridge}")
        if stop:
            break
    return machines[0][3], alpha_of[0], scores


def refit_rounds(
    policy,
    X,
    Y,
    metrics,
    n_rounds,
    kernel,
    *,
    params,
    budget,
    generator,
    log=None,
    kernels=None,
    path=None,
):
    """The final kernel machine on all the data, after the rounds on a split.

    Parameters
    ----------
    policy : {"solve", "warm", "rounds"}
        ``"solve"``: one solve with the chosen metric ``metrics[n_rounds]``.
        ``"warm"``: start from ``metrics[n_rounds - 1]`` and take the last AGOP
        update on all the data (two solves, one AGOP). ``"rounds"``: rerun all
        ``n_rounds`` updates on all the data from ``metrics[0]``.
    X : torch.Tensor of shape (n, d)
    Y : torch.Tensor of shape (n, K)
    metrics : list of tuple
        The ``(M, S)`` of the split's solves (see :func:`rfm_rounds`).
    n_rounds : int
        The chosen number of AGOP updates.
    kernel, params, budget, generator, log
        As in :func:`rfm_rounds`; ``params["reg"]`` is the chosen float.
    kernels : list of Kernel, optional
        The resolved kernel of each of the split's solves (their ``path``
        entries): ``"solve"`` uses the chosen round's, so a ``bandwidth="auto"``
        keeps the bandwidth the split measured; the other policies resolve it
        again on all the data.
    path : list, optional
        Receives the refit's solves, as in :func:`rfm_rounds`; the last entry
        holds the final kernel.

    Returns
    -------
    M : torch.Tensor or None
    alpha : torch.Tensor of shape (m, K)
        Over the centres of the last ``path`` entry.
    """
    if policy not in REFIT_POLICIES:
        raise ValueError(f"refit must be one of {REFIT_POLICIES}; got {policy!r}.")
    if policy == "solve" or (policy == "warm" and n_rounds == 0):
        start, updates = metrics[n_rounds], 0
    elif policy == "warm":
        start, updates = metrics[n_rounds - 1], 1
    else:
        start, updates = metrics[0], n_rounds
    if updates == 0 and kernels is not None:
        kernel = kernels[n_rounds]
    M, alpha, _ = rfm_rounds(
        X,
        Y,
        start[0],
        kernel,
        updates,
        params=params,
        budget=budget,
        generator=generator,
        root=start[1],
        log=log,
        path=path,
    )
    return M, alpha
