"""Bug hunt: added items folded on a thread of their own (``Recommender._fold_later`` and
``_fold``, ``_NewItems.folded`` / ``rebased``).

The tier layout is invisible: whatever the fold thread does and whenever it lands (or is
dropped), everything served (lists, scores, stages, info() counts, the added items'
vectors, biases and the ALS gram, pending_events) equals what a Recommender that never
folds serves after the same calls, bit for bit; nothing crashes or hangs; no exception
escapes a thread. Notes: /work/notes/hunt-fold-thread-s.md. Its three bugs (a thread start
failing other than with RuntimeError, and two ways a fork during a fold left the child
stuck) were fixed the same day; their tests below now pass.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import threading
import time
import weakref
import zlib
from contextlib import contextmanager
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recfuse import serving
from recfuse.serving import Recommender, Rerank, _NewItems
from test_serving_tiers import (D, MODELS, N_ITEMS, N_USERS, NEVER, _assert_same,
                                _gated_folds, _join, _readers, _recent_limit,
                                _recommender)

_NO_IDS = np.zeros(0, np.int64)
MANY = 40  # these tests add item ids N_ITEMS .. N_ITEMS + MANY - 1
USERS = np.arange(N_USERS + 4)
FULL = N_ITEMS + MANY + 2  # a list as long as the catalogue
TESTS = os.path.dirname(os.path.abspath(__file__))
# the subprocesses import test_serving_tiers (tests/ on their path, ahead of the caller's)
_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [TESTS] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))


# ---------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True)
def no_thread_exceptions():
    """Every test: no exception escapes any thread (threading.excepthook)."""
    escaped = []
    with patch.object(threading, "excepthook", lambda args: escaped.append(args)):
        yield
    assert not escaped, [f"{a.thread}: {a.exc_type.__name__}: {a.exc_value}" for a in escaped]


def _make(kind: str, variant: str = "plain", background: bool = True, k: int = FULL,
          **options) -> Recommender:
    """test_serving_tiers._recommender over MODELS[kind], folding on the fold thread by
    default, lists as long as these tests' catalogue."""
    return _recommender(MODELS[kind], variant, k, background, **options)


def _calls(rng, kind: str, count: int, size: int = 2, added: float = 0.75) -> list:
    """Observe calls over old, new and never-trained users, base items and MANY added ids
    (often set again by their first users)."""
    low = 0 if kind.startswith("als") else 1
    calls = []
    for _ in range(count):
        items = np.where(rng.random(size) < added, N_ITEMS + rng.integers(0, MANY, size),
                         rng.integers(0, N_ITEMS, size))
        calls.append({"user": rng.integers(0, N_USERS + 4, size), "item": items,
                      "weight": rng.integers(low, 6, size).astype(float)})
    return calls


def _state(rec: Recommender, ks=(1, 5, FULL)) -> dict:
    """Everything a fold must not change: the published added items, users, counts, the
    log, and the lists (with exclude lists naming added ids)."""
    state = rec._state
    extra = state.new_items
    ids = np.arange(N_ITEMS, N_ITEMS + MANY)
    snap = {"info": rec.info(), "pending": tuple(rec.pending_events())}
    if extra is not None:
        has = extra.has(ids)
        snap.update(has=has, vectors=extra.vectors(ids[has]), biases=extra.biases(ids[has]),
                    count=extra.count, gram=extra.gram)
    snap["users"] = {u: (e.vector.tobytes(), e.offset, e.items.tobytes())
                     for u, e in state.users.items()}
    excludes = [[N_ITEMS + (u % MANY), u % N_ITEMS] if u % 3 == 0 else None for u in USERS]
    for k in ks:
        answer = rec.recommend_batch(USERS, k=k, excludes=excludes)
        snap[k] = (answer.ids, answer.scores, answer.stages, answer.version)
    single = rec.recommend(3, k=5, exclude=[N_ITEMS + 1])
    snap["single"] = (single.ids, single.scores, single.stages)
    return snap


@contextmanager
def _counted(name: str):
    """Counts the calls of ``_NewItems.<name>`` (folded: fold threads and nothing else;
    rebased: fold threads that reached publication)."""
    real = getattr(_NewItems, name)
    calls = []

    def counted(self, *args):
        calls.append(threading.current_thread().name)
        return real(self, *args)

    with patch.object(_NewItems, name, counted):
        yield calls


def _answer_key(rec: Recommender) -> bytes:
    a = rec.recommend_batch(USERS, k=8)
    return a.ids.tobytes() + a.scores.tobytes() + "|".join(a.stages.ravel()).encode()


