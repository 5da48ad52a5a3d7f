"""recfuse.Recommender: the chain against a slow reference built from the same parts,
fold-in against a refit of the user, added users and items, bad input, concurrent swaps."""

from __future__ import annotations

import copy
import threading

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import recfuse
from conftest import wait_until
from recfuse import reference
from recfuse.serving import Recommender, Rerank, mmr

N_USERS, N_ITEMS, FACTORS = 120, 90, 6


@pytest.fixture(scope="module")
def seen():
    return sp.random(N_USERS, N_ITEMS, density=0.08, format="csr", random_state=3,
                     dtype=np.float32) * 4


@pytest.fixture(scope="module")
def als(seen):
    return recfuse.ALS(factors=FACTORS, iterations=4, regularization=0.1, solver="cholesky",
                       random_state=0).fit(seen)


@pytest.fixture(scope="module")
def scorer(seen, als):
    ranker = recfuse.MLPRanker(hidden=(12,), epochs=2, random_state=0)
    context = np.random.default_rng(0).standard_normal((N_USERS, 2))
    ranker.fit(seen, np.hstack([als.user_factors, context]), als.item_factors)
    return ranker.to_scorer()


def _mmr_reference(scores, vectors, k, diversity, categories, cap):
    """MMR written out in plain Python (the slow path)."""
    low, high = min(scores), max(scores)
    relevance = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
    unit = [v / np.linalg.norm(v) if np.linalg.norm(v) > 0 else v for v in vectors]
    chosen, used = [], {}
    while len(chosen) < k:
        best, best_value = None, -np.inf
        for i in range(len(scores)):
            if i in chosen or (cap is not None and used.get(categories[i], 0) >= cap):
                continue
            penalty = max((float(unit[i] @ unit[j]) for j in chosen), default=0.0)
            value = diversity * relevance[i] - (1 - diversity) * penalty
            if value > best_value + 1e-12:
                best, best_value = i, value
        if best is None:
            break
        chosen.append(best)
        used[categories[best]] = used.get(categories[best], 0) + 1
    return chosen


def _reference_chain(als, scorer, seen, user, context, k, candidates, rules):
    """recall by reference.topk, MLP by reference.mlp_forward, MMR and caps by hand."""
    mask = np.ones(N_ITEMS, dtype=bool)
    mask[rules.deny] = False
    X, Y = als.user_factors.astype(np.float64), als.item_factors.astype(np.float64)
    ids, _ = reference.topk(X[[user]], Y, candidates, exclude=seen[[user]], mask=mask)
    ids = ids[0][ids[0] >= 0]
    rows = np.hstack([np.repeat(X[[user]], ids.size, 0), np.repeat(context[None], ids.size, 0),
                      Y[ids]])
    scores = reference.mlp_forward(scorer.layers, rows)[:, 0]
    order = np.lexsort((ids, -scores))
    ids, scores = ids[order], scores[order]
    chosen = _mmr_reference(list(scores), list(Y[ids]), k, rules.diversity,
                            list(rules.item_categories[ids]), rules.category_cap)
    return ids[chosen], scores[chosen]


def test_chain_matches_slow_reference(als, scorer, seen):
    categories = np.arange(N_ITEMS) % 4
    rules = Rerank(diversity=0.6, item_categories=categories, category_cap=2,
                   deny=np.array([0, 5, 7]))
    rec = Recommender(als, scorer, candidates=30, k=8, rerank=rules, num_threads=1)
    rng = np.random.default_rng(1)
    users = np.flatnonzero(np.diff(seen.indptr) > 0)[:25]
    contexts = rng.standard_normal((users.size, 2)).astype(np.float32)
    batch = rec.recommend_batch(users, context_features=contexts)
    for row, user in enumerate(users):
        want_ids, want_scores = _reference_chain(als, scorer, seen, user, contexts[row], 8, 30,
                                                 rules)
        single = rec.recommend(int(user), context_features=contexts[row])
        np.testing.assert_array_equal(single.ids, batch.ids[row])
        np.testing.assert_array_equal(batch.ids[row], want_ids)
        np.testing.assert_allclose(batch.scores[row], want_scores, rtol=1e-4, atol=1e-5)
        assert set(batch.stages[row]) <= {"rank", "rerank"}
        assert not set(batch.ids[row].tolist()) & (set(seen[user].indices.tolist()) | {0, 5, 7})
        assert np.bincount(categories[batch.ids[row]]).max() <= 2


def test_recall_only_equals_model_recommend(als, seen):
    rec = Recommender(als, k=7)
    users = np.arange(N_USERS)
    users = users[np.diff(seen.indptr) > 0]
    got = rec.recommend_batch(users)
    want_ids, want_scores = als.recommend(users, k=7)
    np.testing.assert_array_equal(got.ids, want_ids)
    np.testing.assert_allclose(got.scores, want_scores, rtol=1e-6)
    assert (got.stages[got.ids >= 0] == "recall").all() and got.version == 1


def test_cold_start_popular(als, seen):
    rec = Recommender(als, k=5, rerank=Rerank(deny=[int(np.argmax(np.diff(seen.tocsc().indptr)))]))
    counts = np.bincount(seen.indices, minlength=N_ITEMS)
    order = [i for i in np.lexsort((np.arange(N_ITEMS), -counts)) if i not in rec.rerank.deny]
    for user in (N_USERS + 10, 10**6):
        got = rec.recommend(user, exclude=[order[1]])
        assert list(got.ids) == [order[0]] + order[2:6]
        assert (got.stages == "popular").all()


def test_rerank_allows_and_mask_check_their_arguments():
    rules = Rerank(allow=[0, 1, 3], deny=[1])
    assert rules.allows([0, 1, 2, 3]).tolist() == [True, False, False, True]  # a list too
    assert rules.mask(0, 4).tolist() == [1, 0, 0, 1]
    with pytest.raises(TypeError, match="ids must hold item ids"):
        rules.allows(["a"])
    with pytest.raises(TypeError, match="first must be an integer, got bool"):
        rules.mask(True, 2)
    with pytest.raises(ValueError, match="count"):
        rules.mask(0, -1)


def test_popularity_counts_positive_entries_only():
    # item 0: two stored zeros and a dislike; item 1: one like; item 2: two likes. The
    # zeros and the dislike (stored, so "seen") must not make item 0 the most popular
    seen = sp.csr_matrix((np.array([0.0, 0.0, -2.0, 1.0, 3.0, 0.5]),
                          (np.array([0, 1, 2, 0, 1, 2]), np.array([0, 0, 0, 1, 2, 2]))),
                         shape=(4, 3))
    from recfuse.serving import item_popularity, popular_items

    assert item_popularity(seen, 3).tolist() == [0, 1, 2]
    assert popular_items(seen, 3).tolist() == [2, 1, 0]
    seen.data[seen.data < 0] = 0.0  # ALS takes no negative weight: three stored zeros for item 0
    als = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(seen)
    got = Recommender(als, k=3).recommend(3)  # user 3 has no entry: cold
    assert got.ids.tolist() == [2, 1, 0] and (got.stages == "popular").all()


def test_observe_equals_refit_of_the_user(als, seen, tmp_path):
    path = tmp_path / "als.npz"
    als.save(path)
    rec = Recommender(path, k=10)
    user = 4
    events = {"user": [user, user, user], "item": [3, 11, 3], "weight": [1.0, 2.0, 0.5]}
    assert rec.observe(events) == 3
    row = seen[user].toarray()[0].astype(np.float64)
    row[3] += 1.5
    row[11] += 2.0
    R = sp.csr_matrix(row[None, :])
    Y = als.item_factors.astype(np.float64)
    want = reference.als_half_sweep(R, Y, np.zeros((1, FACTORS)), regularization=0.1,
                                    alpha=1.0, solver="cholesky")[0]
    got = rec._state.users[user].vector
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
    refit = recfuse.load(path)
    refit.update_users([user], sp.csr_matrix(R, dtype=np.float32))
    want_ids, want_scores = refit.recommend(user, k=10)
    result = rec.recommend(user)
    np.testing.assert_array_equal(result.ids, want_ids)
    np.testing.assert_allclose(result.scores, want_scores, rtol=1e-4, atol=1e-5)
    assert not {3, 11} & set(result.ids.tolist())
    # a new user: the same solve from an empty row
    newcomer = N_USERS + 5
    assert rec.recommend(newcomer).stages[0] == "popular"
    rec.observe({"user": [newcomer] * 2, "item": [1, 2]})
    R = sp.csr_matrix((np.ones(2), [1, 2], [0, 2]), shape=(1, N_ITEMS))
    want = reference.als_half_sweep(R, Y, np.zeros((1, FACTORS)), regularization=0.1,
                                    solver="cholesky")[0]
    np.testing.assert_allclose(rec._state.users[newcomer].vector, want, rtol=2e-4, atol=2e-5)
    assert rec.recommend(newcomer).stages[0] == "recall"
    events = rec.pending_events()
    assert events.users.tolist() == [user] * 3 + [newcomer] * 2


def test_added_items_and_the_reject_setting(als, seen):
    rec = Recommender(als, k=N_ITEMS + 5, new_item_users=2, max_new_items=10)
    new_item = N_ITEMS + 2
    rec.observe({"user": [1, 2, 3], "item": [new_item] * 3, "weight": [2.0, 0.5, 1.0]})
    np.testing.assert_allclose(_added_vector(rec, new_item),
                               _new_item_solve(als, rec, new_item, {1: 2.0, 2: 0.5}),
                               rtol=2e-4, atol=2e-6)
    assert not rec._state.new_items.has(np.array([N_ITEMS, N_ITEMS + 1])).any()
    other = rec.recommend(10)
    assert new_item in other.ids and N_ITEMS not in other.ids and N_ITEMS + 1 not in other.ids
    np.testing.assert_allclose(other.scores[other.ids == new_item],
                               rec._state.model.user_vectors[10] @ _added_vector(rec, new_item),
                               rtol=1e-5)
    assert new_item not in rec.recommend(1).ids  # seen by user 1
    with pytest.raises(ValueError, match="beyond the items"):
        rec.observe({"user": [1], "item": [N_ITEMS + 10]})
    strict = Recommender(als, unknown_items="reject")
    before = strict.recommend(1)
    with pytest.raises(ValueError, match="unknown item ids"):
        strict.observe({"user": [1, 1], "item": [2, N_ITEMS]})
    assert strict.pending_events().users.size == 0
    np.testing.assert_array_equal(strict.recommend(1).ids, before.ids)


def _added_vector(rec, item):
    """The vector observe gave the added item ``item``."""
    return rec._state.new_items.vectors(np.array([item]))[0]


def _added_bias(rec, item):
    """The bias observe gave the added item ``item``."""
    return rec._state.new_items.biases(np.array([item]))[0]


