"""Hunt: recfuse.datasets (MovieLens readers, the synthetic generators behind ``recfuse demo``,
``train_test_split_per_user``) and recfuse.split where it meets MovieLens data.

Oracle: the docstrings (and README's data section) plus a plain parse of each file with the
csv module / numpy. The real MovieLens folders are read by path from ../shared/datasets and
skipped when absent; nothing of them is copied anywhere (a symlink in tmp_path at most).
Every fabricated file lives in pytest's tmp_path. The bugs the hunt found are fixed (or, for
a separator ending a line, documented); their tests stay as regressions.
"""

from __future__ import annotations

import csv
import os
import re
from fractions import Fraction

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from recfuse import datasets, split
from recfuse.interactions import Interactions

from conftest import DATASETS

ML100K = os.path.join(DATASETS, "ml-100k")
MLSMALL = os.path.join(DATASETS, "ml-latest-small")
CSV_HEADER = b"userId,movieId,rating,timestamp\n"
SEPARATOR = {"u.data": b"\t", "ratings.dat": b"::", "ratings.csv": b","}


def _needs(path):
    if not os.path.isdir(path):
        pytest.skip(f"MovieLens data not found at {path}")
    return path


def _folder(tmp_path, name, content: bytes, sub="data"):
    folder = tmp_path / sub
    folder.mkdir()
    (folder / name).write_bytes(content)
    return folder


def _lines(name, rows, newline=b"\n"):
    """A MovieLens file of ``rows`` (tuples of already formatted fields)."""
    sep = SEPARATOR[name]
    head = CSV_HEADER.replace(b"\n", newline) if name == "ratings.csv" else b""
    return head + b"".join(sep.join(str(f).encode() for f in row) + newline for row in rows)


def _oracle(rows):
    """{(user, item): (rating, time)} keeping each pair's latest (larger time, later line)."""
    pairs = {}
    for user, item, rating, time in rows:
        key = (int(user), int(item))
        if key not in pairs or int(time) >= pairs[key][1]:
            pairs[key] = (float(rating), int(time))
    return pairs


def _as_pairs(log: Interactions):
    """{(external user, external item): (rating, seconds)} of loaded Interactions."""
    coo = log.matrix.tocoo()
    users = np.asarray(log.user_ids.ids)[log.user_codes]
    items = np.asarray(log.item_ids.ids)[log.matrix.indices]
    seconds = log.timestamps.astype("datetime64[s]").astype(np.int64)
    assert np.array_equal(coo.data, log.matrix.data)  # canonical CSR: same order
    return {(int(u), int(i)): (float(r), int(t))
            for u, i, r, t in zip(users, items, log.matrix.data, seconds)}


# ============================================================== real MovieLens vs a plain parse
@pytest.mark.parametrize("min_rating", [None, 4, 3.5])
def test_ml100k_both_loaders_equal_a_plain_parse_of_u_data(min_rating):
    folder = _needs(ML100K)
    raw = np.loadtxt(os.path.join(folder, "u.data"), dtype=np.int64, delimiter="\t")
    assert raw.shape == (100_000, 4)
    kept = raw if min_rating is None else raw[raw[:, 2] >= min_rating]
    matrix = datasets.load_movielens_100k(folder, min_rating=min_rating)
    assert matrix.shape == (raw[:, 0].max(), raw[:, 1].max()) == (943, 1682)  # every line's
    assert matrix.dtype == np.float32 and matrix.has_canonical_format
    want = np.zeros(matrix.shape, np.float32)
    want[kept[:, 0] - 1, kept[:, 1] - 1] = kept[:, 2]
    np.testing.assert_array_equal(matrix.toarray(), want)
    assert matrix.nnz == len(kept)

    log = datasets.load_movielens(folder, min_rating=min_rating)
    assert log.user_ids.ids.tolist() == sorted(set(kept[:, 0].tolist()))
    assert log.item_ids.ids.tolist() == sorted(set(kept[:, 1].tolist()))
    assert log.n_events == len(kept) and log.nnz == len(kept)
    assert _as_pairs(log) == _oracle(kept.tolist())


