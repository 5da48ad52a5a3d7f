"""Adversarial hunt on recfuse embedded in processes: fork, spawn and forkserver, thread
limits, signals, interpreter shutdown and RECFUSE_* / OMP_* environment variables.

Every attack runs in a child interpreter with a timeout (a hang is a failure: the child is
killed), and every fork inside a child is waited for with a deadline.

The contract used here (README "Threads", "Processes", "Backends", design notes on model
files; ``recfuse.batching``; ``recfuse.distributed`` on RECFUSE_WORKER_THREADS):

- A process forked after native calls ran on several threads runs every native call on one
  thread, with the same results; without that rule its first native call would wait for
  ever. Children forked before, and "spawn"/"forkserver" children, keep their threads.
- Models pickle for multiprocessing; answers in the child equal the parent's.
- ``num_threads=0`` means the CPUs of the affinity mask (``OMP_NUM_THREADS`` may lower it);
  results are deterministic for a seed, backend and SIMD level whatever the thread count.
- A fit that does not finish leaves the model as it was; model files and
  ``recommend_all(path=)`` are written atomically (old or new, never torn).
- ``RECFUSE_BACKEND`` is read as if given by name (its errors name the variable);
  ``RECFUSE_SIMD`` misspelt makes the cpu backend unavailable with the reason and leaves the
  others working; ``RECFUSE_WORKER_THREADS`` must be an integer 0..MAX_THREADS.
- The interpreter never crashes (the bindings' ReleaseGil states that a daemon thread, "e.g.
  a MicroBatcher worker, still in a native call at exit" must not abort the process).
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import datasets

HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])

# Defined in every child: run ``body`` in a forked child and wait for it with a deadline.
PRELUDE = '''
import os, sys, time
import numpy as np, scipy.sparse as sp, recfuse
from recfuse import datasets, _core

def in_forked_child(body, limit=20.0):
    """body() in a forked child: its exit code (0: returned, 1: raised), or "hang"."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            body()
            code = 0
        except BaseException as error:
            print("forked child raised", type(error).__name__, error, flush=True)
        finally:
            os._exit(code)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hang"
