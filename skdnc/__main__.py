"""Deep RFM and deep neural collapse, the paper's Section 4.1, from the command line.

``python -m skdnc`` (or the ``skdnc-deep-rfm`` command) fits Deep RFM on a data set
(scikit-learn's digits by default), prints the NC1 and NC2 of every layer's three
representations, writes the paper's figures as PNG files (Figure 1: Gram matrices
of the centred, normalised features after :math:`M^{1/2}`; Figure 3 or 4: NC1 and
NC2 against depth) and a JSON file of every number, and compares the 5-fold
cross-validated accuracy of ``Pipeline([DeepRFMTransformer(), RFMClassifier()])``
with that of ``RFMClassifier()`` alone.
"""

import argparse
import sys
import time

import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdnc._cli import (
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
from skdnc._deep_rfm import DeepRFMTransformer
from skdnc._display import CollapseDisplay, GramDisplay
from skdnc._feature_maps import FEATURE_MAPS
from skdnc._kernels import KERNELS
from skdnc._presets import deep_rfm_settings, default_preset, describe
from skdnc._rfm import RFMClassifier
from skdnc.datasets import load_dataset, standardize
from skdnc.metrics._collapse import STAGES

#: The digits run of the demo preset (see :mod:`skdnc._presets`).
DIGITS_DEFAULTS = {
    k: v
    for k, v in deep_rfm_settings("demo", "digits", "relu").items()
    if k in ("width", "agop_samples")
}


# -- parse ----------------------------------------------------------------------------
def build_parser():
    """The command-line interface of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m skdnc",
        description=(
            "Deep RFM (Algorithm 1 of Beaglehole et al., 'Average gradient outer "
            "product as a mechanism for deep neural collapse'): per-layer NC1/NC2, "
            "the paper's figures, and cross-validated accuracy."
        ),
        parents=[common_parser("skdnc_output")],
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--n-samples",
        type=positive_int,
        help="training points, the first ones " + _preset_help("n_samples"),
    )
    add("--L", type=positive_int, default=18, help="depth")
    add(
        "--feature-map", default="relu", choices=FEATURE_MAPS, help="random feature map"
    )
    add(
        "--kernel",
        choices=KERNELS,
        help="kernel of every layer's machine " + _preset_help("kernel"),
    )
    add(
        "--width",
        type=positive_int,
        help="random features per layer " + _preset_help("width"),
    )
    add(
        "--gamma",
        type=positive_float,
        help="scale of the cos map's l1-Laplace kernel " + _preset_help("gamma"),
    )
    add(
        "--bandwidth",
        type=positive_float,
        help="kernel bandwidth " + _preset_help("bandwidth"),
    )
    add(
        "--reg",
        type=nonnegative_float,
        help="ridge of the kernel solves; 0 is ridgeless " + _preset_help("reg"),
    )
    add(
        "--agop-samples",
        type=positive_int,
        help="points per AGOP " + _preset_help("agop_samples"),
    )
    add(
        "--dtype",
        choices=["float64", "float32"],
        help="precision of the computation " + _preset_help("dtype"),
    )
    add("--seed", type=seed, default=0, help="random seed")
    add(
        "--gram-layers",
        type=positive_int,
        nargs="+",
        help="layers shown in Figure 1 (six from 1 to L when not given)",
    )
    add(
        "--cv-folds",
        type=_at_least_two,
        default=5,
        help="folds of the cross-validated accuracy",
    )
    add(
        "--cv-L",
        type=_depth,
        default="auto",
        help="depth of the cross-validated pipeline: a number of layers, or auto "
        "(chosen on a validation split of each training fold, the transformer's "
        "default)",
    )
    add("--no-cv", action="store_true", help="skip the cross-validated accuracy")
    return parser


def _at_least_two(text):
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is less than 2")
    return value


def _depth(text):
    """``--cv-L``: ``auto`` or a number of layers (0 or more)."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither auto nor a number of layers (0 or more)"
        )
    return value


def _preset_help(key):
    """What the presets set an option to, for its help text (from the table)."""

    def show(value):
        if value is None:
            return "all" if key == "n_samples" else "the estimator's default"
        return "all" if isinstance(value, float) and value == 1.0 else str(value)

    return describe(deep_rfm_settings, key, FEATURE_MAPS, show)


def _preset(args):
    return args.preset or default_preset("deep_rfm", args.dataset)


