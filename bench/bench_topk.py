"""Exact top-k retrieval: recfuse vs numpy, faiss-cpu and implicit, in one run.

For each case (item table n x d, a batch of m queries, k, with or without per-query
exclusion of seen items) every library answers the same queries; the table reports queries
per second (median over repeats), recfuse's speed-up over each peer (for "recfuse bf16":
its speed-up over "recfuse", which is ``storage="auto"``: bfloat16 copies itself wherever the
rule picks them, e.g. every k = 10 case of the defaults, so that column is not a float32
baseline there), and the floor recfuse is measured
against: for small batches the bytes of the item table read per batch (achieved GB/s, beside
this machine's memory read bandwidth measured in the same run), for large batches the flops
(achieved GFLOP/s, beside numpy's float32 GEMM rate on the same shapes, measured in the same
run).

Peers at their best: faiss and numpy use OpenBLAS with OPENBLAS_CORETYPE=SkylakeX on CPUs
with AVX-512 (faiss's bundled OpenBLAS 0.3.15 takes a Zen 4 for "Zen", i.e. AVX2 kernels;
numpy's 0.3.31 detects SkylakeX by itself; bench/openblas_env.py) and the same thread count;
faiss answers from an IndexFlatIP (built before timing); exclusion for faiss and numpy
means asking for k + (the largest seen count) and dropping seen ids (vectorised), or writing
-inf into the score matrix, respectively; implicit
answers through its ALS model's ``recommend`` (filter_already_liked_items) with its factors
set to the same table and its own THREADS threads, timed with a THREADS-thread and with a
single-threaded BLAS (what implicit asks for: its batches run faster so, its single queries
slower), the faster counting (``implicit_blas_threads`` in the JSON says which). recfuse
answers from an ItemIndex built before timing (the table packed once, as faiss's index is).

    python bench/bench_topk.py                # the default cases (a few minutes)
    python bench/bench_topk.py --full         # the whole grid of the retrieval issue
    python bench/bench_topk.py --storage      # float32 vs bfloat16 item storage only

--storage compares the two storages of recfuse alone, interleaved in one process (A B, A B,
...): ALS factors (recfuse.ALS, 64 factors, on synthetic_implicit 20k users x 20k items x 1M
events; 1 or 1,000 users' vectors as queries with their seen items excluded, as evaluation
does; dot and cosine) and Gaussian tables (1M x 64, 50k x 128). It reports queries per
second, the ratio, how many candidates per query bfloat16 storage scored exactly, and
whether both gave the same ids and scores bit for bit (they must). --evaluation EVENTS adds
recfuse.metrics.evaluate of ALS (bench_data.py's evaluation workload) with either storage.
RECFUSE_BENCH_THREADS sets the threads (default 2).

    python bench/bench_topk.py --storage --evaluation 20000000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

from bench_args import (bench_threads, check_writable, non_negative_float, non_negative_int,
                        peer_version, write_json)
from openblas_env import prefer_avx512_openblas  # noqa: E402

THREADS = bench_threads()

prefer_avx512_openblas()
for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[variable] = str(THREADS)

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import recfuse  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULT_CASES = [  # (n, d, m, k, exclude)
    (50_000, 128, 1, 10, False), (50_000, 128, 32, 10, False), (50_000, 128, 1024, 10, False),
    (50_000, 128, 32, 100, False), (50_000, 128, 32, 1000, False),
    (50_000, 128, 32, 10, True), (50_000, 128, 1024, 10, True),
    (1_000_000, 64, 1, 10, False), (1_000_000, 64, 32, 10, False),
    (1_000_000, 64, 32, 10, True),
]
SEEN_PER_QUERY = 100  # exclusion cases: each query has this many seen items
LIBRARIES = ("recfuse", "bf16", "numpy", "faiss", "implicit")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="n in {50k, 1M} x d in {64, 128} x "
                        "m in {1, 32, 1024} x k in {10, 100, 1000} x exclusion on/off")
    parser.add_argument("--libraries", nargs="+", choices=LIBRARIES, default=list(LIBRARIES),
                        help="bf16: recfuse with storage='bfloat16' (exact, re-ranked)")
    parser.add_argument("--min-time", type=non_negative_float, default=0.6,
                        help="seconds of calls per library and case")
    parser.add_argument("--storage", action="store_true",
                        help="only recfuse float32 vs bfloat16 storage (see the module doc)")
    parser.add_argument("--evaluation", type=non_negative_int, default=0, metavar="EVENTS",
                        help="with --storage: also metrics.evaluate of ALS at EVENTS events "
                             "(bench_data.py's workload; 20000000 takes a few minutes)")
    parser.add_argument("--output", default=None,
                        help="JSON path (default results/topk.json, or topk_storage.json)")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = os.path.join(RESULTS, "topk_storage.json" if args.storage else "topk.json")
    check_writable(args.output, parser)
    return args


def cases(full: bool):
    if not full:
        return DEFAULT_CASES
    return [(n, d, m, k, e) for n in (50_000, 1_000_000) for d in (64, 128)
            for m in (1, 32, 1024) for k in (10, 100, 1000) for e in (False, True)]


def timed(function, min_time: float) -> float:
    """Median seconds of one call (after one warm-up call)."""
    function()
    times = []
    started = time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < min_time and len(times) < 200):
        begin = time.perf_counter()
        function()
        times.append(time.perf_counter() - begin)
    return statistics.median(times)


def timed_round_robin(runs: dict, min_time: float, rounds: int = 3,
                      settings: dict | None = None) -> dict:
    """Median seconds per call of each library, measured in turns (A B C, A B C, ...) so that
    a change in the machine's load affects every library alike (these machines are shared).
    Each turn starts after a pause, so that the previous library's thread pool (OpenBLAS,
    OpenMP: they spin for a while after each call) has gone idle, and is a burst of calls
    lasting at least min_time / rounds, of which the first is not counted. ``settings`` maps
    a library to a context manager factory its turns (and warm-up) run under (implicit: a
    single-threaded BLAS, its own recommended setting), entered outside the timed calls."""
    settings = settings or {}
    times = {name: [] for name in runs}
    for name, run in runs.items():
        with settings.get(name, contextlib.nullcontext)():
            run()  # warm-up
    for _ in range(rounds):
        for name, run in runs.items():
            time.sleep(0.3)
            with settings.get(name, contextlib.nullcontext)():
                run()
                started = time.perf_counter()
                while len(times[name]) < 3 or time.perf_counter() - started < min_time / rounds:
                    begin = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - begin)
    return {name: statistics.median(values) for name, values in times.items()}


def read_bandwidth() -> float:
    """GB/s of reading 1 GiB from memory: THREADS numpy sums of its parts in parallel (numpy
    releases the GIL in the reduction), the floor of a search that streams the item table."""
    from concurrent.futures import ThreadPoolExecutor

    parts = [np.ones(2**28 // THREADS, np.float32) for _ in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        seconds = timed(lambda: list(pool.map(np.sum, parts)), 1.0)
    return sum(p.nbytes for p in parts) / seconds / 1e9


def numpy_gemm_rate(m: int, n: int, d: int) -> float:
    """GFLOP/s of numpy's float32 Q @ V.T for this shape (the BLAS floor for a batch)."""
    rng = np.random.default_rng(0)
    Q = rng.standard_normal((m, d), dtype=np.float32)
    V = rng.standard_normal((n, d), dtype=np.float32)
    out = np.empty((m, n), np.float32)
    seconds = timed(lambda: np.matmul(Q, V.T, out=out), 0.5)
    return 2.0 * m * n * d / seconds / 1e9


