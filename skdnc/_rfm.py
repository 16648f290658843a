"""Recursive Feature Machines: kernel ridge regression alternating with the AGOP."""

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, _fit_context
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from skdnc._agop import kernel_agop
from skdnc._backend import (
    array_api_input,
    array_api_output,
    block_rows,
    make_generator,
    matmul_precision,
    memory_budget_bytes,
    release_memory,
    resolve_device,
    resolve_dtype,
    to_numpy,
    to_tensor,
)
from skdnc._base import atomic_fit, check_class_labels, uses_cuda
from skdnc._distributed import check_call, collective, fail_together, world
from skdnc._kernels import Kernel, overflow_limit
from skdnc._rfm_core import (
    KERNEL_MACHINE_CONSTRAINTS,
    REFIT_POLICIES,
    LowRank,
    class_targets,
    clearly_better,
    refit_rounds,
    rfm_rounds,
)
from skdnc._solvers import (
    REG_GRID,
    check_reg,
    kernel_predict,
    refit_centers,
    resolve_centers,
)

#: Without a validation split (validation_fraction=0, or too few samples for
#: one), a grid of ridge values falls back to its value nearest to this one on a
#: log scale: the fixed default of the classifier.
NO_SPLIT_REG = 1e-3


def target_scale(Y, dtype, *, exact=False):
    """The power of two nearest ``max|Y|``, by which the fit divides its targets.

    Kernel ridge regression is linear in its targets, and the AGOP, normalised,
    does not see their scale: the solves and the validation scores run on
    ``Y / scale``, whose squares neither overflow nor underflow, and the dual
    coefficients are multiplied back. Dividing by a power of two is exact, so at
    any scale the fit is the one at scale 1.

    Parameters
    ----------
    Y : ndarray of shape (n, K)
        The encoded (centred) targets, finite.
    dtype : numpy dtype
        Precision of the computation.
    exact : bool, default=False
        Return 1 (targets used as they are; an unnormalised AGOP sees their
        scale), after the same check.

    Returns
    -------
    scale : float

    Raises
    ------
    ValueError
        When ``max|Y|`` exceeds the square root of ``dtype``'s largest number:
        squared errors, R^2 and the dual coefficients overflow.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._rfm import target_scale
    >>> target_scale(np.array([[-3e-200], [5e-201]]), np.float64) == 2.0**-663
    True
    """
    largest = float(np.max(np.abs(Y))) if Y.size else 0.0
    limit = math.sqrt(float(np.finfo(dtype).max))
    if largest > limit:
        raise ValueError(
            f"y holds values up to {largest:.3g} (after centring): their squares "
            f"overflow {np.dtype(dtype).name} beyond {limit:.3g}, and so would the "
            "squared errors and the dual coefficients of the fit. Standardise y "
            "(e.g. TransformedTargetRegressor(regressor, "
            "transformer=StandardScaler()))"
            + (
                " or compute in float64 (dtype='float64')."
                if np.finfo(dtype).bits < 64
                else "."
            )
        )
    if exact or largest == 0.0:
        return 1.0
    return 2.0 ** round(math.log2(largest))


def pooled_r2(F, Y):
    """The coefficient of determination of outputs ``F`` for targets ``Y`` (both
    of shape ``(n, K)``), pooled over the columns; ``-sum((F - Y)^2)`` when
    ``Y`` is constant.

    For class codes this is the Brier skill score of the coded targets: one
    minus their squared error over the squared error of the validation
    points' own class frequencies.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._rfm import pooled_r2
    >>> pooled_r2(np.array([[0.0], [2.0]]), np.array([[0.0], [1.0]]))
    -1.0
    """
    ss_res = float(np.sum((F - Y) ** 2))
    ss_tot = float(np.sum((Y - Y.mean(axis=0)) ** 2))
    return 1 - ss_res / ss_tot if ss_tot > 0 else -ss_res


def select_model(curve, regs, outputs, Y):
    """The round and ridge value of the final model from the validation split.

    The candidate with the best score, unless the simplest candidate -- no AGOP
    update (``M = I``) and the largest ridge value, which on centred targets
    is close to predicting the training mean (the class prior) -- is within
    one standard error of it: the one-standard-error rule (Breiman et al.,
    1984; Hastie, Tibshirani and Friedman, 2009, sec. 7.10) between the two,
    on the paired differences of their squared errors on the validation points.
    On features that carry no signal, the best of many candidates beats the
    prior on the validation points by chance alone, and falls below it on new
    data; the rule keeps the prior then. With a single ridge value the best
    candidate is taken.

    Parameters
    ----------
    curve : list of list of tuple or None
        ``curve[t][g]``: the validation score of round ``t`` with ridge value
        ``regs[g]`` (greater is better; the first entry of each tuple first),
        ``None`` for a value the round's search skipped.
    regs : sequence of float
        The ridge values of every round, in the order of ``curve[t]``.
    outputs : dict of (int, int) to ndarray of shape (n_val, K)
        Validation outputs of candidates by their ``(t, g)``: at least the
        best's and the simplest's.
    Y : ndarray of shape (n_val, K)
        The validation targets.

    Returns
    -------
    t, g : int
        The round (the number of AGOP updates) and the index of the ridge
        value; the earliest round and smallest ridge among ties.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._rfm import select_model
    >>> Y = np.array([[1.0], [-1.0], [1.0], [-1.0]])
    >>> noise = {(0, 0): np.array([[0.1], [0.1], [-0.1], [-0.1]]),
    ...          (0, 1): np.zeros((4, 1))}
    >>> select_model([[(0.01,), (0.0,)]], [0.1, 10.0], noise, Y)
    (0, 1)
    """
    flat = [
        (t, g)
        for t, row in enumerate(curve)
        for g, score in enumerate(row)
        if score is not None
    ]
    best = max(flat, key=lambda k: curve[k[0]][k[1]])  # the first among ties
    if len(regs) == 1:
        return best
    simplest = (0, int(np.argmax(regs)))
    losses = [np.sum((outputs[k] - Y) ** 2, axis=1) for k in (best, simplest)]
    if not clearly_better(losses[1] - losses[0], 1.0):
        return simplest
    return best


