"""skdnc: AGOP feature learning (RFM, Deep RFM) and deep neural collapse measurement.

The estimators follow scikit-learn's API and compute with torch, on a GPU when there
is one. The subpackages :mod:`skdnc.metrics` (NC1, NC2 and collapse scorers),
:mod:`skdnc.nn` (training and probing networks) and :mod:`skdnc.datasets` (the
paper's data sets) complete the public surface.
"""

from skdnc import datasets, metrics
from skdnc._deep_rfm import DeepRFMTransformer
from skdnc._directions import AGOPDirections
from skdnc._display import (
    CollapseDisplay,
    GramDisplay,
    LayerProbeDisplay,
    SVDSplitDisplay,
    TrainingHistoryDisplay,
)
from skdnc._distributed import DistributedFitError
from skdnc._layer_probes import LayerProbe, make_layer_stack, probe_layers
from skdnc._nfa import NFAProbe
from skdnc._rfm import RFMClassifier, RFMRegressor
from skdnc.metrics import NeuralCollapseScorer, make_collapse_scorer

__version__ = "0.1.0.dev0"

__all__ = [
    "AGOPDirections",
    "CollapseDisplay",
    "DeepRFMTransformer",
    "DistributedFitError",
    "GramDisplay",
    "LayerProbe",
    "LayerProbeDisplay",
    "NFAProbe",
    "NeuralCollapseScorer",
    "RFMClassifier",
    "RFMRegressor",
    "SVDSplitDisplay",
    "TrainingHistoryDisplay",
    "datasets",
    "make_collapse_scorer",
    "make_layer_stack",
    "metrics",
    "probe_layers",
    "__version__",
]