# ------------------------------------------------------------------------- the libraries


def numpy_topk(Q, V, k, seen):
    S = Q @ V.T
    if seen is not None:
        rows = np.repeat(np.arange(Q.shape[0]), np.diff(seen.indptr))
        S[rows, seen.indices] = -np.inf
    n = S.shape[1]
    part = np.argpartition(S, n - k, axis=1)[:, n - k:]  # the top end: no negated copy of S
    top = np.take_along_axis(S, part, axis=1)
    order = np.argsort(-top, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(top, order, axis=1)


def make_faiss(V, k, seen):
    import faiss

    faiss.omp_set_num_threads(THREADS)
    index = faiss.IndexFlatIP(V.shape[1])
    index.add(V)
    extra = 0 if seen is None else int(np.diff(seen.indptr).max())

    def search(Q):
        scores, ids = index.search(Q, k + extra)
        if seen is None:
            return ids, scores
        # Drop seen ids and keep the first k, vectorised (a per-query Python loop of np.isin
        # cost faiss about a third of its time at 1,024 queries): `seen` has sorted indices, so
        # row * n + id is a sorted key array that one searchsorted probes for every result.
        n = V.shape[0]
        seen_keys = np.repeat(np.arange(Q.shape[0], dtype=np.int64) * n,
                              np.diff(seen.indptr)) + seen.indices
        keys = np.arange(Q.shape[0], dtype=np.int64)[:, None] * n + ids
        found = np.minimum(np.searchsorted(seen_keys, keys), max(seen_keys.size - 1, 0))
        drop = (seen_keys[found] == keys) & (ids >= 0) if seen_keys.size else ids < -1
        first = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept ids first, in order
        out = np.take_along_axis(ids, first, axis=1)
        out[np.take_along_axis(drop, first, axis=1)] = -1  # fewer than k left (not here)
        return out, None

    return search


def make_implicit(V, k, seen, m):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=V.shape[1], num_threads=THREADS,
                                    random_state=0)
    model.item_factors = V
    model.user_factors = np.zeros((m, V.shape[1]), np.float32)
    user_items = seen if seen is not None else sp.csr_matrix((m, V.shape[0]), dtype=np.float32)
    users = np.arange(m)

    def search(Q):
        model.user_factors[:] = Q
        ids, scores = model.recommend(users, user_items, N=k,
                                      filter_already_liked_items=seen is not None)
        return ids, scores

    return search


