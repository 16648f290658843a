"""Probing a network layer by layer: a classifier per layer's activations with
cross-validated accuracy and ROC AUC, and a detector stacked over layers, built
from scikit-learn's pieces (``cross_validate``, ``ColumnTransformer``,
``StackingClassifier``), as Beaglehole et al. (2025) detect concepts from an
LLM's hidden states."""

from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
from sklearn.base import clone, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import StackingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, check_cv, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.utils._param_validation import HasMethods, validate_params
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_consistent_length

from skdnc._backend import import_pandas
from skdnc._display import LayerProbeDisplay
from skdnc._rfm import RFMClassifier

__all__ = ["LayerProbe", "make_layer_stack", "probe_layers"]


def _widths(n_features):
    """``{layer: width}`` from a dict of widths or of ``(n, d)`` arrays, or a list
    of widths."""
    if isinstance(n_features, dict):
        items = list(n_features.items())
    else:
        items = list(enumerate(n_features))
    if not items:
        raise ValueError("At least one layer is needed.")
    out = {}
    for name, value in items:
        width = value if isinstance(value, Integral) else np.shape(value)[-1]
        if int(width) < 1:
            raise ValueError(f"Layer {name!r} has width {width}; it must be >= 1.")
        out[name] = int(width)
    return out


def _default_probe(random_state=None):
    """The probe of a layer when none is given: an RFM whose bandwidth follows
    the scale of the activations."""
    return RFMClassifier(bandwidth="auto", random_state=random_state)


@validate_params(
    {
        "n_features": [dict, list, tuple],
        "estimator": [HasMethods(["fit", "predict"]), None],
        "final_estimator": [HasMethods(["fit", "predict"]), None],
        "cv": ["cv_object"],
        "n_jobs": [Integral, None],
    },
    prefer_skip_nested_validation=True,
)
def make_layer_stack(
    n_features, *, estimator=None, final_estimator=None, cv=5, n_jobs=None
):
    """A detector stacked over layers: one probe per layer's columns, then a
    classifier on their out-of-fold predictions.

    The stack takes the layers' activations side by side,
    ``np.hstack([X_layer_1, X_layer_2, ...])`` in the order of ``n_features``;
    a :class:`~sklearn.compose.ColumnTransformer` gives each probe its layer's
    columns, and a :class:`~sklearn.ensemble.StackingClassifier` fits
    ``final_estimator`` on the probes' cross-validated predictions (as the
    layer aggregation of Beaglehole et al., 2025).

    Parameters
    ----------
    n_features : dict or list
        ``{layer: width}`` or ``{layer: (n, width) array}`` (e.g. the output of
        :func:`~skdnc.nn.collect_activations`), or a list of widths.
    estimator : classifier, default=None
        The probe of each layer (cloned); ``None``:
        ``RFMClassifier(bandwidth="auto")``.
    final_estimator : classifier, default=None
        ``None``: :class:`~sklearn.linear_model.LogisticRegression`.
    cv : int, cross-validation generator or iterable, default=5
        The folds of the probes' out-of-fold predictions.
    n_jobs : int, default=None
        Probes fitted in parallel.

    Returns
    -------
    stack : sklearn.ensemble.StackingClassifier
        Unfitted; its ``estimators`` are named ``"layer_<name>"``, each a
        ``Pipeline([("columns", ColumnTransformer), ("probe", estimator)])``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skdnc import make_layer_stack
    >>> rng = np.random.default_rng(0)
    >>> acts = {"a": rng.normal(size=(60, 3)), "b": rng.normal(size=(60, 4))}
    >>> y = (acts["b"][:, 0] > 0).astype(int)
    >>> stack = make_layer_stack(acts, estimator=LogisticRegression(), cv=3)
    >>> stack.fit(np.hstack(list(acts.values())), y).score(
    ...     np.hstack(list(acts.values())), y
    ... ) > 0.9
    True
    """
    widths = _widths(n_features)
    estimator = _default_probe() if estimator is None else estimator
    if not is_classifier(estimator):
        raise ValueError(
            f"estimator must be a classifier; got {type(estimator).__name__}."
        )
    stop = np.cumsum(list(widths.values()))
    members = []
    for (name, _), end, start in zip(
        widths.items(), stop, stop - list(widths.values())
    ):
        columns = ColumnTransformer(
            [("layer", "passthrough", np.arange(start, end))], remainder="drop"
        )
        probe = Pipeline([("columns", columns), ("probe", clone(estimator))])
        members.append((f"layer_{name}", probe))
    return StackingClassifier(
        members,
        final_estimator=LogisticRegression()
        if final_estimator is None
        else final_estimator,
        cv=cv,
        n_jobs=n_jobs,
    )


