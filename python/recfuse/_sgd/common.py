"""What every SGD backend module shares: the block layout of the ratings.

A backend module (``recfuse._sgd.<name>``) defines:

``NAME`` and ``availability() -> (bool, str)``
    as the ALS backends do.
``svd_epoch(blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
num_threads)``
    one Funk SVD epoch in place: ``recfuse.reference.svd_sgd_epoch`` over the ratings in
    the order of ``blocks`` (``lr`` and ``reg``: 5-tuples bu, bi, pu, qi, yj).
``svdpp_epoch(blocks, ratings, global_mean, user_bias, item_bias, P, Q, Y, implicit, lr,
reg)``
    one SVD++ epoch in place by user passes over the ratings in array order
    (``reference.svdpp_sgd_epoch``; sequential); ``implicit`` is the users x items
    ``Pattern`` N(u).
``bpr_epoch(blocks, seen, P, Q, item_bias, lr, reg, seed, max_tries, negatives,
num_threads) -> int``
    one BPR epoch in place over the positive pairs of ``blocks``, negatives drawn by
    ``reference.bpr_sample_negatives`` (written to ``negatives``; -1 where skipped);
    returns the number of skipped pairs.
``explicit_als_half_sweep(R, Y, X, other_bias, own_bias, global_mean, reg, reg_bias,
num_threads) -> int``
    one explicit (ratings) ALS half-sweep in place (``reference.explicit_als_half_sweep``):
    ``R`` a ``recfuse._als.common.CsrArrays`` of ratings (rows x cols), ``X`` (and
    ``own_bias`` when biased) rewritten; both biases None when unbiased. Returns the number
    of rows left unchanged because their system was not positive definite.

Arrays are validated and converted before they reach a backend: ids int32, offsets
int64, ratings and factors C-contiguous in the model dtype.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

# Default grid: about this many ratings per block, at most MAX_GRID bins a side. The grid is
# a function of the data only, so results do not depend on the thread count.
RATINGS_PER_BLOCK = 1000
MAX_GRID = 32


class Pattern(NamedTuple):
    """The sparsity pattern of a CSR matrix: sorted column ids per row."""

    indptr: np.ndarray  # int64
    indices: np.ndarray  # int32

    @classmethod
    def from_pairs(cls, rows, cols, n_rows: int, n_cols: int) -> "Pattern":
        matrix = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n_rows, n_cols)
        )
        matrix.sum_duplicates()  # sorts the indices and merges repeated pairs
        return cls(matrix.indptr.astype(np.int64), matrix.indices.astype(np.int32))

    def transpose(self, n_cols: int) -> "Pattern":
        n_rows = self.indptr.size - 1
        rows = np.repeat(np.arange(n_rows), np.diff(self.indptr))
        return Pattern.from_pairs(self.indices, rows, n_cols, n_rows)

    def to_scipy(self, n_cols: int) -> sp.csr_matrix:
        data = np.ones(self.indices.size, dtype=np.float64)
        return sp.csr_matrix((data, self.indices, self.indptr), shape=(self.indptr.size - 1, n_cols))


class Blocks(NamedTuple):
    """Ratings (or positive pairs) grouped by block in schedule order (recfuse/sgd.hpp).

    Block ``s * grid + r`` holds the entries of row bin r and column bin (r + s) mod grid.
    ``order[t]`` is the index, in the caller's arrays, of the entry stored at position t.
    """

    users: np.ndarray  # int32
    items: np.ndarray  # int32
    offsets: np.ndarray  # int64, grid * grid + 1
    grid: int
    order: np.ndarray  # int64
    bin_items: np.ndarray  # int32: the items of column bin c are bin_items[bin_offsets[c]:...]
    bin_offsets: np.ndarray  # int64, grid + 1


def user_major_order(users, n_users: int, rng: np.random.Generator,
                     shuffle: bool = True) -> np.ndarray:
    """An order that keeps each user's entries together (one SVD++ pass per user and epoch):
    users in random order, and each user's entries in random order (``shuffle``) or as given."""
    users = np.asarray(users)
    rank = rng.permutation(n_users)
    order = rng.permutation(users.size) if shuffle else np.arange(users.size)
    return order[np.argsort(rank[users[order]], kind="stable")]


def default_grid(nnz: int) -> int:
    return int(min(MAX_GRID, max(1, math.isqrt(max(nnz, 0) // RATINGS_PER_BLOCK))))


def make_blocks(users, items, n_users: int, n_items: int, grid: int,
                rng: np.random.Generator, shuffle: bool = True, order=None) -> Blocks:
    """Cut the entries (users[t], items[t]) into grid x grid blocks.

    Users and items go to bins by a random permutation (so bins hold similar numbers of
    entries); within a block the entries keep a random order (``shuffle``), their given
    order, or the order ``order`` (indices into the arrays). grid = 1 keeps every entry in
    one block: plain sequential SGD.
    """
    users = np.asarray(users)
    items = np.asarray(items)
    user_bin = (rng.permutation(n_users).astype(np.int64) * grid) // max(n_users, 1)
    item_bin = (rng.permutation(n_items).astype(np.int64) * grid) // max(n_items, 1)
    if order is None:
        order = rng.permutation(users.size) if shuffle else np.arange(users.size)
    row, col = user_bin[users[order]], item_bin[items[order]]
    block = ((col - row) % grid) * grid + row
    # A stable sort of small integers is a radix sort in NumPy: much faster than on int64.
    key = block.astype(np.int16) if grid * grid <= np.iinfo(np.int16).max else block
    order = order[np.argsort(key, kind="stable")]
    offsets = np.zeros(grid * grid + 1, dtype=np.int64)
    np.cumsum(np.bincount(block, minlength=grid * grid), out=offsets[1:])
    bin_items = np.argsort(item_bin, kind="stable").astype(np.int32)
    bin_offsets = np.zeros(grid + 1, dtype=np.int64)
    np.cumsum(np.bincount(item_bin, minlength=grid), out=bin_offsets[1:])
    return Blocks(
        users=np.ascontiguousarray(users[order], dtype=np.int32),
        items=np.ascontiguousarray(items[order], dtype=np.int32),
        offsets=offsets,
        grid=int(grid),
        order=order.astype(np.int64),
        bin_items=bin_items,
        bin_offsets=bin_offsets,
    )
