"""GPU Funk SVD: updates per second of recfuse.SVD on the GPU backends, beside the CPU's.

    python bench/bench_gpu_sgd.py                       # 20M ratings (1M users x 400k items)
    python bench/bench_gpu_sgd.py --ratings 1000000 --budget-s 30   # smoke

The ratings are bench_sgd.synthetic_ratings (rank-8 tastes plus noise, power-law users and
items), the model Surprise's defaults (100 factors, lr 0.005, reg 0.02). Backends: ``cuda``
(native, batch-Hogwild), ``cupy`` (the fallback: the CPU's block schedule, one warp per
block) and ``cpu`` (all cores), each when available and within the time budget.
A fit uploads the ratings and factors once and copies the model back at the end (one
kernel launch per epoch, a launch per diagonal of the grid for cupy). Seconds per epoch:
the difference of a 5-epoch and a 1-epoch fit, over 4 (set-up cancels; a small fit before
them compiles what the backend compiles), except for
``cuda``, whose epochs are shorter than the noise of a fit's set-up: there the
device-resident fit itself (recfuse._cuda.svd_hogwild) is timed, 10 epochs plus the
download, less 0 epochs plus the download, over 10. ``fit_5_epochs_s`` is the whole
``SVD.fit`` of 5 epochs (layout, uploads and download included) for each. The training
RMSE after 5 epochs is printed for each: Hogwild on the GPU must reach about the CPU's.
Results: a Markdown table on stdout and bench/results/gpu_sgd.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

import recfuse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_args import check_writable, positive_int, write_json  # noqa: E402
from bench_sgd import synthetic_ratings  # noqa: E402 - the same data as the CPU benchmark


def device_epoch_seconds(users, items, ratings, model, epochs: int = 10) -> float:
    """Seconds per epoch of a device-resident fit (uploaded before the clock starts)."""
    from recfuse import _cuda

    # Copies: download() writes into these, and the model's own arrays must stay its own.
    host = [np.zeros(model.user_factors.shape[0], np.float32),
            np.zeros(model.item_factors.shape[0], np.float32),
            np.array(model.user_factors, np.float32, order="C", copy=True),
            np.array(model.item_factors, np.float32, order="C", copy=True)]
    fit = _cuda.svd_hogwild(users.astype(np.int32), items.astype(np.int32),
                            ratings.astype(np.float32), *host)
    rates = (model.lr,) * 4 + (0.0,), (model.reg,) * 4 + (0.0,)
    seconds = {}
    for count in (0, epochs, 0, epochs):  # twice each; the second run of each counts
        start = time.perf_counter()
        fit.epochs(float(ratings.mean()), *rates, True, count)
        fit.download(*host)
        seconds[count] = time.perf_counter() - start
    return (seconds[epochs] - seconds[0]) / epochs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratings", type=positive_int, default=20_000_000)
    p.add_argument("--budget-s", type=float, default=90.0)
    args = p.parse_args()
    results_path = check_writable(os.path.join(HERE, "results", "gpu_sgd.json"), p)
    start = time.perf_counter()
    n = args.ratings
    users, items, ratings = synthetic_ratings(n // 20, n // 50, n)
    print(f"{n:,} ratings, {n // 20:,} users x {n // 50:,} items; data in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    for backend in ("cuda", "cupy", "cpu"):
        info = {b.name: b for b in recfuse.backends("sgd")}[backend]
        if not info.available:
            print(f"{backend}: skipped ({info.detail})")
            continue
        if time.perf_counter() - start > args.budget_s:
            print(f"{backend}: skipped (time budget spent)")
            continue
        # a small fit first: what a JIT backend (cupy) compiles on its first fit must not
        # land in the 1-epoch fit alone (the difference would lose it: epochs read short)
        few = slice(0, min(n, 10_000))
        recfuse.SVD(epochs=1, backend=backend, random_state=0).fit(
            users[few], items[few], ratings[few], rating_scale=(1, 5))
        seconds = {}
        for epochs in (1, 5):  # the difference is four epochs: set-up cancels out
            model = recfuse.SVD(epochs=epochs, backend=backend, random_state=0)
            t0 = time.perf_counter()
            model.fit(users, items, ratings, rating_scale=(1, 5))
            seconds[epochs] = time.perf_counter() - t0
        epoch = (seconds[5] - seconds[1]) / 4
        if backend == "cuda":
            epoch = device_epoch_seconds(users, items, ratings, model)
        sample = slice(0, min(n, 1_000_000))
        error = model.predict(users[sample], items[sample], clip=False) - ratings[sample]
        rows.append({"backend": backend, "detail": info.detail, "epoch_s": epoch,
                     "fit_5_epochs_s": seconds[5], "updates_per_s": n / epoch,
                     "train_rmse_5_epochs": float(np.sqrt(np.mean(error ** 2)))})
        print(rows[-1], flush=True)
    print()
    print("| backend | device | s per epoch | updates/s | fit of 5 epochs, s "
          "| train RMSE (5 epochs) |")
    print("|---|---|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['backend']} | {row['detail']} | {row['epoch_s']:.4f} | "
              f"{row['updates_per_s'] / 1e6:.1f}M | {row['fit_5_epochs_s']:.2f} | "
              f"{row['train_rmse_5_epochs']:.4f} |")
    write_json(results_path, {"ratings": n, "rows": rows, "machine": platform.node()}, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
