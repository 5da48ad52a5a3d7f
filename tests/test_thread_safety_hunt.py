"""Adversarial hunt on the thread safety of shared objects: many Python threads sharing one
fitted model, one ``ItemIndex``, one ``MLPScorer``, one ``Recommender``.

The contract used here (README "Threads", the classes' docstrings):

- the native calls release the GIL;
- a fitted model (ALS, BPR, SVD, SVD++, ExplicitALS), ``ItemIndex``, ``topk`` and
  ``MLPScorer`` may be read from any number of threads at once (``recommend``, ``predict``,
  ``similar_*``, ``recommend_all``, ``score``, ``rank``), also while another thread refits,
  updates users or saves the model: each answer, copy and file comes wholly from one fit;
- lazily built state (an ``ItemIndex``'s native / bfloat16 tables prepared on first search,
  a model's recommend and cosine indexes, its seen matrix) is built by whichever thread
  comes first and must not change any answer;
- a ``Recommender`` is "safe from many threads"; its settings ``candidates`` ... may be
  assigned while it serves, "each call reads each setting once";
- not safe (so only: the interpreter must survive): ``MLPRanker`` during ``fit``,
  ``compat.implicit``'s models during their own refit, assigning attributes by hand;
- results are deterministic for a given seed, backend and SIMD level, whatever the thread
  count (ALS, ExplicitALS, SVD, SVD++, BPR, top-k, MLP scoring, the native metrics).

Every race is started through a ``threading.Barrier`` on a freshly built / loaded object (so
the threads race on its first lazy build), repeated in loops, and every thread's answer is
compared bit for bit with a single-threaded answer from an independent copy computed
afterwards. Misuse that the documentation forbids runs in a subprocess.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import metrics

THREADS = 8


# ------------------------------------------------------------------------------ helpers


def race(jobs, timeout=60.0):
    """Run each callable of ``jobs`` on its own thread, all released together by a barrier;
    return their results in order (an exception raised by a job is re-raised here)."""
    barrier = threading.Barrier(len(jobs))
    results: list = [None] * len(jobs)
    errors: list = [None] * len(jobs)

    def run(position, job):
        try:
            barrier.wait()
            results[position] = job()
        except BaseException as error:  # noqa: BLE001 - reported in the main thread
            errors[position] = error

    threads = [threading.Thread(target=run, args=(p, j), daemon=True)
               for p, j in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a thread hung"
    for error in errors:
        if error is not None:
            raise error
    return results


def same(a, b):
    """Bit-for-bit equality of nested tuples / lists / arrays / floats."""
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(
            same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a, b, equal_nan=a.dtype.kind in "fc")


def run_python(code: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


def implicit_data(users=300, items=1500, density=0.02, seed=0):
    matrix = sp.random(users, items, density=density, format="csr", random_state=seed,
                       dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 5).astype(np.float32)
    return matrix


def rating_data(users=200, items=1200, count=6000, seed=0):
    rng = np.random.default_rng(seed)
    u = rng.integers(0, users, count)
    i = rng.integers(0, items, count)
    r = rng.integers(1, 6, count).astype(np.float64)
    return u, i, r


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """{name: path} of small fitted models of every kind, saved once."""
    folder = tmp_path_factory.mktemp("models")
    implicit = implicit_data()
    u, i, r = rating_data()
    made = {
        "ALS": recfuse.ALS(factors=16, iterations=3, random_state=0).fit(implicit),
        "BPR": recfuse.BPR(factors=16, iterations=3, random_state=0).fit(implicit),
        "SVD": recfuse.SVD(factors=16, epochs=3, random_state=0).fit(u, i, r),
        "SVD-unbiased": recfuse.SVD(factors=16, epochs=3, biased=False,
                                    random_state=0).fit(u, i, r, n_users=230),
        "SVDpp": recfuse.SVDpp(factors=8, epochs=2, random_state=0).fit(u, i, r),
        "ExplicitALS": recfuse.ExplicitALS(factors=16, iterations=3, random_state=0).fit(u, i, r),
    }
    paths = {}
    for name, model in made.items():
        paths[name] = str(folder / f"{name}.npz")
        model.save(paths[name])
    return paths


MODEL_NAMES = ["ALS", "BPR", "SVD", "SVD-unbiased", "SVDpp", "ExplicitALS"]


def read_calls(model, name):
    """The read-only calls one thread makes on a shared model: (label, callable) pairs whose
    answers are compared with an independent copy's."""
    n_users = model.user_factors.shape[0]
    batch = np.arange(0, n_users, 7)
    calls = [
        ("recommend batch", lambda: model.recommend(batch, k=12)),
        ("recommend one", lambda: model.recommend(3, k=5)),
        ("recommend unfiltered", lambda: model.recommend(batch[:9], k=40, filter_seen=False)),
        ("recommend allow", lambda: model.recommend(batch[:5], k=7, items=np.arange(0, 900, 3))),
        ("similar_items", lambda: model.similar_items(np.arange(0, 60, 5), k=9)),
        ("similar_users", lambda: model.similar_users(np.arange(0, 40, 3), k=6)),
        ("recommend_all", lambda: tuple(next(iter(model.recommend_all(k=4, batch_size=50))))),
    ]
    if name not in ("ALS", "BPR"):
        calls.append(("predict", lambda: model.predict(batch, batch % 97 + 1)))
    return calls


