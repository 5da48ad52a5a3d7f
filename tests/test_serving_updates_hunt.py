"""Bug hunt: ``recfuse.Recommender``'s real-time updates (``observe``), the lists served after
them, ``pending_events``, ``swap_model(..., replay=...)``, ``info()`` and observe against
concurrent readers, checked against the documented semantics (serving.py's module and
``observe`` docstrings, the README's "Real time" section) computed independently here:

- ALS (Cholesky): an observed user's vector is ``reference.als_half_sweep`` of its whole row
  (training row plus every observed event, weights summed per item) against the fixed item
  table; CG: ``cg_steps`` reference CG steps from the vector it had;
- SVD / SVD++ (biased or not): ``sgd_steps`` SGD passes over the call's events from the
  current vector and offset, items fixed, the model's ``lr`` and ``reg``;
- lists: ``reference.topk`` of that vector over the item table (offset and item bias
  added), the user's seen and observed items and the request's exclude removed, ties by
  smaller id; cold users: the popular order (most stored training entries, a repeated pair
  once, ties by smaller id) less what they have seen;
- a refused ``observe`` call changes nothing (vectors, lists, log, call numbers, counts).

The five bugs the hunt found are fixed; their tests stay as regressions, beside those of
what worked. No test asserts on timing.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import Events, reference
from recfuse.models.sgd import _user_vectors
from recfuse.serving import Recommender

NU, NI, D = 24, 16, 3
NEW = 6  # max_new_items in the tests that add items


def _training() -> sp.csr_matrix:
    rng = np.random.default_rng(5)
    dense = (rng.random((NU, NI)) < 0.3) * rng.integers(1, 4, (NU, NI))
    dense[NU - 1] = 0  # a trained user without a training row (cold)
    dense[:, NI - 1] = 0  # an item nobody has
    dense[0, :3] = [1, 2, 3]
    return sp.csr_matrix(dense.astype(np.float64))


TRAIN = _training()
ALS64 = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=2.0, solver="cholesky",
                    dtype=np.float64, random_state=0).fit(TRAIN)
ALS32_CG = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=2.0, solver="cg",
                       cg_steps=3, random_state=0).fit(TRAIN.astype(np.float32))
ALS_RAW = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=2.0,
                      confidence="raw", solver="cholesky", dtype=np.float64,
                      random_state=0).fit(TRAIN)


def _ratings():
    rng = np.random.default_rng(9)
    users = np.r_[np.arange(NU), rng.integers(0, NU, 120), [4, 4, 4]]
    items = np.r_[np.arange(NU) % NI, rng.integers(0, NI, 120), [6, 6, 6]]  # a repeated pair
    ratings = rng.integers(1, 6, users.size).astype(np.float64)
    ratings[[0, 1]] = [1.0, 5.0]
    return users, items, ratings


RATINGS = _ratings()
SVD_BIASED = recfuse.SVD(factors=D, epochs=4, lr=0.01, reg=0.05, dtype=np.float64,
                         random_state=0).fit(*RATINGS)
SVD_UNBIASED = recfuse.SVD(factors=D, epochs=4, lr=0.01, reg=0.05, biased=False,
                           dtype=np.float64, random_state=0).fit(*RATINGS)
SVDPP = recfuse.SVDpp(factors=D, epochs=3, lr=0.01, reg=0.05, dtype=np.float64,
                      random_state=0).fit(*RATINGS)
EXPLICIT = recfuse.ExplicitALS(factors=D, iterations=3, reg=0.1, dtype=np.float64,
                               random_state=0).fit(*RATINGS)


def _rec(model, **settings_):
    options = dict(k=5, num_threads=1, max_new_items=NEW, new_item_users=2)
    options.update(settings_)
    return Recommender(model, **options)


def _popular(seen: sp.csr_matrix, positive: bool = False) -> list[int]:
    """The documented cold-start order: most stored entries (a repeated pair once; for ALS
    and BPR, ``positive``, only pairs whose summed value is > 0), ties by the smaller id."""
    stored = sp.csr_matrix((np.ones(seen.nnz), seen.indices, seen.indptr),
                           shape=seen.shape).toarray() > 0  # toarray sums repeats
    liked = seen.toarray() > 0
    counts = (liked if positive else stored).sum(axis=0)
    return sorted(range(seen.shape[1]), key=lambda i: (-counts[i], i))


def _row_of(user: int, events: list[tuple[int, int, float]], training=TRAIN) -> dict:
    """The user's whole row: training entries (stored zeros too) plus every event, summed."""
    row: dict[int, float] = {}
    if user < training.shape[0]:
        start, end = training.indptr[user], training.indptr[user + 1]
        for item, value in zip(training.indices[start:end].tolist(),
                               training.data[start:end].tolist()):
            row[item] = row.get(item, 0.0) + value
    for u, item, weight in events:
        if u == user:
            row[item] = row.get(item, 0.0) + weight
    return row


def _als_reference(model, row: dict, start=None, n_items=NI) -> np.ndarray:
    """reference.als_half_sweep of one row (dict item -> summed weight) against the model's
    items, in the model's dtype (float64 for Cholesky checks)."""
    items = sorted(row)
    R = sp.csr_matrix((np.array([row[i] for i in items], dtype=np.float64), items,
                       [0, len(items)]), shape=(1, n_items))
    Y = np.asarray(model.item_factors)
    X = np.zeros((1, Y.shape[1]), Y.dtype) if start is None else np.asarray(start)[None, :]
    return reference.als_half_sweep(R, Y, X, regularization=model.regularization,
                                    alpha=model.alpha, confidence=model.confidence,
                                    solver=model.solver, cg_steps=model.cg_steps)[0]


def _expected_recall(query, table, k, excluded, offset=0.0, bias=None, mask=None):
    """(ids, scores) by reference.topk: ``excluded`` item ids removed, ties by smaller id."""
    n = table.shape[0]
    excluded = sorted(i for i in set(excluded) if i < n)
    exclude = sp.csr_matrix((np.ones(len(excluded)), excluded, [0, len(excluded)]),
                            shape=(1, n))
    ids, scores = reference.topk(np.asarray(query, np.float64)[None, :],
                                 np.asarray(table, np.float64), k, exclude=exclude, mask=mask,
                                 item_bias=bias)
    return ids[0], scores[0] + offset


