"""Data-parallel fits on a torch.distributed process group, and model selection on
a Dask cluster.

The process-group tests spawn two Gloo processes on the loopback address once
(importing torch in a fresh process costs seconds) and run every check there; the
expected values are the same estimators fitted here in this single process.
"""

import os
import pickle
import socket
import time
import traceback
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score

import skdnc._rfm_core
from skdnc import DeepRFMTransformer, RFMClassifier, RFMRegressor
from skdnc._distributed import DistributedFitError, check_call, row_shard, world
from skdnc._kernels import Kernel
from skdnc._solvers import fit_kernel_regression

#: Seconds a collective may wait for a rank before the process group gives up
#: (the backstop; a reported error ends the wait at once).
PG_TIMEOUT = 30
CG = {"solver": "cg", "solver_params": {"tol": 1e-11, "rank": 100}}


def _digits(n):
    X, y = load_digits(return_X_y=True)
    return X[:n] / 16.0, y[:n]


def _synthetic(n=240, d=8):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, d))
    return X, np.sin(X[:, 0]) + 0.5 * X[:, 1] * X[:, 2]


def _estimators():
    """(name, estimator, X, y, X_test) of the equality checks."""
    Xd, yd = _digits(360)
    Xs, ys = _synthetic()
    common = {"random_state": 0, "dtype": "float64", **CG}
    return [
        (
            "classifier",
            RFMClassifier(max_iter=2, agop_samples=150, **common),
            Xd[:300],
            yd[:300],
            Xd[300:],
        ),
        (
            "regressor",
            RFMRegressor(bandwidth=5.0, max_iter=2, centering=True, **common),
            Xs[:200],
            ys[:200],
            Xs[200:],
        ),
        (
            "nystrom_classifier",
            RFMClassifier(
                max_iter=2,
                agop_samples=150,
                n_centers=120,
                solver="falkon",
                solver_params={"tol": 1e-11},
                random_state=0,
                dtype="float64",
            ),
            Xd[:300],
            yd[:300],
            Xd[300:],
        ),
        (
            "nystrom_regressor",  # reg="auto": the grid from one normal matrix
            RFMRegressor(
                bandwidth=5.0,
                max_iter=2,
                n_centers=80,
                solver="nystrom",
                random_state=0,
                dtype="float64",
            ),
            Xs[:200],
            ys[:200],
            Xs[200:],
        ),
        (
            "deep_rfm",
            DeepRFMTransformer(L=3, width=48, agop_samples=120, **common),
            Xd[:250],
            yd[:250],
            Xd[250:],
        ),
    ]


#: A budget (bytes) in which the rank-100 preconditioner of 300 points fits but a
#: rank's 150 rows of the kernel matrix do not beside it: CG recomputes its rows
#: in blocks of about 37.
BLOCKED_BUDGET = 900_000


def _blocked_solve(comm=None, budget=BLOCKED_BUDGET):
    """Dual coefficients of a CG solve on 300 digits (kernel in blocks by
    default)."""
    X, y = _digits(300)
    X = torch.tensor(X)
    Y = torch.nn.functional.one_hot(torch.tensor(y)).to(X.dtype)
    return fit_kernel_regression(
        X,
        Y,
        None,
        Kernel("laplace", 10.0),
        1e-3,
        solver="cg",
        budget=budget,
        solver_params=CG["solver_params"],
        comm=comm,
    ).numpy()


def _outputs(name, est, X_test):
    """The fitted attributes and predictions compared between the fits."""
    if name == "deep_rfm":
        return {
            "agop_powers_": np.concatenate([P.ravel() for P in est.agop_powers_]),
            "weights_": np.concatenate([W.ravel() for W in est.weights_]),
            "nc1": est.collapse_history_["nc1_output"],
            "transform": est.transform(X_test),
        }
    out = {"M_": est.M_, "dual_coef_": est.dual_coef_, "n_iter_": est.n_iter_}
    if name == "classifier":
        out["predict"] = est.decision_function(X_test)
        out["agop"] = est.agop()
    else:
        out["predict"] = est.predict(X_test)
    return out


def _failing_agop(*args, **kwargs):
    raise ArithmeticError("deliberate failure in the AGOP of rank 1")


def _record_error(results, key, fn):
    tic = time.monotonic()
    try:
        fn()
        results[key] = None
    except Exception as exc:  # noqa: BLE001 - recorded for the parent to check
        results[key] = (type(exc).__name__, str(exc), time.monotonic() - tic)


