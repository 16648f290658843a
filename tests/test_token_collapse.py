"""skdnc.nn.token_collapse: next-token and per-token labels, attention masks,
dict inputs, hidden_states tuples and DataLoaders of dicts, against formulas
written here on hidden states computed by hand."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from skdnc.nn import TokenCollapseProbe, token_collapse

V, D = 9, 6


class TinyLM(nn.Module):
    """An embedding, two linear blocks and a head, with a Hugging Face-like
    signature and output (a dict with logits and hidden states)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(V, D)
        self.block1 = nn.Linear(D, D)
        self.block2 = nn.Linear(D, D)
        self.head = nn.Linear(D, V)

    def forward(self, input_ids, attention_mask=None):
        h0 = self.embed(input_ids)
        h1 = torch.tanh(self.block1(h0))
        h2 = torch.tanh(self.block2(h1))
        return {"logits": self.head(h2), "hidden_states": (h0, h1, h2)}


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return TinyLM().double()


def _ids(seed=0, n=24, t=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, t), generator=g)
    lengths = torch.randint(4, t + 1, (n,), generator=g)
    lengths[0] = t
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return ids * mask, mask  # padding id 0


def _cdnv_and_nc1(H, labels):
    """CDNV (squared distance) and tr Sigma_W / tr Sigma_B, by the formulas."""
    classes = np.unique(labels)
    means = np.array([H[labels == c].mean(axis=0) for c in classes])
    var = np.array(
        [
            np.sum((H[labels == c] - m) ** 2) / np.sum(labels == c)
            for c, m in zip(classes, means)
        ]
    )
    K = len(classes)
    pairs = [
        (var[i] + var[j]) / 2 / np.sum((means[i] - means[j]) ** 2)
        for i in range(K)
        for j in range(i + 1, K)
    ]
    within = sum(np.sum((H[labels == c] - m) ** 2) for c, m in zip(classes, means))
    between = np.mean(np.sum((means - means.mean(axis=0)) ** 2, axis=1))
    return np.mean(pairs), within / len(H) / between


def _next_token_rows(states, ids, mask):
    H, ids, mask = states.numpy(), ids.numpy(), mask.numpy().astype(bool)
    keep = mask[:, :-1] & mask[:, 1:]
    return H[:, :-1][keep], ids[:, 1:][keep]


def test_next_token_collapse_of_hidden_states_equals_the_formula(lm):
    ids, mask = _ids()
    probe = token_collapse(
        lm,
        {"input_ids": ids, "attention_mask": mask},
        n_classes=V,
        layers=["block1"],
        hidden_states="hidden_states",
        output_fn=None,
        batch_size=7,
    )
    assert isinstance(probe, TokenCollapseProbe)
    assert probe.layer_names == [
        "block1",
        "hidden_states.0",
        "hidden_states.1",
        "hidden_states.2",
    ]
    with torch.no_grad():
        states = lm(ids)["hidden_states"]
    for k, h in enumerate(states):
        X, y = _next_token_rows(h, ids, mask)
        cdnv, nc1 = _cdnv_and_nc1(X, y)
        row = probe.layer_names.index(f"hidden_states.{k}")
        assert probe.metrics["cdnv"][row] == pytest.approx(cdnv, rel=1e-10)
        assert probe.metrics["nc1"][row] == pytest.approx(nc1, rel=1e-10)
        assert probe.n_tokens[row] == len(y)
    # the hook on block1 sees its pre-tanh output
    with torch.no_grad():
        pre = lm.block1(lm.embed(ids))
    X, y = _next_token_rows(pre, ids, mask)
    assert probe.metrics["cdnv"][0] == pytest.approx(_cdnv_and_nc1(X, y)[0], rel=1e-10)
    frame = probe.to_frame()
    assert list(frame.index) == probe.layer_names
    assert set(probe.to_dict()) >= {"nc1", "cdnv", "gnc2", "nc2_equinorm"}


