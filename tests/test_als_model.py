"""recfuse.ALS end to end: training, retrieval, fold-in, persistence, concurrency, bad input."""

from __future__ import annotations

import copy
import json
import threading
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import recfuse
from conftest import examples
from recfuse import datasets, reference


@pytest.fixture(scope="module")
def data():
    return datasets.synthetic_implicit(300, 120, 4000, seed=3)


@pytest.fixture(scope="module")
def fitted(data):
    return recfuse.ALS(factors=16, iterations=4, random_state=0, backend="cpu").fit(data)


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_loss_decreases_and_matches_reference(data, solver, dtype):
    losses = []
    model = recfuse.ALS(factors=8, iterations=5, solver=solver, dtype=dtype, random_state=1,
                        backend="cpu")
    model.fit(data, callback=lambda it, loss: losses.append(loss))
    assert len(losses) == 5
    assert losses[-1] < losses[0]
    assert all(b <= a * (1 + 1e-4) for a, b in zip(losses, losses[1:]))
    assert model.user_factors.dtype == dtype and model.item_factors.dtype == dtype
    expected = reference.als_loss(data, model.user_factors, model.item_factors,
                                  regularization=model.regularization, alpha=model.alpha)
    assert losses[-1] == pytest.approx(expected, rel=1e-4)
    assert model.loss() == pytest.approx(expected, rel=1e-4)


def test_loss_takes_assigned_tables_of_any_layout(fitted, data):
    """The factor setters keep what they are given: loss() passed it to the kernel as it was
    (pybind11's "incompatible function arguments" for a Fortran, strided, big-endian or
    float64 table of a float32 model)."""
    expected = fitted.loss()
    X, Y = fitted.user_factors, fitted.item_factors
    for change in (np.asfortranarray, lambda a: a[::-1].copy()[::-1],
                   lambda a: a.astype(">f4"), lambda a: a.astype(np.float64)):
        model = copy.deepcopy(fitted)
        model.user_factors, model.item_factors = change(X), change(Y)
        assert model.loss() == expected
    model = copy.deepcopy(fitted)
    model.item_factors = Y * np.nan
    with pytest.raises(ValueError, match="item_factors must hold finite values"):
        model.loss()


def test_fit_equals_reference_sweeps(data):
    rng = np.random.default_rng(5)
    X0 = rng.standard_normal((data.shape[0], 6)) * 0.1
    Y0 = rng.standard_normal((data.shape[1], 6)) * 0.1
    model = recfuse.ALS(factors=6, iterations=2, dtype=np.float64, regularization=0.1, alpha=3.0,
                        backend="cpu").fit(data, initial_factors=(X0, Y0))
    X, Y = X0.copy(), Y0.copy()
    items = data.T.tocsr()
    for _ in range(2):
        X = reference.als_half_sweep(data.astype(np.float64), Y, X, regularization=0.1, alpha=3.0)
        Y = reference.als_half_sweep(items.astype(np.float64), X, Y, regularization=0.1, alpha=3.0)
    np.testing.assert_allclose(model.user_factors, X, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-9, atol=1e-12)


def test_same_seed_same_factors_any_thread_count(data):
    runs = [recfuse.ALS(factors=16, iterations=3, random_state=7, backend="cpu",
                        num_threads=threads).fit(data) for threads in (1, 2, 2)]
    for other in runs[1:]:
        np.testing.assert_array_equal(runs[0].user_factors, other.user_factors)
        np.testing.assert_array_equal(runs[0].item_factors, other.item_factors)


def test_progress_bar_and_empty_matrix():
    empty = sp.csr_matrix((4, 3), dtype=np.float32)
    model = recfuse.ALS(factors=2, iterations=2, solver="cholesky", random_state=0)
    model.fit(empty, show_progress=True)
    assert np.all(model.user_factors == 0) and np.all(model.item_factors == 0)


# ---------------------------------------------------------------- retrieval


def brute_force_topk(scores, k, allowed):
    ids = np.full((scores.shape[0], k), -1)
    values = np.full((scores.shape[0], k), -np.inf)
    for row in range(scores.shape[0]):
        candidates = np.flatnonzero(allowed[row])
        order = sorted(candidates, key=lambda i: (-scores[row, i], i))[:k]
        ids[row, : len(order)] = order
        values[row, : len(order)] = scores[row, order]
    return ids, values


@given(
    seed=st.integers(0, 10_000),
    n_users=st.integers(1, 6),
    n_items=st.integers(1, 12),
    k=st.integers(1, 15),
    filter_seen=st.booleans(),
)
def test_recommend_matches_full_sort_with_ties(seed, n_users, n_items, k, filter_seen):
    rng = np.random.default_rng(seed)
    model = recfuse.ALS(factors=3, dtype=np.float64)
    # Small integers make many exactly tied scores.
    model.user_factors = rng.integers(-2, 3, (n_users, 3)).astype(np.float64)
    model.item_factors = rng.integers(-2, 3, (n_items, 3)).astype(np.float64)
    seen = sp.random(n_users, n_items, density=0.3, format="csr", random_state=seed)
    model._user_items = sp.csr_matrix(seen)
    users = np.arange(n_users)
    ids, scores = model.recommend(users, k=k, filter_seen=filter_seen)
    allowed = np.ones((n_users, n_items), dtype=bool)
    if filter_seen:
        allowed &= seen.toarray() == 0
    expected_ids, expected_scores = brute_force_topk(model.user_factors @ model.item_factors.T,
                                                     k, allowed)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(scores, expected_scores)


