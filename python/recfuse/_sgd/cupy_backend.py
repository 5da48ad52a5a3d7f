"""The CuPy SGD backend: Funk SVD on the GPU through CuPy, for machines without recfuse._cuda.

It follows the CPU's block schedule (``recfuse/sgd.hpp``) rather than Hogwild: for each
diagonal of the grid, one warp per block runs the block's ratings in their order (the k
factors over the warp's lanes, the dot product summed by a butterfly), and the blocks of a
diagonal share no user or item, so an epoch is ``reference.svd_sgd_epoch`` over the block
order, up to the rounding of the warp's sums, and the same on every run. A grid of g bins
keeps g warps busy: a fallback, not a fast path (the native ``cuda`` backend is that).

Explicit ALS has a kernel too: ``explicit_als_half_sweep`` builds each row's system
(Σ z zᵀ + n D, z = (y, 1) when biased) in a bounded batch of device memory, one block per
row, and factors and solves it with the CuPy ALS backend's Cholesky code; rows that are not
positive definite keep their values and are counted, rows without ratings get 0, as in
``reference.explicit_als_half_sweep``. SVD++ and BPR have no kernel here, so
``resolve_backend(..., needs=...)`` passes over this module for them. ``svd_trainer`` keeps
one SVD fit on the device between epochs (``recfuse.SVD`` uses it); ``svd_epoch``, the
backend contract's one-epoch call, copies everything there and back.

Written without a GPU at hand: tests/test_gpu_sgd.py and the cupy parameter of
tests/test_sgd_backends.py are its first check on a device. CuPy is imported only when
used; ``availability()`` never raises.
"""

from __future__ import annotations

import functools

import numpy as np

from .._als.cupy_backend import CHOLESKY_SOLVE_SOURCE
from .._als.cupy_backend import availability as _device_availability
from .common import Blocks

NAME = "cupy"
_THREADS = 128  # four warps, four blocks of the grid, per thread block
_EXPLICIT_THREADS = 128
_BATCH_BYTES = 256 << 20  # device memory for one batch of explicit ALS systems

_SVD_SOURCE = r"""
template <class T>
__device__ void svd_diagonal(const int* __restrict__ users, const int* __restrict__ items,
                             const T* __restrict__ ratings, const long long* __restrict__ offsets,
                             int grid, int diagonal, T mu, T* bu, T* bi, T* P, T* Q, int k,
                             T lr_bu, T lr_bi, T lr_pu, T lr_qi, T reg_bu, T reg_bi, T reg_pu,
                             T reg_qi, int biased) {
  const int lane = threadIdx.x & 31;
  const int row_bin = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  if (row_bin >= grid) return;  // the whole warp leaves together
  const long long block = (long long)diagonal * grid + row_bin;
  for (long long t = offsets[block]; t < offsets[block + 1]; ++t) {
    const long long u = users[t], i = items[t];
    T* p = P + u * k;
    T* q = Q + i * k;
    T dot = 0;
    for (int f = lane; f < k; f += 32) dot += p[f] * q[f];
    for (int offset = 16; offset > 0; offset >>= 1) {
      dot += __shfl_xor_sync(0xffffffffu, dot, offset);
    }
    const T b_u = bu[u], b_i = bi[i];
    const T err = ratings[t] - (mu + b_u + b_i + dot);
    __syncwarp();  // every lane has read the biases before lane 0 writes them
    if (biased && lane == 0) {
      bu[u] = b_u + lr_bu * (err - reg_bu * b_u);
      bi[i] = b_i + lr_bi * (err - reg_bi * b_i);
    }
    for (int f = lane; f < k; f += 32) {
      const T pf = p[f], qf = q[f];
      p[f] = pf + lr_pu * (err * qf - reg_pu * pf);
      q[f] = qf + lr_qi * (err * pf - reg_qi * qf);
    }
    __syncwarp();  // this rating's writes land before the warp reads the next rows
  }
}

#define RECFUSE_SVD_KERNEL(name, T)                                                            \
  extern "C" __global__ void name(const int* users, const int* items, const T* ratings,       \
                                  const long long* offsets, int grid, int diagonal, T mu,      \
                                  T* bu, T* bi, T* P, T* Q, int k, T lr_bu, T lr_bi, T lr_pu,  \
                                  T lr_qi, T reg_bu, T reg_bi, T reg_pu, T reg_qi, int biased) { \
    svd_diagonal<T>(users, items, ratings, offsets, grid, diagonal, mu, bu, bi, P, Q, k,       \
                    lr_bu, lr_bi, lr_pu, lr_qi, reg_bu, reg_bi, reg_pu, reg_qi, biased);       \
  }
RECFUSE_SVD_KERNEL(svd_diagonal_float, float)
RECFUSE_SVD_KERNEL(svd_diagonal_double, double)
"""


