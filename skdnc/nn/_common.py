"""What training and probing share: the model's dtype and device, eval mode, the
data as batches (arrays, tensors, DataLoaders), and checked model outputs.

A model's input is a tensor, or several: a tuple of arrays is passed as
``model(*x)`` and a dict as ``model(**x)``, sliced into batches together.
"""

from contextlib import contextmanager

import numpy as np
import scipy.sparse
import torch
from sklearn.utils.validation import check_consistent_length

from skdnc._backend import iter_row_blocks, to_tensor
from skdnc._base import NonFiniteError

__all__ = [
    "InputShapeError",
    "as_batches",
    "batch_length",
    "check_inputs",
    "check_scores",
    "eval_mode",
    "forward",
    "model_device",
    "model_dtype",
    "run_model",
    "select_output",
    "take",
]


class InputShapeError(ValueError, RuntimeError):
    """The model could not run on the given inputs (usually a shape mismatch).

    A :class:`ValueError` with the fix in its message, and a :class:`RuntimeError`
    as the error torch raised.
    """


def model_dtype(model):
    """Floating dtype of the model's first floating parameter (the compute dtype)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.get_default_dtype()


def model_device(model):
    """Device of the model's first parameter (the CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextmanager
def eval_mode(model):
    """Put ``model`` in eval mode, restoring its mode afterwards."""
    was_training = model.training
    try:
        model.eval()
        yield model
    finally:
        model.train(was_training)


def _is_array(X):
    return isinstance(X, (torch.Tensor, np.ndarray)) or hasattr(X, "__array__")


def _is_multi(X):
    """Several inputs of one batch: a tuple or a dict of arrays or tensors."""
    items = X.values() if isinstance(X, dict) else X if isinstance(X, tuple) else ()
    return bool(items) and all(_is_array(v) for v in items)


def _items(X):
    return list(X.values()) if isinstance(X, dict) else list(X)


def _map(X, fn):
    """``fn`` applied to every input of a tuple or dict of inputs, or to ``X``."""
    if isinstance(X, dict) and _is_multi(X):
        return {k: fn(v) for k, v in X.items()}
    if isinstance(X, tuple) and _is_multi(X):
        return tuple(fn(v) for v in X)
    return fn(X)


def take(x, rows):
    """The samples ``rows`` (an index, slice or index tensor) of a batch of
    inputs, of each input of a tuple or dict."""
    return _map(x, lambda v: v[rows])


def check_inputs(X, name="X"):
    """Inputs a network can take: dense, real, one sample per row, not empty
    (each input of a tuple or dict)."""
    for v in _items(X) if _is_multi(X) else [X]:
        _check_values(v, name)
        _check_rows(v, name)


def batch_length(x):
    """Number of samples in a batch of inputs (of its first input)."""
    return len(_items(x)[0]) if _is_multi(x) else len(x)


def _check_values(X, name):
    """Refuse what a network cannot take: sparse, complex or 1-D inputs."""
    if scipy.sparse.issparse(X) or (
        isinstance(X, torch.Tensor) and X.layout != torch.strided
    ):
        raise TypeError(
            f"{name} is a sparse matrix; the networks take dense inputs. Pass "
            f"{name}.toarray() (scipy) or {name}.to_dense() (torch), or a "
            "DataLoader of dense batches."
        )
    complex_ = (
        X.is_complex()
        if isinstance(X, torch.Tensor)
        else np.iscomplexobj(X)
        if _is_array(X)
        else False
    )
    if complex_:
        raise TypeError(
            f"{name} holds complex numbers; the networks take real inputs and would "
            f"drop the imaginary part. Pass {name}.real, abs({name}), or the real "
            "and imaginary parts as two channels."
        )


def _check_rows(X, name):
    """Arrays of one sample per row, at least one sample."""
    shape = tuple(X.shape) if hasattr(X, "shape") else np.shape(X)
    if len(shape) < 2:
        raise ValueError(
            f"{name} must hold one sample per row, shape (n_samples, ...) in the "
            f"model's input shape; got shape {shape}. For a single feature pass "
            f"{name}.reshape(-1, 1)."
        )
    if shape[0] == 0:
        raise ValueError(f"{name} holds no samples (shape {shape}).")


