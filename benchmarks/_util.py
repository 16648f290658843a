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
