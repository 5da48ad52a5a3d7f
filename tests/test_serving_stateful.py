"""recfuse.Recommender driven by random sequences of observe / recommend / recommend_batch /
pending_events / swap_model (hypothesis stateful testing), checked after every step against
an independent model of what serving.py's docstring promises, written here in plain NumPy:

- ALS (Cholesky, float64): an observed user's vector is the exact solve of its whole row
  (training row plus every observed event, weights summed per item) against the item table
  as it was when the user was last observed (the model's items plus the added items that
  had a vector then); an added item's vector is the exact solve of its own system against
  its first ``new_item_users`` users (their vectors as of that call; every other user by
  its trained vector), re-solved only while it gathers first users or when one of them has
  an event of it;
- ExplicitALS (biased, float64): the same with every rating counted (repeated pairs too),
  vector and bias, and the added items solved from their first users' ratings;
- the lists: a brute-force top-k over the scores (seen items and excludes removed, ties by
  smaller id), the popular list for cold users; no repeats; observed items never return;
- pending_events: exactly the accepted events, in order; refused calls change nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import recfuse
from recfuse import serving
from recfuse.serving import Recommender, Rerank

N_USERS, N_ITEMS, D = 30, 20, 3
MAX_NEW, FIRST_USERS, K = 6, 2, 5
LIMIT = N_ITEMS + MAX_NEW  # item ids observe may add: N_ITEMS .. LIMIT - 1
NEW_USERS = 5  # user ids N_USERS .. N_USERS + NEW_USERS - 1 may be added
STRANGER = 10**6  # a user id never observed
COLD_KNOWN = (N_USERS - 2, N_USERS - 1)  # trained users without a training row


def _implicit_training() -> sp.csr_matrix:
    rng = np.random.default_rng(7)
    dense = (rng.random((N_USERS, N_ITEMS)) < 0.25) * rng.integers(1, 4, (N_USERS, N_ITEMS))
    dense[list(COLD_KNOWN)] = 0
    dense[:, 0] = 0  # an item nobody has: last in the popular order among equals
    return sp.csr_matrix(dense.astype(np.float64))


def _explicit_training():
    rng = np.random.default_rng(11)
    users = np.r_[np.arange(N_USERS), rng.integers(0, N_USERS, 120)]
    items = np.r_[rng.integers(0, N_ITEMS, N_USERS), rng.integers(0, N_ITEMS, 120)]
    items[:N_ITEMS] = np.arange(N_ITEMS)  # every user and every item rated at least once
    users = np.r_[users, [3, 3]]  # a repeated pair
    items = np.r_[items, [5, 5]]
    ratings = rng.integers(1, 6, users.size).astype(np.float64)
    ratings[[0, 1]] = [1.0, 5.0]  # the scale [1, 5]
    return users, items, ratings


IMPLICIT = _implicit_training()
ALS_MODEL = recfuse.ALS(factors=D, iterations=3, regularization=0.1, alpha=2.0,
                        solver="cholesky", dtype=np.float64, random_state=0).fit(IMPLICIT)
EXPLICIT = _explicit_training()
EXPLICIT_MODEL = recfuse.ExplicitALS(factors=D, iterations=3, reg=0.1, biased=True,
                                     dtype=np.float64, random_state=0).fit(*EXPLICIT)
UNBIASED_MODEL = recfuse.ExplicitALS(factors=D, iterations=3, reg=0.1, reg_bias=0.3,
                                     biased=False, dtype=np.float64,
                                     random_state=0).fit(*EXPLICIT)


def _popular(counts: np.ndarray) -> list[int]:
    """Item ids, most training entries first, ties by smaller id."""
    return sorted(range(counts.size), key=lambda i: (-counts[i], i))


# ---------------------------------------------------------------------- independent models


class _Reference:
    """What the Recommender should hold: observed users, added items, the log."""

    def __init__(self, rules=None):
        self.rules = {} if rules is None else rules  # "allow" / "deny": item id lists
        self.log: list[tuple[int, int, float]] = []
        self.log_calls: list[int] = []  # the observe call of each logged event
        self.calls = 0  # observe calls so far
        self.dropped = 0  # events pushed out of the log
        self.complete = True  # the log holds every accepted event of this Recommender
        self.reset()

    def reset(self):
        self.rows: dict[int, list[tuple[int, float]]] = {}  # observed user -> every event
        self.vectors: dict[int, np.ndarray] = {}
        self.offsets: dict[int, float] = {}
        self.added: dict[int, np.ndarray] = {}  # added item -> vector
        self.added_bias: dict[int, float] = {}
        self.owners: dict[int, list[int]] = {}  # added item -> its first users
        self.item_ratings: dict[int, list[tuple[int, float]]] = {}  # rating models

    # the item table: model items, then the added items that have a vector
    def table(self):
        ids = list(range(N_ITEMS)) + sorted(self.added)
        vectors = np.vstack([self.Y] + [self.added[i][None, :] for i in sorted(self.added)])
        return np.array(ids), vectors

    def observe(self, events, first_users, keep=None):
        """Fold one accepted observe call in (events: (user, item, weight) in arrival order;
        ``first_users``: new_item_users; ``keep``: max_pending_events, None: a replay, which
        leaves the log as it is)."""
        snapshot = (dict(self.added), dict(self.added_bias))
        users = sorted({u for u, _, _ in events})
        solved = {}
        for user in users:
            row = self.rows.get(user)
            if row is None:
                row = self.training_row(user)
            row = row + [(i, w) for u, i, w in events if u == user]
            self.rows[user] = row
            solved[user] = self.solve_user(row, *snapshot)
        for user, (vector, offset) in solved.items():
            self.vectors[user], self.offsets[user] = vector, offset
        for item in sorted({i for _, i, _ in events if i >= N_ITEMS}):
            before = self.owners.get(item, [])
            callers = [u for u, i, _ in events if i == item]
            if len(before) >= first_users and not set(callers) & set(before):
                continue  # full, and none of its first users has an event of it here
            owners = list(before)
            for user in callers:
                if len(owners) < first_users and user not in owners:
                    owners.append(user)
            self.owners[item] = owners
            self.item_ratings[item] = self.item_ratings.get(item, []) + [
                (u, w) for u, i, w in events if i == item and u in owners]
            self.added[item], self.added_bias[item] = self.solve_item(item, owners)
        if keep is None:
            return
        self.log.extend(events)
        self.log_calls.extend([self.calls] * len(events))
        self.calls += 1
        if len(self.log) > keep:
            self.dropped += len(self.log) - keep
            self.log = self.log[len(self.log) - keep:]
            self.log_calls = self.log_calls[len(self.log_calls) - keep:]
            self.complete = False

    def replay(self, log, calls, first_users):
        """Fold logged events in as their calls went, one call after another."""
        for call in sorted(set(calls)):
            self.observe([e for e, c in zip(log, calls) if c == call], first_users)

    def known_items(self, user: int) -> set[int]:
        if user in self.rows:
            return {i for i, _ in self.rows[user]}
        return {i for i, _ in self.training_row(user)}

    def query(self, user: int):
        """(vector, offset) for a warm user, None for a cold one."""
        if user in self.vectors:
            vector = self.vectors[user]
            return (vector, self.offsets[user]) if vector.any() else None
        if user < N_USERS and self.training_row(user) and self.X[user].any():
            return self.X[user], self.trained_offset(user)
        return None

    def expected(self, user: int, exclude, k: int):
        """('recall', candidate ids, their float64 scores) or ('popular', the list)."""
        hidden = self.known_items(user) | set(exclude or ())
        if self.rules:  # allow / deny hold for every list, added items too
            hidden |= set(self.rules.get("deny", ()))

        def shown(item):
            return item not in hidden and ("allow" not in self.rules or
                                           item in self.rules["allow"])

        query = self.query(user)
        if query is None:
            return "popular", [i for i in self.popular if shown(i)][:k]
        ids, table = self.table()
        scores = table @ query[0] + query[1] + self.item_biases(ids)
        keep = np.array([shown(i) for i in ids.tolist()], dtype=bool)
        return "recall", ids[keep], scores[keep]


class _AlsReference(_Reference):
    def __init__(self, model, rules=None):
        self.X = np.array(model.user_factors, dtype=np.float64)
        self.Y = np.array(model.item_factors, dtype=np.float64)
        self.reg, self.alpha = model.regularization, model.alpha
        self.popular = _popular(np.bincount(IMPLICIT.indices, minlength=N_ITEMS))
        super().__init__(rules)

    def training_row(self, user):
        if user >= N_USERS:
            return []
        row = IMPLICIT[user]
        return list(zip(row.indices.tolist(), row.data.tolist()))

    def trained_offset(self, user):
        return 0.0

    def item_biases(self, ids):
        return 0.0

    @staticmethod
    def _summed(row):
        sums: dict[int, float] = {}
        for item, weight in row:
            sums[item] = sums.get(item, 0.0) + weight
        return sums

    def _solve(self, table, weights):
        """(TᵀT + Σ (c - 1) t tᵀ + λI) x = Σ c p t over ``table``'s rows, ``weights`` a dict
        row -> summed weight (rows without one: c = 1, p = 0)."""
        A = table.T @ table + self.reg * np.eye(D)
        b = np.zeros(D)
        for position, weight in weights.items():
            c = 1 + self.alpha * weight
            t = table[position]
            A += (c - 1) * np.outer(t, t)
            b += c * (weight > 0) * t
        if not any(weight > 0 for weight in weights.values()):
            return np.zeros(D)
        return np.linalg.solve(A, b)

    def solve_user(self, row, added, _bias):
        ids = list(range(N_ITEMS)) + sorted(added)
        table = np.vstack([self.Y] + [added[i][None, :] for i in sorted(added)])
        place = {item: position for position, item in enumerate(ids)}
        weights = {place[i]: w for i, w in self._summed(row).items() if i in place}
        return self._solve(table, weights), 0.0

    def solve_item(self, item, owners):
        """The item's system over the users: trained vectors, the first users' as now."""
        X = self.X.copy()
        extra = []
        for user in owners:
            if user < N_USERS:
                X[user] = self.vectors[user]
            else:
                extra.append(self.vectors[user])
        table = np.vstack([X] + [v[None, :] for v in extra])
        position = {u: u for u in owners if u < N_USERS}
        position.update({u: N_USERS + j for j, u in enumerate(u for u in owners
                                                              if u >= N_USERS)})
        weights = {position[u]: self._summed(self.rows[u])[item] for u in owners}
        return self._solve(table, weights), 0.0


class _ExplicitReference(_Reference):
    def __init__(self, model, rules=None):
        state = model._fitted
        self.biased = model.biased
        self.X = np.array(state.user_factors, dtype=np.float64)
        self.Y = np.array(state.item_factors, dtype=np.float64)
        self.user_bias = np.array(state.user_bias, dtype=np.float64)
        self.item_bias = np.array(state.item_bias, dtype=np.float64)
        self.mean = float(state.global_mean)
        self.reg = model.reg
        self.reg_bias = model.reg if model.reg_bias is None else model.reg_bias
        users, items, _ = EXPLICIT
        pairs = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(N_USERS, N_ITEMS))
        pairs.sum_duplicates()  # a repeated pair counts once in the popular order
        self.popular = _popular(np.bincount(pairs.indices, minlength=N_ITEMS))
        super().__init__(rules)

    def training_row(self, user):
        users, items, ratings = EXPLICIT
        mine = users == user
        return list(zip(items[mine].tolist(), ratings[mine].tolist()))

    def trained_offset(self, user):
        # unbiased: r̂ = x·y for a known user (every user here is known)
        return self.mean + self.user_bias[user] if self.biased else 0.0

    def item_biases(self, ids):
        if not self.biased:
            return 0.0
        return np.array([self.item_bias[i] if i < N_ITEMS else self.added_bias[i]
                         for i in ids.tolist()])

    def _solve(self, Z, target):
        """min Σ (target − z·w)² + n (λ|w[:D]|² + λ_b w[D]²) over the n rows of Z (without
        the bias column w[D] when unbiased): (vector, bias)."""
        n = Z.shape[0]
        if not self.biased:
            Z = Z[:, :D]
        if n == 0:
            return np.zeros(D), 0.0
        diagonal = np.r_[np.full(D, self.reg), [self.reg_bias] if self.biased else []]
        w = np.linalg.solve(Z.T @ Z + n * np.diag(diagonal), Z.T @ target)
        return w[:D], float(w[D]) if self.biased else 0.0

    def solve_user(self, row, added, added_bias):
        usable = [(i, r) for i, r in row if i < N_ITEMS or i in added]
        Z = np.array([np.r_[self.Y[i] if i < N_ITEMS else added[i], 1.0] for i, _ in usable])
        if not self.biased:
            target = np.array([r for _, r in usable])
            return self._solve(Z.reshape(-1, D + 1), target)[0], 0.0
        target = np.array([r - self.mean - (self.item_bias[i] if i < N_ITEMS else added_bias[i])
                           for i, r in usable])
        vector, bias = self._solve(Z.reshape(-1, D + 1), target)
        return vector, self.mean + bias

    def _user(self, user):
        if user in self.vectors:
            return self.vectors[user], self.offsets[user]
        return self.X[user], self.trained_offset(user)

    def solve_item(self, item, owners):
        ratings = self.item_ratings[item]
        Z = np.array([np.r_[self._user(u)[0], 1.0] for u, _ in ratings])
        target = np.array([r - self._user(u)[1] for u, r in ratings])
        return self._solve(Z, target)


# ---------------------------------------------------------------------- the checks


def _check_list(reference, user, exclude, k, ids, scores, stages, where):
    ids, scores, stages = np.asarray(ids), np.asarray(scores), np.asarray(stages)
    assert ids.shape == (k,) and scores.shape == (k,) and stages.shape == (k,), where
    valid = ids >= 0
    count = int(valid.sum())
    assert valid[:count].all(), f"{where}: padding before an item: {ids}"
    assert (stages[~valid] == "").all() and np.isneginf(scores[~valid]).all(), where
    got = ids[:count].tolist()
    assert len(set(got)) == count, f"{where}: an item twice: {got}"
    assert not set(got) & reference.known_items(user), \
        f"{where}: a seen item came back: {set(got) & reference.known_items(user)}"
    assert not set(got) & set(exclude or ()), f"{where}: an excluded item came back"
    expected = reference.expected(user, exclude, k)
    if expected[0] == "popular":
        assert got == expected[1], f"{where}: popular list {got}, expected {expected[1]}"
        assert (stages[:count] == "popular").all() and (scores[:count] == 0).all(), where
        return
    _, candidates, reference_scores = expected
    assert (stages[:count] == "recall").all(), f"{where}: stages {stages}"
    assert count == min(k, candidates.size), \
        f"{where}: {count} items, expected {min(k, candidates.size)}: {got}"
    score_of = dict(zip(candidates.tolist(), reference_scores.tolist()))
    assert set(got) <= set(score_of), f"{where}: {set(got) - set(score_of)} not candidates"
    tol = 1e-7 * (1 + np.abs(reference_scores).max(initial=0.0))
    mine = np.array([score_of[i] for i in got])
    np.testing.assert_allclose(scores[:count], mine, rtol=2e-6, atol=1e-6, err_msg=where)
    # the brute-force order: score descending, ties by smaller id; near-ties (closer than
    # rounding of two exact computations) may come either way
    want = sorted(score_of, key=lambda i: (-score_of[i], i))[:count]
    for position, (a, b) in enumerate(zip(got, want)):
        if a != b:
            assert abs(score_of[a] - score_of[b]) <= tol, \
                f"{where}: position {position} holds {a} ({score_of[a]}), expected {b} " \
                f"({score_of[b]}); got {got}, expected {want}"


def _exclude_strategy():
    return st.none() | st.lists(st.integers(0, LIMIT + 2), max_size=4)


_USERS = st.one_of(st.integers(0, N_USERS - 1), st.integers(N_USERS, N_USERS + NEW_USERS - 1),
                   st.sampled_from(COLD_KNOWN), st.just(STRANGER), st.just(2**31 - 2))
_EVENT_USERS = st.one_of(st.integers(0, N_USERS - 1),
                         st.integers(N_USERS, N_USERS + NEW_USERS - 1),
                         st.just(2**31 - 2))  # a new user far past the others
_ITEMS = st.one_of(st.integers(0, N_ITEMS - 1), st.integers(N_ITEMS, LIMIT - 1))


class _ServingMachine(RuleBasedStateMachine):
    model = None
    reference_class = None
    weights = None  # strategy of valid weights
    bad_weight = None  # a weight observe must refuse
    max_pending = 1_000_000
    rule_lists = None  # Rerank's allow / deny, as a dict of lists
    recent_limit = None  # rows the added items' recent tier holds before a fold (None: as served)

    def _rerank(self):
        return None if self.rule_lists is None else Rerank(**self.rule_lists)

    def __init__(self):
        super().__init__()
        self._limit = serving._recent_limit
        if self.recent_limit is not None:  # put back by teardown
            serving._recent_limit = lambda settled: self.recent_limit
        self.rec = Recommender(self.model, k=K, max_new_items=MAX_NEW,
                               new_item_users=FIRST_USERS, num_threads=1,
                               max_pending_events=self.max_pending,
                               rerank=self._rerank())
        self.ref = self.reference_class(self.model, self.rule_lists)
        self.version = 1
        self.log_under_one_setting = True  # new_item_users unchanged while the log grew

    # ------------------------------------------------------------------ rules

    @rule(events=st.lists(st.tuples(_EVENT_USERS, _ITEMS), min_size=1, max_size=6),
          data=st.data())
    def observe(self, events, data):
        weights = [data.draw(self.weights) for _ in events]
        self._observe([(u, i, w) for (u, i), w in zip(events, weights)])

    @rule(picks=st.lists(st.integers(0, 10**6), min_size=1, max_size=3), data=st.data())
    def observe_logged_pairs_again(self, picks, data):
        log = self.ref.log
        if not log:
            return
        self._observe([(log[p % len(log)][0], log[p % len(log)][1], data.draw(self.weights))
                       for p in picks])

    def _observe(self, events):
        users, items, weights = zip(*events)
        call = {"user": list(users), "item": list(items), "weight": list(weights)}
        unknown = {i for i in items if i >= N_ITEMS and i not in self.ref.added}
        if unknown and (self.rec.unknown_items == "reject"
                        or max(unknown) >= N_ITEMS + self.rec.max_new_items):
            with pytest.raises(ValueError):
                self.rec.observe(call)
            return  # nothing applied: the invariants compare the whole state
        assert self.rec.observe(call) == len(events)
        self.ref.observe(events, self.rec.new_item_users, self.rec.max_pending_events)

    @rule(user=_EVENT_USERS, item=_ITEMS, bad=st.sampled_from(["item", "weight"]))
    def observe_refused(self, user, item, bad):
        events = {"user": [user, user], "item": [item, item], "weight": [1.0, 1.0]}
        if bad == "item":
            events["item"] = [item, LIMIT]  # beyond n_items + max_new_items
        else:
            events["weight"] = [1.0, self.bad_weight]
        with pytest.raises(ValueError):
            self.rec.observe(events)
        # nothing applied: the invariants compare the whole state with the reference's

    @rule(user=_USERS, exclude=_exclude_strategy(),
          k=st.sampled_from([None, 1, 3, LIMIT + 2]))
    def recommend(self, user, exclude, k):
        result = self.rec.recommend(user, k=k, exclude=exclude)
        assert result.version == self.version
        _check_list(self.ref, user, exclude, K if k is None else k, result.ids, result.scores,
                    result.stages, f"recommend({user}, k={k}, exclude={exclude})")

    @rule(users=st.lists(_USERS, min_size=1, max_size=6), data=st.data(),
          k=st.sampled_from([None, 2, LIMIT + 2]))
    def recommend_batch(self, users, data, k):
        excludes = data.draw(st.none() | st.lists(_exclude_strategy(), min_size=len(users),
                                                   max_size=len(users)))
        result = self.rec.recommend_batch(users, k=k, excludes=excludes)
        assert result.version == self.version
        for row, user in enumerate(users):
            exclude = None if excludes is None else excludes[row]
            _check_list(self.ref, user, exclude, K if k is None else k, result.ids[row],
                        result.scores[row], result.stages[row],
                        f"recommend_batch({users}, k={k}, excludes={excludes}) row {row}")

    @rule(clear=st.booleans())
    def pending_events(self, clear):
        events = self.rec.pending_events(clear=clear)
        self._check_log(events)
        if clear:
            self.ref.log, self.ref.log_calls = [], []
            self.ref.complete = False
            self.log_under_one_setting = True
            assert self.rec.pending_events().users.size == 0

    @rule()
    def swap_same_model(self):
        assert self.rec.swap_model(self.model) == self.version + 1
        self.version += 1
        self.ref.reset()
        # the log replays as its calls went, but for events of added items that today's
        # settings refuse (they stay in the log)
        limit = N_ITEMS + (self.rec.max_new_items if self.rec.unknown_items == "add" else 0)
        kept = [(event, call) for event, call in zip(self.ref.log, self.ref.log_calls)
                if event[1] < limit]
        if kept:
            self.ref.replay(*zip(*kept), self.rec.new_item_users)
        self.ref.complete = len(kept) == len(self.ref.log)  # the state is the log's

    @rule()
    def restart_from_the_log(self):
        """README, Restarts: pending_events() observed by a new Recommender gives the same
        users back (ALS with Cholesky, ExplicitALS: whole-row exact re-solves), added items
        and their users too (the log's calls replayed as they went)."""
        if not self.ref.complete or not self.log_under_one_setting:
            return
        # the settings the log was observed under (the README: restart with the same ones)
        fresh = Recommender(self.model, k=K, num_threads=1, max_new_items=MAX_NEW,
                            new_item_users=self.rec.new_item_users, rerank=self._rerank())
        events = self.rec.pending_events()
        if events.users.size:
            fresh.observe(events)
        assert set(fresh._state.users) == set(self.rec._state.users)
        for user, entry in self.rec._state.users.items():
            again = fresh._state.users[user]
            np.testing.assert_allclose(again.vector, entry.vector, rtol=1e-6, atol=1e-9)
            assert again.offset == pytest.approx(entry.offset, rel=1e-6, abs=1e-9)

    @rule(value=st.sampled_from(["add", "reject"]))
    def set_unknown_items(self, value):
        self.rec.unknown_items = value

    @rule(value=st.integers(1, 3))
    def set_new_item_users(self, value):
        if self.ref.log and value != self.rec.new_item_users:
            self.log_under_one_setting = False  # a restart could not replay it exactly
        self.rec.new_item_users = value

    @rule(value=st.integers(2, MAX_NEW))
    def set_max_new_items(self, value):
        self.rec.max_new_items = value

    # ------------------------------------------------------------------ invariants

    def _check_log(self, events):
        assert events.users.tolist() == [u for u, _, _ in self.ref.log]
        assert events.items.tolist() == [i for _, i, _ in self.ref.log]
        assert events.weights.tolist() == [w for _, _, w in self.ref.log]
        # the same calls: a new number where the reference's call changes, and only there
        assert (np.diff(events.calls) >= 0).all()
        assert (np.diff(events.calls) > 0).tolist() == (np.diff(self.ref.log_calls) != 0).tolist()

    @invariant()
    def state_matches_the_reference(self):
        state = self.rec._state
        assert set(state.users) == set(self.ref.vectors)
        for user, vector in self.ref.vectors.items():
            entry = state.users[user]
            np.testing.assert_allclose(entry.vector, vector, rtol=1e-6, atol=1e-9,
                                       err_msg=f"user {user}'s vector")
            assert entry.offset == pytest.approx(self.ref.offsets[user], rel=1e-6, abs=1e-9)
            assert entry.items.tolist() == sorted(self.ref.known_items(user))
        assert {i: tuple(o) for i, o in self.ref.owners.items()} == state.new_item_users
        extra = state.new_items
        assert self.rec.info()["added_items"] == len(self.ref.added)
        for item, vector in self.ref.added.items():
            assert extra.has(np.array([item]))[0]
            np.testing.assert_allclose(extra.vectors(np.array([item]))[0], vector, rtol=1e-6,
                                       atol=1e-9, err_msg=f"added item {item}'s vector")
            if item in self.ref.added_bias:
                assert extra.biases(np.array([item]))[0] == pytest.approx(
                    self.ref.added_bias[item], rel=1e-6, abs=1e-9)
        if extra is not None:
            assert extra.count == len(self.ref.added)
        self._check_log(self.rec.pending_events())
        assert self.rec.info()["dropped_events"] == self.ref.dropped
        assert self.rec.version == self.version


    def teardown(self):
        serving._recent_limit = self._limit


class AlsMachine(_ServingMachine):
    model = ALS_MODEL
    reference_class = _AlsReference
    weights = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])
    bad_weight = -1.0  # linear confidence: weights >= 0


