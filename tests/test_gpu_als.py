"""The GPU ALS backends (recfuse._cuda and CuPy) on small, hand-shaped problems.

Each GPU backend must re-solve rows like ``recfuse.reference.als_half_sweep``, train like the
CPU backend, and report the NumPy backend's data loss. Tests marked ``gpu`` skip, with the
backend's own reason, where it is not available.

Tolerances follow the conditioning of each problem rather than a single number: rounding
moves a CG iterate (or a solution) by about cond·eps, so every comparison allows
``RTOL·scale`` plus a multiple of how far the float32 and float64 answers of the *reference*
drift apart on the same problem (the drift of float64 being eps64/eps32 ≈ 2e-9 of float32's).
Cholesky answers are also checked through their backward error
‖A x − b‖ / (‖A‖‖x‖ + ‖b‖), with A and b built here in float64.
"""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
import scipy.sparse as sp

from recfuse import reference
from recfuse._als import cuda as cuda_backend
from recfuse._als import cupy_backend, numpy_backend
from recfuse._als.common import AlsParams, CsrArrays

GPU_BACKENDS = {"cuda": cuda_backend, "cupy": cupy_backend}
BACKENDS = [pytest.param(name, id=name) for name in GPU_BACKENDS]
DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]
SOLVERS = ["cg", "cholesky"]
CONFIDENCES = ["linear", "raw"]

RTOL = {np.dtype(np.float32): 1e-3, np.dtype(np.float64): 1e-8}
# Allowed multiple of |reference(float32) − reference(float64)|.
DRIFT = {np.dtype(np.float32): 10.0, np.dtype(np.float64): 1e-6}
BACKWARD_ERROR = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-12}
LOSS_RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}
REGULARIZATION = 0.1


def gpu_backend(name):
    module = GPU_BACKENDS[name]
    available, detail = module.availability()
    if not available:
        pytest.skip(f"{name}: {detail}")
    return module


# ---------------------------------------------------------------------------- problems


def _matrix(rows, cols, density, seed, confidence, empty_rows=(), empty_cols=()):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((rows, cols)) < density, rng.uniform(0.5, 20.0, (rows, cols)), 0)
    if confidence == "raw":
        dense *= rng.choice([-1.0, 1.0], size=dense.shape)
    dense[list(empty_rows), :] = 0
    dense[:, list(empty_cols)] = 0
    matrix = sp.csr_matrix(dense)
    if matrix.nnz:
        matrix.data[0] = 0.0  # an explicitly stored zero: c = 1 (linear) or 0 (raw)
    matrix.sort_indices()
    return matrix


CASES = {
    # name: (rows, cols, density, empty rows, empty cols)
    "random": (23, 17, 0.3, (3, 7), (5,)),
    "dense": (9, 6, 1.0, (), ()),
    "long-row": (3, 61, 0.9, (1,), ()),
    "nnz0": (6, 5, 0.0, (), ()),
    "1x1": (1, 1, 1.0, (), ()),
    "1x1-empty": (1, 1, 0.0, (), ()),
    "no-rows": (0, 4, 0.0, (), ()),
}
FACTORS = [1, 7, 33, 70]


class Problem:
    def __init__(self, case, k, confidence, solver, dtype, cg_steps=3, seed=0):
        rows, cols, density, empty_rows, empty_cols = CASES[case]
        self.dtype = np.dtype(dtype)
        self.matrix = _matrix(rows, cols, density, seed, confidence, empty_rows, empty_cols)
        rng = np.random.default_rng(seed + 1)
        self.Y64 = rng.standard_normal((cols, k)) / np.sqrt(k)
        self.X64 = rng.standard_normal((rows, k)) / np.sqrt(k)
        self.params = AlsParams(
            regularization=REGULARIZATION, alpha=2.0 if confidence == "linear" else 1.0,
            confidence=confidence, solver=solver, cg_steps=cg_steps, num_threads=0,
        )

    def arrays(self, dtype=None):
        dtype = np.dtype(dtype or self.dtype)
        return (CsrArrays.from_scipy(self.matrix, dtype), self.Y64.astype(dtype),
                self.X64.astype(dtype))

    def reference(self, dtype):
        p = self.params
        _, Y, X = self.arrays(dtype)
        return reference.als_half_sweep(
            self.matrix.astype(dtype), Y, X, regularization=p.regularization, alpha=p.alpha,
            confidence=p.confidence, solver=p.solver, cg_steps=p.cg_steps,
        )

    def normal_equations(self):
        """(A_u, b_u) per row in float64, from the dtype-rounded inputs."""
        p = self.params
        Y = self.Y64.astype(self.dtype).astype(np.float64)
        R = self.matrix.astype(self.dtype).astype(np.float64).tocsr()
        G = Y.T @ Y + p.regularization * np.eye(Y.shape[1])
        systems = []
        for u in range(R.shape[0]):
            start, end = R.indptr[u], R.indptr[u + 1]
            w, q = reference.confidence_weights(R.data[start:end], p.alpha, p.confidence)
            Yu = Y[R.indices[start:end]]
            systems.append((G + (Yu.T * w) @ Yu, Yu.T @ q))
        return systems


