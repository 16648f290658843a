"""Activations of any torch model as ``(n, d)`` arrays, one per named layer: a
module's output (forward hooks) or an entry of the ``hidden_states`` the model
returns, reduced over tokens with the attention mask (the last real token, the
mean over real tokens, every real token, or a callable), one batch at a time.
"""

from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions, validate_params
from torch import nn

from skdnc._backend import to_numpy
from skdnc.nn._capture import _batch_mask, _reduce, _resolve_device
from skdnc.nn._common import (
    _is_multi,
    _map,
    as_batches,
    as_input,
    batch_length,
    eval_mode,
    forward,
    model_dtype,
    select_hidden_states,
    select_output,
)

__all__ = ["ACTIVATION_REDUCTIONS", "collect_activations"]

#: Reductions of :func:`collect_activations` over the token axis.
ACTIVATION_REDUCTIONS = ("last", "mean", "first", "all")


def _to_device(x, device, dtype):
    """A batch on ``device``: floating inputs in the model's dtype (checked
    finite), integer and boolean inputs (token ids, masks) as they are."""
    if _is_multi(x):
        return _map(x, lambda v: _to_device(v, device, dtype))
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex():
        return as_input(x, device, dtype)
    return t.to(device)


def _split_layers(model, layers):
    """The layers asked for: module names (checked) and hidden-state indices, or
    None for every hidden state (their count is known after the first batch)."""
    if layers is None:
        return None
    items = [layers] if isinstance(layers, (str, Integral)) else list(layers)
    if not items:
        raise ValueError("layers must name at least one layer.")
    out = []
    for item in items:
        if isinstance(item, str):
            try:
                model.get_submodule(item)
            except AttributeError as exc:
                raise ValueError(
                    f"layers={item!r}: model has no submodule of that name (names "
                    "as in model.named_modules(), e.g. 'blocks.0')."
                ) from exc
        elif not isinstance(item, Integral) or isinstance(item, bool):
            raise TypeError(
                "layers must hold submodule names (str) or indices (int) into the "
                f"hidden_states the model returns; got {item!r}."
            )
        out.append(item if isinstance(item, str) else int(item))
    if len(set(out)) != len(out):
        raise ValueError(f"layers names a layer twice: {out}.")
    return out


def _call(model, x, want_states):
    """The model's output on a batch, asking for its hidden states if needed."""
    if not want_states:
        return forward(model, x)
    try:
        if isinstance(x, dict):
            return model(**x, output_hidden_states=True)
        if isinstance(x, tuple):
            return model(*x, output_hidden_states=True)
        return model(x, output_hidden_states=True)
    except TypeError as exc:
        if "output_hidden_states" not in str(exc):
            raise
        raise ValueError(
            f"layers asks for hidden states, but {type(model).__name__} takes no "
            "output_hidden_states argument. Name its modules instead, e.g. "
            "layers=['blocks.0']."
        ) from exc


class _Outputs:
    """Forward hooks keeping the first output of each named module in a pass."""

    def __init__(self, modules):
        self.modules = modules
        self.seen = {}
        self.handles = []

    def __enter__(self):
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return False

    def _hook(self, name):
        def hook(module, args, out):
            if name in self.seen:
                return
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            self.seen[name] = select_output(out, None, f"module {name!r}", "layers")

        return hook

    def take(self):
        missing = [name for name in self.modules if name not in self.seen]
        if missing:
            raise ValueError(
                f"Modules {missing} did not run in the model's forward pass."
            )
        seen, self.seen = self.seen, {}
        return seen


def _reduce_all(Z, mask, where):
    """Every real token of ``(n, tokens, d)`` as a row (samples in order, then
    positions)."""
    if Z.ndim != 3:
        raise ValueError(
            f"reduction='all' takes token sequences (n, tokens, dim); {where} has "
            f"shape {tuple(Z.shape)}."
        )
    if mask is None:
        return Z.reshape(-1, Z.shape[-1])
    if tuple(mask.shape) != tuple(Z.shape[:2]):
        raise ValueError(
            f"The attention mask has shape {tuple(mask.shape)}, but {where} has "
            f"{tuple(Z.shape[:2])} (n, tokens)."
        )
    return Z[mask.to(Z.device) != 0]


