"""Bug hunt: recfuse.MicroBatcher (batching.py) and the HTTP API (server.py), against what
their docstrings and the README promise.

The oracle is ``Recommender.recommend`` called alone: the batcher must answer each request
as it would (same ids, scores, stages, version, ties included), bad input must raise in the
caller's thread (never reaching a batch), one failing request must not fail the others, and
a refused request must leave the state as it was. Over HTTP: 400 for malformed JSON, 413 for
bodies over the limit, 422 for well-formed requests that are wrong, never a 4xx for what the
server got wrong, and answers equal to the embedded Recommender's.

The bugs the hunt found are fixed; their tests stay as regressions, beside those that pin
behaviour that worked from the start. No test asserts on timing; the waits below only keep a broken run
from hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import MicroBatcher, Recommender, Rerank

pytest.importorskip("starlette", reason="the [serve] extra (starlette) is not installed")
httpx = pytest.importorskip("httpx", reason="httpx (test extra) is not installed")

with warnings.catch_warnings():  # starlette's notice that httpx is deprecated for it
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient  # noqa: E402

from recfuse.server import Limits, create_app  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

N_USERS, N_ITEMS, FACTORS = 40, 30, 4
WAIT = 60  # seconds: only against a hang, never asserted


@pytest.fixture(scope="module")
def seen():
    return sp.random(N_USERS, N_ITEMS, density=0.15, format="csr", random_state=7,
                     dtype=np.float32) * 3


@pytest.fixture(scope="module")
def als(seen):
    return recfuse.ALS(factors=FACTORS, iterations=2, solver="cholesky",
                       random_state=0).fit(seen)


def _scorer(context: int, seed: int = 0) -> recfuse.MLPScorer:
    rng = np.random.default_rng(seed)
    return recfuse.MLPScorer([
        (rng.standard_normal((6, 2 * FACTORS + context)).astype(np.float32), None, "relu"),
        (rng.standard_normal((1, 6)).astype(np.float32), None, "identity")])


@pytest.fixture(scope="module")
def ranked(als):
    return Recommender(als, _scorer(2), candidates=10, k=5, num_threads=1)


def _same(got, want):
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(got.stages, want.stages)
    assert got.version == want.version


def _one_batch(batcher: MicroBatcher, requests: list) -> list:
    """The answers of ``requests`` queued together: announced first, so the worker waits
    for all of them and answers them as one batch."""
    with contextlib.ExitStack() as announced:
        for _ in requests:
            announced.enter_context(batcher.incoming())
        futures = [batcher.submit(*request) for request in requests]
    return [future.result(timeout=WAIT) for future in futures]


# ====================================================================== MicroBatcher

CATEGORIES = np.arange(N_ITEMS) % 3


@pytest.mark.parametrize("rerank", [
    None, Rerank(deny=[0, 5]), Rerank(diversity=0.4),
    Rerank(item_categories=CATEGORIES, category_cap=1),
    Rerank(diversity=0.2, item_categories=CATEGORIES, category_cap=2, allow=range(1, N_ITEMS)),
], ids=["none", "deny", "mmr", "caps", "mmr-caps-allow"])
@pytest.mark.parametrize("with_ranker", [False, True], ids=["recall", "ranker"])
def test_one_batch_of_mixed_requests_equals_recommend_alone(als, rerank, with_ranker):
    """k below, at and above candidates; warm, cold (no row) and unknown users; excludes
    with repeats and ids no item has: each answer is recommend's, whatever else the batch
    held (one native call per recall depth)."""
    rec = Recommender(als, _scorer(2) if with_ranker else None, candidates=8, k=5,
                      rerank=rerank, num_threads=1)
    context = [0.25, -0.5] if with_ranker else None
    requests = [(user, k, exclude, context)
                for user, exclude in ((1, None), (2, [3, 3, 1, 10 ** 12]), (7, []),
                                      (N_USERS + 3, [0, 1]), (10 ** 15, None))
                for k in (1, 3, 8, 9, 40)]
    sizes = []
    with MicroBatcher(rec, max_wait=WAIT, on_batch=sizes.append) as batcher:
        answers = _one_batch(batcher, requests)
    assert sizes == [len(requests)]
    for request, answer in zip(requests, answers):
        _same(answer, rec.recommend(*request))
        assert answer.ids.shape == (request[1],)  # 1-d, k long (padded)


def test_tied_scores_in_one_batch_break_as_recommend_alone(als, seen):
    """Every item scores the same for a user: the lists of each k are recommend's (ties by
    the smaller id), not another choice among equals from the batch's wider recall."""
    tied = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(seen)
    tied.item_factors = np.ones_like(tied.item_factors)
    rec = Recommender(tied, k=5, num_threads=1)
    requests = [(user, k) for user in (0, 1, 2) for k in (1, 2, 5, 17, 40)]
    with MicroBatcher(rec, max_wait=WAIT) as batcher:
        answers = _one_batch(batcher, requests)
    for request, answer in zip(requests, answers):
        _same(answer, rec.recommend(*request))


