"""Adversarial hunt: recfuse.metrics and recfuse.split against plain-Python oracles written
from their docstrings, on edge inputs (empty test rows, -1 padding, k past the list and the
catalogue, duplicate and explicitly-zero CSR entries, one user/item, time ties, drop_cold).
The bugs it found (rmse overflow, ragged input, cold users in rmse, seen items at the tail
of implicit-style lists, k with K) are fixed; their tests stay as regressions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from recfuse import metrics, reference_data, split
from recfuse.reference_data import RANKING_COLUMNS
from recfuse.interactions import Interactions

HUNT = settings(max_examples=80, deadline=None)


# ------------------------------------------------------------------ oracles
def oracle_ranking(lists, liked_sets, n_items):
    """The metrics module docstring's aggregation of the reference's per-user numbers
    (recfuse.reference_data.ranking_metrics: loops over each list)."""
    liked = [sorted(s) for s in liked_sets]
    indptr = np.cumsum([0] + [len(s) for s in liked])
    indices = np.array([i for s in liked for i in s], dtype=np.int64)
    table = reference_data.ranking_metrics(np.asarray(lists, dtype=np.int64),
                                           np.arange(len(liked)), indptr, indices, n_items)
    rows = [dict(zip(RANKING_COLUMNS, row)) for row in table.tolist()] if liked else []
    mean = lambda key: sum(r[key] for r in rows) / len(rows) if rows else 0.0  # noqa: E731
    relevant = sum(r["relevant"] for r in rows)
    aucs = [r["auc"] for r in rows if not math.isnan(r["auc"])]
    return {"precision": sum(r["hits"] for r in rows) / relevant if relevant else 0.0,
            "recall": mean("recall"), "map": mean("average_precision"), "ndcg": mean("ndcg"),
            "auc": sum(aucs) / len(aucs) if aucs else math.nan,
            "mrr": mean("reciprocal_rank"), "hit_rate": mean("hit")}


def oracle_diversity(lists, vectors):
    """Mean over lists (>= 2 items) of the mean pairwise 1 - cosine; NaN without such a list."""
    per_list = []
    for ids in lists.tolist():
        v = [vectors[i] / np.linalg.norm(vectors[i]) for i in ids if i >= 0]
        pairs = [1 - float(v[a] @ v[b]) for a in range(len(v)) for b in range(a + 1, len(v))]
        per_list += [sum(pairs) / len(pairs)] if pairs else []
    return sum(per_list) / len(per_list) if per_list else math.nan


def assert_metrics(got, want):
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-9, abs=1e-12, nan_ok=True), name


# ------------------------------------------------------------------ strategies
@st.composite
def messy_csr(draw, n_users=None, n_items=None):
    """CSR from raw arrays: columns unsorted and repeated (duplicates), stored zeros, float
    values, empty rows. Returns (matrix, stored column set per row, summed values dict)."""
    n_users = n_users or draw(st.integers(1, 6))
    n_items = n_items or draw(st.integers(1, 7))
    indptr, indices, data = [0], [], []
    for _ in range(n_users):
        row = draw(st.lists(st.integers(0, n_items - 1), max_size=n_items + 2))
        indices += row
        data += draw(st.lists(st.sampled_from([0.0, 1.0, 0.5, 3.75, -2.0]),
                              min_size=len(row), max_size=len(row)))
        indptr.append(len(indices))
    matrix = sp.csr_matrix((np.array(data, np.float64), np.array(indices, np.int32),
                            np.array(indptr, np.int64)), shape=(n_users, n_items))
    stored = [set(indices[indptr[u]:indptr[u + 1]]) for u in range(n_users)]
    summed = {}
    for u, j in ((u, j) for u in range(n_users) for j in range(indptr[u], indptr[u + 1])):
        summed[u, indices[j]] = summed.get((u, indices[j]), 0.0) + data[j]
    return matrix, stored, summed


def top_lists(data, liked_sets, n_items, k):
    """Per user a list of distinct items (often the relevant ones first, so lists with every
    item relevant are common) of length <= min(k, n_items), padded with -1 to k."""
    out = np.full((len(liked_sets), k), -1, dtype=np.int64)
    for row, liked in enumerate(liked_sets):
        if data.draw(st.booleans()):
            pool = (data.draw(st.permutations(sorted(liked)))
                    + data.draw(st.permutations(sorted(set(range(n_items)) - liked))))
        else:
            pool = data.draw(st.permutations(range(n_items)))
        length = data.draw(st.integers(0, min(k, n_items)))
        out[row, :length] = pool[:length]
    return out


# ------------------------------------------------------------------ ranking_metrics
@HUNT
@given(st.data())
def test_ranking_metrics_match_loop_oracle(data):
    # Reading: a stored entry is a test item whatever its value (explicit zeros included),
    # as implicit.evaluation reads only indptr/indices; duplicates are one item.
    test, stored, _ = data.draw(messy_csr())
    n_items = test.shape[1]
    with_items = [u for u, s in enumerate(stored) if s]
    explicit = data.draw(st.booleans())
    users = data.draw(st.permutations(with_items))[:data.draw(st.integers(0, len(with_items)))] \
        if explicit else with_items
    k = data.draw(st.integers(1, n_items + 3))  # k past the catalogue: lists must pad
    lists = top_lists(data, [stored[u] for u in users], n_items, k)
    got = metrics.ranking_metrics(lists, test, np.array(users, np.int64) if explicit else None,
                                  per_user=True)
    assert_metrics(got, oracle_ranking(lists, [stored[u] for u in users], n_items))
    assert got["per_user"]["relevant"].tolist() == [min(k, len(stored[u])) for u in users]
    as_interactions = metrics.ranking_metrics(lists, Interactions.from_matrix(test),
                                              np.array(users, np.int64) if explicit else None)
    assert_metrics(as_interactions, {n: got[n] for n in as_interactions})
    empty = [u for u, s in enumerate(stored) if not s]
    if empty:  # an evaluated user without test items is refused, not scored 0
        with pytest.raises(ValueError, match="at least one test item"):
            metrics.ranking_metrics(np.full((1, k), -1), test, [empty[0]])


def test_ranking_metrics_single_user_single_item():
    test = sp.csr_matrix(np.ones((1, 1), np.float32))
    hit = metrics.ranking_metrics(np.array([[0, -1, -1]]), test)  # k = 3 > 1 item
    assert_metrics(hit, {"precision": 1.0, "recall": 1.0, "map": 1.0, "ndcg": 1.0,
                         "mrr": 1.0, "hit_rate": 1.0, "auc": math.nan})  # no negatives
    miss = metrics.ranking_metrics(np.array([[-1]]), test)
    assert_metrics(miss, {"precision": 0.0, "recall": 0.0, "ndcg": 0.0, "hit_rate": 0.0})


# ------------------------------------------------------------------ rating errors
@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.floats(-1e6, 1e6)), min_size=1,
                max_size=30))
def test_rmse_mae_match_loops(pairs):
    truth, predicted = [t for t, _ in pairs], [p for _, p in pairs]
    n = len(pairs)
    want_rmse = math.sqrt(sum((t - p) ** 2 for t, p in pairs) / n)
    assert metrics.rmse(truth, predicted) == pytest.approx(want_rmse, rel=1e-9, abs=1e-9)
    assert metrics.mae(truth, predicted) == pytest.approx(
        sum(abs(t - p) for t, p in pairs) / n, rel=1e-9, abs=1e-9)
    # Reading: ratings are flattened (_ratings_of), so a column (n, 1) pairs with (n,)
    assert metrics.mae(np.array(truth)[:, None], predicted) == metrics.mae(truth, predicted)


def test_rmse_of_large_but_finite_errors_is_finite():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert metrics.rmse([0.0], [1e200]) == pytest.approx(1e200)


# ------------------------------------------------------------------ bad input
TEST = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32))
M, RM = metrics, metrics.ranking_metrics
BAD_CALLS = {  # name: (call, error, message that names the argument)
    "nan y_pred": (lambda: M.rmse([1.0, 2, 3], [1.0, np.nan, 3]), ValueError, "finite"),
    "inf y_true": (lambda: M.mae([np.inf, 1.0], [1.0, 1.0]), ValueError, "finite"),
    "lengths": (lambda: M.mae([1.0, 2.0, 3.0], [1.0, 2.0]), ValueError, "y_pred"),
    "no ratings": (lambda: M.rmse([], []), ValueError, "no ratings"),
    "1-d lists": (lambda: RM(np.array([3, 1]), TEST), ValueError, "recommended must be 2-d"),
    "3-d lists": (lambda: RM(np.zeros((2, 1, 1), int), TEST), ValueError, "recommended"),
    "k=0 lists": (lambda: RM(np.zeros((2, 0), int), TEST), ValueError, "recommended"),
    "float ids": (lambda: RM(np.array([[3.0], [1.0]]), TEST), TypeError, "recommended"),
    "id past items": (lambda: RM(np.array([[4], [1]]), TEST), ValueError, "recommended"),
    "negative user": (lambda: RM(np.array([[0]]), TEST, [-1]), ValueError, "users must be >="),
    "user past rows": (lambda: RM(np.array([[0]]), TEST, [2]), ValueError, "users must be <"),
    "dense test": (lambda: RM(np.array([[0], [1]]), TEST.toarray()), TypeError, "test must"),
    "n_items < 0": (lambda: M.catalog_coverage([[0]], -1), ValueError, "n_items"),
    "n_items bool": (lambda: M.catalog_coverage([[0]], True), TypeError, "n_items"),
    "1-d vectors": (lambda: M.intra_list_diversity([[0, 1]], np.ones(4)), ValueError,
                    "item_vectors"),
    "negative k": (lambda: M.evaluate(object(), TEST, TEST, k=-1), ValueError, "k must be >="),
    "negative K": (lambda: M.ranking_metrics_at_k(object(), TEST, TEST, K=-5), ValueError,
                   "K must be >="),
    "float k": (lambda: M.evaluate(object(), TEST, TEST, k=2.0), TypeError, "k must be"),
    "cold_users": (lambda: M.evaluate(object(), TEST, TEST, cold_users="drop"), ValueError,
                   "cold_users"),
    "crossed shapes": (lambda: M.rmse(np.arange(6.0).reshape(2, 3),
                                      np.arange(6.0).reshape(3, 2)), ValueError, "one shape"),
    "repeat in a list": (lambda: M.intra_list_diversity([[0, 0]], np.eye(2)), ValueError,
                         "recommended must not repeat"),
    "novelty id past items": (lambda: M.novelty([[0, 4]], TEST), ValueError, "recommended"),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_metric_input_is_a_named_error(case):
    call, error, message = BAD_CALLS[case]
    with pytest.raises(error, match=message):
        call()


RAGGED = {  # function: (call with a ragged argument, that argument's name)
    "rmse": (lambda: M.rmse([[1.0, 2.0], [3.0]], [1.0, 2.0, 3.0]), "y_true"),
    "ranking_metrics": (lambda: RM([[0, 1], [2]], TEST), "recommended"),
    "catalog_coverage": (lambda: M.catalog_coverage([[0, 1], [2]], 4), "recommended"),
    "novelty": (lambda: M.novelty([[0, 1], [2]], TEST), "recommended"),
    "diversity": (lambda: M.intra_list_diversity([[0, 1], [2]], np.eye(4)), "recommended"),
}


@pytest.mark.parametrize("function", sorted(RAGGED))
def test_ragged_input_error_names_the_argument(function):
    call, name = RAGGED[function]
    with pytest.raises((ValueError, TypeError), match=name):
        call()


# ------------------------------------------------------------------ evaluate
class ScoreModel:
    """recfuse-style model over a fixed score table: seen items filtered, -1 padding."""

    def __init__(self, scores):
        self.scores = scores

    def lists(self, users, seen_sets, k):
        out = np.full((len(users), k), -1, dtype=np.int64)
        for row, (user, seen) in enumerate(zip(users, seen_sets)):
            order = sorted(range(self.scores.shape[1]), key=lambda i: -self.scores[user, i])
            top = [i for i in order if i not in seen][:k]
            out[row, :len(top)] = top
        return out

    def recommend(self, user_ids, user_items=None, k=10, filter_seen=True):
        return self.lists(user_ids, [set(r.indices.tolist()) for r in user_items], k), None

    def predict(self, users, items):
        return self.scores[users, items]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_evaluate_matches_oracle_pipeline(data):
    n_users, n_items = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    train, train_sets, _ = data.draw(messy_csr(n_users, n_items))
    test, test_sets, test_values = data.draw(messy_csr(n_users, n_items))
    k = data.draw(st.integers(1, n_items + 2))
    cold_users = data.draw(st.sampled_from(["include", "skip"]))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    scores = rng.permutation(n_users * n_items).reshape(n_users, n_items) / 7.0  # no ties
    vectors = rng.choice([-2, -1, 1, 2], size=(n_items, 3))  # int, never a zero vector
    model = ScoreModel(scores)
    users = [u for u in range(n_users) if test_sets[u]
             and (cold_users == "include" or train_sets[u])]
    lists = model.lists(users, [train_sets[u] for u in users], k)
    want = oracle_ranking(lists, [test_sets[u] for u in users], n_items)
    valid = [i for i in lists.ravel().tolist() if i >= 0]
    want["coverage"] = len(set(valid)) / n_items
    # novelty: a train user with an item stored twice, or stored as 0, "has" it (once)
    counts = [sum(i in s for s in train_sets) for i in range(n_items)]
    want["novelty"] = (sum(-math.log2(max(counts[i], 1) / n_users) for i in valid) / len(valid)
                       if valid else 0.0)
    errors = [scores[u, i] - v for (u, i), v in test_values.items() if u in users]
    want["rmse"] = math.sqrt(sum(e * e for e in errors) / len(errors)) if errors else math.nan
    want["mae"] = sum(abs(e) for e in errors) / len(errors) if errors else math.nan
    got = metrics.evaluate(model, train, test, k, cold_users=cold_users,
                           item_vectors=vectors, batch_size=data.draw(st.integers(1, 3)))
    assert_metrics(got, want)
    assert got["users"] == len(users) and got["k"] == k
    assert got["cold_users"] == sum(1 for u in range(n_users)
                                    if test_sets[u] and not train_sets[u])
    assert got["diversity"] == pytest.approx(oracle_diversity(lists, vectors), nan_ok=True)


def test_evaluate_skip_leaves_cold_users_out_of_rmse():
    # Reading: "left out" means out of the whole evaluation, as `users` counts them out
    train = sp.csr_matrix(np.array([[1, 0, 0], [0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 1, 0], [0, 0, 3]], np.float32))
    result = metrics.evaluate(ScoreModel(np.ones((2, 3))), train, test, 2, cold_users="skip")
    assert result["users"] == 1
    assert result["rmse"] == 0.0 and result["mae"] == 0.0  # user 0: predicted 1, true 1


def test_evaluate_implicit_style_model_lists_leave_seen_items_out():
    # implicit 0.7 (and recfuse.compat.implicit) fill a list short of unseen candidates
    # with the filtered items themselves (score -FLT_MAX), not with item 0 again
    from recfuse.compat.implicit import AlternatingLeastSquares

    train = sp.csr_matrix(np.array([[1, 1, 0, 0]] * 3, np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 0], [0, 0, 0, 1], [0, 0, 1, 1]], np.float32))
    model = AlternatingLeastSquares(factors=2, iterations=2, random_state=0)
    model.fit(train, show_progress=False)
    result = metrics.evaluate(model, train, test, k=4)
    assert result["coverage"] == 0.5  # only items 2 and 3 are unseen (a recfuse ALS: 0.5)
    assert result["novelty"] == pytest.approx(math.log2(3))  # no train user has 2 or 3


def test_ranking_metrics_at_k_refuses_k_equal_to_its_default_with_K():
    model = ScoreModel(np.arange(8.0).reshape(2, 4))
    with pytest.raises(TypeError, match="not both"):
        metrics.ranking_metrics_at_k(model, TEST, TEST, 10, K=5)


# ------------------------------------------------------------------ splits
@st.composite
def event_logs(draw):
    """(Interactions, oracle {(user, item): (summed weight, latest time ns)}) of events with
    duplicate pairs, few distinct times (ties), float weights, one-event users."""
    n = draw(st.integers(1, 30))
    column = lambda top: draw(st.lists(st.integers(0, top), min_size=n, max_size=n))  # noqa
    users, items, seconds = column(5), column(6), column(3)
    weights = draw(st.lists(st.sampled_from([0.5, 1.0, 2.25]), min_size=n, max_size=n))
    pairs = {}
    for u, i, w, t in zip(users, items, weights, seconds):
        value, time = pairs.get((u, i), (0.0, -1))
        pairs[u, i] = (value + w, max(time, t * 10**9))
    return Interactions.from_arrays(users, items, weights, timestamps=np.array(seconds)), pairs


def pair_table(log):
    """{(user id, item id): (value, time)} of a log's stored pairs."""
    users = log.user_ids.ids[log.user_codes].tolist()
    items = log.item_ids.ids[log._indices].tolist()
    return {(u, i): (float(v), int(t))
            for u, i, v, t in zip(users, items, log._values, log._times)}


