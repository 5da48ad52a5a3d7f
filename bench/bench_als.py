"""ALS training speed and quality: recfuse against implicit 0.7, side by side in one run.

    python bench/bench_als.py                      # the full table (about 15 minutes)
    python bench/bench_als.py --quick              # the 5M set at k=64 only
    python bench/bench_als.py --nnz 5000000 --factors 64 --solvers cg

Both libraries get the same matrix, the same starting factors, regularization, alpha,
iterations, solver and thread count. implicit's confidence is the stored value itself,
so it is handed C = 1 + alpha*R (recfuse gets R and applies c = 1 + alpha*r): the same
systems are solved. Peers run at their best: on CPUs with AVX-512, OPENBLAS_CORETYPE=SkylakeX
is set before import (bench/openblas_env.py) for the OpenBLAS that scipy and implicit use
(numpy 2.4.6's and scipy 1.17.1's OpenBLAS 0.3.31 detect SkylakeX on a Zen 4 by themselves;
older builds may not).

The floor (flops one iteration must do, both half-sweeps):
  Cholesky: 2·nnz·(k² + 2k) + (users + items)·k³/3
  CG (3 steps): 9·(users + items)·k² + 32·nnz·k
Seconds per iteration are the median over the iterations of one fit (each library's own
per-iteration callback; recfuse's first interval includes its set-up and transpose,
implicit's callbacks exclude its transpose, made before its loop: with 3 iterations the
median leaves recfuse's first out).
Results go to bench/results/als.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import threading
import time

from bench_args import check_writable, peer_version, positive_int, require_peer, write_json
from openblas_env import prefer_avx512_openblas  # noqa: E402

prefer_avx512_openblas()
# implicit asks for a single-threaded BLAS (it parallelises over rows itself).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

import recfuse  # noqa: E402
from recfuse import datasets, metrics  # noqa: E402

# `recfuse bench --output DIR` sends the JSON elsewhere through this variable.
RESULTS = os.environ.get("RECFUSE_BENCH_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results")
ML100K = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "datasets", "ml-100k")


def floor_gflop(solver: str, users: int, items: int, nnz: int, k: int, cg_steps: int = 3) -> float:
    if solver == "cholesky":
        flops = 2 * nnz * (k * k + 2 * k) + (users + items) * k**3 / 3
    else:  # YᵀY once per half-sweep, then per CG step (and the start's residual)
        flops = (users + items) * k * k + (
            2 * (users + items) * k * k + 8 * nnz * k) * (cg_steps + 1)
    return flops / 1e9


class PeakRss:
    """Samples this process's resident memory every 2 ms while active."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        self.peak = self.current()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.current())


def time_recfuse(matrix, X0, Y0, k, solver, iterations, threads, regularization, alpha):
    model = recfuse.ALS(factors=k, regularization=regularization, alpha=alpha,
                        iterations=iterations, solver=solver, backend="cpu", num_threads=threads)
    stamps = []
    before = PeakRss.current()
    with PeakRss() as rss:
        stamps.append(time.perf_counter())
        model.fit(matrix, initial_factors=(X0, Y0), compute_loss=False,
                  callback=lambda iteration, loss: stamps.append(time.perf_counter()))
    return model, float(np.median(np.diff(stamps))), rss.peak - before


def time_implicit(matrix, X0, Y0, k, solver, iterations, threads, regularization, alpha):
    from implicit.cpu.als import AlternatingLeastSquares

    confidence = matrix.copy()
    confidence.data = 1 + alpha * confidence.data
    model = AlternatingLeastSquares(factors=k, regularization=regularization, alpha=1.0,
                                    iterations=iterations, use_cg=solver == "cg",
                                    calculate_training_loss=False, num_threads=threads,
                                    random_state=0)
    model.user_factors, model.item_factors = X0.copy(), Y0.copy()
    elapsed = []
    model.fit(confidence, show_progress=False,
              callback=lambda iteration, seconds, loss: elapsed.append(seconds))
    return model, float(np.median(elapsed))


def speed_rows(args):
    rows = []
    for nnz in args.nnz:
        matrix = datasets.synthetic_implicit(args.users, args.items, nnz, seed=0)
        csr_bytes = 2 * (matrix.data.nbytes + matrix.indices.nbytes + matrix.indptr.nbytes)
        for k in args.factors:
            rng = np.random.default_rng(1)
            X0 = (rng.random((matrix.shape[0], k), dtype=np.float32) * 0.01)
            Y0 = (rng.random((matrix.shape[1], k), dtype=np.float32) * 0.01)
            for solver in args.solvers:
                iterations = args.iterations
                ours, ours_s, ours_mem = time_recfuse(matrix, X0, Y0, k, solver, iterations,
                                                      args.threads, args.regularization, args.alpha)
                theirs, theirs_s = time_implicit(matrix, X0, Y0, k, solver, iterations,
                                                 args.threads, args.regularization, args.alpha)
                gflop = floor_gflop(solver, *matrix.shape, matrix.nnz, k)
                factor_bytes = (X0.nbytes + Y0.nbytes)
                diff = float(np.abs(ours.item_factors - theirs.item_factors).max()
                             / max(np.abs(theirs.item_factors).max(), 1e-30))
                row = {
                    "users": matrix.shape[0], "items": matrix.shape[1], "nnz": matrix.nnz,
                    "factors": k, "solver": solver, "iterations": iterations,
                    "implicit_s_per_iter": theirs_s, "recfuse_s_per_iter": ours_s,
                    "speedup": theirs_s / ours_s, "floor_gflop": gflop,
                    "recfuse_gflops": gflop / ours_s, "implicit_gflops": gflop / theirs_s,
                    "peak_fit_memory_ratio": (ours_mem + csr_bytes / 2) / (csr_bytes + factor_bytes),
                    "max_rel_diff_item_factors": diff,
                }
                rows.append(row)
                print(f"  nnz={matrix.nnz} k={k} {solver}: implicit {theirs_s:.3f} s/it, "
                      f"recfuse {ours_s:.3f} s/it, x{row['speedup']:.1f}, "
                      f"{row['recfuse_gflops']:.1f} GFLOP/s, mem ratio "
                      f"{row['peak_fit_memory_ratio']:.2f}, diff {diff:.1e}", flush=True)
    return rows


