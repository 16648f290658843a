"""Data-parallel fits on a :mod:`torch.distributed` process group (SPMD).

Every rank runs the same fit on the same data. The expensive products are split by
rows: rank ``r`` of ``p`` computes the rows :func:`row_shard` gives it (of the
kernel matrix in a conjugate-gradient product, of the points of an AGOP, of a
random feature map, of a prediction), and one collective puts the pieces back
together, so that every rank holds the same full result and takes the same next
step. Everything small (the CG recursion, eigendecompositions, random draws from
the shared seed) is repeated on every rank.

A :class:`Comm` is the view of one fit on the group; ``None`` stands for a
single process everywhere in skdnc, and then nothing here runs. Its collectives
wait while watching the group's store for an error another rank reported
(:func:`fail_together`), so that a rank that raises makes the others raise too,
naming it, instead of leaving them blocked in a collective until the process
group's timeout (which stays the backstop for a rank that hangs or dies).

Before its first collective every distributed call checks that the ranks agree
on it (:func:`check_call`: one all-gather of a fingerprint of the estimator's
class, the method, the data's shape and every parameter but the per-rank ones),
and raises a ``ValueError`` on every rank naming the first rank and the first
difference, instead of leaving the ranks in mismatched collectives. A rank that
never makes the call (``predict`` on rank 0 alone) cannot be told from a slow
one: the other ranks then wait in that all-gather for the process group's
``timeout`` (``init_process_group(..., timeout=timedelta(...))``; torch's
default is 30 minutes for Gloo and 10 for NCCL), and raise
:class:`DistributedFitError` saying so.
"""

import contextlib
import functools
import itertools
import time
import zlib

import numpy as np
import torch
import torch.distributed as dist

DISTRIBUTED_OPTIONS = ("auto", False)
#: How often a rank waiting in a collective asks the store for other ranks' errors.
STORE_POLL_SECONDS = 0.02

#: Fits started in this process: the key of a fit's error in the group's store.
#: Every rank starts the same fits in the same order (SPMD), so the keys agree.
_FIT_COUNTER = itertools.count()


class DistributedFitError(RuntimeError):
    """Another rank of the process group failed during a distributed fit."""


def world(distributed="auto"):
    """The :class:`Comm` of a fit, or ``None`` to compute in this process alone.

    Parameters
    ----------
    distributed : {"auto", False}, default="auto"
        ``"auto"`` uses the default process group when :mod:`torch.distributed`
        is available and initialised with more than one rank; ``False`` never
        does.

    Returns
    -------
    comm : Comm or None
    """
    if distributed not in DISTRIBUTED_OPTIONS:
        raise ValueError(f"distributed must be 'auto' or False; got {distributed!r}.")
    if distributed is False or not dist.is_available() or not dist.is_initialized():
        return None
    if dist.get_world_size() < 2:
        return None
    return Comm()


