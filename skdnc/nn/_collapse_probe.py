"""Collapse at any module: NC1 and NC2 of the outputs of named modules, streamed
over batches (:func:`layer_collapse`)."""

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from skdnc._backend import import_pandas
from skdnc.metrics import CollapseAccumulator
from skdnc.nn._capture import (
    _batch_mask,
    _check_options,
    _labels,
    _reduce,
    _setup,
    _validate_probe_params,
)
from skdnc.nn._common import as_input, eval_mode, forward, model_dtype, select_output
from skdnc.nn._detect import _as_list, _not_run, find_layers

__all__ = ["CollapseProbe", "layer_collapse"]


@dataclass
class CollapseProbe:
    """Collapse of the outputs of named modules, from :func:`layer_collapse`.

    Attributes
    ----------
    layer_names : list of str
        The measured modules, in the order given.
    nc1 : ndarray of shape (n_layers,)
        NC1, trace form (:func:`skdnc.metrics.nc1_score`).
    nc1_pinv : ndarray of shape (n_layers,) or None
        NC1, pseudo-inverse form, when asked for.
    nc2 : ndarray of shape (n_layers,)
        NC2 to the simplex ETF (:func:`skdnc.metrics.nc2_score`).
    n_features : ndarray of shape (n_layers,)
        Width of each module's output after the reduction.
    reduction : str
        ``"flatten"``, ``"avgpool"`` or ``"callable"``.
    statistics : list of ClassStatistics
        Class counts, means and variances of every module's output.
    """

    layer_names: list
    nc1: np.ndarray
    nc1_pinv: np.ndarray
    nc2: np.ndarray
    n_features: np.ndarray
    reduction: str
    statistics: list = field(default=None, repr=False)

    def to_dict(self):
        """JSON-ready dict of every number."""
        return {
            "layer_names": list(self.layer_names),
            "nc1": self.nc1.tolist(),
            "nc1_pinv": None if self.nc1_pinv is None else self.nc1_pinv.tolist(),
            "nc2": self.nc2.tolist(),
            "n_features": self.n_features.tolist(),
            "reduction": self.reduction,
        }

    def to_frame(self):
        """The measurements as a :class:`pandas.DataFrame`.

        Returns
        -------
        frame : pandas.DataFrame
            One row per measured module, indexed by ``"layer"`` (its name), with
            columns ``nc1``, ``nc1_pinv`` (when measured), ``nc2`` and
            ``n_features``.

        Raises
        ------
        ImportError
            When pandas is not installed (it is optional).
        """
        pd = import_pandas("CollapseProbe.to_frame")
        columns = {"nc1": self.nc1}
        if self.nc1_pinv is not None:
            columns["nc1_pinv"] = self.nc1_pinv
        columns.update(nc2=self.nc2, n_features=self.n_features)
        return pd.DataFrame(
            columns, index=pd.Index(list(self.layer_names), name="layer")
        )


def _named_modules(model, layers, first):
    """``(name, module, channel axis)`` of the measured modules: the channel axis
    of ``"avgpool"`` is the last for a ``Linear`` (and a detected Linear layer's
    activation), which acts on the last axis, else 1."""
    if layers is None:
        return [
            (layer.name, layer.output, -1 if layer.kind == "linear" else 1)
            for layer in find_layers(model, X=first)
        ]
    names = {id(m): name for name, m in model.named_modules()}
    out = []
    for item in _as_list(layers):
        if isinstance(item, str):
            try:
                module = model.get_submodule(item)
            except AttributeError as exc:
                raise ValueError(f"model has no submodule named {item!r}.") from exc
        elif isinstance(item, nn.Module) and id(item) in names:
            item, module = names[id(item)], item
        else:
            raise TypeError(
                f"layers must hold submodule names or submodules; got {item!r}."
            )
        out.append((item, module, -1 if isinstance(module, nn.Linear) else 1))
    if not out:
        raise ValueError("layers must name at least one module.")
    return out


