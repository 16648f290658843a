"""The model builders of skdnc.nn: argument checks, thread-safe seeding, and
initial weights against the closed forms of their distributions."""

import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from skdnc.nn import make_mlp, make_model, make_resnet18, make_vgg11


def _weights(model):
    return [t.detach().clone() for t in model.state_dict().values()]


def _same(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _concurrent(build, seeds, rounds):
    """Weights of ``build(seed)`` for every seed, built in concurrent threads."""
    results = []
    for _ in range(rounds):
        out = {}
        start = threading.Barrier(len(seeds))

        def work(seed, out=out, start=start):
            start.wait()
            out[seed] = _weights(build(seed))

        threads = [threading.Thread(target=work, args=(s,)) for s in seeds]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        results.append(out)
    return results


def test_seeded_mlps_built_in_concurrent_threads_match_single_threaded():
    def build(seed):
        return make_mlp(64, 10, random_state=seed)

    alone = {seed: _weights(build(seed)) for seed in (0, 1)}
    assert not _same(alone[0], alone[1])
    for out in _concurrent(build, (0, 1), rounds=20):
        assert _same(out[0], alone[0]) and _same(out[1], alone[1])


def test_seeded_resnets_built_in_concurrent_threads_match_single_threaded():
    def build(seed):
        return make_resnet18(1, 10, width=16, random_state=seed)

    alone = {seed: _weights(build(seed)) for seed in (0, 1)}
    for out in _concurrent(build, (0, 1), rounds=1):
        assert _same(out[0], alone[0]) and _same(out[1], alone[1])


@pytest.mark.parametrize(
    "build",
    [
        lambda seed: make_mlp(16, 3, width=8, random_state=seed),
        lambda seed: make_resnet18(3, 4, width=8, random_state=seed),
        lambda seed: make_vgg11(1, 4, width=8, random_state=seed),
    ],
    ids=["mlp", "resnet18", "vgg11"],
)
def test_a_seeded_build_leaves_the_global_generator_alone(build):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    first = _weights(build(7))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert _same(first, _weights(build(7)))
    assert not _same(first, _weights(build(8)))
    # random_state=None draws from (and advances) the global generator.
    torch.manual_seed(5)
    unseeded = _weights(build(None))
    assert not torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(5)
    assert _same(unseeded, _weights(build(None)))


# -- the initial weights against their closed forms -----------------------------------
def _check_uniform(w, bound):
    """``w`` holds draws of U(-bound, bound): range, mean 0, variance bound^2 / 3,
    and the uniform's kurtosis 9/5."""
    w = w.detach().double().flatten()
    n = w.numel()
    var = bound**2 / 3
    assert float(w.abs().max()) <= bound
    assert float(w.abs().max()) > 0.95 * bound
    assert abs(float(w.mean())) < 5 * math.sqrt(var / n)
    assert float(w.var()) == pytest.approx(var, rel=6 * math.sqrt(0.8 / n))
    assert float((w**4).mean() / w.var() ** 2) == pytest.approx(1.8, abs=0.1)


def _check_normal(w, std):
    """``w`` holds draws of N(0, std^2): mean, variance and the kurtosis 3."""
    w = w.detach().double().flatten()
    n = w.numel()
    assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
    assert float(w.var()) == pytest.approx(std**2, rel=6 * math.sqrt(2 / n))
    assert float((w**4).mean() / w.var() ** 2) == pytest.approx(3.0, abs=0.15)


def test_mlp_init_follows_xavier_and_pytorch_defaults():
    net = make_mlp(64, 10, width=512, init_scale=0.3, random_state=0)
    first = net.head_layers[0][0].weight
    _check_uniform(first, 0.3 * math.sqrt(6 / (64 + 512)))
    for block in net.head_layers[1:]:
        _check_uniform(block[0].weight, 0.3 * math.sqrt(6 / (512 + 512)))
    # The readout: nn.Linear's default, U(+-1/sqrt(fan_in)).
    _check_uniform(net.readout.weight, 1 / math.sqrt(512))


def test_resnet18_init_follows_torchvision():
    net = make_resnet18(3, 10, width=64, depth=2, init_scale=0.5, random_state=0)
    backbone = net.backbone
    # The replaced stem keeps Conv2d's default init: U(+-1/sqrt(3 * 7 * 7)).
    _check_uniform(backbone.conv1.weight, 1 / math.sqrt(3 * 49))
    convs = [
        m
        for m in backbone.modules()
        if isinstance(m, nn.Conv2d) and m is not backbone.conv1
    ]
    assert len(convs) == 19
    for conv in convs:
        out_channels, _, kh, kw = conv.weight.shape
        if conv.weight.numel() >= 30_000:  # enough draws for the moments
            _check_normal(conv.weight, math.sqrt(2 / (out_channels * kh * kw)))
    for bn in (m for m in backbone.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.equal(bn.weight, torch.ones_like(bn.weight))
        assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
        assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert torch.equal(bn.running_var, torch.ones_like(bn.running_var))
        assert int(bn.num_batches_tracked) == 0
    # Head: the first layer PyTorch's default, the next the paper's xavier.
    _check_uniform(net.head_layers[0][0].weight, 1 / math.sqrt(512))
    _check_uniform(net.head_layers[1][0].weight, 0.5 * math.sqrt(6 / (64 + 64)))
    _check_uniform(net.readout.weight, 1 / math.sqrt(64))


def test_vgg11_init_follows_torchvision():
    net = make_vgg11(1, 10, width=32, depth=1, random_state=0)
    convs = [m for m in net.backbone.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 and convs[0].bias is None
    _check_uniform(convs[0].weight, 1 / math.sqrt(1 * 9))
    for conv in convs[1:]:
        out_channels, _, kh, kw = conv.weight.shape
        _check_normal(conv.weight, math.sqrt(2 / (out_channels * kh * kw)))
        assert torch.equal(conv.bias, torch.zeros_like(conv.bias))
    _check_uniform(net.head_layers[0][0].weight, 1 / math.sqrt(8192))


# -- bad arguments -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: make_resnet18(0), "'in_channels' parameter of make_resnet18"),
        (lambda: make_resnet18(3, 0), "'n_classes' parameter of make_resnet18"),
        (lambda: make_resnet18(3, width=0), "'width' parameter of make_resnet18"),
        (lambda: make_resnet18(3, depth=0), "'depth' parameter of make_resnet18"),
        (lambda: make_resnet18(3, init_scale=0), "'init_scale' parameter"),
        (lambda: make_resnet18(2.5), "'in_channels' parameter of make_resnet18"),
        (lambda: make_vgg11(-1), "'in_channels' parameter of make_vgg11"),
        (lambda: make_vgg11(3, width=-4), "'width' parameter of make_vgg11"),
        (lambda: make_vgg11(3, random_state=-1), "'random_state' parameter"),
        (lambda: make_mlp(0), "'in_features' parameter of make_mlp"),
        (lambda: make_mlp(4, n_classes=0), "'n_classes' parameter of make_mlp"),
        (lambda: make_model("lenet", (3, 32, 32)), "'arch' parameter of make_model"),
        (lambda: make_model("mlp", (0,)), "input_shape must be a tuple of positive"),
        (lambda: make_model("mlp", (2.5,)), "input_shape must be a tuple of positive"),
        (lambda: make_model("mlp", ()), "input_shape must be a tuple of positive"),
        (lambda: make_model("resnet18", (64,)), "needs image inputs of shape"),
        (lambda: make_model("vgg11", (3, 4, 4)), "at least 8x8 pixels"),
        (lambda: make_model("resnet18", (0, 8, 8)), "input_shape must be a tuple"),
    ],
)
def test_bad_builder_arguments_are_clear_errors(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value)


def test_small_images_build_and_run():
    for arch, size in (("resnet18", 1), ("vgg11", 8)):
        net = make_model(arch, (1, size, size), 3, width=4, depth=1, random_state=0)
        assert net(torch.zeros(2, 1, size, size)).shape == (2, 3)
    assert np.isfinite(
        make_mlp(3, 2, width=4, random_state=0)(torch.ones(1, 3)).detach().numpy()
    ).all()