def test_numpy_scalars_and_arrays_are_taken_as_recommend_takes_them(ranked):
    with MicroBatcher(ranked) as batcher:
        got = batcher.recommend(np.int64(3), np.int32(4), np.array([2, 2, 9], np.uint16),
                                np.array([0.5, 1.0], np.float64))
        zero_d = batcher.recommend(np.array(3), 4, None, [0.5, 1.0])
    want = ranked.recommend(3, 4, [2, 9], [0.5, 1.0])
    _same(got, want)
    _same(zero_d, want)


@pytest.mark.parametrize("arguments, error, message", [
    ((1, True), TypeError, "k must be an integer"),
    ((1, 1.5), TypeError, "k must be an integer"),
    ((1, -3), ValueError, "k must be >= 1"),
    ((1, 2 ** 31), ValueError, "k must be <="),
    ((np.uint64(2 ** 64 - 1),), ValueError, "user must be <= 9223372036854775807"),
    ((1.0,), TypeError, "user must be an integer"),
    ((None,), TypeError, "user must be an integer"),
    ((1, 5, [-1]), ValueError, "exclude must be >= 0"),
    ((1, 5, [[1, 2]]), ValueError, "exclude must be an integer or a 1-d"),
    ((1, 5, "ab"), TypeError, "exclude must hold integers"),
    ((1, 5, [1.5]), TypeError, "exclude must hold integers"),
    ((1, 5, None, [np.inf, 0.0]), ValueError, "finite"),
    ((1, 5, None, [1e39, 0.0]), ValueError, "finite"),
    ((1, 5, None, ["a", "b"]), TypeError, "real numbers"),
])
def test_more_bad_input_raises_in_the_caller_and_never_reaches_a_batch(ranked, arguments,
                                                                       error, message):
    if len(arguments) < 4:
        arguments = arguments + (None,) * (3 - len(arguments)) + ([0.5, 0.5],)
    sizes = []
    with MicroBatcher(ranked, on_batch=sizes.append) as batcher:
        with pytest.raises(error, match=message):
            batcher.submit(*arguments)
        with pytest.raises(error, match=message):
            asyncio.run(batcher.recommend_async(*arguments))
    assert sizes == []  # nothing was queued


def test_after_close_every_way_in_refuses_and_close_again_is_harmless(als):
    rec = Recommender(als, k=3, num_threads=1)
    batcher = MicroBatcher(rec, workers=2)
    _same(batcher.recommend(4), rec.recommend(4))
    batcher.close()
    batcher.close()
    assert "closed" in repr(batcher)
    for call in (lambda: batcher.submit(1), lambda: batcher.recommend(1),
                 lambda: asyncio.run(batcher.recommend_async(1))):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with pytest.raises(ValueError, match="user must be >= 0"):  # checked before anything
        batcher.submit(-1)
    assert not any(thread.is_alive() for thread in batcher._threads)


