"""Adversarial hunt over the factor models' fit and update APIs (ALS, BPR, SVD, SVDpp,
ExplicitALS): the input forms fit takes or refuses, degenerate shapes, odd parameter values,
seeds and backends against the NumPy reference, refits, the estimator protocol (get_params,
set_params, sklearn.base.clone, copy.deepcopy, pickle), fold-ins, and save/load right after
odd fits. Each bug the hunt found is fixed; its test stays as a regression."""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

import recfuse
from recfuse import reference

BACKENDS = [info.name for info in recfuse.backends() if info.available
            and info.name in ("cpu", "numba", "numpy")]
WIDTHS = [1, 3, 17, 100, 129]  # 1 and non-multiples of every SIMD width


# ---------------------------------------------------------------- data and helpers


def implicit(rows=12, cols=9, density=0.35, seed=0, dtype=np.float32):
    """A small users x items CSR matrix of positive values (every user and item but a few
    with entries)."""
    return sp.random(rows, cols, density=density, format="csr", random_state=seed,
                     dtype=dtype, data_rvs=lambda n: np.random.default_rng(seed).uniform(
                         0.5, 3.0, n))


def ratings(n_users=12, n_items=9, n=70, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, n_users, n), rng.integers(0, n_items, n),
            rng.integers(1, 6, n).astype(np.float64))


def make(name, **kwargs):
    """A small model of ``name`` with two training passes and a seed."""
    base = {"ALS": (recfuse.ALS, dict(factors=3, iterations=2)),
            "BPR": (recfuse.BPR, dict(factors=3, iterations=2, lr=0.05)),
            "SVD": (recfuse.SVD, dict(factors=3, epochs=2)),
            "SVDpp": (recfuse.SVDpp, dict(factors=3, epochs=2)),
            "ExplicitALS": (recfuse.ExplicitALS, dict(factors=3, iterations=2))}[name]
    return base[0](**{**base[1], "random_state": 0, **kwargs})


IMPLICIT, RATING = ("ALS", "BPR"), ("SVD", "SVDpp", "ExplicitALS")
ALL = IMPLICIT + RATING


def train(model, seed=0, **shape):
    """Fit ``model`` on the data of its kind."""
    if isinstance(model, (recfuse.ALS, recfuse.BPR)):
        return model.fit(implicit(seed=seed, **shape))
    return model.fit(*ratings(seed=seed, **shape))


def tables(model):
    """Copies of everything fit learns that the model exposes."""
    names = ["user_factors", "item_factors", "item_bias", "user_bias", "implicit_factors",
             "global_mean"]
    return {name: copy.deepcopy(getattr(model, name)) for name in names
            if getattr(model, name, None) is not None}


def assert_same_tables(model, before):
    now = tables(model)
    assert set(now) == set(before)
    for name, value in before.items():
        np.testing.assert_array_equal(now[name], value, err_msg=name)


def seen_of(model):
    """The seen matrix an implicit model kept from training."""
    return model._state.user_items if isinstance(model, recfuse.ALS) else model._seen


# ---------------------------------------------------------------- input forms (implicit)


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_fit_takes_csr_arrays_and_every_value_and_index_dtype_alike(name):
    matrix = implicit()
    want = make(name).fit(matrix)
    same = [sp.csr_array(matrix),
            sp.csr_matrix((matrix.data.astype(np.float64), matrix.indices.astype(np.int64),
                           matrix.indptr.astype(np.int64)), shape=matrix.shape),
            matrix.copy()]
    for other in same:
        got = make(name).fit(other)
        np.testing.assert_array_equal(got.user_factors, want.user_factors)
        np.testing.assert_array_equal(got.item_factors, want.item_factors)
    # integer, unsigned and bool values are the same numbers in the model's dtype
    ones = matrix.copy()
    ones.data[:] = 1
    want = make(name).fit(ones)
    for dtype in (bool, np.uint8, np.int16, np.int64, np.float64):
        got = make(name).fit(ones.astype(dtype))
        np.testing.assert_array_equal(got.user_factors, want.user_factors, err_msg=str(dtype))


