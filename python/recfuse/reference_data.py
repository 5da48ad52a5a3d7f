"""The NumPy contracts of the data-path kernels: plain, readable and slow.

``group_events`` is what ``recfuse._core.group_events`` computes (ingestion), and
``ranking_metrics`` / ``intra_list_diversity`` what the native evaluation kernels compute.
Tests compare the native kernels with these on random inputs.
"""

from __future__ import annotations

import numpy as np

RANKING_COLUMNS = ("hits", "relevant", "average_precision", "ndcg", "auc", "reciprocal_rank",
                   "recall", "hit")


def group_events(users, items, values=None, times=None, multiplicity=None, *, n_users: int,
                 n_items: int, combine: str = "sum"):
    """Group events into (user, item) pairs, rows by user and items ascending.

    A pair's value combines its events: ``sum`` of values, ``max`` value, ``last`` (the value
    of the event with the largest time; equal times or no times: the later one in input
    order) or ``count`` (Σ multiplicity). Each pair also gets its number of events
    (Σ multiplicity, 1 per event by default) and its latest time.
    Returns (indptr, indices, values, counts, times or None).
    """
    users, items = np.asarray(users, np.int64), np.asarray(items, np.int64)
    n = users.size
    values = np.ones(n) if values is None else np.asarray(values, np.float64)
    weight = np.ones(n, np.int64) if multiplicity is None else np.asarray(multiplicity, np.int64)
    stamp = np.zeros(n, np.int64) if times is None else np.asarray(times, np.int64)
    pairs: dict[tuple[int, int], list[int]] = {}
    for event in range(n):
        pairs.setdefault((int(users[event]), int(items[event])), []).append(event)
    keys = sorted(pairs)
    out_values, out_counts, out_times = [], [], []
    for key in keys:
        events = pairs[key]
        if combine == "sum":
            value = values[events].sum()
        elif combine == "max":  # +0.0 beats -0.0 (IEEE 754-2019 maximum)
            value = values[events].max()
            if value == 0 and not np.signbit(values[events][values[events] == 0]).all():
                value = 0.0
        elif combine == "count":
            value = float(weight[events].sum())
        elif combine == "last":
            latest = max(events, key=lambda e: (stamp[e], e))
            value = values[latest]
        else:
            raise ValueError(f"unknown combine {combine!r}")
        out_values.append(value)
        out_counts.append(weight[events].sum())
        out_times.append(stamp[events].max())
    rows = np.array([k[0] for k in keys], dtype=np.int64)
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.add.at(indptr, rows + 1, 1)
    return (np.cumsum(indptr), np.array([k[1] for k in keys], dtype=np.int32),
            np.array(out_values, dtype=np.float64), np.array(out_counts, dtype=np.int64),
            None if times is None else np.array(out_times, dtype=np.int64))


def ranking_metrics(recommended, rows, test_indptr, test_indices, n_items: int) -> np.ndarray:
    """Per-row ranking metrics, columns as in ``RANKING_COLUMNS``.

    For recommendation row r (k ids; ids outside [0, n_items) are empty slots) against the
    test items T of row ``rows[r]`` (non-empty): hits = ids found in T; relevant =
    min(k, |T|); average precision = Σ over hit ranks r of (hits up to r) / (r + 1), divided
    by relevant; NDCG = Σ_hits 1/log2(r + 2) over Σ_{r < relevant} 1/log2(r + 2); AUC as
    implicit.evaluation computes it (positives T, negatives the other n_items - |T| items,
    items outside the list ranked below it, unlisted positives counted half); reciprocal
    rank of the first hit (0 without one); recall = hits / |T|; hit = [hits > 0].
    """
    recommended = np.asarray(recommended)
    out = np.zeros((recommended.shape[0], len(RANKING_COLUMNS)))
    k = recommended.shape[1]
    for r, ids in enumerate(recommended):
        row = rows[r]
        liked = set(np.asarray(test_indices[test_indptr[row]:test_indptr[row + 1]]).tolist())
        positives, negatives = len(liked), n_items - len(liked)
        hits = misses = 0
        average_precision = dcg = auc = reciprocal = 0.0
        for rank, item in enumerate(ids.tolist()):
            if not 0 <= item < n_items:  # -1 pads a short list: no item at all
                continue
            if item in liked:
                hits += 1
                average_precision += hits / (rank + 1)
                dcg += 1 / np.log2(rank + 2)
                reciprocal = reciprocal or 1 / (rank + 1)
            else:
                misses += 1
                auc += hits
        auc += (hits + positives) / 2 * (negatives - misses)
        relevant = min(k, positives)
        ideal = sum(1 / np.log2(rank + 2) for rank in range(relevant))
        out[r] = (hits, relevant, average_precision / relevant, dcg / ideal,
                  auc / (positives * negatives) if negatives else np.nan, reciprocal,
                  hits / positives, float(hits > 0))
    return out


def intra_list_diversity(recommended, vectors) -> np.ndarray:
    """Per row: mean over pairs of valid ids of 1 - cosine(v_a, v_b); NaN below two ids.
    A zero vector has cosine 0 with every vector."""
    vectors = np.asarray(vectors, dtype=np.float64)
    # Divided by the largest magnitude first: subnormal or huge rows keep their direction.
    largest = np.abs(vectors).max(axis=1, initial=0.0)
    scaled = vectors / np.where(largest > 0, largest, 1.0)[:, None]
    norms = np.linalg.norm(scaled, axis=1)
    unit = scaled / np.where(norms > 0, norms, 1.0)[:, None]
    out = np.full(len(recommended), np.nan)
    for r, ids in enumerate(np.asarray(recommended)):
        valid = ids[(ids >= 0) & (ids < len(vectors))]
        if valid.size < 2:
            continue
        cosine = unit[valid] @ unit[valid].T
        upper = np.triu_indices(valid.size, 1)
        out[r] = np.mean(1 - cosine[upper])
    return out
