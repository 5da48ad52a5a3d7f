"""Adversarial hunt on the evaluation protocol: recfuse.split, recfuse.metrics and the
`recfuse train` / `recfuse evaluate` command, against plain-Python oracles written from the
docstrings (python/recfuse/split.py, python/recfuse/metrics.py) and README "The data path".

The contract used here:
- splits put each stored (user, item) pair on exactly one side with its value, event count and
  time, keep the id maps and the shape, and are seeded; random_split tests floor(f * nnz + 0.5)
  pairs, per_user_split min(floor(f * n_u + 0.5), max(n_u - min_train, 0)) of each user's;
  leave_last_n tests the n latest pairs (time = latest event) of users with at least
  n + min_train pairs; temporal_split tests the pairs at or after the cut (given, or the time of
  the floor(f * nnz)-th latest pair); drop_cold removes test pairs whose user or item has no
  train pair; a CSR matrix splits as the Interactions made of it does;
- ranking metrics per user: hits, relevant = min(k, |T|), AP = sum over hit ranks r of
  hits_so_far / (r + 1) over relevant, NDCG against the ideal of `relevant` hits, implicit's
  AUC, reciprocal rank of the first hit, recall = hits / |T|; -1 is an empty slot; precision =
  sum hits / sum relevant, the rest means over users; evaluate filters seen items, counts cold
  users as told, and asks for min(k, items) per user;
- rmse / mae as sklearn.metrics computes them; coverage = distinct valid ids / n_items;
  novelty = mean -log2(max(users of i, 1) / n_users); diversity = mean over lists (>= 2 ids)
  of the mean pairwise 1 - cosine, a zero vector having cosine 0.
Bugs are strict xfails (see /work/notes/hunt-evaluation-protocol-ac.md).
"""

from __future__ import annotations

import datetime
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import metrics, split
from recfuse.interactions import Interactions

HUNT = settings(max_examples=60, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=30, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ oracles
def pairs_of(log: Interactions) -> dict:
    """(user code, item code) -> (value, count, time or None) of every stored pair."""
    users = log.user_codes.tolist()
    items = log.matrix.indices.tolist()
    times = [None] * log.nnz if log.timestamps is None else log.timestamps.view(np.int64).tolist()
    return {(u, i): (v, c, t) for u, i, v, c, t in
            zip(users, items, log.values.tolist(), log.counts.tolist(), times)}


def half_up(x: float) -> int:
    return math.floor(round(x, 9) + 0.5)


def user_metrics(ids, liked: set, n_items: int) -> dict:
    """The per-user numbers of the metrics module docstring, one list at a time."""
    k = len(ids)
    hits = misses = 0
    ap = dcg = auc = rr = 0.0
    for rank, item in enumerate(ids):
        if item < 0:  # padding: no item
            continue
        if item in liked:
            hits += 1
            ap += hits / (rank + 1)
            dcg += 1 / math.log2(rank + 2)
            rr = rr or 1 / (rank + 1)
        else:
            misses += 1
            auc += hits
    positives, negatives = len(liked), n_items - len(liked)
    auc += (hits + positives) / 2 * (negatives - misses)
    relevant = min(k, positives)
    ideal = sum(1 / math.log2(r + 2) for r in range(relevant))
    return {"hits": hits, "relevant": relevant, "average_precision": ap / relevant,
            "ndcg": dcg / ideal, "auc": auc / (positives * negatives) if negatives else math.nan,
            "reciprocal_rank": rr, "recall": hits / positives, "hit": float(hits > 0)}


def aggregate(rows: list[dict]) -> dict:
    mean = lambda key: sum(r[key] for r in rows) / len(rows) if rows else 0.0  # noqa: E731
    relevant = sum(r["relevant"] for r in rows)
    aucs = [r["auc"] for r in rows if not math.isnan(r["auc"])]
    return {"precision": sum(r["hits"] for r in rows) / relevant if relevant else 0.0,
            "recall": mean("recall"), "map": mean("average_precision"), "ndcg": mean("ndcg"),
            "auc": sum(aucs) / len(aucs) if aucs else math.nan, "mrr": mean("reciprocal_rank"),
            "hit_rate": mean("hit")}


def close(a, b) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def assert_close(got: dict, want: dict):
    for key, value in want.items():
        assert close(got[key], value), (key, got[key], value)


def liked_sets(test: sp.csr_matrix) -> list[set]:
    return [set(test.indices[test.indptr[u]:test.indptr[u + 1]].tolist())
            for u in range(test.shape[0])]


# ------------------------------------------------------------------------------ strategies
@st.composite
def event_logs(draw, times=True):
    """An Interactions from raw events: repeated (user, item) events, string or int ids,
    timestamp ties."""
    n = draw(st.integers(1, 40))
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    users = draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n))
    weights = draw(st.lists(st.sampled_from([1.0, 0.5, 3.0, 2.25]), min_size=n, max_size=n))
    stamps = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n)) if times else None
    if draw(st.booleans()):
        users = [f"u{u}" for u in users]
    combine = draw(st.sampled_from(["sum", "max", "last", "count"]))
    return Interactions.from_arrays(users, items, weights, stamps, combine=combine)