# ---------------------------------------------------------------------- many rounds


@pytest.mark.parametrize("kind, variant, limit", [
    ("als", "rules", 1), ("als64", "ranker", 2), ("svd", "rules", 1),
    ("explicit", "ranker", 1), ("bpr", "plain", 3), ("explicit_unbiased", "rules", 2),
])
def test_many_fold_rounds_with_random_joins_serve_as_never_folding(kind, variant, limit):
    """160 calls with the recent limit at 1-3 (dozens of fold threads, some dropped by an
    inline fold past the backlog, some landing while the next call computes, some joined):
    after every call the state and the lists are those of a Recommender that never folds."""
    rng = np.random.default_rng(zlib.crc32(f"{kind} {limit}".encode()))
    calls = _calls(rng, kind, 160)
    joins = rng.random(len(calls)) < 0.4
    with _recent_limit(NEVER):
        reference = _make(kind, variant, background=False)
        want = []
        for events in calls:
            reference.observe(events)
            want.append(_state(reference, ks=(5, FULL)))
    with _recent_limit(limit), _counted("rebased") as published, _counted("folded") as folds:
        rec = _make(kind, variant)
        for step, (events, join) in enumerate(zip(calls, joins)):
            rec.observe(events)
            if join:
                _join(rec)
            _assert_same(_state(rec, ks=(5, FULL)), want[step], f"{kind} call {step}")
        _join(rec)
        _assert_same(_state(rec, ks=(5, FULL)), want[-1], f"{kind} joined")
    assert len(published) >= 10 and set(folds) == {"recfuse-fold"}
    assert not rec._folding


# ---------------------------------------------------------------------- readers


@pytest.mark.parametrize("kind, variant, limit", [
    ("als", "ranker", 1), ("svd", "rules", 2), ("explicit", "ranker_mmr", 1),
    ("als64", "mmr", 1),
])
def test_readers_answer_a_published_prefix_while_fold_threads_land(kind, variant, limit):
    """Two reader threads call recommend_batch (and read info()) without pause while the
    writer observes one call at a time and fold threads publish: every answer equals the
    never-folding reference after some prefix of the calls that had started, and not before
    one that had finished."""
    rng = np.random.default_rng(17)
    calls = _calls(rng, kind, 120, added=0.85)
    with _recent_limit(NEVER):
        reference = _make(kind, variant, background=False, k=8)
        answers, counts = [_answer_key(reference)], [0]
        for events in calls:
            reference.observe(events)
            answers.append(_answer_key(reference))
            counts.append(reference.info()["added_items"])
    prefixes: dict = {}
    for position, key in enumerate(answers):
        prefixes.setdefault(key, []).append(position)
    done, started = [0], [0]
    with _recent_limit(limit), _counted("rebased") as published:
        rec = _make(kind, variant, k=8)

        def read(thread):
            low = done[0]
            key = _answer_key(rec)
            added = rec.info()["added_items"]
            high = started[0]
            matches = [p for p in prefixes.get(key, []) if low <= p <= high]
            assert matches, f"an answer of no prefix in [{low}, {high}]"
            assert added in counts[low:high + 1], (added, low, high)

        with _readers(read, 2) as (stop, reads):
            for step, events in enumerate(calls):
                started[0] = step + 1
                rec.observe(events)
                done[0] = step + 1
                if stop.is_set():
                    break
                if step % 4 == 0:
                    _join(rec)  # a fold lands with no writer call under way
                    time.sleep(0.002)
            _join(rec)
            time.sleep(0.02)
    assert reads[0] > 0 and len(published) >= 5
    assert _answer_key(rec) == answers[-1]


# ---------------------------------------------------------------------- set again mid-fold


def _als_vector(scale: dict):
    """A stand-in for ALS's item solve: item i's vector depends on scale[i] alone, so the
    test chooses when a change sets the exact same bits and when other ones."""
    def vector(state, item, owners, entries):
        return np.array([0.1, -0.2, 0.3])[:D] * (item - N_ITEMS + 1) * scale.get(item, 1.0)
    return staticmethod(vector)


def _rating_vector(state, raters, ratings):
    """A stand-in for the rating models' item solve: the vector from the first rating, the
    bias from the last: a first user's new rating sets the same vector with the same bias
    (the same rating again) or with another bias (another rating)."""
    return np.array([0.05, 0.1, -0.07])[:D] * ratings[0], float(ratings[-1]) / 10


