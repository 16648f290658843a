"""Neural collapse in pipelines: a pass-through measuring step and CV scorers."""

import numpy as np
from sklearn.base import (
    BaseEstimator,
    OneToOneFeatureMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import (
    HasMethods,
    StrOptions,
    validate_parameter_constraints,
    validate_params,
)
from sklearn.utils.validation import validate_data

from skdnc._base import PassthroughMixin, atomic_fit
from skdnc.metrics._collapse import (
    CDNV_CONSTRAINTS,
    GLOBAL_MEAN_CONSTRAINT,
    GRAM_CONSTRAINTS,
    NC1_CONSTRAINTS,
    NC2_CONSTRAINTS,
    _cdnv,
    _encode_labels,
    _gram_label_correlation,
    _nc1_from_stats,
    _nc2_from_stats,
    _statistics,
    cdnv_score,
    gram_label_correlation,
    nc1_score,
    nc2_score,
)
from skdnc.metrics._readout import (
    NC3_CONSTRAINTS,
    NC4_CONSTRAINTS,
    READOUT_RIDGE,
    _readout_scores,
    _ridge_readout,
    nc3_score,
    nc4_score,
)

__all__ = [
    "NeuralCollapseScorer",
    "gram_label_correlation_scorer",
    "make_collapse_scorer",
    "neg_cdnv_scorer",
    "neg_nc1_pinv_scorer",
    "neg_nc1_scorer",
    "neg_nc2_scorer",
    "neg_nc3_scorer",
    "neg_nc4_scorer",
]


class NeuralCollapseScorer(
    PassthroughMixin, OneToOneFeatureMixin, TransformerMixin, BaseEstimator
):
    """Pass-through transformer that measures neural collapse of what flows through.

    ``fit(X, y)`` measures NC1, NC2, CDNV, the Gram / label-kernel correlation
    and NC3 and NC4 of a linear readout fitted to ``X`` and stores them as fitted
    attributes; ``transform(X)`` returns ``X``
    unchanged. Placed between pipeline steps, it records the collapse of the
    training representation at that point, e.g.
    ``make_pipeline(DeepRFMTransformer(), NeuralCollapseScorer(), RFMClassifier())``.
    To measure the collapse of *held-out* data, use :func:`make_collapse_scorer`.

    Parameters
    ----------
    kind : {"trace", "pinv"}, default="trace"
        Form of ``nc1_``: ``tr(Sigma_W) / tr(Sigma_B)`` (the paper's) or
        ``tr(Sigma_W Sigma_B^+) / K`` (Papyan et al.). See :func:`nc1_score`.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` convention for every metric: the unweighted mean of the class
        means (paper's code) or the sample mean. Equal for balanced classes.
    scaling : {"standard", "paper_code"}, default="standard"
        ``"paper_code"`` divides ``nc1_``, ``nc1_trace_`` and ``nc1_pinv_`` by
        ``K``, as the paper's reference code does.
    nc2_target : {"etf", "orthogonal"}, default="etf"
        Frame that ``nc2_`` compares the normalised class means with. See
        :func:`nc2_score`.
    nc2_kind : {"fro", "mse"}, default="fro"
        Frobenius distance (paper) or mean squared entry (paper's code).
    gram_correlation : bool, default=True
        Whether to compute ``gram_label_correlation_``, which costs
        ``O(N d min(N, d))`` time; the other metrics cost ``O(N d K)``. When
        False the attribute is ``nan``.
    readout : "ridge", classifier or None, default="ridge"
        The linear classifier whose NC3 and NC4 are measured, fitted to ``(X, y)``
        in :meth:`fit` (a pass-through step does not see the pipeline's final
        estimator). ``"ridge"``: ridge regression of the one-hot labels with an
        intercept and relative ridge ``1e-3`` (``lam = 1e-3 tr(X_c' X_c) /
        min(N, d)`` with ``X_c`` the centred features), costing
        ``O(N d min(N, d))``; a classifier with ``coef_`` (e.g.
        :class:`~sklearn.linear_model.LogisticRegression`) is cloned and fitted;
        ``None`` skips both (``nan``).

    Attributes
    ----------
    nc1_ : float
        NC1 of the training data in the form chosen by ``kind`` and ``scaling``.
    nc1_trace_ : float
        Trace form ``tr(Sigma_W) / tr(Sigma_B)`` (with ``scaling``).
    nc1_pinv_ : float
        Pseudo-inverse form ``tr(Sigma_W Sigma_B^+) / K`` (with ``scaling``).
    nc2_ : float
        NC2 in the form chosen by ``nc2_target`` and ``nc2_kind``.
    cdnv_ : float
        Class-distance normalised variance, see :func:`cdnv_score`.
    gram_label_correlation_ : float
        See :func:`gram_label_correlation`.
    nc3_ : float
        NC3 of the readout, Frobenius form (:func:`nc3_score`).
    nc4_ : float
        NC4 of the readout's predictions on ``X`` (:func:`nc4_score`).
    readout_ : estimator or None
        The fitted classifier when ``readout`` is one.
    classes_ : ndarray of shape (n_classes,)
        Class labels seen in ``fit``.
    class_counts_ : ndarray of shape (n_classes,)
        Number of training samples of each class.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``; defined only when ``X`` has
        feature names that are all strings.

    See Also
    --------
    nc1_score, nc2_score, gram_label_correlation : The metrics themselves.
    make_collapse_scorer : Held-out collapse as a ``scoring=`` callable.

    Notes
    -----
    The measurements are computed in float64 whatever the input dtype; the output
    of ``transform`` keeps the input's float dtype (float32 or float64).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from skdnc.metrics import NeuralCollapseScorer
    >>> X, y = load_iris(return_X_y=True)
    >>> pipe = make_pipeline(StandardScaler(), NeuralCollapseScorer(),
    ...                      LogisticRegression()).fit(X, y)
    >>> probe = pipe.named_steps["neuralcollapsescorer"]
    >>> round(probe.nc1_, 3), round(probe.nc2_, 3)
    (0.384, 1.639)
    """

    _parameter_constraints = {
        "kind": NC1_CONSTRAINTS["kind"],
        "global_mean": GLOBAL_MEAN_CONSTRAINT,
        "scaling": NC1_CONSTRAINTS["scaling"],
        "nc2_target": NC2_CONSTRAINTS["target"],
        "nc2_kind": NC2_CONSTRAINTS["kind"],
        "gram_correlation": ["boolean"],
        "readout": [StrOptions({"ridge"}), HasMethods(["fit", "predict"]), None],
    }

    def __init__(
        self,
        *,
        kind="trace",
        global_mean="class_means",
        scaling="standard",
        nc2_target="etf",
        nc2_kind="fro",
        gram_correlation=True,
        readout="ridge",
    ):
        self.kind = kind
        self.global_mean = global_mean
        self.scaling = scaling
        self.nc2_target = nc2_target
        self.nc2_kind = nc2_kind
        self.gram_correlation = gram_correlation
        self.readout = readout

    @_fit_context(prefer_skip_nested_validation=True)
    @atomic_fit
    def fit(self, X, y=None):
        """Measure neural collapse of ``X`` with labels ``y``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Representation to measure.
        y : array-like of shape (n_samples,)
            Class labels; at least 2 classes. Required: ``None`` raises a
            ``ValueError`` (inside a Pipeline, ``fit`` passes it on).

        Returns
        -------
        self : NeuralCollapseScorer
            Fitted probe.
        """
        X, y = validate_data(self, X, y, dtype=[np.float64, np.float32])
        y_index, classes = _encode_labels(y)
        stats = _statistics(
            X.astype(np.float64, copy=False), y_index, classes, self.global_mean
        )
        self.classes_ = classes
        self.class_counts_ = stats.counts
        self.nc1_trace_ = _nc1_from_stats(stats, "trace", self.scaling)
        self.nc1_pinv_ = _nc1_from_stats(stats, "pinv", self.scaling)
        self.nc1_ = self.nc1_pinv_ if self.kind == "pinv" else self.nc1_trace_
        self.nc2_ = _nc2_from_stats(stats, self.nc2_target, self.nc2_kind)
        self.cdnv_ = _cdnv(stats)
        self.gram_label_correlation_ = (
            _gram_label_correlation(stats) if self.gram_correlation else float("nan")
        )
        self.readout_ = None
        self.nc3_ = self.nc4_ = float("nan")
        if self.readout == "ridge":
            W, b = _ridge_readout(stats._X, y_index, len(classes), READOUT_RIDGE)
            self.nc3_, self.nc4_ = _readout_scores(stats, W, b)
        elif self.readout is not None:
            self.readout_ = clone(self.readout).fit(X, y)
            self.nc3_ = nc3_score(X, y, _readout_weights(self.readout_))
            self.nc4_ = nc4_score(X, y, self.readout_.predict(X))
        return self


#: metric -> (function, keyword constraints, sign, what it needs of the model):
#: "features" only, the final step's "coef" (a linear readout) or its "predict".
_METRICS = {
    "nc1": (nc1_score, NC1_CONSTRAINTS, -1.0, "features"),
    "nc2": (nc2_score, NC2_CONSTRAINTS, -1.0, "features"),
    "nc3": (nc3_score, NC3_CONSTRAINTS, -1.0, "coef"),
    "nc4": (nc4_score, NC4_CONSTRAINTS, -1.0, "predict"),
    "cdnv": (cdnv_score, CDNV_CONSTRAINTS, -1.0, "features"),
    "gram_label_correlation": (
        gram_label_correlation,
        GRAM_CONSTRAINTS,
        1.0,
        "features",
    ),
}


def _representation(estimator, X):
    """The representation of ``X`` whose collapse a scorer measures."""
    if hasattr(estimator, "transform"):
        return estimator.transform(X)
    if isinstance(estimator, Pipeline):
        return X if len(estimator) == 1 else estimator[:-1].transform(X)
    raise TypeError(
        "A collapse scorer needs a fitted transformer or a Pipeline; got "
        f"{type(estimator).__name__}, which has no transform method."
    )


def _readout_weights(estimator):
    """``coef_`` of a Pipeline's final step, the linear readout NC3 compares."""
    final = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    coef = getattr(final, "coef_", None)
    if coef is None:
        raise TypeError(
            "NC3 needs a linear readout with coef_ (a Pipeline's final step, or "
            "NeuralCollapseScorer's readout), e.g. LogisticRegression or "
            f"RidgeClassifier; got {type(final).__name__}."
        )
    return coef


class _CollapseScorer:
    """Callable ``(estimator, X, y) -> float``, greater is better."""

    def __init__(self, metric, kwargs):
        self.metric = metric
        self.kwargs = kwargs

    def __call__(self, estimator, X, y):
        func, _, sign, needs = _METRICS[self.metric]
        features = _representation(estimator, X)
        if needs == "coef":
            return sign * func(features, y, _readout_weights(estimator), **self.kwargs)
        if needs == "predict":
            return sign * func(features, y, estimator.predict(X), **self.kwargs)
        return sign * func(features, y, **self.kwargs)

    def __repr__(self):
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"make_collapse_scorer({self.metric!r}{args})"


@validate_params(
    {"metric": [StrOptions(set(_METRICS))]}, prefer_skip_nested_validation=True
)
def make_collapse_scorer(metric="nc1", **metric_kwargs):
    """Scorer of the held-out neural collapse of a fitted model's representation.

    The result is a callable ``scorer(estimator, X, y) -> float`` for
    ``scoring=`` in :func:`~sklearn.model_selection.cross_val_score`,
    :class:`~sklearn.model_selection.GridSearchCV` and friends. It maps ``X``
    (e.g. a held-out fold) to a representation with the fitted ``estimator`` and
    measures the collapse of that representation with the labels ``y``:

    - if ``estimator`` has ``transform`` (a transformer, or a Pipeline ending in
      one), the representation is ``estimator.transform(X)``;
    - otherwise, if it is a :class:`~sklearn.pipeline.Pipeline` (typically ending
      in a classifier), it is ``estimator[:-1].transform(X)``: the input of the
      final step (``X`` itself for a one-step pipeline);
    - anything else raises a ``TypeError``.

    NC3 also needs the final step's linear readout ``coef_`` (the representation
    is then the input of that step), and NC4 the model's ``predict(X)``.

    Greater is better: NC1 to NC4 and CDNV are returned negated (scikit-learn's
    ``neg_`` convention); the Gram / label-kernel correlation is returned as is.

    Parameters
    ----------
    metric : {"nc1", "nc2", "nc3", "nc4", "cdnv", "gram_label_correlation"}, \
            default="nc1"
        Metric: :func:`nc1_score`, :func:`nc2_score`, :func:`nc3_score`,
        :func:`nc4_score`, :func:`cdnv_score` or :func:`gram_label_correlation`.
    **metric_kwargs : dict
        Keyword arguments of that metric, e.g. ``kind="pinv"`` for NC1 or
        ``target="orthogonal"`` for NC2; validated here.

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, greater is better.

    See Also
    --------
    NeuralCollapseScorer : Collapse of the training representation, in a pipeline.

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.decomposition import PCA
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.model_selection import cross_val_score
    >>> from sklearn.pipeline import make_pipeline
    >>> from skdnc.metrics import make_collapse_scorer
    >>> X, y = load_iris(return_X_y=True)
    >>> pipe = make_pipeline(PCA(n_components=2), LogisticRegression())
    >>> scorer = make_collapse_scorer("nc1", kind="pinv")
    >>> scorer
    make_collapse_scorer('nc1', kind='pinv')
    >>> scores = cross_val_score(pipe, X, y, cv=3, scoring=scorer)
    >>> bool((scores < 0).all())
    True
    """
    _, constraints, _, _ = _METRICS[metric]
    unknown = sorted(set(metric_kwargs) - set(constraints))
    if unknown:
        raise TypeError(
            f"make_collapse_scorer({metric!r}) got unexpected keyword arguments "
            f"{unknown}; {metric!r} accepts {sorted(constraints)}."
        )
    validate_parameter_constraints(
        {k: constraints[k] for k in metric_kwargs},
        metric_kwargs,
        caller_name=f"make_collapse_scorer({metric!r})",
    )
    return _CollapseScorer(metric, dict(metric_kwargs))


#: ``-nc1_score`` (trace form) of the representation; greater is better.
neg_nc1_scorer = make_collapse_scorer("nc1")
#: ``-nc1_score(kind="pinv")`` of the representation; greater is better.
neg_nc1_pinv_scorer = make_collapse_scorer("nc1", kind="pinv")
#: ``-nc2_score`` (ETF, Frobenius) of the representation; greater is better.
neg_nc2_scorer = make_collapse_scorer("nc2")
#: ``-nc3_score`` of a Pipeline's linear readout; greater is better.
neg_nc3_scorer = make_collapse_scorer("nc3")
#: ``-nc4_score`` of a Pipeline's predictions; greater is better.
neg_nc4_scorer = make_collapse_scorer("nc4")
#: ``-cdnv_score`` of the representation; greater is better.
neg_cdnv_scorer = make_collapse_scorer("cdnv")
#: ``gram_label_correlation`` of the representation; greater is better.
gram_label_correlation_scorer = make_collapse_scorer("gram_label_correlation")