# ----------------------------------------------------------------- ItemIndex and topk


@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_threads_racing_on_a_fresh_index_first_search_agree_with_a_serial_copy(metric):
    # 3,000 items: storage="auto" picks bfloat16 copies for k <= 3 and the native table above,
    # both prepared lazily; zero queries take the native table too. Every thread's first call
    # races on both preparations.
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 24)).astype(np.float32)
    items[::50] *= 8  # skewed norms: the k in between decides by a measured skew
    bias = rng.standard_normal(3000).astype(np.float32) if metric == "dot" else None
    queries = rng.standard_normal((THREADS, 5, 24)).astype(np.float32)
    queries[:, 0] = 0  # a zero query: every item tied
    ks = [1, 2, 3, 5, 40, 1, 3, 200]
    for _ in range(25):
        shared = recfuse.ItemIndex(items, item_bias=bias, metric=metric)
        got = race([lambda t=t: shared.search(queries[t], ks[t], num_threads=1 + t % 3)
                    for t in range(THREADS)])
        serial = recfuse.ItemIndex(items, item_bias=bias, metric=metric)
        for t in range(THREADS):
            assert same(got[t], serial.search(queries[t], ks[t], num_threads=1)), t


def test_threads_calling_topk_with_exclusions_and_rules_agree_with_serial_calls():
    rng = np.random.default_rng(2)
    items = rng.standard_normal((1500, 16)).astype(np.float32)
    queries = rng.standard_normal((THREADS, 30, 16)).astype(np.float32)
    excludes = [sp.random(30, 1500, density=0.05, format="csr", random_state=t)
                for t in range(THREADS)]

    def call(t, threads):
        return recfuse.topk(queries[t], items, 10 + t, exclude=excludes[t],
                            deny=np.arange(t, 1500, 11), num_threads=threads)

    for _ in range(10):
        got = race([lambda t=t: call(t, t % 4) for t in range(THREADS)])
        for t in range(THREADS):
            assert same(got[t], call(t, 1))


def test_numba_topk_from_many_threads_does_not_crash_the_interpreter():
    # numba's default threading layer may not take parallel calls from several threads at once
    # (the workqueue layer aborts); the documented contract is that ItemIndex and topk may be
    # read from any number of threads, on any backend.
    pytest.importorskip("numba")
    code = """
        import threading, numpy as np, recfuse
        rng = np.random.default_rng(0)
        items = rng.standard_normal((4000, 16)).astype(np.float32)
        index = recfuse.ItemIndex(items, backend="numba")
        serial = recfuse.ItemIndex(items, backend="numba")
        queries = rng.standard_normal((8, 20, 16)).astype(np.float32)
        expected = [serial.search(queries[t], 7) for t in range(8)]
        barrier = threading.Barrier(8)
        bad = []
        def run(t):
            barrier.wait()
            for _ in range(20):
                ids, scores = index.search(queries[t], 7)
                if not (np.array_equal(ids, expected[t][0]) and
                        np.array_equal(scores, expected[t][1])):
                    bad.append(t)
        threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
        [t.start() for t in threads]; [t.join() for t in threads]
        print("BAD", len(bad))
    """
    result = run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "BAD 0" in result.stdout


# ---------------------------------------------------------------------- fitted models


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_threads_racing_on_a_freshly_loaded_model_agree_with_an_independent_copy(
        name, saved_models):
    path = saved_models[name]
    for _ in range(6):
        shared = recfuse.load(path)
        calls = read_calls(shared, name)
        # every thread makes every call, starting at a different one: all lazy caches are
        # raced for by several threads at once
        jobs = [lambda t=t: [calls[(t + c) % len(calls)][1]() for c in range(len(calls))]
                for t in range(THREADS)]
        got = race(jobs)
        serial = recfuse.load(path)
        expected = [call() for _, call in read_calls(serial, name)]
        for t in range(THREADS):
            for c in range(len(calls)):
                label = calls[(t + c) % len(calls)][0]
                assert same(got[t][c], expected[(t + c) % len(calls)]), (t, label)


