"""
========================================================
Two questions of fidelity: the NC2 floor and the cos map
========================================================

Two observations of Deep RFM that the paper does not discuss, measured on the
digits (see the user guide's section on them for the figures at larger scale):

* **NC2 levels off.** NC1 of the layer inputs keeps falling, but NC2 stops at a
  floor. The floor is the Monte-Carlo error of the random feature map: it scales
  as :math:`1/\\sqrt{D}` with the width :math:`D` (so the reference code's mean
  squared entry, :math:`\\mathrm{NC2}^2/K^2`, scales as :math:`1/D`).
* **The cos map does not collapse at the paper's settings.** The map
  :math:`\\sqrt{2/D}\\cos(W M^{1/2} x + b)` is not homogeneous: what it does to
  the classes depends on the *absolute* scale of :math:`M^{1/2} x` in units of
  the kernel's :math:`1/\\gamma`, which the AGOP's normalisation and the width set.
  With the AGOP divided by its largest entry (the paper's code), the collapse of
  :math:`M^{1/2} X` shows up as class means moving apart rather than classes
  shrinking, and the cos map, which saturates for distant pairs, turns that into
  a plateau of NC1. Normalising the AGOP to trace :math:`D` and keeping
  :math:`\\gamma D` fixed (about 5) makes NC1 fall geometrically.
"""

# %%
# The NC2 floor against the width
# -------------------------------
# Deep RFM with ReLU features on 300 digits, 10 layers, for four widths. The
# figure shows NC2 (Frobenius) of the layer inputs; the right panel, its mean
# over the last three layers against the width, with a line :math:`c/\sqrt{D}`.
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import NullFormatter

from skdnc import DeepRFMTransformer
from skdnc.datasets import load_dataset

digits = load_dataset("digits", n_samples=300, balanced=True, standardize=True)
X, y = digits.data, digits.target
L = 8
layers = np.arange(1, L + 1)

widths = (64, 128, 256, 512)
floors = []
fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
for width in widths:
    drfm = DeepRFMTransformer(L=10, width=width, random_state=0).fit(X, y)
    nc2 = drfm.collapse_history_["nc2_input"]
    floors.append(nc2[-3:].mean())
    axes[0].plot(np.arange(1, 11), nc2, marker="o", markersize=3, label=f"D = {width}")
axes[0].set(xlabel="layer", ylabel="NC2 of the layer inputs", yscale="log")
axes[0].legend()
floors = np.array(floors)
c = np.exp(np.mean(np.log(floors * np.sqrt(widths))))
axes[1].loglog(widths, floors, "o", label="mean of the last 3 layers")
axes[1].loglog(widths, c / np.sqrt(widths), "--", label=f"{c:.1f} / sqrt(D)")
axes[1].set(xlabel="width D", ylabel="NC2 floor")
axes[1].set_xticks(widths, [str(w) for w in widths])
axes[1].xaxis.set_minor_formatter(NullFormatter())
axes[1].legend()
fig.tight_layout()
print("NC2 floor x sqrt(D):", np.round(floors * np.sqrt(widths), 1))

# %%
# The cos map: the AGOP's scale decides
# -------------------------------------
# Random Fourier features of :math:`\exp(-\gamma\|x - z\|_1)`. With the paper's
# :math:`\gamma = 0.05` and the AGOP divided by its largest entry (the reference
# code's normalisation, skdnc's default), NC1 of the layer inputs stalls at width
# 1024 (at the paper's 4096 it stays above 1); without normalisation it keeps
# falling; normalised to trace :math:`D` with :math:`\gamma D = 5` it falls
# geometrically, here at width 256.
settings = {
    "max entry, gamma = 0.05, D = 1024": {"agop_normalization": "max", "width": 1024},
    "none, gamma = 0.05, D = 256": {"agop_normalization": None, "width": 256},
    "trace D, gamma = 5 / D, D = 256": {
        "agop_normalization": "trace",
        "width": 256,
        "gamma": 5 / 256,
    },
}
fig, ax = plt.subplots(figsize=(5.5, 3.6))
for label, params in settings.items():
    params = {"gamma": 0.05, **params}
    drfm = DeepRFMTransformer(L=L, feature_map="cos", random_state=0, **params)
    nc1 = drfm.fit(X, y).collapse_history_["nc1_input"]
    ax.plot(layers, nc1, marker="o", markersize=3, label=label)
    print(f"{label}: NC1 " + " ".join(f"{v:.2g}" for v in nc1))
ax.set(xlabel="layer", ylabel="NC1 of the layer inputs", yscale="log")
ax.set_title("Deep RFM with cos features, 300 digits")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()
