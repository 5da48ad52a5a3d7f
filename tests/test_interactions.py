"""recfuse.Interactions: ingestion from every source, id maps, combining, weighting, filters,
bad input; the native grouping kernel against its NumPy contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import recfuse
from recfuse import _core, datasets, interactions, reference_data
from recfuse.interactions import IdMap, Interactions


def frame():
    return pd.DataFrame({
        "user": ["u2", "u1", "u2", "u3", "u1", "u2"],
        "item": [30, 10, 30, 20, 20, 10],
        "rating": [1.0, 4.0, 2.0, 5.0, 3.0, 1.0],
        "time": pd.to_datetime(["2024-01-03", "2024-01-01", "2024-01-02", "2024-01-05",
                                "2024-01-04", "2024-01-06"]),
        "kind": ["view", "click", "purchase", "view", "view", "click"],
    })


def dense(interactions):
    return interactions.matrix.toarray().tolist()


# ------------------------------------------------------------------ sources and round trips
def test_sources_agree(tmp_path):
    df = frame()
    kwargs = dict(user="user", item="item", weight="rating", timestamp="time")
    expected = Interactions.from_events(df, **kwargs)
    df.to_parquet(tmp_path / "log.parquet")
    df.to_csv(tmp_path / "log.csv", index=False)
    sources = [pl.from_pandas(df), pa.Table.from_pandas(df), tmp_path / "log.parquet",
               str(tmp_path / "log.csv"), {c: df[c].to_numpy() for c in df.columns}]
    for source in sources:
        got = Interactions.from_events(source, **kwargs)
        assert got.user_ids == expected.user_ids and got.item_ids == expected.item_ids
        assert dense(got) == dense(expected)
        np.testing.assert_array_equal(got.timestamps, expected.timestamps)


def test_ids_round_trip_and_sorted_numbering():
    log = Interactions.from_events(frame(), weight="rating")
    assert log.user_ids.ids.tolist() == ["u1", "u2", "u3"]
    assert log.item_ids.ids.tolist() == [10, 20, 30]
    codes = log.user_ids.to_internal(["u3", "u1"])
    assert codes.tolist() == [2, 0]
    assert log.user_ids.to_external(codes).tolist() == ["u3", "u1"]
    assert log.matrix.dtype == np.float32 and log.matrix.format == "csr"
    assert dense(log) == [[4, 3, 0], [1, 0, 3], [0, 5, 0]]
    assert log.transpose.shape == (3, 3) and (log.transpose != log.matrix.T).nnz == 0
    assert log.counts.tolist() == [1, 1, 1, 2, 1]
    assert log.n_events == 6



def test_len_is_the_stored_pairs():
    """len() is nnz: one per stored (user, item) pair, whatever number of events each
    combines (n_events), aligned with counts, values, to_frame and subset masks."""
    log = Interactions.from_events(frame(), weight="rating")
    assert len(log) == log.nnz == 5 and log.n_events == 6
    assert len(log) == log.counts.size == log.values.size == log.matrix.nnz
    assert len(log.subset(np.arange(len(log)) % 2 == 0)) == 3
    assert len(log.add(users=["u9"], items=[10])) == 6
    empty = log.subset(np.zeros(len(log), dtype=bool))
    assert len(empty) == 0 and not empty and empty.shape == log.shape
    assert len(Interactions.from_matrix(sp.csr_matrix(np.eye(3, dtype=np.float32)))) == 3

@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c", "é", ""]), st.integers(-3, 3)),
                min_size=1, max_size=30))
def test_matches_scipy_sum(events):
    users, items = zip(*events)
    log = Interactions.from_arrays(list(users), list(items))
    u = log.user_ids.to_internal(list(users))
    i = log.item_ids.to_internal(list(items))
    expected = sp.csr_matrix((np.ones(len(events)), (u, i)), shape=log.shape).toarray()
    np.testing.assert_array_equal(log.matrix.toarray(), expected)


def test_combine_rules():
    df = frame()
    base = dict(user="user", item="item", weight="rating", timestamp="time")
    pair = lambda log: log.matrix[log.user_ids.to_internal("u2")[0],  # noqa: E731
                                  log.item_ids.to_internal(30)[0]]
    # u2/30 has rating 1 at Jan 3 and rating 2 at Jan 2
    assert pair(Interactions.from_events(df, combine="sum", **base)) == 3
    assert pair(Interactions.from_events(df, combine="max", **base)) == 2
    assert pair(Interactions.from_events(df, combine="last", **base)) == 1  # latest time wins
    assert pair(Interactions.from_events(df, combine="count", **base)) == 2
    no_time = Interactions.from_events(df, user="user", item="item", weight="rating",
                                       combine="last")
    assert pair(no_time) == 2  # without times: the later row wins


@given(st.data())
def test_native_grouping_matches_reference(data):
    n_users = data.draw(st.integers(1, 6))
    n_items = data.draw(st.integers(1, 6))
    n = data.draw(st.integers(0, 40))
    users = np.array(data.draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)),
                     dtype=np.int32)
    items = np.array(data.draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)),
                     dtype=np.int32)
    values = np.array(data.draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)))
    times = np.array(data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)),
                     dtype=np.int64)
    multiplicity = np.array(data.draw(st.lists(st.integers(1, 3), min_size=n, max_size=n)),
                            dtype=np.int64)
    combine = data.draw(st.sampled_from(["sum", "max", "last", "count"]))
    use_times = data.draw(st.booleans())
    got = _core.group_events(users, items, values, times if use_times else None, multiplicity,
                             n_users=n_users, n_items=n_items, combine=combine)
    want = reference_data.group_events(users, items, values, times if use_times else None,
                                       multiplicity, n_users=n_users, n_items=n_items,
                                       combine=combine)
    for g, w in zip(got, want):  # values are stored as float32
        if w is None:
            assert g is None
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_native_grouping_rejects_bad_codes():
    with pytest.raises(ValueError, match="item code 5"):
        _core.group_events(np.zeros(1, np.int32), np.array([5], np.int32), n_users=1, n_items=2)


def test_weights_beyond_float32_are_refused_not_stored_as_inf():
    big = float(np.finfo(np.float32).max)
    with pytest.raises(ValueError, match="user 'b' and item 2 overflows float32"):
        Interactions.from_arrays(["a", "b", "b"], [5, 2, 2], [1.0, big, big])  # their sum
    with pytest.raises(ValueError, match="user 1 and item 2 overflows float32"):
        Interactions.from_arrays([1], [2], [1e39])  # finite, but not as float32
    log = Interactions.from_arrays([1], [2], [big])
    with pytest.raises(ValueError, match="overflows float32"):
        log.add(users=[1], items=[2], weights=[big])
    assert log.values.tolist() == [big]  # unchanged
    assert Interactions.from_arrays([1, 1], [2, 2], [big, big], combine="max").values[0] == big


def test_max_of_signed_zeros_does_not_hang_on_event_order():
    # +0.0 beats -0.0 (IEEE 754-2019 maximum), natively and in the reference; a lone -0.0
    # stays as it came
    from recfuse import reference_data

    for weights in ([-0.0, 0.0, -0.0], [0.0, -0.0], [-0.0, -0.0], [-0.0]):
        n = len(weights)
        got = Interactions.from_arrays([1] * n, [2] * n, weights, combine="max").values[0]
        want = reference_data.group_events(np.zeros(n), np.zeros(n), np.array(weights),
                                           n_users=1, n_items=1, combine="max")[2][0]
        assert np.signbit(got) == np.signbit(want) == np.signbit(weights).all()


# ------------------------------------------------------------------ weighting
def test_event_weights_and_half_life():
    df = frame()
    log = Interactions.from_events(df, timestamp="time", event="kind",
                                   event_weights={"view": 1, "click": 3, "purchase": 10},
                                   half_life="1D")
    # reference = latest event (Jan 6). u2/30: purchase on Jan 2 (4 days) + view on Jan 3 (3)
    row, col = log.user_ids.to_internal("u2")[0], log.item_ids.to_internal(30)[0]
    assert log.matrix[row, col] == pytest.approx(10 * 0.5 ** 4 + 1 * 0.5 ** 3)
    seconds = Interactions.from_events(df, timestamp="time", half_life=86400.0)
    timedelta = Interactions.from_events(df, timestamp="time", half_life=np.timedelta64(1, "D"))
    np.testing.assert_allclose(seconds.matrix.data, timedelta.matrix.data)


def test_bm25_weighs_zero_values_zero_and_refuses_what_would_divide_by_zero():
    # k1 = 0 and an explicit zero value, or b = 1 and a user whose values are all zero, make
    # implicit's formula 0/0; a zero value weighs 0 here, and nothing else changes
    log = Interactions.from_arrays([0, 0, 1, 1, 2], [0, 1, 0, 2, 1], [0.0, 2.0, 0.0, 0.0, 3.0])
    for options in ({"k1": 0.0}, {"b": 1.0}, {"k1": 0.0, "b": 1.0}):
        matrix = log.weighted("bm25", **options).matrix
        assert np.isfinite(matrix.data).all(), options
        assert (matrix.data[log.matrix.data == 0] == 0).all(), options
    with pytest.raises(ValueError, match="b must be <= 1"):
        log.weighted("bm25", b=1.5)
    with pytest.raises(ValueError, match="bm25 weighting needs non-negative values"):
        Interactions.from_arrays([0, 1], [0, 0], [1.0, -0.5]).weighted("bm25")


def test_weightings_match_implicit():
    from implicit.nearest_neighbours import bm25_weight, tfidf_weight

    matrix = datasets.synthetic_implicit(200, 50, 2000, seed=2).astype(np.float64)
    log = Interactions.from_matrix(matrix)
    bm25 = log.weighted("bm25", k1=50, b=0.5).matrix.toarray()
    np.testing.assert_allclose(bm25, bm25_weight(matrix, K1=50, B=0.5).toarray(), rtol=1e-5)
    np.testing.assert_allclose(log.weighted("tfidf").matrix.toarray(),
                               tfidf_weight(matrix).toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(log.weighted("log1p").matrix.data, np.log1p(matrix.data),
                               rtol=1e-6)
    assert set(log.weighted("binary").matrix.data.tolist()) == {1.0}
    with pytest.raises(TypeError, match="options"):
        log.weighted("tfidf", k1=3)


# ------------------------------------------------------------------ growing
def test_add_keeps_ints_and_combines():
    log = Interactions.from_events(frame(), weight="rating")
    more = pd.DataFrame({"user": ["u9", "u1"], "item": [99, 10], "rating": [2.0, 1.0]})
    grown = log.add(more)  # the columns of the first read are remembered
    for ids in ("user_ids", "item_ids"):
        old = getattr(log, ids).ids
        assert getattr(grown, ids).ids[: old.size].tolist() == old.tolist()
    assert grown.shape == (4, 4)
    assert grown.matrix[0, 0] == 5  # u1/10: 4 + 1
    assert grown.matrix[3, 3] == 2
    extended = log.user_ids.extend(["zz", "u1"])
    assert extended.to_internal(["zz"]).tolist() == [3]


def test_add_remembers_event_weights_and_saves_them(tmp_path):
    weights = {"view": 1, "click": 3, "purchase": 10}
    log = Interactions.from_events(frame(), timestamp="time", event="kind", event_weights=weights)
    grown = log.add(pd.DataFrame({"user": ["u1"], "item": [10], "kind": ["purchase"],
                                  "time": pd.to_datetime(["2024-02-01"])}))
    assert grown.matrix[0, 0] == 3 + 10
    log.save(tmp_path / "log.npz")
    again = Interactions.load(tmp_path / "log.npz").add(users=["u1"], items=[10],
                                                         timestamps=["2024-02-01"],
                                                         events=["click"])
    assert again.matrix[0, 0] == 3 + 3


def test_add_arrays_and_existing_maps():
    log = Interactions.from_arrays([1, 2], ["a", "b"])
    grown = log.add(users=[3], items=["a"])
    assert grown.shape == (3, 2)
    test = Interactions.from_arrays([1, 7], ["a", "b"], user_ids=log.user_ids,
                                    item_ids=log.item_ids, unknown="drop")
    assert test.shape == log.shape and test.nnz == 1 and test.dropped_events == 1
    with pytest.raises(ValueError, match="unknown='raise'"):
        Interactions.from_arrays([1, 7], ["a", "b"], user_ids=log.user_ids,
                                 item_ids=log.item_ids, unknown="raise")


# ------------------------------------------------------------------ filters
def test_filter_and_k_core():
    users = [0, 0, 0, 1, 1, 2, 3, 3, 3]
    items = [0, 1, 2, 0, 1, 0, 0, 1, 3]
    log = Interactions.from_arrays(users, items)
    filtered = log.filter(min_user_count=3)
    assert filtered.user_ids.ids.tolist() == [0, 3] and filtered.nnz == 6
    core = log.k_core(2)
    assert core.user_ids.ids.tolist() == [0, 1, 3] and core.item_ids.ids.tolist() == [0, 1]
    m = core.matrix
    assert (np.diff(m.indptr) >= 2).all() and (np.bincount(m.indices) >= 2).all()
    kept = log.filter(min_item_count=2, compact=False)
    assert kept.shape == log.shape


def test_timestamps_kept_and_parsed():
    df = frame()
    df["time_s"] = (df["time"] - pd.Timestamp(0)) // pd.Timedelta("1s")
    df["time_str"] = df["time"].dt.strftime("%Y-%m-%d")
    a = Interactions.from_events(df, timestamp="time")
    for column in ("time_s", "time_str"):
        b = Interactions.from_events(df, timestamp=column)
        np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert a.timestamps.dtype == np.dtype("datetime64[ns]")
    assert a.to_frame()["timestamp"].max() == pd.Timestamp("2024-01-06")


# ------------------------------------------------------------------ bad input
def test_bad_input_messages(tmp_path):
    df = frame()
    with pytest.raises(ValueError, match="empty"):
        Interactions.from_events(df.iloc[:0])
    with pytest.raises(ValueError, match="unknown columns: user='who'"):
        Interactions.from_events(df, user="who")
    with pytest.raises(TypeError, match="mixes id types"):
        Interactions.from_arrays(np.array([1, "a"], dtype=object), [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        Interactions.from_arrays([1, 2], [1, 2], weights=[1.0, np.nan])
    with pytest.raises(ValueError, match="do not parse"):
        Interactions.from_arrays([1, 2], [1, 2], timestamps=["2024-01-01", "yesterday-ish"])
    with pytest.raises(ValueError, match="missing values"):
        Interactions.from_arrays([1, None], [1, 2])
    with pytest.raises(ValueError, match="one value per event"):
        Interactions.from_arrays([1, 2], [1])
    with pytest.raises(ValueError, match="event types \\['click'\\]"):
        Interactions.from_events(df, event="kind", event_weights={"view": 1, "purchase": 2})
    with pytest.raises(ValueError, match="half_life needs timestamps"):
        Interactions.from_events(df, half_life=10)
    with pytest.raises(ValueError, match="combine"):
        Interactions.from_events(df, combine="mean")
    with pytest.raises(TypeError, match="mixed|holds"):
        Interactions.from_arrays([1], [1]).add(users=["x"], items=[1])
    with pytest.raises(FileNotFoundError):
        Interactions.from_events(tmp_path / "missing.parquet")
    with pytest.raises(ValueError, match="cannot tell the format"):
        (tmp_path / "log.json").write_text("{}")
        Interactions.from_events(tmp_path / "log.json")
    with pytest.raises(TypeError, match="source must be"):
        Interactions.from_events([1, 2, 3])
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "log.parquet")
    with pytest.raises(ValueError, match="unknown columns"):
        Interactions.from_events(tmp_path / "log.parquet", user="nope")
    with pytest.raises(ValueError, match="missing values"):
        Interactions.from_events(pl.DataFrame({"user": [1, None], "item": [1, 2]}))


def test_save_load_round_trip(tmp_path):
    log = Interactions.from_events(frame(), weight="rating", timestamp="time",
                                   weighting="bm25", k1=10)
    log.save(tmp_path / "log.npz")
    for mmap in (False, True):
        back = Interactions.load(tmp_path / "log.npz", mmap=mmap)
        assert back.user_ids == log.user_ids and back.item_ids == log.item_ids
        assert (back.matrix != log.matrix).nnz == 0
        np.testing.assert_array_equal(back.timestamps, log.timestamps)
        assert back._settings == log._settings
    with pytest.raises(ValueError, match="cannot be saved"):
        Interactions.from_arrays([b"a", b"b"], [1, 2]).save(tmp_path / "x.npz")


def test_id_map_checks():
    ids = IdMap(np.array([5, 7]))
    with pytest.raises(ValueError, match="not in this map"):
        ids.to_internal([8])
    assert ids.to_internal([8, 7], missing="ignore").tolist() == [-1, 1]
    with pytest.raises(ValueError, match="< 2"):
        ids.to_external([2])


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_native_grouping_large_and_threaded(threads):
    rng = np.random.default_rng(0)
    n, n_users, n_items = 400_000, 3000, 500
    users = rng.integers(0, n_users, n).astype(np.int32)
    items = rng.integers(0, n_items, n).astype(np.int32)
    values = rng.random(n)
    indptr, indices, summed, counts, _ = _core.group_events(
        users, items, values, n_users=n_users, n_items=n_items, combine="sum",
        num_threads=threads)
    expected = sp.csr_matrix((values, (users, items)), shape=(n_users, n_items))
    got = sp.csr_matrix((summed, indices, indptr), shape=(n_users, n_items))
    assert abs(got - expected).max() < 1e-5
    ones = sp.csr_matrix((np.ones(n), (users, items)), shape=(n_users, n_items))
    np.testing.assert_array_equal(counts, ones.data)
    # "last" without times keeps input order across the threads' chunks
    order = np.arange(n, dtype=np.float64)
    _, _, last, _, _ = _core.group_events(users, items, order, n_users=n_users,
                                          n_items=n_items, combine="last", num_threads=threads)
    latest = np.zeros((n_users, n_items))
    latest[users, items] = order  # NumPy assigns repeated indices in order: the last wins
    rows = np.repeat(np.arange(n_users), np.diff(indptr))
    np.testing.assert_array_equal(last, latest[rows, indices])


# ------------------------------------------------------------------ string ids through Arrow
def arrow_chunks(values, kind, cuts):
    """``values`` as a ChunkedArray of ``kind`` cut at ``cuts``, the chunks sliced out of
    larger arrays (so that their offsets do not start at 0)."""
    chunks, start = [], 0
    for stop in sorted({min(cut, len(values)) for cut in cuts} | {len(values)}):
        padded = pa.array(["pad"] + list(values[start:stop]) + ["pad"], type=kind)
        chunks.append(padded.slice(1, stop - start))
        start = stop
    return pa.chunked_array(chunks, type=kind)


ID_TEXT = st.sampled_from(["", "a", "a\0", "ab", "b", "é", "日本", "user12", "user123",
                           "x" * 16, "x" * 16 + "a", "x" * 24, "x" * 24 + "\0", "x" * 25,
                           "x" * 23 + "y", "prefix-shared-by-these-ids-1",
                           "prefix-shared-by-these-ids-2", "prefix-shared-by-these-ids-10"])


@given(st.lists(st.one_of(ID_TEXT, st.text(max_size=30)), min_size=1, max_size=60),
       st.sampled_from([pa.string(), pa.large_string(), pa.binary(), pa.large_binary()]),
       st.lists(st.integers(0, 60), max_size=4))
def test_native_string_factorize_matches_pandas(values, kind, cuts):
    chunked = arrow_chunks(values, kind, cuts)
    python = np.array([v.encode() if pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                       else v for v in values], dtype=object)
    want_ids = sorted(set(python.tolist()))  # not pd.factorize: pandas 2 hashes "a\0" as "a"
    want_codes = [want_ids.index(value) for value in python.tolist()]
    codes, ids = interactions._factorize(chunked, "users")
    assert codes.dtype == np.int32 and ids.dtype == object
    np.testing.assert_array_equal(codes, want_codes)
    assert ids.tolist() == list(want_ids)


def test_native_string_factorize_many_distinct_and_long_ids():
    rng = np.random.default_rng(3)
    # enough distinct ids to grow the table several times; long ids share their first 24
    # bytes, so equality and order are settled by the bytes after the inline head
    short = [f"user{n}" for n in rng.integers(0, 60_000, 200_000)]
    long = [f"{'shared-head-' * 3}{n}" for n in rng.integers(0, 3000, 20_000)]
    for values in (short, long, short[:1000] + long[:1000]):
        codes, ids = interactions._factorize(pa.chunked_array([pa.array(values)]), "items")
        want_codes, want_ids = pd.factorize(np.array(values, dtype=object), sort=True)
        np.testing.assert_array_equal(codes, want_codes)
        assert ids.tolist() == list(want_ids)


def test_string_id_columns_of_every_arrow_type_agree(tmp_path):
    users = ["u2", "u1", "u2", "u3", "u1", "ü", ""]
    items = ["i30", "i10", "i30", "i20", "i20", "i10", "i10"]
    weights = [1.0, 4.0, 2.0, 5.0, 3.0, 1.0, 2.0]
    expected = Interactions.from_arrays(np.array(users, dtype=object),
                                        np.array(items, dtype=object), weights)
    frames = {kind: pa.table({"user": pa.array(users, kind), "item": pa.array(items, kind),
                              "w": weights})
              for kind in (pa.string(), pa.large_string(), pa.string_view())}
    frames["dictionary"] = pa.table({"user": pa.array(users).dictionary_encode(),
                                     "item": pa.array(items).dictionary_encode(), "w": weights})
    frames["chunked"] = pa.concat_tables([frames[pa.string()].slice(0, 3),
                                          frames[pa.string()].slice(3)])
    pq.write_table(frames[pa.string()], tmp_path / "log.parquet")
    sources = list(frames.values()) + [
        tmp_path / "log.parquet", frames[pa.string()].to_pandas(),  # pandas str: Arrow-backed
        pd.DataFrame({"user": users, "item": items, "w": weights}, dtype=object).astype(
            {"w": float}), pl.from_arrow(frames[pa.string()])]
    for source in sources:
        got = Interactions.from_events(source, weight="w")
        assert got.user_ids == expected.user_ids and got.item_ids == expected.item_ids
        assert got.user_ids.ids.dtype == object and got.user_ids.ids[0] == ""
        assert dense(got) == dense(expected)
        np.testing.assert_array_equal(got.counts, expected.counts)
    # dictionary-read Parquet (the values are the ids, not the dictionary codes)
    read = Interactions.from_events(tmp_path / "log.parquet", weight="w",
                                    read_options={"read_dictionary": ["user", "item"]})
    assert read.user_ids == expected.user_ids and dense(read) == dense(expected)


def test_binary_ids_and_string_event_types_through_arrow():
    table = pa.table({"user": pa.array([b"b", b"a", b"b"]), "item": [1, 2, 1],
                      "kind": ["view", "buy", "view"]})
    log = Interactions.from_events(table, event="kind", event_weights={"view": 1, "buy": 5})
    assert log.user_ids.ids.tolist() == [b"a", b"b"]
    assert dense(log) == [[0, 5], [2, 0]]


def test_arrow_string_ids_bad_input(tmp_path):
    with pytest.raises(ValueError, match="column 'user' has 1 missing values"):
        Interactions.from_events(pa.table({"user": ["a", None], "item": ["x", "y"]}))
    with pytest.raises(ValueError, match="users has 1 missing values"):
        Interactions.from_arrays(pd.Series(["a", None], dtype="str"), ["x", "y"])
    pq.write_table(pa.table({"user": ["a", None], "item": ["x", "y"]}), tmp_path / "n.parquet")
    with pytest.raises(ValueError, match="'user' has 1 missing"):
        Interactions.from_events(tmp_path / "n.parquet")
    log = Interactions.from_arrays([1, 2], [1, 2])
    with pytest.raises(TypeError, match="string but the map holds integer"):
        log.add(pa.table({"user": ["x"], "item": [1]}))
    # the native kernel checks what it is given
    with pytest.raises(ValueError, match="spans bytes"):
        _core.factorize_strings([np.array([0, 5], np.int32)], [np.zeros(3, np.uint8)])
    with pytest.raises(ValueError, match="spans bytes"):
        _core.factorize_strings([np.array([2, 1], np.int64)], [np.zeros(3, np.uint8)])
    with pytest.raises(TypeError, match="int32 or int64"):
        _core.factorize_strings([np.array([0, 1], np.float64)], [np.zeros(3, np.uint8)])
    with pytest.raises(ValueError, match="one array per chunk"):
        _core.factorize_strings([np.array([0, 1], np.int32)], [])
    codes, first = _core.factorize_strings([], [])
    assert codes.size == 0 and first.size == 0


def test_add_string_ids_from_arrow_keeps_ints():
    log = Interactions.from_events(pa.table({"user": ["b", "a"], "item": ["x", "y"]}))
    grown = log.add(pa.table({"user": ["c", "a"], "item": ["y", "z"]}))
    assert grown.user_ids.ids.tolist() == ["a", "b", "c"]
    assert grown.item_ids.ids.tolist() == ["x", "y", "z"]
    assert dense(grown) == [[0, 1, 1], [1, 0, 0], [0, 1, 0]]


@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.lists(st.integers(0, 40),
                                                                          max_size=3),
       st.booleans())
def test_dictionary_string_ids_match_decoded(codes, cuts, shared):
    words = ["b", "", "é", "a", "x" * 30, "a\0"]
    values, chunks, start = [words[c] for c in codes], [], 0
    for stop in sorted({min(cut, len(codes)) for cut in cuts} | {len(codes)}):
        if shared:  # one dictionary for all chunks, with values no event uses
            dictionary = pa.array(words + ["unused"])
            chunks.append(pa.DictionaryArray.from_arrays(pa.array(codes[start:stop], pa.int32()),
                                                         dictionary))
        else:  # each chunk its own dictionary, in its own order
            chunks.append(pa.array(values[start:stop], pa.string()).dictionary_encode())
        start = stop
    chunked = pa.chunked_array(chunks, type=chunks[0].type)
    got_codes, got_ids = interactions._factorize(chunked, "items")
    want_ids = sorted(set(values))  # not pd.factorize: pandas 2 hashes "a\0" as "a"
    want_codes = [want_ids.index(value) for value in values]
    np.testing.assert_array_equal(got_codes, want_codes)
    assert got_ids.tolist() == list(want_ids)


def test_dictionary_ids_with_nulls():
    # a null value inside the dictionary that an event points at is a missing id
    dictionary = pa.array(["a", None, "b"])
    used = pa.DictionaryArray.from_arrays(pa.array([0, 1, 2], pa.int32()), dictionary)
    with pytest.raises(ValueError, match="users has 1 missing values"):
        interactions._factorize(pa.chunked_array([used]), "users")
    unused = pa.DictionaryArray.from_arrays(pa.array([2, 0, 2], pa.int32()), dictionary)
    codes, ids = interactions._factorize(pa.chunked_array([unused]), "users")
    assert codes.tolist() == [1, 0, 1] and ids.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="column 'user' has 1 missing"):
        Interactions.from_events(pa.table({"user": pa.array(["a", None]).dictionary_encode(),
                                           "item": [1, 2]}))


def test_parquet_dictionary_coded_ids_are_read_as_dictionaries(tmp_path):
    import pyarrow.parquet as parquet

    rng = np.random.default_rng(5)
    n = 20_000
    table = pa.table({"user": [f"user{u}" for u in rng.integers(0, 5000, n)],  # many distinct
                      "item": [f"item{i}" for i in rng.integers(0, 50, n)],  # few: dictionary
                      "w": rng.random(n)})
    path = tmp_path / "log.parquet"
    # small dictionary pages: the user column overflows into PLAIN pages, the item one fits
    parquet.write_table(table, path, dictionary_pagesize_limit=16_384, row_group_size=7000)
    metadata = parquet.read_metadata(path)
    assert interactions._dictionary_coded(metadata, ["user", "item", "w"]) == ["item"]
    expected = Interactions.from_events(table, weight="w")
    for options in (None, {"read_dictionary": ["user", "item"]}, {"read_dictionary": []}):
        got = Interactions.from_events(path, weight="w", read_options=options)
        assert got.user_ids == expected.user_ids and got.item_ids == expected.item_ids
        assert (got.matrix != expected.matrix).nnz == 0
        np.testing.assert_array_equal(got.counts, expected.counts)


def test_arrow_string_id_maps_convert_on_first_use():
    table = pa.table({"user": ["b", "a", "b"],
                      "item": pa.array(["y", "x", "y"]).dictionary_encode()})
    log = Interactions.from_events(table)
    assert log.user_ids._array is None and len(log.user_ids) == 2  # not yet Python objects
    assert log.shape == (2, 2) and dense(log) == [[1, 0], [0, 2]]
    ids = log.user_ids.ids
    assert ids.tolist() == ["a", "b"] and ids.dtype == object and not ids.flags.writeable
    assert log.user_ids == IdMap(np.array(["a", "b"], dtype=object))
    assert log.item_ids.to_internal(["y"]).tolist() == [1]
    empty, codes = IdMap.from_values(pa.chunked_array([], type=pa.string()))
    assert len(empty) == 0 and empty.ids.size == 0 and codes.size == 0
    with pytest.raises(TypeError, match="ChunkedArray"):
        IdMap(pa.array(["a"]))


def test_sliced_dictionary_ids():
    sliced = pa.array(["c", "a", "b", "a", "c", "b"]).dictionary_encode().slice(2, 3)
    codes, ids = interactions._factorize(pa.chunked_array([sliced]), "items")
    assert codes.tolist() == [1, 0, 2] and ids.tolist() == ["a", "b", "c"]


def _resaved(source, path, change_header=None, change_arrays=None):
    """The Interactions file ``source`` written again to ``path`` with its header or arrays
    changed (a tampered or damaged file)."""
    import json

    from recfuse import persistence

    with np.load(source) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(arrays.pop(persistence.HEADER_KEY).tobytes())
    if change_header:
        change_header(header)
    if change_arrays:
        change_arrays(arrays)
    np.savez(path, **{persistence.HEADER_KEY: np.frombuffer(json.dumps(header).encode(),
                                                            np.uint8)}, **arrays)
    return path


@pytest.mark.parametrize("mmap", [False, True])
def test_load_refuses_damaged_files(tmp_path, mmap):
    log = Interactions.from_arrays(["a", "a", "b"], ["x", "y", "x"], [1.0, 2.0, 3.0])
    log.save(tmp_path / "log.npz")
    cases = [
        ({"change_arrays": lambda a: a["indices"].__setitem__(0, 7)},
         r"the pairs of .* has column indices outside \[0, 2\): got 7"),
        ({"change_arrays": lambda a: a.update(counts=a["counts"][:2])},
         "must be 1-d arrays of 3 entries each"),
        ({"change_arrays": lambda a: a.update(user_ids=np.array(["a", "a"]))},
         "ids must be distinct"),
        ({"change_header": lambda h: h["params"].update(weighting="bogus")},
         r"malformed header: weighting must be one of \('none', "),
        ({"change_header": lambda h: h["params"].update(weighting="bm25",
                                                         weighting_options={"k1": -1})},
         "malformed header: k1 must be >= 0.0"),
        ({"change_header": lambda h: h["params"].update(colour="red")},
         r"malformed header: unknown settings \['colour'\]"),
    ]
    for position, (change, message) in enumerate(cases):
        path = _resaved(tmp_path / "log.npz", tmp_path / f"bad{position}.npz", **change)
        with pytest.raises(ValueError, match=message):
            Interactions.load(path, mmap=mmap)


def test_weighting_names_are_checked_everywhere():
    log = Interactions.from_arrays(["a", "b"], ["x", "x"])
    with pytest.raises(ValueError, match=r"weighting must be one of \('none', "):
        log.weighted("bm26")
    with pytest.raises(ValueError, match="weighting must be one of"):
        interactions._weigh(log, "bogus", {})  # never silently bm25


def test_input_errors_name_the_argument():
    with pytest.raises(ValueError, match="half_life must be seconds, a timedelta or a duration "
                                         "string like '30D' or '12h', got 'abc'"):
        Interactions.from_arrays([1], [1], timestamps=[1], half_life="abc")
    with pytest.raises(TypeError, match="users must be a 1-d sequence with one value per event "
                                        r"\(a list, an array, a Series\), got int 1"):
        Interactions.from_arrays(1, 2)
    with pytest.raises(TypeError, match="items must be a 1-d sequence .* got str 'ab'"):
        Interactions.from_arrays([1, 2], "ab")
    with pytest.raises(TypeError, match="weights must be a 1-d sequence .* got float"):
        Interactions.from_arrays([1, 2], [1, 2], 1.5)
    log = Interactions.from_arrays(["a"], ["x"])
    with pytest.raises(TypeError, match="add\\(\\) without a source takes the arrays users=, "
                                        r"items=.* got \['item', 'user'\], missing "
                                        r"\['users', 'items'\]"):
        log.add(user=["a"], item=["x"])
    with pytest.raises(TypeError, match=r"got \['items', 'users', 'weight'\]"):
        log.add(users=["a"], items=["x"], weight=[2.0])
    assert log.add(users=["a"], items=["x"]).matrix.toarray().tolist() == [[2.0]]


def test_id_maps_refuse_repeated_ids():
    with pytest.raises(ValueError, match=r"ids must be distinct .* e.g. \['a'\]"):
        IdMap(["a", "a"])
    with pytest.raises(ValueError, match=r"e.g. \[3\]"):
        IdMap(np.array([3, 1, 3]))
    with pytest.raises(ValueError, match=r"e.g. \['b'\]"):
        IdMap(pa.chunked_array([["b", "a"], ["b"]]))
    assert IdMap(["b", "a"]).to_internal(["a"]).tolist() == [1]


def test_a_list_of_mixed_id_types_is_refused_as_documented():
    with pytest.raises(TypeError, match=r"users mixes id types \(mixed-integer\)"):
        Interactions.from_arrays(["a", 1, "b"], [1, 2, 3])
    with pytest.raises(TypeError, match="items mixes id types"):
        Interactions.from_arrays([1, 2], ("x", b"y"))
    assert Interactions.from_arrays(["b", "a"], [1, 2]).user_ids.ids.tolist() == ["a", "b"]
    assert Interactions.from_arrays((2, 1), [1.5, 2]).item_ids.ids.tolist() == [1.5, 2.0]


def test_added_ids_of_another_numeric_dtype_keep_the_maps_ids():
    """uint64 and int64 ids together would become float64 in NumPy and change the large
    existing ids: new ids are cast to the map's dtype when they fit exactly, else refused."""
    big = np.array([3, 2**63 + 5, 2**63 + 5000], np.uint64)
    log = Interactions.from_arrays(big, [1, 1, 2])
    grown = log.add(users=np.array([10], np.int64), items=[1])
    assert grown.user_ids.ids.dtype == np.uint64
    assert grown.user_ids.to_external([0, 1, 2, 3]).tolist() == [3, 2**63 + 5, 2**63 + 5000, 10]
    with pytest.raises(TypeError, match="do not all fit the map's uint64 ids exactly"):
        log.add(users=np.array([-1], np.int64), items=[1])
    close = Interactions.from_arrays(np.array([2**63 + 5, 2**63 + 7], np.uint64), [1, 2])
    assert close.user_ids.ids.tolist() == [2**63 + 5, 2**63 + 7]  # the dense path


