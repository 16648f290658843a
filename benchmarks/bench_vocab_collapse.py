"""Collapse at vocabulary scale: K = 50,000 classes, d = 768, 2,000,000 tokens.

A fresh worker process (:func:`_util.run_worker`) records its resident set after
its imports (the baseline), then streams synthetic hidden states batch by batch
from a seeded generator into :class:`skdnc.metrics.VocabularyAccumulator`: labels
drawn from a Zipf law over the vocabulary (token frequencies; rank ``r`` has
probability proportional to ``1 / r``), features ``x = c_y + noise`` with class
centres ``c`` (``K x d`` float32) and unit Gaussian noise, in batches of 16,384
tokens (float32, as a language model's hidden states). Classes with fewer than
``--min-count`` tokens are dropped. It then computes CDNV (both exponents), GNC2,
NC2 equinorm and UNC3 (against a classifier ``W = c + noise``) and reports the peak
resident-set growth above the baseline (:class:`_util.PeakMemory`) and the times.

Targets (``--check``): peak growth at most 4 GiB; every metric finite. The time
is reported, not targeted: on the shared 2-core machine the figures are taken
under the load of other jobs (the load average is in the JSON), so the process's
CPU seconds are reported beside the wall times. ``--quick``: K =
5,000, d = 128, 200,000 tokens.
"""

import argparse
import json
import os
import sys
import time

from _util import GIB, PeakMemory, Targets, finish, format_table, provenance, run_worker

TARGET_GIB = 4.0


def one_run(K, d, n_tokens, batch, min_count, tile_size, seed=0):
    """Stream, measure, report (in this process)."""
    import math

    import torch

    from skdnc.metrics import VocabularyAccumulator

    with PeakMemory() as pm:
        gen = torch.Generator().manual_seed(seed)
        centres = torch.randn(K, d, generator=gen)
        p = 1.0 / torch.arange(1, K + 1, dtype=torch.float64)
        p /= p.sum()
        acc = VocabularyAccumulator(K, min_count=min_count, tile_size=tile_size)
        tic, cpu = time.perf_counter(), time.process_time()
        for start in range(0, n_tokens, batch):
            m = min(batch, n_tokens - start)
            y = torch.multinomial(p, m, replacement=True, generator=gen)
            X = centres[y] + torch.randn(m, d, generator=gen)
            acc.partial_fit(X, y)
            del X, y
        stream_s = time.perf_counter() - tic
        stream_cpu_s = time.process_time() - cpu
        W = centres + 0.5 * torch.randn(K, d, generator=gen)
        times, cpu_times, values = {}, {}, {}
        for name, fn in (
            ("cdnv", lambda: acc.cdnv(1)),
            ("cdnv_quartic", lambda: acc.cdnv(2)),
            ("gnc2", acc.gnc2),
            ("nc2_equinorm", acc.nc2_equinorm),
            ("unc3", lambda: acc.unc3(W)),
        ):
            tic, cpu = time.perf_counter(), time.process_time()
            values[name] = fn()
            times[name] = time.perf_counter() - tic
            cpu_times[name] = time.process_time() - cpu
    kept = int(len(acc.kept_classes_))
    return {
        "K": K,
        "d": d,
        "n_tokens": n_tokens,
        "batch": batch,
        "min_count": min_count,
        "tile_size": tile_size,
        "classes_kept": kept,
        "classes_seen": int((acc.counts_ > 0).sum()),
        "stream_s": stream_s,
        "metric_s": times,
        "total_s": stream_s + sum(times.values()),
        # CPU seconds of the process (all its threads): on a loaded machine the
        # wall times include the waits for a core
        "stream_cpu_s": stream_cpu_s,
        "metric_cpu_s": cpu_times,
        "threads": torch.get_num_threads(),
        "values": values,
        "all_finite": all(math.isfinite(v) for v in values.values()),
        "peak_growth_gib": pm.peak_bytes / GIB,
        "peak_exact": pm.exact,
        "means_gib": K * d * 8 / GIB,
        "k_by_k_float32_gib": K * K * 4 / GIB,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--K", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=768)
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--batch", type=int, default=16_384)
    parser.add_argument("--min-count", type=int, default=2)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--json", help="where to write the figures (JSON)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(one_run(**json.loads(args.worker))))
        return 0
    K, d, n = (5_000, 128, 200_000) if args.quick else (args.K, args.d, args.tokens)
    spec = {
        "K": K,
        "d": d,
        "n_tokens": n,
        "batch": args.batch,
        "min_count": args.min_count,
        "tile_size": args.tile_size,
    }
    report = provenance()
    report.update(quick=args.quick, target_gib=TARGET_GIB)
    targets = Targets()
    run = run_worker(os.path.abspath(__file__), spec, args.timeout)
    report["run"] = {**spec, **run}
    if "error" in run:
        targets.fail(f"K={K}, d={d}, {n} tokens", run["error"])
    else:
        rows = [["stream", f"{run['stream_s']:.1f}", f"{run['stream_cpu_s']:.1f}", ""]]
        for k, v in run["values"].items():
            wall, cpu = run["metric_s"][k], run["metric_cpu_s"][k]
            rows.append([k, f"{wall:.1f}", f"{cpu:.1f}", f"{v:.6g}"])
        print(format_table(["step", "wall s", "cpu s", "value"], rows))
        print(
            f"{run['classes_kept']} of {K} classes kept (>= {args.min_count} tokens); "
            f"total {run['total_s']:.0f} s; a K x K float32 matrix would be "
            f"{run['k_by_k_float32_gib']:.1f} GiB"
        )
        targets.check(
            f"K={K}, d={d}, {n} tokens: peak RSS growth",
            run["peak_growth_gib"],
            TARGET_GIB,
            unit=" GiB",
        )
        targets.check(
            "every metric finite", float(run["all_finite"]), 1.0, at_most=False
        )
    return finish(report, targets, args, "bench_vocab_collapse")


if __name__ == "__main__":
    sys.exit(main())
