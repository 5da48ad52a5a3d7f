"""recfuse.datasets: the synthetic generators and the MovieLens readers."""

from __future__ import annotations

import os
import re

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
    with pytest.warns(UserWarning, match="made 205 entries of the 3000"):  # steep: short
        as_int = datasets.synthetic_implicit(2000, 50, 3000, activity_exponent=5, seed=1)
    with pytest.warns(UserWarning, match="made 205 entries of the 3000"):
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


@pytest.mark.parametrize("generator, name", [(datasets.synthetic_implicit, "nnz"),
                                             (datasets.synthetic_explicit, "n_ratings")])
def test_generators_say_when_steep_exponents_leave_them_short(generator, name):
    """Documented as exact unless nearly dense, both gave 46-51k of 60k entries at the
    default sizes with exponents 1.5 (3% dense) without a word: now a UserWarning says so."""
    with pytest.warns(UserWarning, match=rf"{generator.__name__} made \d+ entries of the "
                                         rf"60000 asked for \({name}\).*lower"):
        short = generator(2000, 1000, 60_000, popularity_exponent=1.5, activity_exponent=1.5)
    assert 0 < short.nnz < 60_000
    assert generator(2000, 1000, 60_000).nnz == 60_000  # the defaults: exact, no warning


@pytest.mark.parametrize("generator", [datasets.synthetic_implicit, datasets.synthetic_explicit])
def test_a_huge_exponent_gives_zero_weights_without_numpy_warnings(generator):
    """rank ** 1e6 overflowed float64 with a RuntimeWarning (an error under -W error); the
    weights are 0 there, as before, and only the shortfall is reported."""
    with pytest.warns(UserWarning, match="made") as caught:
        matrix = generator(50, 50, 100, popularity_exponent=1e6, seed=0)
    assert all(w.category is UserWarning for w in caught), [str(w.message) for w in caught]
    assert 0 < matrix.nnz < 100


def test_synthetic_event_log_checks_affinity_and_days():
    """affinity 2 was taken (synthetic_implicit refuses it); days past 2262 gave times that
    Interactions refuses, and past ~1e14 days int64 overflow (garbage times, unsorted)."""
    with pytest.raises(ValueError, match=r"affinity must be in \[0, 1\], got 2.0"):
        datasets.synthetic_event_log(10, 5, 20, affinity=2.0)
    with pytest.raises(ValueError, match=r"days must be <= 87028 \(.*2262-04-11.*\), got 1e\+16"):
        datasets.synthetic_event_log(10, 5, 20, days=1e16)
    log = datasets.synthetic_event_log(10, 5, 200, days=87028, seed=0)
    assert (log["timestamp"][1:] >= log["timestamp"][:-1]).all()
    assert Interactions.from_events(log, timestamp="timestamp").n_events == 200


def _ratings_folder(tmp_path, name, content: bytes):
    folder = tmp_path / name.replace(".", "_")
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder


CSV_HEADER = b"userId,movieId,rating,timestamp\n"


@pytest.mark.parametrize("name, content, match", [
    # inf came through to Interactions ("weights has 1 NaN/inf values", no file named);
    # 1e50 overflowed float32 in pandas' parser (a RuntimeWarning) and then did the same
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,10,inf,200\n",
     r"ratings.csv' is not a MovieLens ratings file .*1 ratings are not finite float32 "
     r"numbers, e.g. inf on line 3"),
    ("ratings.csv", CSV_HEADER + b"1,10,1e50,100\n",
     "1 ratings are not finite float32 numbers, e.g. 1e\\+50 on line 2"),
    # an id beyond int64: pandas' OverflowError, uncaught
    ("ratings.csv", CSV_HEADER + b"99999999999999999999,10,4.0,100\n",
     r"ratings.csv' is not a MovieLens ratings file .*a number beyond int64"),
    ("ratings.dat", b"1::99999999999999999999::4::100\n", "a number beyond int64"),
])
def test_load_movielens_refuses_bad_numbers_naming_the_file(tmp_path, name, content, match):
    with pytest.raises(ValueError, match=match):
        datasets.load_movielens(_ratings_folder(tmp_path, name, content))


