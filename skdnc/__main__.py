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
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from skdnc.metrics._collapse import STAGES as _STAGES

#: Defaults of the digits run, sized to finish in under two minutes on 2 CPU cores
#: (measured: 54 s with ``--threads 1`` on a shared 2-core machine; per-layer NC1
#: factor 0.48, NC1 1.68 -> 7e-6 over 18 layers). ``--width 256`` collapses faster
#: (factor 0.43) at about twice the cost; the paper uses 1024.
DIGITS_DEFAULTS = {"width": 128, "agop_samples": 500}


def build_parser():
    """The command-line interface of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog="python -m skdnc",
        description=(
            "Deep RFM (Algorithm 1 of Beaglehole et al., 'Average gradient outer "
            "product as a mechanism for deep neural collapse'): per-layer NC1/NC2, "
            "the paper's figures, and cross-validated accuracy."
        ),
    )
    parser.add_argument(
        "--dataset", default="digits", choices=["digits", "mnist", "cifar10", "svhn"],
        help="data set (default: scikit-learn's digits, bundled; the others are "
        "read through torchvision from --data-root)",
    )  # fmt: skip
    parser.add_argument("--data-root", default=None,
                        help="folder of the torchvision data sets")  # fmt: skip
    parser.add_argument("--n-samples", type=int, default=None,
                        help="number of training points (default: all of digits, "
                        "5,000 of the others)")  # fmt: skip
    parser.add_argument("--L", type=int, default=18, help="depth (default: 18)")
    parser.add_argument("--feature-map", default="relu", choices=["relu", "cos"],
                        help="random feature map (default: relu)")  # fmt: skip
    parser.add_argument("--width", type=int, default=None,
                        help="random features per layer (default: 128 for digits; "
                        "1024 relu / 4096 cos otherwise)")  # fmt: skip
    parser.add_argument("--gamma", type=float, default=0.05,
                        help="scale of the cos map's l1-Laplace kernel")  # fmt: skip
    parser.add_argument("--bandwidth", type=float, default=2.0,
                        help="Laplace kernel bandwidth (default: 2.0)")  # fmt: skip
    parser.add_argument("--reg", type=float, default=1e-3,
                        help="ridge of the kernel solves; 0 is ridgeless")  # fmt: skip
    parser.add_argument("--agop-samples", type=int, default=None,
                        help="points per AGOP (default: 500 for digits, all "
                        "otherwise)")  # fmt: skip
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for this run (default: torch's "
                        "choice); 1 avoids stalls of small factorizations when "
                        "other processes share the cores")  # fmt: skip
    parser.add_argument("--gram-layers", type=int, nargs="+", default=None,
                        help="layers shown in Figure 1 (default: six, 1 to L)")
    parser.add_argument("--cv-folds", type=int, default=5)
    parser.add_argument("--no-cv", action="store_true",
                        help="skip the cross-validated accuracy")  # fmt: skip
    parser.add_argument("--output", default="skdnc_output",
                        help="folder for the table, figures and JSON")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _load(args):
    from skdnc.datasets import load_dataset, standardize

    n_samples = args.n_samples
    if n_samples is None and args.dataset != "digits":
        n_samples = 5000
    X, y = load_dataset(args.dataset, root=args.data_root, n_samples=n_samples,
                        return_X_y=True)  # fmt: skip
    # The paper's preprocessing: per-feature standardisation, samples in class order
    # (so that the Gram matrices of Figure 1 show blocks).
    order = np.argsort(y, kind="stable")
    return standardize(X)[order], np.asarray(y)[order], np.asarray(X)[order]


def log_linear_fit(values):
    """Per-layer factor and R^2 of a straight line through log(values) vs layer."""
    values = np.asarray(values, dtype=np.float64)
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
        nc1 = " ".join(f"{history[f'nc1_{s}'][i]:9.3e}" for s in _STAGES)
        nc2 = " ".join(f"{history[f'nc2_{s}'][i]:9.3e}" for s in _STAGES)
        lines.append(f"{int(layer):5d} | {nc1} | {nc2}")
    return "\n".join(lines)



_STAGE_LABELS = {
    "input": "X (input)",
    "projection": "$M^{1/2}X$",
    "output": "$\\Phi(M^{1/2}X)$",
}


def _centred_gram(Z, y):
    """Gram matrix of samples centred by the mean of class means, rows normalised."""
    means = np.stack([Z[y == c].mean(axis=0) for c in np.unique(y)])
    Zc = Z - means.mean(axis=0)
    Zc /= np.maximum(np.linalg.norm(Zc, axis=1, keepdims=True), 1e-300)
    return Zc @ Zc.T


def plot_gram(reps, y, path, title):
    """Figure 1: centred, normalised Gram matrices after M^{1/2} at some layers."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(reps), figsize=(2.2 * len(reps) + 1, 2.8),
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, rep in zip(axes[0], reps):
        image = ax.imshow(_centred_gram(rep["projection"].astype(np.float64), y),
                          cmap="viridis", vmin=-0.2, vmax=1.0,
                          interpolation="nearest")  # fmt: skip
        ax.set_title(f"layer {rep['layer']}")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.9)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_collapse(history, path, title):
    """Figures 3/4: NC1 and NC2 against depth for the three stages, log scale."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric, label in zip(
        axes, ("nc1", "nc2"),
        ("NC1: tr $\\Sigma_W$ / tr $\\Sigma_B$",
         "NC2: $\\|\\tilde\\mu\\tilde\\mu^\\top - \\Sigma_{ETF}\\|_F$"),
    ):  # fmt: skip
        for stage, color in zip(_STAGES, ("tab:green", "tab:orange", "tab:blue")):
            ax.plot(history["layer"], history[f"{metric}_{stage}"], marker="o",
                    markersize=3, color=color, label=_STAGE_LABELS[stage])  # fmt: skip
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_title(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cross_validate(args, X, y, estimator_params):
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from skdnc._deep_rfm import DeepRFMTransformer
    from skdnc._rfm import RFMClassifier

    cv = StratifiedKFold(args.cv_folds, shuffle=True, random_state=args.seed)
    # Both readouts take their AGOPs at the same number of points as Deep RFM.
    rfm_params = {"random_state": args.seed, "device": args.device,
                  "agop_samples": estimator_params["agop_samples"]}  # fmt: skip
    models = {
        "deep_rfm+rfm": Pipeline([
            ("scale", StandardScaler()),
            ("deep_rfm", DeepRFMTransformer(**estimator_params, record_metrics=False)),
            ("rfm", RFMClassifier(**rfm_params)),
        ]),
        "rfm": Pipeline([
            ("scale", StandardScaler()),
            ("rfm", RFMClassifier(**rfm_params)),
        ]),
    }  # fmt: skip
    results = {}
    for name, model in models.items():
        tic = time.perf_counter()
        scores = cross_val_score(model, X, y, cv=cv)
        results[name] = {
            "scores": scores.tolist(),
            "mean": float(scores.mean()),
            "std": float(scores.std()),
            "seconds": time.perf_counter() - tic,
        }
    return results


def main(argv=None):
    """Run Deep RFM, print the per-layer table, write the figures and the JSON.

    Parameters
    ----------
    argv : list of str, default=None
        Command-line arguments; ``None`` reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success.
    """
    import matplotlib

    matplotlib.use("Agg")
    from skdnc._deep_rfm import DeepRFMTransformer

    args = build_parser().parse_args(argv)
    if args.L < 1:
        raise SystemExit("--L must be at least 1.")
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    X, y, X_raw = _load(args)
    digits = args.dataset == "digits"
    width = args.width
    if width is None and digits:
        width = DIGITS_DEFAULTS["width"]
    agop_samples = args.agop_samples
    if agop_samples is None and digits:
        agop_samples = DIGITS_DEFAULTS["agop_samples"]
    params = {
        "L": args.L,
        "bandwidth": args.bandwidth,
        "reg": args.reg,
        "feature_map": args.feature_map,
        "width": width,
        "gamma": args.gamma,
        "agop_samples": agop_samples,
        "dtype": args.dtype,
        "device": args.device,
        "random_state": args.seed,
    }
    print(f"Deep RFM on {args.dataset}: {X.shape[0]} samples, {X.shape[1]} features, "
          f"{len(np.unique(y))} classes; " +
          ", ".join(f"{k}={v}" for k, v in params.items()), flush=True)  # fmt: skip

    tic = time.perf_counter()
    model = DeepRFMTransformer(**params, verbose=int(not args.quiet)).fit(X, y)
    fit_seconds = time.perf_counter() - tic
    history = model.collapse_history_
    print(format_table(history))
    factor, r2 = log_linear_fit(history["nc1_input"])
    nc1 = history["nc1_input"]
    print(f"NC1 of the layer inputs: {nc1[0]:.3e} (layer 1) -> {nc1[-1]:.3e} "
          f"(layer {args.L}); per-layer factor {factor:.3f} (R^2 = {r2:.3f}); "
          f"fit in {fit_seconds:.1f} s")  # fmt: skip

    L = args.L
    gram_layers = args.gram_layers or sorted(
        {int(round(v)) for v in np.linspace(1, L, min(L, 6))}
    )
    gram_layers = [l for l in gram_layers if 1 <= l <= L]
    reps = model.transform_layers(X, layers=gram_layers)
    figure = 3 if args.feature_map == "relu" else 4
    title = f"Deep RFM, {args.dataset}, {args.feature_map} features"
    files = {
        "figure1": out / f"figure1_gram_{args.feature_map}.png",
        f"figure{figure}": out / f"figure{figure}_collapse_{args.feature_map}.png",
        "json": out / "deep_rfm_results.json",
        "table": out / "deep_rfm_table.txt",
    }
    plot_gram(reps, y, files["figure1"], title + " (Gram after $M^{1/2}$)")
    plot_collapse(history, files[f"figure{figure}"], title)
    del reps

    cv = None
    if not args.no_cv:
        print(f"{args.cv_folds}-fold cross-validation (StandardScaler in both "
              "pipelines) ...", flush=True)  # fmt: skip
        cv = _cross_validate(args, X_raw, y, params)
        for name, res in cv.items():
            print(f"  {name:>14}: accuracy {res['mean']:.4f} +- {res['std']:.4f} "
                  f"({res['seconds']:.1f} s)")  # fmt: skip

    results = {
        "config": {**vars(args), **params, "n_samples": int(X.shape[0]),
                   "n_features": int(X.shape[1])},
        "history": {k: np.asarray(v).tolist() for k, v in history.items()},
        "nc1_input_first": float(nc1[0]),
        "nc1_input_last": float(nc1[-1]),
        "nc1_per_layer_factor": factor,
        "nc1_log_linear_r2": r2,
        "figure1_layers": gram_layers,
        "cross_validation": cv,
        "fit_seconds": fit_seconds,
        "total_seconds": time.perf_counter() - started,
        "platform": {"python": platform.python_version(),
                     "cpu_count": os.cpu_count()},
        "files": {k: str(v) for k, v in files.items()},
    }  # fmt: skip
    files["table"].write_text(format_table(history) + "\n")
    files["json"].write_text(json.dumps(results, indent=2, default=str))
    print("wrote " + ", ".join(str(p) for p in files.values()))
    print(f"total {results['total_seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