def _across_a_fold(rec: Recommender, first: list, later: list, gate=None, started=None,
                   between=lambda: None) -> dict:
    """Observe ``first``; with ``started`` (``_gated_folds``) wait until a fold thread took
    those rows; ``between()``; observe ``later``; the snapshot (``_state``) then; with
    ``gate`` let the fold thread publish, and join it."""
    for events in first:
        rec.observe(events)
    if started is not None:
        assert started.wait(10)
    between()
    for events in later:
        rec.observe(events)
    snap = _state(rec)
    if gate is not None:
        gate.set()
        _join(rec)
    return snap


@pytest.mark.parametrize("kind", ["als", "als64"])
def test_items_set_again_with_the_same_or_other_bits_while_the_fold_runs(kind):
    """While a fold thread holds the recent rows of the moment it started, some of them are
    set again with the exact same bits (the fold's copy is right: they leave the recent
    tier), others with new vectors (they stay recent and hide their folded row), and new
    items come: everything served is the never-folding reference's, during and after."""
    first = [{"user": [1, 2], "item": [N_ITEMS, N_ITEMS + 1], "weight": [3.0, 1.0]},
             {"user": [3, 4], "item": [N_ITEMS + 2, N_ITEMS + 3], "weight": [1.0, 2.0]}]
    later = [{"user": [1, 3], "item": [N_ITEMS, N_ITEMS + 2], "weight": [1.0, 1.0]},
             {"user": [2, 4], "item": [N_ITEMS + 1, N_ITEMS + 3], "weight": [1.0, 1.0]},
             {"user": [5], "item": [N_ITEMS + 4], "weight": [1.0]}]

    def serve(rec, gate=None, started=None):
        scale = {}

        def new_bits():  # N_ITEMS: same bits again; N_ITEMS + 1 and + 3: new ones
            scale.update({N_ITEMS + 1: 2.0, N_ITEMS + 3: -1.0})

        with patch.object(Recommender, "_als_item_vector", _als_vector(scale)):
            return _across_a_fold(rec, first, later, gate, started, new_bits)

    with _recent_limit(NEVER):
        reference = _make(kind, "rules", background=False)
        want = serve(reference)
    with _gated_folds() as (gate, started), _recent_limit(3):
        rec = _make(kind, "rules")
        during = serve(rec, gate, started)
        _assert_same(during, want, "before the fold thread published")
    extra = rec._state.new_items
    assert extra.settled is not None
    np.testing.assert_array_equal(extra.settled.ids, N_ITEMS + np.arange(4))
    # N_ITEMS and N_ITEMS + 2 came back with their bits: folded; the others stay recent
    np.testing.assert_array_equal(extra.recent.ids, N_ITEMS + np.array([1, 3, 4]))
    assert extra.settled_mask.tolist() == [1, 0, 1, 0]  # N_ITEMS + 1: denied and recent
    _assert_same(_state(rec), want, "after the fold thread published")


@pytest.mark.parametrize("kind", ["svd", "explicit"])
def test_a_bias_set_again_alone_keeps_the_row_recent(kind):
    """Rating models: a row set again mid-fold with the same vector bits but another bias is
    not the folded row (it stays recent), one set again with both the same is; served as
    the never-folding reference, during and after the fold thread."""
    first = [{"user": [1, 2], "item": [N_ITEMS, N_ITEMS + 1], "weight": [3.0, 4.0]},
             {"user": [3], "item": [N_ITEMS + 2], "weight": [2.0]}]
    later = [{"user": [1], "item": [N_ITEMS], "weight": [3.0]},  # same vector, same bias
             {"user": [2], "item": [N_ITEMS + 1], "weight": [5.0]},  # same vector, new bias
             {"user": [6], "item": [N_ITEMS + 5], "weight": [1.0]}]

    def serve(rec, gate=None, started=None):
        with patch.object(Recommender, "_rating_item_vector", staticmethod(_rating_vector)):
            return _across_a_fold(rec, first, later, gate, started)

    with _recent_limit(NEVER):
        want = serve(_make(kind, "rules", background=False))
    with _gated_folds() as (gate, started), _recent_limit(2):
        rec = _make(kind, "rules")
        _assert_same(serve(rec, gate, started), want, "before the fold thread published")
    extra = rec._state.new_items
    np.testing.assert_array_equal(extra.settled.ids, N_ITEMS + np.arange(3))
    np.testing.assert_array_equal(extra.recent.ids, N_ITEMS + np.array([1, 5]))
    _assert_same(_state(rec), want, "after the fold thread published")


# ---------------------------------------------------------------------- the tiers, alone


