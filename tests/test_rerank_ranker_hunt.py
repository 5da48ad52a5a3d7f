"""Adversarial hunt: the re-ranking stage (``Rerank``, ``mmr``) against plain-Python oracles
written from their docstrings, and ``MLPRanker`` fit/to_scorer against a NumPy forward pass.

The bugs it found are fixed; their tests stay as regressions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

import recfuse
from recfuse.ranker import _unseen_items
from recfuse.serving import Recommender, Rerank, mmr

TIE = 1e-12  # the docstrings: MMR values within 1e-12 are ties, won by the earlier candidate
FEW = settings(max_examples=60, deadline=None)


# ---------------------------------------------------------------------- MMR oracle


def _cosine(a, b) -> float:
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(x * x for x in b))
    if na == 0 or nb == 0:  # "the cosine of a zero vector 0"
        return 0.0
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def mmr_oracle(scores, vectors, k, diversity, categories=None, cap=None):
    """Greedy MMR as documented: value = diversity * relevance - (1 - diversity) * max cosine
    to the chosen (0 before any is chosen); relevance = min-max rescaled scores (all 1 when
    they score alike); ties within 1e-12 to the earlier candidate; at most ``cap`` per
    category, negative categories uncapped. Note: ``diversity`` is MMR's lambda *on the
    relevance* (Rerank, mmr and the README agree), so 1 means no diversity, 0 novelty only."""
    n = len(scores)
    low, high = (min(scores), max(scores)) if n else (0.0, 0.0)
    relevance = [(s - low) / (high - low) if high > low else 1.0 for s in scores]
    chosen, used = [], {}
    while len(chosen) < k:
        open_ = [i for i in range(n) if i not in chosen and not (
            cap is not None and categories[i] >= 0 and used.get(categories[i], 0) >= cap)]
        if not open_:
            break
        value = {i: diversity * relevance[i] - (1 - diversity) * max(
            (_cosine(vectors[i], vectors[j]) for j in chosen), default=0.0) for i in open_}
        best = max(value.values())
        pick = min(i for i in open_ if value[i] >= best - TIE)
        chosen.append(pick)
        if cap is not None and categories[pick] >= 0:
            used[categories[pick]] = used.get(categories[pick], 0) + 1
    return chosen


@st.composite
def mmr_problems(draw):
    """Small integer scores (ties) and vectors (zero vectors, duplicates, opposite ones),
    sorted best first as mmr expects; optional categories (-1: none) and caps up to past k."""
    n, d = draw(st.integers(0, 8)), draw(st.integers(1, 3))
    rows = []
    for _ in range(n):
        if rows and draw(st.booleans()):
            rows.append(list(draw(st.sampled_from(rows))))  # a duplicate candidate
        else:
            rows.append(draw(st.lists(st.integers(-2, 2), min_size=d, max_size=d)))
    scores = sorted(draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n)), reverse=True)
    if draw(st.booleans()):  # non-integer scores too
        scores = sorted((float(np.float32(s / 3)) for s in scores), reverse=True)
    k = draw(st.integers(1, 10))
    diversity = draw(st.sampled_from([0.0, 0.3, 0.5, 0.7, 1.0]))
    categories = cap = None
    if draw(st.booleans()):
        categories = draw(st.lists(st.integers(-1, 2), min_size=n, max_size=n))
        cap = draw(st.integers(1, 12))
    return scores, rows, k, diversity, categories, cap


@FEW
@given(problem=mmr_problems())
def test_mmr_equals_the_documented_greedy(problem):
    scores, rows, k, diversity, categories, cap = problem
    n = len(scores)
    vectors = np.array(rows, dtype=np.float64).reshape(n, -1 if n else 1)
    got = mmr(np.array(scores, dtype=np.float64), vectors, k, diversity,
              None if categories is None else np.array(categories, dtype=np.int64), cap)
    want = mmr_oracle([float(s) for s in scores], rows, k, diversity, categories, cap)
    assert got.dtype == np.int64 and got.tolist() == want
    assert len(set(got.tolist())) == got.size <= min(k, n)
    if n and cap is None:  # the documented extremes
        assert got[0] == 0  # diversity 0 "still starts with the best one"
        if diversity == 1.0:
            assert got.tolist() == list(range(min(k, n)))  # 1 keeps the ranked order
    if cap is not None:
        picked = [categories[i] for i in got if categories[i] >= 0]
        assert all(picked.count(c) <= cap for c in set(picked))


def test_mmr_refuses_a_nan_score():
    # [best, duplicate of it, NaN, orthogonal]: the NaN made min/max NaN, so relevance fell to
    # "all alike" and the orthogonal item with the lowest score jumps ahead of the 0.9 one
    scores = np.array([1.0, 0.9, np.nan, 0.0])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="scores"):
        mmr(scores, vectors, 4, 0.9)


@pytest.mark.parametrize("vectors, diversity", [
    ([[1e200, 0.0], [1e200, 0.0], [0.0, 1.0]], 0.5),  # got [0, 0, 0]
    ([[1e200, 0.0], [1.0, 0.0], [0.0, 1.0]], 0.0),  # got [0, 1, 2]: cosine 0, not 1
    ([[1.0, 0.0], [np.inf, 0.0], [0.0, 1.0]], 0.5),  # got [0, 0, 0]
])
def test_mmr_cosines_of_huge_vectors(vectors, diversity):
    # item 1 is parallel to item 0 (cosine 1), item 2 orthogonal: [0, 2, 1] either way
    try:
        with np.errstate(all="ignore"):  # it also warns (overflow, inf / inf): not the point
            got = mmr(np.array([3.0, 2.0, 1.0]), np.array(vectors), 3, diversity)
    except ValueError:
        assert not np.isfinite(vectors).all()  # refusing inf is fine, finite vectors not
        return
    assert got.tolist() == [0, 2, 1]


def test_mmr_cap_zero_is_refused_or_honoured():
    categories = np.array([0, 0, 1])
    try:
        got = mmr(np.array([3.0, 2.0, 1.0]), np.eye(3), 3, 0.5, categories, 0)
    except ValueError:
        return
    assert not (categories[got] >= 0).any(), got  # "never more than cap of one category"


# ---------------------------------------------------------------------- Rerank rules


def _als(users_f, items_f, seen):
    """An ALS holding the given (integer) factors and training matrix, as if fitted."""
    users_f, items_f = np.asarray(users_f, np.float32), np.asarray(items_f, np.float32)
    als = recfuse.ALS(factors=items_f.shape[1])
    als.user_factors, als.item_factors = users_f, items_f
    als._user_items = sp.csr_matrix(seen, dtype=np.float32)
    return als


@pytest.mark.parametrize("options, error, name", [
    (dict(diversity=-0.1), ValueError, "diversity"),
    (dict(diversity=1.0 + 1e-9), ValueError, "diversity"),
    (dict(diversity=float("nan")), ValueError, "diversity"),
    (dict(diversity=True), TypeError, "diversity"),
    (dict(diversity="0.5"), TypeError, "diversity"),
    (dict(item_categories=[0, 1], category_cap=0), ValueError, "category_cap"),
    (dict(item_categories=[0, 1], category_cap=2.0), TypeError, "category_cap"),
    (dict(item_categories=[0.0, 1.0], category_cap=1), TypeError, "item_categories"),
    (dict(item_categories=[[0, 1]], category_cap=1), TypeError, "item_categories"),
    (dict(item_categories=[0, 1]), ValueError, "category_cap"),
    (dict(allow=[[1, 2]]), ValueError, "allow"),
    (dict(deny=[1.5]), TypeError, "deny"),
])
def test_rerank_refuses_bad_rules_naming_the_argument(options, error, name):
    with pytest.raises(error, match=name):
        Rerank(**options)


def test_rerank_rules_compare_without_raising():
    assert Rerank(deny=[1, 2]) == Rerank(deny=[2, 1, 1])  # the same rule, given otherwise
    assert hash(Rerank(deny=[1, 2])) == hash(Rerank(deny=[2, 1, 1]))
    assert Rerank(deny=[1, 2]) != Rerank(deny=[1]) and Rerank(deny=[1]) != Rerank(allow=[1])
    rules = Rerank(item_categories=[0, 1], category_cap=1, allow=[1], deny=[2])
    for array in (rules.item_categories, rules.allow, rules.deny):  # fixed: read-only
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 5


def test_rerank_categories_are_fixed_at_construction():
    als = _als(np.ones((4, 2)), [[6 - i, 0] for i in range(6)], np.eye(4, 6))
    categories = np.zeros(6, np.int64)  # one category: cap 1 leaves one item
    rec = Recommender(als, k=4, rerank=Rerank(item_categories=categories, category_cap=1))
    before = rec.recommend(0).ids.tolist()
    categories[:] = np.arange(6)  # the caller reuses its array
    assert rec.recommend(0).ids.tolist() == before  # "fixed at construction"


# ---------------------------------------------------------------------- the chain's re-rank


@st.composite
def chain_problems(draw):
    """Integer factors (exact float32 scores with ties), every user warm, rules drawn."""
    n_users, n_items, d = draw(st.integers(1, 4)), draw(st.integers(1, 10)), draw(st.integers(1, 3))
    ints = lambda shape: np.array(draw(st.lists(st.integers(-2, 2), min_size=int(np.prod(shape)),
                                                max_size=int(np.prod(shape)))),
                                  dtype=np.float32).reshape(shape)
    users_f, items_f = ints((n_users, d)), ints((n_items, d))
    users_f[~users_f.any(axis=1), 0] = 1.0  # a zero user vector is cold: keep all warm
    seen = [sorted(draw(st.sets(st.integers(0, n_items - 1), min_size=1, max_size=3)))
            for _ in range(n_users)]
    rules = {}
    diversity = draw(st.sampled_from([None, 0.0, 0.5, 1.0]))
    if diversity is not None:
        rules["diversity"] = diversity
    if draw(st.booleans()):  # -1: no category; extra entries past n_items are harmless
        rules["item_categories"] = draw(st.lists(st.integers(-1, 2), min_size=n_items,
                                                 max_size=n_items + 2))
        rules["category_cap"] = draw(st.integers(1, 9))
    if draw(st.booleans()):
        rules["allow"] = draw(st.lists(st.integers(0, n_items + 1), max_size=n_items + 2))
    if draw(st.booleans()):
        rules["deny"] = draw(st.lists(st.integers(0, n_items + 1), max_size=3))
    return dict(users_f=users_f, items_f=items_f, seen=seen, rules=rules,
                k=draw(st.integers(1, 8)), candidates=draw(st.integers(1, 6)))


def _chain_oracle(p, user):
    """recall (unseen, allowed, by score then id), then caps/MMR as documented; an unknown
    user gets the popular items (most entries, ties by id), allowed, capped, no diversity."""
    rules, k, items = p["rules"], p["k"], p["items_f"].astype(np.float64)
    allowed = lambda i: ("allow" not in rules or i in rules["allow"]) and \
        i not in rules.get("deny", [])
    cap = rules.get("category_cap")
    if user == len(p["seen"]):
        counts = np.bincount(sum(p["seen"], []), minlength=len(items))
        order = [i for i in sorted(range(len(items)), key=lambda i: (-counts[i], i)) if allowed(i)]
        chosen = mmr_oracle([0.0] * len(order), [[0.0]] * len(order), k, 1.0,
                            [rules["item_categories"][i] for i in order] if cap else None, cap)
        return [order[c] for c in chosen], [0.0] * len(chosen), ["popular"] * len(chosen)
    scores = {i: float(np.float32(items[i] @ p["users_f"][user])) for i in range(len(items))
              if i not in p["seen"][user] and allowed(i)}
    reorders = "diversity" in rules or "category_cap" in rules
    ranked = sorted(scores, key=lambda i: (-scores[i], i))[:max(k, p["candidates"]) if reorders
                                                           else k]
    categories = [rules["item_categories"][i] for i in ranked] if cap else None
    if "diversity" in rules:
        chosen = mmr_oracle([scores[i] for i in ranked], [items[i].tolist() for i in ranked],
                            k, rules["diversity"], categories, cap)
    else:  # the caps alone: MMR with pure relevance keeps the ranked order
        chosen = mmr_oracle([0.0] * len(ranked), [[0.0]] * len(ranked), k, 1.0, categories, cap)
    stages = ["rerank" if c != at else "recall" for at, c in enumerate(chosen)]
    return [ranked[c] for c in chosen], [scores[ranked[c]] for c in chosen], stages


@FEW
@given(p=chain_problems())
def test_recommender_rerank_equals_the_oracle(p):
    n_users, n_items = len(p["seen"]), len(p["items_f"])
    seen = np.zeros((n_users, n_items))
    for user, items in enumerate(p["seen"]):
        seen[user, items] = 1
    als = _als(p["users_f"], p["items_f"], seen)
    rec = Recommender(als, k=p["k"], candidates=p["candidates"], rerank=Rerank(**p["rules"]),
                      num_threads=1)
    got = rec.recommend_batch(np.arange(n_users + 1))  # the last: unknown, cold
    for user in range(n_users + 1):
        ids, scores, stages = _chain_oracle(p, user)
        count = len(ids)
        context = f"user {user}: got {got.ids[user]} {got.stages[user]}, want {ids} {stages}"
        assert got.ids[user, :count].tolist() == ids, context
        np.testing.assert_array_equal(got.scores[user, :count], np.float32(scores), context)
        assert got.stages[user, :count].tolist() == stages, context
        assert (got.ids[user, count:] == -1).all() and (got.stages[user, count:] == "").all()


def test_empty_allow_recommends_nothing_even_to_cold_users():
    # user 1: a zero vector, cold; 7: unknown, cold
    als = _als([[1, 0], [0, 0]], np.arange(10).reshape(5, 2), np.eye(2, 5))
    got = Recommender(als, k=3, rerank=Rerank(allow=[])).recommend_batch([0, 1, 7])
    assert (got.ids == -1).all() and (got.stages == "").all()


# ---------------------------------------------------------------------- MLPRanker


def _data(users=24, items=16, seed=0):
    rng = np.random.default_rng(seed)
    seen = sp.random(users, items, density=0.25, format="csr", random_state=seed,
                     dtype=np.float32)
    return seen, rng.standard_normal((users, 3)), rng.standard_normal((items, 2))


def _forward(ranker, X):
    """The documented architecture in float64: Linear + activation per hidden layer, a final
    Linear to one logit, sigmoid (to_scorer's score); gelu is the exact erf form."""
    h = np.asarray(X, np.float64)
    hidden = {"relu": lambda z: np.maximum(z, 0), "tanh": np.tanh,
              "gelu": lambda z: 0.5 * z * (1 + erf(z / np.sqrt(2)))}[ranker.activation]
    for layer, (W, b) in enumerate(zip(ranker.weights, ranker.biases)):
        z = h @ np.asarray(W, np.float64).T + b
        h = hidden(z) if layer < len(ranker.weights) - 1 else 1 / (1 + np.exp(-z))
    return h[:, 0]


def _same(a, b):
    return len(a.weights) == len(b.weights) and a.losses == b.losses and all(
        np.array_equal(x, y) for x, y in zip(a.weights + a.biases, b.weights + b.biases))


def test_ranker_same_random_state_same_weights_and_another_differs():
    seen, P, Q = _data()
    fit = lambda seed: recfuse.MLPRanker(hidden=(5,), epochs=2, batch_size=20,
                                         random_state=seed).fit(seen, P, Q)
    assert _same(fit(3), fit(3))
    assert _same(fit(np.int64(3)), fit(3))
    assert not _same(fit(3), fit(4))
    # a Generator of the same seed gives the seed's result
    assert _same(fit(np.random.default_rng(3)), fit(3))


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("backend", ["numpy", "cpu"])
def test_to_scorer_equals_a_numpy_forward_pass_with_features(activation, backend):
    seen, P, Q = _data(seed=1)
    rng = np.random.default_rng(9)
    Uf, Vf = rng.standard_normal((24, 2)), rng.standard_normal((16, 1))
    ranker = recfuse.MLPRanker(hidden=(6, 3), activation=activation, epochs=2, batch_size=30,
                               learning_rate=1e-2, random_state=0).fit(seen, P, Q, Uf, Vf)
    scorer = ranker.to_scorer(backend=backend)
    assert scorer.input_width == 3 + 2 + 2 + 1
    # the documented input row [user_factors | user_features | item_factors | item_features]
    X = np.hstack([np.repeat(P, 16, 0), np.repeat(Uf, 16, 0), np.tile(Q, (24, 1)),
                   np.tile(Vf, (24, 1))])
    want = _forward(ranker, X)
    np.testing.assert_allclose(scorer.score(X.astype(np.float32)), want, atol=2e-6)
    got = scorer.score_candidates(P.astype(np.float32), np.tile(np.arange(16), (24, 1)),
                                  Q.astype(np.float32), user_features=Uf.astype(np.float32),
                                  item_features=Vf.astype(np.float32))
    np.testing.assert_allclose(got.ravel(), want, atol=2e-6)
    logits = ranker.predict_logits(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-logits.astype(np.float64))), want, atol=2e-6)


