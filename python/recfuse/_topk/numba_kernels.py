"""The Numba kernels of the top-k backend (``numba_backend``), imported on first use.

Module-level functions, not closures: Numba's disk cache keys a function by its bytecode and
the pickled contents of its closure, and a dispatcher captured there pickles differently in
every process, so a kernel that called one compiled anew in each process (seconds) and added
another entry to the cache."""

from __future__ import annotations

import numba
import numpy as np
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