def _assert_recall(result, ids, scores, where=""):
    np.testing.assert_array_equal(result.ids, ids, err_msg=where)
    valid = ids >= 0
    np.testing.assert_allclose(result.scores[valid], scores[valid], rtol=1e-5, atol=1e-6,
                               err_msg=where)
    assert (result.stages[valid] == "recall").all(), where
    assert (result.stages[~valid] == "").all() and np.isneginf(result.scores[~valid]).all()


def _assert_popular(result, order, excluded, k, where=""):
    want = [i for i in order if i not in set(excluded)][:k]
    got = result.ids[result.ids >= 0].tolist()
    assert got == want, f"{where}: popular list {got}, expected {want}"
    assert (result.stages[:len(want)] == "popular").all() and (result.scores[:len(want)] == 0).all()
    assert (result.ids[len(want):] == -1).all()


def _snapshot(rec, users, k=None):
    """Everything a refused call must leave as it was."""
    state = rec._state
    lists = rec.recommend_batch(users, k=k)
    return ({u: (e.vector.copy(), e.offset, e.items.copy(), e.weights.copy())
             for u, e in state.users.items()},
            None if state.new_items is None else state.new_items.count,
            dict(state.new_item_users), rec.info(), tuple(map(np.copy, rec.pending_events())),
            lists.ids.copy(), lists.scores.copy(), rec.version)