@pytest.mark.parametrize("name", ["ml-100k", "ml-latest-small"])
def test_load_movielens_min_rating_that_keeps_nothing(name):
    """A min_rating above every rating gave Interactions' "the event log is empty" (no file,
    no min_rating); 1e300 also overflowed float32 in the comparison (a RuntimeWarning)."""
    path = os.path.join(DATASETS, name)
    if not os.path.isdir(path):
        pytest.skip(f"{name} not found at {path}")
    lowest = {"ml-100k": "1", "ml-latest-small": "0.5"}[name]
    for min_rating in (5.5, 1e300):
        with pytest.raises(ValueError, match=rf"min_rating = {re.escape(str(min_rating))} keeps "
                                             rf"none of the \d+ ratings in .*{name}.* \(they "
                                             rf"range from {lowest} to 5\)"):
            datasets.load_movielens(path, min_rating=min_rating)
    assert datasets.load_movielens(path, min_rating=5).matrix.data.min() == 5


def test_load_movielens_checks_min_rating_and_path_before_reading(tmp_path):
    """min_rating was checked after the whole file was read; a path that is not path-like
    was os.fspath's TypeError (no argument named); the ratings file itself was "no
    MovieLens ratings in '.../u.data'"."""
    folder = _ratings_folder(tmp_path, "ratings.csv", b"not read")
    with pytest.raises(TypeError, match="min_rating must be a real number"):
        datasets.load_movielens(folder, min_rating="4")
    for loader in (datasets.load_movielens, datasets.load_movielens_100k):
        with pytest.raises(TypeError, match="path must be a str or os.PathLike naming a "
                                            "MovieLens folder, got int 3"):
            loader(3)
        with pytest.raises(ValueError, match=r"path must be the folder that holds the MovieLens "
                                             r"ratings file, got the file .*ratings.csv'"):
            loader(folder / "ratings.csv")


@pytest.mark.parametrize("content, match", [
    # id 0 became row -1: scipy's "negative axis 0 index: -1"
    (b"0\t1\t5\t1\n", r"user ids must be in \[1, 2147483647\], got 0 on line 1"),
    (b"1\t1\t5\t1\n2\t-4\t5\t1\n", r"item ids must be in \[1, 2147483647\], got -4 on line 2"),
    # a huge id: a CSR of 10**12 rows (NumPy's MemoryError for 7.3 TiB, or the OOM killer)
    (b"1000000000000\t1\t5\t1\n", r"user ids must be in \[1, 2147483647\], got 1000000000000"),
])
def test_movielens_100k_reader_refuses_ids_outside_its_range(tmp_path, content, match):
    with pytest.raises(ValueError, match=r"u.data' must hold tab-separated lines .*" + match):
        datasets.load_movielens_100k(_ratings_folder(tmp_path, "u.data", content))


@pytest.mark.parametrize("name, content, line", [
    ("u.data", b"1\t10\t5\t100\n2\t10\t4\t200\t7\n", 2),  # one line longer
    ("u.data", b"1\t10\t5\t100\t7\n2\t10\t4\t200\t8\n", 1),  # every line
    ("ratings.dat", b"1::10::5::100\n1::20::3::200::9\n", 2),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,10,3.5,200,x\n", 3),
])
def test_load_movielens_refuses_lines_with_more_than_four_fields(tmp_path, name, content, line):
    """load_movielens read the first four fields and dropped the rest, where
    load_movielens_100k refused a u.data whose lines have different numbers of fields
    (both refuse any line with more than four now)."""
    folder = _ratings_folder(tmp_path, name, content)
    with pytest.raises(ValueError, match=rf"{name}' is not a MovieLens ratings file \(expected "
                                         rf".*\): \d+ lines have more than four fields, e.g. "
                                         rf"line {line}$"):
        datasets.load_movielens(folder)
    if name == "u.data":
        with pytest.raises(ValueError, match=r"u.data' must hold tab-separated lines of user, "
                                             r"item, rating \(and time\)"):
            datasets.load_movielens_100k(folder)
    # the same lines cut to four fields are read
    separator = {"u.data": b"\t", "ratings.dat": b"::", "ratings.csv": b","}[name]
    four = b"\n".join(separator.join(text.split(separator)[:4]) for text in content.split(b"\n"))
    (folder / name).write_bytes(four)
    assert datasets.load_movielens(folder).nnz == 2

