"""Training as in the paper's Appendix C, with per-layer measurements along the way.

SGD (momentum optional) on mini-batches of 128, mean squared error on one-hot
targets coded +-1 (the true class +1, the others -1), a constant learning rate.
Every ``measure_every`` epochs the training loss and accuracy are recorded, and
:func:`skdnc.nn.probe_network` measures NC1 by SVD stage and the NFA at every hidden
layer. Histories save to and load from JSON; several seeds aggregate to means and
standard deviations.
"""

import inspect
import json
from dataclasses import asdict, dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from sklearn.utils import assert_all_finite
from sklearn.utils._param_validation import Interval, validate_params
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_consistent_length
from tqdm.auto import tqdm

from skdnc._backend import iter_row_blocks, make_generator, resolve_device
from skdnc._histories import aggregate_histories
from skdnc._rfm_core import class_targets
from skdnc.nn._collapse_probe import layer_collapse
from skdnc.nn._common import (
    as_input,
    batch_length,
    check_inputs,
    eval_mode,
    forward,
    model_dtype,
    run_model,
    select_output,
    take,
)
from skdnc.nn._network_probe import probe_network

__all__ = [
    "ProbeCallback",
    "TrainingHistory",
    "aggregate_histories",
    "pm1_targets",
    "train_network",
    "train_seeds",
]


def pm1_targets(y_index, n_classes):
    """One-hot targets coded +-1: +1 for the true class, -1 elsewhere.

    Parameters
    ----------
    y_index : array-like of int, shape (n_samples,)
        Class indices ``0, ..., n_classes - 1``.
    n_classes : int

    Returns
    -------
    Y : torch.Tensor of shape (n_samples, n_classes), float32

    Examples
    --------
    >>> from skdnc.nn import pm1_targets
    >>> pm1_targets([0, 2], 3)
    tensor([[ 1., -1., -1.],
            [-1., -1.,  1.]])
    """
    return torch.tensor(class_targets(y_index, n_classes, "pm1"), dtype=torch.float32)


@dataclass
class TrainingHistory:
    """What :func:`train_network` recorded.

    Attributes
    ----------
    epochs : list of int
        Epochs at which measurements were taken (0: before training).
    loss : list of float
        Training MSE over all points (eval mode) at those epochs.
    accuracy : list of float
        Training accuracy at those epochs.
    probes : list of dict
        :meth:`NetworkProbe.to_dict` at those epochs (empty without probes).
    epoch_loss : list of float
        Mean mini-batch loss of every epoch ``1, ..., epochs``.
    config : dict
        The training settings (and anything the caller adds).
    """

    epochs: list = field(default_factory=list)
    loss: list = field(default_factory=list)
    accuracy: list = field(default_factory=list)
    probes: list = field(default_factory=list)
    epoch_loss: list = field(default_factory=list)
    config: dict = field(default_factory=dict)

    def to_dict(self):
        """Plain dict of lists (JSON-ready)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data):
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def save(self, path):
        """Write the history to ``path`` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path):
        """Read a history written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def curve(self, key):
        """A recorded quantity as an array over the measured epochs.

        Parameters
        ----------
        key : str
            ``"loss"``, ``"accuracy"``, or a key of :meth:`NetworkProbe.to_dict`
            (``"nc1"`` gives shape (n_epochs, n_layers, 3), ``"nfa_correlation"``
            (n_epochs, n_layers), ``"within_share"`` (n_epochs,), ...).

        Returns
        -------
        values : ndarray
        """
        if key in ("loss", "accuracy", "epochs"):
            return np.asarray(getattr(self, key), dtype=float)
        if not self.probes:
            raise ValueError("This history has no probe measurements.")
        return np.asarray([p[key] for p in self.probes], dtype=float)


def _name(fn):
    return getattr(fn, "__name__", type(fn).__name__)


def _output_labels(y, n_outputs):
    """Classes and class indices: integer labels in ``[0, n_outputs)`` index the
    outputs directly; other labels are sorted and must number ``n_outputs``."""
    if np.issubdtype(y.dtype, np.integer) and y.min() >= 0 and y.max() < n_outputs:
        return np.arange(n_outputs), y.astype(np.int64)
    classes, y_index = np.unique(y, return_inverse=True)
    if len(classes) != n_outputs:
        raise ValueError(
            f"y has {len(classes)} classes but the model has {n_outputs} outputs."
        )
    return classes, y_index


def _loss_function(loss):
    """``(fn, needs_pm1)``: the loss of the model's outputs and the targets."""
    if loss == "mse":
        return torch.nn.functional.mse_loss, True
    if loss == "cross_entropy":
        return torch.nn.functional.cross_entropy, False
    if callable(loss):
        return loss, False
    raise ValueError(
        f"loss must be 'mse', 'cross_entropy' or a callable (outputs, y_index) -> "
        f"scalar; got {loss!r}."
    )