def agreement(ids, reference_ids) -> float:
    """Fraction of the reference's top-k ids that the library also returned."""
    hits = [np.intersect1d(a[a >= 0], b[b >= 0]).size for a, b in zip(ids, reference_ids)]
    total = sum(int((b >= 0).sum()) for b in reference_ids)
    return sum(hits) / max(1, total)


def als_factors(n_users: int = 20_000, n_items: int = 20_000, events: int = 1_000_000,
                factors: int = 64):
    """(user factors, item factors, user x item CSR) of recfuse.ALS on synthetic data."""
    from recfuse import datasets

    matrix = datasets.synthetic_implicit(n_users, n_items, events, seed=0)
    model = recfuse.ALS(factors=factors, iterations=5, random_state=0, num_threads=THREADS)
    model.fit(matrix)
    return model.user_factors, model.item_factors, matrix


def storage_cases():
    """(name, items, queries, k, exclude, metric) for --storage."""
    rng = np.random.default_rng(0)
    users, items, matrix = als_factors()
    chosen = rng.choice(users.shape[0], 1000, replace=False)
    seen = matrix[chosen]
    for m in (1, 1000):
        for k in (10, 100, 1000):
            yield "ALS 20k x 64", items, users[chosen[:m]], k, seen[:m], "dot"
    for k in (10, 100):
        yield "ALS 20k x 64 cosine", items, users[chosen], k, seen, "cosine"
    table = rng.standard_normal((1_000_000, 64), dtype=np.float32)
    for m in (1, 32):
        queries = rng.standard_normal((m, 64), dtype=np.float32)
        yield "Gaussian 1M x 64", table, queries, 10, None, "dot"
    del table
    table = rng.standard_normal((50_000, 128), dtype=np.float32)
    for k in (10, 100):
        queries = rng.standard_normal((1024, 128), dtype=np.float32)
        yield "Gaussian 50k x 128", table, queries, k, None, "dot"


