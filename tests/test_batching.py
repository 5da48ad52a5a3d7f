"""recfuse.MicroBatcher: concurrent single-user calls answered together, each exactly as if
alone; batches really form; bad input, failures, swaps and closing."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from conftest import available_backends, wait_until
from recfuse import MicroBatcher, Recommender, Rerank

N_USERS, N_ITEMS, FACTORS = 60, 50, 5


@pytest.fixture(scope="module")
def seen():
    return sp.random(N_USERS, N_ITEMS, density=0.1, format="csr", random_state=11,
                     dtype=np.float32) * 3


@pytest.fixture(scope="module")
def als(seen):
    return recfuse.ALS(factors=FACTORS, iterations=3, solver="cholesky", random_state=0).fit(seen)


@pytest.fixture(scope="module")
def ranked(als):
    rng = np.random.default_rng(4)
    layers = [(rng.standard_normal((7, 2 * FACTORS + 2)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 7)).astype(np.float32), None, "identity")]
    return Recommender(als, recfuse.MLPScorer(layers), candidates=12, k=6,
                       rerank=Rerank(deny=[3]), num_threads=1)


def _requests(count: int, seed: int):
    """(user, k, exclude, context) draws: cold and unknown users, k above and below the
    candidates, excludes or not."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        exclude = rng.choice(N_ITEMS, 3).tolist() if rng.random() < 0.4 else None
        yield (int(rng.integers(0, N_USERS + 5)), int(rng.choice([1, 6, 20])), exclude,
               rng.standard_normal(2).astype(np.float32))


def _same(got, want):
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.stages, want.stages)
    assert got.version == want.version


