"""Adversarial review of today's CG change (commit 5943167): a CG row fails, as a Cholesky
row that is not positive definite does, when a step's p·Ap is not a positive finite number in
the dtype or when its result holds inf or NaN.

The contract used here (python/recfuse/reference.py module docstring, ``conjugate_gradient``,
``als_half_sweep_counted``; README "cg bound" paragraph; models/als.py ``fold_in``,
``update_users``; compat/implicit.py): a failed row keeps its starting vector bit for bit and
is counted; every backend (numpy = the reference, numba, cpu at each SIMD level with its
generic, fixed-k and batched kernels, the cupy engine run on the host with NumPy) gives the
same count and keeps the same rows as the reference where the overflow is decisive (a step's
p·Ap is past the dtype's largest value by a wide margin); the other rows are solved as before
(0 failures on ordinary problems, same bits for 1 and 2 threads, a row's bits independent of
the other rows); ``ALS.fit`` warns with the sum of the half-sweeps' counts and keeps finite
factors; ``update_users`` / ``Recommender.observe`` refuse with nothing applied; DaskALS
reports the local fit's count; recfuse.compat.implicit raises with its factors unchanged.
The README's bound (confidences up to 6.98e12 in float32 and item vectors of length 1 or
less) is what "no overflow" means.

The finding: the reference (and so backend="numpy") forms A = YᵀY + λI + YᵀWY in the dtype
and fails rows far below that bound whose λ its rounding loses, rows the native backends
solve (strict xfail below).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recfuse
from conftest import backend_params, csr_matrices
from recfuse import reference
from recfuse._als.common import AlsParams, CsrArrays
from recfuse._backend import resolve_backend

HOST = [p.values[0] for p in backend_params(("cpu", "numba", "numpy")) if not p.marks]
HYPOTHESIS = settings(max_examples=30, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow])
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
# Confidences that make pAp = c³|y|⁴ (|y| = 6) overflow by a factor >= 30 (float32) and
# >= 150 (float64), yet stay below the up-front cg bound (6.98e12 / 5.6e102).
HUGE = {F32: (2e12, 6.9e12), F64: (3e102, 5.6e102)}


# ------------------------------------------------------------------------------ helpers


def _params(steps=3, reg=0.1, threads=0, confidence="raw", alpha=1.0):
    return AlsParams(regularization=reg, alpha=alpha, confidence=confidence, solver="cg",
                     cg_steps=steps, num_threads=threads)


def _simd_levels():
    from recfuse import _core
    return list(_core.supported_simd_levels())


def _run_everywhere(matrix, Y, X0, params):
    """{name: (X, failed)} for the reference, numpy, numba, cpu at each SIMD level and both
    thread counts, and the cupy engine on the host."""
    from recfuse import _core
    from recfuse._als import cupy_backend
    import scipy.sparse as scipy_sparse

    dtype = Y.dtype
    csr = CsrArrays.from_scipy(reference.canonical_csr(matrix, dtype), dtype)
    out = {}
    with np.errstate(all="ignore"):  # the overflow is the point
        out["reference"] = reference.als_half_sweep_counted(
            matrix, Y, X0, regularization=params.regularization, alpha=params.alpha,
            confidence=params.confidence, solver="cg", cg_steps=params.cg_steps)
    for name in HOST:
        if name == "cpu":
            original = _core.simd_level()
            try:
                for level in _simd_levels():
                    _core.set_simd_level(level)
                    for threads in (1, 2):
                        X = X0.copy()
                        failed = resolve_backend("cpu").half_sweep(
                            csr, Y, X, _params(params.cg_steps, params.regularization, threads,
                                               params.confidence, params.alpha))
                        out[f"cpu-{level}-{threads}"] = (X, failed)
            finally:
                _core.set_simd_level(original)
        else:
            X = X0.copy()
            out[name] = (X, resolve_backend(name).half_sweep(csr, Y, X, params))
    engine = cupy_backend._Engine(np, scipy_sparse, params, dtype)
    X = X0.copy()
    with np.errstate(all="ignore"):  # a device computes on; NumPy in its place would warn
        out["cupy-engine"] = (X, engine.sweep(cupy_backend._DeviceCsr(engine, csr), Y, X))
    return out


def _kept(X, X0):
    """The rows of X that are bit for bit their start."""
    return set(np.flatnonzero((X.view(np.uint8).reshape(X.shape[0], -1)
                               == X0.view(np.uint8).reshape(X0.shape[0], -1)).all(axis=1)))


def _overflow_problem(k, dtype, kinds, seed, huge=None):
    """A raw-confidence problem whose rows are of the given kinds: "huge" (item 0, |y_0| = 6,
    at a confidence in HUGE, plus ordinary entries), "ordinary", "empty" (no entry),
    "converged" (no entry and a zero start: r = 0, CG stops before any step), "long" and
    "huge_long" (270 entries: longer than every batched kernel takes). Returns (matrix, Y,
    X0, the rows that must fail)."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    items = 300 if any("long" in kind for kind in kinds) else 12
    dense = np.zeros((len(kinds), items))
    X0 = rng.standard_normal((len(kinds), k)) * 0.01
    failing = []
    for u, kind in enumerate(kinds):
        if kind in ("ordinary", "huge"):
            cols = rng.choice(np.arange(1, items), min(4, items - 1), replace=False)
            dense[u, cols] = rng.integers(1, 5, cols.size)
        elif kind in ("long", "huge_long"):
            cols = rng.choice(np.arange(1, items), 270, replace=False)
            dense[u, cols] = rng.integers(1, 5, cols.size)
        elif kind == "converged":
            X0[u] = 0
        if kind.startswith("huge"):
            low, high = HUGE[dtype]
            dense[u, 0] = huge if huge is not None else np.exp(rng.uniform(np.log(low),
                                                                            np.log(high)))
            failing.append(u)
    Y = rng.standard_normal((items, k)) * (0.3 / np.sqrt(k))
    Y[0] = rng.standard_normal(k)
    Y[0] *= 6 / np.linalg.norm(Y[0])
    return sp.csr_matrix(dense), Y.astype(dtype), X0.astype(dtype), failing


