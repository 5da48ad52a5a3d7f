// Implicit-feedback ALS on a CUDA device. The mathematical contract is recfuse.reference
// (Python) and the CPU implementation in cpp/src/als.cpp; see als_cuda.hpp for the API.
//
// Kernels
//   gram_partial_kernel / gram_reduce_kernel
//       G = YᵀY in 32 x 32 output tiles (upper block triangle only), the rows of Y split
//       into fixed slices whose partial sums are added in slice order: deterministic.
//   cg_kernel<T, C, W>
//       one block of W warps per row. Each warp walks a 1/W share of the row's stored
//       entries holding y_i and the search direction in registers (C values per lane,
//       32 C >= k), so d = y_i·p is a register dot product plus a butterfly reduction;
//       the warps' partial Σ w d y_i meet in shared memory, where the dense G·p and the
//       CG vector updates happen (x, r, p live in shared memory). Rows of at least
//       kCgLongRow entries get blocks of cg_long_warps<T, C>() warps (up to 32), the
//       rest blocks of 4: a popular item's row (98k entries in MovieLens-20M's shape)
//       walked by four warps alone, four times a sweep, outlasted the whole rest of it.
//   cholesky_kernel
//       one 256-thread block per row. A_u = G + λI + Σ w y yᵀ is built in shared memory
//       64 x 64 tile by tile (each thread a 4 x 4 register tile over staged entries),
//       factored in place (right-looking, lower triangle), and solved by one warp.
//   loss_kernel / sum_kernel
//       one warp per row, the per-row double terms summed in a fixed order.
// Rows are processed longest first (a host-side permutation) so that the power-law head
// does not leave a tail of lone blocks at the end of a sweep.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdio>
#include <dlfcn.h>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.hpp"
#include "als_cuda.hpp"