def assert_close_with_drift(got, expected32, expected64, dtype, what):
    """|got − expected| ≤ RTOL·scale + DRIFT·|expected32 − expected64| elementwise."""
    dtype = np.dtype(dtype)
    expected = expected32 if dtype == np.float32 else expected64
    got64, exp64 = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    scale = max(1.0, float(np.abs(exp64).max(initial=0.0)))
    drift = np.abs(np.asarray(expected32, np.float64) - np.asarray(expected64, np.float64))
    allowed = RTOL[dtype] * scale + DRIFT[dtype] * drift
    excess = np.abs(got64 - exp64) - allowed
    assert np.isfinite(got64).all(), f"{what}: non-finite values"
    assert (excess <= 0).all(), (
        f"{what}: max |difference| {np.abs(got64 - exp64).max():.3g} exceeds the allowed "
        f"{allowed.ravel()[np.argmax(excess)]:.3g} at "
        f"{np.unravel_index(np.argmax(excess), excess.shape)}"
    )


def assert_backward_stable(X, problem):
    tolerance = BACKWARD_ERROR[problem.dtype]
    for u, (A, b) in enumerate(problem.normal_equations()):
        x = np.asarray(X[u], np.float64)
        scale = np.linalg.norm(A, 2) * np.linalg.norm(x) + np.linalg.norm(b)
        error = np.linalg.norm(A @ x - b) / max(scale, np.finfo(np.float64).tiny)
        assert error <= tolerance, f"row {u}: backward error {error:.3g} > {tolerance:.0e}"


def loss_scale(R: CsrArrays, X, Y, params) -> float:
    """Σ|terms| of the data loss in float64: the scale its rounding error is relative to."""
    X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
    total = float(np.abs(np.einsum("uk,kl,ul->u", X64, Y64.T @ Y64, X64)).sum())
    rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
    d = np.einsum("nk,nk->n", X64[rows], Y64[R.indices])
    w, q = reference.confidence_weights(R.data.astype(np.float64), params.alpha, params.confidence)
    return total + float((np.abs(q * (1 - 2 * d)) + np.abs(w * d * d)).sum()) + 1.0


# ---------------------------------------------------------------------------- always run


@pytest.mark.parametrize("name", list(GPU_BACKENDS))
def test_availability_never_raises(name):
    available, detail = GPU_BACKENDS[name].availability()
    assert isinstance(available, bool) and isinstance(detail, str)
    if not available:
        assert detail


def test_native_module_imports_without_a_device():
    _cuda = pytest.importorskip("recfuse._cuda")
    count = _cuda.device_count()
    assert isinstance(count, int) and count >= 0
    assert isinstance(_cuda.device_error(), str)
    if count == 0:
        assert _cuda.device_error()
        with pytest.raises(RuntimeError, match="no CUDA device"):
            _cuda.gram(np.ones((2, 2), np.float32))


# ---------------------------------------------------------------------------- half-sweep


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k", FACTORS)
def test_half_sweep_matches_reference(name, dtype, confidence, solver, case, k):
    backend = gpu_backend(name)
    problem = Problem(case, k, confidence, solver, dtype)
    R, Y, X = problem.arrays()
    failed = backend.half_sweep(R, Y, X, problem.params)
    assert failed == 0
    assert X.dtype == problem.dtype
    expected32, expected64 = problem.reference(np.float32), problem.reference(np.float64)
    if solver == "cholesky":
        assert_backward_stable(X, problem)
    assert_close_with_drift(X, expected32, expected64, dtype, f"{name} {solver} X")