def _check_agreement(out, X0, failing, dtype, context):
    X_ref, failed_ref = out["reference"]
    assert failed_ref == len(failing), context
    assert np.isfinite(X_ref).all(), context
    # CG drift (loss of conjugacy once converged) makes float32 rows differ by several
    # percent: a loose check that solved rows were solved; the counts are the point
    tol = 0.1 if dtype == F32 else 1e-5
    solved = [u for u in range(X0.shape[0]) if u not in failing]
    for name, (X, failed) in out.items():
        assert failed == len(failing), (context, name, failed)
        assert set(failing) <= _kept(X, X0), (context, name)
        assert np.isfinite(X).all(), (context, name)
        for u in solved:
            gap = np.linalg.norm((X[u] - X_ref[u]).astype(np.float64))
            scale = np.linalg.norm(X_ref[u].astype(np.float64)) + np.linalg.norm(
                X0[u].astype(np.float64))
            assert gap <= tol * max(scale, 1.0), (context, name, u, gap, scale)
    # the cpu kernels: the same bits for 1 and 2 threads at every SIMD level
    for level in _simd_levels():
        one, two = out[f"cpu-{level}-1"][0], out[f"cpu-{level}-2"][0]
        assert np.array_equal(one.view(np.uint8), two.view(np.uint8)), (context, level)


# ------------------------------------------------------------------- decisive overflow


KS = [(1, F32), (3, F64), (32, F32), (64, F64), (100, F32), (128, F32), (128, F64),
      (256, F32), (256, F64)]


@pytest.mark.parametrize("k, dtype", KS, ids=[f"k{k}-{d.name}" for k, d in KS])
@pytest.mark.parametrize("steps", [1, 3, 10])
def test_overflowing_rows_fail_alike_on_every_backend(k, dtype, steps):
    """Rows of every kind side by side (batched and lone rows of the fixed-k kernels, the
    runtime-k kernel at k = 1, 3, 100): the same count and the same kept rows everywhere."""
    kinds = ["huge", "ordinary", "empty", "huge", "converged", "ordinary", "huge"] * 2
    matrix, Y, X0, failing = _overflow_problem(k, dtype, kinds, seed=k + steps)
    out = _run_everywhere(matrix, Y, X0, _params(steps))
    _check_agreement(out, X0, failing, dtype, f"k={k} {dtype.name} steps={steps}")


