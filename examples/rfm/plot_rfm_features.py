"""
===========================================
An RFM learns which features are relevant
===========================================

A Recursive Feature Machine alternates kernel ridge regression with the Average
Gradient Outer Product (AGOP) of the fitted predictor,

.. math:: M \\leftarrow \\Big(\\frac{1}{n}\\sum_{i=1}^n \\sum_{c=1}^K
          \\nabla f_c(x_i)\\nabla f_c(x_i)^\\top\\Big)^{1/2},

and uses :math:`M` as the metric of its kernel
:math:`k_M(x, z) = \\exp(-\\|x - z\\|_M / L)`. The AGOP is large along the
directions the predictor is sensitive to and small along the others, so ``M``
stretches the relevant directions and shrinks the irrelevant ones.

We first recover the three relevant coordinates of a synthetic regression problem,
then look at the feature matrix learned on handwritten digits: its spectrum and its
diagonal, drawn as an 8x8 image.
"""

# %%
# Three relevant coordinates out of twenty
# ----------------------------------------
# The target depends on the first three of twenty Gaussian coordinates only.
# ``feature_importances_`` is the diagonal of the learned ``M_``, normalised to
# sum to one; ``history_`` is the validation :math:`R^2` after 0, 1, ... AGOP
# updates (``fit`` holds out ``validation_fraction`` of the data to choose their
# number, then refits on everything).
import matplotlib.pyplot as plt
import numpy as np

from skdnc import RFMClassifier, RFMRegressor

rng = np.random.default_rng(0)
X = rng.normal(size=(500, 20))
y = np.sin(2 * X[:, 0]) + X[:, 1] * X[:, 2]
X_train, X_test, y_train, y_test = X[:400], X[400:], y[:400], y[400:]

reg = RFMRegressor(bandwidth=5.0, max_iter=5, random_state=0).fit(X_train, y_train)
plain = RFMRegressor(bandwidth=5.0, max_iter=0).fit(X_train, y_train)
print(f"test R^2, kernel ridge regression (M = I): {plain.score(X_test, y_test):.3f}")
print(
    f"test R^2, RFM after {reg.best_iter_} AGOP updates: "
    f"{reg.score(X_test, y_test):.3f}"
)

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.5))
colors = ["tab:red"] * 3 + ["tab:gray"] * 17
ax0.bar(np.arange(20), reg.feature_importances_, color=colors)
ax0.set_xlabel("feature")
ax0.set_ylabel("diagonal of M (normalised)")
ax0.set_title("Relevant features (red) get the weight")
ax1.plot(reg.history_, "o-")
ax1.set_xlabel("number of AGOP updates")
ax1.set_ylabel("validation $R^2$")
ax1.set_title("Each update improves the predictor")
fig.tight_layout()

# %%
# Digits: the spectrum of M
# -------------------------
# On the 8x8 digits (64 pixels, 10 classes) the classifier codes each class as +1
# in its own output column and -1 elsewhere, as the paper does. With the default
# ``agop_power=0.5``, ``M_`` is the square root of the (max-normalised) AGOP;
# :meth:`~skdnc.RFMClassifier.agop` returns the AGOP of the final predictor itself.
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.data, digits.target, stratify=digits.target, random_state=0
)
clf = RFMClassifier(max_iter=3, random_state=0).fit(X_train, y_train)
print(
    f"test accuracy after {clf.best_iter_} AGOP updates: "
    f"{clf.score(X_test, y_test):.3f}"
)

agop = clf.agop()
eig_M = np.linalg.eigvalsh(clf.M_)[::-1][:50]
eig_agop = np.linalg.eigvalsh(agop)[::-1][:50]

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.semilogy(eig_agop / eig_agop[0], "o-", ms=3, label="AGOP of the final predictor")
ax.semilogy(eig_M / eig_M[0], "s-", ms=3, label="M_ (square root of an AGOP)")
ax.set_xlabel("index")
ax.set_ylabel("eigenvalue / largest")
ax.set_title("Top 50 eigenvalues on digits")
ax.legend()
fig.tight_layout()

# %%
# The AGOP's eigenvalues span several orders of magnitude: the predictor depends
# on a few dozen of the 64 pixel directions, and mostly on the first few. (Three
# pixels are blank in every image, so the last eigenvalues, not shown, are 0.)
# The square root in ``M_`` compresses the spectrum, which keeps the kernel from
# ignoring the weaker directions altogether.
#
# Digits: the diagonal of M as an image
# -------------------------------------
# The diagonal of ``M`` says how much each pixel matters to the predictor. The
# border pixels, which are blank in almost every image, get almost no weight; the
# weight concentrates on the strokes in the centre. The pixel variance, shown for
# comparison, is a property of the data alone; ``M`` is a property of the task.
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
panels = [
    (digits.images.mean(axis=0), "mean image"),
    (digits.data.var(axis=0).reshape(8, 8), "pixel variance"),
    (np.diag(clf.M_).reshape(8, 8), "diagonal of M_"),
]
for ax, (image, title) in zip(axes, panels):
    im = ax.imshow(image, cmap="viridis")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.colorbar(im, ax=ax, fraction=0.046)
fig.tight_layout()

# %%
# The top eigenvectors of ``M`` are the pixel patterns the classifier reads. Each
# is a direction in the 64-pixel space; the first few look like stroke detectors.
evals, evecs = np.linalg.eigh(clf.M_)
fig, axes = plt.subplots(1, 5, figsize=(10, 2.3))
for k, ax in enumerate(axes):
    ax.imshow(evecs[:, -1 - k].reshape(8, 8), cmap="RdBu_r")
    ax.set_title(f"eigenvector {k + 1}")
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
