"""Per-layer probes of a network: AGOP, the Neural Feature Ansatz, NC1 by SVD stage,
and collapse at any module.

For a weight layer :math:`z = W_l h_l + b` (an ``nn.Linear``, or an ``nn.Conv2d``
acting on patches) followed by :math:`h_{l+1} = \\sigma(\\ldots z)` in a network
:math:`f: x \\mapsto \\mathbb R^K`, with :math:`\\Phi(X)` the layer's input over
the data and :math:`W_l = U_l S_l V_l^\\top`, the probes measure

* the AGOP of the network output with respect to the layer's input,
  :math:`\\mathrm{AGOP}_l = \\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}`,
  :math:`J_{ic} = \\partial f_c(x_i) / \\partial h_l`. With :math:`g_{ic} =
  \\partial f_c / \\partial z` (the gradient at the pre-activation),
  :math:`J_{ic} = g_{ic}^\\top W_l`, so :math:`\\mathrm{AGOP}_l = W_l^\\top G_l W_l`
  with the width-by-width :math:`G_l = \\frac1n \\sum_{i,c} g_{ic} g_{ic}^\\top`:
  the *pre-activation trick* (``dmbeaglehole/centered_NFA``), one backward pass per
  output instead of a Jacobian with respect to every input coordinate;
* for a convolution with weight :math:`(c_{out}, c_{in}, q, r)`, :math:`W_l` is
  the filter matrix :math:`c_{out} \\times c_{in} q r` and every patch of every
  input is its own variable: the *patch AGOP* sums the outer products over
  outputs and patch positions and averages over samples (Beaglehole et al.,
  "Mechanism of feature learning in convolutional neural networks", 2023), and
  :math:`G_l` sums :math:`g g^\\top` over positions as well. A ``Linear`` applied
  to token sequences ``(n, T, d)`` is treated the same way, tokens as positions;
* the Neural Feature Ansatz (NFA) correlation between the neural feature matrix
  :math:`W_l^\\top W_l` and :math:`\\mathrm{AGOP}_l^{1/2}` (and
  :math:`\\mathrm{AGOP}_l`);
* NC1 and NC2 of three stages: the input :math:`\\Phi(X)`, the right singular
  structure :math:`S_l V_l^\\top \\Phi(X)` and the output
  :math:`\\sigma(U_l S_l V_l^\\top \\Phi(X))`. Because :math:`U_l` has orthonormal
  columns, :math:`S_l V_l^\\top \\Phi(X)` has the Gram matrix, hence the NC1 and
  NC2, of :math:`W_l \\Phi(X)`, which is what is measured (for a convolution,
  patch by patch: the map :math:`W_l * \\Phi(X)` without bias).

Every measurement streams over batches (arrays, tensors, or a DataLoader of
``(x, y)`` batches): class statistics accumulate in
:class:`skdnc.metrics.CollapseAccumulator` and :math:`G_l` as a running sum, so
memory does not grow with the number of samples.

The probed layers are found from ``model.head_layers`` (only for the
:class:`~skdnc.nn.HeadedNetwork` models of :mod:`skdnc.nn`), from every
``Linear``/``Conv2d`` followed, after any normalisation or dropout modules, by an
activation module, or named by the user; every ``Linear``/``Conv2d`` left out is
named in a warning.
"""

import contextlib
import warnings
from dataclasses import dataclass, field
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils._param_validation import Interval, validate_params
from torch import nn
from torch.func import jacrev, vmap

from skdnc._backend import import_pandas, resolve_device, to_numpy, to_tensor
from skdnc._linalg import psd_eigh, psd_power
from skdnc.metrics import CollapseAccumulator
from skdnc.metrics._collapse import STAGES
from skdnc.metrics._readout import _nc3_from_means, _nearest_mean
from skdnc.nn._common import (
    as_batches,
    as_input,
    eval_mode,
    model_device,
    model_dtype,
    run_model,
    select_output,
)
from skdnc.nn._models import HeadedNetwork

__all__ = [
    "CollapseProbe",
    "NetworkProbe",
    "find_layers",
    "layer_agops",
    "layer_collapse",
    "nfa_correlation",
    "probe_network",
]