class _BaseRFM(BaseEstimator):
    """Shared fit/predict logic of :class:`RFMClassifier` and :class:`RFMRegressor`."""

    _parameter_constraints = {
        **KERNEL_MACHINE_CONSTRAINTS,
        "bandwidth": [
            Interval(Real, 0, None, closed="neither"),
            StrOptions({"auto"}),
        ],
        "reg": [
            Interval(Real, 0, None, closed="left"),
            StrOptions({"auto"}),
            "array-like",
        ],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "diag": ["boolean"],
        "centering": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "cv": [Interval(Integral, 2, None, closed="left"), None],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "refit": [StrOptions(set(REFIT_POLICIES))],
        "warm_start": ["boolean"],
    }

    def __init__(
        self,
        *,
        kernel="laplace",
        bandwidth="auto",
        exponent=1.0,
        reg="auto",
        max_iter=5,
        diag=False,
        agop_samples=None,
        agop_normalization="max",
        agop_power=0.5,
        centering=False,
        validation_fraction=0.2,
        cv=None,
        n_iter_no_change=1,
        tol=3e-3,
        refit="solve",
        solver="auto",
        solver_params=None,
        n_centers="auto",
        device="auto",
        dtype=None,
        allow_tf32=True,
        memory_budget=None,
        distributed="auto",
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.exponent = exponent
        self.reg = reg
        self.max_iter = max_iter
        self.diag = diag
        self.agop_samples = agop_samples
        self.agop_normalization = agop_normalization
        self.agop_power = agop_power
        self.centering = centering
        self.validation_fraction = validation_fraction
        self.cv = cv
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.refit = refit
        self.solver = solver
        self.solver_params = solver_params
        self.n_centers = n_centers
        self.device = device
        self.dtype = dtype
        self.allow_tf32 = allow_tf32
        self.memory_budget = memory_budget
        self.distributed = distributed
        self.warm_start = warm_start
        self.random_state = random_state
        self.verbose = verbose

    # -- hooks for the subclasses ---------------------------------------------------
    def _encode_targets(self, y):
        """Validated ``y`` -> float target matrix of shape (n, K) (NumPy)."""
        raise NotImplementedError

    def _validation_score(self, F, Y, scale):
        """Score of decision values ``F`` against encoded targets ``Y``, both
        divided by ``scale`` (:func:`target_scale`; greater is better), as a
        tuple compared lexicographically."""
        raise NotImplementedError

    def _split(self, n, y, rng):
        raise NotImplementedError

    def _folds(self, n, y, generator, comm=None):
        """The ``(fit, validation)`` row indices that choose the rounds and the
        ridge: the ``cv`` folds (stratified for the classifier), else the one
        split of ``validation_fraction``; ``None`` when there is none."""
        if self.cv is None:
            split = self._split(n, y, generator)
            return None if split is None else [split]
        if comm is not None:
            raise ValueError(
                f"cv={self.cv!r} is not supported by a distributed fit: use "
                "cv=None (one validation split) with distributed=True."
            )
        splitter = self._kfold(int(self.cv), y)
        splitter.random_state = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return list(splitter.split(np.zeros((n, 1)), y))

    def _kfold(self, k, y):
        """The shuffled K-fold splitter for ``y`` (its seed set by the caller);
        a ``ValueError`` naming ``cv`` when ``y`` has too few samples."""
        raise NotImplementedError

    # -- fitting --------------------------------------------------------------------
    def _kernel(self):
        """The kernel of the fit: its bandwidth may still be the rule ``"auto"``."""
        bandwidth = self.bandwidth
        if not isinstance(bandwidth, str):
            bandwidth = float(bandwidth)
        multiple = self._median_multiple.get(self.kernel, 1.0)
        return Kernel(self.kernel, bandwidth, float(self.exponent), multiple)

    def _fitted_kernel(self):
        return Kernel(self.kernel, float(self.bandwidth_), float(self.exponent))

    def _round_params(self):
        return {
            "reg": check_reg(self.reg),
            "diag": bool(self.diag),
            "agop_samples": self.agop_samples,
            "agop_normalization": self.agop_normalization,
            "agop_power": float(self.agop_power),
            "centering": bool(self.centering),
            "solver": self.solver,
            "solver_params": self.solver_params,
            "n_centers": self.n_centers,
            "allow_tf32": bool(self.allow_tf32),
            "low_rank": self._low_rank,
        }

    #: ``params["low_rank"]`` of the rounds (:class:`~skdnc._rfm_core.LowRank`):
    #: ``"auto"``; the tests set ``False`` on an instance to force a dense ``M``.
    _low_rank = "auto"

    #: The multiple of the median distance that ``bandwidth="auto"`` takes, by
    #: kernel name (1 for a name not listed).
    _median_multiple = {}

    #: Whether ``tol`` is a fraction of the validation score's remaining error
    #: ``1 - score`` (:func:`~skdnc._rfm_core.no_improvement`).
    _relative_tol = False

    @property
    def M_(self):
        """The feature matrix, built from ``M_factor_`` when the fit kept a factor
        (a ``d x d`` array: an error when it does not fit ``memory_budget``)."""
        state = self.__dict__
        if "_M" not in state:
            raise AttributeError(
                f"This {type(self).__name__} instance is not fitted yet: it has no M_."
            )
        if state["_M"] is not None:
            return state["_M"]
        F = self.M_factor_
        need = F.shape[1] ** 2 * F.itemsize
        budget = memory_budget_bytes(self.memory_budget, torch.device("cpu"))
        if need > budget:
            raise MemoryError(
                f"M_ of {F.shape[1]} features takes {need / 2**30:.3g} GiB, above the "
                f"memory budget of {budget / 2**30:.3g} GiB: use M_factor_ "
                f"(shape {F.shape}, M_ = M_factor_.T @ M_factor_) instead."
            )
        return F.T @ F

    def _log(self, message):
        if self.verbose:
            print(f"[{type(self).__name__}] {message}", flush=True)

    def _fit(self, X, y, comm=None):
        device = resolve_device(self.device)
        # Full float32 matrix products but where allow_tf32 lets the AGOP use TF32.
        with matmul_precision(device, False):
            self._fit_rounds(X, y, device, comm)
        release_memory(device)
        return self

    def _fit_rounds(self, X, y, device, comm=None):
        dtype = resolve_dtype(self.dtype, like=X)
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        budget = memory_budget_bytes(self.memory_budget, device)
        generator = make_generator(self.random_state)
        kernel = self._kernel()
        params = {**self._round_params(), "comm": comm}
        Y_np = self._encode_targets(y)
        if comm is not None:
            comm.check_same("X and y", X, Y_np)
        # Solves and validation scores run on Y / scale (exact: a power of 2).
        y_scale = target_scale(Y_np, np_dtype, exact=self.agop_normalization is None)
        Y_np = Y_np / y_scale
        n, d = X.shape
        resolve_centers(self.n_centers, n)  # a clear error before any work
        # Kernels and AGOPs are translation invariant; centring the data makes the
        # quadratic-form distances far more accurate in float32.
        self.X_offset_ = X.mean(axis=0, dtype=np.float64).astype(np_dtype)
        X = (X - self.X_offset_).astype(X.dtype, copy=False)
        regs = REG_GRID if params["reg"] == "auto" else params["reg"]
        kernel.check_scale(X, np_dtype, reg=float(np.min(regs)))

        M0 = None
        if self.warm_start and "_M" in self.__dict__:
            factor = self.M_factor_
            shape = self._M.shape if factor is None else (factor.shape[1],) * 2
            if shape[0] != d or (len(shape) == 1) != bool(self.diag):
                raise ValueError(
                    f"warm_start=True needs a previous M_ of the same kind and "
                    f"size: M_ has shape {shape}, X has {d} features and "
                    f"diag={self.diag}."
                )
            if factor is None:
                M0 = torch.tensor(self._M, device=device, dtype=dtype)
            else:
                M0 = LowRank(torch.tensor(factor.T, device=device, dtype=dtype))

        log = self._log if self.verbose else None
        n_rounds = int(self.max_iter)
        history = curve = None
        searching = not isinstance(params["reg"], float)
        split = self.max_iter > 0 or searching
        folds = self._folds(n, y, generator, comm) if split else None
        if folds is None and searching:
            params["reg"] = _nearest_reg(params["reg"], NO_SPLIT_REG)
        Xt = to_tensor(X, device, dtype)
        Yt = to_tensor(Y_np, device, dtype)
        final_path = []
        # The kernel machine on all n points: exact where its kernel matrix fits.
        final_centers, final_solver = refit_centers(
            params["n_centers"],
            params["solver"],
            n,
            Xt.element_size(),
            budget,
            n_features=d,
            n_ranks=1 if comm is None else comm.size,
        )
        if folds is not None:
            # The validation rows of every fold, pooled in the folds' order.
            Yv = Y_np[np.concatenate([v for _, v in folds])]
            folds_t = [
                tuple(torch.as_tensor(i, device=device) for i in fold) for fold in folds
            ]
            metrics, path = [], []
            # The validation outputs of the candidates with the best score so
            # far (ties included) and of the simplest (round 0, largest ridge:
            # the first value bracket_search scores), by their index in the
            # order of evaluation.
            simplest = 0
            kept, scores_seen = {}, []

            def evaluate(F):
                F = to_numpy(F)
                score = self._validation_score(F, Yv, y_scale)
                k = len(scores_seen)
                scores_seen.append(score)
                top = max(scores_seen)
                for j in [j for j in kept if j != simplest and scores_seen[j] < top]:
                    del kept[j]
                if score == top or k == simplest:
                    kept[k] = F
                return score

            self._log(
                f"choosing the number of AGOP updates on {len(Yv)} points "
                f"({len(folds)} fold{'s' if len(folds) > 1 else ''})"
            )
            _, _, scores = rfm_rounds(
                Xt,
                Yt,
                M0,
                kernel,
                n_rounds,
                params=params,
                budget=budget,
                generator=generator,
                evaluate=evaluate,
                log=log,
                n_iter_no_change=self.n_iter_no_change,
                tol=float(self.tol),
                relative_tol=self._relative_tol,
                metrics=metrics,
                path=path,
                folds=folds_t,
            )
            rounds_run = len(scores)
            # Each kept output by its (round, ridge index) in the search's order.
            order = [(t, g) for t, p in enumerate(path) for g in p["solved"]]
            outputs = {order[k]: F for k, F in kept.items()}
            n_rounds, g = select_model(
                [p["scores"] for p in path], path[0]["regs"], outputs, Yv
            )
            history = np.array([s[0] for s in scores])
            curve = np.array(  # NaN: a ridge value the round's search skipped
                [[np.nan if s is None else s[0] for s in p["scores"]] for p in path]
            )
            params["reg"] = path[n_rounds]["regs"][g]
            self._after_validation(outputs[n_rounds, g] * y_scale, Yv * y_scale)
            del kept, outputs
            self._log(
                f"refit={self.refit!r} on all {n} points, {n_rounds} AGOP updates, "
                f"reg={params['reg']:g}"
            )
            if len(folds) > 1:  # each fold has its own metrics: redo the rounds
                refit, metrics = "rounds", [(M0, None)]
            else:
                refit = self.refit
            params.update(n_centers=final_centers, solver=final_solver)
            M, alpha = refit_rounds(
                refit,
                Xt,
                Yt,
                metrics,
                n_rounds,
                kernel,
                params=params,
                budget=budget,
                generator=generator,
                log=log,
                kernels=[p["kernel"] for p in path],
                path=final_path,
            )
            self.reg_grid_ = np.array(path[0]["regs"])
            del metrics, path
        else:
            self._after_validation(None, None)
            rounds_run = n_rounds + 1
            self._log(f"fitting on all {n} points with {n_rounds} AGOP updates")
            params.update(n_centers=final_centers, solver=final_solver)
            M, alpha, _ = rfm_rounds(
                Xt,
                Yt,
                M0,
                kernel,
                n_rounds,
                params=params,
                budget=budget,
                generator=generator,
                log=log,
                path=final_path,
            )
            self.reg_grid_ = np.array([params["reg"]])
        if M is None:
            M = torch.ones(d, dtype=dtype) if self.diag else torch.eye(d, dtype=dtype)
        if isinstance(M, LowRank):
            self._M, self.M_factor_ = None, to_numpy(M.root.T)
            diagonal = (self.M_factor_.astype(np.float64) ** 2).sum(axis=0)
        else:
            self._M, self.M_factor_ = to_numpy(M), None
            diagonal = self._M if self._M.ndim == 1 else np.diag(self._M)
        centres = final_path[-1]["centers"]
        self.dual_coef_ = to_numpy(alpha) * np_dtype(y_scale)
        self.centers_ = to_numpy(Xt if centres is None else Xt[centres])
        self.n_iter_ = rounds_run
        self.best_iter_ = n_rounds
        self.history_ = history
        self.validation_curve_ = curve
        self.reg_ = float(params["reg"])
        self.bandwidth_ = float(final_path[-1]["kernel"].bandwidth)
        self.feature_importances_ = (diagonal / diagonal.sum()).astype(np_dtype)

    def _after_validation(self, F, Y):
        """Subclass hook: use the chosen round's validation decisions."""

    # -- prediction -----------------------------------------------------------------
    def _fitted_tensors(self, X):
        device = resolve_device(self.device, fallback=True)
        dtype = torch.float64 if self.centers_.dtype == np.float64 else torch.float32
        C = torch.tensor(self.centers_, device=device, dtype=dtype)
        if self.M_factor_ is None:
            M = torch.tensor(self._M, device=device, dtype=dtype)
        else:
            M = LowRank(torch.tensor(self.M_factor_.T, device=device, dtype=dtype))
        offset = torch.tensor(self.X_offset_, device=device, dtype=dtype)
        return to_tensor(X, device, dtype).sub_(offset), C, M, device

    @staticmethod
    def _in_metric(Xt, C, M):
        """``(X, C, M)`` with a :class:`~skdnc._rfm_core.LowRank` metric mapped
        away: ``X R``, ``C R`` and the identity, on which every kernel value and
        gradient is the one in ``M``; anything else as it is."""
        if isinstance(M, LowRank):
            return Xt @ M.root, C @ M.root, None
        return Xt, C, M

    @collective
    def _decision(self, X, *, method="predict", comm=None):
        """Raw kernel predictor outputs, shape (n, K), as NumPy float64 (computed in
        the fitted precision), the float dtype of the validated input, and where
        the outputs go (:func:`~skdnc._backend.array_api_input`)."""
        check_is_fitted(self)
        X, _, space = array_api_input(
            X, fitted=getattr(self, "_space", None), method=method
        )
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Xt, C, M, device = self._fitted_tensors(X)
        limit = overflow_limit(X.shape[1], self.centers_.dtype)
        if Xt.numel() and float(Xt.abs().max()) > limit:
            row = int(torch.nonzero(Xt.abs().amax(dim=1) > limit)[0])
            raise ValueError(
                f"X holds values up to {float(Xt.abs().max()):.3g} (first in row "
                f"{row}, after centring): their distances to the training points "
                f"overflow {self.centers_.dtype} beyond {limit:.3g}. Scale X as "
                "the training data were scaled."
            )
        alpha = torch.tensor(self.dual_coef_, device=device, dtype=C.dtype)
        budget = memory_budget_bytes(self.memory_budget, device)
        Xt, C, M = self._in_metric(Xt, C, M)
        F = to_numpy(
            kernel_predict(
                Xt, C, alpha, M, self._fitted_kernel(), budget=budget, comm=comm
            ),
            np.float64,
        )
        if not np.isfinite(F).all():
            rows = np.flatnonzero(~np.isfinite(F).all(axis=1))
            raise ValueError(
                f"The predictions of {len(rows)} sample(s) (first: row {rows[0]}) "
                "are not finite: their distances to the training points overflow "
                f"{C.dtype} (largest |x| = {np.abs(X).max():.3g}). Scale X as the "
                "training data were scaled."
            )
        return F, X.dtype, space

    def agop(self, X=None):
        """AGOP of the fitted predictor.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), default=None
            Points at which the gradients are taken. ``None`` uses the centres
            ``centers_`` (the training points, unless ``n_centers`` chose fewer),
            with each point's own centre left out of its gradient (where a
            Laplace kernel's gradient is not defined), as in :meth:`fit`.

        Returns
        -------
        agop : ndarray of shape (n_features, n_features)
            :math:`\\frac{1}{m}\\sum_i \\sum_c \\nabla f_c(x_i) \\nabla f_c(x_i)^\\top`,
            not normalised (the diagonal only when ``diag=True``).
        """
        return self._agop(X)

    @collective
    def _agop(self, X, *, comm=None):
        check_is_fitted(self)
        if X is None:
            Xt, C, M, device = self._fitted_tensors(self.centers_ + self.X_offset_)
            self_index = torch.arange(len(C), device=device)
        else:
            X, _, space = array_api_input(
                X, fitted=getattr(self, "_space", None), method="agop"
            )
            X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
            Xt, C, M, device = self._fitted_tensors(X)
            self_index = None
        alpha = torch.tensor(self.dual_coef_, device=device, dtype=C.dtype)
        budget = memory_budget_bytes(self.memory_budget, device)
        rows = block_rows(len(C), C.element_size(), budget, n_buffers=3)
        low_rank = M if isinstance(M, LowRank) else None
        Xt, C, M = self._in_metric(Xt, C, M)
        A = kernel_agop(
            Xt,
            C,
            alpha,
            M,
            self._fitted_kernel(),
            self_index=self_index,
            diag=bool(self.diag),
            block_size=rows,
            comm=comm,
        )
        if low_rank is not None:  # the gradients in x are R times those in x R
            A = low_rank.root @ A @ low_rank.root.T
        return array_api_output(to_numpy(A, np.float64), None if X is None else space)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = uses_cuda(self.device)
        return tags


_RFM_DOC_PARAMETERS = """
    kernel : {"laplace", "gaussian", "exponential"}, default="laplace"
        Radial kernel of the Mahalanobis distance
        :math:`d_M(x, z) = \\sqrt{(x-z)^\\top M (x-z)}`: ``"laplace"``
        :math:`\\exp(-d_M / L)`, ``"gaussian"`` :math:`\\exp(-d_M^2 / (2L^2))`,
        ``"exponential"`` :math:`\\exp(-d_M^p / L^p)`.
    bandwidth : float or "auto", default="auto"
        The bandwidth :math:`L`. It is measured in the units of the features:
        standardise them (e.g. with ``StandardScaler``) or choose it by search.
        ``"auto"`` sets it, on every round, to the median distance between
        2,000 random pairs of training points in that round's metric ``M``
        (a cost of ``O(2000 d)`` per round): it follows the scale of the data,
        so ``X`` and ``1000 * X`` give the same predictions. The value of the
        final model is ``bandwidth_``.<BANDWIDTH_RULE>
    exponent : float, default=1.0
        The exponent :math:`p \\in (0, 2]` of the ``"exponential"`` kernel.
    reg : float, "auto" or array-like of float, default="auto"
        Ridge :math:`\\mu` of the solve :math:`(K_M + \\mu I)\\alpha = Y`. ``0``
        asks for the interpolating solve; a jitter is added, with a warning, if the
        kernel matrix is then not numerically positive definite. A list of values,
        or ``"auto"`` (the half-decades from 1e-3 to 1e4, 15 values), is a grid
        chosen on the validation split, by the :math:`R^2` of the targets (for the
        classifier, of its class codes): the first round scores every value
        there; each later round scores the value the round before chose and its
        two neighbours, and widens that window one value at a time while its
        lowest or highest value scores best (so a single-peaked validation curve
        gives the whole grid's choice, at about 3 solves a round). The best value
        gives the round's predictor and its AGOP, and the value of the best round
        is used for the final model (``reg_``), unless the simplest candidate (no
        AGOP update and the largest value, with the targets centred close to
        predicting their training mean) is within one standard error of the
        best: it is kept then (see Notes). The values of a round share its
        kernel matrix (each factors a copy), or, with at least 24 values and at
        most 4,096 training points in the split, one eigendecomposition of it.
        With ``solver="cg"`` (or ``"auto"`` resolving to it) every value is one
        conjugate-gradient solve. The Nystrom model (``n_centers`` fewer than
        the points) forms its ``m x m`` normal matrix once a round, so that
        every value costs a Cholesky factorisation of an ``m x m`` matrix
        instead of a solve of the whole system. Without a validation split
        (``validation_fraction=0``, or too few samples for one) the grid's value
        nearest to 1e-3 is used.<NOTE>
    max_iter : int, default=5
        Largest number of AGOP updates of ``M``. ``0`` is plain kernel ridge
        regression with ``M = I``.
    diag : bool, default=False
        Learn a diagonal ``M`` only (the diagonal of the AGOP), a cheaper feature
        reweighting.
    agop_samples : int, float or None, default=None
        Points at which the AGOP is taken: a number, a fraction of the training
        set, or ``None`` for :math:`5 \\cdot 10^5 / d` of them (at least 500, at most
        20,000, all when there are fewer): the gradients then cost about
        :math:`10^6 n K` flops whatever the dimension :math:`d`, and more
        points did not change the accuracy on the benchmarks. The subset is
        random, drawn with ``random_state``.
    agop_normalization : {"max", "trace"} or None, default="max"
        Rescaling of each AGOP: by its largest entry (the paper's code), to trace
        ``n_features`` (the trace of the identity), or none.
    agop_power : float, default=0.5
        ``M`` is set to the normalised AGOP raised to this power. The default
        square root is xRFM's convention and what Deep RFM applies to its features;
        ``1.0`` is the original RFM's ``M = AGOP``.
    centering : bool, default=False
        Centre each output's gradients before the outer products.
    validation_fraction : float, default=0.2
        Fraction of the training data held out (stratified for classification) to
        choose the number of AGOP updates in ``0..max_iter`` and, when ``reg``
        is a grid, the ridge (then even with ``max_iter=0``); the model is then refit
        on all the data (see ``refit``). ``0`` uses ``max_iter`` updates, unchecked.
        Ignored when too few samples make a split meaningless, and when ``cv``
        is set.
    cv : int or None, default=None
        Choose the number of AGOP updates and the ridge by K-fold
        cross-validation (``cv`` folds, stratified for classification) instead
        of one split: one machine per fold runs the rounds in lockstep, every
        ridge value tried is solved by every fold, and the search, early
        stopping and the one-standard-error rule use the pooled out-of-fold
        score, on every training point instead of ``validation_fraction`` of
        them. The chosen number of updates is then rerun on all the data at the
        chosen ridge (``refit="rounds"``, whatever ``refit`` says). About ``cv``
        times the fit time of one split; for small data sets, where one split's
        choice varies most (the user guide's "choosing the defaults" has the
        figures). Not supported by a distributed fit.
    n_iter_no_change : int or None, default=1
        Early stopping: the rounds on the validation split stop once the
        validation score has not improved on its best by more than ``tol`` for
        this many consecutive rounds. ``None`` runs all ``max_iter`` rounds. The
        AGOP iterations of an RFM usually settle in one to three updates, and a
        round costs as much as a kernel solve and an AGOP, so stopping on a flat
        score saves most of a fit's time.
<TOL>    refit : {"solve", "warm", "rounds"}, default="solve"
        How the final model is fitted on all the training data once the number of
        AGOP updates is chosen on the validation split. ``"solve"``: one kernel
        solve on all the data with the chosen ``M`` (learned on the split).
        ``"warm"``: start from the ``M`` one update before the chosen one and take
        the last AGOP update on all the data (two solves and one AGOP).
        ``"rounds"``: rerun every update on all the data (as many solves and AGOPs
        again as the split took). The default ``"solve"`` was as accurate as the
        others on the benchmarks of ``benchmarks/bench_rfm.py`` (digits, a
        synthetic problem and an image-like problem) at a fraction of their
        time: ``M`` learned on 80% of the data is as good a metric as one learned
        on all of it, while the solve on all the data keeps every training point
        as a centre.
    solver : {"auto", "cholesky", "cg", "nystrom", "falkon"}, default="auto"
        Solver of the kernel machine. Two models: the exact one, with every
        training point a centre, solves :math:`(K + \\mu I)\\alpha = Y` by
        ``"cholesky"`` (the kernel matrix factored in place) or ``"cg"``
        (conjugate gradients with a Nystrom preconditioner, the kernel matrix
        held when it fits and recomputed in row blocks when it does not). The
        Nystrom model :math:`f(x) = k_M(x, C)\\beta` over ``n_centers`` centres
        ``C`` solves Falkon's system :math:`(K_{nm}^\\top K_{nm} + \\mu K_{mm})
        \\beta = K_{nm}^\\top Y` (Rudi et al., 2017, with their
        :math:`\\lambda n = \\mu`, so that ``n_centers`` equal to the number of
        points gives the exact model): ``"nystrom"`` forms the ``m x m`` normal
        matrix in row blocks and solves it directly (every value of a ridge grid
        from the normal matrix formed once), ``"falkon"`` runs conjugate
        gradients with
        Falkon's preconditioner; memory :math:`O(n d + m^2)` plus one block.
        ``"auto"``: the exact model when ``n_centers`` resolves to every point
        (``"cholesky"`` while the kernel matrix fits ``memory_budget``, else
        ``"cg"``), the Nystrom model otherwise, solved by ``"falkon"`` for one
        ridge value and by ``"nystrom"`` for a grid (one eigendecomposition
        instead of one solve per value).
    solver_params : dict, default=None
        Options of ``"cg"`` and ``"falkon"``: ``tol`` (relative residual; 1e-6 in
        float64, 1e-4 in float32) and ``max_iter`` (1000); ``rank`` (1000) of
        the preconditioner of ``"cg"``.
    n_centers : int, float or "auto", default="auto"
        Number of centres of the Nystrom model, drawn uniformly (with
        ``random_state``) from the training points of each solve: a number, a
        fraction of the points, or ``"auto"``: every point (the exact model) up
        to 2,048 points, or up to ``6 d`` points (at most 8,192) for ``d``
        features, where the exact factorisation costs no more than the
        distance and AGOP products of a round; beyond, a quarter of the points
        clipped to [1024, 2048]
        and at most :math:`\\max(1024, 2^{26} / n)` (``K_nm`` of at most
        :math:`2^{26}` numbers, 256 MiB in float32): 1,250 centres at 5,000
        points, 2,048 from 8,192 to 32,768 points, 1,024 from 65,536 points.
        For ``d`` features, also at most :math:`n d / 48` centres and a lower
        clip of :math:`\\min(1024, 48 d)`, which change the rule below 22
        features: low-dimensional data need fewer centres (937 at 5,000 points
        with 9 features); and an upper clip of :math:`\\min(4096, 6 d)` above
        341 features, which need more (4,000 at 16,000 points with 784). A
        number larger than the validation split is clipped to it there.
        With ``"auto"`` (and ``solver="auto"``) the rule above serves the
        rounds on the validation split, which learn ``M``; the kernel machine
        fitted on all ``n`` training points (the refit, or every round without
        a split) takes every point as a centre up to 32,768 points while twice
        its ``n x n`` kernel matrix fits ``memory_budget``, solved by Cholesky
        up to 8,192 points and by conjugate gradients beyond: the Nystrom model
        cannot fit every training point as the exact one does, which on clean
        data costs accuracy that more centres do not win back. See
        :ref:`scaling`.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Where the computation runs, resolved in :meth:`fit` and at prediction
        (``"auto"``: CUDA when available). Fitted attributes are NumPy arrays, so
        a model fitted on a GPU loads anywhere.
    dtype : {"float64", "float32"} or None, default=None
        Precision of the computation. ``None`` follows the input: float32 data
        (what image pipelines produce) are computed and returned in float32,
        anything else in float64. ``"float32"`` is about twice as fast as
        ``"float64"`` and halves the memory.
    allow_tf32 : bool, default=True
        On a CUDA device in float32, compute the AGOP's gradient products (most
        of its flops) on TensorFloat-32 tensor cores: several times faster, with
        their inputs rounded to a 10-bit mantissa, which the averaged outer
        products tolerate. The distance products of the kernels always run in
        full float32 (their cancellation would not tolerate TF32). ``False``
        keeps every product in full float32. No effect on the CPU or in
        float64.
    memory_budget : float, default=None
        Memory, in GiB, for the large buffers of one computation: the kernel
        matrix of the exact solve, the Nystrom factor and kernel row blocks of
        conjugate gradients, the row blocks of the AGOP and of prediction. Not
        counted: the copies of the data, what torch and BLAS page in on first
        use, and freed memory the allocator keeps: up to 0.15 GiB more for
        8,000 points of 100 features (see :ref:`memory_budget_bounds`).
        ``None``: 80% of a GPU's free memory, or half of the available RAM.
        In a distributed fit, the budget of each rank.
    distributed : {"auto", False}, default="auto"
        ``"auto"``: when :mod:`torch.distributed` is initialised with more than
        one rank (``torchrun``, ``init_process_group``), split :meth:`fit`,
        prediction and :meth:`agop` over the ranks of the default process group.
        Every rank must then call them, with the same data and parameters, and
        every rank ends with the same model. The solver is conjugate gradients
        (``solver="cholesky"`` raises); an error on one rank raises on all.
        ``False``: compute in this process alone. See :ref:`scaling`.
    warm_start : bool, default=False
        Start the AGOP iterations from the previous fit's ``M_``.
    random_state : int, RandomState instance or None, default=None
        Seeds the validation split and the AGOP points.
    verbose : int, default=0
        Print a line per round with its time and validation score."""


_CLASSIFIER_TOL = """
    tol : float, default=3e-3
        Smallest improvement of the validation score (the :math:`R^2` of the
        class codes) that counts for early stopping: with
        ``n_iter_no_change=1``, the first round that adds less than 0.3% of the
        codes' variance ends the rounds. The :math:`R^2` of the codes keeps
        rising by a few 1e-4 a round long after the accuracy has settled;
        stopping there saves up to three rounds (the user guide's "choosing the
        defaults" gives what it costs and saves on ``benchmarks/bench_real.py``
        and ``benchmarks/bench_rfm.py``).
"""

_REGRESSOR_TOL = """
    tol : float, default=0.03
        Smallest improvement of the validation :math:`R^2` that counts for
        early stopping, as a fraction of the variance the best round so far
        leaves unexplained (:math:`1 - R^2`): with ``n_iter_no_change=1``, the
        first round that removes less than 3% of the remaining validation
        error ends the rounds. A fit at :math:`R^2 = 0.99` runs on while its
        rounds still cut the error by a few percent (an improvement of 3e-4),
        where one at :math:`R^2 = 0.4` stops once a round adds less than 0.018.
"""

_CLASSIFIER_NOTE = """

        The classifier's defaults are ``reg="auto"`` and ``bandwidth="auto"``,
        as the regressor's: on noisy labels the near-interpolating ridge 1e-3
        fits the noise (below the majority class on real tabular data), and a
        fixed bandwidth of 10 is far off the distances of many feature sets
        (at 4,096 features the kernel matrix is then the identity and the
        classifier is at chance). The split that chooses the number of AGOP
        updates chooses both, so clean problems keep the near-interpolating
        ridge when it is best (``benchmarks/bench_real.py``,
        ``benchmarks/bench_rfm.py``; the user guide's "choosing the defaults"
        has the figures). ``reg=1e-3, bandwidth=10`` is the former fixed
        choice."""

_REGRESSOR_NOTE = """

        The regressor's defaults are ``reg="auto"`` and ``bandwidth="auto"``:
        on noisy targets the best ridge is far from the near-interpolating
        1e-3, and it is chosen on the validation split that already chooses
        the number of AGOP updates, for a small multiple of the time of one
        fixed-ridge fit instead of the many refits of a grid search
        (``benchmarks/bench_hyperparams.py``). With the Laplace kernel the
        ``"auto"`` bandwidth is four times the median distance: a smoother
        kernel, whose lower ridge the same search finds, was the more accurate
        on every regression set of ``benchmarks/bench_real.py`` and on
        diamonds at 5,000 and 20,000 rows (``benchmarks/bench_nystrom.py``),
        while the classifier's accuracy did not move with it (the user guide's
        "choosing the defaults" has the figures)."""


def _doc_parameters(*, bandwidth_rule, tol, note):
    """The shared parameter documentation with one estimator's parts: the
    ``"auto"`` bandwidth, the ``tol`` entry and the note on the defaults."""
    text = _RFM_DOC_PARAMETERS.replace("<BANDWIDTH_RULE>", bandwidth_rule)
    return text.replace("<TOL>", tol.lstrip("\n")).replace("<NOTE>", note)


_CLASSIFIER_PARAMETERS = _doc_parameters(
    bandwidth_rule="", tol=_CLASSIFIER_TOL, note=_CLASSIFIER_NOTE
)
_REGRESSOR_PARAMETERS = _doc_parameters(
    bandwidth_rule="""
        With the Laplace kernel ``"auto"`` is four times that median (see the
        note below).""",
    tol=_REGRESSOR_TOL,
    note=_REGRESSOR_NOTE,
)

_RFM_DOC_ATTRIBUTES = """
    M_ : ndarray of shape (n_features, n_features), or (n_features,) if ``diag``
        The learned feature matrix (Mahalanobis metric) of the final predictor.
        When the fit kept it as a factor (``M_factor_`` is not ``None``), it is
        built from the factor on each access, and refused with a
        ``MemoryError`` when it does not fit ``memory_budget``.
    M_factor_ : ndarray of shape (rank, n_features) or None
        ``M_ = M_factor_.T @ M_factor_`` when the AGOP's rank (at most the AGOP
        points times the outputs) is below ``n_features``: the rounds then work
        on the ``rank`` columns of ``X @ M_factor_.T`` and never form a
        ``d x d`` matrix. ``None`` when ``M_`` is kept whole.
    dual_coef_ : ndarray of shape (n_samples, n_outputs)
        Dual coefficients :math:`\\alpha` of the final kernel machine.
    centers_ : ndarray of shape (n_samples, n_features)
        The centres of the kernel machine, minus ``X_offset_``: the training
        points, or the ``n_centers`` of them drawn for the Nystrom model (then
        ``n_samples`` is the number of centres, here and in ``dual_coef_``).
    X_offset_ : ndarray of shape (n_features,)
        Mean of the training points, subtracted from every input (kernels and
        AGOPs are translation invariant; this keeps float32 distances accurate).
    n_iter_ : int
        Number of rounds run, as scikit-learn's iterative estimators count
        them (``HistGradientBoostingClassifier``, ``MLPClassifier``): a round is
        one kernel solve, followed by an AGOP update unless it is the last. On
        the validation split when there is one (``len(history_)``: at most
        ``max_iter + 1``, fewer when early stopping ended the rounds sooner),
        else ``max_iter + 1`` on all the data. The final solve of ``refit`` is
        not counted.
    best_iter_ : int
        The chosen round: the number of AGOP updates behind ``M_``, in
        ``0..n_iter_ - 1`` (``0`` is plain kernel ridge regression, ``M = I``),
        the round with the best validation score, or ``0`` when the
        one-standard-error rule kept the simplest candidate (see Notes;
        ``max_iter`` without a validation split).
    history_ : ndarray of shape (n_rounds,) or None
        Validation score after ``0, 1, ...`` AGOP updates, one per round run
        (``n_rounds`` is ``n_iter_``),
        with the round's best ridge value (``history_[best_iter_]`` is the
        best, unless the simplest candidate was kept); ``None`` when no
        validation split was made. :math:`R^2` of the targets (the class
        codes for the classifier).
    validation_curve_ : ndarray of shape (n_rounds, n_regs) or None
        The curve behind ``history_``: the validation score of every round
        and every value of ``reg_grid_`` that the round's search solved, NaN
        for the values it skipped (``history_`` is its row-wise maximum,
        ``np.nanmax``); ``None`` when no validation split was made.
    reg_grid_ : ndarray of shape (n_regs,)
        The ridge values tried, ascending (the one ``reg`` when it is a float).
    reg_ : float
        The ridge of the final model: ``reg``, or the value of the grid with the
        best validation score in the chosen round (the largest value when the
        simplest candidate was kept).
    bandwidth_ : float
        The bandwidth of the final model: ``bandwidth``, or the value the
        ``"auto"`` rule measured in its metric.
    feature_importances_ : ndarray of shape (n_features,)
        Diagonal of ``M_``, normalised to sum to one.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen in :meth:`fit`, when ``X`` has string column names."""

_RFM_DOC_NOTES = """
    An RFM [1]_ alternates two steps, starting from ``M = I``: solve kernel ridge
    regression :math:`\\alpha = (K_M(X, X) + \\mu I)^{-1} Y` and set ``M`` to the
    Average Gradient Outer Product of the predictor
    :math:`f(x) = \\sum_j \\alpha_j k_M(x, x_j)`,

    .. math:: M \\leftarrow \\frac{1}{m} \\sum_{i=1}^m \\sum_c \\nabla f_c(x_i)
              \\nabla f_c(x_i)^\\top,

    computed in closed form with batched matrix products, rescaled by
    ``agop_normalization`` and raised to ``agop_power``. Its eigenvectors are the
    directions the predictor is sensitive to; its diagonal ranks the features.

    The number of AGOP updates and the ridge are chosen on the validation
    split by the :math:`R^2` of the (centred) targets; for the classifier, of
    its class codes, i.e. the Brier skill score, a proper scoring rule, with
    the accuracy breaking ties. The candidate with the best score is kept,
    unless the simplest one (no AGOP update, the largest ridge: close to the
    training mean of the targets, for the classifier the class prior and so
    the majority class) is within one standard error of it, measured on the
    paired differences of their squared errors on the validation points: the
    one-standard-error rule (Hastie, Tibshirani and Friedman, *The Elements of
    Statistical Learning*, 2009, sec. 7.10) between the two. On features
    without signal the best of the many candidates beats the prior on the
    validation points by chance alone, and would fall below it on new data.

    Fitting holds the ``n_samples x n_samples`` kernel matrix, factored in place;
    a problem that does not fit ``memory_budget`` raises an error that names it."""


def _nearest_reg(reg, target):
    """The value of a grid (``"auto"``: :data:`~skdnc._solvers.REG_GRID`) nearest
    to ``target`` on a log scale."""
    grid = np.asarray(REG_GRID if reg == "auto" else reg, dtype=np.float64)
    distance = np.abs(np.log(np.maximum(grid, 1e-300)) - np.log(target))
    return float(grid[np.argmin(distance)])


class RFMClassifier(ClassifierMixin, _BaseRFM):
    __doc__ = f"""Recursive Feature Machine classifier.

    Kernel ridge regression on one-hot targets, alternating with the estimation
    of a Mahalanobis feature matrix ``M`` by the Average Gradient Outer Product
    (AGOP), as in Radhakrishnan et al. (2024) and Algorithm 1 of Beaglehole et al.
    (2024). Runs on torch, on a GPU when there is one.

    Parameters
    ----------{_CLASSIFIER_PARAMETERS}
    target_coding : {{"pm1", "onehot"}}, default="pm1"
        Targets of the regression: ``"pm1"`` codes each class as +1 in its own
        column and -1 elsewhere (the paper's coding), ``"onehot"`` as 1 and 0.
        Binary problems use a single output column.

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels.{_RFM_DOC_ATTRIBUTES}
    intercept_ : ndarray of shape (n_outputs,)
        The training mean of the class codes (of ``target_coding``; one
        column for two classes), i.e. the class prior in the coding: the
        kernel machine is fitted to the codes minus ``intercept_``, which is
        added back to its outputs, so that a large ridge shrinks the
        predictions toward the prior (the majority class) rather than toward
        0.
    proba_scale_ : float
        Inverse temperature of :meth:`predict_proba`.

    See Also
    --------
    RFMRegressor : The same machine for regression.
    DeepRFMTransformer : Deep RFM, Algorithm 1 of the paper.

    Notes
    -----{_RFM_DOC_NOTES}

    References
    ----------
    .. [1] A. Radhakrishnan, D. Beaglehole, P. Pandit and M. Belkin, "Mechanism for
       feature learning in neural networks and backpropagation-free machine
       learning models", Science 383, 2024.
    .. [2] D. Beaglehole, P. Súkeník, M. Mondelli and M. Belkin, "Average gradient
       outer product as a mechanism for deep neural collapse", NeurIPS 2024.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from sklearn.model_selection import KFold, StratifiedKFold, train_test_split
    >>> from skdnc import RFMClassifier
    >>> X, y = load_digits(return_X_y=True)
    >>> X_train, X_test, y_train, y_test = train_test_split(
    ...     X, y, stratify=y, random_state=0)
    >>> clf = RFMClassifier(max_iter=2, random_state=0).fit(X_train, y_train)
    >>> clf.score(X_test, y_test) > 0.97
    True
    >>> clf.M_.shape
    (64, 64)
    """

    _parameter_constraints = {
        **_BaseRFM._parameter_constraints,
        "target_coding": [StrOptions({"pm1", "onehot"})],
    }

    def __init__(
        self,
        *,
        kernel="laplace",
        bandwidth="auto",
        exponent=1.0,
        reg="auto",
        max_iter=5,
        diag=False,
        agop_samples=None,
        agop_normalization="max",
        agop_power=0.5,
        centering=False,
        validation_fraction=0.2,
        cv=None,
        n_iter_no_change=1,
        tol=3e-3,
        refit="solve",
        target_coding="pm1",
        solver="auto",
        solver_params=None,
        n_centers="auto",
        device="auto",
        dtype=None,
        allow_tf32=True,
        memory_budget=None,
        distributed="auto",
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            kernel=kernel,
            bandwidth=bandwidth,
            exponent=exponent,
            reg=reg,
            max_iter=max_iter,
            diag=diag,
            agop_samples=agop_samples,
            agop_normalization=agop_normalization,
            agop_power=agop_power,
            centering=centering,
            validation_fraction=validation_fraction,
            cv=cv,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            refit=refit,
            solver=solver,
            solver_params=solver_params,
            n_centers=n_centers,
            device=device,
            dtype=dtype,
            allow_tf32=allow_tf32,
            memory_budget=memory_budget,
            distributed=distributed,
            warm_start=warm_start,
            random_state=random_state,
            verbose=verbose,
        )
        self.target_coding = target_coding

    @_fit_context(prefer_skip_nested_validation=True)
    @atomic_fit
    def fit(self, X, y):
        """Fit the RFM classifier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels, of any type.

        Returns
        -------
        self : RFMClassifier
            The fitted classifier.
        """
        comm = world(self.distributed)
        with fail_together(comm):  # also when one rank's data fail validation
            check_call(comm, self, "fit", None)  # fit compares X and y itself
            X, y, self._space = array_api_input(X, y)
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
            self.classes_, y_index = check_class_labels(y, owner="RFMClassifier")
            return self._fit(X, y_index, comm)

    def _encode_targets(self, y_index):
        Y = class_targets(
            y_index, len(self.classes_), self.target_coding, binary_column=True
        )
        # Centred on the class prior: a large ridge shrinks toward it.
        self.intercept_ = Y.mean(axis=0)
        return Y - self.intercept_

    def _decision(self, X, *, method="predict"):
        F, dtype, space = super()._decision(X, method=method)
        return F + self.intercept_, dtype, space

    def _split(self, n, y_index, generator):
        counts = np.bincount(y_index)
        n_val = int(np.ceil(self.validation_fraction * n))
        if n_val < len(counts) or n - n_val < len(counts) or counts.min() < 2:
            return None
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return train_test_split(
            np.arange(n), test_size=n_val, stratify=y_index, random_state=seed
        )

    def _kfold(self, k, y_index):
        counts = np.bincount(y_index)
        if counts.min() < k:
            raise ValueError(
                f"cv={k} needs at least {k} samples of every class; class "
                f"{self.classes_[np.argmin(counts)]!r} has {counts.min()}. Use "
                "fewer folds, or cv=None (one split of validation_fraction)."
            )
        return StratifiedKFold(k, shuffle=True)

    def _labels(self, F):
        return F.argmax(axis=1) if F.shape[1] > 1 else (F[:, 0] > self._threshold())

    def _threshold(self):
        return 0.0 if self.target_coding == "pm1" else 0.5

    def _validation_score(self, F, Y, scale):
        # R^2 of the coded targets (one minus the Brier score over the spread
        # of the codes), ties broken by the accuracy.
        F, Y = F * scale + self.intercept_, Y * scale + self.intercept_
        accuracy = np.mean(self._labels(F) == self._labels(Y))
        return (pooled_r2(F, Y), float(accuracy))

    def _logits(self, F):
        """Per-class logits from raw outputs (binary: the negated column first)."""
        if F.shape[1] == 1:
            f = F[:, 0] - self._threshold()
            return np.column_stack([-f, f])
        return F

    def _after_validation(self, F, Y):
        if F is None:
            self.proba_scale_ = 1.0
            return
        F, Y = F + self.intercept_, Y + self.intercept_
        logits = self._logits(F)
        target = self._labels(Y).astype(int)

        def nll(log_beta):
            lp = log_softmax(np.exp(log_beta) * logits, axis=1)
            return -lp[np.arange(len(target)), target].mean()

        res = minimize_scalar(nll, bounds=(-5, 8), method="bounded")
        self.proba_scale_ = float(np.exp(res.x))

    def decision_function(self, X):
        """Outputs of the kernel predictor, ``intercept_`` included.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples, n_classes), or (n_samples,) for two
            classes
            One column per class, in the coding of ``target_coding``; for two
            classes, the score of ``classes_[1]`` (positive means ``classes_[1]``
            under ``"pm1"``).
        """
        F, dtype, space = self._decision(X, method="decision_function")
        F = F.astype(dtype, copy=False)
        return array_api_output(F[:, 0] if F.shape[1] == 1 else F, space)

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            The class with the largest output.
        """
        F, _, space = self._decision(X, method="predict")
        return array_api_output(self.classes_[self._labels(F).astype(int)], space)

    def predict_proba(self, X):
        """Class probabilities by temperature scaling of the outputs.

        The probabilities are ``softmax(proba_scale_ * F)`` of the predictor's
        outputs ``F`` (for two classes, of ``(-f, f)`` around the decision
        threshold). The inverse temperature ``proba_scale_`` minimises the log
        loss on the validation split of :meth:`fit`; without one it is 1. The
        ranking always agrees with :meth:`decision_function`; for calibrated
        probabilities, wrap the classifier in ``CalibratedClassifierCV``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            In float64 whatever the input's dtype (the outputs are computed in
            the fitted precision): in float32 the softmax of a confident
            prediction underflows, and ties the small probabilities at 0, which
            would break their agreement in order with :meth:`predict_log_proba`.
        """
        F, _, space = self._decision(X, method="predict_proba")
        return array_api_output(
            softmax(self.proba_scale_ * self._logits(F), axis=1), space
        )

    def predict_log_proba(self, X):
        """Logarithm of :meth:`predict_proba`.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_proba : ndarray of shape (n_samples, n_classes)
        """
        F, _, space = self._decision(X, method="predict_log_proba")
        return array_api_output(
            log_softmax(self.proba_scale_ * self._logits(F), axis=1), space
        )


class RFMRegressor(RegressorMixin, _BaseRFM):
    __doc__ = f"""Recursive Feature Machine regressor.

    Kernel ridge regression alternating with the estimation of a Mahalanobis
    feature matrix ``M`` by the Average Gradient Outer Product (AGOP). The targets
    are centred (their training mean is added back to the predictions).

    Parameters
    ----------{_REGRESSOR_PARAMETERS}

    Attributes
    ----------{_RFM_DOC_ATTRIBUTES}
    y_mean_ : ndarray of shape (n_outputs,)
        Training mean of the targets.

    See Also
    --------
    RFMClassifier : The same machine for classification.

    Notes
    -----{_RFM_DOC_NOTES}

    References
    ----------
    .. [1] A. Radhakrishnan, D. Beaglehole, P. Pandit and M. Belkin, "Mechanism for
       feature learning in neural networks and backpropagation-free machine
       learning models", Science 383, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc import RFMRegressor
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(300, 10))
    >>> y = np.sin(X[:, 0]) + X[:, 1] ** 2
    >>> reg = RFMRegressor(bandwidth=5.0, max_iter=3, random_state=0).fit(X, y)
    >>> int(np.argmax(reg.feature_importances_)) in (0, 1)
    True
    """

    _median_multiple = {"laplace": 4.0}
    _relative_tol = True

    def __init__(
        self,
        *,
        kernel="laplace",
        bandwidth="auto",
        exponent=1.0,
        reg="auto",
        max_iter=5,
        diag=False,
        agop_samples=None,
        agop_normalization="max",
        agop_power=0.5,
        centering=False,
        validation_fraction=0.2,
        cv=None,
        n_iter_no_change=1,
        tol=0.03,
        refit="solve",
        solver="auto",
        solver_params=None,
        n_centers="auto",
        device="auto",
        dtype=None,
        allow_tf32=True,
        memory_budget=None,
        distributed="auto",
        warm_start=False,
        random_state=None,
        verbose=0,
    ):
        super().__init__(
            kernel=kernel,
            bandwidth=bandwidth,
            exponent=exponent,
            reg=reg,
            max_iter=max_iter,
            diag=diag,
            agop_samples=agop_samples,
            agop_normalization=agop_normalization,
            agop_power=agop_power,
            centering=centering,
            validation_fraction=validation_fraction,
            cv=cv,
            n_iter_no_change=n_iter_no_change,
            tol=tol,
            refit=refit,
            solver=solver,
            solver_params=solver_params,
            n_centers=n_centers,
            device=device,
            dtype=dtype,
            allow_tf32=allow_tf32,
            memory_budget=memory_budget,
            distributed=distributed,
            warm_start=warm_start,
            random_state=random_state,
            verbose=verbose,
        )

    @_fit_context(prefer_skip_nested_validation=True)
    @atomic_fit
    def fit(self, X, y):
        """Fit the RFM regressor.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self : RFMRegressor
            The fitted regressor.
        """
        comm = world(self.distributed)
        with fail_together(comm):  # also when one rank's data fail validation
            check_call(comm, self, "fit", None)  # fit compares X and y itself
            X, y, self._space = array_api_input(X, y)
            X, y = validate_data(
                self,
                X,
                y,
                dtype=[np.float64, np.float32],
                multi_output=True,
                y_numeric=True,
            )
            self._y_ndim = np.ndim(y)
            return self._fit(X, y, comm)

    def _encode_targets(self, y):
        Y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        self.y_mean_ = Y.mean(axis=0)
        return Y - self.y_mean_

    def _split(self, n, y, generator):
        n_val = int(np.ceil(self.validation_fraction * n))
        if n_val < 2 or n - n_val < 2:
            return None
        seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
        return train_test_split(np.arange(n), test_size=n_val, random_state=seed)

    def _kfold(self, k, y):
        if len(y) < 2 * k:
            raise ValueError(
                f"cv={k} needs at least {2 * k} samples (two per fold); got "
                f"{len(y)}. Use fewer folds, or cv=None."
            )
        return KFold(k, shuffle=True)

    def _validation_score(self, F, Y, scale):
        return (pooled_r2(F, Y),)  # scale-free

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        """Predict targets.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        y_pred : ndarray of shape (n_samples,) or (n_samples, n_outputs)
        """
        F, dtype, space = self._decision(X, method="predict")
        F = (F + self.y_mean_).astype(dtype, copy=False)
        return array_api_output(F[:, 0] if self._y_ndim == 1 else F, space)
