"""Bug hunt: long-running use (soak): leaks and drift over many cycles.

recfuse runs inside serving processes that live for days. The contract used here:

- Leaks: a call repeated thousands of times holds nothing after it returns (refused calls
  that raise included). Each loop runs a warm-up, then two equal windows of ``n`` calls;
  the growth over the second window (constant warm-up effects cancel) must stay flat:
  tracemalloc's traced memory, resident memory (``/proc/self/statm`` after
  ``malloc_trim``), ``len(gc.get_objects())``, open descriptors (``/proc/self/fd``),
  Python threads and OS threads (``/proc/self/task``). The bounds and what a real leak
  would give are in ``_assert_flat``.
- Handles: repeated save / load / ``load(mmap=True)``, ``Recommender(path)``,
  ``swap_model(path)``, MicroBatcher open/close (or dropped unclosed), HTTP apps created,
  served (Starlette's in-process TestClient, lifespan on) and closed, and POST /reload
  cycles leave no descriptor, thread or OS thread behind; a dropped Recommender that
  started fold threads is collected.
- Drift (serving.py and Recommender docstrings): "ALS re-solves the user ... over the whole
  known row" and a replay of the log brings users back "exactly under ALS's Cholesky and
  ExplicitALS"; ``_merge`` adds weights "in the pairs' order, as calls of one pair each would
  add them (so a replay that folds several calls in at once sums to the same bits)". So N
  calls of one event give the same bits as one call of their union, a long session with
  added items equals a fresh replay of its log and a swap's replay, and N swaps serve the
  last model. ``ALS.update_users`` "replaces what the model knows of those users": N calls
  with one row give the bits of one call (Cholesky), and interleaved update_users /
  update_items end where ``recfuse.reference`` puts them.
- Counters: ``observed_calls`` is "the observe calls applied so far, and so the number the
  next one is logged with (``pending_events().calls``); a refused call uses up no number";
  the log keeps the newest ``max_pending_events`` events; ``dropped_events`` counts those
  pushed out; ``version`` is 1 + installed swaps ("a swap that fails uses up no version");
  the HTTP /metrics counters count every request once.

Leak loops run in fresh child processes (``_child``), so the counters see only what the
child did. No timing assertions. Notes: /work/notes/hunt-soak-z.md.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import Events, MicroBatcher, Recommender, reference

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self (Linux)")

N_USERS, N_ITEMS, D = 300, 200, 8


def _seen(seed: int = 0) -> sp.csr_matrix:
    return sp.random(N_USERS, N_ITEMS, density=0.05, format="csr", random_state=seed,
                     dtype=np.float64) * 5


# ---------------------------------------------------------------------------- harness

_PRELUDE = r'''
import asyncio, ctypes, gc, json, os, sys, tempfile, threading, time, tracemalloc, warnings
import numpy as np
import scipy.sparse as sp
import recfuse

RESULTS = {}

def rss():
    """Resident bytes once glibc gave back the free heap it holds (what stays is held)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def tasks():
    return len(os.listdir("/proc/self/task"))

def counters(settle_tasks=None):
    gc.collect()
    if settle_tasks is not None:  # threads that were told to end may take a moment
        deadline = time.monotonic() + 5
        while tasks() > settle_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
    return {"traced": tracemalloc.get_traced_memory()[0], "rss": rss(),
            "objects": len(gc.get_objects()), "fds": len(os.listdir("/proc/self/fd")),
            "threads": threading.active_count(), "tasks": tasks()}

