"""A/B of bfloat16 ``MLPScorer.rank`` on bench_mlp.py's model and 1 x 1,000 case between two
Python environments (e.g. main's build and a branch's), in alternating processes.

Each worker process builds the case, then prints one line:

- ``rank2``: wall-time median of ``rank(..., k=10)`` with the default threads (2 here),
  alternating in rounds with ONNX Runtime on the same model and a ready input (``ort``;
  ``ratio`` = ort / rank2, as in bench_mlp.py);
- ``rank1_cpu``: CPU time (``time.thread_time``) of the same call with ``num_threads=1``,
  median and 10th percentile: the whole call runs on the calling thread, so this figure
  moves little with the load, where two-thread wall times on a shared machine swing by
  whole scheduler ticks.

    python bench/ab_mlp_rank.py --python /usr/bin/python3 --python venv/bin/python --pairs 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

from bench_args import positive_int


def worker() -> None:
    import statistics

    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_mlp as bench
    import recfuse

    rng = np.random.default_rng(0)
    layers = bench.make_layers(rng)
    items = rng.standard_normal((bench.ITEMS, bench.DIM)).astype(np.float32)
    scorer = recfuse.MLPScorer(layers, precision="bfloat16", backend="cpu")
    prepared = scorer.prepare_items(items, item_column=bench.DIM)
    user = rng.standard_normal((1, bench.DIM)).astype(np.float32)
    ids = rng.integers(0, bench.ITEMS, (1, bench.CANDIDATES))
    features = rng.standard_normal((bench.CANDIDATES, bench.FEATURES)).astype(np.float32)
    X = np.concatenate([np.repeat(user, bench.CANDIDATES, axis=0), items[ids.ravel()], features],
                       axis=1)
    with tempfile.TemporaryDirectory() as folder:
        session = bench.onnx_session(layers, os.path.join(folder, "mlp.onnx"))
    load = os.getloadavg()[0]
    methods = {"rank2": lambda: scorer.rank(user, ids, prepared, candidate_features=features, k=10),
               "ort": lambda: session.run(None, {"x": X})}
    times = {name: [] for name in methods}
    for _ in range(5):
        for name, method in methods.items():
            method()
            deadline = time.perf_counter() + 0.1
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                method()
                times[name].append(time.perf_counter() - start)
    cpu = []
    for _ in range(400):
        start = time.thread_time()
        scorer.rank(user, ids, prepared, candidate_features=features, k=10, num_threads=1)
        cpu.append(time.thread_time() - start)
    cpu = np.array(cpu[50:]) * 1e6
    rank2, ort = (statistics.median(times[name]) * 1e6 for name in ("rank2", "ort"))
    print(f"rank2 {rank2:.1f} us  ort {ort:.1f} us  ratio {ort / rank2:.2f}  rank1_cpu median "
          f"{np.median(cpu):.1f} p10 {np.percentile(cpu, 10):.1f} us  load {load:.2f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", action="append", required=True,
                        help="a Python executable (give two)")
    parser.add_argument("--pairs", type=positive_int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker()
        return 0
    for _ in range(args.pairs):
        for python in args.python:
            # Run from the temporary folder so that each interpreter imports its own installed recfuse.
            line = subprocess.run([python, os.path.abspath(__file__), "--python", python,
                                   "--worker"], capture_output=True, text=True, cwd=tempfile.gettempdir(),
                                  check=True).stdout.strip()
            print(f"{time.strftime('%H:%M:%S')} {python}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
