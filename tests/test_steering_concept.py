"""The gallery's steering claim on a smaller model with a fixed seed: along the
AGOP direction of a planted concept, the concept's output rate rises
monotonically in coef, and by more than along random directions of equal norm;
the model is bit-identical afterwards."""

import numpy as np
import pytest
import torch

from skdnc import AGOPDirections, RFMClassifier
from skdnc.nn import collect_activations, make_causal_lm, steer

FUNCTION = np.arange(2, 8)
TOPIC = {1: np.arange(8, 14), 0: np.arange(14, 20)}
VOCAB = 20
COEFS = (0.0, 3.0, 6.0, 12.0)


def _documents(n, length, rng):
    topic = rng.integers(0, 2, size=n)
    words = np.where(
        topic[:, None] == 1,
        rng.choice(TOPIC[1], (n, length)),
        rng.choice(TOPIC[0], (n, length)),
    )
    function = rng.choice(FUNCTION, (n, length))
    ids = np.where(rng.random((n, length)) < 0.5, function, words)
    ids[:, 0] = 1
    return ids, topic


@pytest.fixture(scope="module")
def trained():
    """A 2-block model trained on the two-topic language (one thread: the model
    is too small to gain from more, and a loaded machine makes them wait)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rng = np.random.default_rng(0)
        corpus = torch.tensor(_documents(800, 12, rng)[0])
        lm = make_causal_lm(
            VOCAB, d_model=24, n_layers=2, n_heads=2, max_len=12, random_state=0
        )
        optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
        order = torch.Generator().manual_seed(0)
        for _ in range(2):
            for rows in torch.randperm(len(corpus), generator=order).split(48):
                seq = corpus[rows]
                loss = torch.nn.functional.cross_entropy(
                    lm(seq[:, :-1]).reshape(-1, VOCAB), seq[:, 1:].reshape(-1)
                )
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        lm.eval()
        prompts, topic = _documents(300, 8, np.random.default_rng(1))
        prompts[:, -1] = rng.choice(FUNCTION, len(prompts))
        H = collect_activations(lm, torch.tensor(prompts), layers=["blocks.0"])
        yield lm, H["blocks.0"].astype(np.float64), topic
    finally:
        torch.set_num_threads(threads)


def _rate(lm, v, coef):
    prompts = torch.tensor(
        np.column_stack([np.ones(80, dtype=np.int64), np.tile(FUNCTION[:4], 20)])
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with steer(lm, {"blocks.0": torch.tensor(v)}, coef=coef):
            out = lm.generate(prompts, 8, generator=torch.Generator().manual_seed(0))
    finally:
        torch.set_num_threads(threads)
    return np.isin(out[:, 2:].numpy(), TOPIC[1]).mean()


def test_steering_along_the_agop_direction_beats_random(trained):
    lm, H, topic = trained
    median = np.median(np.linalg.norm(H[:, None] - H[None], axis=-1))
    rfm = RFMClassifier(
        kernel="gaussian",
        bandwidth=2 * median,
        reg=1.0,
        max_iter=3,
        validation_fraction=0,
    )
    v = AGOPDirections(rfm).fit(H, topic).components_[0]
    difference = H[topic == 1].mean(0) - H[topic == 0].mean(0)
    assert v @ difference / np.linalg.norm(difference) > 0.9  # the planted concept
    with torch.no_grad():
        ids = torch.tensor([[1, 2, 3, 4]])
        before = lm(ids)
    agop = [_rate(lm, v, c) for c in COEFS]
    random = np.random.default_rng(7).normal(size=(4, H.shape[1]))
    random /= np.linalg.norm(random, axis=1, keepdims=True)
    controls = np.mean([[_rate(lm, r, c) for c in COEFS] for r in random], axis=0)
    with torch.no_grad():
        assert torch.equal(lm(ids), before)
    assert np.all(np.diff(agop) > 0), agop
    assert agop[-1] - agop[0] > 0.2, agop
    assert agop[-1] - agop[0] > 2 * abs(controls[-1] - controls[0]) + 0.1, (
        agop,
        controls,
    )
