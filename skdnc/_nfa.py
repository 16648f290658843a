"""NFAProbe: the Neural Feature Ansatz and collapse by stage, as a pass-through step.

The Neural Feature Ansatz (NFA) states that a layer's neural feature matrix
:math:`W_l^\\top W_l` is proportional to a power of the AGOP of the model with
respect to the layer's input, :math:`\\mathrm{AGOP}_l^{1/2}` in the paper's
measurements. :class:`NFAProbe` measures it, with NC1/NC2 of each layer's input,
its projection and its output, on the data passed to ``fit``. The engine for
networks is :func:`skdnc.nn.probe_network`; an adapter turns a fitted RFM or Deep
RFM into the same :class:`~skdnc.nn.NetworkProbe` result.
"""

import copy
import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from skdnc._backend import resolve_device
from skdnc._base import (
    DEVICE_CONSTRAINT,
    PassthroughMixin,
    atomic_fit,
    check_class_labels,
)
from skdnc._linalg import psd_power, rescale
from skdnc.metrics import nc1_score, nc2_score
from skdnc.metrics._collapse import STAGES
from skdnc.nn import NetworkProbe, nfa_correlation, probe_network

__all__ = ["NFAProbe"]


class NFAProbe(PassthroughMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
    """Measure the Neural Feature Ansatz and neural collapse of a model, per layer.

    ``fit(X, y)`` measures, on ``X``, for every layer of ``estimator``: the NFA
    correlation (Pearson correlation of the entries, float64) between the feature
    matrix and the square root of the AGOP, and NC1/NC2 of three stages of the
    layer. ``transform`` returns ``X`` unchanged, so the probe can sit anywhere in
    a :class:`~sklearn.pipeline.Pipeline`.

    The ``estimator`` can be

    * a :class:`torch.nn.Module`: the layers are found (or named) as in
      :func:`skdnc.nn.find_layers`; the feature matrix is :math:`W_l^\\top W_l`,
      the AGOP is the network output's with respect to the layer's input, and the
      stages are :math:`\\Phi(X)`, :math:`S V^\\top \\Phi(X)` and
      :math:`\\sigma(U S V^\\top \\Phi(X))` (:func:`skdnc.nn.probe_network`);
    * a fitted :class:`~skdnc.RFMClassifier` or :class:`~skdnc.RFMRegressor` (an
      object with ``M_`` and ``agop(X)``): one layer, feature matrix ``M_``
      against the fitted predictor's AGOP on ``X``; stages :math:`X`,
      :math:`X M^{1/2}` and NaN for the output;
    * a fitted :class:`~skdnc.DeepRFMTransformer` (an object with
      ``agop_powers_``, ``weights_`` and ``transform_layers``): per layer the
      effective first weight :math:`W_{\\mathrm{eff}} = W M_l^{p}` (``p`` the
      estimator's ``agop_power``), feature matrix
      :math:`W_{\\mathrm{eff}}^\\top W_{\\mathrm{eff}}` against
      :math:`M_l^{1/2}` (and :math:`M_l` for the "AGOP" correlation), whatever
      ``p``; stages as returned by ``transform_layers`` (input,
      :math:`M_l^{p} X_l`, :math:`\\Phi_l(M_l^{p} X_l)`).

    Parameters
    ----------
    estimator : torch.nn.Module or fitted RFM / Deep RFM estimator, default=None
        The model to measure. It is not changed (a network is run in eval mode and
        its mode restored).
    layers : list, default=None
        Layers of a network to probe (see :func:`skdnc.nn.find_layers`); ``None``
        finds them. Ignored for RFM and Deep RFM.
    input_shape : tuple of int, default=None
        Shape of one network input: ``X`` (always 2-D here) is reshaped to
        ``(n_samples, *input_shape)``, e.g. ``(3, 32, 32)`` for a conv net.
    batch_size : int, default=256
        Rows per forward/backward pass through a network.
    device : {"cpu", "cuda"}, torch.device or None, default=None
        Where a network is run. ``None``: where its parameters are. Another device
        runs a copy of the network there.

    Attributes
    ----------
    nfa_correlation_ : ndarray of shape (n_layers,)
        Pearson correlation of the entries of the feature matrix and the AGOP's
        square root.
    nfa_correlation_uncentered_ : ndarray of shape (n_layers,)
        The same, uncentred (cosine of the matrices).
    nfa_correlation_agop_ : ndarray of shape (n_layers,)
        Pearson correlation of the feature matrix and the AGOP itself.
    nc1_ : ndarray of shape (n_layers, 3)
        NC1 (:math:`\\mathrm{tr}\\,\\Sigma_W/\\mathrm{tr}\\,\\Sigma_B`) of each layer's
        stages, in the order of ``stages_``.
    nc2_ : ndarray of shape (n_layers, 3)
        NC2 of the same stages.
    svd_share_ : float
        Share of the summed log NC1 reduction owed to the middle stage,
        :math:`\\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{mid}_l}) /
        \\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{out}_l})` (NaN for an RFM).
    stages_ : tuple of str
        ``("input", "projection", "output")``.
    nc3_ : float
        NC3 of a network's own readout (see ``readout`` of
        :func:`skdnc.nn.probe_network`); NaN for an RFM or a Deep RFM, which
        have no linear readout (Deep RFM's ``collapse_history_`` holds NC3 of a
        ridge readout of every layer).
    nc4_ : float
        NC4 of a network's own readout; NaN for an RFM or a Deep RFM.
    probe_ : skdnc.nn.NetworkProbe
        Every measurement, as :func:`skdnc.nn.probe_network` returns it.
    layer_names_ : ndarray of str of shape (n_layers,)
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Defined when ``X`` has string column names.

    See Also
    --------
    skdnc.nn.probe_network : The network engine, with the AGOP matrices.
    skdnc.metrics.NeuralCollapseScorer : NC1/NC2 of a representation.

    Notes
    -----
    For a network the AGOP uses the pre-activation trick
    :math:`\\mathrm{AGOP}_l = W_l^\\top (\\frac1n \\sum_{i,c} g_{ic} g_{ic}^\\top) W_l`,
    :math:`g_{ic} = \\partial f_c(x_i)/\\partial (W_l \\Phi(x_i))`, equal to the
    Jacobian AGOP with respect to the layer's input. The paper reports a mean
    NFA correlation of 0.74 over layers and seeds for trained networks (Figures
    10-12). On a bias-free network at random initialisation the correlation with
    its own AGOP is already high, because both matrices are close to multiples of
    the identity: compare against the same statistic at initialisation.

    References
    ----------
    .. [1] D. Beaglehole, P. Súkeník, M. Mondelli, M. Belkin, "Average gradient
       outer product as a mechanism for deep neural collapse", 2024.
    .. [2] A. Radhakrishnan, D. Beaglehole, P. Pandit, M. Belkin, "Mechanism for
       feature learning in neural networks and backpropagation-free machine
       learning models", Science, 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc import NFAProbe
    >>> from skdnc.nn import make_mlp
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(60, 8)), np.arange(60) % 3
    >>> probe = NFAProbe(make_mlp(8, 3, width=16, depth=2, random_state=0)).fit(X, y)
    >>> probe.nfa_correlation_.shape, probe.nc1_.shape
    ((2,), (2, 3))
    >>> bool(np.array_equal(probe.transform(X), X))
    True
    """

    _parameter_constraints = {
        "estimator": [
            torch.nn.Module,
            HasMethods(["transform_layers"]),
            HasMethods(["agop"]),
        ],
        "layers": [list, tuple, str, None],
        "input_shape": [tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [*DEVICE_CONSTRAINT, None],
    }

    def __init__(
        self,
        estimator=None,
        *,
        layers=None,
        input_shape=None,
        batch_size=256,
        device=None,
    ):
        self.estimator = estimator
        self.layers = layers
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.device = device

    @_fit_context(prefer_skip_nested_validation=True)
    @atomic_fit
    def fit(self, X, y):
        """Measure NFA and collapse of ``estimator`` on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data in the estimator's input space (flattened for a conv net; see
            ``input_shape``).
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self : NFAProbe
            Fitted probe.
        """
        X_input = X  # as given: a DataFrame keeps the names the model was fit on
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        classes, y_index = check_class_labels(y, owner="NFAProbe")
        est = self.estimator
        if isinstance(est, torch.nn.Module):
            probe = self._probe_network(est, X, y_index)
        else:
            check_is_fitted(est)
            if hasattr(est, "transform_layers"):
                probe = probe_deep_rfm(est, X_input, y_index)
            else:
                probe = probe_rfm(est, X_input, y_index)
        self.classes_ = classes
        self.probe_ = probe
        self.layer_names_ = np.asarray(probe.layer_names, dtype=object)
        self.nc1_ = np.asarray(probe.nc1, dtype=np.float64)
        self.nc2_ = np.asarray(probe.nc2, dtype=np.float64)
        self.nfa_correlation_ = np.asarray(probe.nfa_correlation, dtype=np.float64)
        self.nfa_correlation_uncentered_ = np.asarray(
            probe.nfa_correlation_uncentered, dtype=np.float64
        )
        self.nfa_correlation_agop_ = np.asarray(
            probe.nfa_correlation_agop, dtype=np.float64
        )
        self.stages_ = STAGES
        self.svd_share_ = probe.right_share
        self.nc3_ = float(probe.nc3)
        self.nc4_ = float(probe.nc4)
        return self

    def _probe_network(self, model, X, y_index):
        shape = (
            (len(X), -1)
            if self.input_shape is None
            else (len(X), *tuple(int(s) for s in self.input_shape))
        )
        try:
            Xr = X.reshape(shape)
        except ValueError as exc:
            raise ValueError(
                f"X with {X.shape[1]} features cannot be reshaped to input_shape="
                f"{tuple(self.input_shape)}."
            ) from exc
        if self.device is not None:
            device = resolve_device(self.device)
            if any(p.device != device for p in model.parameters()):
                model = copy.deepcopy(model).to(device)
        # A network that cannot run on the reshaped X raises InputShapeError,
        # whose message names input_shape.
        return probe_network(
            model, Xr, y_index, layers=self.layers, batch_size=self.batch_size
        )


def _stage_scores(stages, y_index):
    """NC1 and NC2 of each stage (NaN where a stage does not exist)."""
    nc1 = [np.nan if Z is None else nc1_score(Z, y_index) for Z in stages]
    nc2 = [np.nan if Z is None else nc2_score(Z, y_index) for Z in stages]
    return nc1, nc2


def _nfa_triple(F, sqrt_agop, agop):
    """The three NFA correlations of a feature matrix ``F``, each matrix rescaled
    first (a correlation does not depend on it), so that an AGOP of tiny or huge
    entries gives its correlation, not an underflow's NaN."""
    F, sqrt_agop, agop = (rescale(A)[1] for A in (F, sqrt_agop, agop))
    return (
        nfa_correlation(F, sqrt_agop),
        nfa_correlation(F, sqrt_agop, centered=False),
        nfa_correlation(F, agop),
    )


def probe_rfm(est, X, y_index):
    """One layer: ``M_`` against the fitted predictor's AGOP on ``X``.

    Parameters
    ----------
    est : fitted RFMClassifier or RFMRegressor
        An object with ``M_`` and ``agop(X)``.
    X : array-like of shape (n_samples, n_features)
        In the form the estimator was fitted on (a DataFrame keeps its names).
    y_index : ndarray of int of shape (n_samples,)

    Returns
    -------
    probe : skdnc.nn.NetworkProbe
        One layer named ``"rfm"``; stages ``X``, ``X M^{1/2}`` and NaN for the
        output, which an RFM does not have.
    """
    M = torch.tensor(np.asarray(est.M_), dtype=torch.float64)
    A = torch.tensor(np.asarray(est.agop(X)), dtype=torch.float64)
    if not bool(A.any()):
        _warn_zero_agop(est, X)
    A = rescale(A)[1]  # a power of two, which the correlations do not see
    nfa = _nfa_triple(M, psd_power(A, 0.5), A)
    X64 = torch.tensor(np.asarray(X, dtype=np.float64))
    sqrt_M = psd_power(M, 0.5)
    projection = X64 * sqrt_M if M.ndim == 1 else X64 @ sqrt_M
    nc1, nc2 = _stage_scores([X64.numpy(), projection.numpy(), None], y_index)
    return _network_probe(["rfm"], [nc1], [nc2], [nfa])


def _warn_zero_agop(est, X):
    """Warn that the NFA correlations of an RFM are NaN because its AGOP on ``X``
    is zero, naming the two ways this happens (with the figures the estimator
    has: an object with only ``M_`` and ``agop`` gets the sentence alone)."""
    here = f"largest |x| {np.abs(np.asarray(X, dtype=np.float64)).max():.3g} here"
    if hasattr(est, "centers_") and hasattr(est, "X_offset_"):
        seen = np.abs(np.asarray(est.centers_) + np.asarray(est.X_offset_)).max()
        here += f", {seen:.3g} in training"
    bandwidth = getattr(est, "bandwidth_", None)
    bandwidth = "" if bandwidth is None else f" ({bandwidth:.3g})"
    warnings.warn(
        "The NFA correlations are undefined (NaN): the AGOP of the fitted "
        f"{type(est).__name__} on X is zero. Its kernel between X and the "
        "training points underflows to 0 (except at distance 0), so its "
        "predictions are flat around every sample of X. Either X lies far from "
        f"the training data, e.g. on another scale ({here}), or the bandwidth"
        f"{bandwidth} is far below the distances between points. Probe the model "
        "on data like its training data, fitted with a bandwidth near the data's "
        "distances.",
        UndefinedMetricWarning,
        stacklevel=6,
    )


def probe_deep_rfm(est, X, y_index):
    """Per layer: :math:`(W M^{p})^\\top (W M^{p})` against :math:`M^{1/2}` and
    :math:`M`, for the ``p = agop_power`` the estimator applied.

    Parameters
    ----------
    est : fitted DeepRFMTransformer
        An object with ``agop_powers_`` (:math:`M_l^{p}`), ``weights_``,
        ``agop_power`` and ``transform_layers(X)``.
    X : array-like of shape (n_samples, n_features)
        In the form the estimator was fitted on (a DataFrame keeps its names).
    y_index : ndarray of int of shape (n_samples,)

    Returns
    -------
    probe : skdnc.nn.NetworkProbe
    """
    p = float(est.agop_power)
    names, nc1, nc2, nfa = [], [], [], []
    reps = est.transform_layers(X)
    for P, W, rep in zip(est.agop_powers_, est.weights_, reps):
        P = torch.tensor(np.asarray(P), dtype=torch.float64)
        W_eff = torch.tensor(np.asarray(W), dtype=torch.float64) @ P
        # P = M^p, so M^{1/2} = P^{1/(2p)} and M = P^{1/p}.
        nfa.append(
            _nfa_triple(W_eff.T @ W_eff, psd_power(P, 0.5 / p), psd_power(P, 1 / p))
        )
        scores = _stage_scores([rep[stage] for stage in STAGES], y_index)
        nc1.append(scores[0])
        nc2.append(scores[1])
        names.append(f"layer{rep['layer']}")
    return _network_probe(names, nc1, nc2, nfa)


def _network_probe(names, nc1, nc2, nfa):
    nfa = np.asarray(nfa, dtype=np.float64).reshape(len(names), 3)
    return NetworkProbe(
        layer_names=list(names),
        nc1=np.asarray(nc1, dtype=np.float64),
        nc2=np.asarray(nc2, dtype=np.float64),
        nfa_correlation=nfa[:, 0],
        nfa_correlation_uncentered=nfa[:, 1],
        nfa_correlation_agop=nfa[:, 2],
    )
