"""GPU ALS training speed: seconds per iteration (sweep_users + sweep_items) on the device.

    python bench/bench_gpu_als.py                        # ML-20M-shaped set, k = 64 and 128
    python bench/bench_gpu_als.py --factors 64 --solvers cg --iterations 5
    python bench/bench_gpu_als.py --backends cpu --users 2000 --items 1000 --nnz 50000  # smoke

The data set is recfuse.datasets.synthetic_implicit with MovieLens-20M's shape (138,000 users
x 27,000 items x 20M stored counts, power-law popularity and activity). Every backend's
trainer keeps its data on the device and synchronises before each method returns, so the
wall time of ``sweep_users() + sweep_items()`` is the time of one ALS iteration. The first
iteration is a warm-up (kernel compilation for CuPy, first-launch set-up) and is reported
apart.

If ``implicit`` with GPU support is importable (``implicit.gpu.HAS_CUDA``), its GPU ALS runs
on the same matrix for CG (the only solver it has on the GPU). implicit's stored value is
the confidence itself, so it gets C = 1 + alpha*R while recfuse gets R with linear
confidence: both solve the same systems. Its seconds per iteration are the difference of two
fits (1 and 1 + N iterations) divided by N, each fit ending with a copy of the factors to the
host, so set-up and asynchronous launches do not distort it.

A time budget (--budget-s, default 150 s) skips the remaining runs once spent, so the whole
script stays under three minutes on an H100. Results: a Markdown table on stdout and
bench/results/gpu_als.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

import recfuse
from recfuse import datasets
from recfuse._als.common import AlsParams, CsrArrays
from recfuse._backend import BACKEND_NAMES, resolve_backend

from bench_args import check_writable, positive_int, write_json

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=positive_int, default=138_000)
    parser.add_argument("--items", type=positive_int, default=27_000)
    parser.add_argument("--nnz", type=positive_int, default=20_000_000)
    parser.add_argument("--factors", type=positive_int, nargs="+", default=[64, 128])
    parser.add_argument("--solvers", nargs="+", default=["cg", "cholesky"],
                        choices=["cg", "cholesky"])
    parser.add_argument("--backends", nargs="+", default=["cuda", "cupy"], choices=BACKEND_NAMES)
    parser.add_argument("--iterations", type=positive_int, default=3,
                        help="timed iterations per run")
    parser.add_argument("--cg-steps", type=positive_int, default=3)
    parser.add_argument("--regularization", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=2.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--no-implicit", action="store_true", help="skip implicit's GPU ALS")
    parser.add_argument("--budget-s", type=float, default=150.0,
                        help="skip the remaining runs once this much time has passed")
    parser.add_argument("--output", default=os.path.join(RESULTS, "gpu_als.json"))
    args = parser.parse_args(argv)
    check_writable(args.output, parser)
    return args


def device_description(backends) -> str:
    table = {info.name: info for info in recfuse.backends()}
    for name in backends:
        if name in ("cuda", "cupy") and table[name].available:
            return table[name].detail
    return platform.processor() or platform.machine()


def cell(run: dict, key: str, spec: str) -> str:
    """A run's figure ``key`` formatted by ``spec``; "nan" where the run has none."""
    value = run.get(key)
    return "nan" if value is None else format(value, spec)


