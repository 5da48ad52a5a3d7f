"""Adversarial hunt on the native CPU top-k after the selection changes of 043fb70 and 68ecfc5
(cpp/src/topk.cpp, cpp/src/topk_kernels_impl.inc): whole-panel-row steps for one or two
query rows (float32 and the bfloat16 widening kernel), item tables of 4 MiB and more on
transparent huge pages (recfuse/memory.hpp since 4c23008), and float candidates cut at a sampled pivot as 64-bit keys
(rank_key / from_rank_key, cut_candidates, keep_best).

The contract used here (recfuse.topk / recfuse.ItemIndex docstrings, retrieval.py module
docstring, NumPy reference recfuse.reference.topk via tests/topk_checks.py): ids and scores
m x k, scores descending, ties to the smaller id, no id twice, rows padded with -1 / -inf
when fewer than k qualify; NaN and -inf scores never qualify and do not change the order of
the others; backend "cpu" with any num_threads gives one answer; storage="bfloat16" gives
storage="native"'s ids and scores bit for bit; a query's scores do not depend on the batch
it is in or on the SIMD level's row grouping (tests/test_topk.py's
test_scores_do_not_depend_on_the_batch). The commits' own claims are checked too: each
item's score is one chain of operations over the dimensions in order (so the generic level,
which has no fused multiply-add, gives exactly the float32 NumPy chain, and AVX2 the same
chain with each step fused), and the sign of a -0.0 score survives the keys.

Oracles: exact small-integer tables (every evaluation order gives the same number, so the
reference must match exactly), and for random tables a bit-exact emulation of the score
chain (``_chain``) ranked by a full sort. Notes: /work/notes/hunt-topk-selection-aa.md.

Every answer checked here was right. The one finding was memory: the float32 key buffers were
thread_local and kept the size of the largest search (now per search: the test at the end).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import backend_params, simd_level
from topk_checks import assert_topk_matches

CPU = backend_params(("cpu",), family="topk")
pytestmark = [pytest.mark.skipif(bool(CPU[0].marks), reason="the cpu backend is not built")]
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


def _core():
    from recfuse._als.cpu import _core

    if _core is None:
        pytest.skip("recfuse._core is not built")
    return _core


def _levels():
    return list(_core().supported_simd_levels())


def _same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(
        a.view(np.uint8), b.view(np.uint8))


# --------------------------------------------------------------------- bit-exact oracle


def _fma32(a, b, c):
    """float32 fma(a, b, c) elementwise, rounded once (ties to even): the product is exact
    in float64, TwoSum gives s + e = a*b + c exactly, and only a float32 midpoint s needs e
    to decide (every float32 midpoint is a float64)."""
    p = a.astype(np.float64) * b.astype(np.float64)
    c = c.astype(np.float64)
    s = p + c
    z = s - p
    e = (p - (s - z)) + (c - z)
    r = s.astype(np.float32)
    r64 = r.astype(np.float64)
    other = np.where(s > r64, np.nextafter(r, np.float32(np.inf)),
                     np.nextafter(r, np.float32(-np.inf)))
    at_midpoint = (s == (r64 + other.astype(np.float64)) / 2) & (e != 0)
    toward = at_midpoint & (np.sign(e) == np.sign(other.astype(np.float64) - r64))
    return np.where(toward, other, r)


def _chain(Q, V, bias=None, fused=False):
    """Scores m x n as the kernels compute them: acc = 0, then acc += q[c] * v[c] for c in
    order (one rounding per operation, or one per step when ``fused``), then acc + bias."""
    dtype = V.dtype
    acc = np.zeros((Q.shape[0], V.shape[0]), dtype)
    with np.errstate(all="ignore"):
        for c in range(V.shape[1]):
            q = np.broadcast_to(Q[:, c:c + 1], acc.shape)
            v = np.broadcast_to(V[None, :, c], acc.shape)
            acc = _fma32(q, v, acc) if fused else (acc + q * v).astype(dtype)
        return acc + (bias[None, :] if bias is not None else dtype.type(0))


def _ranked(S, k):
    """(ids, scores) of the k best of each row of S by (score desc, id asc)."""
    m, n = S.shape
    order = np.lexsort((np.broadcast_to(np.arange(n), (m, n)), -S.astype(np.float64)),
                       axis=1)[:, :k]
    return order.astype(np.int64), np.take_along_axis(S, order, axis=1)


def _fused(level):
    return level != "generic"  # AVX2 and AVX-512 builds contract acc += q * v


# ------------------------------------------------- the cut: sizes around 2k, orders, ties


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", ["k=n", "n=2k-1", "n=2k", "n=2k+1", "n=2k+31", "n=4k",
                                   "k=n/2+1"])
def test_sizes_around_the_buffer_match_the_reference(shape, dtype):
    """The buffer is cut when it reaches 2k: n just below, at and above 2k (one cut at the
    last item, one just before it, several), k = n (no cut) and k just over n/2, on integer
    tables whose scores tie massively; every thread count gives the reference exactly."""
    rng = np.random.default_rng(sum(map(ord, shape)))
    for k in (1, 2, 3, 31, 32, 33, 257):
        n = {"k=n": k, "n=2k-1": max(1, 2 * k - 1), "n=2k": 2 * k, "n=2k+1": 2 * k + 1,
             "n=2k+31": 2 * k + 31, "n=4k": 4 * k, "k=n/2+1": max(1, 2 * k - 2)}[shape]
        items = rng.integers(-2, 3, (n, 3)).astype(dtype)
        bias = rng.integers(-1, 2, n).astype(dtype)
        queries = rng.integers(-2, 3, (5, 3)).astype(dtype)
        queries[0] = 0  # every item ties at its bias
        for threads in (1, 2, 8):
            ids, scores = recfuse.topk(queries, items, k, item_bias=bias, backend="cpu",
                                       num_threads=threads)
            assert scores.dtype == dtype
            assert_topk_matches(ids, scores, queries, items, k, item_bias=bias, exact=True)


def _orders(n, rng):
    i = np.arange(n)
    yield "ascending", i  # every item beats the buffer: a cut every k items
    yield "descending", n - i
    yield "all equal", np.zeros(n)
    yield "two values", (i % 2 == 0) * 1.0
    yield "steps of 50", i // 50
    yield "zigzag", np.where(i % 2 == 0, i, -i)
    for period in (3, 64, 127, 128, 129):  # periods near the 64-place sample's stride
        yield f"sawtooth {period}", i % period
        yield f"falling sawtooth {period}", -(i % period)
    yield "few values", rng.integers(0, 5, n)


@pytest.mark.parametrize("n", [1000, 4096])
def test_buffer_orders_that_mislead_a_sampled_pivot(n):
    """Item orders that put the best (or worst, or tied) candidates where the 64 evenly
    spaced sample places fall, cut after cut; every k from 1 to n, 1 or 3 threads: the
    exact order of the reference, ties by id."""
    rng = np.random.default_rng(n)
    ks = sorted({1, 2, 10, 31, 64, 100, n // 4, n // 2 - 1, n // 2, n // 2 + 1, n - 1, n})
    for name, values in _orders(n, rng):
        items = np.asarray(values, np.float32)[:, None]
        for sign in (1.0, -1.0):
            q = np.array([[sign]], np.float32)
            want_ids, want_scores = _ranked(q * items[:, 0][None, :], n)
            for k in ks:
                for threads in (1, 3):
                    ids, scores = recfuse.topk(q, items, k, backend="cpu",
                                               num_threads=threads)
                    assert np.array_equal(ids, want_ids[:, :k]), (name, sign, k, threads)
                    assert np.array_equal(scores, want_scores[:, :k]), (name, sign, k, threads)


@pytest.mark.parametrize("threads", [1, 2, 3, 5, 8])
def test_ties_at_the_pivot_across_thread_ranges(threads):
    """n >= 20k so that every thread takes several ranges; scores are a handful of values
    (zero items plus a bias of 4 levels), so the pivot, every cut and the merge fall inside
    tie groups thousands long, and the k-th best splits one: the first ids of each group,
    whatever thread saw them."""
    rng = np.random.default_rng(threads)
    n = 40_000
    items = np.zeros((n, 2), np.float32)
    items[rng.random(n) < 0.3] = [1, -1]
    bias = rng.integers(0, 4, n).astype(np.float32)
    queries = np.array([[0, 0], [1, 0], [0, 1], [2, 1]], np.float32)
    for k in (1, 7, 4_000, 9_999, 10_001, 20_000):
        ids, scores = recfuse.topk(queries, items, k, item_bias=bias, backend="cpu",
                                   num_threads=threads)
        assert_topk_matches(ids, scores, queries, items, k, item_bias=bias, exact=True)


@HYPOTHESIS
@given(data=st.data())
def test_integer_tables_match_the_reference(data):
    """Hypothesis: small-integer tables (massive ties), bias, exclusions that remove most
    candidates, allow and deny lists, k anywhere from 1 to past n, 1-8 threads, both
    dtypes: the reference exactly."""
    n = data.draw(st.sampled_from([1, 5, 63, 64, 65, 300, 1_000, 2_600]), label="n")
    d = data.draw(st.integers(1, 4), label="d")
    m = data.draw(st.sampled_from([1, 2, 3, 7, 13]), label="m")
    k = data.draw(st.one_of(st.integers(1, 8), st.sampled_from(
        [max(1, n // 2), n // 2 + 1, n, n + 3, max(1, n // 4)])), label="k")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    threads = data.draw(st.integers(1, 8), label="threads")
    rng = np.random.default_rng(seed)
    items = rng.integers(-2, 3, (n, d)).astype(dtype)
    queries = rng.integers(-2, 3, (m, d)).astype(dtype)
    bias = rng.integers(-2, 3, n).astype(dtype) if data.draw(st.booleans()) else None
    exclude = mask = allow = deny = None
    if data.draw(st.booleans(), label="exclude"):
        density = data.draw(st.sampled_from([0.1, 0.9, 0.99]))
        exclude = sp.random(m, n, density=density, format="csr", random_state=seed % 2**31)
    choice = data.draw(st.sampled_from(["none", "allow", "deny"]), label="filter")
    if choice != "none":
        picked = rng.choice(n, size=int(rng.integers(0, n + 1)), replace=True)
        mask = np.zeros(n, bool)
        mask[picked] = True
        if choice == "allow":
            allow = picked
        else:
            deny = picked
            mask = ~mask
    ids, scores = recfuse.topk(queries, items, k, item_bias=bias, exclude=exclude, allow=allow,
                               deny=deny, backend="cpu", num_threads=threads)
    assert_topk_matches(ids, scores, queries, items, k, item_bias=bias, exclude=exclude,
                        mask=mask, exact=True)


# ---------------------------------------------- scores: one chain per item, bit for bit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_scores_are_one_chain_per_item_bit_for_bit(dtype):
    """043fb70's claim, against an independent emulation: a score is acc = 0, acc += q[c] *
    v[c] in dimension order, then + bias (generic: every operation rounded; AVX2: each step
    a fused multiply-add), whatever the batch (1, 2, 3, 7, 13 rows: the 1-2 row kernels step
    through whole panel rows, the others two vectors at a time) and the thread count. Rows
    hold duplicate items, so the float scores tie and the order must still be by id.
    (float64 under AVX2 needs a double-double emulation: checked at the generic level.)"""
    rng = np.random.default_rng(5)
    for level in _levels():
        if dtype == np.float64 and _fused(level):
            continue
        with simd_level(level):
            for d in (1, 2, 3, 8, 17):
                n = 700
                base = rng.standard_normal((50, d)).astype(dtype)
                items = base[rng.integers(0, 50, n)]
                bias = (rng.integers(-2, 3, n) * 0.5).astype(dtype)
                queries = rng.standard_normal((13, d)).astype(dtype)
                want = _chain(queries, items, bias, fused=_fused(level))
                for m in (1, 2, 3, 7, 13):
                    for k in (n, 40):
                        want_ids, want_scores = _ranked(want[:m], k)
                        for threads in (1, 2):
                            ids, scores = recfuse.topk(queries[:m], items, k, item_bias=bias,
                                                       backend="cpu", num_threads=threads)
                            context = (level, d, m, k, threads)
                            assert np.array_equal(ids, want_ids), context
                            assert _same_bits(scores, want_scores), context


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_float32_cuts_at_20k_items_rank_the_emulated_scores(level):
    """Random float tables with many exact duplicates (ties between non-integer scores),
    n >= 20k so that several threads cut their buffers: ids and score bits equal the full
    sort of the emulated chain for every k and 1-8 threads."""
    if level not in _levels():
        pytest.skip(f"{level} is not supported here")
    rng = np.random.default_rng(7)
    with simd_level(level):
        for n, d, distinct in ((20_000, 3, 40), (50_000, 8, 50_000)):
            items = rng.standard_normal((distinct, d)).astype(np.float32)
            items = items[rng.integers(0, distinct, n)]
            bias = (rng.integers(-3, 4, n) * 0.25).astype(np.float32)
            queries = rng.standard_normal((3, d)).astype(np.float32)
            want = _chain(queries, items, bias, fused=_fused(level))
            for k in (1, 10, 1_000, n // 2):
                want_ids, want_scores = _ranked(want, k)
                for threads in (1, 2, 8):
                    ids, scores = recfuse.topk(queries, items, k, item_bias=bias,
                                               backend="cpu", num_threads=threads)
                    assert np.array_equal(ids, want_ids), (n, k, threads)
                    assert _same_bits(scores, want_scores), (n, k, threads)


def test_every_level_and_batch_gives_one_answer():
    """For batches of 1, 2, 3, 7 and 13 queries: each row equals the query searched alone,
    bit for bit, at every SIMD level and thread count; on integer data (exact at any
    evaluation order) the levels agree on ids and scores too."""
    rng = np.random.default_rng(9)
    n, d = 3_000, 24
    random_items = rng.standard_normal((n, d)).astype(np.float32)
    int_items = rng.integers(-3, 4, (n, d)).astype(np.float32)
    int_queries = rng.integers(-2, 3, (13, d)).astype(np.float32)
    queries = rng.standard_normal((13, d)).astype(np.float32)
    exact = {}
    for level in _levels():
        with simd_level(level):
            index = recfuse.ItemIndex(random_items, backend="cpu", storage="native")
            alone = [index.search(q, 50, num_threads=1) for q in queries]
            for m in (1, 2, 3, 7, 13):
                for threads in (1, 2, 4):
                    ids, scores = index.search(queries[:m], 50, num_threads=threads)
                    for i in range(m):
                        assert np.array_equal(ids[i], alone[i][0]), (level, m, threads, i)
                        assert _same_bits(scores[i], alone[i][1]), (level, m, threads, i)
            exact[level] = recfuse.topk(int_queries, int_items, 200, backend="cpu")
    first = next(iter(exact.values()))
    for level, (ids, scores) in exact.items():
        assert np.array_equal(ids, first[0]), level
        assert np.array_equal(scores, first[1]), level


_SIMD_CHILD = r'''
import json, sys
import numpy as np
import recfuse
rng = np.random.default_rng(3)
items = rng.integers(-3, 4, (2_000, 9)).astype(np.float32)
queries = rng.integers(-2, 3, (7, 9)).astype(np.float32)
try:
    ids, scores = recfuse.topk(queries, items, 300, backend="cpu", num_threads=2)
    print(json.dumps({"ids": ids.tolist(), "scores": scores.tolist()}))
except Exception as error:  # a level the CPU lacks: a clear refusal
    print(json.dumps({"error": f"{type(error).__name__}: {error}"}))
'''


def test_recfuse_simd_levels_agree_and_a_missing_level_is_refused():
    """RECFUSE_SIMD picks the level at start-up: every supported level gives the same ids
    and scores on integer data; a level this CPU lacks is refused with a message naming it,
    not a crash."""
    results = {}
    for level in ("generic", "avx2", "avx512"):
        env = {**os.environ, "RECFUSE_SIMD": level, "OMP_WAIT_POLICY": "PASSIVE"}
        done = subprocess.run([sys.executable, "-c", _SIMD_CHILD], capture_output=True,
                              text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr[-2000:]
        results[level] = json.loads(done.stdout.strip().splitlines()[-1])
    supported = _levels()
    for level, result in results.items():
        if level in supported:
            assert "error" not in result, result
            assert result == results["generic"], level
        else:
            assert level in result["error"], result
            assert "not supported" in result["error"], result


# ------------------------------------------------------------ -0.0, inf, NaN, extremes


def test_negative_zero_scores_keep_their_sign_through_cuts():
    """rank_key keeps -0.0 in a spare bit: the sign a score was computed with comes back,
    also for items that went through cuts and the final sort, while -0.0 and 0.0 rank as
    equals (by id). Under AVX2 a fused product that underflows keeps its sign (q v =
    -1e-60 -> -0.0) and item_bias -0.0 keeps it; the generic level gives +0.0 throughout."""
    rng = np.random.default_rng(11)
    for level in _levels():
        with simd_level(level):
            for n, k in ((64, 32), (95, 32), (1_000, 10), (1_000, 500), (40_000, 100)):
                negative = rng.random(n) < 0.5
                items = np.where(negative, -1e-30, 1e-30).astype(np.float32)[:, None]
                bias = np.full(n, -0.0, np.float32)
                q = np.array([[1e-30]], np.float32)
                want = _chain(q, items, bias, fused=_fused(level))[0]
                assert (want == 0).all()
                if _fused(level):
                    assert np.array_equal(np.signbit(want), negative)
                for threads in (1, 2, 4):
                    ids, scores = recfuse.topk(q, items, k, item_bias=bias, backend="cpu",
                                               num_threads=threads)
                    assert np.array_equal(ids[0], np.arange(k)), (level, n, k, threads)
                    assert np.array_equal(np.signbit(scores[0]), np.signbit(want[:k])), \
                        (level, n, k, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inf_nan_huge_and_subnormal_scores_in_one_column(dtype):
    """One-dimensional tables drawn from inf, -inf, NaN, +-0, +-1, +-3.4e38, +-1e-45
    (subnormal), 1.17e-38 and 2 (so q * v is the whole score): +inf items rank first by id,
    -inf and NaN never qualify, subnormal and near-max scores keep their exact order, k
    from 1 to n, 1-8 threads, at every level."""
    rng = np.random.default_rng(13)
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-45,
                       -1e-45, 1.17e-38, 2.0], np.float32).astype(dtype)
    for level in _levels():
        with simd_level(level):
            for trial in range(6):
                n = int(rng.choice([100, 1_000, 5_000]))
                items = rng.choice(values, size=(n, 1), p=rng.dirichlet(np.ones(values.size)))
                for qv in (1.0, -1.0, 0.5):
                    q = np.array([[qv]], dtype)
                    with np.errstate(all="ignore"):
                        S = (q[0, 0] * items[:, 0])[None, :]  # one rounding, as the kernel
                    order = np.lexsort((np.arange(n), -np.where(S[0] > -np.inf, S[0], 0),
                                        ~(S[0] > -np.inf)))
                    good = int((S[0] > -np.inf).sum())
                    for k in (1, 3, n // 3, n // 2, n):
                        take = min(k, good)
                        for threads in (1, 2, 8):
                            ids, scores = recfuse.topk(q, items, k, backend="cpu",
                                                       num_threads=threads)
                            context = (level, n, qv, k, threads)
                            assert np.array_equal(ids[0, :take], order[:take]), context
                            assert np.array_equal(scores[0, :take], S[0, order[:take]]), context
                            assert (ids[0, take:] == -1).all(), context
                            assert np.isneginf(scores[0, take:]).all(), context


def test_cosine_zero_rows_and_zero_queries_tie_by_id():
    """metric="cosine": a zero query scores 0 (+ bias) with every item and a zero item row
    scores 0 with every query; with most of the table tied at 0 the cut must keep the first
    ids, with and without bias, native and bfloat16 alike."""
    rng = np.random.default_rng(17)
    n, d = 5_000, 4
    items = rng.standard_normal((n, d)).astype(np.float32)
    items[rng.random(n) < 0.8] = 0
    queries = rng.standard_normal((4, d)).astype(np.float32)
    queries[[0, 2]] = 0
    for bias in (None, rng.integers(-1, 2, n).astype(np.float32)):
        native = recfuse.ItemIndex(items, item_bias=bias, metric="cosine", backend="cpu",
                                   storage="native")
        half = recfuse.ItemIndex(items, item_bias=bias, metric="cosine", backend="cpu",
                                 storage="bfloat16")
        for k in (1, 10, 1_000, 2_600):
            ids, scores = native.search(queries, k, num_threads=2)
            b = np.zeros(n, np.float32) if bias is None else bias
            for row in (0, 2):  # zero queries: the bias decides, then the id
                want = np.lexsort((np.arange(n), -b))[:k]
                assert np.array_equal(ids[row], want), (k, row)
                assert np.array_equal(scores[row], b[want]), (k, row)
            for row in (1, 3):
                s = scores[row]
                assert (s[:-1] >= s[1:]).all()
                same = s[:-1] == s[1:]
                assert (ids[row][:-1][same] < ids[row][1:][same]).all()
            ids16, scores16 = half.search(queries, k, num_threads=2)
            assert np.array_equal(ids16, ids) and _same_bits(scores16, scores), k


# -------------------------------------------------------------- bfloat16 against native


@pytest.mark.parametrize("level", ["generic", "avx2"])
def test_bfloat16_storage_equals_native_bit_for_bit(level):
    """storage="bfloat16" (the widening kernel: whole panel rows for one or two rows since
    043fb70) against storage="native": batches of 1, 2, 3, 7 and 13, k from 1 to n/2, 1-5
    threads, exclusions, skewed norms, NaN / inf / huge items, duplicates: the same ids and
    the same score bits."""
    if level not in _levels():
        pytest.skip(f"{level} is not supported here")
    rng = np.random.default_rng(19)
    with simd_level(level):
        for trial in range(10):
            n = int(rng.choice([1_000, 3_000, 20_000]))
            d = int(rng.choice([1, 2, 3, 8, 17]))
            items = (rng.standard_normal((n, d)) * rng.lognormal(0, 1, (n, 1))).astype(
                np.float32)
            if trial % 3 == 1:
                items = rng.integers(-2, 3, (n, d)).astype(np.float32)
            if trial % 3 == 2:
                r = rng.random(n)
                items[r < 0.05, 0] = np.nan
                items[(r >= 0.05) & (r < 0.1), 0] = np.inf
                with np.errstate(over="ignore"):
                    items[(r >= 0.1) & (r < 0.15)] *= 3e37
            bias = rng.standard_normal(n).astype(np.float32) if trial % 2 else None
            m = [1, 2, 3, 7, 13][trial % 5]
            queries = rng.standard_normal((m, d)).astype(np.float32)
            exclude = (sp.random(m, n, density=0.5, format="csr", random_state=trial)
                       if trial % 4 == 3 else None)
            native = recfuse.ItemIndex(items, item_bias=bias, backend="cpu", storage="native")
            half = recfuse.ItemIndex(items, item_bias=bias, backend="cpu", storage="bfloat16")
            for k in (1, 10, 100, n // 2):
                for threads in (1, 2, 5):
                    a = native.search(queries, k, exclude=exclude, num_threads=threads)
                    b = half.search(queries, k, exclude=exclude, num_threads=threads)
                    context = (trial, n, d, m, k, threads)
                    assert np.array_equal(a[0], b[0]), context
                    assert _same_bits(a[1], b[1]), context
                    assert not np.isnan(a[1]).any(), context


# ---------------------------------------------------------------- sequences of calls


def test_sequences_of_searches_reuse_nothing_stale():
    """The per-thread key buffers (thread_local since 68ecfc5) are reused from call to call:
    a sequence of searches on one index that alternates large and small k, batch sizes,
    thread counts, SIMD levels and storages gives what a fresh index gives for each call."""
    rng = np.random.default_rng(31)
    n, d = 20_000, 6
    items = rng.integers(-3, 4, (n, d)).astype(np.float32)
    bias = rng.integers(-2, 3, n).astype(np.float32)
    index = recfuse.ItemIndex(items, item_bias=bias, backend="cpu", storage="native")
    half = recfuse.ItemIndex(items, item_bias=bias, backend="cpu", storage="bfloat16")
    levels = _levels()
    for step in range(24):
        k = [9_000, 1, 500, 3, 10_000, 64][step % 6]
        m = [1, 2, 3, 7, 13][step % 5]
        threads = [1, 2, 8][step % 3]
        queries = rng.integers(-2, 3, (m, d)).astype(np.float32)
        with simd_level(levels[step % len(levels)]):
            for ix in (index, half):
                ids, scores = ix.search(queries, k, num_threads=threads)
                assert_topk_matches(ids, scores, queries, items, k, item_bias=bias, exact=True)


def test_searches_from_several_python_threads_agree():
    """Python threads searching one index at once (each its own OpenMP team and thread_local
    keys): every answer equals the serial one, native and bfloat16."""
    import threading

    rng = np.random.default_rng(37)
    n, d = 30_000, 16
    items = rng.standard_normal((n, d)).astype(np.float32)
    native = recfuse.ItemIndex(items, backend="cpu", storage="native")
    half = recfuse.ItemIndex(items, backend="cpu", storage="bfloat16")
    calls = [(rng.standard_normal((int(rng.integers(1, 14)), d)).astype(np.float32),
              int(rng.choice([1, 10, 500, 3_000]))) for _ in range(16)]
    want = [native.search(q, k, num_threads=2) for q, k in calls]
    wrong = []

    def work(first):
        for i in range(first, len(calls), 4):
            for ix in (native, half):
                ids, scores = ix.search(calls[i][0], calls[i][1], num_threads=2)
                if not (np.array_equal(ids, want[i][0]) and _same_bits(scores, want[i][1])):
                    wrong.append(i)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert wrong == []


# ------------------------------------------------------------- tables of 8 MiB and more


def _huge_page_mappings():
    """Sizes in bytes of this process's mappings flagged 'hg' (madvise(MADV_HUGEPAGE))."""
    sizes, current = [], 0
    with open("/proc/self/smaps") as f:
        for line in f:
            match = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if match:
                current = int(match.group(2), 16) - int(match.group(1), 16)
            elif line.startswith("VmFlags:") and " hg" in line:
                sizes.append(current)
    return sorted(sizes)


