"""Adversarial tests of the two tiers that hold items added by ``Recommender.observe``
(``serving._NewItems``: recent rows copied per change, settled ones folded in when the recent
tier outgrows ``_recent_limit``) and of ``ItemIndex(storage="auto")`` taking bfloat16 from
fewer items per result on skewed tables.

The tier layout is an implementation detail: whatever the fold schedule (a fold at every
change, every 1 or 2 rows, never), the served vectors, biases, ALS gram, counts and lists
must be the same, to the bit.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from unittest.mock import patch

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import retrieval, serving
from recfuse.serving import Recommender, Rerank, _NewItems

N_USERS, N_ITEMS, D = 24, 16, 3
ADDED = 8  # observe may add item ids N_ITEMS .. N_ITEMS + ADDED - 1
NEVER = 10**9  # a recent limit no test reaches: the recent tier never folds


def _implicit() -> sp.csr_matrix:
    rng = np.random.default_rng(5)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.3) * rng.integers(1, 4, (N_USERS, N_ITEMS))
    dense[0] = 0  # a trained user without a training row: cold until observed
    return sp.csr_matrix(dense.astype(np.float32))


def _ratings():
    rng = np.random.default_rng(9)
    users = np.r_[np.arange(N_USERS), rng.integers(0, N_USERS, 150)]
    items = np.r_[np.arange(N_USERS) % N_ITEMS, rng.integers(0, N_ITEMS, 150)]
    ratings = rng.integers(1, 6, users.size).astype(np.float64)
    ratings[:2] = [1.0, 5.0]
    return users, items, ratings


IMPLICIT = _implicit()
RATINGS = _ratings()
MODELS = {
    "als": recfuse.ALS(factors=D, iterations=3, regularization=0.1, solver="cholesky",
                       random_state=0, num_threads=1).fit(IMPLICIT),
    "als64": recfuse.ALS(factors=D, iterations=3, regularization=0.1, solver="cholesky",
                         dtype=np.float64, random_state=0, num_threads=1).fit(IMPLICIT),
    "bpr": recfuse.BPR(factors=D, iterations=3, random_state=0, num_threads=1).fit(IMPLICIT),
    "svd": recfuse.SVD(factors=D, epochs=3, random_state=0, num_threads=1).fit(
        *RATINGS, rating_scale=(1, 5)),
    "svd_unbiased": recfuse.SVD(factors=D, epochs=3, biased=False, random_state=0,
                                num_threads=1).fit(*RATINGS, rating_scale=(1, 5)),
    "explicit": recfuse.ExplicitALS(factors=D, iterations=3, reg=0.1, random_state=0,
                                    num_threads=1).fit(*RATINGS),
    "explicit_unbiased": recfuse.ExplicitALS(factors=D, iterations=3, reg=0.1, biased=False,
                                             random_state=0, num_threads=1).fit(*RATINGS),
}


def _scorer(width: int, seed: int = 0) -> recfuse.MLPScorer:
    rng = np.random.default_rng(seed)
    return recfuse.MLPScorer([(rng.standard_normal((5, width)).astype(np.float32),
                               rng.standard_normal(5).astype(np.float32), "relu"),
                              (rng.standard_normal((1, 5)).astype(np.float32), None,
                               "identity")])


@contextmanager
def _recent_limit(limit: int):
    """Fold the recent tier into the settled one once it holds more than ``limit`` rows."""
    with patch.object(serving, "_recent_limit", lambda settled: limit):
        yield


@contextmanager
def _readers(read, count: int):
    """``count`` threads calling ``read(thread)`` without pause until the block ends (or
    one of them fails, which sets the yielded ``stop`` event). Yields ``(stop, reads)``,
    reads[0] counting the calls that returned; raises the first reader's error at the end."""
    stop, errors, reads = threading.Event(), [], [0]

    def loop(thread: int):
        try:
            while not stop.is_set():
                read(thread)
                reads[0] += 1
        except Exception as error:  # noqa: BLE001 - raised below
            errors.append(error)
            stop.set()

    threads = [threading.Thread(target=loop, args=(thread,)) for thread in range(count)]
    for thread in threads:
        thread.start()
    try:
        yield stop, reads
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[0]


