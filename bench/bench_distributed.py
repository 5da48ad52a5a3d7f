"""DaskALS on a LocalCluster against single-process recfuse.ALS, same data, same start.

    python bench/bench_distributed.py                          # 5M events, k=64, 5 iterations
    python bench/bench_distributed.py --nnz 20000000 --users 400000 --items 200000

Both sides use the same cores: the single process runs ``num_threads=workers`` threads, the
cluster runs ``workers`` processes of one thread each. Both start from the same factors
(``recfuse.distributed.initial_factors``) with the CG solver, so their per-iteration work is
identical and the difference per iteration is the cost of distribution: task scheduling, the
Gram tree reduction, serialising and moving factor blocks, assembling the broadcast copy.

Measured per run: setup (id maps + rating blocks, once per fit), seconds per iteration
(median of the iterations after the first, from the driver's per-iteration callback), the
bytes the workers sent each other per iteration (``transfer_outgoing_bytes_total``), and
the largest difference between the two models' factors (relative to the largest value). Also printed: what the block
layout predicts for the bytes per half-sweep (see bench/README.md for the arithmetic).
Results go to bench/results/distributed.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np
import pandas as pd

import recfuse
from recfuse import datasets
from recfuse.distributed import DaskALS, initial_factors

from bench_args import check_writable, missing_peer, positive_int, require_peer, write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def _sent_bytes(client) -> int:
    return sum(client.run(lambda dask_worker: dask_worker.transfer_outgoing_bytes_total).values())


def time_spark(frame: pd.DataFrame, params: dict, seed: int, workers: int):
    """(median s/it after the first, setup s) of SparkALS on Spark local[workers]."""
    os.environ["PYSPARK_PYTHON"] = sys.executable
    from pyspark.sql import SparkSession

    from recfuse.distributed import SparkALS

    spark = (SparkSession.builder.master(f"local[{workers}]").appName("bench-distributed")
             .config("spark.ui.enabled", "false").config("spark.driver.memory", "6g")
             .config("spark.sql.shuffle.partitions", str(2 * workers)).getOrCreate())
    try:
        df = spark.createDataFrame(frame).repartition(2 * workers).cache()
        df.count()
        stamps = []
        started = time.perf_counter()
        model = SparkALS(random_state=seed, blocks=workers, **params)
        model.fit(df, "user", "item", "weight", callback=lambda i, loss: stamps.append(
            time.perf_counter()))
        per_iteration = np.diff(stamps)
        setup = stamps[0] - started  # includes the first iteration
        return float(np.median(per_iteration)), setup
    finally:
        spark.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=positive_int, default=100_000)
    parser.add_argument("--items", type=positive_int, default=50_000)
    parser.add_argument("--nnz", type=positive_int, default=5_000_000)
    parser.add_argument("--factors", type=positive_int, default=64)
    parser.add_argument("--iterations", type=positive_int, default=5)
    parser.add_argument("--workers", type=positive_int, default=2)
    parser.add_argument("--partitions", type=positive_int, default=8)
    parser.add_argument("--broadcast", default="smaller", choices=("smaller", "never"))
    parser.add_argument("--spark", action="store_true",
                        help="also time SparkALS on Spark local[workers] (needs pyspark, Java)")
    args = parser.parse_args()
    results_path = check_writable(os.path.join(RESULTS, "distributed.json"), parser)
    require_peer("distributed", "DaskALS", "pip install 'dask[dataframe,distributed]'")
    if args.spark:
        why = missing_peer("pyspark")
        if why is not None:  # the Dask and local rows still run and are written
            print(f"SparkALS skipped: pyspark is not installed ({why})", file=sys.stderr)
            args.spark = False

    from distributed import Client, LocalCluster
    import dask.dataframe as dd

    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
          f"on {os.cpu_count()} cores", file=sys.stderr)
    started = time.perf_counter()
    matrix = datasets.synthetic_implicit(args.users, args.items, args.nnz, seed=0)
    coo = matrix.tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                          "weight": coo.data})
    print(f"data: {matrix.shape[0]} x {matrix.shape[1]}, nnz {matrix.nnz} "
          f"({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    k, seed = args.factors, 0
    params = dict(factors=k, iterations=args.iterations, regularization=0.05, alpha=2.0)

    # single process
    start = (initial_factors(np.arange(matrix.shape[0]), k, seed, "users"),
             initial_factors(np.arange(matrix.shape[1]), k, seed, "items"))
    stamps = [time.perf_counter()]
    local = recfuse.ALS(num_threads=args.workers, backend="cpu", **params)
    local.fit(matrix, initial_factors=start, compute_loss=False,
              callback=lambda i, loss: stamps.append(time.perf_counter()))
    local_per_iteration = np.diff(stamps)
    print(f"local: {np.round(local_per_iteration, 3)} s/it", file=sys.stderr)

    # cluster
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=":0", silence_logs=40) as cluster, \
            Client(cluster) as client:
        ddf = dd.from_pandas(frame, npartitions=args.partitions).persist()
        client.wait_for_workers(args.workers)
        sent, stamps = [], []

        def tick(iteration, loss):
            stamps.append(time.perf_counter())
            sent.append(_sent_bytes(client))

        model = DaskALS(random_state=seed, broadcast=args.broadcast, **params)
        sent_before = _sent_bytes(client)
        fit_started = time.perf_counter()
        model.fit(ddf, "user", "item", "weight", callback=tick, compute_loss=False)
        setup_seconds = model.setup_seconds
        # iteration 1 is timed from the end of the setup; its bytes include the setup's
        stamps.insert(0, fit_started + setup_seconds)
        sent.insert(0, sent_before)
        dist_per_iteration = np.diff(stamps)
        bytes_per_iteration = np.diff(sent)[1:]
        print(f"dask: setup {setup_seconds:.2f} s, {np.round(dist_per_iteration, 3)} s/it",
              file=sys.stderr)
        distributed_model = model.to_local(with_seen=False)
        predicted = model.transfer_plan()
        blocks = (predicted["users"]["blocks"], predicted["items"]["blocks"])

    # relative to the largest factor value: float32 rounding (the Gram is summed in another
    # order) grows over iterations on these weakly regularised systems
    spark_s = spark_setup = None
    if args.spark:
        spark_s, spark_setup = time_spark(frame, params, seed, args.workers)
        print(f"spark: setup {spark_setup:.1f} s, {spark_s:.3f} s/it", file=sys.stderr)

    difference = max(
        float(np.abs(distributed_model.user_factors - local.user_factors).max()
              / np.abs(local.user_factors).max()),
        float(np.abs(distributed_model.item_factors - local.item_factors).max()
              / np.abs(local.item_factors).max()))
    local_s = float(np.median(local_per_iteration[1:] if args.iterations > 1
                              else local_per_iteration))
    dist_s = float(np.median(dist_per_iteration[1:] if args.iterations > 1
                             else dist_per_iteration))
    # (one iteration: none after the first, whose bytes include the setup's)
    moved = float(np.median(bytes_per_iteration)) if bytes_per_iteration.size else None
    load_after = os.getloadavg()
    result = {
        "users": matrix.shape[0], "items": matrix.shape[1], "nnz": int(matrix.nnz),
        "factors": k, "iterations": args.iterations, "workers": args.workers,
        "blocks": blocks, "partitions": args.partitions, "broadcast": args.broadcast,
        "local_s_per_it": local_s, "dask_s_per_it": dist_s,
        "overhead_s_per_it": dist_s - local_s, "dask_setup_s": setup_seconds,
        "bytes_moved_per_it": moved, "spark_s_per_it": spark_s, "spark_setup_s": spark_setup,
        "predicted_bytes_per_half_sweep": predicted, "max_factor_difference_relative": difference,
        "load_before": load, "load_after": load_after,
        "machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
        "recfuse": recfuse.__version__, "python": platform.python_version(),
    }
    write_json(results_path, result, indent=1)
    moved_mb = "-" if moved is None else f"{moved / 1e6:.1f}"
    print("| nnz | k | workers | blocks | local s/it | dask s/it | overhead s/it | dask setup s "
          "| MB moved/it (measured) | MB/half-sweep predicted (users, items) | max factor diff / max factor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {matrix.nnz / 1e6:.1f}M | {k} | {args.workers} | {blocks[0]}x{blocks[1]} "
          f"| {local_s:.3f} | {dist_s:.3f} | {dist_s - local_s:+.3f} | {setup_seconds:.1f} "
          f"| {moved_mb} | {predicted['users']['bytes'] / 1e6:.1f} "
          f"({predicted['users']['mode']}), {predicted['items']['bytes'] / 1e6:.1f} "
          f"({predicted['items']['mode']}) | {difference:.1e} |")
    if spark_s is not None:
        print(f"SparkALS local[{args.workers}]: {spark_s:.3f} s/it, setup {spark_setup:.1f} s")
    print(f"load average: before {load[0]:.2f}, after {load_after[0]:.2f} "
          f"({os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