def test_recommend_single_and_filters(fitted, data):
    ids, scores = fitted.recommend(0, k=10)
    assert ids.shape == (10,) and scores.shape == (10,)
    assert np.all(np.diff(scores) <= 0)
    assert not set(ids.tolist()) & set(data[0].indices.tolist())
    only = np.array([3, 5, 7, 9])
    ids, _ = fitted.recommend(0, k=10, filter_seen=False, items=only)
    assert set(ids[ids >= 0].tolist()) <= set(only.tolist())
    assert np.sum(ids >= 0) == 4 and np.all(ids[4:] == -1)
    top = fitted.recommend([0, 1], k=5, filter_seen=False)[0]
    ids, _ = fitted.recommend([0, 1], k=5, filter_seen=False, exclude_items=top[:, 0])
    assert ids.shape == (2, 5) and not np.isin(top[:, 0], ids).any()
    np.testing.assert_array_equal(ids[0, :4], top[0, 1:5][top[0, 1:5] != top[1, 0]][:4])
    batch_ids, batch_scores = fitted.recommend([4, 2], data[[4, 2]], k=7)
    for row, user in enumerate([4, 2]):
        one_ids, one_scores = fitted.recommend(user, data[user], k=7)
        # BLAS may round a batch (GEMM) and one row (GEMV) differently in the last bit.
        np.testing.assert_allclose(batch_scores[row], one_scores, rtol=1e-6)
        np.testing.assert_array_equal(batch_ids[row], one_ids)


def test_recommend_pads_when_k_exceeds_items(fitted):
    ids, scores = fitted.recommend(1, k=500, filter_seen=False)
    n = fitted.item_factors.shape[0]
    assert np.all(ids[:n] >= 0) and np.all(ids[n:] == -1) and np.all(np.isneginf(scores[n:]))
    assert sorted(ids[:n].tolist()) == list(range(n))


def test_recommend_from_8_threads_equals_serial(fitted):
    users = np.arange(fitted.user_factors.shape[0])
    expected = fitted.recommend(users, k=10)
    results, errors = [None] * 8, []

    def work(slot):
        try:
            for _ in range(3):
                results[slot] = fitted.recommend(users, k=10)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for ids, scores in results:
        np.testing.assert_array_equal(ids, expected[0])
        np.testing.assert_array_equal(scores, expected[1])


def test_similar_items_cosine(fitted):
    ids, scores = fitted.similar_items(3, k=5)
    assert ids[0] == 3 and scores[0] == pytest.approx(1.0, rel=1e-5)
    Y = fitted.item_factors.astype(np.float64)
    normalised = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, normalised[ids] @ normalised[3], rtol=1e-5)
    batch, _ = fitted.similar_items([3, 4], k=5)
    np.testing.assert_array_equal(batch[0], ids)
    users, _ = fitted.similar_users(2, k=3)
    assert users[0] == 2


# ---------------------------------------------------------------- fold-in


@pytest.mark.parametrize("side", ["user", "item"])
@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_fold_ins_equal_the_half_sweep_row(data, solver, side):
    """update_users and update_items: the rows solved against the other side's fixed table
    as the fit's half-sweep of that side solves them (exact under Cholesky); the other
    side's table is not changed."""
    model = recfuse.ALS(factors=8, iterations=3, solver=solver, dtype=np.float64,
                        random_state=2, backend="cpu").fit(data)
    matrix = data if side == "user" else data.T.tocsr()
    own, other = (("user_factors", "item_factors") if side == "user" else
                  ("item_factors", "user_factors"))
    fixed = getattr(model, other).copy()
    rows = matrix[[5, 9]]
    start = getattr(model, own)[[5, 9]].copy()
    new = getattr(model, f"update_{side}s")([5, 9], rows)
    expected = reference.als_half_sweep(rows, fixed, start,
                                        regularization=model.regularization, alpha=model.alpha,
                                        solver=solver, cg_steps=model.cg_steps)
    np.testing.assert_allclose(new, expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(getattr(model, own)[[5, 9]], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(getattr(model, other), fixed)
    if solver == "cholesky":  # exact: the full half-sweep gives the same rows
        full = reference.als_half_sweep(matrix, fixed, getattr(model, own),
                                        regularization=model.regularization, alpha=model.alpha,
                                        solver="cholesky")
        np.testing.assert_allclose(getattr(model, own)[[5, 9]], full[[5, 9]], rtol=1e-8)


def test_update_users_adds_new_users(data):
    model = recfuse.ALS(factors=8, iterations=2, solver="cholesky", random_state=0).fit(data)
    n = model.user_factors.shape[0]
    row = sp.csr_matrix(([1.0, 2.0], ([0, 0], [1, 7])), shape=(1, data.shape[1]))
    vector = model.update_users([n + 2], row)
    assert model.user_factors.shape == (n + 3, 8)
    np.testing.assert_array_equal(model.user_factors[n + 2], vector[0])
    assert np.all(model.user_factors[n : n + 2] == 0)
    ids, _ = model.recommend(n + 2, k=5)
    assert 1 not in ids and 7 not in ids  # the new user's items count as seen


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_update_users_does_not_depend_on_blas_threads(dtype):
    """The fold-in's YᵀY came from NumPy's BLAS (``item_factors.T @ item_factors``), whose
    sums OpenBLAS orders by its own thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS):
    update_users, and a Recommender's observe, gave other vectors with 1 BLAS thread than
    with 2, whatever num_threads said. It is now the native gram a fit uses, so folding
    every user in is exactly the fit's user half-sweep."""
    from threadpoolctl import threadpool_limits

    from recfuse._als import cpu
    from recfuse._als.common import CsrArrays

    data = datasets.synthetic_implicit(400, 1200, 8000, seed=4)
    model = recfuse.ALS(factors=32, iterations=1, solver="cholesky", dtype=dtype,
                        random_state=0, backend="cpu").fit(data)
    ids = np.arange(data.shape[0])
    folded = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            folded.append(copy.deepcopy(model).update_users(ids, data))
    np.testing.assert_array_equal(folded[0], folded[1])
    # the fit's own half-sweep (its gram computed natively) gives the same bits
    X = model.user_factors.copy()
    cpu.half_sweep(CsrArrays.from_scipy(data, dtype), model.item_factors, X, model.params)
    np.testing.assert_array_equal(folded[0], X)


# ---------------------------------------------------------------- persistence


def test_save_load_round_trip(fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    loaded = recfuse.load(path)
    np.testing.assert_array_equal(loaded.user_factors, fitted.user_factors)
    np.testing.assert_array_equal(loaded.item_factors, fitted.item_factors)
    assert loaded.get_params() == fitted.get_params()
    for user in (0, 7):
        np.testing.assert_array_equal(loaded.recommend(user, k=5)[0], fitted.recommend(user, k=5)[0])


def test_load_rejects_truncated_foreign_and_newer_files(fitted, tmp_path):
    path = tmp_path / "model.npz"
    fitted.save(path)
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="truncated or foreign"):
        recfuse.load(truncated)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, user_factors=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="not a recfuse model"):
        recfuse.load(foreign)
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(ValueError):
        recfuse.load(text)
    newer = tmp_path / "newer.npz"
    header = json.dumps({"format": "recfuse", "version": 999, "model": "ALS", "params": {}})
    np.savez(newer, __recfuse__=np.frombuffer(header.encode(), dtype=np.uint8))
    with pytest.raises(ValueError, match="version 999"):
        recfuse.load(newer)
    with pytest.raises(FileNotFoundError):
        recfuse.load(tmp_path / "missing.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __recfuse__=np.frombuffer(header.replace("999", "1").encode(), np.uint8),
             user_factors=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        recfuse.load(pickled)  # object arrays would need pickle: refused
    assert zipfile.is_zipfile(path)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"factors": 0}, ValueError, "factors must be >= 1"),
        ({"factors": -3}, ValueError, "factors"),
        ({"factors": 10**6}, ValueError, "factors must be <= "),
        ({"factors": 2.5}, TypeError, "factors must be an integer"),
        ({"regularization": -1}, ValueError, "regularization"),
        ({"regularization": float("nan")}, ValueError, "regularization must be finite"),
        ({"alpha": "x"}, TypeError, "alpha"),
        ({"iterations": -1}, ValueError, "iterations"),
        ({"solver": "lu"}, ValueError, "solver must be one of"),
        ({"cg_steps": 0}, ValueError, "cg_steps"),
        ({"dtype": np.int32}, TypeError, "dtype must be float32 or float64"),
        ({"dtype": "complex"}, TypeError, "dtype"),
        ({"num_threads": -2}, ValueError, "num_threads"),
        ({"random_state": "seed"}, TypeError, "random_state"),
        ({"confidence": "log"}, ValueError, "confidence"),
        ({"backend": 3}, TypeError, "backend"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        recfuse.ALS(**kwargs)


def test_unknown_or_unavailable_backend(data):
    with pytest.raises(ValueError, match="backend must be 'auto' or one of"):
        recfuse.ALS(backend="tpu", iterations=1).fit(data)
    missing = [b for b in recfuse.backends() if not b.available]
    for info in missing:
        with pytest.raises(RuntimeError, match=f"backend '{info.name}' is not available"):
            recfuse.ALS(backend=info.name, iterations=1).fit(data)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda m: m.toarray(), TypeError, "scipy.sparse CSR"),
        (lambda m: m.tocoo(), TypeError, "CSR format, got COO"),
        (lambda m: [[1, 2]], TypeError, "scipy.sparse CSR"),
        (lambda m: _with_value(m, np.nan), ValueError, "finite values, got 1 NaN/inf"),
        (lambda m: _with_value(m, np.inf), ValueError, "finite"),
        (lambda m: _with_value(m, -1.0), ValueError, "non-negative"),
        (lambda m: m.astype(np.complex64), TypeError, "real numbers"),
        (lambda m: _with_value(m, 1e300), ValueError, "beyond its range"),  # inf as float32
        (lambda m: _with_index(m, m.shape[1]), ValueError, r"column indices outside \[0, 120\)"),
        (lambda m: _with_index(m, -1), ValueError, "column indices outside"),
        (lambda m: _with_indptr(m, 1, 10**6), ValueError, "malformed indptr"),
        (lambda m: _with_indptr(m, -1, 0), ValueError, "malformed indptr"),
    ],
)
def test_fit_rejects_bad_matrices_and_keeps_model(fitted, data, make, error, match):
    before = fitted.user_factors.copy(), fitted.item_factors.copy()
    with pytest.raises(error, match=match):
        fitted.fit(make(data))
    np.testing.assert_array_equal(fitted.user_factors, before[0])
    np.testing.assert_array_equal(fitted.item_factors, before[1])