def preset_defaults(args):
    """Parser defaults from the preset for the chosen data set and map."""
    return deep_rfm_settings(_preset(args), args.dataset, args.feature_map)


def parse(argv=None):
    """Parsed and validated arguments, with the data set's preset applied."""
    parser = build_parser()
    args = parse_args(parser, argv, preset_defaults)
    check_preset(parser, args)
    preset = {"name": _preset(args), "n_samples": preset_defaults(args)["n_samples"]}
    check_n_samples(parser, args, preset, folds=None if args.no_cv else args.cv_folds)
    if args.gram_layers is not None and max(args.gram_layers) > args.L:
        parser.error(
            f"--gram-layers must be between 1 and --L={args.L}; got {args.gram_layers}."
        )
    return args


# -- run ------------------------------------------------------------------------------
def load(args):
    """Standardised features, labels and raw features, in class order.

    The paper's preprocessing: per-feature standardisation; samples in class order
    so that the Gram matrices of Figure 1 show blocks.
    """
    X, y = load_dataset(
        args.dataset,
        root=args.data_root,
        n_samples=args.n_samples,
        download=args.download,
        return_X_y=True,
    )
    order = np.argsort(y, kind="stable")
    return standardize(X)[order], np.asarray(y)[order], np.asarray(X)[order]


def estimator_params(args):
    """The DeepRFMTransformer parameters of a run."""
    return {
        "L": args.L,
        "kernel": args.kernel,
        "bandwidth": args.bandwidth,
        "reg": args.reg,
        "feature_map": args.feature_map,
        "width": args.width,
        "gamma": args.gamma,
        "agop_samples": args.agop_samples,
        "dtype": args.dtype,
        "device": args.device,
        "random_state": args.seed,
    }


def run(args):
    """Fit Deep RFM, measure it, cross-validate; return a :class:`CommandResult`."""
    started = time.perf_counter()
    X, y, X_raw = load(args)
    params = estimator_params(args)
    print(
        f"Deep RFM on {args.dataset}: {X.shape[0]} samples, {X.shape[1]} features, "
        f"{len(np.unique(y))} classes; "
        + ", ".join(f"{k}={v}" for k, v in params.items()),
        flush=True,
    )

    tic = time.perf_counter()
    model = DeepRFMTransformer(
        **params, record_readout=True, verbose=int(not args.quiet)
    ).fit(X, y)
    fit_seconds = time.perf_counter() - tic
    history = model.collapse_history_
    nc1 = history["nc1_input"]
    factor, r2 = log_linear_fit(nc1)
    lines = [
        f"NC1 of the layer inputs: {nc1[0]:.3e} (layer 1) -> {nc1[-1]:.3e} (layer "
        f"{args.L}); per-layer factor {factor:.3f} (R^2 = {r2:.3f}); fit in "
        f"{fit_seconds:.1f} s"
    ]
    gram_layers = args.gram_layers or sorted(
        {int(round(v)) for v in np.linspace(1, args.L, min(args.L, 6))}
    )
    figure = 3 if args.feature_map == "relu" else 4
    title = f"Deep RFM, {args.dataset}, {args.feature_map} features"

    def gram_figure():
        display = GramDisplay.from_estimator(model, X, y, layers=gram_layers)
        display.figure_.suptitle(title + " (Gram after $M^{1/2}$)")
        return display.figure_

    def collapse_figure():
        display = CollapseDisplay.from_estimator(model)
        display.figure_.suptitle(title)
        display.figure_.tight_layout()
        return display.figure_

    figures = {
        f"figure1_gram_{args.feature_map}.png": gram_figure,
        f"figure{figure}_collapse_{args.feature_map}.png": collapse_figure,
    }

    cv = None
    if not args.no_cv:
        print(
            f"{args.cv_folds}-fold cross-validation (StandardScaler in both "
            "pipelines) ...",
            flush=True,
        )
        cv = cross_validation(args, X_raw, y, params)
        for name, res in cv.items():
            depths = res.get("n_layers_per_fold")
            chosen = f"; layers per fold {depths}" if depths else ""
            lines.append(
                f"  {name:>14}: accuracy {res['mean']:.4f} +- {res['std']:.4f} "
                f"({res['seconds']:.1f} s{chosen})"
            )
    data = {
        "config": {
            **vars(args),
            **params,
            "n_samples": int(X.shape[0]),
            "n_features": int(X.shape[1]),
        },
        "history": history,
        "nc1_input_first": float(nc1[0]),
        "nc1_input_last": float(nc1[-1]),
        "nc1_per_layer_factor": factor,
        "nc1_log_linear_r2": r2,
        "figure1_layers": gram_layers,
        "cross_validation": cv,
        "fit_seconds": fit_seconds,
        "total_seconds": time.perf_counter() - started,
        "platform": platform_info(),
    }
    return CommandResult(
        data=data,
        table=format_table(history),
        lines=lines,
        figures=figures,
        names={"json": "deep_rfm_results.json", "table": "deep_rfm_table.txt"},
        checked={
            "NC1 by layer": history["nc1_input"],
            "NC2 by layer": history["nc2_input"],
            # One layer has no per-layer factor (NaN, not an error).
            **({"per-layer NC1 factor": [factor, r2]} if len(nc1) > 1 else {}),
        },
    )


