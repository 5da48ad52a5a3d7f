"""Train/test splits of ``recfuse.Interactions`` (or a users x items CSR matrix).

Every split assigns each stored (user, item) pair to exactly one side, keeps the id maps
(so ``train.matrix`` and ``test.matrix`` have the same shape and ints), and is seeded:

- ``random_split``: a random ``test_fraction`` of all pairs;
- ``per_user_split``: a random ``test_fraction`` of each user's pairs (train keeps at least
  ``min_train`` per user);
- ``leave_last_n``: each user's ``n`` latest pairs, for users with at least n + min_train;
- ``temporal_split``: one global cut in time; everything before it trains, the rest tests.

With timestamps, a pair's time is that of its latest event, so the time-based splits never
train on anything later than what they test (per user, or globally for the cut).
``drop_cold=True`` also removes test pairs whose user or item has no pair in train. A CSR
matrix comes back as two CSR matrices of its shape whose values are float32 (Interactions'
storage), whatever its own dtype. A weighted Interactions (``weighted("bm25")``, ...) splits
its pairs and weighs each part from its own pairs, so train's weights (idf, row lengths)
know nothing of the test pairs; a CSR matrix's values are split as they are.

>>> import recfuse
>>> from recfuse import split
>>> log = recfuse.Interactions.from_arrays([1, 1, 1, 2, 2], [1, 2, 3, 1, 3])
>>> train, test = split.per_user_split(log, 0.5, seed=0)
>>> train.shape == test.shape == log.shape, train.nnz + test.nnz
(True, 5)
"""

from __future__ import annotations

from typing import Any, overload

import numpy as np
import scipy.sparse as sp

from . import _validation as check
from .interactions import Interactions, _times_ns
from ._typing import Integer, RandomState, SparseMatrix

class _DefaultSeed(int):
    """The seeds' default, 0, told apart from a 0 the caller gave (``_rng``)."""

    def __repr__(self) -> str:
        return "0"


_DEFAULT_SEED: Any = _DefaultSeed(0)

# Each split returns (train, test) in the form given: two Interactions, or for a sparse matrix
# two CSR matrices (the overloads say so to type checkers).


@overload
def random_split(data: Interactions, test_fraction: float = 0.2, *,
                 seed: RandomState = _DEFAULT_SEED, drop_cold: bool = False,
                 random_state: RandomState = None
                 ) -> tuple[Interactions, Interactions]: ...


@overload
def random_split(data: SparseMatrix, test_fraction: float = 0.2, *,
                 seed: RandomState = _DEFAULT_SEED, drop_cold: bool = False,
                 random_state: RandomState = None
                 ) -> tuple[sp.csr_matrix, sp.csr_matrix]: ...


def random_split(data: Interactions | SparseMatrix, test_fraction: float = 0.2, *,
                 seed: RandomState = _DEFAULT_SEED, drop_cold: bool = False,
                 random_state: RandomState = None
                 ) -> tuple[Interactions, Interactions] | tuple[sp.csr_matrix, sp.csr_matrix]:
    """A random ``test_fraction`` of all pairs (exactly fraction x pairs, rounded half up) to
    test. ``random_state``: another name for ``seed`` (as in the models, scikit-learn and
    implicit)."""
    drop_cold = check.check_flag(drop_cold, "drop_cold")
    interactions, as_matrix = _as_interactions(data)
    fraction = _fraction(test_fraction)
    rng = _rng(seed, random_state)
    test = np.zeros(interactions.nnz, dtype=bool)
    count = int(_rounded_count(fraction, interactions.nnz))
    test[rng.permutation(interactions.nnz)[:count]] = True
    return _finish(interactions, test, drop_cold, as_matrix)


@overload
def per_user_split(data: Interactions, test_fraction: float = 0.2, *,
                   seed: RandomState = _DEFAULT_SEED, min_train: Integer = 1,
                   drop_cold: bool = False,
                   random_state: RandomState = None) -> tuple[Interactions, Interactions]: ...


@overload
def per_user_split(data: SparseMatrix, test_fraction: float = 0.2, *,
                   seed: RandomState = _DEFAULT_SEED, min_train: Integer = 1,
                   drop_cold: bool = False,
                   random_state: RandomState = None) -> tuple[sp.csr_matrix, sp.csr_matrix]: ...


def per_user_split(data: Interactions | SparseMatrix, test_fraction: float = 0.2, *,
                   seed: RandomState = _DEFAULT_SEED, min_train: Integer = 1,
                   drop_cold: bool = False, random_state: RandomState = None
                   ) -> tuple[Interactions, Interactions] | tuple[sp.csr_matrix, sp.csr_matrix]:
    """A random fraction x n_u (rounded half up) of each user's n_u pairs to test, leaving at
    least ``min_train`` of them in train. ``random_state``: another name for ``seed``."""
    drop_cold = check.check_flag(drop_cold, "drop_cold")
    interactions, as_matrix = _as_interactions(data)
    fraction = _fraction(test_fraction)
    min_train = check.check_int(min_train, "min_train", minimum=0)
    rng = _rng(seed, random_state)
    per_user = np.diff(interactions._indptr)
    keep = min(min_train, int(per_user.max(initial=0)))  # a Python int past int64 overflows
    wanted = np.minimum(_rounded_count(fraction, per_user), np.maximum(per_user - keep, 0))
    rank = _rank_within_user(interactions, rng.random(interactions.nnz))
    test = rank < np.repeat(wanted, per_user)
    return _finish(interactions, test, drop_cold, as_matrix)