@st.composite
def _tier_histories(draw):
    """A _NewItems with a settled and a recent tier, and the changes that follow it while a
    fold of its recent rows runs: rows set again with the same bits (vector and bias), with
    another vector, with another bias only, new rows."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    biased = draw(st.booleans())
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rules = draw(st.sampled_from([None, Rerank(deny=[N_ITEMS + 1, N_ITEMS + 7]),
                                  Rerank(allow=N_ITEMS + np.arange(0, 30, 2))]))
    ids = N_ITEMS + np.arange(30)

    def rows(chosen):
        table = rng.standard_normal((chosen.size, D)).astype(dtype)
        bias = rng.standard_normal(chosen.size).astype(dtype) if biased else None
        return table, bias

    extra = _NewItems(None, None, None, None, 0)
    with _recent_limit(0):  # the first change: everything settled
        first = np.unique(rng.choice(ids, draw(st.integers(0, 12))))
        if first.size:
            extra = extra.changed(first, *rows(first), None, rules, "auto")
    with _recent_limit(NEVER):
        recent = np.unique(rng.choice(ids, draw(st.integers(1, 12))))
        before = extra.changed(recent, *rows(recent), None, rules, "auto")
        now = before
        for _ in range(draw(st.integers(0, 4))):
            chosen = np.unique(rng.choice(ids, draw(st.integers(1, 6))))
            table, bias = rows(chosen)
            for position, item in enumerate(chosen.tolist()):
                held, found = now.recent.find(np.array([item]))
                if found[0] and draw(st.booleans()):  # the same vector again
                    table[position] = now.recent.table[held[0]]
                    if biased and draw(st.booleans()):  # ... and the same bias
                        bias[position] = now.recent.bias[held[0]]
            now = now.changed(chosen, table, bias, None, rules, "auto")
    return before, now, rules


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=_tier_histories(), seed=st.integers(0, 2**16))
def test_rebased_items_serve_what_the_items_of_now_serve(history, seed):
    """``now.rebased(before, before.folded())`` has now's vectors, biases and count, and
    its searches (rules, excludes naming added ids, k from 1 to all) answer as now's."""
    before, now, rules = history
    folded = before.folded(rules, "auto", 10, 1)
    rebased = now.rebased(before, folded, rules, "auto", 10, 1)
    assert rebased.settled is folded.settled
    ids = N_ITEMS + np.arange(30)
    np.testing.assert_array_equal(rebased.has(ids), now.has(ids))
    has = now.has(ids)
    assert rebased.count == now.count == int(has.sum())
    np.testing.assert_array_equal(rebased.vectors(ids[has]), now.vectors(ids[has]))
    np.testing.assert_array_equal(rebased.biases(ids[has]), now.biases(ids[has]))
    # a settled row is searched exactly when the rules allow it and no recent row hides it
    settled = folded.settled.ids
    visible = (np.ones(settled.size, bool) if rebased.settled_mask is None
               else rebased.settled_mask.astype(bool))
    recent = _NO_IDS if rebased.recent is None else rebased.recent.ids
    allowed = np.ones(settled.size, bool) if rules is None else rules.allows(settled)
    np.testing.assert_array_equal(visible, allowed & ~np.isin(settled, recent))
    # no row of before's recent tier stays recent with the bits (vector and bias) it had
    # there: the fold holds those
    if rebased.recent is not None:
        old = before.recent
        rows, found = old.find(rebased.recent.ids)
        for row, (at, hit) in enumerate(zip(rows.tolist(), found.tolist())):
            if hit:
                same = (rebased.recent.table[row].tobytes() == old.table[at].tobytes()
                        and (old.bias is None
                             or rebased.recent.bias[row].tobytes() == old.bias[at].tobytes()))
                assert not same, rebased.recent.ids[row]
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((4, D)).astype(now.tiers()[0][0].table.dtype)
    own = {1: np.unique(rng.choice(ids, 5)), 3: np.array([0, N_ITEMS + 2])}
    for wanted in (1, 3, 35):
        got, want = rebased.search(queries, wanted, own, 1), now.search(queries, wanted, own, 1)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


# ---------------------------------------------------------------------- swaps


@pytest.mark.parametrize("target, replay", [("als", True), ("svd", True), ("bpr", False),
                                            ("explicit", True)])
