"""Convolutional AGOP and NFA, and collapse at the stages of torchvision networks.

References are written here, independent of skdnc.nn: the patch AGOP from
``torch.func.vmap(jacrev(...))`` of an explicit forward pass whose convolution
takes ``F.unfold`` patches (the convention of the published verification scripts),
and stage features from ``torchvision.models.feature_extraction``.
"""

import copy
import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jacrev, vmap
from torchvision.models import resnet18, vgg11
from torchvision.models.feature_extraction import create_feature_extractor

from skdnc.datasets import load_dataset
from skdnc.metrics import nc1_score, nc2_score
from skdnc.nn import layer_agops, layer_collapse, probe_network, train_network


def _small_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, dilation=1, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 3),
    ).double()


def _unfold_agop(net, index, X):
    """Patch AGOP of conv ``net[index]`` by autograd on explicit unfolded patches."""
    conv = net[index]
    head, tail = net[:index], net[index + 1 :]
    with torch.no_grad():
        h = head(X)
    P = F.unfold(
        h,
        conv.kernel_size,
        dilation=conv.dilation,
        padding=conv.padding,
        stride=conv.stride,
    )
    H_out = h.shape[2] + 2 * conv.padding[0] - conv.dilation[0] * 2 - 1
    H_out = H_out // conv.stride[0] + 1
    W_mat = conv.weight.reshape(conv.out_channels, -1)

    def f(p):  # p: (c_in q r, positions) of one image
        z = (W_mat @ p + conv.bias[:, None]).reshape(1, -1, H_out, H_out)
        return tail(z)[0]

    J = vmap(jacrev(f))(P)  # (n, K, c_in q r, positions)
    rows = J.permute(0, 1, 3, 2).reshape(-1, P.shape[1]).detach()
    return rows.T @ rows / len(X)


def test_conv_patch_agop_equals_unfold_autograd_float64():
    net = _small_cnn()
    net.eval()
    net[1].running_mean.uniform_(-0.5, 0.5)  # a BatchNorm that is not the identity
    X = torch.randn(
        11, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )
    layers = [("0", "2"), ("3", "4")]
    pre = layer_agops(net, X, layers=layers, batch_size=4)
    jac = layer_agops(net, X, layers=layers, method="jacobian", batch_size=5)
    for index, A, B in zip((0, 3), pre, jac):
        ref = _unfold_agop(net, index, X)
        assert A.shape == (net[index].in_channels * 9,) * 2
        assert torch.linalg.norm(A - ref) <= 1e-10 * torch.linalg.norm(ref)
        assert torch.linalg.norm(B - ref) <= 1e-10 * torch.linalg.norm(ref)
    # The NFA of the probe is the correlation with these very matrices.
    probe = probe_network(net, X, np.arange(11) % 3, layers=layers, return_agops=True)
    for index, A in zip((0, 3), probe.agops):
        ref = _unfold_agop(net, index, X)
        np.testing.assert_allclose(A, ref.numpy(), rtol=1e-9, atol=1e-12)


