"""Adversarial checks of ItemIndex storage='auto' answering zero queries from the float32
table (and the other rows from bfloat16), ``retrieval._rows_of``, ``recfuse.topk``'s
'auto' -> 'native', and model/serving paths whose users have zero vectors."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from unittest import mock

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference, retrieval
from recfuse._topk import cpu as topk_cpu

_core = pytest.importorskip("recfuse._core", reason="recfuse._core is not built")

FAST = settings(max_examples=80, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@contextmanager
def force_bfloat16():
    """'auto' takes bfloat16 at any size and k (0 items per result: k > n too), with either
    bfloat16 kernel."""
    with mock.patch.object(retrieval, "BFLOAT16_ITEMS_PER_RESULT", 0), \
            mock.patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 0), \
            bfloat16_kernel("dot"):
        yield


@contextmanager
def bfloat16_kernel(name: str):
    """The cpu backend's bfloat16 kernel as storage="auto" sees it: "dot" (AVX512-BF16) or
    "widen" (values widened to float32), whatever this CPU has."""
    with mock.patch.object(topk_cpu, "bfloat16_dot", lambda: name == "dot"):
        yield


@contextmanager
def force_native():
    with mock.patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 1 << 40):
        yield


def same(a, b):
    ids_a, scores_a = a
    ids_b, scores_b = b
    np.testing.assert_array_equal(ids_a, ids_b)
    assert scores_a.dtype == scores_b.dtype
    view = np.uint32 if scores_a.dtype == np.float32 else np.uint64
    np.testing.assert_array_equal(np.ascontiguousarray(scores_a).view(view),
                                  np.ascontiguousarray(scores_b).view(view))


def check_contract(ids, scores):
    """Sorted by score descending, ties by smaller id, no id twice, padding -1/-inf last."""
    ids = np.atleast_2d(ids)
    scores = np.atleast_2d(scores)
    for row_ids, row_scores in zip(ids, scores):
        real = row_ids >= 0
        n_real = int(real.sum())
        assert real[:n_real].all(), "padding must come last"
        assert np.all(np.isneginf(row_scores[n_real:]))
        got = row_ids[:n_real]
        assert np.unique(got).size == got.size
        s = row_scores[:n_real]
        assert not np.isnan(s).any()
        for j in range(n_real - 1):
            assert s[j] > s[j + 1] or (s[j] == s[j + 1] and got[j] < got[j + 1])


def exclusion_matrix(rng, m, n, kinds):
    """CSR m x n; per row: 'empty', 'all', or 'some'."""
    rows, cols = [], []
    for r, kind in enumerate(kinds):
        if kind == "all":
            c = np.arange(n)
        elif kind == "some":
            c = np.unique(rng.integers(0, n, rng.integers(1, n + 1)))
        else:
            c = np.zeros(0, dtype=np.int64)
        rows.append(np.full(c.size, r))
        cols.append(c)
    rows = np.concatenate(rows + [np.zeros(0)]).astype(np.int64)
    cols = np.concatenate(cols + [np.zeros(0)]).astype(np.int64)
    return sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(m, n))


@st.composite
def problems(draw, max_n=60, max_m=7, max_d=9):
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    exact = draw(st.booleans())
    if exact:
        items = rng.integers(-2, 3, (n, d)).astype(np.float32)
        queries = rng.integers(-2, 3, (m, d)).astype(np.float32)
    else:
        items = rng.standard_normal((n, d)).astype(np.float32)
        queries = rng.standard_normal((m, d)).astype(np.float32)
    zero_kind = draw(st.sampled_from(["none", "all", "some", "one"]))
    if zero_kind == "all":
        queries[:] = 0
    elif zero_kind == "some":
        queries[rng.random(m) < 0.5] = 0
    elif zero_kind == "one":
        queries[rng.integers(0, m)] = 0
    if draw(st.booleans()):  # negative zeros
        queries[rng.random(m) < 0.3] = -0.0
    bad = draw(st.sampled_from(["none", "nan", "inf", "-inf"]))
    if bad != "none":
        value = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[bad]
        items[rng.integers(0, n), rng.integers(0, d)] = value
    bias = None
    bias_kind = draw(st.sampled_from(["none", "zero", "negative", "ties", "random"]))
    if bias_kind == "zero":
        bias = np.zeros(n, np.float32)
    elif bias_kind == "negative":
        bias = -rng.random(n).astype(np.float32) - 0.5
    elif bias_kind == "ties":
        bias = rng.integers(-1, 2, n).astype(np.float32)
    elif bias_kind == "random":
        bias = rng.standard_normal(n).astype(np.float32)
    exclude = None
    if draw(st.booleans()):
        kinds = [draw(st.sampled_from(["empty", "all", "some"])) for _ in range(m)]
        exclude = exclusion_matrix(rng, m, n, kinds)
    allow = deny = None
    mask_kind = draw(st.sampled_from(["none", "allow", "deny", "both", "bool", "nothing"]))
    if mask_kind in ("allow", "both"):
        allow = rng.integers(0, n, rng.integers(0, 2 * n + 1))
    if mask_kind in ("deny", "both"):
        deny = rng.integers(0, n, rng.integers(0, n + 1))
    if mask_kind == "bool":
        allow = rng.random(n) < 0.5
        allow[0] = True
    if mask_kind == "nothing":
        allow = np.zeros(0, dtype=np.int64)
    k = draw(st.one_of(st.integers(1, n + 4), st.just(n), st.just(1), st.just(n + 1)))
    metric = draw(st.sampled_from(["dot", "cosine"]))
    threads = draw(st.sampled_from([1, 2]))
    return dict(queries=queries, items=items, bias=bias, exclude=exclude, allow=allow,
                deny=deny, k=k, metric=metric, threads=threads)


def search(index, p, queries=None):
    return index.search(p["queries"] if queries is None else queries, p["k"],
                        exclude=p["exclude"], allow=p["allow"], deny=p["deny"],
                        num_threads=p["threads"])


def native_answer(p):
    index = retrieval.ItemIndex(p["items"], item_bias=p["bias"], metric=p["metric"],
                                storage="native", backend="cpu")
    return search(index, p)


# ---------------------------------------------------------------- the split, vs native


@FAST
@given(problems())
def test_auto_split_equals_native_bit_for_bit(p):
    expected = native_answer(p)
    with force_bfloat16():
        index = retrieval.ItemIndex(p["items"], item_bias=p["bias"], metric=p["metric"],
                                    storage="auto", backend="cpu")
        assert index.storage_for(p["k"]) == "bfloat16"
        got = search(index, p)
    same(got, expected)
    check_contract(*got)


@FAST
@given(problems())
def test_explicit_bfloat16_equals_native_with_zero_rows(p):
    """storage='bfloat16' (no split: zero rows rescored) gives the same answers too."""
    expected = native_answer(p)
    index = retrieval.ItemIndex(p["items"], item_bias=p["bias"], metric=p["metric"],
                                storage="bfloat16", backend="cpu")
    same(search(index, p), expected)


@FAST
@given(problems())
def test_rows_answered_alone_equal_batch(p):
    """Each row searched on its own (zero or not: one side of the split only) gives the
    batch's row."""
    with force_bfloat16():
        index = retrieval.ItemIndex(p["items"], item_bias=p["bias"], metric=p["metric"],
                                    backend="cpu")
        ids, scores = search(index, p)
        for r in range(p["queries"].shape[0]):
            one = dict(p)
            one["exclude"] = None if p["exclude"] is None else p["exclude"][r]
            row = index.search(p["queries"][r:r + 1], p["k"], exclude=one["exclude"],
                               allow=p["allow"], deny=p["deny"], num_threads=p["threads"])
            same(row, (ids[r:r + 1], scores[r:r + 1]))


