"""The ``python -m skdnc.nn`` command, run in-process on digits with tiny settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import skdnc
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


# -- every argument's bad values: a usage error before any work or output ------------
BAD_ARGUMENTS = [
    (["--seeds", "-1"], "'-1' is not a seed"),
    (["--seeds", "0", "2.5"], "'2.5' is not a seed"),
    (["--n-samples", "5000"], "more than the 1740 class-balanced points of digits"),
    (["--n-samples", "7"], "at least 20 points are needed"),
    (["--n-samples", "0"], "'0' is not a positive integer"),
    (["--preset", "paper"], "it does not apply to digits"),
    (["--dataset", "mnist", "--n-samples", "70000"], "than the 60000 training"),
    (["--dataset", "svhn", "--n-samples", "19"], "at least 20 points are needed"),
    (["--threads", "100000"], "more than the"),
    (["--threads", "-1"], "'-1' is not a positive integer"),
    (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--arch", "lenet"], "invalid choice: 'lenet'"),
    (["--epochs", "0"], "'0' is not a positive integer"),
    (["--lr", "0"], "'0' is not a positive number"),
    (["--lr", "nan"], "'nan' is not a positive number"),
    (["--momentum=-0.5"], "'-0.5' is not a non-negative number"),
    (["--batch-size", "0"], "'0' is not a positive integer"),
    (["--init-scale", "inf"], "'inf' is not a positive number"),
    (["--width", "0"], "'0' is not a positive integer"),
    (["--depth", "0"], "'0' is not a positive integer"),
    (["--measure-every", "0"], "'0' is not a positive integer"),
    (["--model", "os:system"], "calling system() without arguments failed"),
    (["--model", "../x:f"], "is not of the form package.module:factory"),
    (["--model", "os"], "is not of the form package.module:factory"),
    (["--model", "no_such_module_25:f"], "cannot import module"),
    (["--model", "os:no_such_factory"], "has no attribute 'no_such_factory'"),
    (["--model", "os:sep"], "'sep' is a str, not a function"),
    (["--model", "collections:OrderedDict"], "not a torch.nn.Module"),
    (["--checkpoint", "w.pt"], "--checkpoint needs --model"),
    (["--model", "torch.nn:Identity", "--checkpoint", "none.pt"], "no such file"),
    (["--input", "cube"], "invalid choice: 'cube'"),
    (["--no-such-option"], "unrecognized arguments"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS)
def test_every_bad_argument_is_a_usage_error_before_any_output(
    argv, message, tmp_path, capsys
):
    """Exit status 2 with argparse's message, nothing trained, no folder created."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--output", str(out), "--quiet"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert " samples of shape " not in captured.out
    assert not out.exists()


def test_the_paper_preset_on_a_small_subset_warns_of_too_few_steps(tmp_path, capsys):
    """The paper's MLP on 5,000 MNIST points for 90 epochs: 40 batches an epoch,
    3,600 steps against the paper's 500 x 391 = 195,500."""
    out = ["--output", str(tmp_path / "run")]
    argv = ["--dataset", "mnist", "--n-samples", "5000", "--epochs", "90", *out]
    args = parse(argv)
    assert settings(args)["init_scale"] == 0.2
    err = capsys.readouterr().err
    assert "warning: this run takes 3,600 SGD steps" in err
    assert "2% of the 195,500" in err
    for quiet in (
        ["--dataset", "mnist", *out],  # the paper's own run
        ["--dataset", "mnist", "--n-samples", "5000", "--epochs", "2500", *out],
        ["--n-samples", "200", "--epochs", "2", *out],  # the demo preset
    ):
        parse(quiet)
        assert "warning" not in capsys.readouterr().err, quiet


def test_missing_data_set_files_exit_2_without_output(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(
        ["--dataset", "cifar10", "--data-root", str(tmp_path / "none")]
        + ["--n-samples", "60", "--epochs", "1", "--quiet", "--output", str(out)]
    )
    assert status == 2
    assert "The 'cifar10' data set is not available" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--n-samples", "7"], "at least 20 points are needed"),
        (["--model", "os:system"], "calling system() without arguments failed"),
    ],
)
def test_the_command_process_ends_with_a_usage_error(argv, message, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "skdnc.nn", *argv, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(skdnc.__file__).parents[1])},
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
