"""Serving the whole chain: recfuse.Recommender embedded and over HTTP, vs the usual chain.

Models (ALS, 64 factors):

- ``ml-small``: ml-latest-small (610 users x 9,724 items, ratings >= 0 as implicit
  feedback, from ../shared/datasets; a synthetic matrix of the same shape when absent),
  fitted for 10 iterations;
- ``1M-items``: 10,000 users x 1,000,000 items, random factors and 20 seen items per user
  (serving cost does not depend on how the factors were learned).

Chains: ``recall`` (top 10 of all items, seen removed) and ``recall+rank`` (top 200
recalled, scored by an MLP [user 64 | item 64] -> 256 -> 64 -> 1, top 10 kept).

Modes, each at concurrency 1, 16 and 64:

- ``embedded``: that many threads calling ``Recommender.recommend(user)`` in a loop;
- ``batcher``: the same threads calling ``MicroBatcher.recommend(user)`` (concurrent calls
  answered together: one native recall and one rank call per batch);
- ``http``: ``recfuse serve MODEL [--ranker RANKER]`` (the command itself) in a child
  process (uvicorn, micro-batching; the HTTP parser and event loop it runs on are printed)
  and that many keep-alive connections from a minimal asyncio HTTP/1.1 client in this
  process (httpx costs more than the server; on uvloop when it is installed): client and
  server share the 2 cores, and the CPU time each used per request is recorded;
- ``http-ids``: the same, serving a model folder (``recfuse serve DIR``: model.npz and a
  train.npz naming users "user0", "user1"... and items "item0"...) and asked by those
  string ids: what naming users and items by the log's ids costs over rows;
- ``usual``: implicit 0.7.3 ``recommend`` (same factors, seen filtered) plus the MLP in
  PyTorch (``torch.nn.Sequential`` on the gathered/concatenated rows) when torch imports,
  else in NumPy (said in the output), from threads like ``embedded``.

Each cell runs for ``--seconds`` (default 2) or ``--requests`` calls, whichever ends first.
``observe`` latency: one event per call (``--observe`` calls), then the next recommend must
exclude the item; with ``--new-items N``, N calls that add items in real time. Prints a
table, writes bench/results/bench_serve.json. Loopback only; the machine's load
(``uptime``) is printed with every row, because these 2 cores are shared.

    python bench/bench_serve.py                              # about 6 minutes
    python bench/bench_serve.py --models ml-small --modes http --chains recall+rank
    python bench/bench_serve.py --modes http,http-ids --chains recall   # rows vs log ids
    python bench/bench_serve.py --models ml-small --modes embedded --chains recall \
        --concurrency 1 --new-items 20000                     # items added in real time
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time

# implicit asks for a single-threaded BLAS (its threads oversubscribe the 2 cores otherwise)
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402

import recfuse  # noqa: E402

from bench_args import (  # noqa: E402
    check_writable, comma_list, non_negative_int, one_of, peer_version, positive_float,
    positive_int, require_peer, write_json)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DATASETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared",
                        "datasets")
FACTORS, CANDIDATES, K = 64, 200, 10
CONCURRENCY = (1, 16, 64)
MODELS = ("ml-small", "1M-items")
CHAINS = ("recall", "recall+rank")
MODES = ("embedded", "batcher", "usual", "http", "http-ids")
CLIENT_LOOP = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def load_average() -> str:
    with open("/proc/loadavg") as handle:
        return " ".join(handle.read().split()[:3])


def ml_small() -> tuple[recfuse.ALS, str]:
    path = os.path.join(DATASETS, "ml-latest-small", "ratings.csv")
    if os.path.exists(path):
        data = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1))
        users = np.unique(data[:, 0], return_inverse=True)[1]
        items = np.unique(data[:, 1], return_inverse=True)[1]
        matrix = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)))
        source = "ml-latest-small"
    else:
        from recfuse import datasets

        matrix = datasets.synthetic_implicit(610, 9724, 100_836, seed=0)
        source = "synthetic, ml-latest-small's shape"
    model = recfuse.ALS(factors=FACTORS, iterations=10, regularization=0.05, random_state=0)
    return model.fit(matrix), source


def million_items() -> recfuse.ALS:
    rng = np.random.default_rng(0)
    users, items = 10_000, 1_000_000
    model = recfuse.ALS(factors=FACTORS)
    model.user_factors = rng.standard_normal((users, FACTORS), dtype=np.float32) * 0.1
    model.item_factors = rng.standard_normal((items, FACTORS), dtype=np.float32) * 0.1
    seen = rng.integers(0, items, (users, 20))
    matrix = sp.csr_matrix((np.ones(seen.size, np.float32),
                            (np.repeat(np.arange(users), 20), seen.ravel())), shape=(users, items))
    matrix.sum_duplicates()
    model._user_items = matrix
    return model


def mlp_layers() -> list:
    rng = np.random.default_rng(1)
    widths = [2 * FACTORS, 256, 64, 1]
    # (float32 weights: a NumPy float64 scalar would promote them, and torch would refuse)
    return [((rng.standard_normal((o, i)) * np.sqrt(2 / i)).astype(np.float32),
             np.zeros(o, np.float32), "relu" if o > 1 else "sigmoid")
            for i, o in zip(widths[:-1], widths[1:])]


def percentiles(latencies: list, seconds: float) -> dict:
    values = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99)),
            "per_s": len(values) / seconds, "calls": len(values)}


def run_threads(call, users: np.ndarray, concurrency: int, seconds: float, requests: int) -> dict:
    latencies: list = []
    lock = threading.Lock()
    stop = time.perf_counter() + seconds
    budget = [requests]

    errors: list = []

    def worker(seed):
        rng = np.random.default_rng(seed)
        mine = []
        try:
            while time.perf_counter() < stop:
                with lock:
                    if budget[0] <= 0:
                        break
                    budget[0] -= 1
                user = int(rng.choice(users))
                started = time.perf_counter()
                call(user)
                mine.append(time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - raised in the main thread below
            errors.append(error)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(concurrency)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return percentiles(latencies, time.perf_counter() - began)


async def _http_load(port: int, users: np.ndarray, concurrency: int, seconds: float,
                     requests: int, named) -> tuple[list, float]:
    latencies: list = []
    budget = [requests]
    stop = time.perf_counter() + seconds

    async def connection(seed):
        rng = np.random.default_rng(seed)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop and budget[0] > 0:
                budget[0] -= 1
                body = json.dumps({"user": named(int(rng.choice(users)))}).encode()
                started = time.perf_counter()
                writer.write(b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: "
                             b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                             b"\r\n\r\n" + body)
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                reply = await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"server answered {head[:40]!r}: {reply[:200]!r}")
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(connection(s) for s in range(concurrency)))
    return latencies, time.perf_counter() - began


def run_http(port: int, users, concurrency: int, seconds: float, requests: int,
             server_pid: int | None = None, named=int) -> dict:
    """``named``: a user's row -> the id requests name it by."""
    client_before = cpu_seconds(os.getpid())
    server_before = None if server_pid is None else cpu_seconds(server_pid)
    load = _http_load(port, users, concurrency, seconds, requests, named)
    if CLIENT_LOOP == "uvloop":  # the load generator's own CPU is taken from the server's cores
        import uvloop

        latencies, elapsed = uvloop.run(load)
    else:
        latencies, elapsed = asyncio.run(load)
    result = percentiles(latencies, elapsed)
    calls = max(len(latencies), 1)
    result["client_cpu_us"] = (cpu_seconds(os.getpid()) - client_before) / calls * 1e6
    if server_pid is not None:
        result["server_cpu_us"] = (cpu_seconds(server_pid) - server_before) / calls * 1e6
    return result


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_server(model_path: str, ranker_path: str | None,
                 workers: int) -> tuple[subprocess.Popen, int]:
    """``recfuse serve`` on a free loopback port, in a child process."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "recfuse.cli", "serve", model_path, "--port", str(port),
               "--k", str(K), "--candidates", str(CANDIDATES), "--workers", str(workers)]
    if ranker_path is not None:
        command += ["--ranker", ranker_path]
    process = subprocess.Popen(command)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process, port
        except OSError:
            if process.poll() is not None:
                raise RuntimeError("the server process exited")
            time.sleep(0.2)
    process.kill()
    raise RuntimeError("the server did not start in 120 s")


def id_folder(folder: str, name: str, model: recfuse.ALS) -> str:
    """A model folder of ``model`` whose train.npz names users "user0".. and items
    "item0".. (strings, as an event log would), written once per model."""
    path = os.path.join(folder, f"{name}-ids")
    if not os.path.isdir(path):
        os.mkdir(path)
        model.save(os.path.join(path, "model.npz"))
        n_users, n_items = model._user_items.shape
        recfuse.Interactions.from_matrix(
            model._user_items,
            user_ids=recfuse.IdMap(np.array([f"user{u}" for u in range(n_users)], object)),
            item_ids=recfuse.IdMap(np.array([f"item{i}" for i in range(n_items)], object)),
        ).save(os.path.join(path, "train.npz"))
    return path


def usual_chain(model: recfuse.ALS, rank: bool, users):
    """implicit recommend (+ the MLP in torch, or NumPy without torch) for one user. Each
    user's seen row (the 1 x n CSR implicit takes) is sliced before timing, as recfuse's
    Recommender holds its rows ready: the slice was a quarter of implicit's call."""
    from implicit.cpu.als import AlternatingLeastSquares

    theirs = AlternatingLeastSquares(factors=FACTORS)
    theirs.user_factors, theirs.item_factors = model.user_factors, model.item_factors
    seen = {int(user): model._user_items[int(user)] for user in users}
    layers = mlp_layers()
    try:
        import torch

        torch.set_num_threads(2)
        modules = []
        for W, b, activation in layers:
            linear = torch.nn.Linear(W.shape[1], W.shape[0])
            linear.weight.data, linear.bias.data = torch.from_numpy(W), torch.from_numpy(b)
            modules += [linear, torch.nn.ReLU() if activation == "relu" else torch.nn.Sigmoid()]
        net = torch.nn.Sequential(*modules).eval()
        users_t = torch.from_numpy(model.user_factors)
        items_t = torch.from_numpy(model.item_factors)
        engine = f"implicit {__import__('implicit').__version__} + torch {torch.__version__}"

        def score(user, ids):
            with torch.inference_mode():
                index = torch.from_numpy(ids)
                rows = torch.cat([users_t[user].expand(ids.size, -1), items_t[index]], dim=1)
                return net(rows)[:, 0].numpy()
    except ImportError:
        engine = (f"implicit {__import__('implicit').__version__} + NumPy MLP (torch is not "
                  "installed)")

        def score(user, ids):
            h = np.hstack([np.repeat(model.user_factors[[user]], ids.size, 0),
                           model.item_factors[ids]])
            for W, b, activation in layers:
                h = h @ W.T + b
                h = np.maximum(h, 0) if activation == "relu" else 1 / (1 + np.exp(-h))
            return h[:, 0]

    def call(user):
        ids, _ = theirs.recommend(user, seen[user], N=CANDIDATES if rank else K)
        if rank:
            scores = score(user, ids)
            ids = ids[np.argsort(-scores, kind="stable")[:K]]
        return ids

    return call, engine


