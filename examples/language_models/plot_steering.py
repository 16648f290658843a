"""
=====================================================================
Detecting and steering a concept in a small language model with RFM
=====================================================================

Beaglehole et al. (2025) fit a Recursive Feature Machine to a language model's
hidden states with a concept label, take the top eigenvector of its AGOP as the
*concept direction*, detect the concept from the projections, and steer the
model by adding a multiple of the direction to a layer's output while it
generates. This example runs the whole workflow on a transformer trained here,
in pure torch, on a synthetic language with a planted concept:

* :func:`~skdnc.nn.make_causal_lm` builds the model;
* :func:`~skdnc.nn.collect_activations` reads the last real token's hidden
  state at every layer from padded batches;
* :func:`~skdnc.probe_layers` scores a probe per layer and a detector stacked
  over layers;
* :class:`~skdnc.AGOPDirections` gives the concept direction;
* :func:`~skdnc.nn.steer` adds ``coef * v`` to a block's output during
  generation; the mean difference of the classes, a logistic regression's
  weights and a random direction, all of the same norm, are the controls.
"""

# %%
# A language with two topics
# --------------------------
# Every document is about one of two topics, *sport* or *kitchen*: each token is
# a function word (half of the time) or a word of the document's topic. The
# topic is the concept: nothing but the context tells which one a document is
# about, so a model that predicts the next word well has to represent it.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from skdnc import AGOPDirections, RFMClassifier, probe_layers
from skdnc.nn import collect_activations, make_causal_lm, steer

PAD, BOS = 0, 1
FUNCTION = ["the", "a", "and", "is", "with", "very", "of", "to"]
SPORT = ["ball", "goal", "team", "match", "coach", "score", "player", "field"]
KITCHEN = ["salt", "bread", "oven", "soup", "pan", "sugar", "knife", "spice"]
WORDS = ["<pad>", "<s>", *FUNCTION, *SPORT, *KITCHEN]
function_ids = np.arange(2, 2 + len(FUNCTION))
sport_ids = function_ids[-1] + 1 + np.arange(len(SPORT))
kitchen_ids = sport_ids[-1] + 1 + np.arange(len(KITCHEN))


def documents(n, length, rng):
    """``n`` token sequences and their topic (1: sport, 0: kitchen)."""
    topic = rng.integers(0, 2, size=n)
    words = np.where(
        topic[:, None] == 1,
        rng.choice(sport_ids, (n, length)),
        rng.choice(kitchen_ids, (n, length)),
    )
    ids = np.where(
        rng.random((n, length)) < 0.5, rng.choice(function_ids, (n, length)), words
    )
    ids[:, 0] = BOS
    return ids, topic


rng = np.random.default_rng(0)
corpus, _ = documents(1600, 16, rng)
print(" ".join(WORDS[i] for i in corpus[0]))

