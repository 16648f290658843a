"""Token-level collapse of sequence models at vocabulary scale
(:func:`token_collapse`): every token position is a sample, its class the next
token (or a given label), one :class:`~skdnc.metrics.VocabularyAccumulator` per
measured layer."""

from dataclasses import dataclass, field

import numpy as np
import torch

from skdnc._backend import import_pandas, to_numpy
from skdnc.metrics import VocabularyAccumulator
from skdnc.nn._capture import _validate_probe_params
from skdnc.nn._collapse_probe import _named_modules
from skdnc.nn._common import (
    _is_multi,
    _map,
    as_batches,
    batch_length,
    eval_mode,
    forward,
    model_dtype,
    select_hidden_states,
    select_output,
)
from skdnc.nn._detect import _not_run

__all__ = ["TokenCollapseProbe", "token_collapse"]


#: What :func:`token_collapse` reports per layer (names of ``METRIC_NAMES``).
TOKEN_METRICS = ("nc1", "cdnv", "nc2", "nc2_equinorm", "nc2_interference", "gnc2")


@dataclass
class TokenCollapseProbe:
    """Token-level collapse of the hidden states of a sequence model, from
    :func:`token_collapse`.

    Attributes
    ----------
    layer_names : list of str
        The measured modules, or ``"hidden_states.i"`` for the ``i``-th hidden
        state the model returns.
    metrics : dict of ndarray of shape (n_layers,)
        ``nc1`` (trace form), ``cdnv`` (with ``dist_exp``), ``nc2`` (to the simplex
        ETF), ``nc2_equinorm``, ``nc2_interference`` and ``gnc2`` (see
        :class:`skdnc.metrics.VocabularyAccumulator`).
    n_tokens : ndarray of shape (n_layers,)
        Token positions measured (of classes kept by ``min_count``).
    n_classes_kept : ndarray of shape (n_layers,)
    dist_exp : int
        The CDNV exponent.
    accumulators : list of VocabularyAccumulator
        The statistics of every layer, for further metrics (``unc3``, ``nc5``)
        and checkpoints.
    """

    layer_names: list
    metrics: dict
    n_tokens: np.ndarray
    n_classes_kept: np.ndarray
    dist_exp: int
    accumulators: list = field(default=None, repr=False)

    def to_dict(self):
        """JSON-ready dict of every number."""
        out = {"layer_names": list(self.layer_names), "dist_exp": self.dist_exp}
        out.update({k: v.tolist() for k, v in self.metrics.items()})
        out.update(
            n_tokens=self.n_tokens.tolist(), n_classes_kept=self.n_classes_kept.tolist()
        )
        return out

    def to_frame(self):
        """One row per layer, indexed by ``"layer"``, a column per metric.

        Returns
        -------
        frame : pandas.DataFrame
        """
        pd = import_pandas("TokenCollapseProbe.to_frame")
        columns = dict(self.metrics)
        columns.update(n_tokens=self.n_tokens, n_classes_kept=self.n_classes_kept)
        return pd.DataFrame(
            columns, index=pd.Index(list(self.layer_names), name="layer")
        )


def _token_batches(X, y, batch_size):
    """``(x, y)`` batches: arrays of token ids (or a tuple/dict of arrays) in row
    blocks, or an iterable of ``(x, y)`` pairs, dicts (``"labels"``, if any, is
    ``y``) or bare inputs."""
    if _is_multi(X) or isinstance(X, (torch.Tensor, np.ndarray)):
        n = batch_length(X)
        rows, _ = as_batches(X, np.arange(n) if y is None else y, batch_size)

        def arrays():
            for xb, yb in rows():
                yield xb, (None if y is None else yb)

        return arrays
    if not hasattr(X, "__iter__"):
        raise TypeError(
            "X must be token ids (an array or tensor, or a tuple/dict of them) or "
            f"an iterable of batches such as a DataLoader; got {type(X).__name__}."
        )

    def stream():
        for batch in X:
            if isinstance(batch, dict):
                rest = {k: v for k, v in batch.items() if k != "labels"}
                yield rest, batch.get("labels")
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                yield batch[0], batch[1]
            else:
                yield batch, None

    return stream