@pytest.mark.parametrize("name", IMPLICIT)
def test_implicit_fit_sums_duplicates_and_sorts_unsorted_indices(name):
    """A non-canonical CSR matrix (repeated (u, i) entries, unsorted columns) trains as its
    canonical form, as reference.canonical_csr reads it."""
    matrix = implicit(seed=3)
    coo = matrix.tocoo()
    half = (coo.data / 2).astype(np.float32)
    # every entry stored twice as two halves, each row's entries in reverse column order
    order = np.lexsort((-coo.col, coo.row))
    rows = np.repeat(coo.row[order], 2)
    cols = np.repeat(coo.col[order], 2)
    data = np.repeat(half[order], 2)
    indptr = np.zeros(matrix.shape[0] + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=matrix.shape[0]), out=indptr[1:])
    messy = sp.csr_matrix((data, cols, indptr), shape=matrix.shape)
    assert not messy.has_canonical_format
    canonical = reference.canonical_csr(messy, np.float32)
    want = make(name).fit(canonical)
    got = make(name).fit(messy)
    np.testing.assert_array_equal(got.user_factors, want.user_factors)
    np.testing.assert_array_equal(seen_of(got).toarray(), canonical.toarray())


@pytest.mark.parametrize("name", IMPLICIT)
@pytest.mark.parametrize("bad, error, match", [
    (lambda m: m.tocsc(), TypeError, "user_items must be in CSR format, got CSC"),
    (lambda m: m.tocoo(), TypeError, "user_items must be in CSR format, got COO"),
    (lambda m: sp.coo_array(m), TypeError, "user_items must be in CSR format"),
    (lambda m: m.toarray(), TypeError, "user_items must be a scipy.sparse CSR matrix"),
    (lambda m: None, TypeError, "user_items must be a scipy.sparse CSR matrix"),
    (lambda m: m.astype(np.complex64), TypeError, "user_items must hold real numbers"),
    (lambda m: _with(m, np.nan), ValueError, "user_items must hold finite values"),
    (lambda m: _with(m, -np.inf), ValueError, "user_items must hold finite values"),
    (lambda m: _with(m, 1e39), ValueError, "beyond its range"),
])
def test_implicit_fit_refuses_bad_matrices_by_name_and_keeps_the_fit(name, bad, error, match):
    model = make(name).fit(implicit(seed=1))
    before, used = tables(model), model.backend_used
    with pytest.raises(error, match=match):
        model.fit(bad(implicit()))
    assert_same_tables(model, before)
    assert model.backend_used == used


def _with(matrix, value):
    out = matrix.astype(np.float64)
    out.data[0] = value
    return out


def test_als_linear_refuses_negative_values_and_raw_takes_them():
    matrix = implicit()
    negative = matrix.copy()
    negative.data[1] = -2.0
    model = make("ALS").fit(matrix)
    before = tables(model)
    with pytest.raises(ValueError, match="user_items must hold non-negative values"):
        model.fit(negative)
    assert_same_tables(model, before)
    raw = make("ALS", confidence="raw").fit(negative)
    assert np.isfinite(raw.user_factors).all()
    # BPR reads a negative value as "seen, not positive": trained, never a positive pair
    assert make("BPR").fit(negative).user_factors.shape == (12, 3)


@pytest.mark.parametrize("name", IMPLICIT)
@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 0), (1, 1), (3, 2)])
@pytest.mark.parametrize("factors", [1, 17])
def test_implicit_degenerate_shapes_fit_save_and_load(name, shape, factors, tmp_path):
    """0 x n, n x 0, 0 x 0 and all-zero matrices fit (rows without a positive value: ALS's
    vectors are exactly zero) and survive a save/load."""
    matrix = sp.csr_matrix(shape, dtype=np.float32)
    model = make(name, factors=factors).fit(matrix)
    assert model.user_factors.shape == (shape[0], factors)
    assert model.item_factors.shape == (shape[1], factors)
    if name == "ALS":
        assert not model.user_factors.any() and not model.item_factors.any()
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = recfuse.load(path)
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, model.item_factors)
    if shape[0]:
        ids, scores = loaded.recommend(0, k=3)
        assert ids.shape == (3,)


