"""skdnc.nn on networks it did not define: residual gradients, layer detection that
never hides a layer, and clear errors for the friction points of issue 11.

References are autograd Jacobians of explicitly written forward passes.
"""

from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.models import resnet18

from skdnc import NFAProbe
from skdnc.metrics import cdnv_score, nc1_score
from skdnc.nn import (
    InputShapeError,
    find_layers,
    layer_agops,
    layer_collapse,
    probe_network,
)


def _randn(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=g)


# -- residual blocks: through-layer and total gradients ---------------------------
class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, h):
        return h + torch.relu(self.fc(h))


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Linear(4, 6)
        self.block = _Block(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.block(torch.relu(self.stem(x))))


def _mean_jtj(fn, points):
    acc = 0
    for p in points:
        J = torch.autograd.functional.jacobian(fn, p)
        acc = acc + J.T @ J
    return acc / len(points)


def test_residual_block_total_and_through_layer_gradients():
    net = _Residual().double()
    X = _randn(20, 4, seed=1)
    with torch.no_grad():
        H = torch.relu(net.stem(X))
    # Total gradient: autograd of the whole forward from the block input h.
    total_ref = _mean_jtj(lambda h: net.head(net.block(h[None]))[0], H)
    # Through the layer: the Linear's input as its own variable, the skip fixed.
    layer_ref = torch.stack(
        [
            _mean_jtj(
                lambda u, h=h: net.head(h + torch.relu(net.block.fc(u)))[None][0],
                h[None],
            )
            for h in H
        ]
    ).mean(0)
    for method in ("preactivation", "jacobian"):
        (total,) = layer_agops(net, X, layers="block", gradient="total", method=method)
        (layer,) = layer_agops(net, X, layers="block", gradient="layer", method=method)
        assert torch.linalg.norm(total - total_ref) <= 1e-10 * torch.linalg.norm(
            total_ref
        )
        assert torch.linalg.norm(layer - layer_ref) <= 1e-10 * torch.linalg.norm(
            layer_ref
        )
    # The two are different quantities here (the skip path carries most of it).
    assert torch.linalg.norm(total - layer) > 0.3 * torch.linalg.norm(total)
    probe = probe_network(
        net, X, np.arange(20) % 3, layers="block", gradient="total", return_agops=True
    )
    np.testing.assert_allclose(probe.agops[0], total_ref.numpy(), rtol=1e-9)
    assert probe.gradient == "total" and np.isfinite(probe.nfa_correlation).all()


def test_total_gradient_is_the_layer_gradient_for_a_plain_mlp_layer():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).double()
    X = _randn(15, 5, seed=2)
    (total,) = layer_agops(net, X, gradient="total")
    (layer,) = layer_agops(net, X, gradient="layer")
    assert torch.linalg.norm(total - layer) <= 1e-10 * torch.linalg.norm(layer)
    with pytest.raises(ValueError, match="gradient"):
        layer_agops(net, X, gradient="full")


# -- detection ---------------------------------------------------------------------
def test_norm_and_dropout_between_linear_and_activation(recwarn):
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(4, 6),
        nn.LayerNorm(6),
        nn.GELU(),
        nn.Linear(6, 6),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 5),
        nn.Dropout(0.3),
        nn.ReLU(),
        nn.Linear(5, 2),
    ).double()
    found = find_layers(net)
    assert [(l.name, type(l.output).__name__) for l in found] == [
        ("0", "GELU"),
        ("3", "ReLU"),
        ("6", "ReLU"),
    ]
    assert not recwarn.list  # the readout alone is left out, silently
    X = _randn(24, 4, seed=3)
    pre = layer_agops(net, X)
    jac = layer_agops(net, X, method="jacobian")
    for A, B in zip(pre, jac):
        assert torch.linalg.norm(A - B) <= 1e-10 * torch.linalg.norm(B)