@FAST
@given(problems())
def test_split_matches_reference(p):
    """Exact items (small integers) make float32 sums exact: compare with the oracle."""
    items = np.rint(np.nan_to_num(p["items"], nan=0, posinf=0, neginf=0)).astype(np.float32)
    queries = np.rint(p["queries"]).astype(np.float32) + np.float32(0)
    bias = None if p["bias"] is None else np.rint(p["bias"]).astype(np.float32)
    n = items.shape[0]
    with force_bfloat16():
        index = retrieval.ItemIndex(items, item_bias=bias, backend="cpu")
        ids, scores = index.search(queries, p["k"], exclude=p["exclude"], allow=p["allow"],
                                   deny=p["deny"], num_threads=p["threads"])
    mask = retrieval._item_mask(p["allow"], p["deny"], n)
    ref_ids, ref_scores = reference.topk(queries, items, p["k"], exclude=p["exclude"],
                                         mask=mask, item_bias=bias)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores.astype(np.float64), ref_scores)


def test_zero_rows_not_rescored_and_results_first_ids():
    rng = np.random.default_rng(1)
    items = rng.standard_normal((3000, 16)).astype(np.float32)
    Q = np.zeros((4, 16), np.float32)
    with force_bfloat16():
        index = retrieval.ItemIndex(items, backend="cpu")
        index.search(rng.standard_normal((1, 16)).astype(np.float32), 5, num_threads=1)
        before = _core.topk_bfloat16_rescored()
        ids, scores = index.search(Q, 5, num_threads=1)
        after = _core.topk_bfloat16_rescored()
    assert after == before, "zero queries must not be rescored item by item"
    np.testing.assert_array_equal(ids, np.tile(np.arange(5), (4, 1)))
    assert (scores == 0).all()
    # mixed: only the non-zero query's rescoring counts
    Q[1] = rng.standard_normal(16)
    with force_bfloat16():
        before = _core.topk_bfloat16_rescored()
        index.search(Q, 5, num_threads=1)
        mixed = _core.topk_bfloat16_rescored() - before
        before = _core.topk_bfloat16_rescored()
        index.search(Q[1:2], 5, num_threads=1)
        alone = _core.topk_bfloat16_rescored() - before
    assert mixed == alone