def test_a_malformed_sparse_matrix_is_refused_before_conversion():
    """scipy's CSC -> CSR conversion writes out of bounds on row indices past the shape."""
    by_column = sp.csc_matrix((np.ones(4, np.float32), np.array([0, 10**8, 2, -10**8], np.int32),
                               np.array([0, 2, 4, 4])), shape=(5, 3))
    with pytest.raises(ValueError, match=r"matrix has row indices outside \[0, 5\)"):
        Interactions.from_matrix(by_column)


# ------------------------------------------------------------------ timestamp range
@pytest.mark.parametrize("times", [
    np.array(["3000-01-01", "2020-01-01"], "datetime64[s]"),  # was 1830-11-23
    np.array(["1600-01-01"], "datetime64[D]"),
    np.array(["3000"], "datetime64[Y]"),
    ["3000-01-01"],  # parsed by pandas in microseconds
    [1e12],  # seconds: was NaT
    [-2**63],  # abs(int64 min) < 0 let it through: was 1970-01-01
])
def test_times_beyond_int64_nanoseconds_are_refused(times, tmp_path):
    match = "outside int64 nanoseconds|overflow int64 nanoseconds"
    if isinstance(times[0], str) and int(pd.__version__.split(".")[0]) < 3:
        match = "do not parse as times"  # pandas 2 parses strings in nanoseconds only: NaT
    with pytest.raises(ValueError, match=match):
        Interactions.from_arrays([1] * len(times), [1] * len(times), timestamps=times)
    table = pa.table({"user": [1], "item": [1],
                      "t": pa.array(np.array(["3000-01-01"], "datetime64[us]"))})
    pq.write_table(table, tmp_path / "log.parquet")
    with pytest.raises(ValueError, match="outside int64 nanoseconds"):
        Interactions.from_events(tmp_path / "log.parquet", timestamp="t")