SPLITS = ["random", "per_user", "leave_last", "temporal_fraction", "temporal_cut"]


def run_split(kind, log, fraction, seed, drop_cold=False, min_train=1, n=1):
    if kind == "random":
        return split.random_split(log, fraction, seed=seed, drop_cold=drop_cold)
    if kind == "per_user":
        return split.per_user_split(log, fraction, seed=seed, min_train=min_train,
                                    drop_cold=drop_cold)
    if kind == "leave_last":
        return split.leave_last_n(log, n, min_train=min_train, seed=seed, drop_cold=drop_cold)
    if kind == "temporal_fraction":
        return split.temporal_split(log, test_fraction=fraction, drop_cold=drop_cold)
    return split.temporal_split(log, 3, drop_cold=drop_cold)  # seconds since the epoch


# ------------------------------------------------------------------------------ splits
@HUNT
@given(log=event_logs(), kind=st.sampled_from(SPLITS),
       fraction=st.sampled_from([0.0, 1e-12, 0.2, 0.5, 0.7, 0.999999]),
       seed=st.integers(0, 3), min_train=st.integers(0, 3), n=st.integers(1, 3))
def test_splits_partition_and_follow_their_rule(log, kind, fraction, seed, min_train, n):
    train, test = run_split(kind, log, fraction, seed, min_train=min_train, n=n)
    # one side each, values, counts and times kept, id maps and shape kept
    whole, tr, te = pairs_of(log), pairs_of(train), pairs_of(test)
    assert not tr.keys() & te.keys()
    assert {**tr, **te} == whole
    assert train.shape == test.shape == log.shape
    assert train.user_ids == log.user_ids and test.item_ids == log.item_ids
    per_user = np.diff(log.matrix.indptr)
    tested = np.bincount(test.user_codes, minlength=log.n_users)
    times = {key: value[2] for key, value in whole.items()}
    if kind == "random":
        assert test.nnz == half_up(fraction * log.nnz)
    elif kind == "per_user":
        want = [min(half_up(fraction * c), max(c - min_train, 0)) for c in per_user.tolist()]
        assert tested.tolist() == want
    elif kind == "leave_last":
        want = [n if c >= n + min_train else 0 for c in per_user.tolist()]
        assert tested.tolist() == want
        for u in range(log.n_users):  # never train on anything later than what is tested
            kept = [t for (v, _), t in times.items() if v == u and (v, _) in tr]
            held = [t for (v, _), t in times.items() if v == u and (v, _) in te]
            if kept and held:
                assert max(kept) <= min(held)
    else:
        ordered = sorted(times.values())
        if kind == "temporal_cut":
            cut = 3 * 10**9
        else:
            count = math.floor(round(fraction * len(ordered), 9))
            cut = ordered[len(ordered) - count] if count else None
        want = {key for key, t in times.items() if cut is not None and t >= cut}
        assert set(te) == want


@HUNT
@given(log=event_logs(), kind=st.sampled_from(SPLITS), seed=st.integers(0, 3))
def test_drop_cold_removes_exactly_the_cold_test_pairs(log, kind, seed):
    train, test = run_split(kind, log, 0.5, seed)
    train_d, test_d = run_split(kind, log, 0.5, seed, drop_cold=True)
    assert pairs_of(train_d) == pairs_of(train)  # train unchanged
    users = set(train.user_codes.tolist())
    items = set(train.matrix.indices.tolist())
    want = {key: v for key, v in pairs_of(test).items() if key[0] in users and key[1] in items}
    assert pairs_of(test_d) == want


@FEW
@given(log=event_logs(times=False), kind=st.sampled_from(["random", "per_user"]),
       seed=st.integers(0, 5))