def _new_item_solve(als, rec, item, weights):
    """The reference's item half-sweep for one added item: its first users' weights, the
    users' table with those users' current vectors (the others as trained)."""
    users = np.array(rec._state.model.user_vectors, dtype=np.float64)
    for user in weights:
        users[user] = rec._state.users[user].vector
    row = sp.csr_matrix((list(weights.values()), list(weights), [0, len(weights)]),
                        shape=(1, users.shape[0]))
    return reference.als_half_sweep(row, users, np.zeros((1, users.shape[1])),
                                    regularization=als.regularization, alpha=als.alpha,
                                    solver="cholesky", confidence=als.confidence)[0]


def test_one_users_event_does_not_put_a_new_item_in_every_list(seen):
    """ALS user vectors are on another scale than item vectors (here ~20x longer): a new
    item's vector made of the mean of its first users' vectors scored above the whole
    catalogue for nearly everyone after one event. The item's own solve scores like an item
    that user alone has, and an item whose users all observe the new one becomes that item."""
    als = recfuse.ALS(factors=FACTORS, iterations=8, regularization=0.05, alpha=5.0,
                      random_state=0).fit(seen)
    rec = Recommender(als, k=5, num_threads=1, new_item_users=N_USERS)
    new_item = N_ITEMS
    rec.observe({"user": [0], "item": [new_item]})
    assert sum(new_item in rec.recommend(u).ids for u in range(1, N_USERS)) <= N_USERS // 10
    np.testing.assert_allclose(_added_vector(rec, new_item),
                               _new_item_solve(als, rec, new_item, {0: 1.0}), rtol=2e-4,
                               atol=2e-6)
    twin = Recommender(als, k=5, num_threads=1, new_item_users=N_USERS)
    item = int(np.argmax(np.diff(seen.tocsc().indptr)))  # the most popular item's users
    owners = seen.tocsc()[:, item].indices  # all observe the new item, with their weights
    twin.observe({"user": owners, "item": [new_item] * owners.size,
                  "weight": seen[owners, item].toarray().ravel()})
    # fitted vectors are a fixed point up to the fit's last half-sweep: close, not equal
    vector, fitted = _added_vector(twin, new_item), als.item_factors[item]
    assert vector @ fitted / np.linalg.norm(vector) / np.linalg.norm(fitted) > 0.99


@pytest.mark.parametrize("kind", ["als", "bpr"])
def test_assigned_factor_tables_of_any_layout_serve_as_the_fitted_ones(als, seen, kind):
    """ALS and BPR keep assigned factor tables as they are: a big-endian one reached the
    weight bound of observe as a dtype it did not know (KeyError)."""
    if kind == "als":
        model = als
    else:
        model = recfuse.BPR(factors=FACTORS, iterations=2, random_state=0).fit(seen)
    events = {"user": np.array([3, 3, N_USERS + 1]), "item": np.array([1, 2, 5])}
    users = np.array([3, 5, N_USERS + 1])
    expected = Recommender(model, k=5)
    expected.observe(events)
    expected = expected.recommend_batch(users)
    for change in (lambda a: a.astype(">f4"), np.asfortranarray, lambda a: a.astype(np.float64)):
        other = copy.deepcopy(model)
        other.user_factors, other.item_factors = (change(model.user_factors),
                                                  change(model.item_factors))
        recommender = Recommender(other, k=5)
        recommender.observe(events)
        got = recommender.recommend_batch(users)
        np.testing.assert_array_equal(got.ids, expected.ids)
        np.testing.assert_array_equal(got.scores, expected.scores)


def test_observe_that_fails_adding_an_item_keeps_no_part_of_it(als, monkeypatch):
    from recfuse import serving

    rec = Recommender(als, new_item_users=1)
    new_item = N_ITEMS + 3
    real = serving.ItemIndex

    def failing(*arguments, **options):  # e.g. out of memory building the added items' index
        raise MemoryError("no room for the index")

    monkeypatch.setattr(serving, "ItemIndex", failing)
    with pytest.raises(MemoryError):
        rec.observe({"user": [7], "item": [new_item]})
    monkeypatch.setattr(serving, "ItemIndex", real)
    assert rec._state.users == {} and rec._state.new_items is None
    assert rec._state.new_item_users == {} and rec.pending_events().users.size == 0
    # the item's first user is the next one observed, and its vector is solved from that user
    rec.observe({"user": [8], "item": [new_item]})
    assert rec._state.new_item_users == {new_item: (8,)} and rec.info()["added_items"] == 1
    np.testing.assert_allclose(_added_vector(rec, new_item),
                               _new_item_solve(als, rec, new_item, {8: 1.0}), rtol=2e-4,
                               atol=2e-6)


def _models_of_every_kind(seen):
    coo = seen.tocoo()
    ratings = (coo.row, coo.col, np.ceil(coo.data + 1))
    return {
        "als": (lambda: recfuse.ALS(factors=FACTORS, iterations=3, random_state=0).fit(seen),
                {"regularization": 1e6}),
        "bpr": (lambda: recfuse.BPR(factors=FACTORS, iterations=5, random_state=0).fit(seen),
                {"lr": 50.0}),
        "svd": (lambda: recfuse.SVD(factors=4, epochs=5, random_state=0).fit(*ratings),
                {"lr": 5.0}),
        "explicit": (lambda: recfuse.ExplicitALS(factors=4, iterations=3,
                                                 random_state=0).fit(*ratings),
                     {"reg": 1e6}),
    }


@pytest.mark.parametrize("kind", ["als", "bpr", "svd", "explicit"])
def test_the_served_model_keeps_the_settings_and_fit_it_was_given(seen, kind):
    """Assigning a setting to the model object after serving it, or refitting it, must not
    reach the served version: its fold-ins use the settings it was served with."""
    make, changes = _models_of_every_kind(seen)[kind]
    events = {"user": [1, 1, 1], "item": [3, 4, 5], "weight": [5.0, 2.0, 4.0]}
    plain = Recommender(make(), k=5)
    plain.observe(events)
    want = plain.recommend(1)
    model = make()
    rec = Recommender(model, k=5)
    if kind in ("als", "bpr"):
        model.fit(sp.random(N_USERS, N_ITEMS, density=0.2, format="csr", random_state=9,
                            dtype=np.float32) * 4)
    else:
        model.fit(np.arange(40) % N_USERS, np.arange(40) % N_ITEMS, np.full(40, 3.0))
    for name, value in changes.items():
        setattr(model, name, value)
    rec.observe(events)
    got = rec.recommend(1)
    np.testing.assert_array_equal(got.ids, want.ids)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)


