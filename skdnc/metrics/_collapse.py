"""Neural-collapse metrics: NC1, NC2, CDNV and the Gram / label-kernel correlation.

Every function takes features ``X`` of shape ``(n_samples, n_features)`` and class
labels ``y``, and computes in float64 whatever the input dtype (NumPy arrays,
pandas frames, lists and torch tensors on any device are accepted). Labels may be
of any type (strings, non-contiguous integers); classes are ordered as by
:func:`numpy.unique`.

Notation (Beaglehole et al. 2024, Section 3): ``N`` samples, ``K`` classes, ``n_c``
samples in class ``c``, class means ``mu_c`` and a global mean ``mu_G``,

.. math::

    \\Sigma_W = \\frac{1}{N} \\sum_{i=1}^N (x_i - \\mu_{y_i})(x_i - \\mu_{y_i})^\\top,
    \\qquad
    \\Sigma_B = \\frac{1}{K} \\sum_{c=1}^K (\\mu_c - \\mu_G)(\\mu_c - \\mu_G)^\\top.

Nothing here forms a ``d x d`` matrix unless asked to (``ClassStatistics.Sigma_W``
and ``Sigma_B``): traces are sums of squared distances, and the pseudo-inverse form
of NC1 is computed in the span of the centred class means, so 4096-wide features
cost ``O(N d K)``. The moments are taken on ``X`` divided by a power of two (see
:class:`ClassStatistics`), so the metrics, which do not depend on the scale of
``X``, give the same value at any scale at which ``X`` is finite.
"""

import warnings
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.utils._param_validation import StrOptions, validate_params
from sklearn.utils.validation import check_X_y

from skdnc._backend import normalize_rows, to_numpy
from skdnc._base import check_class_labels
from skdnc._linalg import rescale

__all__ = [
    "ClassStatistics",
    "cdnv_score",
    "class_statistics",
    "gram_label_correlation",
    "nc1_score",
    "nc2_score",
    "neural_collapse_report",
]

# Relative eigenvalue cut-off of the pseudo-inverse of Sigma_B (in float64).
PINV_RTOL = 1e-10

GLOBAL_MEAN_CONSTRAINT = [StrOptions({"class_means", "sample"})]
NC1_CONSTRAINTS = {
    "kind": [StrOptions({"trace", "pinv"})],
    "global_mean": GLOBAL_MEAN_CONSTRAINT,
    "scaling": [StrOptions({"standard", "paper_code"})],
}
NC2_CONSTRAINTS = {
    "target": [StrOptions({"etf", "orthogonal"})],
    "kind": [StrOptions({"fro", "mse"})],
    "global_mean": GLOBAL_MEAN_CONSTRAINT,
}
GRAM_CONSTRAINTS = {"global_mean": GLOBAL_MEAN_CONSTRAINT}
CDNV_CONSTRAINTS = {}
_XY = {"X": ["array-like"], "y": ["array-like"]}

#: The three representations of a layer that skdnc measures, in forward order:
#: the layer's input, its linear projection (``M^p x`` in Deep RFM and RFM,
#: ``S V^T h`` of a network weight ``W = U S V^T``) and its output.
STAGES = ("input", "projection", "output")

#: Every metric name a public output of skdnc uses, as a key or in a key
#: ``f"{metric}_{stage}"``: NC1 (trace form, Papyan's pseudo-inverse form and the
#: reference code's ``/K`` scaling), NC2 (Frobenius and mean squared entry, to the
#: simplex ETF or to an orthogonal frame), NC3, NC4, CDNV and the Gram / label-kernel
#: correlation; and the vocabulary-scale metrics of
#: :class:`~skdnc.metrics.VocabularyAccumulator`: NC2 equinorm (CoV of the centred
#: mean norms) and interference (cosines of centred means over pairs), GNC2
#: (log-kernel hyperspherical uniformity), UNC3 (uniform duality) and NC5
#: (orthogonality to out-of-distribution features). One vocabulary: the
#: estimators, probes, commands and figures use these names and no others.
METRIC_NAMES = (
    "nc1",
    "nc1_pinv",
    "nc1_paper_code",
    "nc2",
    "nc2_mse",
    "nc2_orthogonal",
    "nc2_orthogonal_mse",
    "nc2_equinorm",
    "nc2_interference",
    "gnc2",
    "nc3",
    "unc3",
    "nc4",
    "nc5",
    "cdnv",
    "gram_label_correlation",
)