@pytest.mark.parametrize("min_rating", [None, 4.5, 0.5])
def test_ml_latest_small_equals_a_csv_module_parse(min_rating):
    folder = _needs(MLSMALL)
    with open(os.path.join(folder, "ratings.csv"), newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["userId", "movieId", "rating", "timestamp"]
    rows = [r for r in rows[1:] if min_rating is None or float(r[2]) >= min_rating]
    log = datasets.load_movielens(folder, min_rating=min_rating)
    want = _oracle(rows)
    assert log.shape == (len({u for u, _ in want}), len({i for _, i in want}))
    if min_rating is None:
        assert log.shape == (610, 9724) and log.nnz == 100_836
    assert log.user_ids.ids.tolist() == sorted({u for u, _ in want})
    assert log.item_ids.ids.tolist() == sorted({i for _, i in want})
    assert _as_pairs(log) == want


def test_real_folders_read_through_symlinks(tmp_path):
    _needs(ML100K)
    (tmp_path / "linked").symlink_to(ML100K, target_is_directory=True)
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "u.data").symlink_to(os.path.join(ML100K, "u.data"))
    direct = datasets.load_movielens_100k(ML100K)
    for folder in (tmp_path / "linked", tmp_path / "one"):
        assert (datasets.load_movielens_100k(folder) != direct).nnz == 0
        assert datasets.load_movielens(str(folder)).nnz == 100_000


def test_folders_of_the_wrong_dataset_are_named_errors(tmp_path):
    _needs(MLSMALL)
    with pytest.raises(FileNotFoundError, match=r"MovieLens 100K not found: expected .*"
                                                r"ml-latest-small/u.data.*grouplens"):
        datasets.load_movielens_100k(MLSMALL)
    # ml-100k's other files, or ml-latest's movies/tags where the ratings belong
    only_items = _folder(tmp_path, "u.item", b"1|Toy Story (1995)|\xe9\n", "items")
    with pytest.raises(FileNotFoundError, match="no MovieLens ratings in .*items.*u.data"):
        datasets.load_movielens(only_items)
    for sub, text in (("movies", b"movieId,title,genres\n1,\"Toy, Story\",Comedy\n"),
                      ("tags", b"userId,movieId,tag,timestamp\n1,2,funny,3\n")):
        folder = _folder(tmp_path, "ratings.csv", text, sub)
        with pytest.raises(ValueError, match=r"ratings.csv' is not a MovieLens ratings file "
                                             r".*: the first line is"):
            datasets.load_movielens(folder)


def test_ml100k_file_path_instead_of_folder_is_named():
    _needs(ML100K)
    for loader in (datasets.load_movielens, datasets.load_movielens_100k):
        with pytest.raises(ValueError, match=r"got the file .*u.data': pass .*ml-100k'"):
            loader(os.path.join(ML100K, "u.data"))


# ============================================================== fabricated files that read
ROWS = [("1", "10", "4", "100"), ("2", "10", "3", "50"), ("2", "20", "5", "60"),
        ("3", "30", "1", "7"), ("3", "30", "2", "7"), ("3", "20", "4", "9"),
        ("3", "30", "5", "3")]  # (3, 30): same time 7 twice, later line wins; time 3 older


@pytest.mark.parametrize("name", ["u.data", "ratings.dat", "ratings.csv"])
@pytest.mark.parametrize("variant", ["plain", "crlf", "cr", "no-final-newline", "bom",
                                     "blank-lines"])
def test_fabricated_files_equal_their_oracle(tmp_path, name, variant):
    newline = {"crlf": b"\r\n", "cr": b"\r"}.get(variant, b"\n")
    content = _lines(name, ROWS, newline)
    if variant == "no-final-newline":
        content = content[:-1]
    elif variant == "bom":
        content = b"\xef\xbb\xbf" + content
    elif variant == "blank-lines":
        content = content.replace(b"\n2", b"\n\n2") + b"\n\n"
    folder = _folder(tmp_path, name, content)
    want = _oracle(ROWS)
    log = datasets.load_movielens(folder)
    assert _as_pairs(log) == want and log.n_events == len(ROWS)
    assert log.user_ids.ids.tolist() == [1, 2, 3] and log.item_ids.ids.tolist() == [10, 20, 30]
    if name == "u.data":
        matrix = datasets.load_movielens_100k(folder)
        assert matrix.shape == (3, 30)
        assert {(u + 1, i + 1): float(v) for u, i, v in zip(*sp.find(matrix))} == \
            {k: v[0] for k, v in want.items()}