def _with_value(matrix, value):
    bad = matrix.copy().astype(np.float64)
    bad.data[0] = value
    return bad


def _with_index(matrix, index):
    """A CSR matrix whose first stored entry has column ``index`` (scipy does not check it;
    its own methods would read and write out of bounds)."""
    indices = matrix.indices.astype(np.int64)
    indices[0] = index
    return sp.csr_matrix((matrix.data, indices, matrix.indptr), shape=matrix.shape)


def _with_indptr(matrix, position, value):
    indptr = matrix.indptr.astype(np.int64)
    indptr[position] = value
    return sp.csr_matrix((matrix.data, matrix.indices, indptr), shape=matrix.shape)


def test_a_diverging_fit_raises_and_keeps_the_model(fitted, data):
    before = fitted.user_factors.copy()
    huge = data.copy()
    huge.data[:] = 1e30  # finite confidences, whose sums overflow float32
    # the cg solver refuses them up front (its steps would overflow, and a step of 0 once
    # left rows at their start without a word)
    with pytest.raises(ValueError, match="user_items' values reach a confidence .* beyond "
                                         r"the 6.98e\+12 the cg solver takes in float32"):
        fitted.fit(huge)
    with pytest.raises(ValueError, match="the rows' values reach a confidence"):
        fitted.update_users([0], huge[0])
    np.testing.assert_array_equal(fitted.user_factors, before)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 9), st.integers(1, 9), st.integers(0, 3), st.integers(0, 2**31),
       st.floats(0, 1), st.floats(0, 1))
def test_update_items_replaces_columns_as_a_transpose_would(n_rows, n_cols, grow, seed,
                                                            density, new_density):
    """The seen matrix's columns replaced by merging keys, in place of a transpose there
    and back (~2x as long at 5M entries): the same indptr, indices and data, stored zeros
    kept, empty rows and columns, ids past the old columns, none replaced."""
    from recfuse.models.als import _replace_columns, _replace_rows

    rng = np.random.default_rng(seed)
    matrix = sp.random(n_rows, n_cols, density=density, format="csr", random_state=rng,
                       dtype=np.float32)
    matrix.data[::3] = 0  # stored zeros are seen items too
    width = n_cols + grow
    ids = rng.permutation(width)[:rng.integers(0, width + 1)].astype(np.int64)
    columns = sp.random(ids.size, n_rows, density=new_density, format="csr", random_state=rng,
                        dtype=np.float32)
    got = _replace_columns(matrix, ids, columns, width)
    want = _replace_rows(matrix.T.tocsr(), ids, columns, width).T.tocsr()
    assert got.shape == want.shape == (n_rows, width) and got.has_sorted_indices
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(got, part), getattr(want, part))


