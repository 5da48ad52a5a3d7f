"""Adversarial hunt on backend parity: the host fallbacks (numba, numpy) against the native
cpu backend and against the NumPy reference (python/recfuse/reference.py), at the public API.

The contract used here (docstrings of recfuse._backend, reference, the models, retrieval and
ranking):

- every backend implements the reference; the Numba and native kernels "agree to rounding,
  not bit for bit" (ALS, explicit ALS), so on well-conditioned float64 problems all host
  backends give the same factors within a tight tolerance;
- SVD/SVD++/BPR epochs equal the reference over the ratings in block order; with
  ``grid=1, shuffle=False`` SVD is plain sequential SGD in the order given;
- results never depend on ``num_threads`` (bit for bit on one backend);
- the starting factors are ``reference.normal_table`` draws: "the same bits on every
  backend and SIMD level";
- top-k and MLP ranking: score descending, ties to the smaller id, padding -1 / -inf; with
  small integer values every evaluation is exact, so ids *and* scores must agree exactly;
- a bad input is refused with the same error on every backend, and a fit that overflows
  ends the same way on every backend (the numpy SGD backend states it: "An epoch runs with
  NumPy's floating-point errors ignored, as the native and Numba kernels run");
- a backend asked for by name that cannot run here raises RuntimeError naming it;
  "auto" takes the first usable of cuda, cpu, numba, numpy.

Findings, fixed: the numpy backend of ExplicitALS turned an overflowed float64 normal
equation into a "diverged" ValueError where cpu and numba count the row as failed and warn;
the numpy ALS backend let NumPy's floating-point errors escape (FloatingPointError under
``np.seterr(all="raise")``, RuntimeWarning under ``-W error``) where cpu and numba raise the
model's "diverged" ValueError.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from conftest import backend_params

HOST = ("cpu", "numba", "numpy")


def _usable(family: str) -> list[str]:
    return [p.values[0] for p in backend_params(HOST, family=family) if not p.marks]


ALS_BACKENDS = _usable("als")
SGD_BACKENDS = _usable("sgd")
TOPK_BACKENDS = _usable("topk")
MLP_BACKENDS = _usable("mlp")
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
WIDTHS = (1, 3, 17, 33)


def _warning_texts(caught) -> list[str]:
    return sorted(str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                  and "row systems" in str(w.message))


def _outcome(call):
    """("ok", result, recfuse's own warnings) or (exception type, message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = call()
        except Exception as error:  # noqa: BLE001 - the outcome is what is compared
            return (type(error).__name__, str(error))
    return ("ok", result, _warning_texts(caught))


# ------------------------------------------------------------------------------ top-k


@st.composite
def topk_problems(draw):
    n = draw(st.integers(1, 12))
    d = draw(st.sampled_from(WIDTHS))
    m = draw(st.integers(1, 4))
    ints = st.integers(-2, 2)
    V = np.array(draw(st.lists(ints, min_size=n * d, max_size=n * d)), float).reshape(n, d)
    Q = np.array(draw(st.lists(ints, min_size=m * d, max_size=m * d)), float).reshape(m, d)
    bias = None
    if draw(st.booleans()):
        bias = np.array(draw(st.lists(ints, min_size=n, max_size=n)), float)
    cells = draw(st.sets(st.tuples(st.integers(0, m - 1), st.integers(0, n - 1)),
                         max_size=m * n))
    exclude = None
    if draw(st.booleans()):
        rows, cols = (zip(*sorted(cells)) if cells else ((), ()))
        exclude = sp.csr_matrix((np.zeros(len(cells)), (list(rows), list(cols))), shape=(m, n))
    allow = draw(st.none() | st.lists(st.integers(0, n - 1), max_size=n + 2))
    k = draw(st.integers(1, n + 3))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return V.astype(dtype), Q.astype(dtype), bias, exclude, allow, k


@HYPOTHESIS
@given(topk_problems(), st.sampled_from([1, 2, 3]))
def test_topk_exact_ties_same_on_every_backend(problem, threads):
    """Integer tables (every dot product exact, many ties): ids and scores equal the
    reference's on every backend, for any thread count."""
    V, Q, bias, exclude, allow, k = problem
    mask = None
    if allow is not None:
        mask = np.zeros(V.shape[0], bool)
        mask[allow] = True
    ref_ids, ref_scores = reference.topk(Q, V, k, exclude=exclude, mask=mask, item_bias=bias)
    for backend in TOPK_BACKENDS:
        index = recfuse.ItemIndex(V, item_bias=bias, backend=backend)
        ids, scores = index.search(Q, k, exclude=exclude, allow=allow, num_threads=threads)
        assert np.array_equal(ids, ref_ids), backend
        assert np.array_equal(scores.astype(np.float64), ref_scores), backend


def test_topk_nonfinite_items_same_on_every_backend():
    """NaN rows never qualify; inf * 0 is NaN; +inf ranks first: alike everywhere."""
    V = np.array([[1, np.nan], [np.inf, 1], [-np.inf, 0], [1, 1], [0, 0]], np.float32)
    Q = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], np.float32)
    ref = reference.topk(Q, V, 5)
    for backend in TOPK_BACKENDS:
        ids, scores = recfuse.ItemIndex(V, backend=backend).search(Q, 5)
        assert np.array_equal(ids, ref[0]), backend
        assert np.array_equal(scores.astype(np.float64), ref[1]), backend


