"""The Numba backend: the per-row ALS kernels of cpp/src/als_kernels_impl.inc, JIT-compiled.

The fallback for machines without the native build. Numba is imported only when the
backend is probed or used, never when ``recfuse`` is imported, and the kernels are compiled
on first use (cached on disk by Numba afterwards), so the first call is slow.

All arithmetic of ``half_sweep`` happens in the dtype of the arrays (float32 or float64),
step for step as in the C++ kernels: the fused CG of ``recfuse.reference.conjugate_gradient``
(same early stop, same tolerance, same failures: a row whose p·Ap is not a positive finite
number, or whose result is not finite, keeps its start and is counted) and an
upper-triangle Cholesky that leaves a row unchanged, and counts it, when its system is not
positive definite. Sums run sequentially here
(``fastmath=False``), where the C++ kernels may vectorise their dot products, so the two
backends agree to rounding, not bit for bit. ``data_loss`` works in float64. Rows are
independent and every sum runs in a fixed order, so the results do not depend on the thread
count.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from types import SimpleNamespace

import numpy as np

from .._validation import check_csr_arrays
from .common import AlsParams, CsrArrays, HostTrainer

NAME = "numba"

# Rows handed to a parallel task at a time: each task allocates its scratch once.
_ROWS_PER_TASK = 64
_CG_TOLERANCE = 1e-20  # recfuse.reference.CG_TOLERANCE, compared in the arrays' dtype
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


MIN_NUMBA = (0, 60)  # as pyproject.toml's numba extra asks


def availability() -> tuple[bool, str]:
    try:
        import numba
    except ModuleNotFoundError as error:
        if error.name != "numba":  # installed, but a module it needs is not (llvmlite)
            return False, f"numba failed to import: {type(error).__name__}: {error}"
        return False, "numba is not installed (pip install recfuse[numba])"
    except Exception as error:  # a broken installation must not break backend discovery
        # (numba raises ImportError for a NumPy it does not support: it is installed)
        return False, f"numba failed to import: {type(error).__name__}: {error}"
    version = getattr(numba, "__version__", "unknown version")
    numbers = [int(part) for part in version.split(".")[:2] if part.isdigit()]
    if len(numbers) == 2 and tuple(numbers) < MIN_NUMBA:  # its kernels use newer features
        return False, (f"numba {version} is older than {'.'.join(map(str, MIN_NUMBA))} "
                       f"(pip install -U 'recfuse[numba]')")
    problem = _threading_layer_problem(numba)
    if problem is not None:
        return False, problem
    return True, f"numba {version}"


# The layers numba tries for each NUMBA_THREADING_LAYER choice (numba.np.ufunc.parallel's
# _launch_threads, on Linux), and the module that loads each layer's library.
_LAYER_CHOICES = {"default": ("tbb", "omp", "workqueue"), "safe": ("tbb",),
                  "threadsafe": ("tbb", "omp"), "forksafe": ("tbb", "workqueue")}
_LAYER_MODULES = {"tbb": "tbbpool", "omp": "omppool", "workqueue": "workqueue"}


def _threading_layer_problem(numba) -> str | None:
    """Why no threading layer that NUMBA_THREADING_LAYER asks for can load (None when one
    can): numba finds out only at the first parallel call, whose every call would then
    raise, where "auto" should have passed this backend over. Importing a layer's module
    loads its library and starts no thread."""
    import importlib

    layer = str(numba.config.THREADING_LAYER).lower()
    candidates = (layer,) if layer in _LAYER_MODULES else _LAYER_CHOICES.get(layer)
    if candidates is None:
        return (f"NUMBA_THREADING_LAYER={layer!r} is unknown to numba (one of "
                f"{sorted([*_LAYER_MODULES, *_LAYER_CHOICES])})")
    for candidate in candidates:
        try:
            importlib.import_module(f"numba.np.ufunc.{_LAYER_MODULES[candidate]}")
        except ImportError:
            continue
        return None
    return (f"NUMBA_THREADING_LAYER={layer!r}: no numba threading layer of "
            f"{', '.join(candidates)} can load here (tbb: pip install tbb)")


@functools.lru_cache(maxsize=None)
def _kernels() -> SimpleNamespace:
    """Import Numba and wrap the kernels (Numba compiles each dtype on its first call)."""
    import numba
    from numba import prange

    def jit(function):
        # error_model="numpy": a division by zero gives inf/nan as in C++, instead of raising
        # inside a parallel region.
        options = dict(parallel=True, fastmath=False, nogil=True, error_model="numpy")
        try:
            return numba.njit(cache=True, **options)(function)
        except RuntimeError:  # no writable cache location: compile for this process only
            return numba.njit(cache=False, **options)(function)

    def confidence(data, alpha, raw, w, q):
        # w = c - 1 and q = c * p for every stored value, in data's dtype.
        one = data.dtype.type(1)
        for t in prange(data.shape[0]):
            v = data[t]
            if raw:
                c = -v if v < 0 else v
            else:
                c = one + alpha * v
            w[t] = c - one
            q[t] = c if v > 0 else data.dtype.type(0)

    # Inner loops run over row views from index 0 (A[a, a:] rather than A[a, c] for c >= a):
    # that is the form LLVM vectorises without reordering any sum.

    def gram(Y, G):
        # G = YᵀY: output row a belongs to one task and every element sums over i in order.
        n, k = Y.shape
        zero = Y.dtype.type(0)
        for a in prange(k):
            Ga = G[a]
            for b in range(k):
                Ga[b] = zero
            Ga = G[a, a:]
            for i in range(n):
                y = Y[i, a:]
                ya = y[0]
                for b in range(k - a):
                    Ga[b] += ya * y[b]
        for a in range(k):
            for b in range(a):
                G[a, b] = G[b, a]

    def cg(indptr, indices, w, q, Y, G, X, steps, tolerance, largest, rows_per_task, failed):
        # solve_cg for every row: X[u] is the starting point and is updated in place; a row
        # that fails gets its start back and is counted in failed[task].
        n_rows, k = X.shape
        zero = X.dtype.type(0)
        n_tasks = (n_rows + rows_per_task - 1) // rows_per_task
        for task in prange(n_tasks):
            r = np.empty(k, dtype=X.dtype)
            p = np.empty(k, dtype=X.dtype)
            Ap = np.empty(k, dtype=X.dtype)
            start = np.empty(k, dtype=X.dtype)
            first = task * rows_per_task
            last = min(first + rows_per_task, n_rows)
            count = 0
            for u in range(first, last):
                x = X[u]
                for i in range(k):
                    start[i] = x[i]
                # r = b - A x = -G x + Σ_t (q_t - w_t y_t·x) y_t, G x as Σ_j x_j G[j, :]
                for i in range(k):
                    r[i] = zero
                for j in range(k):
                    xj = x[j]
                    Gj = G[j]
                    for i in range(k):
                        r[i] += xj * Gj[i]
                for i in range(k):
                    r[i] = -r[i]
                for t in range(indptr[u], indptr[u + 1]):
                    y = Y[indices[t]]
                    d = zero
                    for i in range(k):
                        d += y[i] * x[i]
                    coef = q[t] - w[t] * d
                    for i in range(k):
                        r[i] += coef * y[i]
                rs_old = zero
                for i in range(k):
                    p[i] = r[i]
                    rs_old += r[i] * r[i]
                if rs_old < tolerance:
                    continue
                ok = True
                for _ in range(steps):
                    # Ap = G p + Σ_t w_t (y_t·p) y_t
                    for i in range(k):
                        Ap[i] = zero
                    for j in range(k):
                        pj = p[j]
                        Gj = G[j]
                        for i in range(k):
                            Ap[i] += pj * Gj[i]
                    for t in range(indptr[u], indptr[u + 1]):
                        y = Y[indices[t]]
                        d = zero
                        for i in range(k):
                            d += y[i] * p[i]
                        coef = w[t] * d
                        for i in range(k):
                            Ap[i] += coef * y[i]
                    pAp = zero
                    for i in range(k):
                        pAp += p[i] * Ap[i]
                    if not (pAp > zero and pAp <= largest):
                        ok = False
                        break
                    step = rs_old / pAp
                    for i in range(k):
                        x[i] += step * p[i]
                    for i in range(k):
                        r[i] -= step * Ap[i]
                    rs_new = zero
                    for i in range(k):
                        rs_new += r[i] * r[i]
                    if rs_new < tolerance:
                        break
                    beta = rs_new / rs_old
                    for i in range(k):
                        p[i] = r[i] + beta * p[i]
                    rs_old = rs_new
                for i in range(k):
                    ok = ok and np.isfinite(x[i])
                if not ok:
                    for i in range(k):
                        x[i] = start[i]
                    count += 1
            failed[task] = count

    def cholesky(indptr, indices, w, q, Y, G, X, rows_per_task, failed):
        # solve_cholesky for every row; failed[task] counts the rows of a task left unchanged.
        n_rows, k = X.shape
        zero = X.dtype.type(0)
        one = X.dtype.type(1)
        n_tasks = (n_rows + rows_per_task - 1) // rows_per_task
        for task in prange(n_tasks):
            A = np.empty((k, k), dtype=X.dtype)  # upper triangle used, then U of A = UᵀU
            b = np.empty(k, dtype=X.dtype)
            first = task * rows_per_task
            last = min(first + rows_per_task, n_rows)
            count = 0
            for u in range(first, last):
                for a in range(k):
                    Aa = A[a, a:]
                    Ga = G[a, a:]
                    for c in range(k - a):
                        Aa[c] = Ga[c]
                    b[a] = zero
                for t in range(indptr[u], indptr[u + 1]):
                    y = Y[indices[t]]
                    wt = w[t]
                    qt = q[t]
                    if wt != 0:
                        for a in range(k):
                            s = wt * y[a]
                            Aa = A[a, a:]
                            ya = y[a:]
                            for c in range(k - a):
                                Aa[c] += s * ya[c]
                    if qt != 0:
                        for a in range(k):
                            b[a] += qt * y[a]
                # Right-looking factorisation: row j of U holds column j of L.
                positive = True
                for j in range(k):
                    d = A[j, j]
                    if not (zero < d < np.inf):  # also catches NaN, and inf (overflow)
                        positive = False
                        break
                    d = np.sqrt(d)
                    A[j, j] = d
                    inv = one / d
                    Uj = A[j]
                    for i in range(j + 1, k):
                        Uj[i] *= inv
                    for i in range(j + 1, k):
                        s = Uj[i]
                        Ai = A[i, i:]
                        Uji = Uj[i:]
                        for c in range(k - i):
                            Ai[c] -= s * Uji[c]
                if not positive:
                    count += 1
                    continue
                # Uᵀ z = b (forward, by rows of U) then U x = z (backward).
                for j in range(k):
                    b[j] /= A[j, j]
                    bj = b[j]
                    Uj = A[j]
                    for i in range(j + 1, k):
                        b[i] -= bj * Uj[i]
                for i in range(k - 1, -1, -1):
                    s = zero
                    Ui = A[i]
                    for c in range(i + 1, k):
                        s += Ui[c] * b[c]
                    b[i] = (b[i] - s) / A[i, i]
                finite = True  # a solution past the dtype fails the row too
                for i in range(k):
                    finite = finite and np.isfinite(b[i])
                if not finite:
                    count += 1
                    continue
                x = X[u]
                for i in range(k):
                    x[i] = b[i]
            failed[task] = count

    def data_loss_rows(indptr, indices, w, q, X, Y, G, out):
        # out[u] = x_uᵀ G x_u + Σ_t q_t (1 - 2 d_t) + w_t d_t², d_t = x_u·y_t (all float64).
        n_rows, k = X.shape
        for u in prange(n_rows):
            total = 0.0
            for j in range(k):
                s = 0.0
                for i in range(k):
                    s += G[j, i] * X[u, i]
                total += X[u, j] * s
            for t in range(indptr[u], indptr[u + 1]):
                col = indices[t]
                d = 0.0
                for i in range(k):
                    d += Y[col, i] * X[u, i]
                total += q[t] * (1.0 - 2.0 * d) + w[t] * d * d
            out[u] = total

    return SimpleNamespace(
        numba=numba,
        confidence=jit(confidence),
        gram=jit(gram),
        cg=jit(cg),
        cholesky=jit(cholesky),
        data_loss_rows=jit(data_loss_rows),
    )


# Numba's workqueue threading layer (the one left where neither TBB nor OpenMP loads, e.g.
# macOS without libomp) aborts the process when two Python threads run parallel regions at
# once: there, calls take turns.
_WORKQUEUE_TURN = threading.RLock()


def _turn(numba):
    try:
        layer = numba.threading_layer()
    except ValueError:  # not chosen yet: the first parallel region, maybe this call's, picks it
        layer = None
    return _WORKQUEUE_TURN if layer in (None, "workqueue") else contextlib.nullcontext()


@contextlib.contextmanager
def _thread_count(numba, num_threads: int):
    """Run Numba's parallel regions on ``num_threads`` threads (0: leave the setting alone),
    one call at a time where the threading layer is not thread-safe. Every parallel kernel
    call of the Numba backends goes through here."""
    with _turn(numba):
        try:
            if num_threads <= 0:
                yield
                return
            previous = numba.get_num_threads()
            numba.set_num_threads(min(int(num_threads), numba.config.NUMBA_NUM_THREADS))
            try:
                yield
            finally:
                numba.set_num_threads(previous)
        finally:
            _note_openmp_pool(numba)


_POOL_NOTED = False


def _note_openmp_pool(numba) -> None:
    """After a parallel call: on numba's omp layer, libgomp (the one recfuse._core uses too)
    now keeps a thread pool that a fork does not copy, so the native fork guard must know of
    it (recfuse/threads.hpp), or a forked child's first native call waits for ever."""
    global _POOL_NOTED
    if _POOL_NOTED:
        return
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return
    _POOL_NOTED = True
    if layer == "omp":
        try:
            from .. import _core
        except ImportError:  # no native module: nothing to guard
            return
        _core.note_thread_team()