@pytest.mark.parametrize("kernel", ["dot", "widen"])
def test_default_rule_zero_queries_on_a_real_size_table(kernel):
    """The thresholds unpatched on 2,000 items, k=1: bfloat16 (with the widened kernel only
    for a single query), with zero rows split off."""
    rng = np.random.default_rng(2)
    items = rng.standard_normal((2000, 8)).astype(np.float32)
    bias = rng.integers(-2, 3, 2000).astype(np.float32)
    Q = rng.standard_normal((6, 8)).astype(np.float32)
    Q[[0, 3, 5]] = 0
    exclude = exclusion_matrix(rng, 6, 2000, ["all", "some", "empty", "some", "all", "empty"])
    auto = retrieval.ItemIndex(items, item_bias=bias, backend="cpu")
    native = retrieval.ItemIndex(items, item_bias=bias, storage="native", backend="cpu")
    with bfloat16_kernel(kernel):
        assert auto.storage_for(1, 1) == "bfloat16"
        assert auto.storage_for(1) == ("bfloat16" if kernel == "dot" else "native")
        for k in (1, 2):
            same(auto.search(Q, k, exclude=exclude, num_threads=2),
                 native.search(Q, k, exclude=exclude, num_threads=2))
            for row in range(Q.shape[0]):  # one query: bfloat16 with either kernel
                same(auto.search(Q[row:row + 1], k, exclude=exclude[row], num_threads=2),
                     native.search(Q[row:row + 1], k, exclude=exclude[row], num_threads=2))


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_all_zero_batches(m, metric):
    rng = np.random.default_rng(m)
    items = rng.standard_normal((50, 4)).astype(np.float32)
    bias = rng.integers(-1, 2, 50).astype(np.float32)
    Q = np.zeros((m, 4), np.float32)
    native = retrieval.ItemIndex(items, item_bias=bias, metric=metric, storage="native",
                                 backend="cpu")
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, item_bias=bias, metric=metric, backend="cpu")
        for k in (1, 7, 50, 60):
            same(auto.search(Q, k), native.search(Q, k))
            same(auto.search(Q[0], k), native.search(Q[0], k))
        # cosine: zero rows stay zero after normalisation, and take the native side
        assert "native" in auto._tables
        assert "bfloat16" not in auto._tables