def test_conv_right_stage_is_the_pre_activation_collapse():
    """The 'right' stage of a convolution: the NC1 of S V' applied to every patch."""
    net = _small_cnn(1).eval()
    X = torch.randn(
        30, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    y = np.arange(30) % 3
    probe = probe_network(net, X, y, layers=[("3", "4")], reduction="flatten")
    with torch.no_grad():
        h = net[:3](X)
        conv = net[3]
        P = F.unfold(h, 3, padding=1, stride=2)  # (n, c_in 9, positions)
        _, S, Vh = torch.linalg.svd(conv.weight.reshape(4, -1), full_matrices=False)
        right = torch.einsum("rk,nkp->nrp", Vh * S[:, None], P).flatten(1)
        out = net[:5](X).flatten(1)
    assert probe.nc1[0, 0] == pytest.approx(nc1_score(h.flatten(1), y), rel=1e-10)
    assert probe.nc1[0, 1] == pytest.approx(nc1_score(right, y), rel=1e-10)
    assert probe.nc1[0, 2] == pytest.approx(nc1_score(out, y), rel=1e-10)
    assert probe.nc2[0, 1] == pytest.approx(nc2_score(right, y), rel=1e-9)
    assert probe.layer_kinds == ["conv2d"]


@pytest.fixture(scope="module")
def digit_images():
    X, y = load_dataset(
        "digits", n_samples=500, balanced=True, standardize=True, return_X_y=True
    )
    return X.astype(np.float32).reshape(-1, 1, 8, 8), y


def test_conv_nfa_grows_with_training_on_digits(digit_images):
    """Measured (seed 1): mean conv NFA 0.946 at init -> 0.972 trained; the
    second conv 0.935 -> 0.978, against 0.434 for its CNFM vs the CNFM at init."""
    X, y = digit_images
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 64, 10),
    )
    init = copy.deepcopy(net)
    with pytest.warns(UserWarning, match="bare weight"):
        before = probe_network(net, X, y, layers=["0", "2"])
    history = train_network(
        net,
        X,
        y,
        epochs=20,
        batch_size=64,
        loss="cross_entropy",
        probe=False,
        optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        device="cpu",
        progress=False,
        random_state=1,
    )
    with pytest.warns(UserWarning, match="bare weight"):
        after = probe_network(net, X, y, layers=["0", "2"], init_model=init)
    assert history.accuracy[-1] == 1.0
    assert np.isfinite(before.nfa_correlation).all()
    # The NFA correlation rises with training, by a margin of 0.015 on the mean.
    assert after.nfa_correlation.mean() >= before.nfa_correlation.mean() + 0.015
    assert after.nfa_correlation[1] >= before.nfa_correlation[1] + 0.02
    # The literature's baseline: the trained CNFM is far closer to the AGOP than to
    # the CNFM at initialisation in the second layer.
    assert after.nfa_correlation[1] >= after.nfa_correlation_init[1] + 0.3
    # Collapse at the conv stages goes down with training.
    assert after.nc1[1, 2] < before.nc1[1, 2]


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 3, 32, 32, generator=g), np.arange(64) % 4


def _reference_stages(net, X, y, stages, reduce):
    extractor = create_feature_extractor(net, return_nodes=stages)
    net.eval()
    with torch.no_grad():
        feats = extractor(X)
    out = {}
    for name in stages:
        Z = reduce(feats[name]).double()
        out[name] = (nc1_score(Z, y), nc1_score(Z, y, kind="pinv"), nc2_score(Z, y))
    return out


@pytest.mark.parametrize("reduction", ["flatten", "avgpool"])
def test_resnet18_stage_collapse(images, reduction):
    X, y = images
    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=10)
    stages = ["layer1", "layer2", "layer3", "layer4", "avgpool"]
    probe = layer_collapse(net, X, y, layers=stages, reduction=reduction, batch_size=24)
    reduce = (
        (lambda z: z.flatten(1))
        if reduction == "flatten"
        else (lambda z: z.mean(dim=(2, 3)))
    )
    ref = _reference_stages(net, X, y, stages, reduce)
    assert probe.layer_names == stages and probe.reduction == reduction
    widths = (
        [4096, 2048, 1024, 512, 512]
        if reduction == "flatten"
        else [64, 128, 256, 512, 512]
    )
    assert probe.n_features.tolist() == widths
    for k, name in enumerate(stages):
        nc1, nc1_pinv, nc2 = ref[name]
        assert np.isfinite([nc1, nc1_pinv, nc2]).all()
        assert probe.nc1[k] == pytest.approx(nc1, rel=1e-6)
        assert probe.nc1_pinv[k] == pytest.approx(nc1_pinv, rel=1e-6)
        assert probe.nc2[k] == pytest.approx(nc2, rel=1e-6)


def test_vgg11_stage_collapse_and_conv_probe(images):
    X, y = images
    torch.manual_seed(0)
    net = vgg11(weights=None, num_classes=10)
    stages = ["features.2", "features.5", "features.10", "features.20", "avgpool"]
    probe = layer_collapse(
        net, X, y, layers=stages, reduction="avgpool", batch_size=32, pinv=False
    )
    ref = _reference_stages(net, X, y, stages, lambda z: z.mean(dim=(2, 3)))
    for k, name in enumerate(stages):
        assert probe.nc1[k] == pytest.approx(ref[name][0], rel=1e-6)
        assert probe.nc2[k] == pytest.approx(ref[name][2], rel=1e-6)
    assert probe.nc1_pinv is None
    # A conv stage of VGG probed for AGOP and NFA (by its first convolution).
    conv = probe_network(
        net,
        X[:8],
        y[:8],
        layers=[("features.3", "features.4")],
        reduction="avgpool",
        batch_size=8,
    )
    assert conv.layer_kinds == ["conv2d"] and np.isfinite(conv.nc1).all()
    assert -1 <= conv.nfa_correlation[0] <= 1
