"""The CuPy top-k backend (a fallback for machines with CuPy and a GPU but no native build).

Per chunk of queries: one cuBLAS matmul for the scores, scale and bias as separate
element-wise steps (two roundings, as in the reference), the filters as -inf, then an exact
selection with ties broken by smaller id:

* ``t``, the kk-th largest score of each row (``cupy.partition``; kk = min(k, n));
* keep every score > t, and among the scores == t the ones with the smallest ids (ranked by
  a cumulative count along the row), so each row keeps exactly min(kk, qualifying) items;
* sort the kept items by (score descending, id ascending) with ``cupy.lexsort`` on
  (row, -score, id), which does not rely on the stability of any sort.

``cupy.argpartition`` alone would not do: which of several tied items it returns is
unspecified. The score block of a chunk is bounded by ``SCORE_BLOCK_BYTES`` (with its masks
and counters, about 4x that in device memory).

Subnormals: CuPy compiles float32 element-wise kernels with ``-ftz=true``, so subnormal
scores, scales or biases are read as zero there (the scale/bias steps and the comparisons),
where the reference keeps them. Results can then differ from the reference for float32
inputs whose scores are subnormal (|s| < 1.2e-38); float64 is not affected.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._als.cupy_backend import availability  # noqa: F401 - the same probe as the ALS family

NAME = "cupy"

SCORE_BLOCK_BYTES = 64 << 20


def _cupy():
    import cupy

    return cupy


# A cupy.ndarray (cupy has no type information, so mypy sees it as Any).
_CupyArray = Any


class Table(NamedTuple):
    items: _CupyArray  # n x d
    bias: _CupyArray | None   # n
    scale: _CupyArray | None  # n
    n: int
    dtype: np.dtype


def prepare(items: np.ndarray, bias=None, scale=None, num_threads: int = 0) -> Table:
    cp = _cupy()
    return Table(cp.asarray(items), None if bias is None else cp.asarray(bias),
                 None if scale is None else cp.asarray(scale), items.shape[0], items.dtype)


def _select(cp, S, kk):
    """(ids int64 c x kk, scores c x kk) of the score block S (non-qualifying = -inf)."""
    c, n = S.shape
    t = cp.partition(S, n - kk, axis=1)[:, n - kk][:, None]  # the kk-th largest per row
    above = S > t
    needed = kk - above.sum(axis=1, dtype=cp.int64)[:, None]
    ties = (S == t) & (t > -cp.inf)  # -inf never qualifies, even as a tie
    tie_rank = cp.cumsum(ties, axis=1, dtype=cp.int32)  # 1-based rank in id order
    keep = above | (ties & (tie_rank <= needed))
    del above, ties, tie_rank
    slot = cp.cumsum(keep, axis=1, dtype=cp.int32) - 1
    rows, cols = cp.nonzero(keep)
    slots = slot[rows, cols]
    ids = cp.full((c, kk), -1, dtype=cp.int64)
    best = cp.full((c, kk), -cp.inf, dtype=S.dtype)
    ids[rows, slots] = cols
    best[rows, slots] = S[rows, cols]
    # Best first, ties by smaller id; padding (-1, -inf) last.
    row_of = cp.repeat(cp.arange(c, dtype=cp.float64), kk)
    order = cp.lexsort(cp.stack([ids.ravel().astype(cp.float64),
                                 -best.ravel().astype(cp.float64), row_of]))
    return ids.ravel()[order].reshape(c, kk), best.ravel()[order].reshape(c, kk)


def search(table: Table, queries: np.ndarray, k: int, exclude=None, mask=None, num_threads=0):
    cp = _cupy()
    m, n = queries.shape[0], table.n
    dtype = table.dtype
    ids = np.full((m, k), -1, dtype=np.int64)
    scores = np.full((m, k), -np.inf, dtype=dtype)
    kk = min(k, n)
    if m == 0 or kk == 0:
        return ids, scores
    allowed = None if mask is None else cp.asarray(mask).astype(cp.bool_)
    block = max(1, SCORE_BLOCK_BYTES // max(1, n * dtype.itemsize))
    for begin in range(0, m, block):
        end = min(m, begin + block)
        S = cp.asarray(queries[begin:end]) @ table.items.T
        if table.scale is not None:
            S *= table.scale
        if table.bias is not None:
            S += table.bias
        S[~(S > -cp.inf)] = -cp.inf  # NaN never qualifies
        S[S == 0] = 0  # -0.0 ties with +0.0, as in the reference
        if allowed is not None:
            S[:, ~allowed] = -cp.inf
        if exclude is not None:
            indptr, indices = exclude
            first, last = int(indptr[begin]), int(indptr[end])
            if last > first:
                rows = np.repeat(np.arange(end - begin), np.diff(indptr[begin:end + 1]))
                S[cp.asarray(rows), cp.asarray(indices[first:last])] = -cp.inf
        block_ids, block_scores = _select(cp, S, kk)
        ids[begin:end, :kk] = cp.asnumpy(block_ids)
        scores[begin:end, :kk] = cp.asnumpy(block_scores)
    return ids, scores