def test_scorer_save_load_round_trip_scores_alike(tmp_path):
    seen, P, Q = _data()
    ranker = recfuse.MLPRanker(hidden=(4,), activation="gelu", epochs=1,
                               random_state=0).fit(seen, P, Q)
    ranker.to_scorer(backend="numpy").save(tmp_path / "r.npz")
    loaded = recfuse.load(tmp_path / "r.npz", backend="numpy")
    X = np.hstack([P[:5], Q[:5]]).astype(np.float32)
    np.testing.assert_array_equal(loaded.score(X), ranker.to_scorer(backend="numpy").score(X))


def test_ranker_loss_decreases_on_a_learnable_problem():
    # a user likes exactly the items of its group; one-hot group factors make it separable
    groups_u, groups_i = np.arange(40) % 4, np.arange(20) % 4
    seen = sp.csr_matrix((groups_u[:, None] == groups_i[None, :]).astype(np.float32))
    ranker = recfuse.MLPRanker(hidden=(8,), epochs=6, negatives=2, batch_size=30,
                               learning_rate=2e-2, random_state=0)
    ranker.fit(seen, np.eye(4)[groups_u], np.eye(4)[groups_i])
    assert len(ranker.losses) == 6 and ranker.losses[-1] < 0.5 * ranker.losses[0]
    X = np.hstack([np.tile(np.eye(4)[0], (20, 1)), np.eye(4)[groups_i]])  # user group 0
    probability = ranker.to_scorer(backend="numpy").score(X.astype(np.float32))
    assert probability[groups_i == 0].min() > probability[groups_i != 0].max()


