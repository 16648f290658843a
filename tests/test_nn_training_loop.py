"""Probing inside training loops: ProbeCallback in a user's loop, and
train_network with an optimiser factory, cross-entropy and callbacks."""

import functools

import numpy as np
import pytest
import torch
from torch import nn

from skdnc.nn import ProbeCallback, probe_network, train_network


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    X = torch.randn(60, 5, generator=g) + 2 * torch.eye(3, 5)[y]
    return X, y


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3)
    )


def test_probe_callback_in_a_user_loop(data):
    X, y = data
    net = _net()
    callback = ProbeCallback(X, y, every=3, collapse_layers=["1", "3"])
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for epoch in range(7):
        if epoch:
            net.train()
            opt.zero_grad()
            nn.functional.cross_entropy(net(X), y).backward()
            opt.step()
        callback(net, epoch)
    assert callback.epochs == [0, 3, 6]
    assert callback.curve("nc1").shape == (3, 2, 3)
    assert callback.curve("nc1", collapse=True).shape == (3, 2)
    # The last record is the probe of the model as it is now.
    now = probe_network(net, X, y)
    np.testing.assert_allclose(
        callback.curve("nfa_correlation")[-1], now.nfa_correlation, rtol=1e-12
    )
    np.testing.assert_allclose(
        callback.curve("nc1", collapse=True)[-1], now.nc1[:, 2], rtol=1e-10
    )
    # Training with cross-entropy collapses the last hidden layer.
    nc1 = callback.curve("nc1")
    assert nc1[-1, -1, 2] < nc1[0, -1, 2]
    with pytest.raises(ValueError, match="every"):
        ProbeCallback(X, y, every=0)


def test_train_network_optimizer_factory_loss_and_callbacks(data):
    X, y = data
    net = _net(1)
    callback = ProbeCallback(X, y, every=2)
    history = train_network(
        net,
        X,
        y,
        epochs=4,
        batch_size=16,
        loss="cross_entropy",
        probe=False,
        optimizer=functools.partial(torch.optim.Adam, lr=0.01),
        callbacks=[callback],
        device="cpu",
        progress=False,
        random_state=0,
    )
    assert history.config["optimizer"] == "Adam"
    assert history.config["loss"] == "cross_entropy"
    assert callback.epochs == [0, 2, 4]
    with torch.no_grad():
        ce = float(nn.functional.cross_entropy(net(X), y))
    assert history.loss[-1] == pytest.approx(ce, rel=1e-5)
    # A callable loss gets the class indices.
    seen = []

    def hinge(out, y_index):
        seen.append(y_index.dtype)
        return nn.functional.multi_margin_loss(out, y_index)

    train_network(
        _net(2), X, y, epochs=1, loss=hinge, probe=False, device="cpu", progress=False
    )
    assert seen and all(d == torch.long for d in seen)
    with pytest.raises(ValueError, match="loss"):
        train_network(_net(), X, y, epochs=1, loss="l1", device="cpu", progress=False)
    with pytest.raises(TypeError, match="optimizer"):
        train_network(
            _net(), X, y, epochs=1, optimizer="adam", device="cpu", progress=False
        )