def _rounded_count(fraction: float, n):
    """fraction x n rounded half up (both random splits round alike), the product rounded to 9
    places first so that 0.7 x 45 = 31.499999999999996 counts as the exact 31.5 (32 pairs)."""
    return np.floor(np.round(fraction * np.asarray(n, dtype=np.float64), 9) + 0.5)


def leave_last_n(data: Interactions, n: Integer = 1, *, min_train: Integer = 1,
                 seed: RandomState = _DEFAULT_SEED, drop_cold: bool = False,
                 random_state: RandomState = None
                 ) -> tuple[Interactions, Interactions]:  # a matrix has no times: refused
    """Each user's ``n`` latest pairs to test (users with fewer than n + ``min_train`` pairs
    stay wholly in train). Pairs with equal times are ordered at random (seeded;
    ``random_state`` is another name for ``seed``)."""
    drop_cold = check.check_flag(drop_cold, "drop_cold")
    interactions, as_matrix = _as_interactions(data, need_times="leave_last_n")
    n = check.check_int(n, "n", minimum=1)
    min_train = check.check_int(min_train, "min_train", minimum=0)
    rng = _rng(seed, random_state)
    per_user = np.diff(interactions._indptr)
    # rank 0 = the latest pair; ties by a random key
    rank = _rank_within_user(interactions, rng.random(interactions.nnz), -interactions._times)
    eligible = np.repeat(per_user >= n + min_train, per_user)
    return _finish(interactions, eligible & (rank < n), drop_cold, as_matrix)


def temporal_split(data: Interactions,  # a matrix has no times: refused
                   cut: Any = None, *,  # a datetime, np.datetime64, str or seconds, or None
                   test_fraction: float | None = None, drop_cold: bool = False
                   ) -> tuple[Interactions, Interactions]:
    """Pairs whose time is >= ``cut`` to test, the rest to train. ``cut`` is a datetime,
    a string pandas parses, or seconds since the epoch; or give ``test_fraction`` to cut
    at the time of the floor(fraction x pairs)-th latest pair (pairs at the cut time all go
    to test; none when fraction x pairs < 1)."""
    drop_cold = check.check_flag(drop_cold, "drop_cold")
    interactions, as_matrix = _as_interactions(data, need_times="temporal_split")
    if (cut is None) == (test_fraction is None):
        raise ValueError("give exactly one of cut and test_fraction")
    times = interactions._times
    if cut is None:
        fraction = _fraction(test_fraction)
        ordered = np.sort(times)
        # floor(fraction · n) pairs from the end; rounded to 9 places first, so that
        # 0.57 · 100 = 56.99999999999999 counts as 57. None of them (fraction · n < 1, or no
        # pairs at all): a cut after every time.
        count = int(np.floor(round(fraction * times.size, 9)))
        if not count:  # no cut time lies after every time (int64's largest is one)
            return _finish(interactions, np.zeros(times.size, dtype=bool), drop_cold,
                           as_matrix)
        cut_ns = ordered[times.size - count]
    else:
        if np.ndim(cut) != 0:
            raise TypeError(f"cut must be one time (a datetime, a string or seconds since the "
                            f"epoch), got {type(cut).__name__} of shape {np.shape(cut)}")
        cut_ns = int(_times_ns(np.atleast_1d(np.asarray(cut)), "cut")[0])
    return _finish(interactions, times >= cut_ns, drop_cold, as_matrix)


# ---------------------------------------------------------------------------- helpers
def _rng(seed, random_state) -> np.random.Generator:
    """The generator of ``seed``, or of ``random_state`` (the models' name for it, and
    scikit-learn's and implicit's) when that is given; both given is a TypeError."""
    if random_state is None:
        return check.seeded_rng(seed)
    if type(seed) is not _DefaultSeed:  # the default, or a copy of it (pickle, deepcopy)
        raise TypeError(f"give seed or random_state (another name for it), not both: got "
                        f"seed={seed!r:.60} and random_state={random_state!r:.60}")
    return check.seeded_rng(random_state, "random_state")


def _as_interactions(data, need_times: str | None = None):
    if isinstance(data, Interactions):
        interactions, as_matrix = data, False
    elif sp.issparse(data):
        interactions, as_matrix = Interactions.from_matrix(data), True
    else:
        raise TypeError(f"data must be recfuse.Interactions or a scipy.sparse matrix, got "
                        f"{type(data).__module__}.{type(data).__name__}")
    if need_times and interactions._times is None:
        raise ValueError(f"{need_times} needs timestamps: build the Interactions with "
                         "timestamp=... (a plain matrix has none)")
    return interactions, as_matrix


def _fraction(value) -> float:
    value = check.check_float(value, "test_fraction", minimum=0.0)
    if value >= 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {value}")
    return value


def _rank_within_user(interactions: Interactions, tie_break, key=None) -> np.ndarray:
    """Position of each pair among its user's pairs when sorted by (key, tie_break)."""
    users = interactions.user_codes
    keys = (tie_break, users) if key is None else (tie_break, key, users)
    order = np.lexsort(keys)
    rank = np.empty(interactions.nnz, dtype=np.int64)
    rank[order] = np.arange(interactions.nnz) - interactions._indptr[users[order]]
    return rank


def _finish(interactions: Interactions, test: np.ndarray, drop_cold: bool, as_matrix: bool):
    train_part = interactions.subset(~test)
    if drop_cold:
        users = np.diff(train_part._indptr) > 0
        items = np.bincount(train_part._indices, minlength=interactions.n_items) > 0
        test = test & users[interactions.user_codes] & items[interactions._indices]
    test_part = interactions.subset(test)
    if as_matrix:
        return train_part.matrix, test_part.matrix
    return train_part, test_part