def _encode_labels(y):
    """Class index of every sample and the sorted classes, for 2 classes or more."""
    classes, y_index = check_class_labels(y, owner="A neural-collapse metric")
    return y_index, classes


def _check_X_y(X, y):
    """Validate features and labels; return float64 X, class indices and classes."""
    X = to_numpy(X)
    if np.ndim(X) > 2:
        raise ValueError(
            f"X must be 2-D (n_samples, n_features); got shape {np.shape(X)}. "
            "Reduce feature maps to vectors first, stating the rule: flatten "
            "(X.reshape(len(X), -1)) or global average pooling (X.mean(axis=(2, 3)) "
            "for (n, c, h, w)); skdnc.nn.layer_collapse does either with "
            "reduction='flatten' or 'avgpool'."
        )
    X, y = check_X_y(X, to_numpy(y), dtype=[np.float64, np.float32])
    y_index, classes = _encode_labels(y)
    return X.astype(np.float64, copy=False), y_index, classes


#: Squared distances at or below this fraction of the data's mean squared norm are
#: rounding noise of float64 means, not geometry.
ROUNDING_LEVEL = (64 * np.finfo(np.float64).eps) ** 2


def _undefined(metric, reason):
    """NaN, with an UndefinedMetricWarning naming the cause."""
    warnings.warn(
        f"{metric} is undefined: {reason}. Returning NaN.",
        UndefinedMetricWarning,
        stacklevel=3,
    )
    return float("nan")


def _label(value):
    """A class label as the user wrote it (a NumPy scalar as a Python one)."""
    return value.item() if isinstance(value, np.generic) else value


def _coinciding_means(stats):
    """Why the between-class scatter is zero up to rounding, or None."""
    if stats._trace_between <= ROUNDING_LEVEL * stats._scale:
        return (
            "the class means coincide (the between-class scatter is zero up to "
            "rounding, relative to the data's scale), so there is no class "
            "structure to measure collapse against"
        )
    return None