def test_cosine_tiny_queries_are_not_zero_rows():
    """A subnormal query is not zero: cosine makes it a unit vector."""
    items = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    Q = np.array([[0, 0], [1e-45, 0], [0, -1e-45]], np.float32)
    native = retrieval.ItemIndex(items, metric="cosine", storage="native", backend="cpu")
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, metric="cosine", backend="cpu")
        got = auto.search(Q, 3)
    same(got, native.search(Q, 3))
    assert got[0][1, 0] == 0 and got[1][1, 0] == 1  # (1e-45, 0) became (1, 0)
    assert got[1][2, 0] == 0 and got[0][2, 0] == 0  # (0, -1): items 0 and 2 tie at 0


def test_dot_subnormal_query_equals_native():
    items = np.array([[1e30, 0], [0, 1], [-1, 0], [2e30, 0]], np.float32)
    Q = np.array([[1e-45, 0], [0, 0], [-1e-45, 0]], np.float32)
    native = retrieval.ItemIndex(items, storage="native", backend="cpu")
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, backend="cpu")
        for k in (1, 2, 4, 5):
            same(auto.search(Q, k), native.search(Q, k))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_item_rows_with_zero_queries(bad):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((20, 3)).astype(np.float32)
    items[[0, 4]] = bad
    items[7, 1] = bad
    Q = rng.standard_normal((4, 3)).astype(np.float32)
    Q[[0, 2]] = 0
    native = retrieval.ItemIndex(items, storage="native", backend="cpu")
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, backend="cpu")
        for k in (1, 3, 20, 25):
            got = auto.search(Q, k)
            same(got, native.search(Q, k))
            check_contract(*got)
            # 0 * inf is NaN: such items are never returned to a zero query
            assert not np.isin(got[0][[0, 2]], [0, 4, 7]).any()


def test_float64_tables_never_bfloat16():
    rng = np.random.default_rng(4)
    items = rng.standard_normal((40, 5))
    Q = rng.standard_normal((5, 5))
    Q[[1, 2]] = 0
    with force_bfloat16():
        index = retrieval.ItemIndex(items, backend="cpu")
        assert index.storage_for(1) == "native"
        got = index.search(Q, 6)
        assert got[1].dtype == np.float64
        assert "bfloat16" not in index._tables
    same(got, retrieval.ItemIndex(items, storage="native", backend="cpu").search(Q, 6))


def test_concurrent_searches_share_one_index():
    rng = np.random.default_rng(5)
    items = rng.standard_normal((400, 8)).astype(np.float32)
    bias = rng.integers(-1, 2, 400).astype(np.float32)
    batches = []
    for i in range(8):
        Q = rng.standard_normal((5, 8)).astype(np.float32)
        Q[rng.random(5) < 0.5] = 0
        ex = exclusion_matrix(rng, 5, 400, rng.choice(["empty", "all", "some"], 5))
        batches.append((Q, ex))
    native = retrieval.ItemIndex(items, item_bias=bias, storage="native", backend="cpu")
    expected = [native.search(Q, 9, exclude=ex, num_threads=1) for Q, ex in batches]
    errors = []
    with force_bfloat16():
        index = retrieval.ItemIndex(items, item_bias=bias, backend="cpu")
        barrier = threading.Barrier(4)

        def work(t):
            try:
                barrier.wait()
                for rep in range(6):
                    i = (t + rep) % len(batches)
                    Q, ex = batches[i]
                    same(index.search(Q, 9, exclude=ex, num_threads=1 + rep % 2), expected[i])
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors, errors[0]


def test_search_checked_direct_with_exclusions_and_mask():
    """The serving entry point (_search_checked) with int64 indptr / int32 indices."""
    rng = np.random.default_rng(6)
    items = rng.integers(-2, 3, (30, 4)).astype(np.float32)
    Q = rng.integers(-2, 3, (6, 4)).astype(np.float32)
    Q[[0, 2, 5]] = 0
    E = exclusion_matrix(rng, 6, 30, ["some", "all", "empty", "some", "empty", "all"])
    excluded = retrieval._exclusions(E, 6, 30)
    mask = (rng.random(30) < 0.7).astype(np.uint8)
    native = retrieval.ItemIndex(items, storage="native", backend="cpu")
    expected = native._search_checked(Q, 8, excluded, mask, 1)
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, backend="cpu")
        same(auto._search_checked(Q, 8, excluded, mask, 1), expected)
        cos_n = retrieval.ItemIndex(items, metric="cosine", storage="native", backend="cpu")
        cos_a = retrieval.ItemIndex(items, metric="cosine", backend="cpu")
        same(cos_a._search_checked(Q, 8, excluded, mask, 2),
             cos_n._search_checked(Q, 8, excluded, mask, 2))


