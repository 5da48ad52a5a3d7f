"""The native CPU top-k backend: recfuse._core.TopkItemsFloat32/64 (C++17, OpenMP, runtime
SIMD level). The item table is packed once into SIMD-friendly panels (a copy: the caller's
array may change afterwards, except with bfloat16 storage, which scores its candidates again
from the caller's float32 table). bfloat16 storage runs on AVX512-BF16 dot products where the
CPU has them (recfuse._core.topk_bfloat16_kernel() says which kernel is in use)."""

from __future__ import annotations

import numpy as np

from .._als.cpu import _core, availability  # noqa: F401 - the same probe as the ALS family

NAME = "cpu"
BFLOAT16 = True  # supports ItemIndex(storage="bfloat16")


def bfloat16_dot() -> bool:
    """Whether bfloat16 storage multiplies natively (AVX512-BF16 dot products), rather than
    widening each value to float32 first."""
    return _core.topk_bfloat16_kernel() == "dot"


def prepare(items: np.ndarray, bias=None, scale=None, num_threads: int = 0,
            bfloat16: bool = False):
    cls = _core.TopkItemsFloat32 if items.dtype == np.float32 else _core.TopkItemsFloat64
    return cls(items, bias, scale, num_threads=num_threads, bfloat16=bfloat16)


def search(table, queries: np.ndarray, k: int, exclude=None, mask=None, num_threads=0):
    indptr, indices = exclude if exclude is not None else (None, None)
    return table.search(queries, k, indptr, indices, mask, num_threads)
