"""NFAProbe: the Neural Feature Ansatz and collapse by stage, as a pass-through step.

The Neural Feature Ansatz (NFA) states that a layer's neural feature matrix
:math:`W_l^\\top W_l` is proportional to a power of the AGOP of the model with
respect to the layer's input, :math:`\\mathrm{AGOP}_l^{1/2}` in the paper's
measurements. :class:`NFAProbe` measures it, with NC1/NC2 of each layer's input,
its "right" stage and its output, on the data passed to ``fit``; the engine for
networks is :func:`skdnc.nn.probe_network`.
"""

import copy
from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from skdnc._backend import resolve_device
from skdnc._linalg import psd_power

__all__ = ["NFAProbe"]


class NFAProbe(OneToOneFeatureMixin, TransformerMixin, BaseEstimator):
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
    * a fitted :class:`~skdnc.DeepRFMTransformer` (an object with ``layers_`` and
      ``transform_layers``): per layer the effective first weight
      :math:`W_{\\mathrm{eff}} = W M_l^{1/2}`, feature matrix
      :math:`W_{\\mathrm{eff}}^\\top W_{\\mathrm{eff}}` against the
      :math:`M_l^{1/2}` the layer applied (and :math:`M_l` for the "AGOP"
      correlation); stages as returned by ``transform_layers`` (input,
      :math:`M_l^{1/2} X_l`, :math:`\\Phi_l(M_l^{1/2} X_l)`).

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
        ``("input", "right", "output")``.
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
    its own AGOP is already high (about 0.8 on digits), because both matrices are
    close to multiples of the identity: compare against a baseline.

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
        "estimator": "no_validation",
        "layers": [list, tuple, None],
        "input_shape": [tuple, list, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [StrOptions({"cpu", "cuda", "auto"}), torch.device, None],
    }

    def __init__(
        self, estimator=None, *, layers=None, input_shape=None, batch_size=256,
        device=None,
    ):  # fmt: skip
        self.estimator = estimator
        self.layers = layers
        self.input_shape = input_shape
        self.batch_size = batch_size
        self.device = device

    @_fit_context(prefer_skip_nested_validation=True)
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
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        check_classification_targets(y)
        self.classes_, y_index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "NFAProbe needs at least 2 classes to measure collapse; got 1."
            )
        est = self.estimator
        if isinstance(est, torch.nn.Module):
            result = self._probe_network(est, X, y_index)
        elif hasattr(est, "layers_") and hasattr(est, "transform_layers"):
            result = _probe_deep_rfm(est, X, y_index)
        elif hasattr(est, "M_") and hasattr(est, "agop"):
            result = _probe_rfm(est, X, y_index)
        else:
            raise TypeError(
                "estimator must be a torch.nn.Module or a fitted RFM or Deep RFM "
                f"estimator (with M_ and agop, or layers_ and transform_layers); "
                f"got {type(est).__name__}."
            )
        names, nc1, nc2, nfa, nfa_unc, nfa_agop = result
        self.layer_names_ = np.asarray(names, dtype=object)
        self.nc1_ = np.asarray(nc1, dtype=np.float64)
        self.nc2_ = np.asarray(nc2, dtype=np.float64)
        self.nfa_correlation_ = np.asarray(nfa, dtype=np.float64)
        self.nfa_correlation_uncentered_ = np.asarray(nfa_unc, dtype=np.float64)
        self.nfa_correlation_agop_ = np.asarray(nfa_agop, dtype=np.float64)
        self.stages_ = ("input", "right", "output")
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.nc1_[:, :1] / self.nc1_[:, 1:]).sum(axis=0)
            self.svd_share_ = float(logs[0] / logs[1])
        return self

    def _probe_network(self, model, X, y_index):
        from skdnc.nn import probe_network
        from skdnc.nn._probe import _model_device

        shape = (len(X), -1) if self.input_shape is None else (
            len(X), *tuple(int(s) for s in self.input_shape)
        )  # fmt: skip
        try:
            Xr = X.reshape(shape)
        except ValueError as exc:
            raise ValueError(
                f"X with {X.shape[1]} features cannot be reshaped to input_shape="
                f"{tuple(self.input_shape)}."
            ) from exc
        if self.device is not None:
            device = resolve_device(self.device)
            if device != _model_device(model):
                model = copy.deepcopy(model).to(device)
        probe = probe_network(
            model, Xr, y_index, layers=self.layers, batch_size=self.batch_size
        )
        return (
            probe.layer_names,
            probe.nc1,
            probe.nc2,
            probe.nfa_correlation,
            probe.nfa_correlation_uncentered,
            probe.nfa_correlation_agop,
        )

    def transform(self, X):
        """Return ``X`` unchanged (validated).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The same values.
        """
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _stage_scores(stages, y_index):
    from skdnc.metrics import nc1_score, nc2_score

    nc1 = [np.nan if Z is None else nc1_score(Z, y_index) for Z in stages]
    nc2 = [np.nan if Z is None else nc2_score(Z, y_index) for Z in stages]
    return nc1, nc2


def _probe_rfm(est, X, y_index):
    """One layer: ``M_`` against the fitted predictor's AGOP on ``X``."""
    from skdnc.nn import nfa_correlation

    M = torch.tensor(np.asarray(est.M_), dtype=torch.float64)
    A = torch.tensor(np.asarray(est.agop(X)), dtype=torch.float64)
    sqrt_A = psd_power(A, 0.5)
    nfa = [nfa_correlation(M, sqrt_A)]
    nfa_unc = [nfa_correlation(M, sqrt_A, centered=False)]
    nfa_agop = [nfa_correlation(M, A)]
    X64 = torch.tensor(X, dtype=torch.float64)
    sqrt_M = psd_power(M, 0.5)
    right = X64 * sqrt_M if M.ndim == 1 else X64 @ sqrt_M
    nc1, nc2 = _stage_scores([X, right.numpy(), None], y_index)
    return ["rfm"], [nc1], [nc2], nfa, nfa_unc, nfa_agop


def _probe_deep_rfm(est, X, y_index):
    """Per layer: ``(W M^{1/2})'(W M^{1/2})`` against ``M^{1/2}`` (and ``M``)."""
    from skdnc.nn._probe import _gram_correlation

    reps = est.transform_layers(X)
    names, nc1, nc2, nfa, nfa_unc, nfa_agop = [], [], [], [], [], []
    for index, (layer, rep) in enumerate(zip(est.layers_, reps)):
        sqrt_M = torch.tensor(np.asarray(layer["sqrt_M"]), dtype=torch.float64)
        W = torch.tensor(np.asarray(layer["W"]), dtype=torch.float64)
        W_eff = W @ sqrt_M
        root = psd_power(sqrt_M, 0.5)  # root' root = sqrt_M
        nfa.append(_gram_correlation(W_eff, root))
        nfa_unc.append(_gram_correlation(W_eff, root, centered=False))
        nfa_agop.append(_gram_correlation(W_eff, sqrt_M))  # sqrt_M' sqrt_M = M
        stages = [rep[key] for key in ("input", "agop", "features")]
        scores = _stage_scores(stages, y_index)
        nc1.append(scores[0])
        nc2.append(scores[1])
        names.append(f"layer{rep.get('layer', index + 1)}")
    return names, nc1, nc2, nfa, nfa_unc, nfa_agop