def availability() -> tuple[bool, str]:
    available, detail = _device_availability()
    return available, (f"SVD and explicit ALS (no SVD++, BPR) on {detail}"
                       if available else detail)


@functools.lru_cache(maxsize=None)
def _kernel(dtype_name: str):
    import cupy

    module = cupy.RawModule(code=_SVD_SOURCE, options=("--std=c++14",))
    return module.get_function(f"svd_diagonal_{dtype_name}")


class SvdFit:
    """One Funk SVD fit on the device (CuPy arrays): ``epochs(global_mean, lr, reg, biased,
    epochs)`` trains in place, ``download(user_bias, item_bias, P, Q)`` copies the model back
    into host arrays of the starting shapes (the same interface as recfuse._cuda's)."""

    def __init__(self, blocks: Blocks, ratings, user_bias, item_bias, P, Q):
        import cupy

        self.dtype = np.dtype(P.dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TypeError(f"the cupy SVD runs in float32 or float64, got {self.dtype}")
        self.grid = int(blocks.grid)
        self.k = int(P.shape[1])
        self.users = cupy.asarray(blocks.users, dtype=cupy.int32)
        self.items = cupy.asarray(blocks.items, dtype=cupy.int32)
        self.offsets = cupy.asarray(blocks.offsets, dtype=cupy.int64)
        self.ratings = cupy.asarray(ratings, dtype=self.dtype)
        self.bu, self.bi, self.P, self.Q = (cupy.array(a, dtype=self.dtype, order="C")
                                            for a in (user_bias, item_bias, P, Q))

    def epochs(self, global_mean, lr, reg, biased, epochs: int) -> None:
        if epochs < 0:
            raise ValueError(f"epochs must be >= 0, got {epochs}")
        scalar = self.dtype.type
        kernel = _kernel("float" if self.dtype == np.float32 else "double")
        rates = [scalar(v) for v in (*tuple(lr)[:4], *tuple(reg)[:4])]
        blocks = (-(-self.grid * 32 // _THREADS),)
        for _ in range(epochs):
            for diagonal in range(self.grid):  # launches on one stream run in order
                kernel(blocks, (_THREADS,),
                       (self.users, self.items, self.ratings, self.offsets, np.int32(self.grid),
                        np.int32(diagonal), scalar(global_mean), self.bu, self.bi, self.P,
                        self.Q, np.int32(self.k), *rates, np.int32(bool(biased))))

    def download(self, user_bias, item_bias, P, Q) -> None:
        for host, device in zip((user_bias, item_bias, P, Q), (self.bu, self.bi, self.P, self.Q)):
            if host.shape != device.shape:
                raise ValueError(f"download needs arrays of the fit's shapes, got {host.shape} "
                                 f"for {device.shape}")
            host[...] = device.get()


def svd_trainer(blocks: Blocks, ratings, user_bias, item_bias, P, Q) -> SvdFit:
    return SvdFit(blocks, ratings, user_bias, item_bias, P, Q)


def svd_epoch(blocks: Blocks, ratings, global_mean, user_bias, item_bias, P, Q, lr, reg, biased,
              num_threads) -> None:
    del num_threads  # the device decides its own parallelism
    fit = SvdFit(blocks, ratings, user_bias, item_bias, P, Q)
    fit.epochs(global_mean, lr, reg, biased, 1)
    fit.download(user_bias, item_bias, P, Q)


# --------------------------------------------------------------------------- explicit ALS

_EXPLICIT_SOURCE = CHOLESKY_SOLVE_SOURCE + r"""
// One block per row rows[first + slot] (rows with ratings only): with d = k + 1 and
// z_t = (y_t, 1) when biased (d = k, z_t = y_t otherwise), A = sum z z^T + n diag(D) and
// b = sum (r_t - mu - c_t) z (mu and the other side's bias c only when biased); W[row] (d
// values) = A^-1 b. Rows whose A is not positive definite, or whose solution is not finite,
// are counted and left unchanged.
extern "C" __global__ void recfuse_explicit_rows(
    const long long* __restrict__ indptr, const int* __restrict__ indices,
    const REAL* __restrict__ values, const REAL* __restrict__ Y,
    const REAL* __restrict__ other_bias, REAL mu, const REAL* __restrict__ D, int biased,
    const int* __restrict__ rows, REAL* __restrict__ W, REAL* __restrict__ systems,
    REAL* __restrict__ rhs_batch, long long first, long long count, int k,
    unsigned long long* __restrict__ failed) {
  const long long slot = blockIdx.x;
  if (slot >= count) return;
  const long long u = rows[first + slot];
  const int d = biased ? k + 1 : k;
  REAL* A = systems + slot * (long long)d * d;
  REAL* b = rhs_batch + slot * (long long)d;
  const long long start = indptr[u], end = indptr[u + 1];
  const REAL n = (REAL)(end - start);
  const int tid = threadIdx.x, threads = blockDim.x;

  for (int e = tid; e < d * d; e += threads) {
    const int r = e / d, c = e - r * d;
    if (c > r) continue;
    REAL s = r == c ? n * D[r] : (REAL)0;
    for (long long t = start; t < end; ++t) {
      const REAL* y = Y + (long long)indices[t] * k;
      s += (r < k ? y[r] : (REAL)1) * (c < k ? y[c] : (REAL)1);
    }
    A[(long long)r * d + c] = s;
  }
  for (int j = tid; j < d; j += threads) {
    REAL s = 0;
    for (long long t = start; t < end; ++t) {
      const REAL target = biased ? values[t] - mu - other_bias[indices[t]] : values[t];
      s += target * (j < k ? Y[(long long)indices[t] * k + j] : (REAL)1);
    }
    b[j] = s;
  }
  __syncthreads();
  if (!cholesky_solve_in_place(A, b, d)) {
    if (tid == 0) atomicAdd(failed, 1ULL);
    return;
  }
  store_solution(b, W + u * d, d, failed);
}
"""


@functools.lru_cache(maxsize=None)
def _explicit_kernel(real: str):
    import cupy

    return cupy.RawKernel("#define REAL " + real + "\n" + _EXPLICIT_SOURCE,
                          "recfuse_explicit_rows")


def explicit_als_half_sweep(R, Y, X, other_bias, own_bias, global_mean, reg, reg_bias,
                            num_threads) -> int:
    """``reference.explicit_als_half_sweep`` on the device: X (and own_bias when biased)
    updated in place from host arrays; returns the rows left unchanged."""
    import cupy

    del num_threads  # the device decides its own parallelism
    dtype = np.dtype(X.dtype)
    k = int(X.shape[1])
    biased = other_bias is not None
    d = k + 1 if biased else k
    counts = np.diff(R.indptr)
    rows = np.flatnonzero(counts > 0).astype(np.int32)
    W = np.zeros((X.shape[0], d), dtype=dtype)  # the current values: kept where a row fails
    W[:, :k] = X
    if biased:
        W[:, k] = own_bias
    failed = cupy.zeros(1, dtype=cupy.uint64)
    if rows.size:
        kernel = _explicit_kernel("float" if dtype == np.float32 else "double")
        device_W = cupy.asarray(W)
        diagonal = np.full(d, reg, dtype=dtype)
        if biased:
            diagonal[k] = reg_bias
        batch = int(max(1, min(rows.size, _BATCH_BYTES // (d * d * dtype.itemsize))))
        systems = cupy.empty((batch, d, d), dtype=dtype)
        rhs = cupy.empty((batch, d), dtype=dtype)
        arguments = [cupy.asarray(R.indptr, dtype=cupy.int64),
                     cupy.asarray(R.indices, dtype=cupy.int32),
                     cupy.asarray(R.data, dtype=dtype), cupy.asarray(Y, dtype=dtype),
                     cupy.asarray(other_bias if biased else np.zeros(1), dtype=dtype),
                     dtype.type(global_mean if biased else 0.0), cupy.asarray(diagonal),
                     np.int32(biased), cupy.asarray(rows), device_W, systems, rhs]
        for first in range(0, rows.size, batch):
            count = min(batch, rows.size - first)
            kernel((count,), (_EXPLICIT_THREADS,),
                   (*arguments, np.int64(first), np.int64(count), np.int32(k), failed))
        W = device_W.get()
    W[counts == 0] = 0  # a row without ratings: x = 0 (and its bias 0)
    X[...] = W[:, :k]
    if biased:
        own_bias[...] = W[:, k]
    return int(failed.get()[0])

