"""Adversarial hunt on the exact top-k API (``recfuse.topk``, ``recfuse.ItemIndex``) against a
plain-NumPy oracle written from the documented contract (python/recfuse/retrieval.py,
README "Retrieval on its own"), on every backend that runs on a host (cpu at each SIMD level
and with bfloat16 storage, numba, numpy).

The contract used here: the score of item j is ``q . v_j (+ item_bias[j])``; a row holds the
min(k, qualifying) best items by score descending, ties to the smaller id, no id twice, then
padding (id -1, score -inf); an item qualifies when allowed, not denied, not a stored entry of
the query's row of ``exclude`` (whatever its value) and its score is a number above -inf; a
NaN score never qualifies; queries must be finite; errors name their argument.

The one finding (a DIA matrix's stored zeros) is settled in the documentation: a DIA matrix
stores the zeros between its entries, so only its nonzero values exclude.
"""

from __future__ import annotations


import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import backend_params, simd_level

HOST = backend_params(("cpu", "numba", "numpy"), family="topk")
BACKENDS = [p.values[0] for p in HOST if not p.marks]
HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ the oracle


def oracle(queries, items, k, *, exclude=None, allow=None, deny=None, bias=None):
    """(ids int64 m x k, scores float64 m x k) from the contract, vectorised. Scores are
    computed in float64 one product at a time (exact for the small integers the exact tests
    use, where every backend's float32 evaluation is exact too)."""
    Q = np.atleast_2d(np.asarray(queries, np.float64))
    V = np.asarray(items, np.float64)
    m, n = Q.shape[0], V.shape[0]
    with np.errstate(all="ignore"):
        S = (Q[:, None, :] * V[None, :, :]).sum(axis=2) if n else np.zeros((m, 0))
        if bias is not None:
            S = S + np.asarray(bias, np.float64)[None, :]
    ok = S > -np.inf  # NaN and -inf never qualify
    if allow is not None:
        allowed = np.zeros(n, bool)
        a = np.asarray(allow)
        if a.dtype == bool and a.size:
            allowed = a.copy()
        else:
            allowed[a.astype(np.int64).ravel()] = True
        ok &= allowed[None, :]
    if deny is not None:
        dn = np.asarray(deny)
        if dn.dtype == bool and dn.size:
            ok &= ~dn[None, :]
        else:
            ok[:, dn.astype(np.int64).ravel()] = False
    if exclude is not None:
        for i, row in enumerate(exclude):
            ok[i, np.asarray(row, np.int64)] = False
    ids = np.full((m, k), -1, np.int64)
    scores = np.full((m, k), -np.inf)
    if n == 0:
        return ids, scores
    col = np.broadcast_to(np.arange(n), (m, n))
    order = np.lexsort((col, -np.where(ok, S, 0.0), ~ok), axis=1)
    take = min(k, n)
    chosen = order[:, :take]
    good = np.take_along_axis(ok, chosen, axis=1)
    ids[:, :take] = np.where(good, chosen, -1)
    scores[:, :take] = np.where(good, np.take_along_axis(S, chosen, axis=1), -np.inf)
    return ids, scores


def rows_of(E):
    """The stored column indices of each row of a sparse matrix (every stored entry)."""
    C = sp.coo_matrix(E) if E.format != "csr" else E
    if C.format == "csr":
        return [C.indices[C.indptr[i]:C.indptr[i + 1]] for i in range(C.shape[0])]
    return [C.col[C.row == i] for i in range(C.shape[0])]


def assert_same(got, want, context=""):
    ids, scores = got
    np.testing.assert_array_equal(ids, want[0], err_msg=context)
    np.testing.assert_array_equal(np.asarray(scores, np.float64), want[1], err_msg=context)
    assert ids.dtype == np.int64, context


def simd_levels():
    try:
        from recfuse import _core
        return list(_core.supported_simd_levels())
    except Exception:  # noqa: BLE001 - no native module: no levels to force
        return []


def runs(dtype):
    """(label, kwargs, level) for every host configuration a problem of ``dtype`` runs on."""
    out = []
    for backend in BACKENDS:
        if backend == "cpu":
            for level in simd_levels():
                for threads in (1, 3):
                    out.append((f"cpu/{level}/{threads}t", dict(backend="cpu",
                                                                num_threads=threads), level))
                if np.dtype(dtype) == np.float32:
                    out.append((f"cpu/{level}/bfloat16", dict(backend="cpu", storage="bfloat16",
                                                               num_threads=2), level))
        else:
            out.append((backend, dict(backend=backend), None))
    return out


def run_all(queries, items, k, **kw):
    """{label: (ids, scores)} over every host configuration."""
    results = {}
    table_dtype = np.asarray(items).dtype
    table_dtype = table_dtype if table_dtype in (np.float32, np.float64) else np.dtype(np.float32)
    for label, extra, level in runs(table_dtype):
        if level is None:
            results[label] = recfuse.topk(queries, items, k, **kw, **extra)
        else:
            with simd_level(level):
                results[label] = recfuse.topk(queries, items, k, **kw, **extra)
    return results


# ----------------------------------------------------------------- hypothesis: exact problems


