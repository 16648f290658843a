"""Collapse of the readout: NC3 (self-duality) and NC4 (nearest class centre).

Papyan, Han and Donoho (2020) state four properties of neural collapse; NC1 and
NC2 concern the features alone (:mod:`skdnc.metrics._collapse`), NC3 and NC4 the
linear classifier on top of them.
"""

import numpy as np
from sklearn.utils._param_validation import StrOptions, validate_params
from sklearn.utils.validation import check_array, check_consistent_length

from skdnc._backend import to_numpy
from skdnc._linalg import rescale
from skdnc.metrics._collapse import (
    _check_X_y,
    _label,
    _statistics,
    _undefined,
)

NC3_CONSTRAINTS = {"kind": [StrOptions({"fro", "cosine"})]}
NC4_CONSTRAINTS = {}


def _nc3_from_means(H, W, kind):
    """NC3 of centred class means ``H`` and readout weights ``W`` (both K x d).

    Each matrix is rescaled on its own (NC3 compares directions only), so that
    their norms neither overflow nor underflow.
    """
    H, W = rescale(H)[1], rescale(W)[1]
    if kind == "fro":
        nh, nw = np.linalg.norm(H), np.linalg.norm(W)
        if not (nh > 0 and nw > 0):
            return _undefined("NC3", "the class means or the readout weights are 0")
        return float(np.linalg.norm(W / nw - H / nh))
    nh, nw = np.linalg.norm(H, axis=1), np.linalg.norm(W, axis=1)
    if not np.all((nh > 0) & (nw > 0)):
        return _undefined(
            "NC3", "a centred class mean or a class's readout weight vector is 0"
        )
    cos = np.einsum("ij,ij->i", H, W) / (nh * nw)
    return float(np.mean(1.0 - cos))


@validate_params(
    {"X": ["array-like"], "y": ["array-like"], "W": ["array-like"], **NC3_CONSTRAINTS},
    prefer_skip_nested_validation=True,
)
def nc3_score(X, y, W, *, kind="fro"):
    """Self-duality (NC3): misalignment of a linear readout with the class means.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features entering the readout.
    y : array-like of shape (n_samples,)
        Class labels; at least 2 classes.
    W : array-like of shape (n_classes, n_features)
        Readout weights, one row per class in the order of the sorted labels (the
        ``coef_`` of a scikit-learn linear classifier; for two classes a single
        row ``w`` stands for ``(-w, w)``).
    kind : {"fro", "cosine"}, default="fro"
        ``"fro"`` (Papyan et al. 2020, the default):
        :math:`\\| W / \\|W\\|_F - \\dot M / \\|\\dot M\\|_F \\|_F`, with
        :math:`\\dot M` the ``K x d`` matrix of centred class means
        :math:`\\mu_c - \\mu_G`; between 0 and 2. ``"cosine"``: the mean over
        classes of :math:`1 - \\cos(w_c, \\mu_c - \\mu_G)`, blind to the relative
        norms of the rows; between 0 and 2.

    Returns
    -------
    nc3 : float
        0 when the readout is a positive multiple of the centred class means.
        NaN, with an :class:`~sklearn.exceptions.UndefinedMetricWarning`, when a
        matrix it normalises is zero.

    References
    ----------
    .. [1] V. Papyan, X. Y. Han and D. L. Donoho, "Prevalence of neural collapse
       during the terminal phase of deep learning training", PNAS 117(40), 2020.

    Examples
    --------
    >>> from skdnc.metrics import nc3_score
    >>> X = [[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]]
    >>> y = [0, 0, 1, 1]
    >>> nc3_score(X, y, [[2.0, -2.0], [-2.0, 2.0]])  # the centred means, scaled
    0.0
    >>> round(nc3_score(X, y, [[-1.0, 1.0], [1.0, -1.0]]), 6)  # the opposite
    2.0
    """
    X, y_index, classes = _check_X_y(X, y)
    W = check_array(to_numpy(W), dtype=np.float64, ensure_2d=True)
    K, d = len(classes), X.shape[1]
    if K == 2 and W.shape[0] == 1:
        W = np.vstack([-W, W])
    if W.shape != (K, d):
        raise ValueError(
            f"W must have shape (n_classes, n_features) = ({K}, {d}) (or (1, {d}) "
            f"for two classes); got {W.shape}."
        )
    stats = _statistics(X, y_index, classes, "class_means")
    return _nc3_from_means(stats._centered, W, kind)