namespace recfuse {
namespace cuda {

namespace {

// ------------------------------------------------------------------------ error handling

void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

// The current device, or a runtime_error that says why there is none.
int current_device() {
  if (device_count() == 0) throw std::runtime_error("no CUDA device: " + device_error());
  int device = 0;
  RECFUSE_CUDA_CHECK(cudaGetDevice(&device));
  return device;
}

int optin_shared_bytes(int device) {
  int bytes = 0;
  RECFUSE_CUDA_CHECK(
      cudaDeviceGetAttribute(&bytes, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  return bytes;
}

unsigned int grid_for(int64_t blocks) {
  if (blocks < 1) return 1;
  return static_cast<unsigned int>(std::min<int64_t>(blocks, INT_MAX));
}

const char* dtype_name(size_t size) { return size == sizeof(float) ? "float32" : "float64"; }

// ------------------------------------------------------------------------ device helpers

constexpr float kCgToleranceF = 1e-20f;  // recfuse.reference.CG_TOLERANCE in each type
constexpr double kCgToleranceD = 1e-20;

template <class T>
__device__ __forceinline__ T cg_tolerance();
template <>
__device__ __forceinline__ float cg_tolerance<float>() { return kCgToleranceF; }
template <>
__device__ __forceinline__ double cg_tolerance<double>() { return kCgToleranceD; }

__device__ __forceinline__ float device_sqrt(float v) { return sqrtf(v); }
__device__ __forceinline__ double device_sqrt(double v) { return sqrt(v); }

// w = c - 1 and q = c [r > 0] for a stored value r (Linear: c = 1 + alpha r, Raw: c = |r|).
template <class T>
__device__ __forceinline__ void confidence(T value, T alpha, bool raw, T& w, T& q) {
  const T c = raw ? (value < T(0) ? -value : value) : T(1) + alpha * value;
  w = c - T(1);
  q = value > T(0) ? c : T(0);
}

// Butterfly all-reduce: every lane ends with the same bits (a + b == b + a exactly).
template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Everything a half-sweep kernel reads: R (rows x cols), Y (cols x k), G = YᵀY + λI.
template <class T>
struct SweepArgs {
  const int64_t* indptr;
  const int32_t* indices;
  const T* data;
  const int64_t* order;  // processing order of the rows (a permutation), or null
  int64_t rows;
  const T* Y;
  const T* G;
  T* X;
  int k;
  T alpha;
  bool raw;
  int cg_steps;
  unsigned long long* failed;  // rows left unchanged (both solvers)
};

// ------------------------------------------------------------------------ gram

constexpr int kGramTile = 32;       // output tile edge
constexpr int kGramRows = 32;       // rows of Y staged per round
constexpr int kGramThreadsY = 8;    // block = 32 x 8, each thread 4 outputs

// partial[slice] = Σ_{rows of the slice} y yᵀ for the tiles on or above the diagonal.
template <class T>
__global__ void __launch_bounds__(kGramTile * kGramThreadsY)
    gram_partial_kernel(const T* __restrict__ Y, int64_t n, int k, int64_t rows_per_slice,
                        T* __restrict__ partial) {
  const int tile_row = blockIdx.y, tile_col = blockIdx.x;
  if (tile_row > tile_col) return;
  __shared__ T ya[kGramRows][kGramTile + 1];
  __shared__ T yb[kGramRows][kGramTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t begin = static_cast<int64_t>(blockIdx.z) * rows_per_slice;
  const int64_t end = min(n, begin + rows_per_slice);
  const int col_a = tile_row * kGramTile + tx;
  const int col_b = tile_col * kGramTile + tx;
  constexpr int kPerThread = kGramTile / kGramThreadsY;
  T acc[kPerThread];
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) acc[m] = T(0);
  for (int64_t r0 = begin; r0 < end; r0 += kGramRows) {
    for (int rr = ty; rr < kGramRows; rr += kGramThreadsY) {
      const int64_t row = r0 + rr;
      const bool in = row < end;
      ya[rr][tx] = in && col_a < k ? Y[row * k + col_a] : T(0);
      yb[rr][tx] = in && col_b < k ? Y[row * k + col_b] : T(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int rr = 0; rr < kGramRows; ++rr) {
      const T b = yb[rr][tx];
#pragma unroll
      for (int m = 0; m < kPerThread; ++m) acc[m] += ya[rr][ty + kGramThreadsY * m] * b;
    }
    __syncthreads();
  }
  T* out = partial + static_cast<int64_t>(blockIdx.z) * k * k;
#pragma unroll
  for (int m = 0; m < kPerThread; ++m) {
    const int a = tile_row * kGramTile + ty + kGramThreadsY * m;
    if (a < k && col_b < k) out[static_cast<int64_t>(a) * k + col_b] = acc[m];
  }
}

// G[a][b] = Σ_slices partial[min(a,b)][max(a,b)] (slice order), and G + reg I if wanted.
template <class T>
__global__ void gram_reduce_kernel(const T* __restrict__ partial, int slices, int k,
                                   T* __restrict__ G, T* __restrict__ G_reg, T reg) {
  const int64_t total = static_cast<int64_t>(k) * k;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int a = static_cast<int>(idx / k), b = static_cast<int>(idx % k);
    const int64_t src = a <= b ? idx : static_cast<int64_t>(b) * k + a;
    T sum = T(0);
    for (int s = 0; s < slices; ++s) sum += partial[static_cast<int64_t>(s) * total + src];
    if (G != nullptr) G[idx] = sum;
    if (G_reg != nullptr) G_reg[idx] = a == b ? sum + reg : sum;
  }
}

// G_reg = G + reg I for a gram supplied by the caller (used as given, like the CPU).
template <class T>
__global__ void regularise_kernel(const T* __restrict__ G, int k, T reg, T* __restrict__ G_reg) {
  const int64_t total = static_cast<int64_t>(k) * k;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    G_reg[idx] = idx / k == idx % k ? G[idx] + reg : G[idx];
  }
}

// Slices for the split over rows: enough blocks to fill a large GPU, bounded workspace.
template <class T>
int gram_slices(int64_t n, int k) {
  const int64_t tiles_1d = (k + kGramTile - 1) / kGramTile;
  const int64_t tiles = tiles_1d * (tiles_1d + 1) / 2;
  int64_t slices = (1024 + tiles - 1) / tiles;
  slices = std::min<int64_t>(slices, (n + 4 * kGramRows - 1) / (4 * kGramRows));
  const int64_t bytes_per_slice = static_cast<int64_t>(k) * k * sizeof(T);
  slices = std::min<int64_t>(slices, std::max<int64_t>(1, (64LL << 20) / bytes_per_slice));
  slices = std::min<int64_t>(slices, 65535);  // gridDim.z
  return static_cast<int>(std::max<int64_t>(slices, 1));
}

template <class T>
void launch_gram(const T* Y, int64_t n, int k, T* G, T* G_reg, T reg, T* workspace, int slices,
                 cudaStream_t stream) {
  int64_t rows_per_slice = (n + slices - 1) / slices;
  rows_per_slice = std::max<int64_t>(
      kGramRows, (rows_per_slice + kGramRows - 1) / kGramRows * kGramRows);
  const unsigned int tiles = static_cast<unsigned int>((k + kGramTile - 1) / kGramTile);
  const dim3 grid(tiles, tiles, static_cast<unsigned int>(slices));
  const dim3 block(kGramTile, kGramThreadsY);
  gram_partial_kernel<T><<<grid, block, 0, stream>>>(Y, n, k, rows_per_slice, workspace);
  check_launch("gram_partial_kernel");
  const int64_t total = static_cast<int64_t>(k) * k;
  gram_reduce_kernel<T><<<grid_for((total + 255) / 256), 256, 0, stream>>>(workspace, slices, k,
                                                                           G, G_reg, reg);
  check_launch("gram_reduce_kernel");
}

// ------------------------------------------------------------------------ conjugate gradient

constexpr int kCgWarps = 4;          // warps per row for all but the longest rows
constexpr int64_t kCgLongRow = 2048;  // stored entries from which a row gets more warps

template <class T, int W>
__device__ __forceinline__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T total = T(0);
#pragma unroll
  for (int w = 0; w < W; ++w) total += red[w];
  __syncthreads();  // red may be written again right after
  return total;
}

// (G v)_j for the one j this thread owns: Σ_m G[m][j] v_m (coalesced over j).
template <class T>
__device__ __forceinline__ T dense_times(const T* __restrict__ G, const T* v, int j, int k) {
  T s = T(0);
  for (int m = 0; m < k; ++m) s += __ldg(G + static_cast<int64_t>(m) * k + j) * v[m];
  return s;
}

// part[warp][:] = Σ_{the warp's entries} coef_i y_i, with d_i = y_i·v and
// coef = q - w d (residual) or w d (A p). Lanes hold element j = lane + 32 s.
template <class T, int C, int W>
__device__ __forceinline__ void sparse_pass(const SweepArgs<T>& a, int64_t start, int64_t end,
                                            const T* v_s, bool residual, T* part) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int k = a.k;
  T v[C], acc[C];
#pragma unroll
  for (int s = 0; s < C; ++s) {
    const int j = lane + 32 * s;
    v[s] = j < k ? v_s[j] : T(0);
    acc[s] = T(0);
  }
  int64_t t = start + warp;
  // Two entries per round so that their loads and reductions overlap.
  for (; t + W < end; t += 2 * W) {
    const T* y0 = a.Y + static_cast<int64_t>(__ldg(a.indices + t)) * k;
    const T* y1 = a.Y + static_cast<int64_t>(__ldg(a.indices + t + W)) * k;
    T w0, q0, w1, q1;
    confidence(__ldg(a.data + t), a.alpha, a.raw, w0, q0);
    confidence(__ldg(a.data + t + W), a.alpha, a.raw, w1, q1);
    T e0[C], e1[C];
    T d0 = T(0), d1 = T(0);
#pragma unroll
    for (int s = 0; s < C; ++s) {
      const int j = lane + 32 * s;
      e0[s] = j < k ? __ldg(y0 + j) : T(0);
      e1[s] = j < k ? __ldg(y1 + j) : T(0);
    }
#pragma unroll
    for (int s = 0; s < C; ++s) {
      d0 += e0[s] * v[s];
      d1 += e1[s] * v[s];
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
      d0 += __shfl_xor_sync(0xffffffffu, d0, offset);
      d1 += __shfl_xor_sync(0xffffffffu, d1, offset);
    }
    const T c0 = residual ? q0 - w0 * d0 : w0 * d0;
    const T c1 = residual ? q1 - w1 * d1 : w1 * d1;
#pragma unroll
    for (int s = 0; s < C; ++s) acc[s] += c0 * e0[s] + c1 * e1[s];
  }
  if (t < end) {
    const T* y0 = a.Y + static_cast<int64_t>(__ldg(a.indices + t)) * k;
    T w0, q0;
    confidence(__ldg(a.data + t), a.alpha, a.raw, w0, q0);
    T e0[C];
    T d0 = T(0);
#pragma unroll
    for (int s = 0; s < C; ++s) {
      const int j = lane + 32 * s;
      e0[s] = j < k ? __ldg(y0 + j) : T(0);
      d0 += e0[s] * v[s];
    }
    d0 = warp_sum(d0);
    const T c0 = residual ? q0 - w0 * d0 : w0 * d0;
#pragma unroll
    for (int s = 0; s < C; ++s) acc[s] += c0 * e0[s];
  }
#pragma unroll
  for (int s = 0; s < C; ++s) {
    const int j = lane + 32 * s;
    if (j < k) part[warp * k + j] = acc[s];
  }
}

// Blocks per SM to plan registers for: 64 registers a thread while a lane's three C-value
// arrays are small, up to 128 and then 255 (no cap) as they grow.
template <class T, int C>
constexpr int cg_min_blocks() {
  return sizeof(T) * C <= 16 ? 8 : (sizeof(T) * C <= 32 ? 4 : 1);
}

// Warps per long row: the threads that cg_min_blocks plans on an SM, in one block, so a
// thread has the same registers as in the 4-warp blocks (4 when those are one a SM: no
// long-row blocks then).
template <class T, int C>
constexpr int cg_long_warps() {
  return kCgWarps * cg_min_blocks<T, C>();
}

// recfuse.reference.conjugate_gradient for every row, from the current X; a row that fails
// (a step's p·Ap not a positive finite number, or a result that is not finite) keeps its
// vector and is counted in a.failed.
template <class T, int C, int W>
__global__ void __launch_bounds__(32 * W, W == kCgWarps ? cg_min_blocks<T, C>() : 1)
    cg_kernel(SweepArgs<T> a) {
  constexpr int kThreads = 32 * W;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int k = a.k, tid = threadIdx.x;
  T* x_s = reinterpret_cast<T*>(smem_raw);
  T* r_s = x_s + k;
  T* p_s = r_s + k;
  T* part = p_s + k;              // W x k, then row 0 holds A p
  T* red = part + W * k;  // W
  const T tolerance = cg_tolerance<T>();
  for (int64_t slot = blockIdx.x; slot < a.rows; slot += gridDim.x) {
    const int64_t u = a.order != nullptr ? a.order[slot] : slot;
    const int64_t start = a.indptr[u], end = a.indptr[u + 1];
    T* x = a.X + u * k;
    for (int j = tid; j < k; j += kThreads) x_s[j] = x[j];
    __syncthreads();
    // r = b - A x = Σ (q - w d) y - (G + λI) x;  p = r
    sparse_pass<T, C, W>(a, start, end, x_s, true, part);
    __syncthreads();
    T local = T(0);
    for (int j = tid; j < k; j += kThreads) {
      T r = -dense_times(a.G, x_s, j, k);
      for (int w = 0; w < W; ++w) r += part[w * k + j];
      r_s[j] = r;
      p_s[j] = r;
      local += r * r;
    }
    T rs_old = block_sum<T, W>(local, red);
    if (rs_old < tolerance) continue;  // x unchanged (block_sum ended with a barrier)
    bool solved = true;  // the same in every thread: block sums are
    for (int it = 0; it < a.cg_steps; ++it) {
      sparse_pass<T, C, W>(a, start, end, p_s, false, part);
      __syncthreads();
      local = T(0);
      for (int j = tid; j < k; j += kThreads) {
        T ap = dense_times(a.G, p_s, j, k);
        for (int w = 0; w < W; ++w) ap += part[w * k + j];
        part[j] = ap;  // only this thread reads or writes column j
        local += p_s[j] * ap;
      }
      const T pAp = block_sum<T, W>(local, red);
      if (!(pAp > T(0)) || isinf(pAp)) {  // NaN too: a uniform exit
        solved = false;
        break;
      }
      const T step = rs_old / pAp;
      local = T(0);
      for (int j = tid; j < k; j += kThreads) {
        x_s[j] += step * p_s[j];
        r_s[j] -= step * part[j];
        local += r_s[j] * r_s[j];
      }
      const T rs_new = block_sum<T, W>(local, red);
      if (rs_new < tolerance) break;
      const T beta = rs_new / rs_old;
      for (int j = tid; j < k; j += kThreads) p_s[j] = r_s[j] + beta * p_s[j];
      __syncthreads();
      rs_old = rs_new;
    }
    bool finite = true;
    for (int j = tid; j < k; j += kThreads) finite = finite && isfinite(x_s[j]);
    solved = __syncthreads_and(solved && finite);
    if (solved) {
      for (int j = tid; j < k; j += kThreads) x[j] = x_s[j];
    } else if (tid == 0) {
      atomicAdd(a.failed, 1ULL);
    }
    __syncthreads();
  }
}

template <class T>
size_t cg_shared_bytes(int k, int warps) {
  return (static_cast<size_t>(3 + warps) * k + warps) * sizeof(T);
}

// Values per lane: the smallest power of two with 32 C >= k.
int cg_chunks(int k) {
  int chunks = 1;
  while (32 * chunks < k) chunks *= 2;
  return chunks;
}

template <class T, int C, int W>
void launch_cg_blocks(const SweepArgs<T>& a, cudaStream_t stream) {
  if (a.rows == 0) return;
  const size_t smem = cg_shared_bytes<T>(a.k, W);
  allow_shared(cg_kernel<T, C, W>, smem);
  cg_kernel<T, C, W><<<grid_for(a.rows), 32 * W, smem, stream>>>(a);
  check_launch("cg_kernel");
}

// The first long_rows rows of a.order (the longest) in large blocks, then the rest.
template <class T, int C>
void launch_cg_chunks(const SweepArgs<T>& a, int64_t long_rows, cudaStream_t stream) {
  constexpr int kLongWarps = cg_long_warps<T, C>();
  if (kLongWarps == kCgWarps) long_rows = 0;
  SweepArgs<T> head = a, rest = a;
  head.rows = long_rows;
  rest.order = a.order + long_rows;
  rest.rows = a.rows - long_rows;
  launch_cg_blocks<T, C, kLongWarps>(head, stream);
  launch_cg_blocks<T, C, kCgWarps>(rest, stream);
}

// a.order must be set; its first long_rows rows are those of kCgLongRow entries or more.
template <class T>
void launch_cg(const SweepArgs<T>& a, int64_t long_rows, cudaStream_t stream) {
  switch (cg_chunks(a.k)) {
    case 1: return launch_cg_chunks<T, 1>(a, long_rows, stream);
    case 2: return launch_cg_chunks<T, 2>(a, long_rows, stream);
    case 4: return launch_cg_chunks<T, 4>(a, long_rows, stream);
    case 8: return launch_cg_chunks<T, 8>(a, long_rows, stream);
    case 16: return launch_cg_chunks<T, 16>(a, long_rows, stream);
    case 32: return launch_cg_chunks<T, 32>(a, long_rows, stream);
    default:
      throw std::invalid_argument("the CUDA CG solver supports at most " +
                                  std::to_string(cg_max_factors()) + " factors, got " +
                                  std::to_string(a.k));
  }
}

// ------------------------------------------------------------------------ Cholesky

constexpr int kCholThreads = 256;
constexpr int kCholTile = 64;     // A is built in 64 x 64 tiles: 16 x 16 threads x (4 x 4)
constexpr int kCholEntries = 8;   // stored entries staged in shared memory per round

template <class T>
size_t cholesky_shared_bytes(int k) {
  const size_t ld = static_cast<size_t>(k) + 1;
  return (k * ld + 3 * static_cast<size_t>(k) + kCholEntries * static_cast<size_t>(k) +
          2 * kCholEntries) *
         sizeof(T);
}

template <class T>
__global__ void __launch_bounds__(kCholThreads) cholesky_kernel(SweepArgs<T> a) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int k = a.k, ld = k + 1, tid = threadIdx.x;
  const int tx = tid & 15, ty = tid >> 4;
  const int lane = tid & 31, warp = tid >> 5;
  T* A = reinterpret_cast<T*>(smem_raw);  // k x ld, lower triangle used
  T* col = A + static_cast<int64_t>(k) * ld;  // the current column of L
  T* diag = col + k;                           // diagonal of L
  T* rhs = diag + k;                           // b, then z, then x
  T* ys = rhs + k;                             // kCholEntries x k staged y_i
  T* ws = ys + kCholEntries * k;               // their w
  T* qs = ws + kCholEntries;                   // their q
  const int tiles = (k + kCholTile - 1) / kCholTile;
  for (int64_t slot = blockIdx.x; slot < a.rows; slot += gridDim.x) {
    const int64_t u = a.order != nullptr ? a.order[slot] : slot;
    const int64_t start = a.indptr[u], end = a.indptr[u + 1];
    for (int j = tid; j < k; j += kCholThreads) rhs[j] = T(0);

    // A = G + λI + Σ w y yᵀ on and below the diagonal, b = Σ q y (with the first tile).
    for (int ti = 0; ti < tiles; ++ti) {
      for (int tj = 0; tj <= ti; ++tj) {
        T acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int m = 0; m < 4; ++m) acc[i][m] = T(0);
        for (int64_t c0 = start; c0 < end; c0 += kCholEntries) {
          const int count = static_cast<int>(min(static_cast<int64_t>(kCholEntries), end - c0));
          __syncthreads();  // the previous round is done with ys, ws, qs
          for (int idx = tid; idx < count * k; idx += kCholThreads) {
            const int e = idx / k, j = idx - e * k;
            ys[idx] = __ldg(a.Y + static_cast<int64_t>(__ldg(a.indices + c0 + e)) * k + j);
          }
          if (tid < count) {
            T w, q;
            confidence(__ldg(a.data + c0 + tid), a.alpha, a.raw, w, q);
            ws[tid] = w;
            qs[tid] = q;
          }
          __syncthreads();
          if (ti == 0 && tj == 0) {
            for (int j = tid; j < k; j += kCholThreads) {
              T s = rhs[j];
              for (int e = 0; e < count; ++e) s += qs[e] * ys[e * k + j];
              rhs[j] = s;
            }
          }
          for (int e = 0; e < count; ++e) {
            const T* y = ys + e * k;
            const T w = ws[e];
            T ya[4], yb[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int r = ti * kCholTile + ty + 16 * i;
              const int c = tj * kCholTile + tx + 16 * i;
              ya[i] = r < k ? w * y[r] : T(0);
              yb[i] = c < k ? y[c] : T(0);
            }
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
              for (int m = 0; m < 4; ++m) acc[i][m] += ya[i] * yb[m];
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const int r = ti * kCholTile + ty + 16 * i;
            const int c = tj * kCholTile + tx + 16 * m;
            if (r < k && c < k) {
              // The upper triangle of G, like the CPU (G is symmetric unless supplied).
              const int64_t g = r <= c ? static_cast<int64_t>(r) * k + c
                                       : static_cast<int64_t>(c) * k + r;
              A[static_cast<int64_t>(r) * ld + c] = __ldg(a.G + g) + acc[i][m];
            }
          }
        }
      }
    }
    __syncthreads();

