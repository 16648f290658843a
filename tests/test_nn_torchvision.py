"""The probes on real torchvision architectures (built with ``weights=None``) and on
``nn.TransformerEncoder``: default detection runs, every weight layer left out is
named in the warning, and the collapse numbers equal an independent computation
(``create_feature_extractor`` and :mod:`skdnc.metrics` on the same reduction).

Small inputs (32 x 32 images, 12 samples, one batch) keep the file fast; the
widest models (EfficientNet-B0, DenseNet-121, Swin-T), whose probes eigendecompose
matrices of width up to 3072, are marked slow and still run in CI.
"""

import warnings

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn
from torchvision.models.feature_extraction import (
    create_feature_extractor,
    get_graph_node_names,
)

from skdnc.metrics import nc1_score, nc2_score
from skdnc.nn import find_layers, layer_collapse, probe_network

N, K = 12, 3


def _images(seed=0):
    """Class-structured images: a random pattern per class plus noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    base = torch.randn(K, 3, 32, 32, generator=g)
    return base[y] + 0.5 * torch.randn(N, 3, 32, 32, generator=g), y


def _tokens(seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % K
    base = torch.randn(K, 5, 16, generator=g)
    return base[y] + 0.5 * torch.randn(N, 5, 16, generator=g), y


def _small_vgg11():
    """vgg11's features as torchvision builds them; the 25088 x 4096 classifier
    (meant for 224 x 224 inputs) shrunk to 512 -> 64 -> 64 -> K after global
    pooling, so its probes stay small."""
    model = tvm.vgg11(weights=None, num_classes=K)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(
        nn.Linear(512, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, 64),
        nn.ReLU(True),
        nn.Dropout(),
        nn.Linear(64, K),
    )
    return model


def _vit():
    model = tvm.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        mlp_dim=64,
        num_classes=K,
    )
    # torchvision initialises the head to zero (no gradient reaches the body)
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


def _encoder(activation):
    layer = nn.TransformerEncoderLayer(
        16, 2, 32, dropout=0.0, activation=activation, batch_first=True
    )
    return nn.Sequential(
        nn.TransformerEncoder(layer, 2, enable_nested_tensor=False),
        nn.Flatten(),
        nn.Linear(16 * 5, K),
    )


FAST = {
    "resnet18": (lambda: tvm.resnet18(weights=None, num_classes=K), "avgpool"),
    "vgg11": (_small_vgg11, "avgpool"),
    "vit": (_vit, "cls"),
    "mobilenet_v3_small": (
        lambda: tvm.mobilenet_v3_small(weights=None, num_classes=K),
        "avgpool",
    ),
}
SLOW = {
    "efficientnet_b0": (
        lambda: tvm.efficientnet_b0(weights=None, num_classes=K),
        "avgpool",
    ),
    "densenet121": (lambda: tvm.densenet121(weights=None, num_classes=K), "avgpool"),
    "swin_t": (lambda: tvm.swin_t(weights=None, num_classes=K), "avgpool"),
}
ENCODERS = {"encoder_relu": nn.ReLU(), "encoder_gelu": nn.GELU()}


@pytest.fixture(scope="module")
def built():
    """Every model built once per module, seeded, in eval mode."""
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            if name in ENCODERS:
                cache[name] = _encoder(ENCODERS[name]).eval()
            else:
                cache[name] = {**FAST, **SLOW}[name][0]().eval()
        return cache[name]

    return get


def _data(name):
    return _tokens() if name in ENCODERS else _images()


def _detect(model, X):
    """find_layers on the data, and the names the detection warning lists."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = find_layers(model, X=X)
    messages = [str(w.message) for w in caught]
    return found, " ".join(messages)


def _weight_modules(model):
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
    ]


def _reference(model, X, names, reduction, linear):
    """Each named output through create_feature_extractor (a separate FX graph),
    reduced by hand. torchvision's FX graph keeps a ViT's or Swin's MLP as one
    node: its activation is then applied by hand to the MLP's input (the node
    before it, a LayerNorm)."""
    graph = get_graph_node_names(model)[1]
    nodes = {n: n for n in names}
    for name in names:
        parent = name.rpartition(".")[0]
        if name in graph:
            continue
        if ".mlp." in name:  # the node that runs before the MLP: its input
            nodes[name] = graph[graph.index(name.split(".mlp.")[0] + ".mlp") - 1]
        elif parent in graph:  # a leaf Conv2dNormActivation: its last child's output
            assert list(model.get_submodule(parent))[-1] is model.get_submodule(name)
            nodes[name] = parent
    extractor = create_feature_extractor(
        model, return_nodes=sorted(set(nodes.values()))
    )
    with torch.no_grad():
        outputs = extractor(X)
        for name in names:
            if nodes[name] != name and ".mlp." not in name:
                outputs[name] = outputs[nodes[name]]
            elif nodes[name] != name:
                mlp = model.get_submodule(name.split(".mlp.")[0] + ".mlp")
                outputs[name] = mlp[1](mlp[0](outputs[nodes[name]]))
    features = []
    for name, is_linear in zip(names, linear):
        Z = outputs[name].double()
        if Z.ndim > 2 and reduction == "cls":
            Z = Z[:, 0]
        elif Z.ndim == 4 and reduction == "avgpool":
            Z = Z.mean(dim=(1, 2)) if is_linear else Z.mean(dim=(2, 3))
        features.append(Z.reshape(len(Z), -1).numpy())
    return features