#: What every probe validates of its arguments (scikit-learn style errors).
_validate_probe_params = validate_params(
    {
        "model": [nn.Module],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)

#: Feature-map reductions of :func:`layer_collapse` and :func:`probe_network`.
REDUCTIONS = ("flatten", "avgpool")

#: Gradients of :func:`layer_agops` and :func:`probe_network`.
GRADIENTS = ("layer", "total")

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

# Re-exported for skdnc._nfa, which imports it from here.
_model_device = model_device


# -- NFA correlation ---------------------------------------------------------------
def nfa_correlation(A, B, *, centered=True):
    """Correlation of the entries of two matrices, as the NFA is measured.

    ``centered=True`` (the paper's ``mat_cov``): subtract each matrix's scalar mean
    entry, then take the cosine of the flattened matrices, i.e. the Pearson
    correlation of the entries. ``centered=False``: the plain cosine
    :math:`\\langle A, B\\rangle_F / (\\|A\\|_F \\|B\\|_F)`. Computed in float64.

    Parameters
    ----------
    A, B : array-like or torch.Tensor of the same shape
    centered : bool, default=True

    Returns
    -------
    corr : float
        In ``[-1, 1]``; NaN when a (centred) matrix is zero.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.nn import nfa_correlation
    >>> A = np.array([[2.0, 1.0], [1.0, 3.0]])
    >>> round(nfa_correlation(A, 5 * A + 7), 12), round(nfa_correlation(A, -A), 12)
    (1.0, -1.0)
    """
    a = to_tensor(A, "cpu", torch.float64).reshape(-1)
    b = to_tensor(B, "cpu", torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(
            f"A and B must have the same shape; got {tuple(np.shape(A))} and "
            f"{tuple(np.shape(B))}."
        )
    if centered:
        a = a - a.mean()
        b = b - b.mean()
    denom = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(b)
    if denom == 0:
        return float("nan")
    return float((a @ b) / denom)


def _gram_correlation(P, Q, *, centered=True):
    """:func:`nfa_correlation` of ``P'P`` and ``Q'Q`` without forming them.

    With ``A = P'P``, ``B = Q'Q`` (``d x d``): ``<A, B> = ||P Q'||_F^2``, the sum of
    the entries of ``A`` is ``||P 1||^2``, and ``||A||_F = ||P P'||_F``; all cost
    ``r^2 d`` for ``r``-row factors, so a 8192-wide input layer needs no
    ``8192 x 8192`` matrix.
    """
    d = P.shape[1]
    inner = torch.linalg.matrix_norm(P @ Q.T) ** 2
    nA = torch.linalg.matrix_norm(P @ P.T) ** 2
    nB = torch.linalg.matrix_norm(Q @ Q.T) ** 2
    if centered:
        sA = torch.linalg.vector_norm(P.sum(dim=1)) ** 2
        sB = torch.linalg.vector_norm(Q.sum(dim=1)) ** 2
        inner = inner - sA * sB / d**2
        nA = nA - sA**2 / d**2
        nB = nB - sB**2 / d**2
    denom = torch.sqrt(nA.clamp(min=0) * nB.clamp(min=0))
    if denom == 0:
        return float("nan")
    return float((inner / denom).clamp(-1.0, 1.0))


def weight_matrix(module):
    """:math:`W_l` of a weight layer in float64 on the CPU.

    ``nn.Linear``: its weight ``(d_out, d_in)``. ``nn.Conv2d``: the filters as a
    ``c_out x (c_in q r)`` matrix, in the ``(c_in, q, r)`` order of
    :func:`torch.nn.functional.unfold` patches.
    """
    W = module.weight.detach().to("cpu", torch.float64)
    return W.reshape(W.shape[0], -1)


# -- finding the layers ------------------------------------------------------------
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


# -- capturing layer inputs, outputs and gradients ---------------------------------
def _without_bias(module, out):
    z = out.detach().clone()
    if module.bias is not None:
        bias = module.bias.detach()
        if isinstance(module, nn.Conv2d):
            bias = bias.view(-1, *([1] * (z.ndim - 2)))
        z -= bias
    return z


class _Capture:
    """Hooks that record each layer's stages and perturb what gradients are taken of.

    With ``gradient="layer"`` a zero perturbation :math:`p_l` (requiring grad) is
    added to each weight module's output, so :math:`\\partial f_c / \\partial p_l`
    is the pre-activation gradient :math:`g`; with ``gradient="total"`` it is added
    to the block's input, so the gradient is the total one through every path of
    the block. Only the first call of a module in a forward pass counts. Outputs
    are matched to layers in the order the weight modules ran, so an activation
    module shared by several layers (as in torchvision's ResNet blocks) is
    handled.
    """

    def __init__(self, found, *, gradient=None, stages=True, output_fn=None):
        self.found = found
        self.gradient = gradient
        self.stages = stages
        self.output_fn = output_fn
        self.handles = []

    def __enter__(self):
        self.reset()
        for index, layer in enumerate(self.found):
            if self.gradient == "total":
                self.handles.append(
                    layer.block.register_forward_pre_hook(self._block_hook(index))
                )
            if self.stages:
                self.handles.append(
                    layer.linear.register_forward_pre_hook(self._pre_hook(index))
                )
            self.handles.append(
                layer.linear.register_forward_hook(self._weight_hook(index))
            )
        if self.stages:
            for module in {id(l.output): l.output for l in self.found}.values():
                self.handles.append(module.register_forward_hook(self._output_hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def reset(self):
        n = len(self.found)
        self.inputs, self.right, self.outputs = [None] * n, [None] * n, [None] * n
        self.perts, self.returned, self.ran = [None] * n, [None] * n, [False] * n
        self.pending = []

    def check(self):
        lists = [self.ran]
        if self.stages:
            lists.append(self.outputs)
        if self.gradient is not None:
            lists.append(self.perts)
        missing = sorted(
            {
                l.name
                for values in lists
                for l, v in zip(self.found, values)
                if v is None or v is False
            }
        )
        if missing:
            raise ValueError(
                f"Layers {missing} did not run (or their output module did not run "
                "after them) in the model's forward pass. Name modules that run, "
                "e.g. with layers=[...] or a (weight_layer, activation) pair."
            )

    def stage_features(self, index):
        return self.inputs[index], self.right[index], self.outputs[index]

    def _block_hook(self, index):
        def hook(module, args):
            if self.perts[index] is not None or not args:
                return None
            x = args[0]
            if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3):
                shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
                raise ValueError(
                    f"gradient='total' takes the gradient with respect to the input "
                    f"of block {self.found[index].name!r}, which must be (n, d) or "
                    f"(n, tokens, d); got {shape}. Use gradient='layer' (the patch "
                    "AGOP for convolutions)."
                )
            p = torch.zeros_like(x, requires_grad=True)
            self.perts[index] = p
            return (x + p, *args[1:])

        return hook

    def _pre_hook(self, index):
        def hook(module, args):
            if self.inputs[index] is None:
                self.inputs[index] = args[0].detach().clone()

        return hook

    def _weight_hook(self, index):
        def hook(module, args, out):
            if self.ran[index]:
                return None
            self.ran[index] = True
            self.pending.append(index)
            if self.stages:
                self.right[index] = _without_bias(module, out)
            if self.gradient == "layer":
                p = torch.zeros_like(out, requires_grad=True)
                self.perts[index] = p
                out = out + p
                self.returned[index] = out
                return out
            self.returned[index] = out
            return None

        return hook

    def _output_hook(self, module, args, out):
        for k, index in enumerate(self.pending):
            if self.found[index].output is module:
                name = f"layer {self.found[index].name!r}"
                out = select_output(out, self.output_fn, name, "output_fn")
                self.outputs[index] = out.detach().clone()
                del self.pending[k]
                return


def _check_options(reduction, gradient=None):
    if not (callable(reduction) or reduction in REDUCTIONS):
        raise ValueError(
            f"reduction must be one of {REDUCTIONS} or a callable; got {reduction!r}."
        )
    if gradient is not None and gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}; got {gradient!r}.")


def _reduce(Z, reduction):
    """Features ``(n, d)`` from a layer output under the stated reduction."""
    if callable(reduction):
        Z = reduction(Z)
    elif Z.ndim > 2 and reduction == "flatten":
        Z = Z.flatten(1)
    elif Z.ndim > 2:
        Z = Z.mean(dim=tuple(range(2, Z.ndim)))
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2:
        raise ValueError(
            f"The reduction must give (n_samples, n_features); got {tuple(Z.shape)}."
        )
    return Z


def _labels(y):
    if y is None:
        raise ValueError(
            "The batches carry no labels: the collapse measurements need (x, y) "
            "batches, or arrays X and y."
        )
    return to_numpy(y) if isinstance(y, torch.Tensor) else np.asarray(y)


def _warn_readout(cap, out):
    for index, layer in enumerate(cap.found):
        if cap.returned[index] is out:
            warnings.warn(
                f"Layer {layer.name!r} is the network's linear readout: its output "
                "is the model output, so its AGOP is exactly W'W and its NFA "
                "correlation with the AGOP is 1 by construction, not a measurement.",
                UserWarning,
                stacklevel=4,
            )


def _sweep(
    model,
    batches,
    found,
    *,
    device,
    gradient,
    stages,
    output_fn,
    model_output,
    on_batch,
):
    """Run ``model`` over the batches in eval mode with the capture hooks; call
    ``on_batch(cap, out, y)`` for each. Hooks are removed and the model's mode
    restored whatever happens."""
    dtype = model_dtype(model)
    first = True
    with (
        eval_mode(model),
        _Capture(found, gradient=gradient, stages=stages, output_fn=output_fn) as cap,
    ):
        for xb, yb in batches():
            cap.reset()
            xb = as_input(xb, device, dtype)
            with torch.set_grad_enabled(gradient is not None):
                out = run_model(model, xb, model_output)
                cap.check()
                if first and gradient is not None:
                    _warn_readout(cap, out)
                first = False
                on_batch(cap, out, yb)


def _gradient_rows(g, layer, gradient):
    """Per-position gradient vectors as rows (positions and tokens as rows)."""
    if gradient == "layer" and layer.kind == "conv2d":
        g = g.movedim(1, -1)
    return g.detach().reshape(-1, g.shape[-1]).to(torch.float64)


def _accumulate_gradients(cap, out, G, gradient):
    """Add ``sum_c g_c' g_c`` of the batch to every layer's ``G``."""
    K = out.shape[1]
    for c in range(K):
        grads = torch.autograd.grad(
            out[:, c].sum(), cap.perts, retain_graph=c < K - 1, allow_unused=True
        )
        for index, g in enumerate(grads):
            if g is None:
                g = torch.zeros_like(cap.perts[index])
            rows = _gradient_rows(g, cap.found[index], gradient)
            gg = rows.T @ rows
            G[index] = gg if G[index] is None else G[index] + gg


def _gradient_sweep(
    model,
    batches,
    found,
    *,
    device,
    gradient,
    model_output,
    stages=False,
    output_fn=None,
    on_batch=None,
):
    """``G_l`` summed over outputs and positions, averaged over samples."""
    G = [None] * len(found)
    count = [0]

    def step(cap, out, yb):
        _accumulate_gradients(cap, out, G, gradient)
        count[0] += out.shape[0]
        if on_batch is not None:
            on_batch(cap, out, yb)

    _sweep(
        model,
        batches,
        found,
        device=device,
        gradient=gradient,
        stages=stages,
        output_fn=output_fn,
        model_output=model_output,
        on_batch=step,
    )
    if count[0] == 0:
        raise ValueError("X holds no samples.")
    return [g.cpu() / count[0] for g in G]


def _resolve_device(model, device):
    return model_device(model) if device is None else resolve_device(device)


def _unlabelled(X, y):
    """``(X, y)`` for :func:`as_batches` where labels are not needed."""
    if y is None and (
        isinstance(X, (torch.Tensor, np.ndarray)) or hasattr(X, "__array__")
    ):
        return X, np.zeros(len(X))
    if y is None:
        return _InputsOnly(X), None
    return X, y


class _InputsOnly:
    """A stream whose batches may be inputs only (no labels)."""

    def __init__(self, stream):
        self.stream = stream

    def __iter__(self):
        for batch in self.stream:
            if isinstance(batch, (tuple, list)):
                yield batch
            else:
                yield batch, None


# -- AGOP ------------------------------------------------------------------------------
@_validate_probe_params
def layer_agops(
    model,
    X,
    y=None,
    *,
    layers=None,
    method="preactivation",
    gradient="layer",
    batch_size=256,
    device=None,
    model_output=None,
):
    """AGOP of the network output with respect to each probed layer's input.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode (its mode is restored afterwards).
    X : array-like, torch.Tensor, DataLoader or iterable of batches
        Inputs in the model's input shape, or batches of inputs or of ``(x, y)``
        pairs (labels are not used), accumulated one batch at a time.
    y : None
        Not used; accepted so that ``(X, y)`` arrays can be passed as elsewhere.
    layers : str, module or list, default=None
        See :func:`find_layers`.
    method : {"preactivation", "jacobian"}, default="preactivation"
        ``"preactivation"``: from the gradients at the weight layer's output
        (:math:`W_l^\\top G_l W_l`, one backward pass per output) or, with
        ``gradient="total"``, at the perturbed block input. ``"jacobian"``: per
        sample Jacobians of the output with ``torch.func.vmap(jacrev(...))`` of a
        forward pass in which the layer's input (a convolution's unfolded patches,
        or the block's input for ``gradient="total"``) is substituted, an
        independent reference.
    gradient : {"layer", "total"}, default="layer"
        ``"layer"``: the gradient through the weight layer only, i.e. with respect
        to the weight layer's input as its own variable (for a convolution, each
        patch). ``"total"``: the total gradient with respect to the input of the
        named block, through every path inside it (a residual connection
        ``h + relu(fc(h))`` included) and after it; the AGOP is then formed
        directly from these gradients. Both are the same for a plain MLP layer.
    batch_size : int, default=256
        Rows per batch for array input.
    device : str or torch.device, default=None
        ``None``: where the model's parameters are.
    model_output : int, str or callable, default=None
        Selects the scores from a model that returns a tuple or dict.

    Returns
    -------
    agops : list of torch.Tensor of shape (d_l, d_l), float64, on the CPU
        :math:`\\frac1n \\sum_i \\sum_c J_{ic}^\\top J_{ic}` (summed over patch
        positions or tokens as well); ``d_l = c_in q r`` for a convolution.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skdnc.nn import layer_agops
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
    ...                     nn.Linear(4 * 6 * 6, 3)).double()
    >>> X = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    >>> [tuple(A.shape) for A in layer_agops(net, X)]
    [(9, 9)]
    """
    found = find_layers(model, layers)
    _check_options("flatten", gradient)
    device = _resolve_device(model, device)
    batches, _ = as_batches(*_unlabelled(X, y), batch_size)
    if method == "preactivation":
        G = _gradient_sweep(
            model,
            batches,
            found,
            device=device,
            gradient=gradient,
            model_output=model_output,
        )
        if gradient == "total":
            return G
        agops = []
        for layer, Gl in zip(found, G):
            W = weight_matrix(layer.linear)
            agops.append(W.T @ Gl @ W)
        return agops
    if method != "jacobian":
        raise ValueError(
            f"method must be 'preactivation' or 'jacobian'; got {method!r}."
        )
    return _jacobian_agops(
        model,
        batches,
        found,
        device=device,
        gradient=gradient,
        model_output=model_output,
    )


def _patches(conv, h):
    """Unfolded patches ``(n, c_in q r, positions)`` of a convolution's input."""
    padding = conv.padding
    if isinstance(padding, str):
        if padding != "valid":
            raise ValueError(
                "method='jacobian' needs explicit convolution padding; got "
                f"padding={padding!r}."
            )
        padding = 0
    if conv.padding_mode != "zeros":
        raise ValueError(
            "method='jacobian' supports zero padding only; got padding_mode="
            f"{conv.padding_mode!r}."
        )
    return F.unfold(
        h, conv.kernel_size, dilation=conv.dilation, padding=padding, stride=conv.stride
    )


def _jacobian_agops(model, batches, found, *, device, gradient, model_output):
    """AGOPs from per-sample Jacobians with respect to the substituted variable."""
    dtype = model_dtype(model)
    acc = [None] * len(found)
    count = 0
    with eval_mode(model):
        for xb, _ in batches():
            xb = as_input(xb, device, dtype)
            count += len(xb)
            for index, layer in enumerate(found):
                target = layer.block if gradient == "total" else layer.linear
                phi = _first_input(model, target, xb, model_output)
                if gradient == "layer" and layer.kind == "conv2d":
                    J = _patch_jacobian(model, layer.linear, xb, phi, model_output)
                    rows = J.movedim(-1, 1).reshape(-1, J.shape[2])
                else:
                    if gradient == "total" and phi.ndim not in (2, 3):
                        raise ValueError(
                            "gradient='total' needs a block input of shape (n, d) "
                            f"or (n, tokens, d); got {tuple(phi.shape)}."
                        )
                    J = _input_jacobian(model, target, xb, phi, model_output)
                    rows = J.reshape(-1, phi.shape[-1])
                rows = rows.detach().to("cpu", torch.float64)
                gg = rows.T @ rows
                acc[index] = gg if acc[index] is None else acc[index] + gg
    return [a / count for a in acc]


def _first_input(model, module, xb, model_output):
    """The input of ``module`` at its first call in ``model(xb)``."""
    seen = []

    def hook(mod, args):
        if not seen:
            seen.append(args[0].detach().clone())

    handle = module.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            run_model(model, xb, model_output)
    finally:
        handle.remove()
    return seen[0]


def _once(fn):
    """Apply ``fn`` at the first call of a module in a forward pass only."""
    state = {"done": False}

    def wrapped(*args):
        if state["done"]:
            return None
        state["done"] = True
        return fn(*args)

    return wrapped


def _input_jacobian(model, module, X, Phi, model_output):
    """Per-sample Jacobians ``d model(x_i) / d phi_i`` with ``phi_i`` substituted
    for the input of ``module``, shape ``(n, K, *phi.shape[1:])``."""

    def single(phi, x):
        def substitute(mod, args):
            return (phi.unsqueeze(0), *args[1:])

        handle = module.register_forward_pre_hook(_once(substitute))
        try:
            return run_model(model, x.unsqueeze(0), model_output).squeeze(0)
        finally:
            handle.remove()

    return vmap(jacrev(single), in_dims=(0, 0))(Phi, X)


def _patch_jacobian(model, conv, X, h, model_output):
    """Per-sample Jacobians with respect to a convolution's unfolded patches: the
    convolution's output is replaced by ``W_mat @ patches + b``, shape
    ``(n, K, c_in q r, positions)``."""
    P = _patches(conv, h)
    W = conv.weight.reshape(conv.out_channels, -1)

    def single(p, x):
        def substitute(mod, args, out):
            z = W @ p
            if mod.bias is not None:
                z = z + mod.bias[:, None]
            return z.reshape(1, *out.shape[1:])

        handle = conv.register_forward_hook(_once(substitute))
        try:
            return run_model(model, x.unsqueeze(0), model_output).squeeze(0)
        finally:
            handle.remove()

    return vmap(jacrev(single), in_dims=(0, 0))(P, X)


# -- the network's readout (NC3, NC4) -----------------------------------------------
def _find_readout(model, readout):
    """``(name, module)`` of the readout NC3/NC4 measure, or ``(None, None)``."""
    if readout is None:
        return None, None
    if readout == "auto":
        linears = [
            (name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)
        ]
        return linears[-1] if linears else (None, None)
    if not isinstance(readout, str):
        raise TypeError(
            f"readout must be 'auto', the name of a Linear submodule or None; got "
            f"{type(readout).__name__}."
        )
    try:
        module = model.get_submodule(readout)
    except AttributeError as exc:
        raise ValueError(f"readout: model has no submodule {readout!r}.") from exc
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"readout must name an nn.Linear (the network's linear classifier); "
            f"{readout!r} is a {type(module).__name__}."
        )
    return readout, module


def _output_rows(classes, n_outputs):
    """The readout row of each class: the label itself when the labels are output
    indices, else the class's place in sorted order when there are as many
    classes as outputs; None otherwise."""
    if np.issubdtype(classes.dtype, np.integer):
        if classes.min() >= 0 and classes.max() < n_outputs:
            return classes.astype(np.intp)
    if len(classes) == n_outputs:
        return np.arange(n_outputs)
    return None


class _Readout:
    """The readout's input, class means and NC4 count, over the probe's passes.

    A forward pre-hook keeps the readout's input of the first call in each
    forward pass; :meth:`collect` accumulates its class statistics (first pass),
    :meth:`count` compares the model's argmax with the nearest class mean
    (second pass).
    """

    def __init__(self, name, module, *, explicit):
        self.name, self.module, self.explicit = name, module, explicit
        self.acc = CollapseAccumulator()
        self.problem = None
        self.means = None
        self.disagree = 0
        self.seen = 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._hook)
        self.Z = None
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False

    def _hook(self, module, args):
        if self.Z is None and args and isinstance(args[0], torch.Tensor):
            self.Z = args[0].detach().clone()

    def _take(self, out):
        """The batch's readout input, or None (with ``problem`` set)."""
        Z, self.Z = self.Z, None
        if self.problem is not None:
            return None
        if Z is None:
            self.problem = "it did not run in the model's forward pass"
        elif Z.ndim != 2:
            self.problem = (
                f"its input has shape {tuple(Z.shape)}, not (n_samples, n_features)"
            )
        elif out.ndim != 2 or out.shape[1] != self.module.out_features:
            self.problem = (
                f"its {self.module.out_features} outputs are not the model's "
                f"{tuple(out.shape)} scores"
            )
        return None if self.problem else Z

    def collect(self, out, labels):
        Z = self._take(out)
        if Z is not None:
            self.acc.partial_fit(Z, labels)

    def finish_means(self):
        """Class statistics of the first pass; False when NC3/NC4 are undefined."""
        if self.problem is None and self.acc.n_samples_seen_:
            stats = self.acc.statistics()
            self.rows = _output_rows(stats.classes, self.module.out_features)
            if self.rows is None:
                self.problem = (
                    f"it has {self.module.out_features} outputs but the labels hold "
                    f"{stats.n_classes} classes that are not output indices"
                )
            else:
                self.stats = stats
                self.means = stats.means
        if self.problem is not None:
            message = (
                f"NC3 and NC4 are not measured: the readout {self.name!r} is not "
                f"the network's linear classifier ({self.problem})."
            )
            if self.explicit:
                raise ValueError(message + " Name the classifier with readout=.")
            warnings.warn(
                message + " Name it with readout=, or pass readout=None.",
                UserWarning,
                stacklevel=4,
            )
            return False
        return True

    def count(self, out):
        Z = self._take(out)
        if Z is None:
            return
        nearest = self.rows[_nearest_mean(to_numpy(Z, np.float64), self.means)]
        predicted = to_numpy(out.detach().argmax(dim=1))
        self.disagree += int(np.sum(predicted != nearest))
        self.seen += len(nearest)

    def nc3(self):
        W = to_numpy(self.module.weight.detach(), np.float64)[self.rows]
        return _nc3_from_means(self.stats.centered_means, W, "fro")

    def nc4(self):
        return self.disagree / self.seen