# ------------------------------------------------------------------------------ ALS


@st.composite
def als_problems(draw):
    rows, cols = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    cells = draw(st.sets(st.tuples(st.integers(0, rows - 1), st.integers(0, cols - 1)),
                         max_size=rows * cols))
    values = draw(st.lists(st.integers(0, 4), min_size=len(cells), max_size=len(cells)))
    r, c = (zip(*sorted(cells)) if cells else ((), ()))
    R = sp.csr_matrix((np.array(values, float), (list(r), list(c))), shape=(rows, cols))
    k = draw(st.sampled_from(WIDTHS))
    seed = draw(st.integers(0, 2**32 - 1))
    start = np.random.default_rng(seed)
    X0, Y0 = start.normal(size=(rows, k)) * 0.1, start.normal(size=(cols, k)) * 0.1
    return R, X0, Y0, k


@HYPOTHESIS
@given(als_problems(), st.sampled_from(["cg", "cholesky"]), st.sampled_from(["linear", "raw"]),
       st.sampled_from([0.1, 1.0]))
def test_als_fit_same_on_every_backend(problem, solver, confidence, regularization):
    """float64, λ > 0, stored zeros and empty rows included: every backend's factors and
    loss within rounding of the numpy backend's (the reference); no warning anywhere."""
    R, X0, Y0, k = problem
    if confidence == "raw":  # a stored 0 has confidence 0 there (w = -1): keep systems PD
        R = R.copy()
        R.data[R.data == 0] = 1.0
    fitted = {}
    for backend in ALS_BACKENDS:
        model = recfuse.ALS(factors=k, iterations=2, regularization=regularization,
                            solver=solver, confidence=confidence, dtype=np.float64,
                            backend=backend, num_threads=1)
        outcome = _outcome(lambda: model.fit(R, initial_factors=(X0, Y0)))
        assert outcome[0] == "ok" and outcome[2] == [], (backend, outcome)
        fitted[backend] = (model.user_factors, model.item_factors, model.loss())
    base = fitted["numpy"]
    scale = max(1.0, np.abs(base[0]).max(initial=0), np.abs(base[1]).max(initial=0))
    for backend, (X, Y, loss) in fitted.items():
        assert np.abs(X - base[0]).max(initial=0) <= 1e-8 * scale, backend
        assert np.abs(Y - base[1]).max(initial=0) <= 1e-8 * scale, backend
        assert loss == pytest.approx(base[2], rel=1e-9, abs=1e-12), backend