def test_threads_get_what_recommend_gives(ranked):
    sizes = []
    requests = list(_requests(400, 0))
    answers = [None] * len(requests)
    with MicroBatcher(ranked, max_wait=0.002, workers=2, on_batch=sizes.append) as batcher:
        def caller(start):
            for position in range(start, len(requests), 8):
                answers[position] = batcher.recommend(*requests[position])

        threads = [threading.Thread(target=caller, args=(start,)) for start in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for request, answer in zip(requests, answers):
        _same(answer, ranked.recommend(*request))
    assert sum(sizes) == len(requests)


def test_announced_requests_are_answered_by_one_batch(ranked):
    sizes = []
    requests = list(_requests(12, 1))
    with MicroBatcher(ranked, max_wait=30.0, on_batch=sizes.append) as batcher:
        with contextlib.ExitStack() as announced:
            for _ in requests:
                announced.enter_context(batcher.incoming())
            futures = [batcher.submit(*request) for request in requests]
        answers = [future.result(timeout=30) for future in futures]
    assert sizes == [len(requests)]  # the worker waited for every announced request
    for request, answer in zip(requests, answers):
        _same(answer, ranked.recommend(*request))


def test_coroutines_share_batches(ranked):
    sizes = []
    requests = list(_requests(60, 2))

    async def main(batcher):
        return await asyncio.gather(*(batcher.recommend_async(*r) for r in requests))

    with MicroBatcher(ranked, on_batch=sizes.append) as batcher:
        answers = asyncio.run(main(batcher))
    for request, answer in zip(requests, answers):
        _same(answer, ranked.recommend(*request))
    assert len(sizes) < len(requests)  # one loop turn queued them all: far fewer batches


@pytest.mark.parametrize("arguments, error, message", [
    (("3",), TypeError, "user must be an integer"),
    ((-1,), ValueError, "user must be >= 0"),
    ((1, 0), ValueError, "k must be >= 1"),
    ((1, 5, ["a"]), TypeError, "exclude must hold integers"),
    ((1, 5, None, None), ValueError, "context_features are required"),
    ((1, 5, None, [1.0, 2.0, 3.0]), ValueError, r"shape \(1, 2\)"),
    ((1, 5, None, [1.0, np.nan]), ValueError, "finite"),
])
def test_bad_input_raises_in_the_caller(ranked, arguments, error, message):
    sizes = []
    with MicroBatcher(ranked, on_batch=sizes.append) as batcher:
        with pytest.raises(error, match=message):
            batcher.submit(*arguments)
        with pytest.raises(error, match=message):
            asyncio.run(batcher.recommend_async(*arguments))
        good = batcher.recommend(1, 5, None, [0.5, 0.5])
    _same(good, ranked.recommend(1, 5, None, [0.5, 0.5]))
    assert sizes == [1]  # the bad requests never reached a batch


# SystemExit is no Exception: it ended the worker with the batch taken, and the batch's
# callers and every later request waited forever
@pytest.mark.parametrize("error", [RuntimeError, SystemExit])
def test_one_failing_request_does_not_fail_its_batch(als, error):
    class Fragile(Recommender):
        def _answer(self, state, users, k, excludes, contexts):
            if 13 in users.tolist():
                raise error("user 13 breaks the native call")
            return super()._answer(state, users, k, excludes, contexts)

    rec = Fragile(als, k=4, num_threads=1)
    with MicroBatcher(rec, max_wait=30.0) as batcher:
        with contextlib.ExitStack() as announced:
            for _ in range(4):
                announced.enter_context(batcher.incoming())
            futures = {user: batcher.submit(user) for user in (2, 13, 7, 9)}
        with pytest.raises(error, match="user 13"):  # as recommend(13) alone raises
            futures[13].result(timeout=30)
        for user in (2, 7, 9):
            _same(futures[user].result(timeout=30), rec.recommend(user))
        # the worker lives on (four requests: as many as the batch before, which it awaits)
        later = {user: batcher.submit(user) for user in (5, 6, 8, 10)}
        for user, future in later.items():
            _same(future.result(timeout=30), rec.recommend(user))


def test_answers_never_mix_models_during_swaps(als, seen, tmp_path):
    other = recfuse.ALS(factors=FACTORS, iterations=2, random_state=9).fit(seen)
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    als.save(paths[0])
    other.save(paths[1])
    users = np.arange(20)
    expected = [Recommender(path, k=5).recommend_batch(users).ids for path in paths]
    assert (expected[0] != expected[1]).any()
    rec = Recommender(paths[0], k=5, num_threads=1)
    errors, versions = [], []
    stop = threading.Event()
    with MicroBatcher(rec, workers=2) as batcher:
        def reader(seed):
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                user = int(rng.choice(users))
                got = batcher.recommend(user)
                if not (got.ids == expected[(got.version - 1) % 2][user]).all():
                    errors.append(f"user {user}: a mixed answer at version {got.version}")
                versions.append(got.version)

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
        for thread in threads:
            thread.start()
        for step in range(6):
            # each version answered before the next (readers may start late on a busy machine)
            assert wait_until(lambda: rec.version in versions), f"no answer at {rec.version}"
            rec.swap_model(paths[(step + 1) % 2])
        assert wait_until(lambda: rec.version in versions)
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    assert set(versions) == set(range(1, 8))


def test_close_answers_what_is_queued_then_refuses(als):
    rec = Recommender(als, k=3, num_threads=1)
    batcher = MicroBatcher(rec, max_wait=30.0)
    with batcher.incoming():  # holds the worker until close
        futures = [batcher.submit(user) for user in range(5)]
        closer = threading.Thread(target=batcher.close)
        closer.start()
        closer.join(30)
    assert not closer.is_alive()
    for user, future in enumerate(futures):
        _same(future.result(timeout=1), rec.recommend(user))
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


def test_workers_closing_from_the_hook_at_once_end(als):
    # each worker's close joined the other worker, itself in close joining the first: both
    # waited for ever, their requests unanswered
    rec = Recommender(als, k=3, num_threads=1)
    in_the_hook, both_in_a_batch = threading.Event(), threading.Barrier(2)
    batchers = []

    def hook(size: int) -> None:
        in_the_hook.set()
        both_in_a_batch.wait(timeout=30)
        batchers[0].close()

    batcher = MicroBatcher(rec, workers=2, max_wait=0, on_batch=hook)
    batchers.append(batcher)
    first = batcher.submit(1)
    assert in_the_hook.wait(30)  # one worker took it and waits in the hook for the other
    second = batcher.submit(2)
    _same(first.result(timeout=30), rec.recommend(1))
    _same(second.result(timeout=30), rec.recommend(2))
    for thread in batcher._threads:
        thread.join(30)
        assert not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(3)


def test_a_batcher_dropped_without_close_ends_its_workers(als):
    # a long-running process that drops batchers (an app served without its lifespan, a
    # forgotten close) must not keep their threads, and the recommender they hold, for ever
    rec = Recommender(als, k=3, num_threads=1)
    threads = []
    for round in range(5):
        batcher = MicroBatcher(rec, workers=2)
        future = batcher.submit(round)  # queued: the request keeps the batcher until answered
        threads += batcher._threads
        del batcher
        _same(future.result(timeout=60), rec.recommend(round))
    gc.collect()
    assert wait_until(lambda: not any(thread.is_alive() for thread in threads))


def test_a_hook_that_raises_loses_no_request(als):
    rec = Recommender(als, k=4)
    raised = []

    def hook(size: int) -> None:
        raised.append(size)
        raise (SystemExit, KeyboardInterrupt, RuntimeError)[(len(raised) - 1) % 3]("hook")

    with MicroBatcher(rec, on_batch=hook) as batcher:  # one worker: it must survive each
        for user in (1, 2, 3, 4):
            got = batcher.submit(user).result(timeout=60)
            np.testing.assert_array_equal(got.ids, rec.recommend(user).ids)
    assert len(raised) == 4


def test_constructor_checks(als):
    rec = Recommender(als)
    with pytest.raises(TypeError, match="recfuse.Recommender"):
        MicroBatcher(als)
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        MicroBatcher(rec, max_batch=0)
    with pytest.raises(ValueError, match="max_wait must be >= 0"):
        MicroBatcher(rec, max_wait=-1)
    with pytest.raises(ValueError, match="max_wait must be <="):  # the worker's wait would fail
        MicroBatcher(rec, max_wait=1e10)
    with pytest.raises(ValueError, match="workers must be >= 1"):
        MicroBatcher(rec, workers=0)
    with pytest.raises(TypeError, match="on_batch"):
        MicroBatcher(rec, on_batch=3)


def test_repr_says_what_answers():
    seen = sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype="float32")
    recommender = recfuse.Recommender(recfuse.ALS(factors=4, iterations=1).fit(seen), k=5)
    assert repr(recommender) == ("Recommender(version 1: als model from <object>, 40 users x "
                                 "30 items, k=5)")
    with recfuse.MicroBatcher(recommender, workers=2) as batcher:
        assert repr(batcher) == (f"MicroBatcher(max_batch=256, max_wait=0.001, workers=2, "
                                 f"answering {recommender!r})")
    assert ", closed, answering" in repr(batcher)


