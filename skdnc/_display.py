"""Figures of collapse as objects, in scikit-learn's Display style.

A Display holds the numbers it draws; ``from_estimator`` (or ``from_probe``)
computes or reads them, and ``plot(ax=...)`` draws onto the given Axes (or new
ones) and keeps the artists (``lines_``, ``image_``, ...) next to ``figure_`` and
``ax_``, as :class:`sklearn.metrics.RocCurveDisplay` does.
"""

import numpy as np
from sklearn.utils.validation import check_consistent_length, check_is_fitted

from skdnc._backend import normalize_rows
from skdnc._histories import aggregate_histories
from skdnc.metrics._collapse import STAGES

#: How each metric of :data:`skdnc.metrics.METRIC_NAMES` is labelled on an axis.
METRIC_LABELS = {
    "nc1": "NC1: tr $\\Sigma_W$ / tr $\\Sigma_B$",
    "nc1_pinv": "NC1: tr($\\Sigma_W \\Sigma_B^+$) / K",
    "nc1_paper_code": "NC1 / K (reference code)",
    "nc2": "NC2: $\\|\\bar\\mu\\bar\\mu^\\top - \\Sigma_{ETF}\\|_F$",
    "nc2_mse": "NC2, mean squared entry",
    "nc2_orthogonal": "NC2 to an orthogonal frame",
    "nc2_orthogonal_mse": "NC2 to an orthogonal frame, mean squared entry",
    "nc2_equinorm": "NC2 equinorm: CoV of $\\|\\mu_c - \\mu_G\\|$",
    "nc2_interference": "NC2 interference: Var of cosines",
    "gnc2": "GNC2: Var of log-kernel",
    "unc3": "UNC3: Var of $\\langle w_c, \\mu_c - \\mu_G\\rangle$",
    "nc5": "NC5: mean $|\\cos(\\mu_c, \\mu_G^{OOD})|$",
    "nc3": "NC3: $\\|W/\\|W\\|_F - \\dot M/\\|\\dot M\\|_F\\|_F$",
    "nc4": "NC4: disagreement with nearest class mean",
    "cdnv": "CDNV",
    "gram_label_correlation": "Gram / label-kernel correlation",
}
#: Colours of the stages, the same in every figure.
STAGE_COLORS = dict(zip(STAGES, ("tab:green", "tab:orange", "tab:blue")))


def _axes(ax, n):
    """``n`` Axes: the ones given, or a new row of them."""
    import matplotlib.pyplot as plt

    if n < 1:
        raise ValueError("Nothing to draw: at least one metric is needed.")
    if ax is None:
        fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
        return fig, list(axes[0])
    axes = list(np.ravel(ax))
    if len(axes) != n:
        raise ValueError(f"ax must hold {n} Axes, one per metric; got {len(axes)}.")
    return axes[0].figure, axes