def test_times_at_the_edges_of_int64_nanoseconds_are_kept():
    edges = np.array(["1677-09-21T00:12:44", "2262-04-11T23:47:16"], "datetime64[s]")
    log = Interactions.from_arrays([1, 2], [1, 1], timestamps=edges)
    seconds_of = log.timestamps.view(np.int64) // 10**9  # (NumPy's own ns -> s cast is off here)
    assert seconds_of.tolist() == edges.view(np.int64).tolist()
    seconds = Interactions.from_arrays([1, 2], [1, 1], timestamps=[-9223372036, 9223372036])
    np.testing.assert_array_equal(seconds.timestamps, log.timestamps)


def test_iso_times_of_mixed_precision_parse():
    """pandas infers one format from the first string; later ISO 8601 times with a time of
    day, fractional seconds or an offset were refused as unparseable."""
    log = Interactions.from_arrays([1, 1, 1], [1, 2, 3], timestamps=[
        "2020-01-01", "2020-01-02 10:00:00.5", "2020-01-03T00:00:00+01:00"])
    assert log.timestamps.tolist() == [np.datetime64(t, "ns").item() for t in (
        "2020-01-01T00:00", "2020-01-02T10:00:00.5", "2020-01-02T23:00")]
    with pytest.raises(ValueError, match="1 values do not parse as times, e.g. \\['junk'\\]"):
        Interactions.from_arrays([1, 1], [1, 2], timestamps=["2020-01-01", "junk"])


