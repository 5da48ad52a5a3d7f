"""Adversarial hunt on numerical stability and divergence: every trainer (ALS cg/cholesky in
float32 and float64, ExplicitALS, SVD, SVDpp, BPR, MLPRanker) and the fold-in paths
(``ALS.update_users``, ``Recommender.observe``) under bad hyper-parameters and extreme data,
models holding NaN/inf by hand, and the rating metrics on extreme values.

The contract used here (docstrings of the models, ``recfuse.reference`` and the backends):

- a fit whose trained values hold NaN or inf is refused with a ValueError ("... diverged";
  ``models._common.check_trained``) and the model keeps its earlier fit (each fit says "on
  bad input the model is left as it was"; MLPRanker: "a fit that diverges (NaN or inf
  weights: ValueError) ... keeps the weights"); NumPy's floating-point warnings are not the
  way a diverging fit reports (``_sgd/numpy_backend.py``: an epoch runs with NumPy's errors
  ignored "as the native and Numba kernels run"; ``ranker.py`` rewrote its sigmoid because
  the RuntimeWarning was "an error where warnings are");
- ALS: a Cholesky row system that is not positive definite keeps its previous vector with
  a RuntimeWarning in ``fit`` and is a ValueError in a fold-in ("nothing was applied"); a
  fold-in that overflows (NaN/inf) is refused; ``Recommender.observe`` takes, for ALS, each
  summed weight up to the square root of the dtype's largest value (1.8e19 for float32);
- ``update_users`` recomputes the users' vectors from their rows;
- top-k: a NaN score never qualifies, ties go to the smaller id, padding is -1 / -inf;
- ``rmse`` / ``mae``: finite inputs only (NaN/inf a ValueError), "finite wherever they are".

Tests named ``..._bug`` are strict xfails: they assert the documented (or clearly expected)
behaviour and fail today; the notes are in /work/notes/hunt-numerical-stability-ac.md.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import metrics
from recfuse._als import cpu as als_cpu, numba_backend as als_numba, numpy_backend as als_numpy
from recfuse._als.common import AlsParams, CsrArrays
from recfuse.ranker import MLPRanker
from conftest import backend_params

HOST_ALS = backend_params(("cpu", "numba", "numpy"), family="als")
HOST_SGD = backend_params(("cpu", "numba", "numpy"), family="sgd")
ALS_MODULES = {"cpu": als_cpu, "numba": als_numba, "numpy": als_numpy}
HYPOTHESIS = settings(max_examples=40, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ data


def implicit_matrix(rows=30, cols=20, seed=1) -> sp.csr_matrix:
    matrix = sp.random(rows, cols, density=0.3, format="csr", random_state=seed)
    matrix.data = np.ceil(matrix.data * 5)
    return matrix


def rating_triples(seed=0, n=300):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 30, n), rng.integers(0, 20, n),
            rng.integers(1, 6, n).astype(np.float64))


def warnings_as_errors():
    """A context in which any warning raises (the project's pytest setting, stated here so
    that each test says what it relies on)."""
    context = warnings.catch_warnings()
    context.__enter__()
    warnings.simplefilter("error")
    return context


def snapshot(model) -> list[np.ndarray]:
    """Copies of the arrays that make up a fitted model's state."""
    if isinstance(model, MLPRanker):
        return [w.copy() for w in model.weights + model.biases]
    tables = [model.user_factors, model.item_factors]
    for name in ("user_bias", "item_bias", "implicit_factors"):
        value = getattr(model, name, None)
        if value is not None:
            tables.append(value)
    return [np.array(t, copy=True) for t in tables]


def same_state(before: list[np.ndarray], model) -> bool:
    after = snapshot(model)
    return len(before) == len(after) and all(np.array_equal(a, b, equal_nan=True)
                                             for a, b in zip(before, after))


# ------------------------------------------------- divergence: refused, earlier fit kept

