"""Ingestion, by hand vs recfuse, in alternating rounds within one process.

    python bench/ab_ingest.py --rounds 15 /tmp/benchdata/events_1000000_str.parquet ...

bench_data.py times three runs of one path, then three of the other: on a shared machine a
change of load between the two blocks decides the ratio. Here the two paths alternate (the
order flips every round) and the ratio is taken per round, then the median; CPU seconds are
printed too (less sensitive to other processes than wall time when one thread does the
work). Run it once per build (e.g. main's Python and a branch's venv) and alternate those
processes as well. The logs are bench_data.event_log files (--data-folder of bench_data.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_args import positive_int  # noqa: E402
from bench_data import ingest_by_hand, ingest_recfuse  # noqa: E402


def alternate(path: str, rounds: int) -> dict:
    """Median wall and CPU seconds of each path and the median per-round wall ratio."""
    ingest_recfuse(path), ingest_by_hand(path)  # page cache, imports
    wall = {"hand": [], "recfuse": []}
    cpu = {"hand": [], "recfuse": []}
    paths = [("hand", ingest_by_hand), ("recfuse", ingest_recfuse)]
    for round_ in range(rounds):
        for name, ingest in paths if round_ % 2 == 0 else paths[::-1]:
            start, start_cpu = time.perf_counter(), time.process_time()
            ingest(path)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    ratio = np.median(np.array(wall["hand"]) / np.array(wall["recfuse"]))
    return {"hand_s": np.median(wall["hand"]), "recfuse_s": np.median(wall["recfuse"]),
            "speedup": ratio, "hand_cpu_s": np.median(cpu["hand"]),
            "recfuse_cpu_s": np.median(cpu["recfuse"]),
            "cpu_speedup": np.median(cpu["hand"]) / np.median(cpu["recfuse"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logs", nargs="+", help="Parquet event logs (user, item, weight)")
    parser.add_argument("--rounds", type=positive_int, default=15)
    args = parser.parse_args()
    print(f"load before {os.getloadavg()}")
    for path in args.logs:
        figures = alternate(path, args.rounds)
        print(os.path.basename(path), " ".join(f"{k}={v:.3f}" for k, v in figures.items()))
    print(f"load after {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