def as_batches(X, y, batch_size, *, name="X"):
    """The data as a re-iterable source of ``(x, y)`` batches, and its length.

    Parameters
    ----------
    X : array-like, torch.Tensor, DataLoader or iterable of (x, y) batches
    y : array-like or None
        Labels for array input; ``None`` when ``X`` yields ``(x, y)`` batches
        (labels may be ``None`` inside the batches only where no labels are
        needed).
    batch_size : int or None

    Returns
    -------
    batches : callable
        ``batches()`` returns a fresh iterator over ``(x, y)`` pairs.
    n_samples : int or None
        ``None`` for a stream whose length is unknown.
    """
    multi = _is_multi(X)
    if not multi:
        _check_values(X, name)
    if y is None:
        if (
            multi
            or _is_array(X)
            or isinstance(X, (list, tuple))
            and X
            and _is_number(X[0])
        ):
            raise ValueError(
                f"y is required when {name} is an array or a tensor. Pass y, or pass "
                f"{name} as a DataLoader (or any iterable) of (x, y) batches."
            )
        if not hasattr(X, "__iter__"):
            raise TypeError(
                f"{name} must be an array, a tensor, or an iterable of (x, y) batches "
                f"such as a DataLoader; got {type(X).__name__}."
            )

        def stream():
            if iter(X) is X and stream.used:
                raise ValueError(
                    f"{name} is a one-shot iterator, but this measurement needs two "
                    "passes over the data. Pass a DataLoader or a list of batches."
                )
            stream.used = True
            for batch in X:
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise ValueError(
                        f"Each batch of {name} must be a pair (x, y) of inputs and "
                        f"labels; got {type(batch).__name__}. For unlabelled data "
                        "pass arrays X and y instead."
                    )
                yield batch[0], batch[1]

        stream.used = False
        return stream, None
    if isinstance(X, torch.utils.data.DataLoader) or not (
        multi or _is_array(X) or isinstance(X, (list, tuple))
    ):
        raise ValueError(
            f"{name} is a {type(X).__name__} (batches of (x, y)), so the labels come "
            "from its batches: pass y=None."
        )

    def array(v, label):
        v = v if isinstance(v, torch.Tensor) else np.asarray(v)
        _check_values(v, label)
        _check_rows(v, label)
        return v

    X = _map(X, lambda v: array(v, name))
    y = np.asarray(y) if not isinstance(y, torch.Tensor) else y
    check_consistent_length(*(_items(X) if multi else [X]), y)
    n = batch_length(X)
    size = n if not batch_size else int(batch_size)

    def arrays():
        for rows in iter_row_blocks(n, size):
            yield _map(X, lambda v: v[rows]), y[rows]

    return arrays, n


def _is_number(v):
    return isinstance(v, (int, float, np.number))


def as_input(x, device, dtype):
    """A batch of inputs as a tensor on ``device`` with ``dtype``, finite.

    Raises
    ------
    NonFiniteError
        When the batch holds NaN or infinity, or values beyond the range of the
        model's ``dtype`` (the message says which).

    Notes
    -----
    Integer inputs (``uint8`` images as torchvision's ``PILToTensor`` gives them)
    are converted to the model's dtype as they are, without scaling. A tuple or
    dict of inputs is converted input by input.
    """
    if _is_multi(x):
        return _map(x, lambda v: as_input(v, device, dtype))
    _check_values(x, "X")
    if isinstance(x, torch.Tensor):
        t = x.detach().to(device=device, dtype=dtype)
        source = x
    else:
        t = to_tensor(x, device, dtype)
        source = np.asarray(x)
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        finite = (
            bool(torch.isfinite(source).all())
            if isinstance(source, torch.Tensor)
            else bool(np.isfinite(source).all())
        )
        if finite:
            raise NonFiniteError(
                f"X holds values beyond the range of the model's {dtype} "
                f"(largest {torch.finfo(dtype).max:.3g}): scale the inputs, or "
                "use a model of a wider dtype."
            )
        raise NonFiniteError("Input X contains NaN or infinity.")
    return t