@pytest.mark.parametrize("backend", ALS_BACKENDS)
@pytest.mark.parametrize("k", [1, 17, 33, 100, 129])
def test_als_thread_count_changes_nothing(backend, k):
    """150 users (several Numba tasks of 64 rows), odd and padded widths: the same bits for
    1, 2 and 3 threads."""
    if backend == "numpy" and k > 33:
        pytest.skip("the numpy backend has no threads; its wide fits only cost time")
    R = sp.random(150, 60, density=0.1, format="csr", random_state=k,
                  data_rvs=lambda size: np.random.default_rng(k).integers(1, 5, size))
    runs = []
    for threads in (1, 2, 3):
        solver = "cholesky" if k % 2 else "cg"
        model = recfuse.ALS(factors=k, iterations=1, solver=solver, backend=backend,
                            num_threads=threads, random_state=3).fit(R)
        runs.append((model.user_factors, model.item_factors,
                     model.recommend(np.arange(150), k=7)[0]))
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_als_same_seed_same_start_on_every_backend(dtype):
    """iterations=0 keeps the start: reference.normal_table draws from the seeds the fit
    takes from its Generator, the same bits on every backend."""
    R = sp.random(9, 7, density=0.3, format="csr", random_state=0)
    rng = np.random.default_rng(11)
    seeds = rng.integers(0, 2**63, size=2, dtype=np.int64)
    expected = [reference.normal_table(int(s), n, 17, 0.0, 0.01, dtype)
                for s, n in zip(seeds, R.shape)]
    for backend in ALS_BACKENDS:
        model = recfuse.ALS(factors=17, iterations=0, dtype=dtype, backend=backend,
                            random_state=11).fit(R)
        assert np.array_equal(model.user_factors, expected[0]), backend
        assert np.array_equal(model.item_factors, expected[1]), backend


def test_als_fold_ins_same_on_every_backend():
    """update_users / update_items (new ids, empty and zero-only rows) and loss agree."""
    rng = np.random.default_rng(5)
    R = sp.random(6, 5, density=0.5, format="csr", random_state=1,
                  data_rvs=lambda size: rng.integers(1, 4, size).astype(float))
    X0, Y0 = rng.normal(size=(6, 3)) * 0.1, rng.normal(size=(5, 3)) * 0.1
    # row 0: two positives; row 1: empty; row 2: one stored zero only (no positive value)
    rows = sp.csr_matrix((np.array([2.0, 1.0, 0.0]), np.array([1, 3, 1]),
                          np.array([0, 2, 2, 3])), shape=(3, 5))
    columns = sp.random(2, 9, density=0.5, format="csr", random_state=2)
    for solver in ("cg", "cholesky"):
        got = {}
        for backend in ALS_BACKENDS:
            model = recfuse.ALS(factors=3, iterations=1, regularization=0.5, solver=solver,
                                dtype=np.float64, backend=backend).fit(
                R, initial_factors=(X0, Y0))
            model.user_factors, model.item_factors = X0.copy(), Y0.copy()
            users = model.update_users([0, 7, 8], rows)
            items = model.update_items([1, 5], columns)
            got[backend] = (users, items, model.loss())
        for backend, value in got.items():
            assert np.allclose(value[0], got["numpy"][0], rtol=0, atol=1e-10), backend
            assert np.allclose(value[1], got["numpy"][1], rtol=0, atol=1e-10), backend
            assert value[2] == pytest.approx(got["numpy"][2], rel=1e-10), backend
            assert not value[0][1:].any()  # no positive value: exactly zero


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_als_overflow_ends_alike_on_every_backend(solver):
    """Values whose products overflow float32: CG diverges (ValueError) and Cholesky keeps
    the rows it cannot solve (RuntimeWarning) on every backend."""
    R = sp.csr_matrix(np.array([[3e38, 1.0], [0, 3e38]]))
    X0 = np.full((2, 2), 0.1)
    Y0 = np.array([[0.1, 0.1], [-0.1, 0.1]])
    outcomes = {}
    for backend in ALS_BACKENDS:
        model = recfuse.ALS(factors=2, iterations=2, solver=solver, backend=backend)
        with np.errstate(all="ignore"):
            outcome = _outcome(lambda: model.fit(R, initial_factors=(X0, Y0)))
        outcomes[backend] = outcome[0] if outcome[0] != "ok" else ("ok", outcome[2])
    assert len({str(v) for v in outcomes.values()}) == 1, outcomes


# ------------------------------------------------------------------------------ SGD models


@st.composite
def rating_problems(draw, max_ratings=30):
    n = draw(st.integers(1, max_ratings))
    n_users, n_items = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    users = np.array(draw(st.lists(st.integers(0, n_users - 1), min_size=n, max_size=n)))
    items = np.array(draw(st.lists(st.integers(0, n_items - 1), min_size=n, max_size=n)))
    ratings = np.array(draw(st.lists(st.integers(1, 5), min_size=n, max_size=n)), float)
    if draw(st.booleans()):
        ratings[:] = ratings[0]  # all equal
    return users, items, ratings, n_users + draw(st.integers(0, 2)), n_items