def test_csr_input_splits_as_its_interactions(log, kind, seed):
    train, test = run_split(kind, log, 0.4, seed)
    matrix = log.matrix.astype(np.float64)
    train_m, test_m = run_split(kind, matrix, 0.4, seed)
    for got, want in ((train_m, train), (test_m, test)):
        assert sp.isspmatrix_csr(got) and got.dtype == np.float32 and got.shape == log.shape
        assert (got != want.matrix).nnz == 0 and got.nnz == want.nnz


def test_csr_duplicates_and_stored_zeros_stay_one_pair_each():
    # COO with a repeated entry (summed) and an explicit zero (a stored pair)
    coo = sp.coo_matrix(([1.0, 2.0, 0.0, 4.0], ([0, 0, 1, 1], [1, 1, 0, 2])), shape=(2, 3))
    train, test = split.random_split(coo, 0.5, seed=0)
    total = train + test
    assert train.nnz + test.nnz == 3
    assert total[0, 1] == 3.0 and total[1, 2] == 4.0


def test_seed_reproduces_and_another_seed_differs():
    rng = np.random.default_rng(0)
    log = Interactions.from_arrays(rng.integers(0, 50, 2000), rng.integers(0, 80, 2000),
                                   timestamps=rng.integers(0, 5, 2000))
    for fn in (split.random_split, split.per_user_split):
        a, b, c = (fn(log, 0.3, seed=s)[1] for s in (7, 7, 8))
        assert pairs_of(a) == pairs_of(b) and pairs_of(a) != pairs_of(c)
        # random_state is the models' name for seed
        assert pairs_of(fn(log, 0.3, random_state=7)[1]) == pairs_of(a)
    # leave_last_n's ties (only 5 distinct times) are broken by the seed
    a, b, c = (split.leave_last_n(log, 2, seed=s)[1] for s in (1, 1, 2))
    assert pairs_of(a) == pairs_of(b) and pairs_of(a) != pairs_of(c)


@pytest.mark.parametrize("cut", [
    20, 20.0, np.int64(20), np.float32(20), np.datetime64(20, "s"), "1970-01-01 00:00:20",
    "1970-01-01T02:00:20+02:00", datetime.datetime(1970, 1, 1, 0, 0, 20),
    datetime.datetime(1970, 1, 1, 2, 0, 20,
                      tzinfo=datetime.timezone(datetime.timedelta(hours=2)))],
    ids=lambda c: type(c).__name__)
def test_temporal_cut_in_any_form_is_one_instant(cut):
    log = Interactions.from_arrays([1, 1, 1, 2, 2, 3], [1, 2, 3, 1, 3, 1],
                                   timestamps=[10, 20, 20, 5, 7, 100])
    train, test = split.temporal_split(log, cut)
    assert test.nnz == 3 and train.nnz == 3
    assert test.timestamps.view(np.int64).min() == 20 * 10**9


@pytest.mark.parametrize("call, error", [
    (lambda log: split.random_split(log, 1.0), ValueError),
    (lambda log: split.random_split(log, -0.1), ValueError),
    (lambda log: split.random_split(log, float("nan")), ValueError),
    (lambda log: split.random_split(log, "0.2"), TypeError),
    (lambda log: split.random_split(log, True), TypeError),
    (lambda log: split.per_user_split(log, 0.2, min_train=-1), ValueError),
    (lambda log: split.leave_last_n(log, 0), ValueError),
    (lambda log: split.leave_last_n(log.matrix, 1), ValueError),  # no times
    (lambda log: split.temporal_split(log), ValueError),
    (lambda log: split.temporal_split(log, 3, test_fraction=0.2), ValueError),
    (lambda log: split.temporal_split(log, float("nan")), ValueError),
    (lambda log: split.temporal_split(log, [3]), TypeError),
    (lambda log: split.random_split(log.matrix.toarray(), 0.2), TypeError),
    (lambda log: split.random_split(log, 0.2, seed=5, random_state=5), TypeError),
    (lambda log: split.random_split(log, 0.2, seed=-1), ValueError),
])
def test_bad_split_arguments_are_refused(call, error):
    log = Interactions.from_arrays([1, 1, 2], [1, 2, 1], timestamps=[1, 2, 3])
    with pytest.raises(error):
        call(log)


@pytest.mark.parametrize("fn", ["random_split", "per_user_split", "leave_last_n",
                                "temporal_split"])
