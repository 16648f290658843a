"""
=====================================================================
Probing a CNN: collapse at every stage and the convolutional ansatz
=====================================================================

:mod:`skdnc.nn` probes any :class:`torch.nn.Module`, not only the MLPs of the
paper. Here a small convolutional network, written in plain PyTorch, is trained
on the 8x8 digits with cross-entropy and Adam in our own training loop, and
measured along the way with a :class:`~skdnc.nn.ProbeCallback`:

* **collapse at every stage** (:func:`~skdnc.nn.layer_collapse`): NC1 and NC2 of
  the output of any named module. A feature map ``(n, c, h, w)`` becomes vectors
  by a stated reduction: ``"flatten"`` (``c h w`` features) or ``"avgpool"``
  (global average pooling, ``c`` features);
* **the convolutional Neural Feature Ansatz** (:func:`~skdnc.nn.probe_network`):
  for a convolution with filters :math:`W` reshaped to :math:`c_{out} \\times
  c_{in} q r`, the correlation of :math:`W^\\top W` with the square root of the
  *patch AGOP*, the AGOP with respect to every :math:`c_{in} \\times q \\times r`
  input patch (Beaglehole et al., 2023). The baseline is the correlation of the
  trained :math:`W^\\top W` with the one at initialisation.

Everything streams over a :class:`~torch.utils.data.DataLoader`: class means and
scatter accumulate batch by batch in float64, so memory does not grow with the
number of samples.
"""

# %%
# Data, network and the probe
# ---------------------------
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from skdnc.datasets import load_dataset
from skdnc.nn import ProbeCallback

digits = load_dataset("digits", n_samples=1000, balanced=True, standardize=True)
X = torch.tensor(digits.data, dtype=torch.float32).reshape(-1, 1, 8, 8)
y = torch.as_tensor(digits.target)
train = DataLoader(
    TensorDataset(X, y),
    batch_size=64,
    shuffle=True,
    generator=torch.Generator().manual_seed(0),
)
probe_data = DataLoader(TensorDataset(X[:500], y[:500]), batch_size=250)

torch.manual_seed(0)
net = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1),
    nn.ReLU(),  # stage "1"
    nn.Conv2d(16, 32, 3, padding=1),
    nn.ReLU(),  # stage "3"
    nn.MaxPool2d(2),  # stage "4": 32 x 4 x 4
    nn.Conv2d(32, 32, 3, padding=1),
    nn.ReLU(),  # stage "6"
    nn.AdaptiveAvgPool2d(1),
    nn.Flatten(),  # stage "8": 32 features
    nn.Linear(32, 10),
)
initial = copy.deepcopy(net)
stages = ["1", "3", "4", "6", "8"]
convs = [("0", "1"), ("2", "3"), ("5", "6")]  # (convolution, its activation)

# %%
# Training in our own loop
# ------------------------
# The callback probes 500 of the images at epochs 0, 3, 6, ...: the NFA at the
# three convolutions, with the initial network as the baseline, and NC1/NC2 at
# the five stages with global average pooling.
callback = ProbeCallback(
    probe_data,
    every=3,
    layers=convs,
    collapse_layers=stages,
    reduction="avgpool",
    init_model=initial,
)
optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
for epoch in range(13):
    if epoch:
        net.train()
        for xb, yb in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            optimizer.step()
    callback(net, epoch)
with torch.no_grad():
    accuracy = float((net.eval()(X).argmax(1) == y).float().mean())
print(f"training accuracy: {accuracy:.3f}")

# %%
# Collapse at every stage
# -----------------------
# NC1 falls with depth and with training; NC2 (distance of the class means to a
# simplex ETF) too.
epochs = np.array(callback.epochs)
nc1 = callback.curve("nc1", collapse=True)
nc2 = callback.curve("nc2", collapse=True)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
for k, name in enumerate(stages):
    axes[0].semilogy(epochs, nc1[:, k], marker="o", label=f"stage {name}")
    axes[1].plot(epochs, nc2[:, k], marker="o", label=f"stage {name}")
axes[0].set(xlabel="epoch", ylabel="NC1 (avgpool)", title="NC1 by stage")
axes[1].set(xlabel="epoch", ylabel="NC2 (avgpool)", title="NC2 by stage")
axes[0].legend(fontsize=8)
fig.tight_layout()

# %%
# The convolutional Neural Feature Ansatz
# ---------------------------------------
# Solid: the correlation of :math:`W^\top W` with the square root of the patch
# AGOP. Dashed: with :math:`W^\top W` at initialisation.
nfa = callback.curve("nfa_correlation")
baseline = callback.curve("nfa_correlation_init")
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for k, (conv, _) in enumerate(convs):
    (line,) = ax.plot(epochs, nfa[:, k], marker="o", label=f"conv {conv}: NFA")
    ax.plot(
        epochs,
        baseline[:, k],
        ls="--",
        color=line.get_color(),
        label=f"conv {conv}: vs init",
    )
ax.set(xlabel="epoch", ylabel="correlation", title="Convolutional NFA")
ax.legend(fontsize=8)
fig.tight_layout()
for k, (conv, _) in enumerate(convs):
    print(
        f"conv {conv}: NFA {nfa[0, k]:.3f} at init -> {nfa[-1, k]:.3f} trained; "
        f"vs init CNFM {baseline[-1, k]:.3f}"
    )

# %%
# The SVD split at a convolution
# ------------------------------
# As for an MLP layer, NC1 of a convolution's input, of :math:`S V^\top` applied
# to every patch, and of its output (after the ReLU), in the last probe.
last = np.asarray(callback.probes[-1]["nc1"])
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for j, stage in enumerate(("input", "right", "output")):
    ax.bar(np.arange(len(convs)) + 0.25 * (j - 1), last[:, j], width=0.25, label=stage)
ax.set_xticks(range(len(convs)), [f"conv {c}" for c, _ in convs])
ax.set(ylabel="NC1 (avgpool)", yscale="log", title="NC1 by SVD stage, trained")
ax.legend()
fig.tight_layout()
plt.show()