def test_the_attention_mask_is_used(lm):
    ids, mask = _ids(seed=1)
    inputs = {"input_ids": ids, "attention_mask": mask}
    kw = {"n_classes": V, "hidden_states": "hidden_states"}
    masked = token_collapse(lm, inputs, **kw)
    ignored = token_collapse(lm, inputs, attention_mask=None, **kw)
    assert (ignored.n_tokens > masked.n_tokens).all()
    assert not np.allclose(ignored.metrics["cdnv"], masked.metrics["cdnv"], rtol=1e-3)
    # a mask given as a callable, on tensor input, gives the masked result
    as_callable = token_collapse(
        lambda_model(lm), ids, attention_mask=lambda x: (x != 0).long() | 1, **kw
    )
    assert as_callable.n_tokens[0] == ignored.n_tokens[0]


def lambda_model(lm):
    class Wrap(nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids):
            return self.lm(input_ids)

    return Wrap()


def test_dataloader_of_dicts_with_hf_labels(lm):
    """Hugging Face batches: labels are the input ids with -100 at padding; the
    shift gives the next-token classes, -100 is skipped."""
    ids, mask = _ids(seed=2)
    labels = ids.masked_fill(mask == 0, -100)
    batches = [
        {"input_ids": ids[a : a + 5], "labels": labels[a : a + 5]}
        for a in range(0, len(ids), 5)
    ]
    from_labels = token_collapse(
        lm, batches, n_classes=V, hidden_states="hidden_states"
    )
    masked = token_collapse(
        lm,
        {"input_ids": ids, "attention_mask": mask},
        n_classes=V,
        hidden_states="hidden_states",
    )
    # labels at the padding are skipped; the states at t are kept when t + 1 is
    # real, which masks the same positions for right padding
    np.testing.assert_array_equal(from_labels.n_tokens, masked.n_tokens)
    np.testing.assert_allclose(
        from_labels.metrics["cdnv"], masked.metrics["cdnv"], rtol=1e-12
    )


def test_per_token_labels(lm):
    ids, _ = _ids(seed=3)
    y = (ids + 1) % V  # any per-position classes
    probe = token_collapse(
        lm, ids, y, n_classes=V, hidden_states="hidden_states", target="token"
    )
    with torch.no_grad():
        h = lm(ids)["hidden_states"][2].numpy()
    cdnv, _ = _cdnv_and_nc1(h.reshape(-1, D), y.numpy().reshape(-1))
    assert probe.metrics["cdnv"][2] == pytest.approx(cdnv, rel=1e-10)


def test_bad_input(lm):
    ids, _ = _ids()
    with pytest.raises(ValueError, match="Name what to measure"):
        token_collapse(lm, ids, n_classes=V)
    with pytest.raises(ValueError, match="tuple of tensors"):
        token_collapse(lm, ids, n_classes=V, hidden_states="logits")
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        token_collapse(lm, ids, n_classes=5, hidden_states="hidden_states")
    with pytest.raises(ValueError, match="target"):
        token_collapse(lm, ids, n_classes=V, layers="head", target="previous")
    flat = nn.Sequential(nn.Embedding(V, D), nn.Flatten(), nn.Linear(11 * D, V))
    with pytest.raises(ValueError, match=r"\(batch, tokens, dim\)"):
        token_collapse(flat, ids, n_classes=V, layers=["2"])


@settings(derandomize=True, max_examples=8, deadline=None)
@given(batch_size=st.integers(1, 24), seed=st.integers(0, 3))
def test_property_batching_does_not_change_the_result(batch_size, seed):
    torch.manual_seed(seed)
    model = TinyLM().double()
    ids, mask = _ids(seed=seed)
    inputs = {"input_ids": ids, "attention_mask": mask}
    kw = {"n_classes": V, "hidden_states": "hidden_states", "min_count": 2}
    one = token_collapse(model, inputs, batch_size=24, **kw)
    many = token_collapse(model, inputs, batch_size=batch_size, **kw)
    for key, values in one.metrics.items():
        np.testing.assert_allclose(many.metrics[key], values, rtol=1e-10, err_msg=key)


def test_parameters_and_empty_data_are_refused_early(lm):
    ids, _ = _ids()
    with pytest.raises(ValueError, match="n_classes must be at least 2"):
        token_collapse(lm, ids, n_classes=1, hidden_states="hidden_states")
    with pytest.raises(ValueError, match="no batches"):
        token_collapse(lm, [], n_classes=V, hidden_states="hidden_states")