def _fit(name, seed):
    implicit = implicit_data(users=200, items=1100)
    u, i, r = rating_data(users=150, items=1000, count=4000)
    if name == "ALS":
        return recfuse.ALS(factors=8, iterations=2, random_state=seed).fit(implicit)
    if name == "BPR":
        return recfuse.BPR(factors=8, iterations=2, random_state=seed).fit(implicit)
    if name == "SVD":
        return recfuse.SVD(factors=8, epochs=2, random_state=seed).fit(u, i, r)
    return recfuse.ExplicitALS(factors=8, iterations=2, random_state=seed).fit(u, i, r)


def _reads(model, name):
    calls = [lambda: model.recommend(np.arange(0, 150, 4), k=10),
             lambda: model.similar_items(np.arange(0, 50, 7), k=5),
             lambda: model.similar_users(np.arange(0, 30, 4), k=5)]
    if name in ("SVD", "ExplicitALS"):
        calls.append(lambda: model.predict(np.arange(40), np.arange(40) * 3))
    return calls


@pytest.mark.parametrize("name", ["ALS", "BPR", "SVD", "ExplicitALS"])
def test_reads_during_refits_come_wholly_from_one_fit(name):
    # README: readable "also while another thread refits ...: each answer ... comes wholly
    # from one fit". The writer refits the shared model with seed 1 and 2 in turn; every
    # answer must be seed 1's or seed 2's, bit for bit.
    answers = {seed: [call() for call in _reads(_fit(name, seed), name)] for seed in (1, 2)}
    shared = _fit(name, 1)
    stop = threading.Event()

    def writer():
        seed = 2
        while not stop.is_set():
            shared.random_state = seed
            if name in ("ALS", "BPR"):
                shared.fit(implicit_data(users=200, items=1100))
            else:
                shared.fit(*rating_data(users=150, items=1000, count=4000))
            seed = 3 - seed

    def reader(t):
        seen = []
        for _ in range(15):
            calls = _reads(shared, name)
            c = (t + len(seen)) % len(calls)
            seen.append((c, calls[c]()))
        return seen

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        got = race([lambda t=t: reader(t) for t in range(4)])
    finally:
        stop.set()
        thread.join(30)
    for per_thread in got:
        for c, answer in per_thread:
            assert same(answer, answers[1][c]) or same(answer, answers[2][c]), c


def test_als_reads_during_update_users_are_from_before_or_after_each_fold_in():
    data = implicit_data(users=120, items=1000)
    base = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
    rows = sp.random(1, 1000, density=0.01, format="csr", random_state=9, dtype=np.float32)
    before = base.recommend(np.arange(0, 120, 3), k=8)
    after_model = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
    after_model.update_users([6], rows)
    after = after_model.recommend(np.arange(0, 120, 3), k=8)
    for _ in range(10):
        shared = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
        jobs = [lambda: shared.update_users([6], rows)] + [
            lambda: [shared.recommend(np.arange(0, 120, 3), k=8) for _ in range(5)]
            for _ in range(5)]
        got = race(jobs)
        for answers in got[1:]:
            for answer in answers:
                assert same(answer, before) or same(answer, after)


def test_set_params_num_threads_while_others_recommend_changes_no_answer(saved_models):
    # set_params: backend and num_threads "take effect at once" for recommend; answers do
    # not depend on the thread count.
    shared = recfuse.load(saved_models["ALS"])
    expected = recfuse.load(saved_models["ALS"]).recommend(np.arange(0, 300, 5), k=10)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            shared.set_params(num_threads=n % 4)
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        got = race([lambda: [shared.recommend(np.arange(0, 300, 5), k=10) for _ in range(15)]
                    for _ in range(4)])
    finally:
        stop.set()
        thread.join(10)
    assert all(same(answer, expected) for answers in got for answer in answers)


def test_save_during_refits_writes_a_file_of_one_fit(tmp_path):
    data = implicit_data(users=150, items=1000)
    models = {seed: recfuse.ALS(factors=8, iterations=2, random_state=seed).fit(data)
              for seed in (1, 2)}
    shared = recfuse.ALS(factors=8, iterations=2, random_state=1).fit(data)
    stop = threading.Event()

    def writer():
        seed = 2
        while not stop.is_set():
            shared.random_state = seed
            shared.fit(data)
            seed = 3 - seed

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        paths = [str(tmp_path / f"m{t}.npz") for t in range(6)]
        race([lambda p=p: shared.save(p) for p in paths])
    finally:
        stop.set()
        thread.join(30)
    for path in paths:
        loaded = recfuse.load(path)
        assert any(np.array_equal(loaded.user_factors, m.user_factors)
                   and np.array_equal(loaded.item_factors, m.item_factors)
                   for m in models.values())


