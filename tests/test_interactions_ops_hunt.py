"""Adversarial hunt on what an existing ``recfuse.Interactions`` can do (not its ingestion,
hunted in test_interactions_hunt.py): ``add``, ``weighted``, ``filter``, ``k_core``,
``subset``, the views (``matrix``, ``transpose``, ``counts``, ``timestamps``, ``values``,
``user_codes``, ``to_frame``), ``save``/``load(mmap=...)`` after them, ``IdMap.extend`` /
``to_internal`` / ``position`` / ``to_external``, and ALS/SVD fitted on the results.

The oracle is plain Python written from the docstrings: ``add(events)`` must give the pairs of
``from_arrays(all events together)`` (old ints kept, new ids appended in sorted order, same
combine rule and times); ``k_core`` drops users and items with fewer than k pairs until none
remain; ``compact`` drops empty users/items keeping their order; the weightings' formulas;
every method leaves the original unchanged. The bugs the hunt found are fixed; their tests
stay as regressions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse.interactions import IdMap, Interactions

NS = 10**9
COMBINES = ["sum", "max", "last", "count"]
STRINGS = ["a", "b", "B", "é", "", "10", "9", "a b"]


# ------------------------------------------------------------------ the oracle
def combine_events(events, combine):
    """events: [(value, time)] in input order -> (value, count, latest time) by the rule."""
    values = [v for v, _ in events]
    if combine == "sum":
        value = math.fsum(values)
    elif combine == "max":
        value = max(values)
    elif combine == "count":
        value = float(len(events))
    else:  # last: the latest time, ties (or no times) to the later event
        value = max(enumerate(events), key=lambda e: (e[1][1], e[0]))[1][0]
    return value, len(events), max(t for _, t in events)


def oracle_pairs(users, items, weights, times, combine, half_life=None):
    """{(user, item): (value, count, time)} keyed by external ids."""
    n = len(users)
    weights = [1.0] * n if weights is None else [float(w) for w in weights]
    stamps = [0] * n if times is None else [t * NS for t in times]
    if half_life is not None:
        reference = max(stamps)
        weights = [w * 0.5 ** ((reference - t) / (half_life * NS)) for w, t in zip(weights, stamps)]
    grouped: dict = {}
    for u, i, w, t in zip(users, items, weights, stamps):
        grouped.setdefault((u, i), []).append((w, t))
    return {key: combine_events(events, combine) for key, events in grouped.items()}


def pairs_of(log, weighted=False):
    """{(user, item): (value, count, time)} of a log, by external ids."""
    frame = log.to_frame()
    data = log.matrix.data if weighted else log.values
    times = (np.zeros(len(log), np.int64) if log.timestamps is None
             else log.timestamps.astype(np.int64))
    return {(u, i): (float(v), int(c), int(t)) for u, i, v, c, t in zip(
        frame["user"].tolist(), frame["item"].tolist(), data.tolist(), log.counts.tolist(),
        times.tolist())}


def assert_same_pairs(got, want, scale=None):
    assert set(got) == set(want)
    for key, (value, count, time) in want.items():
        g = got[key]
        assert g[1:] == (count, time), (key, g, want[key])
        tolerance = 1e-6 * (scale or {}).get(key, abs(value) + 1)
        assert g[0] == pytest.approx(value, rel=2e-6, abs=tolerance), (key, g, want[key])


def k_core_oracle(pairs, k):
    pairs = set(pairs)
    while True:
        per_user, per_item = {}, {}
        for u, i in pairs:
            per_user[u] = per_user.get(u, 0) + 1
            per_item[i] = per_item.get(i, 0) + 1
        kept = {(u, i) for u, i in pairs if per_user[u] >= k and per_item[i] >= k}
        if kept == pairs:
            return pairs
        pairs = kept


def weigh_oracle(log, weighting, k1=100.0, b=0.8):
    """The weighted matrix data of ``log`` from its values and counts, in plain Python."""
    values = [float(v) for v in log.values]
    users = log.user_codes.tolist()
    items = log.matrix.indices.tolist()
    if weighting == "none":
        return values
    if weighting == "binary":
        return [1.0] * len(values)
    if weighting == "count":
        return [float(c) for c in log.counts]
    if weighting == "log1p":
        return [math.log1p(v) for v in values]
    n_users = max(log.n_users, 1)
    per_item = [0] * log.n_items
    for i in items:
        per_item[i] += 1
    idf = [math.log(n_users) - math.log1p(c) for c in per_item]
    if weighting == "tfidf":
        return [math.sqrt(v) * idf[i] for v, i in zip(values, items)]
    row_sums = [0.0] * log.n_users
    for u, v in zip(users, values):
        row_sums[u] += v
    average = sum(row_sums) / len(row_sums) if row_sums else 0.0
    average = average if average != 0 else 1.0
    return [v * (k1 + 1) / (k1 * ((1 - b) + b * row_sums[u] / average) + v) * idf[i]
            for u, i, v in zip(users, items, values)]


def check_canonical(log):
    m = log.matrix
    assert m.format == "csr" and m.dtype == np.float32 and m.shape == log.shape
    assert m.indptr[0] == 0 and m.indptr[-1] == m.nnz == len(log) == log.counts.size
    assert log.values.size == m.nnz and log.user_codes.size == m.nnz
    for row in range(m.shape[0]):
        assert (np.diff(m.indices[m.indptr[row]:m.indptr[row + 1]]) > 0).all()
    assert log.n_users == len(log.user_ids) and log.n_items == len(log.item_ids)


def snapshot(log):
    """Everything a caller can see of a log, as plain copies."""
    return (log.user_ids.ids.tolist(), log.item_ids.ids.tolist(), log.matrix.toarray().copy(),
            log.values.copy(), log.counts.copy(),
            None if log.timestamps is None else log.timestamps.copy(), log.user_codes.copy(),
            dict(log._settings), log.to_frame().copy())


def assert_unchanged(log, before):
    after = snapshot(log)
    assert after[0] == before[0] and after[1] == before[1]
    for a, b in zip(after[2:7], before[2:7]):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)
    assert after[7] == before[7]
    pd.testing.assert_frame_equal(after[8], before[8])


# ------------------------------------------------------------------ strategies
@st.composite
def event_logs(draw, min_events=1, max_events=18, times=None, positive=False):
    n = draw(st.integers(min_events, max_events))
    kind = draw(st.sampled_from(["int", "str"]))
    pool = st.integers(-2, 5) if kind == "int" else st.sampled_from(STRINGS)
    users = draw(st.lists(pool, min_size=n, max_size=n))
    items = draw(st.lists(st.integers(0, 4), min_size=n, max_size=n))
    choices = [0.5, 1.0, 2.0, 3.0] if positive else [0.0, 1.0, -1.0, 0.5, 3.0, 2.5]
    weights = draw(st.none() | st.lists(st.sampled_from(choices), min_size=n, max_size=n))
    stamps = st.lists(st.integers(0, 4), min_size=n, max_size=n)  # ties
    if times is None:
        stamps = st.none() | stamps
    elif times is False:
        stamps = st.none()
    return users, items, weights, draw(stamps)


def cut(column, start, stop=None):
    return None if column is None else column[start:stop]


def added(users, items, weights, times):
    arrays = {"users": users, "items": items}
    if weights is not None:
        arrays["weights"] = weights
    if times is not None:
        arrays["timestamps"] = times
    return arrays


# ------------------------------------------------------------------ add
@settings(max_examples=120, deadline=None)
@given(log=event_logs(min_events=2), data=st.data(), combine=st.sampled_from(COMBINES),
       half_life=st.sampled_from([None, 2, 5]), source=st.booleans())
def test_add_equals_reading_all_events_together(log, data, combine, half_life, source):
    users, items, weights, times = log
    if times is None:
        half_life = None
    at = data.draw(st.integers(1, len(users) - 1))
    first = Interactions.from_arrays(users[:at], items[:at], cut(weights, 0, at),
                                     cut(times, 0, at), combine=combine, half_life=half_life)
    before = snapshot(first)
    if source:  # a DataFrame: add() reads it as from_events read nothing (default columns)
        frame = pd.DataFrame({"user": users[at:], "item": items[at:]})
        if weights is not None:
            frame["weight"] = weights[at:]
        if times is not None:
            frame["time"] = times[at:]
        grown = first.add(frame, weight="weight" if weights is not None else None,
                          timestamp="time" if times is not None else None)
    else:
        grown = first.add(**added(users[at:], items[at:], cut(weights, at), cut(times, at)))
    check_canonical(grown)
    old = sorted(set(users[:at]))
    assert grown.user_ids.ids.tolist() == old + sorted(set(users[at:]) - set(old))
    old = sorted(set(items[:at]))
    assert grown.item_ids.ids.tolist() == old + sorted(set(items[at:]) - set(old))
    want = oracle_pairs(users, items, weights, times, combine, half_life)
    absolute = None if weights is None else [abs(w) for w in weights]
    scale = {key: value + 1 for key, (value, _, _) in
             oracle_pairs(users, items, absolute, times, "sum").items()}
    assert_same_pairs(pairs_of(grown), want, scale)
    assert grown.n_events == len(users) and grown._settings["combine"] == combine
    assert_unchanged(first, before)


@settings(max_examples=60, deadline=None)
@given(log=event_logs(min_events=2, times=False), data=st.data(),
       combine=st.sampled_from(COMBINES), k=st.integers(1, 3),
       weighting=st.sampled_from(["none", "binary", "count", "log1p"]))
def test_k_core_then_add_then_weighted(log, data, combine, k, weighting):
    """A chain: the core's pairs combined with the new events by the log's rule, then
    weighted; the same whichever of add and weighted comes first."""
    users, items, weights, _ = log
    at = data.draw(st.integers(1, len(users) - 1))
    weights = None if weights is None else [abs(w) for w in weights]  # log1p: values > -1
    core = Interactions.from_arrays(users[:at], items[:at], cut(weights, 0, at),
                                    combine=combine).k_core(k)
    grown = core.add(**added(users[at:], items[at:], cut(weights, at), None))
    old = pairs_of(core)
    want = dict(old)
    new = oracle_pairs(users[at:], items[at:], cut(weights, at), None, "sum")
    events = list(zip(users[at:], items[at:], [1.0] * len(users) if weights is None
                      else weights[at:]))
    for key in new:
        mine = [(w, 0) for u, i, w in events if (u, i) == key]
        if key in old:
            value, count, _ = old[key]
            merged = combine_events([(value, 0)] + mine, combine)
            if combine == "count":
                merged = (float(count + len(mine)), count + len(mine), 0)
            else:
                merged = (merged[0], count + len(mine), 0)
            want[key] = merged
        else:
            want[key] = combine_events(mine, combine)
    assert_same_pairs(pairs_of(grown), want)
    for result in (grown.weighted(weighting), core.weighted(weighting).add(
            **added(users[at:], items[at:], cut(weights, at), None))):
        check_canonical(result)
        np.testing.assert_allclose(result.matrix.data, weigh_oracle(grown, weighting), rtol=1e-6)
        assert result._settings["weighting"] == weighting


def test_add_keeps_ints_and_the_rule_with_times_and_ties():
    log = Interactions.from_arrays(["b", "a"], [1, 1], [1.0, 2.0], timestamps=[5, 5],
                                   combine="last")
    grown = log.add(users=["a", "c", "a"], items=[1, 1, 1], weights=[7.0, 1.0, 9.0],
                    timestamps=[5, 4, 3])
    assert grown.user_ids.ids.tolist() == ["a", "b", "c"]
    # a's events at 5 (2.0), 5 (7.0), 3 (9.0): the latest, the tie to the later event
    assert pairs_of(grown)[("a", 1)] == (7.0, 3, 5 * NS)
    assert (log.add(users=["a"], items=[1], weights=[3.0], timestamps=[4])
            .values.tolist() == [2.0, 1.0])  # an older event does not win "last"


def test_add_of_another_kind_of_ids_is_refused_and_changes_nothing():
    log = Interactions.from_arrays([1, 2], ["x", "y"], timestamps=[1, 2])
    before = snapshot(log)
    for arrays in (dict(users=["1"], items=["x"]), dict(users=[1], items=[3]),
                   dict(users=[1.5], items=["x"])):
        with pytest.raises(TypeError, match="one id column must hold one type"):
            log.add(**arrays, timestamps=[3])
    assert_unchanged(log, before)
    # floats that are integers are the same ids; ints onto float ids too
    assert log.add(users=[3.0], items=["x"], timestamps=[3]).user_ids.ids.tolist() == [1, 2, 3]
    floats = Interactions.from_arrays([0.5, 1.5], [1, 2]).add(users=[2], items=[1])
    assert floats.user_ids.ids.tolist() == [0.5, 1.5, 2.0]


def test_add_onto_an_empty_core_and_a_loaded_empty_core(tmp_path):
    log = Interactions.from_arrays(["a", "b"], [1, 2], timestamps=[1, 2])
    empty = log.k_core(5)
    assert empty.shape == (0, 0) and len(empty) == 0 and not empty
    assert empty.matrix.shape == (0, 0) and empty.transpose.shape == (0, 0)
    assert empty.to_frame().shape[0] == 0 and empty.timestamps.size == 0
    empty.save(tmp_path / "empty.npz")
    for base in (empty, Interactions.load(tmp_path / "empty.npz"),
                 Interactions.load(tmp_path / "empty.npz", mmap=True)):
        grown = base.add(users=[7], items=["x"], timestamps=[3])  # another kind: the maps are empty
        assert grown.user_ids.ids.tolist() == [7] and grown.item_ids.ids.tolist() == ["x"]
        assert grown.timestamps.astype(np.int64).tolist() == [3 * NS]
    assert log.k_core(5, compact=False).shape == (2, 2)


def test_add_needs_times_on_both_sides():
    timed = Interactions.from_arrays([1], [1], timestamps=[1])
    with pytest.raises(ValueError, match="both the old and the new events need timestamps"):
        timed.add(users=[1], items=[1])
    with pytest.raises(ValueError, match="both the old and the new events need timestamps"):
        Interactions.from_arrays([1], [1]).add(users=[1], items=[1], timestamps=[1])


def test_add_with_a_half_life_decays_old_and_new_to_one_reference():
    log = Interactions.from_arrays([1], [1], timestamps=[0], half_life=10)
    later = log.add(users=[1, 2], items=[1, 1], timestamps=[20, 10])
    assert later.values.tolist() == pytest.approx([0.25 + 1.0, 0.5])
    earlier = later.add(users=[2], items=[1], timestamps=[0])  # older: decayed to 20
    assert earlier.values.tolist() == pytest.approx([1.25, 0.5 + 0.25])
    fixed = Interactions.from_arrays([1], [1], timestamps=[0], half_life=10, reference_time=10)
    # a fixed reference stays: an event after it weighs more than 1 (0.5 ** -2)
    assert fixed.add(users=[1], items=[1], timestamps=[30]).values.tolist() == \
        pytest.approx([0.5 + 4.0])


# ------------------------------------------------------------------ k_core / filter / subset
@settings(max_examples=100, deadline=None)
@given(log=event_logs(), k=st.integers(1, 4), compact=st.booleans())
def test_k_core_is_the_documented_fixed_point(log, k, compact):
    users, items, weights, times = log
    full = Interactions.from_arrays(users, items, weights, times)
    before = snapshot(full)
    core = full.k_core(k, compact=compact)
    check_canonical(core)
    want = k_core_oracle(zip(users, items), k)
    got = pairs_of(core)
    assert set(got) == want
    original = pairs_of(full)
    assert all(got[key] == original[key] for key in want)  # values, counts, times kept
    if compact:
        order = full.user_ids.ids.tolist()
        assert core.user_ids.ids.tolist() == [u for u in order if u in {u for u, _ in want}]
        assert core.item_ids.ids.tolist() == sorted({i for _, i in want})
    else:
        assert core.user_ids == full.user_ids and core.item_ids == full.item_ids
    again = core.k_core(k, compact=compact)
    assert set(pairs_of(again)) == want and again.shape == core.shape
    assert_unchanged(full, before)


@settings(max_examples=60, deadline=None)
@given(log=event_logs(), data=st.data())
def test_subset_keeps_the_masked_pairs_and_the_maps(log, data):
    users, items, weights, times = log
    full = Interactions.from_arrays(users, items, weights, times)
    before = snapshot(full)
    mask = np.array(data.draw(st.lists(st.booleans(), min_size=len(full), max_size=len(full))),
                    dtype=bool)
    sub = full.subset(mask)
    check_canonical(sub)
    assert sub.user_ids == full.user_ids and sub.item_ids == full.item_ids
    frame = full.to_frame()
    assert set(pairs_of(sub)) == set(zip(frame["user"][mask], frame["item"][mask]))
    np.testing.assert_array_equal(sub.values, full.values[mask])
    assert sub.n_events == int(full.counts[mask].sum())
    assert full.subset(mask.tolist()).nnz == sub.nnz  # a list of bools
    assert_unchanged(full, before)


def test_filter_counts_pairs_not_events_and_thresholds_are_checked():
    log = Interactions.from_arrays([1, 1, 1, 2, 2], [1, 1, 1, 1, 2])
    assert log.filter(min_user_count=2).user_ids.ids.tolist() == [2]
    assert log.filter(min_item_count=2).item_ids.ids.tolist() == [1]
    for huge in (10**6, 2**63, 2**70):
        assert log.filter(min_user_count=huge).shape == (0, 0)
        assert log.k_core(huge).shape == (0, 0)
        assert log.filter(min_item_count=huge, compact=False).shape == (2, 2)
    for name in ("min_user_count", "min_item_count"):
        for bad, error in ((0, ValueError), (-1, ValueError), (float("nan"), TypeError),
                           (2.0, TypeError), (True, TypeError), ("2", TypeError),
                           (None, TypeError)):
            with pytest.raises(error, match=name):
                log.filter(**{name: bad})
    for bad, error in ((0, ValueError), (-3, ValueError), (1.0, TypeError),
                       (float("nan"), TypeError), (True, TypeError), (None, TypeError)):
        with pytest.raises(error, match="k must"):
            log.k_core(bad)
    assert log.k_core(np.int64(1)).shape == log.shape


def test_subset_masks_are_checked_by_name():
    log = Interactions.from_arrays(["a", "b", "a"], [1, 2, 2])
    assert log.subset(np.zeros(3, bool)).shape == log.shape
    assert len(log.subset(np.zeros(3, bool))) == 0
    assert log.subset(pd.Series([True, False, True])).nnz == 2
    for bad in ([], np.ones(2, bool), np.ones(4, bool), [1, 0, 1], np.ones((3, 1), bool),
                np.array([True, False, True], dtype=object), [0.0, 1.0, 1.0]):
        with pytest.raises(ValueError, match=r"keep must be a boolean mask of shape \(3,\)"):
            log.subset(bad)


# ------------------------------------------------------------------ weighted
@settings(max_examples=80, deadline=None)
@given(log=event_logs(positive=True), weighting=st.sampled_from(
    ["none", "binary", "count", "log1p", "tfidf", "bm25"]),
    k1=st.sampled_from([0.5, 1.2, 100.0]), b=st.sampled_from([0.0, 0.5, 0.8, 1.0]),
    min_user=st.integers(1, 3))
def test_weighted_matches_the_formulas_after_filtering(log, weighting, k1, b, min_user):
    users, items, weights, times = log
    full = Interactions.from_arrays(users, items, weights, times)
    for base in (full, full.filter(min_user_count=min_user, compact=False),
                 full.filter(min_user_count=min_user)):
        options = {"k1": k1, "b": b} if weighting == "bm25" else {}
        result = base.weighted(weighting, **options)
        check_canonical(result)
        np.testing.assert_allclose(result.matrix.data,
                                   weigh_oracle(base, weighting, **options), rtol=2e-5,
                                   atol=1e-6)
        np.testing.assert_array_equal(result.values, base.values)  # values: before weighting
        assert result.weighted("none").matrix.toarray().tolist() == \
            base.matrix.toarray().tolist()  # a weighting replaces, never compounds
        frame = result.to_frame()
        np.testing.assert_array_equal(frame["value"].to_numpy(), result.matrix.data)
        np.testing.assert_array_equal(result.transpose.toarray(), result.matrix.toarray().T)


def test_weighted_options_are_checked_by_name():
    log = Interactions.from_arrays(["a", "b"], [1, 2], [1.0, 2.0])
    for bad, error, match in ((dict(k1=-1), ValueError, "k1 must be >= 0"),
                              (dict(b=float("nan")), ValueError, "b must be finite"),
                              (dict(k1=True), TypeError, "k1 must be a real number"),
                              (dict(k1="1"), TypeError, "k1 must be a real number"),
                              (dict(c=1), TypeError, r"takes options \['b', 'k1'\]")):
        with pytest.raises(error, match=match):
            log.weighted("bm25", **bad)
    with pytest.raises(TypeError, match=r"weighting 'log1p' takes options \[\]"):
        log.weighted("log1p", k1=1)
    with pytest.raises(ValueError, match="weighting must be one of"):
        log.weighted("BM25")
    with pytest.raises(ValueError, match="log1p weighting needs values > -1"):
        Interactions.from_arrays([1], [1], [-1.0]).weighted("log1p")
    with pytest.raises(ValueError, match="tfidf weighting needs non-negative values"):
        Interactions.from_arrays([1, 2], [1, 1], [-0.5, 1.0]).weighted("tfidf")


# ------------------------------------------------------------------ persistence
@settings(max_examples=30, deadline=None)
@given(log=event_logs(min_events=2, times=True), k=st.integers(1, 2),
       weighting=st.sampled_from(["none", "bm25", "count"]), combine=st.sampled_from(COMBINES))
def test_save_load_after_transformations_then_add(tmp_path_factory, log, k, weighting, combine):
    users, items, weights, times = log
    assume(weighting != "bm25" or weights is None or min(weights) >= 0)  # bm25: values >= 0
    folder = tmp_path_factory.mktemp("saved")
    chain = (Interactions.from_arrays(users, items, weights, times, combine=combine,
                                      half_life="2s")
             .k_core(k).weighted(weighting, **({"k1": np.float32(1.5)} if weighting == "bm25"
                                               else {})))
    chain.save(folder / "log.npz")
    more = dict(users=users[:2], items=[9, 9], timestamps=[7, 1])
    for mmap in (False, True):
        back = Interactions.load(folder / "log.npz", mmap=mmap)
        assert back.user_ids == chain.user_ids and back.item_ids == chain.item_ids
        assert back._settings == chain._settings
        assert (back.matrix != chain.matrix).nnz == 0
        np.testing.assert_array_equal(back.timestamps, chain.timestamps)
        np.testing.assert_array_equal(back.counts, chain.counts)
        a, b = back.add(**more), chain.add(**more)
        assert a.user_ids == b.user_ids and a._settings == b._settings
        np.testing.assert_array_equal(a.matrix.toarray(), b.matrix.toarray())
        sub = back.subset(back.counts > 1)
        assert sub.nnz == int((chain.counts > 1).sum())


# ------------------------------------------------------------------ views
def test_the_views_are_aligned_and_read_only():
    log = Interactions.from_arrays(["b", "a", "b", "b"], [2, 1, 2, 1], [1.0, 2.0, 3.0, 4.0],
                                   timestamps=[4, 1, 2, 3])
    assert log.user_codes.tolist() == [0, 1, 1] and log.user_codes.dtype == np.int64
    assert log.counts.tolist() == [1, 1, 2] and log.values.tolist() == [2.0, 4.0, 4.0]
    assert log.timestamps.astype(np.int64).tolist() == [1 * NS, 3 * NS, 4 * NS]
    frame = log.to_frame()
    assert frame.columns.tolist() == ["user", "item", "value", "count", "timestamp"]
    assert frame.values[:, :4].tolist() == [["a", 1, 2.0, 1], ["b", 1, 4.0, 1],
                                            ["b", 2, 4.0, 2]]
    frame.loc[0, "value"] = 99.0  # the frame is the caller's
    codes = log.user_codes
    codes[0] = 5  # a fresh array
    assert log.matrix[0, 0] == 2.0 and log.user_codes.tolist() == [0, 1, 1]
    for view in (log.values, log.counts, log.timestamps, log.matrix.data,
                 log.user_ids.ids, log.item_ids.ids):
        assert not view.flags.writeable
    m = log.transpose
    assert m.shape == (2, 2) and m.toarray().tolist() == log.matrix.toarray().T.tolist()


def test_each_method_leaves_the_original_unchanged(tmp_path):
    log = Interactions.from_arrays(["b", "a", "b", "c", "c"], [2, 1, 2, 1, 3],
                                   [1.0, 2.0, 3.0, 4.0, 0.5], timestamps=[4, 1, 2, 3, 3],
                                   weighting="bm25", k1=2)
    before = snapshot(log)
    results = [log.weighted("tfidf"), log.filter(min_item_count=2), log.k_core(2),
               log.subset(np.array([True, False, True, False])),
               log.add(users=["z", "a"], items=[1, 9], timestamps=[0, 9]), log.to_frame()]
    log.save(tmp_path / "log.npz")
    assert_unchanged(log, before)
    # derived logs that share the original's arrays hand them out read-only too
    for result in results[:-1]:
        for view in (result.values, result.counts, result.timestamps, result.matrix.data):
            assert not view.flags.writeable


# ------------------------------------------------------------------ IdMap
@settings(max_examples=80, deadline=None)
@given(known=st.lists(st.integers(-3, 9), unique=True, max_size=8),
       new=st.lists(st.integers(-5, 12), max_size=25), strings=st.booleans())
def test_id_map_extend_lookups_and_positions(known, new, strings):
    if strings:
        known, new = [str(v) for v in known], [str(v) for v in new]
    ids = IdMap(np.array(known, dtype=object if strings else np.int64))
    before = ids.ids.tolist()
    grown = ids.extend(new)
    want = known + sorted(set(new) - set(known))
    assert grown.ids.tolist() == want and ids.ids.tolist() == before
    assert len(set(grown.ids.tolist())) == len(grown)
    if new:
        assert grown.to_internal(new).tolist() == [want.index(v) for v in new]  # duplicates
        assert grown.to_external(grown.to_internal(new)).tolist() == new
    assert [grown.position(v) for v in new] == [want.index(v) for v in new]
    probe = new + (["zz"] if strings else [99])
    assert ids.to_internal(probe, missing="ignore").tolist() == \
        [known.index(v) if v in known else -1 for v in probe]
    assert [ids.position(v) for v in probe] == [known.index(v) if v in known else -1
                                                for v in probe]
    if any(v not in known for v in probe):
        with pytest.raises(ValueError, match="ids are not in this map"):
            ids.to_internal(probe)
    if not new:
        assert ids.extend(new) is ids


def test_id_map_edges():
    ids = IdMap([3, 1])
    assert ids.to_internal([1, 1, 3, 7], missing="ignore").tolist() == [1, 1, 0, -1]
    assert ids.to_internal([]).tolist() == [] and ids.to_external([]).tolist() == []
    assert ids.position("1") == -1 and ids.position(1.0) == 1 and ids.position(None) == -1
    assert IdMap(["1"]).position(1) == -1 and IdMap([]).position("a") == -1
    with pytest.raises(ValueError, match="codes must be >= 0"):
        ids.to_external([-1])
    with pytest.raises(ValueError, match="codes must be < 2"):
        ids.to_external([2])
    with pytest.raises(TypeError, match="codes must hold integers"):
        ids.to_external([1.0])
    with pytest.raises(ValueError, match="missing must be one of"):
        ids.to_internal([1], missing="drop")
    with pytest.raises(TypeError, match="new ids are string but the map holds integer ids"):
        ids.extend(["a"])
    with pytest.raises(ValueError, match="missing values"):
        ids.extend([5, np.nan])
    assert ids.extend([5, 5, 3, 0]).ids.tolist() == [3, 1, 0, 5]
    assert IdMap(["b"]).extend(np.array(["c", "a", "c"])).ids.tolist() == ["b", "a", "c"]


# ------------------------------------------------------------------ models
def test_models_fit_the_transformed_log_as_its_matrix():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 400).tolist()
    items = rng.integers(0, 20, 400).tolist()
    log = Interactions.from_arrays(users, items, rng.integers(1, 6, 400).astype(float),
                                   combine="last").k_core(3)
    weighted = log.weighted("bm25", k1=1.2)
    a = recfuse.ALS(factors=4, iterations=2, random_state=0, num_threads=1).fit(weighted)
    b = recfuse.ALS(factors=4, iterations=2, random_state=0, num_threads=1).fit(
        weighted.matrix.copy())
    np.testing.assert_allclose(a.user_factors, b.user_factors, rtol=1e-5, atol=1e-6)
    assert a.user_factors.shape[0] == log.n_users and a.item_factors.shape[0] == log.n_items
    s = recfuse.SVD(factors=3, epochs=2, random_state=0, num_threads=1).fit(log)
    t = recfuse.SVD(factors=3, epochs=2, random_state=0, num_threads=1).fit(
        log.user_codes, log.matrix.indices.copy(), log.values.copy(), n_users=log.n_users,
        n_items=log.n_items)
    np.testing.assert_allclose(s.user_factors, t.user_factors, rtol=1e-5, atol=1e-6)
    median = int(np.median(np.diff(log.matrix.indptr)))
    sparse = log.filter(min_user_count=median + 1, compact=False)  # users left without pairs
    fitted = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(sparse)
    empty_rows = np.diff(sparse.matrix.indptr) == 0
    assert empty_rows.any() and not fitted.user_factors[empty_rows].any()
    with pytest.raises(ValueError, match="at least one rating"):
        recfuse.SVD(factors=2, epochs=1).fit(log.k_core(10**6))


@pytest.mark.filterwarnings("ignore:.*(OpenBLAS|MKL|BLAS library).*:RuntimeWarning")
def test_the_matrix_goes_to_implicit_as_it_is():
    """The matrix's index arrays stay writable (its values are read-only): implicit's
    Cython kernels take only writable buffers, and users hand it log.matrix."""
    implicit = pytest.importorskip("implicit")
    log = Interactions.from_arrays(np.arange(40) % 9, np.arange(40) % 7,
                                   np.linspace(1, 3, 40))
    model = implicit.cpu.als.AlternatingLeastSquares(factors=3, iterations=2, random_state=0)
    model.fit(log.matrix, show_progress=False)
    assert model.user_factors.shape == (9, 3)


def test_the_cached_transpose_cannot_be_changed():
    log = Interactions.from_arrays(["a", "a", "b"], [1, 2, 2])
    t = log.transpose
    try:
        t.data[0] = 99.0
    except ValueError:  # read-only, like matrix.data
        pass
    assert log.transpose.toarray().tolist() == log.matrix.toarray().T.tolist()


def test_bools_onto_int_ids_do_not_repeat_an_id():
    ids = IdMap([1, 2])
    try:
        grown = ids.extend([True])
    except TypeError:  # refused as another kind, as from_events refuses [True, 1]
        grown = None
    if grown is not None:
        assert len(set(grown.ids.tolist())) == len(grown), grown.ids.tolist()
    log = Interactions.from_arrays([1, 2], [1, 2])
    with pytest.raises(TypeError, match="users|ids"):
        log.add(users=[True], items=[1])


@pytest.mark.parametrize("dtype, new", [(np.int32, 2**40), (np.uint8, 300), (np.uint8, -1)])
def test_add_widens_narrow_integer_ids(dtype, new):
    log = Interactions.from_arrays(np.array([1, 2], dtype), [1, 2])
    grown = log.add(users=[new], items=[1])
    together = Interactions.from_arrays(np.array([1, 2, new], np.int64), [1, 2, 1])
    assert grown.user_ids.ids.tolist() == [1, 2, new]
    assert set(pairs_of(grown)) == set(pairs_of(together))


@pytest.mark.parametrize("option", [dict(combine="max"), dict(user_ids=IdMap(["b", "a"])),
                                    dict(half_life=10)])
def test_add_refuses_options_that_contradict_the_log(option):
    old = pd.DataFrame({"user": ["a", "a", "b"], "item": [1, 1, 2], "w": [1.0, 5.0, 2.0],
                        "t": [0, 0, 0]})
    more = pd.DataFrame({"user": ["a", "a"], "item": [1, 1], "w": [3.0, 4.0], "t": [10, 20]})
    log = Interactions.from_events(old, weight="w", timestamp="t")
    try:
        grown = log.add(more, **option)
    except (TypeError, ValueError) as error:  # refused, naming the option: correct
        assert next(iter(option)) in str(error)
        return
    together = pd.concat([old, more], ignore_index=True)
    want = pairs_of(Interactions.from_events(together, weight="w", timestamp="t"))
    assert pairs_of(grown) == want and grown._settings["half_life"] is None


@pytest.mark.parametrize("how", ["arrays", "frame"])
def test_adding_no_events_gives_the_same_pairs(how):
    log = Interactions.from_arrays(["a", "b"], [1, 2], timestamps=[1, 2])
    if how == "arrays":
        grown = log.add(users=[], items=[], timestamps=[])
    else:
        grown = log.add(pd.DataFrame({"user": pd.Series([], dtype=object),
                                      "item": pd.Series([], dtype=np.int64)}))
    assert pairs_of(grown) == pairs_of(log) and grown.user_ids == log.user_ids


@pytest.mark.parametrize("method", ["filter", "k_core"])
def test_compact_is_a_checked_flag(method):
    log = Interactions.from_arrays([1, 1, 2], [1, 2, 1])
    call = (lambda **kw: log.filter(min_user_count=2, **kw)) if method == "filter" else \
        (lambda **kw: log.k_core(2, **kw))
    for bad in ("no", None, np.array([True])):
        with pytest.raises(TypeError, match="compact"):
            call(compact=bad)


@pytest.mark.parametrize("role", ["user", "item"])
def test_add_of_another_kind_names_the_column(role):
    log = Interactions.from_arrays([1, 2], [3, 4])
    arrays = {"users": [1], "items": [3]}
    arrays[role + "s"] = ["x"]
    with pytest.raises(TypeError, match=f"{role}s"):
        log.add(**arrays)
    frame = pd.DataFrame({"user": arrays["users"], "item": arrays["items"]})
    with pytest.raises(TypeError, match=f"column '{role}'"):
        log.add(frame)