@pytest.mark.parametrize("width", [2**31 + 6, 2**62 + 7])
def test_update_items_replaces_columns_past_int32_and_large_keys(width):
    """An item id past int32 (update_items takes any int64 id) widens the int32 indices
    instead of wrapping to a negative column, and rows x width past int64 (2**62 columns
    here) does not overflow the (row, column) keys the entries are merged by."""
    from recfuse.models.als import _replace_columns

    matrix = sp.csr_matrix(np.arange(1, 13, dtype=np.float32).reshape(4, 3))
    assert matrix.indices.dtype == np.int32
    ids = np.array([width - 1, 1], dtype=np.int64)
    columns = sp.csr_matrix(np.array([[1, 0, 1, 1], [0, 5, 0, 5]], dtype=np.float32))
    got = _replace_columns(matrix, ids, columns, width)
    last = width - 1
    assert got.shape == (4, width)
    assert got.indptr.tolist() == [0, 3, 6, 9, 13]
    assert got.indices.tolist() == [0, 2, last, 0, 1, 2, 0, 2, last, 0, 1, 2, last]
    assert got.data.tolist() == [1, 3, 1, 4, 5, 6, 7, 9, 1, 10, 5, 12, 1]


def test_update_items_adds_new_items_and_replaces_their_users(data):
    """A new item gets a vector from its users and counts as seen by them; an updated
    item's users are replaced in the seen matrix (every other entry kept); the next user
    fold-in solves against the new item table (its YᵀY recomputed)."""
    model = recfuse.ALS(factors=8, iterations=3, solver="cholesky", random_state=0).fit(data)
    model.update_users([0], data[0])  # the fold-ins' YᵀY is now computed and kept
    n_users, n_items = data.shape
    fans = data.T.tocsr()[3].indices  # every user of item 3 has the new item too
    row = sp.csr_matrix((data.T.tocsr()[3].data, fans, [0, fans.size]), shape=(1, n_users))
    replaced = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, n_users))
    model.update_items([n_items + 1, 5], sp.vstack([row, replaced]).tocsr())
    assert model.item_factors.shape == (n_items + 2, 8)
    assert np.all(model.item_factors[n_items] == 0)  # the id in between: no users, no vector
    cosine = (model.item_factors[n_items + 1] @ model.item_factors[3]
              / np.linalg.norm(model.item_factors[n_items + 1])
              / np.linalg.norm(model.item_factors[3]))
    assert cosine > 0.99  # the same users: the same item, up to the fit's last sweep
    seen = model._state.user_items
    assert seen.shape == (n_users, n_items + 2) and seen.has_sorted_indices
    expected = data.tolil()
    expected[:, 5] = 0
    expected[0, 5] = 1.0
    np.testing.assert_array_equal(seen[:, :n_items].toarray(), expected.toarray())
    assert sorted(seen[:, n_items + 1].tocoo().row.tolist()) == sorted(fans.tolist())
    user = int(fans[0])
    ids, _ = model.recommend(user, k=n_items + 2)
    assert n_items + 1 not in ids and 3 not in ids  # seen by that user
    row = data[user].copy()
    row.resize((1, n_items + 2))  # the user's row over the grown catalogue
    model.update_users([user], row)
    full = reference.als_half_sweep(row, model.item_factors, np.zeros((1, 8)),
                                    regularization=model.regularization, alpha=model.alpha,
                                    solver="cholesky")
    np.testing.assert_allclose(model.user_factors[user], full[0], rtol=2e-4, atol=2e-6)


@pytest.mark.parametrize("side", ["user", "item"])
def test_fold_ins_refuse_tables_assigned_with_other_rows_than_the_seen_matrix(data, side):
    """A table assigned by hand with more rows than the kept seen matrix has: the fold-in's
    rows reach past the seen matrix, which then held indices beyond its columns (update_items
    crashed the process in scipy's transpose, update_users kept the corrupt matrix). Refused,
    the model unchanged."""
    model = recfuse.ALS(factors=4, iterations=2, random_state=0, backend="cpu").fit(data)
    n_users, n_items = data.shape
    grown = {"user": "item", "item": "user"}[side]  # the fixed side, given 5 more rows
    table = getattr(model, f"{grown}_factors")
    setattr(model, f"{grown}_factors", np.r_[table, np.ones((5, 4), table.dtype)])
    seen, own = model._user_items, getattr(model, f"{side}_factors").copy()
    width = (n_items if side == "user" else n_users) + 5
    row = sp.csr_matrix(([1.0, 1.0], [0, width - 1], [0, 2]), shape=(1, width))
    with pytest.raises(ValueError, match="seen matrix.*assigned by hand"):
        getattr(model, f"update_{side}s")([0], row)
    assert model._user_items is seen
    np.testing.assert_array_equal(getattr(model, f"{side}_factors"), own)


def test_update_users_keeps_the_other_users_stored_entries():
    """A stored zero is a seen item (as in fit); replacing one user's row keeps every other
    row's entries, zeros included."""
    ui = sp.csr_matrix((np.array([2.0, 0.0, 1.0, 1.0], np.float32), np.array([0, 1, 2, 3]),
                        np.array([0, 2, 3, 4])), shape=(3, 5))
    model = recfuse.ALS(factors=2, iterations=2, random_state=0).fit(ui)
    before = model.recommend(0, k=5)[0]
    assert 1 not in before
    model.update_users([2, 5], sp.csr_matrix(np.array([[0, 1, 0, 0, 1], [1, 0, 0, 0, 0]],
                                                      np.float32)))
    np.testing.assert_array_equal(model.recommend(0, k=5)[0], before)
    seen = model._state.user_items
    assert seen.shape == (6, 5) and seen.nnz == 6
    assert seen[0].indices.tolist() == [0, 1] and seen[1].indices.tolist() == [2]
    assert seen[2].indices.tolist() == [1, 4] and seen[5].indices.tolist() == [0]