@dataclass(frozen=True, eq=False)
class ClassStatistics:
    """First and second moments of labelled features, as used by the NC metrics.

    Returned by :func:`class_statistics`; all arrays are float64. The covariance
    matrices ``Sigma_W`` and ``Sigma_B`` (``d x d``) are computed on first access
    only; the metrics use the cheap traces and projections instead.

    Attributes
    ----------
    classes : ndarray of shape (n_classes,)
        Sorted unique labels.
    counts : ndarray of shape (n_classes,)
        Number of samples ``n_c`` of each class.
    means : ndarray of shape (n_classes, n_features)
        Class means ``mu_c``.
    global_mean : ndarray of shape (n_features,)
        ``mu_G``, by the ``global_mean`` convention it was computed with.
    global_mean_kind : {"class_means", "sample"}
        That convention.
    class_variances : ndarray of shape (n_classes,)
        Mean squared distance of the samples of each class to their class mean,
        ``Var_c = (1/n_c) sum_{y_i = c} ||x_i - mu_c||^2`` (= ``tr`` of the class
        covariance).
    unit : float
        The power of two the features were divided by before any square was
        formed: the largest ``|x_ij| / unit`` is in ``[1, 2)``.

    Notes
    -----
    The moments are accumulated on ``X / unit``, so that no square overflows or
    underflows, and the metrics, which do not depend on the scale of ``X``, are
    computed from those: ``nc1_score(c * X, y)`` equals ``nc1_score(X, y)`` for any
    ``c > 0`` for which ``c * X`` is finite (exactly, when ``c`` is a power of
    two). The attributes are in the units of ``X``: ``means`` and ``global_mean``
    are always representable, while the second moments (``class_variances``, the
    traces, ``Sigma_W``, ``Sigma_B``) scale with ``unit**2`` and are ``inf`` (or
    0) where their value is beyond float64's range, e.g. for entries of ``X``
    beyond about ``1e154``.
    """

    classes: np.ndarray
    counts: np.ndarray
    global_mean_kind: str
    unit: float
    _means: np.ndarray = field(repr=False)  # of X / unit, as below
    _variances: np.ndarray = field(repr=False)
    _X: np.ndarray = field(repr=False)
    _groups: tuple = field(repr=False)

    @property
    def n_samples(self):
        """Number of samples ``N``."""
        return int(self.counts.sum())

    @property
    def n_classes(self):
        """Number of classes ``K``."""
        return int(self.classes.shape[0])

    @property
    def n_features(self):
        """Number of features ``d``."""
        return int(self._means.shape[1])

    def _in_units(self, value, power):
        """``value * unit**power``: a moment of ``X / unit`` in the units of ``X``
        (``inf`` or 0 beyond float64's range)."""
        with np.errstate(over="ignore", under="ignore"):
            for _ in range(power):
                value = np.multiply(value, self.unit)
        return value

    @cached_property
    def means(self):
        """Class means ``mu_c``, shape ``(n_classes, n_features)``."""
        return self._in_units(self._means, 1)

    @cached_property
    def global_mean(self):
        """``mu_G``, shape ``(n_features,)``."""
        return self._in_units(self._global_mean, 1)

    @cached_property
    def class_variances(self):
        """``Var_c``, shape ``(n_classes,)``."""
        return self._in_units(self._variances, 2)

    @property
    def trace_within(self):
        """``tr(Sigma_W)``: the mean squared distance of a sample to its class mean."""
        return float(self._in_units(self._trace_within, 2))

    @property
    def trace_between(self):
        """``tr(Sigma_B)``: the mean squared distance of a class mean to ``mu_G``."""
        return float(self._in_units(self._trace_between, 2))

    @property
    def scale(self):
        """Mean squared norm of the samples, the yardstick of rounding noise:
        ``(1/N) sum_c n_c (||mu_c||^2 + Var_c)``."""
        return float(self._in_units(self._scale, 2))

    @cached_property
    def centered_means(self):
        """``mu_c - mu_G``, shape ``(n_classes, n_features)``."""
        return self._in_units(self._centered, 1)

    @cached_property
    def Sigma_W(self):
        """Within-class covariance ``Sigma_W`` (``d x d``, formed on first access)."""
        self._check_samples("Sigma_W")
        S = np.zeros((self.n_features, self.n_features))
        for c, idx in enumerate(self._groups):
            R = self._X[idx] - self._means[c]
            S += R.T @ R
        return self._in_units(S / self.n_samples, 2)

    @cached_property
    def Sigma_B(self):
        """Between-class covariance ``Sigma_B`` (``d x d``, formed on first access)."""
        H = self._centered
        return self._in_units(H.T @ H / self.n_classes, 2)

    def within_projections(self, V):
        """``v_j' Sigma_W v_j`` for the rows ``v_j`` of ``V``, without ``Sigma_W``.

        Parameters
        ----------
        V : ndarray of shape (k, n_features)

        Returns
        -------
        q : ndarray of shape (k,)
        """
        return self._in_units(self._within_projections(V), 2)

    # -- the same moments of X / unit, from which the metrics are computed -----------
    @cached_property
    def _global_mean(self):
        if self.global_mean_kind == "class_means":
            return self._means.mean(axis=0)
        return self.counts @ self._means / self.counts.sum()

    @cached_property
    def _centered(self):
        return self._means - self._global_mean

    @property
    def _trace_within(self):
        return float(self.counts @ self._variances / self.n_samples)

    @property
    def _trace_between(self):
        return float(np.mean(np.sum(self._centered**2, axis=1)))

    @property
    def _scale(self):
        per_class = np.einsum("ij,ij->i", self._means, self._means)
        return float(self.counts @ (per_class + self._variances) / self.n_samples)

    def _check_samples(self, what):
        if self._X is None:
            raise ValueError(
                f"{what} needs the samples, which statistics accumulated from batches "
                "(skdnc.metrics.CollapseAccumulator) do not keep; use the "
                "accumulator's second pass (partial_fit_within) or class_statistics "
                "on the full array."
            )

    def _within_projections(self, V):
        self._check_samples("within_projections")
        q = np.zeros(V.shape[0])
        for c, idx in enumerate(self._groups):
            P = (self._X[idx] - self._means[c]) @ V.T
            q += np.sum(P**2, axis=0)
        return q / self.n_samples


