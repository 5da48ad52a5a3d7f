"""Review hunt over the last two days' changes to python/recfuse (b60d85b..HEAD): fixes made
after earlier hunts, probed for what they missed in sibling paths.

The contract used here, from the docstrings:

* ``EstimatorParams._check_settings`` (models/_common.py): "every fit calls it first ... since
  an attribute assigned by hand (``model.regularization = -5``) skips set_params' checks. A
  refused value raises the constructor's error and changes nothing." ``set_params`` says the
  ALS solver's settings take effect at once in fold-ins, so ``update_users`` /
  ``update_items`` (ALS's fold-in fits) read the same settings and must not run on values
  the constructor, ``set_params`` and ``fit`` all refuse.
* ``Recommender.observed_calls``: "The observe calls applied so far, and so the number the
  next one is logged with; a refused call uses up no number". ``observe``: a replay whose
  later group fails "stops the replay there (the groups before it stay applied and logged)".
* ``Events`` / ``observe``: "weight" and "call" hold one value per event; call numbers are
  integers (an array of bools is refused) and users/items must be 1-d.
* ``Recommender`` recall: score ``p_u . q_i + b_i`` (BPR), returned as float32, ordered by the
  returned score descending, ties to the smaller id, seen items, ``exclude`` and the rules'
  allow/deny removed, padded with -1 / -inf.
* ``IdMap.position(v)`` is ``to_internal([v], missing="ignore")[0]`` without the array
  conversion.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse.interactions import IdMap

HYPOTHESIS = settings(max_examples=50, deadline=None, database=None,
                      suppress_health_check=list(HealthCheck))


def _seen(seed: int = 0, users: int = 40, items: int = 30) -> sp.csr_matrix:
    matrix = sp.random(users, items, density=0.2, format="csr", random_state=seed,
                       dtype=np.float32)
    matrix.data = np.ceil(matrix.data * 5).astype(np.float32)  # ratings 1..5
    return matrix


def _als(**settings_) -> recfuse.ALS:
    return recfuse.ALS(factors=4, iterations=3, random_state=0, **settings_).fit(_seen())


# ------------------------------------------------------------ hand-assigned ALS settings

# values the constructor, set_params and fit refuse (each one's own check)
BAD_ALS_SETTINGS = [("regularization", -5.0), ("alpha", -1.0), ("solver", "bogus"),
                    ("cg_steps", 0), ("confidence", "nope")]


@pytest.mark.parametrize("name,value", BAD_ALS_SETTINGS, ids=[n for n, _ in BAD_ALS_SETTINGS])
def test_fit_refuses_hand_assigned_als_settings(name, value):
    # the fix this hunt reviews (8058e86): fit checks the settings as they stand
    als = _als()
    before = als.user_factors.copy()
    setattr(als, name, value)
    with pytest.raises((TypeError, ValueError), match=name):
        als.fit(_seen())
    np.testing.assert_array_equal(als.user_factors, before)


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("name,value", BAD_ALS_SETTINGS, ids=[n for n, _ in BAD_ALS_SETTINGS])
def test_fold_in_refuses_hand_assigned_als_settings(name, value, side):
    als = _als()
    users, items = als.user_factors.copy(), als.item_factors.copy()
    setattr(als, name, value)
    with pytest.raises((TypeError, ValueError), match=name):
        if side == "user":
            als.update_users([0], _seen()[[0]])
        else:
            als.update_items([0], _seen().T.tocsr()[[0]])
    # nothing changed
    np.testing.assert_array_equal(als.user_factors, users)
    np.testing.assert_array_equal(als.item_factors, items)


def test_fold_in_with_valid_settings_still_runs():
    als = _als()
    vectors = als.update_users([0], _seen()[[0]])
    assert vectors.shape == (1, 4) and np.isfinite(vectors).all()
    vectors = als.update_items([0], _seen().T.tocsr()[[0]])
    assert vectors.shape == (1, 4) and np.isfinite(vectors).all()


# ------------------------------------------------------------ observe's call numbers


def _diverging_replay():
    """An SVD Recommender and a two-call replay whose second group diverges: call 0 adds
    item 30 (its first user's event is left out of that user's fold-in, the item then
    solved), so the replay is cut after it; call 1 is an SGD step at sgd_lr = 1e30."""
    svd = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(_seen())
    rec = recfuse.Recommender(svd, k=5, sgd_lr=1e30)
    events = {"user": [0, 1], "item": [30, 3], "weight": [3.0, 4.0], "call": [0, 1]}
    return rec, events


def test_replay_stopping_at_a_later_group_keeps_the_first_applied():
    rec, events = _diverging_replay()
    with pytest.raises(ValueError, match="diverged") as caught:
        rec.observe(events)
    if sys.version_info >= (3, 11):  # the error says the groups before it stay applied
        assert "stay applied and logged" in "\n".join(caught.value.__notes__)
    logged = rec.pending_events()
    assert logged.items.tolist() == [30] and logged.calls.tolist() == [0]
    assert rec.info()["added_items"] == 1


def test_replay_stopping_at_a_later_group_uses_no_number_for_it():
    rec, events = _diverging_replay()
    with pytest.raises(ValueError):
        rec.observe(events)
    assert rec.observed_calls == 1  # call 0 applied, call 1 refused
    rec.sgd_lr = None
    rec.observe({"user": [2], "item": [4], "weight": [4.0]})
    assert rec.pending_events().calls.tolist() == [0, 1]  # no gap


def test_refused_single_call_uses_no_number():
    als = _als()
    rec = recfuse.Recommender(als, k=5)
    rec.observe({"user": [1], "item": [2]})
    with pytest.raises(ValueError):
        rec.observe({"user": [1], "item": [2], "weight": [-1.0]})  # linear: weights >= 0
    assert rec.observed_calls == 1
    rec.observe({"user": [1], "item": [3]})
    assert rec.pending_events().calls.tolist() == [0, 1]


# ------------------------------------------------------------ observe's per-event columns


def test_observe_refuses_a_bool_among_call_numbers():
    rec = recfuse.Recommender(_als(), k=5)
    with pytest.raises(TypeError, match="call"):
        rec.observe({"user": [1, 1], "item": [2, 3], "call": [0, True]})
    assert rec.observed_calls == 0


def test_observe_refuses_bool_call_arrays():
    rec = recfuse.Recommender(_als(), k=5)
    with pytest.raises(TypeError, match="calls"):
        rec.observe({"user": [1, 1], "item": [2, 3], "call": np.array([False, True])})


@pytest.mark.parametrize("column,value", [("weight", [[1.0], [2.0]]), ("call", [[0], [1]])])
def test_observe_refuses_two_dimensional_columns(column, value):
    rec = recfuse.Recommender(_als(), k=5)
    with pytest.raises(ValueError, match=column):
        rec.observe({"user": [1, 2], "item": [2, 3], column: value})
    assert rec.observed_calls == 0 and rec.pending_events().users.size == 0


def test_observe_refuses_two_dimensional_ids():
    rec = recfuse.Recommender(_als(), k=5)
    with pytest.raises(ValueError, match="1-d"):
        rec.observe({"user": [[1], [2]], "item": [[2], [3]]})


# ------------------------------------------------------------ the Recommender's recall order


def _recall_oracle(P, Q, b, seen, user, k, allow, deny, exclude):
    """(ids, float32 scores): exact float64 scores rounded to float32 (the returned scores),
    ordered by them descending, ties to the smaller id."""
    scores = (P[user].astype(np.float64) @ Q.T.astype(np.float64)
              + b.astype(np.float64)).astype(np.float32)
    n = Q.shape[0]
    ok = np.ones(n, dtype=bool)
    ok[seen[user].indices] = False
    ok[[e for e in exclude if e < n]] = False
    if allow is not None:
        allowed = np.zeros(n, dtype=bool)
        allowed[[a for a in allow if a < n]] = True
        ok &= allowed
    if deny is not None:
        ok[[d for d in deny if d < n]] = False
    candidates = np.flatnonzero(ok)
    order = candidates[np.lexsort((candidates, -scores[candidates].astype(np.float64)))][:k]
    ids = np.full(k, -1)
    out = np.full(k, -np.inf, dtype=np.float32)
    ids[:order.size], out[:order.size] = order, scores[order]
    return ids, out


@HYPOTHESIS
@given(st.data())
def test_recall_matches_the_oracle_to_the_last_tie(data):
    seed = data.draw(st.integers(0, 1000), label="seed")
    rng = np.random.default_rng(seed)
    n_users, n_items = data.draw(st.integers(2, 6)), data.draw(st.integers(1, 12))
    d = data.draw(st.integers(1, 3))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    matrix = sp.random(n_users, n_items, density=0.4, format="lil", random_state=seed,
                       dtype=np.float32)
    for row in range(n_users):  # every user has a training row (else: cold, popular list)
        if matrix[row].nnz == 0:
            matrix[row, int(rng.integers(n_items))] = 1.0
    matrix = sp.csr_matrix(matrix)
    matrix.data[:] = 1.0
    bpr = recfuse.BPR(factors=d, iterations=1, random_state=0, dtype=dtype).fit(matrix)
    # small integers: exact scores; with float64 and 2**26-scaled items, scores that round
    # to float32 ties (the fetch-past-the-cut path of a float64 model)
    big = dtype == np.float64 and data.draw(st.booleans(), label="big")
    P = rng.integers(-2, 3, (n_users, d)).astype(dtype)
    P[~P.any(axis=1), 0] = 1  # no zero vector (a zero vector is cold)
    Q = rng.integers(-3, 4, (n_items, d)) * (2**26 if big else 1)
    if big:
        Q = Q + rng.integers(0, 3, (n_items, d))
    Q = Q.astype(dtype)
    b = rng.integers(-2, 3, n_items).astype(dtype)
    bpr.user_factors, bpr.item_factors, bpr.item_bias = P, Q, b
    k = data.draw(st.integers(1, n_items + 2), label="k")
    allow = data.draw(st.none() | st.lists(st.integers(0, n_items + 2), max_size=n_items))
    deny = data.draw(st.none() | st.lists(st.integers(0, n_items + 2), max_size=n_items))
    rules = None if allow is None and deny is None else recfuse.Rerank(allow=allow, deny=deny)
    rec = recfuse.Recommender(bpr, k=k, rerank=rules)
    user = data.draw(st.integers(0, n_users - 1), label="user")
    exclude = data.draw(st.lists(st.integers(0, n_items + 2), max_size=3), label="exclude")
    got = rec.recommend(user, exclude=exclude or None)
    ids, scores = _recall_oracle(P, Q, b, bpr._seen, user, k, allow, deny, exclude)
    assert got.ids.tolist() == ids.tolist()
    np.testing.assert_array_equal(got.scores, scores)
    assert set(got.stages[got.ids >= 0].tolist()) <= {"recall"}
    batch = rec.recommend_batch([user, user], excludes=[exclude or None, exclude or None])
    assert batch.ids.tolist() == [ids.tolist(), ids.tolist()]


# ------------------------------------------------------------ ids across the models


def _fitted_models():
    seen = _seen()
    return {
        "ALS": recfuse.ALS(factors=4, iterations=2, random_state=0).fit(seen),
        "BPR": recfuse.BPR(factors=4, iterations=2, random_state=0).fit(seen),
        "SVD": recfuse.SVD(factors=4, epochs=2, random_state=0).fit(seen),
        "SVDpp": recfuse.SVDpp(factors=4, epochs=2, random_state=0).fit(seen),
        "ExplicitALS": recfuse.ExplicitALS(factors=4, iterations=2, random_state=0).fit(seen),
    }


@pytest.fixture(scope="module")
def models():
    return _fitted_models()


@pytest.mark.parametrize("kind", ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"])
def test_bool_ids_refused_by_every_model(models, kind):
    model = models[kind]
    for call in (lambda: model.recommend(True, k=3), lambda: model.recommend([0, True], k=3),
                 lambda: model.recommend(0, k=3, items=[1, True]),
                 lambda: model.similar_items([1, True], k=3),
                 lambda: model.similar_users(np.True_, k=3)):
        with pytest.raises(TypeError, match="integers"):
            call()


@pytest.mark.parametrize("kind", ["ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"])
def test_unused_user_items_of_the_wrong_width_refused_by_every_model(models, kind):
    model = models[kind]
    wrong = sp.csr_matrix((1, 31), dtype=np.float32)
    with pytest.raises(ValueError, match="30 columns"):
        if kind == "ALS":
            model.recommend(0, wrong, k=3, filter_seen=False)
        else:
            model.recommend(0, k=3, filter_seen=False, user_items=wrong)


# ------------------------------------------------------------ IdMap's fast lookup


@HYPOTHESIS
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=20, unique=True),
       st.one_of(st.integers(-60, 60), st.floats(-60, 60), st.booleans(), st.text(max_size=2),
                 st.integers(2**63, 2**70)))
def test_idmap_position_equals_to_internal(ids, value):
    id_map = IdMap(np.array(ids, dtype=np.int64))
    id_map.to_internal(ids)  # the lookup table built, as a server's first request does
    assert id_map.position(value) == int(id_map.to_internal([value], missing="ignore")[0])
