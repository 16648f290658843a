"""Sphinx configuration of the skdnc documentation.

The build runs offline: intersphinx is on only when ``DOC_ONLINE=1``, and inherited
scikit-learn members (whose docstrings hold references that resolve only through
scikit-learn's intersphinx inventory) are left out of the API pages.

Build::

    sphinx-build -W --keep-going -b html doc doc/_build/html
"""

import os
import re
import sys
import warnings
from datetime import date

# Build from the working tree even when skdnc is not installed.
sys.path.insert(0, os.path.abspath(".."))

import skdnc
from skdnc._presets import render_rst

# The commands' presets, rendered from the one table in the code.
os.makedirs(os.path.join(os.path.dirname(__file__), "generated"), exist_ok=True)
with open(
    os.path.join(os.path.dirname(__file__), "generated", "presets.inc"), "w"
) as _file:
    _file.write(render_rst())

# -- Project -------------------------------------------------------------------------
project = "skdnc"
author = "the skdnc developers"
copyright = f"{date.today().year}, {author}"
release = skdnc.__version__
version = ".".join(release.split(".")[:2])

# -- General -------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
templates_path = ["_templates"]
exclude_patterns = [
    "_build",
    "Thumbs.db",
    ".DS_Store",
    "sg_execution_times.rst",
    "auto_examples/*.ipynb",
]
source_suffix = {".rst": "restructuredtext"}
root_doc = "index"
default_role = "literal"
language = "en"

# -- autodoc / autosummary / numpydoc ------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True
numpydoc_xref_param_type = False

# -- intersphinx: only when asked for, the build host has no network ------------------
if os.environ.get("DOC_ONLINE") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "scipy": ("https://docs.scipy.org/doc/scipy", None),
        "sklearn": ("https://scikit-learn.org/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
        "matplotlib": ("https://matplotlib.org/stable", None),
    }
else:
    intersphinx_mapping = {}

# -- HTML ----------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skdnc {release}"
html_static_path = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc", "sourcelink"],
}
html_show_sourcelink = True

# -- sphinx-gallery ------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": ["../examples"],
    "gallery_dirs": ["auto_examples"],
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skdnc",),
    "backreferences_dir": os.path.join("generated", "backreferences"),
    "abort_on_example_error": True,
    "remove_config_comments": True,
    "plot_gallery": "True",
    "download_all_examples": False,
    "matplotlib_animations": False,
    "min_reported_time": 1,
}

# Examples run in a non-interactive backend.
os.environ.setdefault("MPLBACKEND", "agg")

# The gallery runs in this process. Its examples are small (hundreds of points), and
# on a shared 2-core CI machine the default thread pools made them 10-20 times
# slower than one thread (oversubscription: the matrices are too small to gain from
# a second thread, and the threads wait on each other), both torch's and the
# OpenBLAS pool behind SciPy's LAPACK (the Cholesky solves). The examples
# themselves leave the thread settings alone; the build sets them once here, and
# SKDNC_DOC_NUM_THREADS overrides the choice (e.g. on a large workstation).
import torch
from threadpoolctl import threadpool_limits

_DOC_THREADS = int(os.environ.get("SKDNC_DOC_NUM_THREADS", "1"))
torch.set_num_threads(_DOC_THREADS)
threadpool_limits(limits=_DOC_THREADS)
warnings.filterwarnings(
    "ignore",
    category=UserWarning,
    message="Matplotlib is currently using agg, which is a non-GUI backend",
)


def _skip_sklearn_members(app, what, name, obj, skip, options):
    """Leave out members defined in scikit-learn (set_output, score, ...).

    Their docstrings refer to targets of scikit-learn's own documentation, which
    resolve only with intersphinx (and online).
    """
    module = getattr(obj, "__module__", None) or ""
    if module.startswith("sklearn."):
        return True
    return skip


# scikit-learn's docstring convention writes the shape of ``feature_names_in_`` as
# ``(`n_features_in_`,)``; written without the backticks, the trailing underscore
# makes reST read ``n_features_in_`` as a link to an undefined target.
_BARE_FITTED_NAME = re.compile(r"(?<![`\w])(n_features_in_|n_features_out_)(?![`\w])")


def _quote_fitted_names(app, what, name, obj, options, lines):
    """Quote bare fitted-attribute names in shapes (``(n_features_in_,)``)."""
    for i, line in enumerate(lines):
        if line.lstrip().startswith(("n_features_in_ :", "n_features_out_ :")):
            continue  # the attribute's own heading is rendered by numpydoc
        lines[i] = _BARE_FITTED_NAME.sub(r"`\1`", line)


def setup(app):
    app.connect("autodoc-skip-member", _skip_sklearn_members)
    # Runs before numpydoc's handler (priority 500), on the raw docstring.
    app.connect("autodoc-process-docstring", _quote_fitted_names, priority=400)
