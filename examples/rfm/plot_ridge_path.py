"""
==========================================================
Choosing the ridge in one fit: the validation curve
==========================================================

An RFM holds out part of its training data to choose how many AGOP updates to
keep. With ``reg="auto"`` (the default of :class:`~skdnc.RFMRegressor`) the same
split also chooses the ridge: on every round, the kernel machine is solved for
every ridge value of a grid, each solution is scored on the validation split,
and the best one gives the round's predictor and its AGOP. The whole curve
over rounds and ridge values comes out of a single fit, as
``validation_curve_``. Here we compare it with a
:class:`~sklearn.model_selection.GridSearchCV` over the same ridge values and
numbers of rounds, on a noisy regression problem.
"""

# %%
# One fit with ``reg="auto"``
# ---------------------------
# sklearn's diabetes data: ten features, 442 patients, and a target that the
# features explain only in part. On such noisy targets the near-interpolating
# ridge 1e-3 (the right one for separable classes) overfits. ``bandwidth="auto"``
# takes a multiple of the median distance between training points in the metric
# of each round (four medians for the regressor's Laplace kernel), so the
# bandwidth needs no scaling of ``X``.
import time

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.model_selection import GridSearchCV, ShuffleSplit, train_test_split

from skdnc import RFMRegressor

X, y = load_diabetes(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0
)

tic = time.perf_counter()
rfm = RFMRegressor(reg="auto", max_iter=3, n_iter_no_change=None, random_state=0)
rfm.fit(X_train, y_train)
auto_seconds = time.perf_counter() - tic
print(
    f"reg_={rfm.reg_:g}, {rfm.best_iter_} AGOP updates, bandwidth_={rfm.bandwidth_:.3g}"
)
print(f"test R^2 {rfm.score(X_test, y_test):.3f} in {auto_seconds:.2f} s")

# %%
# The same grid by GridSearchCV
# -----------------------------
# One 80/20 split, as the estimator holds out, and every pair of a ridge value
# and a number of AGOP updates refitted from scratch. ``validation_fraction=0``
# makes each candidate take exactly ``max_iter`` updates with its fixed ridge.
regs = list(rfm.reg_grid_)
rounds = list(range(4))
search = GridSearchCV(
    RFMRegressor(validation_fraction=0.0, random_state=0),
    {"reg": regs, "max_iter": rounds},
    cv=ShuffleSplit(n_splits=1, test_size=0.2, random_state=0),
)
tic = time.perf_counter()
search.fit(X_train, y_train)
search_seconds = time.perf_counter() - tic
best = search.best_params_
print(f"GridSearchCV: reg={best['reg']:g}, {best['max_iter']} AGOP updates")
print(f"test R^2 {search.score(X_test, y_test):.3f} in {search_seconds:.2f} s")
ratio = search_seconds / auto_seconds
print(f"{len(regs) * len(rounds)} refits, {ratio:.0f}x the time")

# %%
# The two curves
# --------------
# Row ``t`` of ``validation_curve_`` scores the ridge values tried after ``t``
# AGOP updates (in row 0 the largest value, every other one from the smallest,
# then the neighbours of the best; from row 1, the previous choice and its
# neighbours, widened while an edge of that window wins: blank cells were
# skipped), each update taken from the best ridge of the round before; the grid
# search refits every pair on its own, on its own 80/20 split, so the two need
# not pick the same cell; both put the best ridge far above 1e-3, at a small
# fraction of the grid search's time for the single fit.
scores = np.full((len(rounds), len(regs)), np.nan)
for params, score in zip(
    search.cv_results_["params"], search.cv_results_["mean_test_score"]
):
    scores[params["max_iter"], regs.index(params["reg"])] = score

fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True, layout="constrained")
panels = [
    (rfm.validation_curve_, f"one fit, reg='auto' ({auto_seconds:.2f} s)"),
    (scores, f"GridSearchCV, {scores.size} fits ({search_seconds:.1f} s)"),
]
top = max(np.nanmax(curve) for curve, _ in panels)
for ax, (curve, title) in zip(axes, panels):
    image = ax.imshow(np.clip(curve, 0, None), aspect="auto", vmin=0, vmax=top)
    t, j = np.unravel_index(np.nanargmax(curve), curve.shape)
    ax.plot(j, t, "r*", markersize=12)
    ax.set_xticks(range(len(regs))[::2], [f"{r:g}" for r in regs[::2]])
    ax.set_xlabel("ridge")
    ax.set_yticks(rounds)
    ax.set_title(title)
axes[0].set_ylabel("AGOP updates")
fig.colorbar(image, ax=axes, label="validation $R^2$")
plt.show()

# %%
# The same numbers as separate fits
# ---------------------------------
# Before any AGOP update the metric is the identity, so row 0 of
# ``validation_curve_`` is what separate fits with each fixed ridge score on the
# same validation split (the same ``random_state`` draws the same split): the
# values computed all in one fit are those of the separate solves (NaN: a value
# the coarse-to-fine search skipped).
separate = [
    RFMRegressor(reg=r, max_iter=1, n_iter_no_change=None, random_state=0)
    .fit(X_train, y_train)
    .history_[0]
    for r in regs
]
print("row 0 of validation_curve_:", np.round(rfm.validation_curve_[0], 4))
print("separate fixed-ridge fits: ", np.round(separate, 4))
