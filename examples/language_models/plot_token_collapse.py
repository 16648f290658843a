"""
==========================================================
Token-level collapse of a small transformer language model
==========================================================

In a language model the classes are the tokens of the vocabulary: the hidden
state at position :math:`t` of a sequence is a sample whose label is the token at
:math:`t + 1`. Wu and Papyan (2024, *Linguistic Collapse*) measure neural collapse
this way, at vocabulary scale, and find that the hyperspherical uniformity of the
class means (GNC2) and the uniform duality of means and classifier rows (UNC3)
track generalisation better than the simplex-ETF forms of NC2 and NC3.

We train a character-level causal transformer on text that ships with
scikit-learn (the descriptions of its bundled data sets) and measure, at several
points of training, the token-level collapse of every block with
:func:`skdnc.nn.token_collapse`, which streams the statistics of each layer into a
:class:`skdnc.metrics.VocabularyAccumulator` (memory ``O(K d)`` per layer, whatever
the number of tokens or classes).
"""

# %%
# Text and model
# --------------
# The descriptions of six scikit-learn data sets make about 15,000 characters;
# each distinct character is a token. :func:`~skdnc.nn.make_causal_lm` builds a
# two-block pre-norm transformer of width 32; sequences of 32 characters are cut
# from the text at random offsets.
import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn import datasets

from skdnc import CollapseDisplay
from skdnc.nn import make_causal_lm, token_collapse

text = "".join(
    getattr(datasets, name)().DESCR
    for name in (
        "load_iris",
        "load_wine",
        "load_breast_cancer",
        "load_diabetes",
        "load_digits",
        "load_linnerud",
    )
)
vocab = sorted(set(text))
ids = torch.tensor([vocab.index(c) for c in text])
K, length = len(vocab), 32
print(f"{len(text)} characters, a vocabulary of K = {K} tokens")

model = make_causal_lm(
    K, d_model=32, n_layers=2, n_heads=2, max_len=length, random_state=0
)
generator = torch.Generator().manual_seed(0)


def windows(n):
    """``n`` random sequences of ``length`` characters."""
    start = torch.randint(0, len(ids) - length, (n,), generator=generator)
    return ids[start[:, None] + torch.arange(length)]


# A fixed set of sequences to measure on, with the last quarter of every second
# sequence padded: the attention mask keeps the padding out of the statistics.
measure_ids = windows(128)
mask = torch.ones_like(measure_ids)
mask[::2, 3 * length // 4 :] = 0
measure = {"input_ids": measure_ids * mask, "attention_mask": mask}

# %%
# Training with measurements
# --------------------------
# Adam on the next-token cross-entropy. Every so often
# :func:`~skdnc.nn.token_collapse` measures the outputs of both blocks and of the
# final layer norm (the features the classifier ``lm_head`` reads); characters
# seen fewer than 5 times in the measured positions are left out (``min_count``).
layers = ["blocks.0", "blocks.1", "norm"]
optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
checkpoints = (0, 50, 150, 400)
probes, unc3, losses = {}, {}, []
for step in range(checkpoints[-1] + 1):
    if step in checkpoints:
        probe = token_collapse(
            model, measure, n_classes=K, layers=layers, min_count=5, batch_size=64
        )
        probes[step] = probe
        unc3[step] = probe.accumulators[-1].unc3(model.lm_head.weight)
    if step == checkpoints[-1]:
        break
    batch = windows(16)
    logits = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, K), batch[:, 1:].reshape(-1)
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
print(f"cross-entropy: {np.mean(losses[:20]):.2f} -> {np.mean(losses[-20:]):.2f} nats")

# %%
# Collapse by layer through training
# ----------------------------------
# One panel per metric, one line per checkpoint, the layers on the horizontal
# axis: NC1 (:math:`\mathrm{tr}\,\Sigma_W / \mathrm{tr}\,\Sigma_B`), CDNV
# (Galanti et al.'s squared-distance form), the equinorm (coefficient of
# variation of the centred class-mean norms) and GNC2 (the variance of the
# log inverse distance between normalised centred means).
#
# At initialisation the token means are close to random vectors in 32
# dimensions: far from collapsed (large NC1 and CDNV) but already almost
# uniformly spread (small GNC2). Training first pulls the means out of that
# random geometry (GNC2 jumps), then spreads them again while the within-class
# variability falls: CDNV and the equinorm decrease at every layer from one
# checkpoint to the next, and NC1 drops in the first steps.
metrics = ("nc1", "cdnv", "nc2_equinorm", "gnc2")
display = CollapseDisplay(
    layers=np.arange(1, len(layers) + 1),
    values={
        m: {f"step {s}": probes[s].metrics[m] for s in checkpoints} for m in metrics
    },
    title="token-level collapse (layer 1, 2: blocks; 3: final norm)",
).plot()
plt.show()

# %%
# The numbers
# -----------
# The table of the last checkpoint, one row per layer, and UNC3 at the final
# norm through training: the variance over tokens of
# :math:`\langle w_c, \mu_c - \mu_G\rangle` between the classifier rows
# ``lm_head.weight`` and the centred class means of the features it reads.
print(probes[checkpoints[-1]].to_frame()[list(metrics) + ["n_tokens"]])
for s in checkpoints:
    print(f"step {s:4d}: UNC3 at the final norm {unc3[s]:.3g}")