@pytest.mark.parametrize("name", IMPLICIT)
def test_a_one_by_one_matrix_and_explicit_zeros(name):
    one = make(name, factors=5).fit(sp.csr_matrix(np.ones((1, 1), np.float32)))
    ids, scores = one.recommend(0, k=2)  # the only item is seen
    assert ids.tolist() == [-1, -1] and np.isneginf(scores).all()
    zeros = implicit()
    zeros.data[::2] = 0  # stored zeros: seen, never positive
    model = make(name).fit(zeros)
    seen = seen_of(model)
    assert seen.nnz == zeros.nnz  # a stored zero stays seen (filtered by recommend)
    if name == "ALS":
        positive = (zeros > 0).astype(np.float32)
        empty_users = np.diff(positive.indptr) == 0
        assert not model.user_factors[empty_users].any()


# ---------------------------------------------------------------- input forms (ratings)


@pytest.mark.parametrize("name", RATING)
def test_rating_fit_takes_every_sparse_format_and_array_kind_alike(name):
    users, items, values = ratings()
    matrix = sp.csr_matrix((values, (users, items)), shape=(12, 9))
    matrix.sum_duplicates()
    coo = matrix.tocoo()
    want = make(name).fit(coo.row, coo.col, coo.data)
    for other in (matrix, sp.csr_array(matrix), matrix.tocsc(), sp.csc_array(matrix),
                  matrix.tocoo(), matrix.todok(), matrix.tolil()):
        got = make(name).fit(other)
        np.testing.assert_array_equal(got.user_factors, want.user_factors,
                                      err_msg=type(other).__name__)
    got = make(name).fit(coo.row.astype(np.uint16), coo.col.tolist(),
                         coo.data.astype(np.float32))
    np.testing.assert_array_equal(got.user_factors, want.user_factors)


@pytest.mark.parametrize("name", RATING)
@pytest.mark.parametrize("args, kwargs, error, match", [
    (([], [], []), {}, ValueError, "at least one rating"),
    ((sp.csr_matrix((0, 4)),), {}, ValueError, "at least one rating"),
    ((sp.csr_matrix((3, 3)),), {}, ValueError, "at least one rating"),
    ((np.ones((3, 3)),), {}, TypeError, "a dense matrix is not read as ratings"),
    (([0, 1], [0, 1], [1.0, np.nan]), {}, ValueError, "ratings must hold finite values"),
    (([0, 1], [0, 1], [1.0, np.inf]), {}, ValueError, "ratings must hold finite values"),
    (([0, 1], [0, 1], [1.0, 1e39]), {}, ValueError, "ratings must hold finite values"),
    (([0, -1], [0, 1], [1.0, 2.0]), {}, ValueError, "users must be >= 0"),
    (([0, 1], [0.0, 1.0], [1.0, 2.0]), {}, TypeError, "items must hold integers"),
    (([0, 1], [0, 1], [1.0]), {}, ValueError, "the same length"),
    (([0, 1], [0, 1], ["a", "b"]), {}, TypeError, "ratings must hold real numbers"),
    (([0, 1], [0, 1], [1.0, 2.0]), dict(n_users=1), ValueError, "n_users must be >= 2"),
    (([0, 1], [0, 1], [1.0, 2.0]), dict(rating_scale=(2, 5)), ValueError, "rating_scale"),
    (([0, 1], [0, 1], [1.0, 2.0]), dict(callback=3), TypeError, "callback must be callable"),
    (([0, 1], [0, 1], [1.0, 2.0]), dict(show_progress="yes"), TypeError, "show_progress"),
])
def test_rating_fit_refuses_bad_input_by_name_and_keeps_the_fit(name, args, kwargs, error,
                                                                  match):
    model = train(make(name))
    before, used = tables(model), model.backend_used
    with pytest.raises(error, match=match):
        model.fit(*args, **kwargs)
    assert_same_tables(model, before)
    assert model.backend_used == used


