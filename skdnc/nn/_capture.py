"""Running a model over batches with hooks: each probed layer's input, its
output without bias (the :math:`S V^\\top` stage), its activation's output, and the
gradients of the model output at the layer (a zero perturbation added to the
weight module's output, or to the block's input), one batch at a time.

The reductions that turn a layer's output into ``(n_samples, n_features)`` vectors
live here too, as every probe applies them to what the hooks captured.
"""

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, validate_params
from torch import nn

from skdnc._backend import resolve_device, to_numpy
from skdnc.nn._common import (
    _is_multi,
    as_batches,
    as_input,
    batch_length,
    eval_mode,
    model_device,
    model_dtype,
    run_model,
    select_output,
)
from skdnc.nn._detect import find_layers

__all__ = ["GRADIENTS", "REDUCTIONS"]

#: What every probe validates of its arguments (scikit-learn style errors).
_validate_probe_params = validate_params(
    {
        "model": [nn.Module],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    },
    prefer_skip_nested_validation=True,
)

#: Reductions of :func:`layer_collapse` and :func:`probe_network`: of feature maps
#: ``(n, c, h, w)`` (``"flatten"``, ``"avgpool"``) and of token sequences
#: ``(n, tokens, dim)`` (``"flatten"``, ``"cls"`` = ``"first"``, ``"last"``,
#: ``"mean"``).
REDUCTIONS = ("flatten", "avgpool", "cls", "first", "last", "mean")

_TOKEN_REDUCTIONS = ("cls", "first", "last", "mean")

#: Gradients of :func:`layer_agops` and :func:`probe_network`.
GRADIENTS = ("layer", "total")


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
        self.mask = None

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


def _check_options(reduction, gradient=None, attention_mask=None):
    if not (callable(reduction) or reduction in REDUCTIONS):
        raise ValueError(
            f"reduction must be one of {REDUCTIONS} or a callable; got {reduction!r}."
        )
    if attention_mask is not None and reduction not in ("mean", "last"):
        raise ValueError(
            "attention_mask applies to reduction='mean' or 'last'; got "
            f"reduction={reduction!r}."
        )
    if gradient is not None and gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}; got {gradient!r}.")


def _reduce(Z, reduction, mask=None, where="the output", channel_axis=1):
    """Features ``(n, d)`` from a layer output under the stated reduction.

    A 2-D output is used as it is, whatever the reduction: reductions act on a
    token or spatial axis. ``mask`` (``(n, tokens)``, nonzero for real tokens)
    restricts ``"mean"`` and ``"last"`` to the real tokens. ``channel_axis``:
    1 for a convolution's ``(n, c, h, w)``, -1 for a ``Linear`` applied to a
    channels-last map ``(n, h, w, c)`` (ConvNeXt, Swin), whose ``"avgpool"``
    averages the axes between.
    """
    if Z.ndim <= 2:
        return Z[:, None] if Z.ndim == 1 else Z
    shape = tuple(Z.shape)
    if callable(reduction):
        Z = reduction(Z)
    elif reduction == "flatten":
        Z = Z.flatten(1)
    elif reduction == "avgpool":
        if Z.ndim == 3:
            raise ValueError(
                f"reduction='avgpool' averages the spatial axes of (n, c, h, w) "
                f"feature maps; {where} has shape {shape}. For token sequences "
                "(n, tokens, dim) use reduction='mean' (the mean over tokens), "
                "'cls' (the first token) or 'last'; for (n, channels, length) maps "
                "pass reduction=lambda z: z.mean(2)."
            )
        channel = channel_axis % Z.ndim
        Z = Z.mean(dim=tuple(a for a in range(1, Z.ndim) if a != channel))
    else:
        Z = _reduce_tokens(Z, reduction, mask, where)
    if Z.ndim == 1:
        Z = Z[:, None]
    if Z.ndim != 2:
        raise ValueError(
            f"The reduction must give (n_samples, n_features); got {tuple(Z.shape)} "
            f"from {where} of shape {shape}."
        )
    return Z