# -- the probe -------------------------------------------------------------------------
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
        How feature maps were reduced to vectors (``"flatten"``, ``"avgpool"`` or
        ``"callable"``).
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
            for k, Z in enumerate(cap.stage_features(index)):
                accs[index][k].partial_fit_within(_reduce(Z, reduction), labels)

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
        time, in float64.
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
    reduction : {"flatten", "avgpool"} or callable, default="flatten"
        How a feature map ``(n, c, h, w)`` becomes the vectors the collapse is
        measured on: ``"flatten"`` (``c h w`` features) or ``"avgpool"`` (the mean
        over every axis after the channel axis: ``c`` features). A callable maps
        the batch tensor to ``(n, d)`` (e.g. ``lambda z: z.mean(1)`` for token
        sequences ``(n, T, d)``). 2-D features are used as they are.
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
        construction), and from :func:`find_layers` when layers are left out.

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
    found = find_layers(model, layers)
    _check_options(reduction, gradient)
    device = _resolve_device(model, device)
    batches, _ = as_batches(X, y, batch_size)
    L = len(found)
    accs = [[CollapseAccumulator() for _ in STAGES] for _ in found]
    readout_name, module = _find_readout(model, readout)
    head = None
    if module is not None:
        head = _Readout(readout_name, module, explicit=readout != "auto")

    def collect(cap, out, yb):
        labels = _labels(yb)
        for index in range(L):
            for k, Z in enumerate(cap.stage_features(index)):
                accs[index][k].partial_fit(_reduce(Z, reduction), labels)
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


