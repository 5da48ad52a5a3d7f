"""Where the time of a GPU call goes: each CUDA kernel and copy of a few recfuse calls, with
the host time around them, from torch's profiler (CUPTI sees every kernel of the process,
recfuse._cuda's too). For planning work on the calls far from their targets; no timing
claims are made from it (the profiler adds its own overhead).

    python bench/profile_gpu.py                  # MLP rank 1 x 1000; top-k, 1 query on 1M x 64
    python bench/profile_gpu.py --calls 50

Needs torch with CUDA and recfuse built with CUDA. Prints one table per case: the 12 entries
of most device time, per call (the totals over --calls calls divided by --calls).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_args import positive_int  # noqa: E402


def cases(rng):
    """(name, function) of the calls to profile."""
    import recfuse
    from recfuse._topk import cuda as cuda_topk

    from bench_gpu_mlp import model_layers

    items = rng.standard_normal((100_000, 64), dtype=np.float32)
    U = rng.standard_normal((1, 64), dtype=np.float32)
    ids = rng.integers(0, items.shape[0], (1, 1000))
    F = rng.standard_normal((1000, 32), dtype=np.float32)
    for precision in ("float32", "bfloat16"):
        scorer = recfuse.MLPScorer(model_layers(), precision=precision, backend="cuda")
        prepared = scorer.prepare_items(items, item_column=64)
        yield (f"MLP rank 1 x 1000, {precision} (bench_gpu_mlp's model and call)",
               lambda s=scorer, p=prepared: s.rank(U, ids, p, candidate_features=F, k=10))
    table = rng.standard_normal((1_000_000, 64), dtype=np.float32)
    prepared_table = cuda_topk.prepare(table)
    query = rng.standard_normal((1, 64), dtype=np.float32)
    for k in (10, 100):
        yield (f"top-k 1 query, 1M x 64, k = {k}",
               lambda k=k: cuda_topk.search(prepared_table, query, k))


def _self_device_us(event) -> float:
    """An entry's own device time in µs (torch renamed cuda_* to device_* in 2.4)."""
    return getattr(event, "self_device_time_total", None) or getattr(
        event, "self_cuda_time_total", 0.0)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=positive_int, default=20)
    args = parser.parse_args(argv)
    try:
        import torch
        from torch.profiler import ProfilerActivity, profile
    except Exception as error:  # noqa: BLE001
        print(f"torch is not importable: {error}")
        return 1
    if not torch.cuda.is_available():
        print("torch sees no CUDA device")
        return 1
    rng = np.random.default_rng(0)
    for name, call in cases(rng):
        call()  # warm-up: first-launch set-up, device allocations
        torch.cuda.synchronize()
        begin = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.calls):
                call()
            torch.cuda.synchronize()
        wall_us = (time.perf_counter() - begin) / args.calls * 1e6
        events = [e for e in prof.key_averages() if _self_device_us(e) > 0]
        events.sort(key=_self_device_us, reverse=True)
        device_us = sum(_self_device_us(e) for e in events) / args.calls
        print(f"\n## {name}: {wall_us:.1f} µs a call under the profiler, "
              f"{device_us:.1f} µs of it on the device\n")
        print("| kernel or copy | per call | device µs a call |")
        print("|---|---:|---:|")
        for e in events[:12]:
            print(f"| {e.key[:90]} | {e.count / args.calls:g} | "
                  f"{_self_device_us(e) / args.calls:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