def storage_evaluation(events: int, rounds: int = 3) -> dict:
    """recfuse.metrics.evaluate of recfuse.ALS at `events` events (bench_data.py's evaluation
    workload: synthetic_implicit, 80/20 per-user split, 64 factors, k = 10), its item index
    float32 then bfloat16, in turns."""
    from recfuse import datasets, metrics, split
    from recfuse._als.cpu import _core

    n_users, n_items = min(max(events // 100, 100), 100_000), min(max(events // 400, 50), 20_000)
    matrix = datasets.synthetic_implicit(n_users, n_items, events, seed=0)
    train, test = split.per_user_split(matrix, 0.2, seed=0)
    model = recfuse.ALS(factors=64, iterations=3, random_state=0, num_threads=THREADS)
    model.fit(train)
    indexes = {storage: recfuse.ItemIndex(model.item_factors, storage=storage, backend="cpu")
               for storage in ("native", "bfloat16")}
    seconds = {storage: [] for storage in indexes}
    results, rescored = {}, 0
    for _ in range(rounds):
        for storage, index in indexes.items():
            model._indexes[("item_factors", "dot")] = index  # the index ALS.recommend uses
            before = _core.topk_bfloat16_rescored()
            started = time.perf_counter()
            results[storage] = metrics.evaluate(model, train, test, k=10, num_threads=THREADS)
            seconds[storage].append(time.perf_counter() - started)
            rescored = max(rescored, _core.topk_bfloat16_rescored() - before)
    median = {storage: statistics.median(values) for storage, values in seconds.items()}
    return {"events": events, "users": int(results["native"]["users"]), "seconds": median,
            "speedup": median["native"] / median["bfloat16"],
            "rescored_per_user": rescored / results["native"]["users"],
            "same_metrics": all(results["native"][key] == results["bfloat16"][key]
                                for key in results["native"]),
            "load_average": os.getloadavg()}


def compare_storage(args) -> int:
    """float32 vs bfloat16 item storage, interleaved in one process (see the module doc)."""
    from recfuse._als.cpu import _core

    print(f"threads {THREADS}; bfloat16 kernel {_core.topk_bfloat16_kernel()}; "
          f"load average {os.getloadavg()}", flush=True)
    lines = ["| items | m | k | seen | float32 q/s | bfloat16 q/s | speed-up "
             "| exactly scored per query | same ids and scores |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    report = {"threads": THREADS, "bfloat16_kernel": _core.topk_bfloat16_kernel(), "cases": []}
    for name, V, Q, k, seen, metric in storage_cases():
        # "native", not the default "auto", which reads the bfloat16 copies wherever its rule
        # picks them (before 2026-11-30 evening this column was "auto": bfloat16 vs bfloat16
        # in those cases)
        native = recfuse.ItemIndex(V, metric=metric, storage="native", backend="cpu")
        compact = recfuse.ItemIndex(V, metric=metric, storage="bfloat16", backend="cpu")
        runs = {"float32": lambda: native.search(Q, k, exclude=seen, num_threads=THREADS),
                "bfloat16": lambda: compact.search(Q, k, exclude=seen, num_threads=THREADS)}
        before = _core.topk_bfloat16_rescored()
        got, expected = runs["bfloat16"](), runs["float32"]()
        rescored = (_core.topk_bfloat16_rescored() - before) / Q.shape[0]
        same = (np.array_equal(got[0], expected[0])
                and np.array_equal(got[1].view(np.uint32), expected[1].view(np.uint32)))
        seconds = timed_round_robin(runs, args.min_time, rounds=5)
        m = Q.shape[0]
        case = {"items": name, "m": m, "k": k, "seen": seen is not None,
                "qps": {key: m / value for key, value in seconds.items()},
                "speedup": seconds["float32"] / seconds["bfloat16"],
                "rescored_per_query": rescored, "identical": bool(same),
                "load_average": os.getloadavg()}
        report["cases"].append(case)
        line = (f"| {name} | {m} | {k} | {'yes' if seen is not None else 'no'} | "
                f"{case['qps']['float32']:,.0f} | {case['qps']['bfloat16']:,.0f} | "
                f"{case['speedup']:.2f}x | {rescored:.1f} | {'yes' if same else 'NO'} |")
        lines.append(line)
        print(line, f"(load {case['load_average'][0]:.1f})", flush=True)
    print()
    print("\n".join(lines))
    if args.evaluation:
        report["evaluation"] = storage_evaluation(args.evaluation)
        row = report["evaluation"]
        print(f"\nmetrics.evaluate at {row['events']:,} events ({row['users']:,} users, "
              f"k = 10): float32 {row['seconds']['native']:.2f} s, bfloat16 "
              f"{row['seconds']['bfloat16']:.2f} s ({row['speedup']:.2f}x), "
              f"{row['rescored_per_user']:.1f} scored exactly per user, same metrics: "
              f"{row['same_metrics']}, load {row['load_average'][0]:.1f}")
    write_json(args.output, report, indent=2)
    print(f"wrote {args.output}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from threadpoolctl import threadpool_limits

    threadpool_limits(THREADS)
    if args.storage:
        return compare_storage(args)
    versions = {"numpy": np.__version__, "recfuse": recfuse.__version__,
                "python": platform.python_version()}
    for name in ("faiss", "implicit"):  # a missing peer is recorded and skipped, not fatal
        versions[name] = peer_version(name)
    bandwidth = read_bandwidth()
    print(f"threads {THREADS}; memory read bandwidth {bandwidth:.1f} GB/s; versions {versions}",
          flush=True)
    report = {"threads": THREADS, "read_bandwidth_gbs": bandwidth, "versions": versions,
              "machine": platform.processor() or platform.machine(),
              "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "cases": []}
    rng = np.random.default_rng(0)
    tables: dict = {}
    gemm_rates: dict = {}
    header = ("| n x d | m | k | seen | recfuse q/s | recfuse bf16 | numpy | faiss | implicit "
              "| recfuse GB/s | recfuse GFLOP/s (numpy GEMM) |")
    lines = [header, "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for n, d, m, k, exclude in cases(args.full):
        if (n, d) not in tables:
            tables.clear()
            tables[(n, d)] = rng.standard_normal((n, d), dtype=np.float32)
        V = tables[(n, d)]
        Q = rng.standard_normal((m, d), dtype=np.float32)
        seen = None
        if exclude:
            cols = np.concatenate([rng.choice(n, SEEN_PER_QUERY, replace=False) for _ in range(m)])
            seen = sp.csr_matrix((np.ones(cols.size, np.float32), cols,
                                  np.arange(0, cols.size + 1, SEEN_PER_QUERY)), shape=(m, n))
            seen.sort_indices()
        index = recfuse.ItemIndex(V, backend="cpu")
        runs = {"recfuse": lambda: index.search(Q, k, exclude=seen, num_threads=THREADS)}
        if "bf16" in args.libraries:
            index16 = recfuse.ItemIndex(V, storage="bfloat16", backend="cpu")
            runs["bf16"] = lambda: index16.search(Q, k, exclude=seen, num_threads=THREADS)
        if "numpy" in args.libraries:
            runs["numpy"] = lambda: numpy_topk(Q, V, k, seen)
        if "faiss" in args.libraries and not str(versions["faiss"]).startswith("unavailable"):
            faiss_search = make_faiss(V, k, seen)
            runs["faiss"] = lambda: faiss_search(Q)
        if "implicit" in args.libraries and not str(versions["implicit"]).startswith("unavail"):
            implicit_search = make_implicit(V, k, seen, m)
            runs["implicit"] = lambda: implicit_search(Q)  # BLAS on THREADS threads
            runs["implicit_blas1"] = runs["implicit"]  # the same, BLAS on one thread
        reference_ids = numpy_topk(Q, V, k, seen)[0]
        case = {"n": n, "d": d, "m": m, "k": k, "seen_per_query": SEEN_PER_QUERY if exclude else 0,
                "qps": {}, "agreement": {}}
        # implicit parallelises over queries with its own threads and warns unless BLAS is
        # single-threaded (under load its batches ran 1.4-3x slower with a THREADS-thread
        # BLAS), while a single query has nothing to split but the BLAS call (2026-11-29: 912
        # q/s with two BLAS threads, 370 with one): both are timed, the faster is its figure.
        settings = {"implicit_blas1": lambda: threadpool_limits(1, user_api="blas")}
        for name, seconds in timed_round_robin(runs, args.min_time, settings=settings).items():
            case["qps"][name] = m / seconds
            case["agreement"][name] = agreement(runs[name]()[0], reference_ids)
        if "implicit_blas1" in case["qps"]:
            one = case["qps"].pop("implicit_blas1")
            case["implicit_blas_threads"] = 1 if one > case["qps"]["implicit"] else THREADS
            case["qps"]["implicit"] = max(one, case["qps"]["implicit"])
            case["agreement"].pop("implicit_blas1")
        seconds = m / case["qps"]["recfuse"]
        case["recfuse_gbs"] = V.nbytes / seconds / 1e9
        case["recfuse_gflops"] = 2.0 * m * n * d / seconds / 1e9
        if m >= 32:
            if (m, n, d) not in gemm_rates:
                gemm_rates[(m, n, d)] = numpy_gemm_rate(m, n, d)
            case["numpy_gemm_gflops"] = gemm_rates[(m, n, d)]
        report["cases"].append(case)

        def cell(name):
            if name not in case["qps"]:
                return "-"
            ratio = case["qps"]["recfuse"] / case["qps"][name]
            if name == "bf16":  # its own speed-up over "recfuse" (storage="auto")
                ratio = 1 / ratio
            flag = "" if case["agreement"][name] > 0.999 else f" (agrees {case['agreement'][name]:.3f})"
            return f"{case['qps'][name]:,.0f} ({ratio:.1f}x){flag}"

        gemm = f" ({case['numpy_gemm_gflops']:.0f})" if "numpy_gemm_gflops" in case else ""
        line = (f"| {n // 1000}k x {d} | {m} | {k} | {'yes' if exclude else 'no'} | "
                f"{case['qps']['recfuse']:,.0f} | {cell('bf16')} | {cell('numpy')} | {cell('faiss')} | "
                f"{cell('implicit')} | {case['recfuse_gbs']:.1f} | "
                f"{case['recfuse_gflops']:.1f}{gemm} |")
        lines.append(line)
        print(line, flush=True)
    print()
    print("\n".join(lines))
    write_json(args.output, report, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