def _statistics(X, y_index, classes, global_mean):
    """ClassStatistics of validated input (float64 X, class indices), accumulated
    on ``X / unit`` (see :func:`skdnc._linalg.rescale`)."""
    unit, X = rescale(X)
    K = classes.shape[0]
    order = np.argsort(y_index, kind="stable")
    counts = np.bincount(y_index, minlength=K)
    groups = tuple(np.split(order, np.cumsum(counts)[:-1]))
    means = np.empty((K, X.shape[1]))
    variances = np.empty(K)
    for c, idx in enumerate(groups):
        Xc = X[idx]
        means[c] = Xc.mean(axis=0)
        Xc -= means[c]
        variances[c] = np.sum(Xc**2) / counts[c]
    return ClassStatistics(
        classes=classes,
        counts=counts,
        global_mean_kind=global_mean,
        unit=unit,
        _means=means,
        _variances=variances,
        _X=X,
        _groups=groups,
    )


@validate_params(
    {**_XY, "global_mean": GLOBAL_MEAN_CONSTRAINT}, prefer_skip_nested_validation=True
)
def class_statistics(X, y, *, global_mean="class_means"):
    """Class counts, means, global mean and within/between-class covariances.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` used to centre the class means. ``"class_means"``: the unweighted
        mean of the class means, ``(1/K) sum_c mu_c``, as in the paper's code and
        in Papyan et al. (2020). ``"sample"``: the sample mean
        ``(1/N) sum_i x_i = sum_c (n_c/N) mu_c``, as in Zhu et al. (2021) and He &
        Su (2023). They agree on class-balanced data only.

    Returns
    -------
    stats : ClassStatistics
        ``classes``, ``counts``, ``means``, ``global_mean``, ``class_variances``;
        the traces ``trace_within``, ``trace_between``; the matrices ``Sigma_W``
        and ``Sigma_B``, formed when first accessed.

    Notes
    -----
    ``Sigma_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})'`` pools all samples, so
    with imbalanced classes large classes weigh more; ``Sigma_B = (1/K) sum_c (mu_c -
    mu_G)(mu_c - mu_G)'`` weighs every class equally (Beaglehole et al. 2024, eq. in
    Section 3).

    Examples
    --------
    >>> from skdnc.metrics import class_statistics
    >>> X = [[0.0, 0.0], [0.0, 2.0], [4.0, 1.0]]
    >>> stats = class_statistics(X, ["a", "a", "b"])
    >>> stats.classes.tolist(), stats.counts.tolist()
    (['a', 'b'], [2, 1])
    >>> stats.means.tolist(), stats.global_mean.tolist()
    ([[0.0, 1.0], [4.0, 1.0]], [2.0, 1.0])
    >>> stats.trace_within, stats.trace_between
    (0.666..., 4.0)
    """
    X, y_index, classes = _check_X_y(X, y)
    return _statistics(X, y_index, classes, global_mean)


def _nc1_trace(stats):
    reason = _coinciding_means(stats)
    if reason:
        return _undefined("NC1", reason)
    return float(stats._trace_within / stats._trace_between)


def _pinv_directions(stats, rtol=PINV_RTOL):
    """Eigenvectors (rows) and eigenvalues of ``Sigma_B`` kept by the pinv form of
    NC1; ``None`` when the class means coincide (see :func:`_coinciding_means`)."""
    if _coinciding_means(stats):
        return None
    K = stats.n_classes
    # Sigma_B = H' H / K with H the (K, d) centred means: its eigenpairs are the
    # squared singular values and right singular vectors of H / sqrt(K).
    _, s, Vt = np.linalg.svd(stats._centered / np.sqrt(K), full_matrices=False)
    lam = s**2
    keep = lam > rtol * lam[0]
    keep[K - 1 :] = False  # rank(Sigma_B) <= K - 1
    return Vt[keep], lam[keep]