def test_quoted_csv_fields_and_half_star_ratings_read(tmp_path):
    folder = _folder(tmp_path, "ratings.csv",
                     CSV_HEADER + b'"1","10","4.5","100"\n2,10,0.5,5\n')
    assert _as_pairs(datasets.load_movielens(folder)) == {(1, 10): (4.5, 100), (2, 10): (0.5, 5)}


def test_u_data_with_three_fields_reads_in_100k_keeping_the_later_line(tmp_path):
    """Docstring: three or four fields a line; without times the later line wins."""
    folder = _folder(tmp_path, "u.data", b"2\t3\t1\n1\t1\t5\n2\t3\t4\n")
    matrix = datasets.load_movielens_100k(folder)
    assert matrix.shape == (2, 3) and matrix.toarray().tolist() == [[5, 0, 0], [0, 0, 4]]
    with pytest.raises(ValueError, match=r"u.data' is not a MovieLens ratings file .*line 1"):
        datasets.load_movielens(folder)  # documented: four fields


def test_min_rating_boundaries(tmp_path):
    folder = _folder(tmp_path, "u.data", b"1\t1\t3\t1\n1\t2\t4\t1\n2\t1\t5\t1\n")
    for bad in (float("nan"), float("inf"), -float("inf")):
        for call in (lambda: datasets.load_movielens(folder, min_rating=bad),
                     lambda: datasets.load_movielens_100k(folder, min_rating=bad)):
            with pytest.raises(ValueError, match="min_rating must be finite"):
                call()
    for bad in (True, "4", [4]):
        with pytest.raises(TypeError, match="min_rating must be a real number"):
            datasets.load_movielens(folder, min_rating=bad)
    for value in (4, 4.0, np.float32(4), np.int64(4), Fraction(4)):  # equal ratings are kept
        assert datasets.load_movielens_100k(folder, min_rating=value).toarray().tolist() == \
            [[0, 4], [5, 0]]
        assert datasets.load_movielens(folder, min_rating=value).shape == (2, 2)
    assert datasets.load_movielens(folder, min_rating=-1e300).nnz == 3
    with pytest.raises(ValueError, match=r"min_rating = 6.0 keeps none of the 3 ratings in "
                                         r".*u.data' \(they range from 3 to 5\)"):
        datasets.load_movielens(folder, min_rating=6)


# ============================================================== fabricated files refused
@pytest.mark.parametrize("name, content, match", [
    ("u.data", b"", "holds no ratings"),
    ("u.data", b"\n\n", "holds no ratings"),
    ("ratings.csv", b"", "the first line is ''"),
    ("ratings.csv", CSV_HEADER, "holds no ratings"),
    ("ratings.csv", CSV_HEADER.rstrip(), "holds no ratings"),
    ("ratings.csv", b"userId,movieId,rating\n1,10,4.0\n", "the first line is"),
    ("ratings.csv", b"userId\tmovieId\trating\ttimestamp\n1\t10\t4.0\t100\n", "first line is"),
    ("ratings.csv", CSV_HEADER + b"1,10,NaN,100\n", "1 lines have no rating, e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b"1,10,,100\n", "1 lines have no rating, e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b"1,10,-inf,100\n", "not finite float32 .* -inf on line 2"),
    ("ratings.csv", CSV_HEADER + b'"1,5",10,4.0,100\n', r"'1,5', e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b'1,10,"4,5",100\n', r"'4,5', e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b"1.5,10,4.0,100\n", "e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100.7\n", "e.g. line 2"),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,\xe9,4.0,100\n", "utf-8.*e.g. line 3"),
    ("ratings.csv", CSV_HEADER + b"-99999999999999999999,10,4,100\n", "beyond int64"),
    ("ratings.dat", b"1::10::4::100\n2::\xe9::4::100\n", "utf-8.*e.g. line 2"),
    ("ratings.dat", b"1,10,4,100\n", "e.g. line 1"),
    ("ratings.dat", b"1::10::4::100\n1::20::3\n", "e.g. line 2"),
    ("u.data", b"1\t1\t\xe95\t1\n", "utf-8"),
    ("u.data", b"1 1 5 1\n", "e.g. line 1"),
    ("u.data", b"1\t10\t4\t100\n2\t10\t4\t200\t7\t8\n", "line 2"),
])
def test_load_movielens_refuses_broken_files_naming_them(tmp_path, name, content, match):
    folder = _folder(tmp_path, name, content)
    with pytest.raises(ValueError, match=re.escape(str(folder / name)) + ".*" + match):
        datasets.load_movielens(folder)