@st.composite
def exact_problems(draw):
    """Small-integer problems (every sum exact in float32, scores tie everywhere) with every
    filter: seen rows with repeats, unsorted ids and explicit zeros in several sparse
    formats, allow/deny as repeated ids or boolean masks."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    m = draw(st.sampled_from([1, 2, 5, 6, 7, 12, 13, 31, 33]))
    n = draw(st.sampled_from([1, 2, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 129]))
    d = draw(st.sampled_from([1, 2, 3, 8, 9, 17]))
    spread = draw(st.sampled_from([0, 1, 2]))  # 0: zero queries (every item ties)
    dtype = draw(st.sampled_from([np.float32, np.float64, np.float16, np.int16]))
    queries = rng.integers(-spread, spread + 1, (m, d)).astype(dtype)
    items = rng.integers(-2, 3, (n, d)).astype(dtype)
    if draw(st.booleans()):
        items[rng.integers(0, n, n // 2 + 1)] = items[0]  # duplicate rows: exact ties
    k = draw(st.sampled_from([1, 2, 7, max(1, n - 1), n, n + 1, 3 * n + 5]))
    bias = rng.integers(-3, 4, n).astype(np.float32) if draw(st.booleans()) else None
    exclude = rows = None
    if draw(st.booleans()):
        density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
        rows = [np.flatnonzero(rng.random(n) < density) for _ in range(m)]
        if draw(st.booleans()):  # repeats and unsorted
            rows = [np.concatenate([r, r[: len(r) // 2]])[::-1] for r in rows]
        indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
        indices = np.concatenate(rows).astype(np.int32) if indptr[-1] else np.zeros(0, np.int32)
        zeros = draw(st.booleans())  # explicit zeros: stored entries all the same
        data = np.zeros(len(indices)) if zeros else np.ones(len(indices))
        fmt = draw(st.sampled_from(["csr", "csr_array", "coo", "csc"]))
        exclude = sp.csr_matrix((data, indices, indptr), shape=(m, n))
        if fmt == "csr_array":
            exclude = sp.csr_array((data, indices, indptr), shape=(m, n))
        elif fmt == "coo":
            r = np.repeat(np.arange(m), np.diff(indptr))
            exclude = sp.coo_matrix((data, (r, indices)), shape=(m, n))
        elif fmt == "csc":
            r = np.repeat(np.arange(m), np.diff(indptr))
            exclude = sp.coo_matrix((data, (r, indices)), shape=(m, n)).tocsc()
    allow = deny = None
    if draw(st.booleans()):
        allow = (rng.random(n) < 0.6) if draw(st.booleans()) else rng.integers(0, n, 2 * n)
    if draw(st.booleans()):
        deny = (rng.random(n) < 0.3) if draw(st.booleans()) else rng.integers(0, n, n // 2)
    return dict(queries=queries, items=items, k=k, item_bias=bias, exclude=exclude,
                rows=rows, allow=allow, deny=deny)


@HYPOTHESIS
@given(p=exact_problems())
def test_exact_problems_equal_the_oracle_on_every_backend_level_and_storage(p):
    want = oracle(p["queries"], p["items"], p["k"], exclude=p["rows"], allow=p["allow"],
                  deny=p["deny"], bias=p["item_bias"])
    results = run_all(p["queries"], p["items"], p["k"], exclude=p["exclude"], allow=p["allow"],
                      deny=p["deny"], item_bias=p["item_bias"])
    for label, got in results.items():
        assert_same(got, want, label)


# ------------------------------------------------------------------ hypothesis: float problems


def assert_valid(got, queries, items, k, *, bias=None, label=""):
    """What any correct answer satisfies under rounding: sorted by its own scores with ties
    by id, padding last, scores within rounding of q.v, nothing better left out."""
    ids, scores = got
    Q = np.asarray(queries, np.float64)
    V = np.asarray(items, np.float64)
    S = Q @ V.T + (0 if bias is None else np.asarray(bias, np.float64))
    info = np.finfo(scores.dtype)
    tol = 8 * (V.shape[1] + 2) * (info.eps * (
        np.abs(Q) @ np.abs(V).T + (0 if bias is None else np.abs(bias))).max()
        + info.smallest_subnormal)  # products below the subnormals round to zero
    for i in range(Q.shape[0]):
        take = min(k, V.shape[0])
        row, s = ids[i], scores[i].astype(np.float64)
        assert (row[:take] >= 0).all() and (row[take:] == -1).all(), label
        assert np.isneginf(s[take:]).all(), label
        chosen = row[:take]
        assert np.unique(chosen).size == take, f"{label}: an id twice"
        assert (s[:take - 1] >= s[1:take]).all(), f"{label}: not sorted"
        same = s[:take - 1] == s[1:take]
        assert (chosen[:-1][same] < chosen[1:][same]).all(), f"{label}: ties not by id"
        np.testing.assert_allclose(s[:take], S[i, chosen], rtol=0, atol=tol, err_msg=label)
        rest = np.setdiff1d(np.arange(V.shape[0]), chosen)
        if rest.size:
            assert S[i, rest].max() <= S[i, chosen].min() + 2 * tol, f"{label}: better left out"


@settings(HYPOTHESIS, max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), m=st.sampled_from([1, 3, 13, 33]),
       n=st.sampled_from([1, 5, 33, 100, 257]), d=st.sampled_from([1, 4, 31]),
       scale=st.sampled_from([1e-30, 1e-3, 1.0, 1e15]), dtype=st.sampled_from([np.float32, np.float64]),
       with_bias=st.booleans())
def test_float_problems_are_valid_answers_on_every_backend(seed, m, n, d, scale, dtype, with_bias):
    rng = np.random.default_rng(seed)
    queries = (rng.standard_normal((m, d)) * scale).astype(dtype)
    items = (rng.standard_normal((n, d)) * scale).astype(dtype)
    bias = (rng.standard_normal(n) * scale * scale).astype(dtype) if with_bias else None
    for k in sorted({1, min(n, 10), n, n + 2}):
        for label, got in run_all(queries, items, k, item_bias=bias).items():
            assert got[1].dtype == dtype, label
            assert_valid(got, queries, items, k, bias=bias, label=f"{label} k={k}")


# ----------------------------------------------------------------------- ties and zeros


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_equal_scores_return_the_first_ids(backend, dtype):
    items = np.full((70, 5), 0.3, dtype)
    queries = np.array([[0.1, 0.2, -0.7, 0.5, 1.5], [0, 0, 0, 0, 0]], dtype)
    for k in (1, 31, 32, 33, 69, 70, 71):
        ids, scores = recfuse.topk(queries, items, k, backend=backend)
        take = min(k, 70)
        np.testing.assert_array_equal(ids[:, :take], np.broadcast_to(np.arange(take), (2, take)))
        assert (ids[:, take:] == -1).all()
        assert (scores[:, :take] == scores[:, :1]).all()


@pytest.mark.parametrize("backend", [b for b in HOST if b.values[0] != "numpy"])
def test_identical_float_rows_tie_by_id(backend):
    """Duplicate item rows get one score and come back in id order, on the backends that
    compute each score alone (the numpy backend's BLAS rounds identical rows differently:
    see the notes, Suspicious)."""
    rng = np.random.default_rng(0)
    for d, n, m in [(16, 17, 33), (37, 17, 5), (37, 5, 33), (64, 100, 7)]:
        items = np.tile(rng.standard_normal(d), (n, 1)).astype(np.float32)
        queries = rng.standard_normal((m, d)).astype(np.float32)
        ids, scores = recfuse.topk(queries, items, n, backend=backend)
        np.testing.assert_array_equal(ids, np.broadcast_to(np.arange(n), (m, n)))
        assert (scores == scores[:, :1]).all()


@pytest.mark.parametrize("backend", HOST)
def test_signed_zeros_tie_and_subnormal_scores_rank_above_zero(backend):
    tiny = np.finfo(np.float32).smallest_subnormal
    items = np.array([[0.0], [-0.0], [tiny], [-tiny], [2 * tiny], [0.0]], np.float32)
    queries = np.array([[1.0], [-0.0], [0.0], [-1.0]], np.float32)
    ids, scores = recfuse.topk(queries, items, 6, backend=backend)
    np.testing.assert_array_equal(ids, [[4, 2, 0, 1, 5, 3], [0, 1, 2, 3, 4, 5],
                                        [0, 1, 2, 3, 4, 5], [3, 0, 1, 5, 2, 4]])
    assert scores[0, 0] == 2 * tiny and scores[0, 1] == tiny and scores[0, 5] == -tiny
    assert (scores[1:3] == 0).all()
    # subnormal biases count too
    ids, _ = recfuse.topk(np.zeros((1, 1), np.float32), items[:3], 3, backend=backend,
                          item_bias=np.array([0.0, tiny, -tiny], np.float32))
    np.testing.assert_array_equal(ids, [[1, 0, 2]])


@pytest.mark.parametrize("backend", HOST)
def test_subnormal_query_times_normal_items(backend):
    tiny = np.finfo(np.float32).smallest_subnormal
    items = np.array([[1.0, 0], [0.5, 0], [0, 1.0], [0.75, 0]], np.float32)
    ids, scores = recfuse.topk(np.array([[tiny, 0]], np.float32), items, 4, backend=backend)
    # 0.5 * tiny and 0.75 * tiny round to 0 and tiny (ties to even: 0.5 -> 0, 0.75 -> 1)
    np.testing.assert_array_equal(ids, [[0, 3, 1, 2]])


# ------------------------------------------------------------------- overflow, inf, NaN


STORAGES = [pytest.param(b.values[0], "native", marks=b.marks, id=f"{b.values[0]}-native")
            for b in HOST] + [pytest.param("cpu", "bfloat16", marks=HOST[0].marks,
                                           id="cpu-bfloat16")]


@pytest.mark.parametrize("backend, storage", STORAGES)
def test_overflow_to_plus_inf_ranks_first_and_ties_by_id(backend, storage):
    big = np.float32(3e38)
    items = np.array([[1, 1], [big, big], [2, 2], [big, big], [-big, -big], [1, 0]], np.float32)
    ids, scores = recfuse.topk(np.ones((2, 2), np.float32), items, 7, backend=backend,
                               storage=storage)
    # all products positive: inf in every evaluation order; -inf never qualifies
    np.testing.assert_array_equal(ids, [[1, 3, 2, 0, 5, -1, -1]] * 2)
    assert np.isposinf(scores[:, :2]).all() and np.isneginf(scores[:, 5:]).all()
    # a finite dot product pushed past the largest float by the bias
    ids, scores = recfuse.topk(np.ones((1, 1), np.float32), np.array([[big], [1.0]], np.float32),
                               2, item_bias=np.array([big, 0.0], np.float32), backend=backend,
                               storage=storage)
    np.testing.assert_array_equal(ids, [[0, 1]])
    assert np.isposinf(scores[0, 0])


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inf_and_nan_items_as_documented(backend, dtype):
    items = np.array([[1, 1], [np.inf, 1], [2, 2], [-np.inf, 1], [np.nan, 0], [np.inf, -np.inf],
                      [np.inf, 5]], dtype)
    queries = np.array([[1, 1], [0, 1], [1, 0], [-1, 0]], dtype)
    ids, scores = recfuse.topk(queries, items, 7, backend=backend)
    # [1, 1]: +inf for 1 and 6 (tie by id), inf - inf and NaN never returned, -inf neither
    np.testing.assert_array_equal(ids, [[1, 6, 2, 0, -1, -1, -1],
                                        [2, 0, -1, -1, -1, -1, -1],   # inf * 0: NaN
                                        [1, 6, 2, 0, -1, -1, -1],
                                        [3, 0, 2, -1, -1, -1, -1]])
    assert np.isposinf(scores[[0, 2]][:, :2]).all() and np.isposinf(scores[3, 0])
    assert scores.dtype == dtype


@pytest.mark.parametrize("backend", HOST)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("metric", ["dot", "cosine"])
def test_non_finite_queries_are_refused_naming_queries(backend, bad, metric):
    items = np.ones((4, 3), np.float32)
    for queries in (np.array([[1, bad, 0]], np.float32), np.array([1, bad, 0], np.float16),
                    np.array([[1, bad, 0]], np.float64)):
        with pytest.raises(ValueError, match="queries must hold finite values"):
            recfuse.topk(queries, items, 2, backend=backend, metric=metric)
    with pytest.raises(ValueError, match=r"queries must hold finite values, got 1 NaN/inf as "
                                         r"float32 \(values beyond its range"):
        recfuse.topk(np.array([[1e39, 0, 0]]), items, 2, backend=backend)


# ------------------------------------------------------------------------------- k


@pytest.mark.parametrize("backend", HOST)
def test_k_from_one_to_huge(backend):
    rng = np.random.default_rng(2)
    items = rng.integers(-3, 4, (9, 3)).astype(np.float32)
    queries = rng.integers(-3, 4, (4, 3)).astype(np.float32)
    for k in (1, 8, 9, 10, 64, 10**6):
        got = recfuse.topk(queries, items, k, backend=backend)
        assert got[0].shape == got[1].shape == (4, k)
        assert_same(got, oracle(queries, items, k), f"k={k}")
    got = recfuse.topk(queries[0], items, 10**6, backend=backend)
    assert got[0].shape == (10**6,) and (got[0][9:] == -1).all()


@pytest.mark.parametrize("k, error, message", [
    (0, ValueError, "k must be >= 1, got 0"),
    (-3, ValueError, "k must be >= 1, got -3"),
    (True, TypeError, "k must be an integer, got bool"),
    (2.0, TypeError, "k must be an integer, got float"),
    ("3", TypeError, "k must be an integer, got str"),
    (None, TypeError, "k must be an integer, got NoneType"),
    (2**31, ValueError, "k must be <= 2147483647"),
])
def test_bad_k_is_named(k, error, message):
    items = np.ones((5, 2), np.float32)
    for backend in BACKENDS:
        with pytest.raises(error, match=message):
            recfuse.topk(items[:2], items, k, backend=backend)
        with pytest.raises(error, match=message):
            recfuse.ItemIndex(items, backend=backend).search(items[0], k)


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("backend", HOST)
def test_filters_that_remove_every_item(backend):
    items = np.arange(12, dtype=np.float32).reshape(6, 2)
    queries = np.ones((3, 2), np.float32)
    everything = sp.csr_matrix(np.ones((3, 6)))
    cases = [dict(allow=[]), dict(allow=np.zeros(6, bool)), dict(deny=np.arange(6)),
             dict(deny=np.ones(6, bool)), dict(allow=[0, 1], deny=[1, 0, 0]),
             dict(exclude=everything), dict(allow=[5], exclude=sp.csr_matrix(
                 (np.zeros(3), [5, 5, 5], [0, 1, 2, 3]), shape=(3, 6)))]
    for kw in cases:
        for k in (1, 6, 40):
            ids, scores = recfuse.topk(queries, items, k, backend=backend, **kw)
            assert (ids == -1).all() and np.isneginf(scores).all(), kw


@pytest.mark.parametrize("backend", HOST)
def test_seen_rows_with_repeats_unsorted_and_explicit_zeros(backend):
    items = np.arange(20, dtype=np.float32).reshape(10, 2)
    queries = np.ones((3, 2), np.float32)
    indices = np.array([9, 2, 9, 9, 7, 2, 0,  # row 0: repeats, unsorted
                        8, 8,                 # row 1: one item twice
                        5], np.int32)         # row 2: an explicit zero
    data = np.array([1, 1, 1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    E = sp.csr_matrix((data, indices, [0, 7, 9, 10]), shape=(3, 10))
    assert not E.has_sorted_indices
    want = oracle(queries, items, 10, exclude=[[9, 2, 7, 0], [8], [5]])
    assert_same(recfuse.topk(queries, items, 10, exclude=E, backend=backend), want)
    E.data[:] = -0.0  # every stored entry counts, whatever its value
    assert_same(recfuse.topk(queries, items, 10, exclude=E, backend=backend), want)
    # a COO whose repeated entries sum to zero is still a stored entry
    C = sp.coo_matrix((np.array([1.0, -1.0]), ([0, 0], [9, 9])), shape=(3, 10))
    assert_same(recfuse.topk(queries, items, 10, exclude=C, backend=backend),
                oracle(queries, items, 10, exclude=[[9], [], []]))
    # explicit False entries of a boolean matrix too
    B = sp.csr_matrix((np.array([False, True]), [3, 4], [0, 1, 1, 2]), shape=(3, 10))
    assert_same(recfuse.topk(queries, items, 10, exclude=B, backend=backend),
                oracle(queries, items, 10, exclude=[[3], [], [4]]))


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "lil", "dok", "bsr", "csr_array",
                                 "coo_array", "dia"])
def test_every_sparse_format_of_the_seen_rows(fmt):
    rng = np.random.default_rng(7)
    dense = (rng.random((6, 40)) < 0.3).astype(np.float32)
    items = rng.integers(-2, 3, (40, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, (6, 3)).astype(np.float32)
    convert = {"csr_array": sp.csr_array, "coo_array": sp.coo_array}.get(
        fmt, getattr(sp, f"{fmt}_matrix", None))
    E = convert(dense)
    want = oracle(queries, items, 40, exclude=[np.flatnonzero(r) for r in dense])
    for backend in BACKENDS:
        assert_same(recfuse.topk(queries, items, 40, exclude=E, backend=backend), want,
                    f"{fmt} {backend}")


def test_a_dia_matrix_excludes_its_nonzero_entries_only():
    """A DIA matrix stores the zeros between its entries along each diagonal (one made from
    a dense matrix stores every position of its diagonals), so its stored zeros are not
    entries: only its nonzero values exclude (as the exclude documentation says)."""
    items = np.arange(8, dtype=np.float32).reshape(4, 2)
    queries = np.ones((2, 2), np.float32)
    E = sp.dia_matrix((np.array([[0.0, 1.0, 0.0, 0.0]]), [0]), shape=(2, 4))
    assert E.nnz == 2  # scipy counts (0, 0) and (1, 1)
    for backend in BACKENDS:
        ids, _ = recfuse.topk(queries, items, 4, exclude=E, backend=backend)
        assert 0 in ids[0] and 1 not in ids[1], (backend, ids)


@pytest.mark.parametrize("make, message", [
    (lambda: sp.csr_matrix((np.ones(1), np.array([10], np.int32), [0, 1, 1]), shape=(2, 10)),
     r"exclude has column indices outside \[0, 10\)"),
    (lambda: sp.csr_matrix((np.ones(1), np.array([-1], np.int32), [0, 0, 1]), shape=(2, 10)),
     r"exclude has column indices outside \[0, 10\): got -1"),
    (lambda: sp.coo_matrix((np.ones(1), (np.array([0]), np.array([3]))), shape=(2, 10)),
     None),
    (lambda: sp.csr_matrix((2, 11)), r"exclude must have shape \(2, 10\)"),
    (lambda: np.zeros((2, 10)), "exclude must be a scipy sparse matrix"),
    (lambda: [[1, 2], []], "exclude must be a scipy sparse matrix"),
])
def test_bad_seen_rows_are_refused_naming_exclude(make, message):
    items = np.ones((10, 3), np.float32)
    queries = np.ones((2, 3), np.float32)
    E = make()
    for backend in BACKENDS:
        for storage in (["native", "bfloat16"] if backend == "cpu" else ["native"]):
            if message is None:  # a well-formed one, for contrast
                ids, _ = recfuse.topk(queries, items, 10, exclude=E, backend=backend,
                                      storage=storage)
                assert 3 not in ids[0]
                continue
            with pytest.raises((ValueError, TypeError), match=message):
                recfuse.topk(queries, items, 3, exclude=E, backend=backend, storage=storage)


def test_coo_and_csc_seen_rows_outside_the_items_are_refused():
    items = np.ones((10, 3), np.float32)
    queries = np.ones((2, 3), np.float32)
    coo = sp.coo_matrix((np.ones(1), (np.array([0]), np.array([3]))), shape=(2, 10))
    coo.col[0] = 12  # scipy does not look again
    with pytest.raises(ValueError, match=r"exclude has column indices outside \[0, 10\)"):
        recfuse.topk(queries, items, 3, exclude=coo)
    coo.col[0], coo.row[0] = 3, -1
    with pytest.raises(ValueError, match=r"exclude has row indices outside \[0, 2\)"):
        recfuse.topk(queries, items, 3, exclude=coo)


# -------------------------------------------------------------- layouts and input dtypes


@pytest.mark.parametrize("backend", HOST)
def test_any_layout_and_dtype_of_the_queries_gives_the_same_answer(backend):
    rng = np.random.default_rng(11)
    items = rng.integers(-3, 4, (50, 6)).astype(np.float32)
    base = rng.integers(-3, 4, (7, 6)).astype(np.float32)
    want = recfuse.topk(base, items, 9, backend=backend)
    read_only = base.copy()
    read_only.flags.writeable = False
    variants = {
        "fortran": np.asfortranarray(base),
        "strided": np.repeat(base, 2, axis=1)[:, ::2],
        "reversed": base[::-1].copy()[::-1],
        "transposed": base.T.copy().T,
        "float64": base.astype(np.float64),
        "float16": base.astype(np.float16),
        "int8": base.astype(np.int8),
        "int64": base.astype(np.int64),
        "big-endian": base.astype(">f4"),
        "read-only": read_only,
        "list": base.tolist(),
    }
    for name, queries in variants.items():
        got = recfuse.topk(queries, items, 9, backend=backend)
        np.testing.assert_array_equal(got[0], want[0], err_msg=name)
        np.testing.assert_array_equal(got[1], want[1], err_msg=name)
        assert got[1].dtype == np.float32, name
    # a non-contiguous single query gives one-dimensional results
    got = recfuse.topk(np.repeat(base[2], 2)[::2], items, 9, backend=backend)
    assert got[0].shape == (9,)
    np.testing.assert_array_equal(got[0], want[0][2])


@pytest.mark.parametrize("backend", HOST)
def test_item_tables_of_other_dtypes_are_searched_as_float32(backend):
    rng = np.random.default_rng(12)
    base = rng.integers(-3, 4, (40, 5))
    queries = rng.integers(-3, 4, (3, 5)).astype(np.float32)
    want = oracle(queries, base, 6)
    for dtype in (np.int8, np.int32, np.uint8, np.float16, np.int64):
        items = (base + (3 if np.dtype(dtype).kind == "u" else 0)).astype(dtype)
        got = recfuse.topk(queries, items, 6, backend=backend)
        assert got[1].dtype == np.float32, dtype
        assert_same(got, oracle(queries, items.astype(np.float64), 6), str(dtype))
    assert_same(recfuse.topk(queries, base.astype(np.float64), 6, backend=backend), want)


@pytest.mark.parametrize("items, queries, message", [
    (np.zeros((5, 0), np.float32), np.zeros((2, 0), np.float32),
     r"items must have at least one column, got shape \(5, 0\)"),
    (np.zeros((0, 0), np.float32), np.zeros((2, 0), np.float32),
     r"items must have at least one column"),
    (np.ones((5, 3), np.float32), np.zeros((2, 0), np.float32),
     r"queries must have d = 3 columns like items, got shape \(2, 0\)"),
    (np.ones((5, 3), np.float32), np.float32(1.0), r"queries must be 1-d \(d,\) or 2-d"),
    (np.ones((5, 3), np.float32), np.ones((1, 2, 3), np.float32),
     r"queries must be 1-d \(d,\) or 2-d"),
    (np.ones(3, np.float32), np.ones(3, np.float32), r"items must be 2-d"),
    (np.ones((5, 3), np.complex64), np.ones(3, np.float32), "items must hold real numbers"),
    (np.ones((5, 3), np.float32), np.ones(3, bool), "queries must hold real numbers"),
])
def test_shapes_and_dtypes_that_cannot_be_searched_are_named(items, queries, message):
    for backend in BACKENDS:
        with pytest.raises((ValueError, TypeError), match=message):
            recfuse.topk(queries, items, 2, backend=backend)


@pytest.mark.parametrize("backend", HOST)
def test_a_single_item_and_an_empty_catalogue(backend):
    items = np.array([[2.0, -1.0]], np.float32)
    queries = np.array([[1, 1], [0, 0], [-3, 1]], np.float32)
    for k in (1, 2, 33):
        ids, scores = recfuse.topk(queries, items, k, backend=backend)
        assert (ids[:, 0] == 0).all() and (ids[:, 1:] == -1).all()
        np.testing.assert_array_equal(scores[:, 0], [1, 0, -7])
    ids, scores = recfuse.topk(queries, np.zeros((0, 2), np.float32), 3, backend=backend,
                               exclude=sp.csr_matrix((3, 0)), allow=[])
    assert ids.shape == (3, 3) and (ids == -1).all() and np.isneginf(scores).all()
    ids, scores = recfuse.topk(np.zeros((0, 2), np.float32), items, 4, backend=backend)
    assert ids.shape == scores.shape == (0, 4)


# -------------------------------------------------------- sizes across the kernels' blocks


@pytest.mark.parametrize("m", [1, 31, 32, 33, 1023, 1024, 1025])
def test_batch_sizes_and_item_counts_across_the_kernel_blocks(m):
    """Query counts around the row blocks (4, 6, 12 rows) and the bfloat16 query split, item
    counts around the panels (16 doubles, 32 floats) and SIMD widths (8, 16, 64)."""
    rng = np.random.default_rng(m)
    for n in (1, 7, 8, 9, 15, 16, 17, 63, 64, 65):
        items = rng.integers(-2, 3, (n, 5)).astype(np.float32)
        queries = rng.integers(-2, 3, (m, 5)).astype(np.float32)
        rows = [np.flatnonzero(rng.random(n) < 0.25) for _ in range(m)]
        E = sp.csr_matrix((np.ones(sum(map(len, rows))), np.concatenate(rows).astype(np.int32),
                           np.concatenate([[0], np.cumsum(list(map(len, rows)))])), shape=(m, n))
        k = max(1, n // 2)
        want = oracle(queries, items, k, exclude=rows)
        for backend in BACKENDS:
            assert_same(recfuse.topk(queries, items, k, exclude=E, backend=backend), want,
                        f"{backend} n={n}")
            assert_same(recfuse.topk(queries.astype(np.float64), items.astype(np.float64), k,
                                     exclude=E, backend=backend), want, f"{backend} f64 n={n}")
        if "cpu" in BACKENDS:
            assert_same(recfuse.topk(queries, items, k, exclude=E, backend="cpu",
                                     storage="bfloat16", num_threads=2), want, f"bf16 n={n}")


@pytest.mark.parametrize("backend", HOST)
def test_results_cross_the_query_chunks_of_a_large_k(backend):
    """k = n = 2,000 on 8 threads makes the native search cut the queries into chunks of a
    few hundred (its per-thread buffers are bounded); rows on either side of a cut keep their
    own exclusions."""
    rng = np.random.default_rng(5)
    items = rng.integers(-2, 3, (2000, 3)).astype(np.float32)
    queries = rng.integers(-2, 3, (650, 3)).astype(np.float32)
    E = sp.random(650, 2000, density=0.01, format="csr", random_state=3)
    want = oracle(queries, items, 2000, exclude=rows_of(E), deny=[0, 1999])
    got = recfuse.topk(queries, items, 2000, exclude=E, deny=[0, 1999], backend=backend,
                       num_threads=8)
    assert_same(got, want)


def test_numpy_backend_score_blocks(monkeypatch):
    from recfuse._topk import numpy_backend

    monkeypatch.setattr(numpy_backend, "SCORE_BLOCK_BYTES", 200)  # 1-2 queries per block
    rng = np.random.default_rng(6)
    items = rng.integers(-2, 3, (70, 4)).astype(np.float32)
    queries = rng.integers(-2, 3, (23, 4)).astype(np.float32)
    E = sp.random(23, 70, density=0.3, format="csr", random_state=4)
    want = oracle(queries, items, 30, exclude=rows_of(E), allow=np.arange(0, 70, 2))
    assert_same(recfuse.topk(queries, items, 30, exclude=E, allow=np.arange(0, 70, 2),
                             backend="numpy"), want)


def test_thread_counts_and_simd_levels_do_not_change_exact_answers():
    if "cpu" not in BACKENDS:
        pytest.skip("no cpu backend")
    rng = np.random.default_rng(8)
    items = rng.integers(-2, 3, (3000, 7)).astype(np.float32)
    queries = rng.integers(-2, 3, (40, 7)).astype(np.float32)
    E = sp.random(40, 3000, density=0.05, format="csr", random_state=5)
    want = oracle(queries, items, 57, exclude=rows_of(E))
    for level in simd_levels():
        with simd_level(level):
            for threads in (1, 2, 3, 7):
                for storage in ("native", "bfloat16"):
                    assert_same(recfuse.topk(queries, items, 57, exclude=E, backend="cpu",
                                             storage=storage, num_threads=threads), want,
                                f"{level} {threads} {storage}")


def test_bfloat16_query_split_across_chunks_of_4096_queries():
    """5,000 queries of spread norms on two threads: the bfloat16 search splits the queries
    (sorted by norm, with their exclusions copied beside them) in two chunks."""
    if "cpu" not in BACKENDS:
        pytest.skip("no cpu backend")
    rng = np.random.default_rng(1)
    items = rng.integers(-2, 3, (1100, 4)).astype(np.float32)
    queries = (rng.integers(-2, 3, (5000, 4)) * rng.integers(1, 9, (5000, 1))).astype(np.float32)
    queries[::7] = 0
    E = sp.random(5000, 1100, density=0.02, format="csr", random_state=2)
    want = oracle(queries, items, 5, exclude=rows_of(E), deny=[3])
    for storage in ("bfloat16", "native"):
        assert_same(recfuse.topk(queries, items, 5, exclude=E, deny=[3], backend="cpu",
                                 storage=storage, num_threads=2), want, storage)


def test_auto_storage_index_answers_ties_like_the_oracle():
    """An ItemIndex over 5,000 items takes its bfloat16 copies for small k and the native
    table for large k and for zero queries; the answers are the oracle's either way."""
    rng = np.random.default_rng(9)
    items = rng.integers(-1, 2, (5000, 4)).astype(np.float32)
    queries = rng.integers(-1, 2, (37, 4)).astype(np.float32)
    queries[::5] = 0
    E = sp.random(37, 5000, density=0.001, format="csr", random_state=6)
    for backend in BACKENDS:
        index = recfuse.ItemIndex(items, backend=backend)
        for k in (1, 5, 200):
            assert_same(index.search(queries, k, exclude=E, deny=[1, 2]),
                        oracle(queries, items, k, exclude=rows_of(E), deny=[1, 2]),
                        f"{backend} k={k} {index.storage_for(k)}")


