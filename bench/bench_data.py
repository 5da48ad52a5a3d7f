"""The data path: ingestion and evaluation, recfuse against the code a user would write.

    python bench/bench_data.py                 # 1M and 20M events (about 10 minutes)
    python bench/bench_data.py --sizes 1000000 # one size

Ingestion: a Parquet event log (user, item, weight; integer ids, and string ids) read into
a users x items CSR matrix with duplicates summed.
  by hand:  df = pd.read_parquet(path); u, users = pd.factorize(df.user);
            i, items = pd.factorize(df.item); csr_matrix((df.weight, (u, i)))
  recfuse:  Interactions.from_events(path, weight="weight").matrix
            (also validates: NaN weights, missing and mixed ids; ids numbered in sorted order)

Evaluation: top-10 ranking metrics of ALS factors over every test user (80/20 per-user
split of synthetic_implicit), seen items filtered.
  implicit: implicit.evaluation.ranking_metrics_at_k(implicit ALS with the same factors)
  recfuse:  recfuse.metrics.evaluate(recfuse ALS), which calls ALS.recommend; and
            recfuse.metrics.evaluate on the implicit model (same recommend calls as implicit's
            evaluation: the difference is the metric machinery alone); and
            recfuse.metrics.ranking_metrics on given lists (the native metric kernel alone).

Times are the median of --repeats runs (evaluation at 10M+ events: one run); peak memory is the
largest resident-set growth over the step (sampled every 2 ms). Results go to
bench/results/data.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

from bench_args import check_writable, peer_version, positive_int, require_peer, write_json
from openblas_env import prefer_avx512_openblas  # noqa: E402

prefer_avx512_openblas()
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import scipy.sparse as sp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_als import PeakRss, cpu_model  # noqa: E402

import recfuse  # noqa: E402
from recfuse import datasets, metrics, split  # noqa: E402
from recfuse.interactions import Interactions  # noqa: E402

# `recfuse bench --output DIR` sends the JSON elsewhere through this variable.
RESULTS = os.environ.get("RECFUSE_BENCH_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results")


def measure(function, repeats: int):
    """(median seconds, peak RSS growth in bytes, last result) over ``repeats`` calls."""
    seconds, peaks, result = [], [], None
    for _ in range(repeats):
        result = None
        before = PeakRss.current()
        with PeakRss() as peak:
            start = time.perf_counter()
            result = function()
            seconds.append(time.perf_counter() - start)
        peaks.append(peak.peak - before)
    return float(np.median(seconds)), int(max(peaks)), result


# ---------------------------------------------------------------------------- ingestion
def event_log(n_events: int, string_ids: bool, folder: str) -> str:
    """A Parquet log: power-law users and items (about n/10 users, n/40 items)."""
    path = os.path.join(folder, f"events_{n_events}_{'str' if string_ids else 'int'}.parquet")
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(0)
    n_users, n_items = max(n_events // 10, 10), max(n_events // 40, 10)
    users = datasets._draw(rng, datasets._power_law(n_users, 0.6, rng), n_events)
    items = datasets._draw(rng, datasets._power_law(n_items, 0.8, rng), n_events)
    columns = {"user": users.astype(np.int64) * 7 + 1000, "item": items.astype(np.int64) * 3 + 5,
               "weight": rng.integers(1, 6, n_events).astype(np.float32)}
    if string_ids:
        for name in ("user", "item"):
            columns[name] = pa.compute.binary_join_element_wise(
                name, pa.array(columns[name]).cast(pa.string()), "")
    pq.write_table(pa.table(columns), path)
    return path


def ingest_by_hand(path: str) -> sp.csr_matrix:
    frame = pd.read_parquet(path, columns=["user", "item", "weight"])
    users, user_ids = pd.factorize(frame["user"])
    items, item_ids = pd.factorize(frame["item"])
    return sp.csr_matrix((frame["weight"].to_numpy(), (users, items)),
                         shape=(len(user_ids), len(item_ids)))


def ingest_recfuse(path: str) -> sp.csr_matrix:
    return Interactions.from_events(path, weight="weight").matrix


def ingestion_rows(sizes, repeats: int, folder: str) -> list[dict]:
    rows = []
    for n_events in sizes:
        for string_ids in (False, True):
            path = event_log(n_events, string_ids, folder)
            ingest_recfuse(path), ingest_by_hand(path)  # warm the page cache and imports
            hand_s, hand_peak, hand = measure(lambda: ingest_by_hand(path), repeats)
            ours_s, ours_peak, ours = measure(lambda: ingest_recfuse(path), repeats)
            assert hand.nnz == ours.nnz and np.isclose(hand.sum(), ours.sum())
            # ids are numbered differently (first appearance vs sorted order): compare what a
            # renumbering keeps, the shape and the multisets of per-user and per-item pair counts
            hand_coo, ours_coo = hand.tocoo(), ours.tocoo()
            assert hand.shape == ours.shape
            for side in ("row", "col"):
                assert np.array_equal(np.sort(np.bincount(getattr(hand_coo, side))),
                                      np.sort(np.bincount(getattr(ours_coo, side)))), side
            rows.append({"events": n_events, "ids": "string" if string_ids else "int64",
                         "pairs": int(ours.nnz), "shape": list(ours.shape),
                         "file_mib": os.path.getsize(path) / 2**20,
                         "hand_seconds": hand_s, "recfuse_seconds": ours_s,
                         "speedup": hand_s / ours_s, "hand_peak_mib": hand_peak / 2**20,
                         "recfuse_peak_mib": ours_peak / 2**20})
            print(f"ingest {rows[-1]}", file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------- evaluation
def evaluation_rows(sizes, repeats: int, k: int = 10, factors: int = 64) -> list[dict]:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.evaluation import ranking_metrics_at_k

    rows = []
    for n_events in sizes:
        n_users = min(max(n_events // 100, 100), 100_000)
        n_items = min(max(n_events // 400, 50), 20_000)
        runs = 1 if n_events >= 10_000_000 else repeats  # minutes per run at 20M: one each
        matrix = datasets.synthetic_implicit(n_users, n_items, n_events, seed=0)
        train, test = split.per_user_split(matrix, 0.2, seed=0)
        ours = recfuse.ALS(factors=factors, iterations=3, random_state=0, num_threads=2)
        ours.fit(train)
        theirs = AlternatingLeastSquares(factors=factors, num_threads=2, random_state=0)
        theirs.user_factors, theirs.item_factors = ours.user_factors, ours.item_factors
        implicit_s, implicit_peak, implicit_result = measure(
            lambda: ranking_metrics_at_k(theirs, train, test, K=k, show_progress=False,
                                         num_threads=2), runs)
        # two threads on every side, as implicit's (num_threads=0 would take every core)
        ours_s, ours_peak, ours_result = measure(
            lambda: metrics.evaluate(ours, train, test, k=k, num_threads=2), runs)
        shared_s, _, shared_result = measure(
            lambda: metrics.evaluate(theirs, train, test, k=k, num_threads=2), runs)
        users = np.flatnonzero(np.diff(test.indptr) > 0)
        lists = np.concatenate([theirs.recommend(users[b:b + 1000], train[users[b:b + 1000]],
                                                 N=k)[0] for b in range(0, users.size, 1000)])
        kernel_s, _, kernel_result = measure(
            lambda: metrics.ranking_metrics(lists, test, users, num_threads=2), runs)
        # the README says all of them give the same metrics: measure how far apart they are
        names = ("precision", "map", "ndcg", "auc")
        difference = max(abs(float(other[n]) - float(implicit_result[n]))
                         for other in (ours_result, shared_result, kernel_result)
                         for n in names if n in other)
        if difference > 1e-12:
            print(f"evaluate {n_events}: metrics differ from implicit's by up to {difference:.2e}",
                  file=sys.stderr)
        rows.append({
            "events": n_events, "shape": [n_users, n_items], "test_users": int(users.size),
            "implicit_seconds": implicit_s, "recfuse_seconds": ours_s,
            "recfuse_on_implicit_model_seconds": shared_s, "metric_kernel_seconds": kernel_s,
            "speedup": implicit_s / ours_s, "implicit_peak_mib": implicit_peak / 2**20,
            "max_metric_difference": difference,
            "recfuse_peak_mib": ours_peak / 2**20,
            "implicit": {n: implicit_result[n] for n in ("precision", "map", "ndcg", "auc")},
            "recfuse": {n: ours_result[n] for n in ("precision", "map", "ndcg", "auc")},
            "recfuse_on_implicit_model": {n: shared_result[n]
                                          for n in ("precision", "map", "ndcg", "auc")},
        })
        print(f"evaluate {rows[-1]}", file=sys.stderr)
    return rows


def markdown(ingest: list[dict], evaluation: list[dict]) -> str:
    lines = ["| events | ids | pairs | pandas+scipy s | recfuse s | speedup | pandas+scipy peak MiB "
             "| recfuse peak MiB |", "|---|---|---|---|---|---|---|---|"]
    for r in ingest:
        lines.append(f"| {r['events'] / 1e6:.0f}M | {r['ids']} | {r['pairs'] / 1e6:.2f}M | "
                     f"{r['hand_seconds']:.2f} | {r['recfuse_seconds']:.2f} | "
                     f"**{r['speedup']:.2f}x** | {r['hand_peak_mib']:.0f} | "
                     f"{r['recfuse_peak_mib']:.0f} |")
    lines += ["", "| events | users x items | test users | implicit s | recfuse s (its ALS.recommend) "
              "| speedup | recfuse s (implicit's recommend) | metric kernel alone s | implicit peak MiB "
              "| recfuse peak MiB | p@10 implicit / recfuse / recfuse on implicit's lists |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in evaluation:
        lines.append(
            f"| {r['events'] / 1e6:.0f}M | {r['shape'][0]} x {r['shape'][1]} | {r['test_users']} | "
            f"{r['implicit_seconds']:.2f} | {r['recfuse_seconds']:.2f} | **{r['speedup']:.2f}x** | "
            f"{r['recfuse_on_implicit_model_seconds']:.2f} | {r['metric_kernel_seconds']:.3f} | "
            f"{r['implicit_peak_mib']:.0f} | {r['recfuse_peak_mib']:.0f} | "
            f"{r['implicit']['precision']:.4f} / {r['recfuse']['precision']:.4f} / "
            f"{r['recfuse_on_implicit_model']['precision']:.4f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1_000_000, 20_000_000])
    parser.add_argument("--repeats", type=positive_int, default=3)
    parser.add_argument("--skip-evaluation", action="store_true")
    parser.add_argument("--skip-ingestion", action="store_true")
    parser.add_argument("--data-folder", default=None,
                        help="where the Parquet logs are written (default: a temporary folder)")
    args = parser.parse_args()
    results_path = check_writable(os.path.join(RESULTS, "data.json"), parser)
    if not args.skip_evaluation:
        require_peer("implicit", "the evaluation part (skip it with --skip-evaluation)")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.data_folder or scratch
        os.makedirs(folder, exist_ok=True)
        ingest = [] if args.skip_ingestion else ingestion_rows(args.sizes, args.repeats, folder)
    evaluation = [] if args.skip_evaluation else evaluation_rows(args.sizes, args.repeats)
    environment = {
        "machine": f"{cpu_model()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "numpy": np.__version__, "scipy": sp.__name__ and __import__("scipy").__version__,
        "pandas": pd.__version__, "pyarrow": pa.__version__, "implicit": peer_version("implicit"),
        "recfuse": recfuse.__version__, "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    write_json(results_path, {"environment": environment, "ingestion": ingest,
                              "evaluation": evaluation}, indent=1)
    print(json.dumps(environment))
    print(markdown(ingest, evaluation))
    return 0


if __name__ == "__main__":
    sys.exit(main())
