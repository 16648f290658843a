"""
=========================================
Tuning an RFM with GridSearchCV
=========================================

:class:`~skdnc.RFMClassifier` is a scikit-learn estimator: it clones, it goes in a
:class:`~sklearn.pipeline.Pipeline`, and its parameters can be searched with
:class:`~sklearn.model_selection.GridSearchCV`. Here we search the kernel bandwidth
:math:`L` and the power of the AGOP that becomes the metric ``M``, on standardised
digits.
"""

# %%
# The search
# ----------
# The bandwidth is measured in the units of the features, so the features are
# standardised first. ``validation_fraction=0`` makes every fit take exactly
# ``max_iter`` AGOP updates (by default an RFM holds out part of its training data to
# choose that number itself).
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skdnc import RFMClassifier

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, train_size=600, stratify=y, random_state=0
)

pipe = make_pipeline(
    StandardScaler(),
    RFMClassifier(max_iter=2, validation_fraction=0.0, random_state=0),
)
param_grid = {
    "rfmclassifier__bandwidth": [1.0, 3.0, 10.0, 30.0],
    "rfmclassifier__agop_power": [0.5, 1.0],
}
search = GridSearchCV(pipe, param_grid, cv=3, error_score="raise")
search.fit(X_train, y_train)
print("best parameters:", search.best_params_)
print(f"cross-validated accuracy: {search.best_score_:.3f}")
print(f"held-out test accuracy:   {search.score(X_test, y_test):.3f}")

# %%
# The scores across the grid
# --------------------------
# ``cv_results_`` holds one row per parameter combination.
bandwidths = param_grid["rfmclassifier__bandwidth"]
powers = param_grid["rfmclassifier__agop_power"]
scores = np.empty((len(powers), len(bandwidths)))
for params, score in zip(
    search.cv_results_["params"], search.cv_results_["mean_test_score"]
):
    i = powers.index(params["rfmclassifier__agop_power"])
    j = bandwidths.index(params["rfmclassifier__bandwidth"])
    scores[i, j] = score

fig, ax = plt.subplots(figsize=(6, 3))
im = ax.imshow(scores, cmap="viridis")
ax.set_xticks(range(len(bandwidths)), [f"{b:g}" for b in bandwidths])
ax.set_yticks(range(len(powers)), [f"{p:g}" for p in powers])
ax.set_xlabel("bandwidth L")
ax.set_ylabel("agop_power")
for i in range(len(powers)):
    for j in range(len(bandwidths)):
        ax.text(j, i, f"{scores[i, j]:.3f}", ha="center", va="center", color="w")
ax.set_title("Mean cross-validated accuracy")
fig.colorbar(im, ax=ax)
fig.tight_layout()

# %%
# Letting the RFM choose its number of iterations
# -----------------------------------------------
# With the default ``validation_fraction=0.2`` each fit chooses the number of AGOP
# updates in ``0..max_iter`` on a stratified hold-out and reports the validation
# accuracy of every round in ``history_``; the search then only has to cover the
# kernel.
best = search.best_estimator_.named_steps["rfmclassifier"]
clf = make_pipeline(
    StandardScaler(),
    RFMClassifier(
        bandwidth=best.bandwidth, agop_power=best.agop_power, max_iter=4, random_state=0
    ),
).fit(X_train, y_train)
rfm = clf.named_steps["rfmclassifier"]
print("validation accuracy per round:", np.round(rfm.history_, 3))
print(f"chosen number of AGOP updates: {rfm.best_iter_}")
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")
plt.show()