    // A = L Lᵀ in place (right-looking): column j of L below the diagonal in A and col.
    bool ok = true;
    for (int j = 0; j < k; ++j) {
      const T d = A[static_cast<int64_t>(j) * ld + j];  // final since the last barrier
      // also NaN, and inf (sums past the dtype: the row keeps its vector); the same value in
      // every thread: a uniform exit
      if (!(d > T(0)) || isinf(d)) {
        ok = false;
        break;
      }
      const T root = device_sqrt(d);
      const T inv = T(1) / root;
      for (int i = j + 1 + tid; i < k; i += kCholThreads) {
        const T l = A[static_cast<int64_t>(i) * ld + j] * inv;
        A[static_cast<int64_t>(i) * ld + j] = l;
        col[i] = l;
      }
      if (tid == 0) diag[j] = root;
      __syncthreads();
      for (int i = j + 1 + ty; i < k; i += 16) {
        const T ci = col[i];
        T* Ai = A + static_cast<int64_t>(i) * ld;
        for (int l = j + 1 + tx; l <= i; l += 16) Ai[l] -= ci * col[l];
      }
      __syncthreads();
    }

    if (ok) {
      if (warp == 0) {
        // L z = b (by columns), then Lᵀ x = z (by columns of Lᵀ, i.e. rows of L).
        for (int j = 0; j < k; ++j) {
          const T z = rhs[j] / diag[j];
          __syncwarp();
          for (int i = j + 1 + lane; i < k; i += 32) {
            rhs[i] -= A[static_cast<int64_t>(i) * ld + j] * z;
          }
          if (lane == 0) rhs[j] = z;
          __syncwarp();
        }
        for (int i = k - 1; i >= 0; --i) {
          const T xi = rhs[i] / diag[i];
          __syncwarp();
          const T* Li = A + static_cast<int64_t>(i) * ld;
          for (int l = lane; l < i; l += 32) rhs[l] -= Li[l] * xi;
          if (lane == 0) rhs[i] = xi;
          __syncwarp();
        }
        // a solution past the dtype fails the row too (recfuse.reference counts it)
        bool finite = true;
        for (int j = lane; j < k; j += 32) finite = finite && isfinite(rhs[j]);
        if (__all_sync(0xffffffffu, finite)) {
          T* x = a.X + u * k;
          for (int j = lane; j < k; j += 32) x[j] = rhs[j];
        } else if (lane == 0) {
          atomicAdd(a.failed, 1ULL);
        }
      }
    } else if (tid == 0) {
      atomicAdd(a.failed, 1ULL);
    }
    __syncthreads();
  }
}