# -------------------------------------------------------------------------------- cosine


@pytest.mark.parametrize("backend", HOST)
def test_cosine_ties_zero_rows_and_rows_of_any_magnitude(backend):
    tiny = np.finfo(np.float32).smallest_subnormal
    items = np.array([[1, 0], [0, 0], [2, 0], [2.0**125, 0], [np.inf, 0], [np.nan, 0], [-1, 0],
                      [5 * tiny, 0], [3e38, 3e38]], np.float32)
    queries = np.array([[1, 0], [0, 0], [-2, 0], [1e-30, 0]], np.float32)
    ids, scores = recfuse.topk(queries, items, 9, metric="cosine", backend=backend)
    # [5 tiny, 0]: 1/norm overflows float32, a zero row (cosine 0); inf/NaN rows never return;
    # parallel rows of any length score 1 exactly (powers of two), tie by id
    np.testing.assert_array_equal(ids[0], [0, 2, 3, 8, 1, 7, 6, -1, -1])
    np.testing.assert_array_equal(ids[1], [0, 1, 2, 3, 6, 7, 8, -1, -1])
    np.testing.assert_array_equal(ids[2], [6, 1, 7, 8, 0, 2, 3, -1, -1])
    np.testing.assert_array_equal(ids[3], ids[0])
    np.testing.assert_array_equal(scores[0, :3], [1, 1, 1])
    np.testing.assert_allclose(scores[0, 3], np.sqrt(0.5), rtol=1e-6)
    # a subnormal row whose 1/norm fits float32 keeps its direction; one whose does not is 0
    ids, scores = recfuse.topk(np.array([1, 0], np.float32),
                               np.array([[1e-40, 0], [3e-39, 0]], np.float32), 2,
                               metric="cosine", backend=backend)
    np.testing.assert_array_equal(ids, [1, 0])
    np.testing.assert_allclose(scores, [1, 0], atol=1e-6)


