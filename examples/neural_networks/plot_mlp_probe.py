"""
=====================================================
Probing an MLP: the SVD split and the feature ansatz
=====================================================

Section 5 of the paper asks where a trained network reduces within-class
variability. A hidden layer maps its input :math:`\\Phi(X)` to
:math:`\\sigma(W \\Phi(X))`; with the singular value decomposition
:math:`W = U S V^\\top` this is three steps: :math:`S V^\\top` (the right singular
structure), the rotation :math:`U`, and the non-linearity :math:`\\sigma`. NC1 is
invariant to the rotation, so the collapse of a layer is split between
:math:`S V^\\top` and the ReLU. The paper finds that :math:`S V^\\top` does most of
it, and that :math:`W^\\top W` (which :math:`S V^\\top` determines) is strongly
correlated with the square root of the layer's AGOP: the Neural Feature Ansatz
(NFA).

We train a small bias-free MLP on 500 digits with :mod:`skdnc.nn` and measure both.
"""

# %%
# Training with measurements
# --------------------------
# :func:`~skdnc.nn.make_mlp` builds the paper's bias-free ReLU MLP (a small
# initialisation, ``init_scale``, puts it in the feature-learning regime where the
# NFA holds). :func:`~skdnc.nn.train_network` trains it with SGD on the mean
# squared error to :math:`\pm 1` one-hot targets and calls
# :func:`~skdnc.nn.probe_network` every ``measure_every`` epochs.
import matplotlib.pyplot as plt
import numpy as np

from skdnc.datasets import load_dataset
from skdnc.nn import make_mlp, probe_network, train_network

digits = load_dataset("digits", n_samples=500, balanced=True, standardize=True)
X, y = digits.data, digits.target

net = make_mlp(64, 10, width=128, depth=5, init_scale=0.3, random_state=0)
initial_nfm = [
    (layer[0].weight.T @ layer[0].weight).detach().double().numpy()
    for layer in net.head_layers
]
history = train_network(
    net,
    X,
    y,
    epochs=1500,
    lr=0.2,
    batch_size=128,
    measure_every=100,
    device="cpu",
    random_state=0,
    progress=False,
)
print(f"training accuracy: {history.accuracy[-1]:.3f}, MSE: {history.loss[-1]:.4f}")

# %%
# Where does NC1 fall?
# --------------------
# For each of the five hidden layers, NC1 of its input :math:`\Phi(X)`, of
# :math:`S V^\top \Phi(X)` and of its output :math:`\sigma(U S V^\top \Phi(X))`.
# Because :math:`U` is orthogonal, :math:`S V^\top \Phi(X)` has the NC1 of the
# pre-activation :math:`W \Phi(X)`.
probe = probe_network(net, X, y)
n_layers = len(probe.layer_names)
positions = np.arange(n_layers)
labels = [r"input $\Phi(X)$", r"$SV^\top\Phi(X)$", r"output $\sigma(USV^\top\Phi(X))$"]

fig, ax = plt.subplots(figsize=(8, 3.8))
for k, label in enumerate(labels):
    ax.bar(positions + (k - 1) * 0.27, probe.nc1[:, k], width=0.27, label=label)
ax.set_yscale("log")
ax.set_xticks(positions, [f"layer {l + 1}" for l in positions])
ax.set_ylabel("NC1")
ax.legend()
ax.set_title("Each layer's NC1, split by its singular value decomposition")
fig.tight_layout()
print(f"share of the log-NC1 reduction due to S V': {probe.right_share:.2f}")

# %%
# The right singular structure accounts for most of the reduction of log NC1
# summed over the layers; the ReLU adds comparatively little, and at the last
# layer it can even undo some of it.
#
# The Neural Feature Ansatz
# -------------------------
# The probe also correlates the neural feature matrix :math:`W_l^\top W_l` with
# :math:`\mathrm{AGOP}_l^{1/2}`, the square root of the average gradient outer
# product of the network's outputs with respect to the layer's input (Pearson
# correlation of the matrix entries, as in the paper).
#
# Read the values against the start of training (epoch 0): the AGOP of layer
# :math:`l` is :math:`W_l^\top G_l W_l` for a width-by-width :math:`G_l`, so it
# shares the structure of :math:`W_l^\top W_l` already at initialisation, and the
# correlation starts high. The ansatz is that it *stays* high while training
# moves :math:`W_l^\top W_l` far from where it started.
nfa = history.curve("nfa_correlation")
fig, ax = plt.subplots(figsize=(7, 3.8))
for l in range(n_layers):
    ax.plot(history.epochs, nfa[:, l], label=f"layer {l + 1}")