def _check_arrays(R: CsrArrays, Y, X) -> int:
    """The checks of the C++ entry point: kernels index raw memory, so bad input must stop here."""
    if Y.ndim != 2 or X.ndim != 2:
        raise ValueError("Y and X must be 2-d")
    if Y.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"Y must be float32 or float64, got {Y.dtype}")
    if X.dtype != Y.dtype or R.data.dtype != Y.dtype:
        raise TypeError(
            f"X ({X.dtype}), Y ({Y.dtype}) and the matrix data ({R.data.dtype}) must share a dtype"
        )
    k = Y.shape[1]
    if k <= 0:
        raise ValueError("factors must be positive")
    if X.shape[1] != k:
        raise ValueError(f"X has {X.shape[1]} columns but Y has {k}")
    nnz = check_csr_arrays(R.indptr, R.indices, X.shape[0], Y.shape[0], "the matrix (X's rows "
                           "x Y's rows)", data_size=R.data.size)
    if R.indices.size != nnz or R.data.size != nnz:
        raise ValueError(f"indptr[-1] ({nnz}), len(indices) ({R.indices.size}) and len(data) "
                         f"({R.data.size}) must agree")
    return k


def _weights(kernels, data, alpha: float, raw: bool):
    data = np.ascontiguousarray(data)
    w = np.empty_like(data)
    q = np.empty_like(data)
    kernels.confidence(data, data.dtype.type(alpha), bool(raw), w, q)
    return w, q


