"""The Numba SGD backend: the block-scheduled epochs of cpp/src/sgd.cpp, JIT-compiled.

The fallback for machines without the native build. Numba is imported only when the
backend is probed or used and the kernels compile on first use (cached on disk afterwards).
The blocks of one diagonal share no user and no item, so ``prange`` over them gives the same
result as running them in order: the epochs equal ``recfuse.reference`` over the ratings in
block order, up to rounding (sums run sequentially here, ``fastmath=False``), for any
thread count. SVD++ goes by user passes and is sequential, as in the C++ backend. BPR's negatives come from the same splitmix64 streams as in the reference.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import numpy as np

from .._als.numba_backend import _thread_count
from .._als.numba_backend import availability as _numba_availability
from .common import Blocks, Pattern

NAME = "numba"


def availability() -> tuple[bool, str]:
    return _numba_availability()


@functools.lru_cache(maxsize=None)
def _kernels() -> SimpleNamespace:
    import numba
    from numba import prange

    def jit(function, parallel=True):
        options = dict(parallel=parallel, fastmath=False, nogil=True, error_model="numpy")
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # no writable cache location: compile for this process only
            return numba.njit(cache=False, **options)(function)

    def svd(users, items, ratings, offsets, grid, mu, bu, bi, P, Q, lr, reg, biased):
        k = P.shape[1]
        for s in range(grid):
            for r in prange(grid):
                block = s * grid + r
                for t in range(offsets[block], offsets[block + 1]):
                    u, i = users[t], items[t]
                    p, q = P[u], Q[i]
                    dot = P.dtype.type(0)
                    for f in range(k):
                        dot += p[f] * q[f]
                    err = ratings[t] - (mu + bu[u] + bi[i] + dot)
                    if biased:
                        bu[u] += lr[0] * (err - reg[0] * bu[u])
                        bi[i] += lr[1] * (err - reg[1] * bi[i])
                    for f in range(k):
                        pf, qf = p[f], q[f]
                        p[f] = pf + lr[2] * (err * qf - reg[2] * pf)
                        q[f] = qf + lr[3] * (err * pf - reg[3] * qf)

    def svdpp(users, items, ratings, mu, bu, bi, P, Q, Y, implicit_indptr, implicit_indices,
              lr, reg):
        k = P.shape[1]
        zero = P.dtype.type(0)
        z = np.empty(k, dtype=P.dtype)
        g = np.empty(k, dtype=P.dtype)
        shrink = P.dtype.type(1) - lr[4] * reg[4]
        begin = 0
        n = users.shape[0]
        while begin < n:
            u = users[begin]
            end = begin + 1
            while end < n and users[end] == u:
                end += 1
            first, last = implicit_indptr[u], implicit_indptr[u + 1]
            inv_sqrt = P.dtype.type(1.0 / np.sqrt(last - first)) if last > first else zero
            for f in range(k):
                z[f] = zero
                g[f] = zero
            for t in range(first, last):
                y = Y[implicit_indices[t]]
                for f in range(k):
                    z[f] += y[f]
            for f in range(k):
                z[f] *= inv_sqrt
            p = P[u]
            for t in range(begin, end):
                i = items[t]
                q = Q[i]
                dot = zero
                for f in range(k):
                    dot += q[f] * (p[f] + z[f])
                err = ratings[t] - (mu + bu[u] + bi[i] + dot)
                bu[u] += lr[0] * (err - reg[0] * bu[u])
                bi[i] += lr[1] * (err - reg[1] * bi[i])
                for f in range(k):
                    pf, qf = p[f], q[f]
                    p[f] = pf + lr[2] * (err * qf - reg[2] * pf)
                    q[f] = qf + lr[3] * (err * (pf + z[f]) - reg[3] * qf)
                    g[f] += err * qf
            decay = P.dtype.type(np.float64(shrink) ** np.float64(end - begin))
            scale = lr[4] * inv_sqrt
            for f in range(k):
                g[f] *= scale
            for t in range(first, last):
                y = Y[implicit_indices[t]]
                for f in range(k):
                    y[f] = decay * y[f] + g[f]
            begin = end

    def bpr(users, items, offsets, grid, seen_indptr, seen_indices, bin_items, bin_offsets,
            P, Q, b, lr, reg, seed, max_tries, negatives):
        k = P.shape[1]
        half = P.dtype.type(0.5)
        one = P.dtype.type(1)
        skipped = np.zeros(grid, dtype=np.int64)
        for s in range(grid):
            for r in prange(grid):
                block = s * grid + r
                c = (r + s) % grid
                first, count = bin_offsets[c], bin_offsets[c + 1] - bin_offsets[c]
                state = seed ^ (np.uint64(0xD1B54A32D192ED03) * np.uint64(block + 1))
                for t in range(offsets[block], offsets[block + 1]):
                    u = users[t]
                    negative = -1
                    lo, hi = seen_indptr[u], seen_indptr[u + 1]
                    attempts = max_tries if count > 0 else 0
                    for _ in range(attempts):
                        state = state + np.uint64(0x9E3779B97F4A7C15)  # splitmix64
                        x = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                        x = x ^ (x >> np.uint64(31))
                        j = bin_items[first + np.int64(x % np.uint64(count))]
                        position = lo + np.searchsorted(seen_indices[lo:hi], j)
                        if position >= hi or seen_indices[position] != j:
                            negative = j
                            break
                    negatives[t] = negative
                    if negative < 0:
                        skipped[r] += 1
                        continue
                    i = items[t]
                    p, qi, qj = P[u], Q[i], Q[negative]
                    x_ui = P.dtype.type(0)
                    for f in range(k):
                        x_ui += p[f] * (qi[f] - qj[f])
                    x_ui += b[i] - b[negative]
                    sig = half * (one - P.dtype.type(np.tanh(np.float64(half * x_ui))))
                    for f in range(k):
                        pf, a, cj = p[f], qi[f], qj[f]
                        p[f] = pf + lr * (sig * (a - cj) - reg * pf)
                        qi[f] = a + lr * (sig * pf - reg * a)
                        qj[f] = cj + lr * (-sig * pf - reg * cj)
                    b[i] += lr * (sig - reg * b[i])
                    b[negative] += lr * (-sig - reg * b[negative])
        return skipped.sum()

    def explicit_als(indptr, indices, data, Y, X, other_bias, own_bias, biased, mu, reg,
                     reg_bias):
        k = Y.shape[1]
        d = k + 1 if biased else k
        dtype = Y.dtype.type
        failed = np.zeros(X.shape[0], dtype=np.int64)
        for u in prange(X.shape[0]):
            begin, end = indptr[u], indptr[u + 1]
            if end == begin:
                for f in range(k):
                    X[u, f] = dtype(0)
                if biased:
                    own_bias[u] = dtype(0)
                continue
            A = np.zeros((d, d), dtype=Y.dtype)
            b = np.zeros(d, dtype=Y.dtype)
            z = np.empty(d, dtype=Y.dtype)
            for t in range(begin, end):
                i = indices[t]
                for f in range(k):
                    z[f] = Y[i, f]
                target = data[t]
                if biased:
                    z[k] = dtype(1)
                    target -= mu + other_bias[i]
                for a in range(d):
                    b[a] += target * z[a]
                    for c in range(a, d):
                        A[a, c] += z[a] * z[c]
            n = dtype(end - begin)
            for a in range(k):
                A[a, a] += n * reg
            if biased:
                A[k, k] += n * reg_bias
            ok = True
            for j in range(d):  # A = UᵀU in place (upper triangle), as in the C++ kernel
                pivot = A[j, j]
                if not (0 < pivot < np.inf):  # also NaN, and inf: sums past the dtype
                    ok = False
                    break
                pivot = dtype(np.sqrt(np.float64(pivot)))
                A[j, j] = pivot
                for c in range(j + 1, d):
                    A[j, c] /= pivot
                for i2 in range(j + 1, d):
                    for c in range(i2, d):
                        A[i2, c] -= A[j, i2] * A[j, c]
            if not ok:
                failed[u] = 1
                continue
            for j in range(d):
                b[j] /= A[j, j]
                for c in range(j + 1, d):
                    b[c] -= b[j] * A[j, c]
            for i2 in range(d - 1, -1, -1):
                acc = b[i2]
                for c in range(i2 + 1, d):
                    acc -= A[i2, c] * b[c]
                b[i2] = acc / A[i2, i2]
            for j in range(d):  # a solution past the dtype fails the row too
                ok = ok and np.isfinite(b[j])
            if not ok:
                failed[u] = 1
                continue
            for f in range(k):
                X[u, f] = b[f]
            if biased:
                own_bias[u] = b[k]
        return failed.sum()

    return SimpleNamespace(numba=numba, svd=jit(svd), svdpp=jit(svdpp, parallel=False),
                           bpr=jit(bpr), explicit_als=jit(explicit_als))


def warm_up(kernel: str, dtype) -> None:
    """Compile ``kernel`` ("svd_epoch", "svdpp_epoch" or "bpr_epoch") for ``dtype`` now (or
    load it from Numba's disk cache) and start Numba's threads, by running it on an empty
    problem. The fits call this before they time their epochs (``common.EpochThreads``):
    timed, the compile made the first epoch on all cores look hundreds of times slower than
    the next on one thread (426 ms against 0.5 ms), and a fit of under 32 epochs kept one
    thread to the end."""
    dtype = np.dtype(dtype)
    ids, none, table = np.zeros(0, np.int32), np.zeros(0, dtype), np.zeros((1, 1), dtype)
    two = np.zeros(2, np.int64)
    blocks = Blocks(ids, ids, two, 1, np.zeros(0, np.int64), ids, two, ids)
    rates = (0.0,) * 5
    if kernel == "svd_epoch":
        svd_epoch(blocks, none, 0.0, none, none, table, table.copy(), rates, rates, True, 0)
    elif kernel == "svdpp_epoch":
        svdpp_epoch(blocks, none, 0.0, none, none, table, table.copy(), table.copy(),
                    Pattern(two, ids), rates, rates)
    elif kernel == "bpr_epoch":
        bpr_epoch(blocks, Pattern(two, ids), table, table.copy(), np.zeros(1, dtype), 0.0, 0.0,
                  0, 1, ids.copy(), 0)


def svd_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
              num_threads) -> None:
    kernels = _kernels()
    dtype = P.dtype
    with _thread_count(kernels.numba, num_threads):
        kernels.svd(blocks.users, blocks.items, ratings, blocks.offsets, blocks.grid,
                    dtype.type(global_mean), user_bias, item_bias, P, Q,
                    np.asarray(lr, dtype=dtype), np.asarray(reg, dtype=dtype), bool(biased))


def svdpp_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, Y,
                implicit: Pattern, lr, reg) -> None:
    dtype = P.dtype
    _kernels().svdpp(blocks.users, blocks.items, ratings, dtype.type(global_mean), user_bias,
                     item_bias, P, Q, Y, implicit.indptr, implicit.indices,
                     np.asarray(lr, dtype=dtype), np.asarray(reg, dtype=dtype))


def bpr_epoch(blocks: Blocks, seen: Pattern, P, Q, item_bias, lr, reg, seed, max_tries,
              negatives, num_threads) -> int:
    kernels = _kernels()
    dtype = P.dtype
    with _thread_count(kernels.numba, num_threads):
        return int(kernels.bpr(blocks.users, blocks.items, blocks.offsets, blocks.grid,
                               seen.indptr, seen.indices, blocks.bin_items, blocks.bin_offsets,
                               P, Q, item_bias, dtype.type(lr), dtype.type(reg),
                               np.uint64(seed), int(max_tries), negatives))


def explicit_als_half_sweep(R, Y, X, other_bias, own_bias, global_mean, reg, reg_bias,
                            num_threads) -> int:
    kernels = _kernels()
    dtype = Y.dtype
    biased = other_bias is not None
    if not biased:
        other_bias = own_bias = np.zeros(0, dtype=dtype)
    with _thread_count(kernels.numba, num_threads):
        return int(kernels.explicit_als(R.indptr, R.indices, R.data, Y, X, other_bias, own_bias,
                                        biased, dtype.type(global_mean), dtype.type(reg),
                                        dtype.type(reg_bias)))
