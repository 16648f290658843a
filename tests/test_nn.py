"""Tests of skdnc.nn: models, training, per-layer AGOP / NFA / NC1-by-SVD probes.

References are independent of the probe code: autograd Jacobians of explicitly
written sub-networks, SVDs taken here, dense float64 matrices, and the paper's
qualitative claims on a bias-free MLP trained on scikit-learn's digits.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn

from skdnc._linalg import psd_power
from skdnc.datasets import load_dataset
from skdnc.metrics import nc1_score
from skdnc.nn import (
    STAGES,
    HeadedNetwork,
    TrainingHistory,
    aggregate_histories,
    find_layers,
    layer_agops,
    make_mlp,
    make_model,
    make_resnet18,
    make_vgg11,
    nfa_correlation,
    pm1_targets,
    probe_network,
    train_network,
    train_seeds,
)

# The digits settings of the demo preset: 500 balanced points, width 128, xavier
# gain 0.5, SGD lr 0.4, 200 epochs fit the training set; the paper's lr 0.05 and
# gain 0.3 need far more epochs on digits to leave the small-init plateau.
DIGITS = {"width": 128, "init_scale": 0.5, "lr": 0.4, "epochs": 200}


@pytest.fixture(scope="module")
def digits():
    X, y = load_dataset(
        "digits", n_samples=500, balanced=True, standardize=True, return_X_y=True
    )
    return X.astype(np.float32), y


@pytest.fixture(scope="module")
def trained(digits):
    """One bias-free MLP trained on digits (reused by every claim test)."""
    X, y = digits
    net = make_mlp(
        64, 10, width=DIGITS["width"], init_scale=DIGITS["init_scale"], random_state=0
    )
    history = train_network(
        net,
        X,
        y,
        epochs=DIGITS["epochs"],
        lr=DIGITS["lr"],
        probe=False,
        device="cpu",
        progress=False,
        random_state=0,
    )
    return net, history


@pytest.fixture(scope="module")
def trained_probe(trained, digits):
    return probe_network(trained[0], digits[0], digits[1])


@pytest.fixture(scope="module")
def untrained_probe(digits):
    net = make_mlp(
        64, 10, width=DIGITS["width"], init_scale=DIGITS["init_scale"], random_state=0
    )
    return probe_network(net, digits[0], digits[1])


def _hidden_inputs(net, X):
    """Inputs Phi(X) of every head layer, by an explicit forward pass."""
    h = torch.flatten(net.backbone(X), 1)
    inputs = []
    for layer in net.head_layers:
        inputs.append(h)
        h = layer(h)
    return inputs


def _randn(*shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64, generator=g)


def _generic_net():
    """A plain Sequential with biases and mixed activations (not a HeadedNetwork)."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(), nn.Linear(6, 3)
    ).double()


# -- AGOP: pre-activation trick against Jacobians --------------------------------------
def _explicit_agop(sub, Phi):
    """(1/n) sum_i J_i' J_i with J_i the autograd Jacobian of ``sub`` at Phi[i]."""
    acc = torch.zeros(Phi.shape[1], Phi.shape[1], dtype=torch.float64)
    for phi in Phi:
        J = torch.autograd.functional.jacobian(lambda v: sub(v[None])[0], phi)
        acc += J.double().T @ J.double()
    return acc / len(Phi)


def test_preactivation_agop_equals_jacobian_float64():
    net = _generic_net()
    X = _randn(30, 5, seed=0)
    pre = layer_agops(net, X, batch_size=7)
    jac = layer_agops(net, X, method="jacobian", batch_size=11)
    # Independent truth: autograd on the explicit sub-networks net[2l:].
    subs = [net, net[2:]]
    Phis = [X, net[:2](X).detach()]
    assert [l.name for l in find_layers(net)] == ["0", "2"]
    for A, B, sub, Phi in zip(pre, jac, subs, Phis):
        ref = _explicit_agop(sub, Phi)
        assert torch.linalg.norm(A - ref) <= 1e-10 * torch.linalg.norm(ref)
        assert torch.linalg.norm(B - ref) <= 1e-10 * torch.linalg.norm(ref)