@pytest.mark.parametrize("k, dtype", [(128, F32), (64, F64), (256, F32), (3, F32)])
def test_long_and_short_overflowing_rows_are_counted_together(k, dtype):
    """At k = 128 float32 / 64 float64 rows up to cg_longest_row go to the batched kernel and
    longer ones run alone: failures of both kinds add up, across 2 threads too."""
    kinds = ["huge_long", "huge", "long", "ordinary", "huge", "huge_long", "empty"] * 2
    matrix, Y, X0, failing = _overflow_problem(k, dtype, kinds, seed=5)
    out = _run_everywhere(matrix, Y, X0, _params(3))
    _check_agreement(out, X0, failing, dtype, f"long rows k={k} {dtype.name}")


@pytest.mark.parametrize("dtype", [F32, F64])
def test_zero_cg_steps_changes_nothing_and_counts_nothing(dtype):
    """cg_steps = 0 (the backends take it; the models start at 1): no step, no p·Ap, so no
    failure even on the overflowing rows, and every row is its start bit for bit."""
    kinds = ["huge", "ordinary", "empty", "converged"]
    for k in (3, 64, 128):
        matrix, Y, X0, _ = _overflow_problem(k, dtype, kinds, seed=1)
        out = _run_everywhere(matrix, Y, X0, _params(0))
        for name, (X, failed) in out.items():
            assert failed == 0, (k, name)
            assert _kept(X, X0) == set(range(len(kinds))), (k, name)


@given(k=st.sampled_from([1, 2, 3, 5, 8, 32, 64, 128]), dtype=st.sampled_from([F32, F64]),
       kinds=st.lists(st.sampled_from(["huge", "ordinary", "empty", "converged"]),
                      min_size=1, max_size=9),
       steps=st.sampled_from([1, 3, 10]), reg=st.sampled_from([0.01, 0.1, 1.0]),
       seed=st.integers(0, 2**31))
@HYPOTHESIS
def test_drawn_overflow_problems_agree_with_the_reference(k, dtype, kinds, steps, reg, seed):
    matrix, Y, X0, failing = _overflow_problem(k, dtype, kinds, seed)
    out = _run_everywhere(matrix, Y, X0, _params(steps, reg))
    _check_agreement(out, X0, failing, dtype, f"k={k} {dtype.name} {kinds} {steps} {reg}")


@pytest.mark.parametrize("dtype", [F32, F64])
def test_a_failing_row_leaves_the_other_rows_bits_alone(dtype):
    """Rows are independent (documented for the batched kernel too): the ordinary rows'
    bits are the same with and without the overflowing rows in the sweep."""
    kinds = ["huge", "ordinary", "ordinary", "huge", "ordinary", "empty", "ordinary",
             "huge", "ordinary"]
    for k in (3, 64, 128):
        matrix, Y, X0, failing = _overflow_problem(k, dtype, kinds, seed=k)
        keep = [u for u in range(len(kinds)) if u not in failing]
        full = _run_everywhere(matrix, Y, X0, _params(3))
        alone = _run_everywhere(matrix[keep], Y, X0[keep].copy(), _params(3))
        for name in full:
            if name in ("reference", "cupy-engine"):  # whole-matrix BLAS products on the
                continue  # host: their blocking depends on the row count (not a device claim)
            X_full, X_alone = full[name][0][keep], alone[name][0]
            assert np.array_equal(X_full.view(np.uint8), X_alone.view(np.uint8)), (k, name)


# ------------------------------------------------------------ ordinary problems: no change


@given(matrix=csr_matrices(max_rows=12, max_cols=10, max_value=50.0, allow_negative=True),
       k=st.sampled_from([1, 2, 5, 9, 32, 64, 128]), dtype=st.sampled_from([F32, F64]),
       confidence=st.sampled_from(["linear", "raw"]), reg=st.floats(0.01, 1.0),
       alpha=st.floats(0.0, 5.0), steps=st.integers(1, 10), seed=st.integers(0, 2**31))
@HYPOTHESIS
def test_ordinary_problems_report_no_failure_on_any_backend(matrix, k, dtype, confidence, reg,
                                                           alpha, steps, seed):
    """The tests' usual problem sizes (λ >= 0.01, values up to 50): no backend fails a row,
    every factor is finite, cpu gives the same bits on 1 and 2 threads."""
    if confidence == "linear":
        matrix = abs(matrix)
    rng = np.random.default_rng(seed)
    Y = rng.standard_normal((matrix.shape[1], k)).astype(dtype)
    X0 = rng.standard_normal((matrix.shape[0], k)).astype(dtype)
    out = _run_everywhere(matrix, Y, X0, _params(steps, reg, 0, confidence, alpha))
    for name, (X, failed) in out.items():
        assert failed == 0, name
        assert np.isfinite(X).all(), name
    for level in _simd_levels():
        one, two = out[f"cpu-{level}-1"][0], out[f"cpu-{level}-2"][0]
        assert np.array_equal(one.view(np.uint8), two.view(np.uint8)), level