def test_update_users_from_many_threads_at_once_loses_no_fold_in():
    # update_users is a writer serialised by the model's lock: eight threads folding in
    # eight different users at once leave the model as eight calls in a row do.
    data = implicit_data(users=200, items=500, density=0.04)
    rows = {u: sp.random(1, 500, density=0.02, format="csr", random_state=u, dtype=np.float32)
            for u in range(THREADS)}
    serial = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
    for u in range(THREADS):
        serial.update_users([u * 20], rows[u])
    for _ in range(10):
        shared = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
        race([lambda u=u: shared.update_users([u * 20], rows[u]) for u in range(THREADS)])
        assert same(shared.user_factors, serial.user_factors)
        assert (shared._user_items != serial._user_items).nnz == 0


@pytest.mark.parametrize("name", ["ALS", "BPR"])
def test_two_fits_at_once_leave_the_model_wholly_one_of_them(name):
    first = implicit_data(users=200, items=500, density=0.04, seed=0)
    second = implicit_data(users=150, items=400, density=0.04, seed=1)
    cls = recfuse.ALS if name == "ALS" else recfuse.BPR
    for _ in range(5):
        shared = cls(factors=8, iterations=2, random_state=0)
        race([lambda d=d: shared.fit(d) for d in (first, second)])
        data = first if shared.user_factors.shape[0] == 200 else second
        alone = cls(factors=8, iterations=2, random_state=0).fit(data)
        assert same(shared.user_factors, alone.user_factors)
        assert same(shared.item_factors, alone.item_factors)
        assert same(shared.recommend(np.arange(20), k=5), alone.recommend(np.arange(20), k=5))


def test_recommend_all_started_before_a_refit_answers_from_the_old_fit():
    data = implicit_data(users=200, items=500, density=0.04)
    old = list(recfuse.ALS(factors=8, iterations=2, random_state=1).fit(data)
               .recommend_all(k=5, batch_size=30))
    shared = recfuse.ALS(factors=8, iterations=2, random_state=1).fit(data)
    chunks = shared.recommend_all(k=5, batch_size=30)
    got = [next(chunks)]
    shared.random_state = 2
    shared.fit(data)
    got += list(chunks)
    assert same(got, old)


@pytest.mark.parametrize("name, call", [
    ("ALS", "recommend"),
    ("BPR", "recommend"),
    ("SVD", "recommend"),
    ("ALS", "similar_items"),  # the cosine cache: a dict replaced whole, so not affected
    ("SVD", "similar_items"),
])
def test_set_params_backend_during_a_first_recommend_takes_effect_for_later_calls(
        name, call, monkeypatch):
    # set_params: a new backend takes effect "at once" for recommend (its search indexes
    # are dropped). A recommend that was building the index when set_params ran stores
    # that index, made on the old backend, after the drop; the cache is keyed by the
    # factor tables only, so every later recommend keeps searching on the old backend
    # until the next fit. The interleaving is forced: the reader waits inside ItemIndex's
    # constructor (as a thread does when the GIL switches there) while set_params runs.
    from recfuse import retrieval
    import recfuse._topk.numpy_backend as numpy_topk

    data = implicit_data(users=100, items=300, density=0.05)
    if name == "SVD":
        entries = data.tocoo()
        model = recfuse.SVD(factors=4, epochs=2, random_state=0).fit(
            entries.row, entries.col, entries.data)
    else:
        model = getattr(recfuse, name)(factors=4, iterations=2, random_state=0).fit(data)
    entered, go = threading.Event(), threading.Event()
    readers: list = []
    original = retrieval.ItemIndex.__init__

    def slow_init(self, *args, **kwargs):
        if threading.current_thread() in readers:
            entered.set()
            go.wait(10)
        original(self, *args, **kwargs)

    monkeypatch.setattr(retrieval.ItemIndex, "__init__", slow_init)
    read = getattr(model, call)
    reader = threading.Thread(target=lambda: read(1, k=3))
    readers.append(reader)
    reader.start()
    assert entered.wait(10)
    model.set_params(backend="numpy")
    go.set()
    reader.join(10)
    monkeypatch.setattr(retrieval.ItemIndex, "__init__", original)

    searches = []
    numpy_search = numpy_topk.search
    monkeypatch.setattr(numpy_topk, "search",
                        lambda *a, **kw: (searches.append(1), numpy_search(*a, **kw))[1])
    read(1, k=3)
    assert searches, f"{call} still searches on the backend set before set_params"


@pytest.mark.parametrize("name, call", [("SVD", "recommend"), ("ALS", "similar_items"),
                                        ("BPR", "similar_users")])