@HYPOTHESIS
@given(rating_problems(), st.sampled_from([1, 3, 17]), st.booleans(),
       st.sampled_from([np.float32, np.float64]))
def test_svd_sequential_equals_reference_on_every_backend(problem, k, biased, dtype):
    """grid=1, shuffle=False: plain sequential SGD in the order given, i.e.
    reference.svd_sgd_epoch, on every backend and thread count."""
    users, items, ratings, n_users, n_items = problem
    start = np.random.default_rng(k)
    P0, Q0 = start.normal(size=(n_users, k)) * 0.1, start.normal(size=(n_items, k)) * 0.1
    bu, bi = np.zeros(n_users, dtype), np.zeros(n_items, dtype)
    P, Q = P0.astype(dtype), Q0.astype(dtype)
    for _ in range(3):
        bu, bi, P, Q = reference.svd_sgd_epoch(users, items, ratings, ratings.mean(), bu, bi,
                                               P, Q, lr=0.01, reg=0.02, biased=biased)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for backend in SGD_BACKENDS:
        for threads in (1, 3):
            model = recfuse.SVD(factors=k, epochs=3, lr=0.01, reg=0.02, biased=biased, grid=1,
                                shuffle=False, dtype=dtype, backend=backend,
                                num_threads=threads)
            model.fit(users, items, ratings, n_users=n_users, n_items=n_items,
                      initial_factors=(P0, Q0))
            for got, want in ((model.user_factors, P), (model.item_factors, Q),
                              (model.user_bias, bu), (model.item_bias, bi)):
                assert np.abs(got - want).max() <= tol, (backend, threads)


@HYPOTHESIS
@given(rating_problems(), st.sampled_from([1, 3, 17]))
def test_svdpp_equals_reference_on_every_backend(problem, k):
    """shuffle=False: users in the order of the fit's first permutation, each user's ratings
    as given; reference.svdpp_sgd_epoch over that order (float64)."""
    users, items, ratings, n_users, n_items = problem
    start = np.random.default_rng(k)
    P0, Q0, Y0 = (start.normal(size=(rows, k)) * 0.1 for rows in (n_users, n_items, n_items))
    order = np.argsort(np.random.default_rng(4).permutation(n_users)[users], kind="stable")
    implicit = sp.csr_matrix((np.ones(users.size), (users, items)), shape=(n_users, n_items))
    implicit.sum_duplicates()
    state = (np.zeros(n_users), np.zeros(n_items), P0, Q0, Y0)
    for _ in range(2):
        state = reference.svdpp_sgd_epoch(users, items, ratings, ratings.mean(), *state,
                                          implicit, lr=0.007, reg=0.02, order=order)
    for backend in SGD_BACKENDS:
        model = recfuse.SVDpp(factors=k, epochs=2, shuffle=False, dtype=np.float64,
                              backend=backend, random_state=4)
        model.fit(users, items, ratings, n_users=n_users, n_items=n_items,
                  initial_factors=(P0, Q0, Y0))
        got = (model.user_bias, model.item_bias, model.user_factors, model.item_factors,
               model.implicit_factors)
        for a, b in zip(got, state):
            assert np.abs(a - b).max() <= 1e-12, backend


@HYPOTHESIS
@given(rating_problems(max_ratings=60), st.integers(0, 4), st.sampled_from([1, 17]))
def test_shuffled_sgd_fits_same_on_every_backend_and_thread_count(problem, grid, k):
    """Same seed and grid: SVD, SVD++ and BPR give the same model on every backend (float64,
    to rounding) and the same bits for any thread count on one backend."""
    users, items, ratings, n_users, n_items = problem
    matrix = sp.csr_matrix((ratings, (users, items)), shape=(n_users, n_items))
    makers = {
        "SVD": lambda b, t: recfuse.SVD(factors=k, epochs=2, grid=grid, dtype=np.float64,
                                        backend=b, num_threads=t, random_state=5
                                        ).fit(users, items, ratings),
        "SVDpp": lambda b, t: recfuse.SVDpp(factors=k, epochs=2, dtype=np.float64, backend=b,
                                            num_threads=t, random_state=5
                                            ).fit(users, items, ratings),
        "BPR": lambda b, t: recfuse.BPR(factors=k, iterations=2, grid=grid, max_tries=2,
                                        dtype=np.float64, backend=b, num_threads=t,
                                        random_state=5).fit(matrix),
    }
    for name, make in makers.items():
        tables = {}
        for backend in SGD_BACKENDS:
            runs = []
            for threads in (1, 2, 3):
                model = make(backend, threads)
                bias = getattr(model, "user_bias", None)
                runs.append([model.user_factors, model.item_factors, model.item_bias] +
                            ([] if bias is None else [bias]))
            for run in runs[1:]:
                assert all(np.array_equal(a, b) for a, b in zip(run, runs[0])), (name, backend)
            tables[backend] = runs[0]
        for backend, run in tables.items():
            for a, b in zip(run, tables["numpy"]):
                assert np.abs(a - b).max(initial=0) <= 1e-12, (name, backend)


