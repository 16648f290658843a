"""
==========================================
The paper's theory against simulation
==========================================

Three results of the paper, checked numerically:

* **Proposition A.1**: the expected inner product of random ReLU features of two
  unit vectors has a closed form. It shows that the feature map shrinks distant
  pairs more than close ones, so it cannot collapse classes on its own.
* **Theorem 4.3**: in a linearised Deep RFM, the Gram matrix of the data
  contracts geometrically towards the label kernel :math:`y y^\\top` (collapse),
  down to a floor of order :math:`(\\lambda_k / \\lambda_\\Phi)^2`.
* **Theorem 4.4**: among kernels of equal trace, the label kernel
  :math:`y y^\\top` minimises the kernel ridge regression objective: collapse is
  optimal.

The functions used here live in ``skdnc._theory``.
"""

# %%
# Proposition A.1: random ReLU features
# -------------------------------------
# For unit vectors with :math:`x^\top y = r = \cos\theta` and
# :math:`W_{ij} \sim \mathcal N(0, 2/D)`,
#
# .. math:: \mathbb E\, \mathrm{ReLU}(Wx)^\top \mathrm{ReLU}(Wy)
#           = \frac{1}{\pi}\big(\sin\theta + (\pi - \theta)\cos\theta\big).
#
# We compare it with the average over 40 independent draws of Deep RFM's own
# feature map, 1,024 features wide.
import matplotlib.pyplot as plt
import numpy as np

from skdnc._theory import relu_kernel_closed_form, relu_kernel_monte_carlo

d = 20
cosines = np.linspace(-0.95, 0.95, 9)
means, sems = [], []
for r in cosines:
    x = np.zeros(d)
    x[0] = 1.0
    z = np.zeros(d)
    z[0], z[1] = r, np.sqrt(1 - r**2)
    mean, sem = relu_kernel_monte_carlo(x, z, width=1024, n_draws=40, random_state=0)
    means.append(mean)
    sems.append(sem)
means, sems = np.array(means), np.array(sems)
grid = np.linspace(-1, 1, 201)

fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 3.8))
ax0.plot(grid, relu_kernel_closed_form(grid), label="closed form (Prop. A.1)")
ax0.errorbar(cosines, means, yerr=3 * sems, fmt="o", label="Monte Carlo, 3 SEM")
ax0.plot(grid, grid, ":", color="gray", label="$r$ (no change)")
ax0.set_xlabel(r"$r = x^\top y$")
ax0.set_ylabel(r"$\mathbb{E}\,\Phi(x)^\top\Phi(y)$")
ax0.legend()

# Squared distances before and after the map (both points have unit norm, and
# E||Phi(x)||^2 = 1): 2 - 2r becomes 2 - 2k(r).
ax1.plot(2 - 2 * grid, 2 - 2 * relu_kernel_closed_form(grid))
ax1.plot([0, 4], [0, 4], ":", color="gray")
ax1.set_xlabel(r"$\|x - y\|^2$")
ax1.set_ylabel(r"$\mathbb{E}\,\|\Phi(x) - \Phi(y)\|^2$")
ax1.set_title("Distances shrink, nearby points least")
fig.tight_layout()
z_scores = (means - relu_kernel_closed_form(cosines)) / sems
print("Monte Carlo - closed form, in standard errors:", np.round(z_scores, 1))

# %%
# Both points keep unit norm on average (:math:`k(1) = 1`), and every pair gets
# closer (:math:`k(r) \ge r`), but unevenly: close pairs keep almost all of their
# distance while opposite ones lose half of theirs. Within-class pairs are the
# close ones, so relative to the distances between classes the within-class
# spread grows a little: NC1 rises slightly after the feature map, and without
# the AGOP it does not fall.
#
# Theorem 4.3: the linearised Deep RFM contracts to the label kernel
# ------------------------------------------------------------------
# The theorem replaces the kernel by :math:`X^\top X + \lambda_k I` and the
# feature map by one that adds :math:`\lambda_\Phi I` to the Gram matrix. It
# bounds the distance of the Gram matrix from :math:`y y^\top` at layer
# :math:`l+1` by :math:`(1-\epsilon)` times that at layer :math:`l`, plus
# :math:`O((\lambda_k/\lambda_\Phi)^2)`: a geometric contraction, faster for
# a smaller ratio :math:`\lambda_k/\lambda_\Phi` (a kernel closer to linear).
# We run the iteration on 30 samples in 60 dimensions (the theorem's regime
# :math:`d \ge n`) for three ratios. (On these data it contracts even below the
# theorem's floor.)
from skdnc._theory import linearized_deep_rfm

rng = np.random.default_rng(0)
labels = np.repeat(np.arange(3), 10)
X = rng.normal(size=(3, 60))[labels] + rng.normal(size=(30, 60))

fig, ax = plt.subplots(figsize=(6.5, 3.8))
for lambda_k in [0.01, 0.1, 1.0]:
    out = linearized_deep_rfm(X, labels, L=8, lambda_k=lambda_k, lambda_phi=1.0)
    ax.semilogy(
        out["distances"], "o-", label=rf"$\lambda_k/\lambda_\Phi$ = {lambda_k:g}"
    )
ax.set_xlabel("layer")
ax.set_ylabel(r"$\|\tilde X^\top \tilde X - y y^\top\|_2$")
ax.set_title("Linearised Deep RFM: geometric collapse")
ax.legend()
fig.tight_layout()

# %%
# The proof's rescaling :math:`\kappa`
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# The theorem rescales every layer by :math:`\kappa^{-1}`. With the paper's
# :math:`\kappa = 1 - 2\lambda_k(1 + \lambda_\Phi^{-1})` the iteration converges
# to a *multiple* of :math:`y y^\top` and the distance stalls at a level of order
# :math:`\lambda_k n`; the :math:`\kappa` that makes :math:`y y^\top` an exact
# fixed point (``kappa="fixed_point"``, the default) gives the contraction above.
# NC1 and NC2 are scale-invariant, so both describe collapse; only the distance to
# :math:`y y^\top` itself differs.
for kappa in ["fixed_point", "paper"]:
    out = linearized_deep_rfm(X, labels, L=8, lambda_k=0.1, lambda_phi=1.0, kappa=kappa)
    print(
        f"kappa={kappa!r:14} ({out['kappa']:.4f}):",
        np.array2string(out["distances"][1:], precision=2),
    )

# %%
# Theorem 4.4: the label kernel is optimal
# ----------------------------------------
# The optimal value of the kernel ridge regression objective for a kernel matrix
# :math:`K` is :math:`J(K) = \mu\,\mathrm{tr}\big(Y^\top (K + \mu I)^{-1} Y\big)`.
# Among 300 random positive semi-definite kernels with the trace of
# :math:`y y^\top`, none does better than :math:`y y^\top`.
from skdnc._theory import label_kernel_optimality

result = label_kernel_optimality(
    np.repeat(np.arange(5), 20), mu=0.1, n_kernels=300, random_state=0
)
fig, ax = plt.subplots(figsize=(6.5, 3.5))
ax.hist(result["random"], bins=30, color="tab:gray", label="random kernels")
ax.axvline(result["label"], color="tab:red", label=r"$y y^\top$")
ax.set_xlabel(r"$J(K)$ (lower is better)")
ax.set_ylabel("count")
ax.legend()
ax.set_title("The label kernel minimises the KRR objective")
fig.tight_layout()
print(
    f"J(yy') = {result['label']:.4f}; best random kernel: {result['random'].min():.4f}"
)
plt.show()