# The CUDA CG kernel gives rows of 2,048 stored entries or more blocks of up to 32 warps
# (cuda/als.cu, kCgLongRow); the lengths straddle that edge, k the warp counts (32 for
# k <= 128 in float32 or 64 in float64, 16 up to twice that, none past it).
LONG_ROW_LENGTHS = (5000, 2048, 2047, 10, 0, 2049)


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver, k", [(solver, k) for solver in SOLVERS for k in (7, 64, 128)]
                         + [("cg", 256)])  # Cholesky's k x k system stops short of 256
def test_rows_past_the_long_row_edge_match_reference(name, dtype, solver, k):
    backend = gpu_backend(name)
    rng = np.random.default_rng(k)
    cols = 6000
    rows = [np.sort(rng.choice(cols, size=n, replace=False)) for n in LONG_ROW_LENGTHS]
    matrix = sp.csr_matrix(
        (rng.uniform(0.5, 20.0, sum(LONG_ROW_LENGTHS)), np.concatenate(rows),
         np.concatenate([[0], np.cumsum(LONG_ROW_LENGTHS)])),
        shape=(len(LONG_ROW_LENGTHS), cols),
    )
    Y64 = rng.standard_normal((cols, k)) / np.sqrt(k)
    X64 = rng.standard_normal((len(LONG_ROW_LENGTHS), k)) / np.sqrt(k)
    params = AlsParams(REGULARIZATION, 2.0, "linear", solver, 3, 0)
    X = X64.astype(dtype)
    backend.half_sweep(CsrArrays.from_scipy(matrix, dtype), Y64.astype(dtype), X, params)
    expected = {
        t: reference.als_half_sweep(matrix.astype(t), Y64.astype(t), X64.astype(t),
                                    regularization=REGULARIZATION, alpha=2.0,
                                    confidence="linear", solver=solver, cg_steps=3)
        for t in (np.float32, np.float64)
    }
    assert_close_with_drift(X, expected[np.float32], expected[np.float64], dtype,
                            f"{name} {solver} k={k}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cg_steps", [0, 1, 5, 40])