@dataclass
class LayerProbe:
    """Per-layer and stacked probe scores, from :func:`probe_layers`.

    Attributes
    ----------
    layer_names : list
        The probed layers, in order.
    scores : dict
        ``{metric: ndarray of shape (n_layers, n_splits)}``: each fold's test
        score of each layer's probe.
    stacked_scores : dict or None
        ``{metric: ndarray of shape (n_splits,)}`` of the stacked detector on
        the same folds.
    n_features : ndarray of shape (n_layers,)
        Width of each layer.
    probes : dict
        ``{layer: fitted probe}`` on all the data.
    stack : StackingClassifier or None
        The stacked detector fitted on all the data; it takes
        :meth:`stack_input` of activations.
    """

    layer_names: list
    scores: dict
    stacked_scores: dict
    n_features: np.ndarray
    probes: dict = field(default=None, repr=False)
    stack: object = field(default=None, repr=False)

    @property
    def best_layer(self):
        """The layer of highest mean score (the first metric's)."""
        first = next(iter(self.scores.values()))
        return self.layer_names[int(np.argmax(np.mean(first, axis=1)))]

    def stack_input(self, activations):
        """The stack's input: the probed layers' activations side by side.

        Parameters
        ----------
        activations : dict
            ``{layer: (n, d) array}`` holding every probed layer.

        Returns
        -------
        X : ndarray of shape (n, sum of widths)
        """
        missing = [name for name in self.layer_names if name not in activations]
        if missing:
            raise ValueError(f"activations lacks the probed layers {missing}.")
        return np.hstack([np.asarray(activations[k]) for k in self.layer_names])

    def to_dict(self):
        """JSON-ready dict of every score."""
        stacked = self.stacked_scores or {}
        return {
            "layer_names": [str(name) for name in self.layer_names],
            "n_features": self.n_features.tolist(),
            "scores": {k: np.asarray(v).tolist() for k, v in self.scores.items()},
            "stacked_scores": {k: np.asarray(v).tolist() for k, v in stacked.items()},
        }

    def to_frame(self):
        """The scores as a :class:`pandas.DataFrame`.

        Returns
        -------
        frame : pandas.DataFrame
            One row per layer, indexed by ``"layer"``, then a row ``"stacked"``
            when the stack was scored; columns ``<metric>_mean`` and
            ``<metric>_std`` over the folds, and ``n_features``.

        Raises
        ------
        ImportError
            When pandas is not installed (it is optional).
        """
        pd = import_pandas("LayerProbe.to_frame")
        rows = [str(name) for name in self.layer_names]
        columns = {}
        for metric, values in self.scores.items():
            values = np.asarray(values, dtype=float)
            mean, std = list(values.mean(axis=1)), list(values.std(axis=1))
            if self.stacked_scores:
                stacked = np.asarray(self.stacked_scores[metric], dtype=float)
                mean.append(stacked.mean())
                std.append(stacked.std())
            columns[f"{metric}_mean"], columns[f"{metric}_std"] = mean, std
        widths = list(self.n_features)
        if self.stacked_scores:
            rows.append("stacked")
            widths.append(int(self.n_features.sum()))
        columns["n_features"] = widths
        return pd.DataFrame(columns, index=pd.Index(rows, name="layer"))

    def plot(self, ax=None, *, title=None):
        """Draw the scores against layer (:class:`~skdnc.LayerProbeDisplay`)."""
        return LayerProbeDisplay.from_probe(self, ax=ax, title=title)


def _activations(activations):
    if not isinstance(activations, dict):
        activations = dict(enumerate(activations))
    if not activations:
        raise ValueError("activations must hold at least one layer.")
    out = {}
    for name, X in activations.items():
        out[name] = check_array(
            X, dtype=[np.float64, np.float32], input_name=f"activations[{name!r}]"
        )
    check_consistent_length(*out.values())
    return out


def _scoring(y, scoring):
    if isinstance(scoring, (list, tuple)):
        return {name: name for name in scoring}
    if scoring is not None:
        return scoring
    binary = len(np.unique(y)) == 2
    return {"accuracy": "accuracy", "roc_auc": "roc_auc" if binary else "roc_auc_ovr"}


