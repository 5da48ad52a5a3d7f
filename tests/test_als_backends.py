"""The ALS backend contract: every backend's half_sweep and data_loss against recfuse.reference.

Each backend module (cuda, cpu, numba, cupy, numpy; see recfuse/_als/common.py) must
re-solve the rows of X as ``reference.als_half_sweep`` does, up to rounding, give the same
data loss as the NumPy backend, and give bit-identical results on repeated calls and (CPU
backends) for any thread count or SIMD level.

How close "up to rounding" is depends on the row, and the checks say so explicitly. The
normal equations A_u x = b_u of every row are built here in float64 from the dense confidence
matrix, independently of every kernel, together with |A|_u and |b|_u, the same sums taken
over absolute values (what rounding errors are proportional to: b_u = Σ q y often cancels).

Cholesky: the backend's row must be within TOLERANCE of the reference's relative to the
row, or, where the system is ill conditioned, within the forward error that rounding can
cause, eps·‖A⁻¹‖(‖|A|‖‖x‖ + ‖|b|‖). On every row, well or ill conditioned, its relative
residual ‖A x − b‖/(‖|A|‖‖x‖ + ‖|b|‖) must be as small as the reference's: a backward-stable
solve leaves about eps, a wrong kernel leaves O(1).

CG: a few steps of CG are not a solution, so only the comparison with the reference's
iterate tells whether the steps are the same. That comparison is as sharp as TOLERANCE
while the iteration is far from converged; once the residual ‖r_j‖ has fallen to a small
fraction ρ of ‖r_0‖ the next directions are built from rounding noise and two correct
implementations drift apart by about eps·cond(A)/ρ² (loss of conjugacy). The allowed gap
widens by exactly that (computed from a float64 run of the same iteration), and every row
must also not increase the CG energy ½(x − x*)ᵀA(x − x*) over the starting point's.
"""

from __future__ import annotations

import copy
import dataclasses
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from conftest import backend_params, csr_matrices, examples, run_python
from hypothesis import given, settings
from hypothesis import strategies as st

import recfuse
from recfuse import reference
from recfuse._als.common import AlsParams, CsrArrays, normalised_loss
from recfuse._backend import resolve_backend

DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
SOLVERS = ["cg", "cholesky"]
CONFIDENCES = ["linear", "raw"]

# Row agreement relative to the size of the row, where rounding cannot explain more.
TOLERANCE = {np.dtype(np.float32): 2e-3, np.dtype(np.float64): 1e-8}
# Multiples of the rounding estimates (forward error, CG drift) a correct backend stays within.
# On 10^4 random rows per dtype and solver the cpu and numba backends stayed at least 6 times
# inside these limits.
FORWARD_ERROR_FACTOR = 4.0
CG_DRIFT_FACTOR = 3.0
# data_loss agreement relative to Σ|terms| (float32 backends may form dots in float32).
LOSS_TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


# ---------------------------------------------------------------------------- problems
class Problem:
    """A CSR matrix, factors drawn from a seed, and the ALS parameters of one half-sweep."""

    def __init__(self, matrix, seed, k, regularization, alpha, confidence, solver, cg_steps,
                 dtype, num_threads=0):
        self.dtype = np.dtype(dtype)
        self.matrix = matrix.astype(self.dtype)
        rng = np.random.default_rng(seed)
        rows, cols = matrix.shape
        self.Y = rng.standard_normal((cols, k)).astype(self.dtype)
        self.X0 = rng.standard_normal((rows, k)).astype(self.dtype)
        self.params = AlsParams(regularization=regularization, alpha=alpha, confidence=confidence,
                                solver=solver, cg_steps=cg_steps, num_threads=num_threads)

    @property
    def csr(self) -> CsrArrays:
        return CsrArrays.from_scipy(self.matrix, self.dtype)

    def run(self, module, *, gram=None, params=None):
        """(new X, rows left unchanged) from one backend half-sweep starting at X0."""
        X = self.X0.copy()
        failed = module.half_sweep(self.csr, self.Y, X, params or self.params, gram=gram)
        return X, failed

    def reference(self):
        p = self.params
        return reference.als_half_sweep(
            self.matrix, self.Y, self.X0, regularization=p.regularization, alpha=p.alpha,
            confidence=p.confidence, solver=p.solver, cg_steps=p.cg_steps,
        )

    def normal_equations(self):
        """(A, b, |A|, |b|) for every row, float64, from the dense confidence matrix.

        A_u = Yᵀ C_u Y + λI and b_u = Yᵀ C_u p_u; |A|_u and |b|_u sum the absolute values of
        the terms a kernel adds up: Σ_i (1 + |w_ui|) |y_i||y_i|ᵀ + λI and Σ_i |q_ui| |y_i|.
        """
        rows, cols = self.matrix.shape
        k = self.Y.shape[1]
        C = np.ones((rows, cols))
        P = np.zeros((rows, cols))
        coo = self.matrix.tocoo()  # keeps explicit zeros: a stored 0 has c = 0 under "raw"
        values = coo.data.astype(np.float64)
        if self.params.confidence == "raw":
            C[coo.row, coo.col] = np.abs(values)
        else:
            C[coo.row, coo.col] = 1.0 + self.params.alpha * values
        P[coo.row, coo.col] = values > 0
        Y = self.Y.astype(np.float64)
        eye = self.params.regularization * np.eye(k)
        def weighted_grams(weights, Z):  # Σ_i weights[u, i] z_i z_iᵀ for every row u
            out = np.zeros((rows, k, k))
            for u, c in enumerate(weights):
                out[u] = (Z.T * c) @ Z
            return out

        A = weighted_grams(C, Y) + eye
        b = np.einsum("ui,ui,ia->ua", C, P, Y)
        abs_Y = np.abs(Y)
        A_abs = weighted_grams(1.0 + np.abs(C - 1.0), abs_Y) + eye
        b_abs = np.einsum("ui,ui,ia->ua", np.abs(C), P, abs_Y)
        return A, b, A_abs, b_abs