@pytest.mark.parametrize("reg", [0.0, 1e-30])
def test_rank_deficient_systems_with_zero_regularization_converge_without_failure(reg):
    """λ = 0 (or tiny) with more factors than items: G is singular, but b and A x lie in its
    range, so a modest problem converges and no backend reports a failure."""
    matrix = sp.csr_matrix(np.array([[1.0, 0, 2], [0, 3, 0], [0, 0, 0], [1, 1, 1]]))
    rng = np.random.default_rng(0)
    for k in (5, 32):
        Y = rng.standard_normal((3, k)).astype(np.float64)
        X0 = rng.standard_normal((4, k)).astype(np.float64)
        out = _run_everywhere(matrix, Y, X0, _params(3, reg, 0, "linear"))
        for name, (X, failed) in out.items():
            assert failed == 0, (k, name)
            assert np.isfinite(X).all(), (k, name)


# ------------------------------------------- the finding: the reference's explicit A


def _unit_vector_problem(seed, confidence=1e9):
    """One float32 row: a confidence 7,000 times below the cg bound on an item of length 1,
    two ordinary entries, λ = 0.01 (ALS's default), a small start. p·Ap <= c³ ~ 1e27: no
    overflow anywhere; cond(A) ~ 1e11 is far past float32's 1/eps, and the native kernels
    (A p as G p + Σ w (y·p) y) solve it."""
    rng = np.random.default_rng(seed)
    dense = np.zeros((1, 6))
    dense[0, :3] = [confidence, 1.0, 2.0]
    Y = rng.standard_normal((6, 3))
    Y /= np.linalg.norm(Y, axis=1)[:, None]
    X0 = rng.standard_normal((1, 3)) * 0.1
    return sp.csr_matrix(dense), Y.astype(np.float32), X0.astype(np.float32)


def test_native_backends_solve_unit_vector_rows_below_the_bound():
    """The native kernels' side of the finding below: no failure on any of the seeds."""
    for seed in range(10):
        matrix, Y, X0 = _unit_vector_problem(seed)
        out = _run_everywhere(matrix, Y, X0, _params(3, 0.01))
        for name, (X, failed) in out.items():
            if name not in ("reference", "numpy"):
                assert failed == 0, (seed, name)


def test_numpy_backend_does_not_fail_rows_the_native_backends_solve():
    params = _params(3, 0.01)
    counts = []
    for seed in range(10):
        matrix, Y, X0 = _unit_vector_problem(seed)
        X = X0.copy()
        counts.append(resolve_backend("numpy").half_sweep(
            CsrArrays.from_scipy(matrix.astype(np.float32), np.float32), Y, X, params))
    assert counts == [0] * 10


def test_numpy_backend_fold_in_below_the_bound_is_accepted_as_on_cpu():
    seen = sp.random(40, 6, density=0.3, format="csr", random_state=0, dtype="float32")
    refused = {}
    for backend in HOST:
        refused[backend] = []
        for seed in range(10):
            als = recfuse.ALS(factors=3, iterations=1, random_state=0, confidence="raw",
                              backend=backend).fit(seen)
            _, Y, X0 = _unit_vector_problem(seed)
            als.item_factors = Y
            als.user_factors = np.repeat(X0, 40, axis=0)
            row = sp.csr_matrix(([1e9, 1.0, 2.0], ([0, 0, 0], [0, 1, 2])), shape=(1, 6),
                                dtype=np.float32)
            try:
                als.update_users([3], row)
                refused[backend].append(False)
            except ValueError:
                refused[backend].append(True)
    assert refused == {backend: [False] * 10 for backend in HOST}


# ---------------------------------------------------------------------- the API paths


