"""Deep Recursive Feature Machines: Algorithm 1 of the paper, as a transformer.

A layer of Deep RFM fits a kernel machine to the (row-normalised) representation,
takes the Average Gradient Outer Product (AGOP) ``M`` of that machine, and maps the
data through ``Phi(M^{1/2} x)`` with an untrained random feature map ``Phi``. The
kernel solve and the AGOP are the RFM core's (:mod:`skdnc._rfm_core`), the feature
maps are :mod:`skdnc._feature_maps`; this module validates, runs the layers and
stores them.
"""

import contextlib
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.model_selection import train_test_split
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data
from tqdm.auto import tqdm

from skdnc._backend import (
    block_rows,
    make_generator,
    matmul_precision,
    memory_budget_bytes,
    normalize_rows,
    release_memory,
    resolve_device,
    resolve_dtype,
    to_numpy,
    to_tensor,
)
from skdnc._base import atomic_fit, check_class_labels, uses_cuda
from skdnc._distributed import check_call, collective, fail_together, world
from skdnc._feature_maps import (
    DEFAULT_WIDTH,
    FEATURE_MAPS,
    apply_feature_map,
    draw_feature_map,
)
from skdnc._kernels import Kernel
from skdnc._linalg import psd_power
from skdnc._rfm_core import (
    KERNEL_MACHINE_CONSTRAINTS,
    agop_step,
    class_targets,
    clearly_better,
)
from skdnc._solvers import fit_kernel_machine, kernel_predict, resolve_centers
from skdnc.metrics._collapse import (
    STAGES,
    _gram_label_correlation,
    _nc1_trace,
    _nc2_from_stats,
    _statistics,
)
from skdnc.metrics._readout import READOUT_RIDGE, _readout_scores, _ridge_readout

#: The most layers ``L="auto"`` adds (the paper's Figure 1 shows 18).
AUTO_MAX_LAYERS = 18
#: Standard errors of the paired difference by which a deeper representation must
#: beat the best shallower one on ``L="auto"``'s validation part (:func:`_improves`).
AUTO_MIN_STANDARD_ERRORS = 2.0


