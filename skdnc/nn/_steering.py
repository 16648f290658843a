"""Steering a model: ``coef * v`` added to the output of named modules through
forward hooks, for the duration of a ``with`` block (Beaglehole et al., 2025).
"""

from contextlib import contextmanager
from numbers import Real

import numpy as np
import torch
from sklearn.utils._param_validation import StrOptions, validate_params
from torch import nn

__all__ = ["steer"]

#: Modules whose output width is known from their parameters.
_WIDTHS = (
    (nn.Linear, lambda m: m.out_features),
    (nn.Embedding, lambda m: m.embedding_dim),
    (nn.LayerNorm, lambda m: m.normalized_shape[-1]),
    (nn.RMSNorm, lambda m: m.normalized_shape[-1]),
    (nn.MultiheadAttention, lambda m: m.embed_dim),
    (nn.TransformerEncoderLayer, lambda m: m.linear2.out_features),
    (nn.TransformerDecoderLayer, lambda m: m.linear2.out_features),
    (nn.modules.conv._ConvNd, lambda m: m.out_channels),
)


def _output_width(module):
    """Width of the last axis of a module's output (the channels of a
    convolution), or None when its parameters do not say."""
    for kind, width in _WIDTHS:
        if isinstance(module, kind):
            return int(width(module))
    return None


def _as_vector(name, vector):
    """A steering vector as a 1-D real tensor, or a clear error."""
    if not isinstance(vector, torch.Tensor):
        array = np.asarray(vector)
        if array.dtype == object or not (
            np.issubdtype(array.dtype, np.number) or array.dtype == bool
        ):
            raise TypeError(
                f"The steering vector of {name!r} must be a 1-D array or tensor "
                f"of numbers; got {type(vector).__name__}."
            )
        vector = torch.as_tensor(array)
    v = vector.detach()
    if v.is_complex():
        raise TypeError(f"The steering vector of {name!r} is complex.")
    if v.ndim != 1 or v.numel() == 0:
        raise ValueError(
            f"The steering vector of {name!r} must be 1-D and not empty; got shape "
            f"{tuple(v.shape)}."
        )
    if not v.is_floating_point():
        v = v.to(torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"The steering vector of {name!r} holds NaN or infinity.")
    return v


def _check_size(name, width, v):
    if width is not None and v.numel() != width:
        raise ValueError(
            f"The steering vector of {name!r} has {v.numel()} entries, but the "
            f"module's output has {width} features."
        )


def _hook(name, v, coef, positions, width):
    """The forward hook adding ``coef * v`` to a module's output (to the first
    element of a tuple output)."""
    cache = {}

    def hook(module, args, out):
        rest = None
        if isinstance(out, (tuple, list)) and out:
            out, rest = out[0], out
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"Module {name!r} returned a {type(out).__name__}; steering adds "
                "to a tensor output (or the first element of a tuple)."
            )
        channels = 1 if isinstance(module, nn.modules.conv._ConvNd) else -1
        _check_size(name, width or out.shape[channels], v)
        key = (out.dtype, out.device)
        if key not in cache:
            cache[key] = (coef * v).to(dtype=out.dtype, device=out.device)
        delta = cache[key]
        if channels == 1:
            delta = delta.view(-1, *([1] * (out.ndim - 2)))
        if positions == "last":
            if out.ndim != 3 or channels == 1:
                raise ValueError(
                    f"positions='last' steers token sequences (n, tokens, d); "
                    f"module {name!r} returned shape {tuple(out.shape)}."
                )
            step = torch.zeros_like(out)
            step[:, -1] = delta
            out = out + step
        else:
            out = out + delta
        if rest is None:
            return out
        return [out, *rest[1:]] if isinstance(rest, list) else (out, *rest[1:])

    return hook


@contextmanager
def _hooks(modules, hooks):
    handles = []
    try:
        for module, hook in zip(modules, hooks):
            handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


@validate_params(
    {
        "model": [nn.Module],
        "vectors": [dict],
        "coef": [Real],
        "positions": [StrOptions({"all", "last"})],
    },
    prefer_skip_nested_validation=True,
)
def steer(model, vectors, *, coef=1.0, positions="all"):
    """Add ``coef * v`` to the output of named modules while a ``with`` block runs.

    Forward hooks add the vector to each named module's output (the residual
    stream of a transformer block, say) at every position or at the last one;
    leaving the block, normally or by an exception, removes them, so the model
    computes exactly what it computed before. Parameters, buffers and the
    training mode are never touched. Every name and every vector's size is
    checked when ``steer`` is called, before any forward pass.

    Parameters
    ----------
    model : torch.nn.Module
    vectors : dict
        ``{module name: vector}``: names as in ``model.named_modules()`` (e.g.
        ``"blocks.1"``), vectors 1-D arrays or tensors as wide as the module's
        output (its last axis; the channels of a convolution), e.g. a component
        of :class:`~skdnc.AGOPDirections` fitted to that module's activations.
    coef : float, default=1.0
        The multiple of each vector added; 0 leaves the outputs as they are.
    positions : {"all", "last"}, default="all"
        Add to every position of a ``(n, tokens, d)`` output, or to the last
        column only (during generation, the token being predicted; the last
        column is a pad in a right-padded batch of unequal lengths).

    Returns
    -------
    context : context manager
        Hooks installed on entering, removed on leaving.

    Raises
    ------
    ValueError
        For an unknown module name, or a vector whose size differs from the
        module's output width (known from the parameters of linear,
        normalisation, embedding, attention, transformer and convolution
        modules; for other modules it is checked on the first forward pass,
        before anything is added).

    Examples
    --------
    >>> import torch
    >>> from skdnc.nn import make_causal_lm, steer
    >>> lm = make_causal_lm(10, d_model=8, n_heads=2, random_state=0).eval()
    >>> ids = torch.tensor([[1, 2, 3]])
    >>> before = lm(ids)
    >>> with steer(lm, {"blocks.1": torch.ones(8)}, coef=2.0):
    ...     steered = lm(ids)
    >>> bool(torch.equal(lm(ids), before)), bool(torch.equal(steered, before))
    (True, False)
    """
    if not vectors:
        raise ValueError("vectors must name at least one module.")
    modules, hooks = [], []
    for name, vector in vectors.items():
        if not isinstance(name, str):
            raise TypeError(f"vectors' keys are module names; got {name!r}.")
        try:
            module = model.get_submodule(name)
        except AttributeError as exc:
            raise ValueError(
                f"model has no submodule named {name!r} (names as in "
                "model.named_modules(), e.g. 'blocks.0')."
            ) from exc
        v = _as_vector(name, vector)
        width = _output_width(module)
        _check_size(name, width, v)
        modules.append(module)
        hooks.append(_hook(name, v, float(coef), positions, width))
    return _hooks(modules, hooks)
