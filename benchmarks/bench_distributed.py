"""Distributed conjugate gradients and AGOP: one process against two Gloo processes.

Usage::

    python benchmarks/bench_distributed.py --check    # n = 20,000; exits 1 on a miss
    python benchmarks/bench_distributed.py --quick    # a smoke run at n = 4,000

Every figure goes to a JSON file (``--json``; by default
``benchmarks/results/bench_distributed.json``, or ``bench_distributed_quick.json``
with ``--quick``) with the commit, the machine and its load average.

The problem is image-like (``_util.image_like``: d = 784, 10 classes, rows scaled
to unit norm, Laplace kernel of bandwidth 1) in float64. It is solved by the
pieces a fit runs, in fresh processes with one torch thread each: one process
alone (``comm=None``), then two processes of a Gloo process group on the loopback
address, each holding its half of the rows of the kernel matrix (the kernel is
in memory at this size, the regime where communication weighs most: a CG
iteration then only streams the kernel rows once). For each it measures:

- the time to build the (local rows of the) kernel matrix and the Nystrom
  preconditioner (rank 0 builds it, then broadcasts it);
- the time per conjugate-gradient iteration (a fixed number of iterations,
  ``tol=0``), the share of it spent communicating (the all-gather of the
  ``n x K`` product) and the share spent waiting for the slower rank (a barrier
  before the all-gather: load imbalance, which other processes on a shared
  machine cause);
- the time of one AGOP at skdnc's default number of points (637 at d = 784)
  and the share in its all-reduce;
- the largest difference of the dual coefficients after the fixed iterations and
  of the AGOP against the one-process result, relative to the largest entry.

Target: communication takes at most 5% of a CG iteration on two processes.
"""

import argparse
import os
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import Targets, finish, image_like, provenance  # noqa: E402

N, N_CLASSES, CG_ITERATIONS, NYSTROM_RANK, REG = 20_000, 10, 10, 500, 1e-3
COMM_SHARE = 0.05


def _measure(rank, size, port, n, n_iter, out_dir):
    """One rank (of ``size``; 1 is the single process): timings and results."""
    import torch
    import torch.distributed as dist

    from skdnc._agop import default_agop_points, kernel_agop, sample_points
    from skdnc._backend import block_rows, normalize_rows
    from skdnc._distributed import world
    from skdnc._kernels import Kernel, kernel_matrix, training_kernel_matrix
    from skdnc._rfm_core import class_targets
    from skdnc._solvers import (
        _column_major,
        conjugate_gradient,
        nystrom_preconditioner,
    )

    torch.set_num_threads(1)
    if size > 1:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=size,
            timeout=timedelta(seconds=600),
        )
    comm = world()
    X_np, y = image_like(n)
    X = normalize_rows(torch.tensor(X_np, dtype=torch.float64))
    Y = torch.tensor(class_targets(y, N_CLASSES))
    kernel = Kernel("laplace", 1.0)
    out = {"rank": rank, "size": size}

    def collective_seconds():
        return 0.0 if comm is None else comm.seconds

    def sync():
        if comm is not None:
            comm.barrier()

    sync()
    tic = time.perf_counter()
    timers = {"wait": 0.0, "gather": 0.0}
    if comm is None:
        K = training_kernel_matrix(X, None, kernel)

        def matvec(V):
            return K @ _column_major(V)

    else:
        # The in-memory branch of skdnc._solvers._sharded_matvec, with a barrier
        # before the all-gather: the time in the barrier is waiting for the slower
        # rank (load imbalance), the time in the all-gather is communication.
        shard = comm.row_shard(n)
        K = kernel_matrix(X[shard], X, None, kernel, self_offset=shard.start)

        def matvec(V):
            local = K @ _column_major(V)
            t0 = time.perf_counter()
            comm.barrier()
            t1 = time.perf_counter()
            full = comm.gather_rows(local, n)
            timers["wait"] += t1 - t0
            timers["gather"] += time.perf_counter() - t1
            return full

    sync()
    out["kernel_rows_s"] = time.perf_counter() - tic

    generator = torch.Generator().manual_seed(0)
    tic = time.perf_counter()
    precondition = nystrom_preconditioner(
        X, None, kernel, REG, rank=NYSTROM_RANK, generator=generator, comm=comm
    )
    sync()
    out["preconditioner_s"] = time.perf_counter() - tic

    sync()
    before = collective_seconds()
    tic = time.perf_counter()
    alpha, iterations, _ = conjugate_gradient(
        matvec, Y, REG, precondition, tol=0.0, max_iter=n_iter
    )
    elapsed = time.perf_counter() - tic
    out["cg_iterations"] = iterations
    out["cg_iteration_s"] = elapsed / iterations
    out["cg_comm_share"] = timers["gather"] / elapsed
    out["cg_wait_share"] = timers["wait"] / elapsed
    out["cg_collectives_share"] = (collective_seconds() - before) / elapsed

    m = default_agop_points(X.shape[1])
    idx = sample_points(n, m, generator)
    sync()
    before = collective_seconds()
    tic = time.perf_counter()
    A = kernel_agop(
        X[idx],
        X,
        alpha,
        None,
        kernel,
        self_index=idx,
        block_size=block_rows(n, 8, 2**31, n_buffers=3),
        comm=comm,
    )
    elapsed = time.perf_counter() - tic
    out["agop_points"] = int(len(idx))
    out["agop_s"] = elapsed
    out["agop_comm_share"] = (collective_seconds() - before) / elapsed
    if comm is not None:
        out["bytes_sent"] = comm.bytes
    np.save(os.path.join(out_dir, f"alpha_{size}_{rank}.npy"), alpha.numpy())
    np.save(os.path.join(out_dir, f"agop_{size}_{rank}.npy"), A.numpy())
    with open(os.path.join(out_dir, f"timings_{size}_{rank}.txt"), "w") as f:
        f.write(repr(out))
    if size > 1:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(size, n, n_iter, out_dir):
    """Spawn ``size`` processes of :func:`_measure`; return rank 0's figures."""
    import torch.multiprocessing as mp

    mp.start_processes(
        _measure,
        args=(size, _free_port(), n, n_iter, out_dir),
        nprocs=size,
        start_method="spawn",
    )
    with open(os.path.join(out_dir, f"timings_{size}_0.txt")) as f:
        return eval(f.read())  # noqa: S307 - our own repr of a dict of numbers