@pytest.mark.parametrize("name", RATING)
def test_rating_odd_fits_save_and_load(name, tmp_path):
    """One rating; more declared ids than rated (unknown users and items); all ratings equal
    (a rating scale of one value); each saves, loads and predicts the same."""
    cases = [(([0], [0], [3.0]), {}), (([1], [2], [4.0]), dict(n_users=5, n_items=6)),
             (([2, 2, 0], [1, 1, 0], [3.0, 3.0, 3.0]), {})]
    for args, kwargs in cases:
        model = make(name, factors=1).fit(*args, **kwargs)
        path = tmp_path / "model.npz"
        model.save(path)
        for mmap in (False, True):
            loaded = recfuse.load(path, mmap=mmap)
            users, items = [0, 1, 4, 7], [0, 2, 5, 9]
            np.testing.assert_array_equal(loaded.predict(users, items),
                                          model.predict(users, items))
            assert loaded.rating_scale == model.rating_scale


# ---------------------------------------------------------------- parameters


@pytest.mark.parametrize("name, kwargs, error, match", [
    ("ALS", dict(factors=0), ValueError, "factors must be >= 1"),
    ("ALS", dict(factors=3.0), TypeError, "factors must be an integer"),
    ("ALS", dict(regularization=-0.1), ValueError, "regularization must be >= 0"),
    ("ALS", dict(regularization=np.nan), ValueError, "regularization must be finite"),
    ("ALS", dict(alpha=-1.0), ValueError, "alpha must be >= 0"),
    ("ALS", dict(iterations=-1), ValueError, "iterations must be >= 0"),
    ("ALS", dict(num_threads=-1), ValueError, "num_threads must be >= 0"),
    ("ALS", dict(random_state=-1), ValueError, "random_state must be >= 0"),
    ("ALS", dict(random_state=1.5), TypeError, "random_state must be an integer"),
    ("BPR", dict(lr=0.0), ValueError, "lr must be > 0"),
    ("BPR", dict(lr=-0.1), ValueError, "lr must be > 0"),
    ("BPR", dict(lr=np.nan), ValueError, "lr must be finite"),
    ("BPR", dict(reg=-1e-9), ValueError, "reg must be >= 0"),
    ("BPR", dict(max_tries=0), ValueError, "max_tries must be >= 1"),
    ("SVD", dict(lr=0.0), ValueError, "lr must be > 0"),
    ("SVD", dict(lr=float("inf")), ValueError, "lr must be finite"),
    ("SVD", dict(reg=-0.5), ValueError, "reg must be >= 0"),
    ("SVD", dict(lr_bu=-1.0), ValueError, "lr_bu must be > 0"),
    ("SVD", dict(epochs=True), TypeError, "epochs must be an integer"),
    ("SVDpp", dict(reg_yj=np.nan), ValueError, "reg_yj must be finite"),
    ("ExplicitALS", dict(reg=0.0), ValueError, "reg must be > 0"),
    ("ExplicitALS", dict(init_std=-1.0), ValueError, "init_std must be >= 0"),
    ("ExplicitALS", dict(biased=1), TypeError, "biased must be a bool"),
])
def test_bad_settings_are_refused_by_name_in_constructor_and_set_params(name, kwargs, error,
                                                                       match):
    with pytest.raises(error, match=match):
        make(name, **kwargs)
    model = train(make(name))
    before, params = tables(model), model.get_params()
    with pytest.raises(error, match=match):
        model.set_params(**kwargs)
    assert model.get_params() == params
    assert_same_tables(model, before)


