"""Adversarial hunt on time semantics: how ``recfuse.Interactions`` reads timestamps
(``from_arrays`` / ``from_events``: numbers, datetime64 of every unit, pandas / polars /
pyarrow columns with time zones, Python datetimes, ISO strings, CSV text), half-life decay
(``half_life``, ``reference_time``), ``combine="last"``, ``add`` of earlier and later events,
the time-based splits (``split.leave_last_n``, ``split.temporal_split``) and ``recfuse train
--timestamp``, each checked against an oracle written in plain Python datetime arithmetic.

The contract used (interactions.py's docstrings, ``_times_ns``; split.py; README "The data
path"): a timestamp is an instant, stored as int64 nanoseconds since the epoch; numbers are
seconds since the epoch, datetime64 values and strings pandas can parse are accepted, time
zones become UTC (a naive time is read as UTC); missing times (None, NaN, NaT, an empty CSV
cell) and times outside int64 nanoseconds (1677-09-21 to 2262-04-11) are refused with a
ValueError. ``half_life`` (seconds, a timedelta or a duration string like "30D") must be
> 0 and finite; each event weighs 0.5^((reference - t) / half_life), the reference being the
latest event unless ``reference_time`` is given; ``add`` re-bases the decay to the new latest
event, so adding in two steps equals one step (to float32 rounding). ``combine="last"``
keeps the value of the event with the largest time, equal times going to the later event in
input order. ``leave_last_n`` tests each user's n latest pairs (ties seeded at random);
``temporal_split`` tests pairs whose time is >= the cut, or with ``test_fraction`` those at
or after the floor(fraction x pairs)-th latest time (none when that is < 1). Every input is
validated at the boundary with an error naming it.

Bugs found are strict xfails (each names the bug); the rest are regressions.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import warnings
from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfuse import split
from recfuse.interactions import Interactions

NS = 10**9
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
INT64_MAX = 2**63 - 1
HYPOTHESIS = settings(max_examples=50, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.filterwarnings(
    "ignore:Could not infer format:UserWarning")  # pandas' dateutil fallback on odd strings


# ------------------------------------------------------------------------------ the oracle


def ns_of(when: dt.datetime) -> int:
    """Nanoseconds since the epoch of a Python datetime (naive = UTC), by datetime arithmetic
    alone: exact to the microsecond, as datetimes are."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    delta = when - EPOCH
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def stored(timestamps, **options) -> list[int]:
    """The int64 ns recfuse stores for a column of one event per time (one user, items 0..)."""
    n = len(timestamps)
    log = Interactions.from_arrays(np.zeros(n, np.int64), np.arange(n), timestamps=timestamps,
                                   **options)
    return log.timestamps.view(np.int64).tolist()


def decayed(times_ns, reference_ns, half_life_s) -> list[float]:
    """0.5^((reference - t) / half_life) with the exponent computed exactly (Fractions);
    inf past float64."""
    exponents = [float(-Fraction(reference_ns - t, 1) / (Fraction(half_life_s) * NS))
                 for t in times_ns]
    return [math.inf if e > 1000 else 2.0 ** e for e in exponents]


def one_pair_per_event(n):
    """users, items of n events that each make their own pair (one user, items 0..n-1)."""
    return np.zeros(n, np.int64), np.arange(n)


# ---------------------------------------------------------- one instant in every written form

# microseconds since the epoch inside the int64-nanosecond range (1678 .. 2261)
MICROS = st.integers(-9_000_000_000 * 10**6, 9_000_000_000 * 10**6)
OFFSETS = st.integers(-14 * 60, 14 * 60)  # a UTC offset in minutes


