"""The main job, ``python -m skdnc``: table, figures and JSON on tiny settings."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import skdnc
import skdnc.__main__
from skdnc.__main__ import build_parser, log_linear_fit, main


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_main_writes_table_figures_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(
        [
            "--L",
            "3",
            "--n-samples",
            "300",
            "--width",
            "32",
            "--agop-samples",
            "100",
            "--cv-folds",
            "2",
            "--gram-layers",
            "1",
            "3",
            "--output",
            str(out),
            "--quiet",
            "--threads",
            "1",
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "NC1 X" in printed and "NC2 Φ" in printed
    assert "per-layer factor" in printed
    assert "deep_rfm+rfm: accuracy" in printed and "rfm: accuracy" in printed

    for name in ("figure1_gram_relu.png", "figure3_collapse_relu.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000
    table = (out / "deep_rfm_table.txt").read_text().splitlines()
    assert len(table) == 2 + 3

    results = json.loads((out / "deep_rfm_results.json").read_text())
    history = results["history"]
    assert history["layer"] == [1, 2, 3]
    for stage in ("input", "projection", "output"):
        for metric in ("nc1", "nc2", "nc2_mse", "gram_label_correlation"):
            values = history[f"{metric}_{stage}"]
            assert len(values) == 3 and np.all(np.isfinite(values))
    assert results["nc1_input_first"] == history["nc1_input"][0]
    assert results["nc1_input_last"] < results["nc1_input_first"]
    assert results["config"]["n_samples"] == 300
    assert results["figure1_layers"] == [1, 3]
    cv = results["cross_validation"]
    assert set(cv) == {"deep_rfm+rfm", "rfm"}
    for res in cv.values():
        assert len(res["scores"]) == 2 and 0.5 < res["mean"] <= 1.0
    # The pipeline's depth is chosen on each training fold (--cv-L auto).
    depths = cv["deep_rfm+rfm"]["n_layers_per_fold"]
    assert len(depths) == 2 and all(0 <= d <= 18 for d in depths)
    assert "layers per fold" in printed


def test_main_cos_features_without_cv(tmp_path):
    out = tmp_path / "cos"
    main(
        [
            "--L",
            "2",
            "--n-samples",
            "150",
            "--feature-map",
            "cos",
            "--width",
            "64",
            "--gamma",
            "0.1",
            "--no-cv",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert (out / "figure4_collapse_cos.png").exists()
    results = json.loads((out / "deep_rfm_results.json").read_text())
    assert results["cross_validation"] is None
    assert results["config"]["feature_map"] == "cos"


def test_parser_defaults_and_errors(tmp_path):
    args = build_parser().parse_args([])
    assert (args.dataset, args.L, args.feature_map, args.output) == (
        "digits",
        18,
        "relu",
        "skdnc_output",
    )
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--feature-map", "tanh"])
    with pytest.raises(SystemExit):
        main(["--L", "0", "--output", str(tmp_path)])


def test_log_linear_fit():
    factor, r2 = log_linear_fit(3.0 * 0.5 ** np.arange(6))
    assert factor == pytest.approx(0.5) and r2 == pytest.approx(1.0)
    # No logarithm of 0: NaN, not the R^2 = 1.0 of a degenerate fit.
    assert np.isnan(log_linear_fit([1.0, 0.0, 0.0])).all()
    assert np.isnan(log_linear_fit([0.5])).all()  # one layer: no line, no warning


def _no_constants(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_output_under_a_regular_file_fails_before_any_work(tmp_path, capsys):
    """Root ignores mode bits, so the unwritable folder is a path under a file."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit):
        main(["--output", str(blocker / "run"), "--L", "1", "--no-cv"])
    err = capsys.readouterr()
    assert "is not a writable folder" in err.err
    assert "Deep RFM on" not in err.out  # nothing was loaded or fitted