def _reduce_tokens(Z, reduction, mask, where):
    """``"cls"``/``"first"``, ``"last"`` or ``"mean"`` of ``(n, tokens, dim)``."""
    if Z.ndim != 3:
        raise ValueError(
            f"reduction={reduction!r} takes token sequences (n, tokens, dim); "
            f"{where} has shape {tuple(Z.shape)}. Use 'flatten' or 'avgpool' for "
            "feature maps."
        )
    if mask is not None and tuple(mask.shape) != tuple(Z.shape[:2]):
        raise ValueError(
            f"The attention mask has shape {tuple(mask.shape)}, but {where} has "
            f"{tuple(Z.shape[:2])} (n, tokens)."
        )
    if reduction in ("cls", "first"):
        return Z[:, 0]
    if mask is None:
        return Z[:, -1] if reduction == "last" else Z.mean(dim=1)
    keep = (mask != 0).to(Z.dtype)
    count = keep.sum(dim=1)
    if bool((count == 0).any()):
        raise ValueError("The attention mask holds a sequence without any token.")
    if reduction == "last":
        position = torch.arange(Z.shape[1], device=Z.device)
        last = (keep * (position + 1)).argmax(dim=1)
        return Z[torch.arange(Z.shape[0], device=Z.device), last]
    return (Z * keep[..., None]).sum(dim=1) / count[:, None]


def _batch_mask(x, attention_mask):
    """The ``(n, tokens)`` attention mask of a batch of inputs, or None."""
    if attention_mask is None:
        return None
    if callable(attention_mask):
        mask = attention_mask(x)
    elif isinstance(x, dict) and attention_mask in x:
        mask = x[attention_mask]
    else:
        raise ValueError(
            f"attention_mask={attention_mask!r} names no input: it is the key of a "
            "dict input (e.g. 'attention_mask') or a callable batch -> (n, tokens) "
            "mask."
        )
    mask = torch.as_tensor(mask)
    if mask.ndim != 2:
        raise ValueError(
            f"The attention mask must be (n, tokens); got shape {tuple(mask.shape)}."
        )
    return mask


def _peek(batches):
    """The first batch's inputs (None for an empty stream), and a source of
    batches whose first iteration yields that batch again, so a one-shot
    iterator is not consumed by the peek."""
    it = batches()
    head = next(it, None)
    pending = [it]

    def again():
        if pending:
            rest = pending.pop()
            if head is not None:
                yield head
            yield from rest
        else:
            yield from batches()

    if head is None:
        raise ValueError(
            "X holds no samples: the data (a DataLoader or iterable of batches) "
            "yielded no batches."
        )
    return head[0], again


def _setup(model, X, y, batch_size, device, layers=None, *, find=True):
    """What every probe starts with: the device, the data as batches (the first
    one peeked), and the layers found on it."""
    device = _resolve_device(model, device)
    batches, _ = as_batches(X, y, batch_size)
    first, batches = _peek(batches)
    found = find_layers(model, layers, X=first) if find else None
    return device, batches, first, found


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
    attention_mask=None,
):
    """Run ``model`` over the batches in eval mode with the capture hooks; call
    ``on_batch(cap, out, y)`` for each (``cap.mask``: the batch's attention mask).
    Hooks are removed and the model's mode restored whatever happens."""
    dtype = model_dtype(model)
    first = True
    with (
        eval_mode(model),
        _Capture(found, gradient=gradient, stages=stages, output_fn=output_fn) as cap,
    ):
        for xb, yb in batches():
            cap.reset()
            xb = as_input(xb, device, dtype)
            cap.mask = _batch_mask(xb, attention_mask)
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
    attention_mask=None,
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
        attention_mask=attention_mask,
    )
    if count[0] == 0:
        raise ValueError("X holds no samples.")
    return [g.cpu() / count[0] for g in G]


def _resolve_device(model, device):
    return model_device(model) if device is None else resolve_device(device)


def _unlabelled(X, y):
    """``(X, y)`` for :func:`as_batches` where labels are not needed."""
    if y is None and (
        isinstance(X, (torch.Tensor, np.ndarray))
        or hasattr(X, "__array__")
        or _is_multi(X)
    ):
        return X, np.zeros(batch_length(X))
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