def test_drop_cold_that_is_no_bool_is_refused(fn):
    log = Interactions.from_arrays([1, 1, 2, 2, 3], [1, 2, 1, 3, 4], timestamps=[1, 2, 3, 4, 5])
    call = getattr(split, fn)
    kwargs = {"test_fraction": 0.5} if fn == "temporal_split" else {}
    with pytest.raises(TypeError, match="drop_cold"):
        call(log, drop_cold="no", **kwargs)


def test_per_user_split_min_train_past_int64_is_named_or_keeps_all():
    log = Interactions.from_arrays([1, 1, 2, 2], [1, 2, 1, 3])
    try:
        train, test = split.per_user_split(log, 0.5, min_train=2**63)
    except ValueError as error:
        assert "min_train" in str(error)
    else:
        assert test.nnz == 0 and train.nnz == 4  # as min_train=2**63 - 1 does


def test_seed_zero_given_with_random_state_is_refused():
    log = Interactions.from_arrays([1, 1, 2, 2], [1, 2, 1, 3])
    with pytest.raises(TypeError):
        split.random_split(log, 0.5, seed=0, random_state=5)


# ------------------------------------------------------------------------------ ranking metrics
@st.composite
def lists_and_tests(draw):
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    k = draw(st.integers(1, n_items + 3))
    dense = np.array(draw(st.lists(st.lists(st.booleans(), min_size=n_items, max_size=n_items),
                                   min_size=n_users, max_size=n_users)))
    dense[draw(st.integers(0, n_users - 1)), draw(st.integers(0, n_items - 1))] = True
    with_items = np.flatnonzero(dense.any(axis=1))
    users = draw(st.one_of(st.none(), st.lists(st.sampled_from(with_items.tolist()),
                                               min_size=0, max_size=8)))
    rows = with_items.tolist() if users is None else users
    lists = []
    for _ in rows:
        chosen = draw(st.lists(st.integers(0, n_items - 1), unique=True,
                               max_size=min(k, n_items)))
        row = chosen + [-1] * (k - len(chosen))
        if draw(st.booleans()):  # padding anywhere, not only at the end
            row = draw(st.permutations(row))
        lists.append(row)
    return np.array(lists, dtype=np.int64).reshape(len(rows), k), dense, users, rows


@HUNT
@given(data=lists_and_tests(), threads=st.integers(0, 3))
def test_ranking_metrics_match_the_docstring_oracle(data, threads):
    ids, dense, users, rows = data
    test = sp.csr_matrix(dense.astype(np.float32))
    liked = liked_sets(test)
    got = metrics.ranking_metrics(ids, test, users, per_user=True, num_threads=threads)
    per_user = [user_metrics(ids[r].tolist(), liked[u], dense.shape[1])
                for r, u in enumerate(rows)]
    assert_close(got, aggregate(per_user))
    for name, column in got["per_user"].items():  # one row per evaluated user, in order
        assert column.shape == (len(rows),)
        assert all(close(float(a), b[name]) for a, b in zip(column, per_user)), name


def test_ranking_metrics_ideal_dcg_with_fewer_relevant_than_k():
    test = sp.csr_matrix(np.array([[0, 0, 1, 0, 0]], np.float32))
    result = metrics.ranking_metrics([[2, 0, 1, -1, -1]], test)
    assert result["ndcg"] == 1.0 and result["precision"] == 1.0 and result["map"] == 1.0
    result = metrics.ranking_metrics([[0, 2, 1]], test)
    assert result["ndcg"] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("layout", ["list", "uint8", "int8", "big-endian", "fortran",
                                    "strided", "read-only", "int32"])
def test_ranking_metrics_take_any_integer_layout(layout):
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], np.float32))
    base = np.array([[3, 0, -1], [2, 1, -1], [-1, 0, 1]])
    want = metrics.ranking_metrics(base, test)
    ids = {"list": base.tolist(), "uint8": None, "int8": base.astype(np.int8),
           "big-endian": base.astype(">i8"), "fortran": np.asfortranarray(base),
           "strided": np.repeat(base, 2, axis=1)[:, ::2], "read-only": base.copy(),
           "int32": base.astype(np.int32)}[layout]
    if layout == "read-only":
        ids.flags.writeable = False
    if layout == "uint8":  # no -1 in an unsigned array: drop the padding columns
        base = np.array([[3, 0], [2, 1], [2, 0]])
        want, ids = metrics.ranking_metrics(base, test), base.astype(np.uint8)
    assert metrics.ranking_metrics(ids, test) == want