# ------------------------------------------------------------------ event log files as users have them
def test_csv_ids_are_their_text(tmp_path):
    """pandas reads "007", " 7" and "7" as one int 7: three users became one, and ids past
    64 bits were a traceback. An id is its text; a column of plain integers keeps int ids."""
    path = tmp_path / "log.csv"
    path.write_text("user,item,big\n007,10,18446744073709551615\n7,20,1\n 7,10,1\n")
    log = Interactions.from_events(path)
    assert log.user_ids.ids.tolist() == [" 7", "007", "7"] and log.n_events == 3
    assert log.item_ids.ids.dtype == np.int64 and log.item_ids.ids.tolist() == [10, 20]
    assert Interactions.from_events(path, item="big").item_ids.ids.dtype == np.uint64
    path.write_text("user,item\n99999999999999999999,1.0\n1,1\n")
    huge = Interactions.from_events(path)
    assert huge.user_ids.ids.tolist() == ["1", "99999999999999999999"]
    assert huge.item_ids.ids.tolist() == ["1", "1.0"]
    # matched against string ids (an evaluation file of a model trained on them): kept as text
    path.write_text("user,item\n7,10\n")
    test = Interactions.from_events(path, user_ids=log.user_ids, item_ids=IdMap(["10"]),
                                    unknown="drop")
    assert test.dropped_events == 0 and test.matrix.nnz == 1
    typed = Interactions.from_events(path, read_options={"dtype": {"user": str}})
    assert typed.user_ids.ids.tolist() == ["7"]  # the caller's dtype wins