def _assert_same_snapshot(a, b):
    users_a, count_a, first_a, info_a, log_a, ids_a, scores_a, version_a = a
    users_b, count_b, first_b, info_b, log_b, ids_b, scores_b, version_b = b
    assert users_a.keys() == users_b.keys()
    for user in users_a:
        for x, y in zip(users_a[user], users_b[user]):
            np.testing.assert_array_equal(x, y, err_msg=f"user {user}")
    assert (count_a, first_a, info_a, version_a) == (count_b, first_b, info_b, version_b)
    for x, y in zip(log_a, log_b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(scores_a, scores_b)


PROBE_USERS = [0, 1, 2, 5, NU - 1, NU, NU + 3, 10**9]


# ---------------------------------------------------------------------- ALS fold-in


def test_a_pair_twice_in_one_call_and_again_later_sums_into_one_row():
    """ALS: each user's weights are summed per item, within a call and across calls; the
    vector is the re-solve of the whole row (Cholesky: exactly the reference), whatever the
    calls the events came in; the list is the reference top-k without the row's items."""
    events = [(3, 5, 1.0), (3, 5, 2.0), (3, 7, 0.5), (NU + 1, 2, 1.0), (NU + 1, 2, 1.0)]
    later = [(3, 5, 0.25), (3, 9, 4.0)]
    rec = _rec(ALS64)
    assert rec.observe({"user": [u for u, _, _ in events], "item": [i for _, i, _ in events],
                        "weight": [w for _, _, w in events]}) == 5
    rec.observe({"user": [u for u, _, _ in later], "item": [i for _, i, _ in later],
                 "weight": [w for _, _, w in later]})
    one_call = _rec(ALS64)
    every = events + later
    one_call.observe({"user": [u for u, _, _ in every], "item": [i for _, i, _ in every],
                      "weight": [w for _, _, w in every]})
    for user in (3, NU + 1):
        row = _row_of(user, every)
        entry = rec._state.users[user]
        assert entry.items.tolist() == sorted(row)
        np.testing.assert_array_equal(entry.weights, [row[i] for i in sorted(row)])
        want = _als_reference(ALS64, row)
        np.testing.assert_allclose(entry.vector, want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(one_call._state.users[user].vector, want, rtol=1e-9,
                                   atol=1e-12)
        for k in (1, 5, NI + 4):
            _assert_recall(rec.recommend(user, k=k),
                           *_expected_recall(want, ALS64.item_factors, k, row), f"user {user}")


def test_cg_fold_ins_follow_the_reference_cg_chain_from_the_vector_they_had():
    """ALS with solver="cg" (float32): each call takes cg_steps CG steps from the user's
    current vector (the trained one, then the one the last call left) over the whole row."""
    rec = _rec(ALS32_CG)
    calls = [[(2, 4, 1.0), (2, 4, 1.0)], [(2, 11, 3.0)], [(2, 4, 0.5), (2, 0, 2.0)]]
    vector, done = np.array(ALS32_CG.user_factors[2]), []
    for call in calls:
        rec.observe({"user": [u for u, _, _ in call], "item": [i for _, i, _ in call],
                     "weight": [w for _, _, w in call]})
        done += call
        vector = _als_reference(ALS32_CG, _row_of(2, done), start=vector)
        np.testing.assert_allclose(rec._state.users[2].vector, vector, rtol=2e-4, atol=2e-5)
    row = _row_of(2, done)
    ids, scores = recfuse.topk(rec._state.users[2].vector[None, :], ALS32_CG.item_factors,
                               NI, exclude=sp.csr_matrix(
                                   (np.ones(len(row)), sorted(row), [0, len(row)]),
                                   shape=(1, NI)))
    got = rec.recommend(2, k=NI)
    np.testing.assert_array_equal(got.ids, ids[0])
    np.testing.assert_allclose(got.scores, scores[0], rtol=1e-6)
    # a new user starts from the zero vector
    rec.observe({"user": [NU + 2], "item": [3], "weight": [2.0]})
    want = _als_reference(ALS32_CG, {3: 2.0})
    np.testing.assert_allclose(rec._state.users[NU + 2].vector, want, rtol=2e-4, atol=2e-5)


def test_weight_zero_events_count_as_seen_and_a_user_without_a_positive_is_cold():
    """Weight 0 (linear confidence: c = 1, p = 0): the item is seen (never recommended), the
    row re-solved; a new user whose every event has weight 0 solves to the zero vector and
    gets the popular list less those items."""
    rec = _rec(ALS64)
    order = _popular(TRAIN)
    rec.observe({"user": [NU, NU, 1], "item": [order[0], order[2], 6], "weight": [0.0, 0, 0]})
    entry = rec._state.users[NU]
    assert not entry.vector.any() and not entry.warm
    _assert_popular(rec.recommend(NU, k=7), order, {order[0], order[2]}, 7)
    _assert_popular(rec.recommend(NU, k=7, exclude=[order[1], 10**12]), order,
                    {order[0], order[1], order[2]}, 7)
    row = _row_of(1, [(1, 6, 0.0)])
    want = _als_reference(ALS64, row)
    np.testing.assert_allclose(rec._state.users[1].vector, want, rtol=1e-9, atol=1e-12)
    _assert_recall(rec.recommend(1, k=NI), *_expected_recall(want, ALS64.item_factors, NI, row))
    assert 6 not in rec.recommend(1, k=NI).ids
    # then a positive event: warm, from the whole row (the weight-0 items still seen)
    rec.observe({"user": [NU], "item": [4], "weight": [3.0]})
    row = {order[0]: 0.0, order[2]: 0.0, 4: 3.0}
    want = _als_reference(ALS64, row)
    np.testing.assert_allclose(rec._state.users[NU].vector, want, rtol=1e-9, atol=1e-12)
    _assert_recall(rec.recommend(NU, k=NI), *_expected_recall(want, ALS64.item_factors, NI, row))
    assert rec.info()["observed_users"] == 2


def test_raw_confidence_takes_negative_weights_as_confidence_without_preference():
    """confidence="raw": c = |r|, p = [r > 0]; negative weights are taken (no linear check),
    summed with positive ones per item; the item is seen either way."""
    rec = _rec(ALS_RAW)
    rec.observe({"user": [4, 4, 4, 4], "item": [1, 9, 9, 12], "weight": [-3.0, 2.0, 3.0, -1.5]})
    row = _row_of(4, [(4, 1, -3.0), (4, 9, 5.0), (4, 12, -1.5)])
    want = _als_reference(ALS_RAW, row)
    np.testing.assert_allclose(rec._state.users[4].vector, want, rtol=1e-9, atol=1e-12)
    _assert_recall(rec.recommend(4, k=NI), *_expected_recall(want, ALS_RAW.item_factors, NI, row))


# ---------------------------------------------------------------------- SGD fold-ins


def _sgd_reference(model, vector, offset, item, rating, times, steps, n_items=NI):
    """``steps`` passes over ``times`` equal events (item, rating) from (vector, offset):
    Funk SVD's update of the user with the items fixed, the model's rates of the user terms
    (lr_pu, reg_pu for the vector; lr_bu, reg_bu for the bias, each lr and reg when not
    given); the user bias (offset - mu) learns when the model is biased."""
    fitted = model._fitted
    lr_pu, lr_bu = (model.rates.get(name) or model.lr for name in ("lr_pu", "lr_bu"))
    reg_pu, reg_bu = (model.reg if model.rates.get(name) is None else model.rates[name]
                      for name in ("reg_pu", "reg_bu"))
    q = np.asarray(fitted.item_factors[item], np.float64)
    mu = float(fitted.global_mean)
    b = float(fitted.item_bias[item]) if fitted.biased else 0.0
    p = np.array(vector, np.float64)
    if not fitted.biased:
        offset = 0.0
    for _ in range(steps * times):
        error = rating - (offset + p @ q + b)
        if fitted.biased:
            offset += lr_bu * (error - reg_bu * (offset - mu))
        p = p + lr_pu * (error * q - reg_pu * p)
    return p, offset


def _sgd_start(model, user):
    fitted = model._fitted
    if user < NU:
        offset = float(fitted.global_mean + fitted.user_bias[user]) if fitted.biased else 0.0
        return np.asarray(_user_vectors(fitted)[user], np.float64), offset
    return np.zeros(D), float(fitted.global_mean)


def _sgd_list_check(rec, model, user, vector, offset, seen):
    fitted = model._fitted
    bias = np.asarray(fitted.item_bias, np.float64) if fitted.biased else None
    result = rec.recommend(user, k=NI)
    ids, scores = _expected_recall(vector, fitted.item_factors, NI, seen, offset, bias)
    _assert_recall(result, ids, scores, f"user {user}")


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(model=st.sampled_from(["biased", "unbiased", "svdpp"]),
       calls=st.lists(st.dictionaries(st.sampled_from([0, 3, 7, NU, NU + 1]),
                                      st.tuples(st.integers(0, NI - 2),
                                                st.sampled_from([1.0, 2.5, 5.0]),
                                                st.integers(1, 2)),
                                      min_size=1, max_size=3), min_size=1, max_size=3),
       steps=st.integers(1, 3))
def test_sgd_fold_ins_are_the_documented_sgd_passes(model, calls, steps):
    """SVD / SVD++: each call's events of a user (here one pair, once or twice) take
    sgd_steps SGD passes from the current vector and offset; lists are the reference top-k
    with the offset and item biases, seen and observed items removed."""
    model = {"biased": SVD_BIASED, "unbiased": SVD_UNBIASED, "svdpp": SVDPP}[model]
    rec = _rec(model, sgd_steps=steps)
    state: dict[int, tuple] = {}
    seen = {u: set(RATINGS[1][RATINGS[0] == u].tolist()) if u < NU else set()
            for u in (0, 3, 7, NU, NU + 1)}
    for call in calls:
        users, items, weights = [], [], []
        for user, (item, rating, times) in call.items():
            users += [user] * times
            items += [item] * times
            weights += [rating] * times
            start = state.get(user) or _sgd_start(model, user)
            state[user] = _sgd_reference(model, *start, item, rating, times, steps)
            seen[user].add(item)
        assert rec.observe({"user": users, "item": items, "weight": weights}) == len(users)
    for user, (vector, offset) in state.items():
        entry = rec._state.users[user]
        np.testing.assert_allclose(entry.vector, vector, rtol=1e-7, atol=1e-10)
        assert entry.offset == pytest.approx(offset, rel=1e-9, abs=1e-12)
        _sgd_list_check(rec, model, user, vector, offset, seen[user])


def test_rating_models_refuse_ratings_outside_their_scale_with_nothing_applied():
    for model in (SVD_BIASED, EXPLICIT):
        rec = _rec(model)
        before = _snapshot(rec, PROBE_USERS)
        for weight in (0.0, 5.5, -1.0):
            with pytest.raises(ValueError, match=r"weights are ratings .* rating_scale \[1.0, "
                                                 r"5.0\]"):
                rec.observe({"user": [1, 2], "item": [3, 4], "weight": [3.0, weight]})
        _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))