template <class T>
int cholesky_limit(int device) {
  const size_t available = static_cast<size_t>(optin_shared_bytes(device));
  int k = 0;
  while (k < 4096 && cholesky_shared_bytes<T>(k + 1) <= available) ++k;
  return k;
}

template <class T>
void check_cholesky_fits(int k, int device) {
  const int limit = cholesky_limit<T>(device);
  if (k > limit) {
    throw std::invalid_argument(
        "solver='cholesky' on the GPU supports at most " + std::to_string(limit) +
        " factors in " + dtype_name(sizeof(T)) + " on this device (the k x k system must fit in " +
        std::to_string(optin_shared_bytes(device)) + " bytes of shared memory per block), got k=" +
        std::to_string(k) + "; use solver='cg'");
  }
}

template <class T>
void launch_cholesky(const SweepArgs<T>& a, cudaStream_t stream) {
  const size_t smem = cholesky_shared_bytes<T>(a.k);
  allow_shared(cholesky_kernel<T>, smem);
  cholesky_kernel<T><<<grid_for(a.rows), kCholThreads, smem, stream>>>(a);
  check_launch("cholesky_kernel");
}

// ------------------------------------------------------------------------ data loss

constexpr int kLossThreads = 256;
constexpr int kLossWarps = kLossThreads / 32;