def test_a_swap_while_the_fold_thread_waits(target, replay):
    """swap_model (the same model or another kind, with or without replay) while a fold
    thread holds the old state's rows: the thread publishes nothing, the old state is left
    as it was, the new one serves as the never-folding reference's, and its own folds
    run on the fold thread afterwards."""
    rng = np.random.default_rng(3)
    calls = _calls(rng, "svd", 12)  # ratings 1-5: valid for every kind
    after = _calls(rng, "svd", 30)

    def serve(rec, gate=None, started=None):
        for events in calls:
            rec.observe(events)
        if started is not None:
            assert started.wait(10)
        old = rec._state
        old_items = old.new_items
        rec.swap_model(MODELS[target], replay=replay)
        assert rec._state is not old
        snap = _state(rec)
        if gate is not None:
            gate.set()
            _join(rec)
            assert old.new_items is old_items and old.published % 2 == 0
            _assert_same(_state(rec), snap, "the dropped fold changed the new state")
        for events in after:
            rec.observe(events)
            _join(rec)
        return snap, _state(rec)

    with _recent_limit(NEVER):
        want = serve(_make("als", "rules", background=False))
    with _gated_folds() as (gate, started), _recent_limit(1), \
            _counted("rebased") as published:
        rec = _make("als", "rules")
        got = serve(rec, gate, started)
    _assert_same(got[0], want[0], f"swap to {target}, replay={replay}")
    _assert_same(got[1], want[1], f"observed after the swap to {target}")
    assert published and rec._state.new_items.settled is not None  # the new state folded
    assert rec.info()["version"] == 2


def test_random_observe_swap_clear_and_setting_changes_with_fold_threads():
    """A random mix of observe (some refused), swap_model (other kinds, replay or not),
    pending_events(clear=True), max_new_items and unknown_items changes, with fold threads
    joined at random: after every step the same outcome (error or not) and the same state
    as the never-folding reference."""
    rng = np.random.default_rng(11)
    kinds = ["als", "svd", "explicit", "bpr", "als64"]
    ops = []
    for step in range(110):
        r = rng.random()
        if step % 30 in (12, 16):  # "reject" for a few calls, then "add" again
            ops.append(("unknown_items", "reject" if step % 30 == 12 else "add"))
        elif r < 0.06:
            ops.append(("swap", kinds[rng.integers(0, 4)], bool(rng.random() < 0.7)))
        elif r < 0.09:
            ops.append(("clear",))
        elif r < 0.12:
            ops.append(("max_new_items", int(rng.integers(5, MANY + 5))))
        else:
            ops.append(("observe", _calls(rng, "svd", 1)[0]))
    joins = rng.random(len(ops)) < 0.3

    def run(rec):
        out = []
        for op, join in zip(ops, joins):
            try:
                if op[0] == "observe":
                    rec.observe(op[1])
                elif op[0] == "swap":
                    rec.swap_model(MODELS[op[1]], replay=op[2])
                elif op[0] == "clear":
                    rec.pending_events(clear=True)
                else:
                    setattr(rec, op[0], op[1])
                outcome = "ok"
            except ValueError as error:
                outcome = str(error)
            if join:
                _join(rec)
            out.append((outcome, _state(rec, ks=(FULL,))))
        return out

    with _recent_limit(NEVER):
        want = run(_make("als", "rules", background=False))
    with _recent_limit(1), _counted("rebased") as published:
        rec = _make("als", "rules")
        got = run(rec)
        _join(rec)
    assert sum(outcome != "ok" for outcome, _ in want) >= 3  # refusals were exercised
    for step, ((a, snap), (b, reference)) in enumerate(zip(got, want)):
        assert a == b, (step, ops[step])
        _assert_same(snap, reference, f"step {step}: {ops[step][0]}")
    assert len(published) >= 5


# ---------------------------------------------------------------------- failures


def test_a_fold_thread_whose_rebase_fails_changes_nothing(caplog):
    """An exception in ``rebased`` (the publication step, writer lock held): logged, nothing
    published (``published`` still even), the flag reset, the next fold thread lands."""
    calls = [{"user": [u], "item": [N_ITEMS + u % 12]} for u in range(1, 25)]
    real = _NewItems.rebased
    failures = []

    def rebased(self, *args):
        if not failures:
            failures.append(threading.current_thread().name)
            raise ValueError("rebase went wrong")
        return real(self, *args)

    with _recent_limit(NEVER):
        reference = _make("als", "rules", background=False)
        want = []
        for events in calls:
            reference.observe(events)
            want.append(_state(reference))
    with patch.object(_NewItems, "rebased", rebased), _recent_limit(1), \
            caplog.at_level(logging.WARNING, "recfuse.serving"):
        rec = _make("als", "rules")
        for step, events in enumerate(calls):
            published = rec._state.published
            rec.observe(events)
            _join(rec)
            assert rec._state.published % 2 == 0 and rec._state.published >= published + 2
            assert not rec._folding
            _assert_same(_state(rec), want[step], f"call {step}")
    assert failures == ["recfuse-fold"]
    assert "rebase went wrong" in caplog.text
    assert rec._state.new_items.settled is not None


