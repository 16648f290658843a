"""The network probe: AGOP, the NFA, NC1 and NC2 by SVD stage of every probed
layer, and the readout's NC3 and NC4 (:func:`probe_network`).

With :math:`W_l = U_l S_l V_l^\\top` and :math:`\\Phi(X)` the layer's input over
the data, NC1 and NC2 are measured at three stages: the input :math:`\\Phi(X)`,
the right singular structure :math:`S_l V_l^\\top \\Phi(X)` and the output
:math:`\\sigma(U_l S_l V_l^\\top \\Phi(X))`. Because :math:`U_l` has
orthonormal columns, :math:`S_l V_l^\\top \\Phi(X)` has the Gram matrix, hence
the NC1 and NC2, of :math:`W_l \\Phi(X)`, which is what is measured (for a
convolution, patch by patch: the map :math:`W_l * \\Phi(X)` without bias).
Every measurement streams over batches: class statistics accumulate in
:class:`skdnc.metrics.CollapseAccumulator` and :math:`G_l` as a running sum.
"""

import contextlib
import warnings
from dataclasses import dataclass, field

import numpy as np

from skdnc._backend import import_pandas
from skdnc._linalg import psd_power
from skdnc.metrics import CollapseAccumulator
from skdnc.metrics._collapse import STAGES
from skdnc.nn._capture import (
    _check_options,
    _gradient_sweep,
    _labels,
    _reduce,
    _setup,
    _sweep,
    _validate_probe_params,
)
from skdnc.nn._detect import weight_matrix
from skdnc.nn._layer_agop import _gram_correlation, _sqrt_factor
from skdnc.nn._readout import _find_readout, _Readout

__all__ = ["NetworkProbe", "probe_network"]