def test_sgd_models_fold_in(seen):
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=5, random_state=0).fit(coo.row, coo.col,
                                                             np.ceil(coo.data + 1))
    rec = Recommender(svd, k=5)
    user = 0
    want_ids, want_scores = svd.recommend(user, k=5)
    first = rec.recommend(user)
    np.testing.assert_array_equal(first.ids, want_ids)
    np.testing.assert_allclose(first.scores, want_scores, rtol=1e-5)
    item = int(want_ids[-1])
    before = rec._state.users.get(user)
    rec.observe({"user": [user], "item": [item], "weight": [svd.rating_scale[0]]})  # the lowest
    assert item not in rec.recommend(user).ids
    with pytest.raises(ValueError, match=r"ratings for SVD and must lie in its rating_scale"):
        rec.observe({"user": [user], "item": [item], "weight": [9.0]})
    state = rec._state.users[user]
    assert before is None and state.vector @ svd.item_factors[item] + state.offset < \
        svd.user_factors[user] @ svd.item_factors[item] + svd.global_mean + svd.user_bias[user]
    bpr = recfuse.BPR(factors=6, iterations=10, random_state=0).fit(seen)
    rec = Recommender(bpr, k=5)
    np.testing.assert_array_equal(rec.recommend(user).ids, bpr.recommend(user, k=5)[0])
    target = int(np.argsort(bpr.user_factors[user] @ bpr.item_factors.T)[N_ITEMS // 2])
    old = bpr.user_factors[user] @ bpr.item_factors[target]
    rec.observe({"user": [user], "item": [target]})
    assert rec._state.users[user].vector @ bpr.item_factors[target] > old


def _explicit_refit_of_user(model, users, items, ratings, user):
    """What the Recommender's ExplicitALS fold-in must give: the reference half-sweep of the
    user's row (every rating, repeated pairs included) against the fitted items."""
    state = model._fitted
    mine = users == user
    order = np.argsort(items[mine], kind="stable")
    row = sp.csr_matrix((ratings[mine][order], items[mine][order], [0, int(mine.sum())]),
                        shape=(1, state.item_factors.shape[0]))
    start = np.zeros((1, model.factors), dtype=model.dtype)
    X, own, failed = reference.explicit_als_half_sweep(
        row, state.item_factors, start, reg=model.reg, reg_bias=model.reg_bias,
        global_mean=state.global_mean if model.biased else 0.0,
        other_bias=state.item_bias if model.biased else None,
        own_bias=np.zeros(1) if model.biased else None)
    assert failed == 0
    return X[0], (state.global_mean + own[0]) if model.biased else 0.0


@pytest.mark.parametrize("biased", [True, False])
def test_explicit_als_fold_in_is_the_exact_solve_of_the_users_ratings(biased, tmp_path):
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, 40, 900), rng.integers(0, 30, 900)
    ratings = rng.integers(1, 6, 900).astype(np.float64)
    model = recfuse.ExplicitALS(factors=4, iterations=4, biased=biased, dtype=np.float64,
                                random_state=0).fit(users, items, ratings)
    model.save(tmp_path / "explicit.npz")
    kept = [array.copy() for array in model._fitted.ratings]
    for rec in (Recommender(model, k=5), Recommender(tmp_path / "explicit.npz", k=5)):
        for user in (0, 7):
            np.testing.assert_array_equal(rec.recommend(user).ids, model.recommend(user, k=5)[0])
        # a known user re-rates an item twice (two more ratings), a new user rates three items
        events = {"user": [7, 7, 55, 55, 55], "item": [3, 3, 1, 2, 2],
                  "weight": [5.0, 4.0, 2.0, 5.0, 1.0]}
        assert rec.observe(events) == 5
        all_users = np.r_[users, events["user"]]
        all_items = np.r_[items, events["item"]]
        all_ratings = np.r_[ratings, events["weight"]]
        for user in (7, 55):
            vector, offset = _explicit_refit_of_user(model, all_users, all_items, all_ratings,
                                                     user)
            state = rec._state.users[user]
            np.testing.assert_allclose(state.vector, vector, rtol=1e-9, atol=1e-12)
            assert state.offset == pytest.approx(offset, rel=1e-9, abs=1e-12)
        assert rec.recommend(55).stages[0] == "recall"
        assert not set(rec.recommend(55).ids) & {1, 2}
        with pytest.raises(ValueError, match=r"ExplicitALS and must lie in its rating_scale \[1.0, 5.0\]"):
            rec.observe({"user": [7], "item": [4], "weight": [6.0]})
    for before, after in zip(kept, model._fitted.ratings):  # the model's arrays untouched
        np.testing.assert_array_equal(before, after)


def test_explicit_als_observe_refuses_the_float32_ratings_fit_refuses():
    """fit refuses float32 ratings with max|r|² x (most ratings of a user or item) above
    float32's largest value; observe refuses the same ratings (nothing applied), however
    wide the rating_scale, and takes those a refit would take."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 20, 200), rng.integers(0, 15, 200)
    ratings = rng.integers(1, 6, 200).astype(np.float64)
    wide = (-1e30, 1e30)
    model = recfuse.ExplicitALS(factors=3, iterations=2, random_state=0).fit(
        users, items, ratings, rating_scale=wide)
    for big in (1e19, -1e25):
        with pytest.raises(ValueError, match="ratings are too large for dtype=float32"):
            recfuse.ExplicitALS(factors=3, iterations=2).fit(
                np.r_[users, 0], np.r_[items, 0], np.r_[ratings, big], rating_scale=wide)
        rec = Recommender(model, k=5, num_threads=1)
        before = rec.recommend(0)
        with pytest.raises(ValueError, match=r"events weight \(user 3\): ratings are too "
                                             r"large for dtype=float32.*rescale the ratings"):
            rec.observe({"user": [0, 3], "item": [0, 1], "weight": [4.0, big]})
        assert rec.pending_events().users.size == 0 and not rec._state.users
        np.testing.assert_array_equal(rec.recommend(0).ids, before.ids)
    rec = Recommender(model, k=5, num_threads=1)
    assert rec.observe({"user": [0, 99], "item": [0, 1], "weight": [1e17, -1e17]}) == 2
    in64 = recfuse.ExplicitALS(factors=3, iterations=2, dtype=np.float64, random_state=0).fit(
        users, items, ratings, rating_scale=wide)
    assert Recommender(in64, k=5, num_threads=1).observe(
        {"user": [0], "item": [0], "weight": [1e25]}) == 1


@pytest.mark.parametrize("events, error, message", [
    ([1, 2], TypeError, "mapping"),
    ({"user": [1]}, ValueError, "'user' and 'item'"),
    ({"user": [1], "item": [2], "extra": 1}, ValueError, "unknown fields"),
    ({"user": [1.5], "item": [2]}, TypeError, "events user must hold integers, got dtype float64"),
    ({"user": ["a"], "item": [2]}, TypeError, "events user must hold integers, got dtype <U1"),
    ({"user": [1, 2], "item": [2]}, ValueError, "same length"),
    ({"user": [-1], "item": [2]}, ValueError, ">= 0"),
    ({"user": [1], "item": [2], "weight": [np.nan]}, ValueError, "finite"),
    ({"user": [1], "item": [2], "weight": [-1.0]}, ValueError, ">= 0"),
    ({"user": [1], "item": [2], "weight": [1, 2]}, ValueError, "one value per event"),
])
def test_observe_bad_input_changes_nothing(als, events, error, message):
    rec = Recommender(als)
    rec.observe({"user": [1], "item": [2]})
    with pytest.raises(error, match=message):
        rec.observe(events)
    assert rec.pending_events().users.tolist() == [1]
    assert list(rec._state.users) == [1]


def test_recommend_bad_input(als, scorer):
    rec = Recommender(als)
    with pytest.raises(TypeError, match="user must be an integer"):
        rec.recommend("3")
    with pytest.raises(ValueError, match="user must be >= 0"):
        rec.recommend(-1)
    with pytest.raises(ValueError, match="k must be >= 1"):
        rec.recommend(1, k=0)
    with pytest.raises(ValueError, match="takes no context"):
        rec.recommend(1, context_features=[1.0])
    ranked = Recommender(als, scorer)
    with pytest.raises(ValueError, match="context_features are required"):
        ranked.recommend(1)
    with pytest.raises(ValueError, match=r"shape \(1, 2\)"):
        ranked.recommend(1, context_features=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="diversity"):
        Rerank(diversity=1.5)
    with pytest.raises(ValueError, match="go together"):
        Rerank(category_cap=2)
    with pytest.raises(TypeError, match="retriever"):
        Recommender(object())


def test_item_categories_past_int64_are_refused_not_wrapped():
    """A uint64 category past int64 wrapped to a negative one, which means no category:
    its items escaped the cap."""
    with pytest.raises(ValueError, match="item_categories must hold integers within int64"):
        Rerank(item_categories=np.array([2**63, 2**63], dtype=np.uint64), category_cap=1)
    rules = Rerank(item_categories=np.array([2**40, 2**40], dtype=np.uint64), category_cap=1)
    assert rules.item_categories.dtype == np.int64 and (rules.item_categories == 2**40).all()


def test_pending_log_is_bounded_and_clears(als):
    rec = Recommender(als, max_pending_events=5)
    for user in range(4):
        rec.observe({"user": [user, user], "item": [1, 2]})
    events = rec.pending_events()
    assert events.users.tolist() == [1, 2, 2, 3, 3] and rec.dropped_events == 3
    assert rec.pending_events(clear=True).users.size == 5
    assert rec.pending_events().users.size == 0


def test_pending_events_clear_must_be_a_bool(als):
    # read by its truth value before: clear="no" emptied the log
    rec = Recommender(als)
    rec.observe({"user": [1], "item": [2]})
    for flag in ("no", None, 2):
        with pytest.raises(TypeError, match=f"clear must be a bool, got {type(flag).__name__}"):
            rec.pending_events(clear=flag)
    assert rec.pending_events().users.tolist() == [1]


def test_pending_log_keeps_few_arrays_of_its_own(als):
    # one-event observes, the real-time case: the log must not grow one chunk (three small
    # arrays, ~700 bytes) per event up to its bound, nor keep the caller's arrays
    rec = Recommender(als, max_pending_events=1000)
    buffer = np.arange(10_000)  # a caller's reused buffer, observed through views
    for step in range(3000):
        buffer[:2] = (step % N_USERS, step % N_ITEMS)
        rec.observe(recfuse.Events(buffer[0:1], buffer[1:2], np.ones(1)))
    assert len(rec._log) <= 12  # O(log n) chunks
    assert all(part.base is None or part.base is not buffer
               for chunk in rec._log for part in chunk)
    events = rec.pending_events()
    steps = np.arange(2000, 3000)
    assert events.users.tolist() == (steps % N_USERS).tolist()
    assert events.items.tolist() == (steps % N_ITEMS).tolist()
    assert rec.dropped_events == 2000 and rec.info()["pending_events"] == 1000


def test_swap_keeps_old_model_on_failure_and_replays(als, seen, tmp_path):
    good = tmp_path / "good.npz"
    als.save(good)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(good.read_bytes()[:300])
    rec = Recommender(good)
    rec.observe({"user": [2], "item": [40]})
    before = rec.recommend(2)
    with pytest.raises(ValueError, match="not a readable recfuse model"):
        rec.swap_model(corrupt)
    with pytest.raises(FileNotFoundError):
        rec.swap_model(tmp_path / "missing.npz")
    assert rec.version == 1
    np.testing.assert_array_equal(rec.recommend(2).ids, before.ids)
    assert rec.swap_model(good) == 2
    after = rec.recommend(2)  # the pending event was replayed into the new model
    assert after.version == 2 and 40 not in after.ids
    np.testing.assert_array_equal(after.ids, before.ids)


def test_info_names_the_backend_the_recall_runs_on(als, seen):
    """info() (and so /health) says which backend answers: after a load that fell back from
    a backend missing here, that is the only place it shows besides the load's warning."""
    rec = Recommender(als)
    from recfuse._backend import resolve_backend

    assert rec.info()["backend"] == resolve_backend("auto", "topk").NAME  # resolved here
    numpy_model = recfuse.ALS(factors=FACTORS, iterations=2, backend="numpy",
                              random_state=0).fit(seen)
    rec.swap_model(numpy_model, replay=False)
    assert rec.info()["backend"] == "numpy"


def test_swap_that_fails_in_the_replay_changes_nothing(als, seen):
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=2, random_state=0).fit(coo.row, coo.col,
                                                             np.ones(coo.nnz), rating_scale=(1, 5))
    rec = Recommender(als)
    rec.observe({"user": [2], "item": [40], "weight": [9.0]})  # not a rating SVD takes
    before = rec.recommend(2)
    with pytest.raises(ValueError, match="rating_scale"):
        rec.swap_model(svd)
    assert rec.version == 1 and rec.info()["kind"] == "als"
    assert rec.pending_events().weights.tolist() == [9.0]
    np.testing.assert_array_equal(rec.recommend(2).ids, before.ids)
    # the failed swap used up no version: the next one is 2 (+1 per swap)
    assert rec.swap_model(svd, replay=False) == 2 and rec.recommend(2).version == 2


def test_a_swap_renumbers_the_logged_events_for_a_model_of_other_rows(als, seen):
    """replay=function: the log, renumbered, is replayed and becomes the log; a function
    that fails (or a replay that fails after it) leaves the model and the log as they were."""
    rec = Recommender(als)
    rec.observe({"user": [2, 5], "item": [40, 41], "weight": [1.0, 2.0]})
    flipped = N_USERS - 1  # the new model's rows: users in reverse order
    reversed_model = recfuse.ALS(factors=FACTORS, iterations=4, regularization=0.1,
                                 solver="cholesky", random_state=0).fit(seen[::-1])
    seen_by = []

    def renumber(events):
        seen_by.append(events.users.tolist())
        return {"user": flipped - events.users, "item": events.items, "weight": events.weights}

    def fails(events):
        raise ValueError("no such id")

    for bad, error, message in ((fails, ValueError, "no such id"),
                                (lambda events: {"user": events.users}, ValueError,
                                 "'user' and 'item'"),
                                (None, TypeError, "replay must be a bool")):
        with pytest.raises(error, match=message):
            rec.swap_model(reversed_model, replay=bad)
        assert rec.version == 1 and rec.pending_events().users.tolist() == [2, 5]
    assert rec.swap_model(reversed_model, replay=renumber) == 2 and seen_by == [[2, 5]]
    assert rec.pending_events().users.tolist() == [flipped - 2, flipped - 5]
    want = Recommender(reversed_model)
    want.observe({"user": [flipped - 2, flipped - 5], "item": [40, 41], "weight": [1.0, 2.0]})
    for user in (flipped - 2, flipped - 5, 0):
        np.testing.assert_array_equal(rec.recommend(user).ids, want.recommend(user).ids)
    # events the function leaves out (their item gone from the new model) count as dropped
    assert rec.dropped_events == 0
    rec.swap_model(als, replay=lambda events: recfuse.Events(*(a[:1] for a in events)))
    assert rec.dropped_events == 1 and rec.pending_events().users.tolist() == [flipped - 2]
    assert rec.info()["dropped_events"] == 1
    # and when it leaves out every event (ALS failed on the empty replay: IndexError)
    assert rec.swap_model(als, replay=lambda events: recfuse.Events(*(a[:0] for a in events)))
    assert rec.dropped_events == 2 and rec.pending_events().users.size == 0