def measure(name, call, n, warm=None, trace=True):
    """call(i) for a warm-up, then two windows of n calls: each counter's change over the
    second window (what the first window left is the baseline)."""
    warm = max(5, n // 5) if warm is None else warm
    started = time.perf_counter()
    for i in range(warm):
        call(i)
    if trace:
        tracemalloc.start(1)
    for i in range(warm, warm + n):
        call(i)
    before = counters()
    for i in range(warm + n, warm + 2 * n):
        call(i)
    after = counters(settle_tasks=before["tasks"])
    if trace:
        tracemalloc.stop()
    RESULTS[name] = {"n": n, "trace": trace, "seconds": round(time.perf_counter() - started, 2),
                     **{k: after[k] - before[k] for k in before}}

def refused(call, *errors):
    def run(i):
        try:
            call(i)
        except errors:
            return
        raise AssertionError("the call was expected to raise")
    return run

def seen(seed=0):
    return sp.random(300, 200, density=0.05, format="csr", random_state=seed,
                     dtype=np.float64) * 5

def done():
    print("RESULT " + json.dumps(RESULTS), flush=True)
'''


def _child(code: str, timeout: int = 300) -> dict:
    """Runs ``code`` after the prelude in a fresh interpreter; returns its RESULTS."""
    script = _PRELUDE + textwrap.dedent(code) + "\ndone()\n"
    # passive OpenMP waits: spinning pool threads on shared cores slow every call; what a
    # call allocates or keeps does not depend on the wait policy
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=timeout, env=env)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stdout[-2000:] + run.stderr[-2000:]
    results = json.loads(lines[-1][len("RESULT "):])
    if os.environ.get("SOAK_REPORT"):
        with open(os.environ["SOAK_REPORT"], "a") as report:
            report.write(json.dumps(results, indent=1) + "\n")
    return results


def _assert_flat(results: dict) -> None:
    """Every loop stayed flat over its second window of n calls (each loop runs a warm-up
    and 2 n calls in all, 100 to 1,400 for the cheap ones).

    Noise seen here (second windows of 40-1,500 calls): traced <= 17 KB, RSS <= 0.41 MB,
    objects -10..+3, descriptors, threads and OS threads 0.
    - traced < 32 KiB + 32 B per call: one leaked result array a call (an ndarray object
      is 112 B before its data) passes it within 300 calls; a leaked model, index, batcher
      or app (kilobytes) within a few dozen.
    - resident memory < 4 MiB: the native loops return 50-100 KB a call (k = 400 to 500
      results of 16-64 queries), so a native result buffer kept per call passes it within
      40-80 calls.
    - Python objects < max(24, n / 8): one leaked container a call gives n.
    - descriptors, Python threads and OS threads: no growth (OS threads after up to 5 s
      for the ones told to end)."""
    failures = []
    for name, g in results.items():
        n = g["n"]
        limits = {"rss": 4 << 20, "objects": max(24, n // 8)}
        if g["trace"]:
            limits["traced"] = (32 << 10) + 32 * n
        for key, limit in limits.items():
            if g[key] >= limit:
                failures.append(f"{name}: {key} grew by {g[key]} over {n} calls (limit {limit})")
        for key in ("fds", "threads", "tasks"):
            if g[key] > 0:
                failures.append(f"{name}: {key} grew by {g[key]} over {n} calls")
    assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- leaks: repeated calls


def test_retrieval_models_scoring_and_metrics_hold_nothing_over_thousands_of_calls():
    """topk, ItemIndex (exclude/allow/deny, numba and cpu), ALS/BPR/SVD recommend and
    similar_items, MLPScorer score/rank (float32, int8), an MLPRanker's scorer, mmr,
    metrics; also refused calls of each kind."""
    results = _child(r'''
    from recfuse import metrics, serving
    ui = seen()
    als = recfuse.ALS(factors=8, iterations=3, random_state=0).fit(ui)
    bpr = recfuse.BPR(factors=8, iterations=3, random_state=0).fit(ui)
    users, items = ui.nonzero()
    ratings = np.clip(np.round(ui.data), 1, 8)
    svd = recfuse.SVD(factors=8, epochs=3, random_state=0).fit(users, items, ratings)
    rng = np.random.default_rng(0)
    table = rng.standard_normal((4000, 8)).astype(np.float32)
    queries = rng.standard_normal((16, 8)).astype(np.float32)
    exclude = sp.random(16, 4000, density=0.02, format="csr", random_state=1)
    index = recfuse.ItemIndex(table)
    numba_index = recfuse.ItemIndex(table, backend="numba")
    allow, deny = np.arange(3000), [1, 2, 3]

    # native calls returning 16 x 500 results (96 KB): a kept buffer shows in RSS
    measure("topk k=500", lambda i: recfuse.topk(queries, table, 500), 70)
    measure("ItemIndex.search exclude/allow/deny k=500",
            lambda i: index.search(queries, 500, exclude=exclude, allow=allow, deny=deny), 140)
    measure("ItemIndex.search numba k=500",
            lambda i: numba_index.search(queries, 500, exclude=exclude, deny=deny), 70)
    measure("ItemIndex.search refused k", refused(lambda i: index.search(queries, 0),
                                                  ValueError), 700)
    measure("ItemIndex.search refused NaN query",
            refused(lambda i: index.search(np.full(8, np.nan, np.float32), 5), ValueError), 700)
    measure("ItemIndex.search refused exclude shape",
            refused(lambda i: index.search(queries, 5, exclude=exclude[:, :10]), ValueError),
            350)
    measure("ALS.recommend", lambda i: als.recommend(i % 300, k=10), 350)
    measure("ALS.recommend batch k=150", lambda i: als.recommend(np.arange(64), k=150), 100)
    measure("ALS.similar_items", lambda i: als.similar_items(i % 200, k=10), 350)
    measure("ALS.recommend refused user",
            refused(lambda i: als.recommend(10**6, k=10), ValueError), 700)
    measure("BPR.recommend", lambda i: bpr.recommend(i % 300, k=10), 350)
    measure("BPR.similar_items", lambda i: bpr.similar_items(i % 200, k=10), 350)
    measure("SVD.recommend", lambda i: svd.recommend(i % 300, k=10), 350)
    measure("SVD.predict", lambda i: svd.predict(np.arange(50), np.arange(50)), 350)

    layers = [(rng.standard_normal((16, 16)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 16)).astype(np.float32), np.zeros(1, np.float32),
               "identity")]
    items = rng.standard_normal((4000, 8)).astype(np.float32)
    candidates = rng.integers(0, 4000, (64, 400))
    users64 = rng.standard_normal((64, 8)).astype(np.float32)
    for precision in ("float32", "int8"):
        scorer = recfuse.MLPScorer(layers, precision=precision)
        prepared = scorer.prepare_items(items, item_column=8)
        measure(f"MLPScorer.rank {precision} 64 x 400, k=400",
                lambda i: scorer.rank(users64, candidates, prepared, k=400), 50)
    scorer = recfuse.MLPScorer(layers)
    prepared = scorer.prepare_items(items, item_column=8)
    measure("MLPScorer.score", lambda i: scorer.score(rng.standard_normal((32, 16))), 350)
    measure("MLPScorer.score_candidates",
            lambda i: scorer.score_candidates(users64, candidates, prepared), 100)
    measure("MLPScorer.rank refused candidate id",
            refused(lambda i: scorer.rank(users64[:1], np.array([[4000]]), prepared, k=1),
                    ValueError), 350)
    ranker = recfuse.MLPRanker(hidden=(8,), epochs=1, random_state=0).fit(
        ui, als.user_factors, als.item_factors)
    ranker_scorer = ranker.to_scorer()
    rows = rng.standard_normal((64, ranker_scorer.input_width)).astype(np.float32)
    measure("MLPRanker scorer.score", lambda i: ranker_scorer.score(rows), 350)
    vectors = rng.standard_normal((200, 8))
    scores = np.sort(rng.random(200))[::-1]
    measure("serving.mmr", lambda i: serving.mmr(scores, vectors, 20, 0.5), 100)
    lists, _ = als.recommend(np.arange(300), k=10)
    test = seen(5).tocsr()
    measure("metrics.ranking_metrics",
            lambda i: metrics.ranking_metrics(lists, test, np.arange(300)), 100)
    measure("metrics.intra_list_diversity",
            lambda i: metrics.intra_list_diversity(lists, als.item_factors), 100)
    measure("metrics.ranking_metrics refused ids",
            refused(lambda i: metrics.ranking_metrics(lists + 1000, test, np.arange(300)),
                    ValueError), 350)
    ''')
    _assert_flat(results)


def test_recommender_and_micro_batcher_hold_nothing_over_thousands_of_calls():
    """Recommender.recommend (plain, observed users, added items, ranker, MMR + caps),
    observe (fold-ins of known and new users, added items, through fold threads),
    refused observe and recommend, swap_model with a replay, MicroBatcher submit and
    recommend_async."""
    results = _child(r'''
    ui = seen()
    als = recfuse.ALS(factors=8, iterations=3, random_state=0).fit(ui)
    rec = recfuse.Recommender(als, k=10, max_pending_events=300)
    measure("Recommender.recommend", lambda i: rec.recommend(i % 300), 350)
    measure("Recommender.recommend_batch k=150",
            lambda i: rec.recommend_batch(np.arange(64), k=150), 70)
    measure("Recommender.observe (log bounded at 300)",
            lambda i: rec.observe({"user": [i % 50], "item": [(7 * i) % 200]}), 520)
    measure("Recommender.observe new users",
            lambda i: rec.observe({"user": [1000 + i % 40], "item": [i % 200]}), 350)
    measure("Recommender.recommend observed users", lambda i: rec.recommend(i % 50), 350)
    measure("Recommender.observe refused item",
            refused(lambda i: rec.observe({"user": [1], "item": [-1]}), ValueError), 700)
    measure("Recommender.observe refused weight (after the fold-in's checks)",
            refused(lambda i: rec.observe({"user": [1], "item": [3], "weight": [1e30]}),
                    ValueError), 350)
    measure("Recommender.recommend refused k",
            refused(lambda i: rec.recommend(1, k=0), ValueError), 700)

    added = recfuse.Recommender(als, k=10, max_pending_events=300, new_item_users=3)
    added._background_fold_items = 20  # a fold thread may run during the warm-up
    # (users and items cycle within what the warm-up met: new users would be growth)
    measure("Recommender.observe added items",
            lambda i: added.observe({"user": [i % 30], "item": [200 + i % 20]}), 210)
    measure("Recommender.recommend with added items", lambda i: added.recommend(i % 300),
            350)

    rng = np.random.default_rng(0)
    scorer = recfuse.MLPScorer([
        (rng.standard_normal((6, 16)).astype(np.float32), None, "relu"),
        (rng.standard_normal((1, 6)).astype(np.float32), np.zeros(1, np.float32), "identity")])
    rules = recfuse.Rerank(diversity=0.7, item_categories=np.arange(200) % 7, category_cap=3,
                           deny=[5, 6])
    chain = recfuse.Recommender(als, scorer, candidates=50, k=10, rerank=rules,
                                max_pending_events=300)
    measure("Recommender.recommend ranker + MMR + caps", lambda i: chain.recommend(i % 300),
            400)
    measure("Recommender.observe + recommend ranker chain",
            lambda i: (chain.observe({"user": [i % 20], "item": [200 + i % 10]}),
                       chain.recommend(i % 20)), 100)
    measure("Recommender.swap_model (replay of a 300-event log)",
            lambda i: rec.swap_model(als), 50)

    batcher = recfuse.MicroBatcher(rec)
    measure("MicroBatcher.submit", lambda i: batcher.submit(i % 300).result(), 350)
    measure("MicroBatcher.submit refused",
            refused(lambda i: batcher.submit(-1), ValueError), 700)

    async def many(i):
        return await asyncio.gather(*(batcher.recommend_async((i + j) % 300)
                                      for j in range(8)))
    loop = asyncio.new_event_loop()
    measure("MicroBatcher.recommend_async x 8", lambda i: loop.run_until_complete(many(i)), 140)
    loop.close()
    batcher.close()
    ''')
    _assert_flat(results)


def test_files_batchers_and_http_apps_leave_no_handles_over_many_cycles():
    """save / load / load(mmap=True) / Recommender(path) / swap_model(path); MicroBatcher
    open-close and dropped unclosed; HTTP apps created, served and closed; /reload cycles
    and requests of one app."""
    pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="httpx (starlette's TestClient) is not installed")
    results = _child(r'''
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient
    from recfuse.server import Limits, create_app
    ui = seen()
    als = recfuse.ALS(factors=8, iterations=3, random_state=0).fit(ui)
    folder = tempfile.mkdtemp()
    path = os.path.join(folder, "model.npz")
    als.save(path)
    measure("save", lambda i: als.save(path), 70)
    measure("load", lambda i: recfuse.load(path).recommend(1), 70)
    measure("load(mmap=True) + recommend + similar_items",
            lambda i: (lambda m: (m.recommend(1), m.similar_items(1)))(
                recfuse.load(path, mmap=True)), 70)
    measure("load refused (missing file)",
            refused(lambda i: recfuse.load(os.path.join(folder, "none.npz")), OSError,
                    ValueError), 180)
    measure("Recommender(path)", lambda i: recfuse.Recommender(path).recommend(1), 40)
    rec = recfuse.Recommender(path, k=10)
    measure("swap_model(path)", lambda i: rec.swap_model(path), 50)
    measure("swap_model refused (missing file)",
            refused(lambda i: rec.swap_model(os.path.join(folder, "none.npz")), OSError,
                    ValueError), 100)

    def batcher_cycle(i):
        with recfuse.MicroBatcher(rec, workers=2) as batcher:
            batcher.recommend(i % 300)
    measure("MicroBatcher open/close (2 workers)", batcher_cycle, 50)

    def batcher_dropped(i):
        batcher = recfuse.MicroBatcher(rec, workers=2)
        batcher.submit(i % 300).result()
    measure("MicroBatcher dropped unclosed", batcher_dropped, 50)

    def dropped_recommender(i):
        r = recfuse.Recommender(als, new_item_users=1)
        r._background_fold_items = 1
        # 300 added items, past the recent tier's limit (256): a fold thread starts
        r.observe({"user": np.arange(300), "item": 200 + np.arange(300)})
        r.recommend(1)
    measure("Recommender with a fold thread, dropped", dropped_recommender, 6, warm=2)

    def app_cycle(i):
        app = create_app(rec, limits=Limits(workers=2))
        with TestClient(app) as client:
            assert client.post("/recommend", json={"user": i % 300}).status_code == 200
            assert client.post("/recommend", json={"users": [1, 2]}).status_code == 200
            assert client.post("/events", json={"user": [1], "item": [i % 200]}).status_code == 200
            assert client.get("/events").status_code == 200
            assert client.get("/metrics").status_code == 200
    measure("HTTP app created, served, closed", app_cycle, 15, warm=5)

    served = recfuse.Recommender(path, k=10, max_pending_events=20)
    app = create_app(served, model_path=path)
    with TestClient(app) as client:
        def reload_cycle(i):
            client.post("/events", json={"user": [i % 300], "item": [200 + i % 5]})
            assert client.post("/reload").status_code == 200
        measure("POST /events + POST /reload", reload_cycle, 10, warm=5)
        measure("POST /recommend",
                lambda i: client.post("/recommend", json={"user": i % 300}), 100)
        measure("POST /recommend refused",
                lambda i: client.post("/recommend", json={"user": -1}), 100)
        measure("POST /events refused",
                lambda i: client.post("/events", json={"user": [1], "item": [-1]}), 100)
    ''', timeout=400)
    _assert_flat(results)


# ---------------------------------------------------------------- drift: many cycles


def _vectors(rec: Recommender) -> dict:
    state = rec._state
    return {user: entry.vector for user, entry in state.users.items()}


def _added(rec: Recommender):
    extra = rec._state.new_items
    if extra is None:
        return np.zeros(0, np.int64), np.zeros((0, D))
    ids = np.unique(np.concatenate([rows.ids for rows, _ in extra.tiers()]))
    return ids, extra.vectors(ids)


def _assert_same_state(live: Recommender, other: Recommender, users=range(N_USERS + 20)):
    mine, theirs = _vectors(live), _vectors(other)
    assert mine.keys() == theirs.keys()
    for user in mine:
        assert np.array_equal(mine[user], theirs[user]), user
    ids, vectors = _added(live)
    other_ids, other_vectors = _added(other)
    assert np.array_equal(ids, other_ids)
    assert np.array_equal(vectors, other_vectors)
    for user in users:
        a, b = live.recommend(user), other.recommend(user)
        assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores), user


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_many_one_event_calls_fold_in_as_one_call_of_their_union(dtype):
    """600 calls of one event each (fractional weights, repeated pairs) give the same bits
    as one observe of all of them, and as a fresh Recommender replaying the log."""
    als = recfuse.ALS(factors=D, iterations=3, random_state=0, dtype=dtype,
                      solver="cholesky").fit(_seen())
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 20, 600), rng.integers(0, 40, 600)
    weights = rng.random(600) * 3
    live, union = Recommender(als, k=10), Recommender(als, k=10)
    for u, i, w in zip(users, items, weights):
        live.observe({"user": [u], "item": [i], "weight": [w]})
    union.observe({"user": users, "item": items, "weight": weights})
    _assert_same_state(live, union, range(25))
    for user in set(users.tolist()):  # the weights summed in the same order: same bits
        assert np.array_equal(live._state.users[user].weights, union._state.users[user].weights)
    replayed = Recommender(als, k=10)
    replayed.observe(live.pending_events())
    _assert_same_state(live, replayed, range(25))
    assert live.observed_calls == 600 and union.observed_calls == 1


@pytest.mark.parametrize("kind", ["als", "explicit"])
def test_a_long_session_with_added_items_comes_back_exactly_by_replay_and_by_swap(kind):
    """400 observe calls mixing known items, added items (3 first users each) and new
    users: a fresh Recommender observing ``pending_events()`` and the live one after
    ``swap_model`` of its own model hold the same user and added-item vectors, bit for
    bit, and answer the same lists."""
    rng = np.random.default_rng(3)
    seen = _seen()
    if kind == "als":
        model = recfuse.ALS(factors=6, iterations=3, random_state=0, dtype=np.float64,
                            solver="cholesky").fit(seen)
    else:
        users, items = seen.nonzero()
        model = recfuse.ExplicitALS(factors=6, iterations=3, random_state=0).fit(
            users, items, rng.integers(1, 6, users.size).astype(float))
    options = dict(k=10, new_item_users=3, max_new_items=1000)
    live = Recommender(model, **options)
    live._background_fold_items = 10  # the added items fold on threads meanwhile
    for _ in range(400):
        n = int(rng.integers(1, 4))
        users = rng.integers(0, N_USERS + 20, n)
        items = np.where(rng.random(n) < 0.3, N_ITEMS + rng.integers(0, 40, n),
                         rng.integers(0, N_ITEMS, n))
        live.observe({"user": users, "item": items,
                      "weight": rng.integers(1, 6, n).astype(float)})
    if live._fold_thread is not None:
        live._fold_thread.join()
    fresh = Recommender(model, **options)
    fresh.observe(live.pending_events())
    _assert_same_state(live, fresh)
    before = {user: vector.copy() for user, vector in _vectors(live).items()}
    live.swap_model(model)
    _assert_same_state(live, fresh)
    assert all(np.array_equal(before[u], v) for u, v in _vectors(live).items())


@settings(max_examples=30, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_split_of_events_into_calls_gives_the_same_users(data):
    """Hypothesis: a sequence of events (known items, integer or fractional weights) cut
    into calls anywhere folds in to the same bits as one call, and a replay of its log too
    (ALS Cholesky float64)."""
    als = _CHOLESKY64
    size = data.draw(st.integers(1, 60))
    users = np.array(data.draw(st.lists(st.integers(0, 5), min_size=size, max_size=size)))
    items = np.array(data.draw(st.lists(st.integers(0, 9), min_size=size, max_size=size)))
    weights = np.array(data.draw(st.lists(
        st.sampled_from([0.1, 0.2, 0.3, 1.0, 2.5, 7.0, 1e-3]), min_size=size, max_size=size)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(1, size - 1)), max_size=10))))
    live, union = Recommender(als, k=5), Recommender(als, k=5)
    for a, b in zip([0, *cuts], [*cuts, size]):
        if a < b:
            live.observe({"user": users[a:b], "item": items[a:b], "weight": weights[a:b]})
    union.observe({"user": users, "item": items, "weight": weights})
    _assert_same_state(live, union, range(8))
    replayed = Recommender(als, k=5)
    replayed.observe(live.pending_events())
    _assert_same_state(live, replayed, range(8))


_CHOLESKY64 = recfuse.ALS(factors=4, iterations=3, random_state=0, dtype=np.float64,
                          solver="cholesky").fit(_seen(2))


def test_many_swaps_serve_the_last_model_and_count_versions(tmp_path):
    """60 swaps alternating among three models (two sizes, files and objects), with failed
    swaps in between: ``version`` is 1 + installed swaps, the served model is the last
    one (its sizes and lists equal a fresh Recommender of it that observed the log), and
    the log, observed_calls and dropped_events are unchanged by the swaps."""
    small = recfuse.ALS(factors=D, iterations=2, random_state=1, dtype=np.float64,
                        solver="cholesky").fit(_seen(1))
    big_seen = sp.random(N_USERS + 50, N_ITEMS + 30, density=0.05, format="csr",
                         random_state=4, dtype=np.float64) * 5
    big = recfuse.ALS(factors=D, iterations=2, random_state=2, dtype=np.float64,
                      solver="cholesky").fit(big_seen)
    path = tmp_path / "big.npz"
    big.save(path)
    rec = Recommender(small, k=10, max_new_items=100)
    rng = np.random.default_rng(5)
    installed = 0
    for step in range(60):
        rec.observe({"user": rng.integers(0, N_USERS, 3), "item": rng.integers(0, N_ITEMS, 3)})
        calls, log = rec.observed_calls, rec.pending_events()
        if step % 7 == 3:
            with pytest.raises((OSError, ValueError)):
                rec.swap_model(tmp_path / "missing.npz")
        else:
            source = [small, big, str(path)][step % 3]
            assert rec.swap_model(source) == 2 + installed
            installed += 1
        assert rec.version == 1 + installed
        assert rec.observed_calls == calls and rec.dropped_events == 0
        after = rec.pending_events()
        assert all(np.array_equal(a, b) for a, b in zip(log, after))
    last = [small, big, str(path)][58 % 3]  # step 59 failed (59 % 7 == 3)
    assert rec.info()["items"] == (N_ITEMS + 30 if last is not small else N_ITEMS)
    fresh = Recommender(last, k=10, max_new_items=100)
    fresh.observe(rec.pending_events())
    for user in range(0, N_USERS + 50, 7):
        assert np.array_equal(rec.recommend(user).ids, fresh.recommend(user).ids), user


def test_the_log_and_its_counters_stay_consistent_over_a_long_random_session():
    """1,500 steps of observe (1-7 events), refused observe, pending_events(clear=True) and
    changes of max_pending_events: the log is always the newest accepted events (at most
    max_pending_events, none from before the last clear), in order with their call
    numbers; observed_calls counts accepted calls; pending + dropped + cleared ==
    accepted."""
    als = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(_seen())
    rng = np.random.default_rng(2)
    limit = 40
    rec = Recommender(als, k=5, max_pending_events=limit)
    accepted: list[tuple[int, int, float, int]] = []
    calls = cleared = cleared_at = 0
    for step in range(1500):
        draw = rng.random()
        if draw < 0.05:
            with pytest.raises(ValueError):
                rec.observe({"user": [1, 2], "item": [3, -4]})
        elif draw < 0.07:
            taken = rec.pending_events(clear=True)
            cleared += taken.users.size
            cleared_at = len(accepted)
        elif draw < 0.09:
            limit = int(rng.integers(0, 60))
            rec.max_pending_events = limit
        else:
            m = int(rng.integers(1, 8))
            users, items = rng.integers(0, N_USERS, m), rng.integers(0, N_ITEMS, m)
            weights = rng.integers(1, 5, m).astype(float)
            assert rec.observe({"user": users, "item": items, "weight": weights}) == m
            accepted += [(u, i, w, calls) for u, i, w in zip(users.tolist(), items.tolist(),
                                                               weights.tolist())]
            calls += 1
        log = rec.pending_events()
        size = log.users.size
        assert size <= limit and size <= len(accepted) - cleared_at
        tail = accepted[len(accepted) - size:]
        assert list(zip(log.users.tolist(), log.items.tolist(), log.weights.tolist(),
                        log.calls.tolist())) == tail
        assert rec.observed_calls == calls
        info = rec.info()
        assert info["pending_events"] == size
        assert size + rec.dropped_events + cleared == len(accepted)


def test_update_users_and_update_items_interleaved_end_where_the_reference_puts_them():
    """200 interleaved update_users / update_items of random rows and columns (Cholesky,
    float64): the seen matrix is the rows given, a final re-solve of every user equals
    ``reference.als_half_sweep`` against the items as they are, recommend's lists equal
    topk's, and one row given 300 times gives the bits of the first call."""
    als = recfuse.ALS(factors=6, iterations=3, random_state=0, solver="cholesky",
                      dtype=np.float64).fit(_seen())
    rng = np.random.default_rng(0)
    current = _seen().tolil()
    for _ in range(200):
        seed = int(rng.integers(2**31))
        if rng.random() < 0.5:
            user = int(rng.integers(0, N_USERS))
            row = sp.random(1, N_ITEMS, density=0.05, format="csr", random_state=seed) * 3
            als.update_users([user], row)
            current[user] = row
        else:
            item = int(rng.integers(0, N_ITEMS))
            column = sp.random(1, N_USERS, density=0.05, format="csr", random_state=seed) * 3
            als.update_items([item], column)
            current[:, item] = column.T
    R = current.tocsr()
    assert abs(als._state.user_items - R).max() == 0
    solved = als.update_users(np.arange(N_USERS), R)
    want = reference.als_half_sweep(R, als.item_factors, als.user_factors,
                                    regularization=als.regularization, alpha=als.alpha,
                                    solver="cholesky")
    np.testing.assert_allclose(solved, want, rtol=1e-9, atol=1e-12)
    ids, _ = als.recommend(np.arange(N_USERS), k=10)
    want_ids, _ = recfuse.topk(als.user_factors, als.item_factors, 10, exclude=R)
    assert np.array_equal(ids, want_ids)
    row = sp.csr_matrix(R[5])
    first = als.update_users([5], row).copy()
    for _ in range(300):
        again = als.update_users([5], row)
    assert np.array_equal(first, again)


def test_micro_batchers_opened_and_closed_many_times_answer_as_the_recommender():
    """20 rounds: a MicroBatcher (3 workers) answers 6 threads x 20 requests each, equal to
    recommend's; after close its threads are gone, and the process's threads are back to
    where they started."""
    als = recfuse.ALS(factors=D, iterations=2, random_state=0).fit(_seen())
    rec = Recommender(als, k=7, num_threads=1)
    want = {user: rec.recommend(user).ids for user in range(N_USERS)}
    start = threading.active_count()
    for round_ in range(20):
        batcher = MicroBatcher(rec, workers=3, max_wait=0.0005)
        wrong = []

        def caller(seed):
            for j in range(20):
                user = (seed * 31 + j * 7 + round_) % N_USERS
                if not np.array_equal(batcher.recommend(user).ids, want[user]):
                    wrong.append(user)

        threads = [threading.Thread(target=caller, args=(s,)) for s in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        batcher.close()
        assert not wrong, wrong
        assert not any(t.is_alive() for t in batcher._threads)
    assert threading.active_count() == start


def test_dropped_recommenders_batchers_and_models_are_collected_after_many_cycles():
    """50 cycles of a model, a Recommender that observed added items (fold threads), a
    MicroBatcher used and dropped unclosed: every one of them is collected."""
    refs = []
    for cycle in range(50):
        als = recfuse.ALS(factors=4, iterations=1, random_state=cycle).fit(_seen(cycle % 3))
        rec = Recommender(als, new_item_users=1)
        rec._background_fold_items = 1
        rec.observe({"user": np.arange(N_USERS), "item": N_ITEMS + np.arange(N_USERS)})
        batcher = MicroBatcher(rec)
        batcher.recommend(cycle % N_USERS)
        if rec._fold_thread is not None:
            rec._fold_thread.join(30)
        refs += [weakref.ref(als), weakref.ref(rec), weakref.ref(batcher)]
        del als, rec, batcher
    gc.collect()
    alive = [ref() for ref in refs if ref() is not None]
    assert not alive, [type(x).__name__ for x in alive]


def test_http_metrics_count_every_request_once_over_a_long_run():
    """600 requests of four kinds (single, batch, events, refused) through one app: the
    /metrics request counters and the micro-batch size sum equal what was sent."""
    pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
    pytest.importorskip("httpx", reason="httpx (starlette's TestClient) is not installed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from starlette.testclient import TestClient
    from recfuse.server import create_app

    als = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(_seen())
    app = create_app(Recommender(als, k=5, max_pending_events=100))
    sent = {("/recommend", 200): 0, ("/events", 200): 0, ("/recommend", 422): 0}
    singles = 0
    with TestClient(app) as client:
        for i in range(600):
            kind = i % 4
            if kind == 0:
                reply = client.post("/recommend", json={"user": i % N_USERS})
                singles += 1
            elif kind == 1:
                reply = client.post("/recommend", json={"users": [1, 2, 3]})
            elif kind == 2:
                reply = client.post("/events", json={"user": [i % N_USERS], "item": [i % 50]})
            else:
                reply = client.post("/recommend", json={"user": -1})
            sent[(reply.request.url.path, reply.status_code)] += 1
        text = client.get("/metrics").text
        health = client.get("/health").json()
    for (route, status), count in sent.items():
        line = f'recfuse_requests_total{{route="{route}",status="{status}"}} {count}'
        assert line in text, (line, text[:2000])
    batch_sum = [line for line in text.splitlines()
                 if line.startswith("recfuse_micro_batch_size_sum")]
    # single requests through the batcher, plus the users of each /recommend batch request
    assert float(batch_sum[0].split()[1]) == singles + 3 * 150
    assert health["pending_events"] == 100 and health["dropped_events"] == 50


# ---------------------------------------------------------------- bugs


def test_a_replay_function_numbering_calls_near_int64_max_does_not_brick_observe():
    """``observed_calls`` is "the number the next one is logged with (pending_events().calls,
    int64)". A replay function returns Events whose calls are valid int64 numbers (the
    swap keeps "calls" and numbers later calls after its last): the swap must either refuse
    numbers that leave no room for later calls, or later observe calls must go on."""
    als = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(_seen())
    rec = Recommender(als, k=5)
    rec.observe({"user": [1], "item": [2]})
    last = np.iinfo(np.int64).max - 1

    def renumber(events: Events) -> Events:
        return Events(events.users, events.items, events.weights,
                      np.full(events.users.size, last, np.int64))

    version, log = rec.info()["version"], rec.pending_events()
    try:
        rec.swap_model(als, replay=renumber)
    except ValueError:  # refused at the boundary: the old model and log kept, observe goes on
        assert rec.info()["version"] == version
        assert tuple(map(np.ndarray.tolist, rec.pending_events())) == \
            tuple(map(np.ndarray.tolist, log))
        rec.observe({"user": [1], "item": [3]})
        assert rec.observed_calls == 2
        return
    for item in (3, 4, 5):  # today: the first is taken, then OverflowError on every call
        rec.observe({"user": [1], "item": [item]})
    log = rec.pending_events()
    assert log.calls.dtype == np.int64 and (np.diff(log.calls) >= 0).all()
    assert rec.observed_calls == int(log.calls[-1]) + 1