@pytest.mark.parametrize("content, match", [
    (b"", "got 0 lines"),
    (b"\n\n", "got 0 lines"),
    (b"1\t1\t\xe95\t1\n", "utf-8"),                 # non-UTF-8 bytes
    (b"1\t1\t4.5\t1\n", "4.5"),                    # ratings are ints in u.data
    (b"1\t2.0\t4\t1\n", "2.0"),
    (b"1\t1\t5\t1\t\n", ""),                       # a trailing tab: a fifth (empty) field
    (b"1\t1\n", "got 1 lines of 2 fields"),
    (b"1\t1\t5\t1\t2\t3\n", "got 1 lines of 6 fields"),
    (b"1\t1\t99999999999999999999\t5\n", "99999999999999999999"),
    (b"1\t2147483648\t4\t5\n", r"item ids must be in \[1, 2147483647\], got 2147483648 on line 1"),
])
def test_load_movielens_100k_refuses_broken_files_naming_them(tmp_path, content, match):
    folder = _folder(tmp_path, "u.data", content)
    with pytest.raises(ValueError, match=re.escape(repr(str(folder / "u.data"))) +
                       " must hold tab-separated lines.*" + match):
        datasets.load_movielens_100k(folder)


@pytest.mark.parametrize("make", ["missing", "u.data-is-a-folder", "broken-symlink"])
def test_missing_ratings_are_file_not_found_saying_where(tmp_path, make):
    folder = tmp_path / "ml"
    if make != "missing":
        folder.mkdir()
        if make == "u.data-is-a-folder":
            (folder / "u.data").mkdir()
        else:
            (folder / "u.data").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"expected '.*ml/u.data'.*grouplens"):
        datasets.load_movielens_100k(folder)
    with pytest.raises(FileNotFoundError, match=r"no MovieLens ratings in '.*ml'.*grouplens"):
        datasets.load_movielens(folder)


def test_a_failed_load_leaves_nothing_behind(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [("u.data", b"1\t10\t4\t100\n2\tx\t4\t1\n"), ("ratings.dat", b"1::10::x::100\n"),
             ("ratings.csv", CSV_HEADER + b"1,10,4.0,100,9\n")]
    for index, (name, content) in enumerate(cases):
        folder = _folder(tmp_path, name, content, f"case{index}")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    for index, (name, _) in enumerate(cases):
        with pytest.raises(ValueError, match=name):
            datasets.load_movielens(tmp_path / f"case{index}")
        if name == "u.data":
            with pytest.raises(ValueError, match=name):
                datasets.load_movielens_100k(tmp_path / f"case{index}")
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert folder.joinpath(cases[-1][0]).read_bytes() == cases[-1][1]


def test_weighting_is_that_of_interactions(tmp_path):
    folder = _folder(tmp_path, "ratings.csv", CSV_HEADER + b"1,10,4.0,1\n1,20,2.0,2\n2,10,5,3\n")
    assert datasets.load_movielens(folder, weighting="binary").matrix.data.tolist() == [1, 1, 1]
    plain = datasets.load_movielens(folder)
    assert plain.matrix.toarray().tolist() == [[4, 2], [5, 0]]
    with pytest.raises(ValueError, match="weighting must be one of"):
        datasets.load_movielens(folder, weighting="bogus")


# ============================================================== train_test_split_per_user
def _messy(seed):
    rng = np.random.default_rng(seed)
    dense = (rng.random((30, 12)) < 0.3) * rng.integers(1, 6, (30, 12))
    dense[0] = 0                       # a user without entries
    dense[1] = 0
    dense[1, 3] = 2                    # a user with one entry
    return sp.csr_matrix(dense.astype(np.float32))


@pytest.mark.parametrize("fraction", [0, 0.0, 0.2, 0.5, 0.999, np.float32(0.3)])
@pytest.mark.parametrize("seed", [0, 7, np.int64(3), np.uint8(2), 2**70])
def test_per_user_split_partitions_every_entry(fraction, seed):
    matrix = _messy(int(seed) % 97)
    train, test = datasets.train_test_split_per_user(matrix, fraction, seed=seed)
    assert train.shape == test.shape == matrix.shape
    assert isinstance(train, sp.csr_matrix) and isinstance(test, sp.csr_matrix)
    assert train.dtype == test.dtype == matrix.dtype
    np.testing.assert_array_equal((train + test).toarray(), matrix.toarray())
    assert train.multiply(test).nnz == 0 and train.nnz + test.nnz == matrix.nnz
    if fraction == 0:
        assert test.nnz == 0
    again = datasets.train_test_split_per_user(matrix, fraction, seed=seed)
    assert all((a != b).nnz == 0 for a, b in zip((train, test), again))


def test_per_user_split_seeds_and_bad_arguments():
    matrix = _messy(1)
    one = datasets.train_test_split_per_user(matrix, 0.5, seed=np.random.default_rng(5))
    two = datasets.train_test_split_per_user(matrix, 0.5, seed=np.random.default_rng(5))
    assert all((a != b).nnz == 0 for a, b in zip(one, two))
    assert sum(x.nnz for x in datasets.train_test_split_per_user(matrix, seed=None)) == matrix.nnz
    assert (datasets.train_test_split_per_user(matrix, 0.5, seed=np.int64(9))[1] !=
            datasets.train_test_split_per_user(matrix, 0.5, seed=9)[1]).nnz == 0
    for fraction, error, match in ((1, ValueError, "test_fraction must be < 1"),
                                   (float("nan"), ValueError, "test_fraction must be finite"),
                                   (-0.1, ValueError, "test_fraction must be >= 0"),
                                   (True, TypeError, "test_fraction must be a real number"),
                                   ("0.2", TypeError, "test_fraction must be a real number")):
        with pytest.raises(error, match=match):
            datasets.train_test_split_per_user(matrix, fraction)
    for seed, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError),
                        (np.random.RandomState(0), TypeError)):
        with pytest.raises(error, match="seed must be"):
            datasets.train_test_split_per_user(matrix, 0.2, seed=seed)
    with pytest.raises(ValueError, match="matrix must hold finite values"):
        datasets.train_test_split_per_user(sp.csr_matrix(np.array([[np.nan, 1.0]])), 0.5)