def _features(Z, reduction, mask, where):
    if mask is not None:
        mask = mask.to(Z.device)
    if reduction == "all":
        return _reduce_all(Z, mask, where)
    if callable(reduction) and Z.ndim >= 3:
        Z = reduction(Z, mask)
        if not isinstance(Z, torch.Tensor) or Z.ndim != 2:
            raise ValueError(
                "A callable reduction must return an (n, d) tensor; got "
                f"{getattr(Z, 'shape', type(Z).__name__)} from {where}."
            )
        return Z
    if Z.ndim > 3:
        raise ValueError(
            f"{where} has shape {tuple(Z.shape)}; collect_activations takes "
            "(n, d) outputs and token sequences (n, tokens, d). Pass a callable "
            "reduction(Z, mask) -> (n, d) for other shapes."
        )
    return _reduce(Z, reduction, mask, where)


@validate_params(
    {
        "model": [nn.Module],
        "X": "no_validation",
        "layers": [str, Integral, list, tuple, None],
        "reduction": [StrOptions(set(ACTIVATION_REDUCTIONS)), callable],
        "attention_mask": "no_validation",
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "device": "no_validation",
    },
    prefer_skip_nested_validation=True,
)
def collect_activations(
    model,
    X,
    *,
    layers=None,
    reduction="last",
    attention_mask="attention_mask",
    batch_size=None,
    device=None,
):
    """Activations of named layers of a torch model, as ``(n, d)`` arrays.

    The model runs in eval mode without gradients, one batch at a time on its
    device; what stays in memory is one batch of each layer's output and the
    reduced arrays.

    Parameters
    ----------
    model : torch.nn.Module
        Any model; for ``hidden_states`` layers, one that takes
        ``output_hidden_states=True`` and returns them (as an attribute or a
        key), as :class:`CausalLM` and Hugging Face models do.
    X : tensor, array, dict of tensors, DataLoader or iterable of batches
        The inputs: an ``(n, ...)`` tensor or array (token ids ``(n, tokens)``),
        a dict of them passed as ``model(**batch)`` (tokenised text:
        ``input_ids`` and ``attention_mask``), or an iterable of batches, each
        a tensor, a dict, or an ``(x, y)`` pair whose ``y`` is ignored. Integer
        inputs (token ids) keep their dtype; floating inputs take the model's.
    layers : str, int or list of them, default=None
        Module names (as in ``model.named_modules()``, e.g. ``"blocks.0"``),
        whose output is read by a forward hook (the first element of a tuple
        output, as transformer blocks of Hugging Face return), and indices into
        the model's ``hidden_states`` (negative from the end). ``None``: every
        hidden state.
    reduction : {"last", "mean", "first", "all"} or callable, default="last"
        How a ``(n, tokens, d)`` output becomes rows: the last real token of
        each sequence, the mean over its real tokens, its first token, or every
        real token (rows of ``(n_real_tokens, d)``, sequence after sequence,
        positions in order); a callable ``reduction(Z, mask) -> (n, d)`` gets
        every output of 3 or more axes and the batch's mask (or None).
        ``(n, d)`` outputs are kept as they are.
    attention_mask : str, callable, array-like of shape (n, tokens) or None, \
            default="attention_mask"
        Which tokens are real (nonzero) and which are padding (0): the key of
        the mask in dict inputs (the default: no mask for inputs without it), a
        callable ``batch -> (n, tokens) mask``, an array aligned with array
        input ``X``, or None (every token is real). Padded positions never
        enter the reductions. A dict's mask is also passed to the model.
    batch_size : int, default=None
        Rows per batch for array and dict input (all at once when None).
    device : str or torch.device, default=None
        Where inputs are moved (the model's device when None).

    Returns
    -------
    activations : dict
        ``{layer: ndarray of shape (n, d)}`` in the order of ``layers`` (module
        names as given, hidden states by their non-negative index), in the
        model's float dtype.

    Examples
    --------
    >>> import torch
    >>> from skdnc.nn import collect_activations, make_causal_lm
    >>> lm = make_causal_lm(20, d_model=16, n_heads=2, random_state=0)
    >>> batch = {
    ...     "input_ids": torch.tensor([[3, 4, 5, 0], [6, 7, 8, 9]]),
    ...     "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]),
    ... }
    >>> acts = collect_activations(lm, batch, layers=["blocks.1", -1])
    >>> {name: a.shape for name, a in acts.items()}
    {'blocks.1': (2, 16), 2: (2, 16)}
    """
    items = _split_layers(model, layers)
    modules = {i: model.get_submodule(i) for i in items or () if isinstance(i, str)}
    device = _resolve_device(model, device)
    dtype = model_dtype(model)
    batches, key = _batches(X, attention_mask, batch_size)
    want_states = items is None or any(not isinstance(i, str) for i in items)
    results = None
    with eval_mode(model), torch.no_grad(), _Outputs(modules) as hooks:
        for xb, mask in batches:
            xb = _to_device(xb, device, dtype)
            if mask is None and key is not None:
                mask = _batch_mask(xb, key) if _has_mask(xb, key) else None
            out = _call(model, xb, want_states)
            outputs = hooks.take()
            if want_states:
                states = select_hidden_states(out)
                if results is None:
                    items = _resolve_indices(items, len(states))
                outputs.update({i: states[i] for i in items if not isinstance(i, str)})
            if results is None:
                results = {name: [] for name in items}
            for name, parts in results.items():
                where = (
                    f"module {name!r}"
                    if isinstance(name, str)
                    else f"hidden state {name}"
                )
                Z = _features(outputs[name], reduction, mask, where)
                parts.append(to_numpy(Z.detach()))
    return {name: np.concatenate(parts) for name, parts in results.items()}