def _fit_problem(dtype=np.float32):
    """A raw-confidence fit whose user half-sweeps overflow decisively: three users hold a
    confidence below the bound on items whose starting vectors have length 6."""
    rng = np.random.default_rng(3)
    dense = (rng.random((20, 15)) < 0.3) * rng.integers(1, 5, (20, 15)).astype(float)
    dense[:, :3] = 0
    dense[[1, 6, 11], [0, 1, 2]] = 5e12 if np.dtype(dtype) == F32 else 5e102
    dense[[1, 6, 11], [3, 4, 5]] = 2.0  # each also has an ordinary item
    X = (rng.standard_normal((20, 4)) * 0.01).astype(dtype)
    Y = (rng.standard_normal((15, 4)) * 0.3).astype(dtype)
    Y[:3] *= 6 / np.linalg.norm(Y[:3], axis=1)[:, None]
    return sp.csr_matrix(dense), X, Y


@pytest.mark.parametrize("backend", HOST)
def test_fit_warns_with_the_sum_of_the_half_sweeps_counts(backend):
    matrix, X0, Y0 = _fit_problem()
    params = _params(3, 0.1)
    module = resolve_backend(backend)
    users = CsrArrays.from_scipy(matrix.astype(np.float32), np.float32)
    items = users.transpose()
    # the width the fit trains at (cpu pads k = 4 to 32 with zero columns)
    width = module.training_width(4, params) if hasattr(module, "training_width") else 4
    X, Y = (np.pad(T, ((0, 0), (0, width - 4))) for T in (X0, Y0))
    total, first = 0, None
    with np.errstate(all="ignore"):
        for _ in range(2):
            failed = module.half_sweep(users, Y, X, params)
            first = failed if first is None else first
            total += failed + module.half_sweep(items, X, Y, params)
    assert first == 3 and total >= 3
    model = recfuse.ALS(factors=4, iterations=2, regularization=0.1, confidence="raw",
                        backend=backend, num_threads=0)
    with pytest.warns(RuntimeWarning, match=rf"^{total} row systems were not positive "
                                            r"definite or overflowed float32 and kept their "
                                            r"previous vectors"):
        model.fit(matrix.astype(np.float32), initial_factors=(X0.copy(), Y0.copy()))
    assert np.isfinite(model.user_factors).all() and np.isfinite(model.item_factors).all()
    # the same factors as the half-sweeps, but rows without an entry end at zero (fit's rule)
    empty = np.diff(users.indptr) == 0
    assert not model.user_factors[empty].any()
    X, Y = X[:, :4], Y[:, :4]
    np.testing.assert_allclose(model.user_factors[~empty], X[~empty], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.item_factors, Y, rtol=1e-4, atol=1e-6)


def _fitted_with_a_long_item(backend):
    seen = sp.random(40, 30, density=0.2, format="csr", random_state=0, dtype="float32")
    als = recfuse.ALS(factors=4, iterations=3, random_state=0, confidence="raw",
                      backend=backend).fit(seen)
    Y = als.item_factors.copy()
    Y[7] *= 6 / np.linalg.norm(Y[7])
    als.item_factors = Y
    return als


@pytest.mark.parametrize("backend", HOST)
def test_update_users_refuses_an_overflowing_row_and_changes_nothing(backend):
    als = _fitted_with_a_long_item(backend)
    users, items = als.user_factors.copy(), als.item_factors.copy()
    seen = als._state.user_items.copy()
    row = sp.csr_matrix(([5e12, 1.0], ([0, 0], [7, 8])), shape=(1, 30), dtype=np.float32)
    for ids in ([3], [45]):  # a known user, and a new one (the table would grow)
        with pytest.raises(ValueError, match="the fold-in diverged: 1 row system"):
            als.update_users(ids, row)
        assert np.array_equal(als.user_factors, users)
        assert np.array_equal(als.item_factors, items)
        assert (als._state.user_items != seen).nnz == 0
        assert als._state.user_items.shape == seen.shape
    # an ordinary event still folds in afterwards
    ordinary = sp.csr_matrix(([5.0], ([0], [7])), shape=(1, 30), dtype=np.float32)
    assert np.isfinite(als.update_users([3], ordinary)).all()