def test_per_user_split_of_other_formats_and_duplicates():
    matrix = _messy(2)
    for given in (matrix.tocoo(), matrix.tocsc(), sp.csr_array(matrix)):
        train, test = datasets.train_test_split_per_user(given, 0.3, seed=4)
        np.testing.assert_array_equal((train + test).toarray(), matrix.toarray())
    duplicated = sp.csr_matrix((np.array([1.0, 2.0]), np.array([0, 0]), np.array([0, 2, 2])),
                               shape=(2, 3))
    train, test = datasets.train_test_split_per_user(duplicated, 0.0)
    assert train.toarray().tolist() == [[3, 0, 0], [0, 0, 0]] and test.nnz == 0
    empty = datasets.train_test_split_per_user(sp.csr_matrix((0, 0)), 0.5)
    assert [x.shape for x in empty] == [(0, 0), (0, 0)]


# ============================================================== recfuse.split on MovieLens data
def test_splits_of_loaded_movielens_with_one_and_two_item_users(tmp_path):
    folder = _folder(tmp_path, "ratings.csv", CSV_HEADER + b"1,10,4.0,100\n2,10,3.0,50\n"
                     b"2,20,5.0,60\n3,10,1,5\n3,20,2,6\n3,30,3,7\n3,30,4,1\n")
    log = datasets.load_movielens(folder)
    for fraction in (0.0, 0.5, 0.99):
        for seed in (0, 1, np.int64(2), np.random.default_rng(3)):
            train, test = split.per_user_split(log, fraction, seed=seed)
            per_train = np.diff(train.matrix.indptr)
            per_test = np.diff(test.matrix.indptr)
            assert per_train.tolist()[0] == 1 and per_test.tolist()[0] == 0  # 1 item: trains
            want = {0.0: [0, 0, 0], 0.5: [0, 1, 2], 0.99: [0, 1, 2]}[fraction]
            assert per_test.tolist() == want                 # round half up, min_train 1
            np.testing.assert_array_equal((train.matrix + test.matrix).toarray(),
                                          log.matrix.toarray())
    train, test = split.leave_last_n(log, 1)
    # user 3's pair (3, 30) has its latest time 7 (rating 3): the latest pair of user 3
    assert test.matrix.toarray().tolist() == [[0, 0, 0], [0, 5, 0], [0, 0, 3]]
    assert train.matrix.toarray().tolist() == [[4, 0, 0], [3, 0, 0], [1, 2, 0]]
    with pytest.raises(ValueError, match="test_fraction must be finite"):
        split.per_user_split(log, float("nan"))
    with pytest.raises(ValueError, match=r"test_fraction must be in \[0, 1\)"):
        split.random_split(log, 1.0)