def test_zero_regularization_and_zero_iterations_are_valid():
    matrix = implicit()
    model = make("ALS", regularization=0.0, solver="cholesky", dtype=np.float64).fit(matrix)
    assert np.isfinite(model.user_factors).all()
    assert make("BPR", reg=0.0).fit(matrix).user_factors.shape == (12, 3)
    assert make("SVD", reg=0.0).fit(*ratings()).user_factors.shape == (12, 3)
    # iterations=0: the starting tables, as drawn (reference.normal_table for ALS)
    start = make("ALS", iterations=0, random_state=7).fit(matrix)
    again = make("ALS", iterations=0, random_state=7).fit(matrix)
    np.testing.assert_array_equal(start.user_factors, again.user_factors)
    assert np.abs(start.user_factors).max() < 0.1  # Normal(0, 0.01²) draws
    for name in ("BPR", "SVD", "SVDpp", "ExplicitALS"):
        kwargs = {"epochs": 0} if name in ("SVD", "SVDpp") else {"iterations": 0}
        model = train(make(name, **kwargs))
        assert np.isfinite(model.user_factors).all()


# ---------------------------------------------------------------- backends and the reference


def _odd_implicit():
    """Duplicates, unsorted int64 indices, stored zeros and negative values (raw confidence),
    a user and an item without entries."""
    rng = np.random.default_rng(1)
    rows, cols = rng.integers(0, 11, 60), rng.integers(0, 8, 60)
    values = rng.integers(-2, 4, 60).astype(np.float64)
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(13, np.int64)
    np.cumsum(np.bincount(rows, minlength=12), out=indptr[1:])
    matrix = sp.csr_matrix((values[order], cols[order].astype(np.int64), indptr), shape=(12, 9))
    assert not matrix.has_canonical_format
    return matrix


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("factors", WIDTHS)
def test_als_fit_on_odd_input_is_the_reference_half_sweeps(backend, solver, factors):
    matrix = _odd_implicit()
    rng = np.random.default_rng(factors)
    X0 = rng.standard_normal((12, factors)) * 0.1
    Y0 = rng.standard_normal((9, factors)) * 0.1
    settings = dict(regularization=0.1, confidence="raw", solver=solver)
    model = recfuse.ALS(factors=factors, iterations=2, dtype=np.float64, backend=backend,
                        **settings).fit(matrix, initial_factors=(X0, Y0))
    R = reference.canonical_csr(matrix, np.float64)
    X, Y = X0.copy(), Y0.copy()
    for _ in range(2):
        X = reference.als_half_sweep(R, Y, X, **settings)
        Y = reference.als_half_sweep(R.T.tocsr(), X, Y, **settings)
    positive = R.multiply(R > 0).tocsr()
    positive.eliminate_zeros()
    X[np.diff(positive.indptr) == 0] = 0  # documented: rows without a positive value
    Y[np.diff(positive.tocsc().indptr) == 0] = 0
    np.testing.assert_allclose(model.user_factors, X, rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["BPR", "SVD", "SVDpp", "ExplicitALS"])
@pytest.mark.parametrize("factors", WIDTHS)
def test_sgd_and_explicit_backends_agree_with_the_numpy_reference(name, factors):
    """The numpy backend is the reference itself; cpu and numba must train the same model
    (float64: to rounding; float32: within the tolerance of tests/test_svd_model.py)."""
    for dtype, tolerance in ((np.float64, dict(rtol=1e-8, atol=1e-10)),
                             (np.float32, dict(rtol=1e-4, atol=2e-5))):
        models = {backend: train(make(name, factors=factors, dtype=dtype, backend=backend))
                  for backend in BACKENDS}
        want = models["numpy"]
        for backend, model in models.items():
            assert model.backend_used == backend
            for table in ("user_factors", "item_factors", "item_bias"):
                np.testing.assert_allclose(getattr(model, table), getattr(want, table),
                                           err_msg=f"{backend} {table}", **tolerance)


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_model_any_thread_count_other_seed_another(name):
    runs = [train(make(name, num_threads=threads)) for threads in (1, 2, 3, 0)]
    for other in runs[1:]:
        assert_same_tables(other, tables(runs[0]))
    other_seed = train(make(name, random_state=1))
    assert not np.array_equal(other_seed.user_factors, runs[0].user_factors)