def test_concurrent_readers_observe_and_swaps_never_mix(als, seen, tmp_path):
    other = recfuse.ALS(factors=FACTORS, iterations=2, regularization=0.1, solver="cholesky",
                        random_state=7).fit(seen)
    paths = [tmp_path / "a.npz", tmp_path / "b.npz"]
    als.save(paths[0])
    other.save(paths[1])
    users = np.arange(20)
    expected = [Recommender(path, k=6, unknown_items="reject").recommend_batch(users).ids
                for path in paths]
    assert (expected[0] != expected[1]).any()
    rec = Recommender(paths[0], k=6, unknown_items="reject")
    errors, answers = [], []
    stop = threading.Event()

    def reader(seed):
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                chosen = rng.choice(users, size=3, replace=False)
                got = rec.recommend_batch(chosen)
                which = (got.version - 1) % 2  # versions alternate a, b, a, ...
                if not (got.ids == expected[which][chosen]).all():
                    errors.append(f"mixed answer at version {got.version}")
                answers.append(got.version)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    def writer():
        try:
            for step in range(6):
                # each version answered before the next (readers may start late when busy)
                if not wait_until(lambda: rec.version in answers):
                    errors.append(f"no answer at version {rec.version}")
                rec.observe({"user": [100 + step], "item": [step]})  # users outside the check
                rec.swap_model(paths[(step + 1) % 2])
            wait_until(lambda: rec.version in answers)
        except Exception as error:  # noqa: BLE001
            errors.append(repr(error))

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
    for thread in threads:
        thread.start()
    writer()
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert rec.version == 7 and set(answers) == set(range(1, 8))


def test_mmr_extremes():
    scores = np.array([3.0, 2.0, 1.0])
    vectors = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]])
    assert mmr(scores, vectors, 3, 1.0).tolist() == [0, 1, 2]
    assert mmr(scores, vectors, 2, 0.3).tolist() == [0, 2]
    assert mmr(scores, vectors, 3, 1.0, np.array([0, 0, 1]), 1).tolist() == [0, 2]


def test_mmr_ties_go_to_the_better_ranked_despite_rounding():
    """Cosines came from unit vectors: [1, 1] . [1, -1] gave 2.2e-17, not 0, so a zero vector
    (cosine 0) beat the better-ranked orthogonal item, and an exact duplicate of a chosen
    vector looked less similar (0.9999999999999998) than another one (1.0)."""
    orthogonal = np.array([[1.0, -1.0], [1.0, 1.0], [0.0, 0.0]])
    assert mmr(np.array([3.0, 2.0, 1.0]), orthogonal, 3, 0.0).tolist() == [0, 1, 2]
    vectors = np.array([[0.0, -1.0], [1.0, -1.0], [-1.0, -1.0], [0.0, 1.0], [0.0, 1.0],
                        [1.0, -1.0]])
    categories = np.array([1, -1, 1, 2, -1, -1])
    assert mmr(np.zeros(6, np.float32), vectors, 8, 0.0, categories, 2).tolist() == \
        [0, 3, 1, 2, 4, 5]


def test_mmr_relevance_of_extreme_scores():
    """The rescaling ran in float32: 3e38 - (-3e38) overflowed to inf, and infinite scores
    made NaN relevances, so items past the overflow won over more novel ones."""
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    scores = np.array([3e38, 2e38, -3e38], dtype=np.float32)
    assert mmr(scores, vectors, 3, 0.5).tolist() == [0, 2, 1]
    assert mmr(scores, vectors, 3, 0.0).tolist() == [0, 2, 1]
    infinite = np.array([np.inf, np.inf, 1.0], dtype=np.float32)
    assert mmr(infinite, vectors, 3, 0.4).tolist() == [0, 2, 1]
    assert mmr(infinite, vectors, 3, 1.0).tolist() == [0, 1, 2]


def test_als_update_users_is_one_snapshot_for_concurrent_readers(seen):
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(seen)
    errors = []
    stop = threading.Event()

    def reader():
        try:
            while not stop.is_set():
                known = model.user_factors.shape[0]
                model.recommend(np.arange(known - 3, known), k=5)
                model.recommend(known - 1, k=3)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    for step in range(40):  # each call adds a user: factors and seen rows grow together
        model.update_users([N_USERS + step], seen[[step]])
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors, errors[:3]
    assert model.user_factors.shape[0] == model._user_items.shape[0] == N_USERS + 40


# ---------------------------------------------------------------------- the batched path


@st.composite
def chain_problems(draw):
    """A small chain with exact arithmetic (small integers everywhere, so the batched native
    path and the float64 reference agree to the bit, ties included): factors, seen rows,
    observed users, added items, rules, an optional ranker, a batch of requests."""
    n_users, n_items, d = draw(st.integers(1, 7)), draw(st.integers(1, 12)), draw(st.integers(1, 3))
    ints = lambda shape: np.array(draw(st.lists(st.integers(-2, 2), min_size=int(np.prod(shape)),
                                                max_size=int(np.prod(shape)))),
                                  dtype=np.float32).reshape(shape)
    seen = draw(st.lists(st.sets(st.integers(0, n_items - 1), max_size=4), min_size=n_users,
                         max_size=n_users))
    added = draw(st.integers(0, 3))  # ids n_items .. n_items + added - 1 (some not added)
    filled = draw(st.lists(st.booleans(), min_size=added, max_size=added))
    # how _NewItems holds them: the first ``settled`` added ids in its settled tier (with a
    # stale vector for those in ``resets``, set again in the recent tier), the rest recent
    settled = draw(st.integers(0, sum(filled)))
    resets = draw(st.sets(st.integers(0, max(settled - 1, 0)), max_size=settled))
    observed = draw(st.dictionaries(st.integers(0, n_users + 2), st.tuples(
        st.sets(st.integers(0, n_items + added - 1), max_size=4), st.integers(-2, 2)),
        max_size=3))
    rules = {}
    if draw(st.booleans()):
        rules["deny"] = sorted(draw(st.sets(st.integers(0, n_items + added), max_size=3)))
    if draw(st.booleans()):
        rules["allow"] = sorted(draw(st.sets(st.integers(0, n_items + added), min_size=1,
                                             max_size=n_items + added + 1)))
    if draw(st.booleans()):
        rules["item_categories"] = np.array(draw(st.lists(st.integers(0, 2), min_size=n_items,
                                                          max_size=n_items)))
        rules["category_cap"] = draw(st.integers(1, 2))
    context = draw(st.integers(0, 2)) if draw(st.booleans()) else None  # None: no ranker
    layers = None
    if context is not None:
        layers = [(ints((3, 2 * d + context)), ints((3,)), "relu"),
                  (ints((1, 3)), None, "identity")]
    m = draw(st.integers(1, 6))
    users = draw(st.lists(st.integers(0, n_users + 3), min_size=m, max_size=m))
    excludes = None
    if draw(st.booleans()):
        excludes = draw(st.lists(st.one_of(st.none(), st.lists(
            st.integers(0, n_items + added + 1), max_size=3)), min_size=m, max_size=m))
    return dict(n_users=n_users, n_items=n_items, d=d, users_f=ints((n_users, d)),
                items_f=ints((n_items, d)), seen=seen, added=ints((added, d)), filled=filled,
                settled=settled, resets=sorted(resets),
                observed={u: (sorted(items), off, ints((d,))) for u, (items, off) in
                          observed.items()},
                rules=rules, layers=layers, context=context, users=users, excludes=excludes,
                contexts=None if context is None else ints((m, context)),
                k=draw(st.integers(1, 8)), candidates=draw(st.integers(1, 6)),
                offsets=ints((n_users,)) if draw(st.booleans()) else None)


def _exact_recommender(p):
    """A Recommender over an ALS holding the problem's integer factors, with the observed
    users and added items installed as observe would publish them."""
    from dataclasses import replace
    from unittest.mock import patch

    from recfuse import serving
    from recfuse.serving import _NewItems, _User

    rows = [sorted(s) for s in p["seen"]]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    matrix = sp.csr_matrix((np.ones(indptr[-1], np.float32),
                            np.array([i for r in rows for i in r], dtype=np.int32), indptr),
                           shape=(p["n_users"], p["n_items"]))
    als = recfuse.ALS(factors=p["d"])
    als.user_factors, als.item_factors, als._user_items = p["users_f"], p["items_f"], matrix
    ranker = None if p["layers"] is None else recfuse.MLPScorer(p["layers"])
    rec = Recommender(als, ranker, candidates=p["candidates"], k=p["k"],
                      rerank=Rerank(**p["rules"]) if p["rules"] else None, num_threads=1)
    state = rec._state
    if p["offsets"] is not None:
        state.model = replace(state.model, user_offsets=p["offsets"].astype(np.float64))
    for user, (items, offset, vector) in p["observed"].items():
        state.users[user] = _User(vector, float(offset), np.array(items, dtype=np.int64),
                                  np.ones(len(items)), bool(vector.any()))
    rows = np.flatnonzero(p["filled"])
    if rows.size:
        ids, table, cut = p["n_items"] + rows, p["added"][rows], p["settled"]
        stale = table.copy()
        stale[p["resets"]] = 7.0  # above any real score: a stale row returned would show
        extra = _NewItems(None, None, None, None, 0)
        if cut:
            with patch.object(serving, "_recent_limit", lambda settled: 0):  # settle all
                extra = extra.changed(ids[:cut], stale[:cut], None, None, rec.rerank, "auto")
        again = np.r_[p["resets"], np.arange(cut, ids.size)].astype(np.int64)
        if again.size:
            extra = extra.changed(ids[again], table[again], None, None, rec.rerank, "auto")
        assert (extra.settled is not None) == bool(cut) and extra.count == ids.size
        state.new_items = extra
    return rec


