"""Bug hunt: Events.calls, observe's replay of logged calls, swap_model's replay.

The claim checked: under ALS(solver="cholesky") and ExplicitALS, a fresh Recommender (same
model, same settings) observing ``old.pending_events()`` ends with the same user vectors,
added-item vectors and first users as ``old``, which observed the same calls one by one.
Every reference here is an independent sequential replay (a fresh Recommender observing
the calls one at a time, in order), never the implementation's grouping.

The bugs it found are fixed (their tests below pass).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import recfuse
from recfuse import Events
from recfuse.serving import Recommender

sys.path.insert(0, str(Path(__file__).parent))
import test_serving_stateful as t  # noqa: E402

N = t.N_ITEMS  # the first added item id
I64 = np.iinfo(np.int64)


def _make(model, **settings) -> Recommender:
    settings.setdefault("max_new_items", t.MAX_NEW)
    settings.setdefault("new_item_users", 2)
    return Recommender(model, k=5, num_threads=1, **settings)


def _sequential(model, calls, **settings) -> Recommender:
    rec = _make(model, **settings)
    for users, items, weights in calls:
        rec.observe({"user": users, "item": items, "weight": weights})
    return rec


def _snapshot(rec: Recommender):
    state = rec._state
    users = {u: np.array(e.vector, np.float64) for u, e in state.users.items()}
    items = {}
    if state.new_items is not None:
        for item in state.new_item_users:
            items[item] = np.array(state.new_items.vectors(np.array([item]))[0], np.float64)
    return users, items, dict(state.new_item_users)


def _assert_same(a: Recommender, b: Recommender, tol: float = 1e-9) -> None:
    ua, ia, fa = _snapshot(a)
    ub, ib, fb = _snapshot(b)
    assert set(ua) == set(ub)
    for user in ua:
        np.testing.assert_allclose(ua[user], ub[user], rtol=0, atol=tol, err_msg=f"user {user}")
    assert set(ia) == set(ib)
    for item in ia:
        np.testing.assert_allclose(ia[item], ib[item], rtol=0, atol=tol, err_msg=f"item {item}")
    assert fa == fb


def _random_calls(rng, count, *, users=35, p_new=0.4, rating=False):
    calls = []
    for _ in range(count):
        m = int(rng.integers(1, 4))
        us = rng.integers(0, users, m)
        its = np.where(rng.random(m) < p_new, rng.integers(N, N + t.MAX_NEW, m),
                       rng.integers(0, N, m))
        ws = rng.integers(1, 6 if rating else 4, m).astype(np.float64)
        calls.append((us, its, ws))
    return calls


def _log_events(rec) -> Events:
    return rec.pending_events()


MODELS = [pytest.param(t.ALS_MODEL, False, id="als"),
          pytest.param(t.EXPLICIT_MODEL, True, id="explicit"),
          pytest.param(t.UNBIASED_MODEL, True, id="explicit-unbiased")]


# ----------------------------------------------------------------------------- the claim


@pytest.mark.parametrize("model,rating", MODELS)
@pytest.mark.parametrize("first_users", [1, 2, 3])
def test_random_restart_matches_the_sequential_calls(model, rating, first_users):
    for seed in range(8):
        rng = np.random.default_rng(seed * 7 + first_users)
        calls = _random_calls(rng, int(rng.integers(2, 12)), users=int(rng.integers(3, 36)),
                              p_new=float(rng.random()), rating=rating)
        old = _sequential(model, calls, new_item_users=first_users)
        new = _make(model, new_item_users=first_users)
        assert new.observe(old.pending_events()) == sum(c[0].size for c in calls)
        _assert_same(old, new)
        # a second restart, from the replayed Recommender's own log
        newer = _make(model, new_item_users=first_users)
        newer.observe(new.pending_events())
        _assert_same(old, newer)


@pytest.mark.parametrize("model,rating", MODELS)
def test_items_filling_at_different_calls_and_first_users_coming_back(model, rating):
    w = 4.0 if rating else 2.0
    calls = [
        ([1], [N], [w]),               # N: first user 1 (of 3)
        ([2, 3], [N + 1, 5], [w, w]),  # N+1: first user 2
        ([4], [7], [w]),               # unrelated user, base item
        ([5, 6], [N, N], [w, 3.0]),    # N fills (1, 5, 6)
        ([1], [N], [w]),               # a first user again: N re-solved
        ([7], [N], [w]),               # not a first user: no change
        ([2], [3], [w]),               # N+1's first user, base item: no change
        ([8, 2], [N + 1, N + 1], [w, w]),  # N+1: 8 joins, 2 again
        ([9], [N + 2], [w]),           # a third item
        ([1, 9], [N + 2, N + 2], [w, w]),
        ([7, 7], [N, 4], [w, w]),
    ]
    calls = [tuple(np.asarray(c, dtype=dt) for c, dt in zip(call, (np.int64, np.int64, float)))
             for call in calls]
    old = _sequential(model, calls, new_item_users=3)
    new = _make(model, new_item_users=3)
    new.observe(old.pending_events())
    _assert_same(old, new)


@pytest.mark.parametrize("model,rating", MODELS[:2])
def test_replay_into_a_recommender_with_its_own_events(model, rating):
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        calls = _random_calls(rng, 8, users=12, rating=rating)
        prefix = _random_calls(rng, 3, users=12, rating=rating)
        old = _sequential(model, calls)
        want = _sequential(model, prefix + calls)
        new = _sequential(model, prefix)
        new.observe(old.pending_events())
        _assert_same(want, new)


def test_mapping_with_call_is_the_same_as_events():
    calls = _random_calls(np.random.default_rng(3), 8, users=10)
    old = _sequential(t.ALS_MODEL, calls)
    events = old.pending_events()
    new = _make(t.ALS_MODEL)
    new.observe({"user": events.users.tolist(), "item": events.items.tolist(),
                 "weight": events.weights.tolist(), "call": events.calls.tolist()})
    _assert_same(old, new)


def test_readme_npz_round_trip(tmp_path):
    calls = _random_calls(np.random.default_rng(4), 6, users=10)
    old = _sequential(t.EXPLICIT_MODEL, [(u, i, np.clip(w, 1, 5)) for u, i, w in calls])
    np.savez(tmp_path / "events.npz", **old.pending_events()._asdict())
    new = _make(t.EXPLICIT_MODEL)
    new.observe(Events(**np.load(tmp_path / "events.npz")))
    _assert_same(old, new)


def test_replayed_log_keeps_the_call_structure_numbered_as_its_own_calls():
    calls = _random_calls(np.random.default_rng(5), 7, users=10)
    old = _sequential(t.ALS_MODEL, calls)
    new = _make(t.ALS_MODEL)
    new.observe({"user": [0], "item": [1]})  # its own call 0
    new.observe(old.pending_events())
    got, want = new.pending_events(), old.pending_events()
    assert got.calls[0] == 0
    np.testing.assert_array_equal(got.users[1:], want.users)
    np.testing.assert_array_equal(got.calls[1:], want.calls + 1)
    new.observe({"user": [0], "item": [2]})
    assert new.pending_events().calls[-1] == want.calls[-1] + 2


def test_equal_calls_are_one_call_and_empty_calls_change_nothing():
    users, items = np.array([1, 2, 1, 3]), np.array([N, N, N + 1, 4])
    one = _make(t.ALS_MODEL)
    one.observe({"user": users, "item": items})
    same = _make(t.ALS_MODEL)
    same.observe({"user": users, "item": items, "call": np.full(4, 123456789012)})
    _assert_same(one, same)
    assert same.pending_events().calls.tolist() == [0, 0, 0, 0]
    assert same.observe({"user": [], "item": [], "call": []}) == 0
    assert same.observe(Events(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0),
                               np.zeros(0, np.int64))) == 0
    assert same.pending_events().calls.tolist() == [0, 0, 0, 0]
    same.observe({"user": [5], "item": [6]})
    assert same.pending_events().calls.tolist() == [0, 0, 0, 0, 1]


def test_calls_near_the_int64_ends_without_overflowing_differences():
    rec = _make(t.ALS_MODEL)
    assert rec.observe({"user": [1, 2, 3], "item": [N, N, 4],
                        "call": [I64.max - 2, I64.max - 1, I64.max]}) == 3
    assert rec.pending_events().calls.tolist() == [0, 1, 2]
    assert rec.observe({"user": [1, 2], "item": [4, 5], "call": [I64.min, I64.min + 1]}) == 2


@pytest.mark.parametrize("calls,error", [
    ([0.0, 1.0], TypeError), ([True, False], TypeError), (["a", "b"], TypeError),
    ([None, None], TypeError), ([2**64, 2**64], TypeError), ([0], ValueError),
    ([0, 1, 2], ValueError), ([1, 0], ValueError)])
def test_bad_calls_are_refused_with_nothing_applied(calls, error):
    rec = _make(t.ALS_MODEL)
    rec.observe({"user": [9], "item": [9]})
    before = _snapshot(rec)
    with pytest.raises(error, match="calls"):
        rec.observe({"user": [1, 2], "item": [N, 4], "call": calls})
    assert rec.pending_events().users.tolist() == [9]
    assert set(_snapshot(rec)[0]) == set(before[0]) and not rec._state.new_item_users


def test_reject_refuses_a_replay_of_added_items_with_nothing_applied():
    old = _sequential(t.ALS_MODEL, [([1], [3], [1.0]), ([2], [N], [1.0]), ([3], [4], [1.0])])
    new = _make(t.ALS_MODEL, unknown_items="reject")
    with pytest.raises(ValueError, match="unknown_items='reject'"):
        new.observe(old.pending_events())
    assert new.pending_events().users.size == 0 and not new._state.users


def test_log_trimmed_mid_call_keeps_the_newest_events_with_their_call():
    rec = _make(t.ALS_MODEL, max_pending_events=3)
    rec.observe({"user": [1, 2], "item": [1, 2]})
    rec.observe({"user": [3, 4, 5], "item": [3, 4, 5]})
    rec.observe({"user": [6, 7], "item": [6, 7]})
    logged = rec.pending_events()
    assert logged.users.tolist() == [5, 6, 7] and logged.calls.tolist() == [1, 2, 2]
    assert rec.dropped_events == 4


def test_clear_then_more_calls_numbers_go_on():
    rec = _make(t.ALS_MODEL)
    rec.observe({"user": [1], "item": [N]})
    assert rec.pending_events(clear=True).calls.tolist() == [0]
    rec.observe({"user": [2, 3], "item": [N, 4]})
    rec.observe({"user": [4], "item": [N]})
    assert rec.pending_events().calls.tolist() == [1, 1, 2]


# ----------------------------------------------------------------------------- swap_model


@pytest.mark.parametrize("model,rating", MODELS[:2])
def test_swap_model_replays_as_the_calls_went(model, rating):
    for seed in range(4):
        calls = _random_calls(np.random.default_rng(200 + seed), 9, users=10, rating=rating)
        old = _sequential(model, calls)
        swapped = _sequential(model, calls)
        swapped.swap_model(model)
        _assert_same(old, swapped)
        swapped.swap_model(model, replay=lambda events: events)
        _assert_same(old, swapped)
        np.testing.assert_array_equal(swapped.pending_events().calls,
                                      old.pending_events().calls)


def test_swap_model_function_without_calls_is_one_call_numbered_next():
    rec = _sequential(t.ALS_MODEL, [([1], [3], [1.0]), ([2], [4], [1.0])])
    rec.swap_model(t.ALS_MODEL, replay=lambda e: Events(e.users, e.items, e.weights))
    assert rec.pending_events().calls.tolist() == [2, 2]
    rec.observe({"user": [3], "item": [5]})
    assert rec.pending_events().calls.tolist() == [2, 2, 3]
    one = _sequential(t.ALS_MODEL, [([1, 2, 3], [3, 4, 5], [1.0, 1.0, 1.0])])
    _assert_same(one, rec)


def test_swap_model_function_with_decreasing_calls_changes_nothing():
    rec = _sequential(t.ALS_MODEL, [([1], [N], [1.0]), ([2], [4], [1.0])])
    before, version = _snapshot(rec), rec.version
    with pytest.raises(ValueError, match="must not decrease"):
        rec.swap_model(t.ALS_MODEL, replay=lambda e: e._replace(calls=e.calls[::-1].copy()))
    assert rec.version == version
    assert rec.pending_events().calls.tolist() == [0, 1]
    after = _snapshot(rec)
    assert set(after[0]) == set(before[0]) and after[2] == before[2]
    for user in before[0]:
        np.testing.assert_array_equal(after[0][user], before[0][user])


def test_swap_model_function_dropping_events_and_refused_items_replay_as_the_rest():
    for seed in range(4):
        calls = _random_calls(np.random.default_rng(500 + seed), 10, users=10)

        def drop_user_3(e):
            keep = e.users != 3
            return Events(e.users[keep], e.items[keep], e.weights[keep], e.calls[keep])

        rec = _sequential(t.ALS_MODEL, calls)
        rec.swap_model(t.ALS_MODEL, replay=drop_user_3)
        want = _sequential(t.ALS_MODEL, [(u[u != 3], i[u != 3], w[u != 3])
                                         for u, i, w in calls if (u != 3).any()])
        _assert_same(want, rec)
        # max_new_items lowered before the swap: those events stay logged, not replayed
        rec = _sequential(t.ALS_MODEL, calls)
        rec.max_new_items = 3
        rec.swap_model(t.ALS_MODEL)
        ok = [(u[i < N + 3], i[i < N + 3], w[i < N + 3]) for u, i, w in calls]
        want = _sequential(t.ALS_MODEL, [c for c in ok if c[0].size], max_new_items=3)
        _assert_same(want, rec)
        assert rec.pending_events().users.size == sum(c[0].size for c in calls)


# ------------------------------------------------------------- what the hunt found


def test_calls_spanning_the_int64_range_are_taken():
    """_events checked the order with np.diff(calls) < 0, which overflows for calls more than
    2**63 apart: non-decreasing calls were refused as 'must not decrease'."""
    rec = _make(t.ALS_MODEL)
    assert rec.observe({"user": [1, 2], "item": [3, 4], "call": [I64.min, I64.max]}) == 2


def test_a_swap_function_numbering_calls_upwards_keeps_the_log_replayable():
    """swap_model kept the calls a replay function returned as the log's numbers but went on
    numbering new calls from its own counter: the log then had decreasing calls and its
    pending_events() could not be observed (no restart)."""
    rec = _sequential(t.ALS_MODEL, [([1, 2], [3, 4], [1.0, 1.0]), ([1], [5], [1.0])])
    rec.swap_model(t.ALS_MODEL, replay=lambda e: e._replace(calls=e.calls + 100))
    rec.observe({"user": [3], "item": [6]})
    logged = rec.pending_events()
    assert (np.diff(logged.calls) >= 0).all(), logged.calls
    _make(t.ALS_MODEL).observe(logged)  # the restart


def test_a_replay_with_a_bad_late_rating_applies_nothing():
    """A replay whose later call held a rating outside the scale raised after the earlier
    groups were applied and logged (observing the fixed events again applied them twice);
    the whole replay's weights are checked first now."""
    rec = _make(t.EXPLICIT_MODEL)
    with pytest.raises(ValueError, match="rating_scale"):
        rec.observe({"user": [1, 2, 3], "item": [N, 2, 4], "weight": [3.0, 3.0, 9.0],
                     "call": [0, 1, 2]})
    assert rec.pending_events().users.size == 0
    assert not rec._state.users and not rec._state.new_item_users