@pytest.mark.parametrize("error", [RuntimeError("can't start new thread"),
                                   MemoryError("cannot allocate the thread")])
def test_a_thread_start_that_fails_leaves_observe_whole(error):
    """Thread.start raising (RuntimeError "can't start new thread", or CPython's MemoryError
    when start_new_thread cannot allocate; a MemoryError escaped observe after its events
    were published, unlogged, and left _folding True for good): observe still succeeds and
    logs its events, the flag is reset, and the next outgrown tier starts a thread."""
    calls = [{"user": [u], "item": [N_ITEMS + u]} for u in range(1, 12)]
    real_start = threading.Thread.start
    refused = []

    def start(self):
        if self.name == "recfuse-fold" and not refused:
            refused.append(self)
            raise error
        return real_start(self)

    with _recent_limit(NEVER):
        reference = _make("als", background=False)
        for events in calls:
            reference.observe(events)
    with patch.object(threading.Thread, "start", start), _recent_limit(1), \
            _counted("rebased") as published:
        rec = _make("als")
        outcomes = []
        for events in calls:
            try:
                rec.observe(events)
                outcomes.append("ok")
            except type(error):
                outcomes.append("refused")
                # observe promises: on an error nothing was applied
                assert rec.info()["added_items"] == len(outcomes) - 1
            _join(rec)
    assert refused and published
    assert outcomes == ["ok"] * len(calls)  # no event lost nor doubled by a retry
    assert not rec._folding and rec._state.new_items.settled is not None
    _assert_same(_state(rec), _state(reference), "after a thread that failed to start")


def test_one_fold_thread_at_a_time_and_none_below_the_threshold():
    """While a fold thread waits, calls that outgrow the recent tier again start no second
    one (the backlog holds the rows); below ``_background_fold_items`` added items the
    fold is inline as before (no thread at all)."""
    calls = [{"user": [u % 20], "item": [N_ITEMS + u]} for u in range(1, 8)]
    with _gated_folds() as (gate, started), _recent_limit(1), _counted("folded") as folds:
        rec = _make("als")
        for events in calls:
            rec.observe(events)
        assert started.wait(10)
        alive = [t for t in threading.enumerate() if t.name == "recfuse-fold"]
        assert len(alive) == 1 and rec._folding
        assert rec._state.new_items.recent.ids.size == 7  # within 8 x the limit of 1
        gate.set()
        _join(rec)
    assert len(folds) == 1
    with _recent_limit(1), _counted("folded") as folds:
        rec = _make("als")
        rec._background_fold_items = 5
        for step, events in enumerate(calls):
            rec.observe(events)
            _join(rec)
            if step < 5:  # a change from fewer than 5 added items folds inline
                assert rec._fold_thread is None and not folds
    assert folds and rec._fold_thread is not None


def test_pending_events_cleared_and_settings_changed_while_the_fold_waits():
    """pending_events(clear=True), a lower max_new_items and unknown_items="reject" while a
    fold thread waits: the log, the refusals and everything served match the reference, and
    the fold lands afterwards."""
    first = [{"user": [u], "item": [N_ITEMS + u]} for u in range(1, 5)]
    later = [{"user": [7], "item": [N_ITEMS + 1]},  # an added item: still accepted
             {"user": [8], "item": [N_ITEMS + 30]}]  # a new one: refused

    def serve(rec, gate=None, started=None):
        for events in first:
            rec.observe(events)
        if started is not None:
            assert started.wait(10)
        cleared = rec.pending_events(clear=True)
        rec.max_new_items = 3
        outcomes = []
        for unknown in ("add", "reject"):
            rec.unknown_items = unknown
            for events in later:
                try:
                    rec.observe(events)
                    outcomes.append("ok")
                except ValueError as error:
                    outcomes.append(str(error))
        if gate is not None:
            gate.set()
            _join(rec)
        return cleared, outcomes, _state(rec)

    with _recent_limit(NEVER):
        want = serve(_make("als", background=False))
    with _gated_folds() as (gate, started), _recent_limit(1), \
            _counted("rebased") as published:
        got = serve(_make("als"), gate, started)
    assert got[1] == want[1] and got[1][0] == "ok" and got[1][1] != "ok"
    for a, b in zip(got[0], want[0]):
        np.testing.assert_array_equal(a, b)
    _assert_same(got[2], want[2], "after the fold")
    assert published