def cross_validation(args, X, y, params):
    """Cross-validated accuracy of Deep RFM + RFM against RFM alone.

    The pipeline's depth is ``--cv-L``: by default ``"auto"``, the transformer's
    default, chosen on each training fold (the collapse of the L-layer fit above
    costs held-out accuracy; the user guide's depth curves show it).
    """
    cv = StratifiedKFold(args.cv_folds, shuffle=True, random_state=args.seed)
    # Both readouts take their AGOPs at the same number of points as Deep RFM,
    # with the fixed ridge and bandwidth the demo's figures were measured with
    # (the classifier's defaults before they became "auto").
    rfm_params = {
        "reg": 1e-3,
        "bandwidth": 10.0,
        "random_state": args.seed,
        "device": args.device,
        "agop_samples": params["agop_samples"],
    }
    models = {
        "deep_rfm+rfm": Pipeline(
            [
                ("scale", StandardScaler()),
                (
                    "deep_rfm",
                    DeepRFMTransformer(
                        **{**params, "L": args.cv_L}, record_metrics=False
                    ),
                ),
                ("rfm", RFMClassifier(**rfm_params)),
            ]
        ),
        "rfm": Pipeline(
            [
                ("scale", StandardScaler()),
                ("rfm", RFMClassifier(**rfm_params)),
            ]
        ),
    }
    results = {}
    for name, model in models.items():
        tic = time.perf_counter()
        out = cross_validate(model, X, y, cv=cv, return_estimator=True)
        scores = out["test_score"]
        results[name] = {
            "scores": scores.tolist(),
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            "seconds": time.perf_counter() - tic,
        }
        if "deep_rfm" in model.named_steps:
            results[name]["n_layers_per_fold"] = [
                int(est.named_steps["deep_rfm"].n_layers_) for est in out["estimator"]
            ]
    return results


# -- report ---------------------------------------------------------------------------
def log_linear_fit(values):
    """Per-layer factor and R^2 of a straight line through log(values) vs layer.

    Both are NaN when a value is not positive and finite (no logarithm), or for
    fewer than two layers (no line).
    """
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2 or not np.all(np.isfinite(values) & (values > 0)):
        return float("nan"), float("nan")
    layers = np.arange(1, len(values) + 1)
    logv = np.log(values)
    slope, intercept = np.polyfit(layers, logv, 1)
    residual = logv - (slope * layers + intercept)
    total = np.sum((logv - logv.mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / total if total > 0 else 1.0
    return float(np.exp(slope)), float(r2)


def format_table(history):
    """The per-layer table of NC1 and NC2 of the three stages, as text."""
    header = (
        f"{'layer':>5} | {'NC1 X':>9} {'NC1 M½X':>9} {'NC1 Φ':>9} | "
        f"{'NC2 X':>9} {'NC2 M½X':>9} {'NC2 Φ':>9}"
    )
    lines = [header, "-" * len(header)]
    for i, layer in enumerate(history["layer"]):
        nc1 = " ".join(f"{history[f'nc1_{s}'][i]:9.3e}" for s in STAGES)
        nc2 = " ".join(f"{history[f'nc2_{s}'][i]:9.3e}" for s in STAGES)
        lines.append(f"{int(layer):5d} | {nc1} | {nc2}")
    return "\n".join(lines)


def main(argv=None):
    """The command on ``argv`` (``None``: ``sys.argv``); returns 0 on success."""
    return run_command(parse, run, argv)


if __name__ == "__main__":
    sys.exit(main())
