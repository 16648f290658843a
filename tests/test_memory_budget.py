"""memory_budget bounds the blocks it plans, up to the documented allowance.

In a fresh process (a resident-set high-water mark only grows), prediction and
the AGOP of a fitted RFM on 50,000 points would need a 50,000 x 1,000 kernel block
(381 MiB) if they ignored the budget; with ``memory_budget=0.01`` GiB the peak
growth of each call must stay within the budget plus the allowance the
documentation gives for what the budget does not count (0.2 GiB: copies of the
data, code and workspaces paged in on first use, the allocator's retained memory).
"""

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import skdnc

SCRIPT = r"""
import json, warnings
import numpy as np, torch
torch.set_num_threads(1)
from skdnc import RFMRegressor

def kib(field):
    with open("/proc/self/status") as f:
        return next(int(s.split()[1]) for s in f if s.startswith(field + ":"))

def growth(call):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the high-water mark restarts from the resident set
    before = kib("VmRSS")
    call()
    return (kib("VmHWM") - before) * 1024

rng = np.random.default_rng(0)
X, X_test = rng.normal(size=(1000, 5)), rng.normal(size=(50000, 5))
y = X[:, 0] + np.sin(X[:, 1])
model = RFMRegressor(
    memory_budget=BUDGET, max_iter=1, reg=0.1, bandwidth=5.0, device="cpu",
    random_state=0,
).fit(X, y)
model.predict(X_test[:100]), model.agop(X_test[:100])  # page the code in
print(json.dumps({
    "predict": growth(lambda: model.predict(X_test)),
    "agop": growth(lambda: model.agop(X_test)),
}))
"""


def _run(budget_gib):
    root = os.path.dirname(os.path.dirname(os.path.abspath(skdnc.__file__)))
    env = {**os.environ, "PYTHONPATH": root}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT.replace("BUDGET", repr(budget_gib))],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK),
    reason="needs Linux's /proc/self/clear_refs to reset the high-water mark",
)
def test_prediction_and_agop_blocks_stay_within_the_budget():
    budget, allowance = 0.01 * 2**30, 0.2 * 2**30
    unguarded = 50000 * 1000 * 8  # one kernel block of every test point
    assert unguarded > 1.5 * (budget + allowance)  # so the test can fail
    growth = _run(0.01)
    for call, peak in growth.items():
        assert peak <= budget + allowance, (call, peak / 2**20)


MEMINFO = """MemTotal:       24000000 kB
MemFree:         1000000 kB
MemAvailable:   {kib} kB
Cached:         15000000 kB
"""


@settings(max_examples=20, deadline=None, derandomize=True)
@given(st.integers(0, 2**40))
def test_meminfo_available_reads_the_kernel_figure(tmp_path_factory, kib):
    from skdnc._backend import _meminfo_available

    path = tmp_path_factory.mktemp("meminfo") / "meminfo"
    path.write_text(MEMINFO.format(kib=kib))
    assert _meminfo_available(str(path)) == kib * 1024


def test_meminfo_available_is_none_without_the_figure(tmp_path):
    from skdnc._backend import _meminfo_available

    no_line = tmp_path / "meminfo"
    no_line.write_text("MemTotal: 1 kB\nMemFree: 1 kB\n")
    assert _meminfo_available(str(no_line)) is None
    # A path under a regular file cannot be opened, even by root.
    assert _meminfo_available(str(no_line / "meminfo")) is None


@pytest.mark.skipif(
    not os.path.exists("/proc/meminfo"), reason="needs Linux's /proc/meminfo"
)
def test_default_cpu_budget_is_half_the_available_memory():
    """The default CPU budget counts the reclaimable page cache as available
    (``MemAvailable``, read here independently), not the free pages alone."""
    import torch

    from skdnc._backend import memory_budget_bytes

    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    available = int(fields["MemAvailable"].split()[0]) * 1024
    budget = memory_budget_bytes(None, torch.device("cpu"))
    assert budget == pytest.approx(0.5 * available, rel=0.05)
    assert budget > 0