def test_python_ints_past_int64_are_not_merged_as_floats():
    log = Interactions.from_arrays([2**63 + 1, 2**63 + 2, 1], [1, 2, 3])
    assert log.n_users == 3 and log.user_ids.ids.dtype == np.uint64
    with pytest.raises(ValueError, match="integers from 1 to 1180591620717411303424"):
        Interactions.from_arrays(pd.Series([2**70, 1], dtype=object), [1, 2])


def test_unreadable_files_and_bad_cells_name_the_file(tmp_path):
    files = {"empty.csv": b"", "quote.csv": b'user,item\n1,10\n"2,20\n',
             "latin1.csv": b"user,item\nJos\xe9,x\n", "junk.parquet": b"not parquet"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=f"cannot read '.*{name}' as"):
            Interactions.from_events(tmp_path / name)
    cells = {"user,item\n1,10\n,20\n": (ValueError, "users has 1 missing values"),
             "user,item,w\n1,10,1\n2,20,abc\n": (TypeError, "e.g. 'abc' at row 1"),
             "user,item,t\n1,10,2020-01-01\n2,20,\n": (ValueError, "timestamps has 1 missing")}
    for text, (error, message) in cells.items():
        (tmp_path / "log.csv").write_text(text)
        weight, timestamp = ("w" if ",w" in text else None), ("t" if ",t" in text else None)
        with pytest.raises(error, match=f"log.csv': .*{message}"):
            Interactions.from_events(tmp_path / "log.csv", weight=weight, timestamp=timestamp)
    (tmp_path / "semi.csv").write_text("user;item\n1;10\n")
    with pytest.raises(ValueError, match="separated by ';'"):
        Interactions.from_events(tmp_path / "semi.csv")