@pytest.mark.parametrize("name", ALL)
def test_a_generator_seed_first_fit_is_the_int_fit_and_then_continues(name):
    want = train(make(name, random_state=5))
    model = make(name, random_state=np.random.default_rng(5))
    np.testing.assert_array_equal(train(model).user_factors, want.user_factors)
    assert not np.array_equal(train(model).user_factors, want.user_factors)


@pytest.mark.parametrize("name", ["ALS", "BPR", "SVD", "SVDpp"])
def test_a_fit_refused_for_its_backend_does_not_advance_a_generator(name):
    """A refused fit changes nothing: its Generator is not drawn from, so the first fit that
    runs is still the fit of the int that seeded it (ExplicitALS: its own test below)."""
    want = train(make(name, random_state=5))
    model = make(name, random_state=np.random.default_rng(5), backend="cuda")
    if any(info.name == "cuda" and info.available for info in recfuse.backends()):
        pytest.skip("cuda is available here")
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        train(model)
    model.set_params(backend="auto")
    np.testing.assert_array_equal(train(model).user_factors, want.user_factors)


@pytest.mark.parametrize("refusal", ["ratings too large for float32", "backend"])
def test_explicit_als_refused_fit_does_not_advance_a_generator(refusal):
    users, items, values = ratings()
    want = make("ExplicitALS", random_state=5).fit(users, items, values)
    model = make("ExplicitALS", random_state=np.random.default_rng(5))
    if refusal == "backend":
        model.set_params(backend="cupy")
        with pytest.raises(RuntimeError, match="backend 'cupy' is not available"):
            model.fit(users, items, values)
        model.set_params(backend="auto")
    else:
        with pytest.raises(ValueError, match="ratings are too large for dtype=float32"):
            model.fit(users, items, values * 1e30)
    # "On bad input the model is left as it was": its first fit is still the int-seed fit
    np.testing.assert_array_equal(model.fit(users, items, values).user_factors,
                                  want.user_factors)


# ---------------------------------------------------------------- refits and the protocol


@pytest.mark.parametrize("name", ALL)
def test_refit_with_another_shape_is_a_fresh_fit(name, tmp_path):
    model = train(make(name))
    model.recommend(0, k=3)
    model.similar_items(0, k=3)
    list(model.recommend_all(k=2))
    shape = dict(rows=5, cols=14) if name in IMPLICIT else dict(n_users=5, n_items=14)
    train(model, seed=4, **shape)
    fresh = train(make(name), seed=4, **shape)
    assert_same_tables(model, tables(fresh))
    for method, ids in (("recommend", 4), ("similar_items", 13), ("similar_users", 4)):
        np.testing.assert_array_equal(getattr(model, method)(ids, k=20)[0],
                                      getattr(fresh, method)(ids, k=20)[0])
    assert sum(chunk[0].size for chunk in model.recommend_all(k=2)) == 5
    with pytest.raises(ValueError, match="user_ids must be < 5"):
        model.recommend(7)
    model.save(tmp_path / "m.npz")
    assert_same_tables(recfuse.load(tmp_path / "m.npz"), tables(fresh))


@pytest.mark.parametrize("name, setting", [
    ("ALS", dict(iterations=4)), ("ALS", dict(regularization=0.5, solver="cholesky")),
    ("BPR", dict(lr=0.2, reg=0.0)), ("SVD", dict(epochs=5, shuffle=False)),
    ("SVDpp", dict(lr=0.02)), ("ExplicitALS", dict(reg=1.0, reg_bias=0.0)),
])
def test_set_params_then_fit_uses_the_new_values(name, setting):
    model = train(make(name))
    assert model.set_params(**setting) is model
    train(model)
    assert_same_tables(model, tables(train(make(name, **setting))))


