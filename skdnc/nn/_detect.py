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

from skdnc.nn._common import (
    as_input,
    eval_mode,
    forward,
    model_device,
    model_dtype,
    take,
)
from skdnc.nn._models import HeadedNetwork

__all__ = ["find_layers", "weight_matrix"]

_WEIGHT_TYPES = (nn.Linear, nn.Conv2d)

# Every module with a weight matrix or filter bank: named when not probed.
_ALL_WEIGHTS = (nn.Linear, nn.modules.conv._ConvNd)

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
    :func:`torch.nn.functional.unfold` patches (dilation and stride change
    which input pixels a patch holds, not the matrix).

    Raises
    ------
    ValueError
        For a grouped or transposed convolution, or any other module: their
        weight tensors are not the matrix of the layer's map (a transposed
        convolution stores ``(c_in, c_out, q, r)``, a grouped one block-diagonal
        filters), and reshaping them would give a wrong matrix silently.
    """
    reason = unprobed_reason(module)
    if reason is not None or not isinstance(module, _WEIGHT_TYPES):
        raise ValueError(
            f"weight_matrix takes an nn.Linear or an ungrouped nn.Conv2d; got "
            f"{reason or type(module).__name__}."
        )
    W = module.weight.detach().to("cpu", torch.float64)
    return W.reshape(W.shape[0], -1)


def unprobed_reason(module):
    """Why a weight module cannot be probed (its AGOP is not ``W'GW`` of
    :func:`weight_matrix`), or None for an ``nn.Linear`` or ungrouped
    ``nn.Conv2d``."""
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return (
            f"a transposed convolution ({type(module).__name__}), whose patch AGOP "
            "is not implemented"
        )
    if isinstance(module, nn.Conv2d):
        if module.groups == 1:
            return None
        return (
            f"a grouped convolution (groups={module.groups}), whose filters are "
            "block-diagonal"
        )
    if isinstance(module, nn.modules.conv._ConvNd):
        return f"a {type(module).__name__} (only Linear and Conv2d are probed)"
    return None


@dataclass
class _Layer:
    """A probed layer: the weight module holding :math:`W_l` (``linear``, an
    ``nn.Linear`` or ``nn.Conv2d``), the module whose output is the layer's output,
    and the block whose input the total gradient is taken with respect to.
    ``bare``: the named item is the weight module itself, so the layer's output is
    its pre-activation."""

    name: str
    linear: nn.Module
    output: nn.Module
    block: nn.Module = None
    weight_name: str = ""
    bare: bool = False

    @property
    def kind(self):
        return "conv2d" if isinstance(self.linear, nn.Conv2d) else "linear"


def _as_list(layers):
    """A single name or module, or a sequence of items, as a list of items."""
    if isinstance(layers, (str, nn.Module)):
        return [layers]
    return list(layers)


def _check_weight(name, module):
    reason = unprobed_reason(module)
    if reason is not None:
        raise ValueError(
            f"Layer {name!r} is {reason}: the patch AGOP W'GW of its weight does "
            "not apply. Probe its output with layer_collapse instead."
        )


class _Trace:
    """One forward pass on a few samples, recording which modules run, in which
    order, and which activation module consumes each weight layer's output.

    A weight layer's output is followed through normalisation and dropout modules
    (by tensor identity: the tensor a module returns is the one the next takes,
    unchanged since: an in-place ``h += identity`` changes its version); the first
    activation module whose input is that tensor is the layer's activation. A
    sum, a concatenation or a function in ``forward`` breaks the chain, so a
    residual branch ``relu(bn(conv(h)) + h)`` has no activation.
    """

    def __init__(self, model, x):
        self.names = {id(m): name for name, m in model.named_modules()}
        self.order = {}  # id(module) -> rank of its first call
        self.last = {}  # id(module) -> rank of its last call
        self.calls = 0
        self.consumers = {}  # weight name -> activation names, in call order
        self.keep = []  # the traced tensors, alive so that their ids stay unique
        origin = {}  # id(tensor) -> (weight layer it comes from, tensor version)
        source = {}  # id(module) -> weight layer its current input comes from

        def traced(t):
            """The weight layer an unmodified traced tensor comes from, or None."""
            if not isinstance(t, torch.Tensor) or id(t) not in origin:
                return None
            name, version = origin[id(t)]
            return name if t._version == version else None

        def mark(t, name):
            if isinstance(t, torch.Tensor):
                origin[id(t)] = (name, t._version)
                self.keep.append(t)

        def pre(module, args):
            rank = self.calls = self.calls + 1
            self.order.setdefault(id(module), rank)
            self.last[id(module)] = rank
            # checked before the module runs: an in-place activation bumps it
            source[id(module)] = traced(args[0]) if args else None

        def post(module, args, out):
            name = self.names[id(module)]
            came_from = source.pop(id(module), None)
            if isinstance(module, _ALL_WEIGHTS):
                if traced(out) is None:
                    mark(out, name)
            elif came_from is not None and isinstance(module, _PASS_THROUGH):
                mark(out, came_from)
            elif came_from is not None and isinstance(module, _ACTIVATIONS):
                found = self.consumers.setdefault(came_from, [])
                if name not in found:
                    found.append(name)

        handles = []
        try:
            for module in model.modules():
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post))
            with eval_mode(model), torch.no_grad():
                forward(model, x)
        finally:
            for handle in handles:
                handle.remove()
        self.keep = []

    def ran(self, module):
        return id(module) in self.order

    def first_run(self, modules):
        """The module of ``modules`` called first in the forward pass, or None."""
        ran = [m for m in modules if self.ran(m)]
        return min(ran, key=lambda m: self.order[id(m)]) if ran else None

    def weights(self, model):
        """``(name, module)`` of every weight module, in call order (those that
        did not run last, in registration order)."""
        items = [
            (n, m) for n, m in model.named_modules() if isinstance(m, _ALL_WEIGHTS)
        ]
        return sorted(items, key=lambda i: self.order.get(id(i[1]), len(self.order)))


class _RegistrationOrder(_Trace):
    """The pairing without data: a weight module followed among its siblings
    (after normalisation or dropout modules) by an activation module, in
    registration order, which may differ from execution order."""

    def __init__(self, model):
        self.names = {id(m): name for name, m in model.named_modules()}
        self.order = {id(m): k for k, m in enumerate(model.modules())}
        self.last = self.order
        self.consumers = {}
        for parent_name, parent in model.named_modules():
            children = list(parent.named_children())
            for i, (child_name, child) in enumerate(children):
                if not isinstance(child, _ALL_WEIGHTS):
                    continue
                j = i + 1
                while j < len(children) and isinstance(children[j][1], _PASS_THROUGH):
                    j += 1
                if j < len(children) and isinstance(children[j][1], _ACTIVATIONS):
                    prefix = f"{parent_name}." if parent_name else ""
                    self.consumers[prefix + child_name] = [prefix + children[j][0]]


def _not_run(name, model):
    """Why a weight module did not run as a module, for the messages."""
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    if isinstance(parent, nn.MultiheadAttention):
        return (
            "it did not run as a module: nn.MultiheadAttention applies its "
            "out_proj weight through F.multi_head_attention_forward, never calling "
            "the module (name the attention block, e.g. a TransformerEncoderLayer, "
            "or measure the MultiheadAttention's output with layer_collapse and "
            "output_fn=0)"
        )
    return "it did not run as a module in the model's forward pass"


def _traced_detect(model, trace):
    """The MLP layers of ``model`` in execution order, or its convolutional layers
    if it has none, with every weight module left out named with the reason."""
    weights = trace.weights(model)
    modules = dict(model.named_modules())
    reasons, pairs = {}, {nn.Linear: [], nn.Conv2d: []}
    for name, module in weights:
        consumers = trace.consumers.get(name, [])
        if unprobed_reason(module) is not None:
            reasons[name] = unprobed_reason(module)
        elif not trace.ran(module):
            reasons[name] = _not_run(name, model)
        elif len(consumers) > 1:
            reasons[name] = (
                f"its output feeds several activation modules {consumers}; name the "
                "pair to probe, e.g. layers=[(weight_layer, activation)]"
            )
        elif not consumers:
            reasons[name] = (
                "no activation module takes its output (a residual sum, a "
                "concatenation, a functional activation such as F.relu, or none)"
            )
        else:
            kind = nn.Conv2d if isinstance(module, nn.Conv2d) else nn.Linear
            act = modules[consumers[0]]
            pairs[kind].append(_Layer(name, module, act, module, name))
    kind = nn.Linear if pairs[nn.Linear] else nn.Conv2d
    found = pairs[kind]
    if kind is nn.Linear:
        for layer in pairs[nn.Conv2d]:
            reasons[layer.name] = (
                "a convolution of a model whose MLP layers are the ones detected"
            )
    linears = [n for n, m in weights if isinstance(m, nn.Linear) and trace.ran(m)]
    if linears and linears[-1] in reasons and "no activation" in reasons[linears[-1]]:
        del reasons[linears[-1]]  # the readout: its NFA is 1 by construction
    _report(found, kind, reasons, weights)
    return found


def _report(found, kind, reasons, weights):
    """The error (nothing found) or warning (some left out) of detection."""
    by_reason = {}
    for name, reason in reasons.items():
        by_reason.setdefault(reason, []).append(name)
    why = "; ".join(f"{names}: {reason}" for reason, names in by_reason.items())
    if not found:
        listed = [n for n, _ in weights]
        raise ValueError(
            "No MLP layers found: no nn.Linear or nn.Conv2d passes its output "
            "(through normalisation or dropout modules) to an activation module; "
            "functional activations (F.relu in forward) are invisible to "
            f"detection. Weight modules of the model: {listed or 'none'}"
            f"{' (' + why + ')' if why else ''}. Name the layers, or the blocks "
            "that hold them, with layers=[...], or a (weight_layer, activation) "
            "pair."
        )
    if reasons:
        warnings.warn(
            f"Probing {len(found)} {kind.__name__} layers; these weight modules are "
            f"not probed: {list(reasons)}. Why: {why}. Name them, or the blocks "
            "around them, with layers=[...] to probe them.",
            UserWarning,
            stacklevel=4,
        )


def find_layers(model, layers=None, *, X=None):
    """The layers of ``model`` that the probes measure.

    Parameters
    ----------
    model : torch.nn.Module
    layers : str, module or list, default=None
        ``None``: the blocks of ``model.head_layers`` for the
        :class:`HeadedNetwork` models of :mod:`skdnc.nn`; for any other model,
        its MLP layers: every ``nn.Linear`` whose output an activation module
        (ReLU, GELU, ...) takes, with normalisation (BatchNorm, LayerNorm, ...)
        and dropout modules allowed in between, in the order they run; in a
        model without MLP layers, every ``nn.Conv2d`` paired in the same way.
        With ``X`` the pairing follows a forward pass (which module takes which
        tensor); without it, the registration order of siblings, which may
        differ from execution order (a squeeze-excitation block, a
        ``TransformerEncoderLayer`` with an activation module). A warning names
        every weight module left out and why (no activation takes its output, it
        is a grouped or transposed convolution, it did not run as a module as
        ``MultiheadAttention.out_proj``), except a final ``Linear``, the readout.
        Convolutions alongside MLP layers, and layers whose activation is a
        function in ``forward`` (``F.relu``), are probed when named. Otherwise a
        name, a module, or a list whose items are

        * a module name (as in ``model.named_modules()``, dotted for nested
          modules) or a module: an ``nn.Linear``/``nn.Conv2d`` (the layer's output
          is then its pre-activation, and :func:`probe_network` warns that its
          SVD split is degenerate), or a block such as
          ``Sequential(Linear, ReLU)``, a ResNet stage, a residual block or a
          transformer block, whose first ``nn.Linear``/``nn.Conv2d`` to run (with
          ``X``; the first registered without it) holds :math:`W_l` and whose
          output is the layer's output. In a transformer block that is the MLP's
          first ``Linear``: ``MultiheadAttention.out_proj`` never runs as a
          module (a warning says so);
        * a pair ``(weight_layer, activation)`` of names or modules.

        Grouped (depthwise) and transposed convolutions, and ``Conv1d``/
        ``Conv3d``, are refused with an error: their AGOP is not ``W'GW`` of
        :func:`weight_matrix`. Dilated and strided ``Conv2d`` are probed (their
        patches are the dilated, strided windows).
    X : array-like, tensor, or tuple or dict of them, default=None
        Inputs in the model's input shape; the first few rows run through the
        model once to pair layers by execution order and to check that the named
        modules run. The probes pass their first batch.

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
    trace = None
    if X is not None:
        x = as_input(take(X, slice(0, 4)), model_device(model), model_dtype(model))
        trace = _Trace(model, x)

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
            return _traced_detect(model, trace or _RegistrationOrder(model))
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
            linear = _block_weight(model, name, output, trace)
        if isinstance(linear, _ALL_WEIGHTS):
            _check_weight(name, linear)
        if not isinstance(linear, _WEIGHT_TYPES):
            raise ValueError(
                f"Layer {name!r} holds no nn.Linear or nn.Conv2d. To measure "
                "collapse at its output, use layer_collapse."
            )
        if trace is not None:
            _check_runs(model, name, names[id(linear)], linear, output, trace)
        layer = _Layer(name, linear, output, block, names[id(linear)])
        layer.bare = output is linear
        found.append(layer)
    if not found:
        raise ValueError("layers must name at least one layer.")
    return found