def _pick(out, selector, what, param):
    """``selector(out)`` for a callable, else ``out[selector]``, with a clear error
    naming ``param`` when the output cannot be indexed so."""
    if callable(selector):
        return selector(out)
    try:
        return out[selector]
    except (IndexError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{param}={selector!r} cannot select from the {type(out).__name__} "
            f"returned by {what}: {exc}."
        ) from exc


def select_output(out, selector, what, param):
    """The tensor to measure from a module's (or the model's) output.

    ``selector`` is ``None`` (the output must be a tensor), an index or key into a
    tuple, list or dict output, or a callable applied to the output.
    """
    if selector is not None:
        out = _pick(out, selector, what, param)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list, dict)):
        raise ValueError(
            f"{what} returned a {type(out).__name__} of {len(out)} items, not a "
            f"tensor. Pass {param}= an index or key (e.g. {param}=0) or a callable "
            "that returns the tensor to measure."
        )
    raise TypeError(f"{what} returned a {type(out).__name__}, not a tensor.")


def select_hidden_states(out, selector="hidden_states"):
    """The tuple of hidden states in a model's output.

    ``selector`` is an attribute or key of the output (``"hidden_states"``, as
    returned by a model called with ``output_hidden_states=True``), an index into
    a tuple or list output, or a callable applied to the output.
    """
    if isinstance(selector, str) and not isinstance(out, dict):
        states = getattr(out, selector, None)
    else:
        states = _pick(out, selector, "the model", "hidden_states")
    if states is None:
        raise ValueError(
            f"The model's {type(out).__name__} output has no {selector!r} (call a "
            "model that returns them with output_hidden_states=True), or name the "
            "modules to read instead, e.g. layers=['blocks.0', 'blocks.1']."
        )
    if not isinstance(states, (tuple, list)) or not all(
        isinstance(h, torch.Tensor) for h in states
    ):
        raise ValueError(
            f"hidden_states={selector!r} must select a tuple of tensors from the "
            f"model's output (e.g. 'hidden_states' of a model called with "
            f"output_hidden_states=True); got {type(states).__name__}."
        )
    return tuple(states)


def check_scores(out):
    """Check that the model's output is ``(n_samples, n_outputs)``."""
    if out.ndim != 2:
        hint = (
            " A model with one output per sample must return shape (n, 1): end it "
            "with out.unsqueeze(1) or nn.Unflatten(1, (1,))."
            if out.ndim == 1
            else " Flatten or select the scores (model_output=...)."
        )
        raise ValueError(
            "The model must output (n_samples, n_outputs) scores; got shape "
            f"{tuple(out.shape)}.{hint}"
        )
    return out


def run_model(model, x, model_output=None):
    """``model(x)`` with its output selected and checked; shape errors explained."""
    return check_scores(
        select_output(forward(model, x), model_output, "the model", "model_output")
    )


def _shapes(x):
    if _is_multi(x):
        return str(_map(x, lambda v: tuple(v.shape)))
    return str(tuple(x.shape)) if hasattr(x, "shape") else type(x).__name__


def forward(model, x):
    """``model(x)``, ``model(*x)`` for a tuple of inputs or ``model(**x)`` for a
    dict, with torch's shape errors explained (the inputs' shapes and the fix in
    an :class:`InputShapeError`)."""
    try:
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, tuple):
            return model(*x)
        return model(x)
    except RuntimeError as exc:
        if isinstance(exc, InputShapeError):
            raise
        raise InputShapeError(
            f"The model could not run on a batch of shape {_shapes(x)}: {exc} "
            "Inputs must be in the model's input shape, e.g. (n, c, h, w) for a "
            "convolutional network (NFAProbe: pass input_shape=(c, h, w))."
        ) from exc
