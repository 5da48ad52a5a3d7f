"""recfuse.datasets: the synthetic generators and the MovieLens readers."""

from __future__ import annotations

import os

import numpy as np
import pytest

from recfuse import datasets
from recfuse.interactions import Interactions

from conftest import DATASETS


def test_synthetic_explicit_shape_range_and_seed():
    a = datasets.synthetic_explicit(300, 80, 5000, seed=3)
    b = datasets.synthetic_explicit(300, 80, 5000, seed=3)
    c = datasets.synthetic_explicit(300, 80, 5000, seed=4)
    assert a.shape == (300, 80) and a.nnz == 5000 and a.has_canonical_format
    assert a.dtype == np.float32 and set(np.unique(a.data)) <= {1, 2, 3, 4, 5}
    assert (a != b).nnz == 0 and (a != c).nnz > 0
    dense = datasets.synthetic_explicit(5, 4, 100, seed=0)  # more than fits: all 20 cells
    assert dense.nnz == 20


def test_synthetic_explicit_has_learnable_structure():
    ratings = datasets.synthetic_explicit(2000, 300, 60_000, seed=0, noise=0.3)
    coo = ratings.tocoo()
    user_mean = np.bincount(coo.row, coo.data, 2000) / np.maximum(np.bincount(coo.row, None, 2000), 1)
    item_mean = np.bincount(coo.col, coo.data, 300) / np.maximum(np.bincount(coo.col, None, 300), 1)
    baseline = np.sqrt(np.mean((coo.data - coo.data.mean()) ** 2))
    biased = np.sqrt(np.mean((coo.data - (user_mean[coo.row] + item_mean[coo.col]
                                           - coo.data.mean())) ** 2))
    assert biased < 0.95 * baseline


def test_synthetic_event_log_ingests():
    log = datasets.synthetic_event_log(200, 50, 3000, seed=1)
    again = datasets.synthetic_event_log(200, 50, 3000, seed=1)
    assert all(np.array_equal(log[c], again[c]) for c in log)
    interactions = Interactions.from_events(log, timestamp="timestamp", event="event",
                                            event_weights={"view": 1, "click": 2, "purchase": 5})
    assert interactions.n_events == 3000 and interactions.timestamps is not None
    assert set(np.unique(log["event"])) == {"view", "click", "purchase"}


@pytest.mark.parametrize("name, shape, nnz", [("ml-100k", (943, 1682), 100_000),
                                              ("ml-latest-small", (610, 9724), 100_836)])
def test_load_movielens(name, shape, nnz):
    path = os.path.join(DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"{name} not found at {path}")
    log = datasets.load_movielens(path)
    assert log.shape == shape and log.nnz == nnz and log.timestamps is not None
    assert 0.5 <= log.matrix.data.min() and log.matrix.data.max() <= 5
    liked = datasets.load_movielens(path, min_rating=4)
    assert liked.nnz < nnz and liked.matrix.data.min() >= 4


def test_load_movielens_dat_format(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n"
                                          "2::10::4::978301968\n")
    log = datasets.load_movielens(tmp_path)
    assert log.shape == (2, 2) and log.matrix.toarray().tolist() == [[5, 3], [4, 0]]
    assert str(log.timestamps.min()) == "2000-12-31T22:12:40.000000000"  # 978300760 s, UTC


def test_load_movielens_missing_folder_says_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="grouplens.org"):
        datasets.load_movielens(tmp_path / "nothing-here")


@pytest.mark.parametrize("call, error, match", [
    (lambda: datasets.synthetic_implicit(10, 10, 10, seed=-1), ValueError, "seed must be >= 0"),
    (lambda: datasets.synthetic_implicit(10, 10, 10, seed="a"), TypeError,
     "seed must be an integer"),
    (lambda: datasets.synthetic_implicit(10**11, 10, 10), ValueError, "n_users must be <="),
    (lambda: datasets.synthetic_implicit(10, 10, 10**14), MemoryError, "nnz = "),
    (lambda: datasets.synthetic_explicit(10, 10, 10, activity_exponent=-1), ValueError,
     "activity_exponent must be >= 0"),
    (lambda: datasets.synthetic_event_log(10, 10, 10**14), MemoryError, "n_events = "),
    (lambda: datasets.train_test_split_per_user(np.ones((3, 3))), TypeError,
     "matrix must be a scipy.sparse matrix"),
])
def test_generators_refuse_bad_arguments_up_front(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_an_integer_exponent_is_a_float_exponent():
    """1 / rank ** 5 in int64 overflowed (division by zero): ints are taken as floats."""
    as_int = datasets.synthetic_implicit(2000, 50, 3000, activity_exponent=5, seed=1)
    as_float = datasets.synthetic_implicit(2000, 50, 3000, activity_exponent=5.0, seed=1)
    assert (as_int != as_float).nnz == 0


def test_movielens_100k_reader_takes_one_line_and_refuses_an_empty_file(tmp_path):
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n")
    matrix = datasets.load_movielens_100k(tmp_path)
    assert matrix.shape == (1, 2) and matrix[0, 1] == 3
    (tmp_path / "u.data").write_text("")
    with pytest.raises(ValueError, match="tab-separated lines"):
        datasets.load_movielens_100k(tmp_path)
    with pytest.raises(TypeError, match="min_rating must be a real number"):
        datasets.load_movielens_100k(tmp_path, min_rating="4")
