"""What a researcher met with skdnc.nn (issue 20) and the inputs that crashed deep in
torch (issue 25, class 5): each test failed on the code before these fixes."""

import warnings

import matplotlib
import numpy as np
import pytest
import scipy.sparse
import torch
import torchvision.models as tvm
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision.ops import SqueezeExcitation

from skdnc import TrainingHistoryDisplay
from skdnc.metrics import nc1_score
from skdnc.nn import (
    InputShapeError,
    ProbeCallback,
    find_layers,
    layer_agops,
    layer_collapse,
    probe_network,
    train_network,
    weight_matrix,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _labels(n, k=3):
    return np.arange(n) % k


def _tiny_vit(head_std=None):
    torch.manual_seed(0)
    vit = tvm.VisionTransformer(
        image_size=16,
        patch_size=8,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        mlp_dim=32,
        num_classes=3,
    ).eval()
    if head_std is not None:
        nn.init.normal_(vit.heads.head.weight, std=head_std)
    return vit


def _images(n=12, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = _labels(n)
    base = torch.randn(3, 3, size, size, generator=g)
    return base[y] + 0.5 * torch.randn(n, 3, size, size, generator=g), y


# -- 1. silent wrong numbers ----------------------------------------------------------
def test_token_reduction_leaves_two_dimensional_outputs_alone():
    vit = _tiny_vit(head_std=0.5)
    X, y = _images()
    probe = layer_collapse(vit, X, y, layers=["heads"], reduction=lambda z: z[:, 0])
    with torch.no_grad():
        scores = vit(X).double().numpy()
    assert probe.n_features.tolist() == [3]
    assert probe.nc1[0] == pytest.approx(nc1_score(scores, y), rel=1e-6)
    named = layer_collapse(vit, X, y, layers=["heads"], reduction="cls")
    assert named.nc1[0] == pytest.approx(probe.nc1[0], rel=1e-12)


def test_avgpool_on_tokens_is_refused_with_the_token_reductions():
    vit = _tiny_vit(head_std=0.5)
    X, y = _images()
    with pytest.raises(ValueError, match="reduction='mean'"):
        layer_collapse(vit, X, y, layers=["encoder.layers"], reduction="avgpool")
    probe = layer_collapse(vit, X, y, layers=["encoder.layers"], reduction="mean")
    assert probe.n_features.tolist() == [16]


def test_zero_initialised_vit_head_gives_a_nan_nfa_warning():
    vit = _tiny_vit()  # torchvision's zero head
    X, y = _images()
    with pytest.warns(UserWarning) as record:  # also: NC3 undefined, not probed
        probe = probe_network(vit, X, y, reduction="cls")
    assert np.isnan(probe.nfa_correlation).all()
    nan = [str(w.message) for w in record if "is NaN" in str(w.message)]
    assert len(nan) == 1 and "'heads.head' has zero weights" in nan[0]


# -- 2. crashes that blamed the user ------------------------------------------------
def test_squeeze_excitation_is_paired_by_execution_order():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.ReLU(),
        SqueezeExcitation(8, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    X, y = _images(size=8)
    found = find_layers(net, X=X)
    assert [(l.name, l.output) for l in found] == [
        ("0", net[1]),
        ("2.fc1", net[2].activation),
        ("2.fc2", net[2].scale_activation),
    ]
    probe = probe_network(net, X, y, reduction="avgpool")
    assert np.isfinite(probe.nc1).all()


def test_transformer_layer_with_gelu_module_is_paired_with_linear1():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        8, 2, 16, dropout=0.0, activation=nn.GELU(), batch_first=True
    )
    net = nn.Sequential(layer, nn.Flatten(), nn.Linear(8 * 4, 3)).eval()
    X = torch.randn(12, 4, 8, generator=torch.Generator().manual_seed(0))
    y = _labels(12)
    with pytest.warns(UserWarning, match=r"'0.linear2'.*no activation"):
        probe = probe_network(net, X, y, reduction="mean")
    assert probe.layer_names == ["0.linear1"]
    # named, the block runs: its W_l is linear1 (out_proj never runs as a module)
    with pytest.warns(UserWarning, match="out_proj"):
        block = probe_network(net, X, y, layers=["0"], reduction="mean")
    assert np.isfinite(block.nc1).all()


# -- 3. gaps --------------------------------------------------------------------------
class _DictModel(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.body(x)
        return {"logits": self.head(h), "features": h}


def test_train_network_with_model_output():
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    y = _labels(30)
    history = train_network(
        _DictModel(),
        X,
        y,
        epochs=2,
        device="cpu",
        progress=False,
        random_state=0,
        model_output="logits",
    )
    assert len(history.probes) == 2 and np.isfinite(history.loss).all()


class _TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Sequential(nn.Linear(3, 6), nn.ReLU())
        self.b = nn.Linear(2, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, left, right):
        return self.head(self.a(left) + self.b(right))


def test_models_with_several_inputs_take_tuples_and_dicts():
    rng = np.random.default_rng(0)
    left, right = rng.normal(size=(21, 3)), rng.normal(size=(21, 2))
    y = _labels(21)
    net = _TwoInputs().double()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x[:, :3], x[:, 3:])

    with pytest.warns(UserWarning, match=r"not probed: \['net.b'\]"):
        wrapped = probe_network(Wrapped(), np.hstack([left, right]), y, batch_size=8)
    with pytest.warns(UserWarning, match=r"not probed: \['b'\]"):
        as_tuple = probe_network(net, (left, right), y, batch_size=8)
    with pytest.warns(UserWarning, match=r"not probed: \['b'\]"):
        as_dict = probe_network(net, {"left": left, "right": right}, y, batch_size=8)
    np.testing.assert_allclose(as_tuple.nc1, wrapped.nc1, rtol=1e-10)
    np.testing.assert_allclose(as_dict.nfa_correlation, wrapped.nfa_correlation)
    loader = DataLoader(
        TensorDataset(torch.tensor(left), torch.tensor(right), torch.tensor(y)),
        batch_size=8,
        collate_fn=lambda rows: (
            tuple(torch.stack(c) for c in list(zip(*rows))[:2]),
            torch.stack([r[2] for r in rows]),
        ),
    )
    streamed = layer_collapse(net, loader, layers=["a"])
    assert streamed.nc1[0] == pytest.approx(as_tuple.nc1[0, 2], rel=1e-10)
    history = train_network(
        _TwoInputs().double(),
        (left, right),
        y,
        epochs=1,
        device="cpu",
        progress=False,
        probe=False,
    )
    assert history.config["n_samples"] == 21


def test_displays_draw_a_probe_callback():
    X = torch.randn(24, 5, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 2
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2))
    callback = ProbeCallback(X, y, every=1)
    for epoch in range(3):
        callback(net, epoch)
    display = TrainingHistoryDisplay.from_histories([callback])
    np.testing.assert_allclose(
        display.lines_["nfa", "0"].get_ydata(), callback.curve("nfa_correlation")[:, 0]
    )
    assert "loss" not in display.lines_
    plt.close("all")


def test_svd_split_of_a_bare_weight_layer_warns():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    X, y = np.random.default_rng(0).normal(size=(18, 4)), _labels(18)
    with pytest.warns(UserWarning, match=r"\['0'\] are bare weight layers"):
        probe = probe_network(net, X, y, layers=["0"])
    # the output stage is the pre-activation: it differs from W h by the bias only
    assert np.isfinite(probe.nc1).all()


def test_transposed_grouped_and_other_convolutions_are_named_and_refused():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(4, 4, 2, stride=2),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).double()
    X, y = torch.randn(12, 2, 6, 6, dtype=torch.float64), _labels(12)
    with pytest.warns(UserWarning, match=r"'2'.*transposed.*'4'.*grouped"):
        found = find_layers(net, X=X)
    assert [l.name for l in found] == ["0"]
    with pytest.raises(ValueError, match="transposed convolution"):
        probe_network(net, X, y, layers=["2"])
    with pytest.raises(ValueError, match="transposed convolution"):
        weight_matrix(net[2])
    with pytest.raises(ValueError, match="grouped convolution"):
        weight_matrix(net[4])
    layer_collapse(net, X, y, layers=["3", "5"], reduction="avgpool")


