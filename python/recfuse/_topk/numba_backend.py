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


def prepare(items: np.ndarray, bias=None, scale=None, num_threads: int = 0) -> Table:
    n = items.shape[0]
    return Table(items,
                 np.zeros(n, items.dtype) if bias is None else bias,
                 np.ones(n, items.dtype) if scale is None else scale)


@functools.lru_cache(maxsize=None)
def _kernel():
    import numba

    from . import numba_kernels  # imports numba: only when the backend is used

    return numba, numba_kernels.search


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