# (call, error, the argument its message names); r: a fitted ranker, s/P/Q: its data
BAD_CALLS = [
    ("r.fit(sp.csr_matrix(s.shape, dtype=np.float32), P, Q)", ValueError, "user_items"),
    ("r.fit(s.toarray(), P, Q)", TypeError, "user_items"),
    ("r.fit(s, np.where(P > 1, np.nan, P), Q)", ValueError, "user_factors"),
    ("r.fit(s, P, Q, item_features=np.full((16, 1), np.inf))", ValueError, "item_features"),
    ("r.fit(s, P[:20], Q)", ValueError, "user"),  # factors of a model of another shape
    ("r.fit(s, P, np.ones((17, 2)))", ValueError, "item"),
    ("r.fit(s, P.ravel(), Q)", ValueError, "user_factors"),
    ("r.fit(s, P, Q, np.ones((23, 2)))", ValueError, "user"),  # features, wrong rows
    ("r.set_params(epochs=-1)", ValueError, "epochs"),
    ("r.set_params(learning_rate=0.0)", ValueError, "learning_rate"),
    ("r.set_params(learning_rate=float('nan'))", ValueError, "learning_rate"),
    ("r.set_params(l2=-1e-3)", ValueError, "l2"),
    ("r.set_params(hidden=(2,), epochs=0)", ValueError, "epochs"),  # all or nothing
    ("r.set_params(activation='tanh')", ValueError, "activation"),  # fitted with relu
    ("recfuse.MLPRanker(activation='sigmoid')", ValueError, "activation"),
    ("recfuse.MLPRanker(activation=None)", TypeError, "activation"),
    ("r.predict_logits(np.ones((2, 4)))", ValueError, "X"),
]