template <class T>
__global__ void __launch_bounds__(kLossThreads)
    loss_kernel(const int64_t* __restrict__ indptr, const int32_t* __restrict__ indices,
                const T* __restrict__ data, int64_t rows, const T* __restrict__ X,
                const T* __restrict__ Y, const T* __restrict__ G, int k, T alpha, bool raw,
                double* __restrict__ per_row) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t u = static_cast<int64_t>(blockIdx.x) * kLossWarps + warp; u < rows;
       u += static_cast<int64_t>(gridDim.x) * kLossWarps) {
    const T* x = X + u * k;
    T xgx = T(0);
    for (int j = lane; j < k; j += 32) {
      T g = T(0);
      for (int m = 0; m < k; ++m) g += G[static_cast<int64_t>(m) * k + j] * x[m];
      xgx += x[j] * g;
    }
    double total = static_cast<double>(warp_sum(xgx));
    for (int64_t t = indptr[u]; t < indptr[u + 1]; ++t) {
      const T* y = Y + static_cast<int64_t>(indices[t]) * k;
      T d = T(0);
      for (int j = lane; j < k; j += 32) d += y[j] * x[j];
      const double dd = static_cast<double>(warp_sum(d));
      T w, q;
      confidence(data[t], alpha, raw, w, q);
      total += static_cast<double>(q) * (1.0 - 2.0 * dd) + static_cast<double>(w) * dd * dd;
    }
    if (lane == 0) per_row[u] = total;
  }
}