# ---------------------------------------------------------------------- real thresholds


def test_the_shipped_thresholds_fold_on_the_thread_as_never_folding():
    """The shipped ``_BACKGROUND_FOLD_ITEMS`` and ``_recent_limit``: that many items and
    50 more added in one call (an inline fold), then 350 calls
    setting items again and adding more (fold threads from then on): the vectors, gram and
    lists are those of never folding."""
    rng = np.random.default_rng(0)
    n = serving._BACKGROUND_FOLD_ITEMS + 50
    first = {"user": rng.integers(0, N_USERS, n), "item": N_ITEMS + np.arange(n),
             "weight": np.ones(n)}
    later = [{"user": rng.integers(0, N_USERS + 4, 2),
              "item": N_ITEMS + rng.integers(0, n + 600, 2),
              "weight": rng.integers(1, 4, 2).astype(float)} for _ in range(350)]
    served = []
    for limit in (NEVER, None):
        with (_recent_limit(limit) if limit else patch.object(serving, "_recent_limit",
                                                              serving._recent_limit)), \
                _counted("rebased") as published:
            rec = Recommender(MODELS["als"], k=20, rerank=Rerank(deny=[N_ITEMS + 5, 3]),
                              new_item_users=2, num_threads=1)
            rec.observe(first)
            for events in later:
                rec.observe(events)
            _join(rec)
        extra = rec._state.new_items
        ids = N_ITEMS + np.arange(n + 600)
        has = extra.has(ids)
        answer = rec.recommend_batch(USERS)
        served.append((has, extra.vectors(ids[has]), extra.gram, answer.ids, answer.scores,
                       np.array(extra.count)))
        if limit is None:
            assert published and extra.settled.ids.size > n
    for got, want in zip(*served):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- lifetime


def test_a_dropped_recommender_is_collected_once_its_fold_thread_ends():
    """A Recommender dropped while its fold thread waits lives until the thread ends (it
    holds it), then is collected; the thread ends without error."""
    with _gated_folds() as (gate, started), _recent_limit(1):
        rec = _make("als")
        rec.observe({"user": [1], "item": [N_ITEMS]})
        rec.observe({"user": [2], "item": [N_ITEMS + 1]})
        assert started.wait(10)
        thread, alive = rec._fold_thread, weakref.ref(rec)
        del rec
        gc.collect()
        assert alive() is not None and thread.is_alive()
        gate.set()
        thread.join(10)
        assert not thread.is_alive()
    gc.collect()
    assert alive() is None


# The two scripts below stall a fold thread in _NewItems.<name> (their ``stalled``): a
# Recommender whose two added items fold on the thread, and, when ``name`` is "rebased", a
# change since, so that the thread's publication rebases (the writer lock held) while an
# observe on a thread of its own waits for that lock.
_FOLD_AT_WORK = """
setattr(_NewItems, name, stalled)
rec = Recommender(MODELS["als"], k=5, new_item_users=2, num_threads=1)
rec._background_fold_items = 0
rec.observe({"user": [1], "item": [N_ITEMS]})
rec.observe({"user": [2], "item": [N_ITEMS + 1]})
if name == "rebased":
    threading.Thread(target=rec.observe, args=({"user": [3], "item": [N_ITEMS + 2]},),
                     daemon=True).start()"""

_EXIT_SCRIPT = """
import sys, threading, time
import numpy as np
from recfuse import serving
from recfuse.serving import Recommender, _NewItems
from test_serving_tiers import MODELS, N_ITEMS
serving._recent_limit = lambda settled: 1
where = sys.argv[1]
started = threading.Event()
name = "rebased" if where == "rebased" else "folded"
real = getattr(_NewItems, name)
if where == "native":
    import recfuse
    table = np.random.default_rng(0).standard_normal((200_000, 32)).astype(np.float32)
    queries = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
def stalled(self, *args):
    started.set()
    if where == "native":  # in native code (the GIL released) when the interpreter exits
        index = recfuse.ItemIndex(table, backend="cpu")
        for _ in range(200):
            index.search(queries, 50, num_threads=1)
    else:
        time.sleep(2)
    return real(self, *args)
""" + _FOLD_AT_WORK + """
assert started.wait(20)
time.sleep(0.05)
assert rec._fold_thread.is_alive()
if sys.argv[2] == "del":
    del rec
print("exiting", flush=True)
"""


