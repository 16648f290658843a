"""RFM and Deep RFM at scale: exact against iterative solve, and layers at their floor.

Usage::

    python benchmarks/bench_scale.py --check     # the full run; exits 1 on a miss
    python benchmarks/bench_scale.py --quick     # a smoke run on small problems

Every figure goes to a JSON file (``--json``; by default
``benchmarks/results/bench_scale.json``, or ``bench_scale_quick.json`` with
``--quick``) with the commit, the machine and its load average at the start and
the end. In one run:

1. One RFM round (kernel ridge solve with M = I, then the AGOP update of M) on
   synthetic data (d = 784, c = 10 classes, float32) with each solver, each in a
   fresh process: time, peak resident memory above what the process held before
   the round, and the test accuracy of the round's predictor. Targets: at
   n = 50,000 the conjugate-gradient round within 90 s and 10 GiB; at n = 20,000
   the CG round at most half the Cholesky round, with the same test accuracy
   (within 0.005).
2. Deep RFM, float32, per layer against its floor: ReLU features of width 1024
   on 5,000 x 784 image-like data, L = 18, and random Fourier (cos) features of
   width 4,096 on 2,000 x 784, L = 12 (``record_metrics=False``: the floor does
   not measure collapse). The floor of a layer is the same operations as bare
   torch calls on the same shapes: row normalisation, the kernel matrix (one
   GEMM, fused elementwise passes), Cholesky and solve, the AGOP at the default
   number of points (distance GEMM, weights, gradient GEMM, ``H'H``), the
   eigendecomposition behind ``M^(1/2)`` and the product with it, and the
   feature map. Target: every layer at most 1.3x its floor.
3. ``cross_val_score(Pipeline([DeepRFMTransformer(L=18), RFMClassifier()]))`` on
   digits (float32, 5 folds, defaults otherwise): target at most 60 s.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import (  # noqa: E402
    Targets,
    finish,
    format_table,
    image_like,
    provenance,
)

D, N_CLASSES, N_TEST = 784, 10, 2000
CG_N, CG_SECONDS, CG_GIB = 50_000, 90.0, 10.0
CMP_N, CMP_RATIO, ACCURACY_GAP = 20_000, 0.5, 0.005
FLOOR_RATIO = 1.3
PIPELINE_SECONDS = 60.0


def make_data(n, seed=0):
    """Ten Gaussian classes on a 20-dimensional subspace of R^784, plus noise."""
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
    from skdnc._rfm_core import agop_step
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
        "agop_samples": None if agop_samples == 0 else agop_samples,
        "agop_normalization": "max",
        "agop_power": 0.5,
        "centering": False,
        "diag": False,
    }
    logs = []
    tic = time.perf_counter()
    alpha = fit_kernel_regression(
        X,
        Y,
        None,
        kernel,
        1e-3,
        solver=solver,
        budget=budget,
        solver_params={"tol": 1e-4},
        generator=make_generator(0),
        log=logs.append,
    )
    t_solve = time.perf_counter() - tic
    agop_step(
        X,
        alpha,
        None,
        kernel,
        params=params,
        budget=budget,
        generator=make_generator(0),
    )
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
    """Run :func:`one_round` in a fresh interpreter; an ``error`` entry on failure."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        str(n),
        solver,
        str(agop_samples),
        str(budget_gib),
    ]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=True
        )
    except subprocess.TimeoutExpired:
        return {"n": n, "solver": solver, "error": f"over {timeout:.0f} s"}
    except subprocess.CalledProcessError as exc:
        lines = (exc.stderr or "failed").strip().splitlines()
        return {"n": n, "solver": solver, "error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def solver_section(sizes, solvers, agop_samples, budget, timeout, targets):
    print(
        f"== 1. One RFM round (Laplace L=10, reg=1e-3, float32), d={D}, "
        f"c={N_CLASSES}, budget {budget} GiB, {N_TEST} test points =="
    )
    rows, results = [], {}
    for n in sizes:
        for solver in solvers:
            if solver == "cholesky" and n > CMP_N:
                continue  # the n x n factorization does not fit this machine
            r = measure(n, solver, agop_samples, budget, timeout)
            results[f"n={n} {solver}"] = r
            if "error" in r:
                rows.append((n, solver, "-", "-", "-", "-", r["error"][:60]))
                continue
            note = r["log"][0] if r["log"] else ""
            rows.append(
                (
                    n,
                    solver,
                    f"{r['solve_s']:.2f}",
                    f"{r['round_s']:.2f}",
                    f"{r['peak_gib']:.2f}",
                    f"{r['accuracy']:.4f}",
                    note,
                )
            )
    print(
        format_table(
            ["n", "solver", "solve s", "round s", "peak GiB", "test acc", "notes"], rows
        )
    )
    big = results.get(f"n={CG_N} cg")
    if big is not None:
        if "error" in big:
            targets.fail(f"n={CG_N}: CG round", big["error"])
        else:
            targets.check(
                f"n={CG_N}: CG round time", big["round_s"], CG_SECONDS, unit=" s"
            )
            targets.check(
                f"n={CG_N}: CG round peak memory", big["peak_gib"], CG_GIB, unit=" GiB"
            )
    a, b = results.get(f"n={CMP_N} cholesky"), results.get(f"n={CMP_N} cg")
    if a is not None and b is not None:
        if "error" in a or "error" in b:
            targets.fail(f"n={CMP_N}: CG against Cholesky", "a round failed")
        else:
            targets.check(
                f"n={CMP_N}: CG round / Cholesky round",
                b["round_s"] / a["round_s"],
                CMP_RATIO,
                unit="x",
            )
            targets.check(
                f"n={CMP_N}: |CG accuracy - Cholesky accuracy|",
                abs(b["accuracy"] - a["accuracy"]),
                ACCURACY_GAP,
            )
    return results


def _layer_floor(n, d, width, kind, repeat=2):
    """Seconds of one Deep RFM layer's operations as bare torch calls (float32)."""
    import math

    import torch
    from threadpoolctl import threadpool_limits

    from skdnc import DeepRFMTransformer
    from skdnc._agop import default_agop_points

    defaults = DeepRFMTransformer()
    L, reg = float(defaults.bandwidth), float(defaults.reg)
    g = torch.Generator().manual_seed(0)
    X = torch.rand(n, d, generator=g)
    Y = torch.full((n, N_CLASSES), -1.0)
    Y[torch.arange(n), torch.randint(N_CLASSES, (n,), generator=g)] = 1.0
    W = torch.randn(width, d, generator=g) * math.sqrt(2.0 / width)
    b = torch.rand(width, generator=g) * 2 * math.pi
    m = min(n, default_agop_points(d))
    best = {}
    for _ in range(repeat):
        t = [time.perf_counter()]
        Xn = X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
        sq = (Xn * Xn).sum(dim=1)
        K = torch.addmm(sq[None, :], Xn, Xn.T, alpha=-2.0)
        K.add_(sq[:, None]).clamp_(min=0.0).sqrt_().mul_(-1.0 / L).exp_()
        K.diagonal().add_(reg)
        t.append(time.perf_counter())
        alpha = torch.cholesky_solve(Y, torch.linalg.cholesky(K))
        del K
        t.append(time.perf_counter())
        Wk = torch.addmm(sq[None, :], Xn[:m], Xn.T, alpha=-2.0)
        Wk.add_(sq[:m, None]).clamp_(min=0.0).sqrt_().mul_(-1.0 / L).exp_()
        H = (Wk @ (alpha[:, :, None] * Xn[:, None, :]).reshape(n, -1)).view(-1, d)
        A = H.T @ H
        t.append(time.perf_counter())
        with threadpool_limits(limits=1, user_api="blas"):
            w, V = np.linalg.eigh(A.double().numpy())
        V = torch.from_numpy(V).float()
        P = (V * torch.from_numpy(w).clamp(min=0).sqrt().float()) @ V.T
        MX = Xn @ P
        t.append(time.perf_counter())
        Z = MX @ W.T
        if kind == "relu":
            Z.clamp_(min=0.0)
        else:
            Z.add_(b).cos_().mul_(math.sqrt(2.0 / width))
        t.append(time.perf_counter())
        parts = dict(
            zip(("kernel", "solve", "agop", "sqrt", "features"), np.diff(t).tolist())
        )
        parts["total"] = t[-1] - t[0]
        if parts["total"] < best.get("total", float("inf")):
            best = parts
    return best


def deep_rfm_section(configs, targets):
    import torch

    from skdnc import DeepRFMTransformer

    print("\n== 2. Deep RFM per layer against its floor (float32) ==")
    results = {}
    for name, n, L, kind, width in configs:
        X, y = image_like(n)
        deep = DeepRFMTransformer(
            L=L, feature_map=kind, width=width, record_metrics=False, random_state=0
        )
        tic = time.perf_counter()
        deep.fit(X, y)
        total = time.perf_counter() - tic
        first = _layer_floor(n, X.shape[1], width, kind)
        rest = _layer_floor(n, width, width, kind) if L > 1 else first
        floors = [first["total"]] + [rest["total"]] * (L - 1)
        ratios = (deep.layer_times_ / np.array(floors)).tolist()
        results[name] = {
            "n": n,
            "L": L,
            "width": width,
            "feature_map": kind,
            "threads": torch.get_num_threads(),
            "total_s": total,
            "layer_s": deep.layer_times_.tolist(),
            "floor_s": floors,
            "floor_parts_first": first,
            "floor_parts_rest": rest,
            "ratio": ratios,
        }
        print(
            f"\n{name}: total {total:.1f} s; floor parts of a layer after the "
            f"first: " + ", ".join(f"{k} {v:.2f} s" for k, v in rest.items())
        )
        print(
            format_table(
                ["layer", "seconds", "floor s", "ratio"],
                [
                    (i + 1, f"{s:.2f}", f"{f:.2f}", f"{r:.2f}x")
                    for i, (s, f, r) in enumerate(
                        zip(deep.layer_times_, floors, ratios)
                    )
                ],
            )
        )
        targets.check(
            f"{name}: worst layer / its floor", max(ratios), FLOOR_RATIO, unit="x"
        )
    return results


def pipeline_section(quick, targets):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import Pipeline

    from skdnc import DeepRFMTransformer, RFMClassifier

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    L = 2 if quick else 18
    if quick:
        X, y = X[:400], y[:400]
    pipe = Pipeline([("deep", DeepRFMTransformer(L=L)), ("rfm", RFMClassifier())])
    print(
        f"\n== 3. cross_val_score(Pipeline([DeepRFMTransformer(L={L}), "
        "RFMClassifier()]), digits float32) =="
    )
    tic = time.perf_counter()
    scores = cross_val_score(pipe, X, y)
    seconds = time.perf_counter() - tic
    print(f"{seconds:.1f} s, accuracy {scores.mean():.4f} +- {scores.std():.4f}")
    if not quick:
        targets.check(
            "Deep RFM pipeline cross_val_score on digits",
            seconds,
            PIPELINE_SECONDS,
            unit=" s",
        )
    return {"seconds": seconds, "scores": scores.tolist(), "L": L}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[CMP_N, CG_N])
    parser.add_argument("--solvers", nargs="+", default=["cholesky", "cg"])
    parser.add_argument(
        "--agop-samples",
        type=int,
        default=0,
        help="AGOP points of part 1 (0: skdnc's default)",
    )
    parser.add_argument("--budget", type=float, default=14.0, help="GiB")
    parser.add_argument("--timeout", type=float, default=900.0, help="s per round")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    parser.add_argument("--json", help="where to write the figures (JSON)")
    parser.add_argument("--skip-solvers", action="store_true")
    parser.add_argument("--skip-deep", action="store_true")
    parser.add_argument("--skip-pipeline", action="store_true")
    parser.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        n, solver, m, budget = args.worker
        print(json.dumps(one_round(int(n), solver, int(m), float(budget))))
        return 0

    import skdnc

    report = provenance()
    report.update(skdnc=skdnc.__version__, quick=args.quick)
    print(
        f"skdnc {skdnc.__version__}, torch {report['torch']} "
        f"({report['torch_threads']} threads), commit {report['commit'][:10]}, "
        f"load average {report['load_average_start']}"
    )
    targets = Targets()
    tic = time.perf_counter()
    if not args.skip_solvers:
        sizes = [2000, 4000] if args.quick else args.sizes
        report["solvers"] = solver_section(
            sizes, args.solvers, args.agop_samples, args.budget, args.timeout, targets
        )
    if not args.skip_deep:
        configs = (
            [
                ("relu 1024, 500 x 784, L=2", 500, 2, "relu", 1024),
                ("cos 4096, 300 x 784, L=2", 300, 2, "cos", 4096),
            ]
            if args.quick
            else [
                ("relu 1024, 5000 x 784, L=18", 5000, 18, "relu", 1024),
                ("cos 4096, 2000 x 784, L=12", 2000, 12, "cos", 4096),
            ]
        )
        report["deep_rfm"] = deep_rfm_section(configs, targets)
    if not args.skip_pipeline:
        report["pipeline"] = pipeline_section(args.quick, targets)
    report["total_s"] = time.perf_counter() - tic
    print(
        f"\ntotal {report['total_s']:.0f} s; load average at the end {os.getloadavg()}"
    )
    return finish(report, targets, args, "bench_scale")


if __name__ == "__main__":
    sys.exit(main())