constexpr int kSumThreads = 1024;

// One block: a fixed summation order, so the same result on every run.
__global__ void __launch_bounds__(kSumThreads)
    sum_kernel(const double* __restrict__ values, int64_t n, double* __restrict__ out) {
  __shared__ double partial[kSumThreads];
  double acc = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) acc += values[i];
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int width = kSumThreads / 2; width > 0; width >>= 1) {
    if (threadIdx.x < width) partial[threadIdx.x] += partial[threadIdx.x + width];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = partial[0];
}

// ------------------------------------------------------------------------ host side

template <class T>
void check_csr(const CsrView<T>& R) {
  expect(R.rows >= 0 && R.cols >= 0, "CSR shape must be non-negative");
  expect(R.indptr[0] == 0, "CSR indptr must start at 0, got " + std::to_string(R.indptr[0]));
  for (int64_t u = 0; u < R.rows; ++u) {
    if (R.indptr[u + 1] < R.indptr[u]) {
      throw std::invalid_argument("CSR indptr must be non-decreasing (row " + std::to_string(u) +
                                  ")");
    }
  }
  const int64_t nnz = R.indptr[R.rows];
  for (int64_t t = 0; t < nnz; ++t) {
    if (R.indices[t] < 0 || R.indices[t] >= R.cols) {
      throw std::invalid_argument("CSR column index " + std::to_string(R.indices[t]) +
                                  " out of range [0, " + std::to_string(R.cols) + ")");
    }
  }
}

void check_factors(int k) {
  expect(k > 0, "factors must be positive, got " + std::to_string(k));
}

template <class T>
void check_params(int k, const AlsParams<T>& params, int device) {
  check_factors(k);
  expect(params.cg_steps >= 0, "cg_steps must be >= 0, got " + std::to_string(params.cg_steps));
  if (params.solver == Solver::Cholesky) {
    check_cholesky_fits<T>(k, device);
  } else {
    expect(k <= cg_max_factors(), "the CUDA CG solver supports at most " +
                                      std::to_string(cg_max_factors()) + " factors, got k=" +
                                      std::to_string(k));
  }
}

// A CSR matrix on the device plus its longest-first row order.
template <class T>
struct DeviceCsr {
  DeviceBuffer<int64_t> indptr;
  DeviceBuffer<int32_t> indices;
  DeviceBuffer<T> data;
  DeviceBuffer<int64_t> order;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t nnz = 0;
  int64_t long_rows = 0;  // rows of kCgLongRow entries or more: the head of order

  void upload(const CsrView<T>& R, cudaStream_t stream) {
    rows = R.rows;
    cols = R.cols;
    nnz = R.indptr[R.rows];
    std::vector<int64_t> host_order(static_cast<size_t>(rows));
    std::iota(host_order.begin(), host_order.end(), int64_t{0});
    std::stable_sort(host_order.begin(), host_order.end(), [&](int64_t l, int64_t r) {
      return R.indptr[l + 1] - R.indptr[l] > R.indptr[r + 1] - R.indptr[r];
    });
    long_rows = std::partition_point(host_order.begin(), host_order.end(), [&](int64_t u) {
                  return R.indptr[u + 1] - R.indptr[u] >= kCgLongRow;
                }) - host_order.begin();
    indptr.allocate(static_cast<size_t>(rows) + 1);
    indices.allocate(static_cast<size_t>(nnz));
    data.allocate(static_cast<size_t>(nnz));
    order.allocate(static_cast<size_t>(rows));
    indptr.upload(R.indptr, static_cast<size_t>(rows) + 1, stream);
    indices.upload(R.indices, static_cast<size_t>(nnz), stream);
    data.upload(R.data, static_cast<size_t>(nnz), stream);
    order.upload(host_order.data(), static_cast<size_t>(rows), stream);
    // Copies from pageable memory are staged before cudaMemcpyAsync returns; waiting here
    // reports a failed upload where it happened.
    RECFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
};

// One half-sweep on device arrays; X (R.rows x k) updated in place. Synchronises.
template <class T>
int64_t run_sweep(const DeviceCsr<T>& R, const T* Y, int k, const T* G_reg, T* X,
                  const AlsParams<T>& params, unsigned long long* failed, cudaStream_t stream) {
  if (R.rows == 0) return 0;
  SweepArgs<T> a;
  a.indptr = R.indptr.get();
  a.indices = R.indices.get();
  a.data = R.data.get();
  a.order = R.order.get();
  a.rows = R.rows;
  a.Y = Y;
  a.G = G_reg;
  a.X = X;
  a.k = k;
  a.alpha = params.alpha;
  a.raw = params.confidence == Confidence::Raw;
  a.cg_steps = params.cg_steps;
  a.failed = failed;
  RECFUSE_CUDA_CHECK(cudaMemsetAsync(failed, 0, sizeof(unsigned long long), stream));
  if (params.solver == Solver::Cholesky) {
    launch_cholesky(a, stream);
  } else {
    launch_cg(a, R.long_rows, stream);
  }
  unsigned long long host_failed = 0;
  RECFUSE_CUDA_CHECK(cudaMemcpyAsync(&host_failed, failed, sizeof(host_failed),
                                     cudaMemcpyDeviceToHost, stream));
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return static_cast<int64_t>(host_failed);
}

// Σ_u data-loss terms on device arrays (G = YᵀY, unregularised). Synchronises.
template <class T>
double run_loss(const DeviceCsr<T>& R, const T* X, const T* Y, int k, const T* G, T alpha,
                bool raw, double* per_row, double* out, cudaStream_t stream) {
  if (R.rows == 0) return 0.0;
  loss_kernel<T><<<grid_for((R.rows + kLossWarps - 1) / kLossWarps), kLossThreads, 0, stream>>>(
      R.indptr.get(), R.indices.get(), R.data.get(), R.rows, X, Y, G, k, alpha, raw, per_row);
  check_launch("loss_kernel");
  sum_kernel<<<1, kSumThreads, 0, stream>>>(per_row, R.rows, out);
  check_launch("sum_kernel");
  double total = 0.0;
  RECFUSE_CUDA_CHECK(cudaMemcpyAsync(&total, out, sizeof(total), cudaMemcpyDeviceToHost, stream));
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
  return total;
}

// G (and G_reg) from device Y, or from a host gram when one is given.
template <class T>
void prepare_gram(const T* dY, int64_t n, int k, const T* host_gram, T reg, DeviceBuffer<T>& G,
                  T* G_reg, cudaStream_t stream) {
  const size_t kk = static_cast<size_t>(k) * k;
  G.allocate(kk);
  if (host_gram != nullptr) {
    G.upload(host_gram, kk, stream);
    if (G_reg != nullptr) {
      regularise_kernel<T><<<grid_for((static_cast<int64_t>(kk) + 255) / 256), 256, 0, stream>>>(
          G.get(), k, reg, G_reg);
      check_launch("regularise_kernel");
    }
    return;
  }
  const int slices = gram_slices<T>(n, k);
  DeviceBuffer<T> workspace(static_cast<size_t>(slices) * kk);
  launch_gram(dY, n, k, G.get(), G_reg, reg, workspace.get(), slices, stream);
  // workspace is freed on return; cudaFree waits for the work that uses it.
  RECFUSE_CUDA_CHECK(cudaStreamSynchronize(stream));
}

}  // namespace