@validate_params(
    {
        "activations": [dict, list, tuple],
        "y": ["array-like"],
        "estimator": [HasMethods(["fit", "predict"]), None],
        "cv": ["cv_object"],
        "scoring": [dict, list, tuple, None],
        "stack": ["boolean"],
        "final_estimator": [HasMethods(["fit", "predict"]), None],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def probe_layers(
    activations,
    y,
    *,
    estimator=None,
    cv=5,
    scoring=None,
    stack=True,
    final_estimator=None,
    n_jobs=None,
    random_state=None,
):
    """Cross-validated probes of every layer, and a detector stacked over layers.

    Each layer's activations get their own probe, scored by
    :func:`~sklearn.model_selection.cross_validate` on folds shared by every
    layer; the stack (:func:`make_layer_stack`) is scored on the same folds,
    its probes' out-of-fold predictions coming from an inner split of each
    training fold. Everything is then refitted on all the data.

    Parameters
    ----------
    activations : dict or list of array-like of shape (n_samples, d_layer)
        ``{layer: activations}``, e.g. from
        :func:`~skdnc.nn.collect_activations`; a list is keyed 0, 1, ...
    y : array-like of shape (n_samples,)
        Class labels (a binary concept, or several classes).
    estimator : classifier, default=None
        The probe (cloned for every layer and fold); ``None``:
        ``RFMClassifier(bandwidth="auto", random_state=random_state)``. Any
        scikit-learn classifier works, e.g. a
        ``make_pipeline(AGOPDirections(n_components=k), LogisticRegression())``.
    cv : int, cross-validation generator or iterable, default=5
        The folds; an int gives shuffled
        :class:`~sklearn.model_selection.StratifiedKFold` folds seeded by
        ``random_state``. The stack's inner split uses as many folds.
    scoring : dict or list, default=None
        ``{name: scorer}`` or scorer names; ``None``: ``accuracy`` and
        ``roc_auc`` (``roc_auc_ovr`` for more than two classes).
    stack : bool, default=True
        Score and fit the stacked detector too.
    final_estimator : classifier, default=None
        The stack's classifier; ``None``: logistic regression.
    n_jobs : int, default=None
        Folds run in parallel.
    random_state : int, RandomState instance or None, default=None
        Seeds the folds and the default probe.

    Returns
    -------
    probe : LayerProbe
        ``scores``, ``stacked_scores``, the refitted ``probes`` and ``stack``,
        ``to_frame()`` and ``plot()``.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skdnc import probe_layers
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, size=80)
    >>> acts = {
    ...     "noise": rng.normal(size=(80, 5)),
    ...     "signal": rng.normal(size=(80, 5)) + 2.0 * y[:, None],
    ... }
    >>> result = probe_layers(
    ...     acts, y, estimator=LogisticRegression(), cv=4, random_state=0
    ... )
    >>> result.best_layer
    'signal'
    >>> result.to_frame().shape
    (3, 5)
    """
    activations = _activations(activations)
    y = np.asarray(y)
    check_consistent_length(next(iter(activations.values())), y)
    check_classification_targets(y)
    if estimator is None:
        estimator = _default_probe(random_state)
    if not is_classifier(estimator):
        raise ValueError(
            f"estimator must be a classifier; got {type(estimator).__name__}."
        )
    if isinstance(cv, Integral):
        cv = StratifiedKFold(int(cv), shuffle=True, random_state=random_state)
    cv = check_cv(cv, y, classifier=True)
    first = next(iter(activations.values()))
    folds = list(cv.split(first, y))
    scoring = _scoring(y, scoring)
    names = list(activations)
    scores = {metric: np.empty((len(names), len(folds))) for metric in scoring}
    probes = {}
    for index, name in enumerate(names):
        result = cross_validate(
            clone(estimator),
            activations[name],
            y,
            cv=folds,
            scoring=scoring,
            n_jobs=n_jobs,
        )
        for metric in scoring:
            scores[metric][index] = result[f"test_{metric}"]
    widths = np.array([a.shape[1] for a in activations.values()])
    stacked_scores = fitted_stack = None
    if stack:
        X = np.hstack(list(activations.values()))
        detector = make_layer_stack(
            activations,
            estimator=estimator,
            final_estimator=final_estimator,
            cv=StratifiedKFold(len(folds), shuffle=True, random_state=random_state),
        )
        result = cross_validate(
            detector, X, y, cv=folds, scoring=scoring, n_jobs=n_jobs
        )
        stacked_scores = {metric: result[f"test_{metric}"] for metric in scoring}
        fitted_stack = clone(detector).fit(X, y)
        probes = {
            name: fitted_stack.named_estimators_[f"layer_{name}"]["probe"]
            for name in names
        }
    else:
        probes = {name: clone(estimator).fit(activations[name], y) for name in names}
    return LayerProbe(
        layer_names=names,
        scores=scores,
        stacked_scores=stacked_scores,
        n_features=widths,
        probes=probes,
        stack=fitted_stack,
    )
