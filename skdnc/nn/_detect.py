"""Finding the layers a probe measures: weight layers (``nn.Linear``,
``nn.Conv2d``) and the activation that consumes their output.

A probed layer is a weight module holding :math:`W_l`, the module whose output is
the layer's output, and the block whose input the total gradient is taken with
respect to. Without names, :func:`find_layers` detects the MLP layers of a model
(see its docstring); every weight layer left out is named in a warning.
"""

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from skdnc.nn._models import HeadedNetwork

__all__ = ["find_layers", "weight_matrix"]

_WEIGHT_TYPES = (nn.Linear, nn.Conv2d)

_ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardtanh,
    nn.Tanh,
    nn.Sigmoid,
    nn.Softplus,
    nn.Softsign,
)

# Modules allowed between a weight layer and its activation.
_PASS_THROUGH = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.RMSNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.LocalResponseNorm,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.AlphaDropout,
    nn.Identity,
)


def weight_matrix(module):
    """:math:`W_l` of a weight layer in float64 on the CPU.

    ``nn.Linear``: its weight ``(d_out, d_in)``. ``nn.Conv2d``: the filters as a
    ``c_out x (c_in q r)`` matrix, in the ``(c_in, q, r)`` order of
    :func:`torch.nn.functional.unfold` patches.
    """
    W = module.weight.detach().to("cpu", torch.float64)
    return W.reshape(W.shape[0], -1)


@dataclass
class _Layer:
    """A probed layer: the weight module holding :math:`W_l` (``linear``, an
    ``nn.Linear`` or ``nn.Conv2d``), the module whose output is the layer's output,
    and the block whose input the total gradient is taken with respect to."""

    name: str
    linear: nn.Module
    output: nn.Module
    block: nn.Module = None
    weight_name: str = ""

    @property
    def kind(self):
        return "conv2d" if isinstance(self.linear, nn.Conv2d) else "linear"


def _as_list(layers):
    """A single name or module, or a sequence of items, as a list of items."""
    if isinstance(layers, (str, nn.Module)):
        return [layers]
    return list(layers)


def _check_weight(name, module):
    if isinstance(module, nn.Conv2d) and module.groups != 1:
        raise ValueError(
            f"Layer {name!r} is a grouped convolution (groups={module.groups}); its "
            "filters are block-diagonal and the patch AGOP W'GW does not apply. "
            "Probe its output with layer_collapse instead."
        )


def _pairs(model, kind):
    """Weight modules of ``kind`` followed (after norms/dropout) by an activation."""
    found = []
    for parent_name, parent in model.named_modules():
        children = list(parent.named_children())
        for i, (child_name, child) in enumerate(children):
            if not isinstance(child, kind):
                continue
            if isinstance(child, nn.Conv2d) and child.groups != 1:
                continue
            j = i + 1
            while j < len(children) and isinstance(children[j][1], _PASS_THROUGH):
                j += 1
            if j < len(children) and isinstance(children[j][1], _ACTIVATIONS):
                full = f"{parent_name}.{child_name}" if parent_name else child_name
                found.append(_Layer(full, child, children[j][1], child, full))
    return found


def _detect(model):
    """The MLP layers of ``model``, or its convolutional layers if it has none."""
    kind = nn.Linear
    found = _pairs(model, nn.Linear)
    if not found:
        kind = nn.Conv2d
        found = _pairs(model, nn.Conv2d)
    probed = {id(layer.linear) for layer in found}
    skipped = [
        n
        for n, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d)) and id(m) not in probed
    ]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1] in skipped:
        skipped.remove(linears[-1])  # the readout: its NFA is 1 by construction
    if not found:
        listed = [n for n, m in model.named_modules() if isinstance(m, _WEIGHT_TYPES)]
        raise ValueError(
            "No MLP layers found: no nn.Linear or nn.Conv2d is followed (after "
            "normalisation or dropout modules) by an activation module; functional "
            "activations (F.relu in forward) are invisible to detection. Linear and "
            f"Conv2d modules of the model: {listed or 'none'}. Name the layers, or "
            "the blocks that hold them, with layers=[...]."
        )
    if skipped:
        also = (
            ", or they are convolutions of a model whose MLP layers are the ones "
            "detected"
            if kind is nn.Linear
            else ""
        )
        warnings.warn(
            f"Probing {len(found)} {kind.__name__} layers; these Linear/Conv2d "
            f"modules are not probed: {skipped}. No activation module follows them "
            "(a functional activation, a residual sum, or a grouped convolution)"
            f"{also}. Name them, or the blocks around them, with layers=[...] to "
            "probe them.",
            UserWarning,
            stacklevel=3,
        )
    return found