def test_set_params_backend_while_a_first_read_adds_its_cache_does_not_raise(name, call):
    # set_params drops the search indexes by iterating the instance __dict__ for "*_cache"
    # names (models/_common.py: _cache_names). A reader's first recommend (SVD:
    # _retrieval_cache) or similar_* (_cosine_cache) adds that attribute to the same dict.
    # A GIL switch inside the iteration is forced here with a trace hook that runs the
    # reader's call at the comprehension's first line (what another thread does when the
    # interpreter switches there).
    data = implicit_data(users=100, items=300, density=0.05)
    if name == "SVD":
        entries = data.tocoo()
        model = recfuse.SVD(factors=4, epochs=2, random_state=0).fit(
            entries.row, entries.col, entries.data)
    else:
        model = getattr(recfuse, name)(factors=4, iterations=2, random_state=0).fit(data)
    fired = []

    def tracer(frame, event, arg):
        if frame.f_code.co_name == "<listcomp>" and frame.f_back is not None and \
                frame.f_back.f_code.co_name == "_cache_names":
            def local(frame, event, arg):
                if event == "line" and not fired:
                    fired.append(True)
                    getattr(model, call)(1, k=3)  # the other thread's first read
                return local
            return local
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        error = None
        try:
            model.set_params(backend="numpy")
        except RuntimeError as raised:
            error = raised
    finally:
        sys.settrace(previous)
    assert fired, "the trace hook did not reach _cache_names"
    assert error is None, f"set_params raised {error!r} (backend now {model.backend!r})"


def test_first_calls_of_every_family_from_many_threads_in_a_fresh_process():
    # a fresh interpreter: backend probing, SIMD dispatch and (numba) compilation or cache
    # loading all happen inside the race
    code = """
        import sys, threading, numpy as np, scipy.sparse as sp, recfuse
        backend = sys.argv[1]
        data = sp.random(200, 300, density=0.05, format="csr", random_state=0, dtype=np.float32)
        r = data.tocoo()
        rng = np.random.default_rng(0)
        items = rng.standard_normal((2000, 16)).astype(np.float32)
        layers = [(rng.standard_normal((8, 16)).astype(np.float32), None, "relu"),
                  (rng.standard_normal((1, 8)).astype(np.float32), None, "identity")]
        jobs = {
            "als": lambda: recfuse.ALS(factors=4, iterations=2, random_state=0,
                                       backend=backend).fit(data).user_factors,
            "bpr": lambda: recfuse.BPR(factors=4, iterations=2, random_state=0,
                                       backend=backend).fit(data).user_factors,
            "svd": lambda: recfuse.SVD(factors=4, epochs=2, random_state=0,
                                       backend=backend).fit(r.row, r.col, r.data).user_factors,
            "svdpp": lambda: recfuse.SVDpp(factors=4, epochs=2, random_state=0,
                                           backend=backend).fit(r.row, r.col, r.data).user_factors,
            "xals": lambda: recfuse.ExplicitALS(factors=4, iterations=2, random_state=0,
                                                backend=backend).fit(r.row, r.col,
                                                                     r.data).user_factors,
            "topk": lambda: recfuse.topk(items[:7], items, 5, backend=backend)[0],
            "cosine": lambda: recfuse.ItemIndex(items, metric="cosine",
                                                backend=backend).search(items[:7], 5)[0],
            "mlp": lambda: recfuse.MLPScorer(layers, backend=backend).score(items[:50]),
        }
        names = list(jobs) * 2
        out, errors = [None] * len(names), []
        barrier = threading.Barrier(len(names))
        def run(i):
            try:
                barrier.wait()
                out[i] = jobs[names[i]]()
            except BaseException as error:
                errors.append(repr(error))
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(names))]
        [t.start() for t in threads]; [t.join() for t in threads]
        assert not errors, errors
        for i, name in enumerate(names):
            assert np.array_equal(out[i], jobs[name]()), name
        print("OK")
    """
    for backend in ("cpu", "numba"):
        if backend == "numba":
            pytest.importorskip("numba")
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), backend],
                                capture_output=True, text=True, timeout=180)
        assert result.returncode == 0 and "OK" in result.stdout, (backend, result.stderr[-2000:])


# ------------------------------------------------------------------------- MLPScorer


