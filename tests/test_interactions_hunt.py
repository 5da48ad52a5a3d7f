"""Adversarial hunt on the ingestion layer: Interactions.from_arrays / from_events /
from_matrix, save/load and Parquet round trips, and the MovieLens path loaders, each
checked against a plain-Python oracle written from the docstrings (interactions.py's module
and class docstrings, reference_data.group_events' contract, datasets.load_movielens*).

The bugs it found are fixed; their tests stay as regressions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfuse import datasets
from recfuse.interactions import Interactions

NS = 10**9
BIG = [2**63 - 1, 2**63 - 2, -(2**63), -(2**63) + 1, 0]
# look-alike strings ("1" vs "01" vs " 1"), a prefix pair, non-ASCII past the BMP
STRINGS = ["1", "01", " 1", "1.0", "", "a", "ab", "B", "é", "\U0001F600", "a\x00"]
WEIGHTS = [0.0, -0.0, 1.0, -1.0, 0.5, -2.5, 3.0, 1e6, 1e-30]


# ------------------------------------------------------------------ the oracle
def oracle(users, items, weights, times, combine):
    """Documented semantics in plain Python: ids numbered in sorted order; per pair,
    sum/max of values, count of events, "last" = value of the event with the largest time,
    ties (or no times) -> the later event in input order; pair time = latest event time."""
    uids, iids = sorted(set(users)), sorted(set(items))
    pairs: dict = {}
    for k, (u, i) in enumerate(zip(users, items)):
        pairs.setdefault((uids.index(u), iids.index(i)), []).append(k)
    value = (lambda k: 1.0) if weights is None else (lambda k: float(weights[k]))
    time = (lambda k: 0) if times is None else (lambda k: times[k])
    out = {}
    for key, events in pairs.items():
        if combine == "sum":
            v = math.fsum(value(k) for k in events)
        elif combine == "max":
            v = max(value(k) for k in events)
        elif combine == "count":
            v = float(len(events))
        else:  # last
            v = value(max(events, key=lambda k: (time(k), k)))
        # the sum's rounding scale: float sums are exact only up to it
        scale = math.fsum(abs(value(k)) for k in events)
        out[key] = (v, len(events), max(time(k) for k in events), scale)
    return uids, iids, out


def weigh(value, count, weighting):
    if weighting == "log1p":  # computed from the stored float32 value
        return math.log1p(float(np.float32(value)))
    return {"none": value, "binary": 1.0, "count": float(count)}[weighting]


def check_canonical(log):
    m = log.matrix
    assert m.format == "csr" and m.dtype == np.float32 and m.shape == log.shape
    assert m.indptr[0] == 0 and m.indptr[-1] == m.nnz == len(log) == log.counts.size
    for row in range(m.shape[0]):
        cols = m.indices[m.indptr[row]:m.indptr[row + 1]]
        assert (np.diff(cols) > 0).all(), "row indices must be strictly increasing"
    assert ((m.indices >= 0) & (m.indices < m.shape[1])).all()


def check_against_oracle(log, users, items, weights, times, combine, weighting="none"):
    uids, iids, pairs = oracle(users, items, weights, times, combine)
    assert log.user_ids.ids.tolist() == uids and log.item_ids.ids.tolist() == iids
    check_canonical(log)
    coo = log.matrix.tocoo()
    got = {(int(r), int(c)): k for k, (r, c) in enumerate(zip(coo.row, coo.col))}
    assert set(got) == set(pairs)
    for key, (value, count, time, scale) in pairs.items():
        k = got[key]
        want = weigh(value, count, weighting)
        tolerance = 1e-9 * scale if weighting == "none" and combine == "sum" else 1e-30
        assert coo.data[k] == pytest.approx(np.float32(want), rel=1e-6, abs=tolerance), key
        assert log.counts[k] == count
        if times is not None:
            assert int(log.timestamps[k].astype(np.int64)) == time
    assert log.n_events == len(users)
    # the maps send every input id to its row/column and back
    codes = log.user_ids.to_internal(np.asarray(users, dtype=log.user_ids.ids.dtype))
    assert codes.tolist() == [uids.index(u) for u in users]
    assert log.user_ids.to_external(codes).tolist() == list(users)


# ------------------------------------------------------------------ strategies
POOLS = {"int": st.integers(-3, 4), "str": st.sampled_from(STRINGS), "big": st.sampled_from(BIG),
         "uint": st.sampled_from([2**64 - 1, 2**63, 2**63 + 1, 0, 7])}
# items: strings beside int users, small ints beside the others
ITEMS = {kind: st.sampled_from(["x", "y", "z"]) if kind == "int" else st.integers(0, 3)
         for kind in POOLS}


@st.composite
def event_logs(draw, max_events=25):
    n = draw(st.integers(1, max_events))
    kind = draw(st.sampled_from(sorted(POOLS)))
    users = draw(st.lists(POOLS[kind], min_size=n, max_size=n))
    items = draw(st.lists(ITEMS[kind], min_size=n, max_size=n))
    weights = draw(st.none() | st.lists(st.sampled_from(WEIGHTS), min_size=n, max_size=n))
    times = draw(st.none() | st.lists(st.integers(-2, 3), min_size=n, max_size=n))  # ties
    return kind, users, items, weights, times


def as_container(values, kind, how):
    """The same ids as a list, a NumPy array or a pandas Series (pandas 3: Arrow strings)."""
    array = np.array(values, dtype={"uint": np.uint64, "str": object}.get(kind, np.int64))
    return {"list": list(values), "numpy": array, "series": pd.Series(array)}[how]


def as_times(seconds, how):
    """Integer seconds in each documented form: ints, floats, datetime64 (s, ms), tz-aware."""
    array = np.array(seconds, dtype=np.int64)
    if how == "int":
        return list(seconds)
    if how == "float":
        return array.astype(np.float64)
    if how == "tz":
        return pd.Series(pd.to_datetime(array, unit="s", utc=True)).dt.tz_convert("Asia/Tokyo")
    unit = how.split("_")[1]
    return (array * (1000 if unit == "ms" else 1)).astype(f"datetime64[{unit}]")


# ------------------------------------------------------------------ properties
@settings(max_examples=150, deadline=None)
@given(log=event_logs(), combine=st.sampled_from(["sum", "max", "last", "count"]),
       weighting=st.sampled_from(["none", "binary", "count", "log1p"]),
       how=st.sampled_from(["list", "numpy", "series"]),
       time_form=st.sampled_from(["int", "float", "dt_s", "dt_ms", "tz"]))
def test_from_arrays_matches_the_oracle(log, combine, weighting, how, time_form):
    kind, users, items, weights, times = log
    kwargs = dict(weights=weights, combine=combine, weighting=weighting,
                  timestamps=None if times is None else as_times(times, time_form))
    ns_times = None if times is None else [t * NS for t in times]
    _, _, pairs = oracle(users, items, weights, ns_times, combine)
    if weighting == "log1p" and min(float(np.float32(p[0])) for p in pairs.values()) <= -1:
        with pytest.raises(ValueError, match="log1p weighting needs values > -1"):
            Interactions.from_arrays(as_container(users, kind, how), items, **kwargs)
        return
    got = Interactions.from_arrays(as_container(users, kind, how), items, **kwargs)
    check_against_oracle(got, users, items, weights, ns_times, combine, weighting)


@settings(max_examples=60, deadline=None)
@given(log=event_logs(), combine=st.sampled_from(["sum", "max", "last", "count"]))
def test_from_events_sources_agree_with_the_oracle(log, combine):
    """A pandas DataFrame, a pyarrow Table and a mapping of the same log: one answer."""
    kind, users, items, weights, times = log
    column = as_container(users, kind, "numpy")
    data = {"u": column, "i": np.array(items)}
    if weights is not None:
        data["w"] = np.array(weights)
    if times is not None:
        data["t"] = np.array(times, dtype=np.int64)
    names = dict(user="u", item="i", weight="w" if weights is not None else None,
                 timestamp="t" if times is not None else None, combine=combine)
    ns_times = None if times is None else [t * NS for t in times]
    for source in (data, pd.DataFrame(data), pa.table(data)):
        got = Interactions.from_events(source, **names)
        check_against_oracle(got, users, items, weights, ns_times, combine)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(log=event_logs(), combine=st.sampled_from(["sum", "max", "last", "count"]))
def test_save_load_and_parquet_round_trips(tmp_path, log, combine):
    kind, users, items, weights, times = log
    built = Interactions.from_arrays(as_container(users, kind, "numpy"), items, weights,
                                     times, combine=combine)
    def same(back, counts=True):
        assert back.user_ids.ids.tolist() == built.user_ids.ids.tolist()
        assert back.item_ids.ids.tolist() == built.item_ids.ids.tolist()
        np.testing.assert_array_equal(back.matrix.toarray(), built.matrix.toarray())
        assert not counts or back.counts.tolist() == built.counts.tolist()
        assert (back.timestamps is None) == (times is None)
        if times is not None:
            np.testing.assert_array_equal(back.timestamps, built.timestamps)

    if any(isinstance(u, str) and u.endswith("\x00") for u in users):  # documented refusal
        with pytest.raises(ValueError, match="ending in NUL"):
            built.save(tmp_path / "log.npz")
    else:
        built.save(tmp_path / "log.npz")
        same(Interactions.load(tmp_path / "log.npz"))
    # to_frame -> Parquet -> from_events: one event per pair gives the same pairs back
    built.to_frame().to_parquet(tmp_path / "pairs.parquet")
    same(Interactions.from_events(tmp_path / "pairs.parquet", weight="value",
                                  timestamp="timestamp" if times is not None else None), False)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), combine=st.sampled_from(["sum", "max", "last", "count"]))
def test_existing_maps_append_new_ids_in_sorted_order(data, combine):
    """user_ids/item_ids given: known ids keep their ints, new ones are appended in sorted
    order; the pairs are those of the new events alone."""
    kind, users, items, _, _ = data.draw(event_logs(12))
    n = data.draw(st.integers(1, 12))
    new_users = data.draw(st.lists(POOLS[kind], min_size=n, max_size=n))
    new_items = data.draw(st.lists(ITEMS[kind], min_size=n, max_size=n))
    weights = data.draw(st.lists(st.sampled_from(WEIGHTS), min_size=n, max_size=n))
    first = Interactions.from_arrays(as_container(users, kind, "numpy"), items)
    got = Interactions.from_arrays(as_container(new_users, kind, "numpy"), new_items, weights,
                                   combine=combine, user_ids=first.user_ids,
                                   item_ids=first.item_ids)
    old_u, old_i = first.user_ids.ids.tolist(), first.item_ids.ids.tolist()
    want_u = old_u + sorted(set(new_users) - set(old_u))
    want_i = old_i + sorted(set(new_items) - set(old_i))
    assert got.user_ids.ids.tolist() == want_u and got.item_ids.ids.tolist() == want_i
    check_canonical(got)
    uids, iids, pairs = oracle(new_users, new_items, weights, None, combine)
    want = {(want_u.index(uids[u]), want_i.index(iids[i])): float(np.float32(v))
            for (u, i), (v, *_) in pairs.items()}
    coo = got.matrix.tocoo()
    assert {(int(r), int(c)): float(d) for r, c, d in zip(coo.row, coo.col, coo.data)} == \
        pytest.approx(want, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(log=event_logs(12), combine=st.sampled_from(["sum", "max", "last", "count"]),
       half_life=st.sampled_from([None, 1.0, 2.5]), reference=st.sampled_from([None, 5]))
def test_event_weights_and_decay_multiply_each_event(log, combine, half_life, reference):
    """Per-event value = weight x event-type weight x 0.5^((reference - t) / half_life),
    the reference being the latest event unless given; then combined per pair."""
    kind, users, items, weights, times = log
    times = times or [0] * len(users)
    types = [("v", "c", "p")[k % 3] for k in range(len(users))]
    table = {"v": 1.0, "c": 3.0, "p": -2.0}
    ref = max(times) if reference is None else reference
    per_event = [(1.0 if weights is None else weights[k]) * table[types[k]]
                 * (1.0 if half_life is None else 0.5 ** ((ref - times[k]) / half_life))
                 for k in range(len(users))]
    if half_life is None and reference is not None:  # it means nothing alone: refused
        with pytest.raises(ValueError, match="reference_time needs half_life"):
            Interactions.from_arrays(users, items, weights, times, reference_time=reference)
        return
    got = Interactions.from_arrays(as_container(users, kind, "numpy"), items, weights, times,
                                   types, combine=combine, event_weights=table,
                                   half_life=half_life, reference_time=reference)
    check_against_oracle(got, users, items, per_event, [t * NS for t in times], combine)


@settings(max_examples=60, deadline=None)
@given(log=event_logs(), min_user=st.integers(1, 3), min_item=st.integers(1, 3),
       compact=st.booleans())
def test_filter_and_subset_keep_exactly_the_documented_pairs(log, min_user, min_item, compact):
    """filter: pairs of users with >= min_user_count pairs and items with >= min_item_count
    (counted once, before filtering); compact drops empty users/items, keeping order."""
    kind, users, items, weights, times = log
    full = Interactions.from_arrays(as_container(users, kind, "numpy"), items, weights, times)
    coo = full.matrix.tocoo()
    per_user, per_item = np.bincount(coo.row, minlength=full.n_users), np.bincount(coo.col)
    keep = (per_user[coo.row] >= min_user) & (per_item[coo.col] >= min_item)
    got = full.filter(min_user_count=min_user, min_item_count=min_item, compact=compact)
    check_canonical(got)
    rows, cols = sorted(set(coo.row[keep])), sorted(set(coo.col[keep]))
    if not compact:
        rows, cols = list(range(full.n_users)), list(range(full.n_items))
    assert got.user_ids.ids.tolist() == full.user_ids.ids[rows].tolist()
    assert got.item_ids.ids.tolist() == full.item_ids.ids[cols].tolist()
    kept = sp.csr_matrix((coo.data[keep], (coo.row[keep], coo.col[keep])), shape=full.shape)
    np.testing.assert_array_equal(got.matrix.toarray(), kept.toarray()[rows][:, cols])
    sub = full.subset(keep)
    assert sub.shape == full.shape and sub.counts.tolist() == full.counts[keep].tolist()
    if times is not None:
        np.testing.assert_array_equal(sub.timestamps, full.timestamps[keep])


def test_last_ties_go_to_the_later_row_and_times_are_the_latest():
    # reference_data.group_events: "equal times or no times: the later one in input order"
    last = lambda times: Interactions.from_arrays(  # noqa: E731
        [1] * len(times), [1] * len(times), [1.0, 2.0, 3.0, 4.0, 5.0][:len(times)],
        timestamps=times, combine="last")
    log = last([3, 7, 7, 1, 7])
    assert log.values.tolist() == [5.0] and log.timestamps.astype(np.int64)[0] == 7 * NS
    assert last([9, 7, 8]).values.tolist() == [1.0]  # unsorted: the latest, not the last row


def test_explicit_zeros_are_kept_as_documented():
    """matrix: "explicit zeros are kept" -- a zero weight or a sum that cancels is a pair."""
    log = Interactions.from_arrays([1, 1, 2], [1, 1, 2], [2.5, -2.5, 0.0])
    assert log.matrix.nnz == 2 and log.matrix.data.tolist() == [0.0, 0.0]
    m = sp.csr_matrix((np.array([1, -1, 3], np.float32), np.array([1, 1, 0]),
                       np.array([0, 2, 3])), shape=(2, 2))  # duplicates, summing to zero
    wrapped = Interactions.from_matrix(m)
    check_canonical(wrapped)
    assert wrapped.matrix.toarray().tolist() == [[0, 0], [3, 0]]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(weights=[1.0]), ValueError, "weights has 1"),  # mismatched lengths
    (dict(timestamps=[1]), ValueError, "timestamps has 1"),
    (dict(events=["a"], event_weights={"a": 1}), ValueError, "events has 1"),
    (dict(weights=["1", "2"]), TypeError, "weights must hold numbers"),
    (dict(weights=[1.0, None]), TypeError, "weights must hold numbers.*None at row 1"),
    (dict(weights=[1.0, float("inf")]), ValueError, "weights has 1 NaN/inf"),
    (dict(weights=[1 + 1j, 2]), TypeError, "weights must hold numbers"),
    (dict(timestamps=[True, False]), TypeError, "timestamps must be datetimes"),
    (dict(timestamps=np.array([1, 2], "timedelta64[s]")), TypeError, "timestamps must be"),
    (dict(timestamps=[1.0, float("nan")]), ValueError, "timestamps has 1 NaN"),
    (dict(unknown="skip"), ValueError, "unknown"),
])
def test_bad_arguments_are_named_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        Interactions.from_arrays([1, 2], [1, 2], **kwargs)


@pytest.mark.parametrize("users, error, match", [
    ([1, None], ValueError, "users has 1 missing values"),
    ([1.0, float("nan")], ValueError, "users has 1 missing values"),
    (pd.Series(["a", None]), ValueError, "users has 1 missing values"),
    ([1, "1"], TypeError, "users mixes id types"),  # look-alikes are not merged
    ([[1], [2]], ValueError, "users must be 1-d"),
    ([2**64, 1], ValueError, "expected them within int64 or uint64"),
])
def test_bad_ids_are_named_errors(users, error, match):
    with pytest.raises(error, match=match):
        Interactions.from_arrays(users, [1, 2])


@pytest.mark.parametrize("role", ["user", "item", "weight", "timestamp", "event"])
def test_wrong_column_names_are_named(role):
    df = pd.DataFrame({"user": [1], "item": [2], "w": [1.0], "t": [0], "e": ["v"]})
    names = dict(user="user", item="item", weight="w", timestamp="t", event="e")
    names[role] = "nope"
    with pytest.raises(ValueError, match=f"unknown columns: {role}='nope'"):
        Interactions.from_events(df, event_weights={"v": 1}, **names)


def test_a_failed_call_changes_nothing():
    log = Interactions.from_arrays(["a", "b"], [1, 2], [1.0, 2.0], timestamps=[1, 2])
    users, state = log.user_ids, (log.matrix.toarray().copy(), log.n_events, dict(log._settings))
    for bad in (dict(users=["c"], items=[1], weights=[np.nan], timestamps=[3]),
                dict(users=[5], items=[1], timestamps=[3]),
                dict(users=["c"], items=[1])):  # no timestamps
        with pytest.raises((ValueError, TypeError)):
            log.add(**bad)
    with pytest.raises(ValueError):
        Interactions.from_arrays(["z"], [1], [np.inf], user_ids=users)
    assert log.user_ids.ids.tolist() == users.ids.tolist() == ["a", "b"]
    np.testing.assert_array_equal(log.matrix.toarray(), state[0])
    assert log.n_events == state[1] and log._settings == state[2]


def test_polars_source_agrees():
    pl = pytest.importorskip("polars")
    data = {"user": ["b", "a", "b"], "item": [3, 1, 3], "w": [1.0, 2.0, 4.0]}
    got = Interactions.from_events(pl.DataFrame(data), weight="w", combine="max")
    check_against_oracle(got, data["user"], data["item"], data["w"], None, "max")


# ------------------------------------------------------------------ MovieLens loaders
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3),
                               st.sampled_from([0.5, 1.0, 3.5, 5.0]), st.integers(0, 2)),
                     min_size=1, max_size=12),
       layout=st.sampled_from(["u.data", "ratings.dat", "ratings.csv"]))
def test_movielens_loaders_keep_each_pairs_latest_rating(tmp_path, rows, layout):
    """load_movielens(_100k): a pair rated twice keeps its latest rating (larger time, then
    the later line)."""
    sep = {"u.data": "\t", "ratings.dat": "::", "ratings.csv": ","}[layout]
    head = "userId,movieId,rating,timestamp\n" if layout == "ratings.csv" else ""
    fmt = (lambda r: f"{r:g}") if layout != "u.data" else (lambda r: str(int(r)))
    rows = [(u, i, r if layout != "u.data" else float(max(1, int(r))), t)
            for u, i, r, t in rows]
    folder = tmp_path / layout.replace(".", "_")
    folder.mkdir(exist_ok=True)
    (folder / layout).write_text(head + "".join(
        f"{u}{sep}{i}{sep}{fmt(r)}{sep}{t}\n" for u, i, r, t in rows))
    users, items, ratings, times = map(list, zip(*rows))
    check_against_oracle(datasets.load_movielens(folder), users, items, ratings,
                         [t * NS for t in times], "last")
    if layout == "u.data":
        _, _, pairs = oracle(users, items, ratings, times, "last")
        m = datasets.load_movielens_100k(folder)
        assert m.shape == (max(users), max(items)) and m.has_canonical_format
        uids, iids = sorted(set(users)), sorted(set(items))
        want = np.zeros(m.shape)
        for (u, i), (v, *_) in pairs.items():
            want[uids[u] - 1, iids[i] - 1] = v
        np.testing.assert_array_equal(m.toarray(), want)


# ------------------------------------------------------------------ regressions (bugs it found)
@pytest.mark.parametrize("ids", [np.array([-100, 100], np.int8),
                                 np.repeat(np.array([-20000, 20000], np.int16), 5000)])
def test_small_integer_dtype_ids_keep_their_values(ids):
    log = Interactions.from_arrays(ids, np.zeros(ids.size, np.int64))
    assert log.user_ids.ids.tolist() == sorted(set(ids.tolist()))


def test_categorical_ids_are_numbered_in_sorted_order():
    df = pd.DataFrame({"user": pd.Categorical(["b", "a", "c"], categories=["c", "b", "a"]),
                       "item": [1, 2, 1]})
    for source in (pa.Table.from_pandas(df), df):  # Arrow: sorted; pandas: category order
        assert Interactions.from_events(source).user_ids.ids.tolist() == ["a", "b", "c"]


def test_numbers_in_an_object_column_are_seconds():
    plain = Interactions.from_arrays([1], [1], timestamps=[5])
    boxed = Interactions.from_arrays([1], [1], timestamps=pd.Series([5], dtype=object))
    np.testing.assert_array_equal(boxed.timestamps, plain.timestamps)


def test_from_matrix_does_not_alias_the_source():
    m = sp.csr_matrix(np.array([[1, 0], [0, 2]], np.float32))
    log = Interactions.from_matrix(m)
    m.data[0], m.indices[0] = 99, 1
    assert log.matrix.toarray().tolist() == [[1, 0], [0, 2]]


def test_numbers_in_an_object_weight_column_are_numbers():
    # reading: "weight a numeric column" -- a column whose every value is a real number is
    # numeric whatever its dtype (Decimal objects already are accepted)
    log = Interactions.from_arrays([1, 2], [1, 2], pd.Series([1.5, 2], dtype=object))
    assert log.values.tolist() == [1.5, 2.0]
