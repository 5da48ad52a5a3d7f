"""GPU exact top-k speed: recfuse's CUDA backend vs CuPy and torch peers, in one run.

    python bench/bench_gpu_topk.py                 # 50k x 128 and 1M x 64, m = 1/32/1024, k = 10/100/1000
    python bench/bench_gpu_topk.py --budget-s 30

Peers (when importable): ``cupy`` = cupy matmul + argpartition + argsort of the k (ties not
by id: a speed reference only), ``torch`` = torch.matmul + torch.topk, eager and as a CUDA
graph fed from pinned memory (bench/torch_graph.py; the ratio takes the faster). Every timed call
starts from host queries and ends with host results (recfuse's contract), except that the
peers' item tables are already on the device, like recfuse's. For m = 1 the achieved GB/s
of the item table is reported against a device-to-device copy rate measured in the same run;
for m = 1024 the GEMM GFLOP/s (2 m n d / time) against cupy/torch float32 matmul of the same
shape in the same run. Results: a Markdown table on stdout and bench/results/gpu_topk.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bench_args import check_writable, positive_int, write_json
from torch_graph import graphed

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", default=["50000x128", "1000000x64"])
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 32, 1024])
    p.add_argument("--ks", type=positive_int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--budget-s", type=float, default=90.0)
    p.add_argument("--output", default=os.path.join(RESULTS, "gpu_topk.json"))
    args = p.parse_args(argv)
    check_writable(args.output, p)
    return args


def best_time(fn, repeats, sync):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    from recfuse._topk import cuda as cuda_topk

    ok, device = cuda_topk.availability()
    if not ok:
        print(f"recfuse cuda backend not available: {device}")
        return 1
    try:
        import cupy as cp
    except Exception:  # noqa: BLE001
        cp = None
    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except Exception:  # noqa: BLE001
        torch = None
    sync = (lambda: cp.cuda.Device().synchronize()) if cp is not None else (lambda: None)

    # Reference rates of this card, measured now.
    copy_gbs = None
    if cp is not None:
        src = cp.empty(1 << 28, dtype=cp.uint8)
        dst = cp.empty_like(src)
        t = best_time(lambda: dst.__setitem__(Ellipsis, src), 5, sync)
        copy_gbs = 2 * src.nbytes / t / 1e9  # read + write
        del src, dst
    rows = []
    budget_hit = False
    for table in args.tables:
        n, d = (int(v) for v in table.split("x"))
        rng = np.random.default_rng(0)
        items = rng.standard_normal((n, d), dtype=np.float32)
        prepared = cuda_topk.prepare(items)
        items_cp = cp.asarray(items) if cp is not None else None
        items_t = torch.from_numpy(items).cuda() if torch is not None else None
        for m in args.batches:
            queries = rng.standard_normal((m, d), dtype=np.float32)
            gemm = {}
            if m >= 1024:
                if cp is not None:
                    qc = cp.asarray(queries)
                    t = best_time(lambda: qc @ items_cp.T, args.repeats, sync)
                    gemm["cupy"] = 2 * m * n * d / t / 1e9
                if torch is not None:
                    qt = torch.from_numpy(queries).cuda()
                    t = best_time(lambda: torch.matmul(qt, items_t.T), args.repeats,
                                  torch.cuda.synchronize)
                    gemm["torch"] = 2 * m * n * d / t / 1e9
            for k in args.ks:
                if time.perf_counter() - start > args.budget_s:
                    budget_hit = True
                    break
                res = {"table": table, "n": n, "d": d, "m": m, "k": k}
                t = best_time(lambda: cuda_topk.search(prepared, queries, k), args.repeats, sync)
                res["recfuse_qps"] = m / t
                res["recfuse_ms"] = t * 1e3
                if m == 1 and copy_gbs:
                    res["item_table_gbs"] = items.nbytes / t / 1e9
                    res["fraction_of_copy_rate"] = res["item_table_gbs"] / copy_gbs
                if gemm:
                    res["gflops"] = 2 * m * n * d / t / 1e9
                    res["fraction_of_gemm"] = res["gflops"] / max(gemm.values())
                    res["gemm_gflops"] = gemm
                if cp is not None:
                    def cupy_topk():
                        S = cp.asarray(queries) @ items_cp.T
                        part = cp.argpartition(-S, min(k, n - 1), axis=1)[:, :k]
                        vals = cp.take_along_axis(S, part, axis=1)
                        order = cp.argsort(-vals, axis=1)
                        return (cp.take_along_axis(part, order, axis=1).get(),
                                cp.take_along_axis(vals, order, axis=1).get())
                    t = best_time(cupy_topk, args.repeats, sync)
                    res["cupy_qps"] = m / t
                if torch is not None:
                    def torch_topk():
                        S = torch.matmul(torch.from_numpy(queries).cuda(), items_t.T)
                        v, i = torch.topk(S, k, dim=1)
                        return i.cpu().numpy(), v.cpu().numpy()
                    t = best_time(torch_topk, args.repeats, torch.cuda.synchronize)
                    res["torch_eager_qps"] = m / t

                    def scored(q):  # the same work on a device tensor, for the graph
                        v, i = torch.topk(torch.matmul(q, items_t.T), k, dim=1)
                        return i, v
                    try:
                        graph_call = graphed(torch, scored, (queries,))
                        t = best_time(lambda: graph_call(queries), args.repeats,
                                      torch.cuda.synchronize)
                        res["torch_graph_qps"] = m / t
                    except Exception as error:  # noqa: BLE001 - a capture torch refuses
                        res["torch_graph_error"] = f"{type(error).__name__}: {error}"
                    res["torch_qps"] = max(res[key] for key in (
                        "torch_eager_qps", "torch_graph_qps") if key in res)
                peers = [res[key] for key in ("cupy_qps", "torch_qps") if key in res]
                if peers:
                    res["ratio_vs_best_peer"] = res["recfuse_qps"] / max(peers)
                rows.append(res)
                print(json.dumps(res), flush=True)
        del prepared, items_cp, items_t
    print(f"\n## GPU top-k on {device} (float32; copy rate {copy_gbs and round(copy_gbs)} GB/s)\n")
    print("| table | m | k | recfuse q/s | cupy q/s | torch eager q/s | torch graph q/s | ratio | "
          "GB/s (m=1) | of copy | of GEMM |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(key, fmt="{:,.0f}"):
            return fmt.format(r[key]) if key in r else "-"
        print(f"| {r['table']} | {r['m']} | {r['k']} | {f('recfuse_qps')} | {f('cupy_qps')} | "
              f"{f('torch_eager_qps')} | {f('torch_graph_qps')} | "
              f"{f('ratio_vs_best_peer', '{:.2f}')} | "
              f"{f('item_table_gbs')} | {f('fraction_of_copy_rate', '{:.0%}')} | "
              f"{f('fraction_of_gemm', '{:.0%}')} |")
    if budget_hit:
        print(f"(time budget of {args.budget_s} s reached: the remaining runs were skipped)")
    write_json(args.output, {"device": device, "copy_gbs": copy_gbs, "budget_hit": budget_hit,
                             "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
