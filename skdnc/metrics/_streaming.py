"""Neural-collapse statistics of features that arrive in batches.

:class:`CollapseAccumulator` keeps, per class, the count, the mean and the summed
squared distance to the mean (merged batch by batch with the pairwise update of
Chan, Golub and LeVeque, in float64), so that NC1 (trace form), NC2 and the class
variances need memory ``O(K d)`` whatever the number of samples. The
pseudo-inverse form of NC1 needs the within-class scatter in the span of the
centred class means, which is known only once every batch has been seen: a
second pass over the batches (:meth:`CollapseAccumulator.partial_fit_within`)
accumulates it, again in ``O(K d)`` memory.
"""

from numbers import Real

import numpy as np
import torch

from skdnc._backend import to_numpy
from skdnc._base import NonFiniteError, check_class_labels
from skdnc._linalg import power_of_two_unit
from skdnc.metrics._collapse import (
    ClassStatistics,
    _nc1_pinv_value,
    _nc1_trace,
    _nc2_from_stats,
    _pinv_directions,
)

__all__ = ["CollapseAccumulator"]

_GLOBAL_MEANS = ("class_means", "sample")

#: The kind of the labels of a batch, by NumPy dtype kind.
_LABEL_KINDS = {"b": "bool", "i": "number", "u": "number", "f": "number"}
_LABEL_KINDS.update({"U": "str", "S": "bytes"})


def _label_kind(labels):
    """``"bool"``, ``"number"``, ``"str"``, ``"bytes"`` (or a type name): what every
    label of a non-empty 1-D batch is; a batch that mixes kinds is an error."""
    if labels.dtype.kind != "O":
        return _LABEL_KINDS.get(labels.dtype.kind, labels.dtype.name)
    kinds = set()
    for value in labels.tolist():
        if isinstance(value, (bool, np.bool_)):
            kinds.add("bool")
        elif isinstance(value, Real):
            kinds.add("number")
        elif isinstance(value, str):
            kinds.add("str")
        elif isinstance(value, bytes):
            kinds.add("bytes")
        else:
            kinds.add(type(value).__name__)
    if len(kinds) > 1:
        raise ValueError(
            f"Mix of label input types ({' and '.join(sorted(kinds))}) in one batch "
            "of y: every class needs one label of one type."
        )
    return kinds.pop()