def test_fit_accepts_unsorted_duplicates_and_int_data(data):
    coo = data.tocoo()
    doubled = sp.csr_matrix((np.concatenate([coo.data, coo.data]).astype(np.int64),
                             (np.concatenate([coo.row, coo.row]), np.concatenate([coo.col, coo.col]))),
                            shape=data.shape)
    doubled.has_canonical_format = False
    model = recfuse.ALS(factors=4, iterations=1, random_state=0, dtype=np.float64).fit(doubled)
    twice = recfuse.ALS(factors=4, iterations=1, random_state=0, dtype=np.float64).fit(data * 2)
    np.testing.assert_allclose(model.user_factors, twice.user_factors, rtol=1e-10)


def test_bad_initial_factors_and_callback(data):
    model = recfuse.ALS(factors=4, iterations=1)
    with pytest.raises(ValueError, match="initial_factors must have shapes"):
        model.fit(data, initial_factors=(np.zeros((2, 4)), np.zeros((3, 4))))
    with pytest.raises(ValueError, match="4 columns"):
        model.fit(data, initial_factors=(np.zeros((300, 5)), np.zeros((120, 5))))
    with pytest.raises(ValueError, match="finite"):
        model.fit(data, initial_factors=(np.full((300, 4), np.nan), np.zeros((120, 4))))
    with pytest.raises(TypeError, match="callback must be callable"):
        model.fit(data, callback=3)
    assert model.user_factors is None


