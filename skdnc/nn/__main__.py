"""Deep neural collapse in trained networks (the paper's Section 5), as a command.

``python -m skdnc.nn`` (or the ``skdnc-nn`` command) trains a network of the
paper's Appendix C (a bias-free MLP, or ResNet18 / truncated VGG11 with an MLP head)
on a data set for several seeds, measures every hidden layer every few epochs, and

* prints the per-layer table of the last measurement (mean +- std over seeds): NC1
  of the layer's input, after :math:`S V^\\top` and after the full layer, the share
  of the log NC1 reduction owed to :math:`S V^\\top`, and the NFA correlations;
* writes Figure 2 (NC1 of the three stages through training, one panel per layer)
  and Figure 10, 11 or 12 (MLP, ResNet, VGG:
  :math:`\\mathrm{tr}\\,\\Sigma_W / \\mathrm{tr}\\,\\Sigma_T` and
  :math:`\\mathrm{tr}\\,\\Sigma_B / \\mathrm{tr}\\,\\Sigma_T` of the last
  hidden layer, the NFA correlation of every layer, and the training loss against
  epochs) as PNG, and a JSON file of every number.

Defaults for MNIST, CIFAR-10 and SVHN are the paper's (Appendix C): 50,000 training
points, width 512, SGD with learning rate 0.05, batch 128, init scale 0.3 (0.2 for
MNIST), 500 epochs, 3 seeds. For the bundled digits they are sized for a CPU: 500
class-balanced points, width 128, init scale 0.5, learning rate 0.4, 200 epochs, 2
seeds; with the paper's learning rate 0.05 and init 0.3 an MLP needs on the order
of 1000 epochs on digits to leave the small-initialisation plateau.

``--model package.module:factory --checkpoint PATH`` probes a network of your own
instead: the factory is imported and called, the checkpoint (a ``state_dict``) is
loaded with ``torch.load(weights_only=True)``, and the model is probed on the data
set (:func:`skdnc.nn.probe_network`: NC1/NC2 by stage, the NFA, and NC3/NC4 of its
readout), with the same table, figure and JSON outputs.
"""

import argparse
import importlib
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from skdnc._backend import resolve_device
from skdnc._cli import (
    TRAIN_SIZES,
    CommandResult,
    HelpFormatter,
    check_n_samples,
    check_preset,
    common_parser,
    nonnegative_float,
    parse_args,
    platform_info,
    positive_float,
    positive_int,
    seed,
)
from skdnc._cli import main as run_command
from skdnc._display import CollapseDisplay, SVDSplitDisplay, TrainingHistoryDisplay
from skdnc._presets import default_preset, describe, network_settings
from skdnc.datasets import load_dataset
from skdnc.metrics._collapse import STAGES
from skdnc.nn import aggregate_histories, make_model, probe_network, train_seeds

#: The keys of a run's settings that the presets control.
SETTINGS = (
    "n_samples",
    "width",
    "init_scale",
    "lr",
    "momentum",
    "epochs",
    "seeds",
    "depth",
    "batch_size",
    "measure_every",
)
#: The MLP's demo settings on digits and its paper settings (Appendix C).
DIGITS_DEFAULTS = network_settings("demo", "digits", "mlp")
PAPER_DEFAULTS = network_settings("paper", "cifar10", "mlp")
ARCHITECTURES = ("mlp", "resnet18", "vgg11")
_FIGURE = {"mlp": 10, "resnet18": 11, "vgg11": 12}


