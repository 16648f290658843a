"""Test-session set-up shared by the test suite and the doctests."""

import os

# scikit-learn's array-API common check runs only when this is set before SciPy is
# imported; without it the check is silently skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_worker():
    """One BLAS/OpenMP thread per test process: the suite runs on two cores with
    two pytest-xdist workers, and oversubscribed threads slow small torch and
    LAPACK calls by up to an order of magnitude on this machine."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
