"""collect_activations: against a manual forward pass (float64 reductions written
here), padded positions never entering, batches of any size and any source."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.utils._param_validation import InvalidParameterError
from torch.utils.data import DataLoader

from skdnc.nn import collect_activations, make_causal_lm, make_mlp


@pytest.fixture(scope="module")
def lm():
    return make_causal_lm(23, d_model=16, n_layers=2, n_heads=2, random_state=0)


def _padded(n=7, length=6, seed=0):
    """Right-padded token ids (pad id 0) with 2 .. length real tokens each."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 23, size=(n, length))
    lengths = rng.integers(2, length + 1, size=n)
    lengths[0] = length
    mask = (np.arange(length)[None] < lengths[:, None]).astype(np.int64)
    ids[mask == 0] = 0
    return torch.tensor(ids), torch.tensor(mask), lengths


def _manual(lm, ids, mask):
    """Hidden states of one plain forward pass, float64 NumPy."""
    with torch.no_grad():
        out = lm.eval()(ids, attention_mask=mask, output_hidden_states=True)
    return [h.double().numpy() for h in out.hidden_states]


def _last(H, lengths):
    return np.stack([H[i, lengths[i] - 1] for i in range(len(H))])


def _mean(H, lengths):
    return np.stack([H[i, : lengths[i]].mean(axis=0) for i in range(len(H))])


@pytest.mark.parametrize("reduction", ["last", "mean", "all"])
def test_equals_a_manual_forward_pass(lm, reduction):
    ids, mask, lengths = _padded()
    states = _manual(lm, ids, mask)
    acts = collect_activations(
        lm,
        {"input_ids": ids, "attention_mask": mask},
        reduction=reduction,
        batch_size=3,
    )
    assert list(acts) == [0, 1, 2]
    for index, H in enumerate(states):
        if reduction == "last":
            expected = _last(H, lengths)
        elif reduction == "mean":
            expected = _mean(H, lengths)
        else:
            expected = np.concatenate([H[i, : lengths[i]] for i in range(len(H))])
        assert acts[index].dtype == np.float32
        np.testing.assert_allclose(acts[index], expected, rtol=0, atol=1e-6)


def test_module_outputs_equal_the_hidden_states_they_produce(lm):
    ids, mask, lengths = _padded()
    states = _manual(lm, ids, mask)
    acts = collect_activations(
        lm, ids, layers=["blocks.0", "blocks.1", 0], attention_mask=mask
    )
    assert list(acts) == ["blocks.0", "blocks.1", 0]
    for name, index in (("blocks.0", 1), ("blocks.1", 2), (0, 0)):
        expected = _last(states[index], lengths)
        np.testing.assert_allclose(acts[name], expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("reduction", ["last", "mean"])
def test_padded_positions_never_enter(lm, reduction):
    ids, mask, lengths = _padded()
    batch = {"input_ids": ids, "attention_mask": mask}
    acts = collect_activations(lm, batch, reduction=reduction, layers=[-1])[2]
    # each sequence alone, unpadded
    for i in range(len(ids)):
        alone = collect_activations(
            lm, ids[i : i + 1, : lengths[i]], reduction=reduction, layers=[-1]
        )[2]
        np.testing.assert_allclose(acts[i], alone[0], rtol=0, atol=1e-5)
    # the pads' ids do not matter
    other = ids.clone()
    other[mask == 0] = 7
    again = collect_activations(
        lm, {"input_ids": other, "attention_mask": mask}, reduction=reduction
    )[2]
    np.testing.assert_allclose(again, acts, rtol=0, atol=1e-6)
    # ignoring the mask changes the answer: the test can fail
    ignored = collect_activations(
        lm, batch, reduction=reduction, layers=[-1], attention_mask=None
    )[2]
    padded = lengths < ids.shape[1]
    assert np.abs(ignored[padded] - acts[padded]).max() > 1e-2


def test_sources_and_batch_sizes_agree(lm):
    ids, mask, _ = _padded(n=9)
    batch = {"input_ids": ids, "attention_mask": mask}
    whole = collect_activations(lm, batch, reduction="mean")
    loader = DataLoader(
        [{"input_ids": ids[i], "attention_mask": mask[i]} for i in range(9)],
        batch_size=4,
    )
    pairs = [(batch, np.zeros(9))]  # (x, y) batches: y is ignored
    for other in (
        collect_activations(lm, batch, reduction="mean", batch_size=2),
        collect_activations(lm, loader, reduction="mean"),
        collect_activations(lm, pairs, reduction="mean"),
        collect_activations(
            lm, ids.numpy(), attention_mask=mask.numpy(), reduction="mean"
        ),
    ):
        assert list(other) == list(whole)
        for key in whole:
            np.testing.assert_allclose(other[key], whole[key], rtol=0, atol=1e-6)


def test_batches_are_bounded_by_batch_size(lm):
    ids, mask, _ = _padded(n=10)
    seen = []
    handle = lm.embed.register_forward_hook(lambda m, a, o: seen.append(len(a[0])))
    try:
        collect_activations(
            lm, {"input_ids": ids, "attention_mask": mask}, batch_size=4
        )
    finally:
        handle.remove()
    assert seen == [4, 4, 2]


def test_callable_reduction_gets_the_mask(lm):
    ids, mask, lengths = _padded()
    got = []

    def first_real(Z, m):
        got.append(m)
        return Z[:, 0] * m[:, :1]

    acts = collect_activations(
        lm, {"input_ids": ids, "attention_mask": mask}, reduction=first_real
    )
    assert all(torch.equal(m.cpu(), mask) for m in got)
    np.testing.assert_allclose(
        acts[0], _manual(lm, ids, mask)[0][:, 0], rtol=0, atol=1e-6
    )


def test_callable_reduction_of_feature_maps():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3, padding=1))
    X = np.random.default_rng(0).normal(size=(5, 1, 4, 4))
    acts = collect_activations(
        net, X, layers="0", reduction=lambda Z, m: Z.amax((2, 3))
    )
    with torch.no_grad():
        expected = net(torch.tensor(X, dtype=torch.float32)).amax((2, 3))
    np.testing.assert_allclose(acts["0"], expected.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="callable"):
        collect_activations(net, X, layers="0")