# ============================================================== synthetic data (demo's log)
@pytest.mark.parametrize("seed", [0, np.int64(5), 2**64])
def test_synthetic_event_log_matches_its_docstring(seed):
    log = datasets.synthetic_event_log(300, 40, 20_000, seed=seed, days=0.5)
    again = datasets.synthetic_event_log(300, 40, 20_000, seed=int(seed), days=0.5)
    assert sorted(log) == ["event", "item", "timestamp", "user"]
    assert all(np.array_equal(log[c], again[c]) for c in log)
    assert all(len(v) == 20_000 for v in log.values())
    times = log["timestamp"]
    start = np.datetime64("2024-01-01T00:00:00", "s")
    assert times.dtype == np.dtype("datetime64[s]")
    assert (np.diff(times.astype(np.int64)) >= 0).all()
    assert start <= times.min() and times.max() <= start + np.timedelta64(43_200, "s")
    for column, count in (("user", 300), ("item", 40)):
        assert all(re.fullmatch(column + r"\d+", x) for x in log[column][:500])
        ids = np.char.lstrip(log[column], column).astype(np.int64)
        assert ids.min() >= 0 and ids.max() < count
    kinds, counts = np.unique(log["event"], return_counts=True)
    assert kinds.tolist() == ["click", "purchase", "view"]
    np.testing.assert_allclose(counts / counts.sum(), [0.15, 0.05, 0.80], atol=0.02)
    interactions = Interactions.from_events(log, timestamp="timestamp")
    assert interactions.n_events == 20_000


def test_synthetic_event_log_of_no_events_and_bad_days():
    log = datasets.synthetic_event_log(10, 5, 0)
    assert all(v.shape == (0,) for v in log.values())
    for days, error in ((0, ValueError), (-1.0, ValueError), (float("nan"), ValueError),
                        ("1", TypeError)):
        with pytest.raises(error, match="days must be"):
            datasets.synthetic_event_log(10, 5, 10, days=days)


def test_synthetic_implicit_affinity_one_keeps_users_inside_their_cluster():
    """affinity 1: every event inside the user's cluster, so the user-item graph splits into
    exactly ``clusters`` connected parts; affinity 0 connects them."""
    for affinity, parts in ((1.0, 4), (0.0, 1)):
        m = datasets.synthetic_implicit(2000, 1000, 20_000, clusters=4, affinity=affinity,
                                        seed=0)
        _, label = connected_components(sp.bmat([[None, m], [m.T, None]]), directed=False)
        degree = np.concatenate([np.diff(m.indptr), np.bincount(m.indices, minlength=1000)])
        assert len(set(label[degree > 0].tolist())) == parts


@pytest.mark.parametrize("dtype", [np.float32, np.float64, "float64"])
def test_generators_give_exact_counts_of_their_dtype(dtype):
    implicit = datasets.synthetic_implicit(300, 100, 3000, seed=np.int64(1), dtype=dtype)
    assert implicit.dtype == np.dtype(dtype) and implicit.nnz == 3000
    assert implicit.has_canonical_format and implicit.data.min() >= 1
    assert (implicit.data == np.round(implicit.data)).all()
    assert (implicit != datasets.synthetic_implicit(300, 100, 3000, seed=1, dtype=dtype)).nnz == 0
    explicit = datasets.synthetic_explicit(300, 100, 3000, seed=1, dtype=dtype)
    assert explicit.dtype == np.dtype(dtype) and explicit.nnz == 3000
    assert explicit.has_canonical_format and set(np.unique(explicit.data)) <= {1, 2, 3, 4, 5}
    for generator in (datasets.synthetic_implicit, datasets.synthetic_explicit):
        assert generator(5, 5, 0).nnz == 0 and generator(1, 1, 1).nnz == 1
        with pytest.raises(TypeError, match="dtype must be float32 or float64"):
            generator(5, 5, 5, dtype=np.int32)