DIVERGING = {  # (model factory, fit arguments, the settings that make it diverge)
    "SVD-lr": (lambda be: recfuse.SVD(factors=4, epochs=5, backend=be, random_state=0),
               "ratings", dict(lr=10.0)),
    "SVD-f64-reg0": (lambda be: recfuse.SVD(factors=4, epochs=5, backend=be, random_state=0,
                                            dtype=np.float64),
                     "ratings", dict(lr=1.0, reg=0.0)),
    "SVDpp-lr": (lambda be: recfuse.SVDpp(factors=4, epochs=5, backend=be, random_state=0),
                 "ratings", dict(lr=10.0)),
    "BPR-lr": (lambda be: recfuse.BPR(factors=4, iterations=5, backend=be, random_state=0),
               "bpr", dict(lr=1e3)),
    "BPR-factors1": (lambda be: recfuse.BPR(factors=1, iterations=5, backend=be,
                                            random_state=0),
                     "bpr", dict(lr=1e3, reg=0.0)),
}


def fit_data(kind, model):
    if kind == "implicit":
        return model.fit(implicit_matrix())
    if kind == "bpr":
        return model.fit(sp.random(40, 100, density=0.2, format="csr", random_state=1))
    return model.fit(*rating_triples())


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_SGD if not p.marks])
@pytest.mark.parametrize("case", sorted(DIVERGING))
def test_diverging_fit_is_refused_and_the_earlier_fit_kept(case, backend):
    make, kind, bad = DIVERGING[case]
    model = fit_data(kind, make(backend))
    before = snapshot(model)
    model.set_params(**bad)
    with pytest.raises(ValueError, match="diverged"):
        fit_data(kind, model)
    assert same_state(before, model)
    # the kept model still answers, finite and sorted
    _, scores = model.recommend(0, k=5, filter_seen=False)
    assert np.isfinite(scores).all() and (np.diff(scores) <= 0).all()


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [dict(alpha=1e20), dict(regularization=1e30),
                                 dict(regularization=1e-320)], ids=str)
def test_als_extreme_settings_fit_finite_or_are_refused(backend, solver, dtype, bad):
    """Either a finite model (Cholesky rows that fail keep their vectors, with the documented
    RuntimeWarning) or the "diverged" ValueError with the earlier fit kept."""
    model = recfuse.ALS(factors=4, iterations=3, solver=solver, dtype=dtype, backend=backend,
                        random_state=0).fit(implicit_matrix())
    before = snapshot(model)
    model.set_params(**bad)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*row systems were not positive definite",
                                RuntimeWarning)
        try:
            model.fit(implicit_matrix())
        except ValueError as error:
            # the cg solver refuses confidences its steps would overflow, up front
            assert ("diverged" in str(error) or "the cg solver takes" in str(error)) and \
                same_state(before, model)
            return
    assert all(np.isfinite(t).all() for t in snapshot(model))
    _, scores = model.recommend(0, k=5, filter_seen=False)
    assert (scores[:-1] >= scores[1:]).all()


def test_mlp_ranker_diverging_fit_is_refused_and_the_weights_kept():
    rng = np.random.default_rng(0)
    seen = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    U, V = rng.standard_normal((30, 4)), rng.standard_normal((20, 4))
    ranker = MLPRanker(hidden=(8,), epochs=2, random_state=0).fit(seen, U, V)
    before, losses = snapshot(ranker), list(ranker.losses)
    ranker.set_params(learning_rate=1e300)
    with warnings.catch_warnings():  # NumPy's overflow warnings: see the strict xfail below
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ValueError, match="diverged"):
            ranker.fit(seen, U, V)
    assert same_state(before, ranker) and ranker.losses == losses


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cholesky_with_huge_regularization_solves_to_zero(backend, dtype):
    # λ = 1e30 is finite in both dtypes: every exact solution is ~ b / λ, which is 0 or tiny
    model = recfuse.ALS(factors=4, iterations=3, solver="cholesky", regularization=1e30,
                        dtype=dtype, backend=backend, random_state=0).fit(implicit_matrix())
    for table in (model.user_factors, model.item_factors):
        assert np.isfinite(table).all() and np.abs(table).max() < 1e-20


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_singular_systems_warn_and_keep_finite_vectors(backend, dtype):
    # regularization 0 with fewer items (5) than factors (8): every row system is singular
    matrix = sp.random(40, 5, density=0.5, format="csr", random_state=1)
    matrix.data = np.ceil(matrix.data * 5)
    with pytest.warns(RuntimeWarning, match="use regularization > 0"):
        model = recfuse.ALS(factors=8, iterations=2, solver="cholesky", regularization=0.0,
                            dtype=dtype, backend=backend, random_state=0).fit(matrix)
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()
    ids, scores = model.recommend(0, k=5, filter_seen=False)
    assert (np.diff(scores) <= 0).all() and sorted(ids.tolist()) == list(range(5))


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_SGD if not p.marks])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_explicit_als_extreme_regularization_stays_finite(backend, dtype):
    users, items, ratings = rating_triples()
    for reg in (1e-300, 1e30):
        model = recfuse.ExplicitALS(factors=4, iterations=3, reg=reg, dtype=dtype,
                                    backend=backend, random_state=0).fit(users, items, ratings)
        assert all(np.isfinite(t).all() for t in snapshot(model))
        assert np.isfinite(model.predict(users, items)).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rating_models_on_all_equal_and_single_ratings(dtype):
    users, items, _ = rating_triples()
    for cls, kw in ((recfuse.SVD, dict(epochs=5)), (recfuse.SVDpp, dict(epochs=5)),
                    (recfuse.ExplicitALS, dict(iterations=3))):
        model = cls(factors=1, dtype=dtype, random_state=0, **kw)
        model.fit(users, items, np.full(users.size, 4.0))
        assert np.allclose(model.predict(users[:20], items[:20]), 4.0)
        model.fit([0], [0], [3.0])
        assert model.predict(0, 0) == pytest.approx(3.0, abs=0.05)
        ids, scores = model.recommend(0, k=3, filter_seen=False)
        assert ids.tolist() == [0, -1, -1] and np.isneginf(scores[1:]).all()


