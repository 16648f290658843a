"""Torch backend helpers: device and dtype resolution, array conversion, seeding.

Every estimator resolves its ``device``/``dtype`` parameters here, in ``fit``, into
local variables. The global torch state touched here, CUDA's TF32 switch and the
number of CPU threads, is set for the duration of a block only
(:func:`matmul_precision`, :func:`cpu_threads`).
"""

import contextlib
import os
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device="auto", *, fallback=False):
    """Return the :class:`torch.device` named by an estimator's ``device`` parameter.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        ``"auto"`` picks CUDA when it is available and the CPU otherwise.
    fallback : bool, default=False
        When CUDA is asked for but not available, warn and use the CPU instead of
        raising: what prediction with a model fitted on a GPU machine needs.

    Returns
    -------
    device : torch.device
    """
    if isinstance(device, torch.device):
        resolved = device
    elif device in (None, "auto"):
        resolved = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            resolved = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(
                f"device must be 'auto', 'cpu', 'cuda' or a torch device; got "
                f"{device!r}."
            ) from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        if fallback:
            warnings.warn(
                f"device={device!r} is not available on this machine; computing on "
                "the CPU.",
                UserWarning,
                stacklevel=3,
            )
            return torch.device("cpu")
        raise ValueError(
            f"device={device!r} asks for CUDA, but torch.cuda.is_available() is False."
            " Use device='auto' or device='cpu'."
        )
    return resolved


def resolve_dtype(dtype="float64", like=None):
    """Return the torch dtype named by an estimator's ``dtype`` parameter.

    Parameters
    ----------
    dtype : {"float32", "float64"}, torch.dtype or None, default="float64"
        ``None`` takes the precision of ``like``: float32 for a float32 array,
        float64 for anything else (float64, integers, no array).
    like : array-like, optional
        The input whose precision ``dtype=None`` follows.

    Returns
    -------
    dtype : torch.dtype
    """
    if dtype is None:
        kind = getattr(like, "dtype", None)
        single = kind in (np.float32, torch.float32)
        return torch.float32 if single else torch.float64
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(
            f"dtype must be None or one of {sorted(_DTYPES)}; got {dtype!r}."
        ) from None


@contextlib.contextmanager
def matmul_precision(device, allow_tf32=True):
    """Within the block, let float32 matrix products on a CUDA ``device`` use
    TensorFloat-32 tensor cores (``allow_tf32=True``) or not; restored on exit.

    TF32 keeps float32's range with a 10-bit mantissa in the products' inputs
    (sums stay float32): several times the throughput of float32 on recent GPUs.
    Nothing changes on the CPU.
    """
    if device.type != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul
    previous = (matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(allow_tf32)
    try:
        yield
    finally:
        matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def to_tensor(X, device, dtype):
    """Copy an array into a new torch tensor on ``device`` with ``dtype``.

    Always copies, so that read-only inputs (memmaps) are valid and the caller's
    array is never aliased.
    """
    if isinstance(X, torch.Tensor):
        return X.detach().to(device=device, dtype=dtype, copy=True)
    return torch.tensor(np.asarray(X), device=device, dtype=dtype)


def to_numpy(A, dtype=None):
    """NumPy copy of a tensor (detached, moved to the CPU), optionally cast.

    Reduced-precision floats (float16, bfloat16), which have no NumPy twin, come
    back as float64. Anything that is not a tensor is returned as it is (or
    ``np.asarray(A, dtype)`` when ``dtype`` is given), for scikit-learn's
    validation to take over.
    """
    if not isinstance(A, torch.Tensor):
        return A if dtype is None else np.asarray(A, dtype=dtype)
    A = A.detach().cpu()
    if A.is_floating_point() and A.dtype not in (torch.float32, torch.float64):
        A = A.to(torch.float64)
    A = A.numpy()
    return A if dtype is None else A.astype(dtype, copy=False)


def make_generator(random_state):
    """Seeded CPU :class:`torch.Generator` from a scikit-learn ``random_state``.

    Random draws are made on the CPU with this generator and then moved to the
    compute device, so that a seed gives the same numbers on every device.
    """
    rng = check_random_state(random_state)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    return torch.Generator(device="cpu").manual_seed(seed)


def memory_budget_bytes(memory_budget, device):
    """Number of bytes a computation may use on ``device``.

    Parameters
    ----------
    memory_budget : float or None
        Budget in GiB. ``None`` means: 80% of the free memory of a CUDA device, or
        half of the physical memory that is available now on the CPU (Linux's
        ``MemAvailable``: the free pages and the page cache the kernel can
        reclaim; elsewhere the free pages).
    device : torch.device

    Returns
    -------
    budget : int
        Budget in bytes.
    """
    if memory_budget is not None:
        return int(float(memory_budget) * 2**30)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.8 * free)
    available = _meminfo_available()
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
            available = 8 * 2**30
    return int(0.5 * available)