def test_cg_steps_and_early_stop(name, dtype, cg_steps):
    """cg_steps = 0 leaves X as it was; many steps converge and stop at the tolerance."""
    backend = gpu_backend(name)
    problem = Problem("random", 7, "linear", "cg", dtype, cg_steps=cg_steps)
    R, Y, X = problem.arrays()
    backend.half_sweep(R, Y, X, problem.params)
    if cg_steps == 0:
        np.testing.assert_array_equal(X, problem.X64.astype(dtype))
    assert_close_with_drift(X, problem.reference(np.float32), problem.reference(np.float64),
                            dtype, f"{name} cg_steps={cg_steps}")


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cholesky_counts_indefinite_rows_and_leaves_them(name, dtype):
    backend = gpu_backend(name)
    # One column with y = 1: A_u = 1 + λ + w_u. Row 1 has c = 1 + 1·(−10) = −9, w = −10.
    matrix = sp.csr_matrix(np.array([[2.0], [-10.0], [0.0]], dtype=dtype))
    matrix.eliminate_zeros()
    R = CsrArrays.from_scipy(matrix, dtype)
    Y = np.ones((1, 1), dtype=dtype)
    X = np.full((3, 1), 7.0, dtype=dtype)
    params = AlsParams(REGULARIZATION, 1.0, "linear", "cholesky", 3, 0)
    assert backend.half_sweep(R, Y, X, params) == 1
    np.testing.assert_allclose(X[:, 0], [3.0 / (1 + REGULARIZATION + 2.0), 7.0, 0.0], rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_supplied_gram_is_used(name, dtype, solver):
    backend = gpu_backend(name)
    problem = Problem("random", 7, "linear", solver, dtype)
    R, Y, X = problem.arrays()
    X_given = X.copy()
    backend.half_sweep(R, Y, X, problem.params)
    backend.half_sweep(R, Y, X_given, problem.params, gram=(Y.T @ Y).astype(dtype))
    scale = max(1.0, float(np.abs(X).max()))
    np.testing.assert_allclose(X_given, X, rtol=0, atol=RTOL[np.dtype(dtype)] * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("solver", SOLVERS)
def test_cuda_half_sweep_is_deterministic(dtype, solver):
    backend = gpu_backend("cuda")
    problem = Problem("long-row", 70, "raw", solver, dtype)
    R, Y, X = problem.arrays()
    X2 = X.copy()
    backend.half_sweep(R, Y, X, problem.params)
    backend.half_sweep(R, Y, X2, problem.params)
    np.testing.assert_array_equal(X, X2)


@pytest.mark.gpu
@pytest.mark.parametrize("solver, ks", [("cholesky", (80, 120)), ("cg", (900, 1000))])
def test_cuda_concurrent_half_sweeps_with_different_k(solver, ks):
    """Half-sweeps on several threads with two k whose float64 kernels need different dynamic
    shared memory above 48 KiB. Setting each launch's own size let the smaller k lower the
    limit between the larger k's setting and its launch (cudaErrorInvalidValue); the limit is
    now only raised. Written without a GPU: NOT YET RUN on one."""
    backend = gpu_backend("cuda")
    problems = {k: Problem("random", k, "linear", solver, np.float64) for k in ks}
    expected = {}
    for k, problem in problems.items():
        R, Y, X = problem.arrays()
        backend.half_sweep(R, Y, X, problem.params)
        expected[k] = X

    def sweep(i):
        k = ks[i % 2]
        R, Y, X = problems[k].arrays()
        backend.half_sweep(R, Y, X, problems[k].params)
        return k, X

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(sweep, range(36)))
    for k, X in results:
        np.testing.assert_array_equal(X, expected[k])


# ---------------------------------------------------------------------------- data loss


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("case", ["random", "long-row", "nnz0", "1x1", "no-rows"])
def test_data_loss_matches_numpy_backend(name, dtype, confidence, case):
    backend = gpu_backend(name)
    problem = Problem(case, 33, confidence, "cg", dtype)
    R, Y, X = problem.arrays()
    got = backend.data_loss(R, X, Y, problem.params)
    expected = numpy_backend.data_loss(R, X, Y, problem.params)
    assert isinstance(got, float)
    assert abs(got - expected) <= LOSS_RTOL[np.dtype(dtype)] * loss_scale(R, X, Y, problem.params)


# ---------------------------------------------------------------------------- trainer


def _cpu_backend():
    from recfuse._als import cpu

    available, detail = cpu.availability()
    if not available:
        pytest.skip(f"cpu backend: {detail}")
    return cpu


def _train(module, problem, dtype, iterations):
    R, Y, X = problem.arrays(dtype)
    trainer = module.make_trainer(R, R.transpose(), X, Y, problem.params)
    failed = []
    for _ in range(iterations):
        failed.append((trainer.sweep_users(), trainer.sweep_items()))
    X_out, Y_out = trainer.factors()
    return np.array(X_out, copy=True), np.array(Y_out, copy=True), failed, trainer


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("confidence", CONFIDENCES)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("k", [7, 70])
def test_trainer_matches_cpu_backend(name, dtype, confidence, solver, k):
    backend, cpu = gpu_backend(name), _cpu_backend()
    problem = Problem("random", k, confidence, solver, dtype)
    X_gpu, Y_gpu, failed_gpu, trainer = _train(backend, problem, dtype, 2)
    X32, Y32, failed_cpu, _ = _train(cpu, problem, np.float32, 2)
    X64, Y64, _, _ = _train(cpu, problem, np.float64, 2)
    assert X_gpu.dtype == np.dtype(dtype) and Y_gpu.dtype == np.dtype(dtype)
    assert X_gpu.shape == X64.shape and Y_gpu.shape == Y64.shape
    assert failed_gpu == failed_cpu == [(0, 0), (0, 0)]
    assert_close_with_drift(X_gpu, X32, X64, dtype, f"{name} trainer X")
    assert_close_with_drift(Y_gpu, Y32, Y64, dtype, f"{name} trainer Y")

    # The trainer's loss is the NumPy backend's loss of the trainer's own factors.
    R = CsrArrays.from_scipy(problem.matrix, dtype)
    got = trainer.data_loss()
    expected = numpy_backend.data_loss(R, X_gpu, Y_gpu, problem.params)
    scale = loss_scale(R, X_gpu, Y_gpu, problem.params)
    assert abs(got - expected) <= LOSS_RTOL[np.dtype(dtype)] * scale


@pytest.mark.gpu
@pytest.mark.parametrize("name", BACKENDS)
def test_trainer_factors_are_new_arrays(name):
    backend = gpu_backend(name)
    problem = Problem("random", 7, "linear", "cg", np.float32)
    R, Y, X = problem.arrays()
    trainer = backend.make_trainer(R, R.transpose(), X, Y, problem.params)
    X_out, Y_out = trainer.factors()
    np.testing.assert_array_equal(X_out, X)
    np.testing.assert_array_equal(Y_out, Y)
    assert not np.shares_memory(X_out, X) and not np.shares_memory(Y_out, Y)
    trainer.sweep_users()
    X_after, _ = trainer.factors()
    np.testing.assert_array_equal(X_out, X)  # earlier copies and the inputs stay as they were
    assert not np.array_equal(X_after, X)


# ---------------------------------------------------------------------------- native module


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_gram(dtype):
    gpu_backend("cuda")
    from recfuse import _cuda

    rng = np.random.default_rng(3)
    for n, k in [(0, 5), (1, 1), (100, 33), (1000, 70), (257, 130)]:
        Y = rng.standard_normal((n, k)).astype(dtype)
        G = _cuda.gram(Y)
        assert G.shape == (k, k) and G.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(G, G.T)
        expected = Y.astype(np.float64).T @ Y.astype(np.float64)
        scale = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(G, expected, rtol=0, atol=RTOL[np.dtype(dtype)] * 1e-1 * scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_factor_limits_raise_value_error(dtype):
    gpu_backend("cuda")
    from recfuse import _cuda

    limit = _cuda.cholesky_max_factors(np.dtype(dtype) == np.float64)
    assert limit >= (128 if np.dtype(dtype) == np.float32 else 64)
    R = CsrArrays.from_scipy(sp.csr_matrix(np.ones((2, 3), dtype=dtype)), dtype)
    for k, solver in [(limit + 1, "cholesky"), (_cuda.CG_MAX_FACTORS + 1, "cg")]:
        X = np.zeros((2, k), dtype=dtype)
        Y = np.ones((3, k), dtype=dtype)
        params = AlsParams(REGULARIZATION, 1.0, "linear", solver, 3, 0)
        with pytest.raises(ValueError, match="solver='cg'" if solver == "cholesky" else "at most"):
            cuda_backend.half_sweep(R, Y, X, params)
    # The largest supported Cholesky size still runs.
    X = np.zeros((2, limit), dtype=dtype)
    Y = np.random.default_rng(0).standard_normal((3, limit)).astype(dtype)
    params = AlsParams(REGULARIZATION, 1.0, "linear", "cholesky", 3, 0)
    assert cuda_backend.half_sweep(R, Y, X, params) == 0
    assert np.isfinite(X).all()


@pytest.mark.gpu
def test_cuda_rejects_bad_arguments():
    gpu_backend("cuda")
    from recfuse import _cuda

    Y = np.ones((3, 2), np.float32)
    X = np.zeros((2, 2), np.float32)
    indptr = np.array([0, 1, 2], np.int64)
    data = np.ones(2, np.float32)
    kwargs = dict(regularization=0.1, alpha=1.0, raw_confidence=False, cholesky=False, cg_steps=3)
    with pytest.raises(ValueError, match="out of range"):
        _cuda.als_half_sweep(indptr, np.array([0, 3], np.int32), data, Y, X, **kwargs)
    with pytest.raises(ValueError, match="cg_steps"):
        _cuda.als_half_sweep(indptr, np.array([0, 1], np.int32), data, Y, X,
                             **{**kwargs, "cg_steps": -1})
    with pytest.raises(ValueError, match="rows"):
        _cuda.als_half_sweep(indptr, np.array([0, 1], np.int32), data, Y,
                             np.zeros((3, 2), np.float32), **kwargs)
    with pytest.raises(TypeError):
        _cuda.als_half_sweep(indptr, np.array([0, 1], np.int32), data, Y.astype(np.float64), X,
                             **kwargs)