def test_explicit_als_refuses_ratings_whose_equations_overflow_float32():
    users, items, ratings = rating_triples()
    model = recfuse.ExplicitALS(factors=4, iterations=2, random_state=0)
    with pytest.raises(ValueError, match="ratings are too large for dtype=float32"):
        model.fit(users, items, ratings * 1e30)
    assert model.user_factors is None  # nothing fitted by the refused call


# ------------------------------------------- float32 against float64, reference residuals


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_als_float32_and_float64_fits_agree(backend, solver):
    # λ = 1 keeps every row system's condition number below ~ (λ + ‖Y‖²·max c) / λ ~ 1e2 on
    # these data; 3 iterations of rounding at float32's 6e-8 relative each, amplified by that,
    # stay far below 1e-4 (measured ~7e-7).
    rng = np.random.default_rng(0)
    matrix = implicit_matrix(60, 40)
    start = (rng.standard_normal((60, 8)) * 0.1, rng.standard_normal((40, 8)) * 0.1)
    fits = {}
    for dtype in (np.float32, np.float64):
        model = recfuse.ALS(factors=8, iterations=3, solver=solver, regularization=1.0,
                            dtype=dtype, backend=backend, random_state=0)
        model.fit(matrix, initial_factors=start)
        fits[dtype] = [t.astype(np.float64) for t in (model.user_factors, model.item_factors)]
    for single, double in zip(fits[np.float32], fits[np.float64]):
        assert np.abs(single - double).max() <= 1e-4 * np.abs(double).max()


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_SGD if not p.marks])
@pytest.mark.parametrize("cls,kw", [(recfuse.ExplicitALS, dict(iterations=3, reg=0.1)),
                                    (recfuse.SVD, dict(epochs=3, grid=1, shuffle=False)),
                                    (recfuse.SVDpp, dict(epochs=3, shuffle=False))],
                         ids=["ExplicitALS", "SVD", "SVDpp"])
def test_rating_models_float32_and_float64_agree(backend, cls, kw):
    # ratings 1..5, 3 epochs / iterations: predictions are O(5); float32 rounding (6e-8
    # relative per operation, a few hundred operations deep) stays below 1e-4 (measured 1e-6)
    users, items, ratings = rating_triples(1)
    predictions = [cls(factors=4, dtype=dtype, backend=backend, random_state=0, **kw)
                   .fit(users, items, ratings).predict(users, items)
                   for dtype in (np.float32, np.float64)]
    assert np.abs(predictions[0] - predictions[1]).max() <= 1e-4