# ----------------------------------------------------------------------- more named errors


@pytest.mark.parametrize("kw, error, message", [
    (dict(allow=[[0, 1]]), ValueError, "allow must be an integer or a 1-d array of integers"),
    (dict(deny=[0.5]), TypeError, "deny must hold integers, got dtype float64"),
    (dict(deny=np.ones(3, bool)), ValueError,
     r"deny as a boolean mask must have one entry per item \(5\), got shape \(3,\)"),
    (dict(allow=np.ones((1, 5), bool)), ValueError,
     r"allow as a boolean mask must have one entry per item \(5\)"),
    (dict(item_bias=np.ones((5, 1))), ValueError, r"item_bias must have shape \(5,\)"),
    (dict(item_bias=np.array([0, 0, 0, 0, np.inf])), ValueError, "item_bias must hold finite"),
    (dict(num_threads=-1), ValueError, "num_threads must be >= 0"),
    (dict(num_threads=2**16 + 1), ValueError, "num_threads must be <= 65536"),
    (dict(num_threads=1.5), TypeError, "num_threads must be an integer"),
    (dict(metric=None), TypeError, "metric must be one of"),
    (dict(storage="fp16"), ValueError, "storage must be one of"),
    (dict(backend=None), TypeError, "backend must be a string"),
])
def test_more_bad_arguments_are_named(kw, error, message):
    items = np.ones((5, 3), np.float32)
    for backend in BACKENDS:
        args = dict(kw)
        args.setdefault("backend", backend)
        with pytest.raises(error, match=message):
            recfuse.topk(np.ones((2, 3), np.float32), items, 2, **args)