def _slow_chain(p, rec, row):
    """One request answered from the parts in float64, item by item (the reference path)."""
    model, state = rec._state.model, rec._state
    user, k = p["users"][row], p["k"]
    exclude = set() if p["excludes"] is None or p["excludes"][row] is None else \
        set(p["excludes"][row])
    n, added = p["n_items"], p["added"].shape[0]
    allowed = lambda i: ("allow" not in p["rules"] or i in p["rules"]["allow"]) and \
        i not in p["rules"].get("deny", ())
    cap = p["rules"].get("category_cap")
    category = lambda i: p["rules"]["item_categories"][i] if i < n else -1

    def capped(ids):
        used, chosen = {}, []
        for position, i in enumerate(ids):
            c = category(i)
            if cap is not None and c >= 0:
                if used.get(c, 0) >= cap:
                    continue
                used[c] = used.get(c, 0) + 1
            chosen.append(position)
        return chosen[:k]

    if user in p["observed"]:
        items, offset, vector = p["observed"][user]
        warm, seen = bool(vector.any()), set(items)
    else:
        vector = p["users_f"][user] if user < p["n_users"] else None
        # a training user with a zero vector has nothing to search with: cold
        warm = user < p["n_users"] and bool(p["seen"][user]) and bool(vector.any())
        offset = 0 if p["offsets"] is None or user >= p["n_users"] else p["offsets"][user]
        seen = set(p["seen"][user]) if user < p["n_users"] else set()
    if not warm:  # the popular items the user has not seen nor excluded
        counts = np.bincount([i for s in p["seen"] for i in s], minlength=n)
        order = [i for i in sorted(range(n), key=lambda i: (-counts[i], i))
                 if allowed(i) and i not in exclude and i not in seen]
        ids = [order[c] for c in capped(order)] if cap is not None else order[:k]
        return ids, [0.0] * len(ids), ["popular"] * len(ids)
    table = np.vstack([p["items_f"], p["added"]]).astype(np.float64)
    usable = [i for i in range(n + added) if (i < n or p["filled"][i - n]) and allowed(i)
              and i not in seen and i not in exclude]
    scores = {i: float(table[i] @ vector) + float(offset) for i in usable}
    deep = p["layers"] is not None or cap is not None
    recalled = sorted(usable, key=lambda i: (-scores[i], i))[:max(k, p["candidates"]) if deep
                                                              else k]
    stage = "recall"
    if p["layers"] is not None:
        context = p["contexts"][row] if p["context"] else np.zeros(0)
        rows = np.array([np.concatenate([vector, context, table[i]]) for i in recalled])
        ranked = reference.mlp_forward(p["layers"], rows)[:, 0] if recalled else []
        scores = dict(zip(recalled, ranked))
        recalled = sorted(recalled, key=lambda i: (-scores[i], i))
        stage = "rank"
    chosen = capped(recalled) if cap is not None else list(range(min(k, len(recalled))))
    ids = [recalled[c] for c in chosen]
    stages = ["rerank" if c != position else stage for position, c in enumerate(chosen)]
    return ids, [scores[i] for i in ids], stages


@given(problem=chain_problems())
def test_batched_path_equals_the_slow_reference(problem):
    rec = _exact_recommender(problem)
    got = rec.recommend_batch(problem["users"], excludes=problem["excludes"],
                              context_features=problem["contexts"])
    k = problem["k"]
    assert got.ids.shape == got.scores.shape == got.stages.shape == (len(problem["users"]), k)
    for row in range(len(problem["users"])):
        ids, scores, stages = _slow_chain(problem, rec, row)
        count = len(ids)
        context = f"row {row}: got {got.ids[row]} {got.scores[row]} {got.stages[row]}, " \
                  f"want {ids} {scores} {stages}"
        assert got.ids[row, :count].tolist() == ids, context
        np.testing.assert_array_equal(got.scores[row, :count], np.float32(scores), context)
        assert got.stages[row, :count].tolist() == stages, context
        assert (got.ids[row, count:] == -1).all() and np.isneginf(got.scores[row, count:]).all()
        assert (got.stages[row, count:] == "").all(), context
        single = rec.recommend(problem["users"][row], exclude=None if problem["excludes"] is None
                               else problem["excludes"][row],
                               context_features=None if problem["contexts"] is None
                               else problem["contexts"][row])
        np.testing.assert_array_equal(single.ids, got.ids[row])


# ---------------------------------------------------------------------- the ranker with the model


def test_ranker_files_and_swaps_change_model_and_ranker_together(als, scorer, seen, tmp_path):
    model_path, ranker_path = tmp_path / "als.npz", tmp_path / "ranker.npz"
    als.save(model_path)
    scorer.save(ranker_path)
    rec = Recommender(model_path, ranker_path, candidates=30, k=8, num_threads=1)
    direct = Recommender(als, scorer, candidates=30, k=8, num_threads=1)
    context = np.array([0.3, -0.2], np.float32)
    first = rec.recommend(4, context_features=context)
    np.testing.assert_array_equal(first.ids, direct.recommend(4, context_features=context).ids)
    assert rec.info()["ranker_source"] == str(ranker_path) and rec.context_width == 2
    # a new ranker comes in with the model, in one swap
    rng = np.random.default_rng(5)
    layers = [(rng.standard_normal((4, 2 * FACTORS + 2)).astype(np.float32), None, "relu"),
              (rng.standard_normal((1, 4)).astype(np.float32), None, "identity")]
    recfuse.MLPScorer(layers).save(ranker_path)
    assert rec.swap_model(model_path, ranker=ranker_path) == 2
    want = Recommender(als, recfuse.MLPScorer(layers), candidates=30, k=8, num_threads=1)
    second = rec.recommend(4, context_features=context)
    np.testing.assert_array_equal(second.ids, want.recommend(4, context_features=context).ids)
    assert second.version == 2
    # kept by default; a ranker file that does not load keeps both the model and its ranker
    assert rec.swap_model(model_path) == 3
    np.testing.assert_array_equal(rec.recommend(4, context_features=context).ids, second.ids)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(ranker_path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable"):
        rec.swap_model(model_path, ranker=broken)
    assert rec.version == 3
    # no ranker: recall order, no context any more
    assert rec.swap_model(model_path, ranker=None) == 4
    assert rec.context_width == 0 and set(rec.recommend(4).stages) == {"recall"}
    # a kept ranker must fit the new model's factors
    rec = Recommender(als, scorer, num_threads=1)
    wider = recfuse.ALS(factors=FACTORS + 1, iterations=1, random_state=0).fit(seen)
    with pytest.raises(ValueError, match="ranker was built for"):
        rec.swap_model(wider)
    with pytest.raises(TypeError, match="ranker must be"):
        Recommender(als, ranker=3)


@given(row=st.dictionaries(st.integers(0, 30), st.floats(0, 5), max_size=8),
       new=st.lists(st.tuples(st.integers(0, 35), st.floats(0, 5)), min_size=1, max_size=6))
def test_merge_adds_events_to_a_row(row, new):
    from recfuse.serving import _merge

    items = np.array(sorted(row), dtype=np.int64)
    weights = np.array([row[i] for i in sorted(row)])
    new_items = np.array([i for i, _ in new], dtype=np.int64)
    new_weights = np.array([w for _, w in new])
    merged_items, merged_weights = _merge(items, weights, new_items, new_weights)
    want = dict(row)
    for item, weight in new:
        want[item] = want.get(item, 0.0) + weight
    assert merged_items.tolist() == sorted(want) and merged_items.dtype == np.int64
    np.testing.assert_allclose(merged_weights, [want[i] for i in sorted(want)])
    assert items.tolist() == sorted(row)  # the inputs stay as they were


@pytest.mark.parametrize("kind", ["SVD", "SVDpp", "ExplicitALS", "BPR"])
def test_sgd_models_add_unknown_items_as_als_does(seen, kind):
    """Rating models: an added item's vector and bias are the exact solve of its first
    users' ratings against their vectors and offsets (the reference's explicit item
    half-sweep, weighted λ; SVD with reg_qi and reg_bi), so the scores follow the ratings;
    BPR: the mean of its first users' vectors. Searchable for the others, seen by its users."""
    coo = seen.tocoo()
    if kind == "BPR":
        model = recfuse.BPR(factors=4, iterations=3, random_state=0).fit(seen)
    elif kind == "ExplicitALS":
        model = recfuse.ExplicitALS(factors=4, iterations=3, reg=0.1, reg_bias=0.05,
                                    random_state=0).fit(coo.row, coo.col, np.ceil(coo.data + 1))
    else:
        model = getattr(recfuse, kind)(factors=4, epochs=3, reg_qi=0.05, random_state=0).fit(
            coo.row, coo.col, np.ceil(coo.data + 1))
    rating = 3.0 if kind != "BPR" else 1.0
    rec = Recommender(model, k=N_ITEMS + 5, new_item_users=2, max_new_items=10)
    new_item = N_ITEMS + 2
    ratings = [rating, rating + 1, rating, rating] if kind != "BPR" else [rating] * 4
    assert rec.observe({"user": [1, 2, 3, 1], "item": [new_item, new_item, new_item, 5],
                        "weight": ratings}) == 4
    assert rec.info()["added_items"] == 1
    first_users = [rec._state.users[u] for u in (1, 2)]  # after their fold-in
    if kind == "BPR":
        np.testing.assert_allclose(_added_vector(rec, new_item),
                                   np.mean([u.vector for u in first_users], axis=0), rtol=1e-5)
    else:
        if kind == "ExplicitALS":
            reg, reg_bias = 0.1, 0.05
        else:
            reg, reg_bias = 0.05, model.reg
        mean = rec._state.model.global_mean
        X = np.stack([u.vector for u in first_users]).astype(np.float64)
        own = np.zeros(1)
        vector, bias, _ = reference.explicit_als_half_sweep(
            sp.csr_matrix(([rating, rating + 1], [0, 1], [0, 2]), shape=(1, 2)), X,
            np.zeros((1, 4)), reg=reg, reg_bias=reg_bias, global_mean=mean,
            other_bias=np.array([u.offset - mean for u in first_users]), own_bias=own)
        np.testing.assert_allclose(_added_vector(rec, new_item), vector[0], rtol=2e-4, atol=2e-6)
        np.testing.assert_allclose(_added_bias(rec, new_item), bias[0], rtol=2e-4, atol=2e-6)
        other = rec.recommend(10)
        np.testing.assert_allclose(  # the item's score: offset + bias + x·y, as any item's
            other.scores[other.ids == new_item],
            rec._state.model.user_offsets[10] + _added_bias(rec, new_item)
            + rec._state.model.user_vectors[10] @ _added_vector(rec, new_item), rtol=1e-5)
    assert new_item in rec.recommend(10).ids  # searchable for the others
    assert new_item not in rec.recommend(1).ids and 5 not in rec.recommend(1).ids
    assert rec.pending_events().items.tolist() == [new_item, new_item, new_item, 5]
    rec.observe({"user": [4], "item": [new_item], "weight": [rating]})  # now has a vector


@pytest.mark.parametrize("kind", ["SVD", "ExplicitALS"])
def test_a_new_items_ratings_decide_where_it_ranks(seen, kind):
    """The same first users rating a new item 1 or 5 stars: with their mean vector the two
    items were the same and ranked the same; from its ratings, the 5-star item scores above
    the 1-star one for everyone (its bias), and a user rating it later is folded in against
    its vector and bias (ExplicitALS: the exact solve of that user's ratings)."""
    coo = seen.tocoo()
    ratings = np.ceil(coo.data + 1)
    model = getattr(recfuse, kind)(factors=4, random_state=0, dtype=np.float64,
                                   **({"epochs": 5} if kind == "SVD" else {"iterations": 4})
                                   ).fit(coo.row, coo.col, ratings, rating_scale=(1, 5))
    new_item, raters = N_ITEMS, list(range(8))
    score = {}
    for stars in (1.0, 5.0):
        # its 8 first users set it (user 20, below, rates it after: the item stays)
        rec = Recommender(model, k=N_ITEMS + 1, num_threads=1, new_item_users=8)
        rec.observe({"user": raters, "item": [new_item] * 8, "weight": [stars] * 8})
        lists = rec.recommend_batch(np.arange(8, N_USERS))
        score[stars] = lists.scores[lists.ids == new_item]
        assert _added_bias(rec, new_item) < 0 if stars == 1.0 else _added_bias(rec, new_item) > 0
    assert (score[5.0] > score[1.0]).all()
    if kind == "ExplicitALS":  # user 20 rates the added item: refit of that user, items fixed
        rec.observe({"user": [20], "item": [new_item], "weight": [4.0]})
        mine = coo.row == 20
        items = np.r_[coo.col[mine], new_item]
        table = np.r_[rec._state.model.item_vectors, _added_vector(rec, new_item)[None, :]]
        bias = np.r_[rec._state.model.item_bias, _added_bias(rec, new_item)]
        R = sp.csr_matrix((np.r_[ratings[mine], 4.0], items, [0, items.size]),
                          shape=(1, N_ITEMS + 1))
        mean = model.global_mean
        vector, own, _ = reference.explicit_als_half_sweep(
            R, table, np.zeros((1, 4)), reg=model.reg, reg_bias=model.reg_bias,
            global_mean=mean, other_bias=bias, own_bias=np.zeros(1))
        np.testing.assert_allclose(rec._state.users[20].vector, vector[0], rtol=1e-8,
                                   atol=1e-10)
        assert rec._state.users[20].offset == pytest.approx(mean + own[0], rel=1e-8)


@pytest.mark.parametrize("kind", ["ALS", "SVD", "BPR"])
def test_added_items_answer_alike_whatever_tier_holds_them(seen, als, kind, monkeypatch):
    """Added items live in two tiers (recent rows, copied by each change, and settled ones,
    copied only when the recent rows fold in): a stream of events that adds items, sets
    them again (a first user's later events) and reaches items folded long before gives
    the same vectors, biases and lists (ids and scores, to the bit) with a fold at every
    change, after every 3 rows, and never; with allow/deny rules too."""
    from recfuse import serving

    coo = seen.tocoo()
    model = {"ALS": lambda: als,
             "SVD": lambda: recfuse.SVD(factors=FACTORS, epochs=3, random_state=0).fit(
                 coo.row, coo.col, np.ceil(coo.data + 1)),
             "BPR": lambda: recfuse.BPR(factors=FACTORS, iterations=3, random_state=0).fit(
                 seen)}[kind]()
    rng = np.random.default_rng(1)
    calls = []
    for _ in range(40):  # 1-3 events a call on 25 added ids, old and new users
        size = int(rng.integers(1, 4))
        calls.append({"user": rng.integers(0, N_USERS + 5, size),
                      "item": N_ITEMS + rng.integers(0, 25, size),
                      "weight": rng.integers(2, 6, size).astype(np.float64)})
    rules = Rerank(deny=[N_ITEMS + 3, 7], allow=np.r_[0:N_ITEMS, N_ITEMS:N_ITEMS + 20])
    answers = []
    for limit in (0, 3, 10**9):
        monkeypatch.setattr(serving, "_recent_limit", lambda settled, limit=limit: limit)
        for rerank in (None, rules):
            rec = Recommender(model, k=N_ITEMS + 30, new_item_users=3, rerank=rerank,
                              num_threads=1)
            for events in calls:
                rec.observe(events)
            extra = rec._state.new_items
            if limit == 3:  # both tiers in use, and an item set again in the recent one
                assert extra.settled is not None and extra.recent is not None
                assert extra.settled_mask is not None and not extra.settled_mask.all()
            # prepared by the writer (observe), not by the first request after a change
            assert all(rows.index._tables for rows, _ in extra.tiers())
            added = np.arange(N_ITEMS, N_ITEMS + 25)[extra.has(np.arange(N_ITEMS, N_ITEMS + 25))]
            lists = rec.recommend_batch(np.arange(N_USERS + 5))
            answers.append((added, extra.vectors(added), extra.biases(added), lists.ids,
                            lists.scores))
    for position, got in enumerate(answers[2:]):  # each against the same rules' first
        for want, have in zip(answers[position % 2], got):
            np.testing.assert_array_equal(have, want)


def test_a_first_users_later_events_of_a_new_item_still_set_it(als, seen):
    """Each event of its first users sets an added item (their summed weights, or every
    rating they gave it), whenever it comes: once the item had its ``new_item_users``
    users, their later events of it were left out, so with one first user an ALS item first
    seen with weight 0 stayed a zero vector for good, and an SVD item rated 1 then 5 by the
    same user stayed a 1-star item (both events in one call gave the 5-star one its due)."""
    rec = Recommender(als, new_item_users=1, num_threads=1)
    rec.observe({"user": [3], "item": [N_ITEMS], "weight": [0.0]})
    assert not _added_vector(rec, N_ITEMS).any()  # no positive yet: the zero vector
    rec.observe({"user": [3], "item": [N_ITEMS], "weight": [2.0]})
    np.testing.assert_allclose(_added_vector(rec, N_ITEMS),
                               _new_item_solve(als, rec, N_ITEMS, {3: 2.0}), rtol=2e-4,
                               atol=2e-6)
    rec.observe({"user": [4], "item": [N_ITEMS]})  # not a first user: the item stays
    np.testing.assert_allclose(_added_vector(rec, N_ITEMS),
                               _new_item_solve(als, rec, N_ITEMS, {3: 2.0}), rtol=2e-4,
                               atol=2e-6)
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=3, dtype=np.float64, random_state=0).fit(
        coo.row, coo.col, np.ceil(coo.data + 1), rating_scale=(1, 5))
    rec = Recommender(svd, new_item_users=1, num_threads=1)
    rec.observe({"user": [3], "item": [N_ITEMS], "weight": [1.0]})
    rec.observe({"user": [3], "item": [N_ITEMS], "weight": [5.0]})
    user, mean = rec._state.users[3], rec._state.model.global_mean
    vector, bias, _ = reference.explicit_als_half_sweep(  # both ratings, the user as now
        sp.csr_matrix(([1.0, 5.0], [0, 0], [0, 2]), shape=(1, 1)), user.vector[None, :],
        np.zeros((1, 4)), reg=svd.reg, global_mean=mean,
        other_bias=np.array([user.offset - mean]), own_bias=np.zeros(1))
    np.testing.assert_allclose(_added_vector(rec, N_ITEMS), vector[0], rtol=1e-8, atol=1e-10)
    assert _added_bias(rec, N_ITEMS) == pytest.approx(bias[0], rel=1e-8)