def _has_mask(x, key):
    """Whether a batch has a mask under ``key`` (a callable always has one); a
    key other than the default must be found."""
    found = callable(key) or (isinstance(x, dict) and key in x)
    if not found and key != "attention_mask":
        raise ValueError(
            f"attention_mask={key!r} names no input of the batch: it is the key of "
            "the mask in dict inputs, a callable batch -> (n, tokens) mask, an "
            "array aligned with X, or None."
        )
    return found


def _resolve_indices(items, n_states):
    """The layers with hidden-state indices made non-negative and checked;
    ``None`` gives every hidden state."""
    if items is None:
        return list(range(n_states))
    out = []
    for item in items:
        if not isinstance(item, str):
            if not -n_states <= item < n_states:
                raise ValueError(
                    f"layers={item}: the model returned {n_states} hidden states "
                    f"(indices {-n_states} to {n_states - 1})."
                )
            item = item % n_states
        if item in out:
            raise ValueError(f"layers names hidden state {item} twice.")
        out.append(item)
    return out


def _batches(X, attention_mask, batch_size):
    """``(batches, key)``: an iterator of ``(inputs, mask or None)`` and the key
    (or callable) finding each batch's mask, None when the mask rides along."""
    rides = not (
        attention_mask is None
        or isinstance(attention_mask, str)
        or callable(attention_mask)
    )
    if isinstance(X, (torch.Tensor, np.ndarray)) or _is_multi(X):
        y = attention_mask if rides else np.zeros(batch_length(X))
        stream, _ = as_batches(X, y, batch_size)
        pairs = ((xb, torch.as_tensor(mb) if rides else None) for xb, mb in stream())
        return pairs, None if rides else attention_mask
    if rides:
        raise ValueError(
            "An attention_mask array rides with array or tensor X; for a "
            "DataLoader, yield dict batches holding the mask and pass its key "
            "(attention_mask='attention_mask') or a callable."
        )
    if not hasattr(X, "__iter__") or isinstance(X, (str, bytes)):
        raise TypeError(
            "X must be a tensor, an array, a dict of them, or an iterable of "
            f"batches such as a DataLoader; got {type(X).__name__}."
        )
    return _stream(X), attention_mask


def _stream(X):
    empty = True
    for batch in X:
        empty = False
        if isinstance(batch, (tuple, list)):
            if not batch:
                raise ValueError("X yielded an empty batch.")
            batch = batch[0]
        yield batch, None
    if empty:
        raise ValueError("X holds no samples: it yielded no batches.")