class _FunctionalMLP(nn.Module):
    """Three blocks; two apply their activation as a function in forward."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.block1 = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.fc2 = nn.Linear(6, 6)
        self.fc3 = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = self.block1(x)
        h = F.relu(self.fc2(h))
        return self.out(F.relu(self.fc3(h)))


def test_unprobed_layers_are_named_in_a_warning():
    net = _FunctionalMLP().double()
    with pytest.warns(UserWarning, match=r"\['fc2', 'fc3'\]"):
        found = find_layers(net)
    assert [l.name for l in found] == ["block1.0"]
    # Naming them probes them; the output stage is then the pre-activation.
    X, y = _randn(30, 4, seed=4), np.arange(30) % 3
    with pytest.warns(UserWarning, match="bare weight"):
        probe = probe_network(net, X, y, layers=["block1", "fc2", "fc3"])
    assert probe.layer_names == ["block1", "fc2", "fc3"]
    np.testing.assert_allclose(probe.nc1[1:, 1], probe.nc1[1:, 2], rtol=1e-10)
    # Only functional activations: an error that lists the layers to name.
    only = nn.Module()
    only.fc = nn.Linear(3, 3)
    with pytest.raises(ValueError, match=r"No MLP layers.*'fc'"):
        find_layers(only)


def test_head_layers_attribute_only_for_skdnc_models():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    net.head_layers = [net[2]]  # a user attribute that happens to have this name
    assert [l.name for l in find_layers(net)] == ["0"]


def test_linear_readout_is_flagged():
    net = _Residual().double()
    X, y = _randn(12, 4, seed=5), np.arange(12) % 3
    with (
        pytest.warns(UserWarning, match="readout.*1 by construction"),
        pytest.warns(UserWarning, match="bare weight"),
    ):
        probe = probe_network(net, X, y, layers=["head"])
    assert probe.nfa_correlation_agop[0] == pytest.approx(1.0, abs=1e-12)


def test_conv_only_model_and_resnet_detection():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 3, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).double()
    X, y = _randn(18, 1, 7, 7, seed=6), np.arange(18) % 3
    probe = probe_network(net, X, y, reduction="avgpool")
    assert probe.layer_names == ["0", "3"] and probe.layer_kinds == ["conv2d"] * 2
    assert np.isfinite(probe.nc1).all() and np.isfinite(probe.nfa_correlation).all()
    resnet = resnet18(weights=None, num_classes=10)
    with pytest.warns(UserWarning, match=r"not probed.*'layer1\.0\.conv2'"):
        found = find_layers(resnet)
    assert found[0].name == "conv1" and found[1].name == "layer1.0.conv1"
    # A stage named by a single string: its first convolution holds W.
    Xr = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    stage = probe_network(
        resnet, Xr, np.arange(4) % 2, layers="layer4", reduction="avgpool"
    )
    assert stage.layer_names == ["layer4"] and np.isfinite(stage.nc1).all()


# -- errors ------------------------------------------------------------------------
class _TupleModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        h = self.body(x)
        return self.fc(h), h


def test_tuple_and_one_dimensional_outputs():
    X, y = _randn(16, 4, seed=7), np.arange(16) % 2
    net = _TupleModel().double()
    with pytest.raises(ValueError, match="model_output"):
        probe_network(net, X, y)
    probe = probe_network(net, X, y, model_output=0)
    assert probe.layer_names == ["body.0"]
    flat = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1), nn.Flatten(0))
    with pytest.raises(ValueError, match=r"\(n, 1\)"):
        probe_network(flat.double(), X, y)


class _Attention(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h, _ = self.attn(x, x, x)
        return self.fc(h.mean(1))


def test_tuple_module_outputs_need_a_selector():
    net = _Attention().double()
    X, y = _randn(20, 5, 8, seed=8), np.arange(20) % 2
    with pytest.raises(ValueError, match="output_fn"):
        layer_collapse(net, X, y, layers="attn")
    probe = layer_collapse(
        net, X, y, layers="attn", output_fn=0, reduction=lambda z: z.mean(1)
    )
    with torch.no_grad():
        ref = net.attn(X, X, X)[0].mean(1)
    assert probe.nc1[0] == pytest.approx(nc1_score(ref, y), rel=1e-10)
    assert probe.reduction == "callable"


def test_single_string_names_and_dataloader_inputs():
    torch.manual_seed(0)
    net = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Linear(4, 6), nn.ReLU()),
            classifier=nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2)),
        )
    ).double()
    X, y = _randn(21, 4, seed=9), np.arange(21) % 2
    probe = probe_network(net, X, y, layers="classifier")
    assert probe.layer_names == ["classifier"]
    loader = DataLoader(TensorDataset(X, torch.as_tensor(y)), batch_size=8)
    streamed = probe_network(net, loader, layers="classifier")
    np.testing.assert_allclose(streamed.nc1, probe.nc1, rtol=1e-10)
    with pytest.raises(ValueError, match="y=None"):
        probe_network(net, loader, y, layers="classifier")
    with pytest.raises(ValueError, match="y is required"):
        probe_network(net, X, layers="classifier")
    with pytest.raises(ValueError, match="pair"):
        layer_collapse(net, [X[:5], X[5:]], layers="features")


def test_shape_errors_name_the_fix():
    torch.manual_seed(0)
    conv = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * 16, 8),
        nn.ReLU(),
        nn.Linear(8, 2),
    ).double()
    X, y = np.random.default_rng(0).normal(size=(10, 16)), np.arange(10) % 2
    # The shape error comes first: detection runs the model on the first batch.
    with pytest.raises(ValueError, match=r"input_shape=\(c, h, w\)") as info:
        NFAProbe(conv).fit(X, y)
    assert isinstance(info.value, InputShapeError)
    fmap = np.random.default_rng(0).normal(size=(10, 2, 3, 3))
    for metric in (nc1_score, cdnv_score):
        with pytest.raises(ValueError, match="avgpool"):
            metric(fmap, y)
    grouped = nn.Sequential(nn.Conv2d(2, 2, 3, groups=2), nn.ReLU())
    with pytest.raises(ValueError, match="grouped"):
        find_layers(grouped, ["0"])
    with pytest.raises(ValueError, match="reduction"):
        layer_collapse(conv, X.reshape(10, 1, 4, 4), y, layers="1", reduction="max")
    with pytest.raises(ValueError, match="gradient='total'"):
        layer_agops(conv, X.reshape(10, 1, 4, 4), layers="0", gradient="total")
    spare = _Residual().double()
    spare.unused = nn.ReLU()
    with pytest.raises(ValueError, match="did not run"):
        layer_collapse(spare, X[:, :4], y, layers="unused")


class _TokenMLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.mlp = nn.Sequential(nn.Linear(4, 6), nn.GELU())
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.mlp(x).mean(1))


def test_linear_on_token_sequences():
    """Tokens play the part of patch positions: the AGOP sums over them."""
    net = _TokenMLP().double()
    X, y = _randn(10, 5, 4, seed=10), np.arange(10) % 2
    ref = 0
    for x in X:
        J = torch.autograd.functional.jacobian(lambda t: net(t[None])[0], x)
        rows = J.reshape(-1, 5, 4).reshape(-1, 4)  # (outputs x tokens, d)
        ref = ref + rows.T @ rows
    ref = ref / len(X)
    for gradient in ("layer", "total"):
        (A,) = layer_agops(net, X, layers="mlp", gradient=gradient)
        assert torch.linalg.norm(A - ref) <= 1e-10 * torch.linalg.norm(ref)
    probe = probe_network(net, X, y, layers="mlp", reduction=lambda z: z.mean(1))
    with torch.no_grad():
        pooled = net.mlp(X).mean(1)
    assert probe.nc1[0, 2] == pytest.approx(nc1_score(pooled, y), rel=1e-10)
