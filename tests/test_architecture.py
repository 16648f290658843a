"""The import structure of skdnc: every module imports only modules below it.

The layer order is written once, here, as data. A module belongs to the entry with
the longest matching prefix; it may import modules of lower entries and, inside a
package (``skdnc.metrics``, ``skdnc.nn``), its own package's modules. Entries on
the same row are siblings and may not import each other: no estimator module
imports another estimator's, and ``skdnc.nn`` imports no estimator.
"""

import ast
from pathlib import Path

import pytest

import skdnc

#: Rows from the bottom up.
LAYERS = (
    ("skdnc._backend",),
    ("skdnc._linalg", "skdnc._base", "skdnc._distributed"),
    ("skdnc.metrics",),
    ("skdnc.datasets", "skdnc._kernels"),
    ("skdnc._agop",),
    ("skdnc._solvers",),
    ("skdnc._rfm_core", "skdnc._feature_maps"),
    ("skdnc._theory", "skdnc._rfm", "skdnc._deep_rfm", "skdnc.nn"),
    ("skdnc._nfa", "skdnc._display"),
    ("skdnc._presets",),
    ("skdnc._cli",),
    ("skdnc.__main__", "skdnc.nn.__main__"),
    ("skdnc",),
)
PACKAGES = ("skdnc.metrics", "skdnc.nn")
ROOT = Path(skdnc.__file__).resolve().parent


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _entry(module):
    """(row, name) of the layer entry a module belongs to."""
    best = None
    for row, names in enumerate(LAYERS):
        for name in names:
            if module == name or module.startswith(name + "."):
                if best is None or len(name) > len(best[1]):
                    best = (row, name)
    if best is None:
        raise AssertionError(f"{module} is not placed in LAYERS")
    return best


def _skdnc_imports(tree):
    """(module imported, line, at module level?) for every import of skdnc."""
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            targets = [node.module]
            if node.module in ("skdnc", "skdnc.nn", "skdnc.metrics"):
                base = ROOT.parent / node.module.replace(".", "/")
                targets += [
                    f"{node.module}.{alias.name}"
                    for alias in node.names
                    if (base / f"{alias.name}.py").exists()
                    or (base / alias.name).is_dir()
                ]
        else:
            continue
        for target in targets:
            if target == "skdnc" or target.startswith("skdnc."):
                found.append((target, node.lineno, id(node) in top))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_is_placed():
    for path in MODULES:
        _entry(_module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    module = _module_name(path)
    row, entry = _entry(module)
    tree = ast.parse(path.read_text(), filename=str(path))
    for target, line, top_level in _skdnc_imports(tree):
        assert top_level, (
            f"{module}:{line} imports {target} inside a function; deferred imports "
            "are for optional dependencies only."
        )
        if target == "skdnc" and module == "skdnc":
            continue
        target_row, target_entry = _entry(target)
        if target_entry == entry and entry in PACKAGES + ("skdnc",):
            continue  # inside one package
        assert target_row < row, (
            f"{module}:{line} imports {target} ({target_entry}, row {target_row}), "
            f"which is not below {entry} (row {row}) in LAYERS."
        )


def test_the_check_catches_an_upward_import(tmp_path):
    """The same checker, on a module of the kernels' row importing an estimator."""
    tree = ast.parse("from skdnc._rfm import RFMClassifier\n")
    ((target, _, top_level),) = _skdnc_imports(tree)
    assert top_level and _entry(target)[0] > _entry("skdnc._kernels")[0]
    tree = ast.parse("def f():\n    from skdnc.metrics import nc1_score\n")
    assert _skdnc_imports(tree)[0][2] is False