def _evaluate(model, X, targets, y_index, loss_fn, batch_size, model_output):
    """Training loss and accuracy over all points, in eval mode, no grad."""
    loss, correct = 0.0, 0
    n = batch_length(X)
    with eval_mode(model), torch.no_grad():
        for rows in iter_row_blocks(n, batch_size):
            out = run_model(model, take(X, rows), model_output)
            loss += float(loss_fn(out, targets[rows])) * len(out)
            correct += int((out.argmax(1) == y_index[rows]).sum())
    return loss / n, correct / n


@validate_params(
    {
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "momentum": [Interval(Real, 0, None, closed="left")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "measure_every": [Interval(Integral, 1, None, closed="left"), None],
        "probe": ["boolean"],
        "probe_batch_size": [Interval(Integral, 1, None, closed="left")],
        "progress": ["boolean"],
    },
    prefer_skip_nested_validation=True,
)
def train_network(
    model,
    X,
    y,
    *,
    epochs=500,
    lr=0.05,
    momentum=0.0,
    weight_decay=0.0,
    batch_size=128,
    measure_every=None,
    probe=True,
    layers=None,
    probe_batch_size=512,
    device="auto",
    random_state=None,
    progress=True,
    optimizer=None,
    loss="mse",
    callbacks=(),
    model_output=None,
):
    """Train ``model`` in place with mini-batches (SGD on the MSE to +-1 one-hot
    targets by default).

    Parameters
    ----------
    model : torch.nn.Module
        Moved to ``device`` and trained in place; its train/eval mode is restored
        at the end. Its dtype (float32 or float64) is the compute dtype.
    X : array-like or torch.Tensor of shape (n_samples, ...)
        Training inputs in the model's input shape (integer inputs such as
        ``uint8`` images are converted to the model's dtype without scaling);
        a tuple of arrays is passed as ``model(*x)``, a dict as ``model(**x)``.
    y : array-like of shape (n_samples,)
        Class labels. Integers in ``[0, n_outputs)`` index the model's outputs
        directly; other labels are sorted, and there must be one per output.
    epochs : int, default=500
    lr : float, default=0.05
        Learning rate of the default optimiser.
    momentum : float, default=0.0
        Momentum of the default optimiser.
    weight_decay : float, default=0.0
        Weight decay of the default optimiser.
    batch_size : int, default=128
    measure_every : int, default=None
        Measure at epochs ``0, k, 2k, ...`` and at the last epoch; ``None``: only
        before and after training.
    probe : bool, default=True
        Run :func:`probe_network` at each measurement (else only loss and
        accuracy).
    layers : str, module or list, default=None
        Layers to probe, see :func:`find_layers`.
    probe_batch_size : int, default=512
    device : {"auto", "cpu", "cuda"} or torch.device, default="auto"
    random_state : int, RandomState instance or None, default=None
        Seeds the order of the mini-batches (a CPU :class:`torch.Generator`; the
        global RNG is not used). The init is the model builder's.
    progress : bool, default=True
        Show a tqdm progress bar over the epochs.
    optimizer : callable, default=None
        ``optimizer(model.parameters()) -> torch.optim.Optimizer``, e.g.
        ``lambda params: torch.optim.Adam(params, lr=1e-3)`` or
        ``functools.partial(torch.optim.AdamW, lr=1e-3)``; ``None``: SGD with
        ``lr``, ``momentum`` and ``weight_decay`` (which are then ignored
        otherwise).
    loss : {"mse", "cross_entropy"} or callable, default="mse"
        ``"mse"``: ``nn.MSELoss()`` to +-1 one-hot targets (the paper's);
        ``"cross_entropy"``: ``nn.CrossEntropyLoss()`` on the class indices; a
        callable ``loss(outputs, y_index)`` gets the class indices as a long
        tensor and returns the mean loss of the batch.
    callbacks : sequence of callable, default=()
        Each is called as ``callback(model, epoch)`` before training (epoch 0)
        and after every epoch, e.g. a :class:`ProbeCallback`.
    model_output : int, str or callable, default=None
        Selects the scores from a model that returns a tuple or dict (an index
        or key, e.g. ``"logits"``, or a callable), for the loss, the accuracy
        and the probes.

    Returns
    -------
    history : TrainingHistory

    Notes
    -----
    One optimiser is used for the whole run (the paper's code makes a new one
    every epoch, which matters only with momentum). The recorded ``loss`` is the
    chosen loss over all training points in eval mode.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.nn import make_mlp, train_network
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.normal(size=(64, 5)).astype(np.float32), np.arange(64) % 2
    >>> net = make_mlp(5, 2, width=16, depth=2, init_scale=1.0, random_state=0)
    >>> h = train_network(net, X, y, epochs=3, lr=0.1, device="cpu", progress=False,
    ...                   random_state=0)
    >>> h.epochs, len(h.probes), len(h.epoch_loss)
    ([0, 3], 2, 3)
    """
    device = resolve_device(device)
    loss_fn, pm1 = _loss_function(loss)
    if not isinstance(X, (torch.Tensor, tuple, dict)) and not hasattr(X, "__len__"):
        raise ValueError(
            "train_network trains on arrays X and y; with a DataLoader, write the "
            "loop and call a ProbeCallback in it."
        )
    check_inputs(X)
    y = np.asarray(y)
    check_consistent_length(np.empty(batch_length(X)), y)
    if y.dtype.kind in "fc":
        assert_all_finite(y, input_name="y")
    check_classification_targets(y)
    model.to(device)
    dtype = model_dtype(model)
    Xt = as_input(X, device, dtype)
    with eval_mode(model), torch.no_grad():
        n_outputs = run_model(model, take(Xt, slice(0, 1)), model_output).shape[1]
    classes, y_index = _output_labels(y, n_outputs)
    index_t = torch.as_tensor(y_index, device=device)
    if pm1:
        targets = pm1_targets(y_index, len(classes)).to(device=device, dtype=dtype)
    else:
        targets = index_t
    generator = make_generator(random_state)
    if optimizer is None:
        opt = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
        )
    elif callable(optimizer):
        opt = optimizer(model.parameters())
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(
                "optimizer must be a callable params -> torch.optim.Optimizer; it "
                f"returned {type(opt).__name__}."
            )
    else:
        raise TypeError(
            "optimizer must be a callable params -> torch.optim.Optimizer, e.g. "
            f"functools.partial(torch.optim.Adam, lr=1e-3); got {optimizer!r}."
        )
    history = TrainingHistory(
        config={
            "epochs": int(epochs),
            "lr": float(lr),
            "momentum": float(momentum),
            "weight_decay": float(weight_decay),
            "batch_size": int(batch_size),
            "measure_every": measure_every,
            "n_samples": batch_length(X),
            "classes": classes.tolist(),
            "optimizer": "SGD" if optimizer is None else type(opt).__name__,
            "loss": loss if isinstance(loss, str) else _name(loss),
        }
    )

    def diverged(epoch):
        finite = [v for v in (*history.loss, *history.epoch_loss) if np.isfinite(v)]
        last = f"{finite[-1]:.4g}" if finite else "none"
        return FloatingPointError(
            f"The training loss is not finite at epoch {epoch} (last finite loss "
            f"{last}): training diverged. Lower the learning rate or standardise "
            "the inputs."
        )

    def measure(epoch):
        value, acc = _evaluate(
            model, Xt, targets, index_t, loss_fn, probe_batch_size, model_output
        )
        if not np.isfinite(value):
            raise diverged(epoch)
        history.epochs.append(int(epoch))
        history.loss.append(value)
        history.accuracy.append(acc)
        if probe:
            try:
                result = probe_network(
                    model,
                    Xt,
                    y_index,
                    layers=layers,
                    batch_size=probe_batch_size,
                    model_output=model_output,
                )
            except FloatingPointError as exc:  # hidden features overflowed
                raise diverged(epoch) from exc
            history.probes.append(result.to_dict())

    was_training = model.training
    n = batch_length(Xt)
    try:
        measure(0)
        for callback in callbacks:
            callback(model, 0)
        bar = tqdm(
            range(1, int(epochs) + 1),
            desc="training",
            unit="epoch",
            disable=not progress,
        )
        for epoch in bar:
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            total = 0.0
            for rows in iter_row_blocks(n, batch_size):
                idx = order[rows]
                opt.zero_grad(set_to_none=True)
                out = forward(model, take(Xt, idx))
                out = select_output(out, model_output, "the model", "model_output")
                value = loss_fn(out, targets[idx])
                value.backward()
                opt.step()
                total += float(value.detach()) * len(idx)
            if not np.isfinite(total):
                raise diverged(epoch)
            history.epoch_loss.append(total / n)
            bar.set_postfix(loss=f"{total / n:.4g}")
            if epoch == epochs or (measure_every and epoch % int(measure_every) == 0):
                measure(epoch)
            for callback in callbacks:
                callback(model, epoch)
    finally:
        model.train(was_training)
    return history