@pytest.mark.parametrize("backend", HOST)
def test_observe_refuses_an_overflowing_event_with_nothing_applied(backend):
    rec = recfuse.Recommender(_fitted_with_a_long_item(backend), k=5)
    before = rec.recommend(3)
    calls, pending, info = rec.observed_calls, rec.pending_events(), rec.info()
    with pytest.raises(ValueError, match="the fold-in diverged"):
        rec.observe({"user": [3, 3], "item": [7, 8], "weight": [5e12, 1.0]})
    after = rec.recommend(3)
    assert np.array_equal(after.ids, before.ids) and np.array_equal(after.scores, before.scores)
    assert rec.observed_calls == calls
    assert rec.pending_events().users.size == pending.users.size
    assert rec.info()["observed_users"] == info["observed_users"]
    assert rec.observe({"user": [3], "item": [8]}) == 1  # the next ordinary event applies


@pytest.mark.parametrize("use_native", [True, False])
def test_compat_implicit_cg_fit_raises_and_keeps_the_factors(use_native):
    from recfuse.compat.implicit import AlternatingLeastSquares

    matrix, X0, Y0 = _fit_problem()
    model = AlternatingLeastSquares(factors=4, iterations=2, regularization=0.1, use_cg=True,
                                    use_gpu=False, use_native=use_native, random_state=0)
    model.user_factors, model.item_factors = X0.copy(), Y0.copy()
    with pytest.raises(ValueError, match=r"row systems were not positive definite or their "
                                         r"CG steps overflowed"):
        model.fit(matrix.astype(np.float32), show_progress=False)
    assert np.array_equal(model.user_factors, X0) and np.array_equal(model.item_factors, Y0)


def test_dask_count_equals_the_local_fit_count():
    pytest.importorskip("dask.dataframe", reason="dask[dataframe] is not installed")
    distributed = pytest.importorskip("distributed", reason="dask distributed is not installed")
    pd = pytest.importorskip("pandas")
    import dask.dataframe as dd
    from recfuse.distributed import DaskALS, initial_factors

    # users 1, 6, 11 hold a confidence below the bound; after the first item sweep those
    # items' vectors are ~1/|x| long, and the next user sweeps overflow decisively
    rng = np.random.default_rng(3)
    dense = (rng.random((30, 20)) < 0.3) * rng.integers(1, 5, (30, 20)).astype(float)
    dense[[1, 6, 11], [0, 1, 2]] = 5e12
    matrix = sp.csr_matrix(dense)
    settings_ = dict(factors=4, iterations=3, regularization=0.1, confidence="raw")
    start = (initial_factors(np.arange(30), 4, 7, "users", np.float32),
             initial_factors(np.arange(20), 4, 7, "items", np.float32))
    with warnings.catch_warnings(record=True) as local:
        warnings.simplefilter("always")
        recfuse.ALS(dtype=np.float32, backend="cpu", **settings_).fit(
            matrix, initial_factors=start)
    local = [str(w.message) for w in local if "definite" in str(w.message)]
    assert len(local) == 1 and int(local[0].split()[0]) >= 3
    coo = matrix.tocoo()
    frame = pd.DataFrame({"user": coo.row.astype(np.int64), "item": coo.col.astype(np.int64),
                          "weight": coo.data})
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0", silence_logs=40) as cluster, \
            distributed.Client(cluster):
        for blocks in (None, 3):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                DaskALS(dtype=np.float32, blocks=blocks, random_state=7, **settings_).fit(
                    dd.from_pandas(frame, npartitions=2), "user", "item", "weight")
            assert [str(w.message) for w in caught if "definite" in str(w.message)] == local


@pytest.mark.parametrize("backend", HOST)
def test_fold_in_of_a_row_without_positive_values_is_zero_even_where_its_cg_overflows(backend):
    """A row with no value > 0 solves to the zero vector whatever its confidences, so the
    fold-in does not solve it: a dislike of 1e12 on a long item (whose CG steps from the
    user's current vector overflow float32) gives zeros, where it was refused; the other
    rows of the call are solved as before."""
    def fitted():
        model = recfuse.ALS(factors=2, iterations=0, solver="cg", confidence="raw",
                            dtype=np.float32, backend=backend, regularization=0.1)
        Y = np.array([[6.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
        return model.fit(sp.csr_matrix(np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]], float)),
                         initial_factors=(np.full((3, 2), 0.5, np.float32), Y))

    alone = fitted().update_users([1], sp.csr_matrix(np.array([[1.0, 0, 2.0]])))
    both = fitted().update_users([0, 1], sp.csr_matrix(np.array([[-1e12, 0, 0],
                                                                 [1.0, 0, 2.0]])))
    np.testing.assert_array_equal(both[0], [0, 0])
    np.testing.assert_array_equal(both[1], alone[0])
