"""What every top-k backend must satisfy, checked against recfuse.reference.

``assert_topk_matches`` accepts any result that is correct under floating-point rounding:
the scores match the reference within ``tol``, where two backends may order items
differently only if their reference scores tie within ``tol``; with exact arithmetic
(``exact=True``: small integers), ids and scores must equal the reference's exactly.
"""

from __future__ import annotations

import numpy as np

from recfuse import reference


def assert_topk_matches(ids, scores, queries, items, k, *, exclude=None, mask=None,
                        item_bias=None, item_scale=None, exact=False, tol=None):
    ids = np.asarray(ids)
    scores = np.asarray(scores)
    m = np.asarray(queries).shape[0]
    assert ids.shape == scores.shape == (m, k), (ids.shape, scores.shape, (m, k))
    assert ids.dtype == np.int64
    S = reference.topk_scores(queries, items, item_bias, item_scale)
    ok = reference.topk_qualifying(S, exclude, mask)
    ref_ids, ref_scores = reference.topk(queries, items, k, exclude=exclude, mask=mask,
                                         item_bias=item_bias, item_scale=item_scale)
    if exact:
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_array_equal(scores.astype(np.float64), ref_scores)
        return
    if tol is None:
        eps = np.finfo(scores.dtype).eps if scores.dtype.kind == "f" else 1e-12
        magnitude = np.abs(np.asarray(queries, np.float64)) @ np.abs(np.asarray(items, np.float64)).T
        if item_scale is not None:
            magnitude = magnitude * np.abs(np.asarray(item_scale, np.float64))
        if item_bias is not None:
            magnitude = magnitude + np.abs(np.asarray(item_bias, np.float64))
        d = np.asarray(items).shape[1]
        tol = 4 * (d + 2) * eps * np.nan_to_num(magnitude, posinf=0.0, nan=0.0).max(initial=0.0)
        tol = max(tol, 1e-30)
    for i in range(m):
        count = int(ok[i].sum())
        take = min(k, count)
        row_ids, row_scores = ids[i], scores[i]
        context = f"query {i}: ids {row_ids}, scores {row_scores}, reference {ref_ids[i]}"
        # Padding after the qualifying items, and only there.
        assert (row_ids[take:] == -1).all() and np.isneginf(row_scores[take:]).all(), context
        chosen = row_ids[:take]
        assert (chosen >= 0).all(), context
        assert np.unique(chosen).size == take, f"{context}: an id twice"
        assert ok[i, chosen].all(), f"{context}: an item that does not qualify"
        # Each score is the item's score; the row is sorted, ties by smaller id.
        np.testing.assert_allclose(row_scores[:take].astype(np.float64), S[i, chosen], rtol=0,
                                   atol=tol, err_msg=context)
        s = row_scores[:take]
        assert (s[:-1] >= s[1:]).all(), f"{context}: not sorted by score"
        same = s[:-1] == s[1:]
        assert (chosen[:-1][same] < chosen[1:][same]).all(), f"{context}: ties not by id"
        # Nothing left out scores above the last one chosen (beyond rounding).
        if take:
            left_out = ok[i].copy()
            left_out[chosen] = False
            if left_out.any():
                assert S[i, left_out].max() <= S[i, chosen].min() + 2 * tol, \
                    f"{context}: a better item was left out"


def oracle_topk(scores, allowed, k):
    """The contract by a full sort, independent of recfuse.reference: (ids, scores) of the k
    best allowed items per row (score descending, ties by smaller id), padded -1 / -inf."""
    ids = np.full((len(scores), k), -1, np.int64)
    out = np.full((len(scores), k), -np.inf)
    for r in range(len(scores)):
        best = sorted(np.flatnonzero(allowed[r]), key=lambda i: (-scores[r, i], i))[:k]
        ids[r, :len(best)], out[r, :len(best)] = best, scores[r, best]
    return ids, out