def test_a_cancelled_future_is_skipped_and_the_rest_answered(als):
    rec = Recommender(als, k=3, num_threads=1)
    sizes = []
    with MicroBatcher(rec, max_wait=WAIT, on_batch=sizes.append) as batcher:
        with contextlib.ExitStack() as announced:
            for _ in range(3):
                announced.enter_context(batcher.incoming())
            futures = [batcher.submit(user) for user in (1, 2, 3)]
            assert futures[1].cancel()
        _same(futures[0].result(timeout=WAIT), rec.recommend(1))
        _same(futures[2].result(timeout=WAIT), rec.recommend(3))
        assert futures[1].cancelled()
        # the worker lives on (three requests: as many as it expects after that batch)
        for user, answer in zip((5, 6, 7), _one_batch(batcher, [(5,), (6,), (7,)])):
            _same(answer, rec.recommend(user))
    assert sizes[0] == 3


def test_max_batch_one_answers_each_alone(als):
    rec = Recommender(als, k=4, num_threads=1)
    sizes = []
    with MicroBatcher(rec, max_batch=1, max_wait=0, on_batch=sizes.append) as batcher:
        futures = [batcher.submit(user) for user in range(12)]
        answers = [future.result(timeout=WAIT) for future in futures]
    assert sizes == [1] * 12
    for user, answer in enumerate(answers):
        _same(answer, rec.recommend(user))


def test_threads_and_a_coroutine_loop_at_once_get_what_recommend_gives(ranked):
    rng = np.random.default_rng(5)
    requests = [(int(rng.integers(0, N_USERS + 3)), int(rng.choice([1, 5, 12])),
                 rng.choice(N_ITEMS, 2).tolist() if rng.random() < 0.5 else None,
                 rng.standard_normal(2).astype(np.float32).tolist()) for _ in range(160)]
    answers: list = [None] * len(requests)
    errors: list = []
    with MicroBatcher(ranked, max_wait=0.001, workers=2) as batcher:
        def caller(start):
            try:
                for position in range(start, 120, 4):
                    answers[position] = batcher.recommend(*requests[position])
            except BaseException as error:  # noqa: BLE001 - reported below
                errors.append(error)

        async def coroutines():
            return await asyncio.gather(*(batcher.recommend_async(*requests[p])
                                          for p in range(120, 160)))

        def loop_thread():
            try:
                answers[120:] = asyncio.run(coroutines())
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        threads = [threading.Thread(target=caller, args=(s,)) for s in range(4)]
        threads.append(threading.Thread(target=loop_thread))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
    assert not errors, errors[:3]
    for request, answer in zip(requests, answers):
        _same(answer, ranked.recommend(*request))


def test_a_failing_request_fails_alone_for_coroutines_too(als):
    class Fragile(Recommender):
        def _answer(self, state, users, k, excludes, contexts):
            if 13 in users.tolist():
                raise RuntimeError("user 13 breaks the native call")
            return super()._answer(state, users, k, excludes, contexts)

    rec = Fragile(als, k=4, num_threads=1)

    async def main(batcher):
        return await asyncio.gather(*(batcher.recommend_async(u) for u in (2, 13, 7)),
                                    return_exceptions=True)

    with MicroBatcher(rec) as batcher:
        answers = asyncio.run(main(batcher))
    assert isinstance(answers[1], RuntimeError) and "user 13" in str(answers[1])
    _same(answers[0], rec.recommend(2))
    _same(answers[2], rec.recommend(7))


def test_close_from_another_thread_answers_pending_coroutines(als):
    rec = Recommender(als, k=3, num_threads=1)
    batcher = MicroBatcher(rec, max_wait=WAIT)

    async def main():
        loop = asyncio.get_running_loop()
        with batcher.incoming():  # the worker waits for it: the requests stay pending
            futures = [batcher.submit_async(user) for user in (1, 2, 3)]
            await asyncio.sleep(0)  # their wake-up runs
            await loop.run_in_executor(None, batcher.close)
        return await asyncio.wait_for(asyncio.gather(*futures), WAIT)

    answers = asyncio.run(main())
    for user, answer in zip((1, 2, 3), answers):
        _same(answer, rec.recommend(user))
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(1)


