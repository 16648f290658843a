"""Neural collapse at vocabulary scale: classes are token ids (``K`` = 50,000 and
more), samples are the hidden states of token positions, streamed in batches.

:class:`VocabularyAccumulator` keeps per class a count, a float64 mean and the
summed squared distance to the mean (``O(K d)`` memory, never ``K x d x d``
unless asked for), checkpoints and resumes with :meth:`~VocabularyAccumulator.
state_dict` / :meth:`~VocabularyAccumulator.load_state_dict`, and computes every
pairwise metric (CDNV, GNC2, NC2 interference and ETF distance) in one sweep over
blocks of classes, never forming a ``K x K`` matrix. :func:`token_samples` turns
``(batch, tokens, dim)`` hidden states with per-token or next-token labels and an
attention mask into the ``(n_samples, dim)`` rows the accumulator takes.

Conventions follow ``rhubarbwu/neural-collapse`` (Wu & Papyan's reference
library, HEAD ``c05a0b8``) and its study ``rhubarbwu/linguistic-collapse``
(arXiv:2405.17767); each method states its formula and source.
"""

import hashlib
from numbers import Integral

import numpy as np
import torch

from skdnc._backend import to_numpy
from skdnc._base import NonFiniteError
from skdnc.metrics._collapse import (
    ROUNDING_LEVEL,
    ClassStatistics,
    _nc1_pinv_value,
    _nc1_trace,
    _pinv_directions,
    _undefined,
)
from skdnc.metrics._readout import _nc3_from_means

__all__ = ["VocabularyAccumulator", "token_samples"]

#: Version of the dict :meth:`VocabularyAccumulator.state_dict` returns.
STATE_FORMAT = 1

_STATISTICS = ("mean", "var", "std")


def _as_tensor(v, device=None):
    if isinstance(v, torch.Tensor):
        t = v.detach()
    else:
        t = torch.as_tensor(np.asarray(to_numpy(v)))
    return t if device is None else t.to(device)


def _check_labels_dtype(t, name):
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise TypeError(
            f"{name} must hold integer token ids (class indices); got dtype {t.dtype}."
        )
    return t.to(torch.int64)


def token_samples(X, y=None, *, input_ids=None, attention_mask=None):
    """Rows ``(n_samples, dim)`` and labels of token-level collapse.

    Parameters
    ----------
    X : array-like or torch.Tensor of shape (batch, tokens, dim) or (n, dim)
        Hidden states (any float dtype).
    y : array-like of int of shape (batch, tokens) or (n,), default=None
        The class of every position (per-token labels).
    input_ids : array-like of int of shape (batch, tokens), default=None
        Instead of ``y``: next-token labels. The sample at position ``t`` is
        labelled with ``input_ids[:, t + 1]``; the last position has no label and
        is dropped (``X[:, :-1]`` against ``input_ids[:, 1:]``, as
        linguistic-collapse's ``process_batch``).
    attention_mask : array-like of shape (batch, tokens) or (n,), default=None
        Nonzero for real tokens. A position is kept when it is real; with
        ``input_ids``, when it *and* the next position are real (for right
        padding this is ``attention_mask[:, 1:]``, the study's rule; it also
        drops the left padding of left-padded batches).

    Returns
    -------
    Z : torch.Tensor of shape (n_kept, dim)
        The kept rows, in the input's dtype and device.
    labels : torch.Tensor of int64 of shape (n_kept,)

    Examples
    --------
    >>> import torch
    >>> from skdnc.metrics import token_samples
    >>> H = torch.arange(12.0).reshape(1, 4, 3)
    >>> ids = torch.tensor([[5, 6, 7, 0]])
    >>> Z, labels = token_samples(H, input_ids=ids, attention_mask=[[1, 1, 1, 0]])
    >>> labels.tolist(), Z[:, 0].tolist()
    ([6, 7], [0.0, 3.0])
    """
    Z = _as_tensor(X)
    if Z.ndim not in (2, 3):
        raise ValueError(
            "X must be (batch, tokens, dim) hidden states or (n_samples, dim) rows; "
            f"got shape {tuple(Z.shape)}."
        )
    if (y is None) == (input_ids is None):
        raise ValueError(
            "Pass exactly one of y (the label of every position) and input_ids "
            "(next-token labels)."
        )
    lead = tuple(Z.shape[:-1])
    if input_ids is not None:
        if Z.ndim != 3:
            raise ValueError(
                "input_ids (next-token labels) need X of shape (batch, tokens, dim); "
                f"got shape {tuple(Z.shape)}."
            )
        ids = _check_labels_dtype(_as_tensor(input_ids, Z.device), "input_ids")
        if tuple(ids.shape) != lead:
            raise ValueError(
                f"input_ids must have shape (batch, tokens) = {lead}; got "
                f"{tuple(ids.shape)}."
            )
    else:
        labels = _check_labels_dtype(_as_tensor(y, Z.device), "y")
        if tuple(labels.shape) != lead:
            raise ValueError(
                f"y must have one label per position, shape {lead}; got "
                f"{tuple(labels.shape)}."
            )
    keep = None
    if attention_mask is not None:
        mask = _as_tensor(attention_mask, Z.device)
        if tuple(mask.shape) != lead:
            raise ValueError(
                f"attention_mask must have shape {lead} (one entry per position of "
                f"X, of shape {tuple(Z.shape)}); got {tuple(mask.shape)}."
            )
        keep = mask != 0
    if input_ids is not None:
        Z, labels = Z[:, :-1], ids[:, 1:]
        if keep is not None:
            keep = keep[:, :-1] & keep[:, 1:]
    Z = Z.reshape(-1, Z.shape[-1])
    labels = labels.reshape(-1)
    if keep is not None:
        keep = keep.reshape(-1)
        Z, labels = Z[keep], labels[keep]
    return Z, labels


def _chan_merge(acc, values):
    """Merge a tensor of values into ``acc = [count, mean, M2]`` (the pairwise
    update of Chan, Golub and LeVeque), in float64."""
    n = values.numel()
    var, mean = torch.var_mean(values, correction=0)
    mean, m2 = float(mean), float(var) * n
    count, old_mean, old_m2 = acc
    total = count + n
    delta = mean - old_mean
    acc[0] = total
    acc[1] = old_mean + delta * (n / total)
    acc[2] = old_m2 + m2 + delta * delta * (count * n / total)