def test_bpr_takes_positive_events_only_and_serves_them_as_seen():
    bpr = recfuse.BPR(factors=D, iterations=5, random_state=0).fit(TRAIN.astype(np.float32))
    rec = _rec(bpr)
    before = _snapshot(rec, PROBE_USERS)
    for weight in (0.0, -1.0):
        with pytest.raises(ValueError, match="weights must be > 0 for BPR"):
            rec.observe({"user": [1, 1], "item": [3, 4], "weight": [1.0, weight]})
    _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
    assert rec.observe({"user": [1, 1, NU], "item": [3, 3, 5], "weight": [1.0, 1e300, 2]}) == 3
    for user, items in ((1, {3}), (NU, {5})):
        entry = rec._state.users[user]
        assert np.isfinite(entry.vector).all()
        got = rec.recommend(user, k=NI)
        assert not (set(got.ids.tolist()) & (items | set(TRAIN[user].indices.tolist()
                                                         if user < NU else ())))


# ---------------------------------------------------------------------- cold users


def test_cold_lists_follow_the_documented_popular_order_for_each_model_kind():
    """Most positive training entries for ALS and BPR (stored zeros do not count, a repeated
    pair once), most rated pairs for rating models, ties by the smaller id; the user's
    training row and observed items left out; added items never."""
    # a non-canonical CSR: user 0 holds item 2 twice (one pair), stored zeros on item 5
    indptr = [0, 3, 5, 6, 7]
    indices = [2, 2, 1, 5, 3, 5, 1]
    data = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 1.0]
    seen = sp.csr_matrix((np.array(data), indices, indptr), shape=(4, 7))
    order = _popular(seen, positive=True)
    assert order[:4] == [1, 2, 3, 0]  # item 5's two stored zeros: seen, not liked
    for model in (recfuse.ALS(factors=2, iterations=2, random_state=0).fit(seen.copy()),
                  recfuse.BPR(factors=2, iterations=2, random_state=0).fit(seen.copy())):
        rec = Recommender(model, k=7, max_new_items=3, num_threads=1)
        rec.observe({"user": [2, 9], "item": [8, 8]})  # an added item
        _assert_popular(rec.recommend(100), order, set(), 7)
        _assert_popular(rec.recommend(100, k=2), order, set(), 2)
        if isinstance(model, recfuse.ALS):  # observed, still cold: its items left out
            rec.observe({"user": [50, 50], "item": [1, 8], "weight": [0.0, 0.0]})
            _assert_popular(rec.recommend(50), order, {1}, 7)
    svd = SVD_BIASED
    users, items, _ = RATINGS
    train = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(NU, NI))
    for model in (svd, EXPLICIT):
        rec = _rec(model, k=NI)
        _assert_popular(rec.recommend(10**6), _popular(train), set(), NI)


# ---------------------------------------------------------------------- refused calls


@pytest.mark.parametrize("bad, error, message", [
    ({"weight": [1.0, np.nan]}, ValueError, r"events weight must be finite"),
    ({"weight": [1.0, np.inf]}, ValueError, r"events weight must be finite"),
    ({"weight": [1.0, -np.inf]}, ValueError, r"events weight must be finite"),
    ({"weight": [1.0, -0.5]}, ValueError, r"weights must be >= 0 for this ALS model"),
    ({"weight": [1.0, 1e200]}, ValueError, r"summed weight of an item would reach"),
    ({"weight": ["1", "2"]}, TypeError, r"events weight must be real numbers"),
    ({"weight": [True, False]}, TypeError, r"events weight must be real numbers"),
    ({"weight": [1.0, None]}, TypeError, r"events weight must be real numbers"),
    ({"weight": [1.0]}, ValueError, r"events weight must have one value per event \(2\)"),
    ({"item": [3, NI + NEW]}, ValueError, r"item id 22 is beyond the items that may be added"),
    ({"item": [3, -1]}, ValueError, r"events item must be >= 0"),
    ({"item": [3, 2.0]}, TypeError, r"events item must hold integers"),
    ({"user": [1, -4]}, ValueError, r"events user must be >= 0"),
    ({"user": [1, 2**31]}, ValueError, r"events user must be < 2147483647"),
    ({"user": [1]}, ValueError, r"events user and item must have the same length"),
    ({"call": [3, 2]}, ValueError, r"events calls must not decrease"),
    ({"calls": [0, 0]}, ValueError, r"events has unknown fields \['calls'\]"),
])
def test_a_batch_mixing_valid_and_invalid_rows_changes_nothing(bad, error, message):
    """'All are checked first: on any error nothing is applied' (vectors, added items,
    lists, the log, counts); the message names the field; and the refused call uses up no
    call number."""
    rec = _rec(ALS64)
    rec.observe({"user": [0, NU], "item": [1, NI]})  # some state to keep
    before = _snapshot(rec, PROBE_USERS)
    events = {"user": [1, 2], "item": [3, 4], "weight": [1.0, 2.0]}
    events.update(bad)
    with pytest.raises(error, match=message):
        rec.observe(events)
    _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
    rec.observe({"user": [5], "item": [6]})
    assert rec.pending_events().calls.tolist() == [0, 0, 1]


