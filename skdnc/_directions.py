"""The directions an RFM learned: the top eigenvectors of its feature matrix ``M``.

:class:`AGOPDirections` fits an RFM (:class:`~skdnc.RFMClassifier` or
:class:`~skdnc.RFMRegressor`) and keeps the leading eigenvectors of its
Mahalanobis matrix ``M`` (a power of the AGOP, so the same eigenvectors) as
components, the way :class:`~sklearn.decomposition.PCA` keeps those of the
covariance. On a network's hidden states they are the concept directions of
Beaglehole et al. (2025), which detect a concept from the projections and steer
a model along it.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils._param_validation import HasMethods, Interval
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from skdnc._backend import array_api_input, array_api_output
from skdnc._base import atomic_fit
from skdnc._linalg import psd_top_eigh
from skdnc._rfm import RFMClassifier, RFMRegressor


def _target_columns(y):
    """The targets a component's sign is aligned with, as float64 columns, and
    whether ``y`` is a classification target: the indicator of the second class
    (two classes), each class's indicator (more), or ``y``'s columns."""
    kind = type_of_target(y)
    if kind in ("binary", "multiclass"):
        classes, index = np.unique(y, return_inverse=True)
        T = (index.reshape(-1, 1) == np.arange(len(classes))).astype(np.float64)
        return (T[:, 1:] if len(classes) == 2 else T), True
    return np.asarray(y, dtype=np.float64).reshape(len(y), -1), False


def _correlations(P, T):
    """Pearson correlations between the columns of ``P`` (n, k) and ``T`` (n, q),
    in float64; 0 where a column is constant."""
    P = P - P.mean(axis=0)
    T = T - T.mean(axis=0)
    norms = np.linalg.norm(P, axis=0)[:, None] * np.linalg.norm(T, axis=0)[None, :]
    C = P.T @ T
    return np.divide(C, norms, out=np.zeros_like(C), where=norms > 0)


class AGOPDirections(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Project onto the top eigenvectors of a fitted RFM's feature matrix ``M``.

    Fits an RFM to ``(X, y)`` and keeps the ``n_components`` leading
    eigenvectors of its Mahalanobis matrix ``M`` (the normalised AGOP raised to
    ``agop_power``: the AGOP's own eigenvectors, in the same order), each
    signed so that the projections of the training data correlate positively
    with the target. ``transform`` returns the projections of the centred
    data, as :class:`~sklearn.decomposition.PCA` does with the directions of
    largest variance; here they are the directions the fitted predictor is most
    sensitive to. On a language model's hidden states with a binary concept
    label, the first component is the concept direction used to detect the
    concept and to steer the model (Beaglehole et al., 2025).

    When the chosen round of the RFM made no AGOP update (``best_iter_ = 0``:
    the validation split found ``M = I`` as good as any learned ``M``, as it
    can on classes that are easy to separate, or ``max_iter=0``), ``M`` is the
    identity and its eigenvectors would be arbitrary axes; the directions are
    then those of the AGOP of the fitted predictor (:meth:`RFMClassifier.agop`,
    the ``M`` a first update would take), and ``directions_from_`` says so.

    When the RFM kept ``M`` as a low-rank factor (``M_factor_``, the case
    ``n_samples << n_features``), the eigenvectors come from that factor's small
    Gram matrix, without forming ``M``.

    Parameters
    ----------
    estimator : RFMClassifier or RFMRegressor, default=None
        The RFM to fit, with its parameters (it is cloned). ``None``:
        ``RFMClassifier(bandwidth="auto", refit="rounds")`` when ``y`` holds
        class labels (binary or multiclass), ``RFMRegressor(refit="rounds")``
        otherwise: a bandwidth that follows the data's distances (a network's
        hidden states are far from standardised), and the AGOP updates rerun
        on all the data once the validation split has chosen their number, so
        that every sample shapes ``M`` (with ``refit="solve"`` the directions
        come from the ``1 - validation_fraction`` of the data the rounds ran
        on).
    n_components : int, default=1
        Number of directions, at most ``n_features``.
    random_state : int, RandomState instance or None, default=None
        Seeds the default RFM (its validation split and AGOP points) when
        ``estimator`` is None; a given ``estimator`` keeps its own.

    Attributes
    ----------
    estimator_ : RFMClassifier or RFMRegressor
        The fitted RFM.
    components_ : ndarray of shape (n_components, n_features)
        Orthonormal directions, by decreasing eigenvalue of ``M``.
    eigenvalues_ : ndarray of shape (n_components,)
        The eigenvalues of ``M`` (or of the AGOP, see ``directions_from_``) of
        the components.
    explained_ratio_ : ndarray of shape (n_components,)
        Each eigenvalue's share of the trace of ``M`` (the sum of all its
        eigenvalues).
    correlations_ : ndarray of shape (n_components, n_targets)
        Pearson correlation of each component's training projections with each
        target column: the indicator of ``classes_[1]`` for two classes, of
        each class for more, the columns of ``y`` for regression.
    mean_ : ndarray of shape (n_features,)
        Training mean, subtracted before projecting.
    directions_from_ : {"M", "agop"}
        ``"M"``: the eigenvectors of the fitted RFM's ``M``. ``"agop"``: its
        chosen round made no AGOP update, and they are those of the AGOP of the
        fitted predictor.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    RFMClassifier : The RFM whose ``M`` is decomposed.
    sklearn.decomposition.PCA : The same transform for the covariance.

    Notes
    -----
    Sign: a component :math:`v` and :math:`-v` are eigenvectors alike. Of the
    target columns, the one whose correlation with the projections
    :math:`(x_i - \\bar x)^\\top v` is largest in magnitude decides: the sign
    makes that correlation positive (for a binary concept, projections grow
    with the concept). Where every correlation is 0 the entry of largest
    magnitude is positive.

    References
    ----------
    .. [1] D. Beaglehole, A. Radhakrishnan, E. Boix-Adserà and M. Belkin,
       "Toward universal steering and monitoring of AI models",
       arXiv:2502.03708, 2025.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc import AGOPDirections, RFMClassifier
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 10))
    >>> y = (X[:, 3] > 0).astype(int)
    >>> directions = AGOPDirections(
    ...     RFMClassifier(bandwidth="auto", max_iter=2, random_state=0)
    ... ).fit(X, y)
    >>> v = directions.components_[0]
    >>> int(np.argmax(np.abs(v))), bool(v[3] > 0)
    (3, True)
    >>> directions.transform(X).shape
    (200, 1)
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit"]), None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, *, n_components=1, random_state=None):
        self.estimator = estimator
        self.n_components = n_components
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    @atomic_fit
    def fit(self, X, y):
        """Fit the RFM and decompose its ``M``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            Class labels or regression targets.

        Returns
        -------
        self : AGOPDirections
            The fitted transformer.
        """
        X, y, space = array_api_input(X, y)
        X, y = validate_data(
            self, X, y, dtype=[np.float64, np.float32], multi_output=True
        )
        T, is_class = _target_columns(y)
        d = X.shape[1]
        if self.n_components > d:
            raise ValueError(
                f"n_components={self.n_components} must be at most n_features={d}."
            )
        if self.estimator is not None:
            estimator = clone(self.estimator)
        elif is_class:
            estimator = RFMClassifier(
                bandwidth="auto", refit="rounds", random_state=self.random_state
            )
        else:
            estimator = RFMRegressor(refit="rounds", random_state=self.random_state)
        estimator.fit(X, y)
        factor = getattr(estimator, "M_factor_", None)
        self.directions_from_ = "M"
        if getattr(estimator, "best_iter_", None) == 0:
            # The chosen round made no AGOP update: M is the identity, whose
            # eigenvectors are arbitrary axes. The AGOP of the fitted predictor
            # (the M a first update would take) holds its directions.
            M = estimator.agop()
            self.directions_from_ = "agop"
            factor = None
        elif factor is None:
            M = getattr(estimator, "M_", None)
            if M is None:
                raise TypeError(
                    "AGOPDirections needs an estimator with a feature matrix M_ "
                    f"(RFMClassifier or RFMRegressor); got {type(estimator).__name__}."
                )
        if factor is not None:
            evals, evecs = psd_top_eigh(
                factor=torch.as_tensor(factor), n_components=self.n_components
            )
            trace = float((np.asarray(factor, dtype=np.float64) ** 2).sum())
        else:
            M = torch.as_tensor(np.asarray(M, dtype=np.float64))
            evals, evecs = psd_top_eigh(M, n_components=self.n_components)
            trace = float(M.sum() if M.ndim == 1 else M.diagonal().sum())
        evals, V = evals.numpy(), evecs.numpy()
        self.mean_ = X.mean(axis=0, dtype=np.float64)
        C = _correlations((X - self.mean_) @ V, T)
        best = np.abs(C).argmax(axis=1)
        signs = np.sign(C[np.arange(len(C)), best])
        signs[signs == 0] = 1.0
        self.estimator_ = estimator
        self.components_ = (V * signs).T.astype(X.dtype)
        self.correlations_ = C * signs[:, None]
        self.eigenvalues_ = evals
        self.explained_ratio_ = evals / trace if trace > 0 else np.zeros_like(evals)
        self.mean_ = self.mean_.astype(X.dtype)
        self._space = space
        return self

    def transform(self, X):
        """Project ``X``, centred by the training mean, onto the components.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
            In ``X``'s float dtype; a tensor on ``X``'s device when ``X`` is a
            torch tensor and scikit-learn's ``array_api_dispatch`` is on.
        """
        check_is_fitted(self)
        X, _, space = array_api_input(
            X, fitted=getattr(self, "_space", None), method="transform"
        )
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        Z = (X - self.mean_.astype(X.dtype)) @ self.components_.T.astype(X.dtype)
        return array_api_output(Z, space)

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