def _relative_difference(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=N)
    parser.add_argument("--iterations", type=int, default=CG_ITERATIONS)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--check", action="store_true", help="exit with status 1 if a target is missed"
    )
    parser.add_argument("--json", help="where to write the figures (JSON)")
    args = parser.parse_args(argv)
    n = 4000 if args.quick else args.n

    import skdnc

    report = provenance()
    report.update(
        skdnc=skdnc.__version__,
        quick=args.quick,
        n=n,
        d=784,
        n_classes=N_CLASSES,
        dtype="float64",
        nystrom_rank=NYSTROM_RANK,
        threads_per_process=1,
    )
    print(f"n = {n}, d = 784, float64, one torch thread per process")
    targets = Targets()
    with tempfile.TemporaryDirectory() as out_dir:
        one = run(1, n, args.iterations, out_dir)
        two = run(2, n, args.iterations, out_dir)
        load = lambda kind, size, rank: np.load(  # noqa: E731
            os.path.join(out_dir, f"{kind}_{size}_{rank}.npy")
        )
        differences = {
            kind: max(
                _relative_difference(load(kind, 2, rank), load(kind, 1, 0))
                for rank in (0, 1)
            )
            for kind in ("alpha", "agop")
        }
        ranks_agree = all(
            np.array_equal(load(kind, 2, 0), load(kind, 2, 1))
            for kind in ("alpha", "agop")
        )
    report["one_process"] = one
    report["two_processes"] = two
    report["max_relative_difference"] = differences
    report["ranks_agree_exactly"] = ranks_agree
    report["cg_speedup"] = one["cg_iteration_s"] / two["cg_iteration_s"]
    report["agop_speedup"] = one["agop_s"] / two["agop_s"]
    for name, figures in (("1 process", one), ("2 processes", two)):
        print(
            f"{name}: kernel rows {figures['kernel_rows_s']:.2f} s, preconditioner "
            f"{figures['preconditioner_s']:.2f} s, CG iteration "
            f"{figures['cg_iteration_s'] * 1e3:.1f} ms "
            f"({100 * figures['cg_comm_share']:.1f}% communicating, "
            f"{100 * figures.get('cg_wait_share', 0.0):.1f}% waiting for the other "
            "rank), AGOP of "
            f"{figures['agop_points']} points {figures['agop_s']:.2f} s "
            f"({100 * figures['agop_comm_share']:.2f}% in collectives)"
        )
    print(
        f"largest relative difference against 1 process: dual coefficients "
        f"{differences['alpha']:.2e}, AGOP {differences['agop']:.2e}; ranks agree "
        f"exactly: {ranks_agree}"
    )
    targets.check(
        "communication's share of a CG iteration on 2 processes",
        two["cg_comm_share"],
        COMM_SHARE,
    )
    targets.check(
        "largest relative difference against 1 process",
        max(differences.values()),
        1e-10,
    )
    return finish(report, targets, args, "bench_distributed")


if __name__ == "__main__":
    sys.exit(main())