def test_unknown_items_under_reject_and_the_max_new_items_boundary():
    rec = _rec(ALS64, unknown_items="reject")
    before = _snapshot(rec, PROBE_USERS)
    with pytest.raises(ValueError, match=r"unknown item ids \[16\] .*unknown_items='reject'"):
        rec.observe({"user": [1, 2], "item": [3, NI]})
    _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
    rec.unknown_items = "add"
    assert rec.observe({"user": [1], "item": [NI + NEW - 1]}) == 1  # the last id allowed
    assert rec.info()["added_items"] == 1
    before = _snapshot(rec, PROBE_USERS)
    with pytest.raises(ValueError, match=r"item id 22 is beyond .* \(< 22: n_items \+ "
                                         r"max_new_items\)"):
        rec.observe({"user": [2, 2], "item": [NI, NI + NEW]})
    _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
    rec.max_new_items = 0  # an item added before stays served and takes events
    assert rec.observe({"user": [3], "item": [NI + NEW - 1]}) == 1
    with pytest.raises(ValueError, match=r"beyond the items that may be added \(< 16"):
        rec.observe({"user": [3], "item": [NI]})
    rec.unknown_items = "reject"  # no longer unknown: taken
    assert rec.observe({"user": [4], "item": [NI + NEW - 1]}) == 1
    assert rec.info()["added_items"] == 1 and rec.pending_events().users.size == 3


# ---------------------------------------------------------------------- lists


def test_k_beyond_the_catalogue_and_excludes_of_unknown_ids():
    """k above every item (added ones too) lists each qualifying item once and pads with
    -1 / -inf / ""; exclude ids that no item has (past the added ones, near int64's end)
    change nothing; batches with a user twice answer each row as recommend does."""
    rec = _rec(ALS64, new_item_users=1)
    rec.observe({"user": [1, 1, NU], "item": [NI + 2, 5, NI + 4], "weight": [2.0, 1.0, 1.0]})
    table = np.zeros((NI + NEW, D))
    table[:NI] = ALS64.item_factors
    added = rec._state.new_items
    for item in (NI + 2, NI + 4):
        table[item] = added.vectors(np.array([item]))[0]
    mask = np.r_[np.ones(NI, bool), np.zeros(NEW, bool)]
    mask[[NI + 2, NI + 4]] = True
    big = NI + NEW + 40
    for user in (1, 2, NU):
        entry = rec._state.users.get(user)
        vector = ALS64.user_factors[user] if entry is None else entry.vector
        seen = set(TRAIN[user].indices.tolist()) if entry is None else set(entry.items.tolist())
        ids, scores = _expected_recall(vector, table, big, seen, mask=mask)
        if not np.asarray(vector).any():
            continue
        _assert_recall(rec.recommend(user, k=big), ids, scores, f"user {user}")
        unknown = [NI + 3, NI + NEW + 5, 2**62, 2**63 - 1]
        _assert_recall(rec.recommend(user, k=big, exclude=unknown), ids, scores)
        ids2, scores2 = _expected_recall(vector, table, big, seen | {NI + 2, 0}, mask=mask)
        _assert_recall(rec.recommend(user, k=big, exclude=[NI + 2, 0, 2**62]), ids2, scores2)
    cold = rec.recommend(10**6, k=big, exclude=[2**62, 3])
    _assert_popular(cold, _popular(TRAIN), {3}, big)
    users = [1, NU, 1, 10**6, 10**6, 2]
    batch = rec.recommend_batch(users, k=NI + 3)
    for row, user in enumerate(users):
        single = rec.recommend(user, k=NI + 3)
        np.testing.assert_array_equal(batch.ids[row], single.ids)
        np.testing.assert_array_equal(batch.scores[row], single.scores)
        np.testing.assert_array_equal(batch.stages[row], single.stages)


@pytest.mark.parametrize("candidates, k", [(4, 3), (10, 6), (40, 30), (3, 12)])
def test_caps_and_deny_over_observed_users_and_added_items(candidates, k):
    """Rerank with category caps and deny over observed users and added items: the list is
    the greedy cap over the reference recall order of max(candidates, k) items (added items
    have no category, a denied added id never shows); cold users: the popular list capped;
    the settings k and candidates assigned while serving are what the next call reads."""
    cats = np.arange(NI) % 3
    rules = recfuse.Rerank(item_categories=cats, category_cap=2, deny=[1, NI + 2])
    rec = _rec(ALS64, candidates=1, k=1, rerank=rules, new_item_users=1)
    rec.candidates, rec.k = candidates, k  # assigned while it serves
    rec.observe({"user": [1, 1, 2, NU, 3], "item": [NI + 1, 4, NI + 3, 5, NI + 2],
                 "weight": [2.0, 1.0, 3.0, 1.0, 1.0]})
    table = np.zeros((NI + NEW, D))
    table[:NI] = ALS64.item_factors
    mask = np.r_[np.ones(NI, bool), np.zeros(NEW, bool)]
    for item in (NI + 1, NI + 2, NI + 3):
        table[item] = rec._state.new_items.vectors(np.array([item]))[0]
        mask[item] = True
    mask[[1, NI + 2]] = False
    for user in (0, 1, 2, 3, NU, 10**6):
        entry = rec._state.users.get(user)
        if entry is None:
            vector = ALS64.user_factors[user] if user < NU else np.zeros(D)
            seen = set(TRAIN[user].indices.tolist()) if user < NU else set()
        else:
            vector, seen = entry.vector, set(entry.items.tolist())
        if np.asarray(vector).any():
            ids, _ = _expected_recall(vector, table, max(candidates, k), seen, mask=mask)
            order = ids[ids >= 0].tolist()
        else:
            order = [i for i in _popular(TRAIN) if i not in seen and i != 1]
        used: dict[int, int] = {}
        want = []
        for item in order:
            category = cats[item] if item < NI else -1
            if category >= 0:
                if used.get(category, 0) >= 2:
                    continue
                used[category] = used.get(category, 0) + 1
            want.append(item)
            if len(want) == k:
                break
        got = rec.recommend(user)
        assert got.ids.shape == (k,)
        assert got.ids[got.ids >= 0].tolist() == want, f"user {user}"


# ---------------------------------------------------------------------- swap_model


def _other_als(n_users, n_items, factors, seed):
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < 0.3) * rng.integers(1, 4, (n_users, n_items))
    return recfuse.ALS(factors=factors, iterations=3, regularization=0.1, alpha=2.0,
                       solver="cholesky", dtype=np.float64, random_state=0).fit(
        sp.csr_matrix(dense.astype(np.float64)))


