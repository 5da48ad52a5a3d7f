"""Adversarial hunt on the lifecycle of one long-lived factor model (recfuse.ALS with both
solvers, BPR, SVD, SVDpp, ExplicitALS): hypothesis state machines drive fit, refit on
another shape, fold-ins, tables assigned by hand, set_params, save/load (also mmap=True),
pickle round trips in memory and sklearn.base.clone in any order, and check after every
step against a plain model kept here from the documented semantics.

The contract used (docstrings of python/recfuse/models/*.py, README "Using it"):

- ``fit`` replaces the whole fitted state; a refused fit (bad input) leaves it as it was.
  The seen matrix of ALS/BPR is every stored entry of the training matrix (a stored zero
  counts); that of a rating model is every rated pair.
- ALS ``update_users(ids, rows)``: the rows replace what the model knows of those users
  (their seen rows and vectors); ids past the known users add users, the ones in between
  start at zero with no seen items; item vectors unchanged; a row without a positive value
  gets the zero vector; "cholesky" is the exact solve of ``recfuse.reference``.
  ``update_items`` is the same on the item side (columns of the seen matrix). Returns the
  new vectors. A refused call (repeated or negative ids, wrong shape or values) changes
  nothing.
- ALS ``user_factors``/``item_factors`` may be assigned ("Assigning one replaces the
  table"); BPR keeps them (and ``item_bias``) as plain attributes.
- ``recommend``: scores x_u.y_i (BPR: + b_i; rating models: the unclipped prediction
  mu + b_u[u known] + b_i[i known] + q_i.(p_u [+ z_u]) [both known]; unbiased: q.p when
  both are known, else mu), descending, ties to the smaller id, padded with -1/-inf; with
  filter_seen the seen items of the model (or of ``user_items`` when given) never return.
- ``set_params``: all or nothing; on a fitted model ``factors``, ``dtype`` (and
  ``biased``) keep their values (a new one is a ValueError, the same one is accepted), the
  others change and the fitted state stays.
- ``recfuse.load(model.save(...))``, with or without mmap, and a pickle round trip answer
  exactly as the original; ``sklearn.base.clone`` is an unfitted model of the same
  parameters, and with an int seed refits to the same tables.

The machines pass. The findings (fixed; targeted sequences at the end) were about
tables assigned by hand and failed fold-ins: update_items after an item table with fewer
rows corrupts the seen matrix; fold-ins (and BPR.recommend) on a table of another width
fail with messages naming neither table; a table assigned as a list fails with
AttributeError; a cholesky fold-in whose systems overflow keeps the old vectors silently.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

import recfuse
from recfuse import reference

sklearn_base = pytest.importorskip("sklearn.base")

BACKENDS = [info.name for info in recfuse.backends() if info.available
            and info.name in ("cpu", "numba", "numpy")]
MACHINE = settings(max_examples=25, stateful_step_count=15, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow,
                                          HealthCheck.filter_too_much])
K = 3  # factors of every model here
TOL = 2e-4


# ------------------------------------------------------------------------------ helpers


def implicit_matrix(seed: int, rows: int, cols: int, density: float, zeros: bool):
    """A rows x cols float32 CSR of small counts; empty rows and columns happen; ``zeros``
    adds a few stored zeros (seen, but not positive)."""
    rng = np.random.default_rng(seed)
    dense = (rng.random((rows, cols)) < density) * rng.integers(1, 4, (rows, cols))
    mask = dense > 0
    if zeros:
        extra = (rng.random((rows, cols)) < 0.15) & ~mask
        mask |= extra
    r, c = np.nonzero(mask)
    return sp.csr_matrix((dense[r, c].astype(np.float32), (r, c)), shape=(rows, cols))


def pattern(matrix) -> np.ndarray:
    """The stored entries of a sparse matrix as a dense bool array (stored zeros included)."""
    coo = sp.coo_matrix(matrix)
    out = np.zeros(coo.shape, bool)
    out[coo.row, coo.col] = True
    return out


def check_topk(ids, scores, S, allowed, k, *, exact, context=""):
    """``(ids, scores)`` (2-d) against the score matrix ``S`` (float64) and the candidates
    ``allowed``: the min(k, candidates) best, unique, allowed, scores equal (exactly when
    ``exact``) to S, descending with ties by smaller id, nothing better left out, then
    padding (id -1, score -inf)."""
    m, n = S.shape
    assert ids.shape == (m, k) and np.shape(scores) == (m, k), context
    assert ids.dtype == np.int64, context
    scores = np.asarray(scores, np.float64)
    where = f"{context}: ids {ids.tolist()} scores {scores.tolist()}"
    count = np.minimum(k, allowed.sum(axis=1))
    valid = np.arange(k)[None, :] < count[:, None]
    assert (ids[~valid] == -1).all() and np.isneginf(scores[~valid]).all(), where
    assert ((ids >= 0) & (ids < n))[valid].all(), where
    rows = np.broadcast_to(np.arange(m)[:, None], (m, k))
    safe = np.where(valid, ids, 0)
    assert allowed[rows, safe][valid].all(), where + " (a filtered item returned)"
    hits = np.zeros((m, n + 1), np.int64)
    np.add.at(hits, (rows[valid], ids[valid]), 1)
    assert hits.max(initial=0) <= 1, where + " (an id twice)"
    want = S[rows, safe]
    if exact:
        key = np.where(allowed, -S, np.inf)
        order = np.lexsort((np.broadcast_to(np.arange(n), (m, n)), key), axis=1)[:, :k]
        order = np.pad(order, ((0, 0), (0, k - order.shape[1])), constant_values=-1)
        np.testing.assert_array_equal(np.where(valid, ids, -1), np.where(valid, order, -1),
                                      err_msg=where)
        np.testing.assert_array_equal(scores[valid], want[valid], err_msg=where)
        return
    np.testing.assert_allclose(scores[valid], want[valid], rtol=TOL, atol=TOL, err_msg=where)
    both = valid[:, 1:]
    finite = np.where(valid, scores, 0.0)  # padding's -inf kept out of the arithmetic
    step = np.diff(finite, axis=1)
    assert (step[both] <= 0).all(), where
    assert (np.diff(ids, axis=1)[both & (step == 0)] > 0).all(), where + " (ties not by id)"
    last = finite[np.arange(m), np.maximum(count - 1, 0)]
    left = allowed.copy()
    left[rows[valid], ids[valid]] = False
    bound = last + TOL * (1 + np.abs(last))
    assert (~left | (S <= bound[:, None])).all(), where + " (a better one left out)"


def same_answers(a, b, n_users, n_items, *, rating=False):
    """Two models answer alike: every recommend (filter_seen on and off), similar_items,
    similar_users and (rating models) predict, bit for bit."""
    users = np.arange(n_users)
    for flag in (True, False):
        for x, y in zip(a.recommend(users, k=n_items + 1, filter_seen=flag),
                        b.recommend(users, k=n_items + 1, filter_seen=flag)):
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype
    for x, y in zip(a.similar_items(np.arange(n_items), k=n_items),
                    b.similar_items(np.arange(n_items), k=n_items)):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(a.similar_users(users, k=n_users), b.similar_users(users, k=n_users)):
        np.testing.assert_array_equal(x, y)
    if rating:
        u = np.repeat(np.arange(n_users + 2), n_items + 2)
        i = np.tile(np.arange(n_items + 2), n_users + 2)
        np.testing.assert_array_equal(a.predict(u, i, clip=False), b.predict(u, i, clip=False))


def round_trip(model, how: str, folder: str):
    """A copy of ``model`` by "pickle", "save" or "mmap" (save + recfuse.load(mmap=True))."""
    if how == "pickle":
        return pickle.loads(pickle.dumps(model))
    path = os.path.join(folder, f"model-{how}.npz")
    model.save(path)
    return recfuse.load(path, mmap=how == "mmap")


def cosine_check(model, side: str, table: np.ndarray, context: str):
    """similar_items / similar_users of every id: ids unique and in range, scores the
    cosines of ``table`` (0 for a zero vector), descending; an id with a non-zero vector
    comes first unless another ties with it at the top."""
    n = table.shape[0]
    ids, scores = getattr(model, f"similar_{side}")(np.arange(n), k=n)
    T = table.astype(np.float64)
    norms = np.linalg.norm(T, axis=1)
    safe = np.where(norms > 0, norms, 1)
    C = (T / safe[:, None]) @ (T / safe[:, None]).T
    for r in range(n):
        got = ids[r]
        assert np.unique(got).size == n and (got >= 0).all() and (got < n).all(), context
        np.testing.assert_allclose(scores[r], C[r, got], atol=1e-4, err_msg=context)
        assert (np.diff(scores[r]) <= 1e-6).all(), context
        if norms[r] > 0:
            assert scores[r][0] >= C[r, r] - 1e-4, context


def step(group: str, **strategies):
    """Mark a method as one of the ``group`` steps ("query" or "refusal") that the
    machine's rule of that name draws from (one rule per group keeps hypothesis's choice of
    rules on the lifecycle ones: fit, fold-ins, settings, copies)."""
    def mark(function):
        function.step = (group, strategies)
        return function
    return mark


class Steps(RuleBasedStateMachine):
    def run_step(self, data, group: str):
        names = sorted(name for name in dir(type(self))
                       if getattr(getattr(type(self), name, None), "step", (None,))[0] == group)
        name = data.draw(st.sampled_from(names), label=group)
        strategies = getattr(type(self), name).step[1]
        getattr(self, name)(**{arg: data if arg == "data" else data.draw(strategy, label=arg)
                               for arg, strategy in strategies.items()})

    @rule(data=st.data())
    def query(self, data):
        self.run_step(data, "query")

    @rule(data=st.data())
    def refusal(self, data):
        self.run_step(data, "refusal")


# ======================================================================= implicit models


class ImplicitMachine(Steps):
    """ALS / BPR: ``make(**params)`` builds the model; ``shadow`` holds the expected user
    and item tables (and BPR's item bias), the seen pattern and the parameters."""

    def make(self, **params):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="recfuse-lifecycle-")
        self.model = None
        self.X = self.Y = self.bias = self.seen = None
        self.last = None  # (matrix, params, tables) of the last fit, while the tables are its

    def teardown(self):
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)

    @initialize(backend=st.sampled_from(BACKENDS), seed=st.integers(0, 3),
                data_seed=st.integers(0, 2**16), rows=st.integers(1, 7), cols=st.integers(1, 6),
                density=st.sampled_from([0.0, 0.2, 0.5, 1.0]), zeros=st.booleans())
    def start(self, backend, seed, data_seed, rows, cols, density, zeros):
        self.model = self.make(backend=backend, random_state=seed)
        self.params = self.model.get_params()
        self.fit(data_seed, rows, cols, density, zeros)

    # ------------------------------------------------------------------ helpers
    @property
    def fitted(self) -> bool:
        return self.X is not None

    def tables(self):
        m = self.model
        bias = getattr(m, "item_bias", None)
        return (m.user_factors, m.item_factors, bias)

    def snapshot(self):
        """Everything a refused call must leave alone."""
        X, Y, b = self.tables()
        seen = self.seen_of_model()
        return ([None if t is None else np.array(t, copy=True) for t in (X, Y, b)],
                None if seen is None else seen.copy(), self.model.get_params())

    def assert_unchanged(self, before):
        after = self.snapshot()
        for x, y in zip(before[0], after[0]):
            assert (x is None) == (y is None)
            if x is not None:
                np.testing.assert_array_equal(x, y)
        if before[1] is not None:
            np.testing.assert_array_equal(before[1], after[1])
        assert before[2] == after[2]

    def seen_of_model(self):
        kept = getattr(self.model, "_seen", None)
        if kept is None and hasattr(self.model, "_state"):
            kept = self.model._state.user_items
        return None if kept is None else pattern(kept)

    def scores(self) -> np.ndarray:
        S = self.X.astype(np.float64) @ self.Y.astype(np.float64).T
        if self.bias is not None:
            S = S + self.bias.astype(np.float64)[None, :]
        return S

    # ------------------------------------------------------------------ rules: training
    @rule(seed=st.integers(0, 2**16), rows=st.integers(1, 7), cols=st.integers(1, 6),
          density=st.sampled_from([0.0, 0.2, 0.5, 1.0]), zeros=st.booleans())
    def fit(self, seed, rows, cols, density, zeros):
        M = implicit_matrix(seed, rows, cols, density, zeros)
        self.model.fit(M)
        X, Y, b = self.tables()
        assert X.shape == (rows, K) and Y.shape == (cols, K)
        assert X.dtype == Y.dtype == self.model.dtype
        assert np.isfinite(X).all() and np.isfinite(Y).all()
        self.X, self.Y = X.copy(), Y.copy()
        self.bias = None if b is None else b.copy()
        self.seen = pattern(M)
        self.after_fit(M)
        self.last = (M, self.model.get_params(), (self.X.copy(), self.Y.copy()))

    def after_fit(self, M):
        pass

    @step("refusal", kind=st.sampled_from(["dense", "coo", "nan", "inf", "object", "3d-ish"]))
    def refused_fit(self, kind):
        before = self.snapshot()
        good = implicit_matrix(1, 3, 4, 0.5, False)
        bad = {"dense": good.toarray(), "coo": good.tocoo(),
               "nan": sp.csr_matrix(np.array([[np.nan, 1.0]], np.float32)),
               "inf": sp.csr_matrix(np.array([[np.inf, 1.0]], np.float32)),
               "object": np.array([[1, None]], dtype=object),
               "3d-ish": [[[1.0]]]}[kind]
        with pytest.raises((TypeError, ValueError)):
            self.model.fit(bad)
        self.assert_unchanged(before)

    # ------------------------------------------------------------------ rules: settings
    @rule(data=st.data())
    def set_params(self, data):
        choices = self.free_params()
        name = data.draw(st.sampled_from(sorted(choices)), label="name")
        value = data.draw(st.sampled_from(choices[name]), label="value")
        before = self.snapshot()
        self.model.set_params(**{name: value})
        self.params[name] = value
        assert self.model.get_params()[name] == value
        # the fitted state stays
        self.assert_unchanged((before[0], before[1], self.model.get_params()))
        if name != "backend" and name != "num_threads":
            self.last = None  # a refit would differ

    @step("refusal", data=st.data())
    def refused_set_params(self, data):
        shaped = {"factors": K + 1, "dtype": "float64"}
        bad = {"num_threads": -1, "backend": "bogus", "factors": 0, "no_such_name": 1}
        if self.fitted:
            name = data.draw(st.sampled_from(sorted(shaped)), label="shaped")
            value = shaped[name]
        else:
            name = data.draw(st.sampled_from(sorted(bad)), label="bad")
            value = bad[name]
        other = data.draw(st.sampled_from(sorted(self.free_params())), label="other")
        before = self.snapshot()
        with pytest.raises(ValueError if name != "backend" else (ValueError, RuntimeError)):
            self.model.set_params(**{other: self.free_params()[other][0], name: value})
        self.assert_unchanged(before)  # all or nothing: ``other`` did not change either

    @step("query")
    def same_shaped_values_are_accepted(self):
        before = self.snapshot()
        self.model.set_params(factors=np.int64(K), dtype=np.float32)
        self.assert_unchanged((before[0], before[1], self.model.get_params()))
        assert self.model.get_params()["factors"] == K

    # ------------------------------------------------------------------ rules: copies
    @rule(how=st.sampled_from(["pickle", "save", "mmap"]), adopt=st.booleans())
    def copy(self, how, adopt):
        copy = round_trip(self.model, how, self.folder)
        assert type(copy) is type(self.model)
        params = self.model.get_params()
        got = copy.get_params()
        assert got == params, (got, params)
        for x, y in zip(self.tables(), (copy.user_factors, copy.item_factors,
                                        getattr(copy, "item_bias", None))):
            if x is not None:
                np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
        same_answers(self.model, copy, *self.X.shape[:1], self.Y.shape[0])
        if adopt:  # keep working on the copy (a mapped, read-only one for "mmap")
            self.model = copy

    @rule()
    def clone(self):
        twin = sklearn_base.clone(self.model)
        assert twin.get_params() == self.model.get_params()
        assert twin.user_factors is None
        with pytest.raises(RuntimeError):
            twin.recommend(0, k=1)
        if self.last is not None and self.model.get_params() == self.last[1]:
            # same seed, backend and data: the same tables (whatever num_threads is)
            twin.fit(self.last[0])
            np.testing.assert_array_equal(twin.user_factors, self.last[2][0])
            np.testing.assert_array_equal(twin.item_factors, self.last[2][1])

    # ------------------------------------------------------------------ rules: by hand
    @rule(seed=st.integers(0, 2**16), spread=st.sampled_from([0, 1, 2]),
          side=st.sampled_from(["user", "item", "both"]))
    def assign_tables(self, seed, spread, side):
        """Small-integer tables of the same shapes: every score exact, ties everywhere."""
        rng = np.random.default_rng(seed)
        dtype = self.model.dtype
        if side in ("user", "both"):
            self.X = rng.integers(-spread, spread + 1, self.X.shape).astype(dtype)
            self.model.user_factors = self.X.copy()
        if side in ("item", "both"):
            self.Y = rng.integers(-spread, spread + 1, self.Y.shape).astype(dtype)
            self.model.item_factors = self.Y.copy()
            if self.bias is not None:
                self.bias = rng.integers(-1, 2, self.bias.shape).astype(dtype)
                self.model.item_bias = self.bias.copy()
        self.last = None

    # ------------------------------------------------------------------ rules: queries
    @step("query", seed=st.integers(0, 2**16), extra=st.sampled_from([0, 1, 5]))
    def recommend_with_filters(self, seed, extra):
        rng = np.random.default_rng(seed)
        n_users, n_items = self.X.shape[0], self.Y.shape[0]
        users = rng.integers(0, n_users, rng.integers(1, 5))
        k = max(1, int(rng.integers(1, n_items + 1)) + extra)
        given = implicit_matrix(seed, users.size, n_items, 0.3, True)
        allow = rng.integers(0, n_items, rng.integers(1, n_items + 1))
        deny = rng.integers(0, n_items, rng.integers(0, 3))
        ok = np.zeros((users.size, n_items), bool)
        ok[:, allow] = True
        ok[:, deny] = False
        kwargs = dict(items=allow, exclude_items=deny)
        ids, scores = self.model.recommend(users, k=k, user_items=given, **kwargs)
        check_topk(ids, scores, self.scores()[users], ok & ~pattern(given), k,
                   exact=self.exact(), context="user_items given")
        ids, scores = self.model.recommend(users, k=k, filter_seen=False, **kwargs)
        check_topk(ids, scores, self.scores()[users], ok, k, exact=self.exact(),
                   context="filter_seen=False")
        one = self.model.recommend(int(users[0]), k=k, **kwargs)
        batch = self.model.recommend(users[:1], k=k, **kwargs)
        np.testing.assert_array_equal(one[0], batch[0][0])
        np.testing.assert_array_equal(one[1], batch[1][0])

    @step("refusal", kind=st.sampled_from(["negative", "past", "2d", "float", "k0", "width"]))
    def refused_recommend(self, kind):
        before = self.snapshot()
        n_users, n_items = self.X.shape[0], self.Y.shape[0]
        call = {"negative": lambda: self.model.recommend([-1], k=1),
                "past": lambda: self.model.recommend([n_users], k=1),
                "2d": lambda: self.model.recommend([[0]], k=1),
                "float": lambda: self.model.recommend([0.5], k=1),
                "k0": lambda: self.model.recommend(0, k=0),
                "width": lambda: self.model.recommend(
                    [0], k=1, user_items=sp.csr_matrix((1, n_items + 1), dtype=np.float32))}
        with pytest.raises((TypeError, ValueError)):
            call[kind]()
        self.assert_unchanged(before)

    @step("query", batch=st.integers(1, 4))
    def recommend_all(self, batch):
        n_users, n_items = self.X.shape[0], self.Y.shape[0]
        chunks = list(self.model.recommend_all(k=n_items, batch_size=batch))
        users = np.concatenate([c[0] for c in chunks])
        np.testing.assert_array_equal(users, np.arange(n_users))
        ids, scores = self.model.recommend(users, k=n_items)
        got_ids = np.concatenate([c[1] for c in chunks])
        got_scores = np.concatenate([c[2] for c in chunks])
        if self.model.backend == "numpy" and not self.exact():
            # the numpy backend follows the BLAS's rounding, which depends on the batch's
            # shape (notes: Suspicious); the ids must still be the same where no near-tie
            np.testing.assert_allclose(got_scores, scores, rtol=1e-6, atol=1e-7)
            return
        np.testing.assert_array_equal(got_ids, ids)
        np.testing.assert_array_equal(got_scores, scores)

    @step("query", side=st.sampled_from(["items", "users"]))
    def similar(self, side):
        table = self.Y if side == "items" else self.X
        cosine_check(self.model, side, table, f"similar_{side}")

    # ------------------------------------------------------------------ invariants
    def exact(self) -> bool:
        """Scores computed exactly in any order: tables of small integers."""
        tables = [self.X, self.Y] + ([self.bias] if self.bias is not None else [])
        return all(np.array_equal(t, np.round(t)) and np.abs(t).max(initial=0) <= 4
                   for t in tables)

    @invariant()
    def tables_are_the_expected_ones(self):
        if not self.fitted:
            return
        X, Y, b = self.tables()
        np.testing.assert_array_equal(np.asarray(X), self.X)
        np.testing.assert_array_equal(np.asarray(Y), self.Y)
        if self.bias is not None:
            np.testing.assert_array_equal(np.asarray(b), self.bias)
        np.testing.assert_array_equal(self.seen_of_model(), self.seen)
        params = self.model.get_params()
        assert all(params[name] == value for name, value in self.params.items()
                   if name != "random_state"), (params, self.params)

    @invariant()
    def recommend_matches_the_tables(self):
        if not self.fitted:
            return
        n_users, n_items = self.X.shape[0], self.Y.shape[0]
        S = self.scores()
        exact = self.exact()
        for k in sorted({1, n_items, n_items + 2}):
            ids, scores = self.model.recommend(np.arange(n_users), k=k)
            check_topk(ids, scores, S, ~self.seen, k, exact=exact, context=f"k={k}")