'''


def run_child(code: str, *, timeout: float = 60, env: dict | None = None,
              prelude: bool = True, argv: list | None = None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter (after PRELUDE), or the script ``argv`` names; a child
    that outlives ``timeout`` is killed and the test fails as a hang."""
    source = (PRELUDE if prelude else "") + textwrap.dedent(code)
    # not the OMP_* / RECFUSE_* variables of this process: Dask's LocalCluster (the
    # distributed tests) sets OMP_NUM_THREADS=1 in the environment of the process it runs in
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("OMP_", "RECFUSE_"))}
    environment.update(OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore", **(env or {}))
    try:
        command = [sys.executable, *argv] if argv else [sys.executable, "-c", source]
        return subprocess.run(command, capture_output=True, text=True,
                              timeout=timeout, env=environment)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"the child hung (killed after {timeout} s); output so far: "
                    f"{error.stdout!r:.500} {error.stderr!r:.500}")


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (
        f"child exited {result.returncode}\nstdout: {result.stdout[-2000:]}\n"
        f"stderr: {result.stderr[-2000:]}")
    return result.stdout


# ------------------------------------------------------------------------------ fork


def test_fork_after_threaded_calls_runs_one_thread_with_the_same_answers():
    """The parent runs ALS, SVD, topk and an MLP rank on 2 threads, then forks: the child's
    own calls finish on one thread and give the parent's answers bit for bit."""
    ok(run_child('''
        ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
        R = datasets.synthetic_explicit(seed=0).tocoo()
        rng = np.random.default_rng(0)
        items = rng.standard_normal((4000, 32)).astype(np.float32)
        W = [(rng.standard_normal((16, 64)).astype(np.float32) * 0.1, None, "relu"),
             (rng.standard_normal((1, 16)).astype(np.float32) * 0.1, None, "sigmoid")]
        cand = rng.integers(0, 4000, (20, 300))

        def answers():
            als = recfuse.ALS(factors=16, iterations=3, random_state=0, num_threads=2).fit(ui)
            svd = recfuse.SVD(epochs=3, random_state=0, num_threads=2).fit(R.row, R.col, R.data)
            scorer = recfuse.MLPScorer(W)
            prepared = scorer.prepare_items(items, item_column=32)
            return [als.user_factors, *als.recommend(np.arange(50), k=10),
                    svd.predict(R.row[:200], R.col[:200]),
                    *recfuse.topk(items[:20], items, k=10, num_threads=2),
                    *scorer.rank(items[:20], cand, prepared, k=10, num_threads=2)]

        want = answers()
        assert not _core.forked_after_threads() and _core.default_threads() == 2, (
            _core.forked_after_threads(), _core.default_threads(), os.sched_getaffinity(0),
            {k: v for k, v in os.environ.items() if "OMP" in k or "RECFUSE" in k})

        def child():
            assert _core.forked_after_threads() and _core.default_threads() == 1
            got = answers()
            assert all(np.array_equal(a, b) for a, b in zip(got, want))
            assert len(os.listdir("/proc/self/task")) == 1  # no thread was started
        assert in_forked_child(child) == 0
        # a grandchild too (the flag is inherited)
        def forks_again():
            assert in_forked_child(child) == 0
        assert in_forked_child(forks_again) == 0
    '''))


def test_fork_while_another_thread_is_inside_a_native_fit():
    """A thread runs a long 2-thread fit (no native call in the main thread yet) when the main
    thread forks: the child fits, recommends and refits the very model being fitted, alone."""
    ok(run_child('''
        import threading
        big = datasets.synthetic_implicit(20000, 5000, 400000, seed=0)
        ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
        busy = recfuse.ALS(factors=64, iterations=15, random_state=0, num_threads=2)
        worker = threading.Thread(target=busy.fit, args=(big,))
        worker.start()
        time.sleep(0.3)

        def child():
            m = recfuse.ALS(factors=16, iterations=3, random_state=0, num_threads=2).fit(ui)
            ref = recfuse.ALS(factors=16, iterations=3, random_state=0, num_threads=1).fit(ui)
            assert np.array_equal(m.recommend(np.arange(30), k=5)[0],
                                  ref.recommend(np.arange(30), k=5)[0])
            busy.set_params(iterations=1)
            busy.fit(ui)
            assert busy.user_factors.shape == (300, 64)
        code = in_forked_child(child)
        worker.join()
        assert code == 0, code
    '''))


def test_forked_recommender_with_a_writer_thread_serves_and_observes():
    """README: a Recommender forked while it serves is whole in the child."""
    ok(run_child('''
        import threading
        ui = datasets.synthetic_implicit(500, 300, 8000, seed=0)
        rec = recfuse.Recommender(recfuse.ALS(factors=16, iterations=3, random_state=0).fit(ui),
                                  k=5)
        stop = threading.Event()

        def writer():
            i = 0
            while not stop.is_set():
                rec.observe({"user": (np.arange(20) + i) % 500,
                             "item": 300 + (np.arange(20) + 20 * i) % 3000,
                             "weight": np.ones(20)})
                i += 1
        thread = threading.Thread(target=writer)
        thread.start()
        time.sleep(0.5)

        def child():
            rec.recommend(3)
            rec.observe({"user": [3], "item": [7], "weight": [1.0]})
            assert 7 not in rec.recommend(3).ids
        code = in_forked_child(child)
        stop.set()
        thread.join()
        assert code == 0, code
    '''))


def test_forked_microbatcher_answers_or_refuses_in_the_child():
    """A MicroBatcher made before a fork (a pre-forking server with --preload, a
    multiprocessing "fork" pool): its worker threads do not survive the fork, and a call in
    the child must answer (as in the parent) or raise, not wait for ever."""
    ok(run_child('''
        ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
        rec = recfuse.Recommender(recfuse.ALS(factors=16, iterations=3, random_state=0).fit(ui),
                                  k=5)
        batcher = recfuse.MicroBatcher(rec, workers=2)
        want = batcher.recommend(3).ids

        def child():
            try:
                got = batcher.recommend(3).ids
            except RuntimeError:
                return  # refused, with a reason: acceptable
            assert np.array_equal(got, want)
        code = in_forked_child(child, limit=4)
        batcher.close()
        assert code == 0, code
    '''))


def test_fork_after_the_numba_backend_then_a_cpu_call_does_not_hang():
    """The numba backend and the cpu backend share the process's libgomp (numba's omp
    threading layer). After ``topk(backend="numba")`` on 2 threads the parent forks; the
    child's first ``topk(backend="cpu")`` must finish (on one thread) with the parent's
    answer, as after the parent's own native calls."""
    pytest.importorskip("numba")
    result = ok(run_child('''
        import numba
        rng = np.random.default_rng(0)
        items = rng.standard_normal((3000, 32)).astype(np.float32)
        recfuse.topk(items[:20], items, k=10, backend="numba")
        if numba.threading_layer() != "omp":
            print("SKIP numba runs its", numba.threading_layer(), "layer here")
            sys.exit(0)
        want = recfuse.topk(items[:20], items, k=10, backend="cpu", num_threads=1)

        def child():
            got = recfuse.topk(items[:20], items, k=10, backend="cpu", num_threads=2)
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
        code = in_forked_child(child, limit=4)
        assert code == 0, code
    '''))
    if result.startswith("SKIP"):
        pytest.skip(result)


# ------------------------------------------------------------------------------ pools


def test_fork_spawn_and_forkserver_pools_answer_as_the_parent(tmp_path):
    """Models passed (pickled in memory) to pools of each start method give the parent's
    answers; the "fork" pool is forked after threaded native calls. (A file: spawn and
    forkserver children import ``__main__``.)"""
    script = tmp_path / "pool_main.py"
    script.write_text(_POOL_MAIN)
    out = ok(run_child("", argv=[str(script)], timeout=120))
    assert out.split() == ["fork", "equal", "spawn", "equal", "forkserver", "equal"]


_POOL_MAIN = '''
import multiprocessing as mp
import numpy as np, recfuse
from recfuse import datasets


