"""The CuPy backend: ALS on the GPU through CuPy, for machines without recfuse._cuda.

Host NumPy arrays in and out, like every backend; the trainer keeps the CSR matrices and
both factor matrices on the device as CuPy arrays for the whole fit.

CG runs every row's conjugate gradient at once, step by step (the algorithm of
``recfuse.reference.conjugate_gradient``, with per-row masks for the early stop and for
the rows that fail, which get their starting vectors back):

* ``d_ui = x_u·y_i`` for every stored entry, gathered in bounded chunks;
* ``A p = p (YᵀY + λI) + R_{w d} Y``, where ``R_{w d}`` is the CSR matrix with the stored
  values replaced by ``w d`` (a cuSPARSE product through ``cupyx.scipy.sparse``);
* the residual ``b − A x = R_{q − w d} Y − x (YᵀY + λI)``.

Cholesky builds each row's ``A_u`` and ``b_u`` in a bounded batch of device memory with a
``cupy.RawKernel``, which then factors and solves each system (one block per row) and
counts the rows that are not positive definite, leaving them unchanged like the CPU.

CuPy is imported only when needed; ``availability()`` never raises.
"""

from __future__ import annotations

import numpy as np

from .. import reference
from .common import AlsParams, CsrArrays

NAME = "cupy"

_CG_TOLERANCE = 1e-20  # recfuse.reference.CG_TOLERANCE
_GATHER_BYTES = 128 << 20  # device memory for one chunk of gathered factor rows
_BATCH_BYTES = 256 << 20  # device memory for one batch of Cholesky systems
_CHOLESKY_THREADS = 128


def availability() -> tuple[bool, str]:
    try:
        import cupy
    except ModuleNotFoundError:
        return False, "cupy is not installed (pip install 'recfuse[gpu]')"
    except Exception as error:  # noqa: BLE001 - ImportError or a broken CUDA install
        return False, f"cupy is not importable: {error}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:  # noqa: BLE001
        return False, f"no CUDA device: {error}"
    if count <= 0:
        return False, "no CUDA device: cupy reports 0 devices"
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as error:  # noqa: BLE001
        return False, f"no CUDA device: {error}"
    return True, f"cupy {cupy.__version__} on {name}"


# --------------------------------------------------------------------------- Cholesky kernel

# A = L Lᵀ in place and the solve, for one system per block (shared with the explicit ALS
# kernel of recfuse._sgd.cupy_backend).
CHOLESKY_SOLVE_SOURCE = r"""
__device__ __forceinline__ float root_of(float v) { return sqrtf(v); }
__device__ __forceinline__ double root_of(double v) { return sqrt(v); }

// A (k x k, row-major, lower triangle) = L L^T in place by all threads of the block, then
// b = A^-1 b by warp 0. Returns false in every thread, A and b spoiled, when A is not
// positive definite (also NaN, and an inf pivot: sums that overflowed, as on the CPU).
__device__ bool cholesky_solve_in_place(REAL* A, REAL* b, int k) {
  const int tid = threadIdx.x, threads = blockDim.x;
  for (int j = 0; j < k; ++j) {
    const REAL d = A[(long long)j * k + j];
    if (!(d > (REAL)0) || isinf(d)) return false;  // every thread sees the same value
    const REAL root = root_of(d);
    const REAL inv = (REAL)1 / root;
    __syncthreads();  // everyone has read A[j][j]
    for (int i = j + tid; i < k; i += threads) {
      REAL* a = A + (long long)i * k + j;
      *a = i == j ? root : *a * inv;
    }
    __syncthreads();
    const int n = k - j - 1;
    for (int e = tid; e < n * n; e += threads) {
      const int i = j + 1 + e / n, l = j + 1 + e % n;
      if (l <= i) A[(long long)i * k + l] -= A[(long long)i * k + j] * A[(long long)l * k + j];
    }
    __syncthreads();
  }
  if (tid < 32) {
    for (int j = 0; j < k; ++j) {  // L z = b
      const REAL z = b[j] / A[(long long)j * k + j];
      __syncwarp();
      for (int i = j + 1 + tid; i < k; i += 32) b[i] -= A[(long long)i * k + j] * z;
      if (tid == 0) b[j] = z;
      __syncwarp();
    }
    for (int i = k - 1; i >= 0; --i) {  // L^T x = z
      const REAL xi = b[i] / A[(long long)i * k + i];
      __syncwarp();
      for (int l = tid; l < i; l += 32) b[l] -= A[(long long)i * k + l] * xi;
      if (tid == 0) b[i] = xi;
      __syncwarp();
    }
  }
  return true;
}

// Warp 0 writes the solution b (d values) to out when all of it is finite; otherwise it
// counts the row in failed (a solution past the dtype fails the row) and writes nothing.
__device__ void store_solution(const REAL* b, REAL* out, int d,
                               unsigned long long* failed) {
  const int tid = threadIdx.x;
  if (tid >= 32) return;
  bool finite = true;
  for (int j = tid; j < d; j += 32) finite = finite && isfinite(b[j]);
  if (__all_sync(0xffffffffu, finite)) {
    for (int j = tid; j < d; j += 32) out[j] = b[j];
  } else if (tid == 0) {
    atomicAdd(failed, 1ULL);
  }
}
"""

