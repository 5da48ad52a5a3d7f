"""GPU MLP ranking speed: recfuse's CUDA backend (fused and tiled kernels) vs torch, one run.

    python bench/bench_gpu_mlp.py                 # the issue's model; 1, 64, 256 users x 1000
    python bench/bench_gpu_mlp.py --budget-s 60

The model of issue 5: [user 64 | item 64 | 32 features] -> 256 -> 128 -> 64 -> 1 (ReLU, sigmoid
last), 100,000 items prepared once (``prepare_items``: W1i·item on the device). Each case
ranks every user's candidates (k = 10) from host arrays to host results, and reports:

- ``e2e_us``: median wall time of ``MLPScorer.rank`` (validation, uploads, kernels, top-k,
  download; the issue's target for 1 user x 1,000 candidates is 30 µs);
- ``device_us``: median device time of the same call's kernels with its inputs uploaded once
  (``recfuse._cuda.MlpModel.time_device``: user parts, layers, ranking);
- ``tflops``: the model's flops per candidate, 2·(160·256 + 256·128 + 128·64 + 64) = 164k (what
  a framework computes), over ``device_us``; ``executed_tflops`` counts what recfuse runs (the
  first layer multiplies only the 32 feature columns per candidate: 98k); ``of_peak``: tflops
  over the card's dense bf16 tensor rate (a table by card name) and ``of_matmul`` over a torch
  bf16 8192³ matmul measured in this run.

The peer (when torch sees the GPU): gather + concat + ``nn.Sequential`` + ``torch.topk`` in the
same precision, from host arrays, eager (``torch_eager_e2e_us``) and as a CUDA graph fed from
pinned memory (``torch_graph_e2e_us``, bench/torch_graph.py; ``torch_e2e_us`` and the ratio
take the faster), and eager with inputs already on the device (``torch_device_us``);
``top_k_overlap_with_torch`` is the mean share of each user's k ids
that both return (a sanity check: ties and bfloat16 rounding may swap a few).
Results: a Markdown table on stdout and bench/results/gpu_mlp.json.
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
WIDTHS = [160, 256, 128, 64, 1]
MODEL_FLOPS = 2 * sum(a * b for a, b in zip(WIDTHS[:-1], WIDTHS[1:]))
EXECUTED_FLOPS = MODEL_FLOPS - 2 * 128 * 256  # user and item columns: not per candidate
# Dense (no sparsity) bf16 tensor-core TFLOP/s by card, from the vendors' data sheets.
PEAK_BF16 = [("H200", 989.4), ("H100 PCIe", 756.5), ("H100 NVL", 835.5), ("H100", 989.4),
             ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=positive_int, nargs="+", default=[1, 64, 256])
    p.add_argument("--candidates", type=positive_int, default=1000)
    p.add_argument("--items", type=positive_int, default=100_000)
    p.add_argument("--k", type=positive_int, default=10)
    p.add_argument("--budget-s", type=float, default=90.0)
    p.add_argument("--output", default=os.path.join(RESULTS, "gpu_mlp.json"))
    args = p.parse_args(argv)
    check_writable(args.output, p)
    return args


def median_us(fn, repeats, sync=lambda: None):
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return 1e6 * float(np.median(times))


def peak_of(name: str):
    for key, tflops in PEAK_BF16:
        if key in name:
            return tflops
    return None


def model_layers(seed=0):
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(WIDTHS[:-1], WIDTHS[1:])):
        W = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32)
        b = (0.1 * rng.standard_normal(n_out)).astype(np.float32)
        layers.append((W, b, "sigmoid" if i == len(WIDTHS) - 2 else "relu"))
    return layers


def torch_peer(torch, layers, precision, items):
    """(sequential, device item table, dtype) for the torch side."""
    nn = torch.nn
    dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
    modules = []
    for W, b, activation in layers:
        linear = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(W))
            linear.bias.copy_(torch.from_numpy(b))
        modules += [linear, nn.ReLU() if activation == "relu" else nn.Sigmoid()]
    return nn.Sequential(*modules).cuda().to(dtype).eval(), torch.from_numpy(items).cuda(), dtype


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    import recfuse
    from recfuse._mlp import cuda as cuda_mlp

    ok, device = cuda_mlp.availability()
    if not ok:
        print(f"recfuse cuda backend not available: {device}")
        return 1
    try:
        import torch

        if not torch.cuda.is_available():
            torch = None
    except Exception:  # noqa: BLE001
        torch = None
    sync = torch.cuda.synchronize if torch is not None else (lambda: None)
    matmul_tflops = None
    if torch is not None:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        t = median_us(lambda: a @ a, 5, sync) / 1e6
        matmul_tflops = 2 * 8192**3 / t / 1e12
        del a
    peak = peak_of(device)

    rng = np.random.default_rng(0)
    layers = model_layers()
    items = rng.standard_normal((args.items, 64), dtype=np.float32)
    rows, budget_hit = [], False
    for precision in ("float32", "bfloat16"):
        peer = torch_peer(torch, layers, precision, items) if torch is not None else None
        for kernel in ("fused", "tiled"):
            scorer = recfuse.MLPScorer(layers, precision=precision, backend="cuda", kernel=kernel)
            prepared = scorer.prepare_items(items, item_column=64)
            for users in args.users:
                if time.perf_counter() - start > args.budget_s:
                    budget_hit = True
                    break
                c = args.candidates
                U = rng.standard_normal((users, 64), dtype=np.float32)
                ids = rng.integers(0, args.items, (users, c))
                F = rng.standard_normal((users * c, 32), dtype=np.float32)
                repeats = 200 if users * c <= 100_000 else 10
                res = {"precision": precision, "kernel": kernel, "users": users,
                       "candidates": c, "k": args.k}
                res["e2e_us"] = median_us(
                    lambda: scorer.rank(U, ids, prepared, candidate_features=F, k=args.k), repeats)
                call = scorer._candidates(U, ids, prepared, None, None, F)[0]
                native = scorer._model
                try:  # one chunk of the call's size at most (see time_device)
                    micros = native.time_device(
                        call.indptr, call.ids, call.items, call.user_blocks, call.item_blocks,
                        call.candidate_block, cuda_mlp._device_part(native, call), k=args.k,
                        repeats=max(5, repeats // 4))
                    res["device_us"] = float(np.median(micros))
                except ValueError as error:
                    res["device_error"] = str(error)
                if "device_us" in res:
                    res["tflops"] = users * c * MODEL_FLOPS / res["device_us"] / 1e6
                    res["executed_tflops"] = users * c * EXECUTED_FLOPS / res["device_us"] / 1e6
                    if peak:
                        res["of_peak"] = res["tflops"] / peak
                    if matmul_tflops:
                        res["of_matmul"] = res["tflops"] / matmul_tflops
                if peer is not None and kernel == "fused":  # one torch row per precision and size
                    seq, items_t, dtype = peer
                    with torch.no_grad():
                        def torch_rank(U=U, ids=ids, F=F, on_device=None):
                            u, i, f = on_device or (torch.from_numpy(U).cuda(),
                                                    torch.from_numpy(ids).cuda(),
                                                    torch.from_numpy(F).cuda())
                            X = torch.cat([u.repeat_interleave(c, 0), items_t[i.reshape(-1)], f], 1)
                            s = seq(X.to(dtype)).reshape(users, c)
                            v, j = torch.topk(s, args.k, dim=1)
                            return i.gather(1, j).cpu().numpy(), v.float().cpu().numpy()
                        res["torch_eager_e2e_us"] = median_us(torch_rank, repeats, sync)
                        resident = (torch.from_numpy(U).cuda(), torch.from_numpy(ids).cuda(),
                                    torch.from_numpy(F).cuda())
                        res["torch_device_us"] = median_us(
                            lambda: torch_rank(on_device=resident), repeats, sync)
                        theirs = torch_rank()[0]

                        def ranked(u, i, f):  # the same work on device tensors, for the graph
                            X = torch.cat([u.repeat_interleave(c, 0), items_t[i.reshape(-1)], f], 1)
                            v, j = torch.topk(seq(X.to(dtype)).reshape(users, c), args.k, dim=1)
                            return i.gather(1, j), v.float()
                        try:
                            graph_call = graphed(torch, ranked, (U, ids, F))
                            res["torch_graph_e2e_us"] = median_us(
                                lambda: graph_call(U, ids, F), repeats, sync)
                            res["torch_graph_same_ids"] = bool(
                                np.array_equal(graph_call(U, ids, F)[0], theirs))
                        except Exception as error:  # noqa: BLE001 - a capture torch refuses
                            res["torch_graph_error"] = f"{type(error).__name__}: {error}"
                    res["torch_e2e_us"] = min(res[key] for key in (
                        "torch_eager_e2e_us", "torch_graph_e2e_us") if key in res)
                    res["ratio_e2e_vs_torch"] = res["torch_e2e_us"] / res["e2e_us"]
                    mine = scorer.rank(U, ids, prepared, candidate_features=F, k=args.k)[0]
                    res["top_k_overlap_with_torch"] = float(np.mean(
                        [len(set(a) & set(b)) / args.k for a, b in zip(mine, theirs)]))
                rows.append(res)
                print(json.dumps(res), flush=True)

    print(f"\n## GPU MLP ranking on {device} (k = {args.k}; bf16 peak {peak} TFLOP/s, "
          f"torch bf16 matmul {matmul_tflops and round(matmul_tflops)} TFLOP/s)\n")
    print("| precision | kernel | users x cand. | e2e µs | device µs | TFLOP/s | of peak | "
          "torch eager e2e µs | torch graph e2e µs | torch device µs | e2e vs best torch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        def f(key, fmt="{:,.1f}"):
            return fmt.format(r[key]) if key in r else "-"
        print(f"| {r['precision']} | {r['kernel']} | {r['users']} x {r['candidates']} | "
              f"{f('e2e_us')} | {f('device_us')} | {f('tflops', '{:.1f}')} | "
              f"{f('of_peak', '{:.1%}')} | {f('torch_eager_e2e_us')} | "
              f"{f('torch_graph_e2e_us')} | {f('torch_device_us')} | "
              f"{f('ratio_e2e_vs_torch', '{:.2f}')} |")
    if budget_hit:
        print(f"(time budget of {args.budget_s} s reached: the remaining runs were skipped)")
    write_json(args.output, {"device": device, "peak_bf16_tflops": peak,
                             "matmul_tflops": matmul_tflops,
                             "model_flops_per_candidate": MODEL_FLOPS, "budget_hit": budget_hit,
                             "rows": rows}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