def _layers(seed=0, widths=(20, 32, 16, 1)):
    rng = np.random.default_rng(seed)
    layers = []
    for position, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        activation = "identity" if position == len(widths) - 2 else "relu"
        layers.append((rng.standard_normal((b, a)).astype(np.float32) / np.sqrt(a),
                       rng.standard_normal(b).astype(np.float32) * 0.1, activation))
    return layers


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_threads_racing_on_a_fresh_scorer_agree_with_an_independent_one(precision):
    rng = np.random.default_rng(3)
    layers = _layers()
    users = rng.standard_normal((40, 12)).astype(np.float32)
    table = rng.standard_normal((700, 8)).astype(np.float32)
    candidates = rng.integers(0, 700, (40, 150))
    inputs = rng.standard_normal((900, 20)).astype(np.float32)

    def calls(scorer, prepared):
        return [
            lambda: scorer.score(inputs, num_threads=0),
            lambda: scorer.score_candidates(users, candidates, table, num_threads=2),
            lambda: scorer.rank(users, candidates, table, k=9, num_threads=3),
            lambda: scorer.rank(users, candidates, prepared, k=25, num_threads=1),
            lambda: scorer.prepare_items(table, item_column=12, num_threads=2).part,
        ]

    for _ in range(10):
        shared = recfuse.MLPScorer(layers, precision=precision)
        prepared = shared.prepare_items(table, item_column=12)
        mine = calls(shared, prepared)
        got = race([lambda t=t: [mine[(t + c) % 5]() for c in range(5)] for t in range(THREADS)])
        other = recfuse.MLPScorer(layers, precision=precision)
        expected = [call() for call in calls(other, other.prepare_items(table, item_column=12))]
        for t in range(THREADS):
            for c in range(5):
                assert same(got[t][c], expected[(t + c) % 5]), (t, c)


def test_a_loaded_scorer_shared_by_threads_agrees_with_another_load(tmp_path):
    path = str(tmp_path / "scorer.npz")
    recfuse.MLPScorer(_layers(seed=4)).save(path)
    rng = np.random.default_rng(4)
    users = rng.standard_normal((30, 12)).astype(np.float32)
    table = rng.standard_normal((500, 8)).astype(np.float32)
    candidates = rng.integers(0, 500, (30, 100))
    expected = recfuse.load(path).rank(users, candidates, table, k=10)
    for _ in range(10):
        shared = recfuse.load(path)
        got = race([lambda: shared.rank(users, candidates, table, k=10)
                    for _ in range(THREADS)])
        assert all(same(answer, expected) for answer in got)


# --------------------------------------------------------------------------- metrics


def _test_matrix(rng, users, items, per_user=3):
    rows = np.repeat(np.arange(users), per_user)
    cols = np.concatenate([rng.choice(items, per_user, replace=False) for _ in range(users)])
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(users, items))


def _flat(result):
    """A ranking_metrics dict as a list of arrays in key order (per_user included)."""
    out = [np.asarray(result[key]) for key in sorted(result) if key != "per_user"]
    per_user = result.get("per_user", {})
    return out + [np.asarray(per_user[key]) for key in sorted(per_user)]


def test_native_metrics_from_many_threads_agree_with_serial_calls():
    rng = np.random.default_rng(5)
    test = _test_matrix(rng, 400, 600)
    recommended = np.stack([rng.permutation(600)[:20] for _ in range(400)])
    vectors = rng.standard_normal((600, 16)).astype(np.float32)

    def calls(threads):
        return [lambda: _flat(metrics.ranking_metrics(recommended, test, per_user=True,
                                                      num_threads=threads)),
                lambda: metrics.intra_list_diversity(recommended, vectors, num_threads=threads),
                lambda: metrics.novelty(recommended, test),
                lambda: metrics.catalog_coverage(recommended, 600)]

    expected = [call() for call in calls(1)]
    for _ in range(10):
        got = race([lambda t=t: [call() for call in calls(t % 4)] for t in range(THREADS)])
        for answers in got:
            assert same(answers, expected)


# ----------------------------------------------------------------------- Recommender


