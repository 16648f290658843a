"""The network's linear readout: its input's class means, NC3 of its weight
rows and NC4 of its predictions, measured over a probe's passes."""

import warnings

import numpy as np
import torch
from torch import nn

from skdnc._backend import to_numpy
from skdnc.metrics import CollapseAccumulator
from skdnc.metrics._readout import _nc3_from_means, _nearest_mean


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