@st.composite
def problems(draw, dtype, confidence, solver, max_rows=12, max_cols=10):
    matrix = draw(csr_matrices(max_rows=max_rows, max_cols=max_cols, dtype=dtype,
                               allow_negative=confidence == "raw"))
    return Problem(
        matrix,
        seed=draw(st.integers(0, 2**32 - 1)),
        k=draw(st.integers(1, 9)),
        regularization=draw(st.floats(0.01, 1.0)),
        alpha=draw(st.floats(0.0, 5.0)),
        confidence=confidence,
        solver=solver,
        cg_steps=draw(st.integers(1, 5)),
        dtype=dtype,
    )


def matrix_of_lengths(rng, lengths, cols, confidence):
    """A CSR matrix whose row u holds lengths[u] distinct random columns of cols, with values
    for the confidence: raw ones include values below 1 and negative ones."""
    indices = np.concatenate([np.sort(rng.choice(cols, n, replace=False)) for n in lengths])
    if confidence == "raw":
        values = rng.choice([-2.0, -0.5, 0.25, 0.5, 2.0, 3.0], indices.size)
    else:
        values = rng.integers(1, 10, indices.size).astype(np.float64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    return sp.csr_matrix((values, indices, indptr), shape=(len(lengths), cols))


def each_simd_level():
    """Sets the native kernels to each SIMD level this machine runs, in turn; restores the
    level it found afterwards (also when the caller's loop fails)."""
    from recfuse import _core

    original = _core.simd_level()
    try:
        for level in _core.supported_simd_levels():
            _core.set_simd_level(level)
            assert _core.simd_level() == level
            yield level
    finally:
        _core.set_simd_level(original)


# ---------------------------------------------------------------------------- comparisons
def _norm(v) -> float:
    return float(np.linalg.norm(np.asarray(v, dtype=np.float64)))


def cg_residual_history(A, b, x0, steps) -> np.ndarray:
    """‖r_j‖ for j = 0..steps of the reference's CG, run here in float64 on the float64 system."""
    x = np.array(x0, dtype=np.float64)
    r = b - A @ x
    p = r.copy()
    rs_old = r @ r
    history = [np.sqrt(rs_old)]
    if rs_old < reference.CG_TOLERANCE:
        return np.array(history)
    for _ in range(steps):
        Ap = A @ p
        step = rs_old / (p @ Ap)
        x += step * p
        r -= step * Ap
        rs_new = r @ r
        history.append(np.sqrt(rs_new))
        if rs_new < reference.CG_TOLERANCE:
            break
        p = r + (rs_new / rs_old) * p
        rs_old = rs_new
    return np.array(history)


def scaled_residual(A, b, A_abs, b_abs, x) -> float:
    """‖A x − b‖ / (‖|A|‖‖x‖ + ‖|b|‖): about eps for a backward-stable solve."""
    x = np.asarray(x, dtype=np.float64)
    denominator = np.linalg.norm(A_abs, 2) * np.linalg.norm(x) + np.linalg.norm(b_abs)
    return float(np.linalg.norm(A @ x - b) / denominator) if denominator else 0.0


def assert_rows_match(problem: Problem, X, X_ref, equations=None):
    """Every row of a backend's X agrees with the reference's (see the module docstring).

    equations: problem.normal_equations(), when the caller has them already."""
    dtype = problem.dtype
    tol = TOLERANCE[dtype]
    eps = float(np.finfo(dtype).eps)
    k = problem.Y.shape[1]
    assert X.shape == X_ref.shape and X.dtype == X_ref.dtype == dtype
    assert np.all(np.isfinite(X)), "backend produced non-finite factors"
    A, b, A_abs, b_abs = problem.normal_equations() if equations is None else equations
    for u in range(X.shape[0]):
        x, x_ref = X[u].astype(np.float64), X_ref[u].astype(np.float64)
        x0 = problem.X0[u].astype(np.float64)
        gap = _norm(x - x_ref)

        def context(u=u):  # only on failure: cond(A) costs an SVD
            return (f"row {u}: backend {X[u]}, reference {X_ref[u]}, "
                    f"cond(A) {np.linalg.cond(A[u]):.3g}, {problem.params}")

        if problem.params.solver == "cholesky":
            # A and |A| are symmetric: their 2-norms are their largest absolute eigenvalues.
            inverse_norm = 1.0 / np.abs(np.linalg.eigvalsh(A[u])).min()
            a_abs = np.abs(np.linalg.eigvalsh(A_abs[u])).max()
            # Values near the underflow threshold (hypothesis draws subnormal entries) are
            # rounded to a multiple of the smallest subnormal, an absolute error.
            subnormal = float(np.finfo(dtype).smallest_subnormal)
            underflow = k * subnormal * (1 + inverse_norm) * (1 + a_abs)
            forward_error = (eps * inverse_norm * (a_abs * _norm(x_ref) + _norm(b_abs[u]))
                             + underflow)
            allowed = max(tol * _norm(x_ref), FORWARD_ERROR_FACTOR * forward_error)
            assert gap <= allowed, f"{context()}: gap {gap:.3g} > {allowed:.3g}"
            # Residual, relative to |A|, |b|: as small as the reference's (about eps), or at
            # the floor that rounding sets.
            ours = scaled_residual(A[u], b[u], A_abs[u], b_abs[u], x)
            theirs = scaled_residual(A[u], b[u], A_abs[u], b_abs[u], x_ref)
            denominator = a_abs * _norm(x) + _norm(b_abs[u])
            residual = _norm(A[u] @ x - b[u])
            limit = 4 * max(max(theirs, k * eps) * denominator, underflow)
            assert residual <= limit, f"{context()}: residual {ours:.3g} vs reference {theirs:.3g}"
        else:
            history = cg_residual_history(A[u], b[u], x0, problem.params.cg_steps)
            rho = history[1:].min() / history[0] if history.size > 1 else 1.0
            drift = (CG_DRIFT_FACTOR * eps * np.linalg.cond(A[u]) / rho**2) if rho > 0 else np.inf
            allowed = max(tol, drift) * (_norm(x_ref) + _norm(x0))
            assert gap <= allowed, f"{context()}: gap {gap:.3g} > {allowed:.3g} (rho {rho:.3g})"
            solution = np.linalg.solve(A[u], b[u])

            def energy(v):
                return 0.5 * (v - solution) @ A[u] @ (v - solution)

            slack = 8 * k * eps * np.linalg.norm(A_abs[u], 2) * (_norm(x0) + _norm(solution)) ** 2
            assert energy(x) <= energy(x0) + slack, f"{context()}: CG increased the energy"


def loss_scale(problem: Problem, X) -> float:
    """Σ of the absolute values of every term of data_loss: what its rounding is relative to."""
    X64, Y64 = X.astype(np.float64), problem.Y.astype(np.float64)
    R = problem.csr
    # |x|ᵀ (|Y|ᵀ|Y|) |x|: the quadratic term's products before any cancellation (YᵀY and xᵀGx
    # are sums of terms of both signs; their rounding scales with the absolute values).
    abs_X, abs_Y = np.abs(X64), np.abs(Y64)
    quadratic = float(np.einsum("uk,kl,ul->u", abs_X, abs_Y.T @ abs_Y, abs_X).sum())
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    d = np.einsum("nk,nk->n", X64[rows], Y64[R.indices])
    w, q = reference.confidence_weights(R.data.astype(np.float64), problem.params.alpha,
                                        problem.params.confidence)
    return quadratic + float((np.abs(q) * (1 + 2 * np.abs(d)) + np.abs(w) * d * d).sum())


def assert_bit_identical(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert np.array_equal(a.view(np.uint8), b.view(np.uint8)), f"{what} differ bitwise"


# ---------------------------------------------------------------------------- tests
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
@given(data=st.data(), use_gram=st.booleans())
def test_half_sweep_matches_reference(backend, dtype, solver, confidence, data, use_gram):
    module = resolve_backend(backend)
    problem = data.draw(problems(dtype, confidence, solver))
    gram = reference.gram(problem.Y) if use_gram else None
    X, failed = problem.run(module, gram=gram)
    # λ ≥ 0.01 and c ≥ 0 make every system positive definite.
    assert failed == 0
    assert_rows_match(problem, X, problem.reference())


@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
@given(data=st.data())
def test_data_loss_matches_numpy_backend(backend, dtype, confidence, data):
    module = resolve_backend(backend)
    numpy_backend = resolve_backend("numpy")
    problem = data.draw(problems(dtype, confidence, "cg"))
    X = problem.X0
    ours = module.data_loss(problem.csr, X, problem.Y, problem.params)
    theirs = numpy_backend.data_loss(problem.csr, X, problem.Y, problem.params)
    assert isinstance(ours, float)
    scale = loss_scale(problem, X)
    assert abs(ours - theirs) <= LOSS_TOLERANCE[problem.dtype] * scale, (ours, theirs, scale)
    # ... and, finished by normalised_loss, it is reference.als_loss.
    finished = normalised_loss(ours, X, problem.Y, problem.csr, problem.params)
    # Σ c over all pairs as normalised_loss and reference.als_loss sum it (1 for each pair not
    # stored, c for each stored one): 1 + Σ(c − 1) rounds tiny confidences to a total of 0.
    stored_confidence, _ = reference.confidence_and_preference(
        problem.matrix.data.astype(np.float64), problem.params.alpha, confidence)
    total_confidence = (problem.matrix.shape[0] * problem.matrix.shape[1] - problem.matrix.nnz
                        + float(stored_confidence.sum()))
    if total_confidence == 0:
        # Every cell stored with c = 0 ("raw" zeros): no confidence to normalise by, and
        # normalised_loss and reference.als_loss both say 0.0.
        assert finished == 0.0
        assert reference.als_loss(problem.matrix, X, problem.Y,
                                  regularization=problem.params.regularization,
                                  alpha=problem.params.alpha, confidence=confidence) == 0.0
        return
    expected = reference.als_loss(problem.matrix, X, problem.Y,
                                  regularization=problem.params.regularization,
                                  alpha=problem.params.alpha, confidence=confidence)
    penalty = problem.params.regularization * (_norm(X) ** 2 + _norm(problem.Y) ** 2)
    slack = LOSS_TOLERANCE[problem.dtype] * (scale + penalty) / abs(total_confidence)
    assert abs(finished - expected) <= slack, (finished, expected)


@pytest.mark.parametrize("backend", backend_params())
@given(data=st.data(), solver=st.sampled_from(SOLVERS), confidence=st.sampled_from(CONFIDENCES),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_same_inputs_give_bit_identical_outputs(backend, data, solver, confidence, dtype):
    module = resolve_backend(backend)
    problem = data.draw(problems(dtype, confidence, solver))
    first, failed_first = problem.run(module)
    second, failed_second = problem.run(module)
    assert failed_first == failed_second
    assert_bit_identical(first, second, "two half-sweeps")
    loss_first = module.data_loss(problem.csr, first, problem.Y, problem.params)
    loss_second = module.data_loss(problem.csr, first, problem.Y, problem.params)
    assert np.float64(loss_first).tobytes() == np.float64(loss_second).tobytes()


@st.composite
def larger_problems(draw, solver, confidence, dtype):
    """Enough rows (and columns) to be split across threads."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows, cols = draw(st.integers(130, 400)), draw(st.integers(1, 300))
    matrix = sp.random(rows, cols, density=draw(st.floats(0.0, 0.2)), format="csr",
                       random_state=rng, dtype=np.float64)
    matrix.data = np.round(matrix.data * 20 - (10 if confidence == "raw" else 0))
    return Problem(matrix, seed=seed, k=draw(st.integers(1, 9)),
                   regularization=draw(st.floats(0.01, 1.0)), alpha=draw(st.floats(0.0, 5.0)),
                   confidence=confidence, solver=solver, cg_steps=draw(st.integers(1, 5)),
                   dtype=dtype)


@pytest.mark.parametrize("backend", backend_params(("cpu", "numba")))
@given(data=st.data(), solver=st.sampled_from(SOLVERS), confidence=st.sampled_from(CONFIDENCES),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_thread_count_does_not_change_results(backend, data, solver, confidence, dtype):
    module = resolve_backend(backend)
    problem = data.draw(larger_problems(solver, confidence, dtype))
    results = {}
    for threads in (1, 2):
        params = dataclasses.replace(problem.params, num_threads=threads)
        X, failed = problem.run(module, params=params)
        loss = module.data_loss(problem.csr, X, problem.Y, params)
        results[threads] = (X, failed, loss)
    (X1, failed1, loss1), (X2, failed2, loss2) = results[1], results[2]
    assert failed1 == failed2
    assert_bit_identical(X1, X2, "1-thread and 2-thread half-sweeps")
    assert np.float64(loss1).tobytes() == np.float64(loss2).tobytes()


@pytest.mark.parametrize("backend", backend_params(("cpu",)))
@given(data=st.data(), solver=st.sampled_from(SOLVERS), confidence=st.sampled_from(CONFIDENCES),
       dtype=st.sampled_from([np.float32, np.float64]), use_gram=st.booleans())
def test_every_simd_level_matches_reference(backend, data, solver, confidence, dtype, use_gram):
    from recfuse import _core

    module = resolve_backend(backend)
    problem = data.draw(problems(dtype, confidence, solver))
    expected = problem.reference()
    gram = reference.gram(problem.Y) if use_gram else None
    original = _core.simd_level()
    for level in each_simd_level():
        X, failed = problem.run(module, gram=gram)
        assert failed == 0, level
        assert_rows_match(problem, X, expected)
    assert _core.simd_level() == original


@pytest.mark.parametrize("k", [32, 64, 128])
@given(data=st.data(), confidence=st.sampled_from(CONFIDENCES),
       dtype=st.sampled_from([np.float32, np.float64]), skewed=st.booleans(),
       heavy=st.booleans())
@settings(max_examples=examples(6), deadline=None)
def test_cholesky_rows_with_few_entries_match_the_reference(k, data, confidence, dtype, skewed,
                                                            heavy):
    """The native Cholesky path solves rows with at most k²/128 entries by the Woodbury
    identity around YᵀY + λI (when that is well conditioned; the fixed-width kernels, k = 32,
    64 and 128; 256 below) and the others by the batched k x k solve: both must give the reference's
    exact solve. Rows of 0 to k²/128 + 8 entries; raw confidences below 1 (a negative weight:
    the row goes the usual way); a skewed Y (one column nearly a copy of another: YᵀY badly
    conditioned, the identity is not used); heavy weights (every third entry 1e6 times
    larger: the identity's γ would cancel, so such rows go the usual way)."""
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows, cols, longest = 120, 5 * k, k * k // 128 + 8  # enough short rows to pay for W
    matrix = matrix_of_lengths(rng, rng.integers(0, longest + 1, rows), cols, confidence)
    if heavy and not skewed:  # both: which near-singular rows fail is a matter of rounding
        matrix.data[::3] *= 1e6
    problem = Problem(matrix, seed=seed, k=k, regularization=0.05, alpha=0.5,
                      confidence=confidence, solver="cholesky", cg_steps=3, dtype=dtype)
    if skewed:
        problem.Y[:, 1] = problem.Y[:, 0] * (1 + 1e-4)
    expected, expected_failed = reference.als_half_sweep_counted(
        problem.matrix, problem.Y, problem.X0, regularization=0.05, alpha=0.5,
        confidence=confidence, solver="cholesky")
    solved = np.ones(rows, dtype=bool)
    if expected_failed:  # rows the reference leaves unchanged: compare the others
        solved = ~np.all(expected == problem.X0, axis=1)
    solved_problem = copy.copy(problem)
    solved_problem.matrix, solved_problem.X0 = problem.matrix[solved], problem.X0[solved]
    equations = solved_problem.normal_equations()
    for level in each_simd_level():  # each level has its own fixed-k kernels
        X, failed = problem.run(resolve_backend("cpu"))
        assert failed == expected_failed, level
        np.testing.assert_array_equal(X[~solved], problem.X0[~solved])
        assert_rows_match(solved_problem, X[solved], expected[solved], equations)


@pytest.mark.parametrize("confidence", CONFIDENCES)
def test_cholesky_at_256_matches_the_reference(confidence):
    """The k = 256 kernels: short rows by the Woodbury identity, the others by the batched
    solve, at every SIMD level; one example (the reference check of a 256 x 256 system per
    row is slow)."""
    k, rng = 256, np.random.default_rng(256)
    matrix = matrix_of_lengths(rng, rng.integers(0, k * k // 128 + 8, 120), 5 * k, confidence)
    problem = Problem(matrix, seed=3, k=k, regularization=0.05, alpha=0.5,
                      confidence=confidence, solver="cholesky", cg_steps=3, dtype=np.float32)
    expected, expected_failed = reference.als_half_sweep_counted(
        problem.matrix, problem.Y, problem.X0, regularization=0.05, alpha=0.5,
        confidence=confidence, solver="cholesky")
    assert expected_failed == 0
    equations = problem.normal_equations()
    for level in each_simd_level():
        X, failed = problem.run(resolve_backend("cpu"))
        assert failed == 0, level
        assert_rows_match(problem, X, expected, equations)


@pytest.mark.parametrize("k", [32, 64, 128, 256])
@given(data=st.data(), confidence=st.sampled_from(CONFIDENCES),
       dtype=st.sampled_from([np.float32, np.float64]), steps=st.integers(0, 4))
@settings(max_examples=examples(4), deadline=None)
def test_fixed_k_cg_matches_the_reference(k, data, confidence, dtype, steps):
    """The native CG at k = 32, 64, 128 and 256 runs rows of up to 128 KiB of factor rows in
    batches (their YᵀY·p products as one tile product) and longer rows alone: both, with
    empty rows, a batch left short and a row already at its solution, at every SIMD level,
    and the same bits on one thread and two."""
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    batched_longest = (128 << 10) // (k * np.dtype(dtype).itemsize)
    cols = batched_longest + 40
    lengths = np.concatenate([rng.integers(0, 30, 27), [batched_longest, batched_longest + 1]])
    matrix = matrix_of_lengths(rng, lengths, cols, confidence)
    problem = Problem(matrix, seed=seed, k=k, regularization=0.05, alpha=0.5,
                      confidence=confidence, solver="cg", cg_steps=steps, dtype=dtype)
    empty = np.flatnonzero(lengths == 0)
    if empty.size:  # an empty row starting at its solution, 0: r = 0, no step is taken
        problem.X0[empty[0]] = 0
    expected = problem.reference()
    equations = problem.normal_equations()
    for level in each_simd_level():
        X, failed = problem.run(resolve_backend("cpu"))
        assert failed == 0, level
        if empty.size:
            np.testing.assert_array_equal(X[empty[0]], 0)
        assert_rows_match(problem, X, expected, equations)
    one, two = (problem.run(resolve_backend("cpu"),
                            params=dataclasses.replace(problem.params, num_threads=threads))[0]
                for threads in (1, 2))
    assert_bit_identical(one, two, "1-thread and 2-thread half-sweeps")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
def test_cholesky_leaves_non_positive_definite_rows_unchanged(backend, dtype):
    """A negative stored value with alpha = 1 gives c < 0: an indefinite system for that row."""
    module = resolve_backend(backend)
    rng = np.random.default_rng(7)
    dense = np.round(rng.uniform(0, 5, size=(6, 8))) * (rng.uniform(size=(6, 8)) < 0.5)
    dense[1, 3] = -50.0
    dense[4, [0, 6]] = [-50.0, 2.0]
    problem = Problem(sp.csr_matrix(dense), seed=3, k=4, regularization=0.1, alpha=1.0,
                      confidence="linear", solver="cholesky", cg_steps=3, dtype=dtype)
    A = problem.normal_equations()[0]
    indefinite = [u for u in range(A.shape[0]) if np.linalg.eigvalsh(A[u])[0] < -1.0]
    assert indefinite == [1, 4]
    assert all(np.linalg.eigvalsh(A[u])[0] > 0.05 for u in (0, 2, 3, 5))
    X, failed = problem.run(module)
    assert failed == len(indefinite)
    for u in indefinite:
        assert_bit_identical(X[u], problem.X0[u], f"row {u}")
    solved = [0, 2, 3, 5]
    sub = Problem(problem.matrix[solved], seed=0, k=4, regularization=0.1, alpha=1.0,
                  confidence="linear", solver="cholesky", cg_steps=3, dtype=dtype)
    sub.Y, sub.X0 = problem.Y, problem.X0[solved]
    assert_rows_match(sub, X[solved], sub.reference())


@pytest.mark.parametrize("backend", backend_params(("cpu", "numba")))
def test_num_threads_above_the_core_count_is_accepted(backend):
    module = resolve_backend(backend)
    problem = Problem(sp.random(70, 20, density=0.3, format="csr", random_state=0), seed=1, k=3,
                      regularization=0.1, alpha=2.0, confidence="linear", solver="cg",
                      cg_steps=3, dtype=np.float64, num_threads=64)
    X, failed = problem.run(module)
    assert failed == 0
    assert_rows_match(problem, X, problem.reference())


@pytest.mark.parametrize("backend", backend_params(("numba",)))
def test_numba_thread_setting_is_restored(backend):
    import numba

    module = resolve_backend(backend)
    before = numba.get_num_threads()
    problem = Problem(sp.random(200, 30, density=0.2, format="csr", random_state=0), seed=2,
                      k=4, regularization=0.1, alpha=1.0, confidence="linear", solver="cholesky",
                      cg_steps=3, dtype=np.float32, num_threads=1)
    problem.run(module)
    module.data_loss(problem.csr, problem.X0, problem.Y, problem.params)
    assert numba.get_num_threads() == before


def test_numba_availability_never_imports_numba_with_recfuse():
    code = (
        "import sys, recfuse, recfuse._als.numba_backend as nb\n"
        "assert 'numba' not in sys.modules, 'importing recfuse imported numba'\n"
        "ok, detail = nb.availability()\n"
        "assert isinstance(ok, bool) and isinstance(detail, str)\n"
        "assert detail.startswith('numba ') if ok else detail.startswith(\n"
        "    ('numba is not installed', 'numba failed to import')), detail\n"
    )
    run_python(code)



@pytest.mark.parametrize("failure, detail", [
    (ModuleNotFoundError("No module named 'numba'", name="numba"),
     "numba is not installed (pip install recfuse[numba])"),
    (ImportError("Numba needs NumPy 2.2 or less. Got NumPy 2.3."),
     "numba failed to import: ImportError: Numba needs NumPy 2.2 or less"),
    (ModuleNotFoundError("No module named 'llvmlite'", name="llvmlite"),
     "numba failed to import: ModuleNotFoundError: No module named 'llvmlite'"),
], ids=["missing", "numpy-mismatch", "dependency-missing"])
def test_numba_availability_tells_a_missing_numba_from_a_broken_one(monkeypatch, failure, detail):
    """backends() must not say "not installed" of a numba that is installed but fails to
    import (numba raises ImportError for a NumPy it does not support)."""
    import importlib.abc
    import importlib.machinery

    from recfuse._als import numba_backend

    class Failing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            return importlib.machinery.ModuleSpec(name, self) if name == "numba" else None

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            raise failure

    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Failing(), *sys.meta_path])
    ok, text = numba_backend.availability()
    assert not ok and text.startswith(detail), text


def test_numba_older_than_the_extra_asks_is_not_offered(monkeypatch):
    pytest.importorskip("numba")
    import numba

    from recfuse._als import numba_backend

    monkeypatch.setattr(numba, "__version__", "0.58.1")
    ok, text = numba_backend.availability()
    assert not ok and text.startswith("numba 0.58.1 is older than 0.60"), text
    monkeypatch.setattr(numba, "__version__", "0.61.0rc1")
    assert numba_backend.availability()[0]


@pytest.mark.parametrize("backend", backend_params(("numba",)))
def test_numba_calls_from_several_threads_under_the_workqueue_layer(backend):
    """Numba's workqueue threading layer (where neither TBB nor OpenMP loads) aborts the
    process when two threads run parallel regions at once; the Numba backends' calls take
    turns there (every one goes through _thread_count). A fresh process forced onto it."""
    code = (
        "import threading, numpy as np, numba, recfuse\n"
        "rng = np.random.default_rng(0)\n"
        "items = rng.standard_normal((2000, 16)).astype(np.float32)\n"
        "queries = rng.standard_normal((200, 16)).astype(np.float32)\n"
        "index = recfuse.ItemIndex(items, backend='numba')\n"
        "barrier, results = threading.Barrier(4), []\n"
        "def work():\n"
        "    barrier.wait()\n"
        "    results.extend(index.search(queries, 5, num_threads=2)[0] for _ in range(30))\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "assert numba.threading_layer() == 'workqueue'\n"
        "assert len(results) == 120 and all((r == results[0]).all() for r in results)\n"
    )
    run_python(code, NUMBA_THREADING_LAYER="workqueue")

def test_numba_backend_is_registered():
    (info,) = [b for b in recfuse.backends() if b.name == "numba"]
    if info.available:
        assert info.detail.startswith("numba ")
        assert resolve_backend("numba").NAME == "numba"
    else:
        assert "numba" in info.detail


@given(data=st.data(), dtype=st.sampled_from([np.float32, np.float64]),
       confidence=st.sampled_from(["linear", "raw"]))
def test_cupy_engine_arithmetic_on_the_host(data, dtype, confidence):
    """The CuPy backend's engine, run with NumPy/SciPy in place of CuPy: its CG half-sweep and
    loss follow the numpy backend (the Cholesky kernel needs a device: test_gpu_als.py)."""
    import scipy.sparse

    from recfuse._als import cupy_backend, numpy_backend

    matrix = data.draw(csr_matrices(dtype=dtype, allow_negative=confidence == "raw"))
    problem = Problem(matrix, data.draw(st.integers(0, 2**31)), data.draw(st.integers(1, 6)),
                      regularization=data.draw(st.sampled_from([0.1, 1.0])), alpha=2.0,
                      confidence=confidence, solver="cg", cg_steps=3, dtype=dtype)
    engine = cupy_backend._Engine(np, scipy.sparse, problem.params, dtype)
    csr = cupy_backend._DeviceCsr(engine, problem.csr)
    X = problem.X0.copy()
    engine.sweep(csr, problem.Y.copy(), X)
    assert_rows_match(problem, X, problem.reference())
    X_ref, _ = problem.run(numpy_backend)
    loss = engine.data_loss(csr, X_ref, problem.Y)
    expected = numpy_backend.data_loss(problem.csr, X_ref, problem.Y, problem.params)
    assert loss == pytest.approx(expected, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_cpu_fit_keeps_large_tables_on_huge_pages_with_the_same_result(solver):
    """Factor tables of 4 MiB or more go on huge pages for the whole fit (factor_table), the
    cpu trainer tells the half-sweeps not to copy them there again and gives the Cholesky
    solver's Woodbury rows one table for the fit: the same bits as the plain trainer."""
    from recfuse._als import cpu
    from recfuse._als.common import HostTrainer

    if cpu._core is None:
        pytest.skip(cpu._IMPORT_ERROR)
    assert cpu._core.huge_page_table(10, 10, "float32") is None  # under 4 MiB: no mapping
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        cpu._core.huge_page_table(10, 10, "int8")
    matrix = sp.random(8192, 300, density=0.02, format="csr", random_state=0,
                       dtype=np.float32) * 3  # users' table 8192 x 128 floats: 4 MiB
    R = CsrArrays.from_scipy(matrix, np.float32)
    rng = np.random.default_rng(0)
    X = rng.random((8192, 128), dtype=np.float32) * 0.01
    Y = rng.random((300, 128), dtype=np.float32) * 0.01
    params = AlsParams(regularization=0.1, alpha=2.0, confidence="linear", solver=solver,
                       cg_steps=3, num_threads=0)
    plain = HostTrainer(cpu, R, R.transpose(), X.copy(), Y.copy(), params)
    tables = [cpu.factor_table(*table.shape, table.dtype) for table in (X, Y)]
    tables[0][...], tables[1][...] = X, Y
    huge = cpu.make_trainer(R, R.transpose(), tables[0], tables[1], params)
    for trainer in (plain, huge):
        for _ in range(2):
            trainer.sweep_users()
            trainer.sweep_items()
    on_huge_pages = huge._x_huge if sys.platform.startswith("linux") else False
    assert huge._x_huge == on_huge_pages and not huge._y_huge
    assert (huge._woodbury is not None) == (solver == "cholesky")
    for a, b in zip(plain.factors(), huge.factors()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="woodbury_table must be writeable with room for"):
        cpu.half_sweep(R, Y, X, params, woodbury_table=np.empty(10, np.float32))


def test_a_recfuse_simd_the_cpu_cannot_run_leaves_numpy_fits_working():
    """Under an unsupported or misspelt RECFUSE_SIMD the cpu backend is unavailable and every
    SIMD-dispatched native call raises; an ALS fit on the numpy backend must still run, with
    the starting factors of reference.normal_table (they were drawn by the native kernel
    whenever the module was built, and the fit raised the cpu's SIMD error)."""
    code = (
        "import numpy as np, scipy.sparse as sp, recfuse\n"
        "from recfuse import reference\n"
        "from recfuse._sgd.common import normal_table\n"
        "assert not [b for b in recfuse.backends() if b.name == 'cpu'][0].available\n"
        "np.testing.assert_array_equal(normal_table(5, 7, 3, 0.0, 0.1, np.float32),\n"
        "                              reference.normal_table(5, 7, 3, 0.0, 0.1, np.float32))\n"
        "R = sp.random(30, 20, density=0.2, format='csr', random_state=0)\n"
        "model = recfuse.ALS(factors=4, iterations=1, backend='numpy').fit(R)\n"
        "assert np.isfinite(model.user_factors).all()\n"
    )
    run_python(code, RECFUSE_SIMD="bogus")


def test_training_width_pads_unspecialised_widths_below_128():
    from recfuse._als.cpu import training_width

    def width(k, solver="cg", regularization=0.01):
        return training_width(k, AlsParams(regularization=regularization, alpha=1.0,
                                           confidence="linear", solver=solver, cg_steps=3,
                                           num_threads=0))

    assert [width(k) for k in (1, 10, 32, 33, 64, 65, 100, 128, 129, 200, 256)] == \
        [32, 32, 32, 64, 64, 128, 128, 128, 129, 200, 256]
    assert [width(k, "cholesky") for k in (4, 15, 16, 48, 100, 129)] == [4, 15, 32, 64, 128, 129]
    # λ = 0: a padded block of the Cholesky system would be singular (CG does not factor it)
    assert width(100, "cholesky", regularization=0.0) == 100
    assert width(100, "cg", regularization=0.0) == 128


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize("k", [20, 48, 100])
def test_padded_training_gives_the_unpadded_fit(solver, k, dtype):
    """The cpu trainer trains unspecialised widths on tables padded with zero columns to the
    next specialised width: the padding stays exactly zero, and the fit is the one the plain
    loops at width k give (up to rounding), on short rows (the Woodbury path of the Cholesky
    solver, which float32's condition limit would refuse if it counted the padding) and long
    ones."""
    from recfuse._als import cpu
    from recfuse._als.common import HostTrainer

    if cpu._core is None:
        pytest.skip(cpu._IMPORT_ERROR)
    rng = np.random.default_rng(k)
    lengths = np.concatenate([rng.integers(0, 8, 300), rng.integers(50, 200, 40)])
    matrix = matrix_of_lengths(rng, lengths, 400, "linear").astype(dtype)
    R = CsrArrays.from_scipy(matrix, dtype)
    # YᵀY ~ 400 I against λ = 0.05: the padded block alone would put G's condition number
    # near 1e4, past the Woodbury guard's float32 limit, which counts only the columns Y uses
    X = (rng.standard_normal((matrix.shape[0], k)) * 0.1).astype(dtype)
    Y = rng.standard_normal((matrix.shape[1], k)).astype(dtype)
    params = AlsParams(regularization=0.05, alpha=2.0, confidence="linear", solver=solver,
                       cg_steps=3, num_threads=0)
    plain = HostTrainer(cpu, R, R.transpose(), X.copy(), Y.copy(), params)
    padded = cpu.make_trainer(R, R.transpose(), X.copy(), Y.copy(), params)
    assert padded._X.shape[1] == cpu.training_width(k, params) > k
    # float32: one half-sweep (a second from slightly different tables moves CG's rounding
    # differences by up to 1e-3); float64: two iterations
    sweeps = 1 if dtype == np.float32 else 4
    for trainer in (plain, padded):
        for sweep in range(sweeps):
            assert (trainer.sweep_items() if sweep % 2 else trainer.sweep_users()) == 0
    assert not padded._X[:, k:].any() and not padded._Y[:, k:].any()
    for a, b in zip(plain.factors(), padded.factors()):
        assert b.shape == a.shape and b.flags.c_contiguous
        tolerance = 1e-4 if dtype == np.float32 else 1e-9
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance * np.abs(a).max())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", backend_params())
def test_a_cholesky_row_whose_sums_overflow_keeps_its_vector_on_every_backend(backend, dtype):
    """Two finite confidences whose sum overflows the dtype (3e38 each in float32, 1e308 in
    float64) made an inf pivot, which the native and numba kernels took as positive: the
    row came back NaN. As the reference says, it keeps its previous vector and is counted;
    the other row is solved as usual."""
    big = 3e38 if dtype == np.float32 else 1e308
    values = sp.csr_matrix(np.array([[big, big, 0], [1, 0, 1]]), dtype=dtype)
    Y = np.array([[1, 0], [1, 0], [0, 1]], dtype=dtype)
    X = np.full((2, 2), 0.5, dtype=dtype)
    params = AlsParams(regularization=0.1, alpha=1.0, confidence="linear", solver="cholesky",
                       cg_steps=3, num_threads=1)
    with np.errstate(all="ignore"):
        want, want_failed = reference.als_half_sweep_counted(values, Y, X, regularization=0.1,
                                                             alpha=1.0, solver="cholesky")
        failed = resolve_backend(backend).half_sweep(CsrArrays.from_scipy(values, dtype), Y, X,
                                                     params)
    assert failed == want_failed == 1
    np.testing.assert_array_equal(X[0], np.full(2, 0.5, dtype=dtype))
    np.testing.assert_allclose(X[1], want[1], rtol=1e-5)


# ---------------------------------------------------------------------------- CG failures


def _overflowing_cg_problem(k, dtype):
    """Rows 0, 3 and 5 hold one confidence below the cg bound on items longer than 1, so
    that a CG step's p·Ap (growing like c³|y|⁴) overflows the dtype; the other rows are
    ordinary. (rows x items CSR under confidence="raw", item table, starting rows)"""
    dtype = np.dtype(dtype)
    huge = 1e12 if dtype == np.float32 else 1e102  # the bounds: 6.98e12 and 5.6e102
    rng = np.random.default_rng(k)
    rows, items = 7, 9
    dense = ((rng.random((rows, items)) < 0.5) * rng.integers(1, 5, (rows, items))).astype(float)
    dense[:, 0] = 0
    dense[[0, 3, 5], 0] = huge
    matrix = sp.csr_matrix(dense)
    Y = rng.standard_normal((items, k))
    Y[0] *= 6 / np.linalg.norm(Y[0])  # |y|⁴ = 1296: c³|y|⁴ past float32's and float64's max
    X0 = rng.standard_normal((rows, k))
    X0[[0, 3, 5]] *= 0.01  # b − A x0 ≈ c y_0 (a start near y_0 / |y_0|² would cancel it)
    return matrix, Y.astype(dtype), X0.astype(dtype)


CG_FAILURE_CASES = [(3, np.float32), (32, np.float32), (128, np.float32), (7, np.float64),
                    (64, np.float64)]


def _check_cg_failures(X, failed, X0, expected, context):
    assert failed == 3, context
    np.testing.assert_array_equal(X[[0, 3, 5]], X0[[0, 3, 5]], err_msg=context)
    ordinary = [1, 2, 4, 6]
    np.testing.assert_allclose(X[ordinary], expected[ordinary], rtol=2e-3, atol=1e-5,
                               err_msg=context)


@pytest.mark.parametrize("backend", backend_params(("cuda", "cpu", "numba", "numpy")))
@pytest.mark.parametrize("k, dtype", CG_FAILURE_CASES)
def test_cg_rows_whose_steps_overflow_keep_their_vectors_and_are_counted(backend, k, dtype):
    """recfuse.reference.conjugate_gradient's failure rule on every backend (and SIMD level,
    and k with a fixed-size, a batched and the runtime-k cpu kernel): a row whose p·Ap
    overflows keeps its starting vector and is counted, the other rows are solved."""
    matrix, Y, X0 = _overflowing_cg_problem(k, dtype)
    with np.errstate(all="ignore"):  # the overflow is the point
        expected, failed = reference.als_half_sweep_counted(
            matrix, Y, X0, regularization=0.1, confidence="raw", solver="cg", cg_steps=3)
    assert failed == 3 and np.isfinite(expected).all()
    params = AlsParams(regularization=0.1, alpha=1.0, confidence="raw", solver="cg",
                       cg_steps=3, num_threads=0)
    module = resolve_backend(backend)
    levels = each_simd_level() if backend == "cpu" else [backend]
    for level in levels:
        X = X0.copy()
        failed = module.half_sweep(CsrArrays.from_scipy(matrix, dtype), Y, X, params)
        _check_cg_failures(X, failed, X0, expected, f"{backend} {level}")


@pytest.mark.parametrize("k, dtype", CG_FAILURE_CASES)
def test_cupy_engine_counts_cg_failures_on_the_host(k, dtype):
    import scipy.sparse

    from recfuse._als import cupy_backend

    matrix, Y, X0 = _overflowing_cg_problem(k, dtype)
    with np.errstate(all="ignore"):
        expected = reference.als_half_sweep(matrix, Y, X0, regularization=0.1,
                                            confidence="raw", solver="cg", cg_steps=3)
    params = AlsParams(regularization=0.1, alpha=1.0, confidence="raw", solver="cg",
                       cg_steps=3, num_threads=0)
    engine = cupy_backend._Engine(np, scipy.sparse, params, dtype)
    X = X0.copy()
    with np.errstate(all="ignore"):  # a device computes on; NumPy in its place would warn
            failed = engine.sweep(
            cupy_backend._DeviceCsr(engine, CsrArrays.from_scipy(matrix, dtype)), Y, X)
    _check_cg_failures(X, failed, X0, expected, "cupy engine")


def test_reference_cg_fails_on_a_non_finite_result_and_a_singular_direction():
    A = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert reference.conjugate_gradient(A, np.array([1.0, 2.0]), np.zeros(2), 3) is not None
    # a tiny curvature makes the step overflow: x is inf, the row fails
    tiny = np.diag([1e-300, 1e-300])
    with np.errstate(over="ignore"):
        assert reference.conjugate_gradient(tiny, np.array([1e10, 0.0]), np.zeros(2), 1) is None
    # zero curvature along p (A singular, b not in its range): fails rather than divide by 0
    singular = np.diag([1.0, 0.0])
    assert reference.conjugate_gradient(singular, np.array([0.0, 1.0]), np.zeros(2), 2) is None
    # steps = 0: the start, whatever A is
    start = np.array([0.5, 0.5])
    assert (reference.conjugate_gradient(singular, start, start, 0) == start).all()


@pytest.mark.parametrize("backend", backend_params(("cuda", "cpu", "numba", "numpy")))
@pytest.mark.parametrize("k", [2, 32, 64])
def test_cholesky_rows_whose_solution_overflows_keep_their_vectors_and_are_counted(backend, k):
    """Finite positive pivots can still give a solution past the dtype: a subnormal item
    vector (1e-39) with a confidence of 3e38 and λ = 1e-40 puts x near 7e38 in float32. As
    in recfuse.reference, the row fails: it keeps its vector and is counted (the native
    kernels wrote inf there)."""
    Y = np.zeros((2, k), np.float32)
    Y[0, 0], Y[1, 1] = 1e-39, 1.0
    matrix = sp.csr_matrix(np.array([[3.0e38, 0.0], [0.0, 2.0]], np.float32))
    X0 = np.full((2, k), 0.5, np.float32)
    with np.errstate(all="ignore"):
        expected, failed = reference.als_half_sweep_counted(
            matrix, Y, X0, regularization=1e-40, confidence="raw", solver="cholesky")
    assert failed == 1 and (expected[0] == X0[0]).all() and np.isfinite(expected).all()
    params = AlsParams(regularization=1e-40, alpha=1.0, confidence="raw", solver="cholesky",
                       cg_steps=3, num_threads=0)
    module = resolve_backend(backend)
    for level in each_simd_level() if backend == "cpu" else [backend]:
        X = X0.copy()
        failed = module.half_sweep(CsrArrays.from_scipy(matrix, np.float32), Y, X, params)
        assert failed == 1, level
        np.testing.assert_array_equal(X[0], X0[0])
        np.testing.assert_allclose(X[1], expected[1], rtol=1e-5)