def test_dilated_and_strided_convolutions_are_probed_exactly():
    """The patch AGOP W'GW of a dilated, strided convolution equals the float64
    Jacobian reference over its unfolded (dilated) patches."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, dilation=2, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 16, 3),
    ).double()
    X = torch.randn(6, 2, 9, 9, dtype=torch.float64)
    pre = layer_agops(net, X, layers=[("0", "1")])
    jac = layer_agops(net, X, layers=[("0", "1")], method="jacobian")
    assert torch.linalg.norm(pre[0] - jac[0]) <= 1e-10 * torch.linalg.norm(jac[0])


# -- issue 25, class 5: inputs that crashed deep in torch -----------------------------
@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


X6 = np.random.default_rng(0).normal(size=(30, 6)).astype(np.float32)
Y6 = _labels(30)


def test_one_dimensional_x_names_the_shape(mlp):
    with pytest.raises(ValueError, match=r"one sample per row.*reshape\(-1, 1\)"):
        probe_network(mlp, X6[:, 0], Y6)


def test_complex_and_sparse_x_are_refused(mlp):
    with pytest.raises(TypeError, match="complex"):
        probe_network(mlp, X6 + 1j * X6, Y6)
    with pytest.raises(TypeError, match="sparse.*toarray"):
        probe_network(mlp, scipy.sparse.csr_matrix(X6), Y6)
    with pytest.raises(TypeError, match="complex"):
        layer_collapse(mlp, torch.tensor(X6 + 1j * X6), Y6)


def test_empty_x_and_empty_loaders(mlp):
    with pytest.raises(ValueError, match="no samples"):
        train_network(mlp, X6[:0], Y6[:0], epochs=1, progress=False, device="cpu")
    empty = DataLoader(TensorDataset(torch.tensor(X6[:0]), torch.tensor(Y6[:0])))
    for probe in (probe_network, layer_collapse):
        with pytest.raises(ValueError, match="yielded no batches"):
            probe(mlp, empty)


def test_layer_collapse_with_the_wrong_input_width(mlp):
    with pytest.raises(InputShapeError, match="could not run on a batch"):
        layer_collapse(mlp, X6[:, :5], Y6, layers=["1"])


def test_uint8_images_are_numbers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    images = np.random.default_rng(0).integers(0, 256, size=(18, 1, 4, 4))
    images = images.astype(np.uint8)
    y = _labels(18)
    raw = layer_collapse(net, torch.tensor(images), y, layers=["1"])
    as_float = layer_collapse(net, images.astype(np.float32), y, layers=["1"])
    np.testing.assert_allclose(raw.nc1, as_float.nc1, rtol=1e-12)


def test_probe_callback_refuses_a_mistyped_keyword_when_built():
    with pytest.raises(TypeError, match=r"\['reductoin'\].*reduction"):
        ProbeCallback(X6, Y6, reductoin="avgpool")


# -- the token reductions, against numpy ---------------------------------------------
class _Tokens(nn.Module):
    def __init__(self, d):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Identity()
        self.head = nn.Linear(d, 2)

    def forward(self, x, attention_mask):
        return self.head(self.body(x).mean(dim=1))


@settings(derandomize=True, max_examples=15, deadline=None)
@given(
    n=st.integers(6, 12),
    T=st.integers(1, 5),
    d=st.integers(1, 4),
    reduction=st.sampled_from(["mean", "last", "cls"]),
    seed=st.integers(0, 2**16),
)
def test_token_reductions_with_a_mask_match_numpy(n, T, d, reduction, seed):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, T, d))
    lengths = rng.integers(1, T + 1, size=n)
    mask = (np.arange(T)[None, :] < lengths[:, None]).astype(np.int64)
    y = _labels(n, 2)
    net = _Tokens(d).double()
    data = {"x": Z, "attention_mask": mask}
    use_mask = "attention_mask" if reduction != "cls" else None
    if reduction == "mean":
        ref = (Z * mask[..., None]).sum(1) / lengths[:, None]
    elif reduction == "last":
        ref = Z[np.arange(n), lengths - 1]
    else:
        ref = Z[:, 0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate draw: both NaN
        probe = layer_collapse(
            net, data, y, layers=["body"], reduction=reduction, attention_mask=use_mask
        )
        expected = nc1_score(ref, y)
    np.testing.assert_allclose(probe.nc1[0], expected, rtol=1e-10, equal_nan=True)
