"""The ``python -m skdnc.nn`` command, run in-process on digits with tiny settings."""

import json

import numpy as np
import pytest

from skdnc.nn.__main__ import DIGITS_DEFAULTS, PAPER_DEFAULTS, main, parse, settings

PNG = b"\x89PNG\r\n\x1a\n"


def test_command_writes_table_figures_and_json(tmp_path, capsys):
    status = main(
        [
            "--dataset",
            "digits",
            "--n-samples",
            "100",
            "--epochs",
            "3",
            "--seeds",
            "0",
            "1",
            "--measure-every",
            "2",
            "--width",
            "16",
            "--depth",
            "3",
            "--lr",
            "0.1",
            "--device",
            "cpu",
            "--quiet",
            "--output",
            str(tmp_path),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    for name in ("head_layers.0", "head_layers.2", "NC1 SV^T", "NFA sqrt-AGOP"):
        assert name in printed
    for png in ("figure2_nc1_svd_mlp_digits.png", "figure10_training_mlp_digits.png"):
        assert (tmp_path / png).read_bytes()[:8] == PNG
    assert "head_layers.1" in (tmp_path / "nn_table_mlp_digits.txt").read_text()
    results = json.loads((tmp_path / "nn_results_mlp_digits.json").read_text())
    assert results["config"]["epochs"] == 3 and results["config"]["seeds"] == [0, 1]
    assert len(results["histories"]) == 2
    summary = results["summary"]
    assert summary["epochs"] == [0, 2, 3] and summary["n_seeds"] == 2
    assert np.asarray(summary["nc1_mean"]).shape == (3, 3, 3)
    assert np.asarray(summary["nfa_correlation_std"]).shape == (3, 3)
    losses = [h["loss"] for h in results["histories"]]
    np.testing.assert_allclose(summary["loss_mean"], np.mean(losses, axis=0))
    assert len(results["final"]["right_share"]) == 2


def test_command_conv_backbone_on_digit_images(tmp_path):
    main(
        [
            "--arch",
            "resnet18",
            "--n-samples",
            "40",
            "--epochs",
            "1",
            "--seeds",
            "0",
            "--width",
            "8",
            "--depth",
            "2",
            "--device",
            "cpu",
            "--quiet",
            "--output",
            str(tmp_path),
        ]
    )
    assert (tmp_path / "figure11_training_resnet18_digits.png").read_bytes()[:8] == PNG
    results = json.loads((tmp_path / "nn_results_resnet18_digits.json").read_text())
    assert results["config"]["input_shape"] == [1, 8, 8]


def test_defaults_and_bad_arguments(tmp_path, capsys):
    out = ["--output", str(tmp_path)]
    assert settings(parse(out)) == DIGITS_DEFAULTS
    paper = settings(parse(["--dataset", "cifar10", *out]))
    assert paper == PAPER_DEFAULTS and paper["lr"] == 0.05
    assert settings(parse(["--dataset", "mnist", *out]))["init_scale"] == 0.2
    assert (
        settings(parse(["--dataset", "mnist", "--init-scale", "0.4", *out]))[
            "init_scale"
        ]
        == 0.4
    )
    with pytest.raises(SystemExit):
        main(["--epochs", "0", *out])
    assert "--epochs: '0' is not a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--arch", "lenet", *out])
    assert "invalid choice: 'lenet'" in capsys.readouterr().err


def test_diverging_training_exits_non_zero(tmp_path, capsys):
    status = main(
        [
            "--lr",
            "1e6",
            "--epochs",
            "3",
            "--n-samples",
            "60",
            "--seeds",
            "0",
            "--width",
            "8",
            "--depth",
            "2",
            "--measure-every",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--output",
            str(tmp_path),
        ]
    )
    assert status == 1
    err = capsys.readouterr().err
    assert "training loss is not finite at epoch" in err and "last finite" in err
    assert not list(tmp_path.glob("nn_results_*"))  # nothing half-written


def test_command_on_a_generated_mnist_folder(generated_mnist, tmp_path):
    status = main(
        [
            "--dataset",
            "mnist",
            "--data-root",
            str(generated_mnist),
            "--preset",
            "demo",
            "--n-samples",
            "40",
            "--epochs",
            "2",
            "--seeds",
            "0",
            "--width",
            "8",
            "--depth",
            "2",
            "--measure-every",
            "1",
            "--device",
            "cpu",
            "--quiet",
            "--output",
            str(tmp_path),
        ]
    )
    assert status == 0
    results = json.loads((tmp_path / "nn_results_mlp_mnist.json").read_text())
    assert results["config"]["input_shape"] == [784]
