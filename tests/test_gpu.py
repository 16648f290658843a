"""Checks on a CUDA device (``make gpu-check``); skipped where there is none.

Every estimator fits on the GPU, agrees with the same fit on the CPU within
float32 tolerance, and its pickle loads and predicts in a process that sees no GPU.
"""

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from skdnc import DeepRFMTransformer, NeuralCollapseScorer, RFMClassifier, RFMRegressor

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def data(balanced_digits):
    X, y = balanced_digits(60)
    return (X / 16.0).astype(np.float32), y


def _pair(make, X, y):
    gpu = make("cuda").fit(X, y)
    cpu = make("cpu").fit(X, y)
    return gpu, cpu


def test_rfm_classifier_on_cuda_matches_cpu(data):
    X, y = data
    make = lambda device: RFMClassifier(
        max_iter=2, dtype="float32", device=device, random_state=0
    )
    gpu, cpu = _pair(make, X, y)
    assert gpu.__sklearn_tags__().non_deterministic
    np.testing.assert_allclose(
        gpu.decision_function(X), cpu.decision_function(X), atol=2e-3
    )
    assert np.mean(gpu.predict(X) == cpu.predict(X)) > 0.99


def test_rfm_regressor_on_cuda_matches_cpu(data):
    X, y = data
    make = lambda device: RFMRegressor(
        max_iter=2, dtype="float32", device=device, random_state=0
    )
    gpu, cpu = _pair(make, X, y.astype(np.float32))
    np.testing.assert_allclose(gpu.predict(X), cpu.predict(X), atol=5e-3)


def test_deep_rfm_on_cuda_matches_cpu(data):
    X, y = data
    make = lambda device: DeepRFMTransformer(
        L=3, width=64, dtype="float32", device=device, random_state=0
    )
    gpu, cpu = _pair(make, X, y)
    np.testing.assert_allclose(gpu.transform(X), cpu.transform(X), atol=5e-3)
    np.testing.assert_allclose(
        gpu.collapse_history_["nc1_input"],
        cpu.collapse_history_["nc1_input"],
        rtol=1e-2,
    )


def test_scorer_on_gpu_features(data):
    X, y = data
    Z = torch.tensor(X, device="cuda")
    a = NeuralCollapseScorer().fit(Z.cpu().numpy(), y)
    assert np.isfinite(a.nc1_)


def test_gpu_pickle_loads_where_there_is_no_gpu(data, tmp_path):
    X, y = data
    clf = RFMClassifier(max_iter=1, device="cuda", random_state=0).fit(X, y)
    path = tmp_path / "clf.pkl"
    path.write_bytes(pickle.dumps(clf))
    np.save(tmp_path / "X.npy", X)
    expected = clf.predict(X)
    code = (
        "import pickle, warnings, numpy as np, torch\n"
        "assert not torch.cuda.is_available()\n"
        f"clf = pickle.loads(open({str(path)!r}, 'rb').read())\n"
        "with warnings.catch_warnings():\n"
        "    warnings.simplefilter('ignore', UserWarning)\n"
        f"    pred = clf.predict(np.load({str(tmp_path / 'X.npy')!r}))\n"
        f"np.save({str(tmp_path / 'pred.npy')!r}, pred)\n"
    )
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "pred.npy"), expected)