# ---------------------------------------------------------------- _rows_of


def rows_of_reference(E: sp.csr_matrix, rows):
    sub = E[rows]
    sub.sort_indices()
    return sub.indptr.astype(np.int64), sub.indices


@st.composite
def csr_and_rows(draw):
    m = draw(st.integers(0, 8))
    n = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kinds = [draw(st.sampled_from(["empty", "all", "some"])) for _ in range(m)]
    E = exclusion_matrix(rng, m, n, kinds)
    if draw(st.booleans()):
        rows = rng.random(m) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    else:
        rows = rng.integers(0, max(m, 1), draw(st.integers(0, 10))) if m else \
            np.zeros(0, np.int64)
    return E, rows


@FAST
@given(csr_and_rows())
def test_rows_of_matches_scipy(case):
    E, rows = case
    excluded = retrieval._exclusions(E, *E.shape)
    indptr, indices = retrieval._rows_of(excluded, rows)
    ref_indptr, ref_indices = rows_of_reference(E, rows)
    assert indptr.dtype == np.int64
    assert indices.dtype == np.int32
    np.testing.assert_array_equal(indptr, ref_indptr)
    np.testing.assert_array_equal(indices, ref_indices)
    assert indices.flags.c_contiguous


def test_rows_of_none_and_empty():
    assert retrieval._rows_of(None, np.array([True])) is None
    excluded = (np.array([0, 0, 0], np.int64), np.zeros(0, np.int32))
    for rows in (np.array([True, False]), np.array([1, 0, 1]), np.zeros(0, np.int64),
                 np.zeros(2, bool)):
        indptr, indices = retrieval._rows_of(excluded, rows)
        size = int(rows.sum()) if rows.dtype == bool else rows.size
        np.testing.assert_array_equal(indptr, np.zeros(size + 1, np.int64))
        assert indices.size == 0 and indices.dtype == np.int32


def test_rows_of_with_int32_indptr_and_offset_start():
    """A CSR slice may hold an indptr that does not start at 0 (or is int32)."""
    indptr = np.array([3, 5, 5, 8], np.int32)
    indices = np.array([9, 9, 9, 1, 4, 0, 2, 6], np.int32)
    out_ptr, out_idx = retrieval._rows_of((indptr, indices), np.array([2, 0, 1]))
    np.testing.assert_array_equal(out_ptr, [0, 3, 5, 5])
    np.testing.assert_array_equal(out_idx, [0, 2, 6, 1, 4])
    out_ptr, out_idx = retrieval._rows_of((indptr, indices), np.array([False, True, True]))
    np.testing.assert_array_equal(out_ptr, [0, 0, 3])
    np.testing.assert_array_equal(out_idx, [0, 2, 6])


# ---------------------------------------------------------------- recfuse.topk one call


@FAST
@given(problems())
def test_topk_one_call_storages_agree(p):
    answers = []
    for storage in ("auto", "native", "bfloat16"):
        with force_bfloat16():
            answers.append(recfuse.topk(p["queries"], p["items"], p["k"], exclude=p["exclude"],
                                        allow=p["allow"], deny=p["deny"], item_bias=p["bias"],
                                        metric=p["metric"], storage=storage, backend="cpu",
                                        num_threads=p["threads"]))
    same(answers[0], answers[1])
    same(answers[0], answers[2])


def test_topk_one_call_auto_does_not_prepare_bfloat16():
    rng = np.random.default_rng(7)
    items = rng.standard_normal((3000, 8)).astype(np.float32)
    Q = rng.standard_normal((2, 8)).astype(np.float32)
    made = []
    real = retrieval.ItemIndex._prepared

    def spy(self, storage, num_threads=0):
        made.append((storage, num_threads))
        return real(self, storage, num_threads)

    with mock.patch.object(retrieval.ItemIndex, "_prepared", spy):
        recfuse.topk(Q, items, 3, backend="cpu", num_threads=1)
    assert made == [("native", 1)]


# ---------------------------------------------------------------- models with zero users


@pytest.fixture(scope="module")
def als_with_zero_users():
    rng = np.random.default_rng(8)
    n_users, n_items = 60, 80
    dense = (rng.random((n_users, n_items)) < 0.1).astype(np.float32)
    dense[[3, 10, 11, 40]] = 0  # users without positives: zero vectors
    seen = sp.csr_matrix(dense)
    als = recfuse.ALS(factors=6, iterations=3, random_state=0, backend="cpu").fit(seen)
    assert not als.user_factors[[3, 10, 11, 40]].any()
    return als, seen


@pytest.mark.parametrize("k", [1, 5, 80, 90])
def test_als_recommend_zero_users_same_as_native(als_with_zero_users, k):
    als, seen = als_with_zero_users
    users = np.array([3, 0, 10, 11, 5, 40, 59])
    allow = np.arange(0, 80, 2)
    with force_native():
        als._recommend_cache = None
        expected = als.recommend(users, k=k)
        expected_allow = als.recommend(users, k=k, items=allow, exclude_items=[0, 4])
        expected_one = als.recommend(3, k=k, filter_seen=False)
    with force_bfloat16():
        assert als._recommend_index(als._state).storage_for(k) == "bfloat16"
        same(als.recommend(users, k=k), expected)
        same(als.recommend(users, k=k, items=allow, exclude_items=[0, 4]), expected_allow)
        same(als.recommend(3, k=k, filter_seen=False), expected_one)


def test_als_recommend_all_zero_users_same_as_native(als_with_zero_users):
    als, _ = als_with_zero_users
    with force_native():
        expected = list(als.recommend_all(7, batch_size=16))
    with force_bfloat16():
        got = list(als.recommend_all(7, batch_size=16))
    assert len(got) == len(expected) == 4
    for (users_a, ids_a, scores_a), (users_b, ids_b, scores_b) in zip(got, expected):
        np.testing.assert_array_equal(users_a, users_b)
        same((ids_a, scores_a), (ids_b, scores_b))


def test_recommender_zero_users_same_as_native(als_with_zero_users):
    als, _ = als_with_zero_users
    users = np.array([3, 0, 10, 11, 5, 40, 59, 2])
    results = []
    for force in (force_native, force_bfloat16):
        with force():
            rec = recfuse.Recommender(als, k=6, candidates=20, num_threads=1)
            batch = rec.recommend_batch(users)
            singles = [rec.recommend(int(u)) for u in users]
            rec.observe({"user": [3, 3, 10], "item": [1, 2, 7]})
            after = rec.recommend_batch(users)
        results.append((batch, singles, after))

    def flat(res):
        batch, singles, after = res
        out = []
        for r in [batch, *singles, after]:
            out.append(np.asarray(r.ids))
            out.append(np.asarray(r.scores, dtype=np.float64))
        return out

    for a, b in zip(flat(results[0]), flat(results[1])):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- larger tables (blocks)


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.integers(100, 1500), st.integers(1, 40), st.integers(1, 12),
       st.integers(0, 2**32 - 1), st.booleans(), st.sampled_from(["dot", "cosine"]))
def test_split_on_larger_tables(n, d, m, seed, exact, metric):
    rng = np.random.default_rng(seed)
    if exact:
        items = rng.integers(-1, 2, (n, d)).astype(np.float32)
        Q = rng.integers(-1, 2, (m, d)).astype(np.float32)
    else:
        items = (rng.standard_normal((n, d)) * rng.lognormal(0, 1, (n, 1))).astype(np.float32)
        Q = rng.standard_normal((m, d)).astype(np.float32)
    Q[rng.random(m) < 0.5] = 0
    bias = rng.integers(-1, 2, n).astype(np.float32) if rng.random() < 0.5 else None
    kinds = rng.choice(["empty", "all", "some"], m)
    E = exclusion_matrix(rng, m, n, kinds)
    deny = rng.integers(0, n, n // 3)
    k = int(rng.choice([1, 10, 100, n - 1 if n > 1 else 1, n + 5]))
    native = retrieval.ItemIndex(items, item_bias=bias, metric=metric, storage="native",
                                 backend="cpu")
    expected = native.search(Q, k, exclude=E, deny=deny, num_threads=2)
    with force_bfloat16():
        auto = retrieval.ItemIndex(items, item_bias=bias, metric=metric, backend="cpu")
        same(auto.search(Q, k, exclude=E, deny=deny, num_threads=2), expected)
    same(retrieval.ItemIndex(items, item_bias=bias, metric=metric, storage="bfloat16",
                             backend="cpu").search(Q, k, exclude=E, deny=deny, num_threads=1),
         expected)


# ---------------------------------------------------------------- storage_for


@pytest.mark.parametrize("kernel", ["dot", "widen"])
def test_storage_for_rules(kernel):
    rng = np.random.default_rng(9)
    gaussian = rng.standard_normal((1000, 8)).astype(np.float32)
    skewed = gaussian.copy()
    skewed[:20] *= 10  # 99th percentile of the norms >= 2x the median
    assert retrieval._skewed_norms(skewed) and not retrieval._skewed_norms(gaussian)
    dot = kernel == "dot"
    with bfloat16_kernel(kernel):
        plain = retrieval.ItemIndex(gaussian, backend="cpu")
        # the widened kernel gains on a table it cannot stop early in only for one query
        assert [plain.storage_for(k) for k in (1, 2, 3)] == \
            ["bfloat16" if dot else "native", "native", "native"]
        assert [plain.storage_for(k, 1) for k in (1, 2, 3)] == ["bfloat16", "native", "native"]
        assert plain.storage_for(1, 2) == ("bfloat16" if dot else "native")
        index = retrieval.ItemIndex(skewed, backend="cpu")
        for queries in (None, 1, 1000):  # skewed norms: at any batch size
            assert [index.storage_for(k, queries) for k in (1, 2, 3)] == \
                ["bfloat16", "bfloat16", "native"]
        cosine = retrieval.ItemIndex(skewed, metric="cosine", backend="cpu")
        assert [cosine.storage_for(k) for k in (1, 2)] == ["bfloat16" if dot else "native",
                                                          "native"]
        assert [cosine.storage_for(k, 1) for k in (1, 2)] == ["bfloat16", "native"]
    small = retrieval.ItemIndex(skewed[:999], backend="cpu")
    assert small.storage_for(1) == "native"
    assert retrieval.ItemIndex(skewed.astype(np.float64), backend="cpu").storage_for(1) == \
        "native"
    nan = skewed.copy()
    nan[5, 0] = np.nan
    assert retrieval.ItemIndex(nan, backend="cpu").storage_for(2) == "native"
    zeros = np.zeros((1000, 4), np.float32)
    assert not retrieval._skewed_norms(zeros)
    half = skewed.copy()
    half[:600] = 0  # median 0: skewed
    assert retrieval._skewed_norms(half)
    # the answers are the same whichever storage the rule takes, zero queries included
    Q = rng.standard_normal((4, 8)).astype(np.float32)
    Q[[0, 3]] = 0
    ref = retrieval.ItemIndex(skewed, storage="native", backend="cpu")
    for k in (1, 2, 3):
        same(index.search(Q, k, num_threads=1), ref.search(Q, k, num_threads=1))


def test_skewed_norms_reads_at_most_sample_rows():
    """The docstring: 'over at most ``sample`` evenly spaced rows' (the stride was n //
    sample, so any table under 2 sample rows was read whole)."""
    sizes = []
    real = np.percentile

    def spy(a, q, *args, **kwargs):
        sizes.append(np.asarray(a).size)
        return real(a, q, *args, **kwargs)

    with mock.patch.object(retrieval.np, "percentile", spy):
        retrieval._skewed_norms(np.ones((7, 2), np.float32), sample=4)
    assert sizes and sizes[0] <= 4, sizes