@HYPOTHESIS
@given(micros=MICROS, offset=OFFSETS)
def test_one_instant_written_in_many_forms_is_one_ns_value(micros, offset):
    instant = EPOCH + dt.timedelta(microseconds=micros)
    expected = micros * 1000
    assert ns_of(instant) == expected  # the oracle agrees with itself
    zone = dt.timezone(dt.timedelta(minutes=offset))
    local = instant.astimezone(zone)
    forms = [
        [instant],                                   # aware UTC datetime
        [instant.replace(tzinfo=None)],              # naive: read as UTC
        [local],                                     # aware, another offset
        [local.isoformat()],                         # ISO text with its offset
        [instant.replace(tzinfo=None).isoformat() + "Z"],
        [pd.Timestamp(instant)],
        [pd.Timestamp(local)],
        pd.Series([pd.Timestamp(expected, unit="ns", tz="UTC")]).dt.tz_convert(
            "America/New_York"),
        np.array([micros], "datetime64[us]"),
        np.array([expected], "datetime64[ns]"),
    ]
    if micros % 10**6 == 0:
        forms += [[micros // 10**6], np.array([micros // 10**6], "datetime64[s]")]
    if micros % 500_000 == 0:  # x.5 and x.0 seconds are exact floats
        forms.append([micros / 10**6])
    for form in forms:
        assert stored(form) == [expected], repr(form)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns", "m", "h", "D", "W", "M", "Y"])
def test_datetime64_in_every_unit(unit):
    value = np.datetime64("2020-03-08T12:00", unit) if unit in ("s", "ms", "us", "ns", "m", "h") \
        else np.datetime64("2020-03-08", unit)
    expected = ns_of(value.astype("datetime64[us]").item())
    assert stored(np.array([value])) == [expected]


@pytest.mark.parametrize("seconds", [0, 1, -1, 1_600_000_000, -2_000_000_000, 9_223_372_036,
                                     -9_223_372_036, 0.5, -0.5, 1e-300, 1_600_000_000.5])
def test_numbers_are_seconds_since_the_epoch(seconds):
    expected = round(Fraction(seconds) * NS)
    assert stored([seconds]) == [expected]
    assert stored(np.array([seconds], np.float64)) == [expected]
    assert stored(pd.Series([seconds])) == [expected]


@pytest.mark.parametrize("dtype", ["i1", "i2", "i4", "u1", "u2", "u4", "u8", ">i4", ">i8",
                                   ">f8"])
def test_integer_dtypes_and_byte_orders_are_seconds(dtype):
    assert stored(np.array([5, 100], dtype)) == [5 * NS, 100 * NS]


def test_odd_layouts_are_read():
    strided = np.arange(10, dtype=np.int64)[::3]
    column = np.asfortranarray(np.arange(6).reshape(2, 3))[:, 0]
    frozen = np.arange(3)
    frozen.flags.writeable = False
    assert stored(strided) == [0, 3 * NS, 6 * NS, 9 * NS]
    assert stored(column) == [0, 3 * NS]
    assert stored(frozen) == [0, NS, 2 * NS]


@pytest.mark.parametrize("unit, step_ns", [("10s", 10 * NS), ("250ms", 250 * 10**6),
                                           ("2D", 2 * 86400 * NS)])
def test_datetime64_units_with_a_multiple(unit, step_ns):
    assert stored(np.array([1, 2], f"datetime64[{unit}]")) == [step_ns, 2 * step_ns]


def test_nullable_and_decimal_number_columns_are_seconds():
    assert stored(pd.Series([1_600_000_000], dtype="Int64")) == [1_600_000_000 * NS]
    assert stored(pd.Series([1_600_000_000.5], dtype="Float64")) == [1_600_000_000_500_000_000]
    assert stored([decimal.Decimal("1600000000.5")]) == [1_600_000_000_500_000_000]


def test_new_york_across_the_dst_change_is_one_hour_of_utc():
    # 01:30 EST and 03:30 EDT on 2021-03-14 are one hour apart (the clocks skip 02:00-03:00)
    local = pd.Series(pd.to_datetime(["2021-03-14 01:30", "2021-03-14 03:30"])
                      ).dt.tz_localize("America/New_York")
    expected = [ns_of(dt.datetime(2021, 3, 14, 6, 30)), ns_of(dt.datetime(2021, 3, 14, 7, 30))]
    assert stored(local) == expected
    assert stored(["2021-03-14T01:30:00-05:00", "2021-03-14T03:30:00-04:00"]) == expected


UTC_INSTANT = dt.datetime(2021, 3, 14, 6, 30)  # naive = UTC


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("zone", [None, "UTC", "Asia/Kolkata", "America/New_York"])
def test_polars_datetime_columns_with_zones(unit, zone):
    pl = pytest.importorskip("polars")
    column = pl.Series("t", [UTC_INSTANT]).cast(pl.Datetime(unit)).dt.replace_time_zone("UTC")
    column = column.dt.convert_time_zone(zone) if zone else column.dt.replace_time_zone(None)
    frame = pl.DataFrame({"u": [1], "i": [1], "t": column})
    for source in (frame, frame.lazy()):
        log = Interactions.from_events(source, user="u", item="i", timestamp="t")
        assert log.timestamps.view(np.int64).tolist() == [ns_of(UTC_INSTANT)]


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
@pytest.mark.parametrize("zone", [None, "UTC", "+05:30", "America/New_York"])
def test_arrow_timestamp_columns_with_zones(unit, zone):
    pa = pytest.importorskip("pyarrow")
    per_unit = {"s": NS, "ms": 10**6, "us": 10**3, "ns": 1}[unit]
    column = pa.array([ns_of(UTC_INSTANT) // per_unit], type=pa.timestamp(unit, tz=zone))
    log = Interactions.from_events(pa.table({"u": [1], "i": [1], "t": column}), user="u",
                                   item="i", timestamp="t")
    assert log.timestamps.view(np.int64).tolist() == [ns_of(UTC_INSTANT)]


@pytest.mark.parametrize("text", [
    "2021-03-14T06:30:00Z\n2021-03-14T12:00:00+05:30",
    "2021-03-14T12:00:00+05:30\n2021-03-14T01:30:00-05:00",
    "2021-03-14 06:30:00\n2021-03-14T06:30:00.000000000Z",
    "1615703400\n1615703400",
    "1615703400.0\n1615703400",
])
@pytest.mark.parametrize("read_options", [None, {"sep": ","}])  # pandas' two CSV readers
def test_csv_time_text_in_several_forms_is_one_instant(tmp_path, text, read_options):
    path = tmp_path / "log.csv"
    a, b = text.split("\n")
    path.write_text(f"u,i,t\n1,1,{a}\n1,2,{b}\n")
    log = Interactions.from_events(path, user="u", item="i", timestamp="t",
                                   read_options=read_options)
    assert log.timestamps.view(np.int64).tolist() == [ns_of(UTC_INSTANT)] * 2


@pytest.mark.parametrize("column", [[None], [float("nan")], [pd.NaT], [np.datetime64("NaT")],
                                    np.array(["NaT"], "datetime64[ns]"), ["NaT"], [""],
                                    pd.Series([1, None], dtype="Int64")[1:]])
def test_missing_times_are_refused(column):
    with pytest.raises(ValueError, match="timestamps"):
        stored(column)


@pytest.mark.parametrize("column", [
    [9_223_372_037], [-9_223_372_037], [9.3e9], [1e300], np.array([2**64 - 1], np.uint64),
    ["2262-04-12"], ["1677-09-21"], np.array(["2262-04-12"], "datetime64[D]"),
    np.array(["3000-01-01"], "datetime64[s]"), [dt.datetime(2300, 1, 1)],
    [pd.Timestamp("1500-01-01", tz="UTC")],
])
def test_times_outside_int64_nanoseconds_are_refused(column):
    with pytest.raises(ValueError, match="timestamps"):
        stored(column)


def test_the_int64_nanosecond_limits_themselves_are_read():
    assert stored(["2262-04-11T23:47:16.854775807"]) == [INT64_MAX]
    assert stored(["1677-09-21T00:12:43.145224193"]) == [-INT64_MAX]
    assert stored(np.array([INT64_MAX], "datetime64[ns]")) == [INT64_MAX]


@pytest.mark.parametrize("column", [[True], np.array([5], "timedelta64[s]"),
                                    [dt.timedelta(seconds=5)], ["not a time"], [b"2020"]])
def test_non_times_are_refused_naming_timestamps(column):
    with pytest.raises((TypeError, ValueError), match="timestamps"):
        stored(column)


# --- bugs in reading times


@pytest.mark.parametrize("seconds", [1_600_000_000.25, -1_600_000_000.75, 1_234_567_890.125])
def test_exact_float_seconds_give_the_exact_ns(seconds):
    # each float holds its instant exactly; ISO text of the same instant is exact too
    expected = int(Fraction(seconds) * NS)
    iso = (EPOCH + dt.timedelta(microseconds=int(Fraction(seconds) * 10**6))).isoformat()
    assert stored([iso]) == [expected]
    assert stored([seconds]) == [expected]


def test_float32_seconds_are_the_instant_they_hold():
    # 1.6e9 is exactly a float32 (a multiple of 128); its ns value is 1.6e18 exactly
    seconds = np.array([1_600_000_000, 1_234_567_936, 100], np.float32)  # 100 s: 2 us off
    expected = [int(Fraction(float(s)) * NS) for s in seconds]
    assert stored(seconds) == expected


def test_float32_reference_time_is_the_instant_it_holds():
    log = Interactions.from_arrays([1], [1], timestamps=[1_577_836_800], half_life="1D",
                                   reference_time=np.float32(1_577_836_800))
    assert log.values.tolist() == [1.0]


def test_float16_seconds_are_read():
    assert stored(np.array([1.5, -2.0], np.float16)) == [1_500_000_000, -2_000_000_000]


@pytest.mark.parametrize("unit", ["s", "ms", "D"])
def test_big_endian_datetime64_is_read(unit):
    value = np.array(["2020-09-13"], f"datetime64[{unit}]")
    assert stored(value.astype(value.dtype.newbyteorder(">"))) == stored(value)


def test_numbers_beside_datetimes_are_seconds_or_refused():
    column = [1_615_703_400, dt.datetime(2021, 1, 1)]
    try:
        got = stored(column)
    except (TypeError, ValueError):
        return  # refused as mixed: fine
    assert got == [1_615_703_400 * NS, ns_of(dt.datetime(2021, 1, 1))]


def test_a_list_of_datetime64_scalars_out_of_range_is_refused():
    column = [np.datetime64("2300-01-01", "D"), np.datetime64("2021-01-01T00:00:00", "ns")]
    with pytest.raises(ValueError, match="outside"):
        stored(column)


# ------------------------------------------------------------------------------ half-life


@pytest.mark.parametrize("half_life", [86400, 86400.0, np.int64(86400), "1D", "24h", "1 day",
                                       "P1D", dt.timedelta(days=1), np.timedelta64(1, "D"),
                                       np.timedelta64(86400 * NS, "ns"), pd.Timedelta("1D")])
def test_half_life_forms_are_one_duration(half_life):
    log = Interactions.from_arrays(*one_pair_per_event(3), timestamps=[0, 86400, 2 * 86400],
                                   half_life=half_life)
    assert log.values.tolist() == [0.25, 0.5, 1.0]  # exactly 0.5 per half-life


@pytest.mark.parametrize("half_life, error", [
    (0, ValueError), (-1, ValueError), (float("nan"), ValueError), (float("inf"), ValueError),
    ("0D", ValueError), ("-1D", ValueError), ("NaT", ValueError), (pd.NaT, ValueError),
    (np.timedelta64("NaT"), ValueError), (dt.timedelta(0), ValueError), ("abc", ValueError),
    ("1.5", ValueError), (True, TypeError), ([86400], TypeError), (object(), TypeError)])
def test_bad_half_lives_are_refused_naming_half_life(half_life, error):
    with pytest.raises(error, match="half_life"):
        Interactions.from_arrays([1], [1], timestamps=[0], half_life=half_life)


def test_half_life_needs_timestamps():
    with pytest.raises(ValueError, match="half_life needs timestamps"):
        Interactions.from_arrays([1], [1], half_life="1D")


@pytest.mark.parametrize("text", ["1", "86400"])
def test_a_unitless_half_life_string_is_refused_or_seconds(text):
    try:
        log = Interactions.from_arrays([1], [1], timestamps=[0], half_life=text)
    except ValueError:
        return
    assert log._settings["half_life"] == float(text)


@pytest.mark.parametrize("unit", ["M", "Y"])
def test_a_calendar_timedelta64_half_life_is_refused_naming_it(unit):
    with pytest.raises((TypeError, ValueError), match="half_life"):
        Interactions.from_arrays([1], [1], timestamps=[0], half_life=np.timedelta64(1, unit))


def test_reference_time_without_half_life_is_refused():
    with pytest.raises((TypeError, ValueError), match="reference_time"):
        Interactions.from_arrays([1], [1], timestamps=[0], reference_time="not a time")


TIMES = st.lists(st.integers(-10**6, 10**6), min_size=1, max_size=12)  # seconds


@HYPOTHESIS
@given(times=TIMES, half_life=st.sampled_from([1, 7, 3600, 86400, 0.25]),
       reference=st.one_of(st.none(), st.integers(-10**6, 10**6)))
def test_decay_is_half_per_half_life_from_the_reference(times, half_life, reference):
    ns = [t * NS for t in times]
    ref_ns = max(ns) if reference is None else reference * NS
    expected = decayed(ns, ref_ns, half_life)
    if max(expected) > 1e38:  # would overflow float32: refused, checked elsewhere
        return
    log = Interactions.from_arrays(*one_pair_per_event(len(times)), timestamps=times,
                                   half_life=half_life, reference_time=reference)
    got = log.values.astype(np.float64)
    assert np.allclose(got, np.float32(expected), rtol=2e-7, atol=0), (got, expected)
    assert log._settings["reference_time"] == ref_ns


def test_decay_underflow_keeps_stored_zeros():
    log = Interactions.from_arrays(*one_pair_per_event(2), timestamps=[0, 10**6],
                                   half_life=1)
    assert log.values.tolist() == [0.0, 1.0] and log.nnz == 2  # kept, as matrix says
    assert log.matrix.nnz == 2 and log.counts.tolist() == [1, 1]


def test_events_far_after_a_fixed_reference_overflow_are_refused():
    with pytest.raises(ValueError, match="reference_time"):
        Interactions.from_arrays([1], [1], timestamps=[10**6], half_life=1, reference_time=0)


@pytest.mark.parametrize("reference", [
    "2020-01-01", "2020-01-01T05:30+05:30", "2019-12-31T19:00:00-05:00",
    pd.Timestamp("2020-01-01", tz="UTC"), pd.Timestamp("2019-12-31 19:00", tz="America/New_York"),
    dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc), dt.date(2020, 1, 1),
    np.datetime64("2020-01-01"), np.datetime64("2020-01-01T00:00:00.000000000"),
    1_577_836_800, 1_577_836_800.0, np.int64(1_577_836_800)])
def test_reference_time_in_any_form_is_one_instant(reference):
    log = Interactions.from_arrays([1], [1], timestamps=["2020-01-01"], half_life="1D",
                                   reference_time=reference)
    assert log._settings["reference_time"] == ns_of(dt.datetime(2020, 1, 1))
    assert log.values.tolist() == [1.0]


@pytest.mark.parametrize("reference", [np.datetime64("NaT"), float("nan"), "", True, [0, 1],
                                       "2300-01-01"])
def test_bad_reference_times_are_refused(reference):
    with pytest.raises((TypeError, ValueError), match="reference_time"):
        Interactions.from_arrays([1], [1], timestamps=[0], half_life="1D",
                                 reference_time=reference)


def test_decay_between_the_two_ends_of_the_time_range():
    # 1677 and 2262 are ~2**64 ns apart: the int64 difference wraps; the decay must not
    low, high = "1677-09-22", "2262-04-10"
    year = 365.25 * 86400
    log = Interactions.from_arrays(*one_pair_per_event(2), timestamps=[low, high],
                                   half_life=1000 * year)
    expected = decayed([ns_of(dt.datetime(1677, 9, 22)), ns_of(dt.datetime(2262, 4, 10))],
                       ns_of(dt.datetime(2262, 4, 10)), 1000 * year)
    assert np.allclose(log.values, expected, rtol=1e-6)
    grown = Interactions.from_arrays(*one_pair_per_event(2), timestamps=[low, high],
                                     half_life=1000 * year, reference_time=low)
    assert np.allclose(grown.values, [1.0, 1 / expected[0]], rtol=1e-6)


# ------------------------------------------------------------------- add: the decay re-based


COMBINES = ["sum", "max", "last", "count"]


@HYPOTHESIS
@given(data=st.data(), combine=st.sampled_from(COMBINES), fixed=st.booleans())
def test_add_in_two_steps_equals_one_step(data, combine, fixed):
    n = data.draw(st.integers(2, 16))
    users = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    items = data.draw(st.lists(st.integers(0, 3), min_size=n, max_size=n))
    times = data.draw(st.lists(st.integers(0, 20), min_size=n, max_size=n))  # in hours
    weights = data.draw(st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=n,
                                 max_size=n))
    cut = data.draw(st.integers(1, n - 1))
    times = [t * 3600 for t in times]
    options = dict(half_life="6h", combine=combine,
                   reference_time=10 * 3600 if fixed else None)

    def build(a, b):
        return Interactions.from_arrays(users[a:b], items[a:b], weights=weights[a:b],
                                        timestamps=times[a:b], **options)

    one = build(0, n)
    two = build(0, cut).add(users=users[cut:], items=items[cut:], weights=weights[cut:],
                            timestamps=times[cut:])
    assert two._settings["reference_time"] == one._settings["reference_time"]
    def table(log):  # by external ids: add appends new ids, so the ints may differ
        frame = log.to_frame()
        return {(u, i): (v, c, t) for u, i, v, c, t in zip(frame.user, frame.item, frame.value,
                                                            frame["count"], frame.timestamp)}
    a, b = table(one), table(two)
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][1:] == b[key][1:], key  # counts and latest time exactly
        assert math.isclose(a[key][0], b[key][0], rel_tol=3e-7, abs_tol=1e-30), (key, a, b)


def test_add_of_earlier_events_decays_them_to_the_later_reference():
    log = Interactions.from_arrays([1], [1], timestamps=["2020-01-05"], half_life="1D")
    more = log.add(users=[1], items=[2], timestamps=["2020-01-03"])
    assert more.values.tolist() == [1.0, 0.25]
    assert more._settings["reference_time"] == ns_of(dt.datetime(2020, 1, 5))
    later = log.add(users=[1], items=[2], timestamps=["2020-01-07"])
    assert later.values.tolist() == [0.25, 1.0]
    assert log.values.tolist() == [1.0]  # the original is unchanged


def test_add_after_save_and_load_rebases_as_before(tmp_path):
    for reference in (None, "2020-01-03"):
        log = Interactions.from_arrays([1, 1], [1, 2], timestamps=["2020-01-01", "2020-01-02"],
                                       half_life="1D", reference_time=reference)
        log.save(tmp_path / "log.npz")
        back = Interactions.load(tmp_path / "log.npz")
        new = dict(users=[1], items=[3], timestamps=["2020-01-05"])
        a, b = log.add(**new), back.add(**new)
        assert a.values.tolist() == b.values.tolist()
        assert a._settings["reference_time"] == b._settings["reference_time"]


def test_load_refuses_a_file_whose_times_hold_nat(tmp_path):
    log = Interactions.from_arrays([1, 1, 1], [1, 2, 3], timestamps=[0, 1, 2])
    # a forged file (as a writer other than recfuse could make it): the first time is NaT
    log._replace(times=np.array([np.iinfo(np.int64).min, 1, 2])).save(tmp_path / "f.npz")
    with pytest.raises(ValueError, match="times"):
        back = Interactions.load(tmp_path / "f.npz")
        # what it leads to: leave_last_n ranks the NaT pair (-times wraps) as the latest
        assert split.leave_last_n(back, 1)[1].timestamps.view(np.int64).tolist() == [2]


def test_a_refused_add_leaves_the_log_as_it_was():
    log = Interactions.from_arrays([1], [1], timestamps=[5], half_life=10)
    before = (log.values.tolist(), dict(log._settings))
    for bad in (dict(users=[1], items=[2]), dict(users=[1], items=[2], timestamps=["bad"]),
                dict(users=[1], items=[2], timestamps=[10**10])):
        with pytest.raises(ValueError):
            log.add(**bad)
    assert (log.values.tolist(), dict(log._settings)) == before


# ------------------------------------------------------------------- combine="last" and ties


def last_oracle(users, items, weights, times):
    """Per (user, item): the weight of the event with the largest time, ties to the later
    event in input order; and the pair's latest time."""
    result = {}
    for k, key in enumerate(zip(users, items)):
        best = result.get(key)
        if best is None or times[k] >= best[1]:
            result[key] = (weights[k], times[k])
    return result


@HYPOTHESIS
@given(data=st.data())
def test_combine_last_is_the_latest_event_ties_to_the_later_one(data):
    n = data.draw(st.integers(1, 20))
    users = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    items = data.draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    weights = data.draw(st.lists(st.integers(-3, 9), min_size=n, max_size=n))
    seconds = data.draw(st.lists(st.sampled_from([-9_223_372_036, -1, 0, 1, 9_223_372_036]),
                                 min_size=n, max_size=n))
    log = Interactions.from_arrays(users, items, weights=weights, timestamps=seconds,
                                   combine="last")
    frame = log.to_frame()
    got = {(u, i): (v, t.value) for u, i, v, t in zip(frame.user, frame.item, frame.value,
                                                       frame.timestamp)}
    want = {key: (float(w), t * NS) for key, (w, t) in
            last_oracle(users, items, weights, seconds).items()}
    assert got == want


def test_add_with_combine_last_an_equal_time_goes_to_the_new_event():
    log = Interactions.from_arrays([1, 1], [1, 1], weights=[5, 1], timestamps=[20, 5],
                                   combine="last")
    assert log.add(users=[1], items=[1], weights=[9], timestamps=[20]).values.tolist() == [9]
    assert log.add(users=[1], items=[1], weights=[9], timestamps=[15]).values.tolist() == [5]
    assert log.add(users=[1], items=[1], weights=[9], timestamps=[25]).values.tolist() == [9]


# ------------------------------------------------------------------------------ splits


@HYPOTHESIS
@given(data=st.data(), n=st.integers(1, 3), min_train=st.integers(0, 2),
       seed=st.integers(0, 5))
def test_leave_last_n_tests_each_users_latest_pairs(data, n, min_train, seed):
    size = data.draw(st.integers(1, 25))
    users = data.draw(st.lists(st.integers(0, 3), min_size=size, max_size=size))
    items = data.draw(st.lists(st.integers(0, 6), min_size=size, max_size=size))
    times = data.draw(st.lists(st.integers(0, 4), min_size=size, max_size=size))  # many ties
    log = Interactions.from_arrays(users, items, timestamps=times)
    train, test = split.leave_last_n(log, n, min_train=min_train, seed=seed)
    again = split.leave_last_n(log, n, min_train=min_train, seed=seed)[1]
    assert test.values.tolist() == again.values.tolist()  # seeded
    assert np.array_equal(test.timestamps, again.timestamps)
    per_user = np.diff(log._indptr)
    for user in range(log.n_users):
        a, b = train._indptr[user:user + 2], test._indptr[user:user + 2]
        train_times = train._times[a[0]:a[1]]
        test_times = test._times[b[0]:b[1]]
        assert train_times.size + test_times.size == per_user[user]
        expected = n if per_user[user] >= n + min_train else 0
        assert test_times.size == expected
        if test_times.size and train_times.size:
            assert test_times.min() >= train_times.max()  # never train on the later


@HYPOTHESIS
@given(times=st.lists(st.integers(0, 5), min_size=1, max_size=25),
       fraction=st.floats(0, 0.99))
def test_temporal_split_by_fraction(times, fraction):
    log = Interactions.from_arrays(*one_pair_per_event(len(times)), timestamps=times)
    train, test = split.temporal_split(log, test_fraction=fraction)
    count = math.floor(round(fraction * len(times), 9))
    assert train.nnz + test.nnz == len(times)
    if count == 0:
        assert test.nnz == 0
        return
    cut = sorted(times)[len(times) - count] * NS
    assert test.nnz >= count
    assert (test._times >= cut).all() and (train._times < cut).all()


@pytest.mark.parametrize("cut", [
    "2020-01-01T10:30+05:30", "2020-01-01T00:00:00-05:00", "2020-01-01T05:00Z",
    pd.Timestamp("2020-01-01T05:00Z"), pd.Timestamp("2020-01-01 00:00", tz="America/New_York"),
    dt.datetime(2020, 1, 1, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
    dt.datetime(2020, 1, 1, 5), np.datetime64("2020-01-01T05:00"), 1_577_854_800,
    1_577_854_800.0])
def test_temporal_split_cut_with_a_zone_is_one_instant(cut):
    log = Interactions.from_arrays([1, 2, 3], [1, 1, 1], timestamps=[
        "2020-01-01T00:00Z", "2020-01-01T05:00Z", "2020-01-01T06:00Z"])
    train, test = split.temporal_split(log, cut)
    assert (train.nnz, test.nnz) == (1, 2)


@pytest.mark.parametrize("cut", [float("nan"), "not a time", [1, 2], None])
def test_temporal_split_bad_cuts_are_refused(cut):
    log = Interactions.from_arrays([1], [1], timestamps=[0])
    with pytest.raises((TypeError, ValueError)):
        split.temporal_split(log, cut)


def test_temporal_split_fraction_below_one_pair_tests_none_even_at_the_last_instant():
    log = Interactions.from_arrays([1, 2], [1, 1], timestamps=[
        "2262-04-11T23:47:16.854775807", "2020-01-01"])
    train, test = split.temporal_split(log, test_fraction=0.4)  # 0.8 pairs: none
    assert (train.nnz, test.nnz) == (2, 0)


# ------------------------------------------------------------------------------ the CLI


def test_cli_train_temporal_split_reads_offsets_as_instants(tmp_path, capsys):
    from recfuse.cli import main

    base = dt.datetime(2021, 3, 14, tzinfo=dt.timezone.utc)
    offsets = [0, 5.5, -5, -4, 9, 1]
    rows, instants = ["user,item,t"], {}
    k = 0
    for user in range(6):
        for j in range(6):
            when = base + dt.timedelta(hours=k)
            local = when.astimezone(dt.timezone(dt.timedelta(hours=offsets[(k * 5) % 6])))
            item = (user + j) % 8
            rows.append(f"u{user},i{item},{local.isoformat()}")
            instants[(f"u{user}", f"i{item}")] = ns_of(when)
            k += 1
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    code = main(["train", str(tmp_path / "log.csv"), "-o", str(tmp_path / "out"),
                 "--timestamp", "t", "--split", "temporal", "--test-fraction", "0.25",
                 "--factors", "2", "--iterations", "1", "--json"])
    assert code == 0
    capsys.readouterr()
    test = Interactions.load(tmp_path / "out" / "test.npz").to_frame()
    latest = sorted(instants.values())[-9:]
    assert sorted(test.timestamp.astype("int64").tolist()) == latest
    for user, item, stamp in zip(test.user, test.item, test.timestamp):
        assert instants[(user, item)] == stamp.value


def test_cli_train_names_the_time_column_that_does_not_parse(tmp_path, capsys):
    from recfuse.cli import main

    (tmp_path / "log.csv").write_text("user,item,t\na,b,2020-01-01\na,c,yesterday\n"
                                      "b,c,2020-01-02\n")
    code = main(["train", str(tmp_path / "log.csv"), "-o", str(tmp_path / "out"),
                 "--timestamp", "t", "--split", "temporal"])
    err = capsys.readouterr().err
    assert code == 2 and "'t'" in err and "yesterday" in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------- the Recommender's observe/replay order


@pytest.fixture(scope="module")
def als():
    import scipy.sparse as sp

    import recfuse

    matrix = sp.random(20, 15, density=0.3, format="csr", random_state=0, dtype=np.float32)
    # Cholesky: the replay is documented exact under it (cg warm-starts from the last vector)
    return recfuse.ALS(factors=4, iterations=2, random_state=0, solver="cholesky").fit(matrix)


def test_observe_refuses_calls_out_of_order_and_keeps_its_log(als):
    from recfuse.serving import Recommender

    rec = Recommender(als, k=5, num_threads=1)
    rec.observe({"user": [1, 2], "item": [3, 4]})
    rec.observe({"user": [1], "item": [5]})
    log = rec.pending_events()
    assert log.calls.tolist() == [0, 0, 1]
    before = rec.recommend_batch([1, 2])
    with pytest.raises(ValueError, match="calls must not decrease"):
        rec.observe({"user": [1, 2], "item": [3, 4], "call": [5, 4]})
    assert rec.pending_events() == log and rec.recommend_batch([1, 2]) == before


def test_a_replay_of_the_log_gives_the_same_lists(als):
    from recfuse.serving import Recommender

    live = Recommender(als, k=5, num_threads=1)
    for users, items in (([1, 2], [3, 4]), ([1], [5]), ([2, 1], [6, 3])):
        live.observe({"user": users, "item": items})
    replayed = Recommender(als, k=5, num_threads=1)
    replayed.observe(live.pending_events())
    assert replayed.recommend_batch([1, 2, 3]) == live.recommend_batch([1, 2, 3])
    assert replayed.pending_events() == live.pending_events()