@pytest.mark.parametrize("name", ALL)
def test_get_params_clone_deepcopy_and_pickle_round_trip(name):
    base = pytest.importorskip("sklearn.base")
    model = make(name, dtype=np.float64, num_threads=np.int64(2), random_state=np.int64(2**40))
    params = model.get_params()
    assert params["dtype"] == "float64" and type(params["num_threads"]) is int
    assert type(model)(**params).get_params() == params
    clone = base.clone(model)
    assert clone.get_params() == params
    train(model)
    for twin in (base.clone(model), type(model)(**model.get_params())):
        assert twin.user_factors is None  # unfitted
        assert_same_tables(train(twin), tables(model))
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert_same_tables(twin, tables(model))
        assert twin.get_params() == params
        np.testing.assert_array_equal(twin.recommend(0, k=4)[0], model.recommend(0, k=4)[0])
        train(twin, seed=2)  # a copy refits without touching the original
    assert_same_tables(model, tables(train(make(name, dtype=np.float64,
                                                random_state=2**40))))


@pytest.mark.parametrize("name", ALL)
def test_fit_shaping_settings_are_refused_on_a_fitted_model_but_not_on_a_clone(name):
    base = pytest.importorskip("sklearn.base")
    model = train(make(name))
    before = tables(model)
    with pytest.raises(ValueError, match="factors shapes the fitted tables"):
        model.set_params(factors=4, iterations=9) if name in ("ALS", "BPR", "ExplicitALS") \
            else model.set_params(factors=4, epochs=9)
    assert_same_tables(model, before)
    twin = train(base.clone(model).set_params(factors=4))
    assert twin.user_factors.shape[1] == 4


# ---------------------------------------------------------------- fold-ins


def test_update_users_is_one_reference_half_sweep_for_odd_rows():
    """update_users with a csr_array of stored zeros, duplicates and new ids equals the
    reference half-sweep of those rows against the fixed items (raw confidence)."""
    matrix = _odd_implicit()
    model = recfuse.ALS(factors=3, iterations=2, dtype=np.float64, confidence="raw",
                        solver="cholesky", regularization=0.2, random_state=0).fit(matrix)
    rows = sp.csr_array(sp.csr_matrix((np.array([2.0, 1.0, 1.0, 0.0, -1.0, 3.0]),
                                       np.array([4, 1, 1, 2, 0, 5]),
                                       np.array([0, 3, 4, 6])), shape=(3, 9)))
    Y = model.item_factors.copy()
    start = np.zeros((3, 3))
    start[0] = model.user_factors[5]
    got = model.update_users([5, 12, 15], rows)
    want = reference.als_half_sweep(sp.csr_matrix(rows), Y, start, regularization=0.2,
                                     confidence="raw", solver="cholesky")
    want[1] = 0  # only a stored zero: no positive value, the zero vector
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert model.user_factors.shape == (16, 3)
    assert not model.user_factors[13:15].any()  # users in between start at zero
    np.testing.assert_array_equal(model.item_factors, Y)


