"""Collapse measurements as pandas tables."""

import numpy as np

from skdnc._backend import import_pandas

__all__ = ["history_to_frame"]


def history_to_frame(history):
    """A per-layer collapse history as a :class:`pandas.DataFrame`.

    Parameters
    ----------
    history : dict of array-like
        ``"layer"`` and columns of equal length, e.g. the ``collapse_history_``
        of a fitted :class:`skdnc.DeepRFMTransformer`, whose keys are
        ``f"{metric}_{stage}"`` with the names of :data:`METRIC_NAMES` and
        :data:`STAGES`.

    Returns
    -------
    frame : pandas.DataFrame
        One row per layer, indexed by ``"layer"``, one column per other key, in
        the history's order.

    Raises
    ------
    ImportError
        When pandas is not installed (it is optional).

    Examples
    --------
    >>> from skdnc.metrics import history_to_frame
    >>> history = {"layer": [1, 2], "nc1_input": [1.0, 0.5]}
    >>> history_to_frame(history)
           nc1_input
    layer
    1            1.0
    2            0.5
    """
    pd = import_pandas("history_to_frame")
    if history is None:
        raise ValueError(
            "history is None: the estimator was fitted with record_metrics=False, "
            "so it recorded no collapse history. Refit with record_metrics=True."
        )
    if not isinstance(history, dict) or "layer" not in history:
        raise TypeError(
            "history must be a dict with a 'layer' key, such as the "
            "collapse_history_ of a fitted DeepRFMTransformer; got "
            f"{type(history).__name__}."
        )
    columns = {k: np.asarray(v) for k, v in history.items() if k != "layer"}
    lengths = {len(v) for v in columns.values()} | {len(history["layer"])}
    if len(lengths) > 1:
        raise ValueError(
            f"Every column of history must have one value per layer; got lengths "
            f"{sorted(lengths)}."
        )
    index = pd.Index(np.asarray(history["layer"]), name="layer")
    return pd.DataFrame(columns, index=index)