@HYPOTHESIS
@given(rating_problems(max_ratings=40), st.sampled_from(WIDTHS), st.booleans(),
       st.sampled_from([None, 0.0, 0.5]))
def test_explicit_als_same_on_every_backend(problem, k, biased, reg_bias):
    """float64, λ = 0.1: every backend within rounding of the reference (numpy)."""
    users, items, ratings, n_users, n_items = problem
    fitted = {}
    for backend in SGD_BACKENDS:
        for threads in (1, 3):
            model = recfuse.ExplicitALS(factors=k, iterations=2, reg=0.1, reg_bias=reg_bias,
                                        biased=biased, dtype=np.float64, backend=backend,
                                        num_threads=threads, random_state=2)
            outcome = _outcome(lambda: model.fit(users, items, ratings, n_users=n_users))
            assert outcome[0] == "ok" and outcome[2] == [], (backend, outcome)
            fitted[backend, threads] = (model.user_factors, model.item_factors,
                                        model.user_bias, model.item_bias)
    base = fitted["numpy", 1]
    scale = max(1.0, max(np.abs(a).max(initial=0) for a in base))
    for key, tables in fitted.items():
        for a, b in zip(tables, base):
            assert np.abs(a - b).max(initial=0) <= 1e-9 * scale, key


@pytest.mark.parametrize("backend", SGD_BACKENDS)
def test_sgd_divergence_is_the_same_error_on_every_backend(backend):
    """Overflowing SGD fits end with the model's "diverged" ValueError, also under
    np.seterr(all="raise") and warnings turned into errors."""
    users, items = np.array([0, 0, 1]), np.array([0, 1, 1])
    ratings = np.array([1e30, -1e30, 1.0])
    fits = [lambda: recfuse.SVD(factors=2, epochs=3, backend=backend, random_state=0
                                ).fit(users, items, ratings),
            lambda: recfuse.SVDpp(factors=2, epochs=3, backend=backend, random_state=0
                                  ).fit(users, items, ratings),
            lambda: recfuse.BPR(factors=2, iterations=3, lr=1e30, backend=backend,
                                random_state=0).fit(sp.csr_matrix(np.eye(3)))]
    for fit in fits:
        for strict in (False, True):
            with warnings.catch_warnings(), np.errstate(all="raise" if strict else "warn"):
                if strict:
                    warnings.simplefilter("error")
                with pytest.raises(ValueError, match="diverged"):
                    fit()


# ------------------------------------------------------------------------------ the findings


def test_explicit_als_ratings_whose_sums_overflow_are_refused_on_every_backend():
    """Ratings ~1e200 (float64): the normal equations' sums would overflow to inf. Found
    here: cpu and numba counted those rows as failed and warned while numpy said
    "diverged"; now fit refuses such ratings up front in float64 as in float32, alike on
    every backend, and the model is untouched."""
    users, items = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 2, 1])
    ratings = np.array([1e200, -1e200, 1e200, 1.0, 5e199])
    outcomes = {}
    for backend in SGD_BACKENDS:
        model = recfuse.ExplicitALS(factors=2, iterations=1, dtype=np.float64, backend=backend,
                                    random_state=0)
        outcomes[backend] = _outcome(lambda: model.fit(users, items, ratings))
        assert model.user_factors is None
    assert len({str(v) for v in outcomes.values()}) == 1, outcomes
    assert next(iter(outcomes.values()))[0] == "ValueError"
    assert "ratings are too large for dtype=float64" in next(iter(outcomes.values()))[1]