@pytest.mark.parametrize("keyword, value, error", [
    ("max_wait", float("nan"), ValueError), ("max_wait", float("inf"), ValueError),
    ("max_batch", True, TypeError), ("workers", 2.0, TypeError), ("max_wait", "0", TypeError),
])
def test_constructor_refuses_nan_inf_and_wrong_types(als, keyword, value, error):
    with pytest.raises(error, match=keyword):
        MicroBatcher(Recommender(als), **{keyword: value})


def test_a_request_raising_stopiteration_does_not_strand_its_batch(als):
    class Fragile(Recommender):
        def _answer(self, state, users, k, excludes, contexts):
            if 13 in users.tolist():
                raise StopIteration("user 13")  # e.g. next() on an exhausted iterator
            return super()._answer(state, users, k, excludes, contexts)

    rec = Fragile(als, k=4, num_threads=1)
    taken = threading.Event()

    async def main(batcher):
        futures = [batcher.submit_async(user) for user in (13, 2, 7)]  # one loop turn
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, taken.wait, WAIT)  # that batch is taken
        # a later batch of the one worker: its answer comes after the first batch's
        later = await asyncio.wait_for(batcher.recommend_async(5), WAIT)
        await asyncio.sleep(0)
        return futures, later

    with MicroBatcher(rec, max_wait=0, on_batch=lambda size: taken.set()) as batcher:
        futures, later = asyncio.run(main(batcher))
    _same(later, rec.recommend(5))
    assert [future.done() for future in futures] == [True, True, True]
    assert futures[0].exception() is not None
    _same(futures[1].result(), rec.recommend(2))
    _same(futures[2].result(), rec.recommend(7))


def test_candidates_assigned_mid_batch_answer_as_one_setting_or_the_other(als):
    """The settings may be assigned while the Recommender serves, each call reading each
    setting once. Here another thread's assignment lands between the batch's grouping and
    its native call (injected at the start of _answer, deterministically)."""
    class Assigned(Recommender):
        assign = None

        def _answer(self, state, users, k, excludes, contexts):
            if self.assign is not None:
                self.candidates, self.assign = self.assign, None
            return super()._answer(state, users, k, excludes, contexts)

    rec = Assigned(als, _scorer(0, seed=1), candidates=10, k=3, num_threads=1)
    differs, wrong = False, []
    with MicroBatcher(rec, max_wait=WAIT) as batcher:
        for user in range(12):
            rec.candidates = 5
            at_5 = rec.recommend(user, 3).ids
            rec.candidates = 10
            at_10 = rec.recommend(user, 3).ids
            differs |= not np.array_equal(at_5, at_10)
            rec.assign = 5
            got = _one_batch(batcher, [(user, 3), (user, 8)])[0].ids
            rec.candidates = 10
            if not (np.array_equal(got, at_5) or np.array_equal(got, at_10)):
                wrong.append((user, got.tolist(), at_5.tolist(), at_10.tolist()))
    assert differs  # the setting matters for these users
    assert not wrong, wrong[:3]


@pytest.mark.parametrize("later", [[50.0, -50.0], [np.nan, np.nan]], ids=["finite", "nan"])
def test_a_context_array_changed_after_submit_does_not_change_the_request(ranked, later):
    want = ranked.recommend(1, 5, None, [0.5, 0.5])
    context = np.array([0.5, 0.5], dtype=np.float32)
    with MicroBatcher(ranked, max_wait=WAIT) as batcher:
        with batcher.incoming():  # the request waits in the queue meanwhile
            future = batcher.submit(1, 5, None, context)
            context[:] = later  # the caller reuses its buffer
        got = future.result(timeout=WAIT)
    _same(got, want)


# ====================================================================== HTTP

@pytest.fixture(scope="module")
def served(als):
    return Recommender(als, k=5, num_threads=1)


@pytest.fixture(scope="module")
def client(served):
    """One app for the tests that change nothing (its lifespan runs once)."""
    app = create_app(served, limits=Limits(max_k=50, max_batch=8, max_body_bytes=4096,
                                           max_events=100))
    with TestClient(app) as running:
        yield running


def _fresh(recommender, **limits):
    return TestClient(create_app(recommender, limits=Limits(**limits)))


