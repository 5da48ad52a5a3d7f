"""Top-k backends, one module per backend (see recfuse._backend.FAMILIES).

Each module implements the contract of ``recfuse.reference.topk`` through two functions:

``prepare(items, bias, scale) -> table``
    items: C-contiguous float32/float64 n x d; bias, scale: None or n-vectors of the same
    dtype. The returned table may keep references to the arrays (the CPU does) or copies
    (the GPU keeps them on the device); the caller must not change them while in use.
``search(table, queries, k, exclude, mask, num_threads) -> (ids, scores)``
    queries: C-contiguous m x d in the table's dtype, finite; k >= 1; exclude: None or
    (indptr int64 m+1, indices int32) with each row's indices sorted ascending (repeats
    allowed); mask: None or uint8 n (1 = may be returned). Returns ids int64 m x k and
    scores m x k in the table's dtype, padded with -1 / -inf.
"""