def _check_architecture(model, name, reduction):
    X, y = _data(name)
    found, warned = _detect(model, X)
    assert found, name
    probed = {layer.weight_name for layer in found}
    readout = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    for weight in _weight_modules(model):
        assert weight in probed or weight == readout or repr(weight) in warned, (
            f"{name}: {weight} neither probed nor named in the warning"
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Probing .* layers")
        # EfficientNet's squeeze-excitation gates (sigmoids) are constant over
        # the samples at initialisation: NC1 is undefined there, with its warning
        warnings.filterwarnings("ignore", message="NC[12] is undefined")
        collapse = layer_collapse(model, X, y, reduction=reduction, batch_size=N)
        probe = probe_network(model, X, y, reduction=reduction, batch_size=N)
    assert collapse.layer_names == probe.layer_names == [l.name for l in found]
    gates = np.array([isinstance(l.output, nn.Sigmoid) for l in found])
    assert np.isfinite(collapse.nc1[~gates]).all()
    assert np.isfinite(probe.nc1[~gates]).all()
    assert np.isfinite(probe.nfa_correlation).all()
    # the output stage of probe_network is the detected activation's output
    # (float32 models: the attention fast path runs without gradients only)
    np.testing.assert_allclose(probe.nc1[:, 2], collapse.nc1, rtol=1e-5, equal_nan=True)
    return found, collapse


@pytest.mark.parametrize("name", sorted(FAST))
def test_torchvision_models_probe_and_match_feature_extraction(built, name):
    model = built(name)
    reduction = FAST[name][1]
    found, collapse = _check_architecture(model, name, reduction)
    outputs = [n for n, m in model.named_modules() if any(m is l.output for l in found)]
    # create_feature_extractor names the first call of a shared module by its name
    names = [next(n for n, m in model.named_modules() if m is l.output) for l in found]
    assert set(names) <= set(outputs)
    X, y = _data(name)
    linear = [l.kind == "linear" for l in found]
    for Z, nc1, nc2 in zip(
        _reference(model, X, names, reduction, linear), collapse.nc1, collapse.nc2
    ):
        assert nc1 == pytest.approx(nc1_score(Z, y.numpy()), rel=1e-6)
        assert nc2 == pytest.approx(nc2_score(Z, y.numpy()), rel=1e-6, abs=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW))
def test_wide_torchvision_models_probe(built, name):
    model = built(name)
    found, collapse = _check_architecture(model, name, SLOW[name][1])
    X, y = _data(name)
    # one layer against create_feature_extractor: the last detected one
    last = found[-1]
    node = next(n for n, m in model.named_modules() if m is last.output)
    (Z,) = _reference(model, X, [node], "avgpool", [last.kind == "linear"])
    assert collapse.nc1[-1] == pytest.approx(nc1_score(Z, y.numpy()), rel=1e-6)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_transformer_encoder_pairs_linear1_with_its_activation(built, name):
    model = built(name)
    found, _ = _check_architecture(model, name, "mean")
    assert [l.name for l in found] == ["0.layers.0.linear1", "0.layers.1.linear1"]
    assert [l.output for l in found] == [
        model[0].layers[k].activation for k in range(2)
    ]
    # the activation's output by hand (post-norm layer, no dropout)
    X, y = _data(name)
    with pytest.warns(UserWarning, match=r"not probed.*out_proj.*did not run"):
        collapse = layer_collapse(model, X, y, layers=None, reduction="mean")
    with torch.no_grad():
        h = X
        layer = model[0].layers[0]
        h = layer.norm1(h + layer.self_attn(h, h, h, need_weights=False)[0])
        Z = layer.activation(layer.linear1(h)).mean(dim=1).double().numpy()
    assert collapse.nc1[0] == pytest.approx(nc1_score(Z, y.numpy()), rel=1e-6)


def test_transformer_blocks_named_are_probed_past_attention(built):
    """A named TransformerEncoderLayer or ViT block ran: its W_l is the MLP's
    first Linear, as MultiheadAttention.out_proj never runs as a module."""
    model = built("encoder_gelu")
    X, y = _data("encoder_gelu")
    with pytest.warns(UserWarning, match=r"out_proj.*F\.multi_head_attention"):
        probe = probe_network(model, X, y, layers=["0.layers.0"], reduction="mean")
    assert probe.layer_names == ["0.layers.0"] and np.isfinite(probe.nc1).all()
    vit = built("vit")
    Xv, yv = _data("vit")
    block = "encoder.layers.encoder_layer_0"
    with pytest.warns(UserWarning, match="out_proj"):
        found = find_layers(vit, [block], X=Xv)
    assert found[0].linear is vit.encoder.layers[0].mlp[0]
    with pytest.warns(UserWarning, match="out_proj"):
        probe = probe_network(vit, Xv, yv, layers=[block], reduction="cls")
    assert np.isfinite(probe.nc1).all()
    with pytest.raises(ValueError, match="multi_head_attention_forward"):
        find_layers(vit, [f"{block}.self_attention.out_proj"], X=Xv)
