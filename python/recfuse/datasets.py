"""Data sets: a deterministic synthetic implicit-feedback generator and MovieLens readers.

MovieLens files are never bundled (their terms forbid redistribution): pass the folder
where you unpacked them, e.g. ``load_movielens("~/data/ml-100k")``.
"""

from __future__ import annotations

import os

import numpy as np
import scipy.sparse as sp

from . import _validation as check


def synthetic_implicit(
    n_users: int = 2000,
    n_items: int = 1000,
    nnz: int = 60_000,
    *,
    clusters: int = 20,
    affinity: float = 0.7,
    popularity_exponent: float = 0.8,
    activity_exponent: float = 0.6,
    seed: int = 0,
    dtype=np.float32,
) -> sp.csr_matrix:
    """A users x items CSR matrix of interaction counts with structure a model can learn.

    Item popularity and user activity follow power laws (Zipf-like weights with the given
    exponents). Items fall into ``clusters`` groups and every user has a favourite group: a
    fraction ``affinity`` of the user's events go to that group, the rest anywhere. Repeated
    (user, item) draws add up, so values are counts >= 1. Exactly ``nnz`` stored entries
    unless the matrix is nearly dense. Deterministic for a given seed.

    >>> m = synthetic_implicit(100, 50, 1000, seed=1)
    >>> m.shape, m.nnz
    ((100, 50), 1000)
    """
    n_users = check.check_int(n_users, "n_users", minimum=1)
    n_items = check.check_int(n_items, "n_items", minimum=1)
    nnz = check.check_int(nnz, "nnz", minimum=0)
    clusters = min(check.check_int(clusters, "clusters", minimum=1), n_items)
    affinity = check.check_float(affinity, "affinity", minimum=0.0)
    if affinity > 1:
        raise ValueError(f"affinity must be in [0, 1], got {affinity}")
    dtype = check.check_float_dtype(dtype)
    rng = np.random.default_rng(seed)

    item_weight = 1.0 / np.arange(1, n_items + 1) ** popularity_exponent
    item_weight = item_weight[rng.permutation(n_items)]  # popularity unrelated to id order
    user_weight = 1.0 / np.arange(1, n_users + 1) ** activity_exponent
    user_weight = user_weight[rng.permutation(n_users)]

    item_cluster = rng.integers(0, clusters, n_items)
    user_cluster = rng.integers(0, clusters, n_users)

    sampler = _ClusteredSampler(rng, user_weight, item_weight, user_cluster, item_cluster, affinity)
    matrix = sp.csr_matrix((n_users, n_items), dtype=dtype)
    target = min(nnz, n_users * n_items)
    # Repeated pairs merge into counts, so draw again until `target` distinct pairs exist
    # (a bounded number of rounds: a nearly dense target may end a little short).
    for _ in range(64):
        if matrix.nnz >= target:
            break
        draws = int((target - matrix.nnz) * 1.1) + 16
        users, items = sampler.draw(draws)
        matrix = matrix + sp.csr_matrix(
            (np.ones(draws, dtype=dtype), (users, items)), shape=(n_users, n_items), dtype=dtype
        )
    if matrix.nnz > target:  # drop a random surplus so the size is exact
        coo = matrix.tocoo()
        keep = np.sort(rng.choice(coo.nnz, size=target, replace=False))
        matrix = sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=(n_users, n_items)
        )
    matrix.sum_duplicates()
    return matrix


class _ClusteredSampler:
    """Draws (user, item) events: users by activity, items by popularity, a share of each
    user's events inside the user's favourite item cluster."""

    def __init__(self, rng, user_weight, item_weight, user_cluster, item_cluster, affinity):
        self.rng, self.affinity = rng, affinity
        self.user_p = user_weight / user_weight.sum()
        self.item_p = item_weight / item_weight.sum()
        self.user_cluster = user_cluster
        self.order = np.argsort(item_cluster, kind="stable")
        clusters = int(max(item_cluster.max(), user_cluster.max())) + 1
        self.bounds = np.searchsorted(item_cluster[self.order], np.arange(clusters + 1))
        self.cumulative = np.concatenate([[0.0], np.cumsum(item_weight[self.order])])

    def draw(self, count: int):
        rng = self.rng
        users = rng.choice(self.user_p.size, size=count, p=self.user_p)
        items = rng.choice(self.item_p.size, size=count, p=self.item_p)
        inside = rng.random(count) < self.affinity
        wanted = self.user_cluster[users[inside]]
        first, last = self.bounds[wanted], self.bounds[wanted + 1]
        has_items = last > first
        low, high = self.cumulative[first], self.cumulative[last]
        position = np.searchsorted(self.cumulative, low + rng.random(wanted.size) * (high - low),
                                   side="right") - 1
        position = np.clip(position, first, np.maximum(last - 1, first))
        redrawn = items[inside]
        redrawn[has_items] = self.order[position[has_items]]
        items[inside] = redrawn
        return users, items


def train_test_split_per_user(matrix: sp.csr_matrix, test_fraction: float = 0.2, seed: int = 0):
    """Split each user's entries at random into train and test CSR matrices (same shape)."""
    test_fraction = check.check_float(test_fraction, "test_fraction", minimum=0.0)
    if test_fraction >= 1:
        raise ValueError(f"test_fraction must be < 1, got {test_fraction}")
    coo = matrix.tocoo()
    rng = np.random.default_rng(seed)
    is_test = rng.random(coo.nnz) < test_fraction
    def part(mask):
        return sp.csr_matrix((coo.data[mask], (coo.row[mask], coo.col[mask])), shape=matrix.shape)
    return part(~is_test), part(is_test)


def load_movielens_100k(path, min_rating: float | None = None):
    """Read ml-100k's ``u.data`` into a users x items CSR of ratings (ids shifted to 0-based).

    ``min_rating`` keeps only ratings >= it (e.g. 4 for implicit-feedback experiments).
    Raises FileNotFoundError naming where to get the data when the folder is missing.
    """
    file = os.path.join(os.path.expanduser(os.fspath(path)), "u.data")
    if not os.path.isfile(file):
        raise FileNotFoundError(
            f"MovieLens 100K not found: expected {file!r}. Download ml-100k.zip from GroupLens "
            "(https://grouplens.org/datasets/movielens/) and unpack it there."
        )
    raw = np.loadtxt(file, dtype=np.int64, delimiter="\t")
    users, items, ratings = raw[:, 0] - 1, raw[:, 1] - 1, raw[:, 2].astype(np.float32)
    keep = ratings >= min_rating if min_rating is not None else np.ones(ratings.size, dtype=bool)
    shape = (int(users.max()) + 1, int(items.max()) + 1)
    return sp.csr_matrix((ratings[keep], (users[keep], items[keep])), shape=shape)
