"""steer: coef * v added where asked (against a forward pass written out here),
the model bit-identical afterwards (also after an exception), and bad vectors
refused before any forward pass."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.utils._param_validation import InvalidParameterError
from torch import nn

from skdnc.nn import collect_activations, make_causal_lm, steer


@pytest.fixture(scope="module")
def lm():
    return make_causal_lm(17, d_model=8, n_layers=2, n_heads=2, random_state=0).eval()


IDS = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])


def _by_hand(lm, ids, added):
    """The forward pass of CausalLM written out, with ``added[i]`` added to the
    output of block i."""
    with torch.no_grad():
        h = lm.embed(ids) + lm.position(torch.arange(ids.shape[1]))
        causal = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).triu(1)
        for i, block in enumerate(lm.blocks):
            h = block(h, src_mask=causal) + added.get(i, 0)
        return lm.lm_head(lm.norm(h))


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _no_hooks(model):
    return all(
        not m._forward_hooks and not m._forward_pre_hooks for m in model.modules()
    )


def test_adds_coef_times_v_to_the_named_output(lm):
    v = torch.linspace(-1, 1, 8)
    with torch.no_grad(), steer(lm, {"blocks.0": v}, coef=0.7):
        steered = lm(IDS)
    expected = _by_hand(lm, IDS, {0: 0.7 * v})
    torch.testing.assert_close(steered, expected, rtol=0, atol=1e-5)
    unsteered = _by_hand(lm, IDS, {})
    assert (steered - unsteered).abs().max() > 1e-2


def test_last_position_only(lm):
    v = torch.linspace(-1, 1, 8)  # not constant: the final LayerNorm removes that
    with torch.no_grad():
        before = _by_hand(lm, IDS, {})
        with steer(lm, {"blocks.1": v}, coef=3.0, positions="last"):
            steered = lm(IDS)
    added = torch.zeros(2, 5, 8)
    added[:, -1] = 3.0 * v
    torch.testing.assert_close(
        steered, _by_hand(lm, IDS, {1: added}), rtol=0, atol=1e-5
    )
    torch.testing.assert_close(steered[:, :-1], before[:, :-1], rtol=0, atol=1e-5)
    assert (steered[:, -1] - before[:, -1]).abs().max() > 1e-2


def test_bit_identical_after_exit(lm):
    with torch.no_grad():
        before, state = lm(IDS), _state(lm)
        with steer(lm, {"blocks.0": np.ones(8), "blocks.1": -np.ones(8)}, coef=5.0):
            inside = lm(IDS)
        after = lm(IDS)
    assert not torch.equal(inside, before)
    assert torch.equal(after, before)
    assert all(torch.equal(v, state[k]) for k, v in lm.state_dict().items())
    assert _no_hooks(lm) and not lm.training


def test_bit_identical_after_an_exception(lm):
    lm.train()
    with torch.no_grad():
        before = lm(IDS)
        with pytest.raises(RuntimeError, match="boom"):
            with steer(lm, {"blocks.1": torch.ones(8)}, coef=5.0):
                lm(IDS)
                raise RuntimeError("boom")
        after = lm(IDS)
    assert torch.equal(after, before)
    assert _no_hooks(lm) and lm.training
    lm.eval()


class _Counting(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


@pytest.mark.parametrize(
    "vectors, error, match",
    [
        ({"model.blocks.0": np.ones(7)}, ValueError, "has 7 entries.*8 features"),
        ({"model.lm_head": np.ones(8)}, ValueError, "has 8 entries.*17 features"),
        ({"model.blocks.5": np.ones(8)}, ValueError, "no submodule named"),
        ({"model.blocks.0": np.ones((2, 8))}, ValueError, "must be 1-D"),
        ({"model.blocks.0": np.full(8, np.nan)}, ValueError, "NaN"),
        ({"model.blocks.0": np.ones(8) * 1j}, TypeError, "complex"),
        ({"model.blocks.0": ["a"] * 8}, TypeError, "numbers"),
        ({}, ValueError, "at least one"),
    ],
)
def test_bad_vectors_refused_before_any_forward_pass(lm, vectors, error, match):
    counting = _Counting(lm)
    with pytest.raises(error, match=match):
        with steer(counting, vectors):
            counting(IDS)
    assert counting.calls == 0 and _no_hooks(lm)


def test_bad_parameters(lm):
    with pytest.raises(InvalidParameterError):
        steer(lm, {"blocks.0": np.ones(8)}, positions="first")
    with pytest.raises(InvalidParameterError):
        steer(lm, [np.ones(8)])


class _Block(nn.Module):
    """A block of unknown width returning a tuple, as Hugging Face blocks do."""

    def forward(self, x):
        return x * 2, "extra"


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Block()

    def forward(self, x):
        return self.block(x)[0].sum(-1)


def test_tuple_outputs_and_unknown_widths():
    net = _Net()
    x = torch.ones(2, 3, 4)
    with steer(net, {"block": torch.arange(4.0)}, coef=2.0):
        out = net(x)
    torch.testing.assert_close(out, torch.full((2, 3), 8.0 + 2.0 * 6.0))
    with pytest.raises(ValueError, match="has 3 entries.*4 features"):
        with steer(net, {"block": torch.ones(3)}):
            net(x)
    assert _no_hooks(net)


def test_convolution_channels():
    conv = nn.Sequential(nn.Conv2d(2, 3, 1))
    x = torch.randn(1, 2, 4, 4)
    with torch.no_grad():
        before = conv(x)
        with steer(conv, {"0": torch.tensor([1.0, 0.0, -1.0])}):
            after = conv(x)
    expected = before + torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(after, expected)


@settings(
    max_examples=20,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    coef=st.floats(-10, 10),
    seed=st.integers(0, 2**16),
    layer=st.sampled_from(["blocks.0", "blocks.1", "embed", "norm"]),
    positions=st.sampled_from(["all", "last"]),
)
def test_property_shift_then_exact_restore(lm, coef, seed, layer, positions):
    v = torch.randn(8, generator=torch.Generator().manual_seed(seed))
    module = lm.get_submodule(layer)

    def run():
        """The model's output and the module's (a hook registered last sees what
        every earlier hook returned)."""
        seen = []
        handle = module.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
        try:
            with torch.no_grad():
                return lm(IDS), seen[0] if seen else None
        finally:
            handle.remove()

    with torch.no_grad():
        before = lm(IDS)
    _, plain = run()
    with steer(lm, {layer: v}, coef=coef, positions=positions):
        _, steered = run()
    _, again = run()
    with torch.no_grad():
        after = lm(IDS)
    shift = steered - plain
    expected = torch.zeros_like(shift)
    expected[...] = coef * v
    if positions == "last":
        expected[:, :-1] = 0
    torch.testing.assert_close(shift, expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(again, plain) and torch.equal(after, before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steering_and_collection_match_cpu():
    cpu_lm = make_causal_lm(17, d_model=8, n_layers=2, n_heads=2, random_state=0)
    gpu_lm = make_causal_lm(17, d_model=8, n_layers=2, n_heads=2, random_state=0)
    gpu_lm = gpu_lm.to("cuda").eval()
    v = np.linspace(-1, 1, 8)
    with torch.no_grad():
        before = gpu_lm(IDS.cuda())
        with steer(gpu_lm, {"blocks.0": v}, coef=2.0):
            gpu = gpu_lm(IDS.cuda()).cpu()
        assert torch.equal(gpu_lm(IDS.cuda()), before)
        with steer(cpu_lm.eval(), {"blocks.0": v}, coef=2.0):
            cpu = cpu_lm(IDS)
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
    a = collect_activations(gpu_lm, IDS, reduction="mean")
    b = collect_activations(cpu_lm, IDS, reduction="mean")
    for key in b:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-4)