# -- the estimator --------------------------------------------------------------------
class DeepRFMTransformer(
    ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Deep Recursive Feature Machine: the representation of Algorithm 1.

    Every layer normalises each sample to unit norm, fits a kernel machine to the
    class labels, computes the Average Gradient Outer Product ``M`` of that machine
    with respect to the layer's input, and maps the data through a random feature
    map applied after ``M^{1/2}``. Projecting onto the AGOP at every layer drives
    deep neural collapse. What was measured: the within-class variability (NC1) of
    the layer inputs falls by a roughly constant factor a layer at first (0.40 to
    0.45 on 500 digits with ReLU features; about 0.46 on MNIST with the paper's
    settings), faster after that on MNIST, and from about layer 15 it stays at a
    floor set by float64 round-off; the class means approach a simplex ETF (NC2)
    down to a floor set by the width. The user guide gives the measurements. Runs
    on torch, on a GPU when there is one.

    Warnings raised inside a layer say where: ``"layer 3 (kernel solve): ..."``,
    with the steps ``normalisation``, ``kernel solve``, ``AGOP`` and ``feature
    map`` (and ``choosing L`` while ``L="auto"`` searches).

    Parameters
    ----------
    L : int or "auto", default="auto"
        Number of layers. ``"auto"`` chooses it on a validation split: layers
        are fitted on the rest of the training data, and the representation
        after each is scored on the validation part by the next layer's kernel
        machine (the one that supplies its AGOP), fitted on that part. A depth
        replaces the best shallower one only when it classifies clearly more
        validation samples right: its accuracy gain exceeds two standard errors
        of the paired per-sample difference (about a one-sided test at 2.5%), so
        that a win by the noise of the split is not taken. The search stops
        ``n_iter_no_change`` layers after the best (at 18 layers at most), and
        the best depth is then fitted on all the data. It can be 0: on held-out
        data Deep RFM's collapse of the training set can cost accuracy (on
        784-pixel images an RFM after one layer lost 3 points to RFM alone, after
        18 layers 7; the user guide gives the curves), and ``n_layers_`` records
        the choice. With
        no layer, :meth:`transform` returns the input as given, so that a
        pipeline is then its next estimator alone (the depth-0 score is that of
        the kernel machine on the row-normalised input, the first layer's). The
        paper's Figure 1 shows ``L=18``.
    validation_fraction : float, default=0.2
        Fraction of the training data held out by ``L="auto"`` (a stratified
        split, drawn with ``random_state``). Ignored for an integer ``L``.
    n_iter_no_change : int, default=2
        ``L="auto"`` stops adding layers once this many layers in a row have not
        clearly improved on the best depth's validation accuracy.
    kernel : {"laplace", "gaussian", "exponential"}, default="laplace"
        Kernel of every layer's kernel machine (the paper uses the Laplace kernel
        :math:`\\exp(-\\|x - z\\| / L)`; the Gaussian for ReLU on MNIST).
    bandwidth : float, default=2.0
        Kernel bandwidth; the layer inputs have unit norm, so distances are at
        most 2. A number only: the unit-norm inputs already fix the scale that
        the RFM estimators' ``bandwidth="auto"`` measures.
    exponent : float, default=1.0
        Exponent of the ``"exponential"`` kernel.
    reg : float, default=1e-3
        Ridge of the kernel solve. The paper states a ridgeless solve (``reg=0``);
        its code effectively uses 1e-3, the default here, which stays well-posed
        as the layers collapse. A number only, unlike the RFM estimators'
        ``reg="auto"``: a layer's kernel machine is never scored (it only
        supplies the AGOP, whose directions barely move with the ridge), and
        Deep RFM holds out no validation split to score it on. To choose it,
        search over ``reg`` with the downstream classifier's score (a
        ``Pipeline`` in ``GridSearchCV``).
    n_agop_steps : int, default=1
        AGOP estimates per layer. ``1`` (Algorithm 1): solve with ``M = I`` and
        take the AGOP of that machine. ``t > 1``: re-solve with the current ``M``
        and take its AGOP again, ``t`` times in all (full RFM iterations). ``0``:
        no kernel machine, ``M = I``, i.e. a deep random-feature model, the
        paper's control without the AGOP.
    agop_power : float, default=0.5
        The data are mapped by :math:`M^{p}` with this power ``p`` (the paper's
        :math:`M^{1/2}`; ``1.0`` applies the AGOP itself).
    agop_samples : int, float or None, default=None
        Training points at which each AGOP is taken: a number, a fraction, or
        ``None`` for :math:`5 \\cdot 10^5 / d` of them (at least 500, at most 20,000,
        all when there are fewer), as :class:`RFMClassifier`. Drawn with
        ``random_state``.
    agop_normalization : {"max", "trace"} or None, default="max"
        Rescaling of the AGOP: by its largest entry (the paper's code), to trace
        ``d``, or none. With the ``"relu"`` map, which is positively homogeneous,
        the scale of :math:`M^{p}` cancels in the next row normalisation and
        matters only to further AGOP steps within a layer; the ``"cos"`` map is
        not homogeneous, so there the scale changes the features themselves.
    feature_map : {"relu", "cos"}, default="relu"
        ``"relu"``: :math:`\\mathrm{ReLU}(W x)`, :math:`W_{ij} \\sim
        \\mathcal N(0, 2/D)`. ``"cos"``: :math:`\\sqrt{2/D}\\cos(W x + b)` with
        Cauchy(0, ``gamma``) frequencies and uniform phases, random Fourier
        features of :math:`\\exp(-\\gamma \\|x - z\\|_1)`.
    width : int, default=None
        Number of random features :math:`D`; ``None`` means 1024 for both maps.
        The paper's widths are 1024 for ``"relu"`` and 4096 for ``"cos"``
        (``python -m skdnc --preset paper``); at 4096 each layer's AGOP costs
        about 100 times more.
    gamma : float, default=0.05
        Scale of the ``"cos"`` map's kernel (the paper's 0.05 for MNIST, 0.1 for
        CIFAR-10 and SVHN). The cos map sees :math:`\\gamma` times absolute
        :math:`\\ell_1` distances, whose size the AGOP's normalisation and the
        width set: with the default ``agop_normalization="max"``, NC1 of the
        layer inputs stalls at large widths, while ``agop_normalization="trace"``
        with ``gamma = 5 / width`` collapses geometrically (the user guide's
        section on fidelity).
    target_coding : {"pm1", "onehot"}, default="pm1"
        Targets of each kernel machine: +1 for the class and -1 elsewhere (the
        paper's coding), or 1 and 0.
    normalize : {"rows"} or None, default="rows"
        ``"rows"`` divides every sample by its norm at the start of each layer
        and at the end, as Algorithm 1 does. ``None`` skips it (the variant of the
        paper's Section 4.2 analysis).
    record_metrics : bool, default=True
        Measure NC1, NC2 and the Gram / label-kernel correlation of every
        layer's three representations during :meth:`fit` and store them in
        ``collapse_history_``. The Gram correlation costs ``O(n d min(n, d))``
        per representation, less than the layer's kernel matrix; NC1 and NC2
        cost ``O(n d K)``.
    record_readout : bool, default=False
        With ``record_metrics``, also measure NC3 and NC4 of a ridge readout of
        every representation (see ``collapse_history_``). It costs another
        ``O(n d min(n, d))`` per representation, in float64 on the CPU, about as
        much as the rest of the history, which is why it is off by default (a
        Deep RFM fitted inside a cross-validated pipeline pays for its history
        on every fold); when False their entries are NaN. ``python -m skdnc``
        turns it on.
    solver : {"auto", "cholesky", "cg", "nystrom", "falkon"}, default="auto"
        Solver of the kernel machines (see :class:`RFMClassifier`).
    solver_params : dict, default=None
        Options of the ``"cg"`` and ``"falkon"`` solvers.
    n_centers : int, float or "auto", default="auto"
        Centres of each layer's kernel machine (see :class:`RFMClassifier`):
        every point up to 2,048 points, a Nystrom model beyond.
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
        Where the computation runs (``"auto"``: CUDA when available).
    dtype : {"float64", "float32"} or None, default=None
        Precision of the computation. ``None`` follows the input: float32 data
        are computed, stored and transformed in float32, anything else in
        float64. ``"float32"`` is several times faster than ``"float64"`` on a GPU
        and about twice as fast on a CPU.
    allow_tf32 : bool, default=True
        On a CUDA device in float32, compute the AGOP's gradient products on
        TensorFloat-32 tensor cores (see :class:`RFMClassifier`); the kernels'
        distance products always run in full float32. No effect on the CPU.
    memory_budget : float, default=None
        Memory, in GiB, for the large buffers of one computation (a layer's
        kernel matrix or its row blocks, the AGOP's and the random features'
        row blocks); not the copies of the data, what torch and BLAS page in on
        first use, or the allocator's retained memory (see
        :ref:`memory_budget_bounds`).
        ``None``: 80% of a GPU's free memory or half of the available
        RAM. In a distributed fit, the budget of each rank.
    distributed : {"auto", False}, default="auto"
        ``"auto"``: when :mod:`torch.distributed` is initialised with more than
        one rank, split :meth:`fit` and :meth:`transform` over the ranks of the
        default process group: each rank computes its rows of the kernel
        products, of the AGOP points and of the random feature maps. Every rank
        must call them with the same data and parameters, and every rank ends
        with the same model. The solver is conjugate gradients
        (``solver="cholesky"`` raises); an error on one rank raises on all.
        ``False``: compute in this process alone. See :ref:`scaling`.
    random_state : int, RandomState instance or None, default=None
        Seeds the random feature maps and the AGOP points. All draws are made on
        the CPU, so a seed gives the same maps on every device.
    verbose : int, default=0
        Show a progress bar over the layers (with the current NC1).

    Attributes
    ----------
    agop_powers_ : list of ndarray of shape (d_l, d_l)
        Per layer, the matrix :math:`M_l^{p}` (``p = agop_power``) applied to the
        layer's input: the AGOP ``M_l`` of the layer's kernel machine raised to
        ``agop_power`` (the identity when ``n_agop_steps=0``).
    weights_ : list of ndarray of shape (D, d_l)
        Per layer, the random weights :math:`W_l` of the feature map.
    offsets_ : list of ndarray of shape (D,) or None
        Per layer, the random phases :math:`b_l` of the ``"cos"`` map (``None``
        for ``"relu"``).
    collapse_history_ : dict of ndarray or None
        With ``record_metrics``: ``"layer"`` (1, ..., ``n_layers_``) and, for
        every stage ``s`` in ``("input", "projection", "output")`` (the
        row-normalised input :math:`X_l`, :math:`M_l^{p} X_l` and
        :math:`\\Phi_l(M_l^{p} X_l)`),
        ``"nc1_s"`` (tr Sigma_W / tr Sigma_B), ``"nc2_s"`` (Frobenius distance of
        the centred, normalised class-mean Gram matrix from the simplex ETF's),
        ``"nc2_mse_s"`` (its mean squared entry, the paper code's NC2) and
        ``"gram_label_correlation_s"`` (correlation of the centred, normalised
        Gram matrix with the label kernel, the statistic of Figure 1), and
        ``"nc3_s"`` and ``"nc4_s"``: NC3 (Frobenius form of
        :func:`skdnc.metrics.nc3_score`) and NC4 (:func:`skdnc.metrics.nc4_score`)
        of a *ridge readout* fitted to that representation (NaN without
        ``record_readout``), each of shape (n_fitted_layers,).
        The readout is ridge regression of the one-hot labels on the features
        with an intercept and relative ridge ``1e-3`` (``lam = 1e-3 tr(X_c'
        X_c) / min(n, d)``, ``X_c`` the centred features), the linear classifier
        that the collapse theory's readout of a layer is; the layer's own kernel
        machine is not linear in the features, so its coefficients have no
        class-mean geometry to compare. Metric names are those of
        :data:`skdnc.metrics.METRIC_NAMES`, stage names those of
        :data:`skdnc.metrics.STAGES`. ``None`` without ``record_metrics``;
        :func:`skdnc.metrics.history_to_frame` makes it a table.
    n_layers_ : int
        Number of layers fitted: ``L``, or the depth ``L="auto"`` chose.
    validation_scores_ : ndarray of shape (n_depths,) or None
        With ``L="auto"``: the validation accuracy of the representation after
        ``0, 1, ...`` layers (the next layer's kernel machine fitted on the
        training part), as far as the search went; ``n_layers_`` is the
        shallowest depth that no deeper one beat by two standard errors, not
        necessarily the highest entry. ``None`` for an integer ``L``.
    layer_times_ : ndarray of shape (n_fitted_layers,)
        Seconds each layer took in :meth:`fit` (metrics recording included).
    classes_ : ndarray of shape (n_classes,)
        The class labels seen in :meth:`fit`.
    n_features_in_ : int
        Number of features seen in :meth:`fit`.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen in :meth:`fit`, when ``X`` has string column names.

    See Also
    --------
    RFMClassifier : One RFM; the usual classifier on top of the representation.
    skdnc.metrics.nc1_score : The NC1 measurement.

    Notes
    -----
    Algorithm 1 of [1]_: for :math:`l = 1, \\dots, L`,

    1. :math:`x \\leftarrow x / \\|x\\|` for every sample;
    2. :math:`\\alpha_l = (k(X_l, X_l) + \\mu I)^{-1} Y`, with the kernel ``kernel``;
    3. :math:`M_l = \\frac{1}{m} \\sum_i \\sum_c \\nabla f_{l,c}(x_i)
       \\nabla f_{l,c}(x_i)^\\top`, the AGOP of
       :math:`f_l = \\alpha_l^\\top k(\\cdot, X_l)` at the training points (each
       point's own centre left out, where the Laplace kernel is not
       differentiable), divided by its largest entry;
    4. :math:`X_{l+1} = \\Phi_l(M_l^{1/2} X_l)`.

    :meth:`transform` returns :math:`X_{L+1}` after the final row normalisation:
    the input of the paper's last kernel machine :math:`k_{L+1}`, so that
    ``Pipeline([DeepRFMTransformer(), RFMClassifier()])`` is Algorithm 1 with an
    RFM as its readout. :meth:`transform_layers` returns the three
    representations of every layer.

    The cost of a layer is that of an RFM round on ``n`` points of dimension
    ``D``: the kernel matrix (:math:`2 n^2 D` flops), its Cholesky factor
    (:math:`n^3/3`), the AGOP (:math:`2 n m K D + 2 m K D^2`) and the feature map
    (:math:`2 n D^2`). ``agop_samples``, a smaller ``width`` and ``dtype="float32"``
    make it cheaper.

    References
    ----------
    .. [1] D. Beaglehole, P. Súkeník, M. Mondelli and M. Belkin, "Average gradient
       outer product as a mechanism for deep neural collapse", NeurIPS 2024.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdnc import DeepRFMTransformer
    >>> X, y = load_digits(return_X_y=True)
    >>> X, y = X[:300], y[:300]
    >>> drfm = DeepRFMTransformer(L=4, width=128, random_state=0).fit(X, y)
    >>> drfm.transform(X).shape
    (300, 128)
    >>> nc1 = drfm.collapse_history_["nc1_input"]
    >>> bool(nc1[-1] < 0.2 * nc1[0])
    True
    """

    _parameter_constraints = {
        **KERNEL_MACHINE_CONSTRAINTS,
        "L": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "n_agop_steps": [Interval(Integral, 0, None, closed="left")],
        "feature_map": [StrOptions(set(FEATURE_MAPS))],
        "width": [Interval(Integral, 1, None, closed="left"), None],
        "gamma": [Interval(Real, 0, None, closed="neither")],
        "target_coding": [StrOptions({"pm1", "onehot"})],
        "normalize": [StrOptions({"rows"}), None],
        "record_metrics": ["boolean"],
        "record_readout": ["boolean"],
    }

    def __init__(
        self,
        *,
        L="auto",
        validation_fraction=0.2,
        n_iter_no_change=2,
        kernel="laplace",
        bandwidth=2.0,
        exponent=1.0,
        reg=1e-3,
        n_agop_steps=1,
        agop_power=0.5,
        agop_samples=None,
        agop_normalization="max",
        feature_map="relu",
        width=None,
        gamma=0.05,
        target_coding="pm1",
        normalize="rows",
        record_metrics=True,
        record_readout=False,
        solver="auto",
        solver_params=None,
        n_centers="auto",
        device="auto",
        dtype=None,
        allow_tf32=True,
        memory_budget=None,
        distributed="auto",
        random_state=None,
        verbose=0,
    ):
        self.L = L
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.kernel = kernel
        self.bandwidth = bandwidth
        self.exponent = exponent
        self.reg = reg
        self.n_agop_steps = n_agop_steps
        self.agop_power = agop_power
        self.agop_samples = agop_samples
        self.agop_normalization = agop_normalization
        self.feature_map = feature_map
        self.width = width
        self.gamma = gamma
        self.target_coding = target_coding
        self.normalize = normalize
        self.record_metrics = record_metrics
        self.record_readout = record_readout
        self.solver = solver
        self.solver_params = solver_params
        self.n_centers = n_centers
        self.device = device
        self.dtype = dtype
        self.allow_tf32 = allow_tf32
        self.memory_budget = memory_budget
        self.distributed = distributed
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting ----------------------------------------------------------------------
    def _solve(self, X, Y, M, kernel, *, budget, generator, state, comm):
        """One kernel machine of a layer: ``(centres, alpha)``."""
        return fit_kernel_machine(
            X,
            Y,
            M,
            kernel,
            float(self.reg),
            n_centers=self.n_centers,
            solver=self.solver,
            budget=budget,
            solver_params=self.solver_params,
            generator=generator,
            state=state,
            comm=comm,
        )

    def _layer_agop(
        self, X, Y, kernel, *, at, budget, generator, state, machine=None, comm=None
    ):
        """The layer's AGOP ``M_l`` (``None`` for the identity); ``state`` carries
        the exact solve's jitter from layer to layer, ``machine`` is the first
        solve when it was made already, and ``at(step)`` locates the warnings."""
        params = {
            "comm": comm,
            "agop_samples": self.agop_samples,
            "agop_normalization": self.agop_normalization,
            "agop_power": 1.0,
            "centering": False,
            "diag": False,
            "allow_tf32": bool(self.allow_tf32),
        }
        M = None
        for step in range(int(self.n_agop_steps)):
            if step == 0 and machine is not None:
                centres, alpha = machine
            else:
                with at("kernel solve"):
                    centres, alpha = self._solve(
                        X,
                        Y,
                        M,
                        kernel,
                        budget=budget,
                        generator=generator,
                        state=state,
                        comm=comm,
                    )
            with at("AGOP"):
                M = agop_step(
                    X,
                    alpha,
                    M,
                    kernel,
                    params=params,
                    budget=budget,
                    generator=generator,
                    centres=centres,
                )
            del alpha
        return M

    @_fit_context(prefer_skip_nested_validation=True)
    @atomic_fit
    def fit(self, X, y):
        """Fit the layers of Deep RFM (``L`` of them, or as many as the validation
        split chooses with ``L="auto"``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels, of any type (every layer fits a kernel machine to them).

        Returns
        -------
        self : DeepRFMTransformer
            The fitted transformer.
        """
        comm = world(self.distributed)
        with fail_together(comm):  # also when one rank's data fail validation
            check_call(comm, self, "fit", None)  # fit compares X and y itself
            X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
            classes, y_index = check_class_labels(y, owner="DeepRFMTransformer")
            device = resolve_device(self.device)
            # Full float32 matrix products but where allow_tf32 lets the AGOP use
            # TF32.
            with matmul_precision(device, False):
                if self.L == "auto":
                    n_layers, scores = self._choose_depth(
                        X, y_index, classes, device, comm
                    )
                else:
                    n_layers, scores = int(self.L), None
                self._fit_layers(X, y_index, classes, device, comm, n_layers)
        self.n_layers_ = n_layers
        self.validation_scores_ = scores
        release_memory(device)
        return self

    def _setup(self, X, y_index, n_classes, device):
        """What every pass over the layers needs: dtype, budget, a fresh generator
        (so that each pass draws what ``fit`` with a fixed ``L`` draws), kernel,
        width and targets."""
        dtype = resolve_dtype(self.dtype, like=X)
        kernel = Kernel(self.kernel, float(self.bandwidth), float(self.exponent))
        width = DEFAULT_WIDTH[self.feature_map] if self.width is None else self.width
        Y = to_tensor(
            class_targets(y_index, n_classes, self.target_coding), device, dtype
        )
        return {
            "dtype": dtype,
            "budget": memory_budget_bytes(self.memory_budget, device),
            "generator": make_generator(self.random_state),
            "kernel": kernel,
            "width": width,
            "Y": Y,
        }

    def _validation_split(self, y_index, n_classes):
        """Stratified indices ``(fit, validation)`` of ``L="auto"``."""
        n = len(y_index)
        n_val = int(np.ceil(self.validation_fraction * n))
        counts = np.bincount(y_index, minlength=n_classes)
        if n_val < n_classes or n - n_val < n_classes or counts.min() < 2:
            raise ValueError(
                f"L='auto' chooses the depth on a stratified validation split of "
                f"validation_fraction={self.validation_fraction} of the {n} "
                f"samples, which needs at least 2 samples of every class and "
                f"{n_classes} samples on each side; the smallest class has "
                f"{counts.min()} and the split would have {n_val}. Give an integer "
                "L or a larger validation_fraction."
            )
        return train_test_split(
            np.arange(n),
            test_size=n_val,
            stratify=y_index,
            random_state=self.random_state,
        )

    def _choose_depth(self, X, y_index, classes, device, comm=None):
        """``L="auto"``: the depth whose representation the next layer's kernel
        machine, fitted on the training part, scores best on the validation part,
        a deeper one counting only when it wins clearly (see :func:`_improves`).

        Returns the number of layers and the validation scores (accuracy) of
        depths ``0, 1, ...``.
        """
        fit_rows, val_rows = self._validation_split(y_index, len(classes))
        s = self._setup(X[fit_rows], y_index[fit_rows], len(classes), device)
        kernel, budget = s["kernel"], s["budget"]
        Xl = to_tensor(X[fit_rows], device, s["dtype"])
        Vl = to_tensor(X[val_rows], device, s["dtype"])
        y_val = y_index[val_rows]
        solver_state = {}
        correct, best = [], 0
        for layer in range(AUTO_MAX_LAYERS + 1):
            at = _Locator(layer + 1, "choosing L")
            self._normalise(at, Xl, Vl)
            with at("kernel solve"):
                if layer == 0:
                    self._check_scale(kernel, Xl, s["dtype"])
                machine = self._solve(
                    Xl,
                    s["Y"],
                    None,
                    kernel,
                    budget=budget,
                    generator=s["generator"],
                    state=solver_state,
                    comm=comm,
                )
                centres, alpha = machine
                C = Xl if centres is None else Xl[centres]
                F = to_numpy(
                    kernel_predict(
                        Vl, C, alpha, None, kernel, budget=budget, comm=comm
                    ),
                    np.float64,
                )
            del C, alpha
            correct.append(_correct(F, y_val))
            if layer > 0 and _improves(correct[layer], correct[best]):
                best = layer
            if layer == AUTO_MAX_LAYERS or layer - best >= self.n_iter_no_change:
                break
            Xl, Vl = self._layer(
                Xl, s, at=at, state=solver_state, comm=comm, machine=machine, also=Vl
            )[-2:]
            del machine
        return best, np.array([float(np.mean(c)) for c in correct])

    def _normalise(self, at, *representations):
        """Row normalisation at the start of a layer (in place), located by ``at``."""
        with at("normalisation"):
            if self.normalize == "rows":
                for Z in representations:
                    normalize_rows(Z)

    def _layer(
        self, Xl, s, *, at, state, comm, machine=None, projection=False, also=None
    ):
        """One layer of :meth:`fit` on its (normalised) input ``Xl``: the AGOP of
        its kernel machine, ``M^p`` and the random feature map.

        ``s`` is :meth:`_setup`'s, ``state`` carries the solve's jitter from layer
        to layer, ``machine`` is the layer's first solve when it was made already,
        and ``at(step)`` locates the warnings. Returns ``(P, W, b, MX, Phi,
        also_Phi)``: ``M^p``, the random weights and offsets, ``Xl M^p`` (when
        ``projection``, else ``None``), ``Phi(Xl M^p)`` and the same layer's
        features of the rows ``also`` (``None`` without them), as the search of
        ``L="auto"`` maps its validation part.
        """
        M = self._layer_agop(
            Xl,
            s["Y"],
            s["kernel"],
            at=at,
            budget=s["budget"],
            generator=s["generator"],
            state=state,
            machine=machine,
            comm=comm,
        )
        with at("AGOP"):
            P = self._power(M, Xl)
        del M
        with at("feature map"):
            W, b = self._draw(Xl.shape[1], s["width"], s["generator"], Xl)
            kind, budget = self.feature_map, s["budget"]
            MX, Phi = _project_and_map(Xl, P, W, b, kind, budget, comm, projection)
            if also is not None:
                also = _project_and_map(also, P, W, b, kind, budget, comm, False)[1]
        return P, W, b, MX, Phi, also

    def _check_scale(self, kernel, Xl, dtype):
        if self.n_agop_steps > 0:
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            kernel.check_scale(Xl, np_dtype, reg=float(self.reg))

    def _power(self, M, Xl):
        """:math:`M^{p}` of the layer (the identity when ``M`` is ``None``)."""
        if M is None:
            return torch.eye(Xl.shape[1], device=Xl.device, dtype=Xl.dtype)
        return psd_power(M, float(self.agop_power))

    def _draw(self, d, width, generator, Xl):
        """The layer's random weights and offsets, on ``Xl``'s device and dtype."""
        W, b = draw_feature_map(
            self.feature_map, d, width, gamma=self.gamma, generator=generator
        )
        W = W.to(device=Xl.device, dtype=Xl.dtype)
        return W, (None if b is None else b.to(device=Xl.device, dtype=Xl.dtype))

    def _fit_layers(self, X, y_index, classes, device, comm, n_layers):
        """``n_layers`` layers of :meth:`fit` on validated input."""
        s = self._setup(X, y_index, len(classes), device)
        record = None
        if self.record_metrics:
            record = _MetricsRecorder(y_index, readout=bool(self.record_readout))
        if comm is not None:
            comm.check_same("X and y", X, y_index)
        resolve_centers(self.n_centers, X.shape[0])  # a clear error before any work

        Xl = to_tensor(X, device, s["dtype"])
        powers, weights, offsets = [], [], []
        solver_state = {}  # the jitter one layer needed, tried first in the next
        bar = tqdm(
            range(n_layers), desc="Deep RFM", unit="layer", disable=not self.verbose
        )
        layer_times = []
        for layer in bar:
            tic = time.perf_counter()
            at = _Locator(layer + 1)
            self._normalise(at, Xl)
            if layer == 0:
                with at("kernel solve"):
                    self._check_scale(s["kernel"], Xl, s["dtype"])
            P, W, b, MX, Phi, _ = self._layer(
                Xl,
                s,
                at=at,
                state=solver_state,
                comm=comm,
                projection=record is not None,
            )
            if record is not None:
                record(Xl, MX, Phi)
                bar.set_postfix(nc1=f"{record.history['nc1_input'][-1]:.3g}")
            powers.append(to_numpy(P))
            weights.append(to_numpy(W))
            offsets.append(None if b is None else to_numpy(b))
            Xl, MX = Phi, None
            layer_times.append(time.perf_counter() - tic)
        self.classes_ = classes
        self.agop_powers_ = powers
        self.weights_ = weights
        self.offsets_ = offsets
        self.layer_times_ = np.asarray(layer_times, dtype=np.float64)
        self.collapse_history_ = None if record is None else record.result()
        del Xl

    # -- transforming -----------------------------------------------------------------
    @property
    def _n_features_out(self):
        """Number of output features (the last layer's width; the input's with
        no layer)."""
        return self.weights_[-1].shape[0] if self.weights_ else self.n_features_in_

    @collective
    def _forward(self, X, keep, *, comm=None):
        """Run the fitted layers on ``X``; ``keep(l)`` says which layers to return."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        out_dtype = X.dtype
        device = resolve_device(self.device, fallback=True)
        if self.weights_:
            fitted = self.weights_[0].dtype
            dtype = torch.float64 if fitted == np.float64 else torch.float32
        else:
            dtype = torch.float64 if X.dtype == np.float64 else torch.float32
        budget = memory_budget_bytes(self.memory_budget, device)
        Xl = to_tensor(X, device, dtype)
        kept = []
        layers = zip(self.agop_powers_, self.weights_, self.offsets_)
        for index, (P, W, b) in enumerate(layers):
            at = _Locator(index + 1)
            self._normalise(at, Xl)
            P = to_tensor(P, device, dtype)
            W = to_tensor(W, device, dtype)
            b = None if b is None else to_tensor(b, device, dtype)
            with at("feature map"):
                MX, Phi = _project_and_map(
                    Xl, P, W, b, self.feature_map, budget, comm, keep(index)
                )
            if keep(index):
                # Copies: the next layer normalises Phi in place.
                stages = (Xl, MX, Phi)
                kept.append(
                    {"layer": index + 1}
                    | {
                        stage: np.array(to_numpy(Z), dtype=out_dtype)
                        for stage, Z in zip(STAGES, stages)
                    }
                )
            Xl, MX = Phi, None
        if not self.weights_:
            return np.array(X, dtype=out_dtype), kept  # no layer: the input as given
        if self.normalize == "rows":
            normalize_rows(Xl)
        return to_numpy(Xl, out_dtype), kept

    def transform(self, X):
        """Map ``X`` through the fitted layers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out)
            The output of the last layer, :math:`\\Phi_L(M_L^{1/2} X_L)`, with each
            row normalised to unit norm (when ``normalize="rows"``), in the input's
            float dtype; with no layer (``n_layers_ == 0``), ``X`` itself.
        """
        return self._forward(X, keep=lambda index: False)[0]

    def transform_layers(self, X, *, layers=None):
        """Every layer's three representations of ``X``, for measurement.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.
        layers : iterable of int, default=None
            Layers to return, numbered ``1, ..., L``; ``None`` returns all of them.
            All layers run; only these are kept (they can be large).

        Returns
        -------
        representations : list of dict
            One dict per kept layer ``l``, in order, with ``"layer"`` (``l``) and
            ndarrays in the input's float dtype: ``"input"`` the layer's input
            :math:`X_l` (row-normalised when ``normalize="rows"``), ``"projection"``
            :math:`M_l^{p} X_l` and ``"output"`` :math:`\\Phi_l(M_l^{p} X_l)`.
            On the training data these are the representations that ``fit``
            measured for ``collapse_history_``.
        """
        check_is_fitted(self)
        L = len(self.weights_)
        if layers is None:
            wanted = set(range(L))
        else:
            wanted = {int(l) - 1 for l in layers}
            if any(l < 0 or l >= L for l in wanted):
                raise ValueError(
                    f"layers must be numbers between 1 and {L}; got {sorted(layers)}."
                )
        return self._forward(X, keep=wanted.__contains__)[1]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        tags.non_deterministic = uses_cuda(self.device)
        return tags


def _correct(F, y_index):
    """Whether the decision values ``F`` (one column per class) classify each
    sample correctly."""
    return F.argmax(axis=1) == y_index


def _improves(correct, best, n_se=AUTO_MIN_STANDARD_ERRORS):
    """Whether per-sample correctness ``correct`` beats ``best`` (on the same
    samples) by more than ``n_se`` standard errors of the paired difference.

    The difference of accuracies is the mean of ``d_i = correct_i - best_i``;
    its standard error is ``std(d, ddof=1) / sqrt(n)``. Only the samples on which
    the two disagree count, so that a deeper representation is taken only when
    it wins clearly more of them than it loses (at ``n_se = 2``, about a one-sided
    paired test at 2.5%): a layer that wins by the noise of the split is not
    taken (the user guide's depth curves show why).

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc._deep_rfm import _improves
    >>> best = np.zeros(160, dtype=bool)
    >>> _improves(np.arange(160) < 3, best), _improves(np.arange(160) < 4, best)
    (False, True)
    """
    return clearly_better(
        np.asarray(correct, np.float64) - np.asarray(best, np.float64), n_se
    )


class _Locator:
    """Warnings that say where in Deep RFM they were raised.

    ``with _Locator(3)("kernel solve"):`` records every warning raised inside and
    re-emits it, with its category, as ``"layer 3 (kernel solve): <message>"``;
    ``during`` adds what the pass was for (``"layer 3 (AGOP, choosing L): ..."``).
    """

    def __init__(self, layer, during=None):
        self.layer = layer
        self.during = during

    @contextlib.contextmanager
    def __call__(self, step):
        where = step if self.during is None else f"{step}, {self.during}"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for w in caught:
            warnings.warn(
                f"layer {self.layer} ({where}): {w.message}", w.category, stacklevel=4
            )


def _project_and_map(X, P, W, b, kind, budget, comm, projection):
    """``X P`` (when ``projection``, else ``None``) and the features
    ``Phi(X P)``; with a process group ``comm`` each rank maps its rows and every
    rank returns all of them."""
    n = X.shape[0]
    if comm is not None:
        X = X[comm.row_shard(n)]
    MX = X @ P
    Phi = apply_feature_map(
        MX, W, b, kind, block_rows=_feature_block_rows(MX, len(W), budget)
    )
    if comm is not None:
        Phi = comm.gather_rows(Phi, n)
        MX = comm.gather_rows(MX, n) if projection else None
    return (MX if projection else None), Phi


def _feature_block_rows(X, width, budget):
    """Rows per block of a feature map: input and output blocks within budget."""
    return block_rows(X.shape[1] + 2 * width, X.element_size(), budget)


class _MetricsRecorder:
    """Per-layer collapse metrics of the three stages (see ``collapse_history_``)."""

    #: The metrics of the history (names of ``skdnc.metrics.METRIC_NAMES``).
    METRICS = ("nc1", "nc2", "nc2_mse", "gram_label_correlation", "nc3", "nc4")

    def __init__(self, y_index, *, readout=True):
        self.readout = readout
        self.y_index = np.asarray(y_index)
        self.classes = np.unique(self.y_index)
        self.history = {"layer": []}
        for stage in STAGES:
            for name in self.METRICS:
                self.history[f"{name}_{stage}"] = []

    def __call__(self, *representations):
        self.history["layer"].append(len(self.history["layer"]) + 1)
        for stage, Z in zip(STAGES, representations):
            # The statistics of the history from one set of class statistics
            # (the full report also takes Papyan's NC1, a d x d pseudo-inverse).
            Z = to_numpy(Z, np.float64)
            stats = _statistics(Z, self.y_index, self.classes, "class_means")
            nc3 = nc4 = float("nan")
            if self.readout:
                K = len(self.classes)
                W, b = _ridge_readout(stats._X, self.y_index, K, READOUT_RIDGE)
                nc3, nc4 = _readout_scores(stats, W, b)
            report = {
                "nc1": _nc1_trace(stats),
                "nc2": _nc2_from_stats(stats, "etf", "fro"),
                "nc2_mse": _nc2_from_stats(stats, "etf", "mse"),
                "gram_label_correlation": _gram_label_correlation(stats),
                "nc3": nc3,
                "nc4": nc4,
            }
            for name in self.METRICS:
                self.history[f"{name}_{stage}"].append(float(report[name]))

    def result(self):
        return {key: np.asarray(values) for key, values in self.history.items()}