// ------------------------------------------------------------------------ public API

std::string device_error() noexcept {
  try {
    // The runtime loads the driver library itself; say plainly when it is not there.
    void* driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (driver == nullptr) return "no NVIDIA driver (libcuda.so.1 cannot be loaded)";
    dlclose(driver);
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess) {
      cudaGetLastError();
      return std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    }
    if (count == 0) return "the CUDA runtime reports 0 devices";
    return "";
  } catch (...) {
    return "unknown error while querying CUDA devices";
  }
}

int device_count() noexcept {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::string device_name(int index) {
  const int count = device_count();
  expect(index >= 0 && index < count, "device index " + std::to_string(index) +
                                          " out of range: " + std::to_string(count) +
                                          " CUDA device(s)");
  cudaDeviceProp prop;
  RECFUSE_CUDA_CHECK(cudaGetDeviceProperties(&prop, index));
  return std::string(prop.name);
}

int cholesky_max_factors(bool double_precision) {
  const int device = current_device();
  return double_precision ? cholesky_limit<double>(device) : cholesky_limit<float>(device);
}

template <class T>
void gram(const T* Y, int64_t n, int k, T* G) {
  check_factors(k);
  expect(n >= 0, "Y must have a non-negative number of rows");
  current_device();
  Stream stream;
  DeviceBuffer<T> dY(static_cast<size_t>(n) * k);
  dY.upload(Y, static_cast<size_t>(n) * k, stream.get());
  DeviceBuffer<T> dG;
  prepare_gram<T>(dY.get(), n, k, nullptr, T(0), dG, nullptr, stream.get());
  dG.download(G, static_cast<size_t>(k) * k, stream.get());
  stream.synchronize();
}

template <class T>
int64_t als_half_sweep(const CsrView<T>& R, const T* Y, int k, const T* gram_or_null, T* X,
                       const AlsParams<T>& params) {
  const int device = current_device();
  check_params(k, params, device);
  check_csr(R);
  Stream stream;
  DeviceCsr<T> dR;
  dR.upload(R, stream.get());
  const size_t kk = static_cast<size_t>(k) * k;
  DeviceBuffer<T> dY(static_cast<size_t>(R.cols) * k), dX(static_cast<size_t>(R.rows) * k);
  dY.upload(Y, static_cast<size_t>(R.cols) * k, stream.get());
  dX.upload(X, static_cast<size_t>(R.rows) * k, stream.get());
  DeviceBuffer<T> dG, dG_reg(kk);
  prepare_gram<T>(dY.get(), R.cols, k, gram_or_null, params.regularization, dG, dG_reg.get(),
                  stream.get());
  DeviceBuffer<unsigned long long> failed(1);
  const int64_t result =
      run_sweep(dR, dY.get(), k, dG_reg.get(), dX.get(), params, failed.get(), stream.get());
  dX.download(X, static_cast<size_t>(R.rows) * k, stream.get());
  stream.synchronize();
  return result;
}

template <class T>
double als_data_loss(const CsrView<T>& R, const T* X, const T* Y, int k, const T* gram_or_null,
                     T alpha, Confidence confidence) {
  check_factors(k);
  current_device();
  check_csr(R);
  Stream stream;
  DeviceCsr<T> dR;
  dR.upload(R, stream.get());
  DeviceBuffer<T> dY(static_cast<size_t>(R.cols) * k), dX(static_cast<size_t>(R.rows) * k);
  dY.upload(Y, static_cast<size_t>(R.cols) * k, stream.get());
  dX.upload(X, static_cast<size_t>(R.rows) * k, stream.get());
  DeviceBuffer<T> dG;
  prepare_gram<T>(dY.get(), R.cols, k, gram_or_null, T(0), dG, nullptr, stream.get());
  DeviceBuffer<double> per_row(static_cast<size_t>(R.rows)), out(1);
  return run_loss(dR, dX.get(), dY.get(), k, dG.get(), alpha, confidence == Confidence::Raw,
                  per_row.get(), out.get(), stream.get());
}

// ------------------------------------------------------------------------ trainer

template <class T>
struct AlsTrainer<T>::State {
  int device = 0;
  int k = 0;
  AlsParams<T> params;
  std::mutex mutex;
  Stream stream;
  DeviceCsr<T> user_items, item_users;
  DeviceBuffer<T> X, Y, G, G_reg, workspace;
  DeviceBuffer<double> per_row, loss_out;
  DeviceBuffer<unsigned long long> failed;
  int user_slices = 1, item_slices = 1;

  // G_reg = YᵀY + λI (or G = YᵀY with regularise false) of the n x k device matrix F.
  void gram_of(const T* F, int64_t n, int slices, bool regularise) {
    if (regularise) {
      launch_gram(F, n, k, static_cast<T*>(nullptr), G_reg.get(), params.regularization,
                  workspace.get(), slices, stream.get());
    } else {
      launch_gram(F, n, k, G.get(), static_cast<T*>(nullptr), T(0), workspace.get(), slices,
                  stream.get());
    }
  }
};

template <class T>
AlsTrainer<T>::AlsTrainer(const CsrView<T>& user_items, const CsrView<T>& item_users,
                          const T* X, const T* Y, int k, const AlsParams<T>& params)
    : state_(nullptr) {
  const int device = current_device();
  check_params(k, params, device);
  check_csr(user_items);
  check_csr(item_users);
  expect(item_users.rows == user_items.cols && item_users.cols == user_items.rows,
         "item_users must be the transpose of user_items: expected shape (" +
             std::to_string(user_items.cols) + ", " + std::to_string(user_items.rows) +
             "), got (" + std::to_string(item_users.rows) + ", " +
             std::to_string(item_users.cols) + ")");
  expect(item_users.indptr[item_users.rows] == user_items.indptr[user_items.rows],
         "item_users must be the transpose of user_items: nnz " +
             std::to_string(item_users.indptr[item_users.rows]) + " != " +
             std::to_string(user_items.indptr[user_items.rows]));
  state_ = std::make_unique<State>();
  State& s = *state_;
  s.device = device;
  s.k = k;
  s.params = params;
  const int64_t users = user_items.rows, items = user_items.cols;
  s.user_items.upload(user_items, s.stream.get());
  s.item_users.upload(item_users, s.stream.get());
  const size_t kk = static_cast<size_t>(k) * k;
  s.X.allocate(static_cast<size_t>(users) * k);
  s.Y.allocate(static_cast<size_t>(items) * k);
  s.X.upload(X, static_cast<size_t>(users) * k, s.stream.get());
  s.Y.upload(Y, static_cast<size_t>(items) * k, s.stream.get());
  s.G.allocate(kk);
  s.G_reg.allocate(kk);
  s.user_slices = gram_slices<T>(users, k);  // for XᵀX
  s.item_slices = gram_slices<T>(items, k);  // for YᵀY
  s.workspace.allocate(static_cast<size_t>(std::max(s.user_slices, s.item_slices)) * kk);
  s.per_row.allocate(static_cast<size_t>(users));
  s.loss_out.allocate(1);
  s.failed.allocate(1);
  s.stream.synchronize();
}

template <class T>
AlsTrainer<T>::~AlsTrainer() {
  if (state_ != nullptr) {
    int previous = 0;
    cudaGetDevice(&previous);
    cudaSetDevice(state_->device);
    cudaStreamSynchronize(state_->stream.get());
    cudaSetDevice(previous);
  }
}

template <class T>
int64_t AlsTrainer<T>::sweep_users() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  const DeviceGuard device_guard(s.device);
  s.gram_of(s.Y.get(), s.user_items.cols, s.item_slices, true);
  return run_sweep(s.user_items, s.Y.get(), s.k, s.G_reg.get(), s.X.get(), s.params,
                   s.failed.get(), s.stream.get());
}