def test_an_added_items_first_users_are_the_first_to_arrive(als):
    """Within one call too: the events were sorted by user first, so the lowest user ids
    became an item's first users, whatever came first."""
    rec = Recommender(als, new_item_users=2, num_threads=1)
    rec.observe({"user": [9, 7, 3, 9], "item": [N_ITEMS + 1, N_ITEMS, N_ITEMS, N_ITEMS]})
    assert rec._state.new_item_users == {N_ITEMS: (7, 3), N_ITEMS + 1: (9,)}


def test_an_added_item_whose_solve_overflows_the_table_is_refused(seen):
    """A rating beyond float32 (a model fitted with so wide a rating_scale) solved to an
    item vector of inf once stored in the table: refused like a fold-in that overflows,
    with nothing applied and no warning."""
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(
        coo.row, coo.col, np.ceil(coo.data + 1), rating_scale=(-1e300, 1e300))
    rec = Recommender(svd, num_threads=1)
    with pytest.raises(ValueError, match="an added item's solve diverged.*nothing was applied"):
        rec.observe({"user": [1], "item": [N_ITEMS], "weight": [1e39]})
    assert rec._state.new_items is None and rec.pending_events().users.size == 0
    assert not rec._state.users and rec.info()["added_items"] == 0


def test_a_new_items_solve_without_regularization_is_the_least_norm_one(seen):
    """Regularization 0 and fewer first users than factors: the new item's system is
    singular, which np.linalg.solve does not notice (it answered rounding noise, entries of
    1e1-1e3 along the users' null space that decided where the item ranked for everyone
    else); the least-norm solution (lstsq) is the one meant."""
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=3, reg=0.0, biased=False, random_state=0).fit(
        coo.row, coo.col, np.ceil(coo.data + 1))
    rec = Recommender(svd, new_item_users=3, num_threads=1)
    rec.observe({"user": [1, 2], "item": [N_ITEMS] * 2, "weight": [4.0, 2.0]})
    Z = np.stack([rec._state.users[u].vector for u in (1, 2)]).astype(np.float64)
    target = np.array([4.0, 2.0]) - [rec._state.users[u].offset for u in (1, 2)]
    np.testing.assert_allclose(_added_vector(rec, N_ITEMS),
                               np.linalg.lstsq(Z, target, rcond=None)[0], rtol=1e-4, atol=1e-6)
    with pytest.warns(RuntimeWarning, match="not positive definite"):  # 5 users, 8 factors
        als = recfuse.ALS(factors=8, iterations=3, regularization=0.0, solver="cholesky",
                          dtype=np.float64, random_state=0).fit(seen[:5])
    rec = Recommender(als, new_item_users=3, num_threads=1)
    rec.observe({"user": [1, 2], "item": [N_ITEMS] * 2})
    X = np.array(als.user_factors)
    for user in (1, 2):
        X[user] = rec._state.users[user].vector
    c = np.where(np.isin(np.arange(5), [1, 2]), 1 + als.alpha, 1.0)
    A, b = (X.T * c) @ X, X.T @ (c * (c > 1))
    np.testing.assert_allclose(_added_vector(rec, N_ITEMS),
                               np.linalg.lstsq(A, b, rcond=None)[0], rtol=1e-6, atol=1e-9)


def test_observe_refuses_weights_that_overflow_the_fold_in(als):
    rec = Recommender(als, k=5)
    before = rec.recommend(5)
    bound = np.sqrt(np.finfo(np.float32).max)
    for weight in (1e30, 1e308):
        with pytest.raises(ValueError, match=r"user 6's summed weight of an item would reach .*"
                                             r"beyond the 1.84e\+19 a float32 ALS model"):
            rec.observe({"user": [5, 6], "item": [1, 2], "weight": [1.0, weight]})
    with pytest.raises(ValueError, match="weights must be >= 0 for this ALS model"):
        rec.observe({"user": [5, 6], "item": [1, 2], "weight": [1.0, -1e30]})
    assert rec.pending_events().users.size == 0 and not rec._state.users
    # the largest weight taken is not refused by the bound; in float32 its Cholesky system
    # is too badly conditioned to solve (it once kept the old vector with the new row
    # silently), so the fold-in refuses it, applying nothing; a finite weight folds in
    with pytest.raises(ValueError, match="the fold-in diverged: 1 row system"):
        rec.observe({"user": [5], "item": [7], "weight": [bound]})
    assert rec.pending_events().users.size == 0
    rec.observe({"user": [5], "item": [7], "weight": [bound / 1e12]})
    assert np.isfinite(rec._state.users[5].vector).all()
    with pytest.raises(ValueError, match="user 5's summed weight of an item would reach"):
        rec.observe({"user": [5], "item": [7], "weight": [bound]})
    assert rec.pending_events().users.size == 1
    assert rec.recommend(5).stages[0] == "recall" and before.ids.size == 5
    wide = Recommender(recfuse.ALS(factors=3, iterations=1, dtype=np.float64,
                                   random_state=0).fit(als._user_items), k=5)
    wide.observe({"user": [5], "item": [1], "weight": [1e30]})  # fine in float64
    # a cg model: the confidence's cube root bound, below the square root's 1.34e154
    with pytest.raises(ValueError, match=r"beyond the 5.64e\+102 a float64 ALS model takes "
                                         r"\(the cg solver's steps"):
        wide.observe({"user": [5], "item": [1], "weight": [1e200]})