@st.composite
def event_streams(draw, kind: str):
    """Observe calls of 1-4 events: old, new and never-trained users; base items and ids
    observe adds (often the same few, so their first users set them again after they
    settled); integer weights (ratings within [1, 5] for the rating models)."""
    calls = []
    for _ in range(draw(st.integers(1, 7))):
        size = draw(st.integers(1, 4))
        users = draw(st.lists(st.integers(0, N_USERS + 3), min_size=size, max_size=size))
        items = draw(st.lists(st.one_of(st.integers(N_ITEMS, N_ITEMS + ADDED - 1),
                                        st.integers(0, N_ITEMS - 1)),
                              min_size=size, max_size=size))
        low = 0 if kind in ("als", "als64") else 1  # BPR: positives; ratings: [1, 5]
        weights = draw(st.lists(st.integers(low, 5), min_size=size, max_size=size))
        calls.append({"user": users, "item": items, "weight": np.array(weights, float)})
    return calls


def _rules(variant: str):
    """(ranker, Rerank, candidates) of a variant of the chain."""
    deny = [N_ITEMS + 1, 4]
    allow = [i for i in range(N_ITEMS + ADDED) if i % 5 != 2]
    categories = np.r_[np.arange(N_ITEMS) % 3, [0, 1, -1]]  # some added ids have categories
    return {
        "plain": (None, None, 10),
        "rules": (None, Rerank(deny=deny, allow=allow), 10),
        "ranker": (_scorer(2 * D), Rerank(deny=deny), 6),
        "mmr": (None, Rerank(diversity=0.4, item_categories=categories, category_cap=2,
                             allow=allow), 12),
        "ranker_mmr": (_scorer(2 * D, 1), Rerank(diversity=0.7, item_categories=categories,
                                                 category_cap=3), 9),
    }[variant]


def _recommender(model, variant: str, k: int = N_ITEMS + ADDED + 2, background: bool = False,
                 **options) -> Recommender:
    """A Recommender over ``model`` with the chain of ``variant``; with ``background`` its
    added items fold on the fold thread from the first one on (else inside observe, below
    _BACKGROUND_FOLD_ITEMS), once the recent tier outgrows _recent_limit (which the tests
    patch while they observe)."""
    ranker, rerank, candidates = _rules(variant)
    rec = Recommender(model, ranker, candidates=candidates, k=k, rerank=rerank,
                      new_item_users=2, num_threads=1, **options)
    if background:
        rec._background_fold_items = 0
    return rec


def _served(model, variant, calls, limit, **options):
    with _recent_limit(limit):
        rec = _recommender(model, variant, **options)
        for events in calls:
            rec.observe(events)
    return rec


def _snapshot(rec: Recommender) -> dict:
    """Everything observe published that a fold schedule must not change, and the lists."""
    state = rec._state
    extra = state.new_items
    ids = np.arange(N_ITEMS, N_ITEMS + ADDED)
    users = np.arange(N_USERS + 4)
    excludes = [[N_ITEMS + (u % ADDED), u % N_ITEMS] if u % 3 == 0 else None for u in users]
    snap = {"info": rec.info()}
    if extra is not None:
        has = extra.has(ids)
        snap.update(has=has, vectors=extra.vectors(ids[has]), biases=extra.biases(ids[has]),
                    count=extra.count, gram=extra.gram)
    snap["users"] = {u: (e.vector.tobytes(), e.offset) for u, e in state.users.items()}
    for k in (1, 3, N_ITEMS + ADDED + 2):
        answer = rec.recommend_batch(users, k=k, excludes=excludes)
        snap[k] = (answer.ids, answer.scores, answer.stages)
    return snap


def _assert_same(got: dict, want: dict, where: str) -> None:
    """The snapshots agree: arrays equal, float arrays to the bit (dtype too)."""
    assert got.keys() == want.keys(), where
    for key, value in want.items():
        if isinstance(value, tuple):
            assert len(got[key]) == len(value), f"{where}: {key}"
            for a, b in zip(got[key], value):
                if isinstance(b, np.ndarray) and b.dtype.kind == "f":  # to the bit
                    assert a.dtype == b.dtype, f"{where}: {key}"
                    np.testing.assert_array_equal(a.view(f"u{a.itemsize}"),
                                                  b.view(f"u{b.itemsize}"),
                                                  err_msg=f"{where}: {key}")
                else:
                    np.testing.assert_array_equal(a, b, err_msg=f"{where}: {key}")
        elif isinstance(value, np.ndarray):
            np.testing.assert_array_equal(got[key], value, err_msg=f"{where}: {key}")
        else:
            assert got[key] == value, f"{where}: {key}"