def test_parser_rejects_bad_values_with_messages(tmp_path, capsys):
    out = ["--output", str(tmp_path)]
    for argv, message in [
        (["--gram-layers", "5", "--L", "3"], "--gram-layers must be between 1"),
        (["--cv-folds", "1"], "'1' is less than 2"),
        (["--bandwidth", "-2"], "'-2' is not a positive number"),
        (["--reg", "nan"], "'nan' is not a non-negative number"),
        (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda'"),
        (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ]:
        with pytest.raises(SystemExit):
            main(argv + out)
        assert message in capsys.readouterr().err, argv


def test_outputs_are_strict_json_and_replace_symlinks(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    (out / "deep_rfm_results.json").symlink_to(target)
    main(
        [
            "--L",
            "2",
            "--n-samples",
            "120",
            "--width",
            "16",
            "--no-cv",
            "--output",
            str(out),
            "--quiet",
        ]
    )
    assert target.read_text() == "keep"  # not written through the link
    written = out / "deep_rfm_results.json"
    assert not written.is_symlink()
    results = json.loads(written.read_text(), parse_constant=_no_constants)
    assert results["history"]["layer"] == [1, 2]
    assert not list(out.glob(".*"))  # no temporary file left behind


def test_to_json_turns_non_finite_numbers_into_null():
    from skdnc._cli import to_json

    text = to_json({"a": float("nan"), "b": np.array([1.0, np.inf]), "c": 2})
    assert json.loads(text, parse_constant=_no_constants) == {
        "a": None,
        "b": [1.0, None],
        "c": 2,
    }


def test_a_run_with_non_finite_results_exits_non_zero(tmp_path, capsys, monkeypatch):
    """A per-layer NC1 factor that is not finite (the log-linear fit of NC1 values
    of 0, here stubbed) makes the command exit with 1; the outputs are still
    written."""
    monkeypatch.setattr(
        skdnc.__main__, "log_linear_fit", lambda values: (np.nan, np.nan)
    )
    out = tmp_path / "tiny"
    status = main(
        ["--n-samples", "20", "--L", "2", "--no-cv", "--quiet", "--output", str(out)]
    )
    assert status == 1
    assert "results are not finite (per-layer NC1 factor)" in capsys.readouterr().err
    results = json.loads(
        (out / "deep_rfm_results.json").read_text(), parse_constant=_no_constants
    )
    assert results["nc1_per_layer_factor"] is None


def test_main_on_a_generated_mnist_folder(generated_mnist, tmp_path):
    out = tmp_path / "mnist_run"
    status = main(
        [
            "--dataset",
            "mnist",
            "--data-root",
            str(generated_mnist),
            "--n-samples",
            "60",
            "--L",
            "2",
            "--width",
            "32",
            "--no-cv",
            "--quiet",
            "--output",
            str(out),
        ]
    )
    assert status == 0
    results = json.loads((out / "deep_rfm_results.json").read_text())
    assert results["config"]["n_samples"] == 60
    assert results["config"]["n_features"] == 784
    assert results["history"]["layer"] == [1, 2]


# -- every argument's bad values: a usage error before any work or output ------------
BAD_ARGUMENTS = [
    (["--seed", "-1"], "'-1' is not a seed"),
    (["--seed", "4294967296"], "is not a seed"),
    (["--seed", "x"], "'x' is not a seed"),
    (["--n-samples", "5000"], "more than the 1797 training points of digits"),
    (["--n-samples", "0"], "'0' is not a positive integer"),
    (["--n-samples", "19", "--no-cv"], "at least 20 points are needed"),
    (["--n-samples", "40"], "5 of each of its 10 classes for --cv-folds 5"),
    (["--preset", "paper"], "--preset paper holds the settings"),
    (["--preset", "paper", "--n-samples", "100"], "it does not apply to digits"),
    (["--preset", "fast"], "invalid choice: 'fast'"),
    (["--threads", "100000"], "more than the"),
    (["--threads", "0"], "'0' is not a positive integer"),
    (["--device", "tpu"], "device must be 'auto', 'cpu', 'cuda'"),
    (["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    (["--L", "0"], "'0' is not a positive integer"),
    (["--L", "1.5"], "'1.5' is not a positive integer"),
    (["--feature-map", "tanh"], "invalid choice: 'tanh'"),
    (["--kernel", "rbf"], "invalid choice: 'rbf'"),
    (["--width", "-3"], "'-3' is not a positive integer"),
    (["--gamma", "0"], "'0' is not a positive number"),
    (["--bandwidth", "inf"], "'inf' is not a positive number"),
    (["--bandwidth", "-2"], "'-2' is not a positive number"),
    (["--reg", "nan"], "'nan' is not a non-negative number"),
    (["--reg=-1e-3"], "'-1e-3' is not a non-negative number"),
    (["--agop-samples", "0"], "'0' is not a positive integer"),
    (["--dtype", "float16"], "invalid choice: 'float16'"),
    (["--gram-layers", "5", "--L", "3"], "--gram-layers must be between 1"),
    (["--gram-layers", "0"], "'0' is not a positive integer"),
    (["--cv-folds", "1"], "'1' is less than 2"),
    (["--cv-folds", "many"], "'many' is not a positive integer"),
    (["--cv-L", "-1"], "'-1' is neither auto nor a number of layers"),
    (["--cv-L", "deep"], "'deep' is neither auto nor a number of layers"),
    (["--no-such-option"], "unrecognized arguments"),
]


@pytest.mark.parametrize(("argv", "message"), BAD_ARGUMENTS)
def test_every_bad_argument_is_a_usage_error_before_any_output(
    argv, message, tmp_path, capsys
):
    """Exit status 2 with argparse's message, nothing loaded, no folder created."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--output", str(out), "--quiet"])
    assert stop.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err, captured.err
    assert "Deep RFM on" not in captured.out
    assert not out.exists()


def test_output_paths_that_cannot_be_folders(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    for output in (blocker, blocker / "a" / "b"):
        with pytest.raises(SystemExit) as stop:
            main(["--output", str(output), "--L", "1", "--no-cv"])
        assert stop.value.code == 2
        assert "is not a writable folder" in capsys.readouterr().err
    assert blocker.is_file()


def test_missing_data_set_files_exit_2_without_output(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(
        ["--dataset", "mnist", "--data-root", str(tmp_path / "none")]
        + ["--n-samples", "60", "--no-cv", "--quiet", "--output", str(out)]
    )
    assert status == 2
    assert "The 'mnist' data set is not available" in capsys.readouterr().err
    assert not out.exists()


def test_outputs_follow_the_umask(tmp_path):
    out = tmp_path / "run"
    old = os.umask(0o027)
    try:
        status = main(
            ["--n-samples", "20", "--L", "1", "--no-cv", "--quiet"]
            + ["--output", str(out)]
        )
    finally:
        os.umask(old)
    assert status == 0
    files = sorted(out.iterdir())
    assert len(files) == 4
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threads", "100000"], "is more than the"),
        (["--seed", "-1"], "is not a seed"),
    ],
)
def test_the_command_process_ends_with_a_usage_error(argv, message, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "skdnc", *argv, "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(skdnc.__file__).parents[1])},
    )
    assert done.returncode == 2
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
