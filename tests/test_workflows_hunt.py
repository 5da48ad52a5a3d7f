"""Adversarial hunt on end-to-end workflows: the seams between ingestion, splits, the factor
models, evaluation, persistence, the serving layer and the command line, as a user chains
them.

The contract used (README "Using it", "The data path", "Serving", the command line; the
docstrings of Interactions, recfuse.split, the models, metrics.evaluate, Recommender):

- ``Interactions`` numbers ids of one type in sorted order and maps them back both ways;
  ``combine`` sum / max / last (latest by time) / count merges a pair's events; ``add``
  gives what one ingestion of all the events gives; the time-based splits never train on
  anything later than what they test;
- a factor model's ``recommend`` scores x_u . y_i (plus offsets for the rating models),
  ties to the smaller id, seen items of training filtered; fitting on an ``Interactions``, on
  its matrix or (rating models) on its entries as arrays trains one model; ``save`` ->
  ``load`` (with or without mmap) recommends the same; ``recommend_all`` is ``recommend`` in
  chunks;
- ``metrics.evaluate`` equals a hand computation of implicit's definitions;
- ``Recommender`` answers a warm user as the model's ``recommend`` does; an ALS fold-in is
  the least-squares solution of the user's whole row, ExplicitALS's the weighted-lambda
  solve; ``pending_events`` saved with ``np.savez`` and observed again restores the users;
  ``swap_model`` replays the log;
- the command line runs the same chain as the Python API: ``recfuse recommend`` takes the
  users "as in the event log", and its cold users get what the serving layer's cold start
  gives them.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import Interactions, metrics, split
from recfuse import cli

HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def by_score_then_id(scores: np.ndarray, candidates) -> list[int]:
    """The oracle's order: score descending, ties to the smaller id."""
    candidates = np.asarray(list(candidates), dtype=np.int64)
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order].tolist()


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    """``recfuse ARGV`` in this process: (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


# ------------------------------------------------------------------ ids through the chain


def test_odd_string_ids_map_back_through_fit_and_recommend():
    users = ["alice", "bob", "alice", "carol", "bob", "dave", "", "é", "é"]
    items = ["007", "7", "x", "007", "y", "z", "7", "x", "ü"]
    log = Interactions.from_arrays(users, items)
    assert log.item_ids.ids.tolist() == ["007", "7", "x", "y", "z", "ü"]  # "007" != "7"
    assert log.user_ids.ids.tolist() == ["", "alice", "bob", "carol", "dave", "é"]
    model = recfuse.ALS(factors=4, iterations=5, solver="cholesky", dtype=np.float64,
                        random_state=0).fit(log)
    X, Y = model.user_factors, model.item_factors
    for name in ["alice", "", "é"]:
        u = int(log.user_ids.to_internal([name])[0])
        ids, scores = model.recommend(u, k=10)
        seen = {items[t] for t in range(len(users)) if users[t] == name}
        unseen = [j for j in range(log.n_items) if log.item_ids.ids[j] not in seen]
        brute = X[u] @ Y.T
        assert ids[ids >= 0].tolist() == by_score_then_id(brute, unseen)
        # one recommended id's score by hand, and its external id
        top = int(ids[0])
        assert scores[0] == pytest.approx(brute[top], rel=1e-5, abs=1e-6)
        assert log.item_ids.to_external([top])[0] not in seen


@pytest.mark.parametrize("ids", [np.array([10**12, 5, 10**12, -3]),
                                 np.array([2**64 - 1, 0, 2**63, 0], dtype=np.uint64),
                                 np.array([7, 1, 7, 2], dtype=">i8")],
                         ids=["1e12", "uint64", "big-endian"])
def test_wide_integer_ids_survive_split_save_and_load(tmp_path, ids):
    log = Interactions.from_arrays(ids, [1, 2, 2, 1])
    path = str(tmp_path / "log.npz")
    log.save(path)
    back = Interactions.load(path)
    assert back.user_ids.ids.tolist() == sorted(set(ids.tolist()))
    assert (back.matrix != log.matrix).nnz == 0
    rows = back.user_ids.to_internal(ids)
    assert all(back.matrix[rows[t], back.item_ids.to_internal([[1, 2, 2, 1][t]])[0]] == 1
               for t in range(4))


# ------------------------------------------------------------------ ingestion and splits

EVENTS = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 6),
                            st.sampled_from([0.0, 1.0, 2.5, 7.0])), min_size=1, max_size=30)


@HYPOTHESIS
@given(EVENTS, st.sampled_from(["sum", "max", "last", "count"]), st.integers(1, 3),
       st.floats(0, 0.99))
def test_combine_and_time_splits_match_a_hand_oracle(events, combine, n, fraction):
    u, i, t, w = map(np.array, zip(*events))
    log = Interactions.from_arrays(u, i, w, timestamps=t.astype(np.int64), combine=combine)
    dense = log.matrix.toarray()
    pairs: dict = {}
    for user, item, time, weight in events:
        pairs.setdefault((user, item), []).append((time, weight))
    for (user, item), got in pairs.items():
        value = dense[log.user_ids.position(user), log.item_ids.position(item)]
        weights = [x for _, x in got]
        if combine == "last":  # the latest by time (events at one time: any of them)
            latest = max(time for time, _ in got)
            assert value in [x for time, x in got if time == latest]
        else:
            expected = {"sum": sum(weights), "max": max(weights), "count": len(weights)}[combine]
            assert value == pytest.approx(expected)
    # leave_last_n: each user's n latest pairs, for users with at least n + 1
    train, test = split.leave_last_n(log, n, seed=1)
    assert train.nnz + test.nnz == log.nnz
    per_user = np.diff(log.matrix.indptr)
    assert np.diff(test.matrix.indptr).tolist() == np.where(per_user >= n + 1, n, 0).tolist()
    for user in range(log.n_users):
        trained = train.timestamps[train.matrix.indptr[user]:train.matrix.indptr[user + 1]]
        tested = test.timestamps[test.matrix.indptr[user]:test.matrix.indptr[user + 1]]
        if trained.size and tested.size:
            assert trained.max() <= tested.min()
        keys = set(train.matrix[user].indices.tolist()) & set(test.matrix[user].indices.tolist())
        assert not keys
    # temporal_split: everything before the cut trains
    train, test = split.temporal_split(log, test_fraction=fraction)
    assert train.nnz + test.nnz == log.nnz
    if train.nnz and test.nnz:
        assert train.timestamps.max() < test.timestamps.min()
    assert test.nnz >= int(np.floor(round(fraction * log.nnz, 9)))


def test_add_equals_one_ingestion_of_all_the_events():
    # "last" with an added event older than the stored one: the stored one stays
    log = Interactions.from_arrays([1, 2], [1, 1], [5.0, 1.0], timestamps=[100, 100],
                                   combine="last")
    grown = log.add(users=[1, 3], items=[1, 1], weights=[2.0, 7.0], timestamps=[50, 10])
    once = Interactions.from_arrays([1, 2, 1, 3], [1, 1, 1, 1], [5.0, 1.0, 2.0, 7.0],
                                    timestamps=[100, 100, 50, 10], combine="last")
    assert grown.matrix.toarray().tolist() == once.matrix.toarray().tolist()
    # half-life: later and earlier additions decay as one ingestion does
    day = 86400
    base = Interactions.from_arrays([1, 1, 2], [1, 2, 1], [1.0] * 3,
                                    timestamps=[0, day, 2 * day], half_life="1D")
    for extra in ([1, 1, 4 * day], [2, 2, 0]):
        grown = base.add(users=[extra[0]], items=[extra[1]], weights=[1.0],
                         timestamps=[extra[2]])
        once = Interactions.from_arrays([1, 1, 2, extra[0]], [1, 2, 1, extra[1]], [1.0] * 4,
                                        timestamps=[0, day, 2 * day, extra[2]],
                                        half_life="1D")
        np.testing.assert_allclose(grown.matrix.toarray(), once.matrix.toarray(), rtol=1e-6)
    # bm25 weighs the grown pairs as a fresh ingestion
    base = Interactions.from_arrays([1, 1, 2], [1, 2, 1], [1.0, 3.0, 1.0], weighting="bm25")
    grown = base.add(users=[3], items=[2], weights=[2.0])
    once = Interactions.from_arrays([1, 1, 2, 3], [1, 2, 1, 2], [1.0, 3.0, 1.0, 2.0],
                                    weighting="bm25")
    np.testing.assert_allclose(grown.matrix.toarray(), once.matrix.toarray(), rtol=1e-6)


# ------------------------------------------------------------------ fit, save, load


@pytest.fixture(scope="module")
def rating_log():
    rng = np.random.default_rng(1)
    n = 300
    users, items = rng.integers(0, 30, n), rng.integers(0, 25, n)
    ratings = rng.integers(1, 6, n).astype(float)
    return Interactions.from_arrays(users, items, ratings, combine="last")


RATING_MODELS = [
    pytest.param(lambda: recfuse.SVD(factors=4, epochs=5, random_state=0), id="svd"),
    pytest.param(lambda: recfuse.SVDpp(factors=4, epochs=3, random_state=0), id="svdpp"),
    pytest.param(lambda: recfuse.ExplicitALS(factors=4, iterations=3, random_state=0),
                 id="explicit-als"),
]
MATRIX_MODELS = [
    pytest.param(lambda: recfuse.ALS(factors=4, iterations=3, random_state=0), id="als"),
    pytest.param(lambda: recfuse.BPR(factors=4, iterations=3, random_state=0), id="bpr"),
]


@pytest.mark.parametrize("make", RATING_MODELS + MATRIX_MODELS)
def test_one_model_from_interactions_matrix_or_arrays_and_after_save_load(
        tmp_path, rating_log, make):
    matrix = rating_log.matrix
    from_log = make().fit(rating_log)
    from_matrix = make().fit(matrix)
    np.testing.assert_array_equal(from_log.user_factors, from_matrix.user_factors)
    np.testing.assert_array_equal(from_log.item_factors, from_matrix.item_factors)
    if hasattr(from_log, "predict"):  # the rating models take the entries as arrays too
        coo = matrix.tocoo()
        from_arrays = make().fit(coo.row, coo.col, coo.data)
        np.testing.assert_array_equal(from_log.user_factors, from_arrays.user_factors)
    users = np.arange(rating_log.n_users)
    expected = from_log.recommend(users, k=7)
    path = str(tmp_path / "model.npz")
    from_log.save(path)
    for mmap in (False, True):
        loaded = recfuse.load(path, mmap=mmap)
        got = loaded.recommend(users, k=7)
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])
    # recommend_all in odd chunks is recommend, ties and padding included (k > items)
    chunks = list(from_log.recommend_all(k=30, batch_size=7))
    ids, scores = from_log.recommend(users, k=30)
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), ids)
    np.testing.assert_array_equal(np.concatenate([c[2] for c in chunks]), scores)
    np.testing.assert_array_equal(np.concatenate([c[0] for c in chunks]), users)


def test_recommend_all_parquet_holds_the_recommend_lists(tmp_path, rating_log):
    pq = pytest.importorskip("pyarrow.parquet")
    model = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(rating_log)
    path = str(tmp_path / "recs.parquet")
    rows = model.recommend_all(k=40, path=path)  # k above the 25 items: padding dropped
    ids, scores = model.recommend(np.arange(rating_log.n_users), k=40)
    keep = ids >= 0
    table = pq.read_table(path).to_pandas()
    assert rows == keep.sum() == len(table)
    np.testing.assert_array_equal(table["user"].to_numpy(), np.nonzero(keep)[0])
    np.testing.assert_array_equal(table["rank"].to_numpy(), np.nonzero(keep)[1])
    np.testing.assert_array_equal(table["item"].to_numpy(), ids[keep])
    np.testing.assert_array_equal(table["score"].to_numpy(), scores[keep])


def test_saved_model_loads_and_recommends_alike_in_a_fresh_process(tmp_path, rating_log):
    import subprocess
    import sys

    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(rating_log)
    path = str(tmp_path / "model.npz")
    model.save(path)
    code = ("import recfuse, numpy as np, json, sys; m = recfuse.load(sys.argv[1]); "
            "i, s = m.recommend(np.arange(5), k=6); print(json.dumps([i.tolist(), s.tolist()]))")
    out = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    ids, scores = json.loads(out)
    expected = model.recommend(np.arange(5), k=6)
    assert ids == expected[0].tolist()
    np.testing.assert_array_equal(np.array(scores, np.float32), expected[1])


def test_stored_zero_is_seen_alike_in_model_recommender_and_evaluate():
    users = np.repeat(np.arange(6), 3)
    items = np.array([0, 1, 2, 1, 2, 3, 2, 3, 4, 3, 4, 0, 4, 0, 1, 0, 2, 4])
    weights = np.ones(users.size)
    weights[0] = 0  # user 0's item 0: a stored zero
    log = Interactions.from_arrays(users, items, weights)
    assert log.matrix[0, 0] == 0 and log.matrix.nnz == users.size
    for model in (recfuse.ALS(factors=3, iterations=3, random_state=0),
                  recfuse.BPR(factors=3, iterations=3, random_state=0)):
        model.fit(log)
        ids = model.recommend(0, k=5)[0]
        served = recfuse.Recommender(model, k=5).recommend(0).ids
        assert 0 not in ids.tolist() and 0 not in served.tolist()
        np.testing.assert_array_equal(ids, served)


# ------------------------------------------------------------------ evaluation


def hand_metrics(lists: np.ndarray, test: sp.csr_matrix, k: int) -> dict:
    users = np.flatnonzero(np.diff(test.indptr))
    hits = relevant = 0
    ndcg, recall, mrr = [], [], []
    for u in users:
        liked = set(test[u].indices.tolist())
        ranked = [int(x) for x in lists[u] if x >= 0]
        found = [r for r, x in enumerate(ranked) if x in liked]
        hits += len(found)
        relevant += min(k, len(liked))
        ideal = sum(1 / np.log2(r + 2) for r in range(min(k, len(liked))))
        ndcg.append(sum(1 / np.log2(r + 2) for r in found) / ideal)
        recall.append(len(found) / len(liked))
        mrr.append(1 / (found[0] + 1) if found else 0.0)
    return {"precision": hits / relevant, "ndcg": np.mean(ndcg), "recall": np.mean(recall),
            "mrr": np.mean(mrr), "users": users.size}


@pytest.mark.parametrize("k", [5, 40])
def test_evaluate_after_a_split_equals_a_hand_computation(rating_log, k):
    train, test = split.per_user_split(rating_log, 0.3, seed=3)
    model = recfuse.ALS(factors=6, iterations=4, random_state=3).fit(train)
    result = metrics.evaluate(model, train, test, k=k)
    lists = model.recommend(np.arange(train.n_users), user_items=train.matrix, k=k)[0]
    # seen items of train filtered, test items never
    for u in range(train.n_users):
        assert not set(lists[u].tolist()) & set(train.matrix[u].indices.tolist())
    expected = hand_metrics(lists, test.matrix, k)
    for name in ("precision", "ndcg", "recall", "mrr"):
        assert result[name] == pytest.approx(expected[name]), name
    assert result["users"] == expected["users"]


def test_evaluate_counts_users_and_items_only_in_test():
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]], np.float32))
    test = sp.csr_matrix(np.array([[0, 0, 1, 1], [1, 0, 0, 0], [0, 1, 0, 0]], np.float32))
    model = recfuse.ALS(factors=2, iterations=2, random_state=0).fit(train)
    assert metrics.evaluate(model, train, test, k=2)["cold_users"] == 1
    assert metrics.evaluate(model, train, test, k=2, cold_users="skip")["users"] == 2
    with pytest.raises(ValueError, match="no train items"):
        metrics.evaluate(model, train, test, k=2, cold_users="raise")


# ------------------------------------------------------------------ serving


def test_recommender_answers_warm_users_as_each_model_recommends():
    rng = np.random.default_rng(0)
    n_users, n_items = 25, 40  # users 22-24 and items 32-39 without a rating
    u, i = rng.integers(0, n_users - 3, 200), rng.integers(0, n_items - 8, 200)
    r = rng.integers(1, 6, 200).astype(float)
    models = [recfuse.SVD(factors=4, epochs=5, random_state=0),
              recfuse.SVD(factors=4, epochs=5, biased=False, random_state=0),
              recfuse.SVDpp(factors=4, epochs=3, random_state=0),
              recfuse.ExplicitALS(factors=4, iterations=3, random_state=0)]
    for model in models:
        model.fit(u, i, r, n_users=n_users, n_items=n_items)
    matrix = sp.csr_matrix((r, (u, i)), shape=(n_users, n_items))
    matrix.sum_duplicates()
    models += [recfuse.ALS(factors=4, iterations=3, random_state=0).fit(matrix),
               recfuse.BPR(factors=4, iterations=3, random_state=0).fit(matrix)]
    for model in models:
        served = recfuse.Recommender(model, k=50, candidates=10)
        for user in range(n_users - 3):
            ids, scores = model.recommend(user, k=50)
            answer = served.recommend(user)
            np.testing.assert_array_equal(answer.ids, ids)
            np.testing.assert_allclose(answer.scores, scores, rtol=1e-6)


@pytest.mark.parametrize("confidence", ["linear", "raw"])
def test_als_fold_in_is_the_least_squares_solution_of_the_whole_row(confidence):
    M = sp.random(40, 30, density=0.15, format="csr", random_state=3, dtype=np.float64)
    M.data = np.round(M.data * 5) + 1
    lam, alpha = 0.3, 2.0
    als = recfuse.ALS(factors=5, iterations=4, regularization=lam, alpha=alpha,
                      solver="cholesky", dtype=np.float64, random_state=0,
                      confidence=confidence).fit(M)
    Y = als.item_factors

    def solve(row: dict) -> np.ndarray:
        A, b = Y.T @ Y + lam * np.eye(5), np.zeros(5)
        for item, value in row.items():
            c = 1 + alpha * value if confidence == "linear" else abs(value)
            A += (c - 1) * np.outer(Y[item], Y[item])
            b += c * float(value > 0) * Y[item]
        return np.linalg.solve(A, b)

    rec = recfuse.Recommender(als, k=5)
    row = dict(zip(M[3].indices.tolist(), M[3].data.tolist()))
    first = M[3].indices[0]
    rec.observe({"user": [3, 3, 3], "item": [first, 29, 29], "weight": [2.0, 1.0, 0.5]})
    row[first] += 2.0
    row[29] = row.get(29, 0.0) + 1.5
    np.testing.assert_allclose(rec._state.users[3].vector, solve(row), atol=1e-10)
    rec.observe({"user": [100, 100], "item": [1, 2], "weight": [1.0, 3.0]})  # a new user
    x = solve({1: 1.0, 2: 3.0})
    np.testing.assert_allclose(rec._state.users[100].vector, x, atol=1e-10)
    assert rec.recommend(100).ids.tolist() == [j for j in by_score_then_id(Y @ x, range(30))
                                               if j not in (1, 2)][:5]


def test_explicit_als_fold_in_is_the_weighted_lambda_solve():
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 20, 300), rng.integers(0, 15, 300)
    r = rng.integers(1, 6, 300).astype(float)
    model = recfuse.ExplicitALS(factors=4, iterations=5, reg=0.1, dtype=np.float64,
                                random_state=0).fit(u, i, r)
    Y, bias, mean = model.item_factors, model.item_bias, model.global_mean

    def solve(items, ratings):
        n = len(items)
        Z = np.c_[Y[items], np.ones(n)]
        D = np.diag([0.1] * 4 + [model.bias_reg]) * n
        s = np.linalg.solve(Z.T @ Z + D, Z.T @ (np.array(ratings) - mean - bias[items]))
        return s[:4], mean + s[4]

    rec = recfuse.Recommender(model, k=5)
    rec.observe({"user": [3, 3, 25], "item": [2, 2, 7], "weight": [5.0, 1.0, 4.0]})
    for user, (items, ratings) in {3: (list(i[u == 3]) + [2, 2], list(r[u == 3]) + [5.0, 1.0]),
                                   25: ([7], [4.0])}.items():
        vector, offset = solve(items, ratings)
        entry = rec._state.users[user]
        np.testing.assert_allclose(entry.vector, vector, atol=1e-10)
        assert entry.offset == pytest.approx(offset, abs=1e-10)


@pytest.mark.parametrize("kind", ["als", "bpr", "svd", "explicit"])
def test_pending_events_saved_with_savez_restore_the_users(tmp_path, kind):
    M = sp.random(40, 30, density=0.15, format="csr", random_state=3, dtype=np.float32)
    weights = [1, 2, 3, 1, 1]
    if kind == "als":
        model = recfuse.ALS(factors=5, iterations=3, solver="cholesky", random_state=0).fit(M)
    elif kind == "bpr":
        model = recfuse.BPR(factors=5, iterations=3, random_state=0).fit(M)
    else:
        coo = M.tocoo()
        cls = recfuse.SVD if kind == "svd" else recfuse.ExplicitALS
        model = cls(factors=5, random_state=0).fit(coo.row, coo.col, np.ceil(coo.data * 5),
                                                    rating_scale=(1, 5), n_users=40, n_items=30)
        weights = [1, 2, 3, 4, 5]
    rec = recfuse.Recommender(model, k=5)
    rec.observe({"user": [1, 1, 50], "item": [2, 31, 31], "weight": weights[:3]})
    rec.observe({"user": [2, 50], "item": [31, 4], "weight": weights[3:]})
    path = str(tmp_path / "events.npz")
    np.savez(path, **rec.pending_events()._asdict())  # README's restart
    again = recfuse.Recommender(model, k=5)
    with np.load(path) as saved:
        again.observe(recfuse.Events(**saved))
    for user in (1, 2, 50):
        np.testing.assert_array_equal(again._state.users[user].vector,
                                      rec._state.users[user].vector)
        np.testing.assert_array_equal(again.recommend(user).ids, rec.recommend(user).ids)


def test_swap_model_replays_the_log_into_the_new_model():
    M = sp.random(40, 30, density=0.15, format="csr", random_state=3, dtype=np.float64)
    M2 = sp.random(45, 33, density=0.15, format="csr", random_state=4, dtype=np.float64)
    old, new = (recfuse.ALS(factors=5, iterations=3, solver="cholesky", dtype=np.float64,
                            random_state=seed).fit(m) for seed, m in ((0, M), (1, M2)))
    calls = [{"user": [3, 50], "item": [1, 31], "weight": [2.0, 1.0]},
             {"user": [50], "item": [2], "weight": [1.0]}]
    rec = recfuse.Recommender(old, k=5)
    for call in calls:
        rec.observe(call)
    rec.swap_model(new)
    fresh = recfuse.Recommender(new, k=5)
    for call in calls:
        fresh.observe(call)
    for user in (3, 50):
        np.testing.assert_array_equal(rec._state.users[user].vector,
                                      fresh._state.users[user].vector)
        np.testing.assert_array_equal(rec.recommend(user).ids, fresh.recommend(user).ids)
    assert rec.pending_events().users.tolist() == [3, 50, 50]


def test_cold_users_get_popular_items_under_exclusions_and_rules():
    from recfuse.serving import popular_items

    M = sp.random(40, 30, density=0.15, format="csr", random_state=3, dtype=np.float32)
    als = recfuse.ALS(factors=5, iterations=3, random_state=0).fit(M)
    popular = popular_items(M, 30).tolist()
    rec = recfuse.Recommender(als, k=5, rerank=recfuse.Rerank(deny=[popular[1]]))
    expected = [p for p in popular if p != popular[1]]
    assert rec.recommend(1000).ids.tolist() == expected[:5]
    assert rec.recommend(1000, exclude=[popular[0]]).ids.tolist() == expected[1:6]
    batch = rec.recommend_batch([1000, 1001], excludes=[[popular[0]], None])
    assert batch.ids.tolist() == [expected[1:6], expected[:5]]


def test_similar_items_of_a_zero_vector_and_k_beyond_the_catalogue():
    M = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [1, 0, 1, 0, 0],
                                [0, 0, 0, 0, 0]], dtype=np.float32))
    als = recfuse.ALS(factors=3, iterations=3, solver="cholesky", random_state=0).fit(M)
    assert not als.item_factors[3:].any()  # items without data: zero vectors
    ids, scores = als.similar_items(3, k=8)
    assert ids.tolist() == [0, 1, 2, 3, 4, -1, -1, -1]  # similar to nothing: ties by id
    assert scores[:5].tolist() == [0] * 5 and np.isneginf(scores[5:]).all()
    ids, scores = als.similar_items(0, k=8)
    assert ids[0] == 0 and ids.tolist().count(-1) == 3
    assert scores[ids.tolist().index(3)] == 0  # the zero vector's cosine is 0


def test_mlp_ranker_in_a_recommender_ranks_recall_by_its_probability():
    M = sp.random(60, 50, density=0.1, format="csr", random_state=0, dtype=np.float32)
    als = recfuse.ALS(factors=8, iterations=5, random_state=0).fit(M)
    ranker = recfuse.MLPRanker(hidden=(16,), epochs=3, random_state=0).fit(
        M, als.user_factors, als.item_factors)
    rec = recfuse.Recommender(als, ranker=ranker, candidates=20, k=5)
    for user in (0, 5, 17):
        answer = rec.recommend(user)
        candidates = als.recommend(user, k=20)[0]
        rows = np.c_[np.repeat(als.user_factors[user][None], 20, 0),
                     als.item_factors[candidates]]
        probability = (1 / (1 + np.exp(-ranker.predict_logits(rows)))).astype(np.float32)
        order = np.lexsort((candidates, -probability))[:5]
        np.testing.assert_array_equal(answer.ids, candidates[order])
        np.testing.assert_allclose(answer.scores, probability[order], rtol=1e-5)
        assert answer.stages.tolist() == ["rank"] * 5


# ------------------------------------------------------------------ the command line


def write_log(path, seed=5):
    import csv

    rng = np.random.default_rng(seed)
    users = ["007", "7", "alice", "ünï", "x y"] + [f"u{j}" for j in range(30)]
    items = ["007", "7", "i-1"] + [f"it{j}" for j in range(26)]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "rating"])
        for _ in range(600):
            writer.writerow([users[rng.integers(len(users))], items[rng.integers(len(items))],
                             int(rng.integers(1, 6))])


def test_cli_train_recommend_evaluate_equal_the_python_api(tmp_path, capsys):
    log_path, out = str(tmp_path / "log.csv"), str(tmp_path / "out")
    write_log(log_path)
    status, _, err = run_cli(capsys, "train", log_path, "-o", out, "--json", "--factors", "8",
                             "--iterations", "5", "--seed", "3")
    assert status == 0, err
    status, text, err = run_cli(capsys, "recommend", out, "007", "7", "ünï", "x y", "--k", "5",
                                "--json")
    assert status == 0, err
    answer = json.loads(text)["recommendations"]
    status, text, err = run_cli(capsys, "evaluate", out, "--k", "5", "--json")
    assert status == 0, err
    evaluated = json.loads(text)
    # the same chain in Python
    log = Interactions.from_events(log_path)
    train, test = split.per_user_split(log, 0.2, seed=3)
    model = recfuse.ALS(factors=8, iterations=5, regularization=0.05, alpha=2.0,
                        random_state=3).fit(train)
    for user in ("007", "7", "ünï", "x y"):
        row = log.user_ids.to_internal([user])
        ids, scores = model.recommend(row, user_items=train.matrix[row], k=5)
        keep = ids[0] >= 0
        assert [e["item"] for e in answer[user]] == \
            log.item_ids.to_external(ids[0][keep]).tolist()
        np.testing.assert_allclose([e["score"] for e in answer[user]], scores[0][keep],
                                   rtol=1e-6)
    expected = metrics.evaluate(model, train, test, k=5)
    for name in ("precision", "ndcg", "map", "auc", "users", "cold_users"):
        assert evaluated[name] == pytest.approx(expected[name]), name


# ------------------------------------------------------------------ bugs


def test_cli_recommend_finds_the_float_ids_train_accepted(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    rng = np.random.default_rng(0)
    data, out = str(tmp_path / "log.parquet"), str(tmp_path / "out")
    pd.DataFrame({"user": rng.integers(0, 20, 300) + 0.5,
                  "item": rng.integers(0, 15, 300)}).to_parquet(data)
    status, _, err = run_cli(capsys, "train", data, "-o", out, "--factors", "4",
                             "--iterations", "2", "--json")
    if status == 2:  # refusing float ids up front would be right too
        assert "float" in err or "id" in err
        return
    assert status == 0, err
    status, text, err = run_cli(capsys, "recommend", out, "1.5", "--k", "3", "--json")
    # today: exit 2, "unknown user ids (not in the training data): ['1.5']"
    assert status == 0, err
    assert len(json.loads(text)["recommendations"]) == 1


def test_cli_recommend_and_serve_agree_for_a_user_with_a_zero_vector(tmp_path, capsys):
    import csv

    data, out = str(tmp_path / "log.csv"), str(tmp_path / "out")
    rng = np.random.default_rng(2)
    with open(data, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "clicks"])
        for _ in range(400):
            writer.writerow([f"u{rng.integers(0, 20)}", f"i{rng.integers(0, 15)}",
                             int(rng.integers(1, 4))])
        for item in ("i3", "i4", "i5", "i6", "i7", "i8"):  # only zero-weight events
            writer.writerow(["zero", item, 0])
    status, _, err = run_cli(capsys, "train", data, "-o", out, "--weight", "clicks",
                             "--split", "none", "--factors", "4", "--iterations", "3", "--json")
    assert status == 0, err
    from recfuse.persistence import load_folder

    model, train = load_folder(out)
    row = int(train.user_ids.to_internal(["zero"])[0])
    assert not model.user_factors[row].any()  # no positive value: the zero vector
    served = recfuse.Recommender(model, k=5).recommend(row)
    assert served.stages.tolist() == ["popular"] * 5
    status, text, err = run_cli(capsys, "recommend", out, "zero", "--k", "5", "--json")
    assert status == 0, err
    answer = json.loads(text)
    # today: ['i0', 'i1', 'i10', 'i11', 'i12'] (ids 0-4, all scored 0) and popular == []
    assert [e["item"] for e in answer["recommendations"]["zero"]] == \
        train.item_ids.to_external(served.ids).tolist()
    assert answer["popular"] == ["zero"]