def test_update_rows_refuse_bad_input_by_name_and_keep_the_model():
    model = make("ALS").fit(implicit())
    before, seen = tables(model), seen_of(model)
    row = implicit()[0]
    for call, error, match in [
        (lambda: model.update_users([0], row.tocsc()), TypeError, "user_items must be in CSR"),
        (lambda: model.update_users([0], row.toarray()), TypeError, "scipy.sparse CSR"),
        (lambda: model.update_users([0, 1], row), ValueError, "must have 2 rows"),
        (lambda: model.update_users([0, 0], implicit()[:2]), ValueError, "not repeat"),
        (lambda: model.update_users([-1], row), ValueError, "user_ids must be >= 0"),
        (lambda: model.update_users([0.0], row), TypeError, "user_ids must hold integers"),
        (lambda: model.update_users([0], -row), ValueError, "non-negative"),
        (lambda: model.update_users([0], row * np.nan), ValueError, "finite"),
        (lambda: model.update_items([0], implicit()[:5, :1].T.tocsr()), ValueError,
         "item_users must have 12 columns"),
    ]:
        with pytest.raises(error, match=match):
            call()
        assert_same_tables(model, before)
        assert seen_of(model) is seen
    assert model.update_users([], sp.csr_matrix((0, 9), dtype=np.float32)).shape == (0, 3)
    assert model.update_items([], sp.csr_matrix((0, 12), dtype=np.float32)).shape == (0, 3)
    assert_same_tables(model, before)


# ---------------------------------------------------------------- bugs


def test_duplicates_that_sum_past_the_dtype_are_refused_or_saved_loadably(tmp_path):
    matrix = sp.csr_matrix((np.array([3e38, 3e38, 1.0], np.float32), np.array([0, 0, 1]),
                            np.array([0, 2, 3])), shape=(2, 3))
    model = make("BPR")
    try:
        model.fit(matrix)
    except ValueError as error:  # refused, naming the argument: fine
        assert "user_items" in str(error)
        return
    model.save(tmp_path / "bpr.npz")  # or fitted: then the file must load
    loaded = recfuse.load(tmp_path / "bpr.npz")
    np.testing.assert_array_equal(loaded.user_factors, model.user_factors)


@pytest.mark.parametrize("name", IMPLICIT)
def test_the_fitted_seen_matrix_does_not_alias_the_callers_matrix(name, tmp_path):
    matrix = implicit(seed=2)
    model = make(name).fit(matrix)
    users = np.arange(matrix.shape[0])
    before = model.recommend(users, k=9)
    want_seen = matrix.toarray()
    # the caller reuses its matrix (a buffer refilled for the next batch, say)
    matrix.data[:] = 7.0
    matrix.indices[:] = matrix.indices[::-1].copy() % matrix.shape[1]
    np.testing.assert_array_equal(model.recommend(users, k=9)[0], before[0])
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(seen_of(recfuse.load(tmp_path / "m.npz")).toarray(),
                                  want_seen)


@pytest.mark.parametrize("init_std", [1e38, 3e38])
def test_explicit_als_start_beyond_the_dtype_is_refused_by_name(init_std):
    with pytest.raises(ValueError, match="init_std"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            make("ExplicitALS", init_std=init_std).fit(*ratings())
    with pytest.raises(ValueError, match="init_std"):  # as SVD does
        make("SVD", init_std=init_std)


def test_als_cholesky_with_overflowing_confidences_names_the_cause():
    matrix = implicit(rows=40, cols=30, density=0.25)
    matrix.data *= np.float32(1e12)  # below the cg bound, but CG steps overflow on them
    for solver in ("cg", "cholesky"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                make("ALS", factors=8, iterations=3, solver=solver).fit(matrix)
            except ValueError as error:
                message = str(error)
            else:
                message = " ".join(str(warning.message) for warning in caught)
        assert "alpha" in message or "user_items" in message, (solver, message)


@pytest.mark.parametrize("name", RATING)
def test_rating_fit_takes_a_ratings_matrix_of_non_native_byte_order(name):
    users, items, values = ratings()
    matrix = sp.csr_matrix((values, (users, items)), shape=(12, 9))
    swapped = sp.csr_matrix((matrix.data.astype(">f8"), matrix.indices, matrix.indptr),
                            shape=matrix.shape)
    assert make("ALS").fit(swapped).user_factors.shape == (12, 3)  # the implicit models do
    want = make(name).fit(matrix)
    np.testing.assert_array_equal(make(name).fit(swapped).user_factors, want.user_factors)