@_validate_probe_params
def layer_collapse(
    model,
    X,
    y=None,
    *,
    layers=None,
    reduction="flatten",
    output_fn=None,
    pinv=True,
    batch_size=256,
    device=None,
    attention_mask=None,
):
    """NC1 and NC2 of the outputs of any named modules, streamed over batches.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode without gradients; its mode is restored and the hooks
        removed afterwards.
    X : array-like, torch.Tensor, DataLoader or iterable of (x, y) batches
        Inputs in the model's input shape, or batches of inputs and labels; a
        tuple or dict of inputs as for :func:`probe_network`.
    y : array-like of shape (n_samples,), default=None
        Class labels for array input; ``None`` when ``X`` yields ``(x, y)``.
    layers : str, module or list, default=None
        Names as in ``model.named_modules()`` (dotted for nested modules, e.g.
        ``"layer1"``, ``"features.3"``, ``"encoder.layers.0"``; ``""`` is the
        model itself) or submodules. ``None``: the outputs of the layers
        :func:`find_layers` detects.
    reduction : {"flatten", "avgpool", "cls", "first", "last", "mean"} or \
callable, default="flatten"
        How an output with a token or spatial axis becomes vectors; 2-D outputs
        are used as they are. ``"avgpool"`` is global average pooling of feature
        maps ``(n, c, h, w)`` (as ``AdaptiveAvgPool2d(1)``), refused on 3-D
        outputs; token sequences ``(n, tokens, dim)`` take ``"cls"``/``"first"``,
        ``"last"`` or ``"mean"``. See :func:`probe_network`.
    output_fn : int, str, callable or dict, default=None
        Selects the tensor from a module that returns a tuple or dict (an index
        or key, or a callable); a dict maps layer names to selectors. Without it
        a tuple output raises an error naming this parameter.
    pinv : bool, default=True
        Also measure NC1 in the pseudo-inverse form (a second pass over the data).
    batch_size : int, default=256
        Rows per batch for array input.
    device : str or torch.device, default=None
        ``None``: where the model's parameters are.
    attention_mask : str or callable, default=None
        The token mask of ``reduction="mean"`` or ``"last"``, see
        :func:`probe_network`.

    Returns
    -------
    probe : CollapseProbe

    Notes
    -----
    Only the first call of a module in a forward pass is measured (a module
    applied twice, such as a shared activation, is measured at its first use).
    Class means and scatters accumulate in float64 in
    :class:`skdnc.metrics.CollapseAccumulator`, so memory grows with the width
    of the outputs, never with the number of samples.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skdnc.nn import layer_collapse
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(4 * 6 * 6, 3))
    >>> X, y = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
    >>> probe = layer_collapse(net, X, y, layers=["1", "3"], reduction="avgpool")
    >>> probe.layer_names, probe.n_features.tolist()
    (['1', '3'], [4, 3])
    """
    _check_options(reduction, attention_mask=attention_mask)
    device, batches, first, _ = _setup(model, X, y, batch_size, device, find=False)
    modules = _named_modules(model, layers, first)
    dtype = model_dtype(model)
    accs = [CollapseAccumulator() for _ in modules]

    def selector(name):
        if isinstance(output_fn, dict):
            return output_fn.get(name)
        return output_fn

    def sweep(update):
        captured = [None] * len(modules)
        mask = [None]

        def hook_for(index, name, channel_axis):
            def hook(module, args, out):
                if captured[index] is None:
                    where = f"module {name!r}"
                    out = select_output(out, selector(name), where, "output_fn")
                    Z = _reduce(
                        out.detach(),
                        reduction,
                        mask[0],
                        f"the output of {where}",
                        channel_axis,
                    )
                    captured[index] = Z.clone()

            return hook

        handles = []
        try:
            for index, (name, module, axis) in enumerate(modules):
                hook = hook_for(index, name, axis)
                handles.append(module.register_forward_hook(hook))
            with eval_mode(model), torch.no_grad():
                for xb, yb in batches():
                    captured[:] = [None] * len(modules)
                    xb = as_input(xb, device, dtype)
                    mask[0] = _batch_mask(xb, attention_mask)
                    forward(model, xb)
                    labels = _labels(yb)
                    for index, Z in enumerate(captured):
                        if Z is None:
                            name = modules[index][0]
                            raise ValueError(
                                f"Module {name!r}: {_not_run(name, model)}."
                            )
                        update(accs[index], Z, labels)
        finally:
            for handle in handles:
                handle.remove()

    sweep(lambda acc, Z, labels: acc.partial_fit(Z, labels))
    if pinv:
        sweep(lambda acc, Z, labels: acc.partial_fit_within(Z, labels))
    return CollapseProbe(
        layer_names=[name for name, _, _ in modules],
        nc1=np.array([acc.nc1() for acc in accs]),
        nc1_pinv=np.array([acc.nc1("pinv") for acc in accs]) if pinv else None,
        nc2=np.array([acc.nc2() for acc in accs]),
        n_features=np.array([acc.n_features_ for acc in accs]),
        reduction=reduction if isinstance(reduction, str) else "callable",
        statistics=[acc.statistics() for acc in accs],
    )