def test_a_folder_of_parquet_files_reads_as_one_log(tmp_path):
    """A dataset written in parts (Spark, Dask; hive partition folders) is one event log."""
    pytest.importorskip("pyarrow")
    for day, frame in (("1", {"user": ["a", "b"], "item": [1, 2]}),
                       ("2", {"user": ["c", "a"], "item": [3, 1]})):
        (tmp_path / "log" / f"day={day}").mkdir(parents=True)
        pd.DataFrame(frame).to_parquet(tmp_path / "log" / f"day={day}" / "part-0.parquet")
    log = Interactions.from_events(tmp_path / "log")
    assert log.user_ids.ids.tolist() == ["a", "b", "c"] and log.n_events == 4
    assert log.matrix[0, log.item_ids.to_internal([1])[0]] == 2  # a's two events on item 1
    with pytest.raises(ValueError, match=r"unknown columns: \['w'\]"):
        Interactions.from_events(tmp_path / "log", weight="w")


# ------------------------------------------------------------------ hunt: sources and dtypes
def test_polars_lazyframe_and_arrow_dataset_sources(tmp_path):
    import pyarrow.dataset as ds

    df = pd.DataFrame({"user": ["b", "a", "b"], "item": [1, 2, 1], "extra": [0, 0, 0]})
    expected = Interactions.from_events(df)
    lazy = pl.from_pandas(df).lazy()
    got = Interactions.from_events(lazy)
    assert got.user_ids == expected.user_ids and dense(got) == dense(expected)
    with pytest.raises(ValueError, match="unknown columns: user='who'"):
        Interactions.from_events(lazy, user="who")
    pq.write_table(pa.Table.from_pandas(df), tmp_path / "x.parquet")
    got = Interactions.from_events(ds.dataset(tmp_path))
    assert got.user_ids == expected.user_ids and dense(got) == dense(expected)


def test_duplicate_column_names_are_named():
    df = pd.DataFrame([[1, 2, 3], [4, 5, 6]], columns=["user", "item", "user"])
    with pytest.raises(ValueError, match="several columns named user='user'"):
        Interactions.from_events(df)
    table = pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4]), pa.array([5, 6])],
                                 names=["user", "item", "user"])
    with pytest.raises(ValueError, match="several columns named user='user'"):
        Interactions.from_events(table)