def test_any_model_with_named_modules():
    net = make_mlp(8, 3, width=16, depth=2, random_state=0)
    X = np.random.default_rng(0).normal(size=(11, 8))
    acts = collect_activations(
        net, X, layers=["head_layers.0", "readout"], batch_size=5
    )
    with torch.no_grad():
        h = net.head_layers[0](torch.tensor(X, dtype=torch.float32))
        out = net(torch.tensor(X, dtype=torch.float32))
    np.testing.assert_allclose(acts["head_layers.0"], h.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(acts["readout"], out.numpy(), rtol=0, atol=1e-6)
    assert net.training  # the mode is restored


def test_bad_arguments(lm):
    ids, mask, _ = _padded()
    with pytest.raises(ValueError, match="no submodule"):
        collect_activations(lm, ids, layers=["blocks.9"])
    with pytest.raises(ValueError, match="3 hidden states"):
        collect_activations(lm, ids, layers=[5])
    with pytest.raises(TypeError, match="submodule names"):
        collect_activations(lm, ids, layers=[1.5])
    with pytest.raises(ValueError, match="twice"):
        collect_activations(lm, ids, layers=[-1, 2])
    with pytest.raises(InvalidParameterError):
        collect_activations(lm, ids, reduction="max")
    with pytest.raises(ValueError, match="rides with array"):
        collect_activations(lm, [ids], attention_mask=mask.numpy())
    with pytest.raises(ValueError, match=r"\(n, tokens\)"):
        collect_activations(lm, ids, attention_mask=mask[:, :3].numpy())
    with pytest.raises(ValueError, match="output_hidden_states"):
        collect_activations(make_mlp(4, 2, width=4, depth=1), np.ones((3, 4)))
    with pytest.raises(ValueError, match="without any token"):
        collect_activations(lm, ids, attention_mask=np.zeros_like(mask.numpy()))
    with pytest.raises(ValueError, match="names no input"):
        collect_activations(lm, {"input_ids": ids, "mask": mask}, attention_mask="msk")
    with pytest.raises(ValueError, match="no batches"):
        collect_activations(lm, [])


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    n=st.integers(1, 6),
    length=st.integers(1, 5),
    batch_size=st.integers(1, 7),
    seed=st.integers(0, 2**16),
    reduction=st.sampled_from(["last", "mean", "first", "all"]),
)
def test_property_any_mask_any_batch_size(lm, n, length, batch_size, seed, reduction):
    rng = np.random.default_rng(seed)
    ids = torch.tensor(rng.integers(0, 23, size=(n, length)))
    mask = rng.integers(0, 2, size=(n, length))
    mask[np.arange(n), rng.integers(0, length, size=n)] = 1  # a real token each
    with torch.no_grad():
        H = lm.eval()(ids, attention_mask=torch.tensor(mask), output_hidden_states=True)
    H = H.hidden_states[-1].double().numpy()
    acts = collect_activations(
        lm,
        {"input_ids": ids, "attention_mask": torch.tensor(mask)},
        layers=-1,
        reduction=reduction,
        batch_size=batch_size,
    )[2]
    real = [np.flatnonzero(mask[i]) for i in range(n)]
    if reduction == "last":
        expected = np.stack([H[i, r[-1]] for i, r in enumerate(real)])
    elif reduction == "mean":
        expected = np.stack([H[i, r].mean(0) for i, r in enumerate(real)])
    elif reduction == "first":
        expected = H[:, 0]
    else:
        expected = np.concatenate([H[i, r] for i, r in enumerate(real)])
    np.testing.assert_allclose(acts, expected, rtol=0, atol=1e-6)


def test_a_model_that_returns_no_hidden_states_is_named():
    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 2)

        def forward(self, x, output_hidden_states=False):
            return self.lin(x)

    with pytest.raises(ValueError, match="Tensor output has no 'hidden_states'"):
        collect_activations(Plain(), np.ones((3, 4), dtype=np.float32))