@pytest.fixture(scope="module")
def serving_parts(saved_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving")
    scorer = str(folder / "scorer.npz")
    recfuse.MLPScorer(_layers(seed=6, widths=(32, 16, 1))).save(scorer)
    return saved_models["ALS"], scorer


@pytest.mark.parametrize("ranked", [False, True], ids=["recall", "ranked"])
def test_a_fresh_recommender_shared_by_threads_agrees_with_an_independent_one(
        serving_parts, ranked):
    model, scorer = serving_parts
    users = np.arange(0, 330, 11)  # some past the model's 300 users: cold

    def calls(rec):
        return [lambda: tuple(rec.recommend_batch(users, k=7)[:3]),
                lambda: tuple(rec.recommend(5)[:3]),
                lambda: tuple(rec.recommend(17, k=3, exclude=[1, 2, 3])[:3]),
                lambda: tuple(rec.recommend_batch(users[:4], k=60)[:3])]

    for _ in range(6):
        shared = recfuse.Recommender(model, scorer if ranked else None, candidates=50)
        mine = calls(shared)
        got = race([lambda t=t: [mine[(t + c) % 4]() for c in range(4)] for t in range(THREADS)])
        other = recfuse.Recommender(model, scorer if ranked else None, candidates=50)
        expected = [call() for call in calls(other)]
        for t in range(THREADS):
            for c in range(4):
                assert same(got[t][c], expected[(t + c) % 4]), (t, c)


def test_settings_assigned_while_serving_give_answers_of_the_old_or_new_values(serving_parts):
    model, scorer = serving_parts
    users = np.arange(0, 300, 13)
    options = [(10, 40), (4, 120)]  # (k, candidates)
    expected = []
    for k, candidates in options:
        rec = recfuse.Recommender(model, scorer, k=k, candidates=candidates)
        expected.append(tuple(rec.recommend_batch(users)[:3]))
    shared = recfuse.Recommender(model, scorer, k=10, candidates=40)
    stop = threading.Event()

    def writer():
        n = 0
        while not stop.is_set():
            k, candidates = options[n % 2]
            shared.k, shared.candidates = k, candidates
            n += 1

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        got = race([lambda: [tuple(shared.recommend_batch(users)[:3]) for _ in range(15)]
                    for _ in range(4)])
    finally:
        stop.set()
        thread.join(10)
    # k and candidates are two settings: a call may read k of one assignment and
    # candidates of the other, so a list is one of the four combinations; its length is k's
    for answers in got:
        for answer in answers:
            assert answer[0].shape[1] in (10, 4)
            assert answer[0].shape == answer[1].shape == answer[2].shape


def test_observe_while_threads_recommend_answers_before_or_after(serving_parts):
    model, _ = serving_parts
    events = {"user": [4, 4, 4], "item": [10, 20, 30]}
    before_rec = recfuse.Recommender(model)
    before = tuple(before_rec.recommend_batch(np.arange(0, 12), k=8)[:2])
    before_rec.observe(events)
    after = tuple(before_rec.recommend_batch(np.arange(0, 12), k=8)[:2])
    for _ in range(10):
        shared = recfuse.Recommender(model)
        jobs = [lambda: shared.observe(events)] + [
            lambda: [tuple(shared.recommend_batch(np.arange(0, 12), k=8)[:2]) for _ in range(4)]
            for _ in range(5)]
        got = race(jobs)
        for answers in got[1:]:
            for answer in answers:
                assert same(answer, before) or same(answer, after)


# ---------------------------------------------------------- misuse: must not crash


def _write_while_read_in_a_child(setup: str, write: str, read: str) -> None:
    """Runs ``setup``, then ``write`` (statements: repeated refits or assignments) on one
    thread while three threads run ``read`` (statements) until it is done, ignoring their
    errors, in a child interpreter, which must exit cleanly: the misuse may give wrong
    answers or raise, but never crash."""
    indent = lambda code, spaces: textwrap.indent(textwrap.dedent(code).strip(), " " * spaces)
    code = f"""
import threading, numpy as np, scipy.sparse as sp, recfuse
{textwrap.dedent(setup).strip()}
stop = threading.Event()
def write():
{indent(write, 4)}
    stop.set()
def read():
    while not stop.is_set():
        try:
{indent(read, 12)}
        except Exception:
            pass
threads = [threading.Thread(target=write)] + [threading.Thread(target=read) for _ in range(3)]
[t.start() for t in threads]; [t.join() for t in threads]
print("DONE")
"""
    result = run_python(code, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "DONE" in result.stdout


def test_mlp_ranker_scored_while_it_fits_does_not_crash_the_interpreter():
    _write_while_read_in_a_child(
        """
        seen = sp.random(200, 300, density=0.05, format="csr", random_state=0, dtype="float32")
        rng = np.random.default_rng(0)
        U = rng.standard_normal((200, 8)).astype(np.float32)
        V = rng.standard_normal((300, 8)).astype(np.float32)
        ranker = recfuse.MLPRanker(hidden=(16,), epochs=1, random_state=0).fit(seen, U, V)
        X = rng.standard_normal((64, 16)).astype(np.float32)
        """,
        """
        for seed in range(6):
            ranker.set_params(random_state=seed)
            ranker.fit(seen, U, V)
        """,
        """
        ranker.predict_logits(X)
        ranker.to_scorer().score(X)
        """)


def test_compat_implicit_recommend_during_its_refit_does_not_crash_the_interpreter():
    _write_while_read_in_a_child(
        """
        from recfuse.compat.implicit import AlternatingLeastSquares
        data = sp.random(300, 400, density=0.03, format="csr", random_state=0, dtype="float32")
        model = AlternatingLeastSquares(factors=8, iterations=2, random_state=0)
        model.fit(data, show_progress=False)
        """,
        """
        for _ in range(8):
            model.fit(data, show_progress=False)
        """,
        """
        model.recommend(np.arange(50), data[:50], N=10)
        model.similar_items(np.arange(10), N=5)
        """)


def test_tables_assigned_by_hand_while_others_recommend_do_not_crash_the_interpreter():
    # "assigning a model's attributes by hand while others read" is not safe: answers may be
    # wrong or raise, but a native call must never read past an array.
    _write_while_read_in_a_child(
        """
        data = sp.random(300, 500, density=0.03, format="csr", random_state=0, dtype="float32")
        model = recfuse.ALS(factors=8, iterations=2, random_state=0).fit(data)
        small = np.ascontiguousarray(model.item_factors[:50])
        big = model.item_factors
        bpr = recfuse.BPR(factors=8, iterations=2, random_state=0).fit(data)
        bq, bb = bpr.item_factors, bpr.item_bias
        """,
        """
        for n in range(3000):
            model.item_factors = small if n % 2 else big
            bpr.item_factors = bq[:40] if n % 2 else bq
        """,
        """
        for call in (lambda: model.recommend(np.arange(40), k=10),
                     lambda: model.similar_items(np.arange(10), k=5),
                     lambda: bpr.recommend(np.arange(40), k=10),
                     lambda: bpr.similar_items(np.arange(10), k=5)):
            try:
                call()
            except Exception:
                pass
        """)


# ---------------------------------------------------- the same answers for any thread count


COUNTS = (1, 2, 3, 8, 0)  # 0: all cores


@pytest.mark.parametrize("name", ["ALS-cg", "ALS-cholesky", "ExplicitALS", "SVD", "SVDpp", "BPR"])
def test_same_seed_same_model_for_1_2_3_and_8_threads(name):
    implicit = implicit_data(users=250, items=400, density=0.04)
    u, i, r = rating_data(users=200, items=300, count=5000)

    def fit(threads):
        if name.startswith("ALS"):
            model = recfuse.ALS(factors=12, iterations=3, solver=name[4:], random_state=7,
                                num_threads=threads).fit(implicit)
            return model.user_factors, model.item_factors
        if name == "BPR":
            model = recfuse.BPR(factors=12, iterations=4, random_state=7, grid=4,
                                num_threads=threads).fit(implicit)
            return model.user_factors, model.item_factors, model.item_bias
        cls = {"ExplicitALS": recfuse.ExplicitALS, "SVD": recfuse.SVD, "SVDpp": recfuse.SVDpp}[name]
        options = {"iterations": 3} if name == "ExplicitALS" else {"epochs": 3}
        if name == "SVD":
            options["grid"] = 4
        model = cls(factors=12, random_state=7, num_threads=threads, **options).fit(u, i, r)
        return (model.user_factors, model.item_factors, model.user_bias, model.item_bias,
                model.predict(u[:500], i[:500]))

    results = [fit(threads) for threads in COUNTS]
    for result in results[1:]:
        assert same(result, results[0])


def test_topk_index_mlp_and_metrics_the_same_for_1_2_3_and_8_threads():
    rng = np.random.default_rng(8)
    items = rng.standard_normal((5000, 32)).astype(np.float32)
    queries = rng.standard_normal((37, 32)).astype(np.float32)
    exclude = sp.random(37, 5000, density=0.01, format="csr", random_state=8)
    scorer = recfuse.MLPScorer(_layers(seed=8), precision="int8")
    users = rng.standard_normal((50, 12)).astype(np.float32)
    table = rng.standard_normal((800, 8)).astype(np.float32)
    candidates = rng.integers(0, 800, (50, 200))
    recommended = np.stack([rng.permutation(800)[:10] for _ in range(300)])
    test = _test_matrix(rng, 300, 800)

    def answers(threads):
        out = []
        for storage in ("native", "bfloat16"):
            for metric in ("dot", "cosine"):
                index = recfuse.ItemIndex(items, metric=metric, storage=storage)
                out.append(index.search(queries, 17, exclude=exclude, num_threads=threads))
        out.append(recfuse.topk(queries, items, 300, num_threads=threads))
        out.append(scorer.rank(users, candidates, table, k=12, num_threads=threads))
        out.append(scorer.score_candidates(users, candidates, table, num_threads=threads))
        out.append(scorer.prepare_items(table, item_column=12, num_threads=threads).part)
        out.append(_flat(metrics.ranking_metrics(recommended, test, per_user=True,
                                                 num_threads=threads)))
        out.append(metrics.intra_list_diversity(recommended, table, num_threads=threads))
        return out

    results = [answers(threads) for threads in COUNTS]
    for result in results[1:]:
        for position, (a, b) in enumerate(zip(result, results[0])):
            assert same(a, b), position