@pytest.mark.parametrize("shape", [(12, 10, 4), (40, 30, 2), (NU, NI, D)])
def test_a_swap_to_a_model_of_other_sizes_replays_as_a_fresh_recommender_observes(shape):
    """swap_model(other, replay=True) serves what a new Recommender of ``other`` serves
    after observing pending_events(): users beyond its users are new, items beyond its items
    added (within max_new_items of its item count) or left in the log; the log stays."""
    other = _other_als(*shape, seed=3)
    rec = _rec(ALS64)
    rec.observe({"user": [1, 20, NU + 2], "item": [2, 14, NI + 1], "weight": [1.0, 2.0, 3.0]})
    rec.observe({"user": [1, 11], "item": [NI + 1, 9]})
    rec.observe({"user": [5], "item": [NI + 5]})
    log = rec.pending_events()
    assert rec.swap_model(other) == 2
    fresh = _rec(other)
    limit = other.item_factors.shape[0] + NEW
    keep = log.items < limit
    fresh.observe(Events(log.users[keep], log.items[keep], log.weights[keep], log.calls[keep]))
    assert set(rec._state.users) == set(fresh._state.users)
    for user, entry in fresh._state.users.items():
        np.testing.assert_allclose(rec._state.users[user].vector, entry.vector, rtol=1e-9,
                                   atol=1e-12)
    info, want = rec.info(), fresh.info()
    for key in ("users", "items", "factors", "observed_users", "added_items"):
        assert info[key] == want[key], key
    assert info["version"] == 2 and info["pending_events"] == log.users.size
    for user in (1, 11, 20, NU + 2, 5, 0, 10**6):
        got, expected = rec.recommend(user, k=9), fresh.recommend(user, k=9)
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_allclose(got.scores, expected.scores, rtol=1e-6)
        assert got.version == 2
    for x, y in zip(rec.pending_events(), log):
        np.testing.assert_array_equal(x, y)


def test_a_swap_without_replay_serves_the_plain_model_and_keeps_the_log():
    rec = _rec(ALS64)
    rec.observe({"user": [1, NU], "item": [NI, 4]})
    assert rec.swap_model(ALS64, replay=False) == 2
    assert rec.info()["observed_users"] == 0 and rec.info()["added_items"] == 0
    assert rec.pending_events().users.tolist() == [1, NU]
    ids, _ = ALS64.recommend(1, k=5)
    np.testing.assert_array_equal(rec.recommend(1).ids, ids)
    assert rec.recommend(NU).stages[0] == "popular"
    # the next swap with replay folds the log in
    assert rec.swap_model(ALS64) == 3 and rec.info()["observed_users"] == 2


def test_a_swap_whose_replay_is_refused_keeps_the_old_model_and_log():
    """ALS events of weight 0 are not BPR positives: the replay fails, nothing changes."""
    bpr = recfuse.BPR(factors=D, iterations=2, random_state=0).fit(TRAIN.astype(np.float32))
    rec = _rec(ALS64)
    rec.observe({"user": [1, 2], "item": [3, NI], "weight": [0.0, 1.0]})
    before = _snapshot(rec, PROBE_USERS)
    with pytest.raises(ValueError, match="weights must be > 0 for BPR"):
        rec.swap_model(bpr)
    _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
    assert rec.swap_model(ALS64) == 2  # no version used up by the failed swap


# ---------------------------------------------------------------------- info()


def test_info_counts_follow_observe_refusals_clears_and_swaps():
    rec = _rec(ALS64, max_pending_events=4)
    info = rec.info()
    assert (info["observed_users"], info["added_items"], info["pending_events"],
            info["dropped_events"]) == (0, 0, 0, 0)
    rec.observe({"user": [1, 1, NU], "item": [2, NI, NI]})
    with pytest.raises(ValueError):
        rec.observe({"user": [3, 4], "item": [NI + 1, NI + NEW]})
    info = rec.info()
    assert (info["observed_users"], info["added_items"], info["pending_events"],
            info["dropped_events"]) == (2, 1, 3, 0)
    rec.observe({"user": [3, 4], "item": [NI + 1, 5]})
    info = rec.info()
    assert (info["observed_users"], info["added_items"], info["pending_events"],
            info["dropped_events"]) == (4, 2, 4, 1)
    assert rec.pending_events(clear=True).users.tolist() == [1, NU, 3, 4]
    assert rec.info()["pending_events"] == 0 and rec.info()["observed_users"] == 4
    rec.observe({"user": [6], "item": [7]})
    rec.swap_model(ALS64)  # replays the one event left in the log
    info = rec.info()
    assert (info["version"], info["observed_users"], info["added_items"],
            info["pending_events"], info["dropped_events"]) == (2, 1, 0, 1, 1)


# ---------------------------------------------------------------------- property


_EVENT = st.tuples(st.sampled_from([0, 1, 2, 5, NU - 1, NU, NU + 1]), st.integers(0, NI - 1),
                   st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0]))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(calls=st.lists(st.lists(_EVENT, min_size=1, max_size=6), min_size=1, max_size=5),
       k=st.sampled_from([1, 4, NI + 2]))
def test_served_state_after_observe_calls_is_the_from_scratch_solve(calls, k):
    """ALS (Cholesky, float64): after any sequence of observe calls on the model's items,
    each observed user's vector is the reference solve of its whole row, whatever the calls;
    each list is the reference top-k (or, with a zero vector, the popular list) less its
    row; the log holds the events in order, one call number per call; info counts them."""
    rec = _rec(ALS64)
    for call in calls:
        assert rec.observe({"user": [u for u, _, _ in call], "item": [i for _, i, _ in call],
                            "weight": [w for _, _, w in call]}) == len(call)
    events = [event for call in calls for event in call]
    observed = {u for u, _, _ in events}
    assert set(rec._state.users) == observed
    order = _popular(TRAIN)
    for user in sorted(observed | {3, NU + 2}):
        row = _row_of(user, events)
        if user in observed:
            want = _als_reference(ALS64, row)
            np.testing.assert_allclose(rec._state.users[user].vector, want, rtol=1e-9,
                                       atol=1e-12)
        else:
            want = ALS64.user_factors[user] if user < NU else np.zeros(D)
        result = rec.recommend(user, k=k)
        if want.any() and (user in observed or TRAIN[user].nnz):
            _assert_recall(result, *_expected_recall(want, ALS64.item_factors, k, row),
                           f"user {user}")
        else:
            _assert_popular(result, order, set(row), k, f"user {user}")
    log = rec.pending_events()
    assert list(zip(log.users.tolist(), log.items.tolist(), log.weights.tolist())) == events
    assert log.calls.tolist() == [n for n, call in enumerate(calls) for _ in call]
    info = rec.info()
    assert (info["observed_users"], info["pending_events"], info["added_items"]) == \
        (len(observed), len(events), 0)