def quality_rows(args):
    try:
        ratings = datasets.load_movielens_100k(ML100K, min_rating=4)
    except FileNotFoundError as error:
        print(f"  skipped quality: {error}")
        return []
    train, test = datasets.train_test_split_per_user(ratings, 0.2, seed=0)
    train.data[:] = 1
    rng = np.random.default_rng(1)
    k = 64
    X0 = rng.random((train.shape[0], k), dtype=np.float32) * 0.01
    Y0 = rng.random((train.shape[1], k), dtype=np.float32) * 0.01
    rows = []
    for solver in args.solvers:
        ours, _, _ = time_recfuse(train, X0, Y0, k, solver, 15, args.threads, 0.01, 1.0)
        theirs, _ = time_implicit(train, X0, Y0, k, solver, 15, args.threads, 0.01, 1.0)
        from implicit.evaluation import ndcg_at_k, precision_at_k

        ours_metrics = metrics.ranking_metrics_at_k(ours, train, test, k=10)
        rows.append({
            "dataset": "ml-100k ratings>=4, 80/20 per-user split", "factors": k, "solver": solver,
            "recfuse_p@10": ours_metrics["precision"], "recfuse_ndcg@10": ours_metrics["ndcg"],
            "implicit_p@10": float(precision_at_k(theirs, train, test, K=10, show_progress=False)),
            "implicit_ndcg@10": float(ndcg_at_k(theirs, train, test, K=10, show_progress=False)),
        })
        print(f"  ml-100k {solver}: {rows[-1]}", flush=True)
    return rows


def markdown(speed, quality) -> str:
    lines = ["| nnz | k | solver | implicit s/it | recfuse s/it | speedup | floor GFLOP | recfuse GFLOP/s | implicit GFLOP/s | fit memory / (CSR+CSRᵀ+factors) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in speed:
        lines.append(f"| {r['nnz']/1e6:.1f}M | {r['factors']} | {r['solver']} | {r['implicit_s_per_iter']:.3f} | "
                     f"{r['recfuse_s_per_iter']:.3f} | **{r['speedup']:.1f}x** | {r['floor_gflop']:.1f} | "
                     f"{r['recfuse_gflops']:.1f} | {r['implicit_gflops']:.1f} | {r['peak_fit_memory_ratio']:.2f} |")
    if quality:
        lines += ["", "| data | solver | recfuse p@10 | implicit p@10 | recfuse ndcg@10 | implicit ndcg@10 |",
                  "|---|---|---|---|---|---|"]
        for q in quality:
            lines.append(f"| {q['dataset']} | {q['solver']} | {q['recfuse_p@10']:.4f} | {q['implicit_p@10']:.4f} | "
                         f"{q['recfuse_ndcg@10']:.4f} | {q['implicit_ndcg@10']:.4f} |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict:
    import scipy

    from recfuse import _core

    return {"python": platform.python_version(), "numpy": np.__version__, "scipy": scipy.__version__,
            "implicit": peer_version("implicit"), "recfuse": recfuse.__version__,
            "recfuse_simd": _core.simd_level(), "cpu": cpu_model(),
            "cores": os.cpu_count(), "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=positive_int, default=100_000)
    parser.add_argument("--items", type=positive_int, default=50_000)
    parser.add_argument("--nnz", type=positive_int, nargs="+", default=[5_000_000, 20_000_000])
    parser.add_argument("--factors", type=positive_int, nargs="+", default=[64, 128])
    parser.add_argument("--solvers", nargs="+", default=["cg", "cholesky"], choices=["cg", "cholesky"])
    parser.add_argument("--iterations", type=positive_int, default=3,
                        help="iterations per fit; the median iteration time is reported")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--regularization", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="5M nnz, k=64 only")
    parser.add_argument("--no-quality", action="store_true")
    args = parser.parse_args(argv)
    if args.iterations < 3:  # with fewer, the median takes in recfuse's set-up
        parser.error(f"--iterations must be at least 3 (the median iteration time leaves the "
                     f"first, which holds recfuse's set-up, out), got {args.iterations}")
    results_path = check_writable(os.path.join(RESULTS, "als.json"), parser)
    require_peer("implicit", "every row (recfuse against implicit)")
    if args.quick:
        args.nnz, args.factors = [5_000_000], [64]
    info = versions()
    print(json.dumps(info))
    speed = speed_rows(args)
    quality = [] if args.no_quality else quality_rows(args)
    table = markdown(speed, quality)
    print(table)
    write_json(results_path, {"versions": info, "speed": speed, "quality": quality,
                              "argv": sys.argv[1:]}, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