class ExplicitMachine(_ServingMachine):
    model = EXPLICIT_MODEL
    reference_class = _ExplicitReference
    weights = st.sampled_from([1.0, 2.0, 3.0, 4.0, 5.0])
    bad_weight = 6.0  # beyond the rating scale [1, 5]


class AlsShortLogMachine(AlsMachine):
    max_pending = 5  # the log keeps the newest 5: swaps replay only those


class AlsRulesMachine(AlsMachine):
    # deny a popular item, an unpopular one and two ids observe may add; allow all but 3
    rule_lists = {"deny": [2, 7, N_ITEMS + 1, N_ITEMS + 4]}


class AlsAllowMachine(AlsMachine):
    rule_lists = {"allow": [i for i in range(LIMIT) if i % 4 != 1]}


class UnbiasedExplicitMachine(ExplicitMachine):
    model = UNBIASED_MODEL


class AlsFoldingMachine(AlsRulesMachine):
    recent_limit = 1  # added items fold into the settled tier at nearly every change


class ExplicitFoldingMachine(ExplicitMachine):
    recent_limit = 1


_SETTINGS = settings(max_examples=50, stateful_step_count=20, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])


def _test_case(machine: type, max_examples: int):
    """The machine's pytest case, run on ``max_examples`` examples."""
    case = machine.TestCase
    case.settings = settings(_SETTINGS, max_examples=max_examples)
    return case