def observe_latency(recommender: recfuse.Recommender, users, n: int) -> dict:
    """One event per call (a random user and item), then the next recommend must exclude
    the item (visible); the latency of observe alone."""
    rng = np.random.default_rng(5)
    latencies = []
    n_items = recommender.info()["items"]
    for _ in range(n):
        user, item = int(rng.choice(users)), int(rng.integers(0, n_items))
        started = time.perf_counter()
        recommender.observe({"user": [user], "item": [item]})
        latencies.append(time.perf_counter() - started)
        assert item not in recommender.recommend(user).ids  # visible to the next call
    values = np.array(latencies) * 1000
    return {"p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max()),
            "calls": n}


def new_items_latency(recommender: recfuse.Recommender, users, n: int) -> dict:
    """Items added in real time: ``n`` one-event calls, alternately a new item id and an
    event of one of the last 2,000 added (its first users gathering, so its vector is
    solved again), a recommend every 10th call; observe's latency over the last 1,000
    calls, when about n / 2 items have been added."""
    rng = np.random.default_rng(6)
    first = recommender.info()["items"] + recommender.info()["added_items"]
    latencies, added = [], 0
    started = time.perf_counter()
    for call in range(n):
        user = int(rng.choice(users))
        if call % 2 == 0 or added < 10:
            item, added = first + added, added + 1
        else:
            item = first + int(rng.integers(max(0, added - 2000), added))
        begin = time.perf_counter()
        recommender.observe({"user": [user], "item": [item]})
        latencies.append(time.perf_counter() - begin)
        if call % 10 == 0:
            recommender.recommend(user)
    total = time.perf_counter() - started
    last = np.array(latencies[-1000:]) * 1000
    return {"calls": n, "added_items": recommender.info()["added_items"],
            "total_s": total, "last_1000_p50_ms": float(np.percentile(last, 50)),
            "last_1000_p99_ms": float(np.percentile(last, 99)),
            "max_ms": float(np.max(latencies) * 1000)}


