"""What the two commands share: option types, the common options, presets by data
set, and the writing of their outputs.

Each command (``python -m skdnc``, ``python -m skdnc.nn``) is split the same way:
``build_parser()`` declares the options, :func:`parse_args` validates them and
applies the data set's preset, ``run(args)`` computes and returns a
:class:`CommandResult`, :func:`report` prints it and :func:`write_outputs` writes
its table, figures and JSON.
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from skdnc._backend import resolve_device
from skdnc._presets import PRESETS
from skdnc.datasets import DatasetNotFoundError, available_datasets

#: Training points of every data set (MNIST, CIFAR-10 and SVHN: torchvision's
#: training splits) and the points of its smallest class (what a class-balanced
#: subset of digits is limited by). Every data set has 10 classes.
TRAIN_SIZES = {
    "digits": (1797, 174),
    "mnist": (60_000, 5421),
    "cifar10": (50_000, 5000),
    "svhn": (73_257, 4659),
}
N_CLASSES = 10


# -- option types ---------------------------------------------------------------------
def _number(kind, low, *, strict):
    """An argparse ``type=``: a finite number above ``low`` (or at it unless
    ``strict``), with a message that says which."""
    sign = "a positive" if strict else "a non-negative"
    name = f"{sign} {'integer' if kind is int else 'number'}"

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"{text!r} is not {name}")
        return value

    return parse


positive_int = _number(int, 0, strict=True)
nonnegative_int = _number(int, 0, strict=False)
positive_float = _number(float, 0.0, strict=True)
nonnegative_float = _number(float, 0.0, strict=False)


def seed(text):
    """``--seed``: an integer in ``[0, 2**32 - 1]``, the seeds numpy and
    scikit-learn accept."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a seed (an integer from 0 to 2**32 - 1)"
        )
    return value


def thread_count(text):
    """``--threads``: a positive integer, at most the machine's CPU cores (more
    threads than cores only slow a run down, and far more abort OpenMP)."""
    value = positive_int(text)
    cores = os.cpu_count() or 1
    if value > cores:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than the {cores} CPU cores of this machine"
        )
    return value


def device_name(text):
    """``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, checked at once."""
    try:
        resolve_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


# -- the options both commands have ---------------------------------------------------
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every default that is a value; options whose default depends on the
    data set (``None`` here, set by the preset) say so in their help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def common_parser(output):
    """Parent parser of the options shared by the commands.

    Parameters
    ----------
    output : str
        Default output folder of the command.

    Returns
    -------
    parser : argparse.ArgumentParser
        To be passed in ``parents=`` (it has no help option of its own).
    """
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=available_datasets(),
        help="data set: scikit-learn's digits ships with scikit-learn; the others "
        "are read through torchvision from --data-root",
    )
    parser.add_argument(
        "--data-root",
        default=None,
        help="folder of the torchvision data sets (default: $SKDNC_DATA or "
        "~/skdnc_data)",
    )
    parser.add_argument(
        "--device",
        default="auto",
        type=device_name,
        help="auto, cpu, cuda or cuda:N",
    )
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="torch CPU threads for this run (default: torch's choice)",
    )
    parser.add_argument(
        "--output",
        default=output,
        help="folder for the table, figures and JSON",
    )
    parser.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help="settings of the runs: 'paper' (Appendix C) or 'demo' (sized for a "
        "laptop CPU); default: demo, except for networks on the image data sets. "
        "Options given explicitly override it",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="let torchvision download a missing data set",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def parse_args(parser, argv, defaults):
    """Parse ``argv`` with defaults that depend on other options.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    argv : list of str or None
    defaults : callable
        ``defaults(args) -> {dest: value}`` from a first parse (the data set,
        preset and model chosen); options the user gave keep their value.

    Returns
    -------
    args : argparse.Namespace
    """
    known, _ = parser.parse_known_args(argv)
    parser.set_defaults(**defaults(known))
    args = parser.parse_args(argv)
    _check_output_folder(parser, args.output)
    return args


def _check_output_folder(parser, output):
    """Stop with a message, before any work, unless ``output`` is a folder that can
    be written or created; nothing is created until the outputs are written."""
    path = Path(output).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing != path and not existing.is_dir():
        problem = f"{existing} is not a folder"
    elif existing == path and not path.is_dir():
        problem = "it exists and is not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    parser.error(f"--output {output!s} is not a writable folder: {problem}")


def check_n_samples(parser, args, preset, *, balanced=False, folds=None):
    """Stop with a usage error unless ``--n-samples`` fits the data set.

    At most the data set's training points (with ``balanced``, ten times its
    smallest class), and at least two points of each of its 10 classes (NC1 needs
    a within-class spread), or ``folds`` of each for a stratified
    cross-validation.

    Parameters
    ----------
    parser : argparse.ArgumentParser
    args : argparse.Namespace
        With ``dataset`` and ``n_samples``.
    preset : dict
        ``{"name": preset, "n_samples": its value}``: the message names the
        preset when the value is its.
    balanced : bool, default=False
        Whether the subset takes the same number of points of every class.
    folds : int, optional
        Folds of a stratified cross-validation of the run.
    """
    n = args.n_samples
    total, smallest = TRAIN_SIZES[args.dataset]
    largest = N_CLASSES * smallest if balanced else total
    least = N_CLASSES * max(2, folds or 0)
    if n is None or least <= n <= largest:
        return
    source = ""
    if n == preset["n_samples"]:
        source = f" (the value of --preset {preset['name']})"
    if n > largest:
        what = "class-balanced points" if balanced else "training points"
        parser.error(
            f"--n-samples {n}{source} is more than the {largest} {what} of "
            f"{args.dataset}."
        )
    reason = f"{folds} of each of its {N_CLASSES} classes for --cv-folds {folds}"
    if not folds:
        reason = f"two of each of its {N_CLASSES} classes"
    parser.error(
        f"--n-samples {n}{source} is too few for {args.dataset}: at least {least} "
        f"points are needed, {reason}."
    )