TestAlsServing = _test_case(AlsMachine, 50)
TestExplicitServing = _test_case(ExplicitMachine, 30)
TestAlsShortLogServing = _test_case(AlsShortLogMachine, 20)
TestAlsRulesServing = _test_case(AlsRulesMachine, 20)
TestAlsAllowServing = _test_case(AlsAllowMachine, 20)
TestUnbiasedExplicitServing = _test_case(UnbiasedExplicitMachine, 20)
TestAlsFoldingServing = _test_case(AlsFoldingMachine, 20)
TestExplicitFoldingServing = _test_case(ExplicitFoldingMachine, 20)


# ---------------------------------------------------------------------- what it found

def _same_users(after, before):
    assert set(after._state.users) == set(before._state.users)
    for user, entry in before._state.users.items():
        np.testing.assert_allclose(after._state.users[user].vector, entry.vector, rtol=1e-6,
                                   atol=1e-9, err_msg=f"user {user}")


@pytest.mark.parametrize("model", [ALS_MODEL, EXPLICIT_MODEL], ids=["als", "explicit"])
def test_a_restart_from_the_log_gives_back_users_of_and_after_an_added_item(model, tmp_path):
    """A restart replayed the log as one observe call: a user whose row held an added item
    was solved before the item had a vector, and a user observed after an item was added
    against the item table (and YᵀY) without it; user 2's vector came back 0.003 off. The
    log now numbers its calls (Events.calls), and observe replays them as they went: here
    through the README's npz round trip."""
    before = Recommender(model, k=K, num_threads=1)
    rating = 4.0 if model is EXPLICIT_MODEL else 1.0
    before.observe({"user": [1], "item": [N_ITEMS], "weight": [rating]})  # an added item
    before.observe({"user": [2, 5], "item": [3, 4], "weight": [rating, rating]})  # unrelated
    before.observe({"user": [1], "item": [3], "weight": [rating]})  # the added item counted
    before.observe({"user": [6], "item": [N_ITEMS], "weight": [rating]})  # its second user
    np.savez(tmp_path / "events.npz", **before.pending_events()._asdict())
    events = recfuse.Events(**np.load(tmp_path / "events.npz"))
    assert events.calls.tolist() == [0, 1, 1, 2, 3]
    after = Recommender(model, k=K, num_threads=1)  # the README's restart recipe
    assert after.observe(events) == 5
    _same_users(after, before)
    np.testing.assert_allclose(after._state.new_items.vectors(np.array([N_ITEMS])),
                               before._state.new_items.vectors(np.array([N_ITEMS])), rtol=1e-6)
    assert after.pending_events().calls.tolist() == [0, 1, 1, 2, 3]  # its own numbers
    # without calls, one call, as before: user 1 (and under ALS, whose users' solves take
    # YᵀY of every item, user 2) lands near, not on, its vector
    once = Recommender(model, k=K, num_threads=1)
    once.observe(recfuse.Events(*events[:3]))
    assert once.pending_events().calls.tolist() == [0] * 5
    for user in [1, 2] if model is ALS_MODEL else [1]:
        assert not np.allclose(once._state.users[user].vector, before._state.users[user].vector,
                               rtol=1e-6, atol=1e-9), user