def row_shard(n, rank, size):
    """The rows ``[start, stop)`` of ``range(n)`` that rank ``rank`` of ``size``
    computes: contiguous chunks of ``ceil(n / size)`` rows (the last ones may be
    shorter or empty).

    Examples
    --------
    >>> from skdnc._distributed import row_shard
    >>> [row_shard(10, r, 3) for r in range(3)]
    [slice(0, 4, None), slice(4, 8, None), slice(8, 10, None)]
    """
    chunk = -(-int(n) // int(size))
    start = min(int(n), rank * chunk)
    return slice(start, min(int(n), start + chunk))


class Comm:
    """The process group as one fit sees it: rank, size and error-aware
    collectives.

    Parameters
    ----------
    group : ProcessGroup, optional
        Default: the default process group.
    """

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.key = f"skdnc/fit/{next(_FIT_COUNTER)}/error"
        self._store = _default_store()
        self.seconds = 0.0  # time spent in (or waiting on) collectives
        self.bytes = 0  # payload bytes sent into collectives by this rank

    def row_shard(self, n):
        """This rank's rows of ``range(n)`` (see :func:`row_shard`)."""
        return row_shard(n, self.rank, self.size)

    def all_reduce_sum(self, tensor):
        """Sum ``tensor`` over the ranks, in place; returns it."""
        self.bytes += tensor.numel() * tensor.element_size()
        self._wait(dist.all_reduce(tensor, group=self.group, async_op=True))
        return tensor

    def broadcast(self, tensor, src=0):
        """``tensor`` of rank ``src`` on every rank, in place; returns it."""
        if self.rank == src:
            self.bytes += tensor.numel() * tensor.element_size()
        self._wait(dist.broadcast(tensor, src, group=self.group, async_op=True))
        return tensor

    def gather_rows(self, local, n):
        """The full ``(n, ...)`` tensor from every rank's :meth:`row_shard` of it.

        ``local`` holds this rank's rows. The chunks are padded to one size, which
        ``all_gather`` needs, and the padding is cut off.
        """
        chunk = -(-int(n) // self.size)
        if local.shape[0] < chunk:
            pad = local.new_zeros((chunk - local.shape[0], *local.shape[1:]))
            local = torch.cat([local, pad])
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        self.bytes += local.numel() * local.element_size()
        self._wait(dist.all_gather(parts, local, group=self.group, async_op=True))
        return torch.cat(parts)[:n]

    def check_same(self, what, *arrays):
        """Raise ``ValueError`` on every rank unless every rank passed the same
        arrays (NumPy, compared by shape, sum, sum of squares and a sum weighted by
        row number: one all-gather of a few numbers)."""
        fingerprint = []
        for A in arrays:
            A = np.asarray(A, dtype=np.float64).reshape(len(A), -1)
            rows = A.sum(axis=1)
            order = rows @ np.arange(1, len(A) + 1, dtype=np.float64)
            fingerprint += [*A.shape, rows.sum(), np.einsum("ij,ij->", A, A), order]
        mine = torch.tensor(fingerprint, dtype=torch.float64, device=self._device())
        every = self.gather_rows(mine[None], self.size).cpu()
        differ = [r for r in range(self.size) if not torch.equal(every[r], every[0])]
        if differ:
            shapes = [tuple(int(v) for v in every[r][:2]) for r in (0, differ[0])]
            raise ValueError(
                f"Every rank of a distributed fit must pass the same {what}; rank "
                f"{differ[0]}'s differ from rank 0's (first array of shape "
                f"{shapes[1]} against {shapes[0]}). Passing each rank its own "
                "shard of the rows is not supported: give every rank all the data, "
                "or fit with distributed=False."
            )

    def barrier(self):
        """Wait for every rank (a one-number all-reduce, which watches the store
        for errors like every collective here)."""
        self.all_reduce_sum(torch.zeros(1, device=self._device()))

    def _device(self):
        backend = dist.get_backend(self.group)
        if backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def _wait(self, work):
        """Wait for a collective, raising :class:`DistributedFitError` as soon as
        another rank has reported an error. The process group's own timeout ends
        the wait for a rank that neither finishes nor reports."""
        tic = checked = time.perf_counter()
        pause = 1e-5
        while not work.is_completed():
            # Completion is polled locally; the store (a server on one rank, which
            # every rank asks) at most every STORE_POLL_SECONDS.
            now = time.perf_counter()
            if now - checked >= STORE_POLL_SECONDS:
                self.raise_reported()
                checked = now
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)
        try:
            work.wait()
        except RuntimeError as exc:
            self.raise_reported()
            raise DistributedFitError(
                f"A collective of the distributed fit failed on rank {self.rank} "
                f"of {self.size} (another rank may have exited or timed out): {exc}"
            ) from exc
        self.seconds += time.perf_counter() - tic

    def raise_reported(self):
        """Raise :class:`DistributedFitError` if another rank reported an error."""
        if self._store is not None and self._store.check([self.key]):
            message = self._store.get(self.key).decode(errors="replace")
            raise DistributedFitError(message)

    def report(self, exc):
        """Write this rank's error into the group's store, where the others'
        collectives look for it."""
        if self._store is None:
            return
        message = (
            f"Rank {self.rank} of {self.size} failed during the distributed fit "
            f"with {type(exc).__name__}: {exc}"
        )
        with contextlib.suppress(Exception):
            if not self._store.check([self.key]):
                self._store.set(self.key, message)


#: Parameters that may differ between ranks: they change no collective.
PER_RANK_PARAMS = ("device", "memory_budget", "verbose")
#: Slots of a call's fingerprint: class, method, rows, columns, then parameters.
_FINGERPRINT_SLOTS = 64


def _hash(value):
    """A 31-bit hash of a parameter's value that is the same in every process
    (``hash`` of a str is salted per process; an object's repr names its
    address, so objects count by their type)."""
    if not isinstance(value, int | float | str | bool | tuple | list | dict):
        value = value if value is None else type(value).__qualname__
    return zlib.crc32(repr(value).encode()) & 0x7FFFFFFF


def _call_fingerprint(estimator, call, X):
    """The fingerprint of a distributed call and the names of its slots."""
    shape = getattr(X, "shape", None)
    if shape is None:
        shape = (len(X),) if hasattr(X, "__len__") else ()
    shape = (*tuple(shape)[:2], -1, -1)[:2]
    params = {
        k: v
        for k, v in sorted(estimator.get_params(deep=False).items())
        if k not in PER_RANK_PARAMS
    }
    names = [
        "estimator",
        "method",
        "number of rows of X",
        "number of columns of X",
        *params,
    ]
    values = [
        _hash(type(estimator).__qualname__),
        _hash(call),
        *shape,
        *(_hash(v) for v in params.values()),
    ]
    values = values[:_FINGERPRINT_SLOTS]
    return values + [0] * (_FINGERPRINT_SLOTS - len(values)), names


def check_call(comm, estimator, call, X):
    """Raise ``ValueError`` on every rank unless every rank makes the same call.

    One all-gather of a fingerprint (the estimator's class, the method, the shape
    of ``X`` and a hash of every parameter but :data:`PER_RANK_PARAMS`): a rank
    that calls another method, or has another ``max_iter``, would otherwise
    enter other collectives and wait for the process group's timeout. A rank
    that makes no call at all leaves this all-gather waiting until that timeout,
    which raises :class:`DistributedFitError` saying so. ``comm=None`` does
    nothing.

    Parameters
    ----------
    comm : Comm or None
    estimator : BaseEstimator
    call : str
        The method (every rank must make the same collective call).
    X : array-like or None
        The data passed; ``None`` leaves the shape out (``fit`` compares its
        data with :meth:`Comm.check_same`, which says more).
    """
    if comm is None:
        return
    mine, names = _call_fingerprint(estimator, call, X)
    local = torch.tensor([mine], dtype=torch.int64, device=comm._device())
    try:
        every = comm.gather_rows(local, comm.size).cpu()
    except DistributedFitError as exc:
        raise DistributedFitError(
            f"Rank {comm.rank} of {comm.size} called {type(estimator).__name__}."
            f"{call} and not every rank made the same call within the process "
            "group's timeout (set with init_process_group(..., timeout=...)). "
            "Every rank must call the same methods, with the same parameters, in "
            f"the same order. ({exc})"
        ) from exc
    for rank in range(comm.size):
        if torch.equal(every[rank], every[0]):
            continue
        slot = int(torch.nonzero(every[rank] != every[0])[0])
        name = names[slot] if slot < len(names) else "parameters"
        if slot in (2, 3):
            detail = f"{int(every[rank][slot])} against {int(every[0][slot])}"
        elif slot == 1:
            detail = f"rank {comm.rank} called {call!r}"
        elif slot >= 4 and comm.rank in (0, rank):
            value = estimator.get_params(deep=False).get(name)
            detail = f"rank {comm.rank} has {name}={value!r}"
        else:
            detail = "they differ"
        raise ValueError(
            f"Every rank of a distributed {type(estimator).__name__} must make the "
            f"same call with the same parameters; rank {rank}'s {name} differs "
            f"from rank 0's ({detail}). Call the same methods on every rank, or "
            "set distributed=False where only one rank computes."
        )


def _default_store():
    """The key-value store of the default process group (``None`` if it cannot be
    reached: then only the process group's timeout ends a failed fit)."""
    try:
        return dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):  # pragma: no cover
        return None


@contextlib.contextmanager
def fail_together(comm):
    """Run a fit so that an error on any rank raises on every rank.

    On an error this rank reports it in the store (unless it is itself another
    rank's error) and re-raises; the others' next collective raises
    :class:`DistributedFitError` naming this rank. A fit that ends without an
    error waits at a barrier, so that a rank that failed after the last
    collective still fails the fit everywhere. ``comm=None`` does nothing.
    """
    if comm is None:
        yield
        return
    try:
        yield
    except BaseException as exc:
        if not isinstance(exc, DistributedFitError):
            comm.report(exc)
        raise
    comm.barrier()


def collective(method):
    """Decorate an estimator's method ``method(self, ..., comm)``: ``comm`` is the
    estimator's ``distributed`` parameter resolved by :func:`world`, the ranks
    are checked to make the same call (:func:`check_call`), and the whole call,
    input validation included, runs in :func:`fail_together`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        comm = world(self.distributed)
        with fail_together(comm):
            check_call(comm, self, method.__name__, args[0] if args else None)
            return method(self, *args, comm=comm, **kwargs)

    return wrapper