@pytest.mark.parametrize("call, error, name", BAD_CALLS)
def test_bad_input_is_a_named_error_and_leaves_the_fitted_ranker(call, error, name):
    s, P, Q = _data()
    r = recfuse.MLPRanker(hidden=(4,), epochs=1, batch_size=40, random_state=0).fit(s, P, Q)
    twin = recfuse.MLPRanker(hidden=(4,), epochs=1, batch_size=40, random_state=0).fit(s, P, Q)
    with pytest.raises(error, match=name):
        eval(call, {"r": r, "s": s, "P": P, "Q": Q, "np": np, "sp": sp, "recfuse": recfuse})
    assert _same(r, twin) and repr(r) == repr(twin) and r.get_params() == twin.get_params()


@FEW
@given(n_users=st.integers(1, 5), n_items=st.integers(1, 6), data=st.data())
def test_sampled_negatives_are_never_seen_positives(n_users, n_items, data):
    """``_unseen_items``: an item flagged unseen is never one the user has; a draw flagged
    seen-only happens only for users whose redraws all hit (always for one who has seen all)."""
    rows = [data.draw(st.sets(st.integers(0, n_items - 1))) for _ in range(n_users)]
    if not any(rows):
        rows[0] = {0}
    keys = np.sort(np.array([u * n_items + i for u, r in enumerate(rows) for i in r]))
    users = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=1, max_size=30)))
    items, unseen = _unseen_items(users, n_items, keys, np.random.default_rng(0))
    assert ((items >= 0) & (items < n_items)).all()
    for u, i, ok in zip(users.tolist(), items.tolist(), unseen.tolist()):
        if ok:
            assert i not in rows[u]
        if len(rows[u]) == n_items:
            assert not ok
        if not rows[u]:
            assert ok