def test_a_swap_replays_the_log_as_its_calls_went():
    """swap_model's replay folded the whole log in as one call (the same drift as a
    restart's); it goes call group by call group now, and the log keeps its numbers."""
    rec = Recommender(ALS_MODEL, k=K, num_threads=1)
    rec.observe({"user": [1], "item": [N_ITEMS]})
    rec.observe({"user": [2], "item": [3]})
    kept = {user: entry.vector.copy() for user, entry in rec._state.users.items()}
    assert rec.swap_model(ALS_MODEL) == 2
    for user, vector in kept.items():
        np.testing.assert_allclose(rec._state.users[user].vector, vector, rtol=1e-6, atol=1e-9)
    assert rec.pending_events().calls.tolist() == [0, 1]
    rec.observe({"user": [3], "item": [4]})
    assert rec.pending_events().calls.tolist() == [0, 1, 2]


def test_event_calls_are_checked():
    rec = Recommender(ALS_MODEL, k=K, num_threads=1)
    with pytest.raises(ValueError, match="must not decrease"):
        rec.observe({"user": [1, 2], "item": [3, 4], "call": [1, 0]})
    with pytest.raises(ValueError, match="one value per event"):
        rec.observe(recfuse.Events(np.array([1, 2]), np.array([3, 4]), np.ones(2),
                                   np.array([0])))
    with pytest.raises(TypeError, match="integers"):
        rec.observe({"user": [1], "item": [3], "call": [0.5]})
    assert rec.pending_events().users.size == 0  # nothing applied
    assert rec.observe({"user": [1, 2], "item": [3, 4], "call": [7, 9]}) == 2
    assert rec.pending_events().calls.tolist() == [0, 1]  # numbered as this one's calls