def test_observe_refuses_a_fold_in_that_overflows_anyway(seen):
    coo = seen.tocoo()
    svd = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(coo.row, coo.col,
                                                             np.ceil(coo.data + 1))
    rec = Recommender(svd, k=5, sgd_lr=1e30)  # SGD steps that diverge to inf
    with pytest.raises(ValueError, match=r"the fold-in diverged: the trained values hold NaN "
                                         r"or inf; .*, or sgd_lr too high; nothing was applied"):
        rec.observe({"user": [3], "item": [4], "weight": [5.0]})
    assert not rec._state.users and rec.pending_events().users.size == 0
    assert np.isfinite(rec.recommend(3).scores).all()


@pytest.mark.parametrize("call, message", [
    (lambda rec: rec.recommend(10**30), r"user must be <= 9223372036854775807"),
    (lambda rec: rec.recommend(2**63), r"user must be <= 9223372036854775807"),
    (lambda rec: rec.recommend_batch([1, 10**30]), r"users must hold integers within int64"),
    (lambda rec: rec.recommend(1, exclude=[10**30]), r"exclude must hold integers within int64"),
    (lambda rec: rec.observe({"user": [10**23], "item": [1]}),
     r"events user must hold integers within int64"),
    (lambda rec: rec.observe({"user": np.array([2**63], np.uint64), "item": [1]}),
     r"events user must hold integers within int64"),
    (lambda rec: rec.observe({"user": [1], "item": [-10**23]}),
     r"events item must hold integers within int64"),
])
def test_ids_beyond_int64_are_refused_by_name(als, call, message):
    rec = Recommender(als, k=5)
    with pytest.raises(ValueError, match=message):
        call(rec)
    assert rec.pending_events().users.size == 0
    assert rec.recommend(2**63 - 1).stages[0] == "popular"  # the largest id is a cold user


def test_unbiased_rating_models_recall_as_the_model_predicts():
    """Unbiased SVD / ExplicitALS predict μ for items without ratings: the recall stage
    ranks them there too, as the model's recommend does."""
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 1, 3, 0, 3, 4])  # item 2 never rated
    ratings = np.array([5.0, 4, 3, 4, 2, 5, 4])
    for cls in (recfuse.SVD, recfuse.ExplicitALS):
        model = cls(factors=2, biased=False, random_state=0, num_threads=1).fit(
            users, items, ratings, rating_scale=(1, 5))
        got = Recommender(model, k=3).recommend(0)
        want_ids, want_scores = model.recommend(0, k=3)
        np.testing.assert_array_equal(got.ids, want_ids)
        np.testing.assert_allclose(got.scores, want_scores, rtol=1e-6)
        assert got.ids[0] == 2 and got.scores[0] == pytest.approx(model.predict(0, 2, clip=False))


def test_unbiased_svd_users_added_by_observe_score_as_known_users():
    """An unbiased SVD predicts q·p for a known user (μ for items without ratings): a user
    that observe adds (or a training user without ratings) is known from then on, and its
    scores and fold-in leave out μ (it was counted once more: 2μ for the unrated item)."""
    users = np.array([0, 0, 1, 1, 2, 2, 3])
    items = np.array([0, 1, 1, 3, 0, 3, 4])  # item 2 never rated
    ratings = np.array([5.0, 4, 3, 4, 2, 5, 4])
    model = recfuse.SVD(factors=2, biased=False, random_state=0, num_threads=1).fit(
        users, items, ratings, rating_scale=(1, 5), n_users=6)
    rec = Recommender(model, k=5)
    rec.observe({"user": [9, 5], "item": [1, 0], "weight": [5.0, 2.0]})
    known = model._require_fitted().item_counts > 0
    for user in (9, 5):
        got = rec.recommend(user)
        vector = rec._state.users[user].vector
        want = np.where(known, model.item_factors @ vector, model.global_mean)
        valid = got.ids >= 0
        np.testing.assert_allclose(got.scores[valid], want[got.ids[valid]], rtol=1e-5)
        assert rec._state.users[user].offset == 0.0


def test_cold_users_are_not_sent_what_they_have_seen():
    """A user answered from the popular list (a zero vector: dislikes only, or a training
    row of stored zeros) never gets back the items it has seen."""
    matrix = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype=np.float64)
    raw = recfuse.ALS(factors=4, iterations=3, random_state=0, confidence="raw",
                      num_threads=1).fit(matrix)
    rec = Recommender(raw, k=3)
    top = rec.recommend(100).ids
    rec.observe({"user": [100, 100], "item": top[:2], "weight": [-1.0, -1.0]})
    after = rec.recommend(100)
    assert (after.stages == "popular").all() and not set(top[:2]) & set(after.ids.tolist())
    zeros = matrix.tolil()
    zeros.rows[5], zeros.data[5] = [2, 7], [0.0, 0.0]
    exact = recfuse.ALS(factors=4, iterations=3, random_state=0, solver="cholesky",
                        num_threads=1).fit(zeros.tocsr())
    assert not exact.user_factors[5].any()
    answer = Recommender(exact, k=4).recommend(5)
    assert (answer.stages == "popular").all() and not {2, 7} & set(answer.ids.tolist())


def test_offset_scores_tie_by_the_smaller_id():
    """μ + b_u added after the search can round scores that were apart to a tie: the
    lists are ordered again, ties by the smaller id, in the model and the Recommender."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 300, 20000), rng.integers(0, 2000, 20000)
    model = recfuse.SVD(factors=4, random_state=0, num_threads=1).fit(
        users, items, rng.integers(1, 6, 20000).astype(float), rating_scale=(1, 5))
    served = Recommender(model, k=2000).recommend_batch(np.arange(300))
    ids, scores = model.recommend(np.arange(300), k=2000)
    np.testing.assert_array_equal(served.ids, ids)
    for row_ids, row_scores in ((ids, scores), (served.ids, served.scores)):
        valid = row_ids[:, 1:] >= 0
        tie = (row_scores[:, 1:] == row_scores[:, :-1]) & valid
        assert not (tie & (row_ids[:, 1:] < row_ids[:, :-1])).any()


def test_a_k_beyond_memory_is_refused_up_front(als):
    with pytest.raises(MemoryError, match="lower k"):
        Recommender(als, k=5).recommend(0, k=2**31 - 1)


def test_recommend_takes_the_user_id_forms_the_models_take(als):
    """A NumPy integer and a 0-d integer array are user ids, as in ``ALS.recommend``; a
    0-d float array is still refused by type."""
    rec = Recommender(als, k=4)
    expected = rec.recommend(3).ids
    np.testing.assert_array_equal(rec.recommend(np.int64(3)).ids, expected)
    np.testing.assert_array_equal(rec.recommend(np.array(3)).ids, expected)
    with pytest.raises(TypeError, match="user must be an integer id"):
        rec.recommend(np.array(3.0))


def test_recommend_batch_names_excludes_of_the_wrong_kind(als):
    rec = Recommender(als, k=4)
    with pytest.raises(TypeError, match="excludes must be a sequence .* got int"):
        rec.recommend_batch([1, 2], excludes=5)
    with pytest.raises(ValueError, match=r"one entry per user \(2\), got 1"):
        rec.recommend_batch([1, 2], excludes=[[1]])


class _WriterAtReadN:
    """Makes a Recommender's observe publish at the ``n``-th time a reader reads what observe
    publishes (``users``, ``new_items``, ``published``): every interleaving of one writer with
    a reader, deterministically, without threads."""

    def __init__(self, rec, events, n):
        self.rec, self.events, self.left = rec, events, n
        state = rec._state
        outer = self

        class Interleaved(type(state)):
            def __getattribute__(self, name):
                value = object.__getattribute__(self, name)
                if name in ("users", "new_items", "published") and outer.left:
                    outer.left -= 1
                    if not outer.left:
                        outer.rec.observe(outer.events)  # reads the state too: left is 0
                return value

        state.__class__ = Interleaved


@pytest.mark.parametrize("read", range(1, 7))
@pytest.mark.parametrize("user, events", [
    (500, {"user": [500], "item": [70]}),  # a cold user's first event, a popular item
    # 20 users add item 90, which user 1 (observed in the same call) then gets
    (1, {"user": [*range(2, 22), 1], "item": [90] * 20 + [0], "weight": [4.0] * 20 + [1.0]}),
], ids=["cold-user", "added-item"])
def test_an_observe_published_mid_answer_gives_the_answer_before_or_after_it(als, user,
                                                                            events, read):
    """A reader takes no lock: an observe call published while it reads the state must
    leave it the whole list of either side. It got a cold user's popular list less the
    item observed meanwhile (the user's entry read twice), and a user's new vector without
    the item another user of the same call added (the added items read before the users)."""
    def fresh():
        rec = Recommender(als, k=5, num_threads=1)
        rec.observe({"user": [119], "item": [3]})  # someone else, so the users are looked up
        return rec

    before = fresh().recommend(user).ids.tolist()
    after_rec = fresh()
    after_rec.observe(events)
    after = after_rec.recommend(user).ids.tolist()
    assert before != after and (user != 1 or 90 in after)  # the scenarios bite
    rec = fresh()
    writer = _WriterAtReadN(rec, events, read)
    got = rec.recommend(user).ids.tolist()
    assert got in (before, after), (got, before, after)
    if writer.left:  # the reader read less than that: the events come afterwards
        writer.left = 0
        rec.observe(events)
    assert rec.recommend(user).ids.tolist() == after


@pytest.mark.parametrize("excludes", [{0: [9]}, {9}], ids=["dict", "set"])
def test_recommend_batch_refuses_excludes_without_an_order(als, excludes):
    """A dict is Sized: its keys were taken for the users' exclude lists (user 1 got item 9,
    the item it asked to exclude, and item 0 was excluded instead)."""
    rec = Recommender(als, k=4)
    with pytest.raises(TypeError, match=f"excludes must be a sequence .* got "
                                        f"{type(excludes).__name__}"):
        rec.recommend_batch([1], excludes=excludes)
    assert 9 not in rec.recommend_batch([1], excludes=[[9]]).ids


def test_context_features_beyond_float32_or_ragged_are_refused_by_name(als, scorer):
    """A float64 context beyond float32's range overflowed the cast (a RuntimeWarning, then
    "NaN or inf"), and a ragged batch got NumPy's own message, naming nothing."""
    rec = Recommender(als, scorer, k=4)
    with pytest.raises(ValueError, match=r"context_features must hold finite values, got 1 "
                                         r"NaN/inf as float32 \(values beyond its range"):
        rec.recommend(1, context_features=[1e300, 0.0])
    with pytest.raises(ValueError, match="context_features must hold finite values"):
        rec.recommend_batch([1, 2], context_features=[[0.0, 1.0], [np.inf, 0.0]])
    with pytest.raises(ValueError, match=r"context_features must have shape \(2, 2\), got a "
                                         r"ragged sequence"):
        rec.recommend_batch([1, 2], context_features=[[0.0, 1.0], [1.0]])
    np.testing.assert_array_equal(  # the largest float32 is still a context
        rec.recommend(1, context_features=[3.4e38, 0.0]).ids.shape, (4,))