def _log_scale_if_positive(ax, values):
    """A log y axis where the values allow one, with readable labels: decades
    for wide ranges, 1-1.5-2-3-5-7 steps written plainly within a decade or two."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    values = np.asarray(values, dtype=np.float64)
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return
    ax.set_yscale("log")
    if positive.max() / positive.min() < 30:
        ax.yaxis.set_major_locator(
            LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0))
        )
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.yaxis.set_major_locator(LogLocator(base=10, numticks=8))


class CollapseDisplay:
    """Collapse metrics against depth, one panel per metric, one line per stage.

    Parameters
    ----------
    layers : array-like of int of shape (n_layers,)
        Layer numbers, from 1.
    values : dict
        ``{metric: {stage: array of shape (n_layers,)}}``.
    stage_labels : dict, default=None
        Legend label of each stage; the stage names when ``None``.
    title : str, default=None

    Attributes
    ----------
    lines_ : dict
        ``{(metric, stage): matplotlib.lines.Line2D}``.
    axes_ : list of matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skdnc import CollapseDisplay, DeepRFMTransformer
    >>> X, y = load_digits(return_X_y=True)
    >>> deep = DeepRFMTransformer(L=3, width=64, random_state=0).fit(X[:300], y[:300])
    >>> display = CollapseDisplay.from_estimator(deep)
    >>> sorted(display.lines_)[0]
    ('nc1', 'input')
    """

    def __init__(self, *, layers, values, stage_labels=None, title=None):
        self.layers = np.asarray(layers)
        self.values = values
        self.stage_labels = stage_labels
        self.title = title

    @classmethod
    def from_estimator(cls, estimator, *, metrics=("nc1", "nc2"), ax=None):
        """Draw the ``collapse_history_`` of a fitted Deep RFM.

        Parameters
        ----------
        estimator : fitted DeepRFMTransformer
            Fitted with ``record_metrics=True``.
        metrics : sequence of str, default=("nc1", "nc2")
            Keys of ``collapse_history_`` without the stage suffix.
        ax : matplotlib Axes or array of them, default=None
            One per metric.

        Returns
        -------
        display : CollapseDisplay
        """
        check_is_fitted(estimator, "collapse_history_")
        history = estimator.collapse_history_
        if history is None:
            raise ValueError(
                "The estimator recorded no collapse history: fit it with "
                "record_metrics=True."
            )
        unknown = [m for m in metrics if f"{m}_{STAGES[0]}" not in history]
        if unknown:
            raise ValueError(
                f"metrics {unknown} are not in collapse_history_; choose from "
                f"{[m for m in METRIC_LABELS if f'{m}_{STAGES[0]}' in history]}."
            )
        p = getattr(estimator, "agop_power", 0.5)
        power = "1/2" if p == 0.5 else f"{p:g}"
        labels = {
            "input": "$X_l$",
            "projection": f"$M_l^{{{power}}} X_l$",
            "output": f"$\\Phi_l(M_l^{{{power}}} X_l)$",
        }
        values = {
            m: {s: np.asarray(history[f"{m}_{s}"]) for s in STAGES} for m in metrics
        }
        return cls(
            layers=history["layer"],
            values=values,
            stage_labels=labels,
            title=f"Deep RFM, {type(estimator).__name__}",
        ).plot(ax=ax)

    @classmethod
    def from_probe(cls, probe, *, ax=None):
        """Draw NC1 and NC2 by stage of a probed network (or NFAProbe).

        Parameters
        ----------
        probe : skdnc.nn.NetworkProbe or fitted skdnc.NFAProbe
        ax : matplotlib Axes or array of two, default=None

        Returns
        -------
        display : CollapseDisplay
        """
        nc1 = np.asarray(getattr(probe, "nc1_", getattr(probe, "nc1", None)))
        nc2 = np.asarray(getattr(probe, "nc2_", getattr(probe, "nc2", None)))
        if nc1.ndim != 2:
            raise TypeError(
                "probe must be a NetworkProbe or a fitted NFAProbe; got "
                f"{type(probe).__name__}."
            )
        values = {
            "nc1": {s: nc1[:, k] for k, s in enumerate(STAGES)},
            "nc2": {s: nc2[:, k] for k, s in enumerate(STAGES)},
        }
        labels = {
            "input": "input $h$",
            "projection": "$S V^\\top h$",
            "output": "output",
        }
        return cls(
            layers=np.arange(1, len(nc1) + 1),
            values=values,
            stage_labels=labels,
            title="network layers",
        ).plot(ax=ax)

    def plot(self, ax=None):
        """Draw onto ``ax`` (one Axes per metric) or new Axes.

        Returns
        -------
        self : CollapseDisplay
        """
        from matplotlib.ticker import MaxNLocator

        _check_series(self.layers, self.values)
        fig, axes = _axes(ax, len(self.values))
        labels = self.stage_labels or {s: s for s in STAGES}
        self.lines_ = {}
        for axis, (metric, by_stage) in zip(axes, self.values.items()):
            for stage, values in by_stage.items():
                (self.lines_[metric, stage],) = axis.plot(
                    self.layers,
                    values,
                    marker="o",
                    markersize=3,
                    color=STAGE_COLORS.get(stage),
                    label=labels.get(stage, stage),
                )
            _log_scale_if_positive(axis, np.concatenate(list(by_stage.values())))
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlabel("layer")
            axis.set_title(METRIC_LABELS.get(metric, metric))
            axis.grid(True, which="major", alpha=0.3)
        axes[0].legend()
        if self.title:
            fig.suptitle(self.title)
        self.axes_, self.figure_ = axes, fig
        return self


def _check_series(layers, values):
    """Stop a CollapseDisplay with no layers, no metrics, or series whose length
    is not the number of layers, before matplotlib sees them."""
    if len(layers) == 0 or not values:
        raise ValueError(
            f"Nothing to draw: got {len(layers)} layers and {len(values)} metrics; "
            "a CollapseDisplay needs at least one of each."
        )
    for metric, by_stage in values.items():
        for stage, series in by_stage.items():
            if np.shape(series) != (len(layers),):
                raise ValueError(
                    f"values[{metric!r}][{stage!r}] has shape {np.shape(series)}; "
                    f"expected one value per layer, ({len(layers)},)."
                )


def centred_gram(Z, y):
    """Gram matrix of the samples centred by the mean of the class means, each
    normalised, in class order (the matrices of the paper's Figure 1)."""
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y)
    if Z.ndim != 2 or y.shape != (len(Z),) or len(Z) == 0:
        raise ValueError(
            f"centred_gram needs Z of shape (n_samples, n_features) with n_samples "
            f">= 1 and y of shape (n_samples,); got Z {Z.shape} and y {y.shape}."
        )
    order = np.argsort(y, kind="stable")
    Z, y = Z[order], y[order]
    means = np.stack([Z[y == c].mean(axis=0) for c in np.unique(y)])
    Zc = normalize_rows(Z - means.mean(axis=0))
    return Zc @ Zc.T


