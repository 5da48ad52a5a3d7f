"""recfuse.split: every split partitions the pairs, is seeded, and never trains on the
future of what it tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

from recfuse import datasets, split
from recfuse.interactions import Interactions


@st.composite
def logs(draw):
    n = draw(st.integers(1, 60))
    users = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    seconds = draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))
    return Interactions.from_arrays(users, items, timestamps=np.array(seconds))


def pairs(interactions):
    return set(zip(interactions.user_codes.tolist(), interactions._indices.tolist()))


def check_partition(log, train, test):
    assert train.shape == test.shape == log.shape
    assert train.user_ids == log.user_ids and test.item_ids == log.item_ids
    assert not pairs(train) & pairs(test)
    assert pairs(train) | pairs(test) == pairs(log)


@given(logs(), st.floats(0, 0.9), st.integers(0, 3))
def test_random_and_per_user(log, fraction, seed):
    for splitter in (split.random_split, split.per_user_split):
        train, test = splitter(log, fraction, seed=seed)
        check_partition(log, train, test)
        again = splitter(log, fraction, seed=seed)
        assert pairs(again[1]) == pairs(test)
    train, test = split.per_user_split(log, fraction, seed=seed, min_train=1)
    per_user = np.diff(log._indptr)
    in_test = np.bincount(test.user_codes, minlength=log.n_users)
    half_up = lambda x: np.floor(np.round(x, 9) + 0.5)  # noqa: E731 - both splits round so
    expected = np.minimum(half_up(fraction * per_user), np.maximum(per_user - 1, 0))
    np.testing.assert_array_equal(in_test, expected)
    _, random_test = split.random_split(log, fraction, seed=seed)
    assert random_test.nnz == int(half_up(fraction * log.nnz))


@given(logs(), st.integers(1, 3), st.integers(0, 2))
def test_leave_last_n_never_trains_on_later(log, n, min_train):
    train, test = split.leave_last_n(log, n, min_train=min_train, seed=1)
    check_partition(log, train, test)
    for user in range(log.n_users):
        train_times = train._times[train.user_codes == user]
        test_times = test._times[test.user_codes == user]
        total = train_times.size + test_times.size
        assert test_times.size == (n if total >= n + min_train else 0)
        if train_times.size and test_times.size:
            assert train_times.max() <= test_times.min()


@given(logs(), st.floats(0.05, 0.9))
def test_temporal_cut(log, fraction):
    train, test = split.temporal_split(log, test_fraction=fraction)
    check_partition(log, train, test)
    if train.nnz and test.nnz:
        assert train._times.max() < test._times.min()
    cut = np.datetime64(10, "s")
    train, test = split.temporal_split(log, cut)
    assert (train._times < 10 * 10**9).all() and (test._times >= 10 * 10**9).all()


def test_bad_split_arguments_are_named():
    matrix = datasets.synthetic_implicit(50, 20, 300, seed=0)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        split.random_split(matrix, 0.2, seed=-1)
    log = Interactions.from_arrays([0, 1], [1, 0], timestamps=[1, 2])
    with pytest.raises(TypeError, match="cut must be one time"):
        split.temporal_split(log, [1, 2])


def test_drop_cold_and_matrices():
    matrix = datasets.synthetic_implicit(200, 80, 3000, seed=0)
    train, test = split.per_user_split(matrix, 0.3, seed=0)
    assert train.shape == test.shape == matrix.shape
    assert train.nnz + test.nnz == matrix.nnz and train.multiply(test).nnz == 0
    log = Interactions.from_arrays([1, 1, 2, 3], [1, 2, 2, 3],
                                   timestamps=pd.to_datetime(["2024-01-01", "2024-01-02",
                                                              "2024-01-03", "2024-01-04"]))
    _, test = split.temporal_split(log, "2024-01-02")
    assert test.nnz == 3
    _, warm = split.temporal_split(log, "2024-01-02", drop_cold=True)
    assert pairs(warm) == set()  # users 2, 3 and item 3 never trained; item 2 by user 1 only
    _, warm = split.temporal_split(log, "2024-01-02T12:00", drop_cold=True)
    assert warm.nnz == 0


def test_bad_input():
    log = Interactions.from_arrays([1, 2], [1, 2])
    with pytest.raises(ValueError, match="needs timestamps"):
        split.leave_last_n(log)
    with pytest.raises(ValueError, match="test_fraction must be in"):
        split.random_split(log, 1.0)
    with pytest.raises(TypeError, match="Interactions or a scipy.sparse"):
        split.per_user_split(np.eye(3))
    timed = Interactions.from_arrays([1, 2], [1, 2], timestamps=[1, 2])
    with pytest.raises(ValueError, match="exactly one"):
        split.temporal_split(timed)
    with pytest.raises(ValueError, match="do not parse"):
        split.temporal_split(timed, "not a date")


@pytest.mark.parametrize("n, fraction", [(10, 0.7), (100, 0.57), (100, 0.58), (1000, 0.85),
                                         (10, 0.1), (7, 0.5)])
def test_temporal_fraction_counts_exactly(n, fraction):
    """floor(fraction · n) of n distinct times go to test, whatever the float rounding of
    the product (0.57 · 100 = 56.99999999999999)."""
    log = Interactions.from_arrays(np.arange(n), np.zeros(n, np.int64),
                                   timestamps=np.arange(n) * 100)
    _, test = split.temporal_split(log, test_fraction=fraction)
    assert test.nnz == int(np.floor(round(fraction * n, 9)))


@pytest.mark.parametrize("n, fraction", [(10, 0.05), (3, 0.2), (100, 0.001), (1, 0.5)])
def test_temporal_fraction_below_one_pair_tests_nothing(n, fraction):
    """floor(fraction · n) = 0 pairs to test: the cut used to fall on the latest time and
    test it (with n = 1, the whole log)."""
    log = Interactions.from_arrays(np.arange(n), np.zeros(n, np.int64),
                                   timestamps=np.arange(n) * 100)
    train, test = split.temporal_split(log, test_fraction=fraction)
    assert (train.nnz, test.nnz) == (n, 0)


def test_temporal_fraction_of_no_pairs():
    """An empty part of an earlier split splits again into two empty parts (was an
    IndexError)."""
    log = Interactions.from_arrays([1, 2], [1, 2], timestamps=[1, 2])
    empty = log.subset(np.zeros(log.nnz, dtype=bool))
    train, test = split.temporal_split(empty, test_fraction=0.5)
    assert (train.nnz, test.nnz) == (0, 0) and train.shape == test.shape == log.shape


def test_both_random_splits_round_half_up_as_the_exact_product_would():
    """0.25 x 2 pairs = 0.5 and 0.7 x 45 = 31.499999999999996 in floating point (exactly 31.5):
    one and 32 pairs to test, in random_split and in per_user_split alike."""
    for fraction, n, want in ((0.25, 2, 1), (0.7, 45, 32), (0.5, 5, 3)):
        matrix = sp.csr_matrix(np.ones((1, n), np.float32))
        assert split.random_split(matrix, fraction)[1].nnz == want
        assert split.per_user_split(matrix, fraction, min_train=0)[1].nnz == want


def test_random_state_is_another_name_for_seed():
    """The models, MLPRanker and the splits of scikit-learn and implicit call the seed
    random_state; the splits here took only seed= (TypeError: unexpected keyword)."""
    log = Interactions.from_arrays(np.repeat(np.arange(20), 5), np.tile(np.arange(5), 20),
                                   timestamps=np.repeat(np.arange(5), 20))
    for function, options in ((split.random_split, {"test_fraction": 0.3}),
                              (split.per_user_split, {"test_fraction": 0.3}),
                              (split.leave_last_n, {"n": 1})):
        for seed in (3, np.random.default_rng(3)):
            by_seed = function(log, seed=seed, **options)
            again = np.random.default_rng(3) if not isinstance(seed, int) else seed
            by_name = function(log, random_state=again, **options)
            assert pairs(by_seed[1]) == pairs(by_name[1]), function.__name__
        with pytest.raises(TypeError, match="give seed or random_state"):
            function(log, seed=1, random_state=2, **options)
        with pytest.raises(TypeError, match="random_state must be an integer >= 0"):
            function(log, random_state="x", **options)
    matrix = datasets.synthetic_implicit(30, 20, 200, seed=0)
    assert (split.per_user_split(matrix, 0.2, random_state=1)[1]
            != split.per_user_split(matrix, 0.2, seed=1)[1]).nnz == 0