@pytest.mark.parametrize("ids, users, error", [
    ([[1, 1]], None, ValueError),           # an id twice
    ([[0, 4]], None, ValueError),           # past the items
    ([[0, -2]], None, ValueError),          # below the padding
    ([[0.0, 1.0]], None, TypeError),        # float ids
    ([[True, False]], None, TypeError),     # bools
    ([0, 1], None, ValueError),             # 1-d
    ([[0, 1], [0, 1]], None, ValueError),   # two rows for one user
    ([[0, 1]], [1], ValueError),            # a user without test items
    ([[0, 1]], [5], ValueError),            # a user past the rows
    ([[0, 1]], [0.0], TypeError),           # a float user id
])
def test_ranking_metrics_refuse_bad_lists(ids, users, error):
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 0, 0]], np.float32))
    with pytest.raises(error):
        metrics.ranking_metrics(ids, test, users)


# ------------------------------------------------------------------------------ evaluate
class FixedLists:
    """An implicit-style model (recommend(userid, user_items, N=...)) with given lists."""

    def __init__(self, lists):
        self.lists = np.asarray(lists)

    def recommend(self, userid, user_items, N=10, filter_already_liked_items=True,
                  filter_items=None, recalculate_user=False, items=None):
        ids = self.lists[np.atleast_1d(userid)][:, :N].astype(np.int32)
        return ids, np.tile(-np.arange(ids.shape[1], dtype=np.float32), (ids.shape[0], 1))


@FEW
@given(seed=st.integers(0, 10**6))
def test_evaluate_equals_implicit_evaluation_on_the_same_lists(seed):
    evaluation = pytest.importorskip("implicit.evaluation")
    rng = np.random.default_rng(seed)
    n_users, n_items = int(rng.integers(1, 6)), int(rng.integers(2, 9))
    k = int(rng.integers(1, n_items + 1))
    lists = np.array([rng.permutation(n_items)[:k] for _ in range(n_users)])
    dense = rng.random((n_users, n_items)) < 0.4
    dense[:, 0] = False  # no user holds every item (implicit divides by zero there)
    dense[0, 1] = True
    test = sp.csr_matrix(dense.astype(np.float32))
    train = sp.csr_matrix((n_users, n_items), dtype=np.float32)
    want = evaluation.ranking_metrics_at_k(FixedLists(lists), train, test, K=k,
                                           show_progress=False)
    got = metrics.evaluate(FixedLists(lists), train, test, k=k)
    assert_close(got, {name: want[name] for name in ("precision", "map", "ndcg", "auc")})


class Recorder:
    """A recfuse model that keeps what evaluate asked for and got."""

    def __init__(self, model):
        self.model, self.calls = model, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def recommend(self, user_ids, user_items=None, k=10, filter_seen=True):
        ids, scores = self.model.recommend(user_ids, user_items=user_items, k=k,
                                           filter_seen=filter_seen)
        self.calls.append((np.array(user_ids), np.array(ids), k))
        return ids, scores


def _small_split():
    """(train, test) CSR of a leave-last-2 split of a rating log, with user 5 cold (no train
    pair) and item 15 only in test."""
    rng = np.random.default_rng(3)
    n = 400
    log = Interactions.from_arrays(rng.integers(0, 40, n), rng.integers(0, 15, n),
                                   rng.integers(1, 6, n).astype(float),
                                   timestamps=np.arange(n), combine="last")
    train, test = split.leave_last_n(log, 2)
    train = sp.lil_matrix(sp.hstack([train.matrix, sp.csr_matrix((40, 1))]))
    test = sp.lil_matrix(sp.hstack([test.matrix, sp.csr_matrix((40, 1))]))
    train[5, :] = 0
    test[0, 15] = test[1, 15] = 4.0
    train, test = sp.csr_matrix(train, dtype=np.float32), sp.csr_matrix(test, dtype=np.float32)
    train.eliminate_zeros()
    return train, test


MODELS = {"ALS": lambda: recfuse.ALS(factors=4, iterations=3, random_state=0),
          "BPR": lambda: recfuse.BPR(factors=4, iterations=3, random_state=0),
          "SVD": lambda: recfuse.SVD(factors=4, epochs=5, random_state=0),
          "SVDpp": lambda: recfuse.SVDpp(factors=4, epochs=3, random_state=0),
          "ExplicitALS": lambda: recfuse.ExplicitALS(factors=4, iterations=3, random_state=0)}