def work(args):
    model, users = args
    if isinstance(model, recfuse.ItemIndex):
        return model.search(users, k=10)
    return model.recommend(users, k=10)


if __name__ == "__main__":
    ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
    R = datasets.synthetic_explicit(seed=0).tocoo()
    models = [recfuse.ALS(factors=16, iterations=3, random_state=0).fit(ui),
              recfuse.BPR(factors=16, iterations=3, random_state=0).fit(ui),
              recfuse.SVD(epochs=3, random_state=0).fit(R.row, R.col, R.data),
              recfuse.SVDpp(epochs=2, random_state=0).fit(R.row, R.col, R.data),
              recfuse.ExplicitALS(iterations=2, random_state=0).fit(R.row, R.col, R.data)]
    users = np.arange(20)
    jobs = [(m, users) for m in models]
    items = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    jobs.append((recfuse.ItemIndex(items, metric="cosine"), items[:20]))
    want = [work(job) for job in jobs]
    for method in ("fork", "spawn", "forkserver"):
        with mp.get_context(method).Pool(2) as pool:
            got = pool.map(work, jobs)
        for (gi, gs), (wi, ws) in zip(got, want):
            assert np.array_equal(gi, wi) and np.array_equal(gs, ws), method
        print(method, "equal", flush=True)
'''


def test_an_mlp_scorer_pickles_for_process_pools():
    """Serving workers started with "spawn" (what the README advises for GPU workers) get the
    ranker pickled, as they get a model or an ItemIndex; the copy ranks alike."""
    rng = np.random.default_rng(0)
    items = rng.standard_normal((500, 8)).astype(np.float32)
    W = [(rng.standard_normal((16, 24)).astype(np.float32) * 0.1, None, "relu"),
         (rng.standard_normal((1, 16)).astype(np.float32) * 0.1, None, "sigmoid")]
    scorer = recfuse.MLPScorer(W)
    users = rng.standard_normal((4, 16)).astype(np.float32)  # [user 16 | item 8]
    cand = rng.integers(0, 500, (4, 50))
    want = scorer.rank(users, cand, scorer.prepare_items(items, item_column=16), k=5)
    copy = pickle.loads(pickle.dumps(scorer))
    got = copy.rank(users, cand, copy.prepare_items(items, item_column=16), k=5)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    quantized = recfuse.MLPScorer(W, precision="int8")  # packed again from the float32 layers
    inputs = rng.standard_normal((30, 24)).astype(np.float32)
    twin = __import__("copy").deepcopy(quantized)
    assert twin.precision == "int8" and np.array_equal(twin.score(inputs), quantized.score(inputs))
    with pytest.raises(TypeError, match="prepare_items"):  # bound to its scorer's packed model
        pickle.dumps(scorer.prepare_items(items, item_column=16))


# ------------------------------------------------------------------------------ threads

THREAD_PEAK = '''
import threading
def extra_threads(call):
    """Most threads alive during call() beyond those before it and the watcher."""
    before = len(os.listdir("/proc/self/task"))
    peak, stop = [before], threading.Event()
    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))
            time.sleep(0.002)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        result = call()
    finally:
        stop.set()
        watcher.join()
    return peak[0] - before - 1, result