def test_tables_of_8_mib_ask_for_huge_pages():
    """Item tables of 8 MiB and more ask Linux for transparent huge pages: the mappings
    flagged 'hg' grow by at least the table's size with the index (NumPy flags its own large
    arrays too: those exist before); the answers stay exact at sizes around the threshold."""
    if not (sys.platform.startswith("linux")
            and os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled")
            and os.path.exists("/proc/self/smaps")):
        pytest.skip("needs Linux with transparent huge pages")
    rng = np.random.default_rng(23)
    for n, d, dtype in ((65_536, 32, np.float32), (65_535, 32, np.float32),
                        (70_000, 32, np.float32), (32_768, 32, np.float64)):
        items = rng.integers(-3, 4, (n, d)).astype(dtype)
        queries = rng.integers(-2, 3, (3, d)).astype(dtype)
        table_bytes = -(-n // 32) * 32 * d * np.dtype(dtype).itemsize  # padded panels
        assert table_bytes >= 8 << 20
        before = sum(_huge_page_mappings())
        index = recfuse.ItemIndex(items, backend="cpu", storage="native")
        grown = sum(_huge_page_mappings()) - before
        assert grown >= table_bytes, (n, d, grown, table_bytes)
        for threads in (1, 2, 8):
            ids, scores = index.search(queries, 100, num_threads=threads)
            assert_topk_matches(ids, scores, queries, items, 100, exact=True)
        del index


def test_bfloat16_tables_of_8_mib_match_native():
    """A bfloat16 table past 8 MiB (its blocks reordered into a second table) answers as the
    float32 one does."""
    rng = np.random.default_rng(29)
    n, d = 70_000, 64
    items = rng.integers(-3, 4, (n, d)).astype(np.float32)
    queries = rng.integers(-2, 3, (2, d)).astype(np.float32)
    native = recfuse.ItemIndex(items, backend="cpu", storage="native")
    half = recfuse.ItemIndex(items, backend="cpu", storage="bfloat16")
    for threads in (1, 2):
        a = native.search(queries, 64, num_threads=threads)
        b = half.search(queries, 64, num_threads=threads)
        assert np.array_equal(a[0], b[0]) and _same_bits(a[1], b[1])
        assert_topk_matches(a[0], a[1], queries, items, 64, exact=True)


# ------------------------------------------------------------------------ memory kept


_RETAINED_CHILD = r'''
import ctypes, gc, json, os
import numpy as np
import recfuse

def settled_rss():
    """Resident memory once glibc has given back what it holds free (malloc_trim)."""
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

items = np.random.default_rng(0).standard_normal((2_000_000, 1)).astype(DTYPE)
index = recfuse.ItemIndex(items, backend="cpu", storage="native")
query = np.ones(1, DTYPE)
index.search(query, 1, num_threads=1)
base = settled_rss()
ids, scores = index.search(query, 1_000_000, num_threads=1)
del ids, scores
for _ in range(3):
    index.search(query, 1, num_threads=1)
print(json.dumps({"retained_mb": (settled_rss() - base) / 2**20}))
'''


def _retained_mb(dtype: str) -> float:
    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self/statm (Linux)")
    code = textwrap.dedent(_RETAINED_CHILD).replace("DTYPE", f"np.{dtype}")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=180, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["retained_mb"]


def test_float64_search_keeps_no_memory_of_its_largest_call():
    """The control: a float64 search (the exact nth_element path) of k = 1M among 2M items
    leaves nothing resident once the allocator is trimmed."""
    assert _retained_mb("float64") < 8


def test_float32_search_keeps_no_memory_of_its_largest_call():
    """68ecfc5 turned float candidates into 64-bit keys in ``thread_local std::vector<uint64_t>
    keys`` (cut_candidates: 2k per query buffer; keep_best: the merged pool), never shrunk:
    one search for k = 1M among 2M items left ~24 MB resident per thread that searched, for
    the thread's life (the float64 path keeps nothing). The keys now belong to the search's
    per-thread selections.
    The project fixed the same pattern in MLPScorer.rank (release_if_large, mlp.cpp; tests/
    test_resources_hunt.py::test_rank_keeps_no_buffers_of_its_largest_call)."""
    assert _retained_mb("float32") < 8