def test_reference_explicit_half_sweep_counts_rows_whose_sums_overflow():
    """The reference (the numpy backend) counts a row whose system is not finite as failed
    and keeps its vector, as the cpu and numba kernels do, instead of writing NaN."""
    R = sp.csr_matrix(np.array([[1.0, 2.0], [0.0, 3.0]]))
    Y = np.array([[1e200, 0.0], [0.0, 1.0]])  # row 0's Gram overflows; row 1's does not
    X = np.full((2, 2), 0.5)
    with np.errstate(over="ignore", invalid="ignore"):  # as the numpy backend runs it
        out, _, failed = reference.explicit_als_half_sweep(R, Y, X, reg=0.1)
    assert failed == 1
    assert np.array_equal(out[0], X[0]) and np.isfinite(out).all()


def _fp_strict_outcome(call, mode):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore" if mode == "raise" else "error")
        with np.errstate(all="raise") if mode == "raise" else np.errstate():
            try:
                call()
            except Exception as error:  # noqa: BLE001
                return type(error).__name__, str(error).split(":")[0]
    return ("ok",)


@pytest.mark.parametrize("mode", ["raise", "warnings-as-errors"])
@pytest.mark.parametrize("backend", ALS_BACKENDS)
def test_als_overflow_gives_diverged_under_strict_fp_settings(backend, mode):
    """A CG fit whose sums would overflow float32 is refused with a ValueError whatever
    NumPy's error settings (up front: confidences past the cg solver's bound; it was "ALS
    diverged" once the kernels had run), and so is a fold-in (update_users)."""
    X0 = np.full((2, 2), 0.1)
    Y0 = np.array([[0.1, 0.1], [-0.1, 0.1]])
    R = sp.csr_matrix(np.array([[1e30, 1.0], [0, 1e30]]))
    fit = _fp_strict_outcome(
        lambda: recfuse.ALS(factors=2, iterations=2, backend=backend).fit(
            R, initial_factors=(X0, Y0)), mode)
    assert fit[0] == "ValueError" and "the cg solver takes" in fit[1], fit
    model = recfuse.ALS(factors=2, iterations=1, backend=backend).fit(
        sp.csr_matrix(np.eye(2)), initial_factors=(X0, Y0))
    fold = _fp_strict_outcome(
        lambda: model.update_users([0], sp.csr_matrix(np.array([[1e30, 1.0]]))), mode)
    assert fold[0] == "ValueError" and "the cg solver takes" in fold[1], fold


# ------------------------------------------------------------------------------ MLP


@st.composite
def mlp_problems(draw):
    du, di = draw(st.sampled_from([1, 3, 17])), draw(st.sampled_from([1, 3, 33]))
    hidden = draw(st.sampled_from([1, 3, 17, 33, 100, 129]))
    depth = draw(st.integers(1, 3))
    widths = [du + di] + [hidden] * (depth - 1) + [1]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        activation = draw(st.sampled_from(["relu", "tanh", "identity", "gelu", "sigmoid"]))
        bias = rng.integers(-2, 3, b).astype(np.float32) if draw(st.booleans()) else None
        layers.append((rng.integers(-2, 3, (b, a)).astype(np.float32), bias,
                       "identity" if b == 1 else activation))
    users, items = draw(st.integers(1, 3)), draw(st.integers(1, 12))
    U = rng.integers(-2, 3, (users, du)).astype(np.float32)
    T = rng.integers(-2, 3, (items, di)).astype(np.float32)
    lists = [rng.integers(0, items, int(rng.integers(0, 9))) for _ in range(users)]
    return layers, U, T, lists, draw(st.integers(1, 10))