def check_preset(parser, args):
    """Stop with a usage error when ``--preset paper`` is asked for on digits: the
    paper's settings are for MNIST, CIFAR-10 and SVHN."""
    if args.preset == "paper" and args.dataset == "digits":
        parser.error(
            "--preset paper holds the settings of the paper's Appendix C for "
            "mnist, cifar10 and svhn (50,000 training points); it does not apply "
            "to digits (1797 points): use --preset demo, the default on digits, "
            "or choose --dataset mnist, cifar10 or svhn."
        )


def set_threads(threads):
    """Apply ``--threads`` (``None`` leaves torch's setting as it is)."""
    if threads is not None:
        torch.set_num_threads(int(threads))


def platform_info():
    """Versions and core count, recorded in every command's JSON."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
    }


# -- results and their outputs --------------------------------------------------------
@dataclass
class CommandResult:
    """What a command computed, ready to print and write.

    Attributes
    ----------
    data : dict
        Every number of the run (JSON-ready after :func:`to_json`).
    table : str
        The per-layer table, printed and written as a text file.
    lines : list of str
        Summary lines printed after the table (and kept in ``data``).
    figures : dict
        ``{file name: draw}``, each ``draw(path)`` writing one figure.
    names : dict
        ``{"json": file name, "table": file name}``.
    checked : dict
        ``{name: values}`` that a successful run makes finite; any NaN or
        infinity there makes the command exit with status 1.
    """

    data: dict
    table: str
    lines: list = field(default_factory=list)
    figures: dict = field(default_factory=dict)
    names: dict = field(default_factory=dict)
    checked: dict = field(default_factory=dict)

    def non_finite(self):
        """Names of the checked results that hold NaN or infinities."""
        return [
            name
            for name, values in self.checked.items()
            if not np.all(np.isfinite(np.asarray(values, dtype=np.float64)))
        ]


def main(parse, run, argv=None):
    """Parse, run, report and write: the body of every command's ``main``.

    Parameters
    ----------
    parse : callable
        ``parse(argv) -> args``, validated, with ``threads`` and ``output``.
    run : callable
        ``run(args) -> CommandResult``.
    argv : list of str, default=None
        Command-line arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 1 when the run diverges (``FloatingPointError``, nothing
        written) or its results are not finite (the outputs are written all the
        same, for inspection); 2 when the data set's files are missing (nothing
        written).
    """
    args = parse(argv)
    set_threads(args.threads)
    try:
        result = run(args)
    except FloatingPointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatasetNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report(result)
    write_outputs(result, args.output)
    print(f"total {result.data['total_seconds']:.1f} s")
    bad = result.non_finite()
    if bad:
        print(
            f"error: the run's results are not finite ({', '.join(bad)}): the "
            "computation overflowed or diverged. Try standardised data, a smaller "
            "learning rate or more samples.",
            file=sys.stderr,
        )
        return 1
    return 0


def report(result):
    """Print a command's table and summary lines."""
    print(result.table)
    print("\n".join(result.lines), flush=True)


def to_json(value):
    """Strict JSON text: NaN and infinities become ``null``, arrays lists."""

    def clean(v):
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, np.ndarray):
            return clean(v.tolist())
        if isinstance(v, np.generic):
            return clean(v.item())
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, bool | int | float | str) or v is None:
            return v
        return str(v)

    return json.dumps(clean(value), indent=2, allow_nan=False)


def _atomic_write(path, write):
    """Write through a temporary file in the same folder, then rename into place:
    a reader never sees half a file, and an existing symlink is replaced rather
    than written through."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp's file is private (0600); give it the mode of any new file.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask():
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_outputs(result, output):
    """Write the table, the figures and the JSON of a command into ``output``.

    Returns
    -------
    files : dict
        ``{key: path}`` of every file written.
    """
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in result.figures}
    files["table"] = out / result.names["table"]
    files["json"] = out / result.names["json"]
    for name, draw in result.figures.items():
        _atomic_write(files[name], lambda tmp, draw=draw: _save(draw, tmp))
    plt.close("all")
    text = result.table + "\n"
    _atomic_write(files["table"], lambda tmp: Path(tmp).write_text(text))
    data = {**result.data, "files": {k: str(v) for k, v in files.items()}}
    _atomic_write(files["json"], lambda tmp: Path(tmp).write_text(to_json(data)))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    return files


def _save(draw, path):
    fig = draw()
    fig.savefig(path, dpi=110, format="png")