def test_recommend_rejects_bad_arguments(fitted, data):
    n_users, n_items = fitted.user_factors.shape[0], fitted.item_factors.shape[0]
    with pytest.raises(ValueError, match=f"user_ids must be < {n_users}"):
        fitted.recommend(n_users)
    with pytest.raises(ValueError, match="user_ids must be >= 0"):
        fitted.recommend(-1)
    with pytest.raises(TypeError, match="user_ids must hold integers"):
        fitted.recommend([0.5])
    with pytest.raises(ValueError, match="k must be >= 1"):
        fitted.recommend(0, k=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        fitted.recommend(0, k="3")
    with pytest.raises(ValueError, match="user_items must have 1 rows"):
        fitted.recommend(0, data[:2])
    with pytest.raises(ValueError, match=f"items must be < {n_items}"):
        fitted.recommend(0, items=[n_items])
    with pytest.raises(ValueError, match="exclude_items must be >= 0"):
        fitted.recommend(0, exclude_items=[-4])
    with pytest.raises(ValueError, match="item_ids must be <"):
        fitted.similar_items(n_items)
    with pytest.raises(RuntimeError, match="not fitted"):
        recfuse.ALS().recommend(0)


@pytest.mark.parametrize("filter_seen", [True, False])
def test_recommend_with_k_in_the_user_items_place_says_so(fitted, filter_seen):
    """recommend(user, 5): the second argument is user_items (implicit's order), not k as
    in the other models; an integer there is refused with the fix, also when filter_seen
    would otherwise ignore it."""
    with pytest.raises(TypeError, match=r"second argument is user_items .* as k=5"):
        fitted.recommend(0, 5, filter_seen=filter_seen)
    with pytest.raises(TypeError, match="second argument is user_items"):
        fitted.recommend(0, np.int64(5))


def test_user_items_may_be_interactions_as_in_fit_and_the_other_models(fitted, data):
    """recommend, update_users and loss take a recfuse.Interactions where they take a CSR
    matrix (its ``matrix``), as fit and BPR/SVD's recommend do."""
    rows = recfuse.Interactions.from_matrix(data[[2, 5]])
    for a, b in zip(fitted.recommend([2, 5], user_items=rows, k=4),
                    fitted.recommend([2, 5], user_items=data[[2, 5]], k=4)):
        np.testing.assert_array_equal(a, b)
    assert fitted.loss(recfuse.Interactions.from_matrix(data)) == fitted.loss(data)
    model = copy.deepcopy(fitted)
    np.testing.assert_array_equal(model.update_users([2, 5], rows),
                                  copy.deepcopy(fitted).update_users([2, 5], data[[2, 5]]))


@pytest.mark.parametrize("random_state", [np.random.RandomState(0), 1.5, "7", True])
def test_random_state_of_the_wrong_kind_says_what_is_taken(random_state):
    message = (r"random_state must be an integer >= 0, a numpy.random.Generator or None, "
               rf"got {type(random_state).__name__}")
    with pytest.raises(TypeError, match=message):
        recfuse.ALS(random_state=random_state)
    if isinstance(random_state, np.random.RandomState):
        with pytest.raises(TypeError, match=r"default_rng\(seed\)"):
            recfuse.BPR(random_state=random_state)


@pytest.mark.parametrize("side", ["user", "item"])
def test_fold_ins_reject_bad_input_and_keep_the_model(fitted, data, side):
    other = "item" if side == "user" else "user"
    update = getattr(fitted, f"update_{side}s")
    rows = data if side == "user" else data.T.tocsr()
    users, items, seen = fitted.user_factors.copy(), fitted.item_factors.copy(), fitted._user_items
    with pytest.raises(ValueError, match=f"{side}_{other}s must have 2 rows"):
        update([0, 1], rows[:1])
    with pytest.raises(ValueError, match=f"{side}_{other}s must have .*columns"):
        update([0], sp.csr_matrix((1, 3)))
    with pytest.raises(ValueError, match=f"{side}_ids must not repeat"):
        update([0, 0], rows[:2])
    with pytest.raises(ValueError, match=f"{side}_ids must be >= 0"):
        update([-1], rows[:1])
    with pytest.raises(ValueError, match=f"{side}_{other}s must hold non-negative values"):
        update([0], -rows[:1])
    # an id far past the known rows: the table cannot grow that far (numpy's allocation
    # error named no argument)
    with pytest.raises(ValueError, match=f"{side}_ids reach 1099511627776"):
        update([2**40], rows[:1])
    np.testing.assert_array_equal(fitted.user_factors, users)
    np.testing.assert_array_equal(fitted.item_factors, items)
    assert fitted._user_items is seen
    assert fitted.recommend(0, k=3)[0].shape == (3,)


# ---------------------------------------------------------------- backends and CLI


def test_backends_table():
    table = recfuse.backends()
    assert [row.name for row in table] == ["cuda", "cpu", "numba", "cupy", "numpy"]
    assert all(isinstance(row.detail, str) for row in table)
    numpy_row = next(row for row in table if row.name == "numpy")
    assert numpy_row.available
    for row in table:
        if not row.available:
            assert row.detail, f"{row.name} is unavailable without a reason"


def test_backend_env_variable(monkeypatch, data):
    monkeypatch.setenv("RECFUSE_BACKEND", "numpy")
    model = recfuse.ALS(factors=2, iterations=1, random_state=0).fit(data[:20])
    assert model.backend_used == "numpy"


def test_cli_demo_and_info(capsys):
    from recfuse.cli import main

    assert main(["demo", "--users", "300", "--items", "80", "--nnz", "4000", "--iterations", "3",
                 "--factors", "8", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["als"]["precision"] > result["popularity"]["precision"]
    assert result["losses"][-1] < result["losses"][0]
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "cpu" in out and "numpy" in out
    assert main(["demo", "--users", "0"]) == 2


def test_callback_without_loss(data):
    seen = []
    recfuse.ALS(factors=4, iterations=2, random_state=0).fit(
        data, callback=lambda it, loss: seen.append((it, loss)), compute_loss=False)
    assert seen == [(0, None), (1, None)]


def test_compute_loss_must_be_a_bool(data):
    # read by its truth value before: compute_loss="no" computed the loss
    seen = []
    for flag in ("no", None, 2):
        with pytest.raises(TypeError, match=f"compute_loss must be a bool, got "
                                            f"{type(flag).__name__}"):
            recfuse.ALS(factors=4, iterations=1).fit(
                data, callback=lambda it, loss: seen.append(loss), compute_loss=flag)
    assert seen == []


def test_movielens_100k_quality(movielens_100k):
    """On real data ALS must beat popularity clearly (implicit 0.7 reaches p@10 ≈ 0.24 here)."""
    from recfuse import metrics

    ratings = datasets.load_movielens_100k(movielens_100k, min_rating=4)
    assert ratings.shape == (943, 1682) and ratings.nnz == 34174 + 21201
    train, test = datasets.train_test_split_per_user(ratings, 0.2, seed=0)
    train.data[:] = 1
    model = recfuse.ALS(factors=64, iterations=15, random_state=0, backend="cpu").fit(train)
    result = metrics.ranking_metrics_at_k(model, train, test, k=10)
    assert result["precision"] > 0.2 and result["ndcg"] > 0.2


def test_load_movielens_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="grouplens"):
        datasets.load_movielens_100k(tmp_path)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_large_factor_table_path_matches_reference(solver):
    """Item tables of 4 MiB and more are read from a huge-page copy: same answers."""
    from recfuse._als import cpu
    from recfuse._als.common import AlsParams, CsrArrays

    n_items, k = 20_000, 64  # 5 MiB of float32 factors
    matrix = datasets.synthetic_implicit(2_000, n_items, 120_000, seed=4)
    rng = np.random.default_rng(0)
    Y = (rng.standard_normal((n_items, k)) * 0.1).astype(np.float32)
    X = (rng.standard_normal((matrix.shape[0], k)) * 0.1).astype(np.float32)
    params = AlsParams(0.1, 2.0, "linear", solver, 3, 0)
    out = X.copy()
    assert cpu.half_sweep(CsrArrays.from_scipy(matrix, np.float32), Y, out, params) == 0
    rows = np.arange(0, matrix.shape[0], 97)
    expected = reference.als_half_sweep(matrix[rows], Y, X[rows], regularization=0.1, alpha=2.0,
                                        solver=solver)
    np.testing.assert_allclose(out[rows], expected, rtol=2e-3, atol=2e-4)


# ---------------------------------------------------------------- recommend_all


def test_recommend_all_chunks_match_recommend(fitted):
    n_users = fitted.user_factors.shape[0]
    seen_users = []
    for users, ids, scores in fitted.recommend_all(k=7, batch_size=64):
        assert ids.shape == scores.shape == (users.size, 7)
        expected_ids, expected_scores = fitted.recommend(users, k=7)
        np.testing.assert_array_equal(ids, expected_ids)
        np.testing.assert_array_equal(scores, expected_scores)
        seen_users.append(users)
    np.testing.assert_array_equal(np.concatenate(seen_users), np.arange(n_users))


def test_recommend_all_writes_parquet(fitted, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "recommendations.parquet"
    rows = fitted.recommend_all(k=5, batch_size=100, path=path)
    table = pq.read_table(path)
    assert table.num_rows == rows == fitted.user_factors.shape[0] * 5
    users = table.column("user").to_numpy()
    items = table.column("item").to_numpy()
    ids, _ = fitted.recommend(np.arange(fitted.user_factors.shape[0]), k=5)
    np.testing.assert_array_equal(items, ids.ravel())
    np.testing.assert_array_equal(users, np.repeat(np.arange(ids.shape[0]), 5))
    assert [p.name for p in tmp_path.iterdir()] == ["recommendations.parquet"]


def test_recommend_all_rejects_bad_arguments(fitted):
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        fitted.recommend_all(batch_size=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        fitted.recommend_all(k=0)
    bare = recfuse.ALS(factors=4)
    with pytest.raises(RuntimeError, match="not fitted"):
        bare.recommend_all()


def test_item_index_follows_new_factors(data):
    model = recfuse.ALS(factors=8, iterations=2, random_state=0, backend="cpu").fit(data)
    before = model.recommend(0, k=5, filter_seen=False)
    model.item_factors = model.item_factors[::-1].copy()
    after = model.recommend(0, k=5, filter_seen=False)
    n = model.item_factors.shape[0]
    np.testing.assert_array_equal(after[0], n - 1 - before[0])


@given(seed=st.integers(0, 2**32 - 1))
@settings(max_examples=examples(60), deadline=None)
def test_replacing_rows_keeps_every_other_entry(seed):
    """update_users' seen matrix: rows ``ids`` replaced, the matrix grown, every other stored
    entry (zeros included) kept in place; against a dense rebuild."""
    from recfuse.models.als import _replace_rows

    rng = np.random.default_rng(seed)
    old, cols = int(rng.integers(0, 8)), int(rng.integers(1, 6))
    matrix = sp.random(old, cols, density=0.5, format="csr", random_state=rng)
    matrix.data[rng.random(matrix.data.size) < 0.2] = 0  # stored zeros are seen items
    n_rows = old + int(rng.integers(1, 4))
    ids = rng.permutation(n_rows)[: int(rng.integers(0, n_rows + 1))]
    rows = sp.random(ids.size, cols, density=0.5, format="csr", random_state=rng)
    want = sp.vstack([matrix, sp.csr_matrix((n_rows - old, cols))]).tolil()
    for position, row in enumerate(ids):
        want.rows[row], want.data[row] = rows[position].indices.tolist(), rows[position].data.tolist()
    got = _replace_rows(matrix, ids, rows, n_rows)
    assert got.shape == (n_rows, cols) and got.has_sorted_indices
    want = want.tocsr()
    np.testing.assert_array_equal(got.indptr, want.indptr)
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.data, want.data)


def test_repr_names_what_makes_another_model():
    assert "cg_steps=3, confidence='raw'" in repr(recfuse.ALS(confidence="raw"))
    assert "cg_steps" not in repr(recfuse.ALS(solver="cholesky"))
    assert "biased=False" in repr(recfuse.SVD(biased=False))
    assert "biased" not in repr(recfuse.SVD()) and "dtype=float64" in repr(
        recfuse.BPR(dtype=np.float64))


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_users_and_items_without_entries_end_at_exactly_zero(solver):
    """Their systems' solution is 0: CG only approaches it, and the noise it leaves would
    order the empty items by rounding instead of by id among the ties at score 0."""
    matrix = datasets.synthetic_implicit(300, 120, 3000, seed=0).tolil()
    matrix[:, 110:] = 0
    matrix[290:, :] = 0
    matrix = matrix.tocsr()
    matrix.eliminate_zeros()
    model = recfuse.ALS(factors=8, iterations=4, solver=solver, random_state=0).fit(matrix)
    assert not model.item_factors[110:].any() and not model.user_factors[290:].any()
    assert model.item_factors[:110].any(axis=1).all()
    ids, scores = model.recommend(0, k=120, filter_seen=False)
    tied = ids[scores == 0]
    assert set(range(110, 120)) <= set(tied.tolist())
    np.testing.assert_array_equal(tied, np.sort(tied))  # ties at 0 by smaller id
    untouched = recfuse.ALS(factors=8, iterations=0, random_state=0).fit(matrix)
    assert untouched.item_factors[110:].any()  # no iterations: the start is kept


@pytest.mark.parametrize("backend", ["cpu", "numba", "numpy"])
@pytest.mark.parametrize("confidence", ["linear", "raw"])
def test_rows_without_a_positive_value_end_at_exactly_zero(backend, confidence):
    """A row whose stored values are all zero (or, under "raw", <= 0) has p = 0 throughout:
    its solution is 0 as for an empty row. CG left ~1e-13 noise there, and cosine similarity
    normalises noise into a direction: such an item came out 0.8 similar to others."""
    if backend == "numba":
        pytest.importorskip("numba")
    dense = datasets.synthetic_implicit(40, 12, 150, seed=1).toarray()
    dense[:, 11] = 0
    dense[35:, :] = 0
    rows, cols = np.nonzero(dense)
    values = dense[rows, cols]
    # item 11 and users 35.. hold only stored non-positive values
    low = 0.0 if confidence == "linear" else -2.0
    rows = np.r_[rows, [0, 1, 35, 36, 36]]
    cols = np.r_[cols, [11, 11, 2, 3, 11]]
    values = np.r_[values, [0.0, low, low, 0.0, low]].astype(np.float32)
    matrix = sp.csr_matrix((values, (rows, cols)), shape=dense.shape)
    results = {}
    for solver in ("cg", "cholesky"):
        model = recfuse.ALS(factors=4, iterations=3, solver=solver, confidence=confidence,
                            backend=backend, random_state=0).fit(matrix)
        assert not model.item_factors[11].any() and not model.user_factors[35:].any()
        assert model.item_factors[:11].any(axis=1).all()
        ids, scores = model.similar_items(11, k=3)
        np.testing.assert_array_equal(ids, [0, 1, 2])  # similar to nothing: ties at 0 by id
        np.testing.assert_array_equal(scores, [0, 0, 0])
        results[solver] = model
    # a fold-in of such a row (or an empty one) gives the zero vector too, whatever the solver
    for model in results.values():
        folded = sp.csr_matrix(([0.0, low], ([0, 1], [4, 5])), shape=(2, 12), dtype=np.float32)
        vectors = model.update_users([3, 40], folded)
        assert not vectors.any() and not model.user_factors[[3, 40]].any()


# ---------------------------------------------------------------- writers landing mid-call


class _WritersLand(recfuse.ALS):
    """ALS whose reads of its state, while the writer lock is free, run ``land()`` after the
    ``skip`` first such reads (once): what another thread's fit or fold-in publishing between
    two of a caller's reads does, made deterministic. A writer cannot publish while the lock
    is held, so no landing happens then."""

    def __init__(self, *args, **kwargs):
        self.published, self.land, self.skip, self._landing = [], None, 0, False
        super().__init__(*args, **kwargs)

    @property
    def _state(self):
        state = self.__dict__["_state"]
        if self.land is not None and not self._landing and not self._lock.locked():
            if self.skip:
                self.skip -= 1
            else:
                land, self.land, self._landing = self.land, None, True
                try:
                    land()
                finally:
                    self._landing = False
        return state

    @_state.setter
    def _state(self, value):
        self.__dict__["_state"] = value
        self.published.append(value)


def test_save_writes_one_state_while_fold_ins_land(tmp_path):
    """save read the factors and the seen matrix one attribute at a time: a fold-in adding a
    user between the reads gave a file whose seen matrix had more rows than its factors (load
    refused it) or factors of one state and seen rows of another."""
    data = datasets.synthetic_implicit(40, 30, 300, seed=4)
    for skip in range(4):
        model = _WritersLand(factors=4, iterations=1, random_state=0).fit(data)
        model.skip = skip
        model.land = lambda: model.update_users([model.user_factors.shape[0]], data[[0]])
        model.save(tmp_path / "model.npz")
        loaded = recfuse.load(tmp_path / "model.npz")
        assert any(np.array_equal(loaded.user_factors, state.user_factors)
                   and loaded._user_items.shape == state.user_items.shape
                   and (loaded._user_items != state.user_items).nnz == 0
                   for state in model.published if state.user_factors is not None), skip


def test_update_users_checks_the_row_against_the_state_it_folds_into():
    """update_users checked the row's width against the items before taking the writer lock:
    a fit on a larger catalogue landing in between had the row folded into the new items,
    a write no order of the two calls accepts (update then fit drops it, fit then update
    refuses it)."""
    small = datasets.synthetic_implicit(40, 30, 300, seed=4)
    large = datasets.synthetic_implicit(50, 45, 400, seed=5)
    for skip in range(4):
        model = _WritersLand(factors=4, iterations=1, random_state=0).fit(small)
        model.skip = skip
        model.land = lambda: model.fit(large)
        try:
            model.update_users([3], small[[3]])
        except ValueError as error:  # the fit landed first: the row no longer fits
            assert "must have 45 columns" in str(error), skip
        else:  # the fold-in was applied: to the catalogue its row was made for
            assert model.item_factors.shape[0] == 30, skip


def test_an_assignment_during_a_fold_in_is_not_lost(monkeypatch):
    """The factor setters replaced the state without the writer lock: an assignment made while
    update_users was solving was overwritten by the fold-in's publication (built from the
    state before it). Now the assignment waits for the fold-in, and is kept."""
    from recfuse.models import als

    data = datasets.synthetic_implicit(40, 30, 300, seed=4)
    model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(data)
    doubled = model.item_factors * 2
    assigner = threading.Thread(target=setattr, args=(model, "item_factors", doubled))
    solve = als.fold_in

    def assigned_meanwhile(*args, **kwargs):
        assigner.start()
        assigner.join(0.2)  # finishes at once without the lock; waits for it with the lock
        return solve(*args, **kwargs)

    monkeypatch.setattr(als, "fold_in", assigned_meanwhile)
    vectors = model.update_users([3], data[[3]])
    assigner.join()
    assert model.item_factors is doubled
    np.testing.assert_array_equal(model.user_factors[3], vectors[0])


def test_save_refuses_assigned_tables_that_load_would_refuse(data, tmp_path):
    """Assigned tables of another width than ``factors``, or of other row counts than the
    seen matrix, were written; the file then failed to load ("a file that later fails")."""
    path = tmp_path / "model.npz"
    for name, table, message in [
            ("user_factors", np.ones((300, 6), np.float32), "must have 4 columns"),
            ("user_factors", np.ones((305, 4), np.float32), "for 305 users and 120 items"),
            ("item_factors", np.full((120, 4), np.nan, np.float32), "finite")]:
        model = recfuse.ALS(factors=4, iterations=1, random_state=0).fit(data)
        setattr(model, name, table)
        with pytest.raises(ValueError, match=f"cannot save: .*{message}"):
            model.save(path)
        assert not path.exists()


@pytest.mark.parametrize("mmap", [False, True])
def test_a_file_with_part_of_the_seen_matrix_is_refused(fitted, tmp_path, mmap):
    """Without seen_indptr the other three seen arrays were ignored: the model loaded
    without its training matrix, and recommend (filter_seen) then failed."""
    path = tmp_path / "model.npz"
    fitted.save(path)
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files if name != "seen_indptr"}
    np.savez(path, **members)
    with pytest.raises(ValueError, match=r"seen matrix lacks \['seen_indptr'\]"):
        recfuse.load(path, mmap=mmap)


def test_shapes_beyond_memory_or_int32_are_refused_before_allocating():
    """A CSR matrix declared far wider or taller than its few entries: its factor tables
    that cannot fit memory are a MemoryError naming the rows and columns, before anything is
    allocated (they were NumPy's "Unable to allocate 64.0 GiB", or below the system's
    overcommit limit tables the OOM killer ends the process for); more than 2**31 - 1 rows
    is a ValueError (the transpose's int32 column indices would wrap). Run under a 6 GiB
    address-space limit, the machine taken to have 8 GiB."""
    from conftest import run_python

    run_python("""
import resource
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
import numpy as np, scipy.sparse as sp, pytest, recfuse
import recfuse._validation as check
check.physical_memory = lambda: 8 << 30
ones = np.ones(3, np.float32)
wide = sp.csr_matrix((ones, ([0, 1, 4], [0, 5, 2**31 - 2])), shape=(5, 2**31 - 1))
small = sp.random(30, 20, density=0.2, format="csr", random_state=0, dtype="float32")
for cls in (recfuse.ALS, recfuse.BPR):
    model = cls(factors=8, iterations=1, random_state=0).fit(small)
    before = model.user_factors.copy()
    with pytest.raises(MemoryError, match="columns \\\\(items\\\\) = 2147483647"):
        model.fit(wide)
    tall = sp.csr_matrix((ones, ([0, 1, 2], [0, 1, 2])), shape=(3, 3))
    tall._shape = (2**30, 3)  # as declared, without its 8 GiB of row pointers
    with pytest.raises(MemoryError, match="rows \\\\(users\\\\) = 1073741824"):
        model.fit(tall)
    np.testing.assert_array_equal(model.user_factors, before)
    tall = sp.csr_matrix((ones[:1], ([0], [1])), shape=(3, 5))
    tall._shape = (2**31 + 1, 5)  # no 16 GiB row pointers needed to be refused
    check.physical_memory = lambda: 1 << 50
    with pytest.raises(ValueError, match="2147483649 rows; at most 2147483647"):
        model.fit(tall)
    check.physical_memory = lambda: 8 << 30
""")


def test_repr_with_one_table_assigned_by_hand():
    model = recfuse.ALS(factors=2)
    model.user_factors = np.ones((3, 2), dtype=np.float32)  # the item table still to come
    assert repr(model).startswith("ALS(") and "fitted on" not in repr(model)