def _meminfo_available(path="/proc/meminfo"):
    """``MemAvailable`` of Linux's ``/proc/meminfo`` in bytes, or ``None``.

    The free pages alone (``SC_AVPHYS_PAGES``) leave out the page cache, which
    grows with every file read and is handed back on demand: a default budget
    from them varied with what the machine had read before the fit."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def release_memory(device):
    """Hand the memory of freed tensors back to the device (CUDA's caching
    allocator keeps it otherwise), so that it does not grow across CV folds."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def block_rows(n_cols, itemsize, budget, n_buffers=1, max_entries=2**26):
    """Rows per block of a computation that holds ``n_buffers`` blocks of ``n_cols``.

    At most ``budget`` bytes in all, and at most ``max_entries`` numbers per buffer:
    beyond some ten thousand rows a bigger block only costs memory, as the matrix
    products are already at full speed.
    """
    per_row = max(1, n_buffers * n_cols * itemsize)
    return int(max(1, min(budget // per_row, max_entries // max(1, n_cols))))


#: On a CPU, a kernel block holds at most this many entries (8 MiB in float64):
#: the elementwise passes that turn its distances into kernel values (clamp,
#: square root, scale, exponential) then run in cache instead of streaming a
#: large block through memory once per pass (``benchmarks/bench_predict.py``).
CPU_KERNEL_BLOCK_ENTRIES = 2**20


def kernel_block_rows(n_cols, X, budget, n_buffers=1):
    """:func:`block_rows` for kernel blocks of rows of ``X`` against ``n_cols``
    columns: on a CPU, at most :data:`CPU_KERNEL_BLOCK_ENTRIES` entries."""
    if X.device.type != "cpu":
        return block_rows(n_cols, X.element_size(), budget, n_buffers)
    return block_rows(
        n_cols, X.element_size(), budget, n_buffers, CPU_KERNEL_BLOCK_ENTRIES
    )


def iter_row_blocks(n, block_size):
    """Yield ``slice`` objects covering ``range(n)`` in blocks of ``block_size``."""
    block_size = max(1, int(block_size))
    for start in range(0, n, block_size):
        yield slice(start, min(n, start + block_size))


def normalize_rows(X, *, inplace=True):
    """Divide every row of ``X`` by its Euclidean norm; zero rows stay zero.

    Parameters
    ----------
    X : torch.Tensor or ndarray of shape (n, d)
        Floating-point rows.
    inplace : bool, default=True
        Overwrite ``X`` (and return it) rather than return a new array.

    Returns
    -------
    X : torch.Tensor or ndarray of shape (n, d)
        Of the same kind as the input.

    Notes
    -----
    Rows whose squared norm overflows (entries beyond the square root of the
    dtype's largest value) are divided by their largest entry first, which the
    normalisation cancels, so that huge rows come out as unit rows, not zeros.
    """
    if isinstance(X, torch.Tensor):
        if not inplace:
            X = X.clone()
        norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        if not bool(torch.isfinite(norms).all()):
            X.div_(X.abs().amax(dim=1, keepdim=True).clamp_(min=1.0))
            norms = torch.linalg.vector_norm(X, dim=1, keepdim=True)
        norms.clamp_(min=torch.finfo(X.dtype).tiny)
        return X.div_(norms)
    out = X if inplace else X.copy()
    with np.errstate(over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    if not np.isfinite(norms).all():
        np.divide(out, np.maximum(np.abs(out).max(axis=1, keepdims=True), 1.0), out=out)
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))[:, None]
    return np.divide(out, norms, out=out, where=norms > 0)


def import_pandas(what):
    """The pandas module, or an ImportError naming ``what`` needs it and the fix.

    pandas is optional (it is in the ``tests`` extra); only the ``to_frame``
    methods need it.
    """
    try:
        import pandas
    except ImportError as exc:
        raise ImportError(
            f"{what} needs pandas, which is not installed. Install it with "
            "`pip install pandas` (or `pip install skdnc[tests]`), or use the "
            "plain dict instead (to_dict() / the history dict itself)."
        ) from exc
    return pandas


def _array_space(X):
    """``(namespace, device)`` of a torch tensor under scikit-learn's
    ``array_api_dispatch``, else ``None`` (NumPy in, NumPy out)."""
    from sklearn import get_config

    if not isinstance(X, torch.Tensor) or not get_config()["array_api_dispatch"]:
        return None
    return ("torch", str(X.device))


def array_api_input(X, y=None, *, fitted=False, method="fit"):
    """Torch tensors in: NumPy copies of ``X`` and ``y`` for validation, and where
    the outputs go (scikit-learn's Array API rule: everything follows ``X``).

    A tensor on any device (detached, moved to the CPU) becomes a NumPy array;
    anything else is returned as it is. With
    ``sklearn.set_config(array_api_dispatch=True)`` and a tensor ``X``, the
    returned ``space`` tells :func:`array_api_output` to give tensors back on
    ``X``'s device; otherwise it is ``None`` and the outputs are NumPy, as
    without tensors.

    Parameters
    ----------
    X : array-like or torch.Tensor
    y : array-like or torch.Tensor, optional
    fitted : tuple, None or False, default=False
        For a method of a fitted estimator, the ``space`` of its ``fit``
        (``None`` for NumPy): under ``array_api_dispatch`` a different
        namespace or device raises scikit-learn's ``ValueError``. ``False``:
        this is ``fit``, nothing to compare.
    method : str, default="fit"
        The calling method, for the message.

    Returns
    -------
    X, y : ndarray or as given
    space : tuple or None
        ``("torch", device)`` or ``None``.

    Raises
    ------
    ValueError
        When ``fitted`` differs from the namespace and device of ``X`` under
        ``array_api_dispatch``, as scikit-learn's estimators raise.
    """
    space = _array_space(X)
    if fitted is not False and space != fitted:
        from sklearn import get_config

        if get_config()["array_api_dispatch"]:
            names = [
                "numpy" if s is None else f"{s[0]} on {s[1]}" for s in (fitted, space)
            ]
            raise ValueError(
                f"Inputs passed to {method}() must use the same namespace and the "
                "same device as those passed to fit(). Array namespaces and "
                f"devices used during fit ({names[0]}) and {method} ({names[1]}) "
                "differ."
            )
    if isinstance(X, torch.Tensor):
        X = to_numpy(X)
    if isinstance(y, torch.Tensor):
        y = to_numpy(y)
    return X, y, space


def array_api_output(A, space):
    """``A`` as :func:`array_api_input`'s ``space`` asks: a torch tensor on its
    device (numbers only: an array of string labels stays NumPy), or ``A``."""
    if space is None:
        return A
    A = np.asarray(A)
    if A.dtype.kind not in "biuf":
        return A
    return torch.as_tensor(A, device=space[1])