class CollapseAccumulator:
    """Class counts, means and within-class scatter accumulated batch by batch.

    Feed every batch of features to :meth:`partial_fit`; then :meth:`statistics`,
    :meth:`nc1` (``kind="trace"``) and :meth:`nc2` equal
    :func:`~skdnc.metrics.class_statistics`, :func:`~skdnc.metrics.nc1_score` and
    :func:`~skdnc.metrics.nc2_score` of the concatenated batches (up to rounding,
    float64). For ``nc1(kind="pinv")`` feed the same batches a second time to
    :meth:`partial_fit_within`.

    Parameters
    ----------
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G`` convention, as for :func:`~skdnc.metrics.class_statistics`.

    Attributes
    ----------
    n_samples_seen_ : int
        Samples fed to :meth:`partial_fit`.
    n_features_ : int
        Width of the features.

    Notes
    -----
    Per class ``c`` the accumulator holds ``n_c``, ``mu_c`` and
    ``M2_c = sum_{y_i = c} ||x_i - mu_c||^2``. A batch with ``m`` samples of class
    ``c``, batch mean ``b`` and scatter ``M2_b`` merges as ``mu_c += (b - mu_c) m /
    (n_c + m)``, ``M2_c += M2_b + ||b - mu_c||^2 n_c m / (n_c + m)``: no sum of
    squares is subtracted from another, so nearly collapsed features keep their
    small within-class variance to full precision. The second pass accumulates
    ``q_j = sum_i ((x_i - mu_{y_i})' v_j)^2`` for the at most ``K - 1``
    eigenvectors ``v_j`` of ``Sigma_B`` that :func:`~skdnc.metrics.nc1_score`
    inverts. Computations run in float64 on the device of the first batch, on the
    features divided by a power of two, the ``unit`` of the returned statistics,
    which grows with the largest entry seen (the state is rescaled exactly when it
    does), so that the metrics do not depend on the scale of the features.

    The labels of every batch must be of one type, that of the first batch
    (numbers, strings, booleans or bytes): ``3`` and ``"3"`` would otherwise be two
    classes. Integer and float labels are one type (``3 == 3.0``).

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.metrics import CollapseAccumulator, nc1_score
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(50, 4)), np.arange(50) % 3
    >>> acc = CollapseAccumulator()
    >>> for rows in (slice(0, 20), slice(20, 50)):
    ...     _ = acc.partial_fit(X[rows], y[rows])
    >>> bool(abs(acc.nc1() - nc1_score(X, y)) < 1e-12)
    True
    >>> for rows in (slice(0, 20), slice(20, 50)):
    ...     _ = acc.partial_fit_within(X[rows], y[rows])
    >>> bool(abs(acc.nc1(kind="pinv") - nc1_score(X, y, kind="pinv")) < 1e-12)
    True
    """

    def __init__(self, *, global_mean="class_means"):
        if global_mean not in _GLOBAL_MEANS:
            raise ValueError(
                f"global_mean must be one of {_GLOBAL_MEANS}; got {global_mean!r}."
            )
        self.global_mean = global_mean
        self._labels = {}  # label -> row of the per-class tensors, in arrival order
        self._label_kind = None
        self._unit = None  # the power of two the state is measured in
        self._counts = self._means = self._m2 = None
        self._directions = self._q = None
        self._q_seen = 0
        self.n_samples_seen_ = 0
        self.n_features_ = None

    # -- input ---------------------------------------------------------------------
    def _prepare(self, X, y):
        if isinstance(X, torch.Tensor):
            Z = X.detach()
        else:
            Z = torch.as_tensor(np.asarray(to_numpy(X)))
        if Z.ndim != 2:
            raise ValueError(
                f"X must be 2-D (n_samples, n_features); got shape {tuple(Z.shape)}. "
                "Flatten or pool feature maps first."
            )
        if Z.is_complex() or Z.dtype == torch.bool:
            raise TypeError(
                f"X must hold real numbers; got dtype {Z.dtype}. Pass the real "
                "features (e.g. X.real or X.abs() for complex values, X.float() "
                "for masks)."
            )
        # Integer features (uint8 images as torchvision loads them) are numbers:
        # they are accumulated in float64 like any other.
        device = Z.device if self._means is None else self._means.device
        Z = Z.to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(Z).all()):
            raise NonFiniteError(
                "Input X contains NaN or infinity: the features of this batch are "
                "not finite (a diverged network, or overflow in float32)."
            )
        labels = np.asarray(to_numpy(y))
        if labels.ndim != 1 or labels.shape[0] != Z.shape[0]:
            raise ValueError(
                f"y must be 1-D with one label per row of X; got shape "
                f"{labels.shape} for X of shape {tuple(Z.shape)}."
            )
        if self.n_features_ is not None and Z.shape[1] != self.n_features_:
            raise ValueError(
                f"X has {Z.shape[1]} features, but the earlier batches had "
                f"{self.n_features_}."
            )
        return Z, labels

    def _rows(self, labels, *, grow):
        kind = _label_kind(labels)
        if self._label_kind is None:
            self._label_kind = kind
        elif kind != self._label_kind:
            raise ValueError(
                f"y holds labels of type {kind}, but the earlier batches held labels "
                f"of type {self._label_kind}: a class must have one label for the "
                "life of the accumulator (3 and '3' would be two classes). Convert "
                "the labels of every batch alike, or start a new accumulator."
            )
        uniques, inverse = np.unique(labels, return_inverse=True)
        rows = []
        for label in uniques.tolist():
            if label not in self._labels:
                if not grow:
                    raise ValueError(
                        f"Label {label!r} was not seen by partial_fit; the second "
                        "pass must see the batches of the first."
                    )
                self._labels[label] = len(self._labels)
            rows.append(self._labels[label])
        return np.asarray(rows, dtype=np.int64)[inverse.reshape(-1)]

    # -- first pass ----------------------------------------------------------------
    def partial_fit(self, X, y):
        """Add a batch of features ``X`` (n, d) with labels ``y`` (n,).

        Returns
        -------
        self : CollapseAccumulator
        """
        if self._directions is not None:
            raise ValueError(
                "partial_fit after partial_fit_within: the second pass has begun, "
                "the class means are fixed. Start a new accumulator."
            )
        Z, labels = self._prepare(X, y)
        if Z.shape[0] == 0:
            return self
        rows = self._rows(labels, grow=True)
        Z = self._rescale(Z)
        K, d, device = len(self._labels), Z.shape[1], Z.device
        if self._means is None:
            self.n_features_ = d
            self._counts = torch.zeros(0, dtype=torch.float64, device=device)
            self._means = torch.zeros(0, d, dtype=torch.float64, device=device)
            self._m2 = torch.zeros(0, dtype=torch.float64, device=device)
        if K > self._counts.shape[0]:
            extra = K - self._counts.shape[0]
            self._counts = torch.cat([self._counts, self._counts.new_zeros(extra)])
            self._means = torch.cat([self._means, self._means.new_zeros(extra, d)])
            self._m2 = torch.cat([self._m2, self._m2.new_zeros(extra)])
        idx = torch.as_tensor(rows, device=device)
        m = torch.bincount(idx, minlength=K).to(torch.float64)
        sums = Z.new_zeros(K, d).index_add_(0, idx, Z)
        present = m > 0
        batch_means = sums / m.clamp(min=1)[:, None]
        dev = Z - batch_means[idx]
        m2_batch = torch.zeros(K, dtype=torch.float64, device=device).index_add_(
            0, idx, (dev * dev).sum(dim=1)
        )
        n_old = self._counts
        total = n_old + m
        delta = batch_means - self._means
        weight = torch.where(present, m / total.clamp(min=1), torch.zeros_like(m))
        self._means = self._means + delta * weight[:, None]
        self._m2 = self._m2 + m2_batch + (delta * delta).sum(dim=1) * n_old * weight
        self._counts = total
        self.n_samples_seen_ += int(Z.shape[0])
        return self

    def _rescale(self, Z):
        """The batch in the accumulator's unit. In the first pass the unit grows to
        the batch's power of two when that is larger (the state then shrinks
        exactly with it); the second pass keeps the first pass's unit."""
        if self._directions is None and bool((Z != 0).any()):
            unit = power_of_two_unit(Z)
            if self._unit is None:
                self._unit = unit
            elif unit > self._unit:
                ratio = unit / self._unit
                self._means = self._means / ratio
                self._m2 = self._m2 / ratio / ratio
                self._unit = unit
        return Z if self._unit in (None, 1.0) else Z / self._unit

    def statistics(self):
        """:class:`~skdnc.metrics.ClassStatistics` of the batches seen so far.

        Its ``Sigma_W`` and ``within_projections`` need the samples and raise; the
        metrics here use the traces and the second pass instead.

        Returns
        -------
        stats : ClassStatistics
        """
        if self._means is None:
            raise ValueError("No samples yet: call partial_fit first.")
        labels = list(self._labels)
        check_class_labels(np.asarray(labels), owner="A neural-collapse metric")
        order = np.argsort(np.asarray(labels), kind="stable")
        perm = [self._labels[labels[i]] for i in order]
        counts = to_numpy(self._counts[perm]).astype(np.int64)
        return ClassStatistics(
            classes=np.asarray(labels)[order],
            counts=counts,
            global_mean_kind=self.global_mean,
            unit=1.0 if self._unit is None else self._unit,
            _means=to_numpy(self._means[perm]),
            _variances=to_numpy(self._m2[perm]) / counts,
            _X=None,
            _groups=None,
        )

    # -- second pass ---------------------------------------------------------------
    def partial_fit_within(self, X, y):
        """Second pass: add a batch to the within-class scatter in the span of the
        centred class means (for ``nc1(kind="pinv")``).

        Returns
        -------
        self : CollapseAccumulator
        """
        if self._directions is None:
            stats = self.statistics()
            directions = _pinv_directions(stats)
            self._pinv_stats = stats
            if directions is None:
                self._directions = (None, None)
            else:
                V = torch.as_tensor(directions[0], device=self._means.device)
                self._directions = (V, directions)
                self._q = torch.zeros(V.shape[0], dtype=torch.float64, device=V.device)
        Z, labels = self._prepare(X, y)
        self._q_seen += int(Z.shape[0])
        V = self._directions[0]
        if V is None or Z.shape[0] == 0:
            return self
        idx = torch.as_tensor(self._rows(labels, grow=False), device=Z.device)
        P = (self._rescale(Z) - self._means[idx]) @ V.T
        self._q += (P * P).sum(dim=0)
        return self

    # -- metrics -------------------------------------------------------------------
    def nc1(self, kind="trace", scaling="standard"):
        """NC1 of the batches, as :func:`~skdnc.metrics.nc1_score`.

        Parameters
        ----------
        kind : {"trace", "pinv"}, default="trace"
            ``"pinv"`` needs the second pass over the same batches.
        scaling : {"standard", "paper_code"}, default="standard"

        Returns
        -------
        nc1 : float
        """
        if kind == "trace":
            stats = self.statistics()
            value = _nc1_trace(stats)
        elif kind == "pinv":
            if self._directions is None or self._q_seen != self.n_samples_seen_:
                raise ValueError(
                    "nc1(kind='pinv') needs a second pass: feed the same batches to "
                    f"partial_fit_within ({self._q_seen} of {self.n_samples_seen_} "
                    "samples seen so far)."
                )
            stats = self._pinv_stats
            directions = self._directions[1]
            q = None if directions is None else to_numpy(self._q) / self._q_seen
            value = _nc1_pinv_value(stats, directions, q)
        else:
            raise ValueError(f"kind must be 'trace' or 'pinv'; got {kind!r}.")
        if scaling not in ("standard", "paper_code"):
            raise ValueError(
                f"scaling must be 'standard' or 'paper_code'; got {scaling!r}."
            )
        return value / stats.n_classes if scaling == "paper_code" else value

    def nc2(self, target="etf", kind="fro"):
        """NC2 of the batches, as :func:`~skdnc.metrics.nc2_score`.

        Returns
        -------
        nc2 : float
        """
        if target not in ("etf", "orthogonal") or kind not in ("fro", "mse"):
            raise ValueError(
                "target must be 'etf' or 'orthogonal' and kind 'fro' or 'mse'; got "
                f"{target!r} and {kind!r}."
            )
        return _nc2_from_stats(self.statistics(), target, kind)
