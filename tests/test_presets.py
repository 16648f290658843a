"""The presets: what the commands actually pass on equals the paper's Appendix C.

The expected values are typed here from Appendix C of the paper, independently of
the table in ``skdnc._presets``; the commands run with their data loading and
their fitting replaced by spies that record the arguments and stop.
"""

import numpy as np
import pytest

import skdnc.__main__ as deep_rfm_command
import skdnc.nn.__main__ as nn_command
from skdnc._presets import render_rst


class _Stop(Exception):
    pass


def _deep_rfm_params(monkeypatch, tmp_path, argv):
    seen = {}

    def load(args):
        seen["n_samples"] = args.n_samples
        X = np.random.default_rng(0).normal(size=(20, 4))
        return X, np.arange(20) % 2, X

    class Spy:
        def __init__(self, **params):
            seen.update(params)
            raise _Stop

    monkeypatch.setattr(deep_rfm_command, "load", load)
    monkeypatch.setattr(deep_rfm_command, "DeepRFMTransformer", Spy)
    with pytest.raises(_Stop):
        deep_rfm_command.main([*argv, "--output", str(tmp_path), "--quiet"])
    return seen


# Appendix C, Deep RFM: Laplace kernel, but Gaussian for ReLU on MNIST; L = 2.0
# (the bandwidth); ridgeless; ReLU width 1024; random Fourier features of the
# l1-Laplace kernel with sigma = 0.05 and 4,096 features; first 50,000 points.
@pytest.mark.parametrize(
    "dataset, feature_map, kernel, width",
    [
        ("mnist", "relu", "gaussian", 1024),
        ("mnist", "cos", "laplace", 4096),
        ("cifar10", "relu", "laplace", 1024),
        ("cifar10", "cos", "laplace", 4096),
        ("svhn", "relu", "laplace", 1024),
        ("svhn", "cos", "laplace", 4096),
    ],
)
def test_deep_rfm_paper_preset_is_appendix_c(
    monkeypatch, tmp_path, dataset, feature_map, kernel, width
):
    argv = ["--dataset", dataset, "--feature-map", feature_map, "--preset", "paper"]
    seen = _deep_rfm_params(monkeypatch, tmp_path, argv)
    assert seen["kernel"] == kernel and seen["width"] == width
    assert seen["bandwidth"] == 2.0 and seen["reg"] == 0.0
    assert seen["n_samples"] == 50_000 and seen["agop_samples"] == 1.0  # all points
    assert seen["dtype"] == "float64"
    if feature_map == "cos":
        assert seen["gamma"] == 0.05


def test_explicit_options_override_the_preset(monkeypatch, tmp_path):
    argv = [
        "--dataset",
        "mnist",
        "--preset",
        "paper",
        "--kernel",
        "laplace",
        "--reg",
        "0.01",
        "--width",
        "64",
    ]
    seen = _deep_rfm_params(monkeypatch, tmp_path, argv)
    assert (seen["kernel"], seen["reg"], seen["width"]) == ("laplace", 0.01, 64)
    demo = _deep_rfm_params(monkeypatch, tmp_path, [])
    assert (demo["width"], demo["agop_samples"], demo["n_samples"]) == (256, 500, None)
    assert demo["dtype"] == "float32"  # the demo's; the paper's is float64


def _network_settings(monkeypatch, tmp_path, argv):
    seen = {}

    def load(args, *, flatten):
        seen["n_samples"] = args.n_samples
        return np.zeros((20, 4), np.float32), np.arange(20) % 2

    def make_model(arch, input_shape, n_classes, **kwargs):
        seen.update(arch=arch, **kwargs)

    def train_seeds(build, X, y, **kwargs):
        build(0)
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(nn_command, "load", load)
    monkeypatch.setattr(nn_command, "make_model", make_model)
    monkeypatch.setattr(nn_command, "train_seeds", train_seeds)
    with pytest.raises(_Stop):
        nn_command.main([*argv, "--output", str(tmp_path), "--quiet"])
    return seen


# Appendix C, networks: SGD, batch 128, width 512, 5 hidden layers, metrics every
# 10 epochs, 3 seeds, first 50,000 points. VGG: 600 epochs, momentum 0.9, lr 0.01,
# init 0.3 (0.2 for MNIST). ResNet: 300 epochs, no momentum, init 0.2, lr 0.05.
# MLP: 500 epochs, no momentum, init 0.3 (0.2 for MNIST), lr 0.05.
APPENDIX_C = {
    "vgg11": {"epochs": 600, "momentum": 0.9, "lr": 0.01, "init": 0.3, "mnist": 0.2},
    "resnet18": {"epochs": 300, "momentum": 0.0, "lr": 0.05, "init": 0.2},
    "mlp": {"epochs": 500, "momentum": 0.0, "lr": 0.05, "init": 0.3, "mnist": 0.2},
}


@pytest.mark.parametrize("arch", sorted(APPENDIX_C))
@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "svhn"])
def test_network_paper_preset_is_appendix_c(monkeypatch, tmp_path, arch, dataset):
    seen = _network_settings(
        monkeypatch, tmp_path, ["--arch", arch, "--dataset", dataset]
    )  # the paper preset is the default on the image data sets
    c = APPENDIX_C[arch]
    assert seen["arch"] == arch
    assert (seen["epochs"], seen["momentum"], seen["lr"]) == (
        c["epochs"],
        c["momentum"],
        c["lr"],
    )
    init = c.get(dataset, c["init"]) if dataset == "mnist" else c["init"]
    assert seen["init_scale"] == init
    assert (seen["width"], seen["depth"], seen["batch_size"]) == (512, 5, 128)
    assert seen["measure_every"] == 10 and list(seen["seeds"]) == [0, 1, 2]
    assert seen["n_samples"] == 50_000


def test_user_guide_table_is_rendered_from_the_presets():
    text = render_rst()
    assert text.count("list-table") == 2
    row = "   * - paper\n     - mnist\n     - relu\n     - 50,000\n     - gaussian"
    assert row in text
    assert "     - vgg11\n     - 600\n     - 0.01\n     - 0.9" in text
