"""Pieces shared by every public entry point: label validation, the device
constraint, the pass-through mixin of measuring steps.

One wording of each error, so that an estimator, a metric and a probe given the
same bad input say the same thing.
"""

import functools

import numpy as np
import torch
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

#: The ``device`` constraint of every estimator (``_parameter_constraints``);
#: the value itself is checked by :func:`skdnc._backend.resolve_device` in ``fit``.
DEVICE_CONSTRAINT = [str, torch.device]


class NonFiniteError(ValueError, FloatingPointError):
    """Values that must be finite are not: a ``ValueError`` for input validation,
    and a ``FloatingPointError`` for a computation (a diverged network) that
    produced them."""


def check_class_labels(y, *, owner):
    """Sorted classes and the class index of every sample, for at least 2 classes.

    Parameters
    ----------
    y : ndarray of shape (n_samples,)
        Labels already validated as a 1-D array (any type).
    owner : str
        Name of the estimator or function, used in the error message.

    Returns
    -------
    classes : ndarray of shape (n_classes,)
    y_index : ndarray of int of shape (n_samples,)
        ``classes[y_index] == y``.

    Raises
    ------
    ValueError
        When ``y`` is not a classification target (continuous values) or holds
        fewer than 2 classes.
    """
    check_classification_targets(y)
    classes, y_index = np.unique(y, return_inverse=True)
    if len(classes) < 2:
        found = ""
        if len(classes):
            label = classes[0]
            label = label.item() if isinstance(label, np.generic) else label
            found = f": {label!r}"
        raise ValueError(
            f"{owner} needs samples of at least 2 classes; got {len(classes)} "
            f"class{found}."
        )
    return classes, y_index.reshape(-1)


def uses_cuda(device):
    """Whether an estimator's ``device`` parameter computes on a CUDA device
    (its results are then not bit-for-bit reproducible)."""
    if device in (None, "auto"):
        return torch.cuda.is_available()
    try:
        return torch.device(device).type == "cuda"
    except (RuntimeError, TypeError):
        return False


def atomic_fit(fit):
    """Decorate ``fit`` so that a fit that raises leaves the estimator as it was.

    ``fit`` replaces fitted attributes as it goes (``n_features_in_`` in
    ``validate_data``, ``classes_``, ...); when it raises, every attribute is put
    back, so a previously fitted estimator still predicts exactly as before and
    an unfitted one stays unfitted. Fitted attributes are replaced, never
    changed in place, so restoring the attribute dictionary is enough.
    """

    @functools.wraps(fit)
    def wrapper(self, *args, **kwargs):
        state = dict(self.__dict__)
        try:
            return fit(self, *args, **kwargs)
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise

    return wrapper


class PassthroughMixin:
    """``transform`` that returns its validated input: for steps that measure.

    A measuring step (:class:`~skdnc.metrics.NeuralCollapseScorer`,
    :class:`~skdnc.NFAProbe`) records its measurements in ``fit`` and passes the
    data on unchanged, so that it can sit anywhere in a Pipeline. It needs ``y``
    and keeps the input's float dtype. Put it left of ``TransformerMixin`` and
    ``BaseEstimator``, and with ``OneToOneFeatureMixin`` for feature names.
    """

    def transform(self, X):
        """Return ``X`` unchanged (validated).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Input data.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            The same values, as a float32 or float64 array.
        """
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.required = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags
