"""recfuse.topk / ItemIndex on every host backend and SIMD level, against the reference.

GPU backends have the same checks in tests/test_gpu_topk.py.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from topk_checks import assert_topk_matches

import recfuse
from recfuse import retrieval
from conftest import backend_params, examples, numba_cache_counts, run_python

HOST_BACKENDS = backend_params(("cpu", "numba", "numpy"))


@st.composite
def topk_problems(draw, max_n=80, max_m=5, max_d=12, exact=None):
    """Queries, items, k and filters. ``exact`` (small integers: every sum is exact, and many
    scores tie) is drawn unless given."""
    exact = draw(st.booleans()) if exact is None else exact
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    m = draw(st.integers(1, max_m))
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if exact:
        queries = rng.integers(-2, 3, (m, d)).astype(dtype)
        items = rng.integers(-2, 3, (n, d)).astype(dtype)
        duplicates = draw(st.integers(0, n - 1))  # identical rows: exact ties
        items[rng.integers(0, n, duplicates)] = items[0]
    else:
        scale = draw(st.sampled_from([1e-3, 1.0, 1e6]))
        queries = (rng.standard_normal((m, d)) * scale).astype(dtype)
        items = (rng.standard_normal((n, d)) * scale).astype(dtype)
    k = draw(st.one_of(st.integers(1, n + 3), st.just(n), st.just(1)))
    bias = None
    if draw(st.booleans()):
        bias = (rng.integers(-3, 4, n) if exact else rng.standard_normal(n)).astype(dtype)
    exclude = None
    if draw(st.booleans()):
        density = draw(st.sampled_from([0.0, 0.2, 0.7, 1.0]))
        exclude = _exclusions(rng, m, n, density, with_repeats=draw(st.booleans()))
    allow = deny = None
    if draw(st.booleans()):
        allow = rng.integers(0, n, draw(st.integers(0, 2 * n)))  # repeats on purpose
    if draw(st.booleans()):
        deny = rng.integers(0, n, draw(st.integers(0, n)))
    return dict(queries=queries, items=items, k=k, item_bias=bias, exclude=exclude,
                allow=allow, deny=deny, exact=exact)


def _exclusions(rng, m, n, density, with_repeats=False):
    """An m x n CSR of excluded items; with_repeats stores some ids twice and unsorted."""
    mask = rng.random((m, n)) < density
    E = sp.csr_matrix(mask.astype(np.float32))
    if not with_repeats or E.nnz == 0:
        return E
    rows = []
    for i in range(m):
        ids = E.indices[E.indptr[i]:E.indptr[i + 1]]
        ids = np.concatenate([ids, ids[: len(ids) // 2]])[::-1]
        rows.append(ids)
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    indices = np.concatenate(rows).astype(np.int32)
    return sp.csr_matrix((np.ones(len(indices), np.float32), indices, indptr), shape=(m, n))


def _mask(problem, n):
    return retrieval._item_mask(problem["allow"], problem["deny"], n)


def _check(ids, scores, problem, *, item_scale=None, queries=None):
    n = problem["items"].shape[0]
    mask = _mask(problem, n)
    assert_topk_matches(
        ids, scores, problem["queries"] if queries is None else queries, problem["items"],
        problem["k"], exclude=problem["exclude"], mask=None if mask is None else mask.astype(bool),
        item_bias=problem["item_bias"], item_scale=item_scale,
        exact=problem["exact"] and item_scale is None)


def _run(problem, backend, **extra):
    return recfuse.topk(problem["queries"], problem["items"], problem["k"],
                        exclude=problem["exclude"], allow=problem["allow"], deny=problem["deny"],
                        item_bias=problem["item_bias"], backend=backend, **extra)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(problem=topk_problems())
def test_topk_matches_reference(backend, problem):
    ids, scores = _run(problem, backend)
    assert scores.dtype == problem["items"].dtype
    _check(ids, scores, problem)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@given(problem=topk_problems(max_n=40, exact=False))
def test_cosine_matches_reference(backend, problem):
    ids, scores = _run(problem, backend, metric="cosine")
    items = problem["items"].astype(np.float64)
    norms = np.linalg.norm(items, axis=1)
    scale = np.where(norms > 0, 1 / np.where(norms > 0, norms, 1), 0)
    q = problem["queries"].astype(np.float64)
    q = q / np.where(np.linalg.norm(q, axis=1) > 0, np.linalg.norm(q, axis=1), 1)[:, None]
    _check(ids, scores, problem, item_scale=scale, queries=q)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cosine_with_subnormal_and_huge_rows(backend, dtype):
    tiny, huge = np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max / 2
    items = np.array([[0, 0, tiny], [huge, huge, 0], [0, 1, 0], [0, 0, 2 * huge]], dtype=dtype)
    queries = np.array([[0, 0, 1], [tiny, tiny, 0], [huge, 0, 0]], dtype=dtype)
    ids, scores = recfuse.topk(queries, items, 4, metric="cosine", backend=backend)
    # The subnormal item counts as a zero vector (its 1/norm overflows the dtype); the
    # subnormal query keeps its direction; huge rows neither overflow nor vanish.
    np.testing.assert_array_equal(ids, [[3, 0, 1, 2], [1, 2, 0, 3], [1, 0, 2, 3]])
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, [[1, 0, 0, 0], [1, np.sqrt(0.5), 0, 0],
                                        [np.sqrt(0.5), 0, 0, 0]], atol=1e-6)


@given(problem=topk_problems(max_n=60))
def test_every_simd_level_and_thread_count(problem):
    from recfuse._als.cpu import _core

    if _core is None:
        pytest.skip("recfuse._core is not built")
    original = _core.simd_level()
    results = []
    try:
        for level in _core.supported_simd_levels():
            _core.set_simd_level(level)
            for threads in (1, 2, 3):
                ids, scores = _run(problem, "cpu", num_threads=threads)
                _check(ids, scores, problem)
                results.append((level, ids, scores))
    finally:
        _core.set_simd_level(original)
    # Threads never change the result; levels agree on ids wherever scores are exact.
    for level, ids, scores in results:
        same_level = [r for r in results if r[0] == level]
        np.testing.assert_array_equal(ids, same_level[0][1])
        np.testing.assert_array_equal(scores, same_level[0][2])
        if problem["exact"]:
            np.testing.assert_array_equal(ids, results[0][1])


def _core_or_skip():
    from recfuse._als.cpu import _core

    if _core is None:
        pytest.skip("recfuse._core is not built")
    return _core


@contextmanager
def _cpu_kernels(level, bfloat16_kernel="auto"):
    """Run the block with this SIMD level and bfloat16 kernel ("auto" or "widen")."""
    core = _core_or_skip()
    original = core.simd_level()
    try:
        core.set_simd_level(level)
        core.set_topk_bfloat16_kernel(bfloat16_kernel)
        yield core
    finally:
        core.set_simd_level(original)
        core.set_topk_bfloat16_kernel("auto")


def _bfloat16_kernels():
    """(SIMD level, bfloat16 kernel) pairs this CPU runs: every level widening bfloat16 to
    float, and the AVX512-BF16 dot products ("auto" at avx512) where the CPU has them."""
    core = _core_or_skip()
    pairs = [(level, "widen") for level in core.supported_simd_levels()]
    if "avx512" in core.supported_simd_levels():
        with _cpu_kernels("avx512") as core:
            if core.topk_bfloat16_kernel() == "dot":
                pairs.append(("avx512", "auto"))
    return pairs


def _float32_problem(problem):
    problem = dict(problem, queries=problem["queries"].astype(np.float32),
                   items=problem["items"].astype(np.float32))
    if problem["item_bias"] is not None:
        problem["item_bias"] = problem["item_bias"].astype(np.float32)
    return problem


def _assert_bfloat16_is_native(problem, metric, threads=(1, 2, 3, 4)):
    """storage="bfloat16" gives the ids and the scores (bit for bit) of storage="native" at
    every SIMD level, with either bfloat16 kernel and any thread count."""
    for level, kernel in _bfloat16_kernels():
        with _cpu_kernels(level, kernel):
            ids, scores = _run(problem, "cpu", metric=metric, num_threads=1)
            for count in threads:
                got_ids, got_scores = _run(problem, "cpu", storage="bfloat16", metric=metric,
                                           num_threads=count)
                context = f"level {level}, kernel {kernel}, {count} threads"
                np.testing.assert_array_equal(got_ids, ids, err_msg=context)
                np.testing.assert_array_equal(got_scores.view(np.uint32), scores.view(np.uint32),
                                              err_msg=context)


@given(problem=topk_problems(max_n=300), cosine=st.booleans())
def test_bfloat16_storage_is_float32_storage(problem, cosine):
    """bfloat16 storage keeps every item whose error bound reaches the k-th best score and
    scores those exactly with the float32 kernel's own code: same ids, same scores."""
    problem = _float32_problem(problem)
    _assert_bfloat16_is_native(problem, "cosine" if cosine else "dot", threads=(1, 3))
    if not cosine:
        _check(*_run(problem, "cpu", storage="bfloat16"), problem)


@settings(max_examples=examples(8))
@given(problem=topk_problems(max_n=2500, max_m=14, max_d=40, exact=False))
def test_bfloat16_storage_with_thread_splits(problem):
    """Tables large enough for up to four threads to split the panels; up to 14 queries (the
    kernels' row blocks of 12 and their rest)."""
    _assert_bfloat16_is_native(_float32_problem(problem), "dot")


@st.composite
def bfloat16_hard_problems(draw):
    """float32 problems that stress the bound: near ties (items a few ulps apart, whose
    bfloat16 copies are equal), magnitudes from subnormal to near overflow (scores that
    overflow to inf or NaN in float32), NaN and inf entries, and large biases."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m, n, d = draw(st.integers(1, 4)), draw(st.integers(1, 200)), draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["near ties", "magnitudes", "non-finite"]))
    scale = 2.0 ** draw(st.sampled_from([-130, -60, 0, 60, 120]))
    if kind == "near ties":
        base = rng.standard_normal(d) * scale
        steps = rng.integers(-3, 4, (n, d)) * (rng.random((n, d)) < 0.3)
        items = base * (1 + steps * 2.0**-23)
        queries = rng.standard_normal((m, d)) * 2.0 ** draw(st.sampled_from([-20, 0, 20]))
    elif kind == "magnitudes":
        rows = rng.choice([-149, -140, -127, -100, -20, 0, 20, 100, 126, 127], n)
        items = rng.standard_normal((n, d)) * 2.0 ** rows[:, None]
        queries = rng.standard_normal((m, d)) * 2.0 ** rng.choice([-130, -20, 0, 20, 100], m)[:, None]
    else:
        items = rng.standard_normal((n, d)) * scale
        special = rng.random((n, d)) < 0.05
        items[special] = rng.choice([np.nan, np.inf, -np.inf], special.sum())
        queries = rng.standard_normal((m, d))
    with np.errstate(over="ignore"):
        items, queries = items.astype(np.float32), queries.astype(np.float32)
    queries[~np.isfinite(queries)] = 1.0
    bias = None
    if draw(st.booleans()):
        bias = (rng.standard_normal(n) * 2.0 ** draw(st.sampled_from([-20, 0, 20, 100, 120]))
                ).astype(np.float32)
    exclude = _exclusions(rng, m, n, 0.3) if draw(st.booleans()) else None
    deny = rng.integers(0, n, n // 3) if draw(st.booleans()) else None
    k = draw(st.one_of(st.integers(1, n + 3), st.just(n)))
    return dict(queries=queries, items=items, k=k, item_bias=bias, exclude=exclude, allow=None,
                deny=deny, exact=False)


@given(problem=bfloat16_hard_problems(), cosine=st.booleans())
def test_bfloat16_storage_at_the_edges(problem, cosine):
    _assert_bfloat16_is_native(problem, "cosine" if cosine else "dot", threads=(1, 2))


@st.composite
def skewed_problems(draw):
    """float32 problems like ALS factors: item norms spread over decades (the scan order puts
    the large ones first and stops where the rest cannot reach a query's threshold), enough
    queries for the threads to split them, seen items (often the best scoring), duplicate
    rows (exact ties), and sometimes non-finite rows or large biases."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.one_of(st.integers(1, 30), st.integers(96, 260)))
    n = draw(st.one_of(st.integers(1, 100), st.integers(100, 700)))
    d = draw(st.integers(1, 20))
    items = rng.standard_normal((n, d)) * 2.0 ** rng.uniform(-8, 2, n)[:, None]
    items[rng.integers(0, n, n // 5)] = items[rng.integers(0, n)]
    if draw(st.booleans()):
        items[rng.integers(0, n, draw(st.integers(1, 3)))] = draw(
            st.sampled_from([np.nan, np.inf, 1e30]))
    queries = rng.standard_normal((m, d)) * 2.0 ** rng.uniform(-4, 4, m)[:, None]
    bias = None
    if draw(st.booleans()):
        bias = rng.standard_normal(n) * 2.0 ** draw(st.sampled_from([-10, 0, 110]))
    exclude = _exclusions(rng, m, n, draw(st.sampled_from([0.0, 0.05, 0.5])),
                          with_repeats=draw(st.booleans())) if draw(st.booleans()) else None
    deny = rng.integers(0, n, n // 4) if draw(st.booleans()) else None
    k = draw(st.one_of(st.integers(1, 12), st.integers(1, n + 3)))
    with np.errstate(over="ignore"):
        problem = dict(queries=queries.astype(np.float32), items=items.astype(np.float32), k=k,
                       item_bias=None if bias is None else bias.astype(np.float32),
                       exclude=exclude, allow=None, deny=deny, exact=False)
    return problem


@settings(max_examples=examples(25))
@given(problem=skewed_problems())
def test_bfloat16_storage_stops_early_and_splits_queries(problem):
    """The scan-order table, its tail bound and the query split of the threads (from 96
    queries at two threads) give float32 storage's ids and scores bit for bit."""
    _assert_bfloat16_is_native(problem, "dot", threads=(1, 2, 4))


def test_bfloat16_storage_skips_the_tail_of_a_skewed_table():
    """With item norms spread over decades most queries need only the first blocks."""
    core = _core_or_skip()
    rng = np.random.default_rng(3)
    items = (rng.standard_normal((3200, 16)) * 2.0 ** rng.uniform(-10, 0, 3200)[:, None]
             ).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    index = recfuse.ItemIndex(items, storage="bfloat16", backend="cpu")
    before = core.topk_bfloat16_scanned()
    ids, scores = index.search(queries, 5, num_threads=2)
    scanned = core.topk_bfloat16_scanned() - before
    assert 0 < scanned < 0.5 * 200 * 100  # of 100 blocks per query
    native_ids, native_scores = recfuse.ItemIndex(items, storage="native").search(queries, 5)
    np.testing.assert_array_equal(ids, native_ids)
    np.testing.assert_array_equal(scores, native_scores)


def test_bfloat16_storage_with_exact_ties_and_large_k():
    """Many items with the same float32 score (duplicated rows): ties go to the smaller id,
    as with float32 storage, for k below, at and above n."""
    rng = np.random.default_rng(5)
    items = rng.standard_normal((40, 16)).astype(np.float32)[rng.integers(0, 40, 1500)]
    items[::7] += np.float32(2.0**-20)  # near ties beside the exact ones
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    for k in (1, 10, 100, 1499, 1500, 1600):
        problem = dict(queries=queries, items=items, k=k, item_bias=None,
                       exclude=_exclusions(rng, 20, 1500, 0.2), allow=None, deny=None,
                       exact=False)
        _assert_bfloat16_is_native(problem, "dot", threads=(1, 4))


@given(problem=topk_problems(max_n=100, max_m=14, exact=False))
def test_scores_do_not_depend_on_the_batch(problem):
    """A query's scores are the same, bit for bit, in a batch (the kernel's row blocks of up
    to 12) and alone (one row): the premise of bfloat16 storage's exact rescoring."""
    core = _core_or_skip()
    problem = _float32_problem(problem)
    index = recfuse.ItemIndex(problem["items"], item_bias=problem["item_bias"], backend="cpu")
    for level in core.supported_simd_levels():
        with _cpu_kernels(level):
            ids, scores = index.search(problem["queries"], problem["k"])
            for i, query in enumerate(problem["queries"]):
                one_ids, one_scores = index.search(query, problem["k"])
                np.testing.assert_array_equal(one_ids, ids[i])
                np.testing.assert_array_equal(one_scores.view(np.uint32), scores[i].view(np.uint32))


def test_bfloat16_kernel_choice_is_checked():
    core = _core_or_skip()
    with pytest.raises(ValueError, match="bfloat16 kernel must be 'auto' or 'widen', got 'fast'"):
        core.set_topk_bfloat16_kernel("fast")
    assert core.topk_bfloat16_kernel() in ("dot", "widen")


def test_bfloat16_storage_needs_cpu_and_float32():
    items = np.ones((4, 2), np.float32)
    with pytest.raises(ValueError, match="not available on the 'numpy' backend"):
        recfuse.ItemIndex(items, storage="bfloat16", backend="numpy")
    with pytest.raises(ValueError, match="needs float32 items"):
        recfuse.ItemIndex(items.astype(np.float64), storage="bfloat16", backend="cpu")
    with pytest.raises(ValueError, match="storage must be one of"):
        recfuse.ItemIndex(items, storage="int8")


@pytest.mark.parametrize("kernel", ["dot", "widen"])
def test_auto_storage_picks_by_items_per_result(kernel, monkeypatch):
    """The plain rule, >= BFLOAT16_ITEMS_PER_RESULT items per result: for any batch with the
    AVX512-BF16 kernel ("dot"), for single queries only with the widened one."""
    from recfuse import retrieval
    from recfuse._topk import cpu as topk_cpu

    monkeypatch.setattr(topk_cpu, "bfloat16_dot", lambda: kernel == "dot")
    items = np.ones((6000, 4), np.float32)
    index = recfuse.ItemIndex(items, backend="cpu")
    assert index.storage == "auto" and not index._tables  # nothing prepared before a search
    assert [index.storage_for(k, 1) for k in (1, 6, 7)] == ["bfloat16", "bfloat16", "native"]
    batch = "bfloat16" if kernel == "dot" else "native"
    assert [index.storage_for(k, 32) for k in (1, 6, 7)] == [batch, batch, "native"]
    assert retrieval.BFLOAT16_ITEMS_PER_RESULT * 6 <= 6000 < retrieval.BFLOAT16_ITEMS_PER_RESULT * 7
    assert recfuse.ItemIndex(items[:999], backend="cpu").storage_for(1) == "native"  # small
    assert 999 < retrieval.BFLOAT16_MIN_ITEMS <= 6000
    index.search(items[0], 2)
    assert set(index._tables) == {"bfloat16"}  # only what a search needed
    index.search(items[0], 10)
    assert set(index._tables) == {"bfloat16", "native"}
    assert recfuse.ItemIndex(items.astype(np.float64), backend="cpu").storage_for(1) == "native"
    assert recfuse.ItemIndex(items, backend="numpy").storage_for(1) == "native"
    assert recfuse.ItemIndex(items, storage="native", backend="cpu").storage_for(1) == "native"


def test_auto_storage_takes_bfloat16_from_fewer_items_per_result_on_skewed_norms():
    """Trained factors' norms are skewed (popular items are longer), which lets the bfloat16
    search stop early: "auto" takes it from BFLOAT16_SKEWED_ITEMS_PER_RESULT items per
    result there, and keeps BFLOAT16_ITEMS_PER_RESULT for flat norms, for cosine (every
    item of length 1) and for tables holding NaN."""
    from recfuse import retrieval

    rng = np.random.default_rng(0)
    flat = rng.standard_normal((6000, 8)).astype(np.float32)
    skewed = flat * (1.0 / np.arange(1, 6001, dtype=np.float32) ** 0.5)[:, None]
    assert retrieval.BFLOAT16_SKEWED_ITEMS_PER_RESULT * 12 <= 6000
    assert 6000 < retrieval.BFLOAT16_ITEMS_PER_RESULT * 7
    index = recfuse.ItemIndex(skewed, backend="cpu")
    assert [index.storage_for(k) for k in (6, 7, 12, 13)] == ["bfloat16"] * 3 + ["native"]
    assert recfuse.ItemIndex(flat, backend="cpu").storage_for(7) == "native"
    assert recfuse.ItemIndex(skewed, metric="cosine", backend="cpu").storage_for(7) == "native"
    broken = skewed.copy()
    broken[5, 0] = np.nan
    assert recfuse.ItemIndex(broken, backend="cpu").storage_for(7) == "native"
    assert recfuse.ItemIndex(skewed, storage="native", backend="cpu").storage_for(7) == "native"
    ids, scores = index.search(skewed[:5], 7)  # the same answer from either table
    want_ids, want_scores = recfuse.ItemIndex(skewed, storage="native", backend="cpu").search(
        skewed[:5], 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)
    assert set(index._tables) == {"bfloat16"}


@given(problem=topk_problems(max_n=300), cosine=st.booleans())
def test_auto_storage_is_native_storage(problem, cosine):
    """Whichever table "auto" reads (forced to bfloat16 here by one item per result, as the
    AVX512-BF16 kernel takes it for any batch), its ids and scores are the native table's,
    bit for bit."""
    from unittest import mock

    from recfuse import retrieval
    from recfuse._topk import cpu as topk_cpu

    problem = _float32_problem(problem)
    metric = "cosine" if cosine else "dot"
    want_ids, want_scores = _run(problem, "cpu", storage="native", metric=metric)
    with mock.patch.object(retrieval, "BFLOAT16_ITEMS_PER_RESULT", 1), \
            mock.patch.object(retrieval, "BFLOAT16_MIN_ITEMS", 0), \
            mock.patch.object(topk_cpu, "bfloat16_dot", lambda: True):
        index = recfuse.ItemIndex(problem["items"], item_bias=problem["item_bias"],
                                  metric=metric, backend="cpu")  # auto
        assert index.storage_for(problem["k"], len(problem["queries"])) == "bfloat16"
        ids, scores = index.search(problem["queries"], problem["k"],
                                   exclude=problem["exclude"], allow=problem["allow"],
                                   deny=problem["deny"])
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores.view(np.uint32), want_scores.view(np.uint32))


def test_the_one_call_form_reads_the_float32_table():
    """recfuse.topk builds an index for one call: the bfloat16 copies it prepared under
    "auto" cost more than that call's search (100,000 x 64 trained factors, one query: 42
    ms against 3.6), so "auto" reads the float32 table there; "bfloat16" is still taken
    when asked for."""
    from unittest.mock import patch

    from recfuse import retrieval

    items = np.random.default_rng(0).standard_normal((6000, 4)).astype(np.float32)
    prepared = []
    real = retrieval.ItemIndex._prepared

    def recording(index, storage, num_threads=0):
        prepared.append(storage)
        return real(index, storage, num_threads)

    with patch.object(retrieval.ItemIndex, "_prepared", recording):
        recfuse.topk(items[:2], items, 3, backend="cpu")
        assert set(prepared) == {"native"}
        if recfuse.ItemIndex(items, backend="cpu").storage_for(3) == "bfloat16":
            prepared.clear()
            recfuse.topk(items[:2], items, 3, storage="bfloat16", backend="cpu")
            assert set(prepared) == {"bfloat16"}


def test_auto_storage_answers_zero_queries_from_the_native_table():
    """A zero query ties every item: the bfloat16 search scored each one exactly (ALS gives
    a user without a positive the zero vector: recommending for 4,096 users of whom 13% had
    one took 503 ms against 48). "auto" answers those rows from the float32 table, the
    others from the bfloat16 one, with the same ids and scores as storage="native" and
    each row's own exclusions."""
    from recfuse import _core

    rng = np.random.default_rng(4)
    items = rng.standard_normal((6000, 8)).astype(np.float32)
    index = recfuse.ItemIndex(items, item_bias=np.zeros(6000, np.float32), backend="cpu")
    if index.storage_for(5) != "bfloat16":
        pytest.skip("no bfloat16 storage on this backend")
    queries = rng.standard_normal((7, 8)).astype(np.float32)
    queries[[0, 3, 4]] = 0
    exclude = sp.csr_matrix((np.ones(5), ([0, 1, 3, 3, 6], [0, 9, 1, 2, 5])), shape=(7, 6000))
    before = _core.topk_bfloat16_rescored()
    ids, scores = index.search(queries, 5, exclude=exclude, deny=[3])
    assert _core.topk_bfloat16_rescored() - before < 1000  # not every item of three rows
    want = recfuse.ItemIndex(items, item_bias=np.zeros(6000, np.float32), storage="native",
                             backend="cpu").search(queries, 5, exclude=exclude, deny=[3])
    np.testing.assert_array_equal(ids, want[0])
    np.testing.assert_array_equal(scores.view(np.uint32), want[1].view(np.uint32))
    assert ids[0].tolist() == [1, 2, 4, 5, 6] and ids[3].tolist() == [0, 4, 5, 6, 7]
    assert set(index._tables) == {"native", "bfloat16"}
    ids, _ = index.search(np.zeros((2, 8), np.float32), 3)  # zero rows only
    assert ids.tolist() == [[0, 1, 2]] * 2


def test_auto_storage_prepares_each_table_once_under_concurrent_searches(monkeypatch):
    import threading

    from recfuse._topk import cpu as topk_cpu

    monkeypatch.setattr(topk_cpu, "bfloat16_dot", lambda: True)  # bfloat16 for batches
    rng = np.random.default_rng(3)
    items = rng.standard_normal((6000, 16)).astype(np.float32)
    index = recfuse.ItemIndex(items, backend="cpu")
    queries = rng.standard_normal((8, 16)).astype(np.float32)
    want = recfuse.ItemIndex(items, storage="native", backend="cpu").search(queries, 3)
    results, errors = [], []

    def search():
        try:
            results.append(index.search(queries, 3, num_threads=1))  # 3 <= 6000 / 1000
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=search) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(results) == 8 and set(index._tables) == {"bfloat16"}
    for ids, scores in results:
        np.testing.assert_array_equal(ids, want[0])
        np.testing.assert_array_equal(scores.view(np.uint32), want[1].view(np.uint32))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("n", [1, 31, 33, 700, 2100])
def test_panel_edges_and_thread_splits(backend, n):
    """Item counts around the 32-item panel and large enough for several threads to split."""
    rng = np.random.default_rng(n)
    items = rng.integers(-3, 4, (n, 7)).astype(np.float32)
    queries = rng.integers(-3, 4, (13, 7)).astype(np.float32)
    exclude = _exclusions(rng, 13, n, 0.3)
    for k in sorted({1, 10, n - 1, n, n + 5} - {0}):
        for threads in (1, 2, 4):
            ids, scores = recfuse.topk(queries, items, k, exclude=exclude, backend=backend,
                                       num_threads=threads)
            assert_topk_matches(ids, scores, queries, items, k, exclude=exclude, exact=True)


def test_ties_across_the_ranges_threads_take_in_turn():
    """The native float scan cuts the table into many ranges of panels, taken by whichever
    thread is free: ties must still go to the smaller id whichever thread scans which range
    (heavy ties: values in {-1, 0, 1}, 20k items = 625 panels, up to 32 ranges)."""
    rng = np.random.default_rng(7)
    items = rng.integers(-1, 2, (20_000, 5)).astype(np.float32)
    queries = rng.integers(-1, 2, (40, 5)).astype(np.float32)
    exclude = _exclusions(rng, 40, 20_000, 0.01)
    for k in (1, 50, 700):
        for threads in (1, 2, 3, 8):
            ids, scores = recfuse.topk(queries, items, k, exclude=exclude, backend="cpu",
                                       num_threads=threads)
            assert_topk_matches(ids, scores, queries, items, k, exclude=exclude, exact=True)


@pytest.mark.parametrize("sampled", ["highest", "lowest"])
@pytest.mark.parametrize("ties", [False, True])
def test_candidate_cuts_when_their_sample_misleads(sampled, ties):
    """A float query's buffer of 2k candidates is cut at a pivot drawn from 64 evenly spaced
    buffer places. Here the first buffer (the first 2k ids: everything passes an empty one)
    holds the best (or worst) scores exactly at those places, so no sample key keeps between
    k and 1.5k: the cut must fall back to an exact selection. The later cuts see random
    buffers (with ties on purpose in the integer case)."""
    rng = np.random.default_rng(11)
    k, n = 100, 3000
    values = rng.integers(0, 20, n) if ties else rng.random(n)
    places = (2 * np.arange(64) + 1) * (2 * k) // 128
    values[places] = 100 + np.arange(64) if sampled == "highest" else -100 - np.arange(64)
    items = values.astype(np.float32)[:, None]
    queries = np.array([[1.0], [2.0], [-1.0]], np.float32)
    for threads in (1, 2):
        ids, scores = recfuse.topk(queries, items, k, backend="cpu", num_threads=threads)
        assert_topk_matches(ids, scores, queries, items, k, exact=True)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_nan_and_inf_items_keep_the_order_of_the_others(backend):
    rng = np.random.default_rng(1)
    items = rng.integers(-3, 4, (100, 5)).astype(np.float32)
    items[7, 2] = np.nan
    items[40] = np.inf  # inf * 0 and inf - inf: NaN scores for some queries
    items[41, 0] = -np.inf
    queries = rng.integers(-3, 4, (6, 5)).astype(np.float32)
    queries[0] = 0
    ids, scores = recfuse.topk(queries, items, 100, backend=backend)
    assert not (ids == 7).any()
    assert_topk_matches(ids, scores, queries, items, 100, exact=True)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_everything_excluded_and_empty_rows(backend):
    items = np.arange(12, dtype=np.float32).reshape(6, 2)
    queries = np.ones((3, 2), np.float32)
    exclude = sp.csr_matrix(np.array([[1] * 6, [0] * 6, [1, 0, 1, 0, 1, 0]], np.float32))
    ids, scores = recfuse.topk(queries, items, 4, exclude=exclude, backend=backend)
    np.testing.assert_array_equal(ids, [[-1] * 4, [5, 4, 3, 2], [5, 3, 1, -1]])
    assert np.isneginf(scores[0]).all() and np.isneginf(scores[2, 3])
    ids, scores = recfuse.topk(queries, items, 2, allow=[], backend=backend)
    assert (ids == -1).all()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_single_query_and_item_bias(backend):
    items = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    ids, scores = recfuse.topk(np.array([1.0, 0.0], np.float32), items, 2,
                               item_bias=np.array([0.0, 5.0, -1.0]), backend=backend)
    assert ids.shape == (2,)
    np.testing.assert_array_equal(ids, [1, 0])
    np.testing.assert_array_equal(scores, np.array([5.0, 1.0], np.float32))


def test_no_queries_and_float16_items():
    items = np.eye(4, dtype=np.float16)
    ids, scores = recfuse.topk(np.zeros((0, 4)), items, 3)
    assert ids.shape == scores.shape == (0, 3) and scores.dtype == np.float32
    ids, scores = recfuse.topk(np.eye(4)[2], items, 1)
    assert ids.tolist() == [2] and scores.dtype == np.float32


@pytest.mark.parametrize("backend", backend_params(("numba",), family="topk"))
def test_numba_kernel_loads_from_the_disk_cache_in_a_new_process(backend):
    """The second process to search finds the kernel in Numba's disk cache (compiled once,
    ~7 s here): a kernel that captured its helpers as closure variables hashed to a new
    cache key in every process, compiled again and added one more entry to the cache."""
    code = (
        "import numpy as np, recfuse\n"
        "from recfuse._topk import numba_backend\n"
        "recfuse.topk(np.ones((2, 3), np.float32), np.ones((5, 3), np.float32), 2,\n"
        "             backend='numba')\n"
        "stats = numba_backend._kernel()[1].stats\n"
        "print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))\n"
    )
    runs = numba_cache_counts(code)
    assert runs[1] == ["1", "0"], runs


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_concurrent_searches_agree(backend):
    rng = np.random.default_rng(3)
    index = recfuse.ItemIndex(rng.standard_normal((3000, 16)).astype(np.float32),
                              backend=backend)
    queries = rng.standard_normal((40, 16)).astype(np.float32)
    expected = index.search(queries, 25)
    barrier = threading.Barrier(4)

    def work(_):
        barrier.wait()
        return index.search(queries, 25, num_threads=1)

    with ThreadPoolExecutor(4) as pool:
        for ids, scores in pool.map(work, range(8)):
            np.testing.assert_array_equal(ids, expected[0])
            np.testing.assert_array_equal(scores, expected[1])


@pytest.mark.parametrize("call, error, message", [
    (lambda q, v: recfuse.topk(q[:, :3], v, 2), ValueError, "queries must have d = 4"),
    (lambda q, v: recfuse.topk(q, v, 0), ValueError, "k must be >= 1"),
    (lambda q, v: recfuse.topk(q, v, 2.5), TypeError, "k must be an integer"),
    (lambda q, v: recfuse.topk(q, v, 2**40), ValueError, "k must be <= 2147483647"),
    (lambda q, v: recfuse.topk(q * np.nan, v, 2), ValueError, "queries must hold finite"),
    (lambda q, v: recfuse.topk(q.astype(np.float64) * 1e39, v, 2), ValueError,
     "queries must hold finite values, got 8 NaN/inf as float32"),
    (lambda q, v: recfuse.topk(q, v, 2, exclude=sp.csr_matrix((3, 5))), ValueError,
     "exclude must have shape"),
    (lambda q, v: recfuse.topk(q, v, 2, exclude=np.zeros((2, 5))), TypeError,
     "exclude must be a scipy sparse matrix"),
    (lambda q, v: recfuse.topk(q, v, 2, allow=[5]), ValueError, "allow must be < 5"),
    (lambda q, v: recfuse.topk(q, v, 2, deny=[-1]), ValueError, "deny must be >= 0"),
    (lambda q, v: recfuse.topk(q, v, 2, item_bias=np.zeros(4)), ValueError,
     r"item_bias must have shape \(5,\)"),
    (lambda q, v: recfuse.topk(q, v, 2, item_bias=np.full(5, np.nan)), ValueError,
     "item_bias must hold finite"),
    (lambda q, v: recfuse.topk(q, v, 2, item_bias=np.full(5, 1e39)), ValueError,
     "item_bias must hold finite values, got 5 NaN/inf as float32"),
    (lambda q, v: recfuse.topk(q, v, 2, metric="l2"), ValueError, "metric must be one of"),
    (lambda q, v: recfuse.topk(q, v[None], 2), ValueError, "items must be 2-d"),
    (lambda q, v: recfuse.topk(q.astype(str), v, 2), TypeError, "queries must hold real"),
    (lambda q, v: recfuse.topk(q, v, 2, backend="tpu"), ValueError, "backend must be"),
    (lambda q, v: recfuse.topk(sp.csr_matrix(q), v, 2), TypeError,
     r"queries must be a dense array, got a scipy.sparse csr matrix; .*\.toarray\(\)"),
    (lambda q, v: recfuse.ItemIndex(sp.coo_matrix(v)), TypeError,
     "items must be a dense array, got a scipy.sparse coo matrix"),
    (lambda q, v: recfuse.topk(q, v, 2, item_bias=sp.csr_matrix(np.ones((1, 5)))), TypeError,
     "item_bias must be a dense array"),
    # ragged sequences: NumPy's "inhomogeneous shape" error named no argument
    (lambda q, v: recfuse.topk([[1, 2, 3, 4], [1]], v, 2), ValueError,
     "queries must be an array of real numbers, got a ragged sequence"),
    (lambda q, v: recfuse.topk(q, [[1, 2, 3, 4], [1]], 2), ValueError,
     "items must be an array of real numbers, got a ragged sequence"),
    (lambda q, v: recfuse.topk(q, v, 2, item_bias=[0, 0, 0, 0, [1]]), ValueError,
     "item_bias must be an array of real numbers, got a ragged sequence"),
    # a single query of the wrong length is named by its own shape, not (1, d)
    (lambda q, v: recfuse.topk(q[0, :3], v, 2), ValueError,
     r"queries must have d = 4 columns like items, got shape \(3,\)$"),
    # sets, iterators and sparse rows: "must hold integers, got dtype object" before
    (lambda q, v: recfuse.topk(q, v, 2, allow={1, 2}), TypeError,
     r"allow must be a sequence or array of item ids, or a boolean mask of the 5 items, "
     r"got set; pass sorted\(\.\.\.\)"),
    (lambda q, v: recfuse.topk(q, v, 2, deny=iter([1, 2])), TypeError,
     "deny must be a sequence or array of item ids.* got list_iterator"),
    (lambda q, v: recfuse.topk(q, v, 2, allow=sp.csr_matrix(np.ones((1, 5), bool))), TypeError,
     r"allow must be .* got csr_matrix; convert it with .toarray\(\).ravel\(\)"),
])
def test_bad_input_is_named(call, error, message):
    queries = np.ones((2, 4), np.float32)
    items = np.ones((5, 4), np.float32)
    with pytest.raises(error, match=message):
        call(queries, items)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_cosine_keeps_the_direction_of_values_beyond_float32(backend):
    """Cosine is scale-free: float64 queries beyond float32's range and float32 rows whose
    dot products would overflow still give cosines in [-1, 1], ordered as the reference."""
    items = np.array([[3e38, 3e38], [1.0, 0.0], [0.0, 1.0]], np.float32)
    ids, scores = recfuse.topk(np.array([1e39, 1e39]), items, 3, metric="cosine",
                               backend=backend)
    np.testing.assert_array_equal(ids, [0, 1, 2])
    np.testing.assert_allclose(scores, [1.0, np.sqrt(0.5), np.sqrt(0.5)], rtol=1e-6)


def test_results_beyond_memory_are_refused_up_front():
    """Rows are padded to k: a k whose results cannot fit this machine's memory raises
    MemoryError naming k instead of an allocation the system would kill the process for."""
    items = np.ones((5, 4), np.float32)
    with pytest.raises(MemoryError, match="lower k"):
        recfuse.topk(np.ones((1000, 4), np.float32), items, 2**31 - 1)
    model = recfuse.MLPScorer([(np.ones((1, 8), np.float32), None, "identity")])
    with pytest.raises(MemoryError, match="lower k"):
        model.rank(np.ones((1000, 4), np.float32), np.zeros((1000, 2), np.int64), items,
                   k=2**31 - 1)


@pytest.mark.parametrize("storage", ["native", "bfloat16"])
def test_malformed_exclusions_are_refused_before_the_kernels(storage):
    """scipy builds a sparse matrix from given index arrays without checking them: an index
    past the items (or a malformed CSC converted to CSR) must be refused, never read."""
    items = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    index = recfuse.ItemIndex(items, storage=storage)
    query = np.ones((1, 16), np.float32)
    for bad in (10**9, -2**31):
        exclude = sp.csr_matrix((np.ones(1, np.float32), np.array([bad], np.int32),
                                 np.array([0, 1])), shape=(1, 3000))
        with pytest.raises(ValueError, match=r"exclude has column indices outside \[0, 3000\)"):
            index.search(query, 3, exclude=exclude)
    by_column = sp.csc_matrix((np.ones(2, np.float32), np.array([0, 10**8], np.int32),
                               np.r_[0, 2, np.full(2999, 2)]), shape=(1, 3000))
    with pytest.raises(ValueError, match="exclude has row indices outside"):
        index.search(query, 3, exclude=by_column)


def test_allow_and_deny_take_boolean_masks_of_the_items():
    items = np.random.default_rng(4).standard_normal((20, 4)).astype(np.float32)
    mask = np.zeros(20, dtype=bool)
    mask[[3, 5, 7]] = True
    for option in ("allow", "deny"):
        by_mask = recfuse.topk(items[:3], items, 4, **{option: mask})
        by_ids = recfuse.topk(items[:3], items, 4, **{option: [3, 5, 7]})
        np.testing.assert_array_equal(by_mask[0], by_ids[0])
        with pytest.raises(ValueError, match=f"{option} as a boolean mask must have one entry "
                                             r"per item \(20\), got shape \(5,\)"):
            recfuse.topk(items[:3], items, 4, **{option: mask[:5]})


@pytest.mark.parametrize("layout", ["big-endian", "fortran", "strided", "reversed", "misaligned",
                                    "read-only"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_any_layout_of_the_items_gives_the_same_results(layout, dtype):
    """A big-endian float64 table is float64 (it was searched as float32), and every other
    layout of the same values gives the same ids, scores and dtype."""
    rng = np.random.default_rng(5)
    items = rng.standard_normal((300, 8)).astype(dtype)
    queries = rng.standard_normal((4, 8)).astype(dtype)
    if layout == "big-endian":
        other = items.astype(items.dtype.newbyteorder(">"))
    elif layout == "fortran":
        other = np.asfortranarray(items)
    elif layout == "strided":
        other = np.repeat(items, 2, axis=1)[:, ::2]
    elif layout == "reversed":
        other = items[::-1].copy()[::-1]
    elif layout == "misaligned":
        other = np.frombuffer(bytearray(items.nbytes + 1), dtype, items.size, 1).reshape(
            items.shape)
        other[...] = items
    else:
        other = items.copy()
        other.flags.writeable = False
    for metric in ("dot", "cosine"):
        expected = recfuse.topk(queries, items, 5, metric=metric)
        got = recfuse.topk(queries, other, 5, metric=metric)
        assert got[1].dtype == dtype
        np.testing.assert_array_equal(got[0], expected[0])
        np.testing.assert_array_equal(got[1], expected[1])


def test_a_recfuse_simd_the_cpu_cannot_run_leaves_the_other_backends_working():
    """An unsupported or misspelt RECFUSE_SIMD makes every SIMD-dispatched native call raise:
    recfuse.backends() then reports the cpu backend unavailable and "auto" passes over it. The
    other backends must still search (the input checks they share used the native one-pass
    finiteness check unconditionally, so backend='numpy' raised the cpu's SIMD error)."""
    code = (
        "import numpy as np, recfuse\n"
        "from recfuse import reference\n"
        "(cpu,) = [b for b in recfuse.backends('topk') if b.name == 'cpu']\n"
        "assert not cpu.available and 'bogus' in cpu.detail, cpu\n"
        "rng = np.random.default_rng(0)\n"
        "items = rng.standard_normal((50, 7)).astype(np.float32)\n"
        "queries = rng.standard_normal((3, 7)).astype(np.float32)\n"
        "ids, scores = recfuse.topk(queries, items, 4, backend='numpy')\n"
        "assert (ids == reference.topk(queries, items, 4)[0]).all()\n"
        "try:\n"
        "    recfuse.topk(queries * np.nan, items, 4, backend='numpy')\n"
        "except ValueError as error:\n"
        "    assert 'queries must hold finite' in str(error), error\n"
        "else:\n"
        "    raise AssertionError('NaN queries were accepted')\n"
        "layers = [(np.ones((1, 7), np.float32), None, 'identity')]\n"
        "scores = recfuse.MLPScorer(layers, backend='numpy').score(queries)\n"
        "assert np.allclose(scores, queries.sum(axis=1), atol=1e-5)\n"
    )
    run_python(code, RECFUSE_SIMD="bogus")


def test_cosine_index_of_huge_rows_builds_under_strict_fp_settings():
    # 1/norm of a row near 3e38 is subnormal in float32: the cast must not raise
    items = np.array([[3e38, 3e38], [1.0, 2.0]], np.float32)
    with np.errstate(all="raise"):
        ids, scores = recfuse.ItemIndex(items, metric="cosine").search(np.ones((1, 2), np.float32), 2)
    assert ids.tolist() == [[0, 1]] and np.isfinite(scores).all()  # row 0 is along the query