_CHOLESKY_SOURCE = CHOLESKY_SOLVE_SOURCE + r"""
// One block per row of the batch: A = G + reg I + sum w y y^T (lower triangle, upper G
// like the CPU), b = sum q y, A = L L^T in place, x = solve. Rows whose A is not positive
// definite, or whose solution is not finite, are counted and left unchanged.
extern "C" __global__ void recfuse_cholesky_rows(
    const int* __restrict__ indptr, const int* __restrict__ indices,
    const REAL* __restrict__ w, const REAL* __restrict__ q, const REAL* __restrict__ Y,
    const REAL* __restrict__ G, REAL* __restrict__ X, REAL* __restrict__ systems,
    REAL* __restrict__ rhs_batch, long long first_row, long long batch_rows, int k,
    unsigned long long* __restrict__ failed) {
  const long long slot = blockIdx.x;
  if (slot >= batch_rows) return;
  const long long u = first_row + slot;
  REAL* A = systems + slot * (long long)k * k;
  REAL* b = rhs_batch + slot * (long long)k;
  const int start = indptr[u], end = indptr[u + 1];
  const int tid = threadIdx.x, threads = blockDim.x;

  for (int e = tid; e < k * k; e += threads) {
    const int r = e / k, c = e - r * k;
    if (c > r) continue;
    REAL s = G[(long long)c * k + r];
    for (int t = start; t < end; ++t) {
      const REAL* y = Y + (long long)indices[t] * k;
      s += (w[t] * y[r]) * y[c];
    }
    A[(long long)r * k + c] = s;
  }
  for (int j = tid; j < k; j += threads) {
    REAL s = 0;
    for (int t = start; t < end; ++t) s += q[t] * Y[(long long)indices[t] * k + j];
    b[j] = s;
  }
  __syncthreads();
  if (!cholesky_solve_in_place(A, b, k)) {
    if (tid == 0) atomicAdd(failed, 1ULL);
    return;
  }
  store_solution(b, X + u * k, k, failed);
}
"""

_KERNELS: dict = {}


def _cholesky_kernel(dtype):
    import cupy

    key = np.dtype(dtype).name
    if key not in _KERNELS:
        real = {"float32": "float", "float64": "double"}[key]
        source = "#define REAL " + real + "\n" + _CHOLESKY_SOURCE
        _KERNELS[key] = cupy.RawKernel(source, "recfuse_cholesky_rows")
    return _KERNELS[key]


# --------------------------------------------------------------------------- device engine


class _DeviceCsr:
    """A CSR matrix on the device with its per-entry row index, w and q."""

    def __init__(self, engine: "_Engine", R: CsrArrays):
        xp = engine.xp
        if R.nnz > np.iinfo(np.int32).max:
            raise ValueError(
                f"the cupy backend supports at most {np.iinfo(np.int32).max} stored entries "
                f"(32-bit cuSPARSE indices), got {R.nnz}"
            )
        self.shape = (int(R.shape[0]), int(R.shape[1]))
        self.nnz = R.nnz
        host_rows = np.repeat(np.arange(self.shape[0], dtype=np.int32), np.diff(R.indptr))
        self.indptr = xp.asarray(R.indptr.astype(np.int32))
        self.indices = xp.asarray(R.indices)
        self.rows = xp.asarray(host_rows)
        self.data = xp.asarray(R.data)
        # On the host: CuPy compiles float32 kernels with -ftz=true, which would read a
        # subnormal rating as 0 and drop its preference.
        w, q = reference.confidence_weights(R.data, engine.params.alpha, engine.params.confidence)
        self.w, self.q = xp.asarray(w), xp.asarray(q)
        self._engine, self._host_data, self._weights64 = engine, R.data, None

    def weights64(self):
        """(w, q) in float64 on the device, for the loss; computed on first use."""
        if self._weights64 is None:
            p = self._engine.params
            w, q = reference.confidence_weights(self._host_data.astype(np.float64), p.alpha,
                                                p.confidence)
            self._weights64 = (self._engine.xp.asarray(w), self._engine.xp.asarray(q))
        return self._weights64

    def times(self, engine: "_Engine", values, F):
        """The CSR matrix with `values` in place of its stored values, times dense F."""
        if self.nnz == 0:
            return engine.xp.zeros((self.shape[0], F.shape[1]), dtype=F.dtype)
        matrix = engine.sparse.csr_matrix((values, self.indices, self.indptr), shape=self.shape)
        return matrix @ F