def time_backend(module, user_items, item_users, X0, Y0, params, iterations, deadline):
    start = time.perf_counter()
    trainer = module.make_trainer(user_items, item_users, X0.copy(), Y0.copy(), params)
    setup = time.perf_counter() - start

    def iteration():
        begin = time.perf_counter()
        failed = trainer.sweep_users()
        middle = time.perf_counter()
        failed += trainer.sweep_items()
        end = time.perf_counter()
        return (end - begin, middle - begin, end - middle), failed

    (warmup, _, _), failed = iteration()
    times, user_times, item_times = [], [], []
    for _ in range(iterations):
        # No more timed iterations than the budget has room for, by the last one's time (the
        # warm-up's includes CuPy's kernel compilation; its Cholesky at k = 128 takes about
        # 17 s an iteration on an H200).
        if times and time.perf_counter() + times[-1] > deadline:
            break
        (seconds, users, items), more = iteration()
        times.append(seconds)
        user_times.append(users)
        item_times.append(items)
        failed += more
    begin = time.perf_counter()
    loss = trainer.data_loss()
    loss_time = time.perf_counter() - begin
    begin = time.perf_counter()
    X, Y = trainer.factors()
    factors_time = time.perf_counter() - begin
    return {
        "setup_s": setup,
        "warmup_s": warmup,
        "iteration_s": times,  # fewer than asked when the budget ran short
        "s_per_iteration": statistics.median(times) if times else warmup,
        # The half-sweeps apart: a long tail of one sweep (a popular item's row) shows here.
        "users_s": statistics.median(user_times) if times else None,
        "items_s": statistics.median(item_times) if times else None,
        "data_loss_s": loss_time,
        "factors_s": factors_time,
        "data_loss": loss,
        "rows_not_positive_definite": int(failed),
        "finite": bool(np.isfinite(X).all() and np.isfinite(Y).all()),
    }


def implicit_gpu_problem(dtype) -> str:
    """Why implicit's GPU ALS cannot run here at ``dtype``; "" when it can."""
    try:
        import implicit.gpu
        import implicit.gpu.als  # what time_implicit uses
    except Exception as error:  # noqa: BLE001
        return f"implicit is not importable: {error}"
    if not getattr(implicit.gpu, "HAS_CUDA", False):
        return "implicit has no GPU support here (implicit.gpu.HAS_CUDA is False)"
    if np.dtype(dtype) != np.float32:
        return f"implicit's GPU ALS has no {np.dtype(dtype).name}"
    return ""