# ---------------------------------------------------------------------- fold schedules


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(MODELS)),
       variant=st.sampled_from(["plain", "rules", "ranker", "mmr", "ranker_mmr"]))
def test_a_fold_schedule_changes_no_vector_gram_count_or_list(data, kind, variant):
    """The same events give the same published state and the same lists (ids, scores,
    stages; k = 1, 3 and every item) whether the added items fold at every change, after
    1 or 2 recent rows, or never: every model kind, rules, a ranker scoring added
    candidates, MMR with categories among them, exclude lists naming added ids."""
    calls = data.draw(event_streams(kind))
    want = _snapshot(_served(MODELS[kind], variant, calls, NEVER))
    for limit in (0, 1, 2):
        got = _snapshot(_served(MODELS[kind], variant, calls, limit))
        _assert_same(got, want, f"{kind} {variant}, recent limit {limit}")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["als", "als64"]),
       limit=st.sampled_from([0, 1, 2, 3, NEVER]))
def test_the_als_gram_is_that_of_the_items_served(data, kind, limit):
    """ALS carries YᵀY over the model's items and the added ones (float64) for the user
    solves: after any stream, items set again after they settled included, it equals the
    gram of the base table plus each added item's current (served) vector."""
    model = MODELS[kind]
    calls = data.draw(event_streams(kind))
    # a first user's later events set the item again, whatever tier holds it by then
    calls += [{"user": [c["user"][0]], "item": [c["item"][0]], "weight": [2.0]} for c in calls]
    rec = _served(model, "rules", calls, limit)
    extra = rec._state.new_items
    base = np.asarray(model.item_factors, dtype=np.float64)
    want = base.T @ base
    if extra is not None:
        ids = np.arange(N_ITEMS, N_ITEMS + ADDED)
        added = extra.vectors(ids[extra.has(ids)]).astype(np.float64)
        want = want + added.T @ added
        np.testing.assert_allclose(extra.gram, want, rtol=1e-6 if kind == "als" else 1e-12,
                                   atol=1e-6 if kind == "als" else 1e-12)
        assert extra.count == rec.info()["added_items"] == int(extra.has(ids).sum())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(["als", "bpr", "explicit", "svd"]),
       limit=st.sampled_from([0, 1, 2, NEVER]))
def test_full_lists_are_every_allowed_unseen_item_once(data, kind, limit):
    """A list as long as the catalogue holds every item with a vector that the rules allow
    and the user has not seen nor excluded, once: no stale settled row, no item twice."""
    calls = data.draw(event_streams(kind))
    rec = _served(MODELS[kind], "rules", calls, limit)
    state = rec._state
    extra = state.new_items
    ids = np.arange(N_ITEMS, N_ITEMS + ADDED)
    with_vector = set(range(N_ITEMS)) | set(ids[extra.has(ids)].tolist() if extra else [])
    allowed = {i for i in with_vector if i % 5 != 2 and i not in (N_ITEMS + 1, 4)}
    users = np.arange(N_USERS + 4)
    excludes = [[N_ITEMS + (u % ADDED)] if u % 2 else None for u in users]
    answer = rec.recommend_batch(users, k=N_ITEMS + ADDED + 5, excludes=excludes)
    for row, user in enumerate(users.tolist()):
        listed = answer.ids[row][answer.ids[row] >= 0].tolist()
        assert len(listed) == len(set(listed)), (user, listed)
        if answer.stages[row][0] == "popular":
            assert set(listed) <= set(range(N_ITEMS))
            continue
        entry = state.users.get(user)
        if entry is not None:
            known = set(entry.items.tolist())
        else:
            known = set(state.model.seen[user].indices.tolist())
        want = allowed - known - set(excludes[row] or ())
        assert set(listed) == want, (user, sorted(set(listed) ^ want))
        scores = answer.scores[row][:len(listed)]
        assert (np.diff(scores) <= 0).all()