@settings(max_examples=60, deadline=None)
@given(event_logs(), st.sampled_from([0.0, 1e-12, 0.2, 0.5, 0.999999]), st.integers(0, 3),
       st.integers(1, 3), st.integers(0, 2))
def test_splits_partition_exactly_and_drop_cold_as_documented(log_and_pairs, fraction, seed,
                                                              n, min_train):
    log, every = log_and_pairs
    assert pair_table(log) == every  # duplicate events: one pair, weights summed, latest time
    calls = {
        "random": lambda log, **kw: split.random_split(log, fraction, seed=seed, **kw),
        "per_user": lambda log, **kw: split.per_user_split(log, fraction, seed=seed,
                                                           min_train=min_train, **kw),
        "last_n": lambda log, **kw: split.leave_last_n(log, n, seed=seed, min_train=min_train,
                                                       **kw),
        "temporal": lambda log, **kw: split.temporal_split(log, test_fraction=fraction, **kw),
        "cut": lambda log, **kw: split.temporal_split(log, 1.5, **kw),  # seconds
    }
    for name, call in calls.items():
        train, test = call(log)
        assert train.shape == test.shape == log.shape, name
        tr, te = pair_table(train), pair_table(test)
        assert not tr.keys() & te.keys() and {**tr, **te} == every, name  # values, times kept
        again = pair_table(call(log)[1])
        assert again == te, name  # same seed, same split
        # drop_cold: train unchanged; test keeps exactly its pairs with a trained user and item
        warm_train, warm_test = call(log, drop_cold=True)
        trained_users, trained_items = {u for u, _ in tr}, {i for _, i in tr}
        assert pair_table(warm_train) == tr, name
        assert pair_table(warm_test) == {p: x for p, x in te.items()
                                         if p[0] in trained_users and p[1] in trained_items}
    assert len(pair_table(calls["random"](log)[1])) == math.floor(
        round(fraction * len(every), 9) + 0.5)  # exactly fraction x pairs, half up
    per_user_test = pair_table(calls["per_user"](log)[1])
    last_n = [pair_table(part) for part in calls["last_n"](log)]
    for user in {u for u, _ in every}:
        n_u = sum(u == user for u, _ in every)
        assert sum(u == user for u, _ in per_user_test) == min(
            math.floor(round(fraction * n_u, 9) + 0.5), max(n_u - min_train, 0))
        tr, te = (sorted(t for (u, _), (_, t) in part.items() if u == user) for part in last_n)
        assert len(te) == (n if n_u >= n + min_train else 0)
        assert not (tr and te) or tr[-1] <= te[0]  # never trains on later
    # temporal cut by fraction: floor(f x pairs)-th latest time, ties at the cut all test
    times = sorted((t for _, t in every.values()), reverse=True)
    count = math.floor(round(fraction * len(times), 9))
    test_times = [t for _, t in pair_table(calls["temporal"](log)[1]).values()]
    assert len(test_times) == (sum(t >= times[count - 1] for t in times) if count else 0)
    before, after = (pair_table(part) for part in calls["cut"](log))
    assert all(t < 1.5e9 for _, t in before.values()) and all(t >= 1.5e9 for _, t in
                                                              after.values())