big = datasets.synthetic_implicit(20000, 5000, 400000, seed=0)
fit = lambda n: recfuse.ALS(factors=64, iterations=2, random_state=0, num_threads=n).fit(big)
'''


@pytest.mark.parametrize("case", ["num_threads=1", "OMP_NUM_THREADS=1", "affinity", "threadpoolctl"])
def test_thread_limits_are_honoured_and_results_equal(case):
    """During a long fit no thread beyond the limit is started, and the factors equal those
    of a 2-thread fit (checked last: libgomp keeps its pool threads alive afterwards)."""
    env = {"OMP_NUM_THREADS": "1"} if case == "OMP_NUM_THREADS=1" else {}
    setup = {"num_threads=1": "n = 1",
             "OMP_NUM_THREADS=1": "n = 0",
             "affinity": "n = 0; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})",
             "threadpoolctl": "n = 0; import threadpoolctl; "
                              "limits = threadpoolctl.threadpool_limits(1, 'openmp')"}[case]
    if case == "threadpoolctl":
        pytest.importorskip("threadpoolctl")
    out = ok(run_child(THREAD_PEAK + setup + '''
assert n == 1 or _core.default_threads() == 1, _core.default_threads()
extra, limited = extra_threads(lambda: fit(n))
assert extra == 0, f"{extra} threads started"
if "limits" in globals():
    limits.restore_original_limits()
if len(os.sched_getaffinity(0)) == 1:
    os.sched_setaffinity(0, range(os.cpu_count()))
full = fit(2)
assert np.array_equal(limited.user_factors, full.user_factors)
assert np.array_equal(limited.item_factors, full.item_factors)
print("ok", extra)
''', prelude=True, env=env, timeout=90))
    assert out.split() == ["ok", "0"]


def test_two_threads_start_one_pool_thread():
    ok(run_child(THREAD_PEAK + '''
extra, _ = extra_threads(lambda: fit(2))
assert extra <= 1, extra
'''))


def test_kernels_give_equal_results_under_openmp_thread_limits():
    """OMP_THREAD_LIMIT=1 and OMP_NUM_THREADS=100000: libgomp gives teams of other sizes
    than asked for; ALS, SVD, BPR, ExplicitALS, topk and MLP ranking do not depend on it."""
    digest = '''
import hashlib
ui = datasets.synthetic_implicit(3000, 800, 150000, seed=0)
R = datasets.synthetic_explicit(seed=0).tocoo()
rng = np.random.default_rng(0)
items = rng.standard_normal((100000, 32)).astype(np.float32)
W = [(rng.standard_normal((16, 64)).astype(np.float32) * 0.1, None, "relu"),
     (rng.standard_normal((1, 16)).astype(np.float32) * 0.1, None, "sigmoid")]
scorer = recfuse.MLPScorer(W)
parts = [recfuse.ALS(factors=32, iterations=2, random_state=0).fit(ui).user_factors,
         recfuse.SVD(epochs=3, random_state=0).fit(R.row, R.col, R.data).user_factors,
         recfuse.BPR(factors=16, iterations=3, random_state=0).fit(ui).item_factors,
         recfuse.ExplicitALS(iterations=2, random_state=0).fit(R.row, R.col, R.data).user_factors,
         *recfuse.topk(items[:64], items, k=10),
         *scorer.rank(items[:64], rng.integers(0, 100000, (64, 2000)),
                      scorer.prepare_items(items, item_column=32), k=10)]