# ============================================================== the hunt's bugs, fixed
@pytest.mark.parametrize("name, content, line, what", [
    ("u.data", b"1\t10\t5\t100\n\n\n2\t10\t4\t200\t7\n", 4, "more than four fields"),
    ("ratings.csv", CSV_HEADER + b"\n1,10,4.0,100\n2,10,inf,200\n", 4, "not finite float32"),
    ("ratings.csv", CSV_HEADER + b"\n1,10,,100\n", 3, "have no rating"),
    ("ratings.dat", b"1::10::4::100\n\n2::3::inf::100\n", 3, "not finite float32"),
])
def test_load_movielens_names_the_broken_line_after_blank_lines(tmp_path, name, content, line,
                                                                 what):
    with pytest.raises(ValueError, match=rf"{what}.*e\.g\. (inf on )?line {line}$"):
        datasets.load_movielens(_folder(tmp_path, name, content))


def test_load_movielens_names_a_line_of_empty_fields(tmp_path):
    folder = _folder(tmp_path, "u.data", b"1\t10\t4\t100\n\t\t\t\n2\t3\t4\t5\n")
    with pytest.raises(ValueError, match=r"u.data' is not a MovieLens ratings file .*"
                                         r"e\.g\. line 2$"):
        datasets.load_movielens(folder)


@pytest.mark.parametrize("content, line", [
    (b"1\t1\t5\t1\n\n0\t1\t5\t1\n", 3),               # id 0 on line 3: said 'line 2'
    (b"1\t10\t5\t100\t7\n2\t10\t4\t200\n", 1),        # five fields on line 1: said 'row 2'
    (b"1\t10\t5\t100\n\n\n2\t10\t4\t200\t7\n", 4),    # five fields on line 4: said 'row 2'
])
def test_movielens_100k_names_the_broken_line(tmp_path, content, line):
    with pytest.raises(ValueError, match=rf"u.data' must hold .*(line|row) {line}\b"):
        datasets.load_movielens_100k(_folder(tmp_path, "u.data", content))


@pytest.mark.parametrize("name, content", [
    ("u.data", b"1\t10\t4\t100\t\n"),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,100\n1,11,2.0,100,\n"),
    ("ratings.dat", b"1::10::4::100::\n"),
])
def test_load_movielens_reads_a_separator_ending_a_line_as_its_end(tmp_path, name, content):
    """Documented (the hunt found it undocumented): an empty fifth field, a separator at the
    end of a line, ends the line; a fifth field with something in it is refused."""
    loaded = datasets.load_movielens(_folder(tmp_path, name, content))
    assert loaded.nnz == content.count(b"\n") - (name == "ratings.csv")
    with pytest.raises(ValueError, match="more than four fields"):
        datasets.load_movielens(_folder(tmp_path, name, content.rstrip(b"\n") + b"7\n",
                                        sub="more"))


def test_ratings_dat_refuses_a_line_of_three_fields_with_a_tab(tmp_path):
    folder = _folder(tmp_path, "ratings.dat", b"1::10::4::100\n2\t3::4::100\n")
    with pytest.raises(ValueError, match=r"ratings.dat' is not a MovieLens ratings file.*line 2"):
        datasets.load_movielens(folder)


@pytest.mark.parametrize("line", [b"#2\t2\t4\t1\n", b"2\t2\t4\t1#9\n"])
def test_movielens_100k_refuses_comment_lines(tmp_path, line):
    folder = _folder(tmp_path, "u.data", b"1\t1\t5\t1\n" + line)
    with pytest.raises(ValueError, match="u.data"):
        datasets.load_movielens(folder)  # the consistent behaviour, for reference
    with pytest.raises(ValueError, match=r"u.data' must hold tab-separated lines"):
        datasets.load_movielens_100k(folder)


@pytest.mark.parametrize("name, content", [
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,1600000000000\n"),   # milliseconds, not seconds
    ("ratings.dat", b"1::10::4::99999999999999\n"),
    ("ratings.csv", CSV_HEADER + b"1,10,4.0,-99999999999999\n"),
])
def test_load_movielens_names_the_file_of_a_time_out_of_range(tmp_path, name, content):
    folder = _folder(tmp_path, name, content)
    with pytest.raises(ValueError, match=re.escape(str(folder / name))):
        datasets.load_movielens(folder)


@pytest.mark.parametrize("loader", [datasets.load_movielens, datasets.load_movielens_100k])
def test_a_bytes_path_loads_or_is_named(tmp_path, loader):
    folder = _folder(tmp_path, "u.data", b"1\t1\t5\t1\n")
    try:
        loaded = loader(os.fsencode(folder))
    except TypeError as error:
        assert "path must be" in str(error), str(error)
    else:
        assert loaded.nnz == 1