def _block_weight(model, name, block, trace):
    """The weight module of a named block: its first ``Linear``/``Conv2d`` to run
    (the first registered without a trace), or None."""
    weights = [m for m in block.modules() if isinstance(m, _ALL_WEIGHTS)]
    if trace is None or not weights:
        return weights[0] if weights else None
    first = trace.first_run(weights)
    if first is None:
        return weights[0]  # _check_runs says it did not run
    if first is not weights[0]:
        names = {id(m): n for n, m in model.named_modules()}
        skipped = names[id(weights[0])]
        warnings.warn(
            f"Block {name!r}: its first registered weight layer {skipped!r} is not "
            f"probed ({_not_run(skipped, model)}); W_l is that of "
            f"{names[id(first)]!r}, the first weight layer that runs as a module.",
            UserWarning,
            stacklevel=4,
        )
    return first


def _check_runs(model, name, weight_name, linear, output, trace):
    """A named layer's weight module and output module run, in that order."""
    if not trace.ran(linear):
        raise ValueError(
            f"Layer {name!r}: {weight_name!r} {_not_run(weight_name, model)}."
        )
    if not trace.ran(output):
        raise ValueError(
            f"Layer {name!r}: its output module did not run in the model's forward "
            "pass."
        )
    inside = any(m is linear for m in output.modules())
    if not inside and trace.last[id(output)] < trace.order[id(linear)]:
        takes = trace.consumers.get(weight_name)
        hint = (
            f" The activation that takes its output is {takes[0]!r}." if takes else ""
        )
        raise ValueError(
            f"Layer {name!r}: its output module {trace.names[id(output)]!r} runs "
            f"only before {weight_name!r} (registration order is not execution "
            f"order).{hint} Name a (weight_layer, activation) pair that runs in "
            "this order."
        )
