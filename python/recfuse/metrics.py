"""Ranking metrics over all users, with the definitions of ``implicit.evaluation``.

For each user with at least one test item: hits = recommended ids found in the user's test
row. precision@k sums hits over users and divides by Σ min(k, |test_u|); NDCG@k averages
DCG/IDCG with gains 1/log2(rank + 2) and IDCG over min(k, |test_u|) positions.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def ranking_metrics_at_k(model, train: sp.csr_matrix, test: sp.csr_matrix, k: int = 10,
                         batch_size: int = 1024) -> dict[str, float]:
    """precision@k and ndcg@k of ``model.recommend`` (seen items from ``train`` filtered)."""
    test = sp.csr_matrix(test)
    users = np.flatnonzero(np.diff(test.indptr) > 0)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    hits_total, relevant_total, ndcg_total = 0.0, 0.0, 0.0
    for begin in range(0, users.size, batch_size):
        batch = users[begin : begin + batch_size]
        ids, _ = model.recommend(batch, train[batch], k=k, filter_seen=True)
        for row, user in enumerate(batch):
            liked = test.indices[test.indptr[user] : test.indptr[user + 1]]
            hit = np.isin(ids[row], liked)
            relevant = min(k, liked.size)
            hits_total += hit.sum()
            relevant_total += relevant
            ndcg_total += (discounts * hit).sum() / discounts[:relevant].sum()
    count = max(users.size, 1)
    return {
        "precision": hits_total / relevant_total if relevant_total else 0.0,
        "ndcg": ndcg_total / count,
    }