@HYPOTHESIS
@given(mlp_problems())
def test_mlp_scores_and_ranks_same_on_every_backend(problem):
    """float32: scores within rounding of reference.mlp_score_candidates and the ranking
    (ties to the smaller id, repeats once, empty users padded) equal to the reference's when
    every layer is exact on small integers (relu, identity); with tanh, sigmoid or gelu two
    items' scores may be a rounding apart on one side and tied on the other (e.g. 0.9993293
    twice in the reference, 0.99932945 and 0.9993293 on every backend), so there the ranking
    must be that of the backend's own scores."""
    layers, U, T, lists, k = problem
    indptr = np.r_[0, np.cumsum([len(ids) for ids in lists])]
    flat = np.concatenate(lists).astype(np.int64)
    want = reference.mlp_score_candidates(layers, U, indptr, flat, T)
    want_ids, _ = reference.mlp_rank_scores(indptr, flat, want.astype(np.float32), k)
    exact = all(activation in ("relu", "identity") for _, _, activation in layers)
    # float32 rounding grows with the magnitudes summed on the way: |W|...|x| + |b| through
    # the layers (gelu's slope is at most 1.13), a few float32 roundings of it per layer
    # (a 100-wide gelu layer of weights up to 2 put a score 2.6e-4 off; atol 1e-4 alone)
    absolute = [(np.abs(W), None if b is None else np.abs(b), "identity") for W, b, _ in layers]
    scale = reference.mlp_score_candidates(absolute, np.abs(U), indptr, flat, np.abs(T))
    atol = 1e-4 + 4e-6 * len(layers) * 1.13 ** len(layers) * scale
    for backend in MLP_BACKENDS:
        scorer = recfuse.MLPScorer(layers, backend=backend)
        for threads in (1, 3):
            scores = scorer.score_candidates(U, lists, T, num_threads=threads)
            ids, _ = scorer.rank(U, lists, T, k=k, num_threads=threads)
            assert (np.abs(scores - want) <= atol + 1e-5 * np.abs(want)).all(), backend
            own_ids = (want_ids if exact else
                       reference.mlp_rank_scores(indptr, flat, scores.astype(np.float32), k)[0])
            assert np.array_equal(ids, own_ids), backend


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_mlp_reduced_precision_ranks_agree_across_backends(precision):
    """bfloat16 and int8 rank by float32 rescoring: the same lists on every backend that
    runs the precision here."""
    rng = np.random.default_rng(3)
    layers = [(rng.integers(-2, 3, (33, 6)).astype(np.float32), None, "relu"),
              (rng.integers(-2, 3, (17, 33)).astype(np.float32), None, "tanh"),
              (rng.integers(-2, 3, (1, 17)).astype(np.float32), None, "identity")]
    U = rng.integers(-2, 3, (4, 3)).astype(np.float32)
    T = rng.integers(-2, 3, (90, 3)).astype(np.float32)
    candidates = rng.integers(0, 90, (4, 80))
    ranked = {}
    for backend in MLP_BACKENDS:
        try:
            scorer = recfuse.MLPScorer(layers, backend=backend, precision=precision)
        except ValueError as error:  # cpu bfloat16 without AVX512-BF16: documented
            assert backend == "cpu" and "AVX512-BF16" in str(error)
            continue
        ranked[backend] = scorer.rank(U, candidates, T, k=12)
    assert len(ranked) >= 2
    first = next(iter(ranked.values()))
    for backend, (ids, scores) in ranked.items():
        assert np.array_equal(ids, first[0]), backend
        # the rescored float32 scores: each backend's own float32 sums (rounding apart)
        assert np.allclose(scores, first[1], rtol=1e-5, atol=1e-5), backend


# ------------------------------------------------------------------------------ choice


def _all_entry_points(backend):
    R = sp.random(5, 4, density=0.5, format="csr", random_state=0)
    u, i, r = np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0])
    layers = [(np.ones((1, 4), np.float32), None, "identity")]
    return {
        "ALS": lambda: recfuse.ALS(factors=2, iterations=1, backend=backend).fit(R),
        "BPR": lambda: recfuse.BPR(factors=2, iterations=1, backend=backend).fit(R),
        "SVD": lambda: recfuse.SVD(factors=2, epochs=1, backend=backend).fit(u, i, r),
        "SVDpp": lambda: recfuse.SVDpp(factors=2, epochs=1, backend=backend).fit(u, i, r),
        "ExplicitALS": lambda: recfuse.ExplicitALS(factors=2, iterations=1,
                                                   backend=backend).fit(u, i, r),
        "ItemIndex": lambda: recfuse.ItemIndex(np.ones((3, 2), np.float32), backend=backend),
        "topk": lambda: recfuse.topk(np.ones((1, 2), np.float32),
                                     np.ones((3, 2), np.float32), 2, backend=backend),
        "MLPScorer": lambda: recfuse.MLPScorer(layers, backend=backend),
    }


@pytest.mark.parametrize("name", ["cuda", "cupy"])
def test_unavailable_backend_is_a_runtime_error_naming_it(name):
    table = {info.name: info for info in recfuse.backends()}
    if table[name].available:
        pytest.skip(f"{name} is available here")
    for entry, call in _all_entry_points(name).items():
        with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
            call()


