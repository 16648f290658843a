"""Data sets of the paper (MNIST, CIFAR-10, SVHN) and the embedded default (digits).

Every loader returns what :func:`sklearn.datasets.load_digits` returns, a
:class:`~sklearn.utils.Bunch`, with pixels scaled to ``[0, 1]`` as torchvision's
``ToTensor`` scales them. The three image data sets are read through torchvision from
its usual folder layout under ``root``; nothing is downloaded unless asked for.
"""

import os
import socket
from collections import namedtuple
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies

import numpy as np
from sklearn.datasets import load_digits
from sklearn.utils import Bunch, check_random_state

__all__ = [
    "DATASETS",
    "PAPER_N_SAMPLES",
    "DatasetNotFoundError",
    "available_datasets",
    "get_data_home",
    "load_cifar10",
    "load_dataset",
    "load_default_digits",
    "load_mnist",
    "load_svhn",
    "standardize",
]

#: Number of training points the paper's experiments use ("the first 50,000 points").
PAPER_N_SAMPLES = 50_000

# files(split): the paths under root that torchvision opens for the split (MNIST
# and CIFAR-10 check for both splits' files whichever split is asked for).
_Spec = namedtuple("_Spec", "tv_class files title")
_SPECS = {
    "mnist": _Spec(
        "MNIST",
        lambda split: [
            f"MNIST/raw/{s}-{kind}-idx{k}-ubyte"
            for s in ("train", "t10k")
            for kind, k in (("images", 3), ("labels", 1))
        ],
        "MNIST handwritten digits (60,000 train, 10,000 test)",
    ),
    "cifar10": _Spec(
        "CIFAR10",
        lambda split: [
            f"cifar-10-batches-py/{f}"
            for f in [f"data_batch_{i}" for i in range(1, 6)]
            + ["test_batch", "batches.meta"]
        ],
        "CIFAR-10 colour images (50,000 train, 10,000 test)",
    ),
    "svhn": _Spec(
        "SVHN",
        lambda split: [f"{split}_32x32.mat"],
        "SVHN street-view house numbers (73,257 train, 26,032 test)",
    ),
}


class DatasetNotFoundError(FileNotFoundError):
    """The files of a data set are missing or unreadable, and were not downloaded."""


def available_datasets():
    """Names accepted by :func:`load_dataset` (and by the commands' ``--dataset``)."""
    return sorted(DATASETS)


def get_data_home(root=None):
    """Folder the image data sets are read from.

    Parameters
    ----------
    root : str or path-like, default=None
        Returned as given (with ``~`` expanded). ``None`` means the environment
        variable ``SKDNC_DATA`` if it is set, else ``~/skdnc_data``.

    Returns
    -------
    root : pathlib.Path
        The folder; it is not created.
    """
    if root is None:
        root = os.environ.get("SKDNC_DATA") or "~/skdnc_data"
    return Path(root).expanduser()


def standardize(X):
    """Standardise every feature over the samples, as the paper's code does.

    Each column (each pixel position for image arrays) has its mean removed and is
    divided by its unbiased (``ddof=1``) standard deviation; constant features become 0.
    This is ``preprocess`` of the reference code, ``nan_to_num((X - X.mean(0)) /
    X.std(0))``, which applies it to the training and to the test data separately,
    each with its own statistics. Inside a scikit-learn pipeline prefer
    :class:`~sklearn.preprocessing.StandardScaler`, which learns the statistics on
    the training data (and uses ``ddof=0``).

    Parameters
    ----------
    X : array-like of shape (n_samples, ...)
        Samples along the first axis.

    Returns
    -------
    X_std : ndarray of the same shape
        In ``X``'s floating dtype (float64 for integer input); computed in float64.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.datasets import standardize
    >>> standardize(np.array([[0.0, 1.0], [2.0, 1.0]]))
    array([[-0.7071...,  0. ...],
           [ 0.7071...,  0. ...]])
    """
    X = np.asarray(X)
    dtype = X.dtype if X.dtype.kind == "f" else np.float64
    Xc = X.astype(np.float64) - X.mean(axis=0, dtype=np.float64)
    std = np.sqrt((Xc**2).sum(axis=0) / max(len(X) - 1, 1))
    out = np.divide(Xc, std, out=np.zeros_like(Xc), where=std > 0)
    return out.astype(dtype, copy=False)