class _OwnedLock:
    """A model's writer lock that knows which thread holds it."""

    def __init__(self):
        self._lock = threading.Lock()
        self.owner = None

    def __enter__(self):
        self._lock.acquire()
        self.owner = threading.get_ident()
        return self

    def __exit__(self, *exc):
        self.owner = None
        self._lock.release()


def test_a_bpr_refit_while_the_recommender_reads_it_gives_one_whole_fit(seen):
    """Recommender(bpr) (and swap_model(bpr)) read the user table, item table, item bias and
    seen matrix one by one, without the writer lock BPR publishes its four tables under: a
    refit landing between the reads (a trainer thread refitting the object it swaps in)
    served the old fit's users against the new fit's items, bias and seen rows. The refit
    is simulated where the reader reads the item table: it lands there unless the reader
    holds the lock, when it would wait."""
    other = sp.random(N_USERS, N_ITEMS, density=0.08, format="csr", random_state=9,
                      dtype=np.float32) * 4
    bpr = recfuse.BPR(factors=FACTORS, iterations=5, random_state=0).fit(seen)
    lock = bpr._lock = _OwnedLock()
    fits = [(bpr.user_factors, bpr.item_factors, bpr.item_bias)]

    class RefitOnItemRead(recfuse.BPR):
        armed = True

        def __getattribute__(self, name):
            if name == "item_factors" and RefitOnItemRead.armed and \
                    lock.owner != threading.get_ident():
                RefitOnItemRead.armed = False
                recfuse.BPR.fit(self, other)
                fits.append((self.user_factors, self.item_factors, self.item_bias))
            return object.__getattribute__(self, name)

    bpr.__class__ = RefitOnItemRead
    model = Recommender(bpr, k=5)._state.model
    RefitOnItemRead.armed = False
    served = (model.user_vectors, model.item_vectors, model.item_bias)
    assert any(all(a is b for a, b in zip(served, fit)) for fit in fits), \
        [[a is b for a, b in zip(served, fit)] for fit in fits]


def test_a_swap_keeping_the_ranker_does_not_put_back_one_a_concurrent_swap_replaced(
        als, seen, scorer):
    """swap_model(model) keeps "the current ranker": it read it before building, so a swap
    with ranker=r2 installed meanwhile was undone (the keeping swap, installed last,
    brought the old ranker back: an outcome of neither order of the two calls)."""
    other = recfuse.ALS(factors=FACTORS, iterations=2, regularization=0.1, solver="cholesky",
                        random_state=7).fit(seen)
    r2 = recfuse.MLPScorer([(W * 2, b, activation) for W, b, activation in scorer.layers])
    rec = Recommender(als, ranker=scorer, k=5)
    building, go, replacing = threading.Event(), threading.Event(), threading.Event()
    real_build = rec._build

    def build(source, ranker, factors=None):
        if source is other:  # the keeping swap, with the current ranker read
            building.set()
            assert go.wait(30)
        return real_build(source, ranker, factors)

    class Announcing:  # says when the replacing swap waits for the swap lock, if there is one
        def __init__(self, lock):
            self.lock = lock

        def __enter__(self):
            if threading.current_thread().name == "replacing":
                replacing.set()
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    rec._build = build
    rec._swap_lock = Announcing(getattr(rec, "_swap_lock", threading.Lock()))
    keeping = threading.Thread(target=rec.swap_model, args=(other,))
    keeping.start()
    assert building.wait(30)
    done = threading.Event()
    replace_thread = threading.Thread(
        target=lambda: (rec.swap_model(als, ranker=r2), done.set()), name="replacing")
    replace_thread.start()
    assert wait_until(lambda: done.is_set() or replacing.is_set())
    go.set()
    keeping.join(30)
    replace_thread.join(30)
    assert not keeping.is_alive() and not replace_thread.is_alive()
    assert rec.version == 3 and rec.ranker is r2


def test_observe_checks_ratings_against_the_served_fit_not_a_later_refit():
    """observe checked ratings against the model object's rating scale as it is now: after
    a refit of that object on another scale (a trainer refitting it in another thread, to
    swap it in next), a 9 was folded into the served 1-5 model, and valid ratings could be
    refused."""
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 50, 1500), rng.integers(0, 40, 1500)
    svd = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(
        users, items, rng.integers(1, 6, 1500), rating_scale=(1, 5))
    rec = Recommender(svd, k=5)
    svd.fit(users, items, rng.integers(6, 11, 1500), rating_scale=(6, 10))
    with pytest.raises(ValueError, match=r"must lie in its rating_scale \[1.0, 5.0\], got 9.0"):
        rec.observe({"user": [3], "item": [7], "weight": [9.0]})
    assert rec.observe({"user": [3], "item": [7], "weight": [2.0]}) == 1
    assert rec.swap_model(svd, replay=False) == 2  # the refit, served: its scale now
    assert rec.observe({"user": [3], "item": [7], "weight": [9.0]}) == 1


def test_pending_events_saved_and_observed_after_a_restart_give_the_same_users(tmp_path):
    """The README's restart recipe: the log written with np.savez and observed by a new
    Recommender re-solves each ALS user over the same whole row (exact under Cholesky)."""
    seen = sp.random(60, 40, density=0.15, format="csr", random_state=0, dtype=np.float32)
    als = recfuse.ALS(factors=6, iterations=4, solver="cholesky", random_state=0).fit(seen)
    before = recfuse.Recommender(als, k=5)
    rng = np.random.default_rng(0)
    for _ in range(3):  # new users (60-69) among them
        before.observe({"user": rng.integers(0, 70, 10), "item": rng.integers(0, 40, 10),
                        "weight": rng.integers(1, 4, 10)})
    np.savez(tmp_path / "events.npz", **before.pending_events()._asdict())
    after = recfuse.Recommender(als, k=5)
    assert after.observe(recfuse.Events(**np.load(tmp_path / "events.npz"))) == 30
    for user in range(70):
        a, b = before.recommend(user), after.recommend(user)
        np.testing.assert_array_equal(a.ids, b.ids)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-5, atol=1e-6)


def test_an_added_item_far_beyond_the_catalogue_costs_one_row(als):
    """Added items were kept in a table with a row per id from n_items up to the largest, so
    one event for an id far beyond the catalogue (which a large max_new_items lets in) made
    a table of that many rows (NumPy's "Unable to allocate 4.00 GiB" for id 2**28, or one
    the OOM killer ended the process for), and was refused by a memory check. Each added
    item is now one row, whatever its id: it is added, solved and recommended."""
    rec = Recommender(als, max_new_items=2**31, k=N_ITEMS + 2)
    far = 2**31 - 2  # the largest item id events take
    assert rec.observe({"user": [7], "item": [far]}) == 1
    extra = rec._state.new_items
    assert rec.info()["added_items"] == 1 and extra.recent.table.shape == (1, FACTORS)
    np.testing.assert_allclose(_added_vector(rec, far), _new_item_solve(als, rec, far, {7: 1.0}),
                               rtol=2e-4, atol=2e-6)
    lists = rec.recommend_batch(np.arange(N_USERS))
    assert far in lists.ids and far not in rec.recommend(7).ids  # seen by user 7


def test_settings_are_checked_when_assigned_and_rerank_is_fixed(als):
    """Settings assigned after construction were stored unchecked (``rec.k = 0`` failed the
    next request, far from the assignment), and ``rec.rerank = ...`` was taken by some steps
    and not by the allow/deny lists built into the served model."""
    rec = Recommender(als, k=5, rerank=Rerank(deny=[1]), max_pending_events=10)
    rec.k = 7
    assert rec.recommend(3).ids.shape == (7,)
    for name, bad, error in [("k", 0, ValueError), ("candidates", -1, ValueError),
                             ("unknown_items", "maybe", ValueError), ("sgd_lr", -1.0, ValueError),
                             ("sgd_steps", 1.5, TypeError), ("max_new_items", "3", TypeError),
                             ("new_item_users", 0, ValueError),
                             ("max_pending_events", None, TypeError)]:
        before = getattr(rec, name)
        with pytest.raises(error, match=name):
            setattr(rec, name, bad)
        assert getattr(rec, name) == before
    with pytest.raises(AttributeError, match="fixed at construction"):
        rec.rerank = None
    assert rec.rerank.deny.tolist() == [1]
    rec.observe({"user": [0] * 8, "item": list(range(8))})
    rec.max_pending_events = 3  # the next observe keeps only the newest 3 events
    rec.observe({"user": [1], "item": [2]})
    assert rec.pending_events().users.size == 3 and rec.dropped_events == 6


def test_mmr_refuses_a_cap_without_categories_and_mismatched_shapes():
    scores, vectors = np.array([3.0, 2.0, 1.0]), np.eye(3)
    with pytest.raises(ValueError, match="cap needs categories"):
        mmr(scores, vectors, 2, 0.5, cap=1)
    with pytest.raises(ValueError, match="one category per candidate"):
        mmr(scores, vectors, 2, 0.5, np.array([0, 1]), 1)
    with pytest.raises(ValueError, match=r"scores \(n,\) and vectors \(n, d\)"):
        mmr(scores, np.eye(2), 2, 0.5)
    assert mmr(scores, vectors, 2, 0.5, np.array([0, 0, 1]), 1).tolist() == [0, 2]


def test_info_names_the_model_class_beside_its_fold_in_kind(seen):
    # the serve banner printed "svd model" for an SVD++ file: kind is how events fold in
    ratings = seen.copy()
    ratings.data = np.ceil(ratings.data * 5)
    model = recfuse.SVDpp(factors=4, epochs=2, random_state=0).fit(ratings)
    info = Recommender(model, k=3).info()
    assert info["model"] == "SVDpp" and info["kind"] == "svd"
