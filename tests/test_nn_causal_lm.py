"""make_causal_lm: a causal, mask-respecting transformer LM whose blocks and
hidden states are reachable by name, seeded without touching torch's global
generator."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils._param_validation import InvalidParameterError

from skdnc.nn import CausalLMOutput, make_causal_lm


def _lm(**kwargs):
    params = {"d_model": 16, "n_layers": 2, "n_heads": 2, "max_len": 12}
    params.update(kwargs)
    return make_causal_lm(
        11, random_state=params.pop("random_state", 0), **params
    ).eval()


def test_shapes_hidden_states_and_module_names():
    lm = _lm(n_layers=3)
    ids = torch.randint(0, 11, (4, 7), generator=torch.Generator().manual_seed(1))
    seen = {}
    modules = dict(lm.named_modules())
    handles = [
        modules[f"blocks.{i}"].register_forward_hook(
            lambda m, a, o, i=i: seen.__setitem__(i, o.detach().clone())
        )
        for i in range(3)
    ]
    with torch.no_grad():
        out = lm(ids, output_hidden_states=True)
    for h in handles:
        h.remove()
    assert isinstance(out, CausalLMOutput)
    assert out.logits.shape == (4, 7, 11)
    assert len(out.hidden_states) == 4
    for i in range(3):
        assert torch.equal(out.hidden_states[i + 1], seen[i])
    # the logits are the head of the last hidden state, by hand (a hook turns
    # off torch's fused fast path of the blocks: equal within float32 rounding)
    with torch.no_grad():
        by_hand = lm.lm_head(lm.norm(out.hidden_states[-1]))
        emb = lm.embed.weight[ids] + lm.position.weight[:7]
        torch.testing.assert_close(lm(ids), out.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(by_hand, out.logits, rtol=0, atol=0)
    torch.testing.assert_close(out.hidden_states[0], emb, rtol=0, atol=0)


def test_causal_a_later_token_never_changes_earlier_logits():
    lm = _lm()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
    other = ids.clone()
    other[0, 4] = 9
    with torch.no_grad():
        a, b = lm(ids), lm(other)
    assert torch.equal(a[:, :4], b[:, :4])
    assert not torch.allclose(a[:, 4:], b[:, 4:])


def test_padded_keys_are_never_attended():
    # Left padding: the real tokens come after the pads, so a causal model would
    # see the pads unless the mask hides them.
    lm = _lm()
    ids = torch.tensor([[0, 0, 3, 4, 5], [7, 8, 3, 4, 5]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]])
    with torch.no_grad():
        masked = lm(ids, attention_mask=mask)
        unmasked = lm(ids)
    assert torch.isfinite(masked).all()
    torch.testing.assert_close(masked[0, 2:], masked[1, 2:], rtol=0, atol=1e-5)
    assert (unmasked[0, 2:] - unmasked[1, 2:]).abs().max() > 1e-3


def test_seeded_build_is_reproducible_and_leaves_the_global_generator_alone():
    state = torch.random.get_rng_state()
    a, b, c = _lm(), _lm(), _lm(random_state=1)
    assert torch.equal(torch.random.get_rng_state(), state)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])
    assert sa["embed.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    assert torch.equal(sa["blocks.0.self_attn.in_proj_bias"], torch.zeros(48))


def test_greedy_generation_follows_the_argmax_of_the_logits():
    lm = _lm()
    prompt = torch.tensor([[1, 2], [3, 4]])
    out = lm.generate(prompt, 4, temperature=0)
    assert out.shape == (2, 6) and torch.equal(out[:, :2], prompt)
    with torch.no_grad():
        for t in range(2, 6):
            assert torch.equal(lm(out[:, :t])[:, -1].argmax(-1), out[:, t])
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(
        lm.generate(prompt, 5, generator=g1), lm.generate(prompt, 5, generator=g2)
    )


def test_learns_a_deterministic_sequence():
    lm = make_causal_lm(5, d_model=16, n_layers=1, n_heads=2, max_len=8, random_state=0)
    ids = torch.tensor([[0, 1, 2, 3, 4, 0, 1, 2]] * 4)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(
            lm(ids[:, :-1]).reshape(-1, 5), ids[:, 1:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05
    assert torch.equal(lm.generate(ids[:1, :2], 5, temperature=0), ids[:1, :7])


def test_bad_arguments():
    with pytest.raises(ValueError, match="multiple of n_heads"):
        make_causal_lm(10, d_model=10, n_heads=4)
    with pytest.raises(InvalidParameterError):
        make_causal_lm(0)
    lm = _lm()
    with pytest.raises(ValueError, match="max_len"):
        lm(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(n, tokens\)"):
        lm(torch.zeros(13, dtype=torch.long))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    vocab=st.integers(2, 30),
    heads=st.integers(1, 3),
    per_head=st.integers(1, 6),
    layers=st.integers(1, 3),
    n=st.integers(1, 4),
    length=st.integers(1, 8),
    cut=st.integers(1, 8),
)
def test_property_shapes_and_causality(vocab, heads, per_head, layers, n, length, cut):
    d = heads * per_head
    lm = make_causal_lm(
        vocab, d_model=d, n_layers=layers, n_heads=heads, max_len=8, random_state=0
    ).eval()
    ids = torch.randint(
        0, vocab, (n, length), generator=torch.Generator().manual_seed(n)
    )
    with torch.no_grad():
        out = lm(ids, output_hidden_states=True)
        prefix = lm(ids[:, : min(cut, length)])
    assert out.logits.shape == (n, length, vocab)
    assert [h.shape for h in out.hidden_states] == [(n, length, d)] * (layers + 1)
    assert torch.isfinite(out.logits).all()
    # a prefix's logits do not depend on what follows it
    torch.testing.assert_close(
        prefix, out.logits[:, : min(cut, length)], rtol=0, atol=1e-5
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    lm = _lm()
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        cpu = lm(ids)
        gpu = lm.to("cuda")(ids.to("cuda")).cpu()
    torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