def test_pandas_columns_labelled_by_ints():
    df = pd.DataFrame(np.array([[1, 3], [2, 4]]))  # labels 0 and 1
    for user, item in ((0, 1), ("0", "1")):
        log = Interactions.from_events(df, user=user, item=item)
        assert log.user_ids.ids.tolist() == [1, 2] and log.item_ids.ids.tolist() == [3, 4]


def test_decimal_weights_from_arrow_polars_pandas():
    from decimal import Decimal

    values = [Decimal("1.5"), Decimal("2"), Decimal("3")]
    base = {"user": [1, 2, 1], "item": [1, 2, 1]}
    sources = [pa.table({**base, "w": pa.array(values)}), pl.DataFrame({**base, "w": values}),
               pd.DataFrame({**base, "w": pd.array(values, dtype=pd.ArrowDtype(
                   pa.decimal128(5, 2)))})]
    for source in sources:
        assert dense(Interactions.from_events(source, weight="w")) == [[4.5, 0], [0, 2]]


def test_categorical_ids_of_mixed_types_are_refused():
    df = pd.DataFrame({"user": pd.Categorical([1, "1", 1]), "item": [1, 2, 1]})
    with pytest.raises(TypeError, match="users mixes id types"):
        Interactions.from_events(df)
    # an unused category of another type does not matter
    df = pd.DataFrame({"user": pd.Categorical(["a", "b"], categories=["a", "b", 1]),
                       "item": [1, 1]})
    assert Interactions.from_events(df).user_ids.ids.tolist() == ["a", "b"]


def test_list_of_bools_and_ints_does_not_merge_true_with_1():
    with pytest.raises(TypeError, match="users mixes id types"):
        Interactions.from_events({"user": [True, 1, 2], "item": [1, 2, 1]})
    assert Interactions.from_arrays([True, False], [1, 2]).user_ids.ids.tolist() == [False, True]


def test_errors_name_the_column_and_nullable_weights_count_missing():
    df = pd.DataFrame({"uid": pd.array([1, None, 1], dtype="Int64"), "item": [1, 2, 1],
                       "w": pd.array([True, None, True], dtype="boolean")})
    with pytest.raises(ValueError, match=r"users has 1 missing values.*\(column 'uid'\)"):
        Interactions.from_events(df, user="uid")
    df["uid"] = [1, 2, 1]
    with pytest.raises(ValueError, match=r"weights has 1 NaN/inf values.*\(column 'w'\)"):
        Interactions.from_events(df, user="uid", weight="w")


def test_id_lookups_refuse_a_list_of_mixed_types_instead_of_merging_them():
    # np.asarray(["a", 1]) is ["a", "1"] and np.asarray([True, 2]) is [1, 2]: looked up as
    # such, the int 1 found the string id "1" and True found the int id 1
    with pytest.raises(TypeError, match=r"ids mix types \(mixed-integer\)"):
        IdMap(["1", "a"]).to_internal(["a", 1])
    with pytest.raises(TypeError, match="ids mix types"):
        IdMap([1, 2]).to_internal([True, 2], missing="ignore")
    with pytest.raises(TypeError, match="ids mix types"):
        IdMap([1, 2]).to_internal(np.array([1, "2"], dtype=object))
    assert IdMap([1, 2]).to_internal([1, 2.0]).tolist() == [0, 1]
    assert IdMap(["1", "a"]).to_internal([1], missing="ignore").tolist() == [-1]


_ID_VALUES = st.one_of(st.integers(-5, 40), st.integers(-2 ** 70, 2 ** 70),
                       st.floats(-3, 40, allow_nan=False), st.sampled_from(["a", "7", "b\0"]),
                       st.booleans())


@given(ints=st.booleans(), wanted=st.lists(_ID_VALUES, max_size=40))
def test_a_few_ids_are_looked_up_as_many_are(ints, wanted):
    """Lookups of up to 16 ids go one by one (a server's requests), more through one
    vectorised call: the same ints (or the same error) either way."""
    id_map = IdMap(np.arange(0, 40, 3) if ints else np.array(["a", "7", "b\0", "c"], object))

    def looked_up(values):
        try:
            return id_map.to_internal(values, missing="ignore").tolist()
        except TypeError as error:
            return str(error)

    padded = list(wanted) + [wanted[0] if wanted else 3] * 20  # past the one-by-one path
    few, many = looked_up(wanted), looked_up(padded)
    assert few == (many if isinstance(many, str) else many[:len(wanted)])
    # position: one id at a time, as to_internal of that id alone
    assert [id_map.position(value) for value in wanted] == [looked_up([value])[0]
                                                            for value in wanted]


@pytest.mark.parametrize("unit", ["ns", "s", "D"])
def test_a_few_datetime_ids_are_found(unit):
    # one by one, datetime64 ids went through tolist(): ints of nanoseconds (or dates) that
    # the DatetimeIndex never found, so extend appended known ids again (a map of repeated
    # ids) and a log's add() of a known datetime user failed in group_events
    known = np.array(["2020-01-01", "2021-01-01"], f"datetime64[{unit}]")
    id_map = IdMap(known)
    wanted = np.array(["2021-01-01", "2022-01-01"], f"datetime64[{unit}]")
    assert id_map.to_internal(wanted, missing="ignore").tolist() == [1, -1]
    assert id_map.to_internal(np.tile(wanted, 10), missing="ignore")[:2].tolist() == [1, -1]
    assert id_map.position(known[0]) == 0
    assert id_map.extend(wanted).ids.tolist() == [*known.tolist(), wanted[1].item()]
    log = Interactions.from_arrays(known, [1, 2]).add(users=known[:1], items=[2])
    assert log.shape == (2, 2) and log.matrix.toarray().tolist() == [[1, 1], [0, 1]]


def test_an_id_map_knows_its_kind_once():
    strings = IdMap(np.array(["b", "a"], dtype=object))
    assert strings.kind == "string" and IdMap([3, 1]).kind == "integer"
    assert IdMap([]).kind == "empty" and IdMap([0.5]).kind == "floating"
    # found once: a lookup no longer reads every id of an object map (8 ms at 1M ids)
    strings._ids.flags.writeable = True
    strings._ids[0] = 5  # were the kind inferred again, the lookup would see mixed ids
    assert strings.to_internal(["a"]).tolist() == [1]


def test_an_empty_id_map_takes_ids_of_any_type():
    # IdMap([]) holds float64: extending it refused strings and made ints floats
    assert IdMap([]).extend(["b", "a"]).ids.tolist() == ["a", "b"]
    ints = IdMap([]).extend([3, 1])
    assert ints.ids.dtype.kind == "i" and ints.ids.tolist() == [1, 3]
    log = Interactions.from_arrays(["u"], [7], user_ids=IdMap([]), item_ids=IdMap([]))
    assert log.user_ids.ids.tolist() == ["u"] and log.item_ids.ids.dtype.kind == "i"


def test_string_ids_ending_in_nul_are_refused_at_save_not_lost_at_load(tmp_path):
    # fixed-width NumPy strings drop trailing NULs: "a\0" was saved as "a", a file that did
    # not load (with "a" too) or came back with another id
    log = Interactions.from_arrays(pd.Series(["a\x00", "a"], dtype=object), [1, 2])
    with pytest.raises(ValueError, match=r"user ids ending in NUL .* e.g. 'a\\x00'"):
        log.save(tmp_path / "log.npz")
    assert not (tmp_path / "log.npz").exists()
    log = Interactions.from_arrays([1, 2], pd.Series(["", "x\x00y"], dtype=object))
    log.save(tmp_path / "log.npz")
    assert Interactions.load(tmp_path / "log.npz").item_ids == log.item_ids