def _init_group(rank, port, timeout=PG_TIMEOUT):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=timeout),
    )


def _worker(rank, ports, out_dir):
    """One rank: every distributed check, results pickled for the parent."""
    torch.set_num_threads(1)
    results = {}
    try:
        _init_group(rank, ports[0])
        comm = world()
        results["world"] = (comm.rank, comm.size, world(False))
        for name, est, X, y, X_test in _estimators():
            results[name] = _outputs(name, est.fit(X, y), X_test)
        results["blocked"] = _blocked_solve(comm)
        X, y = _digits(100)
        auto = RFMClassifier(
            max_iter=1, solver_params=CG["solver_params"], random_state=0
        )
        results["solver_auto"] = auto.fit(X, y).dual_coef_
        _record_error(
            results,
            "cholesky",
            lambda: RFMClassifier(solver="cholesky").fit(X, y),
        )
        # Rank 1 passes its own half of the rows: refused on both ranks.
        shard = slice(None) if rank == 0 else slice(50, None)
        _record_error(
            results,
            "shard",
            lambda: RFMClassifier(max_iter=1, **CG).fit(X[shard], y[shard]),
        )
        # Rank 1's data fail validation before any collective.
        X_bad = X.copy()
        if rank == 1:
            X_bad[3, 5] = np.nan
        _record_error(
            results,
            "bad_input",
            lambda: RFMClassifier(max_iter=1, **CG).fit(X_bad, y),
        )
        # A failed fit leaves a collective pending on the other ranks: the group
        # is re-created (as after any failed collective).
        dist.destroy_process_group()
        _init_group(rank, ports[1])
        # Rank 1 raises in the middle of the fit, while rank 0 waits in the
        # AGOP's all-reduce.
        if rank == 1:
            skdnc._rfm_core.kernel_agop = _failing_agop
        _record_error(
            results,
            "mid_fit",
            lambda: DeepRFMTransformer(L=2, width=16, **CG).fit(X, y),
        )
    except Exception:  # noqa: BLE001 - reported to the parent
        results["crash"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    # A rank whose collective was abandoned still has it pending in Gloo; leave
    # without waiting for it.
    os._exit(0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn_ranks(worker, port_arg, out_dir, seconds):
    """Run ``worker(rank, port_arg, out_dir)`` on two spawned processes and return
    the results each pickled into ``out_dir``; the test fails (and the ranks are
    killed) after ``seconds``, so that a hang cannot block the suite."""
    context = mp.start_processes(
        worker,
        args=(port_arg, str(out_dir)),
        nprocs=2,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + seconds
    while not context.join(timeout=1):
        if time.monotonic() > deadline:  # a hang: end the ranks and fail
            for process in context.processes:
                process.kill()
            pytest.fail("the distributed ranks did not finish")
    results = []
    for rank in range(2):
        with open(out_dir / f"rank{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
        assert "crash" not in results[-1], results[-1]["crash"]
    return results


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The results of the two ranks (dicts), from one spawn of two processes."""
    out_dir = tmp_path_factory.mktemp("ranks")
    ports = (_free_port(), _free_port())
    return _spawn_ranks(_worker, ports, out_dir, 6 * PG_TIMEOUT)


def _assert_close(actual, expected, rtol=1e-6):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    assert np.isfinite(expected).all()
    scale = max(np.abs(expected).max(), np.finfo(float).tiny)
    assert np.abs(actual - expected).max() <= rtol * scale


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.integers(0, 1000), st.integers(1, 70))
def test_row_shards_cover_the_rows_once(n, size):
    """The ranks' rows, in rank order, are range(n): each row once, in order, in
    chunks that differ by at most one chunk's worth."""
    rows = [range(n)[row_shard(n, r, size)] for r in range(size)]
    assert [i for part in rows for i in part] == list(range(n))
    assert max(map(len, rows)) == -(-n // size)


def test_single_process_has_no_comm():
    assert world() is None and world(False) is None
    with pytest.raises(ValueError, match="distributed must be"):
        world("yes")
    with pytest.raises(ValueError, match="distributed"):
        RFMClassifier(distributed="always").fit(*_digits(60))


def test_ranks_see_the_group(ranks):
    assert [r["world"] for r in ranks] == [(0, 2, None), (1, 2, None)]


@pytest.mark.parametrize(
    "name",
    ["classifier", "regressor", "deep_rfm", "nystrom_classifier", "nystrom_regressor"],
)
def test_two_ranks_fit_the_single_process_model(ranks, name):
    """M_, dual_coef_ and predictions of the 2-rank fit are those of one process
    (float64, same random_state), and both ranks hold the same model."""
    ((_, est, X, y, X_test),) = [e for e in _estimators() if e[0] == name]
    expected = _outputs(name, est.fit(X, y), X_test)
    for rank in ranks:
        assert rank[name].keys() == expected.keys()
        for key, value in expected.items():
            _assert_close(rank[name][key], value)
            np.testing.assert_array_equal(rank[name][key], ranks[0][name][key])


def test_two_ranks_solve_with_the_kernel_in_blocks(ranks):
    """Each rank recomputing its rows of the kernel in blocks gives the solve of
    one process holding the whole kernel."""
    expected = _blocked_solve(budget=2**30)
    for rank in ranks:
        _assert_close(rank["blocked"], expected)


def test_cholesky_is_refused_on_a_group(ranks):
    """solver="auto" takes conjugate gradients on 2 ranks; "cholesky" raises."""
    X, y = _digits(100)
    single = RFMClassifier(max_iter=1, random_state=0, **CG).fit(X, y)
    for rank in ranks:
        _assert_close(rank["solver_auto"], single.dual_coef_)
    for rank in ranks:
        kind, message, _ = rank["cholesky"]
        assert kind == "ValueError" and "solver='cholesky'" in message


def test_every_rank_must_pass_the_same_data(ranks):
    for rank in ranks:
        kind, message, _ = rank["shard"]
        assert kind == "ValueError"
        assert "rank 1's differ from rank 0's" in message
        assert "(50, 64) against (100, 64)" in message


def test_a_failing_rank_fails_the_others(ranks):
    """Rank 1 fails (bad data, and an error mid-fit); rank 0 raises too, naming
    rank 1, well before the process group's timeout."""
    assert ranks[1]["bad_input"][0] == "ValueError"
    assert ranks[1]["mid_fit"][0] == "ArithmeticError"
    for case, kind in (("bad_input", "ValueError"), ("mid_fit", "ArithmeticError")):
        name, message, seconds = ranks[0][case]
        assert name == DistributedFitError.__name__
        assert message.startswith(
            f"Rank 1 of 2 failed during the distributed fit with {kind}"
        )
        assert seconds < PG_TIMEOUT / 2


def _torch_threads():
    return torch.get_num_threads()


def test_cross_validation_on_a_dask_cluster():
    """cross_val_score with n_jobs=2 on two Dask worker processes (one torch
    thread each) gives the scores of n_jobs=1."""
    distributed = pytest.importorskip("distributed")
    joblib = pytest.importorskip("joblib")
    X, y = _digits(300)
    clf = RFMClassifier(max_iter=1, random_state=0, dtype="float64")
    expected = cross_val_score(clf, X, y, cv=3, n_jobs=1)
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            env={"OMP_NUM_THREADS": "1"},
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        assert set(client.run(_torch_threads).values()) == {1}
        with joblib.parallel_backend("dask"):
            scores = cross_val_score(clf, X, y, cv=3, n_jobs=2)
    assert np.isfinite(expected).all() and expected.min() > 0.8
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-12)


# -- every rank makes the same call (issue 25, class 8) -------------------------------
# Ranks that make different calls, or the same call with different parameters or
# data shapes, raise a ValueError on every rank naming the rank and the
# difference, instead of waiting in mismatched collectives for the process
# group's timeout; a call made on one rank alone ends at that timeout with a
# message that says so. A short timeout and a deadline on the processes make a
# hang fail the test instead of blocking the suite.
#: The process group's timeout of the call checks (seconds): short, so that the
#: call on one rank alone ends soon.
CALL_TIMEOUT = 8
CALL_CG = {
    "solver": "cg",
    "solver_params": {"tol": 1e-8, "rank": 50},
    "random_state": 0,
}


def _call_worker(rank, port, out_dir):
    """One rank of the call checks: agreed calls, calls that differ between the
    ranks, and a call on rank 0 alone (last: it leaves the group broken)."""
    torch.set_num_threads(1)
    results = {}
    try:
        _init_group(rank, port, CALL_TIMEOUT)
        X, y = load_digits(return_X_y=True)
        X, y = X[:80] / 16, y[:80]
        # Per-rank parameters (memory_budget, verbose, device) may differ.
        budget = None if rank == 0 else 0.5
        clf = RFMClassifier(max_iter=1, memory_budget=budget, **CALL_CG).fit(X, y)
        results["agreed"] = clf.predict(X[:10])
        _record_error(
            results,
            "max_iter",
            lambda: RFMClassifier(max_iter=1 + rank, **CALL_CG).fit(X, y),
        )
        _record_error(
            results,
            "deep_width",
            lambda: DeepRFMTransformer(L=1, width=8 + rank, **CALL_CG).fit(X, y),
        )
        _record_error(
            results,
            "method",
            lambda: clf.predict(X) if rank == 0 else clf.fit(X, y),
        )
        _record_error(results, "rows", lambda: clf.predict(X[: 10 + 10 * rank]))
        _record_error(
            results,
            "estimator",
            lambda: (RFMClassifier if rank == 0 else RFMRegressor)(**CALL_CG).fit(X, y),
        )
        # The group still works after the refused calls.
        results["after"] = clf.predict(X[:10])
        # Rank 0 predicts alone: it waits for the process group's timeout.
        if rank == 0:
            _record_error(results, "alone", lambda: clf.predict(X))
        else:
            time.sleep(CALL_TIMEOUT + 3)
    except Exception:  # noqa: BLE001 - reported to the parent
        results["crash"] = traceback.format_exc()
    with open(os.path.join(out_dir, f"rank{rank}.pkl"), "wb") as f:
        pickle.dump(results, f)
    os._exit(0)


@pytest.fixture(scope="module")
def call_ranks(tmp_path_factory):
    """The two ranks' results of the call checks (:func:`_call_worker`)."""
    out_dir = tmp_path_factory.mktemp("calls")
    return _spawn_ranks(_call_worker, _free_port(), out_dir, 12 * CALL_TIMEOUT)


def _refused(results, case):
    """The ValueError of every rank for ``case``, raised well before the
    timeout."""
    messages = []
    for rank in results:
        kind, message, seconds = rank[case]
        assert kind == "ValueError", (case, kind, message)
        assert seconds < CALL_TIMEOUT / 2, (case, seconds)
        messages.append(message)
    return messages


def test_same_calls_agree_and_per_rank_parameters_may_differ(call_ranks):
    np.testing.assert_array_equal(call_ranks[0]["agreed"], call_ranks[1]["agreed"])
    np.testing.assert_array_equal(call_ranks[0]["after"], call_ranks[0]["agreed"])
    np.testing.assert_array_equal(call_ranks[1]["after"], call_ranks[1]["agreed"])


def test_a_different_max_iter_per_rank_fails_on_every_rank(call_ranks):
    zero, one = _refused(call_ranks, "max_iter")
    for message in (zero, one):
        assert "rank 1's max_iter differs from rank 0's" in message
    assert "rank 0 has max_iter=1" in zero and "rank 1 has max_iter=2" in one
    zero, one = _refused(call_ranks, "deep_width")
    assert "rank 1's width differs" in zero and "rank 1 has width=9" in one


def test_a_different_method_per_rank_fails_on_every_rank(call_ranks):
    zero, one = _refused(call_ranks, "method")
    assert "rank 1's method differs from rank 0's" in zero
    assert "rank 0 called '_decision'" in zero and "rank 1 called 'fit'" in one


def test_a_different_data_shape_or_estimator_fails_on_every_rank(call_ranks):
    for message in _refused(call_ranks, "rows"):
        assert (
            "rank 1's number of rows of X differs from rank 0's (20 against 10)"
            in message
        )
    for message in _refused(call_ranks, "estimator"):
        assert "rank 1's estimator differs" in message


def test_a_call_on_one_rank_alone_ends_at_the_timeout_saying_why(call_ranks):
    kind, message, seconds = call_ranks[0]["alone"]
    assert kind == DistributedFitError.__name__
    assert "not every rank made the same call within the process group's timeout" in (
        message
    )
    assert "RFMClassifier._decision" in message
    assert seconds < 3 * CALL_TIMEOUT


def test_a_single_process_checks_nothing():
    check_call(None, RFMClassifier(), "fit", np.zeros((3, 2)))