_standardize = standardize  # load_dataset's parameter shadows the name


def _not_found(name, root, missing, how):
    listing = "\n".join(f"  {p}" for p in missing)
    return DatasetNotFoundError(
        f"The {name!r} data set is not available under root={str(root)!r}. "
        f"{how}:\n{listing}\n"
        f"Get the files with load_dataset({name!r}, download=True) on a machine with "
        "internet access (torchvision fetches them into that folder), or copy "
        "torchvision's files there. Pass root=... or set the SKDNC_DATA environment "
        "variable to read them from another folder."
    )


def _unreachable(urls, timeout):
    """Why no download server answers, or None: fail fast instead of a hang.

    Skipped (None) when a proxy is configured for the scheme: only the proxy is
    reachable then.
    """
    errors = []
    for url in urls:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if getproxies().get(parts.scheme):
            return None
        try:
            socket.create_connection((parts.hostname, port), timeout=timeout).close()
            return None
        except OSError as exc:
            errors.append(f"{parts.hostname}:{port}: {exc}")
    return "; ".join(errors)


def _read_torchvision(name, root, split, download, timeout=10.0):
    """Return (uint8 images (n, c, h, w), int64 labels, class names) of a split."""
    from torchvision import datasets as tvd

    spec = _SPECS[name]
    cls = getattr(tvd, spec.tv_class)
    missing = [root / f for f in spec.files(split) if not (root / f).is_file()]
    if missing and download:
        if name == "mnist":
            urls = [mirror + cls.resources[0][0] for mirror in cls.mirrors]
        else:
            urls = [cls.url if name == "cifar10" else cls.split_list[split][0]]
        error = _unreachable(urls, timeout)
        if error:
            how = f"download=True, but no download server answered ({error})"
            raise _not_found(name, root, missing, how + "; these files are missing")
        try:
            _construct(cls, root, split, download=True)
        except Exception as exc:  # urllib, tarfile and torchvision's own errors
            how = f"Downloading failed ({exc}); these files are missing"
            raise _not_found(name, root, missing, how) from exc
        missing = [root / f for f in spec.files(split) if not (root / f).is_file()]
    if missing:
        raise _not_found(name, root, missing, "These files are expected and missing")
    try:
        ds = _construct(cls, root, split, download=False)
    except (RuntimeError, AssertionError, ValueError, EOFError, OSError) as exc:
        # torchvision's md5 check ("not found or corrupted"), or a reader that
        # fails on truncated or garbled files (MNIST's bare AssertionError)
        files = [root / f for f in spec.files(split)]
        why = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise _not_found(
            name, root, files, f"torchvision rejected the files ({why}); delete them"
        ) from exc
    images = np.asarray(ds.data)
    if name == "mnist":
        images = images[:, None]  # (n, 28, 28) -> (n, 1, 28, 28)
    elif name == "cifar10":
        images = images.transpose(0, 3, 1, 2)  # torchvision keeps CIFAR in HWC
    labels = np.asarray(ds.labels if name == "svhn" else ds.targets, dtype=np.int64)
    classes = np.asarray(ds.classes) if name == "cifar10" else np.arange(10)
    return images, labels, classes


def _construct(cls, root, split, download):
    if cls.__name__ == "SVHN":
        return cls(str(root), split=split, download=download)
    return cls(str(root), train=split == "train", download=download)