def test_inplace_activations_and_dropout():
    """A torchvision-style classifier: in-place ReLUs and Dropout between layers."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 8),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(8, 5),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(5, 3),
    ).double()
    X = _randn(20, 6, seed=5)
    assert [l.name for l in find_layers(net)] == ["0", "3"]
    pre = layer_agops(net, X)
    jac = layer_agops(net, X, method="jacobian")
    for A, B in zip(pre, jac):
        assert torch.linalg.norm(A - B) <= 1e-10 * torch.linalg.norm(B)
    net.train()
    probe = probe_network(net, X, np.arange(20) % 3)  # eval mode: no dropout
    out = torch.relu(net[0](X))
    assert probe.nc1[0, 2] == pytest.approx(nc1_score(out.detach(), np.arange(20) % 3))
    assert net.training


def test_preactivation_agop_float32_headed_network():
    net = make_mlp(6, 4, width=9, depth=3, init_scale=1.0, random_state=1)
    X = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    pre = layer_agops(net, X)
    jac = layer_agops(net, X, method="jacobian")
    assert len(pre) == 3 and pre[0].shape == (6, 6) and pre[1].shape == (9, 9)
    for A, B in zip(pre, jac):
        assert torch.linalg.norm(A - B) <= 1e-4 * torch.linalg.norm(B)
    with pytest.raises(ValueError, match="method"):
        layer_agops(net, X, method="finite-differences")


# -- SVD identities --------------------------------------------------------------------
def test_svd_stage_identities_float64(trained, digits):
    net = make_mlp(64, 10, width=DIGITS["width"], random_state=0).double()
    net.load_state_dict({k: v.double() for k, v in trained[0].state_dict().items()})
    X, y = torch.tensor(digits[0], dtype=torch.float64), digits[1]
    probe = probe_network(net, X, y)
    with torch.no_grad():
        inputs = _hidden_inputs(net, X)
        for index, (layer, Phi) in enumerate(zip(net.head_layers, inputs)):
            W = layer[0].weight
            U, S, Vh = torch.linalg.svd(W, full_matrices=False)
            right = Phi @ Vh.T * S  # S V' Phi(X), as rows
            out = torch.relu(right @ U.T)  # ReLU(U S V' Phi(X))
            forward = layer(Phi)
            assert torch.allclose(forward, out, rtol=0, atol=1e-10 * out.abs().max())
            nc1_pre = nc1_score(Phi @ W.T, y)  # the pre-activation W Phi(X)
            assert nc1_score(right, y) == pytest.approx(nc1_pre, rel=1e-10)
            assert probe.nc1[index, 1] == pytest.approx(nc1_pre, rel=1e-10)
            assert probe.nc1[index, 0] == pytest.approx(nc1_score(Phi, y), rel=1e-10)
            assert probe.nc1[index, 2] == pytest.approx(nc1_score(out, y), rel=1e-10)


# -- NFA correlation -------------------------------------------------------------------
def test_nfa_correlation_properties():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(6, 6))
    A = A @ A.T
    assert nfa_correlation(A, A) == pytest.approx(1.0, abs=1e-12)
    assert nfa_correlation(A, 3.7 * A + 2.5) == pytest.approx(1.0, abs=1e-12)
    assert nfa_correlation(A, -A) == pytest.approx(-1.0, abs=1e-12)
    assert nfa_correlation(torch.tensor(A), torch.tensor(0.1 * A)) == pytest.approx(1.0)
    # The uncentred cosine is scale- but not offset-invariant.
    assert nfa_correlation(A, 4.0 * A, centered=False) == pytest.approx(1.0, abs=1e-12)
    assert nfa_correlation(A, A + 5.0, centered=False) < 0.99
    B = rng.normal(size=(6, 6))
    a, b = A.ravel() - A.mean(), B.ravel() - B.mean()
    assert nfa_correlation(A, B) == pytest.approx(
        a @ b / np.linalg.norm(a) / np.linalg.norm(b), rel=1e-12
    )
    assert np.isnan(nfa_correlation(np.ones((6, 6)), A))
    with pytest.raises(ValueError, match="same shape"):
        nfa_correlation(A, A[:3])


def test_probe_nfa_matches_dense_float64_reference():
    """The probe's factored NFA equals dense corr(W'W, AGOP^{1/2}) from Jacobians."""
    net = _generic_net()
    X = _randn(25, 5, seed=2)
    y = np.arange(25) % 3
    probe = probe_network(net, X, y, return_agops=True)
    for index, (layer, agop) in enumerate(
        zip(find_layers(net), layer_agops(net, X, method="jacobian"))
    ):
        W = layer.linear.weight.detach()
        nfm = W.T @ W
        sqrt_agop = psd_power(agop, 0.5)
        assert probe.nfa_correlation[index] == pytest.approx(
            nfa_correlation(nfm, sqrt_agop), abs=1e-10
        )
        assert probe.nfa_correlation_uncentered[index] == pytest.approx(
            nfa_correlation(nfm, sqrt_agop, centered=False), abs=1e-10
        )
        assert probe.nfa_correlation_agop[index] == pytest.approx(
            nfa_correlation(nfm, agop), abs=1e-10
        )
        np.testing.assert_allclose(
            probe.agops[index],
            agop.detach().numpy(),
            rtol=1e-10,
            atol=1e-12 * float(agop.abs().max()),
        )


# -- the paper's claims on digits ------------------------------------------------------
def test_trained_mlp_fits_digits(trained):
    history = trained[1]
    assert history.accuracy[-1] >= 0.99
    assert history.accuracy[0] < 0.5  # the untrained baseline does not


def test_last_layer_nc1_collapses(trained_probe, untrained_probe):
    ratio = trained_probe.nc1[-1, 2] / trained_probe.nc1[0, 0]
    baseline = untrained_probe.nc1[-1, 2] / untrained_probe.nc1[0, 0]
    assert ratio <= 0.02
    assert baseline > 0.02  # random weights do not collapse: the test can fail
    # The layer output never has (much) more NC1 than its input once trained.
    assert np.all(trained_probe.nc1[:, 2] <= 1.05 * trained_probe.nc1[:, 0])


def test_right_singular_structure_drives_collapse(trained_probe, untrained_probe):
    assert trained_probe.right_share >= 0.7
    assert trained_probe.layer_share.shape == (5,)
    # At random init, the ReLU's share dominates: S V' (a random rotation and
    # scaling) leaves NC1 about where it was. (A NaN share must fail too.)
    assert np.isfinite(untrained_probe.right_share)
    assert untrained_probe.right_share < 0.7


def test_neural_feature_ansatz(trained, trained_probe, untrained_probe, digits):
    net = trained[0]
    assert trained_probe.nfa_correlation.mean() >= 0.6
    assert np.all(np.abs(trained_probe.nfa_correlation) <= 1)
    # The same statistic at initialisation (W0'W0 against the untrained net's own
    # AGOP^{1/2}) is high as well, so the claim is the comparison: in the deeper
    # layers, where features are learned, training raises the correlation. (The
    # first layers already correlate strongly at init: AGOP_l = W_l' G_l W_l.)
    trained_deep = trained_probe.nfa_correlation[2:].mean()
    untrained_deep = untrained_probe.nfa_correlation[2:].mean()
    assert np.isfinite(untrained_deep)
    assert trained_deep >= untrained_deep + 0.04
    # Baseline that fails: random weights' W'W against the trained AGOP^{1/2}
    # (measured ~0.3). Note that an untrained bias-free net already scores ~0.84
    # against its *own* AGOP, since AGOP_l = W_l' G_l W_l contains W_l and both
    # matrices are near multiples of the identity at init.
    random = make_mlp(64, 10, width=DIGITS["width"], random_state=1)
    agops = layer_agops(net, digits[0])
    baseline = []
    for block, agop in zip(random.head_layers, agops):
        W = block[0].weight.detach()
        baseline.append(nfa_correlation(W.T @ W, psd_power(agop, 0.5)))
    assert np.mean(baseline) < 0.6
    assert untrained_probe.nfa_correlation.shape == (5,)


# -- probe mechanics -------------------------------------------------------------------
def _no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )


def test_probe_restores_mode_and_hooks_on_error():
    net = make_mlp(6, 3, width=8, depth=2, random_state=0)
    net.train()
    with pytest.raises(RuntimeError):
        probe_network(net, np.zeros((4, 7), dtype=np.float32), np.arange(4) % 2)
    assert net.training and _no_hooks(net)
    net.eval()
    with pytest.raises(RuntimeError):
        layer_agops(net, np.zeros((4, 7), dtype=np.float32), method="jacobian")
    assert not net.training and _no_hooks(net)
    net.train()
    X = np.random.default_rng(0).normal(size=(4, 6)).astype(np.float32)
    probe_network(net, X, np.arange(4) % 2)
    assert net.training and _no_hooks(net)


def test_find_layers_names_modules_and_pairs():
    net = _generic_net()
    by_name = find_layers(net, ["0", ("2", "3")])
    assert [l.name for l in by_name] == ["0", "2"]
    assert by_name[0].output is net[0] and by_name[1].output is net[3]
    by_module = find_layers(net, [net[2]])
    assert by_module[0].linear is net[2]
    mlp = make_mlp(4, 2, width=5, depth=3)
    assert [l.name for l in find_layers(mlp)] == [f"head_layers.{i}" for i in range(3)]
    with pytest.raises(ValueError, match="no submodule"):
        find_layers(net, ["nope"])
    with pytest.raises(ValueError, match="no nn.Linear"):
        find_layers(net, ["1"])
    with pytest.raises(ValueError, match="No MLP layers"):
        find_layers(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ValueError, match="not a submodule"):
        find_layers(net, [nn.Linear(2, 2)])


def test_probe_named_linear_layers_only():
    """Naming the Linear modules: the 'output' stage is then the pre-activation."""
    net = _generic_net()
    X = _randn(30, 5, seed=4)
    y = np.arange(30) % 3
    with pytest.warns(UserWarning, match="bare weight"):
        probe = probe_network(net, X, y, layers=["0", "2"])
    assert probe.layer_names == ["0", "2"]
    np.testing.assert_allclose(probe.nc1[:, 1], probe.nc1[:, 2], rtol=1e-10)


# -- models ----------------------------------------------------------------------------
def test_mlp_structure_and_init():
    net = make_mlp(64, 10, width=512, init_scale=0.3, random_state=0)
    assert isinstance(net, HeadedNetwork) and len(net.head_layers) == 5
    for block in net.head_layers:
        assert block[0].bias is None and isinstance(block[1], nn.ReLU)
    assert net.readout.bias is None and net.readout.weight.shape == (10, 512)
    bound = 0.3 * np.sqrt(6 / (512 + 512))  # xavier_uniform(gain=0.3)
    w = net.head_layers[2][0].weight.detach()
    assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.95 * bound
    first = 0.3 * np.sqrt(6 / (64 + 512))
    assert float(net.head_layers[0][0].weight.detach().abs().max()) <= first
    readout = 1 / np.sqrt(512)  # PyTorch's default bound
    assert float(net.readout.weight.detach().abs().max()) > 0.95 * readout


def test_seeded_init_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a = make_mlp(8, 3, width=6, random_state=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = make_mlp(8, 3, width=6, random_state=5)
    c = make_mlp(8, 3, width=6, random_state=6)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11"])
def test_conv_backbones_train_and_probe(arch):
    net = make_model(arch, (3, 32, 32), 10, width=32, random_state=0)
    n_features = 512 if arch == "resnet18" else 8192
    assert net.head_layers[0][0].in_features == n_features
    g = torch.Generator().manual_seed(0)
    X = torch.randn(8, 3, 32, 32, generator=g)
    y = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    before = net.head_layers[1][0].weight.detach().clone()
    history = train_network(
        net,
        X,
        y,
        epochs=1,
        lr=0.01,
        batch_size=8,
        probe=False,
        device="cpu",
        progress=False,
        random_state=0,
    )
    assert not torch.equal(before, net.head_layers[1][0].weight)
    assert np.isfinite(history.epoch_loss).all()
    out = net(X[:2])
    assert out.shape == (2, 10)
    probe = probe_network(net, X, y)
    assert probe.nc1.shape == (5, 3) and np.isfinite(probe.nc1).all()
    for corr in (
        probe.nfa_correlation,
        probe.nfa_correlation_uncentered,
        probe.nfa_correlation_agop,
    ):
        assert corr.shape == (5,) and np.all(np.abs(corr) <= 1)
        assert np.isfinite(corr).all()


def test_mnist_shaped_backbones():
    for build in (make_resnet18, make_vgg11):
        net = build(1, 10, width=16, depth=2, init_scale=0.2, random_state=0)
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
        assert len(net.head_layers) == 2 and net.readout.out_features == 10
    with pytest.raises(ValueError, match=r"\(c, h, w\)"):
        make_model("vgg11", (64,))
    with pytest.raises(ValueError, match="arch"):
        make_model("lenet", (1, 8, 8))


# -- training --------------------------------------------------------------------------
def test_pm1_targets():
    Y = pm1_targets([2, 0], 3)
    assert Y.tolist() == [[-1, -1, 1], [1, -1, -1]]


def test_training_history_schedule_json_and_determinism(digits, tmp_path):
    X, y = digits[0][:120], digits[1][:120]
    build = lambda seed: make_mlp(
        64, 10, width=16, depth=2, init_scale=1.0, random_state=seed
    )
    state = torch.random.get_rng_state()
    runs = train_seeds(
        build,
        X,
        y,
        seeds=[0, 1, 0],
        epochs=5,
        lr=0.1,
        measure_every=2,
        device="cpu",
        progress=False,
    )
    assert torch.equal(torch.random.get_rng_state(), state)
    h0, h1, h0b = runs
    assert h0.epochs == [0, 2, 4, 5] and len(h0.epoch_loss) == 5
    assert h0.loss == h0b.loss and h0.loss != h1.loss
    assert h0.curve("nc1").shape == (4, 2, 3)
    assert h0.curve("nfa_correlation").shape == (4, 2)
    # The recorded loss is the MSE to +-1 targets over all points.
    net = build(0)
    train_network(
        net,
        X,
        y,
        epochs=5,
        lr=0.1,
        probe=False,
        device="cpu",
        progress=False,
        random_state=0,
    )
    with torch.no_grad():
        mse = float(((net(torch.tensor(X)) - pm1_targets(y, 10)) ** 2).mean())
    assert h0.loss[-1] == pytest.approx(mse, rel=1e-5)
    h0.save(tmp_path / "h.json")
    again = TrainingHistory.load(tmp_path / "h.json")
    assert again == h0 and again.config["seed"] == 0
    json.loads((tmp_path / "h.json").read_text())
    summary = aggregate_histories([h0, h1])
    stack = np.stack([h0.curve("nc1"), h1.curve("nc1")])
    np.testing.assert_allclose(summary["nc1_mean"], stack.mean(0))
    np.testing.assert_allclose(summary["nc1_std"], stack.std(0, ddof=1))
    final = np.concatenate(
        [h0.curve("nfa_correlation")[-1], h1.curve("nfa_correlation")[-1]]
    )
    assert summary["final_nfa_mean"] == pytest.approx(final.mean())
    assert summary["final_nfa_std"] == pytest.approx(final.std(ddof=1))
    with pytest.raises(ValueError, match="same measured epochs"):
        aggregate_histories([h0, TrainingHistory(epochs=[0])])


def test_within_between_shares(trained_probe):
    nc1 = trained_probe.nc1[-1, 2]
    assert trained_probe.within_share == pytest.approx(nc1 / (1 + nc1))
    assert trained_probe.within_share + trained_probe.between_share == pytest.approx(1)
    assert STAGES == ("input", "projection", "output")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_training_and_probe(digits):
    X, y = digits
    net = make_mlp(
        64, 10, width=DIGITS["width"], init_scale=DIGITS["init_scale"], random_state=0
    )
    history = train_network(
        net,
        X,
        y,
        epochs=DIGITS["epochs"],
        lr=DIGITS["lr"],
        measure_every=100,
        device="cuda",
        progress=False,
        random_state=0,
    )
    assert next(net.parameters()).is_cuda
    assert history.accuracy[-1] >= 0.99
    probe = probe_network(net, X, y)
    assert probe.nc1[-1, 2] <= 0.02 * probe.nc1[0, 0]
    assert probe.nfa_correlation.mean() >= 0.6