def _sqrt_factor(B):
    """A factor ``F`` with ``F'F = (B'B)^{1/2}``, from the smaller Gram matrix.

    With ``B = P Sigma Q'``: ``F = Sigma^{1/2} Q' = Sigma^{-1/2} P' B`` from the
    eigendecomposition ``B B' = P Sigma^2 P'`` (``r x r`` for ``r`` rows), or
    ``F = (B'B)^{1/4}`` when ``B`` has more rows than columns.
    """
    if B.shape[0] > B.shape[1]:
        return psd_power(B.T @ B, 0.25)
    evals, evecs = psd_eigh(B @ B.T)
    keep = evals > max(float(evals.max()), 0.0) * 1e-15
    if not keep.any():
        return torch.zeros_like(B)
    return (evecs[:, keep].T @ B) / evals[keep].pow(0.25)[:, None]


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


# -- collapse at any module --------------------------------------------------------
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


def _named_modules(model, layers):
    if layers is None:
        return [(layer.name, layer.output) for layer in find_layers(model)]
    names = {id(m): name for name, m in model.named_modules()}
    out = []
    for item in _as_list(layers):
        if isinstance(item, str):
            try:
                out.append((item, model.get_submodule(item)))
            except AttributeError as exc:
                raise ValueError(f"model has no submodule named {item!r}.") from exc
        elif isinstance(item, nn.Module) and id(item) in names:
            out.append((names[id(item)], item))
        else:
            raise TypeError(
                f"layers must hold submodule names or submodules; got {item!r}."
            )
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
):
    """NC1 and NC2 of the outputs of any named modules, streamed over batches.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode without gradients; its mode is restored and the hooks
        removed afterwards.
    X : array-like, torch.Tensor, DataLoader or iterable of (x, y) batches
        Inputs in the model's input shape, or batches of inputs and labels.
    y : array-like of shape (n_samples,), default=None
        Class labels for array input; ``None`` when ``X`` yields ``(x, y)``.
    layers : str, module or list, default=None
        Names as in ``model.named_modules()`` (dotted for nested modules, e.g.
        ``"layer1"``, ``"features.3"``, ``"encoder.layers.0"``; ``""`` is the
        model itself) or submodules. ``None``: the outputs of the layers
        :func:`find_layers` detects.
    reduction : {"flatten", "avgpool"} or callable, default="flatten"
        How an output with more than two axes becomes vectors: ``"flatten"``
        (every entry a feature) or ``"avgpool"`` (global average pooling: the mean
        over every axis after the channel axis 1, as ``AdaptiveAvgPool2d(1)``). A
        callable maps the batch tensor to ``(n, d)``; token sequences
        ``(n, T, d)`` want ``lambda z: z.mean(1)`` or ``lambda z: z[:, 0]``.
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
    _check_options(reduction)
    modules = _named_modules(model, layers)
    device = _resolve_device(model, device)
    batches, _ = as_batches(X, y, batch_size)
    dtype = model_dtype(model)
    accs = [CollapseAccumulator() for _ in modules]

    def selector(name):
        if isinstance(output_fn, dict):
            return output_fn.get(name)
        return output_fn

    def sweep(update):
        captured = [None] * len(modules)

        def hook_for(index, name):
            def hook(module, args, out):
                if captured[index] is None:
                    out = select_output(
                        out, selector(name), f"module {name!r}", "output_fn"
                    )
                    captured[index] = _reduce(out.detach(), reduction).clone()

            return hook

        handles = []
        try:
            for index, (name, module) in enumerate(modules):
                handles.append(module.register_forward_hook(hook_for(index, name)))
            with eval_mode(model), torch.no_grad():
                for xb, yb in batches():
                    captured[:] = [None] * len(modules)
                    model(as_input(xb, device, dtype))
                    labels = _labels(yb)
                    for index, Z in enumerate(captured):
                        if Z is None:
                            raise ValueError(
                                f"Module {modules[index][0]!r} did not run in the "
                                "model's forward pass."
                            )
                        update(accs[index], Z, labels)
        finally:
            for handle in handles:
                handle.remove()

    sweep(lambda acc, Z, labels: acc.partial_fit(Z, labels))
    if pinv:
        sweep(lambda acc, Z, labels: acc.partial_fit_within(Z, labels))
    return CollapseProbe(
        layer_names=[name for name, _ in modules],
        nc1=np.array([acc.nc1() for acc in accs]),
        nc1_pinv=np.array([acc.nc1("pinv") for acc in accs]) if pinv else None,
        nc2=np.array([acc.nc2() for acc in accs]),
        n_features=np.array([acc.n_features_ for acc in accs]),
        reduction=reduction if isinstance(reduction, str) else "callable",
        statistics=[acc.statistics() for acc in accs],
    )