def _select(y, n_samples, balanced, shuffle, random_state):
    """Indices of the requested subset; see load_dataset."""
    n = len(y)
    rng = check_random_state(random_state) if shuffle else None
    order = rng.permutation(n) if shuffle else np.arange(n)
    if not balanced:
        if n_samples is not None and n_samples > n:
            raise ValueError(f"n_samples={n_samples} exceeds the {n} points available.")
        return order[:n_samples]
    classes, counts = np.unique(y, return_counts=True)
    k = len(classes)
    if n_samples is None:
        per_class = np.full(k, counts.min())
    else:
        per_class = np.full(k, n_samples // k)
        spare = np.flatnonzero(counts > per_class)[: n_samples % k]
        per_class[spare] += 1
        if np.any(per_class > counts) or per_class.sum() < n_samples:
            raise ValueError(
                f"balanced=True with n_samples={n_samples} and {k} classes needs "
                f"{-(-n_samples // k)} points of a class; the smallest class has "
                f"{counts.min()}."
            )
    y_ordered = y[order]
    idx = np.concatenate(
        [order[y_ordered == c][:m] for c, m in zip(classes, per_class)]
    )
    return rng.permutation(idx) if shuffle else np.sort(idx)


def load_dataset(
    name="digits",
    *,
    root=None,
    split="train",
    n_samples=None,
    balanced=False,
    shuffle=False,
    random_state=None,
    flatten=True,
    standardize=False,
    download=False,
    return_X_y=False,
):
    """Load MNIST, CIFAR-10, SVHN or the embedded digits in the paper's format.

    Images are returned as float32 in ``[0, 1]`` (torchvision's ``ToTensor``
    scaling), channel first; flattened, a row is the ``(c, h, w)`` image in C order,
    as the paper's code flattens it. Labels are the digits 0-9 (SVHN's label 10 is
    mapped to 0 by torchvision) or CIFAR-10's class indices.

    Parameters
    ----------
    name : {"digits", "mnist", "cifar10", "svhn"}, default="digits"
        ``"digits"`` is scikit-learn's bundled 8x8 digits (1,797 images, pixel values
        0-16 divided by 16); it needs no files and has no test split.
    root : str or path-like, default=None
        Folder with torchvision's layout: ``root/MNIST/raw/train-images-idx3-ubyte``
        (and the other three idx files, uncompressed),
        ``root/cifar-10-batches-py/data_batch_1`` ... ``test_batch``,
        ``batches.meta``, and ``root/train_32x32.mat`` / ``root/test_32x32.mat``
        for SVHN. ``None``: see :func:`get_data_home`.
    split : {"train", "test"}, default="train"
    n_samples : int, default=None
        Number of points to return; ``None`` returns the whole split (of a balanced
        subset: the largest one). The paper uses the first 50,000 training points
        (:data:`PAPER_N_SAMPLES`), i.e. ``n_samples=50_000``; they are not class
        balanced, and for CIFAR-10 they are the whole training set.
    balanced : bool, default=False
        Take ``n_samples // n_classes`` points of every class; the remaining
        ``n_samples % n_classes`` go, one each, to the first classes that have a
        point more, so the total is exactly ``n_samples``.
    shuffle : bool, default=False
        If False, take the first points of the split (of each class if ``balanced``)
        and keep file order, as the paper does. If True, draw them uniformly at
        random without replacement and return them in random order.
    random_state : int, RandomState instance or None, default=None
        Seeds the draw when ``shuffle=True``; ignored otherwise.
    flatten : bool, default=True
        Return ``data`` of shape ``(n, c*h*w)`` for kernel machines; if False,
        image arrays of shape ``(n, c, h, w)`` for convolutional networks.
    standardize : bool, default=False
        Apply :func:`standardize` (the paper's per-feature standardisation with this
        subset's own statistics) to ``data`` and ``images``.
    download : bool, default=False
        Download missing files through torchvision. Fails within seconds with
        :class:`DatasetNotFoundError` if the server cannot be reached.
    return_X_y : bool, default=False
        Return ``(data, target)`` instead of a Bunch.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        ``data`` (float32, ``(n, c*h*w)`` or ``(n, c, h, w)``), ``images`` (a
        ``(n, c, h, w)`` view of the same values), ``target`` (int64, ``(n,)``),
        ``target_names``, ``image_shape`` ``(c, h, w)``, ``indices`` (positions of
        the points in the split) and ``DESCR``.
    (data, target) : tuple if ``return_X_y`` is True

    Raises
    ------
    DatasetNotFoundError
        A subclass of :class:`FileNotFoundError`, when the files are missing or
        corrupted; its message lists the expected paths and how to get them.

    Examples
    --------
    >>> import numpy as np
    >>> from skdnc.datasets import load_dataset
    >>> digits = load_dataset("digits", n_samples=500, balanced=True)
    >>> digits.data.shape, digits.data.dtype, digits.images.shape
    ((500, 64), dtype('float32'), (500, 1, 8, 8))
    >>> np.bincount(digits.target)
    array([50, 50, 50, 50, 50, 50, 50, 50, 50, 50])
    >>> float(digits.data.min()), float(digits.data.max())
    (0.0, 1.0)
    """
    if name not in DATASETS:
        raise ValueError(f"name must be one of {available_datasets()}; got {name!r}.")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}.")
    if n_samples is not None and (
        isinstance(n_samples, bool)
        or not isinstance(n_samples, (int, np.integer))
        or n_samples < 1
    ):
        raise ValueError(
            f"n_samples must be a positive int or None; got {n_samples!r}."
        )
    root = get_data_home(root)
    if name == "digits":
        if split != "train":
            raise ValueError(
                "The digits data set has no test split; use split='train' and "
                "sklearn.model_selection.train_test_split."
            )
        bunch = load_digits()
        images, scale = bunch.images[:, None], 16.0  # pixel values 0..16
        labels, classes = bunch.target.astype(np.int64), bunch.target_names
        title = "scikit-learn's 8x8 handwritten digits (1,797 images, UCI optdigits)"
    else:
        images, labels, classes = _read_torchvision(name, root, split, download)
        scale, title = 255.0, _SPECS[name].title
    idx = _select(labels, n_samples, balanced, shuffle, random_state)
    images = np.ascontiguousarray(images[idx], dtype=np.float32)
    images /= np.float32(scale)
    if standardize:
        images = _standardize(images)
    target = labels[idx]
    X = images.reshape(len(images), -1) if flatten else images
    if return_X_y:
        return X, target
    descr = (
        f"{title}, {split} split, read by skdnc.datasets.load_dataset({name!r}).\n"
        f"{len(target)} points, images {images.shape[1:]} (channels, height, width)"
        f"{', standardised per feature' if standardize else ', pixels in [0, 1]'}."
    )
    return Bunch(
        data=X,
        images=images,
        target=target,
        target_names=classes,
        image_shape=images.shape[1:],
        indices=idx,
        DESCR=descr,
    )


def load_default_digits(**kwargs):
    """The embedded default, scikit-learn's digits; ``load_dataset("digits", ...)``."""
    return load_dataset("digits", **kwargs)


def load_mnist(**kwargs):
    """MNIST through torchvision; ``load_dataset("mnist", ...)``."""
    return load_dataset("mnist", **kwargs)


def load_cifar10(**kwargs):
    """CIFAR-10 through torchvision; ``load_dataset("cifar10", ...)``."""
    return load_dataset("cifar10", **kwargs)


def load_svhn(**kwargs):
    """SVHN through torchvision (label 10 becomes 0); ``load_dataset("svhn", ...)``."""
    return load_dataset("svhn", **kwargs)


#: Name -> loader, for the commands' ``--dataset`` option.
DATASETS = {
    "digits": load_default_digits,
    "mnist": load_mnist,
    "cifar10": load_cifar10,
    "svhn": load_svhn,
}