# ---------------------------------------------------------------------- threads


def test_concurrent_observe_and_recommend_answer_one_published_state():
    """Writers observing (adding items too) while readers call recommend and
    recommend_batch: no error, and every answer equals the one a single thread gets after
    some prefix of the observe calls, in the order they were applied (a batch: one prefix
    for all its rows)."""
    rec = _rec(ALS64, max_new_items=12, new_item_users=2)
    applied = []
    apply = rec._apply

    def recording(state, users, items, weights, *rest):  # called with the writer lock held
        apply(state, users, items, weights, *rest)
        applied.append((users.copy(), items.copy(), weights.copy()))

    rec._apply = recording
    writers = 3
    plans = []
    for w in range(writers):
        rng = np.random.default_rng(50 + w)
        plans.append([{"user": [3 * w + int(rng.integers(0, 3)), NU + w, 3 * w],
                       "item": rng.integers(0, NI + 12, 3).tolist(),
                       "weight": rng.integers(0, 4, 3).astype(float).tolist()}
                      for _ in range(12)])
    probe = np.array([0, 1, 3, 4, 6, 7, NU, NU + 1, NU + 2, 20, 10**6])
    answers, errors = [], []
    done = threading.Event()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            while not done.is_set() or len(answers) < 10:
                if rng.random() < 0.5:
                    row = int(rng.integers(0, probe.size))
                    result = rec.recommend(int(probe[row]))
                    answers.append(([row], result.ids[None, :].copy()))
                else:
                    answers.append((list(range(probe.size)), rec.recommend_batch(probe).ids))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    def writer(plan):
        try:
            for call in plan:
                rec.observe(call)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(2)]
    threads += [threading.Thread(target=writer, args=(plan,)) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads[2:]:
        thread.join(timeout=120)
    done.set()
    for thread in threads[:2]:
        thread.join(timeout=120)
    assert not errors, errors
    assert len(applied) == writers * 12
    sequential = _rec(ALS64, max_new_items=12, new_item_users=2)
    states = [sequential.recommend_batch(probe).ids]
    for users, items, weights in applied:
        sequential.observe({"user": users, "item": items, "weight": weights})
        states.append(sequential.recommend_batch(probe).ids)
    for rows, ids in answers:
        assert any(np.array_equal(state[rows], ids) for state in states), (rows, ids)
    for user, entry in sequential._state.users.items():
        np.testing.assert_array_equal(rec._state.users[user].vector, entry.vector)
    assert rec.info() == sequential.info()


# ---------------------------------------------------------------------- bugs


@pytest.mark.parametrize("kind", ["als", "explicit"])
def test_a_replay_refused_by_a_later_calls_weights_applies_nothing(kind):
    """observe's docstring: "The whole replay's weights and item ids are checked first, as
    above" (above: the ALS summed-weight bound, the float32 ExplicitALS ratings bound; "on
    any error nothing is applied"). A replay whose later call breaks a bound applied and
    logged the calls before it; observing the same events again after fixing the bad call
    then applies those twice."""
    if kind == "als":  # float32: each weight is under 1.84e19, their sum is not
        model = recfuse.ALS(factors=D, iterations=2, random_state=0).fit(
            TRAIN.astype(np.float32))
        events = Events(np.array([0, 1, 1]), np.array([NI, 2, 2]), np.array([1.0, 1e19, 1e19]),
                        np.array([0, 1, 1]))
        message = r"summed weight of an item would reach"
    else:  # float32 ExplicitALS with a wide scale: 400 ratings of 1e18 exceed float32
        model = recfuse.ExplicitALS(factors=D, iterations=2, random_state=0).fit(
            *RATINGS, rating_scale=(1, 1e18))
        n = 400
        events = Events(np.r_[0, np.full(n, 1)], np.r_[NI, np.arange(n) % NI],
                        np.r_[3.0, np.full(n, 1e18)], np.r_[0, np.ones(n, np.int64)])
        message = r"ratings are too large for dtype=float32"
    rec = _rec(model, new_item_users=1)
    with pytest.raises(ValueError, match=message):
        rec.observe(events._replace(calls=None))  # one call: refused whole
    assert rec.pending_events().users.size == 0 and not rec._state.users
    with pytest.raises(ValueError, match=message):
        rec.observe(events)  # the same events as two logged calls
    info = rec.info()
    assert (info["observed_users"], info["added_items"], info["pending_events"]) == (0, 0, 0)
    assert not rec._state.users and not rec._state.new_item_users


class _ChangingSgd(Recommender):
    """A Recommender whose sgd_steps / sgd_lr read 1 / 0.01 the first time and 40 / 0.2
    after: what a concurrent assignment between two reads of one call does."""

    setting = "sgd_steps"
    reads = 0


def _changing(self):
    type(self).reads += 1
    first, later = {"sgd_steps": (1, 40), "sgd_lr": (0.01, 0.2)}[type(self).setting]
    return first if type(self).reads == 1 else later


@pytest.mark.parametrize("setting", ["sgd_steps", "sgd_lr"])
def test_one_observe_call_reads_sgd_steps_and_sgd_lr_once(setting):
    """The class docstring: "The settings from candidates to max_pending_events may be
    assigned while the Recommender serves (... each call reads each setting once)". An
    assignment landing during one observe call of two users must give both users the old
    setting or both the new one."""
    cls = type("Changing", (_ChangingSgd,), {"setting": setting, "reads": 0})
    setattr(cls, setting, property(_changing, lambda self, value: None))
    rec = cls(SVD_BIASED, k=5, num_threads=1)
    cls.reads = 0
    events = {"user": [1, 2], "item": [3, 3], "weight": [5.0, 5.0]}
    rec.observe(events)
    outcomes = []
    for value in {"sgd_steps": (1, 40), "sgd_lr": (0.01, 0.2)}[setting]:
        plain = Recommender(SVD_BIASED, k=5, num_threads=1, **{setting: value})
        plain.observe(events)
        outcomes.append(all(np.allclose(rec._state.users[u].vector,
                                        plain._state.users[u].vector) for u in (1, 2)))
    assert any(outcomes), "users 1 and 2 were folded in under different settings"


def test_info_counts_follow_a_lowered_max_pending_events_at_once():
    """max_pending_events: "the event log keeps the newest this-many events" (and
    pending_events() honours a lowered bound at once); info()'s pending_events and
    dropped_events said 3 and 0 where pending_events() then returned one event and counted
    two dropped."""
    rec = _rec(ALS64)
    rec.observe({"user": [1, 2, 3], "item": [4, 5, 6]})
    rec.max_pending_events = 1
    info = rec.info()
    assert (info["pending_events"], info["dropped_events"]) == (1, 2)
    assert rec.dropped_events == 2


@pytest.mark.parametrize("dtype, weight", [(np.float32, 1e19), (np.float64, 1e20),
                                           (np.float64, 1e100)])
def test_an_added_als_items_weight_within_the_bound_is_taken_or_refused_clearly(dtype, weight):
    """ALS weights up to sqrt(dtype max) are documented as taken (1.8e19 for float32,
    1.3e154 for float64), and "a fold-in that overflows anyway ... is refused the same way"
    (a ValueError saying nothing was applied). The same weight on a model item is taken
    (test_serving.py); on a new item, np.linalg.solve raised LinAlgError('Singular matrix'),
    a message that names neither the weight nor the item. Either outcome below is right."""
    model = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=1.0, dtype=dtype,
                        random_state=0).fit(TRAIN.astype(dtype))
    rec = _rec(model, new_item_users=1)
    before = _snapshot(rec, PROBE_USERS)
    try:
        taken = rec.observe({"user": [0], "item": [NI], "weight": [weight]})
    except np.linalg.LinAlgError:
        raise
    except ValueError as error:  # refused after a fold-in, or by the cg solver's bound
        assert ("nothing was applied" in str(error) and "weight" in str(error)) or \
            "the cg solver's steps multiply three confidences" in str(error)
        _assert_same_snapshot(before, _snapshot(rec, PROBE_USERS))
        return
    assert taken == 1 and rec.info()["added_items"] == 1
    assert np.isfinite(rec._state.new_items.vectors(np.array([NI]))).all()
    assert np.isfinite(rec.recommend_batch(np.arange(NU)).scores[:, 0]).all()