def _nc1_pinv_value(stats, directions, q):
    """``tr(Sigma_W Sigma_B^+) / K`` from the within projections ``q``."""
    reason = _coinciding_means(stats)
    if reason:
        return _undefined("NC1", reason)
    return float(np.sum(q / directions[1]) / stats.n_classes)


def _nc1_pinv(stats, rtol=PINV_RTOL):
    directions = _pinv_directions(stats, rtol)
    q = None if directions is None else stats._within_projections(directions[0])
    return _nc1_pinv_value(stats, directions, q)


def _nc1_from_stats(stats, kind, scaling):
    value = _nc1_trace(stats) if kind == "trace" else _nc1_pinv(stats)
    return value / stats.n_classes if scaling == "paper_code" else value


@validate_params({**_XY, **NC1_CONSTRAINTS}, prefer_skip_nested_validation=True)
def nc1_score(X, y, *, kind="trace", global_mean="class_means", scaling="standard"):
    """Within-class variability collapse (NC1); 0 under exact collapse.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.
    kind : {"trace", "pinv"}, default="trace"
        ``"trace"``: ``tr(Sigma_W) / tr(Sigma_B)``, the paper's NC1 (Tirer et al.
        2023, Rangamani et al. 2023). ``"pinv"``: ``tr(Sigma_W Sigma_B^+) / K``
        (Papyan et al. 2020), with the pseudo-inverse restricted to the top
        ``K - 1`` eigenpairs of ``Sigma_B`` whose eigenvalues exceed
        ``1e-10 * lambda_max`` (in float64), so that it is never negative.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` in ``Sigma_B``: the unweighted mean of the class means (paper's
        code, Papyan et al.) or the sample mean. See :func:`class_statistics`.
    scaling : {"standard", "paper_code"}, default="standard"
        ``"paper_code"`` divides the result by ``K``: the paper's reference code
        divides ``Sigma_W`` by ``K * N`` instead of ``N``, so the values it prints
        (and plots) are the standard ones divided by the number of classes.

    Returns
    -------
    nc1 : float
        Non-negative. NaN, with an :class:`~sklearn.exceptions.UndefinedMetricWarning`,
        when the class means coincide: ``tr(Sigma_B)`` at most
        ``ROUNDING_LEVEL`` (``(64 eps)^2``, eps of float64) times the samples'
        mean squared norm, i.e. zero up to the rounding of the means.

    See Also
    --------
    nc2_score : Distance of the class means to a simplex ETF.
    NeuralCollapseScorer : The same measurement inside a pipeline.

    Notes
    -----
    Both forms are invariant to ``X -> c X Q + b`` (``c > 0``, ``Q`` orthogonal)
    but not to general invertible linear maps; computed on ``X`` divided by a
    power of two, they keep that invariance at any ``c`` for which ``c X`` is
    finite (``X * 1e-300`` and ``X * 1e300`` included). The trace form costs ``O(N d)``.
    The pinv form uses ``Sigma_B = H'H/K`` with ``H`` the ``K x d`` matrix of
    centred class means: from the SVD ``H / sqrt(K) = U S V'`` (``O(K^2 d)``),
    ``tr(Sigma_W Sigma_B^+) = sum_j (v_j' Sigma_W v_j) / s_j^2`` with
    ``v_j' Sigma_W v_j = (1/N) sum_i ((x_i - mu_{y_i})' v_j)^2`` (``O(N d K)``); no
    ``d x d`` matrix is formed. Restricting to ``K - 1`` directions, the rank of
    ``Sigma_B`` for either global-mean convention, keeps noise-level eigenvalues of
    near-collapsed float32 features from being inverted (the negative NC1 reported
    in tding1/Neural-Collapse#3).

    With imbalanced classes, ``Sigma_W`` weighs each sample equally (large classes
    dominate) while ``Sigma_B`` weighs each class equally; ``global_mean`` changes
    ``Sigma_B`` only.

    References
    ----------
    .. [1] D. Beaglehole, P. Súkeník, M. Mondelli and M. Belkin, "Average gradient
       outer product as a mechanism for deep neural collapse", arXiv:2402.13728,
       2024.
    .. [2] V. Papyan, X. Y. Han and D. L. Donoho, "Prevalence of neural collapse
       during the terminal phase of deep learning training", PNAS 117(40), 2020.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.metrics import nc1_score
    >>> X = np.array([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]])
    >>> y = [0, 0, 1, 1]
    >>> nc1_score(X, y)  # tr Sigma_W = 1, tr Sigma_B = 4
    0.25
    >>> nc1_score(X, y, scaling="paper_code")
    0.125
    >>> nc1_score(X, y, kind="pinv")  # within-class noise is orthogonal to the means
    0.0
    """
    X, y_index, classes = _check_X_y(X, y)
    return _nc1_from_stats(_statistics(X, y_index, classes, global_mean), kind, scaling)