def test_single_and_many_user_answers_equal_the_recommender(client, als):
    embedded = Recommender(als, k=5, num_threads=1)
    cases = [({"user": 3}, (3,)), ({"user": 3, "k": 7, "exclude": [1, 1, 2]}, (3, 7, [1, 2])),
             ({"user": 3, "exclude": [10 ** 15]}, (3,)),  # an id no item has: harmless
             ({"user": 3, "exclude": []}, (3,)), ({"user": 3, "k": 50}, (3, 50)),
             ({"user": 2 ** 63 - 1, "exclude": [0]}, (2 ** 63 - 1, None, [0])),  # popular
             ({"user": N_USERS + 1, "k": 2}, (N_USERS + 1, 2))]
    for body, arguments in cases:
        reply = client.post("/recommend", json=body)
        assert reply.status_code == 200, (body, reply.text)
        want = embedded.recommend(*arguments)
        keep = want.ids >= 0
        got = reply.json()
        assert got["user"] == body["user"] and got["model_version"] == 1
        assert got["items"] == want.ids[keep].tolist(), body
        assert got["scores"] == want.scores[keep].astype(float).tolist()
        assert got["stages"] == want.stages[keep].tolist()
    users = [3, 3, N_USERS + 1, 0]
    many = client.post("/recommend", json={"users": users, "k": 4,
                                           "excludes": [None, [1], [], [2, 2]]})
    assert many.status_code == 200, many.text
    want = embedded.recommend_batch(users, 4, [None, [1], [], [2]])
    assert [r["user"] for r in many.json()["results"]] == users
    assert [r["items"] for r in many.json()["results"]] == \
        [row[row >= 0].tolist() for row in want.ids]
    empty = client.post("/recommend", json={"users": []})
    assert empty.status_code == 200 and empty.json()["results"] == []


def test_concurrent_single_requests_in_one_loop_equal_the_recommender(als):
    """Many single-user requests in flight in one event loop (in-process ASGI): micro-batched
    answers equal recommend's, and every request is counted once in the batch sizes."""
    rec = Recommender(als, k=5, num_threads=1)
    embedded = Recommender(als, k=5, num_threads=1)
    app = create_app(rec, limits=Limits(max_k=40, workers=2))
    rng = np.random.default_rng(9)
    bodies = [{"user": int(rng.integers(0, N_USERS + 4)), "k": int(rng.choice([1, 5, 33])),
               "exclude": rng.choice(N_ITEMS, 2).tolist()} for _ in range(60)]

    async def main():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hunt") as http:
            replies = await asyncio.gather(*(http.post("/recommend", json=b) for b in bodies))
            return replies, (await http.get("/metrics")).text

    replies, metrics = asyncio.run(main())
    for body, reply in zip(bodies, replies):
        assert reply.status_code == 200, reply.text
        want = embedded.recommend(body["user"], body["k"], body["exclude"])
        assert reply.json()["items"] == want.ids[want.ids >= 0].tolist(), body
    counted = [line for line in metrics.splitlines()
               if line.startswith("recfuse_micro_batch_size_sum")]
    assert counted and float(counted[0].split()[1]) == len(bodies)


