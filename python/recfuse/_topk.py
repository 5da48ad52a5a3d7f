"""Exact top-k over a dense score block (NumPy): the simple recommend path.

Contract (shared with the later native retrieval kernels): per row, the k best items by
score descending, ties broken by smaller item id, excluded items never returned; when
fewer than k items qualify the row is padded with id -1 and score -inf.
"""

from __future__ import annotations

import numpy as np

# Rows of the score block computed at once: bounds the memory of recommend for big batches.
SCORE_BLOCK_BYTES = 64 << 20


def select_topk(scores: np.ndarray, k: int, allowed: np.ndarray | None = None):
    """Top-k of each row of ``scores`` (modified: disallowed entries become -inf).

    ``allowed`` is an optional boolean mask of the same shape. Returns (ids int64, scores).
    """
    m, n = scores.shape
    ids = np.full((m, k), -1, dtype=np.int64)
    best = np.full((m, k), -np.inf, dtype=scores.dtype)
    if allowed is not None:
        scores[~allowed] = -np.inf
    for row in range(m):
        s = scores[row]
        candidates = np.flatnonzero(s > -np.inf) if allowed is not None else None
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