class ALSMachine(ImplicitMachine):
    solver = "cg"

    def make(self, **params):
        return recfuse.ALS(factors=K, iterations=2, regularization=0.1, solver=self.solver,
                           **params)

    def free_params(self):
        return {"backend": BACKENDS, "num_threads": [0, 1, 2],
                "regularization": [0.05, 0.5], "alpha": [0.5, 2.0], "cg_steps": [1, 3],
                "iterations": [1, 2], "solver": ["cg", "cholesky"],
                "confidence": ["linear", "raw"]}

    def after_fit(self, M):
        # a row without a positive value ends with the zero vector
        positive = sp.csr_matrix(M, copy=True)
        positive.data = (positive.data > 0).astype(np.float32)
        positive.eliminate_zeros()
        assert not self.X[np.diff(positive.indptr) == 0].any()
        assert not self.Y[np.diff(positive.tocsc().indptr) == 0].any()

    def expected_fold(self, rows: sp.csr_matrix, fixed: np.ndarray, start: np.ndarray):
        """One half-sweep of ``recfuse.reference`` (float64) over the rows against ``fixed``
        with the model's current settings: for "cholesky" the exact solve."""
        p = self.model.get_params()
        return reference.als_half_sweep(
            rows.astype(np.float64), fixed.astype(np.float64), start.astype(np.float64),
            regularization=p["regularization"], alpha=p["alpha"], confidence=p["confidence"],
            solver=p["solver"], cg_steps=p["cg_steps"])

    def fold(self, side, ids, seed, density, zeros):
        own, fixed = (self.X, self.Y) if side == "user" else (self.Y, self.X)
        rows = implicit_matrix(seed, ids.size, fixed.shape[0], density, zeros)
        known = own.shape[0]
        start = np.zeros((ids.size, K), own.dtype)
        start[ids < known] = own[ids[ids < known]]
        update = self.model.update_users if side == "user" else self.model.update_items
        vectors = update(ids, rows)
        assert vectors.shape == (ids.size, K) and vectors.dtype == own.dtype
        assert np.isfinite(vectors).all()
        positive = (rows.toarray() > 0).any(axis=1)
        assert not vectors[~positive].any(), "a row without a positive value must solve to 0"
        if self.model.solver == "cholesky":  # CG's few float32 steps round as they go
            want = self.expected_fold(rows, fixed, start)
            want[~positive] = 0
            np.testing.assert_allclose(vectors, want, rtol=2e-3,
                                       atol=2e-4 * (1 + np.abs(vectors).max(initial=0)))
        grown = max(known, int(ids.max()) + 1) if ids.size else known
        table = np.zeros((grown, K), own.dtype)
        table[:known] = own
        table[ids] = vectors
        seen = self.seen if side == "user" else self.seen.T
        grown_seen = np.zeros((grown, seen.shape[1]), bool)
        grown_seen[:known] = seen
        grown_seen[ids] = pattern(rows)
        if side == "user":
            self.X, self.seen = table, grown_seen
        else:
            self.Y, self.seen = table, grown_seen.T.copy()
        self.last = None

    @rule(data=st.data(), side=st.sampled_from(["user", "item"]),
          seed=st.integers(0, 2**16), density=st.sampled_from([0.0, 0.3, 0.8]),
          zeros=st.booleans())
    def update(self, data, side, seed, density, zeros):
        known = (self.X if side == "user" else self.Y).shape[0]
        ids = data.draw(st.lists(st.integers(0, known + 4), max_size=4, unique=True)
                        .map(lambda v: np.array(v, np.int64)), label="ids")
        self.fold(side, ids, seed, density, zeros)

    @step("refusal", side=st.sampled_from(["user", "item"]),
          kind=st.sampled_from(["repeat", "negative", "rows", "width", "negval", "nan",
                                "dense", "csc"]))
    def refused_update(self, side, kind):
        own, fixed = (self.X, self.Y) if side == "user" else (self.Y, self.X)
        width, ids = fixed.shape[0], np.array([0, own.shape[0] + 1])
        good = implicit_matrix(3, 2, width, 0.5, False)
        bad_values = good.copy()
        bad_values.data[:] = -1.0 if kind == "negval" else np.nan
        call = {"repeat": ([0, 0], good), "negative": ([-1, 0], good),
                "rows": (ids, implicit_matrix(3, 3, width, 0.5, False)),
                "width": (ids, implicit_matrix(3, 2, width + 1, 0.5, False)),
                "negval": (ids, bad_values), "nan": (ids, bad_values),
                "dense": (ids, good.toarray()), "csc": (ids, good.tocsc())}[kind]
        if kind == "negval" and self.model.confidence == "raw":
            return
        if not good.nnz and kind in ("negval", "nan"):
            return
        before = self.snapshot()
        update = self.model.update_users if side == "user" else self.model.update_items
        with pytest.raises((TypeError, ValueError)):
            update(*call)
        self.assert_unchanged(before)

    @step("query")
    def loss_is_the_reference_loss(self):
        if not self.seen.shape == (self.X.shape[0], self.Y.shape[0]):
            return
        p = self.model.get_params()
        kept = self.model._state.user_items
        want = reference.als_loss(kept, self.X, self.Y, regularization=p["regularization"],
                                  alpha=p["alpha"], confidence=p["confidence"])
        assert self.model.loss() == pytest.approx(want, rel=1e-3, abs=1e-6)