# -- parse ----------------------------------------------------------------------------
def build_parser():
    """The command-line interface of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m skdnc.nn",
        description=(
            "Train a network (Appendix C of Beaglehole et al., 'Average gradient "
            "outer product as a mechanism for deep neural collapse') and measure "
            "per-layer NC1 by SVD stage and the Neural Feature Ansatz."
        ),
        parents=[common_parser("skdnc_nn_output")],
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--arch", default="mlp", choices=ARCHITECTURES, help="network")
    add(
        "--n-samples",
        type=positive_int,
        help="training points, the first ones " + _preset_help("n_samples"),
    )
    add("--epochs", type=positive_int, help="training epochs " + _preset_help("epochs"))
    add(
        "--seeds",
        type=seed,
        nargs="+",
        help="random seeds, one run each " + _preset_help("seeds"),
    )
    add("--lr", type=positive_float, help="SGD learning rate " + _preset_help("lr"))
    add(
        "--momentum",
        type=nonnegative_float,
        help="SGD momentum " + _preset_help("momentum"),
    )
    add(
        "--batch-size",
        type=positive_int,
        help="SGD batch size " + _preset_help("batch_size"),
    )
    add(
        "--init-scale",
        type=positive_float,
        help="xavier gain of the hidden layers " + _preset_help("init_scale"),
    )
    add("--width", type=positive_int, help="MLP width " + _preset_help("width"))
    add("--depth", type=positive_int, help="hidden MLP layers " + _preset_help("depth"))
    add(
        "--measure-every",
        type=positive_int,
        help="epochs between measurements " + _preset_help("measure_every"),
    )
    user = parser.add_argument_group(
        "your own model",
        "Probe a trained network of yours instead of training one: the training "
        "options above are then ignored.",
    )
    user.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="a function that builds your network, as package.module:function "
        "(importable from the current folder or PYTHONPATH); it is called without "
        "arguments and must return a torch.nn.Module",
    )
    user.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="a state_dict saved with torch.save(model.state_dict(), PATH) (or a "
        "dict holding one under 'state_dict'), loaded into --model with "
        "torch.load(weights_only=True); without it the model is probed as the "
        "factory builds it",
    )
    user.add_argument(
        "--input",
        choices=("flat", "image"),
        default="flat",
        help="shape of the inputs given to --model: flat rows, or images "
        "(channels, height, width)",
    )
    return parser


def _preset_help(key):
    """What the presets set an option to, for its help text (from the table)."""

    def show(value):
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    return describe(network_settings, key, ARCHITECTURES, show)


def _preset(args):
    return args.preset or default_preset("nn", args.dataset)


def preset_defaults(args):
    """Parser defaults from the preset for the chosen data set and network."""
    return network_settings(_preset(args), args.dataset, args.arch)


#: A run of the paper's preset with fewer SGD steps than this share of the
#: paper's (its epochs over 50,000 points) gets a warning.
FEW_STEPS = 0.25


def few_steps_warning(args):
    """The warning for a run of ``--preset paper`` whose SGD steps (epochs times
    batches an epoch) are far below the paper's, or ``None``.

    The paper's schedule (learning rate, init scale, epochs) is tuned for
    50,000 points: on a 5,000-point subset its MLP takes 40 steps an epoch and,
    with init scale 0.2, stays at the constant predictor.
    """
    if _preset(args) != "paper" or args.model is not None:
        return None
    paper = network_settings("paper", args.dataset, args.arch)
    batches = -(-paper["n_samples"] // paper["batch_size"])
    paper_steps = paper["epochs"] * batches
    n = min(args.n_samples, TRAIN_SIZES[args.dataset][0])
    steps = args.epochs * -(-n // args.batch_size)
    if steps >= FEW_STEPS * paper_steps:
        return None
    return (
        f"warning: this run takes {steps:,} SGD steps ({args.epochs} epochs of "
        f"{-(-n // args.batch_size)} batches of {args.batch_size} on {n:,} "
        f"points), {steps / paper_steps:.0%} of the {paper_steps:,} of the paper's "
        f"{args.arch} preset ({paper['epochs']} epochs on {paper['n_samples']:,} "
        "points): its learning rate and init scale are tuned for those, and a "
        "network may not leave the constant predictor. Raise --epochs (or "
        "--lr) to keep the number of steps."
    )


def parse(argv=None):
    """Parsed and validated arguments, with the data set's preset applied.

    With ``--model``, the model is built (and its checkpoint loaded) here, so that
    a bad spec or checkpoint stops the command with a usage error; it is kept in
    ``args.user_model``.
    """
    parser = build_parser()
    args = parse_args(parser, argv, preset_defaults)
    check_preset(parser, args)
    preset = {"name": _preset(args), "n_samples": preset_defaults(args)["n_samples"]}
    check_n_samples(parser, args, preset, balanced=args.dataset == "digits")
    args.user_model = None
    if args.checkpoint is not None and args.model is None:
        parser.error("--checkpoint needs --model, the function that builds the net.")
    if args.model is not None:
        try:
            args.user_model = load_user_model(args.model, args.checkpoint)
        except ValueError as exc:
            parser.error(str(exc))
    warning = few_steps_warning(args)
    if warning is not None:
        print(warning, file=sys.stderr)
    return args


def load_user_model(spec, checkpoint=None):
    """Build a network from ``"package.module:factory"`` and load its weights.

    Parameters
    ----------
    spec : str
        ``"package.module:factory"``; ``factory`` may be a dotted attribute path
        (``"pkg.mod:Class.build"``). It is called without arguments.
    checkpoint : str or path-like, default=None
        A ``state_dict`` saved with :func:`torch.save`, or a dict holding one under
        ``"state_dict"``; read with ``torch.load(weights_only=True)`` (no pickled
        code runs) onto the CPU.

    Returns
    -------
    model : torch.nn.Module

    Raises
    ------
    ValueError
        For a spec that is not ``module:factory``, a module that cannot be
        imported, a missing attribute, a factory that does not return a
        ``torch.nn.Module``, and a checkpoint that is missing, unreadable or does
        not fit the model.
    """
    module_name, sep, attr = str(spec).partition(":")
    dotted = module_name.split(".") + attr.split(".")
    if not sep or not all(part.isidentifier() for part in dotted):
        raise ValueError(
            f"--model {spec!r} is not of the form package.module:factory of "
            "Python names (e.g. mypkg.nets:build_model)."
        )
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"--model {spec!r}: cannot import module {module_name!r} ({exc}). Run "
            "from the folder that holds it, or add that folder to PYTHONPATH."
        ) from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(
                f"--model {spec!r}: module {module_name!r} has no attribute {attr!r}."
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(
            f"--model {spec!r}: {attr!r} is a {type(obj).__name__}, not a function."
        )
    try:
        model = obj()
    except Exception as exc:  # the user's factory: any error is a bad --model
        raise ValueError(
            f"--model {spec!r}: calling {attr}() without arguments failed "
            f"({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"--model {spec!r}: the factory returned a {type(model).__name__}, not "
            "a torch.nn.Module."
        )
    if checkpoint is not None:
        _load_checkpoint(model, checkpoint)
    return model


def _load_checkpoint(model, checkpoint):
    path = Path(checkpoint)
    if not path.is_file():
        raise ValueError(f"--checkpoint {str(path)!r}: no such file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors have no common base class
        raise ValueError(
            f"--checkpoint {str(path)!r} is not a weights-only torch checkpoint "
            f"({type(exc).__name__}: {exc}). Save it with "
            "torch.save(model.state_dict(), path)."
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"--checkpoint {str(path)!r} holds a {type(state).__name__}, not a "
            "state_dict."
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(
            f"--checkpoint {str(path)!r} does not fit the model built by --model: {exc}"
        ) from exc


def settings(args):
    """The preset-controlled settings of a run, as a dict."""
    return {key: getattr(args, key) for key in SETTINGS}


# -- run ------------------------------------------------------------------------------
def load(args, *, flatten):
    """Standardised training data, as flat rows or as images."""
    X, y = load_dataset(
        args.dataset,
        root=args.data_root,
        n_samples=args.n_samples,
        balanced=args.dataset == "digits",
        flatten=flatten,
        standardize=True,
        download=args.download,
        return_X_y=True,
    )
    return np.asarray(X, dtype=np.float32), np.asarray(y)


def run(args):
    """Train every seed and measure; return a :class:`~skdnc._cli.CommandResult`.

    With ``--model``, probe that model instead (:func:`run_user_model`).
    """
    if getattr(args, "user_model", None) is not None:
        return run_user_model(args)
    started = time.perf_counter()
    device = resolve_device(args.device)
    X, y = load(args, flatten=args.arch == "mlp")
    n_classes = int(len(np.unique(y)))
    input_shape = X.shape[1:]
    config = settings(args)
    print(
        f"{args.arch} on {args.dataset}: {X.shape[0]} samples of shape "
        f"{tuple(input_shape)}, {n_classes} classes; device {device}; "
        + ", ".join(f"{k}={v}" for k, v in config.items()),
        flush=True,
    )

    def build(seed):
        return make_model(
            args.arch,
            input_shape,
            n_classes,
            width=args.width,
            depth=args.depth,
            init_scale=args.init_scale,
            random_state=seed,
        )

    histories = train_seeds(
        build,
        X,
        y,
        seeds=args.seeds,
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        batch_size=args.batch_size,
        measure_every=args.measure_every,
        device=device,
        progress=not args.quiet,
    )
    summary = aggregate_histories(histories)
    layer_names = histories[0].probes[-1]["layer_names"]
    acc = np.array([h.accuracy[-1] for h in histories])
    share = np.array([h.probes[-1]["right_share"] for h in histories])
    ratio = np.array(
        [h.probes[-1]["nc1"][-1][2] / h.probes[-1]["nc1"][0][0] for h in histories]
    )
    nc3 = np.array([h.probes[-1]["nc3"] for h in histories], dtype=float)
    nc4 = np.array([h.probes[-1]["nc4"] for h in histories], dtype=float)
    lines = [
        f"train accuracy {acc.mean():.4f} ± {acc.std():.4f}; "
        f"loss {summary['loss_mean'][-1]:.3e}",
        f"readout {histories[0].probes[-1]['readout']!r}: NC3 {nc3.mean():.3f} ± "
        f"{nc3.std():.3f}, NC4 {nc4.mean():.4f} ± {nc4.std():.4f}",
        f"NC1 last output / first input: {ratio.mean():.3e} ± {ratio.std():.3e}",
        f"share of the log NC1 reduction owed to S V^T: {share.mean():.3f} ± "
        f"{share.std():.3f}",
        f"NFA (sqrt-AGOP), seeds x layers at the last epoch: "
        f"{summary['final_nfa_mean']:.3f} ± {summary['final_nfa_std']:.3f}",
    ]
    figure = _FIGURE[args.arch]
    title = f"{args.arch}, {args.dataset}"
    tag = f"{args.arch}_{args.dataset}"

    def svd_figure():
        display = SVDSplitDisplay.from_histories(histories, title=title)
        display.figure_.tight_layout()
        return display.figure_

    def training_figure():
        display = TrainingHistoryDisplay.from_histories(histories, title=title)
        display.figure_.tight_layout()
        return display.figure_

    figures = {
        f"figure2_nc1_svd_{tag}.png": svd_figure,
        f"figure{figure}_training_{tag}.png": training_figure,
    }
    data = {
        "config": {
            **vars(args),
            **config,
            "device": str(device),
            "input_shape": list(input_shape),
            "n_classes": n_classes,
        },
        "layer_names": layer_names,
        "summary": summary,
        "final": {
            "train_accuracy": acc.tolist(),
            "nc1_ratio_last_over_first": ratio.tolist(),
            "right_share": share.tolist(),
        },
        "histories": [h.to_dict() for h in histories],
        "total_seconds": time.perf_counter() - started,
        "platform": platform_info(),
    }
    return CommandResult(
        data=data,
        table=format_table(summary, layer_names) + "\n" + "\n".join(lines),
        figures=figures,
        names={"json": f"nn_results_{tag}.json", "table": f"nn_table_{tag}.txt"},
        checked={
            "training loss": summary["loss_mean"],
            "NC1": summary["nc1_mean"],
            "NFA correlation": summary["nfa_correlation_mean"],
        },
    )


def run_user_model(args):
    """Probe ``args.user_model`` on the data set; return a ``CommandResult``."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    X, y = load(args, flatten=args.input == "flat")
    model = args.user_model.to(device)
    print(
        f"{args.model} on {args.dataset}: {X.shape[0]} samples of shape "
        f"{tuple(X.shape[1:])}; device {device}",
        flush=True,
    )
    probe = probe_network(model, X, y, device=device)
    with torch.no_grad():
        scores = torch.cat(
            [
                model(torch.as_tensor(X[i : i + 256], device=device)).cpu()
                for i in range(0, len(X), 256)
            ]
        )
    accuracy = float(np.mean(scores.argmax(1).numpy() == y))
    header = (
        f"{'layer':<14}| "
        + " | ".join(f"{'NC1 ' + s:^11}" for s in STAGES)
        + f" | {'NFA sqrt-AGOP':^13}"
    )
    rows = [header, "-" * len(header)]
    for l, name in enumerate(probe.layer_names):
        nc1 = " | ".join(f"{v:11.3e}" for v in probe.nc1[l])
        rows.append(f"{name:<14}| {nc1} | {probe.nfa_correlation[l]:13.4f}")
    lines = [
        f"accuracy of the model on the data: {accuracy:.4f}",
        f"readout {probe.readout_name!r}: NC3 {probe.nc3:.3f}, NC4 {probe.nc4:.4f}",
    ]

    def collapse_figure():
        display = CollapseDisplay.from_probe(probe)
        display.figure_.tight_layout()
        return display.figure_

    name = args.model.replace(":", "_").replace(".", "_")
    config = {k: v for k, v in vars(args).items() if k != "user_model"}
    data = {
        "config": {**config, "device": str(device), "input_shape": list(X.shape[1:])},
        "probe": probe.to_dict(),
        "accuracy": accuracy,
        "total_seconds": time.perf_counter() - started,
        "platform": platform_info(),
    }
    return CommandResult(
        data=data,
        table="\n".join(rows) + "\n" + "\n".join(lines),
        figures={f"collapse_{name}_{args.dataset}.png": collapse_figure},
        names={"json": f"nn_probe_{name}.json", "table": f"nn_probe_{name}.txt"},
        checked={"NC1": probe.nc1},
    )


