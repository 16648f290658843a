"""Helpers shared by the benchmark scripts: timing, peak memory, worker processes.

Peak memory is measured in a fresh process per measurement, because a process's
resident-set high-water mark only grows: the worker records its resident set after
its imports and set-up (the baseline), resets the kernel's high-water mark when it
can (``/proc/self/clear_refs``), runs the measured code and reports the high-water
mark minus the baseline. Where the reset is not possible it falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which can only over-estimate.
"""

import gc
import json
import os
import resource
import subprocess
import sys
import time

GIB = 2**30


def best_of(fn, repeat=3):
    """Run ``fn()`` ``repeat`` times; return (smallest wall time in s, last result)."""
    best, result = float("inf"), None
    for _ in range(max(1, int(repeat))):
        tic = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - tic)
    return best, result


def _status_kib(field):
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``, ``VmSize``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_bytes():
    """Resident set size now, in bytes."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Context manager: peak resident memory above the level at entry, in bytes.

    >>> with PeakMemory() as pm:  # doctest: +SKIP
    ...     work()
    >>> pm.peak_bytes  # doctest: +SKIP
    """

    def __enter__(self):
        gc.collect()
        self.exact = False
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self.exact = _status_kib("VmHWM") is not None
        except OSError:
            pass
        self.baseline = current_rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.exact:
            high = _status_kib("VmHWM") * 1024
        else:
            high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.peak_bytes = max(0, high - self.baseline)
        return False


def cap_address_space(extra_bytes):
    """Forbid this process to grow its address space by more than ``extra_bytes``.

    An allocation beyond the cap then fails with an error (torch raises a
    ``RuntimeError``) instead of pushing the machine into swap or the OOM killer.
    """
    size_kib = _status_kib("VmSize")
    if size_kib is None:
        return False
    limit = size_kib * 1024 + int(extra_bytes)
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    return True


def run_worker(script, spec, timeout):
    """Run ``python script --worker JSON`` in a fresh process; return its JSON reply.

    The worker prints one JSON object as its last line of output. A crash, a
    timeout or garbled output comes back as ``{"error": reason}``.
    """
    cmd = [sys.executable, str(script), "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=os.environ.copy()
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if lines:
        try:
            return json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"error": f"worker exited with code {proc.returncode}: {tail[0][:200]}"}


def is_out_of_memory(exc):
    """Whether an exception is an allocation failure (e.g. under an address cap)."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or any(
        s in text for s in ("can't allocate", "cannot allocate", "out of memory")
    )


def format_table(headers, rows):
    """Plain-text table with right-aligned columns (the first left-aligned)."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        first = r[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(r[1:], widths[1:]))
        return "  ".join([first, *rest])

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


# -- data shared by the benchmarks ---------------------------------------------------
def image_like(n=5000, seed=0):
    """An image-like problem: sklearn's digits upsampled to 28 x 28, shifted, noisy.

    Each sample is a random digit (with replacement) upsampled by 3 (bilinear,
    8 x 8 -> 24 x 24), placed at a random offset of 0-4 pixels in each direction
    of a 28 x 28 canvas, plus Gaussian noise of standard deviation 0.1, clipped
    to [0, 1]: 784 float32 pixels, 10 classes, like a small MNIST.

    Returns
    -------
    X : ndarray of shape (n, 784), float32
    y : ndarray of shape (n,), int
    """
    import numpy as np
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    X8, y8 = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    pick = rng.integers(len(y8), size=n)
    up = np.clip(
        np.stack([zoom(im, 3, order=1) for im in X8.reshape(-1, 8, 8) / 16]), 0, 1
    )
    shifts = rng.integers(0, 5, size=(n, 2))
    out = np.zeros((n, 28, 28))
    for k, (i, (a, b)) in enumerate(zip(pick, shifts)):
        out[k, a : a + 24, b : b + 24] = up[i]
    out += 0.1 * rng.normal(size=out.shape)
    return np.clip(out, 0, 1).reshape(n, 784).astype(np.float32), y8[pick]


# -- results: JSON with provenance, targets that fail the run --------------------------
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def provenance():
    """Commit, machine and load average of this run (the load at its start)."""
    import platform

    import torch

    def git(*args):
        try:
            out = subprocess.run(
                ["git", *args],
                capture_output=True,
                text=True,
                cwd=os.path.dirname(os.path.abspath(__file__)),
            )
            return out.stdout.strip()
        except OSError:
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        # Uncommitted changes to tracked files of the repository (the package
        # included), other than the results being written.
        "dirty": bool(
            git(
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "..",
                ":(exclude)results",
            )
        ),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "load_average_start": list(os.getloadavg()),
    }


class Targets:
    """Targets of a benchmark: each is recorded as met or missed, with its figure."""

    def __init__(self):
        self.items = []

    def check(self, name, value, target, *, at_most=True, unit=""):
        """Record ``value <= target`` (or ``>=`` with ``at_most=False``)."""
        ok = value == value and (value <= target if at_most else value >= target)
        self.items.append(
            {
                "name": name,
                "value": value,
                "target": target,
                "at_most": at_most,
                "met": bool(ok),
            }
        )
        sign = "<=" if at_most else ">="
        print(
            f"[{'MET' if ok else 'MISSED'}] {name}: {value:.4g}{unit} "
            f"(target {sign} {target:g}{unit})"
        )
        return ok

    def fail(self, name, reason):
        """Record a target that could not be measured (counts as missed)."""
        self.items.append({"name": name, "value": None, "met": False, "reason": reason})
        print(f"[MISSED] {name}: {reason}")

    @property
    def all_met(self):
        return all(t["met"] for t in self.items)


def write_report(path, report, targets):
    """Write the JSON report (with the load average at the end) and say where."""
    report["load_average_end"] = list(os.getloadavg())
    report["targets"] = targets.items
    report["all_targets_met"] = targets.all_met
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, default=float)
    print(f"\nfigures written to {path}")


def finish(report, targets, args, stem):
    """Write the report where ``--json`` says (by default ``results/{stem}.json``,
    or ``{stem}_quick.json`` with ``--quick``) and return the exit status: 1 when
    ``--check`` is given and a target was missed."""
    name = f"{stem}_quick.json" if args.quick else f"{stem}.json"
    write_report(args.json or os.path.join(RESULTS, name), report, targets)
    return 1 if args.check and not targets.all_met else 0