def test_movielens_100k_reader_keeps_the_latest_rating_of_a_pair_and_reads_a_bom(tmp_path):
    """A pair rated twice was summed (4 + 2 = 6, outside 1..5); load_movielens keeps the
    latest. A byte-order mark made the first id "\\ufeff1" (load_movielens reads it)."""
    content = b"\xef\xbb\xbf1\t1\t2\t50\n1\t1\t4\t10\n2\t3\t1\t7\n2\t3\t5\t7\n"
    folder = _ratings_folder(tmp_path, "u.data", content)
    matrix = datasets.load_movielens_100k(folder)
    assert matrix.shape == (2, 3) and matrix.has_canonical_format
    assert matrix.toarray().tolist() == [[2, 0, 0], [0, 0, 5]]  # time 50 > 10; same time: later line
    log = datasets.load_movielens(folder)
    assert log.matrix.toarray().tolist() == [[2, 0], [0, 5]]
    # min_rating filters first (as load_movielens does); the shape is of every line
    liked = datasets.load_movielens_100k(folder, min_rating=4)
    assert liked.shape == (2, 3) and liked.toarray().tolist() == [[4, 0, 0], [0, 0, 5]]
    assert datasets.load_movielens(folder, min_rating=4).matrix.toarray().tolist() == [[4, 0],
                                                                                       [0, 5]]


@pytest.mark.parametrize("name, content, line", [
    # a short line: pandas' "Integer column has NA values in column 3" named no line
    ("u.data", b"1\t10\t5\t100\n2\t10\t4\n", 2),
    ("ratings.dat", b"1::10::5::100\n1::20::3\n", 2),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,10,3.5\n", 3),
    # a word for a number: "invalid literal for int() with base 10: 'abc'", no line either
    ("u.data", b"1\t10\t5\t100\n\n2\tabc\t4\t200\n", 3),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,10,x,200\n", 3),
])
def test_load_movielens_names_the_line_it_cannot_read(tmp_path, name, content, line):
    """The docstring's promise: a line without its four fields, or a word for a number, is a
    ValueError naming the file and the line."""
    with pytest.raises(ValueError, match=rf"{name}' is not a MovieLens ratings file \(expected "
                                         rf".*\): .*, e.g. line {line}$"):
        datasets.load_movielens(_ratings_folder(tmp_path, name, content))


def test_movielens_100k_reader_names_a_line_when_every_line_has_five_fields(tmp_path):
    """The README: both readers refuse a line of more than four fields naming the file and the
    line; load_movielens_100k said only "got 2 lines of 5 fields" when every line had five."""
    folder = _ratings_folder(tmp_path, "u.data", b"1\t10\t5\t100\t7\n2\t10\t4\t200\t8\n")
    with pytest.raises(ValueError, match=r"u.data' must hold .*, got 2 lines of 5 fields, "
                                         r"e.g. line 1$"):
        datasets.load_movielens_100k(folder)


def test_generator_sizes_are_checked_together_and_event_labels_by_their_real_size(
        monkeypatch):
    """Sizes were each checked against memory at 32 bytes, alone: two of them each within
    memory but not together passed, and synthetic_event_log made a 100-byte label (and an
    84-byte string) for every id of the catalogue, drawn or not, and ~300 bytes per event:
    on a 23.5 GiB machine synthetic_event_log(2**27, 2**27, 10) passed the check and asked
    for 2 x 25 GiB of labels. Now the sizes are checked together (the event log at its real
    cost per event), and only the drawn ids are labelled: the same strings and dtype."""
    import recfuse._validation as check

    monkeypatch.setattr(check, "physical_memory", lambda: 1 << 30)

    def allocating(*arguments, **options):
        raise AssertionError("the generator was allocating")

    monkeypatch.setattr(datasets, "_power_law", allocating)
    monkeypatch.setattr(datasets.np, "arange", allocating)
    for call, match in (
            (lambda: datasets.synthetic_implicit(2**24, 2**24, 10),
             "n_users = 16777216 and n_items = 16777216"),
            (lambda: datasets.synthetic_explicit(2**24, 2**24, 10, factors=1),
             "n_users = 16777216 and n_items = 16777216"),
            (lambda: datasets.synthetic_event_log(10, 10, 2**22), "n_events = 4194304"),
            (lambda: datasets.synthetic_event_log(2**24, 2**24, 10), "n_items = 16777216")):
        with pytest.raises(MemoryError, match=match):
            call()
    monkeypatch.undo()
    for sizes in ((1000, 500, 100), (10, 10, 1000), (5000, 3, 20)):
        log = datasets.synthetic_event_log(*sizes, seed=3)
        for column, prefix, count in (("user", "user", sizes[0]), ("item", "item", sizes[1])):
            ids = np.array([int(label[len(prefix):]) for label in log[column]])
            every = np.char.add(prefix, np.arange(count).astype(str))
            assert log[column].dtype == every.dtype
            np.testing.assert_array_equal(log[column], every[ids])