# %%
# Train the model
# ---------------
# A 3-block causal transformer with a 32-wide residual stream, two passes of
# next-token prediction. Given the topic, a token's entropy is
# :math:`\log 2 + \frac12 \log 8 + \frac12 \log 8 \approx 2.77` nats, the best
# loss possible once the topic is known.
lm = make_causal_lm(
    len(WORDS), d_model=32, n_layers=3, n_heads=4, max_len=16, random_state=0
)
optimizer = torch.optim.AdamW(lm.parameters(), lr=3e-3)
order = torch.Generator().manual_seed(0)
tokens = torch.tensor(corpus)
losses = []
for epoch in range(2):
    for batch in torch.randperm(len(tokens), generator=order).split(64):
        seq = tokens[batch]
        logits = lm(seq[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, len(WORDS)), seq[:, 1:].reshape(-1)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
lm.eval()
print(f"last training loss {np.mean(losses[-10:]):.3f} nats per token")

# %%
# Hidden states at every layer
# ----------------------------
# Prompts of 4 to 10 tokens, right-padded into one batch with an attention mask,
# each ending with a function word (so that the last token itself does not name
# the topic). :func:`~skdnc.nn.collect_activations` keeps the hidden state of
# the last *real* token of each prompt at every layer (0 is the embeddings, then
# the output of each block); padded positions never enter.
prompts, topic = documents(400, 10, np.random.default_rng(1))
lengths = np.random.default_rng(2).integers(4, 11, size=len(prompts))
prompts[np.arange(len(prompts)), lengths - 1] = rng.choice(function_ids, len(prompts))
mask = (np.arange(10)[None] < lengths[:, None]).astype(np.int64)
prompts[mask == 0] = PAD
batch = {"input_ids": torch.tensor(prompts), "attention_mask": torch.tensor(mask)}
hidden = collect_activations(lm, batch, reduction="last", batch_size=200)
print({layer: H.shape for layer, H in hidden.items()})

# %%
# A probe per layer, and one stacked over layers
# ----------------------------------------------
# An :class:`~skdnc.RFMClassifier` per layer, scored by 3-fold cross-validation,
# and a logistic regression on the layers' out-of-fold probe outputs. The
# embeddings of a function word say nothing of the topic; from the first block
# on, the context has been read.
probes = probe_layers(hidden, topic, cv=3, random_state=0)
print(probes.to_frame().round(3))
probes.plot(title="Detecting the topic from the last token")

# %%
# The concept direction
# ---------------------
# At the output of the second block (hidden state 2), the top eigenvector of
# the AGOP of an RFM fitted to the topic. A concept direction should say how the
# prediction *changes* with the concept, not how an interpolating fit bends
# around single prompts: the ridge is set large enough (``reg=1``) that the
# kernel machine does not interpolate, and the Gaussian kernel's bandwidth is
# twice the median distance between hidden states. The topic is so well
# separated that a validation split would find ``M = I`` as accurate as any
# learned ``M`` and keep it (the directions would then come from the AGOP of
# that first kernel machine alone), so the RFM makes three AGOP updates
# unchecked (``validation_fraction=0``). With
# the defaults (``reg=1e-3``) the top component had a cosine of only 0.1 to
# 0.3 with the mean difference here. The controls: the difference
# of the class means and a logistic regression's weights, normalised, and
# four random unit vectors. The printed AUC is that of the projection alone on
# held-out prompts, and ``cos`` its cosine with the AGOP direction.
layer = 2
H = hidden[layer].astype(np.float64)
train, test = np.arange(300), np.arange(300, 400)
median = np.median(np.linalg.norm(H[train, None] - H[None, train], axis=-1))
rfm = RFMClassifier(
    kernel="gaussian", bandwidth=2 * median, reg=1.0, max_iter=3, validation_fraction=0
)
agop = AGOPDirections(rfm, n_components=2).fit(H[train], topic[train])
difference = H[train][topic[train] == 1].mean(0) - H[train][topic[train] == 0].mean(0)
logistic = LogisticRegression(max_iter=1000).fit(H[train], topic[train]).coef_[0]
directions = {
    "AGOP (RFM)": agop.components_[0],
    "mean difference": difference / np.linalg.norm(difference),
    "logistic regression": logistic / np.linalg.norm(logistic),
}
random = np.random.default_rng(5).normal(size=(4, H.shape[1]))
random /= np.linalg.norm(random, axis=1, keepdims=True)
for name, v in [*directions.items(), ("random (first of 4)", random[0])]:
    auc = roc_auc_score(topic[test], H[test] @ v)
    cosine = v @ directions["AGOP (RFM)"]
    print(f"{name:>20}: held-out AUC of the projection {auc:.3f}, cos {cosine:+.3f}")
print("AGOP eigenvalue shares:", agop.explained_ratio_.round(3))

# %%
# Steering generation
# -------------------
# Neutral prompts (``<s>`` and two function words) are continued by 10 sampled
# tokens, with ``coef * v`` added to the output of ``blocks.1`` (the block whose
# output is hidden state 2) at every position. The measured concept rate is the
# share of generated tokens that are sport words; the draws are the same for
# every direction and coefficient. :func:`~skdnc.nn.steer` removes its hooks on
# leaving the ``with`` block, so the model is unchanged afterwards.
neutral = np.column_stack(
    [np.full(64, BOS), np.random.default_rng(3).choice(function_ids, (64, 2))]
)
neutral = torch.tensor(neutral)
coefs = [0.0, 4.0, 8.0, 16.0]


def sport_rate(v, coef):
    with steer(lm, {f"blocks.{layer - 1}": torch.tensor(v)}, coef=coef):
        out = lm.generate(neutral, 10, generator=torch.Generator().manual_seed(0))
    return np.isin(out[:, 3:].numpy(), sport_ids).mean()


rates = {name: [sport_rate(v, c) for c in coefs] for name, v in directions.items()}
rates["random (mean of 4)"] = np.mean(
    [[sport_rate(v, c) for c in coefs] for v in random], axis=0
)
for name, values in rates.items():
    print(f"{name:>20}: " + "  ".join(f"{r:.2f}" for r in values))

fig, ax = plt.subplots(figsize=(5.5, 3.6), layout="constrained")
for name, values in rates.items():
    ax.plot(coefs, values, marker="o", label=name)
ax.set_xlabel("coef (unit-norm directions)")
ax.set_ylabel("share of sport words generated")
ax.set_title("Steering the topic at blocks.1")
ax.grid(alpha=0.3)
ax.legend(fontsize=8)

# %%
# Along the AGOP direction the sport rate rises with every step of ``coef``,
# as along the mean difference it nearly equals; random directions of the same
# norm move it far less (a random vector in 32 dimensions still has some
# cosine with the concept, of either sign). Two continuations of the same
# neutral prompts, without and with steering:
with torch.no_grad():
    plain = lm.generate(neutral[:2], 10, generator=torch.Generator().manual_seed(1))
    with steer(lm, {"blocks.1": torch.tensor(directions["AGOP (RFM)"])}, coef=16.0):
        steered = lm.generate(
            neutral[:2], 10, generator=torch.Generator().manual_seed(1)
        )
for seq in (*plain, *steered):
    print(" ".join(WORDS[i] for i in seq))