@pytest.mark.parametrize("name", list(MODELS))
def test_evaluate_models_filter_seen_and_score_what_they_returned(name):
    train, test = _small_split()
    model = Recorder(MODELS[name]().fit(train))
    matrix = test
    liked = liked_sets(matrix)
    for k, cold in ((3, "include"), (15, "skip"), (40, "include")):
        model.calls.clear()
        result = metrics.evaluate(model, train, test, k=k, cold_users=cold, batch_size=7)
        users = np.concatenate([u for u, _, _ in model.calls])
        lists = np.concatenate([ids for _, ids, _ in model.calls])
        assert all(asked == min(k, train.shape[1]) for _, _, asked in model.calls)
        test_users = np.flatnonzero(np.diff(matrix.indptr) > 0)
        cold_users = [u for u in test_users if train[u].nnz == 0]
        assert cold_users == [5] and result["cold_users"] == 1
        assert users.tolist() == [u for u in test_users if cold == "include" or u != 5]
        assert result["users"] == users.size
        rows = []
        for u, row in zip(users.tolist(), lists.tolist()):
            seen = set(train[u].indices.tolist())
            assert not seen & set(row)  # seen items filtered
            row = (row + [-1] * k)[:k]
            rows.append(user_metrics(row, liked[u], matrix.shape[1]))
        assert_close(result, aggregate(rows))
        valid = lists[lists >= 0]
        assert close(result["coverage"], np.unique(valid).size / matrix.shape[1])
        if callable(getattr(model.model, "predict", None)):
            from sklearn.metrics import mean_absolute_error, mean_squared_error

            coo = matrix[users].tocoo()
            predicted = model.model.predict(users[coo.row], coo.col)
            assert close(result["rmse"], math.sqrt(mean_squared_error(coo.data, predicted)))
            assert close(result["mae"], mean_absolute_error(coo.data, predicted))
        else:
            assert "rmse" not in result


def test_evaluate_cold_users_raise_and_batch_size_invariance():
    train, test = _small_split()
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(train)
    with pytest.raises(ValueError, match="no train items"):
        metrics.evaluate(model, train, test, cold_users="raise")
    results = [metrics.evaluate(model, train, test, k=5, batch_size=b) for b in (1, 3, 1000)]
    assert results[0] == results[1] == results[2]
    # Interactions give the numbers of their matrices
    as_log = [Interactions.from_matrix(m) for m in (train, test)]
    assert metrics.evaluate(model, *as_log, k=5) == results[0]


def test_evaluate_k_past_the_items_equals_k_of_all_items():
    train, test = _small_split()
    model = recfuse.ALS(factors=4, iterations=2, random_state=0).fit(train)
    base = metrics.evaluate(model, train, test, k=train.shape[1])
    more = metrics.evaluate(model, train, test, k=train.shape[1] + 50)
    assert {**more, "k": base["k"]} == base


def test_evaluate_huge_k_on_a_small_catalogue_works():
    rng = np.random.default_rng(1)
    train = sp.csr_matrix((rng.random((300, 6)) < 0.3).astype(np.float32))
    test = sp.csr_matrix((rng.random((300, 6)) < 0.3).astype(np.float32))
    test = test - test.multiply(train)
    test.eliminate_zeros()
    model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(train)
    base = metrics.evaluate(model, train, test, k=6)
    # 300 users x 2**31 - 1 x 8 bytes: 4.7 TiB if the lists are padded to k
    huge = metrics.evaluate(model, train, test, k=2**31 - 1)
    assert {**huge, "k": 6} == base


def test_evaluate_empty_test_and_mismatched_shapes():
    train = sp.csr_matrix(np.eye(3, dtype=np.float32))
    empty = sp.csr_matrix((3, 3), dtype=np.float32)
    model = recfuse.SVD(factors=2, epochs=1, random_state=0).fit(train)
    result = metrics.evaluate(model, train, empty)
    assert result["users"] == 0 and result["precision"] == 0.0
    assert math.isnan(result["rmse"]) and math.isnan(result["auc"])
    with pytest.raises(ValueError, match="one shape"):
        metrics.evaluate(model, train, sp.csr_matrix((3, 4), dtype=np.float32))
    with pytest.raises(TypeError):
        metrics.evaluate(model, train, empty.toarray())


def test_evaluate_model_knowing_fewer_users_is_told_so():
    train = sp.csr_matrix(np.eye(4, dtype=np.float32))
    model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(train[:2])
    test = sp.csr_matrix(np.fliplr(np.eye(4, dtype=np.float32)))
    with pytest.raises(ValueError, match="knows 2 users"):
        metrics.evaluate(model, train, test)