def _nc2_from_stats(stats, target, kind):
    K = stats.n_classes
    if target == "etf":
        H = stats._centered
        T = (K / (K - 1)) * np.eye(K) - np.ones((K, K)) / (K - 1)
        where = "the global mean"
    else:
        H = stats._means
        T = np.eye(K)
        where = "the origin"
    zero = np.einsum("ij,ij->i", H, H) <= ROUNDING_LEVEL * stats._scale
    if zero.any():
        return _undefined(
            "NC2",
            f"the mean of class {_label(stats.classes[np.argmax(zero)])!r} "
            f"coincides with {where} (up to rounding), so its direction is not "
            "defined",
        )
    Hn = normalize_rows(H, inplace=False)
    D = Hn @ Hn.T - T
    if kind == "fro":
        return float(np.linalg.norm(D))
    return float(np.mean(D**2))


@validate_params({**_XY, **NC2_CONSTRAINTS}, prefer_skip_nested_validation=True)
def nc2_score(X, y, *, target="etf", kind="fro", global_mean="class_means"):
    """Distance of the normalised class means to a simplex ETF or orthogonal frame.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.
    target : {"etf", "orthogonal"}, default="etf"
        ``"etf"``: the Gram matrix ``G`` of the *centred* class means
        ``mu_c - mu_G``, each scaled to unit norm, against
        ``Sigma_ETF = K/(K-1) I - 1 1'/(K-1)`` (the paper's DNC2).
        ``"orthogonal"``: the Gram matrix of the *uncentred* class means ``mu_c``,
        each scaled to unit norm, against ``I_K``. Uncentred, because centring
        ``K`` orthogonal, equal-norm means turns them into a simplex ETF: the
        centred means are linearly dependent and their Gram is never ``I``.
    kind : {"fro", "mse"}, default="fro"
        ``"fro"``: ``||G - T||_F``, the paper's ``||mu mu' - Sigma_ETF||``
        (Figures 3 and 4). ``"mse"``: the mean of the squared entries,
        ``||G - T||_F^2 / K^2``, which is what the paper's reference code computes
        and plots.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` that centres the means for ``target="etf"`` (ignored for
        ``"orthogonal"``). See :func:`class_statistics`.

    Returns
    -------
    nc2 : float
        Non-negative; 0 when the normalised means form the target frame exactly.
        NaN, with an :class:`~sklearn.exceptions.UndefinedMetricWarning`, when a
        class mean equals ``mu_G`` (or 0 for ``"orthogonal"``) up to rounding:
        its direction, hence ``G``, is not defined.

    See Also
    --------
    nc1_score : Within-class variability collapse.

    Notes
    -----
    Only the directions of the means are compared (the paper's DNC2 asks for
    ``H'H`` proportional to ``Sigma_ETF``); equal norms are not measured. The
    result is invariant to ``X -> c X Q + b`` for ``target="etf"`` and to
    ``X -> c X Q`` for ``target="orthogonal"`` (``c > 0``, ``Q`` orthogonal). For
    imbalanced classes the ``"sample"`` global mean does not make the centred means
    sum to zero, so they can be at distance > 0 from the ETF even when the
    ``"class_means"`` convention gives 0.

    Examples
    --------
    >>> from skdnc.metrics import nc2_score
    >>> X = [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    >>> y = [0, 0, 1, 1]
    >>> nc2_score(X, y, target="orthogonal")
    0.0
    >>> round(nc2_score(X, y), 12)  # two centred means are antipodal: an ETF
    0.0
    """
    X, y_index, classes = _check_X_y(X, y)
    return _nc2_from_stats(_statistics(X, y_index, classes, global_mean), target, kind)