@st.composite
def ill_conditioned_systems(draw):
    """A near-collinear item table (rank one plus noise of 1e-6..1e-1), a few rows of counts
    spanning four decades, a regularization 1e-4..10 and alpha 0.1..1000."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    k = draw(st.sampled_from([4, 8, 16, 32, 64]))
    n_items = draw(st.integers(2, 60))
    noise = 10.0 ** draw(st.floats(-6, -1))
    Y = np.outer(rng.standard_normal(n_items), rng.standard_normal(k)) + \
        noise * rng.standard_normal((n_items, k))
    rows = draw(st.integers(1, 12))
    R = sp.random(rows, n_items, density=draw(st.floats(0.05, 0.5)), format="csr",
                  random_state=seed)
    R.data = np.ceil(R.data * 10.0 ** draw(st.floats(0, 4)))
    return Y, R, 10.0 ** draw(st.floats(-4, 1)), 10.0 ** draw(st.floats(-1, 3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@HYPOTHESIS
@given(case=ill_conditioned_systems())
def test_cholesky_half_sweep_has_a_small_backward_error(case, dtype):
    """Each row the native Cholesky solved (every backend, Woodbury path included) has a
    relative residual ‖Ax − b‖ / (‖A‖‖x‖ + ‖b‖) of a few (k + items + nnz)·eps of the dtype,
    however badly conditioned A is (a backward-stable solve of the system as summed in the
    dtype); rows it could not solve keep their start, and they are the count it returns."""
    Y, R, reg, alpha = case
    Y = Y.astype(dtype)
    Y64, k = Y.astype(np.float64), Y.shape[1]
    G = Y64.T @ Y64
    params = AlsParams(reg, alpha, "linear", "cholesky", 3, 1)
    rows = CsrArrays.from_scipy(R, dtype)
    sentinel = 12345.0
    for name, module in ALS_MODULES.items():
        X = np.full((R.shape[0], k), sentinel, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            failed = module.half_sweep(rows, Y, X, params)
        assert np.isfinite(X).all(), name
        kept = (X == sentinel).all(axis=1)
        assert kept.sum() == failed, name
        for u in np.flatnonzero(~kept):
            cols = R.indices[R.indptr[u]:R.indptr[u + 1]]
            if cols.size == 0:  # b = 0: the exact solution 0
                assert not X[u].any(), name
                continue
            c = 1 + alpha * R.data[R.indptr[u]:R.indptr[u + 1]]
            A = G + reg * np.eye(k) + (Y64[cols].T * (c - 1)) @ Y64[cols]
            b = Y64[cols].T @ c
            x = X[u].astype(np.float64)
            residual = np.linalg.norm(A @ x - b) / (np.linalg.norm(A, 2) * np.linalg.norm(x)
                                                    + np.linalg.norm(b))
            # the dtype's own sums (YᵀY over every item, the row's entries) are part of it:
            # all backends, numba's and NumPy's included, reach ~1.3 (k + items + nnz) eps
            bound = 4 * (k + Y.shape[0] + cols.size) * np.finfo(dtype).eps
            assert residual <= bound, (name, u, residual)


# ------------------------------------------------------- models holding NaN/inf by hand


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
def test_recommend_with_nan_and_inf_item_factors(backend):
    model = recfuse.ALS(factors=4, iterations=2, backend=backend,
                        random_state=0).fit(implicit_matrix(10, 8))
    Y = model.item_factors.copy()
    Y[2] = np.nan  # every score NaN: never recommended
    Y[5, 0] = np.inf  # +inf or -inf (or NaN) by the user's sign
    model.item_factors = Y
    X = model.user_factors
    for user in range(X.shape[0]):
        ids, scores = model.recommend(user, k=8, filter_seen=False)
        again = model.recommend(user, k=8, filter_seen=False)
        assert np.array_equal(ids, again[0]) and np.array_equal(scores, again[1])
        valid = ids >= 0
        assert 2 not in ids.tolist()
        assert not np.isnan(scores).any() and (scores[:-1] >= scores[1:]).all()
        assert np.isneginf(scores[~valid]).all() and valid[:valid.sum()].all()
        # ties (e.g. zero vectors) in id order
        for a, b in zip(range(valid.sum() - 1), range(1, valid.sum())):
            if scores[a] == scores[b]:
                assert ids[a] < ids[b]
        # item 5's score is +inf where x_u0 > 0 (first), -inf or NaN (0 * inf) elsewhere
        assert (5 in ids.tolist()) == (X[user, 0] > 0)
        if X[user, 0] > 0:
            assert ids[0] == 5 and scores[0] == np.inf


@pytest.mark.parametrize("backend", [p.values[0] for p in HOST_ALS if not p.marks])
def test_nan_user_vector_is_refused_and_fold_in_of_nan_table_changes_nothing(backend,
                                                                           tmp_path):
    matrix = implicit_matrix(10, 8)
    model = recfuse.ALS(factors=4, iterations=2, backend=backend, random_state=0).fit(matrix)
    X = model.user_factors.copy()
    X[1] = np.nan
    model.user_factors = X
    with pytest.raises(ValueError, match="finite"):
        model.recommend(1, k=3)
    Y = model.item_factors.copy()
    Y[0] = np.inf
    model.item_factors = Y
    state = model._state
    with pytest.raises(ValueError, match="diverged"):
        model.update_users([3], matrix[3])
    assert model._state is state
    with pytest.raises(ValueError, match="finite"):
        model.save(tmp_path / "model.npz")
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_bpr_with_a_nan_bias_is_refused_with_the_name():
    model = recfuse.BPR(factors=4, iterations=2, random_state=0).fit(
        sp.random(20, 30, density=0.2, format="csr", random_state=0))
    bias = model.item_bias.copy()
    bias[4] = np.nan
    model.item_bias = bias
    with pytest.raises(ValueError, match="item_bias"):
        model.recommend(0, k=5)


# ---------------------------------------------------------------- fold-in (Recommender)


@pytest.mark.parametrize("kind", ["SVD", "SVDpp", "BPR"])
def test_observe_refuses_a_diverging_sgd_step_and_applies_nothing(kind):
    if kind == "BPR":
        model = recfuse.BPR(factors=4, iterations=3, random_state=0).fit(implicit_matrix())
        weights = [1.0, 1.0]
    else:
        model = getattr(recfuse, kind)(factors=4, epochs=3, random_state=0).fit(
            *rating_triples())
        weights = [5.0, 5.0]
    rec = recfuse.Recommender(model, sgd_lr=1e30)
    before = rec.recommend(1)
    with pytest.raises(ValueError, match="nothing was applied"):
        rec.observe({"user": [1, 1], "item": [2, 3], "weight": weights})
    after = rec.recommend(1)
    assert np.array_equal(before.ids, after.ids) and np.array_equal(before.scores, after.scores)
    assert rec.pending_events().users.size == 0


def test_observe_refuses_als_weights_past_the_documented_bound():
    rec = recfuse.Recommender(recfuse.ALS(factors=4, iterations=2, random_state=0)
                              .fit(implicit_matrix()))
    with pytest.raises(ValueError, match="1.84e\\+19|beyond"):
        rec.observe({"user": [1], "item": [2], "weight": [1e20]})
    assert rec.pending_events().users.size == 0


# ---------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rating_metrics_refuse_nan_and_inf_predictions(bad):
    for metric in (metrics.rmse, metrics.mae):
        with pytest.raises(ValueError, match="finite"):
            metric([1.0, 2.0], [1.0, bad])
        with pytest.raises(ValueError, match="finite"):
            metric([bad, 2.0], [1.0, 2.0])


# 0, or |x| in [1e-100, 1e141): the errors' squares neither underflow nor overflow
ORDINARY = st.one_of(st.just(0.0), st.builds(lambda sign, mantissa, exponent:
                                             sign * mantissa * 10.0 ** exponent,
                                             st.sampled_from([-1.0, 1.0]), st.floats(1, 10),
                                             st.integers(-100, 140)))


@HYPOTHESIS
@given(st.lists(st.tuples(ORDINARY, ORDINARY), min_size=1, max_size=30))
def test_rmse_is_at_least_mae_at_ordinary_magnitudes(pairs):
    truth, predicted = zip(*pairs)
    rmse, mae = metrics.rmse(truth, predicted), metrics.mae(truth, predicted)
    assert np.isfinite(rmse) and np.isfinite(mae)
    assert rmse >= mae * (1 - 1e-12)


def test_rmse_stays_finite_for_errors_near_float64s_largest():
    assert metrics.rmse([1e200, -1e200], [-1e200, 1e200]) == pytest.approx(2e200)
    assert metrics.mae([1e300], [-1e300]) == pytest.approx(2e300)


# =============================================================================== bugs


def test_als_cg_fit_does_not_silently_keep_the_random_start_bug():
    # c = 1 + 1e16 is finite in float32, c² = 1e32 too, but a CG step's p·Ap (~c³) is not:
    # the step became 0 and user 0 and item 0 kept their random start without a word. The
    # cg solver now refuses such confidences up front, naming the way out.
    matrix = implicit_matrix().tolil()
    matrix[0, 0] = 1e16
    matrix = matrix.tocsr()
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(implicit_matrix())
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"confidence \(1 \+ alpha·r\) of 1e\+16, beyond the "
                                         r"6.98e\+12 the cg solver takes in float32.*"
                                         r"solver='cholesky'"):
        model.fit(matrix)
    assert same_state(before, model)
    # the cholesky solver takes them (c² is finite), and says which rows it could not solve
    # in float32 (the systems are too badly conditioned for it)
    with pytest.warns(RuntimeWarning, match="row systems were not positive definite"):
        recfuse.ALS(factors=4, iterations=3, solver="cholesky", random_state=0).fit(matrix)


@pytest.mark.parametrize("dtype,value", [(np.float32, 1e16), (np.float64, 1e120)])
def test_als_cg_update_users_recomputes_the_vector_bug(dtype, value):
    model = recfuse.ALS(factors=4, iterations=3, dtype=dtype, random_state=0)
    model.fit(implicit_matrix())
    old = model.user_factors[0].copy()
    row = sp.csr_matrix(np.array([[value, 0, value] + [0] * 17]))  # not user 0's training row
    try:
        new = model.update_users([0], row)[0]
    except ValueError:
        assert np.array_equal(model.user_factors[0], old)  # refused: nothing applied
        return
    assert not np.array_equal(new, old)


def test_observe_als_cg_weight_within_bound_updates_the_user_bug():
    model = recfuse.ALS(factors=4, iterations=3, random_state=0).fit(implicit_matrix())
    rec = recfuse.Recommender(model, k=20)
    user = 2
    before = rec.recommend(user, k=20)
    try:
        rec.observe({"user": [user, user], "item": [10, 11], "weight": [1e16, 1e16]})
    except ValueError:
        return  # refused with nothing applied is acceptable
    after = rec.recommend(user, k=20)
    old = dict(zip(before.ids.tolist(), before.scores.tolist()))
    new = dict(zip(after.ids.tolist(), after.scores.tolist()))
    common = [i for i in new if i in old and i >= 0]
    # the user's vector was re-solved with two items of confidence 1e16: scores change
    assert any(old[i] != new[i] for i in common)


@pytest.mark.parametrize("dtype,bad", [(np.float64, dict(reg=1e30)),
                                       (np.float64, dict(lr=1e300)),
                                       (np.float32, dict(reg=1e30))])
def test_svdpp_numpy_backend_divergence_is_a_value_error_bug(dtype, bad):
    model = recfuse.SVDpp(factors=4, epochs=3, backend="numpy", dtype=dtype, random_state=0)
    model.fit(*rating_triples())
    before = snapshot(model)
    model.set_params(**bad)
    with pytest.raises(ValueError, match="diverged"):
        model.fit(*rating_triples())
    assert same_state(before, model)


# Hyper-parameters beyond float32's range on a float32 model: the cpu backend gives a clear
# result (a "diverged" ValueError, or the zero solution for ExplicitALS); the numba backend
# first casts them with NumPy (dtype.type(value)), whose "overflow encountered in cast"
# RuntimeWarning is an exception under -W error or the project's pytest settings. Expected:
# a ValueError (e.g. "diverged", or a refusal naming the parameter) or a finite fit.
BEYOND_FLOAT32 = {
    "ALS-alpha": (lambda be: recfuse.ALS(factors=4, iterations=2, alpha=1e300, backend=be,
                                         random_state=0), "implicit"),
    "ALS-reg": (lambda be: recfuse.ALS(factors=4, iterations=2, regularization=1e300,
                                       backend=be, random_state=0), "implicit"),
    "SVD-lr": (lambda be: recfuse.SVD(factors=4, epochs=2, lr=1e300, backend=be,
                                      random_state=0), "ratings"),
    "SVDpp-reg": (lambda be: recfuse.SVDpp(factors=4, epochs=2, reg=1e300, backend=be,
                                           random_state=0), "ratings"),
    "BPR-lr": (lambda be: recfuse.BPR(factors=4, iterations=2, lr=1e300, backend=be,
                                      random_state=0), "bpr"),
    "ExplicitALS-reg": (lambda be: recfuse.ExplicitALS(factors=4, iterations=2, reg=1e300,
                                                       backend=be, random_state=0),
                        "ratings"),
}


def _beyond_float32_fit(case, backend):
    make, kind = BEYOND_FLOAT32[case]
    context = warnings_as_errors()
    try:
        try:
            model = fit_data(kind, make(backend))
        except ValueError:
            return
        assert all(np.isfinite(t).all() for t in snapshot(model))
    finally:
        context.__exit__(None, None, None)


@pytest.mark.parametrize("case", sorted(BEYOND_FLOAT32))
def test_hyper_parameters_beyond_float32_on_cpu(case):
    _beyond_float32_fit(case, "cpu")


@pytest.mark.parametrize("case", sorted(BEYOND_FLOAT32))
def test_hyper_parameters_beyond_float32_on_numba_bug(case):
    pytest.importorskip("numba")
    _beyond_float32_fit(case, "numba")


@pytest.mark.parametrize("activation,learning_rate,scale", [
    ("relu", 1e30, 1.0),   # diverges: must be the ValueError
    ("gelu", 1e-3, 1e19),  # huge but finite inputs: fits or a ValueError, no NumPy warning
    ("relu", 1e-3, 1e30),
])
def test_mlp_ranker_overflow_is_reported_by_the_ranker_bug(activation, learning_rate, scale):
    rng = np.random.default_rng(0)
    seen = sp.random(30, 20, density=0.2, format="csr", random_state=0)
    U, V = rng.standard_normal((30, 4)) * scale, rng.standard_normal((20, 4)) * scale
    ranker = MLPRanker(hidden=(8,), activation=activation, epochs=2,
                       learning_rate=learning_rate, random_state=0)
    context = warnings_as_errors()
    try:
        try:
            ranker.fit(seen, U, V)
        except ValueError:
            assert not ranker.weights  # refused: still unfitted
            return
        assert all(np.isfinite(w).all() for w in ranker.weights)
    finally:
        context.__exit__(None, None, None)


def test_rmse_of_tiny_errors_does_not_underflow_bug():
    truth, predicted = [1e-200, 2e-200], [0.0, 0.0]
    rmse, mae = metrics.rmse(truth, predicted), metrics.mae(truth, predicted)
    assert rmse >= mae
    assert rmse == pytest.approx(np.sqrt(2.5) * 1e-200, rel=1e-12)


def test_failed_systems_warning_names_regularization_bug():
    # 1e-30: near-singular YᵀY + λI with 32 factors and 5 items (nothing overflows: every
    # sum is below 1e3); the advice names regularization and no float64 for a float64 model
    matrix = sp.random(40, 5, density=0.5, format="csr", random_state=1)
    matrix.data = np.ceil(matrix.data * 5)
    with pytest.warns(RuntimeWarning, match="not positive definite") as caught:
        recfuse.ALS(factors=32, iterations=2, solver="cholesky", regularization=1e-30,
                    dtype=np.float64, backend="cpu", random_state=0).fit(matrix)
    message = " ".join(str(w.message) for w in caught)
    assert "raise regularization" in message and "dtype=np.float64" not in message


def test_a_setting_the_dtype_cannot_hold_is_refused_by_name():
    # regularization=1e300 is inf in float32: every system failed, and the fit returned its
    # random start with only a warning; refused now where the settings are checked
    with pytest.raises(ValueError, match="regularization must be at most float32's largest "
                                         "value 3.4e"):
        recfuse.ALS(regularization=1e300)
    model = recfuse.ALS(regularization=1e300, dtype=np.float64)  # float64 holds it
    with pytest.raises(ValueError, match="regularization must be at most float32"):
        model.set_params(dtype=np.float32)
    assert model.dtype == np.float64


def test_float64_fold_in_refusal_does_not_advise_float64_bug():
    model = recfuse.ALS(factors=4, iterations=3, solver="cholesky", dtype=np.float64,
                        random_state=0).fit(implicit_matrix())
    row = sp.csr_matrix(np.array([[1e19, 0, 1e19] + [0] * 17]))  # c² = 1e38: no overflow
    with pytest.raises(ValueError, match="diverged") as caught:
        model.update_users([0], row)
    assert "dtype=np.float64" not in str(caught.value)
