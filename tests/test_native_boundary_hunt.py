"""Adversarial hunt at the native boundary: bad input to every public call that reaches
recfuse._core (topk / ItemIndex, the factor models' fit / recommend / similar / predict /
update_*, MLPScorer and MLPRanker, metrics, Interactions and IdMap, split, Recommender and
Rerank, recfuse.load on forged files).

The contract used (README, the docstrings, python/recfuse/_validation.py): every input is
checked in Python before a kernel sees it; a wrong kind of argument is a TypeError, a wrong
value a ValueError naming the argument, a size no memory holds a MemoryError naming it;
nothing crashes the interpreter, hangs, leaks a bare C++ exception (std::bad_alloc,
std::length_error, the kernels' own argument checks) or returns results that ignore part of
the input; files are read without pickle (an object member is refused, never unpickled),
and a damaged or forged file is a ValueError/OSError, not a model that fails later.

Anything that could crash runs in a child interpreter: one child per group of probes, which
prints START/PASS/FAIL per probe, so a crash names the probe that caused it. The pickle and
forged-file checks, and the hypothesis fuzz of malformed CSR structures, run in children too.
The nine bugs found (stale scipy sortedness flags trusted by exclude and by fit, exclude
arrays longer than their entries, NaT ids, Arrow dictionary indices outside the dictionary,
float16 ids, 2-d pair arrays and forged id maps in Interactions files, ids near 2**62 in
update_users/update_items) are fixed; their tests stay as regressions.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse

# ------------------------------------------------------------------ the child harness

_HARNESS = r'''
import os, re, sys, warnings, tempfile
import numpy as np, scipy.sparse as sp
import recfuse
from recfuse import metrics, split
from recfuse.ranking import MLPScorer
warnings.simplefilter("ignore")

def probe(name, fn, *, raises=None, match="", check=None):
    """Run fn(); PASS when it raises `raises` with a message matching `match`, or (raises
    None) returns a value `check` accepts."""
    print("START", name, flush=True)
    try:
        value = fn()
    except Exception as error:  # noqa: BLE001 - every outcome is reported
        if raises is not None and isinstance(error, raises) and re.search(match, str(error)):
            print("PASS", name, flush=True)
        else:
            print("FAIL", name, f"raised {type(error).__name__}: {error}"[:400].replace("\n", " "),
                  flush=True)
        return
    if raises is not None:
        print("FAIL", name, f"returned {value!r}"[:400].replace("\n", " "), flush=True)
    elif check is not None and not check(value):
        print("FAIL", name, f"check failed on {value!r}"[:400].replace("\n", " "), flush=True)
    else:
        print("PASS", name, flush=True)
'''


def _run_child(body: str, timeout: float = 240, env: dict | None = None) -> str:
    """Run the harness + body in a fresh interpreter; fail on a crash (naming the probe
    that was running) or on any FAIL line; returns stdout."""
    code = _HARNESS + textwrap.dedent(body) + "\nprint('DONE', flush=True)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout, env=env)
    lines = done.stdout.splitlines()
    started = [line.split(" ", 1)[1] for line in lines if line.startswith("START ")]
    finished = {line.split(" ")[1] for line in lines if line.startswith(("PASS ", "FAIL "))}
    running = [name for name in started if name not in finished]
    assert done.returncode == 0 and lines and lines[-1] == "DONE", (
        f"child died (status {done.returncode}) during {running[-1:] or 'set-up'}; "
        f"stderr: {done.stderr[-1500:]}")
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert not failures, "\n".join(failures)
    return done.stdout


# ------------------------------------------------------------------ probe batteries
# Each group: probes of one area, with the documented outcome. Sizes that must be refused
# are far beyond any machine's memory (e.g. 4096 queries x 2**31 - 1 results), so that a
# bigger host still refuses them instead of allocating.

_TOPK = r'''
rng = np.random.default_rng(0)
I = rng.standard_normal((7, 3)).astype(np.float32)
Q = rng.standard_normal((4, 3)).astype(np.float32)
pad = lambda r: r[0].tolist() == [[-1, -1]] * 4 and np.isneginf(r[1]).all()
E = lambda data, ind, ptr, shape=(4, 7): sp.csr_matrix((np.asarray(data, float), np.asarray(ind), np.asarray(ptr)), shape=shape)
def forged(ind=None, ptr=None, data=None):
    M = E([1, 1], [1, 2], [0, 2, 2, 2, 2])
    if ind is not None: M.indices = np.asarray(ind)
    if ptr is not None: M.indptr = np.asarray(ptr)
    if data is not None: M.data = np.asarray(data)
    return M
probe("empty_items", lambda: recfuse.topk(Q, np.zeros((0, 3), np.float32), 2), check=pad)
probe("empty_items_cosine", lambda: recfuse.topk(Q, np.zeros((0, 3), np.float32), 2, metric="cosine"), check=pad)
for b in ("cpu", "numba", "numpy"):
    probe(f"empty_items_{b}", lambda: recfuse.ItemIndex(np.zeros((0, 3), np.float32), backend=b).search(Q, 2), check=pad)
probe("zero_queries_k_max", lambda: recfuse.topk(np.zeros((0, 3), np.float32), I, 2**31 - 1)[0].shape, check=lambda s: s == (0, 2**31 - 1))
probe("k_past_int32", lambda: recfuse.topk(Q, I, 2**31), raises=ValueError, match="k must be <= 2147483647")
probe("k_uint64_max", lambda: recfuse.topk(Q, I, np.uint64(2**64 - 1)), raises=ValueError, match="^k must")
probe("k_result_beyond_memory", lambda: recfuse.topk(np.ones((4096, 3), np.float32), I, 2**31 - 1), raises=MemoryError, match="k = 2147483647")
probe("k_float", lambda: recfuse.topk(Q, I, 3.0), raises=TypeError, match="^k must be an integer")
probe("threads_most", lambda: recfuse.topk(Q, I, 2, num_threads=1 << 16)[0].tolist(), check=lambda v: v == recfuse.topk(Q, I, 2)[0].tolist())
probe("threads_negative", lambda: recfuse.topk(Q, I, 2, num_threads=-1), raises=ValueError, match="num_threads")
probe("threads_past_max", lambda: recfuse.topk(Q, I, 2, num_threads=2**40), raises=ValueError, match="num_threads")
probe("negative_strides", lambda: recfuse.topk(Q[::-1], I[::-2], 2)[0].tolist(),
      check=lambda v: v == recfuse.topk(np.ascontiguousarray(Q[::-1]), np.ascontiguousarray(I[::-2]), 2)[0].tolist())
probe("fortran_big_endian", lambda: recfuse.topk(np.asfortranarray(Q).astype(">f4"), I.astype(">f4"), 3)[0].tolist(),
      check=lambda v: v == recfuse.topk(Q, I, 3)[0].tolist())
probe("items_zero_columns", lambda: recfuse.topk(np.zeros((1, 0)), np.zeros((3, 0)), 2), raises=ValueError, match="items")
probe("queries_zero_columns", lambda: recfuse.topk(np.zeros((1, 0)), I, 2), raises=ValueError, match="queries")
probe("queries_object", lambda: recfuse.topk(np.array([[1, "a", 2]], object), I, 2), raises=TypeError, match="queries")
probe("queries_complex", lambda: recfuse.topk(Q.astype(complex), I, 2), raises=TypeError, match="queries")
probe("queries_nan", lambda: recfuse.topk(np.full((1, 3), np.nan), I, 2), raises=ValueError, match="queries")
probe("items_3d", lambda: recfuse.topk(Q, I[None], 2), raises=ValueError, match="items")
probe("bias_short", lambda: recfuse.topk(Q, I, 2, item_bias=np.ones(6)), raises=ValueError, match="item_bias")
probe("exclude_int64_index_past_int32", lambda: recfuse.topk(Q, I, 2, exclude=E([1], np.array([2**40], np.int64), np.array([0, 1, 1, 1, 1], np.int64))), raises=ValueError, match="exclude")
probe("exclude_negative_index", lambda: recfuse.topk(Q, I, 2, exclude=forged(ind=np.array([-1, 2], np.int32))), raises=ValueError, match="exclude")
probe("exclude_decreasing_indptr", lambda: recfuse.topk(Q, I, 2, exclude=forged(ptr=np.array([0, 2, 1, 2, 2], np.int32))), raises=ValueError, match="exclude")
probe("exclude_indptr_past_indices", lambda: recfuse.topk(Q, I, 2, exclude=forged(ptr=np.array([0, 2, 2, 2, 9], np.int32))), raises=ValueError, match="exclude")
probe("exclude_indptr_uint64_past_int64", lambda: recfuse.topk(Q, I, 2, exclude=forged(ptr=np.array([0, 2, 2, 2, 2**64 - 1], np.uint64))), raises=ValueError, match="exclude")
probe("exclude_data_shorter", lambda: recfuse.topk(Q, I, 2, exclude=forged(data=np.ones(1))), raises=ValueError, match="exclude")
probe("exclude_indices_2d", lambda: recfuse.topk(Q, I, 2, exclude=forged(ind=np.array([[1, 2]], np.int32))), raises=ValueError, match="exclude")
probe("exclude_indices_float", lambda: recfuse.topk(Q, I, 2, exclude=forged(ind=np.array([1.0, np.nan]))), raises=ValueError, match="exclude")
probe("exclude_indptr_float", lambda: recfuse.topk(Q, I, 2, exclude=forged(ptr=np.array([0, 2, np.nan, 2, 2]))), raises=ValueError, match="exclude")
probe("exclude_bsr_out_of_range", lambda: recfuse.topk(Q, I, 2, exclude=sp.bsr_matrix((np.ones((1, 2, 1)), np.array([50]), np.array([0, 1, 1])), shape=(4, 7), blocksize=(2, 1))), raises=ValueError, match="exclude")
def coo_bad():
    M = sp.coo_matrix((np.ones(1), (np.array([0]), np.array([0]))), shape=(4, 7)); M.col[0] = 9; return M
probe("exclude_coo_out_of_range", lambda: recfuse.topk(Q, I, 2, exclude=coo_bad()), raises=ValueError, match="exclude")
probe("exclude_unsorted_duplicates", lambda: recfuse.topk(Q[:1], I, 7, exclude=E([1] * 4, np.array([5, 1, 5, 1], np.int32), [0, 4], (1, 7)))[0][0].tolist(),
      check=lambda v: 1 not in v and 5 not in v and v[-2:] == [-1, -1])
probe("exclude_uint64_arrays", lambda: recfuse.topk(Q, I, 7, exclude=sp.csr_array((np.ones(1), np.array([3], np.uint64), np.array([0, 1, 1, 1, 1], np.uint64)), shape=(4, 7)))[0][0].tolist(),
      check=lambda v: 3 not in v and v[-1] == -1)
probe("exclude_all", lambda: recfuse.ItemIndex(I).search(Q, 2, exclude=sp.csr_matrix(np.ones((4, 7)))), check=pad)
probe("allow_uint64_past_int64", lambda: recfuse.topk(Q, I, 2, allow=np.array([2**63 + 5], np.uint64)), raises=ValueError, match="allow")
probe("allow_float", lambda: recfuse.topk(Q, I, 2, allow=np.array([np.nan, 1.0])), raises=TypeError, match="allow")
probe("allow_mask_wrong_length", lambda: recfuse.topk(Q, I, 2, allow=np.ones(8, bool)), raises=ValueError, match="allow")
probe("deny_python_int_past_int64", lambda: recfuse.topk(Q, I, 2, deny=[2**70]), raises=ValueError, match="deny")
probe("deny_negative", lambda: recfuse.topk(Q, I, 2, deny=[-1]), raises=ValueError, match="deny")
probe("bfloat16_k_past_items", lambda: recfuse.ItemIndex(rng.standard_normal((3000, 8)).astype(np.float32), storage="bfloat16", backend="cpu").search(rng.standard_normal((2, 8)).astype(np.float32), 4000)[0][:, -3:].tolist(),
      check=lambda v: v == [[-1] * 3] * 2)
probe("bfloat16_zero_items", lambda: recfuse.ItemIndex(np.zeros((0, 8), np.float32), storage="bfloat16", backend="cpu").search(np.ones((4, 8), np.float32), 2), check=pad)
'''

_MODELS = r'''
R = sp.random(8, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
R.data[:] = 1 + np.arange(R.nnz) % 3
rng = np.random.default_rng(0)
users = np.repeat(np.arange(6), 3); items = rng.integers(0, 5, 18); ratings = rng.integers(1, 6, 18) * 1.0
als = lambda **kw: recfuse.ALS(factors=3, iterations=2, random_state=0, **kw).fit(R)
svd = lambda: recfuse.SVD(factors=3, epochs=2, random_state=0).fit(users, items, ratings)
base = als()
def csr(ind, ptr, shape, data=None):
    ind = np.asarray(ind); return sp.csr_matrix((np.ones(ind.size, np.float32) if data is None else data, ind, np.asarray(ptr)), shape=shape)
probe("als_int64_indices", lambda: recfuse.ALS(factors=3, iterations=2, random_state=0).fit(csr(R.indices.astype(np.int64), R.indptr.astype(np.int64), R.shape, R.data)).user_factors.tolist(),
      check=lambda v: v == base.user_factors.tolist())
probe("als_uint64_indices", lambda: recfuse.ALS(factors=3, iterations=2, random_state=0).fit(csr(R.indices.astype(np.uint64), R.indptr.astype(np.uint64), R.shape, R.data)).user_factors.tolist(),
      check=lambda v: v == base.user_factors.tolist())
probe("als_columns_past_int32", lambda: recfuse.ALS(factors=3, iterations=1).fit(csr(np.array([0], np.int64), np.array([0, 1], np.int64), (1, 2**31))), raises=(ValueError, MemoryError), match="columns|items")
probe("als_zero_rows", lambda: recfuse.ALS(factors=3, iterations=2).fit(sp.csr_matrix((0, 5), dtype=np.float32)).item_factors.shape, check=lambda s: s == (5, 3))
probe("als_zero_items_recommend", lambda: recfuse.ALS(factors=3, iterations=2).fit(sp.csr_matrix((5, 0), dtype=np.float32)).recommend([0, 1], k=3)[0].tolist(), check=lambda v: v == [[-1] * 3] * 2)
probe("als_zero_by_zero_similar", lambda: recfuse.ALS(factors=3, iterations=2).fit(sp.csr_matrix((0, 0), dtype=np.float32)).similar_items([], 3)[0].shape, check=lambda s: s == (0, 3))
probe("als_cg_factors_max_tiny", lambda: recfuse.ALS(factors=4096, iterations=1, random_state=0).fit(sp.csr_matrix(np.ones((2, 2), np.float32))).user_factors.shape, check=lambda s: s == (2, 4096))
probe("als_cholesky_factors_1024_tiny", lambda: recfuse.ALS(factors=1024, iterations=1, solver="cholesky", random_state=0).fit(sp.csr_matrix(np.ones((2, 2), np.float32))).user_factors.shape, check=lambda s: s == (2, 1024))
probe("als_factors_past_max", lambda: recfuse.ALS(factors=4097), raises=ValueError, match="factors")
probe("als_threads_most", lambda: als(num_threads=1 << 16, solver="cholesky").user_factors.shape, check=lambda s: s == (8, 3))
probe("als_recommend_id_2e31", lambda: base.recommend(2**31), raises=ValueError, match="user_ids")
probe("als_recommend_uint64", lambda: base.recommend(np.array([2**64 - 1], np.uint64)), raises=ValueError, match="user_ids")
probe("als_recommend_nan", lambda: base.recommend(np.nan), raises=TypeError, match="user_ids")
probe("als_recommend_bool", lambda: base.recommend(True), raises=TypeError, match="user_ids")
probe("als_recommend_2d", lambda: base.recommend([[0]]), raises=ValueError, match="user_ids")
probe("als_recommend_user_items_index_past_int32", lambda: base.recommend([0], user_items=csr(np.array([2**35], np.int64), np.array([0, 1], np.int64), (1, 6))), raises=ValueError, match="user_items")
probe("als_recommend_items_negative", lambda: base.recommend(0, items=[-1]), raises=ValueError, match="items")
probe("als_recommend_items_past", lambda: base.recommend(0, items=[2**62]), raises=ValueError, match="items")
probe("als_update_users_2e40", lambda: als().update_users([2**40], R[:1]), raises=ValueError, match="user_ids")
probe("als_update_users_uint64", lambda: als().update_users(np.array([2**63], np.uint64), R[:1]), raises=ValueError, match="user_ids")
probe("als_update_users_empty", lambda: als().update_users([], R[:0]).shape, check=lambda s: s == (0, 3))
probe("als_update_users_rows_mismatch", lambda: als().update_users([1, 2], R[:1]), raises=ValueError, match="user_items")
def assigned(**tables):
    m = als()
    for name, value in tables.items(): setattr(m, name, value)
    return m
probe("als_assigned_wider_users", lambda: assigned(user_factors=np.ones((8, 5), np.float32)).recommend(0), raises=ValueError, match="factors")
probe("als_assigned_fewer_items_update", lambda: assigned(item_factors=np.ones((3, 3), np.float32)).update_users([0], R[:1]), raises=ValueError, match="item table|seen matrix")
probe("als_assigned_fewer_items_loss", lambda: assigned(item_factors=base.item_factors[:3]).loss(), raises=ValueError, match="seen matrix")
probe("als_assigned_1d", lambda: assigned(user_factors=np.ones(8, np.float32)).recommend(0), raises=ValueError, match="factors")
probe("als_assigned_nan", lambda: assigned(user_factors=np.full((8, 3), np.nan, np.float32)).recommend(0), raises=ValueError, match="finite")
probe("als_similar_id_int64_max", lambda: base.similar_items(2**63 - 1), raises=ValueError, match="item_ids")
probe("als_similar_k_beyond_memory", lambda: base.similar_items(list(range(6)) * 700, k=2**31 - 1), raises=MemoryError, match="k = ")
probe("als_initial_factors_nan", lambda: recfuse.ALS(factors=3, iterations=1).fit(R, initial_factors=(np.full((8, 3), np.nan), np.ones((6, 3)))), raises=ValueError, match="initial_factors")
probe("als_duplicates_overflow", lambda: recfuse.ALS(factors=3, iterations=1).fit(csr(np.array([0, 0], np.int32), [0, 2], (1, 2), np.full(2, 3e38, np.float32))), raises=ValueError, match="user_items")
probe("bpr_zero_items", lambda: recfuse.BPR(factors=3, iterations=2, random_state=0).fit(sp.csr_matrix((5, 0), dtype=np.float32)).item_factors.shape, check=lambda s: s == (0, 3))
probe("bpr_every_item_seen", lambda: recfuse.BPR(factors=3, iterations=2, random_state=0).fit(sp.csr_matrix(np.ones((3, 2), np.float32))).item_factors.shape, check=lambda s: s == (2, 3))
probe("bpr_no_entries", lambda: recfuse.BPR(factors=3, iterations=2, random_state=0).fit(sp.csr_matrix((3, 4), dtype=np.float32)).item_factors.shape, check=lambda s: s == (4, 3))
probe("bpr_threads_most", lambda: recfuse.BPR(factors=3, iterations=2, random_state=0, num_threads=1 << 16).fit(R).item_factors.shape, check=lambda s: s == (6, 3))
probe("svd_id_int32_max", lambda: recfuse.SVD(factors=3, epochs=2).fit([2**31], [0], [1.0]), raises=ValueError, match="users")
probe("svd_n_users_beyond_memory", lambda: recfuse.SVD(factors=3, epochs=1).fit([0], [0], [1.0], n_users=2**40), raises=MemoryError, match="n_users")
probe("svd_n_items_negative", lambda: recfuse.SVD(factors=3, epochs=1).fit([0], [0], [1.0], n_items=-1), raises=ValueError, match="n_items")
probe("svd_lengths_differ", lambda: recfuse.SVD(factors=3, epochs=1).fit([0, 1], [0], [1.0]), raises=ValueError, match="same length")
probe("svd_uint64_ids", lambda: recfuse.SVD(factors=3, epochs=1).fit(np.array([2**64 - 1], np.uint64), [0], [1.0]), raises=ValueError, match="users")
probe("svd_float_ids", lambda: recfuse.SVD(factors=3, epochs=1).fit(np.array([0.5]), [0], [1.0]), raises=TypeError, match="users")
probe("svd_grid_past_max", lambda: recfuse.SVD(factors=3, epochs=1, grid=2**20).fit(users, items, ratings), raises=ValueError, match="grid")
probe("svd_predict_unknown_int64_max", lambda: svd().predict(2**63 - 1, 2**63 - 1), check=lambda v: np.isfinite(v))
probe("svd_predict_uint64", lambda: svd().predict(np.array([2**64 - 1], np.uint64), [0]), raises=ValueError, match="users")
probe("svd_predict_negative", lambda: svd().predict(-1, 0), raises=ValueError, match="users")
probe("svd_predict_lengths", lambda: svd().predict([0, 1], [0]), raises=ValueError, match="same length")
probe("svdpp_predict_unknown", lambda: recfuse.SVDpp(factors=3, epochs=2, random_state=0).fit(users, items, ratings).predict(2**62, 2**62), check=lambda v: np.isfinite(v))
probe("explicit_id_int32_max", lambda: recfuse.ExplicitALS(factors=3, iterations=1).fit([2**31 - 1], [0], [1.0]), raises=ValueError, match="users")
probe("explicit_n_items_beyond_memory", lambda: recfuse.ExplicitALS(factors=3, iterations=1).fit([0], [0], [1.0], n_items=2**40), raises=(ValueError, MemoryError), match="n_items")
def coo_negative():
    M = sp.coo_matrix((np.ones(1), (np.array([0]), np.array([0]))), shape=(2, 2)); M.row[0] = -1; return M
probe("explicit_coo_negative_row", lambda: recfuse.ExplicitALS(factors=3, iterations=2).fit(coo_negative()), raises=ValueError, match="ratings matrix")
'''

_DATA = r'''
import pyarrow as pa, pandas as pd
FA = recfuse.Interactions.from_arrays
dense = lambda x: x.matrix.toarray().tolist()
probe("ids_int64_extremes", lambda: FA(np.array([2**63 - 1, -2**63, 0]), [1, 2, 3]).user_ids.ids.tolist(), check=lambda v: v == [-2**63, 0, 2**63 - 1])
probe("ids_uint64_past_int64", lambda: FA(np.array([2**64 - 1, 2**63, 0], np.uint64), [1, 2, 3]).user_ids.ids.tolist(), check=lambda v: v == [0, 2**63, 2**64 - 1])
probe("ids_python_ints_past_64_bits", lambda: FA([2**70, 1], [1, 2]), raises=ValueError, match="users")
probe("ids_nan", lambda: FA(np.array([1.0, np.nan]), [1, 2]), raises=ValueError, match="users has 1 missing")
probe("ids_2d", lambda: FA(np.zeros((2, 2), int), [1, 2]), raises=ValueError, match="users")
probe("ids_negative_stride", lambda: FA(np.arange(6)[::-2], np.arange(3)).user_ids.ids.tolist(), check=lambda v: v == [1, 3, 5])
probe("ids_nul_bytes", lambda: FA(["a\x00b", "a"], [1, 2]).user_ids.ids.tolist(), check=lambda v: v == ["a", "a\x00b"])
probe("weights_nan", lambda: FA([1, 2], [1, 2], weights=[np.nan, 1]), raises=ValueError, match="weights")
probe("weights_sum_overflow", lambda: FA([1, 1], [1, 1], weights=[3e38, 3e38]), raises=ValueError, match="overflows float32")
probe("times_int64_max", lambda: FA([1, 2], [1, 2], timestamps=np.array([2**63 - 1, 0])), raises=ValueError, match="timestamps")
probe("times_uint64_max", lambda: FA([1, 2], [1, 2], timestamps=np.array([2**64 - 1, 1], np.uint64)), raises=ValueError, match="timestamps")
probe("times_nat", lambda: FA([1, 2], [1, 2], timestamps=np.array(["NaT", "2020-01-01"], "datetime64[ns]")), raises=ValueError, match="NaT")
probe("times_far_datetimes", lambda: FA([1, 2], [1, 2], timestamps=np.array(["9999-01-01", "-9999-01-01"], "datetime64[s]")), raises=ValueError, match="timestamps")
probe("half_life_reference_past_int64", lambda: FA([1, 2], [1, 2], timestamps=np.array([0, 1]), half_life=1, reference_time=2**70), raises=ValueError, match="overflow")
probe("arrow_sliced", lambda: FA(pa.array(["x", "yy", "zzz", "w", "x"]).slice(2, 3), [1, 2, 3]).user_ids.ids.tolist(), check=lambda v: v == ["w", "x", "zzz"])
probe("arrow_large_sliced", lambda: FA(pa.array(["x", "yy", "zzz", "w"], pa.large_string()).slice(1, 3), [1, 2, 3]).user_ids.ids.tolist(), check=lambda v: v == ["w", "yy", "zzz"])
probe("arrow_empty_chunks", lambda: dense(FA(pa.chunked_array([pa.array([], pa.string()), pa.array(["a", "b"]), pa.array([], pa.string()), pa.array(["a"])]), [1, 2, 3])),
      check=lambda v: v == [[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
def arrow_strings(offsets, data, n, large=False):
    kind, dtype = (pa.large_string(), np.int64) if large else (pa.string(), np.int32)
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(np.array(offsets, dtype).tobytes()), None if data is None else pa.py_buffer(data)])
probe("arrow_offsets_past_data", lambda: FA(arrow_strings([0, 1, 1000], b"ab", 2), [1, 2]), raises=Exception)
probe("arrow_offsets_decreasing", lambda: FA(arrow_strings([0, 2, 1], b"ab", 2), [1, 2]), raises=Exception)
probe("arrow_offsets_negative", lambda: FA(arrow_strings([-2**62, 0, 1], b"ab", 2, large=True), [1, 2]), raises=Exception)
probe("arrow_offset_buffer_short", lambda: FA(arrow_strings([0, 1], b"ab", 5), [1, 2, 3, 4, 5]), raises=Exception)
probe("arrow_no_data_buffer", lambda: FA(arrow_strings([0, 3, 3], None, 2), [1, 2]), raises=Exception)
probe("arrow_uint64_past_int64", lambda: FA(pa.array([2**64 - 1, 0], pa.uint64()), [1, 2]).user_ids.ids.tolist(), check=lambda v: v == [0, 2**64 - 1])
probe("arrow_string_view", lambda: FA(pa.array(["a", "b"], pa.string_view()), [1, 2]).user_ids.ids.tolist(), check=lambda v: v == ["a", "b"])
probe("pandas_arrow_strings", lambda: FA(pd.Series(["a", "b", "a"], dtype="string[pyarrow]"), [1, 2, 3]).shape, check=lambda s: s == (2, 3))
probe("pandas_nullable_na", lambda: FA(pd.Series([1, None, 3], dtype="Int64"), [1, 2, 3]), raises=ValueError, match="missing")
probe("from_matrix_columns_past_int32", lambda: recfuse.Interactions.from_matrix(sp.csr_matrix((np.ones(1), np.array([2**33], np.int64), np.array([0, 1], np.int64)), shape=(1, 2**34))), raises=ValueError, match="columns")
probe("idmap_codes_past", lambda: recfuse.IdMap(np.array([1, 2, 3])).to_external([2**63 - 1]), raises=ValueError, match="codes")
probe("idmap_codes_uint64", lambda: recfuse.IdMap(np.array([1, 2, 3])).to_external(np.array([2**64 - 1], np.uint64)), raises=ValueError, match="codes")
probe("k_core_int64_max", lambda: FA([1, 2], [1, 2]).k_core(2**63 - 1).shape, check=lambda s: s == (0, 0))
probe("filter_past_int64", lambda: FA([1, 2], [1, 2]).filter(min_user_count=2**70).nnz, check=lambda n: n == 0)
T = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 0, 0]], np.float32))
good = metrics.ranking_metrics(np.array([[3, 1], [2, 0]]), T)
probe("rm_uint64_past_int64", lambda: metrics.ranking_metrics(np.array([[2**64 - 1, 1], [2, 0]], np.uint64), T), raises=ValueError, match="recommended")
probe("rm_int64_min", lambda: metrics.ranking_metrics(np.array([[-2**63, 1], [2, 0]]), T), raises=ValueError, match="recommended")
probe("rm_users_past", lambda: metrics.ranking_metrics(np.array([[3, 1]]), T, users=[2**62]), raises=ValueError, match="users")
probe("rm_int64_test_indices", lambda: metrics.ranking_metrics(np.array([[3, 1], [2, 0]]), sp.csr_matrix((np.ones(3), np.array([0, 3, 1], np.int64), np.array([0, 2, 3], np.int64)), shape=(2, 4))), check=lambda v: v == good)
probe("rm_k_zero", lambda: metrics.ranking_metrics(np.zeros((2, 0), int), T), raises=ValueError, match="recommended")
probe("rm_strided", lambda: metrics.ranking_metrics(np.array([[3, 9, 1, 9], [2, 9, 0, 9]])[:, ::2], T), check=lambda v: v == good)
probe("rm_threads_most", lambda: metrics.ranking_metrics(np.array([[3, 1], [2, 0]]), T, num_threads=1 << 16), check=lambda v: v == good)
probe("ild_zero_width", lambda: metrics.intra_list_diversity([[0, 1], [1, 2]], np.zeros((3, 0))), check=lambda v: v == 1.0)
probe("ild_no_lists", lambda: metrics.intra_list_diversity(np.zeros((0, 3), int), np.eye(3)), check=np.isnan)
probe("ild_k_zero", lambda: metrics.intra_list_diversity(np.zeros((2, 0), int), np.eye(3)), check=np.isnan)
probe("ild_uint64_past_int64", lambda: metrics.intra_list_diversity(np.array([[0, 2**64 - 1]], np.uint64), np.eye(3)), raises=ValueError, match="recommended")
probe("ild_float32_huge", lambda: metrics.intra_list_diversity([[0, 1]], np.full((2, 2), 3e38, np.float32)), check=lambda v: abs(v) < 1e-6)
probe("ild_subnormal", lambda: metrics.intra_list_diversity([[0, 1]], np.array([[1e-45, 0], [0, 1e-45]], np.float32)), check=lambda v: v == 1.0)
probe("ild_big_endian", lambda: metrics.intra_list_diversity([[0, 1]], np.eye(2).astype(">f4")), check=lambda v: v == 1.0)
probe("ild_none", lambda: metrics.intra_list_diversity([[0, 1]], np.array([[None, 1], [1, 2]], object)), raises=ValueError, match="item_vectors")
I5 = recfuse.Interactions.from_arrays(np.array([1, 1, 2, 2, 3]), np.array([1, 2, 1, 3, 3]), timestamps=np.array([1, 2, 3, 4, 5]))
probe("split_nan_fraction", lambda: split.random_split(I5, np.nan), raises=ValueError, match="test_fraction")
probe("split_leave_int64_huge", lambda: [x.shape for x in split.leave_last_n(I5, 2**62)], check=lambda v: v == [(3, 3), (3, 3)])
probe("split_temporal_past_int64", lambda: split.temporal_split(I5, 2**62), raises=ValueError, match="cut")
probe("split_seed_past_64_bits", lambda: [x.shape for x in split.random_split(I5, 0.5, seed=2**200)], check=lambda v: v == [(3, 3), (3, 3)])
'''

_SERVING = r'''
R = sp.random(8, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
R.data[:] = 1 + np.arange(R.nnz) % 3
als = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(R)
w = np.random.default_rng(3)
rec = lambda **kw: recfuse.Recommender(als, **kw)
probe("rec_unknown_user_int64_max", lambda: rec().recommend(2**63 - 1).stages.tolist()[0], check=lambda s: s == "popular")
probe("rec_user_uint64", lambda: rec().recommend(np.uint64(2**64 - 1)), raises=ValueError, match="user")
probe("rec_user_float", lambda: rec().recommend(1.0), raises=TypeError, match="user")
probe("rec_k_beyond_memory", lambda: rec().recommend_batch(np.arange(8).repeat(600), k=2**31 - 1), raises=MemoryError, match="k = ")
probe("rec_candidates_huge", lambda: rec(candidates=2**62).recommend(0).ids.tolist(), check=lambda v: v == rec().recommend(0).ids.tolist())
probe("rec_exclude_int64_max", lambda: rec().recommend(0, exclude=[2**63 - 1]).ids.tolist(), check=lambda v: v == rec().recommend(0).ids.tolist())
probe("rec_exclude_uint64", lambda: rec().recommend(0, exclude=np.array([2**64 - 1], np.uint64)), raises=ValueError, match="exclude")
probe("rec_observe_user_past_int32", lambda: rec().observe({"user": [2**40], "item": [0]}), raises=ValueError, match="user")
probe("rec_observe_item_past_int32", lambda: rec(max_new_items=2**62).observe({"user": [0], "item": [2**61]}), raises=ValueError, match="item")
def near_int32():
    r = rec(); r.observe({"user": [2**31 - 2], "item": [0]}); return r.recommend(2**31 - 2).ids.tolist()
probe("rec_observe_user_near_int32", near_int32, check=lambda v: 0 not in v)
probe("rec_observe_weight_nan", lambda: rec().observe({"user": [0], "item": [1], "weight": [np.nan]}), raises=ValueError, match="weight")
probe("rec_observe_weight_huge", lambda: rec().observe({"user": [0], "item": [1], "weight": [1e30]}), raises=ValueError, match="weight")
probe("rec_observe_2d", lambda: rec().observe({"user": [[0]], "item": [[1]]}), raises=ValueError, match="user")
probe("rerank_categories_uint64", lambda: recfuse.Rerank(item_categories=np.array([2**64 - 1] * 6, np.uint64), category_cap=1), raises=ValueError, match="item_categories")
probe("rerank_categories_extremes", lambda: rec(rerank=recfuse.Rerank(item_categories=[2**62, 2**62, -2**63, 0, 0, 0], category_cap=1)).recommend(0).ids.tolist(),
      check=lambda v: not {0, 1} <= set(v) and len({3, 4, 5} & set(v)) <= 1)
probe("rerank_cap_huge", lambda: rec(rerank=recfuse.Rerank(item_categories=[0] * 6, category_cap=2**62)).recommend(0).ids.tolist(), check=lambda v: v == rec().recommend(0).ids.tolist())
probe("rerank_allow_int64_max", lambda: rec(rerank=recfuse.Rerank(allow=[2**63 - 1, 1])).recommend(0).ids.tolist(), check=lambda v: set(v) <= {1, -1})
L = [(w.standard_normal((4, 6)).astype(np.float32), w.standard_normal(4), "relu"), (w.standard_normal((1, 4)).astype(np.float32), None, "sigmoid")]
U = w.standard_normal((2, 3)).astype(np.float32); T = w.standard_normal((5, 3)).astype(np.float32)
C = np.array([[0, 1, 2], [4, 4, 3]])
for b in ("cpu", "numba", "numpy"):
    s = MLPScorer(L, backend=b)
    want = s.rank(U, C, T, k=2)[0].tolist()
    probe(f"{b}_score_no_rows", lambda: s.score(np.zeros((0, 6), np.float32)).shape, check=lambda v: v == (0,))
    probe(f"{b}_rank_k_beyond_memory", lambda: s.rank(np.ones((4096, 3), np.float32), np.zeros((4096, 1), np.int64), T, k=2**31 - 1), raises=MemoryError, match="k = ")
    probe(f"{b}_rank_id_past", lambda: s.rank(U, np.array([[0, 1, 2**62], [4, 4, 3]]), T, k=2), raises=ValueError, match="candidate_ids")
    probe(f"{b}_rank_id_uint64", lambda: s.rank(U, np.array([[0, 1, 2**64 - 1], [4, 4, 3]], np.uint64), T, k=2), raises=ValueError, match="candidate_ids")
    probe(f"{b}_rank_id_negative", lambda: s.rank(U, np.array([[0, -1, 2], [4, 4, 3]]), T, k=2), raises=ValueError, match="candidate_ids")
    for name, indptr in (("decreasing", [0, 5, 3]), ("overrun", [0, 1, 5]), ("short", [0, 1, 2]), ("start_1", [1, 2, 3])):
        probe(f"{b}_rank_indptr_{name}", lambda: s.rank(U, (np.array(indptr), np.array([0, 1, 2])), T, k=2), raises=ValueError, match="candidate_ids")
    probe(f"{b}_rank_indptr_uint64", lambda: s.rank(U, (np.array([0, 1, 2**64 - 1], np.uint64), np.array([0, 1, 2])), T, k=2), raises=ValueError, match="candidate_ids")
    probe(f"{b}_rank_indptr_float", lambda: s.rank(U, (np.array([0, 1, 3.0]), np.array([0, 1, 2])), T, k=2), raises=TypeError, match="candidate_ids")
    probe(f"{b}_rank_no_users", lambda: s.rank(np.zeros((0, 3), np.float32), np.zeros((0, 4), np.int64), T, k=2)[0].shape, check=lambda v: v == (0, 2))
    probe(f"{b}_rank_empty_table", lambda: s.rank(U, np.zeros((2, 0), np.int64), np.zeros((0, 3), np.float32), k=2)[0].tolist(), check=lambda v: v == [[-1, -1]] * 2)
    probe(f"{b}_rank_big_endian_fortran_table", lambda: s.rank(U, C, np.asfortranarray(T).astype(">f8"), k=2)[0].tolist(), check=lambda v: v == want)
    probe(f"{b}_rank_threads_most", lambda: s.rank(U, C, T, k=2, num_threads=1 << 16)[0].tolist(), check=lambda v: v == want)
    probe(f"{b}_prepare_item_column_past", lambda: s.prepare_items(T, item_column=2**40), raises=ValueError, match="item_column")
    probe(f"{b}_prepared_empty_table", lambda: s.rank(U, np.zeros((2, 1), np.int64), s.prepare_items(np.zeros((0, 3), np.float32), item_column=3), k=1), raises=ValueError, match="candidate_ids")
    probe(f"{b}_zero_width_feature_blocks", lambda: s.score_candidates(U, C, T, user_features=np.zeros((2, 0)), candidate_features=np.zeros((6, 0))).tolist(),
          check=lambda v: v == s.score_candidates(U, C, T).tolist())
probe("mlp_zero_outputs", lambda: MLPScorer([(np.ones((0, 3)), None, "relu"), (np.ones((1, 0)), None, "identity")]), raises=ValueError, match="layers")
probe("mlp_kernel_unknown", lambda: MLPScorer(L, kernel="nope", backend="cpu"), raises=ValueError, match="kernel")
probe("mlp_kernel_for_other_precision", lambda: MLPScorer(L, kernel="int8", backend="cpu"), raises=ValueError, match="kernel")
probe("mlp_ranker_hidden_beyond_memory", lambda: recfuse.MLPRanker(hidden=(2**40,), epochs=1).fit(R, np.ones((8, 2)), np.ones((6, 2))), raises=(ValueError, MemoryError), match="hidden")
'''


@pytest.mark.parametrize("body", [_TOPK, _MODELS, _DATA, _SERVING],
                         ids=["topk", "models", "data-metrics-split", "serving-mlp"])
def test_adversarial_probes_are_refused_cleanly_or_answered_right(body):
    _run_child(body)


def test_native_calls_survive_odd_openmp_settings():
    """libgomp refuses these with a warning and runs on its defaults: no crash, same list."""
    body = r'''
    R = sp.random(30, 20, density=0.2, format="csr", random_state=1, dtype=np.float32)
    m = recfuse.ALS(factors=4, iterations=2, random_state=0, backend="cpu").fit(R)
    print("LIST", m.recommend(0, k=3)[0].tolist(), recfuse.topk(np.ones((2, 4), np.float32), m.item_factors, 2)[0].tolist())
    '''
    lists = set()
    for setting in ({"OMP_NUM_THREADS": "0", "OMP_STACKSIZE": "1"},
                    {"OMP_NUM_THREADS": "2,3", "OMP_THREAD_LIMIT": "0"}):
        out = _run_child(body, env=dict(os.environ, **setting))
        lists |= {line for line in out.splitlines() if line.startswith("LIST")}
    assert len(lists) == 1


# ------------------------------------------------------------------ malformed CSR fuzz

_CSR_FUZZ = r'''
from hypothesis import given, settings, HealthCheck, strategies as st
rng = np.random.default_rng(0)
ITEMS = rng.standard_normal((6, 3)).astype(np.float32)  # cols <= 6
INDEX = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32]  # uint64: see the notes

@st.composite
def raw_csr(draw):
    """(indptr, indices, data, shape) that may be malformed: indptr starting past 0,
    decreasing or running past the arrays; indices negative, past the columns, unsorted,
    repeated; arrays of mixed integer dtypes and lengths."""
    rows, cols = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    counts = draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows))
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    nnz = int(indptr[-1])
    indices = np.array(draw(st.lists(st.integers(0, cols - 1), min_size=nnz, max_size=nnz)), np.int64)
    damage = draw(st.sampled_from(["none", "none", "neg", "past", "ptr_start", "ptr_dec", "ptr_over", "short_data", "long"]))
    if damage == "neg" and nnz: indices[draw(st.integers(0, nnz - 1))] = -draw(st.integers(1, 2**31))
    if damage == "past" and nnz: indices[draw(st.integers(0, nnz - 1))] = cols + draw(st.integers(0, 2**40))
    if damage == "ptr_start": indptr[0] = draw(st.integers(1, 3))
    if damage == "ptr_dec" and rows > 1 and indptr[1] > 0: indptr[1], indptr[2] = indptr[2] + 1, 0
    if damage == "ptr_over": indptr[-1] += draw(st.integers(1, 5))
    data = (1 + np.arange(nnz) % 4).astype(np.float32)
    if damage == "short_data" and nnz: data = data[:-1]
    if damage == "long":  # arrays longer than the entries: scipy allows it, ignored
        indices, data = np.concatenate([indices, [cols + 7]]), np.concatenate([data, [np.nan]]).astype(np.float32)
    idx_type = draw(st.sampled_from(INDEX))
    if indices.size and (indices.min() < np.iinfo(idx_type).min or indices.max() > np.iinfo(idx_type).max):
        idx_type = np.int64
    ptr_type = draw(st.sampled_from(INDEX))
    if indptr.min() < np.iinfo(ptr_type).min or indptr.max() > np.iinfo(ptr_type).max:
        ptr_type = np.int64
    return indptr.astype(ptr_type), indices.astype(idx_type), data, (rows, cols)

def build(indptr, indices, data, shape):
    M = sp.csr_matrix(shape, dtype=np.float32)  # the arrays assigned as they are, unchecked
    M.indptr, M.indices, M.data = indptr, indices, data
    return M

def oracle(indptr, indices, data, shape):
    """The dense matrix the arrays describe, or None when they are malformed."""
    ptr = indptr.astype(np.int64); idx = indices.astype(np.int64)
    nnz = int(ptr[-1])
    if ptr[0] != 0 or (np.diff(ptr) < 0).any() or nnz > min(idx.size, data.size):
        return None
    if nnz and (idx[:nnz].min() < 0 or idx[:nnz].max() >= shape[1]):
        return None
    dense = np.zeros(shape)
    rows = np.repeat(np.arange(shape[0]), np.diff(ptr))
    np.add.at(dense, (rows, idx[:nnz]), data[:nnz])
    return dense

def attempt(fn):
    try:
        return "ok", fn()
    except (ValueError, TypeError) as error:
        return "refused", str(error)

count = [0]
@settings(max_examples=120, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
@given(raw_csr())
def fuzz(arrays):
    indptr, indices, data, shape = arrays
    want = oracle(*arrays)
    rows, cols = shape
    count[0] += 1
    # ALS.fit: the same factors as from the well-formed matrix with the entries summed
    status, got = attempt(lambda: recfuse.ALS(factors=2, iterations=1, random_state=0, solver="cholesky").fit(build(*arrays)).user_factors)
    assert status == ("refused" if want is None else "ok"), (status, got, arrays)
    if want is not None:
        clean = recfuse.ALS(factors=2, iterations=1, random_state=0, solver="cholesky").fit(sp.csr_matrix(want.astype(np.float32))).user_factors
        assert np.array_equal(got, clean), arrays
    # Interactions.from_matrix: the summed matrix
    status, got = attempt(lambda: recfuse.Interactions.from_matrix(build(*arrays)).matrix.toarray())
    assert status == ("refused" if want is None else "ok"), (status, got, arrays)
    if want is not None:
        assert np.allclose(got, want), arrays
    # ranking_metrics: the test matrix is checked like any other
    status, got = attempt(lambda: metrics.ranking_metrics(np.zeros((0, 1), np.int64), build(*arrays), users=[]))
    assert status == ("refused" if want is None else "ok"), (status, got, arrays)
    # topk exclude: no stored entry of a query's row comes back (arrays longer than the
    # entries: test_exclude_with_arrays_longer_than_its_entries, a bug)
    Q = rng.standard_normal((rows, 3)).astype(np.float32)
    if want is not None and min(indices.size, data.size) > int(indptr[-1]):
        return
    status, got = attempt(lambda: recfuse.topk(Q, ITEMS[:cols], cols, exclude=build(*arrays))[0])
    assert status == ("refused" if want is None else "ok"), (status, got, arrays)
    if want is not None:
        for r in range(rows):
            stored = set(indices.astype(np.int64)[int(indptr[r]):int(indptr[r + 1])].tolist())
            assert not set(got[r].tolist()) & stored, (r, got, arrays)
            assert (got[r] >= 0).sum() == cols - len(stored), (r, got, arrays)

probe("fuzz", fuzz)
print("EXAMPLES", count[0])
'''


def test_malformed_csr_structures_are_refused_or_read_as_their_entries():
    """Hypothesis-drawn CSR arrays (any integer dtypes, malformed or not), assigned to a
    scipy matrix unchecked: ALS.fit, topk's exclude, Interactions.from_matrix and
    ranking_metrics refuse exactly the malformed ones (ValueError/TypeError), and read the
    others as their entries (repeats summed)."""
    out = _run_child(_CSR_FUZZ, timeout=300)
    assert "EXAMPLES" in out


# ------------------------------------------------------------------ forged model files

_FORGE = r'''
import io, json, zipfile
MARKER = sys.argv[1] if len(sys.argv) > 1 else os.path.join(tempfile.mkdtemp(), "unpickled")
TMP = tempfile.mkdtemp()
implicit = sp.random(7, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
implicit.data[:] = 1 + np.arange(implicit.nnz) % 3
rng, w = np.random.default_rng(0), np.random.default_rng(3)
rated = (np.repeat(np.arange(6), 3), rng.integers(0, 5, 18), rng.integers(1, 6, 18) * 1.0)
opts = {"factors": 3, "iterations": 2, "backend": "cpu", "random_state": 0}
MODELS = {"ALS": recfuse.ALS(solver="cholesky", dtype=np.float64, **opts).fit(implicit),
          "SVD": recfuse.SVD(factors=3, epochs=2, random_state=0).fit(*rated),
          "SVDpp": recfuse.SVDpp(factors=3, epochs=2, random_state=0).fit(*rated),
          "ExplicitALS": recfuse.ExplicitALS(factors=3, iterations=2, random_state=0).fit(*rated),
          "BPR": recfuse.BPR(factors=3, iterations=2, random_state=0).fit(implicit),
          "MLPScorer": MLPScorer([(w.standard_normal((4, 6)).astype(np.float32), w.standard_normal(4), "relu"),
                                  (w.standard_normal((1, 4)).astype(np.float32), None, "sigmoid")]),
          "Interactions": recfuse.Interactions.from_arrays(["a", "b", "a", "c"], [1, 2, 3, 1], timestamps=np.arange(4))}

class Payload:  # unpickling it creates MARKER
    def __reduce__(self):
        return (open, (MARKER, "w"))

def members(path):
    with zipfile.ZipFile(path) as z:
        return {i.filename[:-4]: np.lib.format.read_array(z.open(i), allow_pickle=False) for i in z.infolist()}

def write(path, arrays):
    with zipfile.ZipFile(path, "w") as z:
        for name, a in arrays.items():
            buf = io.BytesIO(); np.lib.format.write_array(buf, a, allow_pickle=True)
            z.writestr(name + ".npy", buf.getvalue())

def load(path, kind, mmap):
    return recfuse.Interactions.load(path, mmap=mmap) if kind == "Interactions" else recfuse.load(path, mmap=mmap)

def use(model):
    if isinstance(model, MLPScorer):
        width = model.input_width
        return model.rank(np.ones((1, 2), np.float32), np.array([[0, 1, 2]]), np.ones((3, width - 2), np.float32), k=2)
    if isinstance(model, recfuse.Interactions):
        return model.matrix.toarray(), model.filter(min_user_count=2).shape, model.weighted("bm25").nnz
    out = [model.recommend([0, 1], k=3), model.similar_items(0, k=2), list(model.recommend_all(k=2))]
    if hasattr(model, "predict"):
        out.append(model.predict([0, 1], [0, 1]))
    served = recfuse.Recommender(model, k=3)
    served.observe({"user": [0, 99], "item": [1, 2]})
    out.append(served.recommend(99))
    return out

MUTATIONS = {
    "object_pickle": lambda a: np.array([Payload()] * max(a.size, 1), dtype=object),
    "complex": lambda a: a.astype(np.complex64),
    "structured": lambda a: np.zeros(a.shape, [("x", "f4")]),
    "unicode": lambda a: a.astype("U3"),
    "big_endian": lambda a: a.astype(a.dtype.newbyteorder(">")) if a.dtype.kind in "fiu" else a,
    "empty": lambda a: a[:0],
    "3d": lambda a: a.reshape((1,) + a.shape) if a.ndim != 1 else a.reshape(1, 1, -1),
    "scalar": lambda a: np.asarray(a.reshape(-1)[0]) if a.size else np.asarray(0),
    "extra_row": lambda a: np.concatenate([a, a[:1]]) if a.size else a,
    "nan": lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, np.nan, a).astype(a.dtype) if a.dtype.kind == "f" and a.size else a,
    "int_2e62": lambda a: np.full(a.shape, 2**62, np.int64) if a.dtype.kind in "iu" else a,
    "reversed": lambda a: a[::-1].copy(),
}
for kind, model in MODELS.items():
    path = os.path.join(TMP, kind + ".npz")
    model.save(path)
    base = members(path)
    for member in base:
        if member == "__recfuse__":
            continue
        for name, mutate in MUTATIONS.items():
            def check(kind=kind, member=member, mutate=mutate, name=name):
                arrays = dict(base)
                try:
                    arrays[member] = mutate(arrays[member])
                except (ValueError, TypeError):
                    return True  # no such array (complex of strings)
                forged = os.path.join(TMP, f"{kind}-{member}-{name}.npz")
                write(forged, arrays)
                for mmap in (False, True):
                    try:
                        loaded = load(forged, kind, mmap)
                    except (ValueError, OSError) as error:
                        assert forged in str(error) or "member" in str(error), str(error)
                        continue
                    try:
                        use(loaded)
                    except (ValueError, TypeError, MemoryError):
                        pass  # refused at use, with a message
                assert not os.path.exists(MARKER), "a member was unpickled"
                return True
            if kind == "Interactions" and name == "3d" and member in ("values", "counts", "times"):
                continue  # test_interactions_file_with_a_2d_pair_array_is_refused (a bug)
            probe(f"{kind}|{member}|{name}", check, check=lambda v: v is True)
'''


def test_forged_model_members_are_refused_or_harmless_and_never_unpickled(tmp_path):
    """Each member of each savable model (and of an Interactions file) swapped for one of
    another dtype, shape or values: recfuse.load (both mmap modes) refuses it with a
    ValueError/OSError naming the file or member, or gives a model whose calls work or
    refuse with ValueError/TypeError; an object member is never unpickled."""
    marker = tmp_path / "unpickled"
    code = _HARNESS + _FORGE + "\nprint('DONE', flush=True)\n"
    done = subprocess.run([sys.executable, "-c", code, str(marker)], capture_output=True,
                          text=True, timeout=300)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines and lines[-1] == "DONE", done.stderr[-1500:]
    failures = [line for line in lines if line.startswith("FAIL ")]
    assert not failures, "\n".join(failures[:20])
    assert not marker.exists()


# ------------------------------------------------------------------ bugs found (fixed)


@pytest.mark.parametrize("side", ["user", "item"])
def test_update_rows_with_an_id_past_any_table_names_the_ids(side):
    user_items = sp.random(8, 6, density=0.4, format="csr", random_state=1, dtype=np.float32)
    model = recfuse.ALS(factors=3, iterations=2, random_state=0).fit(user_items)
    before = model.user_factors.copy(), model.item_factors.copy()
    rows = user_items[:1] if side == "user" else user_items.T.tocsr()[:1]
    update = model.update_users if side == "user" else model.update_items
    try:
        with pytest.raises(ValueError, match=f"{side}_ids"):  # as for an id of 2**40
            update([2**62], rows)
    finally:  # nothing half-changed either way
        assert np.array_equal(model.user_factors, before[0])
        assert np.array_equal(model.item_factors, before[1])


@pytest.mark.parametrize("unit", ["datetime64[ns]", "timedelta64[s]"])
def test_nat_ids_are_missing_values(unit):
    users = np.array([1, "NaT"], dtype=unit) if unit.startswith("timedelta") else \
        np.array(["2020-01-01", "NaT"], dtype=unit)
    with pytest.raises(ValueError, match="users has 1 missing"):
        recfuse.Interactions.from_arrays(users, [1, 2])


def test_datetime_ids_without_nat_are_ids():
    users = np.array(["2020-01-02", "2020-01-01", "2020-01-02"], dtype="datetime64[ns]")
    data = recfuse.Interactions.from_arrays(users, [1, 2, 3])
    assert data.shape == (2, 3) and data.user_ids.ids.tolist() == sorted(set(users.tolist()))


@pytest.mark.parametrize("index", [-1, 99])
def test_arrow_dictionary_indices_outside_the_dictionary_are_refused(index):
    pa = pytest.importorskip("pyarrow")
    column = pa.DictionaryArray.from_buffers(
        pa.dictionary(pa.int8(), pa.string()), 2,
        [None, pa.py_buffer(np.array([0, index], np.int8).tobytes())],
        dictionary=pa.array(["a", "b"]))
    with pytest.raises(ValueError, match="users"):
        recfuse.Interactions.from_arrays(column, [1, 2])


def test_arrow_dictionary_column_with_valid_indices_is_read():
    pa = pytest.importorskip("pyarrow")
    column = pa.array(["b", "a", "b"]).dictionary_encode()
    data = recfuse.Interactions.from_arrays(column, [1, 2, 3])
    assert data.user_ids.ids.tolist() == ["a", "b"]
    assert data.matrix.toarray().tolist() == [[0, 1, 0], [1, 0, 1]]


def test_float16_ids_make_a_usable_and_loadable_interactions(tmp_path):
    data = recfuse.Interactions.from_arrays(np.array([1, 2], np.float16), [1, 2])
    assert data.user_ids.to_internal([2.0]).tolist() == [1]
    assert data.add(users=np.array([5], np.float16), items=[1]).shape == (3, 2)
    data.save(tmp_path / "x.npz")
    assert recfuse.Interactions.load(tmp_path / "x.npz").user_ids.ids.tolist() == [1.0, 2.0]


def test_idmap_of_float16_ids():
    try:
        ids = recfuse.IdMap(np.array([1, 2], np.float16))
    except TypeError:
        return  # refusing the dtype plainly is fine too
    assert ids.position(2.0) == 1


@pytest.mark.parametrize("member", ["values", "counts", "times"])
def test_interactions_file_with_a_2d_pair_array_is_refused(member, tmp_path):
    path = tmp_path / "x.npz"
    _forge_interactions_member(path, member, lambda array: array.reshape(1, -1))
    with pytest.raises(ValueError, match=member):
        recfuse.Interactions.load(path)


def _forge_interactions_member(path, member, change):
    """Save a small Interactions to ``path``, then rewrite its ``member`` as change(array)."""
    import io
    import zipfile

    recfuse.Interactions.from_arrays(["a", "b", "a"], [1, 2, 3],
                                     timestamps=np.arange(3)).save(path)
    with zipfile.ZipFile(path) as archive:
        arrays = {info.filename[:-4]: np.lib.format.read_array(archive.open(info))
                  for info in archive.infolist()}
    arrays[member] = change(arrays[member])
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array)
            archive.writestr(name + ".npy", buffer.getvalue())


@pytest.mark.parametrize("change", [lambda ids: np.concatenate([ids, ids[:1]]),
                                    lambda ids: ids.reshape(1, 1, -1)], ids=["repeated", "3d"])
def test_forged_interactions_id_maps_are_refused_naming_the_file(change, tmp_path):
    path = tmp_path / "x.npz"
    _forge_interactions_member(path, "item_ids", change)
    with pytest.raises(ValueError) as refused:
        recfuse.Interactions.load(path)
    assert str(path) in str(refused.value) and "item_ids" in str(refused.value)


def test_a_big_endian_id_map_is_read_in_native_order(tmp_path):
    path = tmp_path / "x.npz"
    _forge_interactions_member(path, "item_ids", lambda ids: ids.astype(ids.dtype.newbyteorder(">")))
    loaded = recfuse.Interactions.load(path)
    assert loaded.item_ids.ids.tolist() == [1, 2, 3] and loaded.item_ids.to_internal([3]).tolist() == [2]


def _stale_sorted_exclusions(query, items, count):
    """An exclusion row of the `count` best items, built sorted (scipy caches
    has_sorted_indices = True), then reordered in place: the cached flag is stale."""
    best = recfuse.topk(query, items, items.shape[0])[0][0][:count]
    E = sp.csr_matrix((np.ones(count), np.sort(best).astype(np.int32), [0, count]),
                      shape=(1, items.shape[0]))
    assert E.has_sorted_indices
    E.indices[:] = E.indices[::-1].copy()
    return E, set(best.tolist())




@pytest.mark.parametrize("backend", [pytest.param("cpu"),
                                     pytest.param("numba"), "numpy"])
def test_exclude_with_a_stale_sorted_flag_still_excludes(backend):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((7, 3)).astype(np.float32)
    query = rng.standard_normal((1, 3)).astype(np.float32)
    E, excluded = _stale_sorted_exclusions(query, items, 3)
    ids = recfuse.ItemIndex(items, backend=backend).search(query, 4, exclude=E)[0][0]
    assert not set(ids.tolist()) & excluded


def test_exclude_with_unsorted_rows_and_honest_flags_excludes():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((7, 3)).astype(np.float32)
    query = rng.standard_normal((1, 3)).astype(np.float32)
    E, excluded = _stale_sorted_exclusions(query, items, 3)
    E = sp.csr_matrix((E.data, E.indices.copy(), E.indptr), shape=E.shape)  # flags fresh
    ids = recfuse.topk(query, items, 4, exclude=E)[0][0]
    assert not set(ids.tolist()) & excluded


def test_fit_on_a_matrix_with_a_stale_canonical_flag_sums_repeats():
    M = sp.csr_matrix((np.ones(4, np.float32), np.array([0, 1, 2, 3], np.int32),
                       np.array([0, 4, 4])), shape=(2, 5))
    assert M.has_canonical_format
    M.indices[:] = [3, 1, 3, 0]  # two entries of (0, 3): documented to add up to 2
    summed = sp.csr_matrix((np.array([1, 1, 2], np.float32), np.array([0, 1, 3], np.int32),
                            np.array([0, 3, 3])), shape=(2, 5))
    settings = dict(factors=3, iterations=2, random_state=0, solver="cholesky")
    got = recfuse.ALS(**settings).fit(M).user_factors
    want = recfuse.ALS(**settings).fit(summed).user_factors
    assert np.array_equal(got, want)


def _slack_exclusions():
    """A 2 x 7 exclusion matrix of entries (0, 2) and (1, 4) whose arrays hold one more
    slot than its entries (len(indices) > indptr[-1]: scipy allows it, nnz is 2 and
    check_format(full_check=True) would prune the slack, as the docs of check_csr note)."""
    E = sp.csr_matrix((np.ones(2), np.array([2, 4], np.int32), np.array([0, 1, 2])), shape=(2, 7))
    E.indices, E.data = np.array([2, 4, 0], np.int32), np.ones(3)
    assert E.nnz == 2 and E.toarray().sum() == 2
    return E


def test_exclude_with_arrays_longer_than_its_entries():
    rng = np.random.default_rng(0)
    items = rng.standard_normal((7, 3)).astype(np.float32)
    queries = rng.standard_normal((2, 3)).astype(np.float32)
    ids = recfuse.ItemIndex(items, backend="cpu").search(queries, 7, exclude=_slack_exclusions())[0]
    assert 2 not in ids[0] and 4 not in ids[1] and (ids >= 0).sum(axis=1).tolist() == [6, 6]


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_exclude_with_arrays_longer_than_its_entries_on_python_backends(backend):
    rng = np.random.default_rng(0)
    items = rng.standard_normal((7, 3)).astype(np.float32)
    queries = rng.standard_normal((2, 3)).astype(np.float32)
    ids = recfuse.ItemIndex(items, backend=backend).search(queries, 7,
                                                          exclude=_slack_exclusions())[0]
    assert 2 not in ids[0] and 4 not in ids[1] and (ids >= 0).sum(axis=1).tolist() == [6, 6]