def report_row(rows: list, **row) -> None:
    row["load"] = load_average().split()[0]
    rows.append(row)
    cpu = ""
    if "server_cpu_us" in row:
        cpu = f"  cpu/request: server {row['server_cpu_us']:5.0f} us, client " \
              f"{row['client_cpu_us']:4.0f} us"
    print(f"  {row['chain']:<12} {row['mode']:<9} c={row['concurrency']:<3} "
          f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms  {row['per_s']:8.0f}/s"
          f"{cpu}  (load {row['load']})", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=positive_float, default=2.0)
    parser.add_argument("--requests", type=positive_int, default=20_000)
    parser.add_argument("--models", type=comma_list(one_of(MODELS)), default=",".join(MODELS))
    parser.add_argument("--chains", type=comma_list(one_of(CHAINS)), default=",".join(CHAINS))
    parser.add_argument("--modes", type=comma_list(one_of(MODES)), default=",".join(MODES))
    parser.add_argument("--concurrency", type=comma_list(positive_int),
                        default=",".join(map(str, CONCURRENCY)))
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="threads answering batches (the batcher and recfuse serve)")
    parser.add_argument("--observe", type=non_negative_int, default=1000,
                        help="observe calls timed (0: none)")
    parser.add_argument("--new-items", type=non_negative_int, default=0,
                        help="one-event calls adding items in real time (0: none; 20000 "
                             "adds ~14,000 items, about 20 s)")
    args = parser.parse_args(argv)
    results_path = check_writable(os.path.join(RESULTS, "bench_serve.json"), parser)
    modes, levels = args.modes, args.concurrency
    if "usual" in modes:
        require_peer("implicit", "the usual chain (--modes usual)")
    if any(mode.startswith("http") for mode in modes):
        for server_peer in ("starlette", "uvicorn"):
            require_peer(server_peer, "recfuse serve (--modes http, http-ids)")
    from recfuse.server import http_stack

    stack = http_stack()
    loads = {"before": load_average()}
    print(f"load average before: {loads['before']} (2 cores, shared); HTTP server on "
          f"{stack['http']} + {stack['loop']}, client on {CLIENT_LOOP}")
    rows, observe, new_items, same_lists = [], {}, {}, {}
    engine = ""
    with tempfile.TemporaryDirectory() as folder:
        ranker_path = os.path.join(folder, "ranker.npz")
        recfuse.MLPScorer(mlp_layers()).save(ranker_path)
        for name in args.models:
            if name == "ml-small":
                model, source = ml_small()
            else:
                model, source = million_items(), "random factors"
            path = os.path.join(folder, f"{name}.npz")
            model.save(path)
            users = np.flatnonzero(np.diff(model._user_items.indptr) > 0)
            shape = f"{model.user_factors.shape[0]} x {model.item_factors.shape[0]}"
            print(f"\n{name} ({source}, {shape} x {FACTORS})")
            for chain in args.chains:
                rank = chain == "recall+rank"
                recommender = recfuse.Recommender(path, ranker_path if rank else None,
                                                  candidates=CANDIDATES, k=K)
                calls = {"embedded": recommender.recommend}
                if "usual" in modes:
                    usual, engine = usual_chain(model, rank, users)
                    # the usual chain must answer what recfuse answers (same factors, seen
                    # items, MLP): checked on 20 users before timing, reported, not fatal
                    sample = users[:: max(1, users.size // 20)][:20]
                    equal = float(np.mean([
                        np.array_equal(np.asarray(recommender.recommend(int(u)).ids),
                                       np.asarray(usual(int(u)))) for u in sample]))
                    same_lists[f"{name} {chain}"] = equal
                    print(f"  {chain}: the usual chain's top {K} equals recfuse's for "
                          f"{equal:.0%} of {sample.size} users", flush=True)
                    calls["usual"] = usual
                batcher = recfuse.MicroBatcher(recommender, workers=args.workers)
                calls["batcher"] = batcher.recommend
                try:
                    for mode in [mode for mode in modes if mode in calls]:
                        for concurrency in levels:
                            result = run_threads(calls[mode], users, concurrency, args.seconds,
                                                 args.requests)
                            report_row(rows, model=name, chain=chain, mode=mode,
                                       concurrency=concurrency, **result)
                finally:
                    batcher.close()
                for mode in [mode for mode in modes if mode.startswith("http")]:
                    served, named = path, int
                    if mode == "http-ids":
                        served, named = id_folder(folder, name, model), "user{}".format
                    process, port = start_server(served, ranker_path if rank else None,
                                                 args.workers)
                    try:
                        run_http(port, users, 4, 0.5, 200, named=named)  # warm up
                        for concurrency in levels:
                            result = run_http(port, users, concurrency, args.seconds,
                                              args.requests, process.pid, named)
                            report_row(rows, model=name, chain=chain, mode=mode,
                                       concurrency=concurrency, **result)
                    finally:
                        process.terminate()
                        process.wait(10)
                if not rank and args.observe:
                    observe[name] = result = observe_latency(recommender, users, args.observe)
                    print(f"  observe (1 event, then visible; {args.observe} calls): p50 "
                          f"{result['p50_ms']:.3f} ms  p90 {result['p90_ms']:.3f} ms  p99 "
                          f"{result['p99_ms']:.3f} ms  max {result['max_ms']:.2f} ms "
                          f"(load {load_average().split()[0]})", flush=True)
                if not rank and args.new_items:
                    new_items[name] = result = new_items_latency(recommender, users,
                                                                 args.new_items)
                    print(f"  observe adding items ({result['calls']} calls, "
                          f"{result['added_items']} items added): {result['total_s']:.1f} s, "
                          f"last 1,000 calls p50 {result['last_1000_p50_ms']:.3f} ms  p99 "
                          f"{result['last_1000_p99_ms']:.3f} ms, max {result['max_ms']:.1f} ms "
                          f"(load {load_average().split()[0]})", flush=True)
    loads["after"] = load_average()
    print(f"\nload average after: {loads['after']}; usual chain = {engine}")
    report = {"rows": rows, "observe": observe, "new_items": new_items, "load_average": loads,
              "usual_chain": engine, "usual_chain_equal_lists": same_lists,
              "http_stack": stack, "client_loop": CLIENT_LOOP, "workers": args.workers,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "versions": {"python": platform.python_version(), "numpy": np.__version__,
                           "implicit": peer_version("implicit"),
                           "starlette": peer_version("starlette"),
                           "uvicorn": peer_version("uvicorn"), "recfuse": recfuse.__version__}}
    write_json(results_path, report, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