def find_layers(model, layers=None):
    """The layers of ``model`` that the probes measure.

    Parameters
    ----------
    model : torch.nn.Module
    layers : str, module or list, default=None
        ``None``: the blocks of ``model.head_layers`` for the
        :class:`HeadedNetwork` models of :mod:`skdnc.nn`; for any other model,
        its MLP layers: every ``nn.Linear`` followed by an activation module
        (ReLU, GELU, ...) among its siblings, with normalisation (BatchNorm,
        LayerNorm, ...) and dropout modules allowed in between, in the order of
        ``model.named_modules()``; in a model without MLP layers, every
        ``nn.Conv2d`` followed by an activation in the same way. A warning lists
        every ``Linear`` (or, for a conv-only model, ``Conv2d``) left out, except
        a final ``Linear``, the readout. Convolutions alongside MLP layers, and
        layers whose activation is a function in ``forward`` (``F.relu``), are
        probed when named. Otherwise a name, a module, or a list whose items are

        * a module name (as in ``model.named_modules()``, dotted for nested
          modules) or a module: an ``nn.Linear``/``nn.Conv2d`` (the layer's output
          is then its pre-activation), or a block such as
          ``Sequential(Linear, ReLU)``, a ResNet stage or a residual block, whose
          first ``nn.Linear``/``nn.Conv2d`` holds :math:`W_l` and whose output is
          the layer's output;
        * a pair ``(weight_layer, activation)`` of names or modules.

    Returns
    -------
    layers : list of _Layer
        ``name``, ``linear`` (the ``nn.Linear`` or ``nn.Conv2d`` whose input is
        :math:`\\Phi(X)`), ``output`` (the module whose output is the layer's
        output) and ``block`` (the named module, whose input the total gradient
        of ``gradient="total"`` is taken with respect to).

    Examples
    --------
    >>> from torch import nn
    >>> from skdnc.nn import find_layers
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.GELU(),
    ...                     nn.Linear(8, 3))
    >>> [(layer.name, type(layer.output).__name__) for layer in find_layers(net)]
    [('0', 'GELU')]
    """
    names = {id(m): name for name, m in model.named_modules()}

    def resolve(item):
        if isinstance(item, str):
            try:
                return item, model.get_submodule(item)
            except AttributeError as exc:
                raise ValueError(f"model has no submodule named {item!r}.") from exc
        if isinstance(item, nn.Module):
            if id(item) not in names:
                raise ValueError(f"{item!r} is not a submodule of the model.")
            return names[id(item)], item
        raise TypeError(
            "layers must hold module names, modules or (linear, activation) pairs; "
            f"got {item!r}."
        )

    if layers is None:
        if not isinstance(model, HeadedNetwork):
            return _detect(model)
        layers = list(model.head_layers)
    found = []
    for item in _as_list(layers):
        if isinstance(item, tuple):
            if len(item) != 2:
                raise ValueError(f"A layer pair must be (linear, activation): {item}.")
            name, linear = resolve(item[0])
            _, output = resolve(item[1])
            block = linear
        else:
            name, output = resolve(item)
            block = output
            linear = next(
                (m for m in output.modules() if isinstance(m, _WEIGHT_TYPES)), None
            )
        if not isinstance(linear, _WEIGHT_TYPES):
            raise ValueError(
                f"Layer {name!r} holds no nn.Linear or nn.Conv2d. To measure "
                "collapse at its output, use layer_collapse."
            )
        _check_weight(name, linear)
        found.append(_Layer(name, linear, output, block, names[id(linear)]))
    if not found:
        raise ValueError("layers must name at least one layer.")
    return found