class _Engine:
    """The device arithmetic; `xp`/`sparse` are cupy/cupyx.scipy.sparse."""

    def __init__(self, xp, sparse, params: AlsParams, dtype, synchronize=None):
        self.xp, self.sparse, self.params = xp, sparse, params
        self.dtype = np.dtype(dtype)
        self._synchronize = synchronize or (lambda: None)

    # --- helpers
    def row_dots(self, csr: _DeviceCsr, V, F):
        """d_t = V[row_t] · F[col_t] for every stored entry, in bounded chunks."""
        xp = self.xp
        d = xp.empty(csr.nnz, dtype=V.dtype)
        k = V.shape[1]
        chunk = max(1, _GATHER_BYTES // (2 * k * V.dtype.itemsize))
        for begin in range(0, csr.nnz, chunk):
            end = min(csr.nnz, begin + chunk)
            d[begin:end] = (V[csr.rows[begin:end]] * F[csr.indices[begin:end]]).sum(axis=1)
        return d

    def regularised_gram(self, F, gram=None):
        xp = self.xp
        G = F.T @ F if gram is None else xp.array(gram, dtype=F.dtype, copy=True)
        k = G.shape[0]
        G[xp.arange(k), xp.arange(k)] += F.dtype.type(self.params.regularization)
        return G

    # --- solvers
    def sweep(self, csr: _DeviceCsr, Y, X, gram=None) -> int:
        """Re-solve every row of device X against device Y; returns rows left unchanged."""
        p = self.params
        if Y.shape[1] <= 0:
            raise ValueError(f"factors must be positive, got {Y.shape[1]}")
        if p.cg_steps < 0:
            raise ValueError(f"cg_steps must be >= 0, got {p.cg_steps}")
        if p.solver == "cholesky":
            failed = self._cholesky(csr, Y, X, self.regularised_gram(Y, gram))
        elif p.solver == "cg":
            failed = self._conjugate_gradient(csr, Y, X, self.regularised_gram(Y, gram),
                                              p.cg_steps)
        else:
            raise ValueError(f"solver must be 'cg' or 'cholesky', got {p.solver!r}")
        self._synchronize()
        return failed

    def _conjugate_gradient(self, csr: _DeviceCsr, Y, X, G, steps: int) -> int:
        """The reference's CG on every row at once (a mask per row); returns the rows that
        failed, which get their starting vectors back."""
        xp = self.xp
        if csr.shape[0] == 0:
            return 0
        tolerance = X.dtype.type(_CG_TOLERANCE)
        zero, one = X.dtype.type(0), X.dtype.type(1)
        largest = X.dtype.type(np.finfo(X.dtype).max)
        start = X.copy()
        d = self.row_dots(csr, X, Y)
        r = csr.times(self, csr.q - csr.w * d, Y) - X @ G
        p = r.copy()
        rs_old = (r * r).sum(axis=1)
        active = ~(rs_old < tolerance)  # NaN keeps going, as in the reference
        failed = xp.zeros(X.shape[0], dtype=bool)
        for _ in range(steps):
            if not bool(active.any()):
                break
            d = self.row_dots(csr, p, Y)
            Ap = p @ G + csr.times(self, csr.w * d, Y)
            pAp = (p * Ap).sum(axis=1)
            broken = active & ~((pAp > zero) & (pAp <= largest))
            failed |= broken
            active &= ~broken
            step = xp.where(active, rs_old / xp.where(active, pAp, one), zero)[:, None]
            mask = active[:, None]
            X += xp.where(mask, step * p, zero)
            r -= xp.where(mask, step * Ap, zero)
            rs_new = (r * r).sum(axis=1)
            going = active & ~(rs_new < tolerance)
            beta = xp.where(going, rs_new / xp.where(going, rs_old, one), zero)
            p = r + beta[:, None] * p
            rs_old = xp.where(going, rs_new, rs_old)
            active = going
        failed |= ~xp.isfinite(X).all(axis=1)
        X[failed] = start[failed]
        return int(failed.sum())

    def _cholesky(self, csr: _DeviceCsr, Y, X, G) -> int:
        xp = self.xp
        rows, k = csr.shape[0], X.shape[1]
        if rows == 0:
            return 0
        kernel = _cholesky_kernel(X.dtype)
        batch = int(max(1, min(rows, _BATCH_BYTES // (k * k * X.dtype.itemsize))))
        systems = xp.empty((batch, k, k), dtype=X.dtype)
        rhs = xp.empty((batch, k), dtype=X.dtype)
        failed = xp.zeros(1, dtype=np.uint64)
        Y = xp.ascontiguousarray(Y)
        G = xp.ascontiguousarray(G)
        for first in range(0, rows, batch):
            count = min(batch, rows - first)
            kernel(
                (count,), (_CHOLESKY_THREADS,),
                (csr.indptr, csr.indices, csr.w, csr.q, Y, G, X, systems, rhs,
                 np.int64(first), np.int64(count), np.int32(k), failed),
            )
        return int(failed.get()[0])

    def data_loss(self, csr: _DeviceCsr, X, Y) -> float:
        """Σ_u [x_uᵀ YᵀY x_u + Σ_i (q − 2 q d + w d²)] in float64 (the numpy backend's)."""
        X64, Y64 = X.astype(np.float64), Y.astype(np.float64)
        total = float(((X64 @ (Y64.T @ Y64)) * X64).sum())
        if csr.nnz:
            w, q = csr.weights64()
            d = self.row_dots(csr, X64, Y64)
            total += float((q * (1.0 - 2.0 * d) + w * d * d).sum())
        return total


def _cupy_engine(params: AlsParams, dtype) -> _Engine:
    import cupy
    import cupyx.scipy.sparse

    return _Engine(
        cupy, cupyx.scipy.sparse, params, dtype,
        synchronize=lambda: cupy.cuda.get_current_stream().synchronize(),
    )


# --------------------------------------------------------------------------- backend protocol


def half_sweep(R: CsrArrays, Y, X, params: AlsParams, gram=None) -> int:
    engine = _cupy_engine(params, Y.dtype)
    xp = engine.xp
    csr = _DeviceCsr(engine, R)
    dX = xp.asarray(X)
    failed = engine.sweep(csr, xp.asarray(Y), dX, gram)
    X[...] = xp.asnumpy(dX)
    return failed


def data_loss(R: CsrArrays, X, Y, params: AlsParams) -> float:
    engine = _cupy_engine(params, Y.dtype)
    xp = engine.xp
    return engine.data_loss(_DeviceCsr(engine, R), xp.asarray(X), xp.asarray(Y))


class CupyTrainer:
    """Training state on the device: CSR matrices and factors stay as CuPy arrays."""

    def __init__(self, engine: _Engine, user_items: CsrArrays, item_users: CsrArrays, X, Y):
        xp = engine.xp
        self._engine = engine
        self._user_items = _DeviceCsr(engine, user_items)
        self._item_users = _DeviceCsr(engine, item_users)
        self._X = xp.array(X, copy=True)
        self._Y = xp.array(Y, copy=True)

    def sweep_users(self) -> int:
        return self._engine.sweep(self._user_items, self._Y, self._X)

    def sweep_items(self) -> int:
        return self._engine.sweep(self._item_users, self._X, self._Y)

    def data_loss(self) -> float:
        return self._engine.data_loss(self._user_items, self._X, self._Y)

    def factors(self) -> tuple[np.ndarray, np.ndarray]:
        to_host = getattr(self._engine.xp, "asnumpy", np.asarray)
        return np.array(to_host(self._X), copy=True), np.array(to_host(self._Y), copy=True)


def make_trainer(user_items: CsrArrays, item_users: CsrArrays, X, Y, params: AlsParams):
    return CupyTrainer(_cupy_engine(params, Y.dtype), user_items, item_users, X, Y)