def test_bfloat16_storage_refuses_tables_and_backends_it_cannot_serve():
    items = np.ones((5, 3))
    with pytest.raises(ValueError, match="storage='bfloat16' needs float32 items, got float64"):
        recfuse.topk(items[:1], items, 2, storage="bfloat16", backend="cpu")
    for backend in BACKENDS:
        if backend == "cpu":
            continue
        with pytest.raises(ValueError, match=f"not available on the '{backend}' backend"):
            recfuse.topk(items[:1], items.astype(np.float32), 2, storage="bfloat16",
                         backend=backend)


@pytest.mark.parametrize("metric", ["dot", "cosine"])
@pytest.mark.parametrize("storage", ["auto", "native", "bfloat16"])
def test_an_index_pickles_and_copies_to_one_that_searches_alike(metric, storage):
    """ItemIndex could not be pickled or deep-copied ("cannot pickle 'module' object"): it
    is now rebuilt from its table and settings, and searches as the original does."""
    import copy
    import pickle

    rng = np.random.default_rng(3)
    items = (rng.standard_normal((2000, 24)) * 100).astype(np.float32)
    index = recfuse.ItemIndex(items, item_bias=rng.random(2000).astype(np.float32),
                              metric=metric, storage=storage, backend="cpu")
    queries = rng.standard_normal((4, 24)).astype(np.float32)
    want = index.search(queries, 9)
    for other in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        got = other.search(queries, 9)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