@dataclass
class NetworkProbe:
    """Per-layer measurements of a network on labelled data.

    Attributes
    ----------
    layer_names : list of str
        The probed layers, in forward order.
    nc1 : ndarray of shape (n_layers, 3)
        NC1 (:math:`\\mathrm{tr}\\,\\Sigma_W / \\mathrm{tr}\\,\\Sigma_B`) of each
        layer's input :math:`\\Phi(X)`, of :math:`S V^\\top \\Phi(X)` and of the
        layer's output; columns in the order of :data:`STAGES`.
    nc2 : ndarray of shape (n_layers, 3)
        NC2 of the same representations.
    nfa_correlation : ndarray of shape (n_layers,)
        Pearson correlation of the entries of :math:`W_l^\\top W_l` and
        :math:`\\mathrm{AGOP}_l^{1/2}`.
    nfa_correlation_uncentered : ndarray of shape (n_layers,)
        The same without centring (cosine of the matrices).
    nfa_correlation_agop : ndarray of shape (n_layers,)
        Pearson correlation of :math:`W_l^\\top W_l` and :math:`\\mathrm{AGOP}_l`.
    agops : list of ndarray or None
        The AGOPs (float64, averaged over samples), when asked for.
    nc1_pinv : ndarray of shape (n_layers, 3) or None
        NC1 in Papyan's pseudo-inverse form, when asked for.
    nfa_correlation_init : ndarray of shape (n_layers,) or None
        Pearson correlation of :math:`W_l^\\top W_l` with the same matrix of
        ``init_model`` (the baseline of the convolutional NFA literature), when
        given.
    layer_kinds : list of str
        ``"linear"`` or ``"conv2d"`` for each layer.
    reduction : str
        How outputs with a token or spatial axis were reduced to vectors (one of
        :data:`~skdnc.nn.REDUCTIONS`, or ``"callable"``).
    gradient : str
        ``"layer"`` or ``"total"``, see :func:`layer_agops`.
    nc3 : float
        NC3 (Frobenius form of :func:`skdnc.metrics.nc3_score`) of the network's
        readout: its weight rows against the centred class means of the readout's
        input. NaN when no readout was measured.
    nc4 : float
        NC4 (:func:`skdnc.metrics.nc4_score`): the fraction of samples whose
        prediction (the argmax of the model output) differs from the nearest
        class mean of the readout's input. NaN when no readout was measured.
    readout_name : str or None
        The module taken as the readout (see ``readout`` of
        :func:`probe_network`).
    """

    layer_names: list
    nc1: np.ndarray
    nc2: np.ndarray
    nfa_correlation: np.ndarray
    nfa_correlation_uncentered: np.ndarray
    nfa_correlation_agop: np.ndarray
    agops: list = field(default=None, repr=False)
    nc1_pinv: np.ndarray = None
    nfa_correlation_init: np.ndarray = None
    layer_kinds: list = None
    reduction: str = "flatten"
    gradient: str = "layer"
    nc3: float = float("nan")
    nc4: float = float("nan")
    readout_name: str = None

    @property
    def layer_share(self):
        """Share of each layer's log NC1 reduction owed to :math:`S V^\\top`.

        :math:`\\log(\\mathrm{NC1_{in}}/\\mathrm{NC1_{right}}) /
        \\log(\\mathrm{NC1_{in}}/\\mathrm{NC1_{out}})`; unstable (or NaN) where a
        layer barely changes NC1.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.nc1[:, :1] / self.nc1[:, 1:])
            return logs[:, 0] / logs[:, 1]

    @property
    def right_share(self):
        """Share of the summed log NC1 reduction owed to :math:`S V^\\top`.

        :math:`\\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{right}_l}) /
        \\sum_l \\log(\\mathrm{NC1^{in}_l}/\\mathrm{NC1^{out}_l})` (the statistic of
        the paper's Figure 2, summarised over layers).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            logs = np.log(self.nc1[:, :1] / self.nc1[:, 1:]).sum(axis=0)
            return float(logs[0] / logs[1])

    @property
    def within_share(self):
        """:math:`\\mathrm{tr}\\,\\Sigma_W/\\mathrm{tr}\\,\\Sigma_T` of the last output.

        With :math:`\\Sigma_T = \\Sigma_W + \\Sigma_B` (the paper's Figure 10-12
        captions) this is :math:`\\mathrm{NC1}/(1 + \\mathrm{NC1})`.
        """
        nc1 = float(self.nc1[-1, 2])
        return nc1 / (1.0 + nc1)

    @property
    def between_share(self):
        """:math:`\\mathrm{tr}\\,\\Sigma_B/\\mathrm{tr}\\,\\Sigma_T` of the last
        layer's output."""
        return 1.0 / (1.0 + float(self.nc1[-1, 2]))

    def to_dict(self):
        """JSON-ready dict of every number (without the AGOP matrices)."""
        out = {
            "layer_names": list(self.layer_names),
            "stages": list(STAGES),
            "nc1": self.nc1.tolist(),
            "nc2": self.nc2.tolist(),
            "nfa_correlation": self.nfa_correlation.tolist(),
            "nfa_correlation_uncentered": self.nfa_correlation_uncentered.tolist(),
            "nfa_correlation_agop": self.nfa_correlation_agop.tolist(),
            "layer_share": self.layer_share.tolist(),
            "right_share": self.right_share,
            "within_share": self.within_share,
            "between_share": self.between_share,
        }
        if self.layer_kinds is not None:
            out["layer_kinds"] = list(self.layer_kinds)
            out["reduction"] = self.reduction
            out["gradient"] = self.gradient
        for key in ("nc1_pinv", "nfa_correlation_init"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value.tolist()
        out["readout"] = self.readout_name
        out["nc3"] = float(self.nc3)
        out["nc4"] = float(self.nc4)
        return out

    def to_frame(self):
        """The per-layer measurements as a :class:`pandas.DataFrame`.

        Returns
        -------
        frame : pandas.DataFrame
            One row per probed layer, indexed by ``"layer"`` (its name), with
            columns ``f"{metric}_{stage}"`` for NC1 and NC2 (and ``nc1_pinv``
            when measured) of every stage of :data:`skdnc.metrics.STAGES`, the
            NFA correlations, ``layer_share`` and ``layer_kind``. The readout's
            ``nc3``, ``nc4`` and ``readout``, and the network-wide shares, are in
            ``frame.attrs``.

        Raises
        ------
        ImportError
            When pandas is not installed (it is optional).
        """
        pd = import_pandas("NetworkProbe.to_frame")
        columns = {}
        for key in ("nc1", "nc2", "nc1_pinv"):
            value = getattr(self, key)
            if value is not None:
                for k, stage in enumerate(STAGES):
                    columns[f"{key}_{stage}"] = np.asarray(value)[:, k]
        for key in (
            "nfa_correlation",
            "nfa_correlation_uncentered",
            "nfa_correlation_agop",
            "nfa_correlation_init",
            "layer_share",
        ):
            value = getattr(self, key)
            if value is not None:
                columns[key] = np.asarray(value)
        if self.layer_kinds is not None:
            columns["layer_kind"] = list(self.layer_kinds)
        frame = pd.DataFrame(
            columns, index=pd.Index(list(self.layer_names), name="layer")
        )
        frame.attrs.update(
            readout=self.readout_name,
            nc3=float(self.nc3),
            nc4=float(self.nc4),
            right_share=self.right_share,
            within_share=self.within_share,
            between_share=self.between_share,
        )
        return frame


def _collapse_pass(
    model,
    batches,
    found,
    accs,
    *,
    device,
    output_fn,
    model_output,
    reduction,
    readout=None,
    attention_mask=None,
):
    """Second pass: the within-class scatter in the class-mean span (pinv NC1,
    when ``accs`` is given) and the readout's NC4 count (when ``readout`` is)."""

    def step(cap, out, yb):
        labels = _labels(yb)
        if readout is not None:
            readout.count(out)
        if accs is None:
            return
        for index in range(len(found)):
            for k, Z in _stage_features(cap, found, reduction, index):
                accs[index][k].partial_fit_within(Z, labels)

    _sweep(
        model,
        batches,
        found,
        device=device,
        gradient=None,
        stages=True,
        output_fn=output_fn,
        model_output=model_output,
        on_batch=step,
        attention_mask=attention_mask,
    )


def _stage_features(cap, found, reduction, index):
    """The reduced features of every stage of layer ``index`` in this batch."""
    layer = found[index]
    for k, Z in enumerate(cap.stage_features(index)):
        # a Linear acts on the last axis: its input, projection and, unless the
        # output is a block's, its activation are channels-last
        last = layer.kind == "linear" and (k < 2 or layer.output is not layer.block)
        where = f"the {STAGES[k]} stage of layer {layer.name!r}"
        yield k, _reduce(Z, reduction, cap.mask, where, -1 if last else 1)


def _warn_bare(found):
    bare = [layer.name for layer in found if layer.bare]
    if bare:
        warnings.warn(
            f"Layers {bare} are bare weight layers: the output of each is its "
            "pre-activation W h + b, so its 'output' stage differs from its "
            "'projection' stage W h only by the bias and the SVD split measures no "
            "activation. Name the block around it, or a (weight_layer, activation) "
            "pair.",
            UserWarning,
            stacklevel=3,
        )


def _warn_nan_nfa(found, nfa, G, model, readout_name):
    """A NaN NFA correlation names the layer and its cause."""
    for index, layer in enumerate(found):
        if not np.isnan(nfa[index]):
            continue
        W = weight_matrix(layer.linear)
        if not bool(W.any()):
            cause = "its weight is zero, so W'W is zero"
        elif not bool(G[index].any()):
            cause = (
                "the model output does not depend on it on these data (zero "
                "gradients, so the AGOP is zero)"
            )
            readout = model.get_submodule(readout_name) if readout_name else None
            if readout is not None and not bool(readout.weight.detach().any()):
                cause += (
                    f": the readout {readout_name!r} has zero weights, as "
                    "torchvision initialises a ViT's head"
                )
        else:
            cause = "W'W or the AGOP has constant entries"
        warnings.warn(
            f"The NFA correlation of layer {layer.name!r} is NaN: {cause}.",
            UserWarning,
            stacklevel=3,
        )


@_validate_probe_params
def probe_network(
    model,
    X,
    y=None,
    *,
    layers=None,
    batch_size=256,
    device=None,
    return_agops=False,
    reduction="flatten",
    gradient="layer",
    nc1_pinv=False,
    output_fn=None,
    model_output=None,
    init_model=None,
    readout="auto",
    attention_mask=None,
):
    """Measure AGOP, NFA, collapse by SVD stage and the readout's NC3 and NC4.

    Parameters
    ----------
    model : torch.nn.Module
        The network, run in eval mode; ``model.training`` is restored and all hooks
        are removed afterwards, also when an error is raised.
    X : array-like, torch.Tensor, DataLoader or iterable of (x, y) batches
        Inputs in the model's input shape (e.g. ``(n, c, h, w)`` for a conv net),
        or batches of inputs and labels; everything is accumulated one batch at a
        time, in float64. Integer inputs (``uint8`` images) are converted to the
        model's dtype without scaling. A tuple of arrays is passed to the model
        as ``model(*x)`` and a dict as ``model(**x)`` (sliced into batches
        together; batches of a DataLoader may hold tuples or dicts as well).
    y : array-like of shape (n_samples,), default=None
        Class labels for array input; ``None`` when ``X`` yields ``(x, y)``.
    layers : str, module or list, default=None
        See :func:`find_layers`.
    batch_size : int, default=256
        Rows per batch for array input.
    device : str or torch.device, default=None
        ``None``: where the model's parameters are. The data are moved there batch
        by batch; the model is not moved.
    return_agops : bool, default=False
        Keep the dense AGOP of every layer (``d_l x d_l``; large behind a VGG
        backbone).
    reduction : {"flatten", "avgpool", "cls", "first", "last", "mean"} or \
callable, default="flatten"
        How an output with a token or spatial axis becomes the vectors the
        collapse is measured on; a 2-D output ``(n, d)`` is used as it is,
        whatever the reduction (a callable too). Feature maps ``(n, c, h, w)``:
        ``"flatten"`` (``c h w`` features) or ``"avgpool"`` (the mean over every
        axis after the channel axis: ``c`` features; refused on 3-D outputs,
        where it cannot tell tokens from channels). Token sequences
        ``(n, tokens, dim)``: ``"cls"`` or ``"first"`` (the first token, a ViT's
        class token), ``"last"`` (the last token, or the last real one with
        ``attention_mask``), ``"mean"`` (the mean over tokens, or over the real
        ones) or ``"flatten"``. A callable maps the batch tensor to ``(n, d)``.
    gradient : {"layer", "total"}, default="layer"
        Gradient of the AGOP, see :func:`layer_agops`.
    nc1_pinv : bool, default=False
        Also measure NC1 in the pseudo-inverse form; needs a second pass over the
        data (a one-shot iterator is refused).
    output_fn : int, str or callable, default=None
        Selects the tensor to measure from an output module that returns a tuple
        or dict (e.g. ``0``, or ``lambda out: out[0]``).
    model_output : int, str or callable, default=None
        Selects the scores from a model that returns a tuple or dict.
    init_model : torch.nn.Module, default=None
        The same architecture at initialisation: gives
        ``nfa_correlation_init``, the correlation of each layer's
        :math:`W^\\top W` with that at initialisation.
    attention_mask : str or callable, default=None
        For ``reduction="mean"`` or ``"last"`` on token sequences: the key of a
        dict input holding the ``(n, tokens)`` mask (nonzero for real tokens, as
        ``"attention_mask"`` of a tokenizer), or a callable ``batch -> mask``.
    readout : "auto", str or None, default="auto"
        The network's linear classifier, whose NC3 and NC4 are measured:
        ``"auto"`` takes the last ``nn.Linear`` registered in the model (the
        last one ``model.named_modules()`` lists: the final layer of a
        ``Sequential`` and of the networks of :mod:`skdnc.nn`, ``fc`` of a
        torchvision ResNet); a name picks that ``nn.Linear`` submodule; ``None``
        skips NC3 and NC4. Its weight row ``c`` is taken as the classifier of
        the class labelled ``c`` when the labels are integers in ``[0, K)``
        (``K`` its outputs; NC3 then uses the rows of the classes present), else
        of the ``c``-th class in sorted label order, and its input (at its first
        call in a forward pass) as the features it classifies. NC4 needs the
        class means before it can classify, hence a second pass over the data
        (a one-shot iterator is refused: pass ``readout=None``). When the
        ``"auto"`` choice is not a classifier of the model's scores (it does not
        run, its input is not 2-D, its width is not the model output's or the
        number of classes) NC3 and NC4 are NaN, with a warning; a named readout
        raises a ``ValueError`` instead.

    Returns
    -------
    probe : NetworkProbe

    Warns
    -----
    UserWarning
        When a probed layer is the network's linear readout (its NFA is 1 by
        construction), when a named layer is a bare weight layer (its SVD split
        is degenerate), when an NFA correlation is NaN (the message names the
        layer and the cause, e.g. a zero weight), and from :func:`find_layers`
        when layers are left out.

    Notes
    -----
    All measurements are float64 on the CPU. The NFA correlations come from the
    factors :math:`W_l` and :math:`B_l = G_l^{1/2} W_l` (:math:`\\mathrm{AGOP}_l =
    B_l^\\top B_l`, and :math:`\\mathrm{AGOP}_l^{1/2} = Q \\Sigma Q^\\top` from the
    SVD :math:`B_l = P \\Sigma Q^\\top`), so they never form a ``d_l x d_l`` matrix.
    NC1 and NC2 are those of :func:`skdnc.metrics.nc1_score` and
    :func:`skdnc.metrics.nc2_score` with their defaults, accumulated over batches
    by :class:`skdnc.metrics.CollapseAccumulator`. For a convolution the
    ``"projection"`` stage is the convolution's output without bias, whose flattened
    or pooled vectors have the Gram matrix of :math:`S V^\\top` applied to every
    patch.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.nn import make_mlp, probe_network
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(40, 6)).astype(np.float32), np.arange(40) % 4
    >>> probe = probe_network(make_mlp(6, 4, width=8, depth=3, random_state=0), X, y)
    >>> probe.nc1.shape, probe.nfa_correlation.shape
    ((3, 3), (3,))
    """
    _check_options(reduction, gradient, attention_mask)
    device, batches, _, found = _setup(model, X, y, batch_size, device, layers)
    _warn_bare(found)
    L = len(found)
    accs = [[CollapseAccumulator() for _ in STAGES] for _ in found]
    readout_name, module = _find_readout(model, readout)
    head = None
    if module is not None:
        head = _Readout(readout_name, module, explicit=readout != "auto")

    def collect(cap, out, yb):
        labels = _labels(yb)
        for index in range(L):
            for k, Z in _stage_features(cap, found, reduction, index):
                accs[index][k].partial_fit(Z, labels)
        if head is not None:
            head.collect(out, labels)

    with head if head is not None else contextlib.nullcontext():
        G = _gradient_sweep(
            model,
            batches,
            found,
            device=device,
            gradient=gradient,
            model_output=model_output,
            stages=True,
            output_fn=output_fn,
            on_batch=collect,
            attention_mask=attention_mask,
        )
        measured = head is not None and head.finish_means()
        if nc1_pinv or measured:
            _collapse_pass(
                model,
                batches,
                found,
                accs if nc1_pinv else None,
                device=device,
                output_fn=output_fn,
                model_output=model_output,
                reduction=reduction,
                readout=head if measured else None,
                attention_mask=attention_mask,
            )
    nc3 = nc4 = float("nan")
    if measured:
        nc3, nc4 = head.nc3(), head.nc4()
    nc1 = np.array([[a.nc1() for a in row] for row in accs])
    nc2 = np.array([[a.nc2() for a in row] for row in accs])
    pinv = None
    if nc1_pinv:
        pinv = np.array([[a.nc1("pinv") for a in row] for row in accs])
    nfa = np.empty((4, L))
    agops = [] if return_agops else None
    for index, layer in enumerate(found):
        W = weight_matrix(layer.linear)
        if gradient == "layer":
            B = psd_power(G[index], 0.5) @ W
            sqrt_factor = _sqrt_factor(B)
        else:
            A = G[index]
            if A.shape[0] != W.shape[1]:
                raise ValueError(
                    f"gradient='total': the input of block {layer.name!r} has width "
                    f"{A.shape[0]}, but its weight layer {layer.weight_name!r} takes "
                    f"{W.shape[1]}; W'W and the AGOP cannot be compared. Name a block "
                    "whose input is the weight layer's input."
                )
            B = psd_power(A, 0.5)
            sqrt_factor = psd_power(A, 0.25)
        nfa[0, index] = _gram_correlation(W, sqrt_factor)
        nfa[1, index] = _gram_correlation(W, sqrt_factor, centered=False)
        nfa[2, index] = _gram_correlation(W, B)
        nfa[3, index] = (
            _gram_correlation(W, weight_matrix(_init_module(init_model, layer)))
            if init_model is not None
            else np.nan
        )
        if return_agops:
            agops.append((B.T @ B).numpy())
    _warn_nan_nfa(found, nfa[0], G, model, readout_name)
    return NetworkProbe(
        layer_names=[layer.name for layer in found],
        nc1=nc1,
        nc2=nc2,
        nfa_correlation=nfa[0],
        nfa_correlation_uncentered=nfa[1],
        nfa_correlation_agop=nfa[2],
        agops=agops,
        nc1_pinv=pinv,
        nfa_correlation_init=nfa[3] if init_model is not None else None,
        layer_kinds=[layer.kind for layer in found],
        reduction=reduction if isinstance(reduction, str) else "callable",
        gradient=gradient,
        nc3=nc3,
        nc4=nc4,
        readout_name=readout_name,
    )


def _init_module(init_model, layer):
    try:
        module = init_model.get_submodule(layer.weight_name)
    except AttributeError as exc:
        raise ValueError(
            f"init_model has no submodule {layer.weight_name!r}; it must have the "
            "architecture of model."
        ) from exc
    if module.weight.shape != layer.linear.weight.shape:
        raise ValueError(
            f"init_model's {layer.weight_name!r} has weight shape "
            f"{tuple(module.weight.shape)}, not {tuple(layer.linear.weight.shape)}."
        )
    return module
