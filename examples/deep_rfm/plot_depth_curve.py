"""
=================================================
Held-out accuracy against depth, and ``L="auto"``
=================================================

Deep RFM collapses the *training* classes layer by layer (the paper's claim; see
:ref:`sphx_glr_auto_examples_deep_rfm_plot_deep_rfm_collapse.py`). A pipeline's
user also needs *held-out* accuracy, and the two part ways: once the
training set has collapsed, the layers have little left to teach a classifier,
and what they removed can be what the test set needed.

This example fits one Deep RFM of 8 layers on a training split of digits, reads
the representation after every layer with
:meth:`~skdnc.DeepRFMTransformer.transform_layers`, and scores on the test split
the kernel machine of the next layer (Laplace, bandwidth 2, ridge ``1e-3``,
``M = I``): the readout that ``L="auto"`` uses to choose the depth on a
validation split. Beside it, NC1 of the training representation. The sizes are
tiny so that the example runs in seconds; the user guide gives the curves
of ``benchmarks/bench_pipeline.py`` on all of digits and on 784-pixel images.
"""

# %%
# One Deep RFM, every depth
# -------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import train_test_split

from skdnc import DeepRFMTransformer, RFMClassifier
from skdnc.datasets import load_dataset

X, y = load_dataset("digits", n_samples=500, balanced=True, return_X_y=True)
X = X.astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.3, stratify=y, random_state=0
)
deep = DeepRFMTransformer(L=8, width=128, random_state=0).fit(X_train, y_train)


def unit_rows(Z):
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


# Depth 0 is the row-normalised input; depth k the normalised output of layer k.
train_layers = deep.transform_layers(X_train)
test_layers = deep.transform_layers(X_test)
features = [(unit_rows(X_train), unit_rows(X_test))] + [
    (unit_rows(a["output"]), unit_rows(b["output"]))
    for a, b in zip(train_layers, test_layers)
]
kernel_machine = {"max_iter": 0, "bandwidth": 2.0, "reg": 1e-3, "random_state": 0}
accuracy = [
    RFMClassifier(**kernel_machine).fit(F_train, y_train).score(F_test, y_test)
    for F_train, F_test in features
]
alone = RFMClassifier(random_state=0).fit(X_train, y_train).score(X_test, y_test)
print("test accuracy by depth:", np.round(accuracy, 3).tolist())
print(f"RFMClassifier() alone: {alone:.3f}")

# %%
# The depth that ``L="auto"`` chooses
# -----------------------------------
# The default ``L="auto"`` holds out a fifth of the training data and scores the
# representation after each layer there with the next layer's kernel machine. A
# deeper layer is taken only when it is clearly better, by more than two standard
# errors of the paired per-sample difference, and the best depth is refitted on
# all of the data. ``n_layers_`` and ``validation_scores_`` record the choice.
auto = DeepRFMTransformer(width=128, random_state=0).fit(X_train, y_train)
print(f"L='auto' chose {auto.n_layers_} layers; validation accuracy by depth:")
print(np.round(auto.validation_scores_, 3).tolist())

# %%
# Accuracy and collapse against depth
# -----------------------------------
depths = np.arange(len(accuracy))
nc1 = deep.collapse_history_["nc1_input"]  # NC1 of the input of layers 1..8
fig, ax = plt.subplots(figsize=(6.4, 4))
ax.plot(depths, accuracy, "o-", label="test accuracy, next layer's kernel machine")
ax.axhline(alone, color="gray", ls="--", label="RFMClassifier() alone")
ax.axvline(auto.n_layers_, color="C2", ls=":", label='depth chosen by L="auto"')
ax.set_xlabel("depth (layers of Deep RFM)")
ax.set_ylabel("test accuracy")
ax2 = ax.twinx()
ax2.semilogy(depths[:-1], nc1, "s-", color="C3", alpha=0.6, label="training NC1")
ax2.set_ylabel("NC1 of the training representation")
lines = ax.get_legend_handles_labels()
lines2 = ax2.get_legend_handles_labels()
ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
ax.set_title("Deep RFM on digits: collapse is not accuracy")
fig.tight_layout()
plt.show()