def test_the_served_fold_threshold_answers_as_never_folding():
    """With the served ``_recent_limit`` (256 rows at first), 900 one-event calls over 420
    added ids (many set again by their first users after they settled) fold a few times,
    and give the vectors, count and lists of a Recommender that never folds."""
    rng = np.random.default_rng(4)
    users = rng.integers(0, N_USERS + 4, 900)
    items = N_ITEMS + np.r_[rng.permutation(420), rng.integers(0, 420, 480)]
    rules = Rerank(deny=[N_ITEMS + 5, 2])
    served = []
    for limit in (None, NEVER):
        with (patch.object(serving, "_recent_limit", serving._recent_limit) if limit is None
              else _recent_limit(limit)):
            rec = Recommender(MODELS["als"], k=25, rerank=rules, new_item_users=2,
                              num_threads=1)
            folds = 0
            for user, item in zip(users.tolist(), items.tolist()):
                before = rec._state.new_items
                rec.observe({"user": [user], "item": [item], "weight": [1.0 + user % 3]})
                after = rec._state.new_items
                folds += before is not None and after.settled is not before.settled
        extra = rec._state.new_items
        ids = np.arange(N_ITEMS, N_ITEMS + 420)
        assert extra.has(ids).all() and extra.count == 420
        answer = rec.recommend_batch(np.arange(N_USERS + 4))
        served.append((extra.vectors(ids), extra.gram, answer.ids, answer.scores))
        if limit is None:
            assert folds >= 1 and extra.recent is not None and extra.settled is not None
    for got, want in zip(*served):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- ids, swaps, the log


def test_ids_at_the_int32_limit_serve_through_every_stage():
    """Added ids up to 2**31 - 2 (the largest events take), far apart, through rules, a
    ranker, MMR and caps, exclude lists and an observed user's own row, folding or not."""
    far = np.array([2**31 - 2, 2**31 - 3, 2**31 - 1000, 2**30, N_ITEMS + 1])
    categories = np.arange(N_ITEMS) % 3
    rules = Rerank(diversity=0.5, item_categories=categories, category_cap=2,
                   deny=[far[2]], allow=np.r_[0:N_ITEMS, far[[0, 1, 2, 3]]])
    rng = np.random.default_rng(0)
    calls = [{"user": rng.integers(0, N_USERS + 2, 2), "item": far[rng.integers(0, 5, 2)],
              "weight": [2.0, 1.0]} for _ in range(15)]
    answers = []
    for limit in (NEVER, 0, 1):
        with _recent_limit(limit):
            rec = Recommender(MODELS["als"], _scorer(2 * D), candidates=40, k=12,
                              rerank=rules, max_new_items=2**31, new_item_users=2,
                              num_threads=1)
            for events in calls:
                rec.observe(events)
        assert rec.info()["added_items"] == 5
        extra = rec._state.new_items
        assert extra.has(far).all() and not extra.has(far[2:] - 1).any()
        excludes = [[int(far[0])] if u % 2 else None for u in range(N_USERS + 2)]
        got = rec.recommend_batch(np.arange(N_USERS + 2), excludes=excludes)
        for user in range(N_USERS + 2):
            row = got.ids[user][got.ids[user] >= 0]
            assert row.size == np.unique(row).size
            assert far[2] not in row and far[4] not in row  # denied / not allowed
            if user % 2:
                assert far[0] not in row
            entry = rec._state.users.get(user)
            if entry is not None and got.stages[user][0] != "popular":
                assert not set(row.tolist()) & set(entry.items.tolist())
        answers.append((extra.vectors(far), got.ids, got.scores, got.stages))
    for other in answers[1:]:
        for a, b in zip(other, answers[0]):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["als", "explicit", "bpr"])