def _to_device(x, device, dtype):
    """Inputs on ``device``: floating tensors in the model's dtype, token ids (and
    masks) as they are."""

    def move(v):
        t = v if isinstance(v, torch.Tensor) else torch.as_tensor(np.asarray(v))
        t = t.to(device)
        return t.to(dtype) if t.is_floating_point() else t

    return _map(x, move)


def _input_ids(x, input_key):
    if isinstance(x, dict):
        if input_key not in x:
            raise ValueError(
                f"input_key={input_key!r} is not a key of the batch's inputs "
                f"{sorted(x)}."
            )
        return x[input_key]
    return x[0] if isinstance(x, tuple) else x


@_validate_probe_params
def token_collapse(
    model,
    X,
    y=None,
    *,
    n_classes,
    layers=None,
    hidden_states=None,
    output_fn=None,
    target="next_token",
    input_key="input_ids",
    attention_mask="attention_mask",
    min_count=1,
    ignore_index=-100,
    dist_exp=1,
    tile_size=1024,
    batch_size=32,
    device=None,
):
    """Token-level collapse of a sequence model's hidden states, per layer.

    Every token position is a sample; its class is the next token (as in Wu &
    Papyan 2024, linguistic-collapse) or a given per-token label. The statistics
    stream into one :class:`~skdnc.metrics.VocabularyAccumulator` per layer, so a
    vocabulary of 50,000 classes costs ``O(K d)`` memory per layer.

    Parameters
    ----------
    model : torch.nn.Module
        Run in eval mode without gradients (mode restored, hooks removed).
    X : array-like or torch.Tensor of shape (n_sequences, tokens), dict, tuple, \
DataLoader or iterable of batches
        Token ids (or a tuple/dict of inputs, e.g. ``{"input_ids": ...,
        "attention_mask": ...}``, passed to the model as ``model(*x)`` /
        ``model(**x)``); or batches: ``(x, y)`` pairs, dicts (Hugging Face style;
        a ``"labels"`` entry is ``y``) or bare inputs.
    y : array-like of int of shape (n_sequences, tokens), default=None
        Labels per position: with ``target="token"`` the class of each position;
        with ``"next_token"`` the sequence whose shift gives the classes (the
        input ids when ``None``, or a Hugging Face ``labels`` tensor, whose
        ``ignore_index`` entries are skipped).
    n_classes : int
        The vocabulary size ``K``.
    layers : str, module or list, default=None
        Modules whose outputs ``(batch, tokens, dim)`` are measured (names as in
        ``model.named_modules()``).
    hidden_states : int, str or callable, default=None
        Selects a tuple of hidden states from the model's output (an index, a key
        or attribute such as ``"hidden_states"``, or a callable); each is
        measured, as ``"hidden_states.i"``. At least one of ``layers`` and
        ``hidden_states`` is needed.
    output_fn : int, str, callable or dict, default=None
        Selects the tensor from a module that returns a tuple or dict, as for
        :func:`layer_collapse`.
    target : {"next_token", "token"}, default="next_token"
        ``"next_token"``: the state at ``t`` is labelled with the id at ``t + 1``
        (the last position is dropped); ``"token"``: with ``y`` at ``t``.
    input_key : str, default="input_ids"
        Key of the token ids in dict inputs.
    attention_mask : str, callable or None, default="attention_mask"
        Key of the ``(batch, tokens)`` mask in dict inputs (used when present),
        or a callable ``x -> mask``; masked positions are left out (with
        ``"next_token"``, a position counts when it and the next are real).
    min_count : int, default=1
        Classes with fewer tokens are left out of the metrics.
    ignore_index : int or None, default=-100
        Label to skip.
    dist_exp : {1, 2}, default=1
        CDNV exponent (see :meth:`~skdnc.metrics.VocabularyAccumulator.cdnv`).
    tile_size : int, default=1024
        Classes per block of the pairwise metrics.
    batch_size : int, default=32
        Sequences per batch for array input.
    device : str or torch.device, default=None
        ``None``: where the model's parameters are.

    Returns
    -------
    probe : TokenCollapseProbe

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skdnc.nn import token_collapse
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> lm = nn.Sequential(nn.Embedding(12, 8), nn.Linear(8, 8), nn.Linear(8, 12))
    >>> ids = torch.randint(0, 12, (20, 10))
    >>> probe = token_collapse(lm, ids, n_classes=12, layers=["0", "1"])
    >>> probe.layer_names, probe.n_tokens.tolist()
    (['0', '1'], [180, 180])
    """
    if target not in ("next_token", "token"):
        raise ValueError(f"target must be 'next_token' or 'token'; got {target!r}.")
    if target == "token" and y is None and not hasattr(X, "__iter__"):
        raise ValueError("target='token' needs the label of every position, y.")
    if layers is None and hidden_states is None:
        raise ValueError(
            "Name what to measure: layers=[module names] and/or hidden_states= a "
            "selector of the model's tuple of hidden states."
        )
    device = (
        device
        if device is not None
        else next((p.device for p in model.parameters()), torch.device("cpu"))
    )
    dtype = model_dtype(model)
    modules = [] if layers is None else _named_modules(model, layers, None)
    batches = _token_batches(X, y, batch_size)
    names = [name for name, _, _ in modules]
    accs = {}

    def accumulator(name):
        if name not in accs:
            accs[name] = VocabularyAccumulator(
                n_classes,
                min_count=min_count,
                ignore_index=ignore_index,
                covariance=None,
                tile_size=tile_size,
            )
        return accs[name]

    accumulator(None)  # validates the accumulator's parameters before any batch
    del accs[None]

    captured = {}

    def hook_for(name):
        def hook(module, args, out):
            if name not in captured:
                where = f"module {name!r}"
                selector = (
                    output_fn.get(name) if isinstance(output_fn, dict) else (output_fn)
                )
                captured[name] = select_output(out, selector, where, "output_fn")

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m, _ in modules]
    try:
        with eval_mode(model), torch.no_grad():
            for xb, yb in batches():
                captured.clear()
                xb = _to_device(xb, device, dtype)
                ids = _input_ids(xb, input_key)
                if callable(attention_mask):
                    mask = attention_mask(xb)
                elif isinstance(xb, dict) and attention_mask in xb:
                    mask = xb[attention_mask]
                else:
                    mask = None
                out = forward(model, xb)
                states = dict(captured)
                for name in names:
                    if name not in states:
                        raise ValueError(f"Module {name!r}: {_not_run(name, model)}.")
                if hidden_states is not None:
                    for i, h in enumerate(select_hidden_states(out, hidden_states)):
                        states[f"hidden_states.{i}"] = h
                labels = None if yb is None else to_numpy(yb)
                if target == "token" and labels is None:
                    raise ValueError(
                        "target='token' needs y, the label of every token."
                    )
                for name, H in states.items():
                    H = H.detach()
                    if H.ndim != 3:
                        raise ValueError(
                            f"{name!r} gave shape {tuple(H.shape)}; token-level "
                            "collapse needs (batch, tokens, dim) hidden states."
                        )
                    if target == "token":
                        accumulator(name).partial_fit(H, labels, attention_mask=mask)
                    else:
                        source = ids if labels is None else labels
                        accumulator(name).partial_fit(
                            H, input_ids=source, attention_mask=mask
                        )
    finally:
        for handle in handles:
            handle.remove()
    if not accs:
        raise ValueError("X yielded no batches: there are no tokens to measure.")
    order = list(accs)
    results = {m: [] for m in TOKEN_METRICS}
    for name in order:
        acc = accs[name]
        results["nc1"].append(acc.nc1())
        results["cdnv"].append(acc.cdnv(dist_exp))
        results["nc2"].append(acc.nc2())
        results["nc2_equinorm"].append(acc.nc2_equinorm())
        results["nc2_interference"].append(acc.nc2_interference())
        results["gnc2"].append(acc.gnc2())
    return TokenCollapseProbe(
        layer_names=order,
        metrics={k: np.array(v) for k, v in results.items()},
        n_tokens=np.array([int(accs[n]._kept()[1].sum()) for n in order]),
        n_classes_kept=np.array([len(accs[n].kept_classes_) for n in order]),
        dist_exp=dist_exp,
        accumulators=[accs[n] for n in order],
    )