def time_implicit(matrix, k, params, iterations, dtype):
    """implicit's GPU ALS (CG) on C = 1 + alpha R; None when it is not usable here."""
    problem = implicit_gpu_problem(dtype)
    if problem:
        return None, problem
    from implicit.gpu.als import AlternatingLeastSquares

    confidence = matrix.astype(np.float32, copy=True)
    confidence.data = (1.0 + params.alpha * confidence.data).astype(np.float32)

    def fit(n):
        model = AlternatingLeastSquares(
            factors=k, regularization=params.regularization, alpha=1.0, dtype=np.dtype(dtype),
            iterations=n, calculate_training_loss=False, random_state=0,
        )
        model.cg_steps = params.cg_steps
        begin = time.perf_counter()
        model.fit(confidence, show_progress=False)
        model.to_cpu()  # waits for the device
        return time.perf_counter() - begin

    try:
        fit(1)  # warm-up: context, kernels
        one = fit(1)
        many = fit(1 + iterations)
    except Exception as error:  # noqa: BLE001
        return None, f"implicit GPU ALS failed: {type(error).__name__}: {error}"
    return {"s_per_iteration": (many - one) / iterations, "fit_1_s": one,
            f"fit_{1 + iterations}_s": many}, ""


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    dtype = np.dtype(args.dtype)

    backends = []
    table = {info.name: info for info in recfuse.backends()}
    for name in args.backends:
        if table[name].available:
            backends.append((name, resolve_backend(name)))
        else:
            print(f"skipping backend {name}: {table[name].detail}")
    if args.no_implicit:
        implicit_problem = "implicit's GPU ALS not asked for (--no-implicit)"
    elif "cg" not in args.solvers:
        implicit_problem = "implicit's GPU ALS has only the cg solver, not in --solvers"
    else:
        implicit_problem = implicit_gpu_problem(dtype)
    if not backends and implicit_problem:
        print(f"nothing to time: no requested backend ({', '.join(args.backends)}) is "
              f"available, and {implicit_problem}")
        return 1

    print(f"generating {args.users} x {args.items} with {args.nnz} stored entries ...", flush=True)
    begin = time.perf_counter()
    matrix = datasets.synthetic_implicit(args.users, args.items, args.nnz, seed=0, dtype=dtype)
    user_items = CsrArrays.from_scipy(matrix, dtype)
    item_users = user_items.transpose()
    generate_s = time.perf_counter() - begin
    degrees = np.diff(matrix.indptr)
    popularity = np.diff(item_users.indptr)
    print(f"  {generate_s:.1f} s; nnz {matrix.nnz}, user degree max {degrees.max()} median "
          f"{int(np.median(degrees))}, item degree max {popularity.max()} median "
          f"{int(np.median(popularity))}", flush=True)

    report = {
        "device": device_description(args.backends),
        "python": sys.version.split()[0],
        "data": {"users": args.users, "items": args.items, "nnz": int(matrix.nnz),
                 "generator": "recfuse.datasets.synthetic_implicit(seed=0)",
                 "user_degree_max": int(degrees.max()), "item_degree_max": int(popularity.max())},
        "settings": {"dtype": dtype.name, "cg_steps": args.cg_steps, "alpha": args.alpha,
                     "regularization": args.regularization, "timed_iterations": args.iterations},
        "runs": [],
    }
    rows = []

    def over_budget():
        return time.perf_counter() - started > args.budget_s

    for k in args.factors:
        rng = np.random.default_rng(k)
        X0 = (rng.standard_normal((args.users, k)) * 0.01).astype(dtype)
        Y0 = (rng.standard_normal((args.items, k)) * 0.01).astype(dtype)
        for solver in args.solvers:
            params = AlsParams(regularization=args.regularization, alpha=args.alpha,
                               confidence="linear", solver=solver, cg_steps=args.cg_steps,
                               num_threads=0)
            for name, module in backends:
                run = {"library": "recfuse", "backend": name, "solver": solver, "factors": k}
                if over_budget():
                    run["skipped"] = f"time budget of {args.budget_s:.0f} s spent"
                else:
                    try:
                        run.update(time_backend(module, user_items, item_users, X0, Y0, params,
                                                args.iterations, started + args.budget_s))
                    except (ValueError, RuntimeError, MemoryError) as error:
                        run["skipped"] = f"{type(error).__name__}: {error}"
                report["runs"].append(run)
                rows.append(run)
                print(f"  {name:6s} {solver:8s} k={k:4d}: " + (
                    f"{run['s_per_iteration']:.4f} s/iteration"
                    if "s_per_iteration" in run else run["skipped"]), flush=True)
        if not args.no_implicit and "cg" in args.solvers:
            run = {"library": "implicit", "backend": "implicit.gpu", "solver": "cg", "factors": k}
            if over_budget():
                run["skipped"] = f"time budget of {args.budget_s:.0f} s spent"
            else:
                result, why = time_implicit(matrix, k, AlsParams(
                    args.regularization, args.alpha, "linear", "cg", args.cg_steps, 0),
                    args.iterations, dtype)
                if result is None:
                    run["skipped"] = why
                else:
                    run.update(result)
            report["runs"].append(run)
            rows.append(run)
            print(f"  implicit cg k={k:4d}: " + (
                f"{run['s_per_iteration']:.4f} s/iteration"
                if "s_per_iteration" in run else run["skipped"]), flush=True)

    report["total_s"] = time.perf_counter() - started
    print()
    print(f"Device: {report['device']}; {args.users} x {args.items}, nnz {matrix.nnz}, "
          f"{dtype.name}, {args.iterations} timed iterations")
    print()
    print("| library | backend | solver | k | s / iteration | users s | items s | warm-up s "
          "| set-up s | data_loss s |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run in rows:
        if "s_per_iteration" not in run:
            print(f"| {run['library']} | {run['backend']} | {run['solver']} | {run['factors']} | "
                  f"skipped: {run['skipped']} | | | | | |")
            continue
        print(f"| {run['library']} | {run['backend']} | {run['solver']} | {run['factors']} | "
              f"{run['s_per_iteration']:.4f} | {cell(run, 'users_s', '.4f')} | "
              f"{cell(run, 'items_s', '.4f')} | "
              f"{cell(run, 'warmup_s', '.3f')} | {cell(run, 'setup_s', '.3f')} | "
              f"{cell(run, 'data_loss_s', '.4f')} |")
    print(f"\ntotal {report['total_s']:.1f} s")

    write_json(args.output, report, indent=2)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