class GramDisplay:
    """Centred, normalised Gram matrices at chosen layers (the paper's Figure 1).

    Parameters
    ----------
    grams : list of ndarray of shape (n_samples, n_samples)
        One matrix per layer, samples in class order.
    layers : list of int
        Their layer numbers.
    title : str, default=None

    Attributes
    ----------
    images_ : list of matplotlib.image.AxesImage
    colorbar_ : matplotlib.colorbar.Colorbar
    axes_ : list of matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, *, grams, layers, title=None):
        self.grams = grams
        self.layers = list(layers)
        self.title = title

    @classmethod
    def from_estimator(
        cls, estimator, X, y, *, layers=None, stage="projection", ax=None
    ):
        """Gram matrices of a fitted Deep RFM's stage on ``X`` at ``layers``.

        Parameters
        ----------
        estimator : fitted DeepRFMTransformer
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,)
        layers : list of int, default=None
            Layers numbered from 1; six spread over the depth when ``None``.
        stage : {"input", "projection", "output"}, default="projection"
            The paper's Figure 1 shows the projection :math:`M_l^{1/2} X_l`.
        ax : array of matplotlib Axes, default=None
            One per layer.

        Returns
        -------
        display : GramDisplay
        """
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}; got {stage!r}.")
        check_is_fitted(estimator)
        check_consistent_length(X, y)
        L = len(estimator.weights_)
        if layers is None:
            layers = sorted({int(round(v)) for v in np.linspace(1, L, min(L, 6))})
        reps = estimator.transform_layers(X, layers=layers)
        grams = [centred_gram(rep[stage], y) for rep in reps]
        return cls(
            grams=grams,
            layers=[rep["layer"] for rep in reps],
            title=f"Centred, normalised Gram matrices ({stage})",
        ).plot(ax=ax)

    def plot(self, ax=None, *, vmin=-0.2, vmax=1.0, cmap="viridis"):
        """Draw one matrix per Axes, with one labelled colorbar.

        Returns
        -------
        self : GramDisplay
        """
        import matplotlib.pyplot as plt

        n = len(self.grams)
        if n == 0 or len(self.layers) != n:
            raise ValueError(
                f"GramDisplay needs at least one Gram matrix and one layer number "
                f"per matrix; got {n} matrices and {len(self.layers)} layers."
            )
        for gram in self.grams:
            if (
                np.ndim(gram) != 2
                or np.shape(gram)[0] != np.shape(gram)[1]
                or (np.size(gram) == 0)
            ):
                raise ValueError(
                    "Every Gram matrix must be square and non-empty; got shape "
                    f"{np.shape(gram)}."
                )
        if ax is None:
            fig, axes = plt.subplots(
                1, n, figsize=(2.2 * n + 1, 2.8), squeeze=False, layout="constrained"
            )
            axes = list(axes[0])
        else:
            axes = list(np.ravel(ax))
            if len(axes) != n:
                raise ValueError(
                    f"ax must hold {n} Axes, one per layer; got {len(axes)}."
                )
            fig = axes[0].figure
        self.images_ = []
        for axis, gram, layer in zip(axes, self.grams, self.layers):
            image = axis.imshow(
                gram, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest"
            )
            self.images_.append(image)
            axis.set_title(f"layer {layer}")
            axis.set_xticks([])
            axis.set_yticks([])
        self.colorbar_ = fig.colorbar(self.images_[-1], ax=axes, shrink=0.9)
        self.colorbar_.set_label("cosine similarity")
        if self.title:
            fig.suptitle(self.title)
        self.axes_, self.figure_ = axes, fig
        return self


def _band(ax, x, mean, std, **kwargs):
    """A mean line and its +-1 SD band, the lower edge truncated at 0.01 x mean
    (the paper's rule, so that log axes stay readable)."""
    mean, std = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    (line,) = ax.plot(x, mean, **kwargs)
    low = np.maximum(mean - std, 0.01 * mean)
    band = ax.fill_between(
        x, low, mean + std, color=line.get_color(), alpha=0.2, linewidth=0
    )
    return line, band


def _seeds(n):
    return f"{n} seed{'s' * (n != 1)}"


class _HistoryDisplay:
    """What the training-history Displays share: their data and the aggregation
    of runs (one per seed) into mean and standard deviation."""

    def __init__(self, *, summary, layer_names, title=None):
        self.summary = summary
        self.layer_names = list(layer_names)
        self.title = title

    def _check_layers(self):
        if not self.layer_names or len(self.summary.get("epochs", ())) == 0:
            raise ValueError(
                "Nothing to draw: the histories hold no probed layers or no "
                "measured epochs."
            )

    @classmethod
    def from_histories(cls, histories, *, ax=None, title=None):
        """Aggregate :class:`~skdnc.nn.TrainingHistory` runs and draw them.

        Parameters
        ----------
        histories : list of TrainingHistory or ProbeCallback
            Runs with probes at the same epochs (one per seed). A
            :class:`~skdnc.nn.ProbeCallback` is drawn as it is: it records no
            loss, so the loss panel says so.
        ax : matplotlib Axes or array of them, default=None
        title : str, default=None
            Followed by the number of seeds.

        Returns
        -------
        display : the Display
        """
        if not histories or not all(h.probes for h in histories):
            raise ValueError("histories must be runs recorded with probe=True.")
        label = _seeds(len(histories))
        return cls(
            summary=aggregate_histories(histories),
            layer_names=histories[0].probes[-1]["layer_names"],
            title=f"{title} ({label})" if title else label,
        ).plot(ax=ax)


class TrainingHistoryDisplay(_HistoryDisplay):
    """Collapse, the NFA and the loss of networks through training (the paper's
    Figures 10-12), mean +- 1 SD over seeds.

    Parameters
    ----------
    summary : dict
        :func:`skdnc.nn.aggregate_histories` of the runs (with probes).
    layer_names : list of str
        The probed layers.
    title : str, default=None

    Attributes
    ----------
    lines_ : dict
        ``{name: matplotlib.lines.Line2D}`` of every mean curve: ``"within_share"``,
        ``"between_share"``, ``"loss"`` (when recorded) and ``("nfa", layer)``.
    axes_ : list of matplotlib Axes
    figure_ : matplotlib Figure
    """

    def plot(self, ax=None):
        """Draw the three panels onto ``ax`` (three Axes) or new Axes.

        Returns
        -------
        self : TrainingHistoryDisplay
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        self._check_layers()
        s = self.summary
        if ax is None:
            fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
            axes = list(axes)
        else:
            fig, axes = _axes(ax, 3)
        epochs = s["epochs"]
        self.lines_ = {}
        for key, label in (
            ("within_share", "tr $\\Sigma_W$ / tr $\\Sigma_T$"),
            ("between_share", "tr $\\Sigma_B$ / tr $\\Sigma_T$"),
        ):
            self.lines_[key], _ = _band(
                axes[0], epochs, s[f"{key}_mean"], s[f"{key}_std"], label=label
            )
        axes[0].set_title("last layer ($\\Sigma_T = \\Sigma_W + \\Sigma_B$)")
        axes[0].legend(fontsize=8)
        mean = np.asarray(s["nfa_correlation_mean"])
        std = np.asarray(s["nfa_correlation_std"])
        for l, name in enumerate(self.layer_names):
            self.lines_["nfa", name], _ = _band(
                axes[1], epochs, mean[:, l], std[:, l], label=name
            )
        axes[1].set_title("NFA: corr($W_l^\\top W_l$, AGOP$_l^{1/2}$)")
        axes[1].legend(fontsize=7)
        if "loss_mean" in s:
            self.lines_["loss"], _ = _band(
                axes[2], epochs, s["loss_mean"], s["loss_std"], color="black"
            )
            _log_scale_if_positive(axes[2], s["loss_mean"])
        else:
            axes[2].text(0.5, 0.5, "no loss recorded", ha="center", va="center")
        axes[2].set_title("training loss")
        for axis in axes:
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(True, which="major", alpha=0.3)
        if self.title:
            fig.suptitle(self.title)
        self.axes_, self.figure_ = axes, fig
        return self


class SVDSplitDisplay(_HistoryDisplay):
    """NC1 of each layer's input, projection and output through training (the
    paper's Figure 2), one panel per layer, mean +- 1 SD over seeds.

    Parameters
    ----------
    summary : dict
        :func:`skdnc.nn.aggregate_histories` of the runs (with probes).
    layer_names : list of str
    title : str, default=None

    Attributes
    ----------
    lines_ : dict
        ``{(layer, stage): matplotlib.lines.Line2D}``.
    axes_ : list of matplotlib Axes
    figure_ : matplotlib Figure
    """

    def plot(self, ax=None):
        """Draw one panel per layer onto ``ax`` or new Axes.

        Returns
        -------
        self : SVDSplitDisplay
        """
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        self._check_layers()
        L = len(self.layer_names)
        if ax is None:
            fig, axes = plt.subplots(
                1, L, figsize=(2.9 * L, 3.0), squeeze=False, sharey=True
            )
            axes = list(axes[0])
        else:
            fig, axes = _axes(ax, L)
        epochs = self.summary["epochs"]
        mean = np.asarray(self.summary["nc1_mean"])
        std = np.asarray(self.summary["nc1_std"])
        labels = ("input $h$", "$S V^\\top h$", "output")
        self.lines_ = {}
        for l, (axis, name) in enumerate(zip(axes, self.layer_names)):
            for k, stage in enumerate(STAGES):
                self.lines_[name, stage], _ = _band(
                    axis,
                    epochs,
                    mean[:, l, k],
                    std[:, l, k],
                    color=STAGE_COLORS[stage],
                    label=labels[k],
                )
            _log_scale_if_positive(axis, mean[:, l])
            axis.set_title(name)
            axis.set_xlabel("epoch")
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.grid(True, which="major", alpha=0.3)
        axes[0].set_ylabel("NC1")
        axes[0].legend(fontsize=7)
        if self.title:
            fig.suptitle(self.title)
        self.axes_, self.figure_ = axes, fig
        return self


class LayerProbeDisplay:
    """Cross-validated probe scores against layer, with the layer-stacked
    detector's score as a dashed line (Beaglehole et al., 2025, per-layer
    detection).

    Parameters
    ----------
    layer_names : list
        The probed layers, in order.
    scores : dict
        ``{metric: array of shape (n_layers, n_splits)}``, the test scores of
        every fold.
    stacked_scores : dict, default=None
        ``{metric: array of shape (n_splits,)}`` of the stacked detector.
    title : str, default=None

    Attributes
    ----------
    lines_ : dict
        ``{metric: matplotlib.lines.Line2D}`` of the mean per-layer scores.
    stacked_lines_ : dict
        ``{metric: matplotlib.lines.Line2D}`` of the stacked detector's mean.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc import LayerProbeDisplay
    >>> scores = {"accuracy": np.array([[0.6, 0.7], [0.9, 0.8]])}
    >>> display = LayerProbeDisplay(
    ...     layer_names=["blocks.0", "blocks.1"], scores=scores
    ... ).plot()
    >>> list(display.lines_)
    ['accuracy']
    """

    def __init__(self, *, layer_names, scores, stacked_scores=None, title=None):
        self.layer_names = list(layer_names)
        self.scores = scores
        self.stacked_scores = stacked_scores
        self.title = title

    @classmethod
    def from_probe(cls, probe, *, ax=None, title=None):
        """Draw the scores of a :class:`~skdnc.LayerProbe`.

        Parameters
        ----------
        probe : LayerProbe
            The result of :func:`~skdnc.probe_layers`.
        ax : matplotlib Axes, default=None
        title : str, default=None

        Returns
        -------
        display : LayerProbeDisplay
        """
        return cls(
            layer_names=probe.layer_names,
            scores=probe.scores,
            stacked_scores=probe.stacked_scores,
            title=title,
        ).plot(ax=ax)

    def plot(self, ax=None):
        """Draw onto ``ax`` or new Axes.

        Returns
        -------
        self : LayerProbeDisplay
        """
        import matplotlib.pyplot as plt

        L = len(self.layer_names)
        if L == 0 or not self.scores:
            raise ValueError("Nothing to draw: no layers or no scores.")
        for metric, values in self.scores.items():
            if np.shape(values)[0] != L:
                raise ValueError(
                    f"scores[{metric!r}] has {np.shape(values)[0]} rows for {L} layers."
                )
        if ax is None:
            fig, ax = plt.subplots(
                figsize=(max(4.5, 0.6 * L + 2.5), 3.6), layout="constrained"
            )
        fig = ax.figure
        x = np.arange(L)
        self.lines_, self.stacked_lines_ = {}, {}
        for metric, values in self.scores.items():
            values = np.asarray(values, dtype=float).reshape(L, -1)
            line, _ = _band(
                ax, x, values.mean(axis=1), values.std(axis=1), marker="o", label=metric
            )
            self.lines_[metric] = line
            stacked = (self.stacked_scores or {}).get(metric)
            if stacked is not None:
                self.stacked_lines_[metric] = ax.axhline(
                    float(np.mean(stacked)),
                    color=line.get_color(),
                    linestyle="--",
                    label=f"{metric}, layers stacked",
                )
        labels = [str(name) for name in self.layer_names]
        long = max(len(label) for label in labels) > 3
        ax.set_xticks(x, labels, rotation=30 if long else 0)
        ax.set_xlabel("layer")
        ax.set_ylabel("cross-validated score")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
        if self.title:
            ax.set_title(self.title)
        self.ax_, self.figure_ = ax, fig
        return self
