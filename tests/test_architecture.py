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
    ("skdnc._linalg", "skdnc._base", "skdnc._distributed", "skdnc._histories"),
    ("skdnc.metrics",),
    ("skdnc.datasets", "skdnc._kernels"),
    ("skdnc._agop",),
    ("skdnc._solvers",),
    ("skdnc._rfm_core", "skdnc._feature_maps"),
    ("skdnc._theory", "skdnc._rfm", "skdnc._deep_rfm", "skdnc.nn"),
    ("skdnc._nfa", "skdnc._display", "skdnc._directions"),
    ("skdnc._presets", "skdnc._layer_probes"),
    ("skdnc._cli",),
    ("skdnc.__main__", "skdnc.nn.__main__"),
    ("skdnc",),
)
PACKAGES = ("skdnc.metrics", "skdnc.nn")
#: Inside ``skdnc.nn``, rows from the bottom up: one concept per module, each
#: importing only the rows below it.
NN_LAYERS = (
    ("skdnc.nn._common", "skdnc.nn._models"),
    ("skdnc.nn._detect",),
    ("skdnc.nn._capture",),
    ("skdnc.nn._activations", "skdnc.nn._steering"),
    ("skdnc.nn._readout", "skdnc.nn._layer_agop"),
    ("skdnc.nn._network_probe", "skdnc.nn._collapse_probe"),
    ("skdnc.nn._token_collapse",),
    ("skdnc.nn._train",),
    ("skdnc.nn",),
    ("skdnc.nn.__main__",),
)
#: No module of ``skdnc.nn`` holds more than this many lines.
MAX_NN_LINES = 600
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


def _nn_row(module):
    """Row of a module of ``skdnc.nn`` in NN_LAYERS (its own module for a name
    imported from one)."""
    for row, names in enumerate(NN_LAYERS):
        if module in names:
            return row
    raise AssertionError(f"{module} is not placed in NN_LAYERS")


def test_every_nn_module_is_placed_and_small():
    nn_root = ROOT / "nn"
    for path in sorted(nn_root.glob("*.py")):
        module = _module_name(path)
        _nn_row(module)
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_NN_LINES, f"{module} has {lines} lines"


def test_nothing_below_nn_imports_it():
    """The Displays and the rest of the package below ``skdnc.nn`` never import
    it (the seeds' aggregation lives in skdnc._histories)."""
    nn_row = _entry("skdnc.nn")[0]
    for path in MODULES:
        module = _module_name(path)
        if module.startswith("skdnc.nn") or module in ("skdnc._nfa", "skdnc"):
            continue
        if _entry(module)[0] > _entry("skdnc._display")[0]:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for target, line, _ in _skdnc_imports(tree):
            assert not target.startswith("skdnc.nn"), f"{module}:{line} {target}"
    assert _entry("skdnc._histories")[0] < nn_row


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
            if entry == "skdnc.nn":
                assert _nn_row(target) < _nn_row(module), (
                    f"{module}:{line} imports {target}, which is not below it in "
                    "NN_LAYERS."
                )
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