@pytest.mark.parametrize("limit", [0, 1, NEVER])
def test_a_swap_replays_the_log_into_the_tiers_as_one_observe_call(kind, limit):
    """swap_model(same model) after many added items (and a short log) serves what a new
    Recommender given the logged events in one observe call serves."""
    rng = np.random.default_rng(2)
    calls = [{"user": rng.integers(0, N_USERS + 3, 3),
              "item": N_ITEMS + rng.integers(0, 30, 3),
              "weight": rng.integers(1, 6, 3).astype(float)} for _ in range(40)]
    with _recent_limit(limit):
        rec = Recommender(MODELS[kind], k=10, new_item_users=2, num_threads=1,
                          max_pending_events=60, rerank=Rerank(deny=[N_ITEMS + 3]))
        for events in calls:
            rec.observe(events)
        log = rec.pending_events()
        assert log.users.size == 60 and rec.info()["dropped_events"] == 60
        rec.swap_model(MODELS[kind])
        fresh = Recommender(MODELS[kind], k=10, new_item_users=2, num_threads=1,
                            rerank=Rerank(deny=[N_ITEMS + 3]))
        fresh.observe(log)
    assert rec.info()["added_items"] == fresh.info()["added_items"] == np.unique(log.items).size
    ids = np.unique(log.items)
    for part in ("vectors", "biases"):
        np.testing.assert_array_equal(getattr(rec._state.new_items, part)(ids),
                                      getattr(fresh._state.new_items, part)(ids))
    users = np.arange(N_USERS + 3)
    a, b = rec.recommend_batch(users), fresh.recommend_batch(users)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert not np.isin(a.ids, N_ITEMS + 3).any()


def test_concurrent_readers_while_a_writer_folds():
    """Readers (recommend and recommend_batch, with a ranker and rules) never fail and never
    answer a repeated, denied, excluded or unknown id while a writer adds items that fold at
    nearly every change; each answer is one of the states published."""
    ranker, rerank = _scorer(2 * D), Rerank(deny=[N_ITEMS + 1, 3])
    with _recent_limit(1):
        rec = Recommender(MODELS["als"], ranker, candidates=12, k=8, rerank=rerank,
                          new_item_users=2, num_threads=1)
        limit = N_ITEMS + 60

        def check(ids, excluded):
            valid = ids[ids >= 0]
            assert valid.size == np.unique(valid).size, ids
            assert not np.isin(valid, [N_ITEMS + 1, 3, excluded]).any(), ids
            assert (valid < limit).all(), ids

        generators = [np.random.default_rng(seed) for seed in range(3)]  # one per reader

        def read(thread):
            rng = generators[thread]
            users = rng.integers(0, N_USERS + 6, 5)
            excluded = int(N_ITEMS + rng.integers(0, 60))
            batch = rec.recommend_batch(users, excludes=[[excluded]] * 5)
            for row in batch.ids:
                check(row, excluded)
            check(rec.recommend(int(users[0]), exclude=[excluded]).ids, excluded)

        rng = np.random.default_rng(9)
        with _readers(read, 3) as (stop, reads):
            for _ in range(150):
                rec.observe({"user": rng.integers(0, N_USERS + 6, 2),
                             "item": N_ITEMS + rng.integers(0, 60, 2)})
                if stop.is_set():
                    break
            waited = time.monotonic() + 10  # a loaded machine: let each reader answer once
            while reads[0] < 3 and not stop.is_set() and time.monotonic() < waited:
                time.sleep(0.01)
    assert reads[0] > 0


# ---------------------------------------------------------------------- ties across the tiers

def _offset_recommender(layout: str) -> Recommender:
    """Items 5 (score 0.1) and 6 (the next float32 up) added, either both in the recent
    tier or 5 settled and 6 recent; every user's offset 3 (as SVD's μ + b_u), which rounds
    both scores to the same float32."""
    n = 5
    als = recfuse.ALS(factors=2)
    als.user_factors = np.array([[1, 0]] * 2, np.float32)
    als.item_factors = np.array([[-1, 0]] * n, np.float32)
    als._user_items = sp.csr_matrix(np.array([[1, 0, 0, 0, 0]] * 2, np.float32))
    rec = Recommender(als, k=1, num_threads=1)
    state = rec._state
    state.model = replace(state.model, user_offsets=np.array([3.0, 3.0]))
    low = np.float32(0.1)
    table = np.array([[low, 0], [np.nextafter(low, np.float32(1)), 0]], np.float32)
    ids = np.array([n, n + 1])
    extra = _NewItems(None, None, None, None, 0)
    if layout == "one tier":
        extra = extra.changed(ids, table, None, None, None, "auto")
    else:
        with _recent_limit(0):
            extra = extra.changed(ids[:1], table[:1], None, None, None, "auto")
        extra = extra.changed(ids[1:], table[1:], None, None, None, "auto")
        assert extra.settled is not None and extra.recent is not None
    state.new_items = extra
    return rec