def _summary(acc, statistic):
    count, mean, m2 = acc
    if statistic == "mean":
        return float(mean)
    var = float(m2) / count
    return var if statistic == "var" else float(np.sqrt(var))


def _check_statistic(statistic):
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic must be one of {_STATISTICS}; got {statistic!r}.")


class VocabularyAccumulator:
    """Collapse statistics of ``K`` classes (a vocabulary), streamed in batches.

    First pass, :meth:`partial_fit`: per class the count ``n_c``, the mean
    ``mu_c`` and ``M2_c = sum_{y_i = c} ||x_i - mu_c||^2`` in float64 (memory
    ``O(K d)``). That is enough for NC1 (trace form), CDNV, NC2 (every form),
    GNC2, NC3, UNC3 and NC5. Optional second pass over the same batches,
    :meth:`partial_fit_within`, against the then fixed means: the pooled
    within-class covariance ``Sigma_W`` (``d x d``, for NC1's pseudo-inverse
    form) and, when asked for and it fits, the ``K x d x d`` class covariances.
    Optional decision pass, :meth:`partial_fit_decisions`: NC4.

    Parameters
    ----------
    n_classes : int
        ``K``, the number of classes (the vocabulary size); labels are integers in
        ``[0, K)``. At least 2.
    min_count : int, default=1
        Classes with fewer samples are left out of every metric (rare tokens;
        linguistic-collapse's ``--min_per_class``); classes never seen are always
        left out. At least 2 classes must remain.
    ignore_index : int, default=None
        Rows with this label are skipped (e.g. ``-100``, the label that
        Hugging Face models ignore).
    covariance : {None, "pooled", "per_class"}, default="pooled"
        What the second pass keeps: ``"pooled"`` the ``d x d`` ``Sigma_W``;
        ``"per_class"`` also the ``K x d x d`` class covariances (refused when
        ``K d^2`` float64 entries exceed ``max_covariance_bytes``); ``None``
        nothing (the second pass then only checks the means).
    max_covariance_bytes : int, default=2**30
        Memory bound of the per-class covariances.
    tile_size : int, default=1024
        Classes per block of the pairwise sweep: memory ``O(tile_size^2)``.
    global_mean : {"class_means", "sample"}, default="class_means"
        ``mu_G``: the unweighted mean of the kept class means (the library's
        ``MeanAccumulator.compute`` default) or the sample mean.

    Attributes
    ----------
    n_samples_seen_ : int
        Rows fed to :meth:`partial_fit` (after masking and ``ignore_index``).
    n_features_ : int
        ``d``.

    Notes
    -----
    A batch with ``m`` samples of class ``c``, batch mean ``b`` and scatter
    ``M2_b`` merges as ``mu_c += (b - mu_c) m / (n_c + m)``, ``M2_c += M2_b +
    ||b - mu_c||^2 n_c m / (n_c + m)`` (Chan, Golub and LeVeque), for the classes
    present in the batch only: one pass, no sum of squares subtracted from another,
    float64 throughout. Rows are checked to be finite (a ``NonFiniteError``
    otherwise). The pairwise metrics come from one sweep over blocks of
    ``tile_size`` classes of the centred means, cached until the next batch:
    ``O(K^2 d)`` time, ``O(K d + tile_size^2)`` memory.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.metrics import VocabularyAccumulator
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(300, 8)), rng.integers(0, 20, size=300)
    >>> acc = VocabularyAccumulator(20, min_count=5)
    >>> for rows in (slice(0, 100), slice(100, 300)):
    ...     _ = acc.partial_fit(X[rows], y[rows])
    >>> state = acc.state_dict()  # checkpoint
    >>> resumed = VocabularyAccumulator(20, min_count=5).load_state_dict(state)
    >>> resumed.cdnv() == acc.cdnv()
    True
    """

    def __init__(
        self,
        n_classes,
        *,
        min_count=1,
        ignore_index=None,
        covariance="pooled",
        max_covariance_bytes=2**30,
        tile_size=1024,
        global_mean="class_means",
    ):
        if not isinstance(n_classes, Integral) or isinstance(n_classes, bool):
            raise TypeError(f"n_classes must be an int; got {n_classes!r}.")
        if n_classes < 2:
            raise ValueError(
                f"n_classes must be at least 2 (collapse compares classes); got "
                f"{n_classes}."
            )
        for name, value, low in (
            ("min_count", min_count, 1),
            ("tile_size", tile_size, 1),
            ("max_covariance_bytes", max_covariance_bytes, 0),
        ):
            if (
                not isinstance(value, Integral)
                or isinstance(value, bool)
                or value < low
            ):
                raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")
        if covariance not in (None, "pooled", "per_class"):
            raise ValueError(
                f"covariance must be None, 'pooled' or 'per_class'; got {covariance!r}."
            )
        if global_mean not in ("class_means", "sample"):
            raise ValueError(
                f"global_mean must be 'class_means' or 'sample'; got {global_mean!r}."
            )
        if ignore_index is not None and not isinstance(ignore_index, Integral):
            raise TypeError(
                f"ignore_index must be an int or None; got {ignore_index!r}."
            )
        self.n_classes = int(n_classes)
        self.min_count = int(min_count)
        self.ignore_index = ignore_index
        self.covariance = covariance
        self.max_covariance_bytes = int(max_covariance_bytes)
        self.tile_size = int(tile_size)
        self.global_mean = global_mean
        self.n_samples_seen_ = 0
        self.n_features_ = None
        self._counts = self._means = self._m2 = None
        self._within = None  # second pass: dict, once begun
        self._decisions = None  # [hits, n]
        self._cache = {}

    # -- input ---------------------------------------------------------------------
    def _prepare(self, X, y, input_ids, attention_mask):
        Z, labels = token_samples(
            X, y, input_ids=input_ids, attention_mask=attention_mask
        )
        if Z.is_complex() or Z.dtype == torch.bool:
            raise TypeError(f"X must hold real numbers; got dtype {Z.dtype}.")
        device = Z.device if self._means is None else self._means.device
        Z = Z.to(device=device, dtype=torch.float64)
        labels = labels.to(device)
        if self.ignore_index is not None:
            keep = labels != self.ignore_index
            Z, labels = Z[keep], labels[keep]
        if not bool(torch.isfinite(Z).all()):
            raise NonFiniteError(
                "Input X contains NaN or infinity: the features of this batch are "
                "not finite (a diverged network, or overflow in float16/float32)."
            )
        bad = (labels < 0) | (labels >= self.n_classes)
        if bool(bad.any()):
            raise ValueError(
                f"Labels must be class indices in [0, n_classes) = [0, "
                f"{self.n_classes}); got {int(labels[bad][0])}. Pass ignore_index "
                "for a label to skip (e.g. -100)."
            )
        if self.n_features_ is not None and Z.shape[1] != self.n_features_:
            raise ValueError(
                f"X has {Z.shape[1]} features, but the earlier batches had "
                f"{self.n_features_}."
            )
        return Z, labels

    def _init_state(self, d, device):
        self.n_features_ = int(d)
        K = self.n_classes
        self._counts = torch.zeros(K, dtype=torch.float64, device=device)
        self._means = torch.zeros(K, d, dtype=torch.float64, device=device)
        self._m2 = torch.zeros(K, dtype=torch.float64, device=device)

    # -- first pass ----------------------------------------------------------------
    def partial_fit(self, X, y=None, *, input_ids=None, attention_mask=None):
        """First pass: add a batch.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n, d) or (batch, tokens, d)
        y : array-like of int, default=None
            Labels of every row or position; or pass ``input_ids``.
        input_ids : array-like of int of shape (batch, tokens), default=None
            Next-token labels, see :func:`token_samples`.
        attention_mask : array-like of shape (batch, tokens) or (n,), default=None
            Nonzero for the positions to keep.

        Returns
        -------
        self : VocabularyAccumulator
        """
        if self._within is not None:
            raise ValueError(
                "partial_fit after partial_fit_within: the second pass has begun, so "
                "the class means are fixed. Start a new accumulator for new data."
            )
        Z, labels = self._prepare(X, y, input_ids, attention_mask)
        if Z.shape[0] == 0:
            return self
        if self._means is None:
            self._init_state(Z.shape[1], Z.device)
        present, inverse = torch.unique(labels, return_inverse=True)
        P = present.shape[0]
        m = torch.bincount(inverse, minlength=P).to(torch.float64)
        sums = Z.new_zeros(P, Z.shape[1]).index_add_(0, inverse, Z)
        batch_means = sums / m[:, None]
        dev = Z - batch_means[inverse]
        m2_batch = Z.new_zeros(P).index_add_(0, inverse, (dev * dev).sum(dim=1))
        n_old = self._counts[present]
        total = n_old + m
        delta = batch_means - self._means[present]
        weight = m / total
        self._means[present] += delta * weight[:, None]
        self._m2[present] += m2_batch + (delta * delta).sum(dim=1) * n_old * weight
        self._counts[present] = total
        self.n_samples_seen_ += int(Z.shape[0])
        self._cache = {}
        return self

    # -- the kept classes and their statistics -----------------------------------
    def _check_fitted(self):
        if self._means is None:
            raise ValueError("No samples yet: call partial_fit first.")

    @property
    def kept_classes_(self):
        """Indices of the classes the metrics use: ``n_c >= min_count``."""
        self._check_fitted()
        return to_numpy(torch.nonzero(self._counts >= self.min_count).reshape(-1))

    @property
    def counts_(self):
        """``n_c`` of every class, shape ``(n_classes,)``."""
        self._check_fitted()
        return to_numpy(self._counts).astype(np.int64)

    @property
    def means_(self):
        """Class means ``mu_c``, float64, shape ``(n_classes, d)`` (0 where unseen)."""
        self._check_fitted()
        return to_numpy(self._means)

    @property
    def class_variances_(self):
        """``Var_c = M2_c / n_c``, shape ``(n_classes,)`` (NaN where unseen)."""
        self._check_fitted()
        with np.errstate(invalid="ignore", divide="ignore"):
            return to_numpy(self._m2) / to_numpy(self._counts)

    def _kept(self):
        """Kept indices (tensor), counts, means, variances and centred means."""
        if "kept" in self._cache:
            return self._cache["kept"]
        self._check_fitted()
        idx = torch.nonzero(self._counts >= self.min_count).reshape(-1)
        if idx.numel() < 2:
            seen = int((self._counts > 0).sum())
            raise ValueError(
                f"Only {idx.numel()} class(es) have at least min_count="
                f"{self.min_count} samples ({seen} seen): collapse needs 2 or more. "
                "Lower min_count or feed more data."
            )
        counts, means = self._counts[idx], self._means[idx]
        var = self._m2[idx] / counts
        if self.global_mean == "class_means":
            mu_g = means.mean(dim=0)
        else:
            mu_g = counts @ means / counts.sum()
        kept = (idx, counts, means, var, mu_g)
        self._cache["kept"] = kept
        return kept

    def statistics(self):
        """:class:`~skdnc.metrics.ClassStatistics` of the kept classes.

        Its classes are the kept class indices; ``Sigma_W`` and
        ``within_projections`` need the samples and raise.

        Returns
        -------
        stats : ClassStatistics
        """
        idx, counts, means, var, _ = self._kept()
        return ClassStatistics(
            classes=to_numpy(idx),
            counts=to_numpy(counts).astype(np.int64),
            global_mean_kind=self.global_mean,
            unit=1.0,
            _means=to_numpy(means),
            _variances=to_numpy(var),
            _X=None,
            _groups=None,
        )

    def _scale(self):
        _, counts, means, var, _ = self._kept()
        return float(counts @ ((means * means).sum(dim=1) + var) / counts.sum())

    # -- the pairwise sweep ----------------------------------------------------------
    def _pairs(self):
        """One sweep over the pairs ``i < j`` of kept classes, in blocks: count,
        mean and M2 of every pairwise quantity (merged block by block), the
        smallest squared distance and the largest cosine of centred means."""
        if "pairs" in self._cache:
            return self._cache["pairs"]
        _, _, means, var, mu_g = self._kept()
        H = means - mu_g
        K = H.shape[0]
        sq = (H * H).sum(dim=1)
        norms = sq.sqrt()
        zero_norm = bool((sq <= ROUNDING_LEVEL * self._scale()).any())
        inv = 1.0 / norms.clamp(min=torch.finfo(torch.float64).tiny)
        # CDNV needs sums only; the cosines and the log kernel merge their mean
        # and scatter block by block (Chan et al.), and the ETF distance follows
        # from those of the cosines.
        cdnv = [0.0, 0.0]
        acc = {k: [0, 0.0, 0.0] for k in ("log", "cos")}
        min_d2 = float("inf")
        max_cos = -1.0
        T = self.tile_size
        for a in range(0, K, T):
            b = min(K, a + T)
            for c in range(a, K, T):
                e = min(K, c + T)
                G = H[a:b] @ H[c:e].T
                D2 = torch.add(sq[a:b, None], sq[None, c:e]).add_(G, alpha=-2.0)
                cos = G.mul_(inv[a:b, None]).mul_(inv[None, c:e])
                v = torch.add(var[a:b, None], var[None, c:e])
                if a == c:
                    upper = torch.ones_like(D2, dtype=torch.bool).triu_(1)
                    D2, cos, v = D2[upper], cos[upper], v[upper]
                if D2.numel() == 0:
                    continue
                D2.clamp_(min=0.0)
                cos.clamp_(-1.0, 1.0)
                min_d2 = min(min_d2, float(D2.min()))
                max_cos = max(max_cos, float(cos.max()))
                ratio = v.div_(D2)
                cdnv[0] += float(ratio.sum())
                cdnv[1] += float(ratio.div_(D2).sum())
                _chan_merge(acc["cos"], cos)
                # log(||u_i - u_j||^-1) = -log(2 - 2 cos) / 2, as log(1 - cos)
                # here; the constant and the factor are applied to the summary
                _chan_merge(acc["log"], torch.rsub(cos, 1.0).log_())
        n, mean, m2 = acc["log"]
        acc["log"] = [n, -0.5 * (mean + np.log(2.0)), 0.25 * m2]
        n, mean, m2 = acc["cos"]
        # sum over pairs of (cos + 1/(K-1))^2 = M2 + n (mean + 1/(K-1))^2
        etf_sq = m2 + n * (mean + 1.0 / (K - 1)) ** 2
        out = dict(acc)
        out.update(
            cdnv1=cdnv[0] / 2 / n,
            cdnv2=cdnv[1] / 2 / n,
            etf_sq=etf_sq,
            min_d2=min_d2,
            max_cos=max_cos,
            zero_norm=zero_norm,
            K=K,
        )
        self._cache["pairs"] = out
        return out

    def _directions_undefined(self, metric, pairs):
        if pairs["zero_norm"]:
            return _undefined(
                metric,
                "a kept class mean coincides with the global mean (up to rounding), "
                "so its direction is not defined",
            )
        return None

    # -- metrics ---------------------------------------------------------------------
    def cdnv(self, dist_exp=1):
        """Class-distance normalised variance, averaged over pairs of kept classes.

        .. math::

            \\mathrm{CDNV} = \\frac{2}{K(K-1)} \\sum_{i<j}
            \\frac{(\\mathrm{Var}_i + \\mathrm{Var}_j) / 2}
            {\\left(\\|\\mu_i - \\mu_j\\|^2\\right)^{e}},
            \\qquad \\mathrm{Var}_c = \\frac{1}{n_c}\\sum_{y_k = c}\\|x_k - \\mu_c\\|^2.

        Parameters
        ----------
        dist_exp : {1, 2}, default=1
            ``e``. ``1``: the squared distance of Galanti et al. (2022), the
            default of ``neural_collapse.measure.variability_cdnv`` (and
            :func:`~skdnc.metrics.cdnv_score`). ``2``: the quartic denominator
            ``||mu_i - mu_j||^4`` of linguistic-collapse's ``analyze.py`` (l. 187,
            ``variability_cdnv(V, M, 2, ...)``; discussed in
            rhubarbwu/linguistic-collapse#3). Not scale-invariant for ``e = 2``.

        Returns
        -------
        cdnv : float
            NaN with an ``UndefinedMetricWarning`` when two kept class means
            coincide up to rounding.
        """
        if dist_exp not in (1, 2):
            raise ValueError(f"dist_exp must be 1 or 2; got {dist_exp!r}.")
        pairs = self._pairs()
        if pairs["min_d2"] <= 2 * ROUNDING_LEVEL * self._scale():
            return _undefined("CDNV", "two kept class means coincide (up to rounding)")
        return pairs[f"cdnv{dist_exp}"]

    def gnc2(self, statistic="var"):
        """Hyperspherical uniformity of the class means (GNC2), log kernel.

        The centred means ``mu_c - mu_G`` are scaled to unit norm
        (``hat mu_c``) and ``k_ij = log(||hat mu_i - hat mu_j||^{-1})`` is taken
        over the pairs ``i < j`` (``neural_collapse.kernels.log_kernel`` of
        ``kernel_grid``, after Liu et al. 2023, arXiv:2303.06484); Wu & Papyan
        (2024) report its variance, which decreases as the means spread
        uniformly over the sphere.

        Parameters
        ----------
        statistic : {"var", "mean", "std"}, default="var"
            Over pairs, population form (``kernel_stats`` / ``symm_reduce``:
            divided by the number of pairs).

        Returns
        -------
        gnc2 : float
            NaN (with a warning) when a centred mean is 0, or two coincide in
            direction (the kernel is infinite).

        Notes
        -----
        ``||hat mu_i - hat mu_j||^2 = 2 - 2 cos_ij`` is computed from the cosine;
        the library divides by ``||x|| + eps`` instead of ``||x||`` (a relative
        difference of ``1e-16``).
        """
        _check_statistic(statistic)
        pairs = self._pairs()
        bad = self._directions_undefined("GNC2", pairs)
        if bad is not None:
            return bad
        if pairs["max_cos"] >= 1.0:
            return _undefined("GNC2", "two centred class means point the same way")
        return _summary(pairs["log"], statistic)

    def nc2_interference(self, statistic="var"):
        """Interference of the class means: cosines of centred means over pairs.

        ``cos_ij = <mu_i - mu_G, mu_j - mu_G> / (||.|| ||.||)`` over ``i < j``;
        a simplex ETF has every ``cos_ij = -1/(K-1)``, so the variance (the
        equiangularity of Wu & Papyan 2024) is 0 and the mean ``-1/(K-1)``.

        Parameters
        ----------
        statistic : {"var", "mean", "std"}, default="var"
            Over pairs, population form. (linguistic-collapse's ``-etf`` flag
            stores the mean and variance of ``interference_grid``, the
            unnormalised inner products; the cosine here is scale-free.)

        Returns
        -------
        interference : float
        """
        _check_statistic(statistic)
        pairs = self._pairs()
        bad = self._directions_undefined("NC2 interference", pairs)
        return bad if bad is not None else _summary(pairs["cos"], statistic)

    def nc2_equinorm(self, ddof=1):
        """Equinorm (NC2): coefficient of variation of the centred mean norms.

        ``std_c(||mu_c - mu_G||) / mean_c(||mu_c - mu_G||)`` over kept classes
        (Papyan et al. 2020, Figure 2; ``neural_collapse.measure.mean_norms``).

        Parameters
        ----------
        ddof : {0, 1}, default=1
            Of the standard deviation: 1 as ``torch.Tensor.std`` (the library's
            and study's ``norms_var``), 0 the population form.

        Returns
        -------
        equinorm : float
        """
        if ddof not in (0, 1):
            raise ValueError(f"ddof must be 0 or 1; got {ddof!r}.")
        _, _, means, _, mu_g = self._kept()
        norms = torch.linalg.vector_norm(means - mu_g, dim=1)
        mean = float(norms.mean())
        if not mean > 0:
            return _undefined("NC2 equinorm", "every class mean equals the global mean")
        return float(norms.std(correction=ddof)) / mean

    def nc2(self, target="etf", kind="fro"):
        """Distance of the class means to a simplex ETF or an orthogonal frame.

        Parameters
        ----------
        target : {"etf", "orthogonal"}, default="etf"
            As :func:`~skdnc.metrics.nc2_score`: the Gram ``G`` of the
            row-normalised centred means against ``K/(K-1) I - 11'/(K-1)``, or of
            the row-normalised uncentred means against ``I``.
        kind : {"fro", "mse", "structure"}, default="fro"
            ``"fro"``: ``||G - T||_F``; ``"mse"``: ``||G - T||_F^2 / K^2`` (as
            :func:`~skdnc.metrics.nc2_score`). ``"structure"`` (``target="etf"``
            only): ``|| A / ||A||_F - (I - 11'/K) / sqrt(K-1) ||_F`` with
            ``A = H H'`` of the centred means, unnormalised rows
            (``neural_collapse.measure.simplex_etf_error``, Kothapalli 2023).

        Returns
        -------
        nc2 : float

        Notes
        -----
        The ETF forms ``"fro"``/``"mse"`` sum ``(cos_ij + 1/(K-1))^2`` in the
        pairwise sweep. ``"orthogonal"`` and ``"structure"`` use
        ``||G||_F^2 = ||M' M||_F^2`` with a ``d x d`` Gram when ``K > d`` (and the
        ``K x K`` one otherwise), so they lose absolute precision ``~ K eps`` in
        the squared norm.
        """
        if target not in ("etf", "orthogonal") or kind not in (
            "fro",
            "mse",
            "structure",
        ):
            raise ValueError(
                "target must be 'etf' or 'orthogonal' and kind 'fro', 'mse' or "
                f"'structure'; got {target!r} and {kind!r}."
            )
        if kind == "structure":
            if target != "etf":
                raise ValueError("kind='structure' measures the distance to an ETF.")
            _, _, means, _, mu_g = self._kept()
            H = means - mu_g
            return _structure_error(H, H)
        if target == "etf":
            pairs = self._pairs()
            bad = self._directions_undefined("NC2", pairs)
            if bad is not None:
                return bad
            sq, K = 2 * pairs["etf_sq"], pairs["K"]
        else:
            _, _, means, _, _ = self._kept()
            sq_norms = (means * means).sum(dim=1)
            if bool((sq_norms <= ROUNDING_LEVEL * self._scale()).any()):
                return _undefined("NC2", "a kept class mean is 0 (up to rounding)")
            U = means / sq_norms.sqrt()[:, None]
            K = U.shape[0]
            sq = max(0.0, _gram_fro_sq(U) - K)
        return float(np.sqrt(sq)) if kind == "fro" else sq / K**2

    def nc1(self, kind="trace", rtol=None):
        """Within-class variability collapse (NC1) of the kept classes.

        Parameters
        ----------
        kind : {"trace", "pinv"}, default="trace"
            ``"trace"``: ``tr Sigma_W / tr Sigma_B`` (Tirer et al. 2023; the
            library's ``covariance_ratio(metric="quotient")``), from the first
            pass. ``"pinv"``: ``tr(Sigma_W Sigma_B^+) / K`` (Papyan et al. 2020)
            from the second pass's ``Sigma_W``, inverting the top ``K - 1``
            eigenpairs of ``Sigma_B`` above ``rtol * lambda_max``: the library's
            ``"pinv"`` (``torch.linalg.pinv``) and ``"svd"`` (Han et al. 2022,
            ``svds(k=K-1)``) forms, which agree in exact arithmetic; the cut keeps
            it non-negative.
        rtol : float, default=None
            ``1e-10`` (as :func:`~skdnc.metrics.nc1_score`); ``0`` inverts every
            positive eigenvalue of the top ``K - 1`` (Han et al.'s form).

        Returns
        -------
        nc1 : float
        """
        stats = self.statistics()
        if kind == "trace":
            return _nc1_trace(stats)
        if kind != "pinv":
            raise ValueError(f"kind must be 'trace' or 'pinv'; got {kind!r}.")
        w = self._complete_within("nc1(kind='pinv')")
        if w["sigma_w"] is None:
            raise ValueError(
                "nc1(kind='pinv') needs Sigma_W: create the accumulator with "
                "covariance='pooled' or 'per_class'."
            )
        directions = _pinv_directions(stats, 1e-10 if rtol is None else rtol)
        if directions is None:
            return _nc1_pinv_value(stats, None, None)
        V = directions[0]
        S = to_numpy(w["sigma_w"]) / w["n"]
        q = np.einsum("jd,de,je->j", V, S, V)
        return _nc1_pinv_value(stats, directions, q)

    def _check_w(self, W):
        idx, _, means, _, mu_g = self._kept()
        Wt = _as_tensor(W).to(device=means.device, dtype=torch.float64)
        if tuple(Wt.shape) != (self.n_classes, self.n_features_):
            raise ValueError(
                f"W must be the classifier's weight, shape (n_classes, n_features) = "
                f"({self.n_classes}, {self.n_features_}); got {tuple(Wt.shape)}."
            )
        if not bool(torch.isfinite(Wt).all()):
            raise NonFiniteError("W contains NaN or infinity.")
        return Wt[idx], means - mu_g

    def nc3(self, W, kind="fro"):
        """Self-duality (NC3) of the classifier rows and the centred class means.

        Parameters
        ----------
        W : array-like of shape (n_classes, n_features)
            Classifier (LM head) weight, all ``K`` rows; the kept rows are used.
        kind : {"fro", "cosine", "structure"}, default="fro"
            ``"fro"`` and ``"cosine"`` as :func:`~skdnc.metrics.nc3_score`
            (Papyan et al. 2020); ``"structure"``:
            ``|| W H' / ||W H'||_F - (I - 11'/K) / sqrt(K-1) ||_F``
            (``neural_collapse.measure.self_duality_error``, Kothapalli 2023).

        Returns
        -------
        nc3 : float
        """
        Wk, H = self._check_w(W)
        if kind == "structure":
            return _structure_error(H, Wk)
        if kind not in ("fro", "cosine"):
            raise ValueError(
                f"kind must be 'fro', 'cosine' or 'structure'; got {kind!r}."
            )
        return _nc3_from_means(to_numpy(H), to_numpy(Wk), kind)

    def unc3(self, W, kind="dot", ddof=1):
        """Uniform duality (UNC3): variance over classes of ``<w_c, mu_c - mu_G>``.

        ``Var_c(<w_c, mu_c - mu_G>)`` (Wu & Papyan 2024; ``similarities(W, M,
        m_G).var()`` of ``neural_collapse``, whose README calls it UNC3), or of
        the cosine ``cos(w_c, mu_c - mu_G)`` with ``kind="cos"``.

        Parameters
        ----------
        W : array-like of shape (n_classes, n_features)
        kind : {"dot", "cos"}, default="dot"
        ddof : {0, 1}, default=1
            1 as ``torch.Tensor.var`` (the library's form).

        Returns
        -------
        unc3 : float
        """
        if kind not in ("dot", "cos") or ddof not in (0, 1):
            raise ValueError(
                f"kind must be 'dot' or 'cos' and ddof 0 or 1; got {kind!r}, {ddof!r}."
            )
        Wk, H = self._check_w(W)
        s = (Wk * H).sum(dim=1)
        if kind == "cos":
            den = torch.linalg.vector_norm(Wk, dim=1) * torch.linalg.vector_norm(
                H, dim=1
            )
            if not bool((den > 0).all()):
                return _undefined("UNC3", "a classifier row or a centred mean is 0")
            s = s / den
        return float(s.var(correction=ddof))

    def nc5(self, X_ood, center=False):
        """Out-of-distribution orthogonality (NC5, Ammar et al. 2024, NECO).

        ``mean_c |cos(mu_c, mu_G^OOD)|`` over kept classes, with ``mu_G^OOD``
        the mean of the out-of-distribution features
        (``neural_collapse.measure.orthogonality_deviation``, arXiv:2310.06823).
        0 when the OOD mean is orthogonal to every class mean.

        Parameters
        ----------
        X_ood : array-like or torch.Tensor of shape (n, d), or an iterable of such
            batches
            Out-of-distribution features of the same layer.
        center : bool, default=False
            Subtract the in-distribution ``mu_G`` from ``mu_c`` and from
            ``mu_G^OOD`` first (a variant; the library does not centre).

        Returns
        -------
        nc5 : float
        """
        _, _, means, _, mu_g = self._kept()
        batches = [X_ood] if _is_array_like(X_ood) else X_ood
        total, n = torch.zeros_like(mu_g), 0
        for batch in batches:
            Z = _as_tensor(batch).to(device=means.device, dtype=torch.float64)
            if Z.ndim != 2 or Z.shape[1] != self.n_features_:
                raise ValueError(
                    f"X_ood must be (n, {self.n_features_}); got {tuple(Z.shape)}."
                )
            if not bool(torch.isfinite(Z).all()):
                raise NonFiniteError("X_ood contains NaN or infinity.")
            total += Z.sum(dim=0)
            n += Z.shape[0]
        if n == 0:
            raise ValueError("X_ood holds no samples.")
        ood = total / n
        M = means
        if center:
            M, ood = means - mu_g, ood - mu_g
        den = torch.linalg.vector_norm(M, dim=1) * torch.linalg.vector_norm(ood)
        if not bool((den > 0).all()):
            return _undefined("NC5", "the OOD mean or a class mean is 0")
        return float(((M @ ood).abs() / den).mean())

    # -- second pass ---------------------------------------------------------------
    def _means_hash(self):
        idx, counts, means, _, _ = self._kept()
        h = hashlib.sha256()
        for t in (idx, counts, means):
            h.update(np.ascontiguousarray(to_numpy(t)).tobytes())
        return h.hexdigest()

    def _begin_within(self):
        idx, *_ = self._kept()
        K, d = idx.numel(), self.n_features_
        device = self._means.device
        sigma = class_cov = None
        if self.covariance is not None:
            sigma = torch.zeros(d, d, dtype=torch.float64, device=device)
        if self.covariance == "per_class":
            need = K * d * d * 8
            if need > self.max_covariance_bytes:
                raise ValueError(
                    f"covariance='per_class' needs K * d^2 = {K} * {d}^2 float64 "
                    f"entries ({need / 2**30:.2f} GiB), above max_covariance_bytes="
                    f"{self.max_covariance_bytes}. Use covariance='pooled'."
                )
            class_cov = torch.zeros(K, d, d, dtype=torch.float64, device=device)
        self._within = {
            "hash": self._means_hash(),
            "n": 0,
            "sigma_w": sigma,
            "class_cov": class_cov,
        }

    def partial_fit_within(self, X, y=None, *, input_ids=None, attention_mask=None):
        """Second pass over the same batches, against the fixed class means.

        Accumulates ``sum (x - mu_y)(x - mu_y)'`` over the rows of kept classes
        (pooled, and per class when ``covariance="per_class"``); rows of classes
        below ``min_count`` are skipped. The first call fixes the means (a
        SHA-256 hash of the kept counts and means is recorded, and checked when a
        checkpoint of this pass is loaded).

        Returns
        -------
        self : VocabularyAccumulator
        """
        self._check_fitted()
        if self._within is None:
            self._begin_within()
        Z, labels = self._prepare(X, y, input_ids, attention_mask)
        unseen = self._counts[labels] == 0
        if bool(unseen.any()):
            raise ValueError(
                f"Label {int(labels[unseen][0])} was not seen by partial_fit; the "
                "second pass must see the batches of the first."
            )
        keep = self._counts[labels] >= self.min_count
        Z, labels = Z[keep], labels[keep]
        w = self._within
        w["n"] += int(Z.shape[0])
        if w["sigma_w"] is None or Z.shape[0] == 0:
            return self
        R = Z - self._means[labels]
        w["sigma_w"] += R.T @ R
        if w["class_cov"] is not None:
            idx = self._kept()[0]
            row = torch.full((self.n_classes,), -1, dtype=torch.int64, device=Z.device)
            row[idx] = torch.arange(idx.numel(), device=Z.device)
            rows = row[labels]
            for r in torch.unique(rows).tolist():
                Rc = R[rows == r]
                w["class_cov"][r] += Rc.T @ Rc
        return self

    def _complete_within(self, what):
        _, counts, *_ = self._kept()
        n_kept = int(counts.sum())
        if self._within is None or self._within["n"] != n_kept:
            seen = 0 if self._within is None else self._within["n"]
            raise ValueError(
                f"{what} needs the second pass: feed the same batches to "
                f"partial_fit_within ({seen} of {n_kept} rows of kept classes seen)."
            )
        return self._within

    def within_covariance(self):
        """Pooled ``Sigma_W = (1/N) sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})'`` of the
        kept classes, shape ``(d, d)``, after a complete second pass."""
        w = self._complete_within("within_covariance")
        if w["sigma_w"] is None:
            raise ValueError("covariance=None keeps no Sigma_W.")
        return to_numpy(w["sigma_w"]) / w["n"]

    def class_covariances(self):
        """Per-class covariances ``(1/n_c) sum_{y_i = c} (x_i - mu_c)(x_i - mu_c)'``,
        shape ``(n_kept, d, d)`` in the order of ``kept_classes_``
        (``covariance="per_class"``)."""
        w = self._complete_within("class_covariances")
        if w["class_cov"] is None:
            raise ValueError("Create the accumulator with covariance='per_class'.")
        counts = self._kept()[1]
        return to_numpy(w["class_cov"] / counts[:, None, None])

    # -- decisions (NC4) ------------------------------------------------------------
    def partial_fit_decisions(
        self, X, W, b=None, y=None, *, input_ids=None, attention_mask=None
    ):
        """Decision pass: agreement of the linear classifier with the
        nearest-class-mean rule, over the rows of kept classes.

        Both rules choose among the kept classes: ``argmax_c <w_c, x> + b_c``
        against ``argmin_c ||x - mu_c||`` (``neural_collapse``'s
        ``DecAccumulator``, without its FAISS option), tiled over blocks of
        ``tile_size`` classes.

        Parameters
        ----------
        X, y, input_ids, attention_mask
            As for :meth:`partial_fit`.
        W : array-like of shape (n_classes, n_features)
        b : array-like of shape (n_classes,), default=None
            The classifier's bias (the library ignores it).

        Returns
        -------
        self : VocabularyAccumulator
        """
        Wk, _ = self._check_w(W)
        idx, _, means, _, _ = self._kept()
        bk = None
        if b is not None:
            bt = _as_tensor(b).to(device=means.device, dtype=torch.float64)
            if tuple(bt.shape) != (self.n_classes,):
                raise ValueError(
                    f"b must have shape ({self.n_classes},); got {tuple(bt.shape)}."
                )
            bk = bt[idx]
        Z, labels = self._prepare(X, y, input_ids, attention_mask)
        Z = Z[self._counts[labels] >= self.min_count]
        if self._decisions is None:
            self._decisions = [0, 0]
        if Z.shape[0] == 0:
            return self
        sqm = (means * means).sum(dim=1)
        best_lin = torch.full((Z.shape[0],), -float("inf"), dtype=torch.float64)
        best_ncc = torch.full((Z.shape[0],), float("inf"), dtype=torch.float64)
        arg_lin = torch.zeros(Z.shape[0], dtype=torch.int64)
        arg_ncc = torch.zeros(Z.shape[0], dtype=torch.int64)
        best_lin, best_ncc = best_lin.to(Z.device), best_ncc.to(Z.device)
        arg_lin, arg_ncc = arg_lin.to(Z.device), arg_ncc.to(Z.device)
        for a in range(0, idx.numel(), self.tile_size):
            e = min(idx.numel(), a + self.tile_size)
            scores = Z @ Wk[a:e].T
            if bk is not None:
                scores += bk[a:e]
            dist = sqm[a:e] - 2 * (Z @ means[a:e].T)
            for value, best, arg, pick in (
                (scores, best_lin, arg_lin, torch.max),
                (dist, best_ncc, arg_ncc, torch.min),
            ):
                v, i = pick(value, dim=1)
                better = v > best if pick is torch.max else v < best
                best[better], arg[better] = v[better], i[better] + a
        self._decisions[0] += int((arg_lin == arg_ncc).sum())
        self._decisions[1] += int(Z.shape[0])
        return self

    def nc4(self):
        """NC4: the fraction of rows (of kept classes) on which the classifier and
        the nearest-class-mean rule disagree, from :meth:`partial_fit_decisions`.

        Returns
        -------
        nc4 : float
        """
        if not self._decisions or self._decisions[1] == 0:
            raise ValueError("nc4 needs partial_fit_decisions on at least one row.")
        hits, n = self._decisions
        return 1.0 - hits / n

    # -- everything at once --------------------------------------------------------
    def report(self, *, W=None, X_ood=None, dist_exp=1):
        """The metrics as a JSON-ready dict, keyed by :data:`METRIC_NAMES`.

        Parameters
        ----------
        W : array-like of shape (n_classes, n_features), default=None
            Classifier rows: adds ``nc3`` and ``unc3``.
        X_ood : array-like, default=None
            Adds ``nc5``.
        dist_exp : {1, 2}, default=1
            Of ``cdnv``.

        Returns
        -------
        report : dict
            ``n_samples``, ``n_classes_kept``, ``nc1``, ``cdnv``, ``nc2``,
            ``nc2_orthogonal``, ``nc2_equinorm``, ``nc2_interference``, ``gnc2``;
            ``nc1_pinv`` after a complete second pass; ``nc4`` after a decision
            pass; ``nc3``, ``unc3`` and ``nc5`` when given their inputs.
        """
        idx, counts, *_ = self._kept()
        out = {
            "n_samples": int(counts.sum()),
            "n_classes_kept": int(idx.numel()),
            "nc1": self.nc1(),
            "cdnv": self.cdnv(dist_exp),
            "nc2": self.nc2(),
            "nc2_orthogonal": self.nc2("orthogonal"),
            "nc2_equinorm": self.nc2_equinorm(),
            "nc2_interference": self.nc2_interference(),
            "gnc2": self.gnc2(),
        }
        if (
            self._within is not None
            and self._within["sigma_w"] is not None
            and self._within["n"] == out["n_samples"]
        ):
            out["nc1_pinv"] = self.nc1("pinv")
        if self._decisions and self._decisions[1]:
            out["nc4"] = self.nc4()
        if W is not None:
            out["nc3"] = self.nc3(W)
            out["unc3"] = self.unc3(W)
        if X_ood is not None:
            out["nc5"] = self.nc5(X_ood)
        return out

    # -- checkpoints -----------------------------------------------------------------
    def state_dict(self, part="all"):
        """The accumulated state, as NumPy arrays and Python scalars.

        Parameters
        ----------
        part : {"all", "means", "within"}, default="all"
            ``"means"``: the first pass only; ``"within"``: the second pass only,
            with the hash of the means it was accumulated against.

        Returns
        -------
        state : dict
            For :meth:`load_state_dict` (``torch.save`` or ``pickle`` it).
        """
        if part not in ("all", "means", "within"):
            raise ValueError(f"part must be 'all', 'means' or 'within'; got {part!r}.")
        state = {
            "format": STATE_FORMAT,
            "n_classes": self.n_classes,
            "n_features": self.n_features_,
            "min_count": self.min_count,
        }
        if part in ("all", "means"):
            state["means"] = None
            if self._means is not None:
                state["means"] = {
                    "n_samples_seen": self.n_samples_seen_,
                    "counts": to_numpy(self._counts),
                    "means": to_numpy(self._means),
                    "m2": to_numpy(self._m2),
                }
        if part in ("all", "within"):
            w = self._within
            state["within"] = None
            if w is not None:
                state["within"] = {
                    "hash": w["hash"],
                    "n": w["n"],
                    "sigma_w": None if w["sigma_w"] is None else to_numpy(w["sigma_w"]),
                    "class_cov": None
                    if w["class_cov"] is None
                    else to_numpy(w["class_cov"]),
                }
            state["decisions"] = (
                None if self._decisions is None else list(self._decisions)
            )
        return state

    def load_state_dict(self, state):
        """Resume from :meth:`state_dict`.

        A ``"means"`` part replaces the first pass (and drops a second pass
        begun on other means); a ``"within"`` part resumes the second pass and is
        refused unless it was accumulated against exactly the current means.

        Returns
        -------
        self : VocabularyAccumulator
        """
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "state must be a dict from VocabularyAccumulator.state_dict (format "
                f"{STATE_FORMAT})."
            )
        for key in ("n_classes", "min_count"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"The state has {key}={state[key]}, this accumulator "
                    f"{getattr(self, key)}."
                )
        if (
            self.n_features_ is not None
            and state["n_features"] is not None
            and state["n_features"] != self.n_features_
        ):
            raise ValueError(
                f"The state has {state['n_features']} features, this accumulator "
                f"{self.n_features_}."
            )
        device = self._means.device if self._means is not None else "cpu"
        if "means" in state:
            if self._within is not None and state.get("within") is None:
                raise ValueError(
                    "Loading a first-pass state while a second pass is under way "
                    "would discard it; load a state with both parts, or start a new "
                    "accumulator."
                )
            first = state["means"]
            self._within, self._decisions, self._cache = None, None, {}
            if first is None:
                self._counts = self._means = self._m2 = None
                self.n_samples_seen_, self.n_features_ = 0, None
            else:
                self.n_features_ = int(state["n_features"])
                self._counts = torch.tensor(first["counts"], device=device)
                self._means = torch.tensor(first["means"], device=device)
                self._m2 = torch.tensor(first["m2"], device=device)
                self.n_samples_seen_ = int(first["n_samples_seen"])
        if state.get("within") is not None:
            w = state["within"]
            self._check_fitted()
            current = self._means_hash()
            if w["hash"] != current:
                raise ValueError(
                    "The second-pass state was accumulated against other class means "
                    f"(hash {w['hash'][:12]}...) than this accumulator's "
                    f"({current[:12]}...): the second pass must use the means of the "
                    "complete first pass. Restart the second pass on these means."
                )
            self._within = {
                "hash": w["hash"],
                "n": int(w["n"]),
                "sigma_w": None
                if w["sigma_w"] is None
                else torch.tensor(w["sigma_w"], device=device),
                "class_cov": None
                if w["class_cov"] is None
                else torch.tensor(w["class_cov"], device=device),
            }
        if state.get("decisions") is not None:
            self._decisions = list(state["decisions"])
        return self