@pytest.mark.parametrize("payload, status, message", [
    (b'{"user": "caf\xe9"}', 400, "not valid JSON"),  # latin-1, not UTF-8
    (b"\xff\xfe\xfd", 400, "not valid JSON"),
    (b"   ", 400, "not valid JSON"),
    (b"user=1&k=2", 400, "not valid JSON"),  # a form body
    (b'{"user": 1,}', 400, "not valid JSON"),
    (b"null", 422, "JSON object"),
    (b'"user"', 422, "JSON object"),
    (b"", 422, "give 'user'"),  # no body: {}
    (b'{"user": 1, "k": NaN}', 422, "k must be an integer"),
    (b'{"user": 1, "k": 5.0}', 422, "k must be an integer"),
    (b'{"user": 1, "k": -1}', 422, "k must be between 1 and 50"),
    (b'{"user": 1, "k": 1e400}', 422, "k must be an integer"),
    (b'{"user": Infinity}', 422, "user must be an integer"),
    (b'{"user": 1.0}', 422, "user must be an integer"),
    (b'{"user": [1]}', 422, "user must be an integer"),
    (b'{"user": 1, "exclude": 3}', 422, "exclude must be a list"),
    (b'{"user": 1, "exclude": [-1]}', 422, "exclude must hold integers >= 0"),
    (b'{"user": 1, "exclude": [true]}', 422, "exclude must hold integers >= 0"),
    (b'{"users": "1,2"}', 422, "users must be a list"),
    (b'{"users": [1, 2], "excludes": [[1]]}', 422, "one list per user"),
    (b'{"users": [1, 2], "excludes": [1, 2]}', 422, "excludes[0] must be a list"),
    (b'{"users": [1], "contexts": [[1.0]]}', 422, "takes no context"),
])
def test_malformed_and_wrong_recommend_bodies(client, payload, status, message):
    reply = client.post("/recommend", content=payload,
                        headers={"content-type": "application/json"})
    assert reply.status_code == status, reply.text
    assert message in reply.json()["error"]


@pytest.mark.parametrize("payload, message", [
    (b'{"user": [1], "item": [2], "weight": [NaN]}', "finite"),
    (b'{"user": [1], "item": [2], "weight": [Infinity]}', "finite"),
    (b'{"user": [1], "item": [2], "weight": [-Infinity]}', "finite"),
    (b'{"user": [1], "item": [2], "weight": [true]}', "weight must hold numbers"),
    (b'{"user": [1], "item": [2], "weight": null}', "weight must hold numbers"),
    (b'{"user": [1], "item": [2], "call": [null]}', "call must hold integers"),
    (b'{"user": [1.5], "item": [2]}', "user must hold integers >= 0"),
    (b'{"user": [1], "item": [2], "extra": 1}', "unknown fields"),
])
def test_wrong_event_bodies_are_422_and_log_nothing(client, payload, message):
    before = client.get("/events").json()
    reply = client.post("/events", content=payload)
    assert reply.status_code == 422, reply.text
    assert message in reply.json()["error"]
    assert client.get("/events").json() == before


def test_a_valid_body_with_another_content_type_is_not_a_server_error(client):
    for kind in ("text/plain", "application/x-www-form-urlencoded", "application/octet-stream"):
        reply = client.post("/recommend", content=b'{"user": 1}', headers={"content-type": kind})
        assert reply.status_code in (200, 415), reply.text


def test_body_limit_is_inclusive_and_holds_for_chunked_bodies(served):
    with _fresh(served, max_body_bytes=64) as http:
        body = b'{"user": 1}'
        exact = body + b" " * (64 - len(body))
        assert http.post("/recommend", content=exact).status_code == 200
        over = http.post("/recommend", content=exact + b" ")
        assert over.status_code == 413 and "at most 64" in over.json()["error"]
        chunked = http.post("/recommend", content=(b" " * 16 for _ in range(10)))
        assert chunked.status_code == 413 and "exceeds 64 bytes" in chunked.json()["error"]
        assert http.post("/events", content=b'{"user": [1], "item": [2], "pad": "' + b"x" * 64
                         + b'"}').status_code == 413
        assert http.get("/events").json()["user"] == []


def test_wrong_methods_are_405_with_allow(client):
    for method, path, allow in (("PUT", "/recommend", "POST"), ("PATCH", "/events", None),
                                ("POST", "/health", "GET, HEAD"), ("DELETE", "/reload", "POST")):
        reply = client.request(method, path)
        assert reply.status_code == 405, (method, path, reply.text)
        if allow is not None:
            # starlette builds the header from a set: any order
            assert set(reply.headers["allow"].split(", ")) == set(allow.split(", "))
        assert "is not allowed" in reply.json()["error"]
    assert client.head("/health").status_code == 200


