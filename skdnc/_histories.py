"""Runs of a training, one per seed, summarised as means and standard deviations.

Works on anything that records ``epochs``, ``probes`` (a list of
:meth:`~skdnc.nn.NetworkProbe.to_dict` records) and ``curve(key)``: a
:class:`~skdnc.nn.TrainingHistory` or a :class:`~skdnc.nn.ProbeCallback`. It sits
below the Displays and the networks so that both use it without importing each
other.
"""

import numpy as np

__all__ = ["aggregate_histories"]

_CURVES = (
    "loss",
    "accuracy",
    "nc1",
    "nc2",
    "nc3",
    "nc4",
    "nfa_correlation",
    "nfa_correlation_uncentered",
    "nfa_correlation_agop",
    "right_share",
    "within_share",
    "between_share",
)


def aggregate_histories(histories):
    """Mean and standard deviation over seeds of every recorded curve.

    Parameters
    ----------
    histories : list of TrainingHistory or ProbeCallback
        Runs with the same measured epochs. A :class:`~skdnc.nn.ProbeCallback`
        records no loss or accuracy: their curves are then left out.

    Returns
    -------
    summary : dict
        ``"epochs"``, ``"n_seeds"``, and for each curve ``key`` (``"loss"``,
        ``"nc1"``, ``"nfa_correlation"``, ...) ``key + "_mean"`` and ``key + "_std"``
        as nested lists (std with ``ddof=1``, 0 for one seed); ``"loss"`` and
        ``"accuracy"`` only when every run recorded them. ``"final_nfa_mean"``
        and ``"final_nfa_std"`` are the paper's statistic: mean and (unbiased) std
        of the last measurement's sqrt-AGOP NFA correlation over seeds x layers.

    Examples
    --------
    >>> from skdnc.nn import TrainingHistory, aggregate_histories
    >>> a = TrainingHistory(epochs=[0, 1], loss=[1.0, 0.5], accuracy=[0.1, 0.9])
    >>> b = TrainingHistory(epochs=[0, 1], loss=[1.0, 0.7], accuracy=[0.1, 0.7])
    >>> aggregate_histories([a, b])["loss_mean"]
    [1.0, 0.6]
    """
    if not histories:
        raise ValueError("histories is empty.")
    epochs = list(histories[0].epochs)
    if any(list(h.epochs) != epochs for h in histories):
        raise ValueError("All histories must have the same measured epochs.")
    ddof = 1 if len(histories) > 1 else 0
    summary = {"epochs": epochs, "n_seeds": len(histories)}
    with_loss = all(len(getattr(h, "loss", ())) == len(epochs) for h in histories)
    for key in _CURVES:
        if key in ("loss", "accuracy") and not with_loss:
            continue  # a ProbeCallback records no loss
        if key not in ("loss", "accuracy") and not all(h.probes for h in histories):
            continue
        stack = np.stack([h.curve(key) for h in histories])
        summary[key + "_mean"] = stack.mean(axis=0).tolist()
        summary[key + "_std"] = stack.std(axis=0, ddof=ddof).tolist()
    if all(h.probes for h in histories):
        final = np.concatenate([h.curve("nfa_correlation")[-1] for h in histories])
        summary["final_nfa_mean"] = float(final.mean())
        summary["final_nfa_std"] = float(final.std(ddof=1)) if len(final) > 1 else 0.0
    return summary