def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None) -> int:
    k = _check_arrays(R, Y, X)
    if params.cg_steps < 0:
        raise ValueError("cg_steps must be >= 0")
    if not X.flags.writeable:
        raise ValueError("X must be writeable")
    kernels = _kernels()
    dtype = Y.dtype
    Y = np.ascontiguousarray(Y)
    indptr = np.ascontiguousarray(R.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(R.indices, dtype=np.int32)
    with _thread_count(kernels.numba, params.num_threads):
        w, q = _weights(kernels, R.data, params.alpha, params.raw_confidence)
        if gram is None:
            G = np.empty((k, k), dtype=dtype)
            kernels.gram(Y, G)
        else:
            gram = np.asarray(gram)
            if gram.shape != (k, k):
                raise ValueError(f"gram must have shape ({k}, {k}), got {gram.shape}")
            if gram.dtype != dtype:
                raise TypeError(f"gram must have dtype {dtype}, got {gram.dtype}")
            G = np.array(gram, dtype=dtype, order="C", copy=True)
        G[np.diag_indices(k)] += dtype.type(params.regularization)
        n_tasks = (X.shape[0] + _ROWS_PER_TASK - 1) // _ROWS_PER_TASK
        failed = np.zeros(n_tasks, dtype=np.int64)
        if params.cholesky:
            kernels.cholesky(indptr, indices, w, q, Y, G, X, _ROWS_PER_TASK, failed)
        else:
            kernels.cg(indptr, indices, w, q, Y, G, X, int(params.cg_steps),
                       dtype.type(_CG_TOLERANCE), np.finfo(dtype).max, _ROWS_PER_TASK, failed)
        return int(failed.sum())


def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    """Σ_u [x_uᵀ YᵀY x_u + Σ_i (q_ui − 2 q_ui d_ui + w_ui d_ui²)], all in float64."""
    if X.ndim != 2 or Y.ndim != 2 or X.shape[1] != Y.shape[1]:
        raise ValueError("X and Y must be 2-d with the same number of columns")
    R64 = CsrArrays(R.indptr, R.indices, np.asarray(R.data, dtype=np.float64), R.shape)
    X64 = np.ascontiguousarray(X, dtype=np.float64)
    Y64 = np.ascontiguousarray(Y, dtype=np.float64)
    k = _check_arrays(R64, Y64, X64)
    kernels = _kernels()
    indptr = np.ascontiguousarray(R.indptr, dtype=np.int64)
    indices = np.ascontiguousarray(R.indices, dtype=np.int32)
    with _thread_count(kernels.numba, params.num_threads):
        w, q = _weights(kernels, R64.data, params.alpha, params.raw_confidence)
        G = np.empty((k, k), dtype=np.float64)
        kernels.gram(Y64, G)
        per_row = np.empty(X64.shape[0], dtype=np.float64)
        kernels.data_loss_rows(indptr, indices, w, q, X64, Y64, G, per_row)
    total = 0.0  # summed in row order: the same for any thread count
    for value in per_row.tolist():
        total += value
    return total


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams):
    return HostTrainer(sys.modules[__name__], user_items, item_users, X, Y, params)
