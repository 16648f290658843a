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
"""

import argparse
import sys
import time

import numpy as np

from skdnc._backend import resolve_device
from skdnc._cli import (
    CommandResult,
    HelpFormatter,
    common_parser,
    nonnegative_float,
    parse_args,
    platform_info,
    positive_float,
    positive_int,
)
from skdnc._cli import main as run_command
from skdnc._display import SVDSplitDisplay, TrainingHistoryDisplay
from skdnc._presets import default_preset, describe, network_settings
from skdnc.datasets import load_dataset
from skdnc.nn import aggregate_histories, make_model, train_seeds

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
        type=int,
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
    return parser


def _preset_help(key):
    """What the presets set an option to, for its help text (from the table)."""

    def show(value):
        return " ".join(map(str, value)) if isinstance(value, list) else str(value)

    return describe(network_settings, key, ARCHITECTURES, show)


def preset_defaults(args):
    """Parser defaults from the preset for the chosen data set and network."""
    preset = args.preset or default_preset("nn", args.dataset)
    return network_settings(preset, args.dataset, args.arch)


def parse(argv=None):
    """Parsed and validated arguments, with the data set's preset applied."""
    return parse_args(build_parser(), argv, preset_defaults)


def settings(args):
    """The preset-controlled settings of a run, as a dict."""
    return {key: getattr(args, key) for key in SETTINGS}


# -- run ------------------------------------------------------------------------------
def load(args):
    """Standardised training data: flat rows for the MLP, images otherwise."""
    X, y = load_dataset(
        args.dataset,
        root=args.data_root,
        n_samples=args.n_samples,
        balanced=args.dataset == "digits",
        flatten=args.arch == "mlp",
        standardize=True,
        download=args.download,
        return_X_y=True,
    )
    return np.asarray(X, dtype=np.float32), np.asarray(y)


def run(args):
    """Train every seed and measure; return a :class:`~skdnc._cli.CommandResult`."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    X, y = load(args)
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