def test_tied_offset_scores_give_one_list_whatever_tier_holds_the_items():
    """Each tier's best were handed back side by side and cut to ``wanted`` only after the
    user's offset (μ + b_u) was added and rounded to float32, where scores apart in the
    search became a tie broken by the smaller id: which tied item was still there depended
    on the tier holding each, so the same vectors gave lists that depended on the folds.
    The added items' lists are now cut on the search's own scores."""
    one, two = _offset_recommender("one tier"), _offset_recommender("two tiers")
    a, b = one.recommend(0), two.recommend(0)
    np.testing.assert_array_equal(a.scores, b.scores)  # 3.1 both: a tie
    np.testing.assert_array_equal(a.ids, b.ids)  # were [6] from one tier, [5] from two


# ---------------------------------------------------------------------- ItemIndex "auto"


@st.composite
def skewed_problems(draw):
    """A float32 table whose norms are skewed (99th percentile >= 2 x median), n from 500 k
    to below 1000 k items (where only the skew makes "auto" read bfloat16), with zero rows,
    repeated rows (exact ties), item biases, exclusions and allow/deny."""
    k = draw(st.integers(1, 3))
    n = draw(st.integers(500 * k, 1000 * k - 1))
    d = draw(st.integers(1, 9))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n, d)) / np.arange(1, n + 1)[:, None] ** draw(
        st.sampled_from([0.5, 1.0, 2.0]))
    items = items[rng.permutation(n)].astype(np.float32)
    items[rng.integers(0, n, draw(st.integers(0, 5)))] = 0  # zero rows
    copies = rng.integers(0, n, draw(st.integers(0, 8)))
    items[copies] = items[copies[::-1]]  # exact ties
    bias = None
    if draw(st.booleans()):
        bias = (rng.standard_normal(n) * draw(st.sampled_from([1e-6, 0.01, 1.0]))).astype(
            np.float32)
    m = draw(st.integers(1, 5))
    queries = rng.standard_normal((m, d)).astype(np.float32)
    if draw(st.booleans()):
        queries[0] = 0  # every score the bias (or 0)
    exclude = None
    if draw(st.booleans()):
        exclude = sp.random(m, n, density=draw(st.sampled_from([0.001, 0.05])),
                            format="csr", random_state=seed % 2**31)
    allow = deny = None
    if draw(st.booleans()):
        allow = rng.integers(0, n, draw(st.integers(0, n)))
    if draw(st.booleans()):
        deny = rng.integers(0, n, draw(st.integers(0, 50)))
    return dict(items=items, bias=bias, queries=queries, k=k, exclude=exclude, allow=allow,
                deny=deny, threads=draw(st.sampled_from([1, 2])))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=skewed_problems())
def test_auto_storage_on_skewed_tables_is_native_storage(problem):
    """Where the skew makes "auto" read the bfloat16 table (500 k <= n < 1000 k), its ids and
    scores are the native table's, bit for bit: zero rows, ties, biases, exclusions, rules."""
    if not any(b.name == "cpu" and b.available for b in recfuse.backends()):
        pytest.skip("no cpu backend")
    p = problem
    answers = []
    with patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 0):  # small tables, as large ones
        for storage in ("auto", "native"):
            index = recfuse.ItemIndex(p["items"], item_bias=p["bias"], storage=storage,
                                      backend="cpu")
            answers.append(index.search(p["queries"], p["k"], exclude=p["exclude"],
                                        allow=p["allow"], deny=p["deny"],
                                        num_threads=p["threads"]))
            if storage == "auto":
                skewed = retrieval._skewed_norms(p["items"])
                assert index.storage_for(p["k"]) == ("bfloat16" if skewed else "native")
    (ids, scores), (want_ids, want_scores) = answers
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores.view(np.uint32), want_scores.view(np.uint32))


