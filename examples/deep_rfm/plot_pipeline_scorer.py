"""
==================================================
Deep RFM in a pipeline, with collapse as a score
==================================================

The canonical use of skdnc is a scikit-learn pipeline: Deep RFM as the
representation, a Recursive Feature Machine as the readout (together, Algorithm 1
of the paper with an RFM as its last kernel machine), and in between a
pass-through step, :class:`~skdnc.NeuralCollapseScorer`, that records how
collapsed the training representation is.

Collapse can also be *scored* on held-out data:
:func:`~skdnc.make_collapse_scorer` turns NC1 (or NC2, the CDNV, or the
Gram / label-kernel correlation) into a ``scoring=`` callable for
:func:`~sklearn.model_selection.cross_val_score`,
:func:`~sklearn.model_selection.cross_validate` and
:class:`~sklearn.model_selection.GridSearchCV`. Like every scikit-learn score,
greater is better, so NC1 is returned negated.
"""

# %%
# The pipeline and its cross-validated accuracy
# ---------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import StratifiedKFold, cross_val_score, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skdnc import (
    DeepRFMTransformer,
    NeuralCollapseScorer,
    RFMClassifier,
    make_collapse_scorer,
)
from skdnc.datasets import load_dataset

X, y = load_dataset("digits", n_samples=600, balanced=True, return_X_y=True)
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)

pipe = Pipeline(
    [
        ("scale", StandardScaler()),
        ("deep_rfm", DeepRFMTransformer(L=4, width=256, random_state=0)),
        ("collapse", NeuralCollapseScorer()),
        ("rfm", RFMClassifier(bandwidth=2.0, max_iter=2, random_state=0)),
    ]
)
accuracy = cross_val_score(pipe, X, y, cv=cv)
print(f"Deep RFM + RFM accuracy: {accuracy.mean():.3f} +- {accuracy.std():.3f}")

baseline = Pipeline(
    [("scale", StandardScaler()), ("rfm", RFMClassifier(random_state=0))]
)
accuracy = cross_val_score(baseline, X, y, cv=cv)
print(f"RFM alone accuracy:      {accuracy.mean():.3f} +- {accuracy.std():.3f}")

# %%
# Training collapse and held-out collapse
# ---------------------------------------
# ``cross_validate`` accepts several scorers at once. ``"neg_nc1"`` maps each
# held-out fold through the fitted pipeline up to the classifier and measures NC1
# of that representation with the fold's labels. ``return_estimator=True`` keeps
# the fitted pipelines, whose ``collapse`` step holds NC1 of the *training*
# representation as ``nc1_``.
scoring = {
    "accuracy": "accuracy",
    "neg_nc1": make_collapse_scorer("nc1"),
    "neg_nc2": make_collapse_scorer("nc2"),
}
result = cross_validate(pipe, X, y, cv=cv, scoring=scoring, return_estimator=True)
train_nc1 = [est.named_steps["collapse"].nc1_ for est in result["estimator"]]
print("NC1 of the training representation:", np.round(train_nc1, 4))
print("NC1 of the held-out representation:", np.round(-result["test_neg_nc1"], 4))
print("NC2 of the held-out representation:", np.round(-result["test_neg_nc2"], 4))

# %%
# The training data collapse much further than held-out data: every layer's kernel
# machine is fitted to the training labels. Held-out collapse is the quantity
# that tracks generalisation.
#
# Choosing the depth by held-out collapse
# ---------------------------------------
# A grid search can use held-out NC1 as its criterion, here on the depth ``L``.
# ``refit`` names the score that picks the model.
from sklearn.model_selection import GridSearchCV

search = GridSearchCV(
    pipe,
    {"deep_rfm__L": [1, 2, 4]},
    cv=cv,
    scoring=scoring,
    refit="neg_nc1",
)
search.fit(X, y)
res = search.cv_results_
depths = res["param_deep_rfm__L"].astype(int)

fig, ax0 = plt.subplots(figsize=(6.5, 3.8))
ax0.semilogy(depths, -res["mean_test_neg_nc1"], "o-", color="tab:blue")
ax0.set_xlabel("Deep RFM depth L")
ax0.set_ylabel("held-out NC1", color="tab:blue")
ax1 = ax0.twinx()
ax1.plot(depths, res["mean_test_accuracy"], "s--", color="tab:orange")
ax1.set_ylabel("held-out accuracy", color="tab:orange")
ax1.set_ylim(0.9, 1.0)
ax0.set_xticks(depths)
ax0.set_title("Deeper Deep RFM: more collapse on held-out digits")
fig.tight_layout()
print("depth chosen by held-out NC1:", search.best_params_["deep_rfm__L"])
plt.show()
