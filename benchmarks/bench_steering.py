"""The steering gallery example's figures, measured: run it and keep its numbers.

Run from the repository root::

    python benchmarks/bench_steering.py --check

It runs ``examples/language_models/plot_steering.py`` as the documentation build
does (one torch thread, one BLAS thread, the Agg backend), then writes to
``benchmarks/results/bench_steering.json`` (``--json``) the example's wall time,
the per-layer probe scores, the AGOP direction's eigenvalue shares and its
cosines with the controls, and the share of sport words generated at every
``coef`` along each direction, with the commit, machine and load average.

Targets (issue 22), checked with ``--check``: along the AGOP direction the
concept rate rises at every step of ``coef``; its rise from ``coef = 0`` to the
largest ``coef`` is at least twice that of the random directions of equal norm
(their mean); the stacked detector's cross-validated ROC AUC is at least 0.95;
and the example runs in at most 60 s.
"""

import argparse
import os
import runpy
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import Targets, finish, provenance  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "language_models" / "plot_steering.py"


def run_example():
    """The example's globals after running it as the doc build would, and its
    wall time."""
    import matplotlib

    matplotlib.use("Agg")
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        start = time.perf_counter()
        found = runpy.run_path(str(EXAMPLE), run_name="__main__")
        seconds = time.perf_counter() - start
    import matplotlib.pyplot as plt

    plt.close("all")
    return found, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a miss")
    parser.add_argument("--quick", action="store_true", help="same run (small)")
    parser.add_argument("--json", default=None, help="where to write the report")
    args = parser.parse_args(argv)
    report = {"provenance": provenance(), "example": str(EXAMPLE.relative_to(ROOT))}
    g, seconds = run_example()
    directions = g["directions"]
    agop = directions["AGOP (RFM)"]
    report["seconds"] = seconds
    report["probes"] = g["probes"].to_dict()
    report["steering_layer"] = f"blocks.{g['layer'] - 1}"
    report["coefs"] = list(g["coefs"])
    report["rates"] = {k: [float(r) for r in v] for k, v in g["rates"].items()}
    report["agop_explained_ratio"] = g["agop"].explained_ratio_.tolist()
    report["cosine_with_agop"] = {
        name: float(v @ agop) for name, v in directions.items()
    }
    report["cosine_with_agop"]["random"] = [float(r @ agop) for r in g["random"]]
    rates = report["rates"]
    rise = {name: values[-1] - values[0] for name, values in rates.items()}
    report["rise"] = rise
    for name, values in rates.items():
        print(f"{name:>20}: " + "  ".join(f"{r:.3f}" for r in values))
    targets = Targets()
    steps = np.diff(rates["AGOP (RFM)"])
    targets.check(
        "smallest step of the concept rate along the AGOP direction",
        float(steps.min()),
        0.0,
        at_most=False,
    )
    targets.check(
        "AGOP rise / twice the random directions' rise",
        rise["AGOP (RFM)"] / max(2 * abs(rise["random (mean of 4)"]), 1e-12),
        1.0,
        at_most=False,
    )
    stacked_auc = float(np.mean(report["probes"]["stacked_scores"]["roc_auc"]))
    targets.check("stacked detector ROC AUC", stacked_auc, 0.95, at_most=False)
    targets.check("example wall time", seconds, 60.0, unit=" s")
    return finish(report, targets, args, "bench_steering")


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