def test_from_matrix_refuses_id_maps_that_are_not_idmaps():
    matrix = sp.csr_matrix(np.eye(2, dtype=np.float32))
    with pytest.raises(TypeError, match="user_ids must be an IdMap, got list"):
        Interactions.from_matrix(matrix, user_ids=["a", "b"])
    with pytest.raises(TypeError, match="item_ids must be an IdMap, got ndarray"):
        Interactions.from_matrix(matrix, item_ids=np.array([1, 2]))
    log = Interactions.from_matrix(matrix, user_ids=IdMap(["a", "b"]))
    assert log.to_frame()["user"].tolist() == ["a", "b"]


@pytest.mark.parametrize("mmap", [False, True])
def test_load_refuses_damaged_settings_and_pair_values(tmp_path, mmap):
    # these loaded as if fine, then add() failed with an unrelated TypeError or the matrix
    # held NaN, negative counts or truncated ones
    log = Interactions.from_events({"user": ["a", "b"], "item": ["x", "y"], "t": [1, 2],
                                    "e": ["v", "c"]}, timestamp="t", event="e",
                                   event_weights={"v": 1, "c": 3}, half_life=10)
    log.save(tmp_path / "log.npz")
    params = lambda **changed: {"change_header": lambda h: h["params"].update(changed)}
    arrays = lambda **changed: {"change_arrays": lambda a: a.update(changed)}
    cases = [
        (params(half_life="x"), "malformed header: half_life must be a real number"),
        (params(half_life=-1.0), r"malformed header: half_life must be > 0.0"),
        (params(reference_time="x"), "malformed header: reference_time must be an integer"),
        (params(fixed_reference="yes"), "malformed header: fixed_reference must be true or"),
        (params(columns="abc"), "malformed header: columns must be an object with the keys"),
        (params(event_weights=5), "malformed header: event_weights must be a list of"),
        (params(event_weights=[["v"]]), "malformed header: event_weights must be a list of"),
        (params(event_weights=[["v", "heavy"]]), r"header: event_weights\[.v.\] must be a real"),
        (arrays(values=np.array([np.nan, 1], np.float32)), "values must be finite real"),
        (arrays(values=np.array(["1", "2"])), "values must be finite real numbers"),
        (arrays(counts=np.array([1.5, 1.0])), "counts must be integers >= 1"),
        (arrays(counts=np.array([0, 1], np.int32)), "counts must be integers >= 1"),
        (arrays(times=np.array([1.5, 2.0])), "times must be integers"),
    ]
    for position, (change, message) in enumerate(cases):
        path = _resaved(tmp_path / "log.npz", tmp_path / f"bad{position}.npz", **change)
        with pytest.raises(ValueError, match=message):
            Interactions.load(path, mmap=mmap)
    back = Interactions.load(tmp_path / "log.npz", mmap=mmap)
    assert back._settings == log._settings
    more = back.add({"user": ["c"], "item": ["x"], "t": [3], "e": ["c"]})
    assert more.n_events == 3


def test_the_pair_arrays_it_hands_out_are_read_only():
    # values, counts and timestamps were its own arrays, writable: writing one changed these
    # "immutable" Interactions and the matrix already built from them
    log = Interactions.from_arrays(["a", "b"], [1, 2], timestamps=[1, 2])
    assert log.matrix[0, 0] == 1
    for array in (log.values, log.counts, log.timestamps):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[1]
    assert log.matrix[0, 0] == 1 and log.counts.tolist() == [1, 1]
    assert log.filter().values.tolist() == [1, 1]


def test_id_lookups_refuse_sets_and_iterators_by_name():
    ids = IdMap([1, 2])
    for values, name in (({1, 2}, "set"), ((i for i in [1]), "generator"), ({1: 2}, "dict")):
        with pytest.raises(TypeError, match=f"ids must be one id or a 1-d sequence .* got {name}"):
            ids.to_internal(values, missing="ignore")
        with pytest.raises(TypeError, match=f"got {name}"):
            ids.extend(values)
    assert ids.to_internal(2).tolist() == [1] and IdMap(["ab"]).to_internal("ab").tolist() == [0]
    assert IdMap(["ab"]).to_internal(np.array("ab")).tolist() == [0]
    assert ids.to_internal(np.array(2)).tolist() == ids.to_internal(np.int64(2)).tolist() == [1]


def test_half_life_decay_of_times_at_both_ends_of_the_range():
    """The decay's ``times - reference`` was an int64 subtraction: events in 1677 and a
    reference in 2262 are ~2**64 ns apart, which wrapped to +2 ns, so the oldest event kept
    weight 1 (instead of 0.987 for a half-life of 1e12 s, or 2.8e-6 for 1e9 s). Exact
    (float64) whatever the distance; ordinary times are unchanged bit for bit."""
    low, high = np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max
    times = np.array([low, 0, high], dtype="datetime64[ns]")
    for half_life, reference in ((1e12, None), (1e9, None),
                                 (1e9, np.datetime64(high, "ns"))):
        it = Interactions.from_arrays([0, 1, 2], [0, 1, 2], timestamps=times,
                                      half_life=half_life, reference_time=reference)
        expected = 0.5 ** ((high - np.array([low, 0, high], dtype=object)) /
                           (half_life * 10**9))
        np.testing.assert_allclose(it.matrix.diagonal(), expected.astype(float), rtol=1e-6)
    ordinary = np.array([1_600_000_000, 1_600_050_000, 1_700_000_000]) * 10**9
    it = Interactions.from_arrays([0, 1, 2], [0, 1, 2], timestamps=ordinary.view(
        "datetime64[ns]"), half_life=86400.0)
    exact = np.exp2((ordinary - ordinary.max()) / (86400.0 * 10**9)).astype(np.float32)
    np.testing.assert_array_equal(it.matrix.diagonal(), exact)


def test_times_beyond_float64_nanoseconds_are_the_documented_error_without_warnings():
    """Float seconds such as 1e300 (timestamps, a temporal_split cut) overflowed to inf in
    the conversion to nanoseconds with NumPy's RuntimeWarning first (an error under
    ``-W error``), and a reference_time before the events overflowed exp2 the same way,
    before the ValueError that says what is wrong."""
    import warnings

    from recfuse.split import temporal_split

    times = np.array([0, 5, 10], dtype="datetime64[s]")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="overflow int64 nanoseconds"):
            Interactions.from_arrays([0, 1], [0, 1], timestamps=[0.0, 1e300])
        it = Interactions.from_arrays([0, 1, 2], [0, 1, 2], timestamps=times)
        with pytest.raises(ValueError, match="cut as seconds since the epoch overflow"):
            temporal_split(it, cut=1e300)
        with pytest.raises(ValueError, match="overflows float32"):
            Interactions.from_arrays([0, 1], [0, 1], timestamps=times[:2], half_life=1.0,
                                     reference_time=np.datetime64(-2**62, "ns"))


def test_an_id_map_refuses_nan_ids():
    # as from_arrays, which counts NaN ids as missing values
    with pytest.raises(ValueError, match="ids must not be NaN"):
        recfuse.IdMap(np.array([1.0, np.nan]))


def test_an_id_map_of_big_endian_ids_looks_them_up():
    # pandas, which looks ids up, indexes native byte order only: the map keeps a native copy
    ids = IdMap(np.array([30, 10, 20], dtype=">i8"))
    assert ids.to_internal([20, 30]).tolist() == [2, 0] and ids.ids.dtype.isnative