# ------------------------------------------------------------------------------ CLI
def test_cli_evaluate_gives_the_numbers_of_metrics_evaluate(tmp_path):
    from recfuse.persistence import load_folder

    rng = np.random.default_rng(0)
    lines = ["user,item,rating,ts"] + [
        f"u{rng.integers(0, 30)},i{rng.integers(0, 20)},{rng.integers(1, 6)},{1000 + e}"
        for e in range(300)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    cli = [sys.executable, "-m", "recfuse.cli"]
    done = subprocess.run(cli + ["train", "log.csv", "-o", str(out), "--model", "svd",
                                 "--weight", "rating", "--combine", "last", "--timestamp", "ts",
                                 "--split", "leave_last", "--iterations", "3", "--json"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    done = subprocess.run(cli + ["evaluate", str(out), "--k", "7", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    model, train = load_folder(out)
    test = Interactions.load(out / "test.npz")
    want = metrics.evaluate(model, train, test, k=7)
    assert {name: printed[name] for name in want} == pytest.approx(want, rel=1e-12)
    assert printed["users"] == np.count_nonzero(np.diff(test.matrix.indptr))
    assert "rmse" in printed and "mae" in printed


# ------------------------------------------------------------------------------ rmse / mae
finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@HUNT
@given(pairs=st.lists(st.tuples(finite, finite), min_size=1, max_size=30),
       dtype=st.sampled_from(["f8", ">f8", "f4", "list", "column"]))
def test_rmse_mae_equal_sklearn(pairs, dtype):
    from sklearn.metrics import mean_absolute_error, mean_squared_error

    truth, predicted = (np.array(v) for v in zip(*pairs))
    if dtype in ("f8", ">f8", "f4"):
        truth, predicted = truth.astype(dtype), predicted.astype(dtype)
    want_rmse = math.sqrt(mean_squared_error(np.asarray(truth, np.float64),
                                             np.asarray(predicted, np.float64)))
    want_mae = mean_absolute_error(np.asarray(truth, np.float64), np.asarray(predicted, np.float64))
    if dtype == "list":
        truth, predicted = truth.tolist(), predicted.tolist()
    if dtype == "column":
        truth = truth[:, None]
    assert metrics.rmse(truth, predicted) == pytest.approx(want_rmse, rel=1e-9, abs=1e-12)
    assert metrics.mae(truth, predicted) == pytest.approx(want_mae, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("truth, predicted", [
    (np.array([1, 2, 3], np.int8), np.array([1, 2, 5], np.uint16)),
    (np.array([1, 2, 3], np.float16), np.array([1, 2, 5], np.float16)),
    (np.array([[1], [2], [3]], order="F", dtype=float), [1, 2, 5]),
    (np.array([1, 9, 2, 9, 3], float)[::2], [1, 2, 5]),
])
def test_rmse_mae_accept_any_numeric_layout(truth, predicted):
    assert metrics.rmse(truth, predicted) == pytest.approx(math.sqrt(4 / 3))
    assert metrics.mae(truth, predicted) == pytest.approx(2 / 3)


@pytest.mark.parametrize("truth, predicted, error", [
    ([], [], ValueError), ([1, 2], [1], ValueError), ([1, np.nan], [1, 2], ValueError),
    ([1, np.inf], [1, 2], ValueError), (["1", "2"], [1, 2], TypeError),
    (np.ones((2, 3)), np.ones((3, 2)), ValueError),
])
def test_rmse_mae_refuse_bad_input(truth, predicted, error):
    for fn in (metrics.rmse, metrics.mae):
        with pytest.raises(error):
            fn(truth, predicted)


@pytest.mark.parametrize("big", [1e160, 1e200, 1e300])
def test_rmse_of_a_small_error_beside_a_huge_rating(big):
    # one error of 2 among two ratings: sqrt(4 / 2), whatever the rating it sits beside
    assert metrics.rmse([big, 3.0], [big, 5.0]) == pytest.approx(math.sqrt(2), rel=1e-12)


def test_mae_of_a_small_error_beside_a_huge_rating():
    assert metrics.mae([1e200, 3.0], [1e200, 5.0]) == pytest.approx(1.0, rel=1e-12)
    assert metrics.rmse([0.0], [1e200]) == pytest.approx(1e200)


# ------------------------------------------------------------------------------ beyond accuracy
@HUNT
@given(data=st.data())
def test_coverage_novelty_diversity_match_their_formulas(data):
    n_users, n_items = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 9))
    k = data.draw(st.integers(1, 5))
    dense = np.array(data.draw(st.lists(st.lists(st.booleans(), min_size=n_items,
                                                 max_size=n_items),
                                        min_size=n_users, max_size=n_users)))
    train = sp.csr_matrix(dense.astype(np.float32))
    lists = []
    for _ in range(data.draw(st.integers(0, 5))):
        row = data.draw(st.lists(st.integers(0, n_items - 1), unique=True,
                                 max_size=min(k, n_items)))
        lists.append(row + [-1] * (k - len(row)))
    ids = np.array(lists, dtype=np.int64).reshape(len(lists), k)
    valid = [i for row in lists for i in row if i >= 0]
    assert close(metrics.catalog_coverage(ids, n_items), len(set(valid)) / n_items)
    holders = dense.sum(axis=0)
    want = (sum(-math.log2(max(holders[i], 1) / n_users) for i in valid) / len(valid)
            if valid else 0.0)
    assert close(metrics.novelty(ids, train), want)
    # vectors with zeros, ties and huge / subnormal rows
    scale = data.draw(st.sampled_from([1.0, 1e-40, 1e30]))
    vectors = np.array(data.draw(st.lists(st.lists(st.sampled_from([0.0, 1.0, -2.0, 0.5]),
                                                   min_size=3, max_size=3),
                                          min_size=n_items, max_size=n_items)))
    table = (vectors * scale).astype(np.float32)
    per_list = []
    for row in lists:
        v = [table[i].astype(np.float64) / scale for i in row if i >= 0]  # float32's values
        unit = [x / np.linalg.norm(x) if np.linalg.norm(x) else x for x in v]
        pairs = [1 - float(unit[a] @ unit[b]) for a in range(len(v)) for b in range(a + 1, len(v))]
        if pairs:
            per_list.append(sum(pairs) / len(pairs))
    got = metrics.intra_list_diversity(ids, table)
    if per_list:
        assert got == pytest.approx(sum(per_list) / len(per_list), abs=1e-6)
    else:
        assert math.isnan(got)


def test_beyond_accuracy_edge_cases():
    train = sp.csr_matrix(np.array([[1, 0], [1, 1]], np.float32))
    assert metrics.catalog_coverage([], 5) == 0.0
    assert metrics.catalog_coverage([[7, -1, 1, 1]], 5) == 0.2  # invalid ids left out
    assert metrics.catalog_coverage(np.array([[3]]), 2**40) == 1 / 2**40  # no 2**40 table
    assert metrics.novelty([[-1, -1]], train) == 0.0
    assert metrics.novelty([[1]], train) == 1.0
    with pytest.raises(ValueError):
        metrics.novelty([[2]], train)
    with pytest.raises(TypeError):
        metrics.novelty([[0.0]], train)
    with pytest.raises(ValueError):
        metrics.catalog_coverage([[0]], 0)
    zero = np.zeros((2, 2), np.float32)
    assert metrics.intra_list_diversity([[0, 1]], zero) == 1.0  # cosine 0 with a zero vector
    with pytest.raises(ValueError):
        metrics.intra_list_diversity([[0, 0]], np.eye(2))  # an id twice
    with pytest.raises(ValueError):
        metrics.intra_list_diversity([[0, 1]], [[1.0, np.nan], [0.0, 1.0]])
    with pytest.raises(ValueError):
        metrics.intra_list_diversity([[0, 2]], np.eye(2))
    with pytest.raises(TypeError):
        metrics.intra_list_diversity([[0, 1]], np.eye(2) + 0j)


def test_native_and_numpy_evaluation_kernels_agree():
    """The NumPy definitions run where the native module cannot (RECFUSE_SIMD unusable)."""
    code = ("import json, numpy as np, scipy.sparse as sp\n"
            "from recfuse import metrics\n"
            "t = sp.csr_matrix(np.array([[1,0,0,1],[0,1,0,0],[1,1,1,0]], np.float32))\n"
            "r = metrics.ranking_metrics([[3,0],[2,-1],[-1,1]], t)\n"
            "r['div'] = metrics.intra_list_diversity([[0,1,2],[3,-1,-1]],"
            " np.array([[1,0],[0,0],[1,1],[2,2]], np.float32))\n"
            "print(json.dumps(r))\n")
    import os

    outputs = []
    for simd in ("bogus", None):
        env = {key: value for key, value in os.environ.items() if key != "RECFUSE_SIMD"}
        if simd:
            env["RECFUSE_SIMD"] = simd
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        outputs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    assert outputs[0] == pytest.approx(outputs[1], rel=1e-7)