@validate_params(
    {"X": ["array-like"], "y": ["array-like"], "y_pred": ["array-like"]},
    prefer_skip_nested_validation=True,
)
def nc4_score(X, y, y_pred):
    """Nearest class centre (NC4): disagreement of a classifier with the NCC rule.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (n_samples, n_features)
        Features entering the classifier.
    y : array-like of shape (n_samples,)
        Class labels, which define the class means :math:`\\mu_c`; at least 2
        classes.
    y_pred : array-like of shape (n_samples,)
        The classifier's predictions on ``X``.

    Returns
    -------
    nc4 : float
        The fraction of samples whose prediction differs from
        :math:`\\arg\\min_c \\|x - \\mu_c\\|` (Papyan et al. 2020): 0 when the
        classifier acts as the nearest class-mean rule.

    Examples
    --------
    >>> from skdnc.metrics import nc4_score
    >>> X, y = [[0.0], [1.0], [4.0], [5.0]], [0, 0, 1, 1]
    >>> nc4_score(X, y, [0, 0, 1, 1]), nc4_score(X, y, [0, 1, 1, 1])
    (0.0, 0.25)
    """
    X, y_index, classes = _check_X_y(X, y)
    y_pred = np.asarray(to_numpy(y_pred)).reshape(-1)
    check_consistent_length(X, y_pred)
    unknown = np.setdiff1d(y_pred, classes)
    if unknown.size:
        raise ValueError(
            f"y_pred holds labels that are not among the classes of y: "
            f"{[_label(v) for v in unknown[:5]]}."
        )
    stats = _statistics(X, y_index, classes, "class_means")
    nearest = classes[_nearest_mean(stats._X, stats._means)]
    return float(np.mean(nearest != y_pred))


def _nearest_mean(X, means):
    """Index of the nearest row of ``means`` for every row of ``X`` (float64), on
    both rescaled by one unit, so that the squared distances stay finite."""
    _, X, means = rescale(X, means)
    D2 = (
        np.einsum("ij,ij->i", X, X)[:, None]
        - 2 * X @ means.T
        + np.einsum("ij,ij->i", means, means)[None, :]
    )
    return np.argmin(D2, axis=1)


#: Relative ridge of the readout that NC3 and NC4 measure where a representation
#: has no classifier of its own (see :func:`_ridge_readout`).
READOUT_RIDGE = 1e-3


def _ridge_readout(X, y_index, n_classes, ridge=READOUT_RIDGE):
    """Ridge regression of one-hot labels on features, with an intercept.

    The readout of a representation that has no linear classifier of its own
    (a Deep RFM layer, a pipeline step): ``W`` minimises
    ``||X_c W' - Y_c||_F^2 + lam ||W||_F^2`` with ``X_c`` and ``Y_c`` the features
    and one-hot targets centred by their sample means, and ``b = mean(Y) - W
    mean(X)``. ``lam = ridge * tr(X_c' X_c) / min(N, d)`` scales with the
    features, so the readout is invariant to ``X -> c X``. Solved through the
    smaller of the ``d x d`` and ``N x N`` Gram matrices, in float64.

    On exactly collapsed, balanced features whose centred class means ``H`` form a
    simplex ETF, ``W`` is a positive multiple of ``H`` (so NC3 is 0) and the
    readout is the nearest-class-mean rule (NC4 is 0).

    Returns
    -------
    W : ndarray of shape (n_classes, n_features)
    b : ndarray of shape (n_classes,)
    """
    N, d = X.shape
    Y = np.zeros((N, n_classes))
    Y[np.arange(N), y_index] = 1.0
    x_mean, y_mean = X.mean(axis=0), Y.mean(axis=0)
    Xc, Yc = X - x_mean, Y - y_mean
    if d <= N:
        G = Xc.T @ Xc
        lam = ridge * np.trace(G) / min(N, d)
        G[np.diag_indices_from(G)] += lam if lam > 0 else 1.0
        W = np.linalg.solve(G, Xc.T @ Yc).T
    else:
        G = Xc @ Xc.T
        lam = ridge * np.trace(G) / min(N, d)
        G[np.diag_indices_from(G)] += lam if lam > 0 else 1.0
        W = (Xc.T @ np.linalg.solve(G, Yc)).T
    return W, y_mean - W @ x_mean


def _readout_scores(stats, W, b):
    """NC3 (Frobenius form) and NC4 of the affine readout ``x -> W x + b`` on the
    samples of ``stats``, ``stats._X`` (``X / stats.unit``, on which ``W`` and ``b``
    were fitted by :func:`_ridge_readout`); rows of ``W`` in class order."""
    X = stats._X
    nc3 = _nc3_from_means(stats._centered, W, "fro")
    predicted = np.argmax(X @ W.T + b, axis=1)
    nc4 = float(np.mean(predicted != _nearest_mean(X, stats._means)))
    return nc3, nc4