def _gram_label_correlation(stats):
    X, N = stats._X, stats.n_samples
    Z = normalize_rows(X - stats._global_mean)
    # Pearson correlation of the N^2 entries of A = Z Z' and B = Y Y' (one-hot),
    # from sums that need no N x N matrix.
    z_sum = Z.sum(axis=0)
    s_A = z_sum @ z_sum
    if Z.shape[1] <= N:
        C = Z.T @ Z
    else:
        C = Z @ Z.T
    s_AA = np.vdot(C, C)
    s_AB = sum(np.sum(Z[idx].sum(axis=0) ** 2) for idx in stats._groups)
    s_B = float(np.sum(stats.counts.astype(np.float64) ** 2))  # = sum of B**2
    n2 = float(N) ** 2
    var_A = s_AA - s_A**2 / n2
    var_B = s_B - s_B**2 / n2
    if not var_A > 0:
        return _undefined(
            "The Gram-label correlation",
            "all centred, normalised samples have the same Gram entries (every "
            "sample coincides with the global mean, or all point the same way)",
        )
    return float((s_AB - s_A * s_B / n2) / np.sqrt(var_A * var_B))


@validate_params({**_XY, **GRAM_CONSTRAINTS}, prefer_skip_nested_validation=True)
def gram_label_correlation(X, y, *, global_mean="class_means"):
    """Correlation of the normalised feature Gram matrix with the label kernel.

    The statistic behind Figure 1 of the paper: features are centred by the
    global mean, each sample is scaled to unit norm, and the Pearson correlation
    between the entries of their Gram matrix ``Xbar Xbar'`` and of ``Y Y'`` (``Y``
    one-hot, so 1 for pairs of the same class and 0 otherwise) is returned.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.
    global_mean : {"class_means", "sample"}, default="class_means"
        The centre: the mean of the class means (the paper's text) or the sample
        mean (the paper's figure code). Equal for balanced classes.

    Returns
    -------
    corr : float
        In ``[-1, 1]``; 1 for collapsed data whose class means form a simplex ETF
        (the Gram matrix is then ``K/(K-1) Y Y' - 1 1'/(K-1)``). NaN, with an
        :class:`~sklearn.exceptions.UndefinedMetricWarning`, when the Gram matrix
        is constant. Samples equal to the centre give zero rows.

    Notes
    -----
    Computed from ``sum A``, ``sum A^2`` and ``sum A * B`` (with
    ``sum A * B = sum_c ||sum_{y_i = c} xbar_i||^2``) in ``O(N d min(N, d))`` time
    and ``O(N d + min(N, d)^2)`` memory: the ``N x N`` matrix is formed only when
    ``N < d``.

    Examples
    --------
    >>> from skdnc.metrics import gram_label_correlation
    >>> X = [[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [-1.0, 0.0]]
    >>> gram_label_correlation(X, [0, 0, 1, 1])
    1.0
    """
    X, y_index, classes = _check_X_y(X, y)
    return _gram_label_correlation(_statistics(X, y_index, classes, global_mean))


def _cdnv(stats):
    K = stats.n_classes
    H = stats._centered
    sq = np.sum(H**2, axis=1)
    D2 = np.maximum(sq[:, None] + sq[None, :] - 2 * (H @ H.T), 0.0)
    i, j = np.triu_indices(K, k=1)
    var = stats._variances
    num, den = var[i] + var[j], 2 * D2[i, j]
    close = den <= 2 * ROUNDING_LEVEL * stats._scale
    if close.any():
        a, b = (_label(stats.classes[k[close][0]]) for k in (i, j))
        return _undefined(
            "CDNV", f"the means of classes {a!r} and {b!r} coincide (up to rounding)"
        )
    return float(np.mean(num / den))