def test_leave_last_n_uses_a_pair_s_latest_event_and_breaks_ties_at_random():
    # item 7: events at 1 s and 9 s -> time 9 s, the latest pair despite its early event
    log = Interactions.from_arrays([0, 0, 0], [7, 8, 7], timestamps=[1, 5, 9])
    test = split.leave_last_n(log, 1)[1]
    assert test.item_ids.ids[test._indices].tolist() == [7]
    tied = Interactions.from_arrays([0, 0, 0, 0], [1, 2, 3, 4], timestamps=[5, 5, 5, 0])
    chosen = {int(split.leave_last_n(tied, 1, seed=s)[1]._indices[0]) for s in range(40)}
    assert chosen == {0, 1, 2}  # each tied latest pair is held out for some seed


@settings(max_examples=60, deadline=None)
@given(messy_csr(), st.sampled_from([0.0, 0.3, 0.75]), st.integers(0, 3))
def test_splits_of_a_messy_matrix_keep_every_stored_entry(matrix_and_sets, fraction, seed):
    # duplicates are summed into one pair, stored zeros stay pairs, values come back float32
    matrix, _, summed = matrix_and_sets
    for source in (matrix, matrix.tocoo()):
        for splitter in (split.random_split, split.per_user_split):
            train, test = splitter(source, fraction, seed=seed)
            assert sp.isspmatrix_csr(train) and sp.isspmatrix_csr(test)
            assert train.shape == test.shape == matrix.shape
            assert train.dtype == test.dtype == np.float32
            tr, te = entries(train), entries(test)
            assert not tr.keys() & te.keys()
            assert {**tr, **te} == {p: float(np.float32(v)) for p, v in summed.items()}
            assert fraction or not te


def entries(matrix):
    coo = matrix.tocoo()
    return dict(zip(zip(coo.row.tolist(), coo.col.tolist()), coo.data.tolist()))


@pytest.mark.parametrize("fraction, error", [(1.0, ValueError), (1.5, ValueError),
                                             (-0.1, ValueError), (float("nan"), ValueError),
                                             ("0.2", TypeError)])
def test_bad_test_fraction_is_a_named_error(fraction, error):
    log = Interactions.from_arrays([0, 1], [1, 0], timestamps=[1, 2])
    for call in (lambda: split.random_split(log, fraction),
                 lambda: split.per_user_split(log, fraction),
                 lambda: split.temporal_split(log, test_fraction=fraction)):
        with pytest.raises(error, match="test_fraction"):
            call()