def _keywords(fn):
    return {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind is p.KEYWORD_ONLY and name != "layers"
    }


_PROBE_KEYWORDS = _keywords(probe_network)
_COLLAPSE_KEYWORDS = _keywords(layer_collapse)


class ProbeCallback:
    """Probe a network every few epochs inside any training loop.

    Call it as ``callback(model, epoch)`` from your own loop (with your optimiser
    and loss), or pass it to :func:`train_network` in ``callbacks=``. At epochs
    ``0, every, 2 every, ...`` it runs :func:`probe_network` (AGOP, NFA, NC1 by
    SVD stage) and, if ``collapse_layers`` are given, :func:`layer_collapse`, on
    the probe data, and records the results.

    Parameters
    ----------
    X : array-like, torch.Tensor, DataLoader or iterable of (x, y) batches
        Probe data (a fixed subset of the training data, typically).
    y : array-like, default=None
        Labels for array ``X``; ``None`` for batches of ``(x, y)``.
    every : int, default=1
        Probe at epochs divisible by ``every``.
    layers : str, module or list, default=None
        Layers for :func:`probe_network` (see :func:`find_layers`); with
        ``layers=False`` only ``collapse_layers`` are measured.
    collapse_layers : str, module or list, default=None
        Modules whose output collapse :func:`layer_collapse` measures.
    **kwargs
        Passed to :func:`probe_network` and :func:`layer_collapse`, each taking
        those of its keywords (e.g. ``reduction="avgpool"``, ``batch_size=256``,
        ``init_model=``); a keyword neither takes is a ``TypeError`` here.

    Attributes
    ----------
    epochs : list of int
        Epochs probed.
    probes : list of dict
        :meth:`NetworkProbe.to_dict` of every probe (when ``layers`` is not
        ``False``).
    collapse : list of dict
        :meth:`CollapseProbe.to_dict` of every probe (with ``collapse_layers``).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skdnc.nn import ProbeCallback
    >>> X, y = torch.randn(40, 5), torch.arange(40) % 2
    >>> net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> callback = ProbeCallback(X, y, every=2)
    >>> opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    >>> for epoch in range(5):
    ...     if epoch:  # epoch 0 probes the initialisation
    ...         opt.zero_grad()
    ...         nn.functional.cross_entropy(net(X), y).backward()
    ...         opt.step()
    ...     callback(net, epoch)
    >>> callback.epochs, callback.curve("nfa_correlation").shape
    ([0, 2, 4], (3, 1))
    """

    def __init__(
        self, X, y=None, *, every=1, layers=None, collapse_layers=None, **kwargs
    ):
        if int(every) < 1:
            raise ValueError(f"every must be a positive integer; got {every!r}.")
        unknown = sorted(set(kwargs) - _PROBE_KEYWORDS - _COLLAPSE_KEYWORDS)
        if unknown:
            raise TypeError(
                f"ProbeCallback got unexpected keyword arguments {unknown}: it "
                "passes keywords to probe_network and layer_collapse, which take "
                f"{sorted(_PROBE_KEYWORDS | _COLLAPSE_KEYWORDS)}."
            )
        self.X, self.y, self.every = X, y, int(every)
        self.layers, self.collapse_layers, self.kwargs = layers, collapse_layers, kwargs
        self.epochs, self.probes, self.collapse = [], [], []

    def __call__(self, model, epoch):
        if int(epoch) % self.every:
            return
        self.epochs.append(int(epoch))
        probe_kwargs = {k: v for k, v in self.kwargs.items() if k in _PROBE_KEYWORDS}
        if self.layers is not False:
            result = probe_network(
                model, self.X, self.y, layers=self.layers, **probe_kwargs
            )
            self.probes.append(result.to_dict())
        if self.collapse_layers is not None:
            result = layer_collapse(
                model,
                self.X,
                self.y,
                layers=self.collapse_layers,
                **{k: v for k, v in self.kwargs.items() if k in _COLLAPSE_KEYWORDS},
            )
            self.collapse.append(result.to_dict())

    def curve(self, key, *, collapse=False):
        """A recorded quantity over the probed epochs.

        Parameters
        ----------
        key : str
            A key of :meth:`NetworkProbe.to_dict` (``"nc1"``,
            ``"nfa_correlation"``, ...) or, with ``collapse=True``, of
            :meth:`CollapseProbe.to_dict`.
        collapse : bool, default=False

        Returns
        -------
        values : ndarray of shape (n_epochs, ...)
        """
        records = self.collapse if collapse else self.probes
        if not records:
            raise ValueError("Nothing recorded yet for this kind of probe.")
        return np.asarray([r[key] for r in records], dtype=float)


def train_seeds(build_model, X, y, *, seeds=(0, 1, 2), **kwargs):
    """Train one freshly built model per seed.

    Parameters
    ----------
    build_model : callable
        ``build_model(seed) -> torch.nn.Module``, e.g.
        ``lambda s: make_mlp(64, random_state=s)``.
    X, y
        As for :func:`train_network`.
    seeds : iterable of int, default=(0, 1, 2)
        Each seeds both the init (through ``build_model``) and the batch order.
    **kwargs
        Passed to :func:`train_network`.

    Returns
    -------
    histories : list of TrainingHistory
        Each with ``config["seed"]``.
    """
    histories = []
    for seed in seeds:
        history = train_network(build_model(seed), X, y, random_state=seed, **kwargs)
        history.config["seed"] = int(seed)
        histories.append(history)
    return histories