@validate_params(_XY, prefer_skip_nested_validation=True)
def cdnv_score(X, y):
    """Class-distance normalised variance (CDNV), averaged over pairs of classes.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.

    Returns
    -------
    cdnv : float
        ``mean_{c < c'} (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2)`` with
        ``Var_c = (1/n_c) sum_{y_i = c} ||x_i - mu_c||^2`` (Galanti et al. 2022,
        squared distance in the denominator); 0 under exact collapse. NaN, with
        an :class:`~sklearn.exceptions.UndefinedMetricWarning`, when two class
        means coincide up to rounding.

    Examples
    --------
    >>> from skdnc.metrics import cdnv_score
    >>> cdnv_score([[0.0, 1.0], [0.0, -1.0], [4.0, 1.0], [4.0, -1.0]], [0, 0, 1, 1])
    0.0625
    """
    X, y_index, classes = _check_X_y(X, y)
    return _cdnv(_statistics(X, y_index, classes, "class_means"))


@validate_params(
    {**_XY, "global_mean": GLOBAL_MEAN_CONSTRAINT, "gram_correlation": ["boolean"]},
    prefer_skip_nested_validation=True,
)
def neural_collapse_report(X, y, *, global_mean="class_means", gram_correlation=True):
    """Every neural-collapse metric of one representation, as a JSON-ready dict.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features; computed on in float64.
    y : array-like or torch.Tensor of shape (n_samples,)
        Class labels of any type; at least 2 classes.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` convention for every metric. See :func:`class_statistics`.
    gram_correlation : bool, default=True
        Whether to include :func:`gram_label_correlation`, which costs
        ``O(N d min(N, d))``; the other metrics cost ``O(N d K)``.

    Returns
    -------
    report : dict
        Python scalars: ``n_samples``, ``n_features``, ``n_classes``,
        ``global_mean``, ``trace_within`` (``tr Sigma_W``), ``trace_between``
        (``tr Sigma_B``; both in the units of ``X`` squared, ``inf`` or 0 beyond
        float64's range), ``nc1`` (trace form), ``nc1_pinv`` (Papyan's form),
        ``nc1_paper_code`` (``nc1 / K``), ``nc2`` (ETF, Frobenius), ``nc2_mse``
        (ETF, mean squared entry, as in the paper's code), ``nc2_orthogonal``,
        ``nc2_orthogonal_mse``, ``cdnv`` and, if asked for,
        ``gram_label_correlation``.

    Examples
    --------
    >>> from skdnc.metrics import neural_collapse_report
    >>> X = [[1.0, 1.0], [1.0, -1.0], [5.0, 1.0], [5.0, -1.0]]
    >>> report = neural_collapse_report(X, [0, 0, 1, 1])
    >>> report["nc1"], report["nc1_paper_code"], report["nc2"]
    (0.25, 0.125, 0.0)
    """
    X, y_index, classes = _check_X_y(X, y)
    stats = _statistics(X, y_index, classes, global_mean)
    nc1 = _nc1_trace(stats)
    report = {
        "n_samples": stats.n_samples,
        "n_features": stats.n_features,
        "n_classes": stats.n_classes,
        "global_mean": global_mean,
        "trace_within": stats.trace_within,
        "trace_between": stats.trace_between,
        "nc1": nc1,
        "nc1_pinv": _nc1_pinv(stats),
        "nc1_paper_code": nc1 / stats.n_classes,
        "nc2": _nc2_from_stats(stats, "etf", "fro"),
        "nc2_mse": _nc2_from_stats(stats, "etf", "mse"),
        "nc2_orthogonal": _nc2_from_stats(stats, "orthogonal", "fro"),
        "nc2_orthogonal_mse": _nc2_from_stats(stats, "orthogonal", "mse"),
        "cdnv": _cdnv(stats),
    }
    if gram_correlation:
        report["gram_label_correlation"] = _gram_label_correlation(stats)
    return report
