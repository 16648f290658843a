"""Test-session set-up shared by the test suite and the doctests."""

import os

# scikit-learn's array-API common check runs only when this is set before SciPy is
# imported; without it the check is silently skipped.
os.environ.setdefault("SCIPY_ARRAY_API", "1")