def test_auto_takes_the_first_usable_backend():
    order = [n for n in ("cuda", "cpu", "numba", "numpy")
             if {i.name: i for i in recfuse.backends()}[n].available]
    if "cuda" in order:
        pytest.skip("a GPU is present")
    first = order[0]
    entries = _all_entry_points("auto")
    for name in ("ALS", "BPR", "SVD", "SVDpp", "ExplicitALS"):
        assert entries[name]().backend_used == first, name
    assert entries["MLPScorer"]().backend == first
    assert entries["ItemIndex"]()._module.NAME == first


def test_recfuse_backend_variable_names_itself():
    code = ("import recfuse, scipy.sparse as sp\n"
            "try:\n"
            "    recfuse.ALS(factors=2, iterations=1).fit(sp.eye(3, format='csr'))\n"
            "except RuntimeError as e:\n"
            "    print('RuntimeError', e)\n")
    env = {**os.environ, "RECFUSE_BACKEND": "cupy"}
    if {i.name: i for i in recfuse.backends()}["cupy"].available:
        pytest.skip("cupy is available here")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "RuntimeError backend 'cupy' (from RECFUSE_BACKEND) is not available" in out.stdout


# ------------------------------------------------------------------------------ bad input


def _bad_inputs(backend):
    u, i = np.array([0, 1]), np.array([0, 1])
    nan_matrix = sp.csr_matrix(np.array([[np.nan, 1.0], [0, 1]]))
    negative = sp.csr_matrix(np.array([[-1.0, 1.0], [0, 1]]))
    layers = [(np.ones((1, 2), np.float32), None, "identity")]
    return {
        "ALS NaN": lambda: recfuse.ALS(factors=2, backend=backend).fit(nan_matrix),
        "ALS negative": lambda: recfuse.ALS(factors=2, backend=backend).fit(negative),
        "ALS start shape": lambda: recfuse.ALS(factors=2, backend=backend).fit(
            sp.eye(2, format="csr"), initial_factors=(np.zeros((3, 2)), np.zeros((2, 2)))),
        "ALS start NaN": lambda: recfuse.ALS(factors=2, backend=backend).fit(
            sp.eye(2, format="csr"), initial_factors=(np.full((2, 2), np.nan),
                                                      np.zeros((2, 2)))),
        "BPR NaN": lambda: recfuse.BPR(factors=2, backend=backend).fit(nan_matrix),
        "SVD NaN": lambda: recfuse.SVD(factors=2, backend=backend).fit(
            u, i, np.array([np.nan, 1.0])),
        "SVDpp inf": lambda: recfuse.SVDpp(factors=2, backend=backend).fit(
            u, i, np.array([np.inf, 1.0])),
        "ExplicitALS float32 overflow": lambda: recfuse.ExplicitALS(
            factors=2, backend=backend).fit(u, i, np.array([1e30, 1.0])),
        "ItemIndex NaN query": lambda: recfuse.ItemIndex(
            np.eye(2, dtype=np.float32), backend=backend).search([np.nan, 1.0], 1),
        "ItemIndex k=0": lambda: recfuse.ItemIndex(
            np.eye(2, dtype=np.float32), backend=backend).search([1.0, 1.0], 0),
        "MLP NaN user": lambda: recfuse.MLPScorer(layers, backend=backend).rank(
            np.array([[np.nan]], np.float32), np.array([[0]]), np.ones((1, 1), np.float32), k=1),
        "MLP bad id": lambda: recfuse.MLPScorer(layers, backend=backend).score_candidates(
            np.ones((1, 1), np.float32), np.array([[3]]), np.ones((1, 1), np.float32)),
    }


def test_bad_input_same_error_on_every_backend():
    backends = sorted(set(ALS_BACKENDS) & set(SGD_BACKENDS) & set(TOPK_BACKENDS)
                      & set(MLP_BACKENDS))
    errors = {b: {} for b in backends}
    for backend in backends:
        for name, call in _bad_inputs(backend).items():
            outcome = _outcome(call)
            assert outcome[0] in ("ValueError", "TypeError"), (backend, name, outcome)
            errors[backend][name] = outcome
    for backend in backends:
        assert errors[backend] == errors[backends[0]], backend
