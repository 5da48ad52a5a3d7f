"""Failed row solves in explicit ALS and the rating models' fold-ins (hunt "ae").

Contract used (python/recfuse/reference.py, explicit ALS section and
``explicit_als_half_sweep``; the implicit failure rule of the module docstring and
``als_half_sweep_counted``; ExplicitALS.fit's and Recommender.observe's docstrings):

* a row whose system is not positive definite (also: inf or NaN entries, sums that overflowed
  the dtype) or whose solution holds inf or NaN keeps its previous vector and bias and is
  counted; a row without ratings gets zeros; every other row is the exact minimiser;
* every backend (cpu at each SIMD level and thread count, numba, numpy) agrees with the
  reference on which rows fail where the failure is decisive (exact zero pivots, overflow);
* ExplicitALS.fit warns with the sum of the half-sweeps' counts and keeps factors finite;
* a refused fold-in (Recommender.observe) applies nothing: model, served user, call count and
  event log stay as they were, and the message names the cause.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from recfuse._backend import resolve_backend
from recfuse.models.explicit_als import _ratings_csr

from conftest import backend_params, simd_level

CPU_BACKENDS = backend_params(("cpu", "numba", "numpy"), family="sgd")
CUPY = backend_params(("cupy",), family="sgd")
HYP = settings(max_examples=40, deadline=None, database=None,
               suppress_health_check=[HealthCheck.too_slow])


def _levels():
    try:
        from recfuse import _core
        return list(_core.supported_simd_levels())
    except Exception:  # pragma: no cover - native module missing
        return []


def _sweep(backend, r, c, v, rows, cols, Y, X, other, own, mu, reg, reg_bias, threads=1,
           level=None):
    """One backend half-sweep on copies; returns (failed, X, own)."""
    module = resolve_backend(backend, "sgd")
    R = _ratings_csr(np.asarray(r, np.int64), np.asarray(c, np.int64),
                     np.asarray(v, np.float64), rows, cols, Y.dtype)
    X = X.copy()
    own = None if own is None else own.copy()
    with np.errstate(all="ignore"):
        if level is None:
            failed = module.explicit_als_half_sweep(R, Y, X, other, own, mu, reg, reg_bias,
                                                    threads)
        else:
            with simd_level(level):
                failed = module.explicit_als_half_sweep(R, Y, X, other, own, mu, reg, reg_bias,
                                                        threads)
    return int(failed), X, own


def _reference(r, c, v, rows, cols, Y, X, other, own, mu, reg, reg_bias):
    R = _ratings_csr(np.asarray(r, np.int64), np.asarray(c, np.int64),
                     np.asarray(v, np.float64), rows, cols, Y.dtype)
    with np.errstate(all="ignore"):
        Xr, br, failed = reference.explicit_als_half_sweep(
            R.to_scipy(), Y, X, reg=reg, reg_bias=reg_bias, global_mean=mu, other_bias=other,
            own_bias=own)
    return failed, Xr, br


def _variants():
    """(backend, threads, simd level) for the kernel-level tests."""
    out = []
    for param in CPU_BACKENDS:
        name = param.values[0]
        if name == "cpu":
            for level in _levels():
                for threads in (1, 2):
                    out.append(pytest.param(name, threads, level, marks=param.marks,
                                            id=f"cpu-{level}-t{threads}"))
        else:
            for threads in (1, 2):
                out.append(pytest.param(name, threads, None, marks=param.marks,
                                        id=f"{name}-t{threads}"))
    return out


VARIANTS = _variants()


# ------------------------------------------------------------------ singular systems (exact)
@st.composite
def singular_problems(draw):
    """Item vectors that are one-hot (duplicates likely), reg 0: a row's system is diagonal
    in its factor part, so a factor no rating of the row touches has an exact zero pivot
    (fails on every backend, no rounding involved); a row touching every factor is PD."""
    rows, cols = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(0, 30))
    r, c = rng.integers(0, rows, n), rng.integers(0, cols, n)
    v = rng.integers(1, 6, n).astype(np.float64)
    Y = np.eye(k)[rng.integers(0, k, cols)] * rng.integers(1, 4, (cols, 1))
    biased = draw(st.booleans())
    return r, c, v, rows, cols, Y, k, biased, rng


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("backend,threads,level", VARIANTS)
@HYP
@given(problem=singular_problems())
def test_singular_rows_are_counted_and_kept_like_the_reference(backend, threads, level, dtype,
                                                                problem):
    r, c, v, rows, cols, Y, k, biased, rng = problem
    Y = Y.astype(dtype)
    X = rng.normal(0, 1, (rows, k)).astype(dtype)
    other = rng.normal(0, 0.3, cols).astype(dtype) if biased else None
    own = rng.normal(0, 0.3, rows).astype(dtype) if biased else None
    mu = 3.0 if biased else 0.0
    expected = _reference(r, c, v, rows, cols, Y, X, other, own, mu, 0.0, 0.5)
    failed, Xb, ownb = _sweep(backend, r, c, v, rows, cols, Y, X, other, own, mu, 0.0, 0.5,
                              threads, level)
    # the rows that must fail: rated, but some factor untouched by their items
    touched = np.zeros((rows, k), bool)
    for u, i in zip(r, c):
        touched[u] |= Y[i] != 0
    rated = np.bincount(r, minlength=rows) > 0
    must_fail = rated & ~touched.all(axis=1)
    assert expected[0] == must_fail.sum()
    assert failed == expected[0]
    np.testing.assert_array_equal(Xb[must_fail], X[must_fail])  # kept as they were
    tol = 2e-3 if dtype == np.float32 else 1e-9
    np.testing.assert_allclose(Xb, expected[1], rtol=tol, atol=tol)
    if biased:
        np.testing.assert_array_equal(ownb[must_fail], own[must_fail])
        np.testing.assert_allclose(ownb, expected[2], rtol=tol, atol=tol)


# ------------------------------------------------- finite pivots, non-finite solution
# Item vector 1e-22 (its square 1e-44 is a float32 subnormal), reg 1e-45, a rating of 1e17:
# every pivot is positive and finite, but x = r y / (y² + reg) ≈ 1e39 is past float32's max.
# The rule: a solution holding inf or NaN fails the row (kept, counted). Every backend wrote
# inf and counted nothing, and the reference checked finiteness in float64 before the cast
# (fixed the same day).
TINY = dict(r=[0], c=[0], v=[1e17], rows=1, cols=1)


@pytest.mark.parametrize("backend,threads,level", VARIANTS)
def test_non_finite_solution_keeps_the_row_and_is_counted(backend, threads, level):
    Y = np.array([[1e-22]], np.float32)
    X = np.full((1, 1), 7.0, np.float32)
    failed, Xb, _ = _sweep(backend, TINY["r"], TINY["c"], TINY["v"], 1, 1, Y, X, None, None,
                           0.0, 1e-45, 1e-45, threads, level)
    assert failed == 1
    np.testing.assert_array_equal(Xb, X)


def test_reference_fails_a_solution_that_is_not_finite_in_the_model_dtype():
    Y = np.array([[1e-22]], np.float32)
    X = np.full((1, 1), 7.0, np.float32)
    failed, Xr, _ = _reference(TINY["r"], TINY["c"], TINY["v"], 1, 1, Y, X, None, None, 0.0,
                               1e-45, 1e-45)
    assert np.isfinite(Xr).all()
    assert failed == 1


# ------------------------------------------------ overflowed sums: an inf pivot
# float32 item vector (1e20, 1): y·y = 1e40 overflows to an inf pivot. The reference (float64)
# solves it exactly (x ≈ (1e-20, 0)); the cpu and numba kernels took the inf pivot as
# "positive", divided by it and returned (0, 0.909), a wrong vector that was not counted.
# Either answer the reference's vector or fail the row (kept, counted), as the cupy kernel
# does (its pivot test refuses isinf); the kernels now fail it.
def _overflow_case():
    Y = np.array([[1e20, 1.0]], np.float32)
    X = np.full((1, 2), 7.0, np.float32)
    return Y, X


@pytest.mark.parametrize("backend,threads,level", VARIANTS)
def test_overflowed_system_is_solved_or_counted(backend, threads, level):
    Y, X = _overflow_case()
    failed, Xb, _ = _sweep(backend, [0], [0], [1.0], 1, 1, Y, X, None, None, 0.0, 0.1, 0.1,
                           threads, level)
    _, expected, _ = _reference([0], [0], [1.0], 1, 1, Y, X, None, None, 0.0, 0.1, 0.1)
    if failed:
        assert failed == 1
        np.testing.assert_array_equal(Xb, X)
    else:
        np.testing.assert_allclose(Xb, expected, rtol=1e-3, atol=1e-6)


def test_fit_with_an_overflowing_item_start_warns_or_matches_the_reference_sweep():
    Y0 = np.array([[1e20, 1.0], [1e20, 1.0]], np.float32)
    X0 = np.ones((2, 2), np.float32)
    model = recfuse.ExplicitALS(factors=2, iterations=1, reg=0.1, biased=False, backend="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit([0, 1], [0, 1], [1.0, 1.0], initial_factors=(X0, Y0))
    warned = any("kept their previous values" in str(w.message) for w in caught)
    _, expected, _ = _reference([0, 1], [0, 1], [1.0, 1.0], 2, 2, Y0, X0, None, None, 0.0,
                                0.1, 0.1)
    assert warned or np.allclose(model.user_factors[:, 1], expected[:, 1], atol=1e-3)


# ------------------------------------------------------------------------ the fit API
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("biased", [True, False])
def test_fit_warning_counts_the_half_sweeps_failures(backend, biased):
    # k = 4 > ratings per user and reg 1e-30: many rows singular in float32
    u = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    i = np.array([0, 1, 1, 2, 0, 2, 0, 1])
    v = np.array([1, 2, 3, 4, 5, 1, 2, 3.0])
    rng = np.random.default_rng(1)
    X0 = rng.normal(0, 0.5, (4, 4)).astype(np.float32)
    Y0 = rng.normal(0, 0.5, (3, 4)).astype(np.float32)
    model = recfuse.ExplicitALS(factors=4, iterations=3, reg=1e-30, biased=biased,
                                backend=backend)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(u, i, v, initial_factors=(X0, Y0))
    # replay: the same half-sweeps on the same backend
    module = resolve_backend(backend, "sgd")
    by_user = _ratings_csr(u, i, v, 4, 3, np.float32)
    by_item = _ratings_csr(i, u, v, 3, 4, np.float32)
    X, Y = X0.copy(), Y0.copy()
    mu = float(v.mean()) if biased else 0.0
    bu = np.zeros(4, np.float32) if biased else None
    bi = np.zeros(3, np.float32) if biased else None
    total = 0
    with np.errstate(all="ignore"):
        for _ in range(3):
            total += module.explicit_als_half_sweep(by_user, Y, X, bi, bu, mu, 1e-30, 1e-30, 0)
            total += module.explicit_als_half_sweep(by_item, X, Y, bu, bi, mu, 1e-30, 1e-30, 0)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert total > 0
    assert messages == [f"{total} row systems were not positive definite or overflowed "
                        f"float32 and kept their previous values"]
    for table in (model.user_factors, model.item_factors):
        assert np.isfinite(table).all()
    assert np.isfinite(model.predict(u, i)).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fit_keeps_rows_whose_solution_overflows_and_warns(backend):
    model = recfuse.ExplicitALS(factors=1, iterations=1, reg=1e-45, biased=False,
                                backend=backend)
    X0 = np.ones((2, 1), np.float32)
    Y0 = np.full((2, 1), 1e-22, np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit([0, 1], [0, 1], [1e17, 1e17], initial_factors=(X0, Y0))
    assert any("kept their previous values" in str(w.message) for w in caught)
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()


def test_overflowing_fit_keeps_its_rows_and_a_refused_fit_leaves_the_model_as_it_was():
    """Solutions past float32 no longer reach the factors (the fit diverged on them): the
    rows keep their values and the fit warns. A refused fit (ratings of another length)
    leaves the fitted model as it was."""
    model = recfuse.ExplicitALS(factors=1, iterations=1, reg=1e-45, biased=False, backend="cpu",
                                random_state=0)
    model.fit([0, 1], [0, 1], [1.0, 2.0])
    before = (model.user_factors.copy(), model.item_factors.copy())
    with pytest.raises(ValueError):
        model.fit([0, 1], [0, 1], [1.0])
    np.testing.assert_array_equal(model.user_factors, before[0])
    np.testing.assert_array_equal(model.item_factors, before[1])
    with pytest.warns(RuntimeWarning, match="kept their previous values"):
        model.fit([0, 1], [0, 1], [1e17, 1e17], initial_factors=(
            np.ones((2, 1), np.float32), np.full((2, 1), 1e-22, np.float32)))
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()


# ------------------------------------------------------------------------- the fold-ins
def _served_state(rec, user):
    events = rec.pending_events()
    return (rec.observed_calls, events.users.tolist(), events.items.tolist(),
            events.weights.tolist(), rec.recommend(user).ids.tolist(),
            rec.recommend(user).scores.tolist())


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refused_singular_fold_in_applies_nothing(backend):
    u = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    i = np.array([0, 1, 1, 2, 0, 2, 0, 1])
    v = np.array([1, 2, 3, 4, 5, 1, 2, 3.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model = recfuse.ExplicitALS(factors=4, iterations=3, reg=1e-30, backend=backend,
                                    random_state=0).fit(u, i, v)
    factors = (model.user_factors.copy(), model.item_factors.copy())
    rec = recfuse.Recommender(model)
    before = _served_state(rec, 0)
    with pytest.raises(ValueError) as info:
        rec.observe({"user": [0], "item": [2], "weight": [3.0]})
    message = str(info.value)
    assert "not positive definite" in message and "nothing was applied" in message
    assert "reg" in message  # the advice fits the cause
    assert _served_state(rec, 0) == before
    np.testing.assert_array_equal(model.user_factors, factors[0])
    np.testing.assert_array_equal(model.item_factors, factors[1])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_refused_overflowing_fold_in_applies_nothing(backend):
    model = recfuse.ExplicitALS(factors=1, iterations=0, reg=1e-45, biased=False,
                                backend=backend)
    model.fit([0, 1], [0, 1], [1e17, 1e17], initial_factors=(
        np.ones((2, 1), np.float32), np.full((2, 1), 1e-22, np.float32)))
    rec = recfuse.Recommender(model)
    before = _served_state(rec, 0)
    with pytest.raises(ValueError, match="nothing was applied"):
        rec.observe({"user": [0], "item": [1], "weight": [1e17]})
    assert _served_state(rec, 0) == before


def test_refused_svd_fold_in_applies_nothing():
    rng = np.random.default_rng(0)
    u, i = rng.integers(0, 20, 300), rng.integers(0, 15, 300)
    model = recfuse.SVD(factors=4, epochs=3, random_state=0).fit(u, i, rng.integers(1, 6, 300))
    rec = recfuse.Recommender(model, sgd_lr=1e30)
    before = _served_state(rec, 3)
    with pytest.raises(ValueError, match="nothing was applied"):
        rec.observe({"user": [3], "item": [4], "weight": [5.0]})
    assert _served_state(rec, 3) == before


# ------------------------------------------------------------------------ cupy (device)
@pytest.mark.parametrize("backend", CUPY)
def test_cupy_non_finite_solution_keeps_the_row(backend):
    Y = np.array([[1e-22]], np.float32)
    X = np.full((1, 1), 7.0, np.float32)
    failed, Xb, _ = _sweep(backend, [0], [0], [1e17], 1, 1, Y, X, None, None, 0.0, 1e-45,
                           1e-45)
    assert failed == 1
    np.testing.assert_array_equal(Xb, X)