print(hashlib.sha256(b"".join(np.ascontiguousarray(p).tobytes() for p in parts)).hexdigest())
'''
    plain = ok(run_child(digest))
    assert ok(run_child(digest, env={"OMP_THREAD_LIMIT": "1"})) == plain
    assert ok(run_child(digest, env={"OMP_NUM_THREADS": "100000"})) == plain


def test_interactions_keep_every_event_when_openmp_gives_fewer_threads():
    """Interactions.from_events under OMP_THREAD_LIMIT=1 (or OMP_DYNAMIC=true on a loaded
    machine) must count every event, as scipy's sum of duplicates does."""
    ok(run_child('''
        rng = np.random.default_rng(0)
        n = 400_000  # over 64k events per thread: group_events asks for 2 threads
        users, items = rng.integers(0, 1000, n), rng.integers(0, 500, n)
        got = recfuse.Interactions.from_events({"user": users, "item": items}).matrix
        want = sp.csr_matrix((np.ones(n), (users, items)), shape=(1000, 500))
        want.sum_duplicates()
        assert got.sum() == n, got.sum()
        assert got.shape == want.shape and abs(got - want).max() == 0
    ''', env={"OMP_THREAD_LIMIT": "1"}))


# ------------------------------------------------------------------------------ signals


def test_sigint_during_long_fits_arrives_and_keeps_the_previous_fit():
    """Ctrl-C during a refit (ALS, SVD, BPR, ExplicitALS) raises KeyboardInterrupt in the
    main thread; the model keeps answering from its earlier fit and refits afterwards."""
    ok(run_child('''
        import faulthandler, signal, threading
        faulthandler.dump_traceback_later(50, exit=True)  # where it stands, should it hang
        # Ctrl-C as an interactive session has it, whatever the parent left inherited
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
        R = datasets.synthetic_explicit(seed=0).tocoo()
        ui = datasets.synthetic_implicit(20000, 5000, 200000, seed=0)
        cases = [
            (recfuse.ALS(factors=16, iterations=1, random_state=0), "iterations",
             lambda m: m.fit(ui)),
            (recfuse.SVD(epochs=1, random_state=0), "epochs",
             lambda m: m.fit(R.row, R.col, R.data)),
            (recfuse.BPR(factors=16, iterations=1, random_state=0), "iterations",
             lambda m: m.fit(ui)),
            (recfuse.ExplicitALS(iterations=1, random_state=0), "iterations",
             lambda m: m.fit(R.row, R.col, R.data)),
        ]
        for model, setting, fit in cases:
            fit(model)
            before = model.recommend(np.arange(10), k=5)
            factors = model.user_factors.copy()
            model.set_params(**{setting: 10**6})
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
            try:
                fit(model)
                raise AssertionError("the fit was not interrupted")
            except KeyboardInterrupt:
                pass
            after = model.recommend(np.arange(10), k=5)
            assert np.array_equal(after[0], before[0]) and np.array_equal(after[1], before[1])
            assert np.array_equal(model.user_factors, factors)
            model.set_params(**{setting: 1})
            fit(model)
            print(type(model).__name__, "interrupted and refit", flush=True)
    '''))


def test_sigint_during_recommend_all_to_a_file_leaves_nothing(tmp_path):
    ok(run_child(f'''
        import signal, threading
        folder = {str(tmp_path)!r}
        ui = datasets.synthetic_implicit(20000, 5000, 200000, seed=0)
        model = recfuse.ALS(factors=64, iterations=1, random_state=0).fit(ui)
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        try:
            model.recommend_all(k=50, batch_size=500, path=os.path.join(folder, "r.parquet"))
            print("finished before the signal")
        except KeyboardInterrupt:
            pass
        leftovers = os.listdir(folder)
        assert leftovers in ([], ["r.parquet"]), leftovers
    '''))


def test_sigterm_mid_save_leaves_the_old_or_the_new_file(tmp_path):
    """A process killed by SIGTERM while it saves over a model file leaves that file whole:
    one of the two models, loadable. (Its temporary file may stay behind: see the notes.)"""
    path = tmp_path / "model.npz"
    saver = f'''
        path = {str(path)!r}
        ui = sp.csr_matrix((20000, 3000), dtype=np.float32)  # iterations=0: the drawn start
        a = recfuse.ALS(factors=64, iterations=0, random_state=0).fit(ui)
        b = recfuse.ALS(factors=64, iterations=0, random_state=1).fit(ui)
        a.save(path)
        np.save(path + ".a.npy", a.user_factors)
        np.save(path + ".b.npy", b.user_factors)
        print("ready", flush=True)
        while True:
            b.save(path)
            a.save(path)
    '''
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for delay in (0.05, 0.2, 0.45):
        child = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(saver)],
                                 stdout=subprocess.PIPE, text=True, env=environment)
        try:
            assert child.stdout.readline().strip() == "ready"
            import time
            time.sleep(delay)
            child.send_signal(signal.SIGTERM)
            assert child.wait(30) == -signal.SIGTERM
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            child.stdout.close()
        loaded = recfuse.load(path).user_factors
        a, b = np.load(f"{path}.a.npy"), np.load(f"{path}.b.npy")
        assert np.array_equal(loaded, a) or np.array_equal(loaded, b)


# ------------------------------------------------------------------------------ shutdown


def test_exit_while_daemon_threads_are_inside_long_native_calls():
    ok(run_child('''
        import threading
        ui = datasets.synthetic_implicit(20000, 5000, 200000, seed=0)
        items = np.random.default_rng(0).standard_normal((200000, 64)).astype(np.float32)
        def fit():
            recfuse.ALS(factors=64, iterations=50, random_state=0).fit(ui)
        def search():
            while True:
                recfuse.topk(items[:256], items, k=50)
        for target in (fit, search):
            threading.Thread(target=target, daemon=True).start()
        time.sleep(0.5)
    '''))


EXIT_WITH_QUEUED_WORK = '''
import atexit
seen = sp.random(100, 20000, density=0.001, format="csr", random_state=0, dtype="float32")
model = recfuse.ALS(factors=32, iterations=0, random_state=0).fit(seen)
rec = recfuse.Recommender(model, k=10, num_threads=1)
batcher = recfuse.MicroBatcher(rec, workers=4, max_batch=1, max_wait=0)
futures = [batcher.submit(u % 100) for u in range(3000)]
futures[0].result()
# atexit handlers run after threading's exit hooks, where the batcher is closed (drained)
atexit.register(lambda: print("answered", sum(f.done() for f in futures)))
# the script ends here with requests still queued: the interpreter exits
'''


def test_exit_with_a_busy_microbatcher_does_not_abort():
    """A program that ends (or sys.exit()s) while its MicroBatcher still has queued requests.
    A worker that was waiting to take the GIL back from a native call when finalization began
    is ended by CPython with pthread_exit, unwinding through gil_scoped_release's noexcept
    destructor: std::terminate (about 1 run in 2 here with 20,000 queued requests, before
    the batchers were closed at exit). Now each open batcher answers its queue and its
    workers end before finalization: every run exits 0 with every request answered."""
    for attempt in range(3):
        result = run_child(EXIT_WITH_QUEUED_WORK, timeout=60)
        assert result.returncode == 0, (
            f"run {attempt + 1}: exit status {result.returncode}; stderr: "
            f"{result.stderr[-500:]}")
        assert "answered 3000" in result.stdout, result.stdout[-300:]


def test_a_mapped_model_outlives_its_file_and_is_released(tmp_path):
    """``load(mmap=True)``: the map reads the file it opened, whatever happens to the path
    (replaced by a save, then removed); deleting the model releases it."""
    import gc
    ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
    path = str(tmp_path / "m.npz")
    recfuse.ALS(factors=16, iterations=2, random_state=0).fit(ui).save(path)
    mapped = recfuse.load(path, mmap=True)
    want = mapped.recommend(np.arange(10), k=5)
    recfuse.ALS(factors=16, iterations=2, random_state=1).fit(ui).save(path)
    assert np.array_equal(mapped.recommend(np.arange(10), k=5)[0], want[0])
    os.unlink(path)
    assert np.array_equal(mapped.recommend(np.arange(10), k=5)[1], want[1])
    del mapped
    gc.collect()
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------ environment

_ENV_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                    max_size=12)


@HYPOTHESIS
@given(value=st.one_of(_ENV_TEXT, st.sampled_from(
    ["cpu", "CPU", " cpu", "cpu ", "numpy", "auto", "", "cuda", "cupy", "bogus", "Numba"])))
def test_recfuse_backend_variable_is_read_as_a_backend_name(value):
    """Any value: the backend it names (or auto, when empty), or an error that names the
    variable: ValueError for a name that is none, RuntimeError for one not available."""
    old = os.environ.get("RECFUSE_BACKEND")
    os.environ["RECFUSE_BACKEND"] = value
    try:
        names = [b.name for b in recfuse.backends("topk")]
        available = {b.name for b in recfuse.backends("topk") if b.available}
        try:
            module = recfuse.resolve_backend("auto", "topk")
        except ValueError as error:
            assert value not in names and value not in ("auto", "")
            assert "RECFUSE_BACKEND" in str(error) and repr(value) in str(error)
            return
        except RuntimeError as error:
            assert value in names and value not in available
            assert "RECFUSE_BACKEND" in str(error)
            return
        if value in names:
            assert module.NAME == value
        else:
            assert value in ("auto", "")
    finally:
        if old is None:
            os.environ.pop("RECFUSE_BACKEND", None)
        else:
            os.environ["RECFUSE_BACKEND"] = old


@HYPOTHESIS
@given(value=st.one_of(_ENV_TEXT, st.integers(-5, 70000).map(str),
                       st.sampled_from(["", " 3 ", "1e3", "0x10", "2.0", "99999999999999999999"])))
def test_recfuse_worker_threads_is_an_integer_or_a_named_error(value):
    from recfuse._validation import MAX_THREADS
    from recfuse.distributed._blocks import worker_threads
    old = os.environ.get("RECFUSE_WORKER_THREADS")
    os.environ["RECFUSE_WORKER_THREADS"] = value
    try:
        try:
            threads = worker_threads(0)
        except ValueError as error:
            assert "RECFUSE_WORKER_THREADS" in str(error)
            return
        assert isinstance(threads, int) and 0 <= threads <= MAX_THREADS
        assert threads == (int(value) if value.strip() else 0)
        assert worker_threads(3) == 3  # an explicit count wins
    finally:
        if old is None:
            os.environ.pop("RECFUSE_WORKER_THREADS", None)
        else:
            os.environ["RECFUSE_WORKER_THREADS"] = old


def test_misspelt_recfuse_simd_leaves_the_other_backends_working():
    """RECFUSE_SIMD=AVX2 (misspelt: the levels are lower case): the cpu backend is unavailable with the
    reason, "auto" falls back to a working backend whose answers agree, nothing crashes;
    RECFUSE_SIMD=generic runs the cpu backend."""
    code = '''
        ui = datasets.synthetic_implicit(300, 200, 5000, seed=0)
        table = {b.name: b for b in recfuse.backends()}
        m = recfuse.ALS(factors=16, iterations=3, random_state=0).fit(ui)
        items = np.random.default_rng(0).standard_normal((500, 8)).astype(np.float32)
        print(table["cpu"].available, m.backend_used, table["cpu"].detail.replace(" ", "_"))
        np.save(sys.argv[1], m.user_factors)
        print(*recfuse.topk(items[:3], items, k=4)[0].ravel())
    '''
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        runs = {}
        for value in ("", "AVX2", "generic"):
            target = os.path.join(folder, f"f{len(runs)}.npy")
            source = PRELUDE + textwrap.dedent(code)
            result = run_child("", env={"RECFUSE_SIMD": value}, argv=["-c", source, target])
            lines = ok(result).splitlines()
            runs[value] = (lines[0].split(), lines[1], np.load(target))
    plain = runs[""]
    assert plain[0][:2] == ["True", "cpu"]
    for value in ("AVX2",):  # a misspelling (the levels are lower case)
        (available, used, detail), top, factors = runs[value]
        assert available == "False" and used != "cpu", value
        assert "RECFUSE_SIMD" in detail or value.strip() in detail, detail
        assert top == plain[1]
        np.testing.assert_allclose(factors, plain[2], rtol=1e-3, atol=1e-3)
    assert runs["generic"][0][:2] == ["True", "cpu"]
    assert runs["generic"][1] == plain[1]