def test_a_replay_beyond_max_new_items_applies_nothing():
    """A replay into a Recommender with a lower max_new_items raised at the group of the
    first refused item after the groups before it were applied and logged."""
    old = _sequential(t.ALS_MODEL, [([1], [N], [1.0]), ([2], [3], [1.0]),
                                    ([3], [N + 5], [1.0])], max_new_items=6)
    new = _make(t.ALS_MODEL, max_new_items=3)
    with pytest.raises(ValueError, match="beyond the items that may be added"):
        new.observe(old.pending_events())
    assert new.pending_events().users.size == 0
    assert not new._state.users and not new._state.new_item_users


def test_a_replay_sums_a_users_weights_as_the_calls_did():
    """A replay summed a user's weights of an item over a whole group (w0 + (a + b)) where
    the calls had summed them one call at a time ((w0 + a) + b): with large cancelling
    weights (confidence='raw') the rows differed by whole units. _merge adds each weight
    in the events' order now."""
    model = recfuse.ALS(factors=t.D, iterations=3, regularization=0.1, alpha=2.0,
                        confidence="raw", solver="cholesky", dtype=np.float64,
                        random_state=0).fit(t.IMPLICIT)
    item = int(t.IMPLICIT[0].indices[0])  # user 0's training weight 3 on it
    old = _sequential(model, [([0], [item], [1e16]), ([0], [item], [-1e16])])
    new = _make(model)
    new.observe(old.pending_events())
    np.testing.assert_array_equal(new._state.users[0].weights, old._state.users[0].weights)
    _assert_same(old, new)