_EXIT_MID_BATCH_CHILD = r"""
import sys, time
import numpy as np, recfuse
from recfuse._topk import cpu

rng = np.random.default_rng(0)
als = recfuse.ALS(factors=32)
als.user_factors = rng.standard_normal((500, 32), dtype=np.float32)
als.item_factors = rng.standard_normal((300_000, 32), dtype=np.float32)
batcher = recfuse.MicroBatcher(recfuse.Recommender(als, k=5, num_threads=1), max_batch=500)
with batcher._ready:  # all queued before the worker takes any: one batch (never closed)
    futures = [batcher.submit(user) for user in range(500)]
worker = batcher._threads[0]


def in_native_call():
    frame = sys._current_frames().get(worker.ident)
    return frame is not None and frame.f_code is cpu.search.__code__


class UntilTheCallEnds:
    # Collected while the interpreter finalizes: waits until the worker's native call has
    # ended (its thread stops running), so that the call ends during finalization.
    def __init__(self, tid):
        self.stat = f"/proc/self/task/{tid}/stat"

    def __del__(self, sleep=time.sleep, is_finalizing=sys.is_finalizing, open=open):
        assert is_finalizing()
        for _ in range(12000):
            try:
                with open(self.stat) as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                return  # the thread has ended
            if state not in "RD":
                return
            sleep(0.01)


for _ in range(60000):
    if in_native_call():
        break
    time.sleep(0.001)
else:
    sys.exit("the worker never reached its native call")
waiter = UntilTheCallEnds(worker.native_id)
print("exiting", flush=True)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_open_batcher_mid_batch_at_exit_ends_the_process_cleanly():
    # A worker is a daemon thread: a native call it is in when the interpreter exits ends
    # during finalization. Taking the GIL back then made CPython end the thread inside a
    # noexcept destructor: "terminate called without an active exception", status 134.
    import subprocess

    if "cpu" not in available_backends():
        pytest.skip("needs the native cpu backend")
    done = subprocess.run([sys.executable, "-c", _EXIT_MID_BATCH_CHILD], capture_output=True,
                          text=True, timeout=300)
    assert done.stdout == "exiting\n", done.stderr
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr


_NATIVE_CALL_IN_FINAL_COLLECTION = """
import numpy as np
from recfuse import _core

X = np.ones((10, 4), np.float32)
_core.gram(X)  # pybind11 imports what it needs for arrays on its first call


class Late:
    def __del__(self, gram=_core.gram, X=X):  # bound now: imports fail at that point
        print("collected", float(gram(X)[0, 0]), flush=True)


keep = Late()
keep.cycle = keep  # left to the collection the interpreter's finalization runs
"""


def test_a_native_call_of_the_finalizing_thread_returns():
    # A thread whose native call ends during finalization waits for the process to end
    # (CPython would end it inside a noexcept destructor); the finalizing thread itself
    # waited too: a native call in a __del__ of the last collection hung the exit.
    import subprocess

    if "cpu" not in available_backends():
        pytest.skip("needs the native cpu backend")
    done = subprocess.run([sys.executable, "-c", _NATIVE_CALL_IN_FINAL_COLLECTION],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout == "collected 10.0\n" and done.returncode == 0, done.stderr
