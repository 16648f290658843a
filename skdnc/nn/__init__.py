"""Train and probe neural networks: per-layer AGOP, the Neural Feature Ansatz, and
NC1 split by each weight's singular value decomposition (torch only).

The models of the paper's Appendix C (:func:`make_mlp`, :func:`make_resnet18`,
:func:`make_vgg11`), SGD training with measurements (:func:`train_network`), and
probes for any :class:`torch.nn.Module` whose MLP layers are named
(:func:`probe_network`). The command ``python -m skdnc.nn`` (``skdnc-nn``) runs the
paper's experiment and writes its figures.
"""

from skdnc.metrics._collapse import STAGES
from skdnc.nn._activations import ACTIVATION_REDUCTIONS, collect_activations
from skdnc.nn._capture import GRADIENTS, REDUCTIONS
from skdnc.nn._collapse_probe import CollapseProbe, layer_collapse
from skdnc.nn._common import InputShapeError
from skdnc.nn._detect import find_layers, weight_matrix
from skdnc.nn._layer_agop import layer_agops, nfa_correlation
from skdnc.nn._models import (
    ARCHITECTURES,
    CausalLM,
    CausalLMOutput,
    HeadedNetwork,
    make_causal_lm,
    make_mlp,
    make_model,
    make_resnet18,
    make_vgg11,
)
from skdnc.nn._network_probe import NetworkProbe, probe_network
from skdnc.nn._steering import steer
from skdnc.nn._token_collapse import TokenCollapseProbe, token_collapse
from skdnc.nn._train import (
    ProbeCallback,
    TrainingHistory,
    aggregate_histories,
    pm1_targets,
    train_network,
    train_seeds,
)

__all__ = [
    "ACTIVATION_REDUCTIONS",
    "ARCHITECTURES",
    "GRADIENTS",
    "REDUCTIONS",
    "STAGES",
    "CausalLM",
    "CausalLMOutput",
    "CollapseProbe",
    "HeadedNetwork",
    "InputShapeError",
    "NetworkProbe",
    "ProbeCallback",
    "TokenCollapseProbe",
    "TrainingHistory",
    "aggregate_histories",
    "collect_activations",
    "find_layers",
    "layer_agops",
    "layer_collapse",
    "make_causal_lm",
    "make_mlp",
    "make_model",
    "make_resnet18",
    "make_vgg11",
    "nfa_correlation",
    "pm1_targets",
    "probe_network",
    "steer",
    "token_collapse",
    "train_network",
    "train_seeds",
    "weight_matrix",
]