@pytest.mark.parametrize("where, how", [("folded", "keep"), ("folded", "del"),
                                        ("rebased", "keep"), ("native", "del")])
def test_the_interpreter_exits_cleanly_with_a_fold_thread_at_work(where, how):
    """The interpreter exits (status 0, nothing on stderr) with a fold thread at work: asleep
    in its fold, holding the writer lock in its publication, or running native searches,
    the Recommender still referenced or dropped. Fold threads are not daemons, so the exit
    waits for the fold: a daemon thread ended at finalization while it waited to take the
    GIL back from a native call aborted the process about 1 exit in 60
    (test_process_embedding_hunt's forked Recommender with a writer thread)."""
    done = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, where, how],
                          capture_output=True, text=True, timeout=60, cwd=TESTS,
                          env=_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "exiting" and done.stderr == "", done.stderr[-2000:]


_FORK_SCRIPT = """
import os, sys, threading, time
from recfuse import serving
from recfuse.serving import Recommender, _NewItems
from test_serving_tiers import MODELS, N_ITEMS
serving._recent_limit = lambda settled: 1
where = sys.argv[1]
started, gate = threading.Event(), threading.Event()
name = "rebased" if where == "publishing" else "folded"
real = getattr(_NewItems, name)
def stalled(self, *args):
    started.set()
    gate.wait(5)
    return real(self, *args)
""" + _FOLD_AT_WORK + """
assert started.wait(10)
time.sleep(0.1)
pid = os.fork()  # a pre-forking server forks its workers
if pid == 0:
    setattr(_NewItems, name, real)
    done = threading.Event()
    def work():
        for u in range(3, 40):
            rec.observe({"user": [u % 20], "item": [N_ITEMS + u]})
            if rec._fold_thread is not None and rec._fold_thread.is_alive():
                rec._fold_thread.join(10)
        rec.recommend(1)
        done.set()
    threading.Thread(target=work, daemon=True).start()
    if not done.wait(5):
        print("child: observe hung", flush=True)
        os._exit(3)
    print("child: folding", rec._folding, flush=True)
    os._exit(4 if rec._folding else 0)
gate.set()
print("child status", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


def _forked(where: str) -> str:
    done = subprocess.run([sys.executable, "-c", _FORK_SCRIPT, where], capture_output=True,
                          text=True, timeout=90, cwd=TESTS, env=_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_the_fold_thread_publishes_can_observe():
    """A child forked while the fold thread held the writer lock inherited it held by a
    thread it does not have (its first observe waited for ever); now the lock is taken
    around the fork (at most 1 s) and the child gets fresh locks."""
    out = _forked("publishing")
    assert "observe hung" not in out and "child status 0" in out, out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_while_the_fold_thread_folds_folds_on_threads():
    """A child forked while the fold thread folded inherited _folding=True and never folded
    on a thread again; now the child starts with no fold thread."""
    out = _forked("folding")
    assert "child status 0" in out, out


_SWAP_FORK_SCRIPT = """
import os, threading, time
from recfuse.serving import Recommender
from test_serving_tiers import MODELS, N_ITEMS
rec = Recommender(MODELS["als"], k=5, new_item_users=2, num_threads=1)
rec.observe({"user": [1], "item": [N_ITEMS]})
inside = threading.Event()
def slow_renumbering(events):  # a swap's replay function: the swap and writer locks held
    inside.set()
    time.sleep(3)
    return events
threading.Thread(target=rec.swap_model, args=(MODELS["als"],),
                 kwargs={"replay": slow_renumbering}, daemon=True).start()
assert inside.wait(10)
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    done = threading.Event()
    def work():
        rec.observe({"user": [2], "item": [3]})
        rec.swap_model(MODELS["als"])
        rec.recommend(2)
        done.set()
    threading.Thread(target=work, daemon=True).start()
    os._exit(0 if done.wait(10) else 3)
waited = time.perf_counter() - started
print("fork waited", round(waited, 1), "child status",
      os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_child_forked_during_a_swap_can_observe_and_swap():
    """Forked while another thread swaps (its replay function running, the swap and writer
    locks held): the fork waits a while for the writer lock, and the child, which has no
    such thread, gets fresh locks: it observes, swaps and recommends (it hung before)."""
    done = subprocess.run([sys.executable, "-c", _SWAP_FORK_SCRIPT], capture_output=True,
                          text=True, timeout=90, cwd=TESTS, env=_ENV)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "child status 0" in done.stdout, done.stdout  # 3: its observe or swap hung
