"""``python -m skdnc.nn --model package.module:factory --checkpoint PATH``."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from skdnc.nn import __main__ as command
from skdnc.nn import probe_network

FACTORY = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))


def not_a_module():
    return 3


class Nets:
    @staticmethod
    def wide():
        return nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))


number = 5
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module ``user_nets_<id>`` on sys.path, and a checkpoint of its ``build()``
    with weights different from the factory's."""
    name = f"user_nets_{abs(hash(str(tmp_path))) % 10**8}"
    (tmp_path / f"{name}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(1)
    trained = nn.Sequential(nn.Linear(64, 12), nn.ReLU(), nn.Linear(12, 10))
    path = tmp_path / "weights.pt"
    torch.save(trained.state_dict(), path)
    return name, path, trained


def _argv(tmp_path, *extra):
    return ["--n-samples", "100", "--quiet", "--output", str(tmp_path / "out"), *extra]


def test_probes_the_checkpointed_model(user_module, tmp_path):
    name, path, trained = user_module
    args = command.parse(
        _argv(tmp_path, "--model", f"{name}:build", "--checkpoint", str(path))
    )
    for key, value in trained.state_dict().items():
        torch.testing.assert_close(args.user_model.state_dict()[key], value)
    assert (
        command.main(
            _argv(tmp_path, "--model", f"{name}:build", "--checkpoint", str(path))
        )
        == 0
    )
    written = json.loads((tmp_path / "out" / f"nn_probe_{name}_build.json").read_text())
    X, y = command.load_dataset(
        "digits", n_samples=100, balanced=True, standardize=True, return_X_y=True
    )
    expected = probe_network(trained, np.asarray(X, dtype=np.float32), y)
    np.testing.assert_allclose(written["probe"]["nc1"], expected.nc1, rtol=1e-6)
    assert written["probe"]["nc4"] == pytest.approx(expected.nc4)
    assert written["probe"]["readout"] == "2"
    assert (tmp_path / "out" / f"collapse_{name}_build_digits.png").is_file()


def test_dotted_factory_and_state_dict_key(user_module, tmp_path):
    name, _, _ = user_module
    wide = nn.Sequential(nn.Linear(64, 20), nn.ReLU(), nn.Linear(20, 10))
    path = tmp_path / "wrapped.pt"
    torch.save({"state_dict": wide.state_dict(), "epoch": 3}, path)
    model = command.load_user_model(f"{name}:Nets.wide", path)
    torch.testing.assert_close(model[0].weight, wide[0].weight)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_colon_here", "not of the form package.module:factory"),
        (":build", "not of the form"),
        ("skdnc_no_such_module_xyz:build", "cannot import module"),
        ("{mod}:missing", "has no attribute 'missing'"),
        ("{mod}:number", "not a function"),
        ("{mod}:not_a_module", "returned a int, not a torch.nn.Module"),
    ],
)
def test_bad_model_specs(user_module, tmp_path, capsys, spec, message):
    name, _, _ = user_module
    spec = spec.format(mod=name)
    with pytest.raises(ValueError, match=message):
        command.load_user_model(spec)
    with pytest.raises(SystemExit) as exc:
        command.parse(_argv(tmp_path, "--model", spec))
    assert exc.value.code == 2
    assert message.split(" ")[0] in capsys.readouterr().err


def test_bad_checkpoints(user_module, tmp_path, capsys):
    name, _, _ = user_module
    with pytest.raises(ValueError, match="no such file"):
        command.load_user_model(f"{name}:build", tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save(nn.Linear(3, 2).state_dict(), other)
    with pytest.raises(ValueError, match="does not fit the model"):
        command.load_user_model(f"{name}:build", other)
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a weights-only torch checkpoint"):
        command.load_user_model(f"{name}:build", text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="not a state_dict"):
        command.load_user_model(f"{name}:build", tensor)
    with pytest.raises(SystemExit):
        command.parse(_argv(tmp_path, "--checkpoint", str(other)))
    assert "--checkpoint needs --model" in capsys.readouterr().err


def test_help_lists_the_model_options(capsys):
    with pytest.raises(SystemExit):
        command.parse(["--help"])
    out = capsys.readouterr().out
    assert "--model MODULE:FACTORY" in out and "--checkpoint PATH" in out
    assert "(default: flat)" in out