def test_skew_is_measured_over_the_rows_a_search_returns_from():
    """The skew test on the degenerate tables: all zero, a single long row, NaN or inf in
    a row, float32 near overflow (squares beyond float32 are summed in float64)."""
    zeros = np.zeros((2000, 4), np.float32)
    assert not retrieval._skewed_norms(zeros)
    one = zeros.copy()
    one[7] = 1.0
    assert not retrieval._skewed_norms(one)  # the 99th percentile is still 0
    many = zeros.copy()
    many[:30] = 1.0  # 1.5% of rows long, the rest zero: skewed
    assert retrieval._skewed_norms(many)
    huge = np.full((2000, 4), 1e30, np.float32)
    huge[:40] *= 1e8  # 3.4e38 in float32 range; squares 1e76 only in float64
    assert retrieval._skewed_norms(huge)
    broken = huge.copy()
    broken[3, 1] = np.inf
    assert not retrieval._skewed_norms(broken)
    index = recfuse.ItemIndex(many, backend="cpu")
    if index._bfloat16_possible:
        with patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 0):
            assert index.storage_for(3) == "bfloat16" and index.storage_for(4) == "bfloat16"
            queries = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
            got = index.search(queries, 3)
            assert set(index._tables) == {"bfloat16"}
        want = recfuse.ItemIndex(many, storage="native", backend="cpu").search(queries, 3)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_one_item_per_result_still_forces_bfloat16_on_a_small_table():
    """storage_for looked at the skewed tables' threshold first: with
    BFLOAT16_ITEMS_PER_RESULT set below it (test_topk.test_auto_storage_is_native_storage
    sets it to 1 to force bfloat16 on small tables) a table of n >= that many items per
    result was served natively, and that test compared the native table with itself."""
    items = np.random.default_rng(0).standard_normal((300, 4)).astype(np.float32)
    index = recfuse.ItemIndex(items, backend="cpu")
    if not index._bfloat16_possible:
        pytest.skip("no bfloat16 storage on this backend")
    from recfuse._topk import cpu as topk_cpu

    with patch.object(retrieval, "BFLOAT16_ITEMS_PER_RESULT", 1), \
            patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 0):
        assert index.storage_for(1, 1) == "bfloat16"  # 300 >= 1 x 1, one query: any kernel
        with patch.object(topk_cpu, "bfloat16_dot", lambda: True):  # AVX512-BF16: any batch
            assert index.storage_for(1) == "bfloat16"


# ---------------------------------------------------------------------- folds on a thread


def _join(rec: Recommender) -> None:
    thread = rec._fold_thread
    if thread is not None:
        thread.join(10)
        assert not thread.is_alive()


@contextmanager
def _gated_folds():
    """Fold threads wait at the start of their work until the test sets the gate."""
    gate, started = threading.Event(), threading.Event()
    real = _NewItems.folded

    def folded(self, *options):
        started.set()
        assert gate.wait(10)
        return real(self, *options)

    with patch.object(_NewItems, "folded", folded):
        yield gate, started


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kind=st.sampled_from(sorted(MODELS)),
       variant=st.sampled_from(["plain", "rules", "ranker_mmr"]), limit=st.sampled_from([0, 1, 2]))
def test_folds_on_their_thread_change_no_vector_or_list(data, kind, variant, limit):
    """Folded by the fold thread, whenever it lands (joined after some calls, not after
    others), the added items give the state and the lists of items that never fold."""
    calls = data.draw(event_streams(kind))
    joins = data.draw(st.lists(st.booleans(), min_size=len(calls), max_size=len(calls)))
    want = _snapshot(_served(MODELS[kind], variant, calls, NEVER))
    with _recent_limit(limit):
        rec = _recommender(MODELS[kind], variant, background=True)
        for events, join in zip(calls, joins):
            rec.observe(events)
            if join:
                _join(rec)
    _assert_same(_snapshot(rec), want, f"{kind} {variant}, limit {limit}, before the join")
    _join(rec)
    _assert_same(_snapshot(rec), want, f"{kind} {variant}, limit {limit}, joined")