def test_the_same_weights_on_a_model_item_are_taken():
    """The regression beside the bug above: the bound holds for model items (the cholesky
    solver's; the cg solver's is the cube root of the dtype's largest value)."""
    for solver, dtype, weight in (("cholesky", np.float32, 1e19), ("cg", np.float32, 6e12),
                                  ("cholesky", np.float64, 1e100), ("cg", np.float64, 1e100)):
        model = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=1.0,
                            solver=solver, dtype=dtype, random_state=0).fit(TRAIN.astype(dtype))
        rec = _rec(model)
        before = rec._state.users.get(0)
        try:
            assert rec.observe({"user": [0], "item": [2], "weight": [weight]}) == 1
        except ValueError as error:  # "a fold-in that overflows anyway is refused"
            assert "nothing was applied" in str(error), (solver, dtype, error)
            assert rec._state.users.get(0) is before
            continue
        assert np.isfinite(rec._state.users[0].vector).all()
    cg = _rec(recfuse.ALS(factors=D, iterations=3, random_state=0).fit(TRAIN))
    with pytest.raises(ValueError, match=r"beyond the 6.98e\+12 a float32 ALS model takes "
                                         r"\(the cg solver's steps multiply three"):
        cg.observe({"user": [0], "item": [2], "weight": [1e13]})


def test_bpr_fold_ins_draw_fresh_negatives_in_each_call(monkeypatch):
    """BPR's fold-in: "the pairwise loss against uniformly drawn unseen items of the model".
    A user observed one event per call (the real-time case) was paired with the same
    negative item in every call (the first draw of default_rng(user)) until that item was
    seen, pushing that one item down call after call; with uniform draws, ten calls over
    ~14 unseen items all drawing one item has probability ~1e-10."""
    from recfuse import serving

    bpr = recfuse.BPR(factors=D, iterations=5, random_state=0).fit(TRAIN.astype(np.float32))
    draws: list[int] = []
    unseen = serving._unseen_item

    def recording(rng, n_items, seen, tries=100):
        draws.append(unseen(rng, n_items, seen, tries))
        return draws[-1]

    monkeypatch.setattr(serving, "_unseen_item", recording)
    rec = _rec(bpr, sgd_steps=1)
    user = NU + 3  # a new user: nothing seen but its events
    for item in range(10):
        rec.observe({"user": [user], "item": [item]})
    assert len(draws) == 10
    assert len(set(draws)) > 1, f"every call drew negative {draws[0]}"


def test_an_svd_fold_in_takes_the_user_terms_own_rates():
    """SVD's user fold-in used lr and reg for the vector and the bias alike, ignoring
    lr_pu / reg_pu / lr_bu / reg_bu (an added item's solve used reg_qi / reg_bi)."""
    users, items, ratings = RATINGS
    model = recfuse.SVD(factors=D, epochs=5, random_state=0, lr_pu=0.02, reg_pu=0.3,
                        lr_bu=0.001, reg_bu=0.0, dtype=np.float64).fit(users, items, ratings)
    rec = _rec(model, sgd_steps=2)
    start = _sgd_start(model, 3)
    vector, offset = _sgd_reference(model, *start, 5, 4.0, 1, 2)
    rec.observe({"user": [3], "item": [5], "weight": [4.0]})
    entry = rec._state.users[3]
    np.testing.assert_allclose(entry.vector, vector, rtol=1e-7, atol=1e-10)
    assert entry.offset == pytest.approx(offset, rel=1e-9, abs=1e-12)
