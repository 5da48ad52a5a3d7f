"""The native CUDA top-k backend: recfuse._cuda.TopkItemsFloat32/64 (kernels in cuda/topk.cu).

``prepare`` copies the item table (and bias/scale) to the current device once; ``search``
takes host NumPy arrays, uploads the queries and filters, and returns new NumPy arrays. The
scratch device memory of a search is bounded by ``recfuse._cuda.TOPK_SEARCH_BUDGET_BYTES``
(queries run in chunks). Two paths: a fused one for k <= ``TOPK_FUSED_MAX_K`` (256) and a
radix-select one for any k; ``recfuse._cuda.set_topk_path("simple"|"fused"|"auto")`` pins
one for tests. ``recfuse._cuda`` is imported only when used, so importing this module never
fails on a machine without a driver or a CUDA build (availability: recfuse._als.cuda).
"""

from __future__ import annotations

import numpy as np

from .._als.cuda import availability  # noqa: F401 - the same probe as the ALS family

NAME = "cuda"


def _module():
    from .. import _cuda

    return _cuda


def prepare(items: np.ndarray, bias=None, scale=None, num_threads: int = 0):  # no host threads
    cuda = _module()
    cls = cuda.TopkItemsFloat32 if items.dtype == np.float32 else cuda.TopkItemsFloat64
    return cls(items, bias, scale)


def search(table, queries: np.ndarray, k: int, exclude=None, mask=None, num_threads=0):
    indptr, indices = exclude if exclude is not None else (None, None)
    return table.search(queries, k, indptr, indices, mask, num_threads)
