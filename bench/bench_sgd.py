"""SGD factorization: recfuse against Surprise (SVD, SVD++) and implicit (BPR), one run.

    python bench/bench_sgd.py                 # ml-100k and ml-latest-small 5-fold, 1M
                                              # synthetic, BPR (~10 min, most of it Surprise)
    python bench/bench_sgd.py --big           # also recfuse alone on a 20M-rating set
    python bench/bench_sgd.py --skip-svdpp    # without Surprise's slow SVD++

Besides the Surprise pairs, the 5-fold sections fit recfuse's explicit ALS and the README's
tuned SVD recipe (recfuse only). Each row records the load average when it finished.

Same folds, same defaults, same data for both libraries. Fit times are wall-clock seconds
of ``fit`` (recfuse: all threads unless --threads; Surprise is single-threaded). The
MovieLens files are read from ../shared/datasets (never bundled); sections whose data or
peer library is missing are skipped with the reason. Results go to bench/results/sgd.json
and Markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np

import recfuse
from recfuse import datasets

from bench_args import check_writable, peer_version, positive_int, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
DATASETS = os.path.join(HERE, "..", "..", "shared", "datasets")
RESULTS = os.path.join(HERE, "results")


def movielens_100k():
    raw = np.loadtxt(os.path.join(DATASETS, "ml-100k", "u.data"), dtype=np.int64)
    return raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 2].astype(np.float64)


def movielens_latest_small():
    """ratings.csv with user and movie ids renumbered 0..n-1; half-star ratings 0.5-5."""
    raw = np.loadtxt(os.path.join(DATASETS, "ml-latest-small", "ratings.csv"), delimiter=",",
                     skiprows=1, usecols=(0, 1, 2))
    users = np.unique(raw[:, 0], return_inverse=True)[1]
    items = np.unique(raw[:, 1], return_inverse=True)[1]
    return users.astype(np.int64), items.astype(np.int64), raw[:, 2]


MOVIELENS = {  # name: (loader, file that must exist, rating scale)
    "ml-100k": (movielens_100k, os.path.join("ml-100k", "u.data"), (1, 5)),
    "ml-latest-small": (movielens_latest_small, os.path.join("ml-latest-small", "ratings.csv"),
                        (0.5, 5)),
}
TUNED_SVD = dict(factors=100, epochs=50, lr=0.01, reg=0.08, reg_bu=0.02, reg_bi=0.02,
                 init_std=0.01)  # README's ml-100k recipe


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def synthetic_ratings(n_users, n_items, n, seed=0):
    """Ratings 1-5 from a rank-8 taste model plus noise, users and items power-law active."""
    rng = np.random.default_rng(seed)
    users = np.minimum((rng.pareto(1.2, n) * n_users / 20).astype(np.int64), n_users - 1)
    items = np.minimum((rng.pareto(1.0, n) * n_items / 30).astype(np.int64), n_items - 1)
    users, items = rng.permutation(n_users)[users], rng.permutation(n_items)[items]
    U, V = rng.normal(0, 0.5, (n_users, 8)), rng.normal(0, 0.5, (n_items, 8))
    taste = np.einsum("nk,nk->n", U[users], V[items]) + rng.normal(0, 0.7, n)
    return users, items, np.clip(np.round(3.5 + taste), 1, 5)


def surprise_data(users, items, ratings, rating_scale=(1, 5)):
    import surprise

    handle, path = tempfile.mkstemp(suffix=".tsv")
    os.close(handle)
    np.savetxt(path, np.c_[users, items, ratings], fmt=("%d", "%d", "%g"), delimiter="\t")
    reader = surprise.Reader(line_format="user item rating", sep="\t", rating_scale=rating_scale)
    data = surprise.Dataset.load_from_file(path, reader)
    os.unlink(path)
    return data


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def five_fold(args, rows, name):
    loader, _, scale = MOVIELENS[name]
    users, items, ratings = loader()
    folds = np.random.default_rng(0).permutation(ratings.size) % 5
    pairs = [("SVD", recfuse.SVD, {}, "SVD")]
    if not args.skip_svdpp:
        pairs.append(("SVD++", recfuse.SVDpp, {}, "SVDpp"))
    pairs += [("SVD tuned", recfuse.SVD, TUNED_SVD, None),
              ("ExplicitALS", recfuse.ExplicitALS, {}, None)]
    try:
        import surprise
    except ImportError as error:
        surprise = None
        print(f"Surprise skipped: {error}")
    for label, ours, settings, theirs_name in pairs:
        result = {"data": f"{name} 5-fold", "model": label}
        for library in ("recfuse", "surprise"):
            if library == "surprise" and (surprise is None or theirs_name is None):
                continue
            rmse, mae, seconds = [], [], []
            # One untimed fit first, for both libraries: a process's first fit pays one-time
            # costs (imports, the backend probe, thread start-up: 20-40 ms for recfuse) that
            # would otherwise land on fold 0. recfuse's is fold 0's whole fit (on 2,000
            # ratings its grid is one block, which never starts the threads); Surprise's is
            # on 2,000 ratings (a whole fit costs it seconds).
            warm = np.flatnonzero(folds != 0)
            if library == "recfuse":
                ours(random_state=0, num_threads=args.threads, **settings).fit(
                    users[warm], items[warm], ratings[warm], rating_scale=scale)
            else:
                warm = warm[:2000]
                getattr(surprise, theirs_name)(random_state=0).fit(surprise_data(
                    users[warm], items[warm], ratings[warm], scale).build_full_trainset())
            for fold in range(5):
                train, test = folds != fold, folds == fold
                if library == "recfuse":
                    model = ours(random_state=fold, num_threads=args.threads, **settings)
                    _, s = timed(lambda: model.fit(users[train], items[train], ratings[train],
                                                   rating_scale=scale))
                    predicted = model.predict(users[test], items[test])
                else:
                    trainset = surprise_data(users[train], items[train], ratings[train],
                                             scale).build_full_trainset()
                    model = getattr(surprise, theirs_name)(random_state=fold)
                    _, s = timed(lambda: model.fit(trainset))
                    predicted = np.array([model.predict(str(u), str(i)).est
                                          for u, i in zip(users[test], items[test])])
                rmse.append(float(np.sqrt(np.mean((predicted - ratings[test]) ** 2))))
                mae.append(float(np.mean(np.abs(predicted - ratings[test]))))
                seconds.append(s)
            result[library] = {"rmse": float(np.mean(rmse)), "mae": float(np.mean(mae)),
                               "fit_s": float(np.mean(seconds)),
                               "fit_s_folds": [round(x, 4) for x in seconds]}
            print(name, label, library, result[library], flush=True)
        result["load"] = load_average()
        rows.append(result)


def synthetic_fit(args, rows, n, with_surprise):
    users, items, ratings = synthetic_ratings(n // 20, n // 50, n)
    result = {"data": f"synthetic {n / 1e6:g}M", "model": "SVD"}
    model = recfuse.SVD(random_state=0, num_threads=args.threads)
    _, seconds = timed(lambda: model.fit(users, items, ratings, rating_scale=(1, 5)))
    result["recfuse"] = {"fit_s": seconds, "updates_per_s": 20 * n / seconds}
    print("synthetic", n, "recfuse", result["recfuse"], flush=True)
    if with_surprise:
        try:
            import surprise
        except ImportError as error:
            print(f"Surprise skipped: {error}")
        else:
            trainset = surprise_data(users, items, ratings).build_full_trainset()
            _, seconds = timed(lambda: surprise.SVD(random_state=0).fit(trainset))
            result["surprise"] = {"fit_s": seconds, "updates_per_s": 20 * n / seconds}
            print("synthetic", n, "surprise", result["surprise"], flush=True)
    result["load"] = load_average()
    rows.append(result)


def bpr_vs_implicit(args, rows):
    matrix = datasets.load_movielens_100k(os.path.join(DATASETS, "ml-100k"), min_rating=4)
    train, test = datasets.train_test_split_per_user(matrix, 0.2, seed=0)

    def precision_at_10(ids):
        hits = total = 0
        for u in range(train.shape[0]):
            truth = set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist())
            if truth:
                hits += len(truth & set(ids[u].tolist()))
                total += 10
        return hits / total

    every_user = np.arange(train.shape[0])
    settings = dict(factors=64, iterations=args.bpr_iterations)
    result = {"data": "ml-100k >=4, 80/20 per user", "model": f"BPR k=64 x{args.bpr_iterations}"}
    model = recfuse.BPR(lr=0.05, reg=0.01, random_state=0, num_threads=args.threads, **settings)
    _, seconds = timed(lambda: model.fit(train))
    result["recfuse"] = {"p@10": precision_at_10(model.recommend(every_user, k=10)[0]),
                         "epoch_s": seconds / args.bpr_iterations}
    print("BPR recfuse", result["recfuse"], flush=True)
    try:
        from implicit.bpr import BayesianPersonalizedRanking
    except ImportError as error:
        print(f"implicit skipped: {error}")
    else:
        best = None
        for lr in (0.01, 0.05):  # implicit at its default and at recfuse's rate
            theirs = BayesianPersonalizedRanking(learning_rate=lr, regularization=0.01,
                                                 random_state=0, num_threads=args.threads,
                                                 **settings)
            _, seconds = timed(lambda: theirs.fit(train, show_progress=False))
            ids, _ = theirs.recommend(every_user, train, N=10)
            entry = {"lr": lr, "p@10": precision_at_10(ids),
                     "epoch_s": seconds / args.bpr_iterations}
            print("BPR implicit", entry, flush=True)
            best = entry if best is None or entry["p@10"] > best["p@10"] else best
        result["implicit"] = best
    result["load"] = load_average()
    rows.append(result)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--big", action="store_true", help="also a 20M-rating synthetic fit")
    parser.add_argument("--skip-svdpp", action="store_true")
    parser.add_argument("--bpr-iterations", type=positive_int, default=100)
    parser.add_argument("--only", choices=("movielens", "bpr", "synthetic"), default=None,
                        help="run one section (with --big, synthetic includes the 20M set)")
    args = parser.parse_args()
    results_path = check_writable(os.path.join(RESULTS, "sgd.json"), parser)
    rows = []
    print("load average at start", os.getloadavg(), flush=True)
    for name, (_, path, _) in MOVIELENS.items():
        if args.only not in (None, "movielens"):
            break
        if os.path.isfile(os.path.join(DATASETS, path)):
            five_fold(args, rows, name)
        else:
            print(f"{name} not found under {DATASETS}: its rows skipped")
    if args.only in (None, "bpr"):
        if os.path.isfile(os.path.join(DATASETS, "ml-100k", "u.data")):
            bpr_vs_implicit(args, rows)
        else:
            print(f"ml-100k not found under {DATASETS}: BPR rows skipped")
    if args.only in (None, "synthetic"):
        synthetic_fit(args, rows, 1_000_000, with_surprise=True)
    if args.big and args.only in (None, "synthetic"):
        synthetic_fit(args, rows, 20_000_000, with_surprise=False)
    # the threads recfuse's fits could use (--threads, else every core), against Surprise's one
    threads = args.threads
    if threads <= 0:
        try:
            from recfuse import _core
            threads = _core.default_threads()
        except ImportError:
            threads = os.cpu_count()
    versions = {"recfuse": recfuse.__version__, "numpy": np.__version__,
                "python": platform.python_version(), "machine": platform.processor() or
                platform.machine(), "cpus": os.cpu_count(), "recfuse_threads": threads}
    for name in ("surprise", "implicit"):
        version = peer_version(name)
        if not version.startswith("unavailable"):  # a missing peer: no entry, as no rows
            versions[name] = version
    write_json(results_path, {"versions": versions, "rows": rows}, indent=1)
    print(f"\nrecfuse on up to {threads} threads, Surprise on one")
    print("\n| data | model | recfuse | peer | speedup | load |\n|---|---|---|---|---|---|")
    for row in rows:
        ours, peer = row.get("recfuse", {}), row.get("surprise") or row.get("implicit") or {}
        time_key = "fit_s" if "fit_s" in ours else "epoch_s"
        quality = [key for key in ("rmse", "mae", "p@10") if key in ours]
        describe = lambda d: ", ".join(  # noqa: E731
            [f"{key} {d[key]:.4f}" for key in quality if key in d]
            + ([f"{time_key} {d[time_key]:.3f}"] if time_key in d else [])
            + ([f"{d['updates_per_s'] / 1e6:.1f}M upd/s"] if "updates_per_s" in d else []))
        speedup = (f"{peer[time_key] / ours[time_key]:.1f}x" if time_key in peer else "")
        print(f"| {row['data']} | {row['model']} | {describe(ours)} | {describe(peer)} | {speedup} "
              f"| {row.get('load', '')} |")
    print("\n", json.dumps(versions))


if __name__ == "__main__":
    main()