def test_a_rejected_event_batch_changes_nothing(als):
    """One bad event among good ones (rows): 422, and the log, the call numbering, the
    users' lists, /health and the metrics gauges are as before."""
    rec = Recommender(als, k=6, num_threads=1)
    with _fresh(rec) as http:
        assert http.post("/events", json={"user": [1, 2], "item": [3, 4]}).status_code == 200
        before = {"log": http.get("/events").json(),
                  "health": http.get("/health").json(),
                  "lists": [http.post("/recommend", json={"user": u}).json() for u in (1, 2, 9)]}
        for bad in ({"user": [1, 9], "item": [5, 6], "weight": [1.0, -1.0]},  # ALS: >= 0
                    {"user": [9, 9], "item": [5, 2 ** 40]},  # beyond max_new_items
                    {"user": [9, 9], "item": [5, 6], "call": [3, 2]},  # calls decrease
                    {"user": [9, 9], "item": [5, 6], "weight": [1.0, 1e300]}):  # overflows
            reply = http.post("/events", json=bad)
            assert reply.status_code == 422, (bad, reply.text)
            assert http.get("/events").json() == before["log"], bad
            assert http.get("/health").json() == before["health"], bad
            assert [http.post("/recommend", json={"user": u}).json()
                    for u in (1, 2, 9)] == before["lists"], bad
        assert http.post("/events", json={"user": 9, "item": 5}).status_code == 200
        logged = http.get("/events").json()
        assert (logged["user"], logged["item"]) == ([1, 2, 9], [3, 4, 5])
        # refused calls use up no call number
        assert logged["call"] == [0, 0, 1]


def test_empty_event_lists_are_accepted_and_change_nothing(served):
    with _fresh(served) as http:
        reply = http.post("/events", json={"user": [], "item": [], "weight": []})
        assert reply.status_code == 200 and reply.json()["accepted"] == 0
        assert http.get("/events").json()["user"] == []


def test_non_finite_scores_are_not_blamed_on_the_client(als):
    """A well-formed request the Recommender answers (its scores overflow float32 to inf)
    must not get a 4xx: 422 is 'a well-formed request that is wrong'."""
    first = np.zeros((1, 2 * FACTORS), np.float32)
    first[0, FACTORS:] = 1  # the sum of the item vector's entries
    scorer = recfuse.MLPScorer([(first, np.zeros(1, np.float32), "identity"),  # 3e38 x it
                                (np.array([[3e38]], np.float32), np.array([3e38], np.float32),
                                 "identity")])  # + 3e38: the best items overflow to inf
    rec = Recommender(als, scorer, candidates=10, k=5, num_threads=1)
    direct = rec.recommend(1)
    assert np.isinf(direct.scores).any() and (direct.ids >= 0).all()  # answered, with infs
    with _fresh(rec) as http:
        for body in ({"user": 1}, {"users": [1]}):
            reply = http.post("/recommend", json=body)
            assert not 400 <= reply.status_code < 500, (body, reply.status_code, reply.text)


def test_an_app_whose_lifespan_runs_again_still_serves_every_route(als):
    app = create_app(Recommender(als, k=5, num_threads=1))
    with TestClient(app) as http:
        assert http.post("/events", json={"user": 1, "item": 2}).status_code == 200
    with TestClient(app) as http:
        assert http.post("/recommend", json={"user": 1}).status_code == 200  # this one works
        assert http.post("/recommend", json={"users": [1]}).status_code == 200
        assert http.post("/events", json={"user": 1, "item": 3}).status_code == 200
        assert http.get("/events").status_code == 200


def _string_log():
    rng = np.random.default_rng(3)
    users = [f"u{u:02d}" for u in rng.integers(0, 20, 200)]
    items = (1000 + 7 * rng.integers(0, 15, 200)).tolist()
    return recfuse.Interactions.from_arrays(users, items)


def test_a_refused_event_batch_with_a_new_item_takes_no_room_from_later_ones():
    train = _string_log()
    model = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(train)
    rec = Recommender(model, k=5, num_threads=1, max_new_items=1)
    with TestClient(create_app(rec, ids=train)) as http:
        refused = http.post("/events", json={"user": ["u01"], "item": [777777],
                                             "weight": [-1]})
        assert refused.status_code == 422, refused.text  # ALS weights are >= 0
        assert http.get("/health").json()["added_items"] == 0
        assert http.get("/events").json()["item"] == []
        later = http.post("/events", json={"user": ["u01"], "item": [888888]})
        assert later.status_code == 200, later.text


