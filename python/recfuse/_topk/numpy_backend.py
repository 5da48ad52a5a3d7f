"""The NumPy top-k backend: a block of queries scored at once, then selected per row.

Per row, the k best qualifying items by score descending, ties broken by smaller item id;
when fewer than k items qualify the row is padded with id -1 and score -inf (the contract
of recfuse.reference.topk).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

NAME = "numpy"


def availability() -> tuple[bool, str]:
    return True, ""

# Rows of the score block computed at once: bounds the memory of recommend for big batches.
SCORE_BLOCK_BYTES = 64 << 20


def select_topk(scores: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Top-k of each row of ``scores`` (modified: disallowed entries become -inf).

    ``allowed`` is an optional boolean mask of the same shape. Returns (ids int64, scores).
    """
    m, n = scores.shape
    ids = np.full((m, k), -1, dtype=np.int64)
    best = np.full((m, k), -np.inf, dtype=scores.dtype)
    scores[np.isnan(scores)] = -np.inf  # a NaN score never qualifies
    if allowed is not None:
        scores[~allowed] = -np.inf
    for row in range(m):
        s = scores[row]
        qualifying = np.flatnonzero(s > -np.inf)
        candidates = None if qualifying.size == n else qualifying  # None: all of them
        count = n if candidates is None else candidates.size
        take = min(k, count)
        if take == 0:
            continue
        pool = s if candidates is None else s[candidates]
        if take < pool.size:
            kth = np.partition(pool, pool.size - take)[pool.size - take]
            above = np.flatnonzero(pool > kth)
            ties = np.flatnonzero(pool == kth)[: take - above.size]
            chosen = np.concatenate([above, ties])
        else:
            chosen = np.arange(pool.size)
        chosen_ids = chosen if candidates is None else candidates[chosen]
        order = np.lexsort((chosen_ids, -s[chosen_ids]))
        ids[row, :take] = chosen_ids[order]
        best[row, :take] = s[chosen_ids[order]]
    return ids, best


class Table(NamedTuple):
    items: np.ndarray
    bias: np.ndarray | None
    scale: np.ndarray | None


def prepare(items: np.ndarray, bias=None, scale=None, num_threads: int = 0) -> Table:
    return Table(items, bias, scale)


def search(table: Table, queries: np.ndarray, k: int, exclude=None, mask=None, num_threads=0):
    m, n = queries.shape[0], table.items.shape[0]
    dtype = table.items.dtype
    ids = np.empty((m, k), dtype=np.int64)
    best = np.empty((m, k), dtype=dtype)
    block = max(1, SCORE_BLOCK_BYTES // max(1, n * dtype.itemsize))
    allowed_items = None if mask is None else mask.astype(bool)
    for begin in range(0, m, block):
        end = min(m, begin + block)
        with np.errstate(all="ignore"):
            # one matrix-vector product per query: a BLAS sums a block of queries (gemm) in
            # another order than one query (gemv), and a query's scores must not depend on
            # the batch it came in (MicroBatcher answers as if each call came alone)
            scores = np.empty((end - begin, n), dtype=np.result_type(queries, table.items))
            for row, query in enumerate(queries[begin:end]):
                np.matmul(table.items, query, out=scores[row])
            if table.scale is not None:
                scores *= table.scale
            if table.bias is not None:
                scores += table.bias
        allowed = None
        if allowed_items is not None or exclude is not None:
            allowed = np.broadcast_to(
                allowed_items if allowed_items is not None else True, scores.shape).copy()
            if exclude is not None:
                indptr, indices = exclude
                first, last = indptr[begin], indptr[end]
                rows = np.repeat(np.arange(end - begin), np.diff(indptr[begin:end + 1]))
                allowed[rows, indices[first:last]] = False
        ids[begin:end], best[begin:end] = select_topk(scores, k, allowed)
    return ids, best