def _is_array_like(v):
    return isinstance(v, (torch.Tensor, np.ndarray)) or (
        isinstance(v, (list, tuple)) and len(v) > 0 and not hasattr(v[0], "shape")
    )


def _gram_fro_sq(A):
    """``||A A'||_F^2`` of ``A`` (K x d) through the smaller Gram matrix."""
    G = A.T @ A if A.shape[0] > A.shape[1] else A @ A.T
    return float((G * G).sum())


def _structure_error(A, B):
    """``|| B A' / ||B A'||_F - (I - 11'/K) / sqrt(K-1) ||_F`` without the
    ``K x K`` matrix: ``||B A'||_F^2 = <B'B, A'A>``, ``<B A', I - 11'/K> =
    sum_c <b_c, a_c> - <sum b, sum a> / K`` and ``||(I - 11'/K)||_F^2 = K - 1``
    (``neural_collapse.measure.structure_error``)."""
    K = A.shape[0]
    if A.shape[0] > A.shape[1]:
        fro_sq = float((torch.einsum("ki,kj->ij", B, B) * (A.T @ A)).sum())
    else:
        C = B @ A.T
        fro_sq = float((C * C).sum())
    if not fro_sq > 0:
        return _undefined("The ETF structure error", "B A' is 0")
    inner = float((B * A).sum() - B.sum(dim=0) @ A.sum(dim=0) / K)
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * inner / np.sqrt(fro_sq * (K - 1)))))