def test_with_ids_a_refused_batch_of_known_items_changes_no_answer():
    train = _string_log()
    model = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(train)
    rec = Recommender(model, k=5, num_threads=1)
    with TestClient(create_app(rec, ids=train)) as http:
        before = [http.post("/recommend", json={"user": u}).json() for u in ("u01", "zz")]
        reply = http.post("/events", json={"user": ["u01", "zz"], "item": [1000, 1007],
                                           "weight": [1.0, -1.0]})
        assert reply.status_code == 422
        assert [http.post("/recommend", json={"user": u}).json()
                for u in ("u01", "zz")] == before
        assert http.get("/events").json()["user"] == []
        assert http.get("/health").json()["observed_users"] == 0


def test_no_users_with_their_no_contexts_is_an_empty_answer(ranked):
    with _fresh(ranked) as http:
        reply = http.post("/recommend", json={"users": [], "contexts": []})
        assert reply.status_code == 200, reply.text
        assert reply.json()["results"] == []


def test_contexts_over_http_equal_the_recommender(ranked):
    with _fresh(ranked) as http:
        single = http.post("/recommend", json={"user": 4, "k": 12, "context": [1, -0.5]})
        many = http.post("/recommend", json={"users": [4, 5], "k": 12,
                                             "contexts": [[1, -0.5], [0, 0]]})
        missing = http.post("/recommend", json={"users": [4]})
        nan = http.post("/recommend", content=b'{"user": 4, "context": [NaN, 0]}')
    want = ranked.recommend(4, 12, None, [1, -0.5])
    assert single.json()["items"] == want.ids[want.ids >= 0].tolist()
    assert many.json()["results"][0]["items"] == single.json()["items"]
    assert missing.status_code == 422 and "contexts are required" in missing.json()["error"]
    assert nan.status_code == 422 and "finite" in nan.json()["error"]


def test_limits_refuse_a_batch_wait_the_batcher_refuses(served):
    with pytest.raises(ValueError, match="batch_wait|max_wait"):
        create_app(served, limits=Limits(batch_wait=1e10))


def test_a_null_k_is_the_default_as_a_null_exclude_is_none(client, als):
    """"k": null meant "k must be an integer" (422), while "exclude": null and "context":
    null mean "not given"."""
    reply = client.post("/recommend", json={"user": 3, "k": None})
    assert reply.status_code == 200, reply.text
    assert reply.json()["items"] == client.post("/recommend", json={"user": 3}).json()["items"]


def test_a_lone_caller_inside_its_own_announcement_does_not_wait(als):
    """incoming() counted the announced request twice once it was queued (on its way and
    queued), so a lone caller that announced itself waited the whole max_wait, though "a
    lone caller never waits". A hang guard, not a timing test: max_wait is 10 minutes."""
    rec = Recommender(als, k=5, num_threads=1)
    with MicroBatcher(rec, max_wait=600.0) as batcher:
        done = threading.Event()

        def call():
            with batcher.incoming():
                batcher.recommend(3)
            with batcher.incoming():
                pass  # announced, never sent: no longer expected once the block ends
            batcher.recommend(4)

            async def coroutine():
                with batcher.incoming():
                    return await batcher.recommend_async(5)
            asyncio.run(coroutine())
            done.set()

        thread = threading.Thread(target=call, daemon=True)
        thread.start()
        assert done.wait(60), "the announced lone caller waited for itself"


def test_a_k_no_memory_holds_is_refused_in_the_caller(als):
    """A k that passes check_k but whose list no memory holds (2**31 - 1: 26 GiB) was
    checked only in the batch, where it failed the batch's native call first (then was
    answered one by one); "bad input raises in the caller"."""
    rec = Recommender(als, k=5, num_threads=1)
    with MicroBatcher(rec) as batcher:
        with pytest.raises(MemoryError, match="lower k"):
            batcher.submit(3, k=2**31 - 1)
        _same(batcher.recommend(3), rec.recommend(3))