@pytest.mark.parametrize("kind", ["als", "svd"])
def test_rows_set_while_the_fold_thread_works_stay_recent(kind):
    """The fold thread folds the recent rows of the moment it started; rows set before it
    publishes (an item set again, a new item) stay in the recent tier, hiding their settled
    rows, and everything served is as if nothing had folded."""
    low = 0 if kind == "als" else 1
    first = [{"user": [1, 2], "item": [N_ITEMS, N_ITEMS + 1], "weight": [3.0, 4.0]},
             {"user": [3], "item": [N_ITEMS + 2], "weight": [5.0]}]
    later = [{"user": [4, 5], "item": [N_ITEMS, N_ITEMS + 3], "weight": [low + 1.0, 2.0]}]
    want = _snapshot(_served(MODELS[kind], "rules", first + later, NEVER))
    with _gated_folds() as (gate, started), _recent_limit(2):
        rec = _recommender(MODELS[kind], "rules", background=True)
        for events in first:
            rec.observe(events)
        assert started.wait(10)  # three recent rows: the fold thread took them
        before = rec._state.new_items
        for events in later:
            rec.observe(events)  # sets item N_ITEMS again and adds N_ITEMS + 3
        _assert_same(_snapshot(rec), want, "while the fold thread waits")
        gate.set()
        _join(rec)
    extra = rec._state.new_items
    assert extra.settled is not before.settled
    np.testing.assert_array_equal(extra.settled.ids, np.arange(N_ITEMS, N_ITEMS + 3))
    np.testing.assert_array_equal(extra.recent.ids, [N_ITEMS, N_ITEMS + 3])
    # N_ITEMS is recent's, N_ITEMS + 1 denied by the rules
    assert extra.settled_mask.tolist() == [0, 0, 1]
    _assert_same(_snapshot(rec), want, "after the fold thread published")


def test_a_fold_thread_outrun_by_a_swap_or_an_inline_fold_publishes_nothing():
    """The fold thread publishes only onto the state it started from, with the settled tier
    it started from: a swap (a new state) or a fold by a change past the backlog (a new
    settled tier) makes it drop its work."""
    calls = [{"user": [u], "item": [N_ITEMS + u]} for u in range(1, 20)]  # 19 new items
    with _gated_folds() as (gate, started), _recent_limit(1):
        rec = _recommender(MODELS["als"], "plain", background=True)
        rec.observe(calls[0])
        rec.observe(calls[1])
        assert started.wait(10)
        state = rec._state
        rec.swap_model(MODELS["als"])  # replays the log into a new state
        assert rec._state is not state
        gate.set()
        _join(rec)
    assert state.new_items.recent is not None  # the old state: left as it was
    reference = _served(MODELS["als"], "plain", calls[:2], NEVER)
    reference.swap_model(MODELS["als"])
    _assert_same(_snapshot(rec), _snapshot(reference), "after the swap")

    with _gated_folds() as (gate, started), _recent_limit(1):
        rec = _recommender(MODELS["als"], "plain", background=True)
        for events in calls[:3]:
            rec.observe(events)
        assert started.wait(10)
        stale = rec._state.new_items.settled
        for events in calls[3:12]:  # recent past 8 x its limit: a change folds at once
            rec.observe(events)
        inline = rec._state.new_items.settled
        assert inline is not stale
        gate.set()
        _join(rec)
    assert rec._state.new_items.settled is inline  # the thread's fold of 2 rows: dropped
    want = _snapshot(_served(MODELS["als"], "plain", calls[:12], NEVER))
    _assert_same(_snapshot(rec), want, "after the inline fold")


def test_a_failed_fold_thread_leaves_the_items_and_the_next_fold_runs(caplog):
    """A fold thread that fails logs it and changes nothing served; a later one publishes."""
    calls = [{"user": [u], "item": [N_ITEMS + u % ADDED]} for u in range(1, 8)]
    real = _NewItems.folded
    failures = []

    def folded(self, *options):
        if not failures:
            failures.append(1)
            raise MemoryError("no room for the folded tier")
        return real(self, *options)

    with patch.object(_NewItems, "folded", folded), _recent_limit(1):
        rec = _recommender(MODELS["als"], "plain", background=True)
        for events in calls:
            rec.observe(events)
            _join(rec)
    assert failures and not rec._folding
    assert "folding the added items' recent rows failed" in caplog.text
    assert "no room for the folded tier" in caplog.text
    assert rec._state.new_items.settled is not None  # a later fold thread published
    want = _snapshot(_served(MODELS["als"], "plain", calls, NEVER))
    _assert_same(_snapshot(rec), want, "after a failed fold")
