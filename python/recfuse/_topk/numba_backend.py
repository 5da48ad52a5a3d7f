"""The Numba top-k backend: the algorithm of cpp/src/topk.cpp, JIT-compiled.

Queries run in parallel; each scans the items in ascending id order keeping a heap of its k
best (worst at the root), so an item that ties the k-th score never displaces it (ties go to
the smaller id). A score is compared with the current k-th before the mask and the query's
sorted exclusions (one forward-moving position) are looked at. Sums run sequentially in the
arrays' dtype. Compiled on first use (cached on disk by Numba afterwards).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from .._als.numba_backend import _thread_count, availability  # noqa: F401 - same probe as ALS

NAME = "numba"


class Table(NamedTuple):
    items: np.ndarray
    bias: np.ndarray
    scale: np.ndarray


def prepare(items: np.ndarray, bias=None, scale=None) -> Table:
    n = items.shape[0]
    return Table(items,
                 np.zeros(n, items.dtype) if bias is None else bias,
                 np.ones(n, items.dtype) if scale is None else scale)


@functools.lru_cache(maxsize=None)
def _kernel():
    import numba
    from numba import prange

    @numba.njit(inline="always")
    def worse(s, a, t, b):
        return s < t or (s == t and a > b)

    @numba.njit(inline="always")
    def offer(hs, hi, count, s, j):
        """Adds (s, j) to the heap of `count` entries (worst at the root); returns the count."""
        k = hs.shape[0]
        if count < k:
            pos = count
            while pos > 0:
                parent = (pos - 1) // 2
                if not worse(s, j, hs[parent], hi[parent]):
                    break
                hs[pos] = hs[parent]
                hi[pos] = hi[parent]
                pos = parent
            hs[pos] = s
            hi[pos] = j
            return count + 1
        if not worse(hs[0], hi[0], s, j):
            return count
        pos = 0
        while True:
            child = 2 * pos + 1
            if child >= count:
                break
            if child + 1 < count and worse(hs[child + 1], hi[child + 1], hs[child], hi[child]):
                child += 1
            if not worse(hs[child], hi[child], s, j):
                break
            hs[pos] = hs[child]
            hi[pos] = hi[child]
            pos = child
        hs[pos] = s
        hi[pos] = j
        return count

    @numba.njit(parallel=True, nogil=True, fastmath=False, error_model="numpy", cache=True)
    def search(Q, V, bias, scale, k, kk, ex_indptr, ex_indices, mask, use_mask, use_exclude,
               out_ids, out_scores):
        m, d = Q.shape
        n = V.shape[0]
        for i in prange(m):
            hs = np.empty(kk, V.dtype)
            hi = np.empty(kk, np.int64)
            count = 0
            threshold = -np.inf
            e = ex_indptr[i] if use_exclude else 0
            e_end = ex_indptr[i + 1] if use_exclude else 0
            for j in range(n):
                acc = V.dtype.type(0)
                for c in range(d):
                    acc += Q[i, c] * V[j, c]
                s = acc * scale[j] + bias[j]
                if not s > threshold:
                    continue
                if use_mask and mask[j] == 0:
                    continue
                if use_exclude:
                    while e < e_end and ex_indices[e] < j:
                        e += 1
                    if e < e_end and ex_indices[e] == j:
                        continue
                count = offer(hs, hi, count, s, j)
                if count == kk:
                    threshold = hs[0]
            # Heap to sorted order: best first, ties by smaller id.
            order = np.argsort(hi[:count], kind="mergesort")  # ids ascending, then
            order = order[np.argsort(-hs[:count][order], kind="mergesort")]  # stable by score
            for r in range(count):
                out_ids[i, r] = hi[order[r]]
                out_scores[i, r] = hs[order[r]]
            for r in range(count, k):
                out_ids[i, r] = -1
                out_scores[i, r] = -np.inf

    return numba, search


def search(table: Table, queries: np.ndarray, k: int, exclude=None, mask=None, num_threads=0):
    numba, kernel = _kernel()
    m, n = queries.shape[0], table.items.shape[0]
    kk = max(1, min(k, n))
    ids = np.empty((m, k), dtype=np.int64)
    scores = np.empty((m, k), dtype=table.items.dtype)
    indptr, indices = exclude if exclude is not None else (np.zeros(1, np.int64),
                                                          np.zeros(0, np.int32))
    with _thread_count(numba, num_threads):
        kernel(queries, table.items, table.bias, table.scale, k, kk, indptr, indices,
               np.ones(1, np.uint8) if mask is None else mask, mask is not None,
               exclude is not None, ids, scores)
    return ids, scores
