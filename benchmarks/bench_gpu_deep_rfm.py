"""Deep RFM at the paper's scale on one GPU: L = 18, n = 50,000, d = 784.

Prints the time of every layer, the total, and the peak GPU memory; sized to finish in
under five minutes on one large GPU (float32, TF32 matmuls optional). The data are
synthetic (ten Gaussian classes on a low-dimensional subspace of R^784, in [0, 1] like
MNIST pixels), so the script needs no download.

Usage::

    python benchmarks/bench_gpu_deep_rfm.py                 # n = 50,000, L = 18
    python benchmarks/bench_gpu_deep_rfm.py --n 5000 --L 3  # a smoke run
"""

import argparse
import time

import numpy as np
import torch

from skdnc import DeepRFMTransformer


def make_data(n, d=784, n_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(d, 30)))[0]
    means = rng.normal(size=(n_classes, 30))
    y = rng.integers(n_classes, size=n)
    X = (means[y] + rng.normal(size=(n, 30))) @ basis.T + 0.3 * rng.normal(size=(n, d))
    X = (X - X.min()) / (X.max() - X.min())
    return X.astype(np.float32), y


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--L", type=int, default=18)
    parser.add_argument("--feature-map", default="relu", choices=["relu", "cos"])
    parser.add_argument("--agop-samples", type=int, default=None)
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matmuls")
    parser.add_argument("--no-metrics", action="store_true")
    parser.add_argument("--device", default="cuda", help="'cpu' for a smoke run")
    args = parser.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("No CUDA device: this benchmark is for a GPU machine.")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        print(f"device: {torch.cuda.get_device_name()}, TF32 matmuls: {args.tf32}")
    X, y = make_data(args.n)
    deep = DeepRFMTransformer(
        L=args.L,
        feature_map=args.feature_map,
        width=4096 if args.feature_map == "cos" else 1024,  # the paper's widths
        agop_samples=args.agop_samples,
        dtype="float32",
        allow_tf32=args.tf32,
        device=args.device,
        record_metrics=not args.no_metrics,
        random_state=0,
    )
    tic = time.perf_counter()
    deep.fit(X, y)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - tic
    print(f"{'layer':>5} {'seconds':>8} {'NC1(X_l)':>10} {'NC1(M^1/2 X)':>13}")
    history = deep.collapse_history_ or {}
    for layer, seconds in enumerate(deep.layer_times_):
        nc1 = history.get("nc1_input", [np.nan] * args.L)[layer]
        nc1_m = history.get("nc1_projection", [np.nan] * args.L)[layer]
        print(f"{layer + 1:>5} {seconds:8.2f} {nc1:10.3g} {nc1_m:13.3g}")
    print(f"total {total:.1f} s for n={args.n}, d={X.shape[1]}, L={args.L}")
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"peak GPU memory {peak:.2f} GiB")


if __name__ == "__main__":
    main()
