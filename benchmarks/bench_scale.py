"""One RFM round at paper scale, exact against iterative solve.

For n = 5k, 10k, 20k, 50k points of synthetic data (d = 784, c = 10 classes), prints
the time and peak memory (resident memory above what the process held before the
round: torch, the data) of one RFM round (kernel ridge solve with M = I, then the
AGOP update of M) with each solver, and the test-accuracy gap between the solvers'
predictors, in one run. Each measurement runs in a fresh process so that its peak
resident memory is its own.

Usage::

    python benchmarks/bench_scale.py            # n = 5k, 10k, 20k, 50k
    python benchmarks/bench_scale.py --quick    # n = 2k, 4k
    python benchmarks/bench_scale.py --sizes 5000 20000 --solvers cg
"""

import argparse
import json
import os
import subprocess
import sys
import time

D, N_CLASSES, N_TEST = 784, 10, 2000


def make_data(n, seed=0):
    """Ten Gaussian classes on a 20-dimensional subspace of R^784, plus noise."""
    import numpy as np

    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(np.random.default_rng(1).normal(size=(D, 20)))[0]
    means = 0.6 * np.random.default_rng(2).normal(size=(N_CLASSES, 20))
    y = rng.integers(N_CLASSES, size=n)
    Z = means[y] + rng.normal(size=(n, 20))
    X = Z @ basis.T + 0.3 * rng.normal(size=(n, D))
    return X.astype(np.float32), y


def _status(key):
    """A size from /proc/self/status, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak():
    """Reset the peak resident set size (VmHWM) to the current one (Linux)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_round(n, solver, agop_samples, budget_gib):
    """Run one round in this process; return a dict of measurements."""
    import numpy as np
    import torch

    from skdnc._backend import make_generator, memory_budget_bytes, resolve_device
    from skdnc._kernels import Kernel
    from skdnc._rfm import agop_step
    from skdnc._solvers import fit_kernel_regression, kernel_predict

    X_all, y_all = make_data(n + N_TEST)
    device = resolve_device("auto")
    X = torch.tensor(X_all[:n], device=device)
    Y = torch.tensor(2 * np.eye(N_CLASSES)[y_all[:n]] - 1, dtype=torch.float32)
    Y = Y.to(device)
    X_test = torch.tensor(X_all[n:], device=device)
    budget = memory_budget_bytes(budget_gib, device)
    _reset_peak()
    rss_before = _status("VmRSS")
    kernel = Kernel("laplace", 10.0)
    params = {
        "agop_samples": agop_samples,
        "agop_normalization": "max",
        "agop_power": 0.5,
        "centering": False,
        "diag": False,
    }
    logs = []
    tic = time.perf_counter()
    alpha = fit_kernel_regression(
        X, Y, None, kernel, 1e-3, solver=solver, budget=budget,
        solver_params={"tol": 1e-4}, generator=make_generator(0), log=logs.append,
    )  # fmt: skip
    t_solve = time.perf_counter() - tic
    agop_step(
        X, alpha, None, kernel, params=params, budget=budget,
        generator=make_generator(0),
    )  # fmt: skip
    t_round = time.perf_counter() - tic
    F = kernel_predict(X_test, X, alpha, None, kernel, budget=budget)
    accuracy = float((F.argmax(1).cpu().numpy() == y_all[n:]).mean())
    peak = _status("VmHWM") - rss_before
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    return {
        "n": n,
        "solver": solver,
        "solve_s": t_solve,
        "round_s": t_round,
        "peak_gib": peak / 2**30,
        "accuracy": accuracy,
        "log": logs,
    }


def measure(n, solver, agop_samples, budget_gib, timeout):
    """Run :func:`one_round` in a fresh interpreter; ``None`` on failure."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [sys.executable, __file__, "--worker", str(n), solver, str(agop_samples),
           str(budget_gib)]  # fmt: skip
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=True
        )
    except subprocess.TimeoutExpired:
        return {"n": n, "solver": solver, "error": f"over {timeout} s"}
    except subprocess.CalledProcessError as exc:
        return {"n": n, "solver": solver, "error": exc.stderr.strip().splitlines()[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[5000, 10_000, 20_000, 50_000]
    )
    parser.add_argument("--solvers", nargs="+", default=["cholesky", "cg"])
    parser.add_argument("--agop-samples", type=int, default=5000)
    parser.add_argument("--budget", type=float, default=14.0, help="GiB")
    parser.add_argument("--timeout", type=float, default=900.0, help="s per round")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        n, solver, m, budget = args.worker
        print(json.dumps(one_round(int(n), solver, int(m), float(budget))))
        return
    sizes = [2000, 4000] if args.quick else args.sizes
    print(f"one RFM round (Laplace L=10, reg=1e-3, float32, AGOP at "
          f"{args.agop_samples} points), d={D}, c={N_CLASSES}, budget "
          f"{args.budget} GiB, {N_TEST} test points")  # fmt: skip
    header = f"{'n':>7} {'solver':>9} {'solve s':>8} {'round s':>8} {'peak GiB':>9} "
    print(header + f"{'test acc':>9}  notes")
    rows = {}
    for n in sizes:
        for solver in args.solvers:
            r = measure(n, solver, args.agop_samples, args.budget, args.timeout)
            rows[n, solver] = r
            if "error" in r:
                print(f"{n:>7} {solver:>9}  failed: {r['error']}")
                continue
            note = r["log"][0] if r["log"] else ""
            print(f"{n:>7} {solver:>9} {r['solve_s']:8.2f} {r['round_s']:8.2f} "
                  f"{r['peak_gib']:9.2f} {r['accuracy']:9.4f}  {note}")  # fmt: skip
    print("\nratios (cholesky / cg) and accuracy gap (cg - cholesky):")
    for n in sizes:
        a, b = rows.get((n, "cholesky")), rows.get((n, "cg"))
        if a and b and "error" not in a and "error" not in b:
            print(f"{n:>7}: round time x{a['round_s'] / b['round_s']:.2f}, solve "
                  f"x{a['solve_s'] / b['solve_s']:.2f}, accuracy gap "
                  f"{b['accuracy'] - a['accuracy']:+.4f}")  # fmt: skip


if __name__ == "__main__":
    main()