# -- report ---------------------------------------------------------------------------
def format_table(summary, layer_names):
    """Per-layer table of the last measurement, mean +- std over seeds, as text."""

    def cell(key, *index, fmt="9.3e"):
        mean = np.asarray(summary[key + "_mean"])[(-1, *index)]
        std = np.asarray(summary[key + "_std"])[(-1, *index)]
        return f"{mean:{fmt}} ± {std:{fmt}}"

    header = (
        f"{'layer':<14}| {'NC1 input':^21} | {'NC1 SV^T':^21} | {'NC1 output':^21} "
        f"| {'NFA sqrt-AGOP':^17} | {'NFA AGOP':^17}"
    )
    lines = [header, "-" * len(header)]
    for l, name in enumerate(layer_names):
        nc1 = " | ".join(cell("nc1", l, s) for s in range(3))
        nfa = cell("nfa_correlation", l, fmt="7.4f")
        agop = cell("nfa_correlation_agop", l, fmt="7.4f")
        lines.append(f"{name:<14}| {nc1} | {nfa} | {agop}")
    return "\n".join(lines)


def main(argv=None):
    """The command on ``argv`` (``None``: ``sys.argv``); returns 0 on success."""
    return run_command(parse, run, argv)


if __name__ == "__main__":
    sys.exit(main())
