"""What training and probing share: the model's dtype and device, eval mode, the
data as batches (arrays, tensors, DataLoaders), and checked model outputs."""

from contextlib import contextmanager

import numpy as np
import torch
from sklearn.utils.validation import check_consistent_length

from skdnc._backend import iter_row_blocks, to_tensor
from skdnc._base import NonFiniteError

__all__ = [
    "InputShapeError",
    "as_batches",
    "check_scores",
    "eval_mode",
    "model_device",
    "model_dtype",
    "run_model",
    "select_output",
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
    if y is None:
        if _is_array(X) or isinstance(X, (list, tuple)) and X and _is_number(X[0]):
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
        _is_array(X) or isinstance(X, (list, tuple))
    ):
        raise ValueError(
            f"{name} is a {type(X).__name__} (batches of (x, y)), so the labels come "
            "from its batches: pass y=None."
        )
    if not isinstance(X, torch.Tensor):
        X = np.asarray(X)
    y = np.asarray(y) if not isinstance(y, torch.Tensor) else y
    check_consistent_length(X, y)
    size = len(X) if not batch_size else int(batch_size)

    def arrays():
        for rows in iter_row_blocks(len(X), size):
            yield X[rows], y[rows]

    return arrays, len(X)


def _is_number(v):
    return isinstance(v, (int, float, np.number))


def as_input(x, device, dtype):
    """A batch of inputs as a tensor on ``device`` with ``dtype``, finite.

    Raises
    ------
    NonFiniteError
        When the batch holds NaN or infinity, or values beyond the range of the
        model's ``dtype`` (the message says which).
    """
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


def select_output(out, selector, what, param):
    """The tensor to measure from a module's (or the model's) output.

    ``selector`` is ``None`` (the output must be a tensor), an index or key into a
    tuple, list or dict output, or a callable applied to the output.
    """
    if callable(selector):
        out = selector(out)
    elif selector is not None:
        try:
            out = out[selector]
        except (IndexError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{param}={selector!r} cannot select from the {type(out).__name__} "
                f"returned by {what}: {exc}."
            ) from exc
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list, dict)):
        raise ValueError(
            f"{what} returned a {type(out).__name__} of {len(out)} items, not a "
            f"tensor. Pass {param}= an index or key (e.g. {param}=0) or a callable "
            "that returns the tensor to measure."
        )
    raise TypeError(f"{what} returned a {type(out).__name__}, not a tensor.")


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
    try:
        out = model(x)
    except RuntimeError as exc:
        if isinstance(exc, InputShapeError):
            raise
        raise InputShapeError(
            f"The model could not run on a batch of shape {tuple(x.shape)}: {exc} "
            "Inputs must be in the model's input shape, e.g. (n, c, h, w) for a "
            "convolutional network (NFAProbe: pass input_shape=(c, h, w))."
        ) from exc
    return check_scores(select_output(out, model_output, "the model", "model_output"))