ax.set_xlabel("epoch")
ax.set_ylabel(r"corr$(W_l^\top W_l, \mathrm{AGOP}_l^{1/2})$")
ax.legend(ncol=2)
ax.set_title("NFA correlation during training")
fig.tight_layout()
print("final NFA correlation per layer:", np.round(probe.nfa_correlation, 3))
print("with the AGOP itself:           ", np.round(probe.nfa_correlation_agop, 3))
moved = [
    np.linalg.norm((layer[0].weight.T @ layer[0].weight).detach().double().numpy() - A0)
    / np.linalg.norm(A0)
    for layer, A0 in zip(net.head_layers, initial_nfm)
]
print("relative change of W'W in training: ", np.round(moved, 1))

# %%
# The correlation dips while the network sits on the plateau of its small
# initialisation and rises when it starts to fit the data, while
# :math:`W_l^\top W_l` moves two to four times its initial norm away from where it
# started.
#
# The two matrices, for the second hidden layer
# ---------------------------------------------
# :func:`~skdnc.nn.layer_agops` returns the AGOPs themselves.
# :func:`~skdnc.nn.nfa_correlation` is the statistic; with ``centered=False`` it
# is the uncentred cosine used in some earlier work.
from skdnc.nn import layer_agops, nfa_correlation

agop = layer_agops(net, X)[1].numpy()
evals, evecs = np.linalg.eigh(agop)
sqrt_agop = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
W = net.head_layers[1][0].weight.detach().double().numpy()
nfm = W.T @ W
print(
    f"Pearson: {nfa_correlation(nfm, sqrt_agop):.3f}, "
    f"cosine: {nfa_correlation(nfm, sqrt_agop, centered=False):.3f}"
)

order = np.argsort(np.diag(nfm))[::-1][:40]
fig, axes = plt.subplots(1, 2, figsize=(8, 3.8))
for ax, (matrix, title) in zip(
    axes, [(nfm, r"$W^\top W$"), (sqrt_agop, r"$\mathrm{AGOP}^{1/2}$")]
):
    ax.imshow(matrix[np.ix_(order, order)], cmap="viridis")
    ax.set_title(title + " (40 largest units)")
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()

# %%
# Collapse during training
# ------------------------
# The paper's Figure 10 shows :math:`\mathrm{tr}\,\Sigma_W / \mathrm{tr}\,\Sigma_T`
# and :math:`\mathrm{tr}\,\Sigma_B / \mathrm{tr}\,\Sigma_T` of the last hidden
# layer, with :math:`\Sigma_T = \Sigma_W + \Sigma_B`.
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(
    history.epochs, history.curve("within_share"), label=r"tr$\Sigma_W$/tr$\Sigma_T$"
)
ax.plot(
    history.epochs, history.curve("between_share"), label=r"tr$\Sigma_B$/tr$\Sigma_T$"
)
ax.set_xlabel("epoch")
ax.legend()
ax.set_title("Last hidden layer")
fig.tight_layout()

# %%
# The same measurements as a scikit-learn step
# --------------------------------------------
# :class:`~skdnc.NFAProbe` wraps the probe in a pass-through transformer: its
# ``fit(X, y)`` stores the per-layer measurements as fitted attributes and its
# ``transform`` returns ``X`` unchanged. It also accepts a fitted RFM or Deep RFM
# in place of a network.
from skdnc import NFAProbe

nfa_probe = NFAProbe(net).fit(X, y)
print("NFA correlation per layer:", np.round(nfa_probe.nfa_correlation_, 3))
print(f"share of the log-NC1 reduction due to S V': {nfa_probe.svd_share_:.2f}")
plt.show()