template <class T>
int64_t AlsTrainer<T>::sweep_items() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  const DeviceGuard device_guard(s.device);
  s.gram_of(s.X.get(), s.item_users.cols, s.user_slices, true);
  return run_sweep(s.item_users, s.X.get(), s.k, s.G_reg.get(), s.Y.get(), s.params,
                   s.failed.get(), s.stream.get());
}

template <class T>
double AlsTrainer<T>::data_loss() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  const DeviceGuard device_guard(s.device);
  s.gram_of(s.Y.get(), s.user_items.cols, s.item_slices, false);
  return run_loss(s.user_items, s.X.get(), s.Y.get(), s.k, s.G.get(), s.params.alpha,
                  s.params.confidence == Confidence::Raw, s.per_row.get(), s.loss_out.get(),
                  s.stream.get());
}

template <class T>
void AlsTrainer<T>::factors(T* X, T* Y) {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mutex);
  const DeviceGuard device_guard(s.device);
  s.X.download(X, static_cast<size_t>(s.user_items.rows) * s.k, s.stream.get());
  s.Y.download(Y, static_cast<size_t>(s.item_users.rows) * s.k, s.stream.get());
  s.stream.synchronize();
}

template <class T>
int64_t AlsTrainer<T>::users() const {
  return state_->user_items.rows;
}

template <class T>
int64_t AlsTrainer<T>::items() const {
  return state_->item_users.rows;
}

template <class T>
int AlsTrainer<T>::k() const {
  return state_->k;
}

#define RECFUSE_CUDA_INSTANTIATE(T)                                                          \
  template void gram<T>(const T*, int64_t, int, T*);                                         \
  template int64_t als_half_sweep<T>(const CsrView<T>&, const T*, int, const T*, T*,         \
                                     const AlsParams<T>&);                                   \
  template double als_data_loss<T>(const CsrView<T>&, const T*, const T*, int, const T*, T, \
                                   Confidence);                                              \
  template class AlsTrainer<T>;
RECFUSE_CUDA_INSTANTIATE(float)
RECFUSE_CUDA_INSTANTIATE(double)
#undef RECFUSE_CUDA_INSTANTIATE

}  // namespace cuda
}  // namespace recfuse