@pytest.mark.parametrize("setting", [("unknown_items", "reject"), ("max_new_items", 0)])
def test_a_swap_after_a_settings_change_replays_what_the_settings_take(setting):
    """The replay checked the logged events against the settings of now: after
    unknown_items='reject' (or a lower max_new_items) a log holding an event of an added
    item, which observe had accepted, made every swap fail until the log was cleared. Such
    events are not replayed now; they stay in the log, for the retrain."""
    rec = Recommender(ALS_MODEL, k=K, num_threads=1)
    rec.observe({"user": [0, 1], "item": [N_ITEMS, 3]})
    setattr(rec, *setting)  # e.g. stop adding items from now on
    assert rec.swap_model(ALS_MODEL) == 2
    assert rec.info()["added_items"] == 0 and set(rec._state.users) == {1}
    assert rec.pending_events().items.tolist() == [N_ITEMS, 3]


@pytest.mark.parametrize("setting", ["unknown_items", "max_new_items"])
def test_a_swap_reads_each_setting_once(setting):
    """swap_model read unknown_items and max_new_items twice, in its filter of the logged
    events and again in their replay: a change from another thread between the two reads
    (here: a setting that answers "add" or 10 to its first read, "reject" or 0 after)
    failed the swap, against the class's promise that a call reads each setting once."""
    served = {"unknown_items": ("add", "reject"), "max_new_items": (10, 0)}[setting]

    class Changing(Recommender):
        reads = 0

    def read(self):
        type(self).reads += 1
        return served[0] if type(self).reads == 1 else served[1]

    setattr(Changing, setting, property(read, lambda self, value: None))
    rec = Changing(ALS_MODEL, k=K, num_threads=1)
    rec.observe({"user": [0, 1], "item": [N_ITEMS, 3]})  # first read: "add" / 10
    Changing.reads = 0
    assert rec.swap_model(ALS_MODEL) == 2  # raised ValueError on the replay's own read
    assert Changing.reads == 1
    assert rec.info()["added_items"] == 1 and set(rec._state.users) == {0, 1}


def test_lowering_max_pending_events_bounds_the_log_at_once():
    """The log was trimmed only by the next observe: until then pending_events() returned
    more than max_pending_events events and a swap replayed them all."""
    rec = Recommender(ALS_MODEL, k=K, num_threads=1)
    rec.observe({"user": [1, 2, 3], "item": [4, 5, 6]})
    rec.max_pending_events = 1
    assert rec.pending_events().users.tolist() == [3]  # the newest one; got [1, 2, 3]
    assert rec.dropped_events == 2