class ALSCholeskyMachine(ALSMachine):
    solver = "cholesky"


class BPRMachine(ImplicitMachine):
    def make(self, **params):
        return recfuse.BPR(factors=K, iterations=2, **params)

    def free_params(self):
        return {"backend": BACKENDS, "num_threads": [0, 1, 2], "lr": [0.01, 0.05],
                "reg": [0.0, 0.1], "iterations": [1, 3], "max_tries": [1, 50]}


TestALSLifecycleCG = ALSMachine.TestCase
TestALSLifecycleCG.settings = MACHINE
TestALSLifecycleCholesky = ALSCholeskyMachine.TestCase
TestALSLifecycleCholesky.settings = MACHINE
TestBPRLifecycle = BPRMachine.TestCase
TestBPRLifecycle.settings = MACHINE


# ========================================================================= rating models


def rating_data(seed: int, n_users: int, n_items: int, count: int):
    """(users, items, ratings) of small integer ratings 1..5; repeated pairs happen."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_users, count), rng.integers(0, n_items, count),
            rng.integers(1, 6, count).astype(np.float64))


class RatingMachine(Steps):
    """SVD / SVDpp / ExplicitALS: the shadow holds the training pairs, the known ids and the
    fitted tables read once after each fit (global mean, biases, factors)."""

    def make(self, **params):
        raise NotImplementedError

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="recfuse-lifecycle-")
        self.model = None
        self.state = None  # dict of the fitted tables and pairs
        self.last = None

    def teardown(self):
        for name in os.listdir(self.folder):
            os.unlink(os.path.join(self.folder, name))
        os.rmdir(self.folder)

    @initialize(backend=st.sampled_from(BACKENDS), seed=st.integers(0, 3),
                biased=st.booleans(), data_seed=st.integers(0, 2**16),
                n_users=st.integers(1, 6), n_items=st.integers(1, 6), count=st.integers(1, 20))
    def start(self, backend, seed, biased, data_seed, n_users, n_items, count):
        self.model = self.make(backend=backend, random_state=seed, biased=biased)
        self.params = self.model.get_params()
        self.fit(data_seed, n_users, n_items, count, 0, 0, "arrays", None)

    @property
    def fitted(self) -> bool:
        return self.state is not None

    def public(self):
        m = self.model
        return {name: getattr(m, name) for name in
                ("global_mean", "user_bias", "item_bias", "user_factors", "item_factors",
                 "rating_scale")} | {"implicit": getattr(m, "implicit_factors", None)}

    def snapshot(self):
        values = {name: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                  for name, v in self.public().items()}
        return values, self.model.get_params()

    def assert_unchanged(self, before):
        values, params = self.snapshot()
        for name, value in before[0].items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, values[name], err_msg=name)
            else:
                assert value == values[name], name
        assert before[1] == params

    # ------------------------------------------------------------------ the oracle
    def scores(self, users=None, items=None) -> np.ndarray:
        """The unclipped prediction of every (user, item) pair, float64; ids past the known
        ones (or without training ratings) fall back as the docstring says."""
        s = self.state
        n_users, n_items = s["known_u"].size, s["known_i"].size
        users = np.arange(n_users) if users is None else users
        items = np.arange(n_items) if items is None else items
        ku = np.zeros(users.size, bool)
        ku[users < n_users] = s["known_u"][users[users < n_users]]
        ki = np.zeros(items.size, bool)
        ki[items < n_items] = s["known_i"][items[items < n_items]]
        P = s["user_factors"].astype(np.float64)
        if s["implicit"] is not None:  # z_u over the distinct items the user rated
            Yi = s["implicit"].astype(np.float64)
            Z = np.zeros_like(P)
            for u in range(n_users):
                rated = np.flatnonzero(s["seen"][u])
                if rated.size:
                    Z[u] = Yi[rated].sum(axis=0) / np.sqrt(rated.size)
            P = P + Z
        Q = s["item_factors"].astype(np.float64)
        dot = np.zeros((users.size, items.size))
        both = ku[:, None] & ki[None, :]
        full = P[np.minimum(users, n_users - 1)] @ Q[np.minimum(items, n_items - 1)].T
        dot[both] = full[both]
        mu = s["global_mean"]
        if s["biased"]:
            bu = np.where(ku, s["user_bias"][np.minimum(users, n_users - 1)], 0.0)
            bi = np.where(ki, s["item_bias"][np.minimum(items, n_items - 1)], 0.0)
            return mu + bu[:, None] + bi[None, :] + dot
        return np.where(both, dot, mu)

    # ------------------------------------------------------------------ rules
    @rule(seed=st.integers(0, 2**16), n_users=st.integers(1, 6), n_items=st.integers(1, 6),
          count=st.integers(1, 20), extra_users=st.sampled_from([0, 2]),
          extra_items=st.sampled_from([0, 1]), form=st.sampled_from(["arrays", "csr"]),
          scale=st.sampled_from([None, (0.5, 5.0)]))
    def fit(self, seed, n_users, n_items, count, extra_users, extra_items, form, scale):
        users, items, ratings = rating_data(seed, n_users, n_items, count)
        declared = dict(n_users=n_users + extra_users, n_items=n_items + extra_items)
        if form == "csr":  # one rating per pair (the last one), the matrix's shape
            dense = np.zeros((n_users + extra_users, n_items + extra_items))
            rated = np.zeros(dense.shape, bool)
            dense[users, items] = ratings
            rated[users, items] = True
            users, items = np.nonzero(rated)
            ratings = dense[users, items]
            self.model.fit(sp.csr_matrix((ratings, (users, items)), shape=dense.shape),
                           rating_scale=scale)
        else:
            self.model.fit(users, items, ratings, rating_scale=scale, **declared)
        nu, ni = declared["n_users"], declared["n_items"]
        got = self.public()
        assert got["user_factors"].shape == (nu, K) and got["item_factors"].shape == (ni, K)
        assert got["user_bias"].shape == (nu,) and got["item_bias"].shape == (ni,)
        assert got["global_mean"] == pytest.approx(ratings.mean(), rel=1e-12)
        assert got["rating_scale"] == (scale or (ratings.min(), ratings.max()))
        biased = self.model.get_params().get("biased", True)
        if not biased:
            assert not got["user_bias"].any() and not got["item_bias"].any()
        seen = np.zeros((nu, ni), bool)
        seen[users, items] = True
        self.state = {name: (np.array(v, copy=True) if isinstance(v, np.ndarray) else v)
                      for name, v in got.items()}
        self.state.update(seen=seen, known_u=seen.any(axis=1), known_i=seen.any(axis=0),
                          biased=biased)
        self.last = ((users, items, ratings), dict(rating_scale=scale, **declared),
                     self.model.get_params(), np.array(got["user_factors"], copy=True))

    @step("refusal", kind=st.sampled_from(["nan", "negative", "lengths", "scale", "empty",
                                           "dense", "few_users"]))
    def refused_fit(self, kind):
        before = self.snapshot()
        u, i, r = rating_data(5, 3, 3, 6)
        bad = {"nan": ((u, i, np.where(r > 2, np.nan, r)), {}),
               "negative": ((u - 1, i, r), {}), "lengths": ((u, i[:-1], r), {}),
               "scale": ((u, i, r), dict(rating_scale=(2.0, 3.0))),
               "empty": ((u[:0], i[:0], r[:0]), {}),
               "dense": ((np.ones((3, 3)),), {}),
               "few_users": ((u, i, r), dict(n_users=int(u.max())))}[kind]
        with pytest.raises((TypeError, ValueError)):
            self.model.fit(*bad[0], **bad[1])
        self.assert_unchanged(before)

    @rule(data=st.data())
    def set_params(self, data):
        choices = self.free_params()
        name = data.draw(st.sampled_from(sorted(choices)), label="name")
        value = data.draw(st.sampled_from(choices[name]), label="value")
        before = self.snapshot()
        self.model.set_params(**{name: value})
        self.params[name] = value
        self.assert_unchanged((before[0], self.model.get_params()))
        assert self.model.get_params()[name] == value

    @step("refusal", data=st.data())
    def refused_set_params(self, data):
        if self.fitted:
            shaped = {"factors": K + 1, "dtype": "float64"}
            if "biased" in self.model.get_params():
                shaped["biased"] = not self.model.get_params()["biased"]
        else:
            shaped = {"factors": 0, "backend": "bogus", "num_threads": -1, "nonsense": 1}
        name = data.draw(st.sampled_from(sorted(shaped)), label="name")
        other = data.draw(st.sampled_from(sorted(self.free_params())), label="other")
        before = self.snapshot()
        with pytest.raises((ValueError, TypeError, RuntimeError)):
            self.model.set_params(**{other: self.free_params()[other][0], name: shaped[name]})
        self.assert_unchanged(before)

    @rule(how=st.sampled_from(["pickle", "save", "mmap"]), adopt=st.booleans())
    def copy(self, how, adopt):
        copy = round_trip(self.model, how, self.folder)
        assert copy.get_params() == self.model.get_params()
        for name, value in self.public().items():
            other = getattr(copy, "implicit_factors" if name == "implicit" else name, None)
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(value, other, err_msg=name)
            else:
                assert value == other, name
        same_answers(self.model, copy, self.state["known_u"].size,
                     self.state["known_i"].size, rating=True)
        if adopt:
            self.model = copy

    @rule()
    def clone(self):
        twin = sklearn_base.clone(self.model)
        assert twin.get_params() == self.model.get_params()
        assert twin.user_factors is None and twin.global_mean is None
        with pytest.raises(RuntimeError):
            twin.predict(0, 0)
        if self.last is not None and self.model.get_params() == self.last[2]:
            (users, items, ratings), kwargs = self.last[0], self.last[1]
            twin.fit(users, items, ratings, **kwargs)
            np.testing.assert_array_equal(twin.user_factors, self.last[3])

    @step("query", seed=st.integers(0, 2**16), extra=st.sampled_from([0, 1, 5]))
    def recommend_with_filters(self, seed, extra):
        rng = np.random.default_rng(seed)
        n_users, n_items = self.state["known_u"].size, self.state["known_i"].size
        users = rng.integers(0, n_users, rng.integers(1, 5))
        k = max(1, int(rng.integers(1, n_items + 1)) + extra)
        given = implicit_matrix(seed, users.size, n_items, 0.3, True)
        allow = rng.integers(0, n_items, rng.integers(1, n_items + 1))
        deny = rng.integers(0, n_items, rng.integers(0, 3))
        ok = np.zeros((users.size, n_items), bool)
        ok[:, allow] = True
        ok[:, deny] = False
        S = self.scores(users)
        kwargs = dict(items=allow, exclude_items=deny)
        ids, scores = self.model.recommend(users, k=k, user_items=given, **kwargs)
        check_topk(ids, scores, S, ok & ~pattern(given), k, exact=False, context="given")
        ids, scores = self.model.recommend(users, k=k, filter_seen=False, **kwargs)
        check_topk(ids, scores, S, ok, k, exact=False, context="filter_seen=False")

    @step("refusal", kind=st.sampled_from(["negative", "past", "float", "k0", "width",
                                           "matrix_as_k"]))
    def refused_recommend(self, kind):
        before = self.snapshot()
        n_users, n_items = self.state["known_u"].size, self.state["known_i"].size
        call = {"negative": lambda: self.model.recommend([-1], k=1),
                "past": lambda: self.model.recommend([n_users], k=1),
                "float": lambda: self.model.recommend([0.5], k=1),
                "k0": lambda: self.model.recommend(0, k=0),
                "width": lambda: self.model.recommend(
                    [0], k=1, user_items=sp.csr_matrix((1, n_items + 1), dtype=np.float32)),
                "matrix_as_k": lambda: self.model.recommend(
                    0, sp.csr_matrix((1, n_items), dtype=np.float32))}
        with pytest.raises((TypeError, ValueError)):
            call[kind]()
        self.assert_unchanged(before)

    @step("query", batch=st.integers(1, 4))
    def recommend_all(self, batch):
        n_users, n_items = self.state["known_u"].size, self.state["known_i"].size
        chunks = list(self.model.recommend_all(k=n_items, batch_size=batch))
        ids, scores = self.model.recommend(np.arange(n_users), k=n_items)
        got = np.concatenate([c[2] for c in chunks])
        if self.model.backend == "numpy":  # the BLAS's rounding (notes: Suspicious)
            np.testing.assert_allclose(got, scores, rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), ids)
            np.testing.assert_array_equal(got, scores)

    @step("query", side=st.sampled_from(["items", "users"]))
    def similar(self, side):
        s = self.state
        if side == "items":
            table = s["item_factors"] * s["known_i"][:, None]
        else:
            S_users = s["user_factors"].astype(np.float64)
            if s["implicit"] is not None:
                S_users = self.model._similarity_table("users").astype(np.float64)
            table = S_users * s["known_u"][:, None]
        cosine_check(self.model, side, table, f"similar_{side}")

    @step("query", extra=st.integers(0, 3))
    def predict(self, extra):
        n_users, n_items = self.state["known_u"].size, self.state["known_i"].size
        u = np.repeat(np.arange(n_users + extra), n_items + extra)
        i = np.tile(np.arange(n_items + extra), n_users + extra)
        want = self.scores(np.arange(n_users + extra), np.arange(n_items + extra)).ravel()
        got = self.model.predict(u, i, clip=False)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        low, high = self.state["rating_scale"]
        np.testing.assert_array_equal(self.model.predict(u, i), np.clip(got, low, high))
        assert self.model.predict(int(u[-1]), int(i[-1])) == pytest.approx(
            float(np.clip(got[-1], low, high)), abs=0)

    # ------------------------------------------------------------------ invariants
    @invariant()
    def tables_are_the_fitted_ones(self):
        if not self.fitted:
            return
        for name, value in self.public().items():
            want = self.state[name]
            if isinstance(want, np.ndarray):
                np.testing.assert_array_equal(value, want, err_msg=name)
            else:
                assert value == want, name
        params = self.model.get_params()
        assert all(params[name] == value for name, value in self.params.items()
                   if name != "random_state")

    @invariant()
    def recommend_matches_the_predictions(self):
        if not self.fitted:
            return
        n_users, n_items = self.state["known_u"].size, self.state["known_i"].size
        S = self.scores()
        for k in sorted({1, n_items + 1}):
            ids, scores = self.model.recommend(np.arange(n_users), k=k)
            check_topk(ids, scores, S, ~self.state["seen"], k, exact=False, context=f"k={k}")


class SVDMachine(RatingMachine):
    def make(self, biased, **params):
        return recfuse.SVD(factors=K, epochs=2, biased=biased, **params)

    def free_params(self):
        return {"backend": BACKENDS, "num_threads": [0, 1, 2], "lr": [0.01, 0.02],
                "reg": [0.0, 0.1], "epochs": [1, 3], "grid": [0, 1, 2], "shuffle": [True, False],
                "lr_bu": [None, 0.05]}


class SVDppMachine(RatingMachine):
    def make(self, biased, **params):
        return recfuse.SVDpp(factors=K, epochs=2, **params)

    def free_params(self):
        return {"backend": BACKENDS, "num_threads": [0, 1], "lr": [0.01, 0.02],
                "reg": [0.0, 0.1], "epochs": [1, 3], "shuffle": [True, False],
                "reg_yj": [None, 0.5]}


class ExplicitALSMachine(RatingMachine):
    def make(self, biased, **params):
        return recfuse.ExplicitALS(factors=K, iterations=2, biased=biased, **params)

    def free_params(self):
        return {"backend": BACKENDS, "num_threads": [0, 1, 2], "reg": [0.05, 0.5],
                "iterations": [1, 3], "reg_bias": [None, 0.2], "init_std": [0.1, 0.3]}


RATING_MACHINE = settings(MACHINE, max_examples=25)
TestSVDLifecycle = SVDMachine.TestCase
TestSVDLifecycle.settings = RATING_MACHINE
TestSVDppLifecycle = SVDppMachine.TestCase
TestSVDppLifecycle.settings = RATING_MACHINE
TestExplicitALSLifecycle = ExplicitALSMachine.TestCase
TestExplicitALSLifecycle.settings = RATING_MACHINE


# ====================================================================== targeted sequences


def fitted_als(backend="cpu", solver="cg", **params):
    return recfuse.ALS(factors=K, iterations=2, random_state=0, backend=backend,
                       solver=solver, **params).fit(implicit_matrix(0, 6, 5, 0.5, False))


def als_snapshot(model):
    state = model._state
    return (np.array(state.user_factors), np.array(state.item_factors),
            pattern(state.user_items))


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_items_after_assigning_fewer_item_rows_keeps_a_usable_model(backend):
    model = fitted_als(backend)
    model.item_factors = np.array(model.item_factors[:4])  # by hand: 4 items, seen has 5
    before = als_snapshot(model)
    rows = sp.csr_matrix(np.ones((1, 6), np.float32))
    try:
        model.update_items([1], rows)
    except ValueError:  # refused, as update_users refuses an item table it cannot match
        after = als_snapshot(model)
        for x, y in zip(before, after):
            np.testing.assert_array_equal(x, y)
        return
    # accepted: the model must stay usable (recommend filters, save gives a loadable file)
    model.recommend(np.arange(6), k=2)
    with tempfile.TemporaryDirectory() as folder:
        model.save(os.path.join(folder, "m.npz"))
        recfuse.load(os.path.join(folder, "m.npz"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_update_items_after_assigning_more_item_rows_grows_the_seen_matrix(backend):
    """The passing control: a table assigned with more rows than the seen matrix's columns
    is refused by recommend (filter_seen), and update_items of any id makes them agree."""
    model = fitted_als(backend)
    model.item_factors = np.vstack([model.item_factors, np.ones((2, K), np.float32)])
    with pytest.raises(ValueError, match="assigned by hand"):
        model.recommend(0, k=2)
    model.update_items([6], sp.csr_matrix(np.ones((1, 6), np.float32)))
    ids, _ = model.recommend(np.arange(6), k=7)
    assert not (ids == 6).any()  # every user has item 6 now


WIDE_CALLS = {
    "update_users/item_factors": ("item_factors", lambda m: m.update_users(
        [0], implicit_matrix(1, 1, 5, 1.0, False))),
    "update_items/user_factors": ("user_factors", lambda m: m.update_items(
        [0], implicit_matrix(1, 1, 6, 1.0, False))),
    "update_users/user_factors": ("user_factors", lambda m: m.update_users(
        [0], implicit_matrix(1, 1, 5, 1.0, False))),
}


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", sorted(WIDE_CALLS))
def test_a_fold_in_on_an_assigned_table_of_another_width_names_it(call, backend, solver):
    model = fitted_als(backend, solver)
    name, run = WIDE_CALLS[call]
    rows = {"user_factors": 6, "item_factors": 5}[name]
    setattr(model, name, np.ones((rows, K + 1), np.float32))
    before = als_snapshot(model)
    with pytest.raises(ValueError, match="user_factors|item_factors"):
        run(model)
    for x, y in zip(before, als_snapshot(model)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recommend_on_an_assigned_table_of_another_width_names_it(backend):
    """The passing control: ALS.recommend checks the widths and says so."""
    model = fitted_als(backend)
    model.item_factors = np.ones((5, K + 1), np.float32)
    with pytest.raises(ValueError, match="user_factors and item_factors must have one number"):
        model.recommend(0, k=2)


@pytest.mark.parametrize("name", ["user_factors", "item_factors"])
def test_bpr_recommend_on_an_assigned_table_of_another_width_names_it(name):
    model = recfuse.BPR(factors=K, iterations=2, random_state=0).fit(
        implicit_matrix(0, 6, 5, 0.5, False))
    setattr(model, name, np.ones((6 if name == "user_factors" else 5, K + 1), np.float32))
    with pytest.raises(ValueError, match="user_factors|item_factors"):
        model.recommend(0, k=2)


@pytest.mark.parametrize("call", ["als.recommend", "als.update_users", "bpr.recommend"])
def test_a_user_table_assigned_as_a_list_is_taken_or_refused_by_name(call):
    M = implicit_matrix(0, 6, 5, 0.5, False)
    cls = recfuse.ALS if call.startswith("als") else recfuse.BPR
    model = cls(factors=K, iterations=2, random_state=0).fit(M)
    twin = cls(factors=K, iterations=2, random_state=0).fit(M)
    model.user_factors = np.array(twin.user_factors).tolist()
    if call.endswith("recommend"):
        try:
            got = model.recommend(np.arange(6), k=3)
        except (TypeError, ValueError) as error:  # refused by name is fine too
            assert "user_factors" in str(error)
            return
        for x, y in zip(got, twin.recommend(np.arange(6), k=3)):
            np.testing.assert_array_equal(x, y)
    else:
        try:
            got = model.update_users([0], M[1])
        except (TypeError, ValueError) as error:
            assert "user_factors" in str(error)
            return
        np.testing.assert_array_equal(got, twin.update_users([0], M[1]))


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "numpy"])
@pytest.mark.parametrize("side", ["user", "item"])
def test_a_cholesky_fold_in_that_fails_says_so(backend, side):
    model = fitted_als(backend, "cholesky")
    width = 5 if side == "user" else 6
    dense = np.zeros((1, width), np.float32)
    dense[0, :2] = [3e38, 1.0]  # confidence 1 + 3e38: the system's sums overflow float32
    before = als_snapshot(model)
    update = model.update_users if side == "user" else model.update_items
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            update([0], sp.csr_matrix(dense))
        except ValueError:  # refused (as the cg solver's "the fold-in diverged"): unchanged
            for x, y in zip(before, als_snapshot(model)):
                np.testing.assert_array_equal(x, y)
            return
    assert any(issubclass(w.category, RuntimeWarning) for w in caught), \
        "the old vector was kept silently"


def test_fit_warns_where_the_cholesky_fold_in_is_silent():
    """The control of the test above: fit on the same row warns."""
    M = implicit_matrix(0, 6, 5, 0.5, False).toarray()
    M[0, :2] = [3e38, 1.0]
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        recfuse.ALS(factors=K, iterations=1, random_state=0, backend="cpu",
                    solver="cholesky").fit(sp.csr_matrix(M))


# ------------------------------------------------------------------ passing regressions


MODELS = {
    "ALS": lambda **p: recfuse.ALS(factors=K, iterations=2, **p),
    "BPR": lambda **p: recfuse.BPR(factors=K, iterations=2, **p),
    "SVD": lambda **p: recfuse.SVD(factors=K, epochs=2, **p),
    "SVDpp": lambda **p: recfuse.SVDpp(factors=K, epochs=2, **p),
    "ExplicitALS": lambda **p: recfuse.ExplicitALS(factors=K, iterations=2, **p),
}


def fit_data(name, seed=0, users=6, items=5):
    if name in ("ALS", "BPR"):
        return (implicit_matrix(seed, users, items, 0.5, False),)
    return rating_data(seed, users, items, 20)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_unfitted_model_takes_every_valid_value(name):
    model = MODELS[name](random_state=0)
    model.set_params(factors=K + 2, dtype="float64")
    assert model.get_params()["factors"] == K + 2
    model.fit(*fit_data(name))
    assert model.user_factors.shape[1] == K + 2 and model.user_factors.dtype == np.float64
    with pytest.raises(ValueError, match="fitted"):
        model.set_params(factors=K)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recommend_all_keeps_the_model_of_its_call_across_a_refit(name):
    model = MODELS[name](random_state=0, backend="cpu").fit(*fit_data(name))
    want = model.recommend(np.arange(6), k=4)
    chunks = model.recommend_all(k=4, batch_size=2)
    first = next(chunks)
    model.fit(*fit_data(name, seed=1, users=3, items=7))  # another shape
    got = [first] + list(chunks)
    np.testing.assert_array_equal(np.concatenate([c[0] for c in got]), np.arange(6))
    np.testing.assert_array_equal(np.concatenate([c[1] for c in got]), want[0])
    np.testing.assert_array_equal(np.concatenate([c[2] for c in got]), want[1])


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_mapped_model_overwritten_by_its_own_save_keeps_answering(name):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        MODELS[name](random_state=0).fit(*fit_data(name)).save(path)
        mapped = recfuse.load(path, mmap=True)
        want = mapped.recommend(np.arange(6), k=5)
        mapped.save(path)  # the file it maps is replaced (atomically) under it
        again = recfuse.load(path, mmap=True)
        for model in (mapped, again, pickle.loads(pickle.dumps(mapped))):
            for x, y in zip(model.recommend(np.arange(6), k=5), want):
                np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_clone_with_a_generator_fits_as_the_original(name):
    model = MODELS[name](random_state=np.random.default_rng(7))
    twin = sklearn_base.clone(model)
    model.fit(*fit_data(name))
    twin.fit(*fit_data(name))
    np.testing.assert_array_equal(model.user_factors, twin.user_factors)
    np.testing.assert_array_equal(model.item_factors, twin.item_factors)


def test_a_mapped_als_model_folds_in_and_saves_again():
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "m.npz")
        fitted_als().save(path)
        model = recfuse.load(path, mmap=True)
        assert not model.user_factors.flags.writeable
        vectors = model.update_users([8], implicit_matrix(2, 1, 5, 1.0, False))
        model.update_items([6], implicit_matrix(3, 1, 9, 1.0, False))
        np.testing.assert_array_equal(model.user_factors[8], vectors[0])
        assert not model.user_factors[6:8].any()
        model.save(path)
        copy = recfuse.load(path)
        same_answers(model, copy, 9, 7)


def test_tables_of_a_new_width_assigned_to_both_sides_fold_in_at_that_width():
    """As in implicit, both tables may be replaced by tables of another width: recommend and
    the fold-ins then work at that width (the fold-ins once solved at model.factors)."""
    model = fitted_als("cpu", "cholesky")
    rng = np.random.default_rng(1)
    model.user_factors = rng.standard_normal((6, K + 2)).astype(np.float32)
    model.item_factors = rng.standard_normal((5, K + 2)).astype(np.float32)
    row = sp.csr_matrix(np.array([[1.0, 0, 2.0, 0, 0]], np.float32))
    vector = model.update_users([0], row)
    assert vector.shape == (1, K + 2) and model.user_factors.shape == (6, K + 2)
    ids, _ = model.recommend(0, k=2)
    assert 0 not in ids and 2 not in ids  # the folded-in row is the user's seen row now
