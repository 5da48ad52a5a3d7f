// The fused MLP scorer on a CUDA device; the contract, the paths and the memory bounds are
// described in mlp_cuda.hpp. Kernels, one contract each:
//
//   dense_layer_kernel     C[r][c] = act(A(r, :) · W[c, :] + add(r, c)) for r < rows, c < out:
//                          a 64 x 64 tile per block, A and Wᵀ staged 16 columns at a time;
//                          A's columns come from up to three segments (rows by row, or
//                          gathered by item id); under bfloat16 both are rounded on load;
//                          float32 FMA. add is the bias, nothing, or (first layer) the user
//                          part of the row's user plus the item part of its id. Serves the
//                          user parts, the item parts and every layer but the last of the
//                          tiled path.
//   dot_rows_kernel        the last (one-output) layer of the tiled path: a warp per row.
//   fused_mlp_kernel       every layer for 32 candidates per block, activations in shared
//                          memory: float32 layers by FMA (each thread 4 rows x 4 columns of
//                          a 128-column pass), bfloat16 layers by WMMA 16x16x16 tensor-core
//                          tiles (float32 accumulators staged in shared memory for the
//                          epilogue), the last layer a warp dot product per row.
//   make_candidates_kernel (key(score), id) of every candidate (topk_select.cuh's keys).
//   rank_lists_kernel      a block per user of up to kMlpRankSharedMax candidates: bitonic
//                          sort in shared memory, then the ranked list with repeats dropped.
//   rank_sorted_kernel     the same from a user's list sorted by CUB (longer lists).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "als_cuda.hpp"  // device_count, device_error
#include "cuda_common.hpp"
#include "mlp_cuda.hpp"
#include "topk_select.cuh"

namespace recfuse {
namespace cuda {

namespace {

constexpr int kMaxSegments = 3;     // column segments of a GEMM's A (and blocks per side)
constexpr int kMaxWidth = 1 << 20;  // any layer's in and out
constexpr int kDenseRows = 64, kDenseCols = 64, kDenseDepth = 16, kDenseThreads = 256;
constexpr int kFusedThreads = 256;  // 8 warps
constexpr int kFusedColumns = 128;  // columns of one FMA pass in the fused kernel
constexpr int kRankThreads = 512;  // a bitonic stage of 1024 candidates in one step
constexpr size_t kAlign = 256;      // of every region in packed device buffers

using Cand = Sel<float>::Cand;

// Whether x[0 .. n) are all finite: one branch-free pass (the caller's message is built once,
// after it).
bool all_finite(const float* x, int64_t n) {
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) finite &= std::isfinite(x[i]);
  return finite;
}

std::atomic<int64_t> g_chunk_candidates{0}, g_chunk_users{0};  // set_mlp_chunk_limits

size_t align_up(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }
__host__ __device__ inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// ------------------------------------------------------------------------ device helpers

__device__ __forceinline__ float activate(int activation, float x) {
  switch (activation) {
    case static_cast<int>(MlpActivation::Relu): return x < 0.0f ? 0.0f : x;
    case static_cast<int>(MlpActivation::Gelu):
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case static_cast<int>(MlpActivation::Sigmoid): return 1.0f / (1.0f + expf(-x));
    case static_cast<int>(MlpActivation::Tanh): return tanhf(x);
    default: return x;
  }
}

__device__ __forceinline__ float round_bf16(float x) {
  return __bfloat162float(__float2bfloat16_rn(x));
}

// The user (0 .. users-1) owning global candidate c, for users' offsets indptr[0 .. users]
// with indptr[0] <= c < indptr[users]: the largest u with indptr[u] <= c (so users without
// candidates are passed over).
__host__ __device__ inline int owner(const int64_t* indptr, int users, int64_t c) {
  int lo = 0, hi = users - 1;
  while (lo < hi) {
    const int mid = lo + (hi - lo + 1) / 2;
    if (indptr[mid] <= c) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Columns of a matrix A as consecutive segments: column k of row r lies in segment s at
// data[s][row * ld[s] + k - (widths before s)], with row = ids[r] for a gathered segment.
struct Segments {
  const float* data[kMaxSegments];
  int64_t ld[kMaxSegments];
  int width[kMaxSegments];
  int by_id[kMaxSegments];
  int count;
};

__device__ __forceinline__ float segment_value(const Segments& s, int k, int64_t row, int64_t id) {
#pragma unroll
  for (int i = 0; i < kMaxSegments; ++i) {
    if (i < s.count) {
      if (k < s.width[i]) return s.data[i][(s.by_id[i] ? id : row) * s.ld[i] + k];
      k -= s.width[i];
    }
  }
  return 0.0f;
}

// One layer as the kernels read it (an array in device memory).
struct LayerDesc {
  const float* wt;          // Wᵀ: in rows x ldt, zero padded (ldt = round_up(out, 128)); the
                            // last layer of a deeper model: its in weights (ldt = 1)
  const __nv_bfloat16* wb;  // bfloat16 layers: W, round_up(out, 16) x round_up(in, 16), zero
                            // padded; null otherwise
  const float* bias;        // out floats (zeros when the layer has none)
  int in, out, ldt, activation;
  int bf16;                 // 1: a middle layer under precision bfloat16 (tensor cores)
};

// What the first layer adds to x · W1xᵀ: the user part of the row's user and, when there is
// one, the item part of its id. Row r is global candidate c_first + r.
struct FirstLayerAdd {
  const float* user_part;  // users x part: b1 + W1u·[u | uf]; null: not the first layer
  const float* item_part;  // items x part, or null
  int part;
  const int64_t* indptr;   // users + 1 global offsets of the chunk's users
  int users;
  int64_t c_first;
};

// ------------------------------------------------------------------------ tiled path

struct DenseArgs {
  Segments a;             // A: rows x K
  const int64_t* ids;     // item id of each row (gathered segments), or null
  int64_t rows;
  int K;
  const float* wt;        // Wᵀ's row of A's first column
  int ldt;
  int out;
  int round_bf16;
  int activation;
  const float* bias;      // added when first.user_part is null (null: nothing added)
  FirstLayerAdd first;
  float* C;
  int64_t ldc;
};

// Grid: (ceil(rows / 64), ceil(out / 64)). Each thread: rows ty + 16 i, columns tx + 16 j.
__global__ void __launch_bounds__(kDenseThreads) dense_layer_kernel(DenseArgs g) {
  __shared__ float As[kDenseDepth][kDenseRows + 4];
  __shared__ float Ws[kDenseDepth][kDenseCols + 4];
  __shared__ int row_user[kDenseRows];
  __shared__ int64_t row_id[kDenseRows];
  const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * kDenseRows;
  const int c0 = blockIdx.y * kDenseCols;
  for (int m = tid; m < kDenseRows; m += kDenseThreads) {
    const int64_t row = r0 + m;
    const bool valid = row < g.rows;
    row_id[m] = valid && g.ids != nullptr ? g.ids[row] : 0;
    row_user[m] = valid && g.first.user_part != nullptr
                      ? owner(g.first.indptr, g.first.users, g.first.c_first + row)
                      : 0;
  }
  __syncthreads();
  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
  for (int k0 = 0; k0 < g.K; k0 += kDenseDepth) {
    for (int e = tid; e < kDenseRows * kDenseDepth; e += kDenseThreads) {
      const int m = e / kDenseDepth, kk = e % kDenseDepth;
      const int64_t row = r0 + m;
      const int k = k0 + kk;
      float v = 0.0f;
      if (row < g.rows && k < g.K) v = segment_value(g.a, k, row, row_id[m]);
      As[kk][m] = g.round_bf16 ? round_bf16(v) : v;
    }
    for (int e = tid; e < kDenseDepth * kDenseCols; e += kDenseThreads) {
      const int kk = e / kDenseCols, n = e % kDenseCols;
      const int k = k0 + kk, c = c0 + n;
      float w = 0.0f;
      if (k < g.K && c < g.out) w = g.wt[static_cast<int64_t>(k) * g.ldt + c];
      Ws[kk][n] = g.round_bf16 ? round_bf16(w) : w;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kDenseDepth; ++kk) {
      float a[4], w[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = Ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
    __syncthreads();  // the stage is overwritten next step
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = ty + 16 * i;
    const int64_t row = r0 + m;
    if (row >= g.rows) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int c = c0 + tx + 16 * j;
      if (c >= g.out) continue;
      float v = acc[i][j];
      if (g.first.user_part != nullptr) {
        v += g.first.user_part[static_cast<int64_t>(row_user[m]) * g.first.part + c];
        if (g.first.item_part != nullptr) v += g.first.item_part[row_id[m] * g.first.part + c];
      } else if (g.bias != nullptr) {
        v += g.bias[c];
      }
      g.C[row * g.ldc + c] = activate(g.activation, v);
    }
  }
}

// out[r] = act(H[r, :in] · w + bias[0]): one warp per row.
__global__ void dot_rows_kernel(const float* H, int64_t rows, int in, int64_t ldh,
                                const float* w, const float* bias, int activation, float* out) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  for (int64_t r = warp; r < rows; r += warps) {  // warp-uniform
    float s = 0.0f;
    for (int k = lane; k < in; k += 32) s = fmaf(H[r * ldh + k], w[k], s);
    s = warp_sum(s);
    if (lane == 0) out[r] = activate(activation, s + bias[0]);
  }
}

// ------------------------------------------------------------------------ fused path

// Shared memory of the fused kernel (offsets from a 128-byte aligned base): the gathered x
// columns (float, TM x ldx), two activation slots, each viewed as float (TM x ldf) or
// bfloat16 (TM x ldh), and each row's user and item id.
struct FusedLayout {
  int ldx, ldf, ldh;
  size_t x, slot0, slot1, users, ids, total;
};

__host__ __device__ inline FusedLayout fused_layout(int x_width, int width_max) {
  constexpr int TM = kMlpFusedRows;
  FusedLayout L{};
  L.ldx = x_width > 0 ? x_width : 1;
  L.ldf = width_max + 4;  // a multiple of 4 (WMMA float stores)
  L.ldh = width_max + 8;  // a multiple of 8 (WMMA bfloat16 loads)
  const size_t x_bytes = (sizeof(float) * TM * L.ldx + 127) / 128 * 128;
  const size_t slot = (sizeof(float) * TM * L.ldh + 127) / 128 * 128;  // >= both views
  L.x = 0;
  L.slot0 = x_bytes;
  L.slot1 = L.slot0 + slot;
  L.users = L.slot1 + slot;
  L.ids = L.users + (sizeof(int) * TM + 127) / 128 * 128;
  L.total = L.ids + (sizeof(int64_t) * TM + 127) / 128 * 128 + 128;  // + alignment slack
  return L;
}

struct FusedArgs {
  const LayerDesc* layers;  // device array
  int layer_count;
  int width_max;            // hidden widths padded to 16, at most kMlpFusedMaxWidth
  Segments x;               // the multiplied columns of the first layer
  int x_width;
  int x_start;              // the input column of x's first column
  const int64_t* ids;       // item id of each candidate, or null
  int64_t count;            // candidates of this launch
  FirstLayerAdd first;
  float* scores;            // count
};

// A layer on float activations by FMA: epilogue(r, c, A[r, :K] · W[c, :K]) for r < TM and
// every c < width (a multiple of 16, <= ldt: the padded columns of Wᵀ are zeros). Thread
// (warp ty, lane tx) computes rows ty + 8 i and columns c0 + tx + 32 j of each pass.
template <class Epilogue>
__device__ __forceinline__ void fused_fma_layer(const float* A, int lda, int K,
                                                const float* __restrict__ wt, int ldt,
                                                int width, Epilogue epilogue) {
  constexpr int RM = kMlpFusedRows / 8;
  const int tx = threadIdx.x & 31, ty = threadIdx.x >> 5;
  for (int c0 = 0; c0 < width; c0 += kFusedColumns) {
    float acc[RM][4];
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;
    const float* w_col = wt + c0 + tx;
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      float a[RM], w[4];
#pragma unroll
      for (int i = 0; i < RM; ++i) a[i] = A[(ty + 8 * i) * lda + k];  // broadcast in the warp
      const float* wk = w_col + static_cast<int64_t>(k) * ldt;
#pragma unroll
      for (int j = 0; j < 4; ++j) w[j] = __ldg(wk + 32 * j);
#pragma unroll
      for (int i = 0; i < RM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], w[j], acc[i][j]);
    }
#pragma unroll
    for (int i = 0; i < RM; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int c = c0 + tx + 32 * j;
        if (c < width) epilogue(ty + 8 * i, c, acc[i][j]);
      }
  }
}

// A bfloat16 layer on tensor cores: C[r][c] = Σ_k A[r][k] W[c][k] for r < TM, c < width16,
// k < in16 (A: bfloat16, TM x lda, zero beyond the layer's inputs; W: width16 x ldw
// row-major, zero padded). The float accumulators are stored to C (TM x ldc), which may
// alias A: every warp finishes reading A before any stores. Ends synchronised.
__device__ __forceinline__ void fused_wmma_layer(const __nv_bfloat16* A, int lda, int in16,
                                                 const __nv_bfloat16* __restrict__ W, int ldw,
                                                 int width16, float* C, int ldc) {
  using namespace nvcuda;
  constexpr int kTilesM = kMlpFusedRows / 16;
  constexpr int kWarps = kFusedThreads / 32;
  constexpr int kPerWarp = kTilesM * (kMlpFusedMaxWidth / 16) / kWarps;  // 4
  const int warp = threadIdx.x >> 5;
  const int tiles = kTilesM * (width16 / 16);
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kPerWarp];
#pragma unroll
  for (int q = 0; q < kPerWarp; ++q) wmma::fill_fragment(acc[q], 0.0f);
  for (int k0 = 0; k0 < in16; k0 += 16) {
#pragma unroll
    for (int q = 0; q < kPerWarp; ++q) {
      const int t = warp + kWarps * q;  // warp-uniform
      if (t < tiles) {
        const int tm = t % kTilesM, tn = t / kTilesM;
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> a;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> b;
        wmma::load_matrix_sync(a, A + tm * 16 * lda + k0, lda);
        // B[k][n] = W[n][k]: column-major with leading dimension ldw.
        wmma::load_matrix_sync(b, W + static_cast<int64_t>(tn) * 16 * ldw + k0, ldw);
        wmma::mma_sync(acc[q], a, b, acc[q]);
      }
    }
  }
  __syncthreads();  // C may alias A
#pragma unroll
  for (int q = 0; q < kPerWarp; ++q) {
    const int t = warp + kWarps * q;
    if (t < tiles) {
      const int tm = t % kTilesM, tn = t / kTilesM;
      wmma::store_matrix_sync(C + tm * 16 * ldc + tn * 16, acc[q], ldc, wmma::mem_row_major);
    }
  }
  __syncthreads();
}

// Grid: ceil(count / kMlpFusedRows) blocks of kFusedThreads; dynamic shared memory
// fused_layout(x_width, width_max).total.
__global__ void __launch_bounds__(kFusedThreads) fused_mlp_kernel(FusedArgs a) {
  constexpr int TM = kMlpFusedRows;
  extern __shared__ __align__(128) unsigned char fused_smem[];
  unsigned char* base =
      fused_smem + ((128 - (reinterpret_cast<uintptr_t>(fused_smem) & 127)) & 127);
  const FusedLayout L = fused_layout(a.x_width, a.width_max);
  float* xs = reinterpret_cast<float*>(base + L.x);
  unsigned char* const slot0 = base + L.slot0;
  unsigned char* const slot1 = base + L.slot1;
  auto slot = [&](int i) { return i == 0 ? slot0 : slot1; };  // not an array: no local memory
  int* row_user = reinterpret_cast<int*>(base + L.users);
  int64_t* row_id = reinterpret_cast<int64_t*>(base + L.ids);
  const int tid = threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.x) * TM;

  for (int r = tid; r < TM; r += kFusedThreads) {
    const int64_t c = r0 + r;
    const bool valid = c < a.count;
    row_user[r] = valid ? owner(a.first.indptr, a.first.users, a.first.c_first + c) : -1;
    row_id[r] = valid && a.ids != nullptr ? a.ids[c] : 0;
  }
  __syncthreads();
  for (int e = tid; e < TM * a.x_width; e += kFusedThreads) {
    const int r = e / a.x_width, k = e % a.x_width;
    xs[r * L.ldx + k] = row_user[r] >= 0 ? segment_value(a.x, k, r0 + r, row_id[r]) : 0.0f;
  }
  __syncthreads();

  // Stores activation v of (row r, column c) into slot `to`, as the next layer reads it.
  auto put = [&](int to, bool as_bf16, int r, int c, float v) {
    if (as_bf16) reinterpret_cast<__nv_bfloat16*>(slot(to))[r * L.ldh + c] = __float2bfloat16_rn(v);
    else reinterpret_cast<float*>(slot(to))[r * L.ldf + c] = v;
  };
  int from = -1;  // the slot holding the current layer's input (-1: xs)
  for (int l = 0; l < a.layer_count; ++l) {
    const LayerDesc layer = a.layers[l];
    const bool last = l == a.layer_count - 1;
    const int to = from == 0 ? 1 : 0;
    const bool next_bf16 = !last && a.layers[l + 1].bf16 != 0;
    const int width16 = round_up(layer.out, 16);
    if (l == 0) {
      fused_fma_layer(xs, L.ldx, a.x_width, layer.wt + static_cast<int64_t>(a.x_start) * layer.ldt,
                      layer.ldt, width16, [&](int r, int c, float acc) {
                        const int u = row_user[r];
                        float v = 0.0f;
                        if (u >= 0 && c < layer.out) {
                          v = acc + a.first.user_part[static_cast<int64_t>(u) * a.first.part + c];
                          if (a.first.item_part != nullptr)
                            v += a.first.item_part[row_id[r] * a.first.part + c];
                          v = activate(layer.activation, v);
                        }
                        if (!last) put(to, next_bf16, r, c, v);
                        else if (c == 0 && u >= 0) a.scores[r0 + r] = v;
                      });
    } else if (last) {  // one output: a warp dot product per row (the input is float)
      const float* h = reinterpret_cast<const float*>(slot(from));
      const int lane = tid & 31, warp = tid >> 5;
      for (int r = warp; r < TM; r += kFusedThreads / 32) {
        float s = 0.0f;
        for (int k = lane; k < layer.in; k += 32) s = fmaf(h[r * L.ldf + k], layer.wt[k], s);
        s = warp_sum(s);
        if (lane == 0 && row_user[r] >= 0)
          a.scores[r0 + r] = activate(layer.activation, s + layer.bias[0]);
      }
    } else if (layer.bf16) {
      float* acc = reinterpret_cast<float*>(slot(from));  // the accumulators replace the input
      fused_wmma_layer(reinterpret_cast<const __nv_bfloat16*>(slot(from)), L.ldh,
                       round_up(layer.in, 16), layer.wb, round_up(layer.in, 16), width16, acc,
                       L.ldf);
      for (int e = tid; e < TM * width16; e += kFusedThreads) {
        const int r = e / width16, c = e % width16;
        const float z = acc[r * L.ldf + c];
        const float v = c < layer.out ? activate(layer.activation, z + layer.bias[c]) : 0.0f;
        put(to, next_bf16, r, c, v);
      }
    } else {
      fused_fma_layer(reinterpret_cast<const float*>(slot(from)), L.ldf, layer.in, layer.wt,
                      layer.ldt, width16, [&](int r, int c, float acc) {
                        const float v =
                            c < layer.out ? activate(layer.activation, acc + layer.bias[c]) : 0.0f;
                        put(to, next_bf16, r, c, v);
                      });
    }
    __syncthreads();
    from = to;
  }
}

// ------------------------------------------------------------------------ ranking

__global__ void make_candidates_kernel(const float* scores, const int64_t* ids, int64_t n,
                                       Cand* cands) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    cands[i] = Sel<float>::make(Sel<float>::key_of(scores[i]), static_cast<int>(ids[i]));
}

// One user's ranked list from its candidates sorted best first (n entries, those that do not
// qualify, key 0, last): the first k entries whose id differs from the previous entry's (the
// rule of recfuse.reference.mlp_rank_scores: a repeated candidate scores the same, so it sorts
// next to itself and counts once), then -1 / -inf. Every thread of the block must call it.
__device__ void emit_ranked(const Cand* sorted, int64_t n, int k, int64_t* ids, float* scores,
                            unsigned int* warp_counts) {
  using S = Sel<float>;
  int64_t emitted = 0;
  for (int64_t first = 0; first < n && emitted < k; first += blockDim.x) {  // block-uniform
    const int64_t i = first + threadIdx.x;
    const Cand c = i < n ? sorted[i] : S::empty();
    const bool flag = S::key(c) != 0 && (i == 0 || S::id(sorted[i - 1]) != S::id(c));
    unsigned int total = 0;
    const int64_t position = emitted + block_exclusive_count(flag, warp_counts, total);
    if (flag && position < k) {
      ids[position] = S::id(c);
      scores[position] = S::value_of(S::key(c));
    }
    emitted += total;
    const int64_t tile_end = first + blockDim.x < n ? first + blockDim.x : n;
    if (S::key(sorted[tile_end - 1]) == 0) break;  // the rest does not qualify
  }
  for (int64_t p = (emitted < k ? emitted : k) + threadIdx.x; p < k; p += blockDim.x) {
    ids[p] = -1;
    scores[p] = -INFINITY;
  }
}

// Block u (a user of the chunk): its candidates cands[indptr[u] - base, indptr[u + 1] - base)
// sorted in shared memory (at least next_pow2(count) entries), written to row u of the
// results. Users with more than kMlpRankSharedMax candidates are left to rank_sorted_kernel.
__global__ void __launch_bounds__(kRankThreads)
rank_lists_kernel(const Cand* cands, const int64_t* indptr, int64_t base, int k,
                  int64_t* out_ids, float* out_scores) {
  extern __shared__ __align__(16) unsigned char rank_smem[];
  __shared__ unsigned int warp_counts[32];
  Cand* s = reinterpret_cast<Cand*>(rank_smem);
  const int64_t u = blockIdx.x;
  const int64_t begin = indptr[u] - base, count = indptr[u + 1] - indptr[u];
  if (count > kMlpRankSharedMax) return;  // block-uniform
  const int P = next_pow2(static_cast<int>(count));
  for (int e = threadIdx.x; e < P; e += blockDim.x)
    s[e] = e < count ? cands[begin + e] : Sel<float>::empty();
  __syncthreads();
  bitonic_sort_best_first<float>(s, P, threadIdx.x, blockDim.x, BlockSync());
  emit_ranked(s, P, k, out_ids + u * k, out_scores + u * k, warp_counts);
}

// Block i: user users[i] of the chunk, whose list sorted[indptr[u] - base, ...) is sorted.
__global__ void __launch_bounds__(kRankThreads)
rank_sorted_kernel(const Cand* sorted, const int64_t* indptr, int64_t base, const int* users,
                   int k, int64_t* out_ids, float* out_scores) {
  __shared__ unsigned int warp_counts[32];
  const int64_t u = users[blockIdx.x];
  const int64_t begin = indptr[u] - base, count = indptr[u + 1] - indptr[u];
  emit_ranked(sorted + begin, count, k, out_ids + u * k, out_scores + u * k, warp_counts);
}

unsigned int blocks_for(int64_t n, int threads) {
  const int64_t blocks = std::max<int64_t>(ceil_div(n, threads), 1);
  return static_cast<unsigned int>(std::min<int64_t>(blocks, 65535));
}

// ------------------------------------------------------------------------ host helpers

uint16_t bfloat16_bits(float x) {  // nearest, ties to even (x finite)
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  return static_cast<uint16_t>((bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16);
}

// Page-locked host memory for the uploads of a chunk, grown on demand.
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  ~PinnedBuffer() {
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
  }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  void reserve(size_t bytes) {
    if (bytes <= size_) return;
    if (ptr_ != nullptr) cudaFreeHost(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    const size_t grown = align_up(bytes + bytes / 4, size_t(1) << 16);
    void* p = nullptr;
    check(cudaMallocHost(&p, grown), "cudaMallocHost of a staging buffer");
    ptr_ = static_cast<unsigned char*>(p);
    size_ = grown;
  }
  unsigned char* get() const { return ptr_; }

 private:
  unsigned char* ptr_ = nullptr;
  size_t size_ = 0;
};

// What one call at a time owns: a stream, the staging buffer and device scratch.
struct Workspace {
  Stream stream;
  PinnedBuffer staging;  // uploads
  PinnedBuffer results;  // downloads (a pageable download would block once per copy)
  DeviceBuffer<unsigned char> inputs;  // a chunk's packed inputs
  DeviceBuffer<float> items;           // a raw item table's blocks for one call
  DeviceBuffer<float> user_part, scores, act[2];
  DeviceBuffer<Cand> cands, sorted;
  DeviceBuffer<unsigned char> sort_temp;
  DeviceBuffer<int64_t> out_ids, segment_begin, segment_end;
  DeviceBuffer<float> out_scores;
  DeviceBuffer<int> long_users;

  // Grows `buffer` to at least `count` values (after the stream's work on it is done).
  template <class T>
  void reserve(DeviceBuffer<T>& buffer, size_t count) {
    if (buffer.size() >= count) return;
    stream.synchronize();
    buffer.allocate(count + count / 4);
  }
};

// Workspaces of one model: at most kMlpMaxWorkspaces exist; acquire() waits for a free one.
class WorkspacePool {
 public:
  class Lease {
   public:
    Lease(WorkspacePool& pool, std::unique_ptr<Workspace> ws) : pool_(pool), ws_(std::move(ws)) {}
    ~Lease() {
      cudaStreamSynchronize(ws_->stream.get());  // nothing may still use it (after an error)
      cudaGetLastError();
      pool_.release(std::move(ws_));
    }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    Workspace& operator*() const { return *ws_; }

   private:
    WorkspacePool& pool_;
    std::unique_ptr<Workspace> ws_;
  };

  std::unique_ptr<Lease> acquire() {
    std::unique_lock<std::mutex> lock(mutex_);
    ready_.wait(lock, [&] { return !idle_.empty() || live_ < kMlpMaxWorkspaces; });
    if (!idle_.empty()) {
      std::unique_ptr<Workspace> ws = std::move(idle_.back());
      idle_.pop_back();
      return std::make_unique<Lease>(*this, std::move(ws));
    }
    ++live_;
    lock.unlock();
    try {
      return std::make_unique<Lease>(*this, std::make_unique<Workspace>());
    } catch (...) {
      std::lock_guard<std::mutex> again(mutex_);
      --live_;
      ready_.notify_one();
      throw;
    }
  }

 private:
  void release(std::unique_ptr<Workspace> ws) {
    std::lock_guard<std::mutex> lock(mutex_);
    idle_.push_back(std::move(ws));
    ready_.notify_one();
  }
  std::mutex mutex_;
  std::condition_variable ready_;
  std::vector<std::unique_ptr<Workspace>> idle_;
  int live_ = 0;
};

MlpActivation checked_activation(MlpActivation activation, int layer) {
  const int a = static_cast<int>(activation);
  expect(a >= 0 && a <= static_cast<int>(MlpActivation::Tanh),
             "layer " + std::to_string(layer) + " has an unknown activation code " +
                 std::to_string(a));
  return activation;
}

}  // namespace

// ------------------------------------------------------------------------ planning (host)

const char* mlp_path_name(MlpPath path) {
  switch (path) {
    case MlpPath::Fused: return "fused";
    case MlpPath::Tiled: return "tiled";
    default: return "auto";
  }
}

MlpPath parse_mlp_path(const std::string& name) {
  if (name == "auto") return MlpPath::Auto;
  if (name == "fused") return MlpPath::Fused;
  if (name == "tiled") return MlpPath::Tiled;
  throw std::invalid_argument("the cuda MLP kernel must be 'auto', 'fused' or 'tiled', got '" +
                              name + "'");
}

std::vector<MlpChunk> mlp_plan_chunks(const int64_t* indptr, int64_t users,
                                      int64_t max_candidates, int64_t max_users,
                                      bool whole_users) {
  expect(max_candidates >= 1 && max_users >= 1, "chunk limits must be >= 1");
  expect(users >= 0, "users must be >= 0");
  std::vector<MlpChunk> chunks;
  if (whole_users) {
    int64_t u = 0;
    while (u < users) {
      int64_t end = u + 1;  // a user always fits (alone, when its list is long)
      while (end < users && end - u < max_users &&
             indptr[end + 1] - indptr[u] <= max_candidates)
        ++end;
      chunks.push_back({u, end, indptr[u], indptr[end]});
      u = end;
    }
    return chunks;
  }
  const int64_t total = users > 0 ? indptr[users] : 0;
  int64_t c = 0, u = 0;
  while (c < total) {
    while (indptr[u + 1] <= c) ++u;  // the owner of c
    int64_t c_end = std::min(total, c + max_candidates);
    // The owner of c_end - 1, then at most max_users users.
    int64_t last = u;
    while (indptr[last + 1] < c_end) ++last;
    int64_t u_end = last + 1;
    if (u_end - u > max_users) {
      u_end = u + max_users;
      c_end = std::min(c_end, indptr[u_end]);  // > c: user u owns c
    }
    chunks.push_back({u, u_end, c, c_end});
    c = c_end;
  }
  return chunks;
}

void set_mlp_chunk_limits(int64_t max_candidates, int64_t max_users) noexcept {
  g_chunk_candidates.store(std::max<int64_t>(max_candidates, 0));
  g_chunk_users.store(std::max<int64_t>(max_users, 0));
}

size_t mlp_fused_shared_bytes(int x_width, int width_max) {
  return fused_layout(x_width, width_max).total;
}

// ------------------------------------------------------------------------ item parts

struct MlpItemPartCuda::State {
  DeviceBuffer<float> part;  // items x part width
};

MlpItemPartCuda::MlpItemPartCuda(const void* owner, int64_t items, int columns,
                                 std::unique_ptr<State> state)
    : owner_(owner), items_(items), columns_(columns), state_(std::move(state)) {}

MlpItemPartCuda::~MlpItemPartCuda() = default;

// ------------------------------------------------------------------------ the model

struct MlpModelCuda::State {
  int device = 0;
  int optin_shared = 48 * 1024;
  MlpPrecision precision = MlpPrecision::Float32;
  MlpPath path = MlpPath::Auto;
  int input_width = 0;
  int part = 0;          // first layer's out padded to kMlpPanel
  int width_max = 16;    // hidden widths padded to 16 (fused layout)
  int hidden_max = 1;    // the widest hidden layer (tiled activations)
  std::vector<LayerDesc> layers;  // host copies with device pointers
  DeviceBuffer<unsigned char> weights;
  DeviceBuffer<LayerDesc> descs;
  mutable WorkspacePool pool;
};

namespace {

// One call: its shape, checked on the host, and its chunk sizes.
struct Call {
  const MlpCandidates* c = nullptr;
  bool prepared = false;        // an item part replaces the item blocks
  const float* part = nullptr;  // its device array (null when it has no rows)
  int user_width = 0, item_width = 0, candidate_width = 0, x_width = 0, x_start = 0;
  int64_t total = 0;
  bool fused = false;
  int64_t max_candidates = 1, max_users = 1;
};

// Where a chunk's inputs lie in the packed buffers (host staging and device copy).
struct ChunkLayout {
  size_t indptr = 0, ids = 0, candidates = 0, users[kMaxSegments] = {0, 0, 0}, total = 0;
};

size_t place(size_t& cursor, size_t bytes) {
  const size_t at = cursor;
  cursor += align_up(bytes, kAlign);
  return at;
}

ChunkLayout chunk_layout(const Call& call, const MlpChunk& ch) {
  const MlpCandidates& c = *call.c;
  const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
  ChunkLayout L;
  size_t cursor = 0;
  L.indptr = place(cursor, sizeof(int64_t) * (users + 1));
  for (size_t b = 0; b < c.user_blocks.size(); ++b)
    L.users[b] = place(cursor, sizeof(float) * users * c.user_blocks[b].width);
  L.ids = place(cursor, c.ids != nullptr ? sizeof(int64_t) * n : 0);
  L.candidates = place(cursor, sizeof(float) * n * call.candidate_width);
  L.total = cursor;
  return L;
}

}  // namespace

MlpModelCuda::MlpModelCuda(const std::vector<MlpLayer>& layers, MlpPrecision precision,
                           MlpPath path)
    : state_(new State) {
  State& s = *state_;
  // Every check before the first CUDA call.
  expect(!layers.empty(), "an MLP needs at least one layer");
  expect(precision == MlpPrecision::Float32 || precision == MlpPrecision::Bfloat16,
             "precision must be float32 or bfloat16");
  expect(path == MlpPath::Auto || path == MlpPath::Fused || path == MlpPath::Tiled,
             "unknown MLP path");
  const int count = static_cast<int>(layers.size());
  expect(layers.back().out == 1, "the last layer must have one output (the score), got " +
                                         std::to_string(layers.back().out));
  for (int l = 0; l < count; ++l) {
    const MlpLayer& layer = layers[l];
    const std::string name = "layer " + std::to_string(l);
    expect(layer.weight != nullptr, name + " has no weights");
    expect(layer.in >= 1 && layer.out >= 1 && layer.in <= kMaxWidth && layer.out <= kMaxWidth,
               name + " must have 1 to 2**20 inputs and outputs, got " + std::to_string(layer.out) +
                   " x " + std::to_string(layer.in));
    expect(l == 0 || layer.in == layers[l - 1].out,
               name + " takes " + std::to_string(layer.in) + " inputs but layer " +
                   std::to_string(l - 1) + " gives " + std::to_string(layers[l - 1].out));
    checked_activation(layer.activation, l);
    // Each message is built once, after its loop: expect() takes a std::string, and building
    // one per element cost as much as the kernels (10 ms for 64,000 candidate ids).
    expect(all_finite(layer.weight, static_cast<int64_t>(layer.out) * layer.in),
           name + " weights must be finite");
    expect(layer.bias == nullptr || all_finite(layer.bias, layer.out),
           name + " bias must be finite");
  }
  s.precision = precision;
  s.path = path;
  s.input_width = layers.front().in;
  s.part = round_up(layers.front().out, kMlpPanel);
  int widest = 0;
  for (int l = 0; l + 1 < count; ++l) {
    s.width_max = std::max(s.width_max, round_up(layers[l].out, 16));
    s.hidden_max = std::max(s.hidden_max, layers[l].out);
    widest = std::max(widest, layers[l].out);
  }
  expect(path != MlpPath::Fused || widest <= kMlpFusedMaxWidth,
             "kernel='fused' needs hidden layers at most " + std::to_string(kMlpFusedMaxWidth) +
                 " wide, got " + std::to_string(widest) + "; use kernel='tiled' (or 'auto')");

  // Pack on the host: every array at a kAlign-aligned offset of one device buffer.
  std::vector<unsigned char> packed;
  auto reserve_bytes = [&](size_t bytes) {
    const size_t at = packed.size();
    packed.resize(align_up(at + bytes, kAlign), 0);
    return at;
  };
  struct Offsets {
    size_t wt, wb, bias;
  };
  std::vector<Offsets> offsets(count);
  s.layers.resize(count);
  for (int l = 0; l < count; ++l) {
    const MlpLayer& layer = layers[l];
    LayerDesc& d = s.layers[l];
    d.in = layer.in;
    d.out = layer.out;
    d.activation = static_cast<int>(layer.activation);
    d.bf16 = precision == MlpPrecision::Bfloat16 && l > 0 && l + 1 < count ? 1 : 0;
    const bool dot = l > 0 && l + 1 == count;  // the last layer of a deeper model
    d.ldt = dot ? 1 : round_up(layer.out, kFusedColumns);
    auto w = [&](int out, int in) {
      return layer.weight[static_cast<int64_t>(out) * layer.in + in];
    };
    offsets[l].wt = reserve_bytes(sizeof(float) * static_cast<size_t>(layer.in) * d.ldt);
    float* wt = reinterpret_cast<float*>(packed.data() + offsets[l].wt);
    for (int k = 0; k < layer.in; ++k)
      for (int c = 0; c < layer.out && (c == 0 || !dot); ++c)
        wt[static_cast<size_t>(k) * d.ldt + c] = w(c, k);
    offsets[l].bias = reserve_bytes(sizeof(float) * layer.out);
    float* bias = reinterpret_cast<float*>(packed.data() + offsets[l].bias);
    for (int c = 0; c < layer.out; ++c) bias[c] = layer.bias != nullptr ? layer.bias[c] : 0.0f;
    offsets[l].wb = 0;
    if (d.bf16) {
      const int in16 = round_up(layer.in, 16), out16 = round_up(layer.out, 16);
      offsets[l].wb = reserve_bytes(sizeof(uint16_t) * static_cast<size_t>(out16) * in16);
      uint16_t* wb = reinterpret_cast<uint16_t*>(packed.data() + offsets[l].wb);
      for (int c = 0; c < layer.out; ++c)
        for (int k = 0; k < layer.in; ++k)
          wb[static_cast<size_t>(c) * in16 + k] = bfloat16_bits(w(c, k));
    }
  }

  // The device: chosen now, used by every call.
  if (device_count() == 0) throw std::runtime_error("no CUDA device: " + device_error());
  RECFUSE_CUDA_CHECK(cudaGetDevice(&s.device));
  RECFUSE_CUDA_CHECK(cudaDeviceGetAttribute(&s.optin_shared,
                                            cudaDevAttrMaxSharedMemoryPerBlockOptin, s.device));
  s.weights.allocate(packed.size());
  RECFUSE_CUDA_CHECK(
      cudaMemcpy(s.weights.get(), packed.data(), packed.size(), cudaMemcpyHostToDevice));
  unsigned char* base = s.weights.get();
  for (int l = 0; l < count; ++l) {
    LayerDesc& d = s.layers[l];
    d.wt = reinterpret_cast<const float*>(base + offsets[l].wt);
    d.bias = reinterpret_cast<const float*>(base + offsets[l].bias);
    d.wb = d.bf16 ? reinterpret_cast<const __nv_bfloat16*>(base + offsets[l].wb) : nullptr;
  }
  s.descs.allocate(count);
  RECFUSE_CUDA_CHECK(cudaMemcpy(s.descs.get(), s.layers.data(), sizeof(LayerDesc) * count,
                                cudaMemcpyHostToDevice));
  // Copies from pageable memory may return before their DMA lands, and the kernels run on
  // non-blocking streams that do not wait for the default stream.
  RECFUSE_CUDA_CHECK(cudaDeviceSynchronize());
  // The largest dynamic shared memory any call may ask for (a process-wide attribute: one
  // value for every model, so that models never lower it under each other).
  allow_shared(fused_mlp_kernel,
               std::min<size_t>(mlp_fused_shared_bytes(kMlpFusedMaxWidth, kMlpFusedMaxWidth),
                                static_cast<size_t>(s.optin_shared)));
  allow_shared(rank_lists_kernel, sizeof(Cand) * kMlpRankSharedMax);
}

MlpModelCuda::~MlpModelCuda() = default;

int MlpModelCuda::input_width() const { return state_->input_width; }
int MlpModelCuda::part_width() const { return state_->part; }
MlpPrecision MlpModelCuda::precision() const { return state_->precision; }
MlpPath MlpModelCuda::path() const { return state_->path; }
int MlpModelCuda::device() const { return state_->device; }

MlpPath MlpModelCuda::path_for(int x_width) const {
  const State& s = *state_;
  if (s.path == MlpPath::Tiled) return MlpPath::Tiled;
  std::string why;
  if (s.width_max > kMlpFusedMaxWidth)
    why = "a hidden layer is wider than " + std::to_string(kMlpFusedMaxWidth);
  else if (x_width > kMlpFusedMaxWidth)
    why = "the call multiplies " + std::to_string(x_width) +
          " input columns per candidate (at most " + std::to_string(kMlpFusedMaxWidth) + ")";
  else if (mlp_fused_shared_bytes(x_width, s.width_max) > static_cast<size_t>(s.optin_shared))
    why = "it needs " + std::to_string(mlp_fused_shared_bytes(x_width, s.width_max)) +
          " bytes of shared memory, the device allows " + std::to_string(s.optin_shared);
  if (why.empty()) return MlpPath::Fused;
  expect(s.path != MlpPath::Fused,
             "kernel='fused' cannot run this call: " + why + "; use kernel='tiled' (or 'auto')");
  return MlpPath::Tiled;
}

namespace {

// Checks a call on the host and sizes its chunks. `rank_k` is 0 for scoring.
template <class PartView>
Call plan_call(const MlpModelCuda& model, int part_width, int hidden_max,
               const MlpCandidates& c, const PartView& part, const void* owner, int rank_k) {
  Call call;
  call.c = &c;
  expect(c.users >= 0 && c.indptr != nullptr, "candidates need users >= 0 and an indptr");
  expect(c.users < INT_MAX, "at most 2**31 - 2 users per call");
  expect(c.indptr[0] == 0, "indptr must start at 0");
  bool ordered = true;  // messages after the loops (see the layer checks)
  for (int64_t u = 0; u < c.users; ++u) ordered &= c.indptr[u] <= c.indptr[u + 1];
  expect(ordered, "indptr must not decrease");
  call.total = c.indptr[c.users];
  expect(c.item_part == nullptr, "a precomputed item part is passed as `part` on the device");
  expect(c.user_blocks.size() <= kMaxSegments, "at most 3 user blocks");
  expect(c.item_blocks.size() <= 2, "at most 2 item blocks");
  for (const MlpBlock& b : c.user_blocks) {
    expect(b.width >= 0 && (b.data != nullptr || b.width == 0), "user blocks need data");
    call.user_width += b.width;
  }
  for (const MlpBlock& b : c.item_blocks) {
    expect(b.width >= 0, "item block widths must be >= 0");
    expect((b.data == nullptr) == part.given,
           part.given ? "an item part replaces the item blocks: pass them without data"
                      : "item blocks need data");
    call.item_width += b.width;
  }
  if (part.given) {
    expect(part.owner == owner, "the item part was made by another model");
    expect(part.items == c.items, "the item part has " + std::to_string(part.items) +
                                      " rows, the call " + std::to_string(c.items) + " items");
    expect(part.columns == call.item_width,
           "the item part covers " + std::to_string(part.columns) +
               " input columns, the call's item blocks " + std::to_string(call.item_width));
    call.prepared = true;
    call.part = part.data;
  }
  call.candidate_width = c.candidate_block.width;
  expect(call.candidate_width >= 0 &&
                 (call.candidate_width == 0 || c.candidate_block.data != nullptr),
             "the candidate block needs data");
  const int width = call.user_width + call.item_width + call.candidate_width;
  expect(width == model.input_width(),
             "the input blocks add up to " + std::to_string(width) + " columns; the model takes " +
                 std::to_string(model.input_width()));
  const bool gathers = !c.item_blocks.empty();
  expect(!gathers || c.ids != nullptr, "item blocks need candidate ids");
  expect(rank_k == 0 || c.ids != nullptr, "rank needs candidate ids");
  expect(c.items >= 0 && c.items <= INT_MAX, "at most 2**31 - 1 items");
  if (c.ids != nullptr) {
    int64_t bad = -1;  // the first id out of range
    for (int64_t i = 0; i < call.total && bad < 0; ++i)
      if (c.ids[i] < 0 || c.ids[i] >= c.items) bad = i;
    expect(bad < 0, bad < 0 ? std::string()
                            : "candidate id " + std::to_string(c.ids[bad]) + " is outside [0, " +
                                  std::to_string(c.items) + ")");
  }
  call.x_width = (call.prepared ? 0 : call.item_width) + call.candidate_width;
  call.x_start = call.user_width + (call.prepared ? call.item_width : 0);
  call.fused = model.path_for(call.x_width) == MlpPath::Fused;

  // Chunk sizes: scratch within the device budget, uploads within the staging budget.
  const int64_t ids_bytes = c.ids != nullptr ? 8 : 0;
  const int64_t per_candidate_in = ids_bytes + 4 * int64_t(call.candidate_width);
  int64_t per_candidate = per_candidate_in + 4 /* score */;
  if (rank_k > 0) per_candidate += 2 * sizeof(Cand) + 16 /* CUB */;
  if (!call.fused) per_candidate += 2 * 4 * int64_t(hidden_max);
  const int64_t per_user_in = 8 + 4 * int64_t(call.user_width);
  const int64_t per_user = per_user_in + 4 * int64_t(part_width) + int64_t(rank_k) * 12;
  call.max_candidates =
      std::min({kMlpScratchBudgetBytes * 3 / 4 / per_candidate,
                kMlpStagingBudgetBytes * 3 / 4 / std::max<int64_t>(per_candidate_in, 1),
                int64_t(1) << 22});
  call.max_users = std::min({kMlpScratchBudgetBytes / 4 / per_user,
                             kMlpStagingBudgetBytes / 4 / per_user_in, int64_t(1) << 22});
  if (const int64_t cap = g_chunk_candidates.load())
    call.max_candidates = std::min(call.max_candidates, cap);
  if (const int64_t cap = g_chunk_users.load()) call.max_users = std::min(call.max_users, cap);
  call.max_candidates = std::max<int64_t>(call.max_candidates, 1);
  call.max_users = std::max<int64_t>(call.max_users, 1);
  return call;
}

// The steps of a call on one workspace: uploads, scoring kernels, ranking kernels.
struct ModelRun {
  const std::vector<LayerDesc>& layers;  // host copies with device pointers
  const LayerDesc* descs;                // the same on the device
  int part, width_max, hidden_max;       // as in MlpModelCuda::State
  Workspace& ws;
  const Call& call;

  // Uploads a raw item table's blocks (whole) for the call; returns their segments.
  void upload_items(Segments& items_seg) {
    const MlpCandidates& c = *call.c;
    items_seg.count = 0;
    if (call.prepared || c.item_blocks.empty()) return;
    size_t total = 0;
    for (const MlpBlock& b : c.item_blocks) total += static_cast<size_t>(c.items) * b.width;
    ws.reserve(ws.items, std::max<size_t>(total, 1));
    size_t at = 0;
    for (const MlpBlock& b : c.item_blocks) {
      const size_t n = static_cast<size_t>(c.items) * b.width;
      if (n > 0)
        RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.items.get() + at, b.data, sizeof(float) * n,
                                           cudaMemcpyHostToDevice, ws.stream.get()));
      const int i = items_seg.count++;
      items_seg.data[i] = ws.items.get() + at;
      items_seg.ld[i] = b.width;
      items_seg.width[i] = b.width;
      items_seg.by_id[i] = 1;
      at += n;
    }
  }

  // Packs a chunk's inputs into the staging buffer and uploads them.
  ChunkLayout upload_chunk(const MlpChunk& ch) {
    const MlpCandidates& c = *call.c;
    const ChunkLayout L = chunk_layout(call, ch);
    ws.stream.synchronize();  // the staging buffer's last upload is done
    ws.staging.reserve(L.total);
    ws.reserve(ws.inputs, L.total);
    unsigned char* h = ws.staging.get();
    const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
    std::memcpy(h + L.indptr, c.indptr + ch.user_begin, sizeof(int64_t) * (users + 1));
    for (size_t b = 0; b < c.user_blocks.size(); ++b) {
      const MlpBlock& block = c.user_blocks[b];
      std::memcpy(h + L.users[b], block.data + ch.user_begin * block.width,
                  sizeof(float) * users * block.width);
    }
    if (c.ids != nullptr)
      std::memcpy(h + L.ids, c.ids + ch.cand_begin, sizeof(int64_t) * n);
    if (call.candidate_width > 0)
      std::memcpy(h + L.candidates, c.candidate_block.data + ch.cand_begin * call.candidate_width,
                  sizeof(float) * n * call.candidate_width);
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.inputs.get(), h, L.total, cudaMemcpyHostToDevice,
                                       ws.stream.get()));
    return L;
  }

  // Launches the kernels scoring an uploaded chunk into scores (device, one per candidate).
  void score_chunk(const MlpChunk& ch, const ChunkLayout& L, const Segments& items_seg,
                   float* scores) {
    const MlpCandidates& c = *call.c;
    const cudaStream_t stream = ws.stream.get();
    const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
    unsigned char* in = ws.inputs.get();
    const int64_t* indptr = reinterpret_cast<const int64_t*>(in + L.indptr);
    const int64_t* ids = c.ids != nullptr ? reinterpret_cast<const int64_t*>(in + L.ids) : nullptr;
    const LayerDesc& first = layers.front();
    const int count = static_cast<int>(layers.size());

    // The user parts: b1 + W1u·[u | uf] for the chunk's users.
    ws.reserve(ws.user_part, static_cast<size_t>(users) * part);
    DenseArgs g{};
    for (size_t b = 0; b < c.user_blocks.size(); ++b) {
      g.a.data[b] = reinterpret_cast<const float*>(in + L.users[b]);
      g.a.ld[b] = c.user_blocks[b].width;
      g.a.width[b] = c.user_blocks[b].width;
      g.a.by_id[b] = 0;
    }
    g.a.count = static_cast<int>(c.user_blocks.size());
    g.rows = users;
    g.K = call.user_width;
    g.wt = first.wt;
    g.ldt = first.ldt;
    g.out = first.out;
    g.activation = static_cast<int>(MlpActivation::Identity);
    g.bias = first.bias;
    g.C = ws.user_part.get();
    g.ldc = part;
    dense_layer_kernel<<<dim3(static_cast<unsigned int>(ceil_div(users, kDenseRows)),
                              static_cast<unsigned int>(ceil_div(first.out, kDenseCols))),
                         kDenseThreads, 0, stream>>>(g);
    check(cudaGetLastError(), "dense_layer_kernel (user parts)");

    // The first layer's multiplied columns: raw item blocks (gathered), candidate features.
    Segments x = items_seg;
    if (call.candidate_width > 0) {
      const int i = x.count++;
      x.data[i] = reinterpret_cast<const float*>(in + L.candidates);
      x.ld[i] = call.candidate_width;
      x.width[i] = call.candidate_width;
      x.by_id[i] = 0;
    }
    const FirstLayerAdd add{ws.user_part.get(), call.part, part, indptr,
                            static_cast<int>(users), ch.cand_begin};
    if (n == 0) return;

    if (call.fused) {
      FusedArgs f{};
      f.layers = descs;
      f.layer_count = count;
      f.width_max = width_max;
      f.x = x;
      f.x_width = call.x_width;
      f.x_start = call.x_start;
      f.ids = ids;
      f.count = n;
      f.first = add;
      f.scores = scores;
      const size_t smem = mlp_fused_shared_bytes(call.x_width, width_max);
      fused_mlp_kernel<<<static_cast<unsigned int>(ceil_div(n, kMlpFusedRows)), kFusedThreads,
                         smem, stream>>>(f);
      check(cudaGetLastError(), "fused_mlp_kernel");
      return;
    }

    // Tiled: a GEMM per layer, activations in act[0] / act[1] (n x out, row-major).
    ws.reserve(ws.act[0], static_cast<size_t>(n) * hidden_max);
    ws.reserve(ws.act[1], static_cast<size_t>(n) * hidden_max);
    int from = -1;
    for (int l = 0; l < count; ++l) {
      const LayerDesc& layer = layers[l];
      const bool last = l + 1 == count;
      const int to = from == 0 ? 1 : 0;
      if (l > 0 && last) {
        dot_rows_kernel<<<blocks_for(n, 8), 256, 0, stream>>>(
            ws.act[from].get(), n, layer.in, layer.in, layer.wt, layer.bias, layer.activation,
            scores);
        check(cudaGetLastError(), "dot_rows_kernel");
        break;
      }
      DenseArgs d{};
      if (l == 0) {
        d.a = x;
        d.ids = ids;
        d.K = call.x_width;
        d.wt = layer.wt + static_cast<int64_t>(call.x_start) * layer.ldt;
        d.first = add;
      } else {
        d.a.count = 1;
        d.a.data[0] = ws.act[from].get();
        d.a.ld[0] = layer.in;
        d.a.width[0] = layer.in;
        d.a.by_id[0] = 0;
        d.K = layer.in;
        d.wt = layer.wt;
        d.bias = layer.bias;
        d.round_bf16 = layer.bf16;
      }
      d.rows = n;
      d.ldt = layer.ldt;
      d.out = layer.out;
      d.activation = layer.activation;
      d.C = last ? scores : ws.act[to].get();
      d.ldc = last ? 1 : layer.out;
      dense_layer_kernel<<<dim3(static_cast<unsigned int>(ceil_div(n, kDenseRows)),
                                static_cast<unsigned int>(ceil_div(layer.out, kDenseCols))),
                           kDenseThreads, 0, stream>>>(d);
      check(cudaGetLastError(), "dense_layer_kernel");
      from = to;
    }
  }

  // The k best of each user of a rank chunk whose candidates ws.cands holds; results in
  // ws.out_ids / ws.out_scores (users x k). indptr: the chunk's users' offsets (device).
  void rank_chunk(const MlpChunk& ch, const int64_t* indptr_device, int k) {
    const MlpCandidates& c = *call.c;
    const cudaStream_t stream = ws.stream.get();
    const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
    int64_t longest_short = 0;
    std::vector<int> long_users;
    std::vector<int64_t> begins, ends;
    for (int64_t u = ch.user_begin; u < ch.user_end; ++u) {
      const int64_t count = c.indptr[u + 1] - c.indptr[u];
      if (count <= kMlpRankSharedMax) {
        longest_short = std::max(longest_short, count);
      } else {
        long_users.push_back(static_cast<int>(u - ch.user_begin));
        begins.push_back(c.indptr[u] - ch.cand_begin);
        ends.push_back(c.indptr[u + 1] - ch.cand_begin);
      }
    }
    expect(long_users.empty() || n <= INT_MAX,
           "a user's candidate list must be shorter than 2**31 to rank it");
    const size_t smem = sizeof(Cand) * next_pow2(static_cast<int>(longest_short));
    rank_lists_kernel<<<static_cast<unsigned int>(users), kRankThreads, smem, stream>>>(
        ws.cands.get(), indptr_device, ch.cand_begin, k, ws.out_ids.get(), ws.out_scores.get());
    check(cudaGetLastError(), "rank_lists_kernel");
    if (long_users.empty()) return;
    const int segments = static_cast<int>(long_users.size());
    ws.reserve(ws.sorted, static_cast<size_t>(n));
    ws.reserve(ws.long_users, long_users.size());
    ws.reserve(ws.segment_begin, begins.size());
    ws.reserve(ws.segment_end, ends.size());
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.long_users.get(), long_users.data(),
                                       sizeof(int) * segments, cudaMemcpyHostToDevice, stream));
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.segment_begin.get(), begins.data(),
                                       sizeof(int64_t) * segments, cudaMemcpyHostToDevice, stream));
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.segment_end.get(), ends.data(),
                                       sizeof(int64_t) * segments, cudaMemcpyHostToDevice, stream));
    size_t temp_bytes = 0;
    RECFUSE_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
        nullptr, temp_bytes, ws.cands.get(), ws.sorted.get(), static_cast<int>(n), segments,
        ws.segment_begin.get(), ws.segment_end.get(), 0, 64, stream));
    ws.reserve(ws.sort_temp, std::max<size_t>(temp_bytes, 1));
    RECFUSE_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortKeysDescending(
        ws.sort_temp.get(), temp_bytes, ws.cands.get(), ws.sorted.get(), static_cast<int>(n),
        segments, ws.segment_begin.get(), ws.segment_end.get(), 0, 64, stream));
    rank_sorted_kernel<<<static_cast<unsigned int>(segments), kRankThreads, 0, stream>>>(
        ws.sorted.get(), indptr_device, ch.cand_begin, ws.long_users.get(), k, ws.out_ids.get(),
        ws.out_scores.get());
    check(cudaGetLastError(), "rank_sorted_kernel");
    // The host vectors above were copied from pageable memory: the copies have been staged.
  }
};

}  // namespace

MlpModelCuda::PartView MlpModelCuda::view(const MlpItemPartCuda* part) {
  PartView v;
  if (part == nullptr) return v;
  v.given = true;
  v.owner = part->owner_;
  v.items = part->items_;
  v.columns = part->columns_;
  v.data = part->state_->part.get();
  return v;
}

void MlpModelCuda::score(const float* X, int64_t n, float* out) const {
  expect(n >= 0 && (n == 0 || X != nullptr), "score needs n >= 0 rows");
  if (n == 0) return;
  MlpCandidates c;
  const int64_t indptr[2] = {0, n};
  c.users = 1;
  c.indptr = indptr;
  c.candidate_block = {X, input_width()};
  score_candidates(c, nullptr, out);
}

void MlpModelCuda::score_candidates(const MlpCandidates& c, const MlpItemPartCuda* part,
                                    float* out) const {
  const State& s = *state_;
  const Call call = plan_call(*this, s.part, s.hidden_max, c, view(part), state_.get(), 0);
  if (call.total == 0) return;
  const DeviceGuard device_guard(s.device);
  auto lease = s.pool.acquire();
  Workspace& ws = **lease;
  ModelRun run{s.layers, s.descs.get(), s.part, s.width_max, s.hidden_max, ws, call};
  Segments items_seg{};
  run.upload_items(items_seg);
  for (const MlpChunk& ch :
       mlp_plan_chunks(c.indptr, c.users, call.max_candidates, call.max_users, false)) {
    const ChunkLayout L = run.upload_chunk(ch);
    const int64_t n = ch.cand_end - ch.cand_begin;
    ws.reserve(ws.scores, static_cast<size_t>(n));
    run.score_chunk(ch, L, items_seg, ws.scores.get());
    ws.results.reserve(sizeof(float) * n);
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.results.get(), ws.scores.get(), sizeof(float) * n,
                                       cudaMemcpyDeviceToHost, ws.stream.get()));
    ws.stream.synchronize();
    std::memcpy(out + ch.cand_begin, ws.results.get(), sizeof(float) * n);
  }
}

void MlpModelCuda::rank(const MlpCandidates& c, const MlpItemPartCuda* part, int k, int64_t* ids,
                        float* scores) const {
  const State& s = *state_;
  expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
  // The device top-k drops a repeated id only next to itself in sorted order: repeats with
  // their own candidate features score apart (recfuse._mlp.cuda ranks those on the host).
  // (time_device takes them: its timing does not depend on which repeats are kept.)
  expect(c.candidate_block.width == 0,
         "rank takes no candidate block (a repeated id's features may differ): score the "
         "candidates and rank them on the host");
  const Call call = plan_call(*this, s.part, s.hidden_max, c, view(part), state_.get(), k);
  auto pad = [&](int64_t user_begin, int64_t user_end) {
    for (int64_t i = user_begin * k; i < user_end * k; ++i) {
      ids[i] = -1;
      scores[i] = -std::numeric_limits<float>::infinity();
    }
  };
  if (call.total == 0) {
    pad(0, c.users);
    return;
  }
  const DeviceGuard device_guard(s.device);
  auto lease = s.pool.acquire();
  Workspace& ws = **lease;
  ModelRun run{s.layers, s.descs.get(), s.part, s.width_max, s.hidden_max, ws, call};
  Segments items_seg{};
  run.upload_items(items_seg);
  for (const MlpChunk& ch :
       mlp_plan_chunks(c.indptr, c.users, call.max_candidates, call.max_users, true)) {
    const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
    if (n == 0) {
      pad(ch.user_begin, ch.user_end);
      continue;
    }
    ws.reserve(ws.cands, static_cast<size_t>(n));
    ws.reserve(ws.out_ids, static_cast<size_t>(users) * k);
    ws.reserve(ws.out_scores, static_cast<size_t>(users) * k);
    // Score the chunk (a single long user in parts) and turn the scores into candidates.
    ChunkLayout L;
    for (int64_t first = ch.cand_begin; first < ch.cand_end; first += call.max_candidates) {
      const MlpChunk part_chunk{ch.user_begin, ch.user_end, first,
                                std::min(ch.cand_end, first + call.max_candidates)};
      const int64_t m = part_chunk.cand_end - part_chunk.cand_begin;
      L = run.upload_chunk(part_chunk);
      ws.reserve(ws.scores, static_cast<size_t>(m));
      run.score_chunk(part_chunk, L, items_seg, ws.scores.get());
      make_candidates_kernel<<<blocks_for(m, 256), 256, 0, ws.stream.get()>>>(
          ws.scores.get(), reinterpret_cast<const int64_t*>(ws.inputs.get() + L.ids), m,
          ws.cands.get() + (first - ch.cand_begin));
      check(cudaGetLastError(), "make_candidates_kernel");
    }
    // Every part uploaded the same users' offsets: the last upload's are on the device.
    run.rank_chunk(ch, reinterpret_cast<const int64_t*>(ws.inputs.get() + L.indptr), k);
    const size_t id_bytes = sizeof(int64_t) * users * k, score_bytes = sizeof(float) * users * k;
    ws.results.reserve(id_bytes + score_bytes);
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.results.get(), ws.out_ids.get(), id_bytes,
                                       cudaMemcpyDeviceToHost, ws.stream.get()));
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.results.get() + id_bytes, ws.out_scores.get(),
                                       score_bytes, cudaMemcpyDeviceToHost, ws.stream.get()));
    ws.stream.synchronize();
    std::memcpy(ids + ch.user_begin * k, ws.results.get(), id_bytes);
    std::memcpy(scores + ch.user_begin * k, ws.results.get() + id_bytes, score_bytes);
  }
}

std::shared_ptr<MlpItemPartCuda> MlpModelCuda::item_part(const std::vector<MlpBlock>& item_blocks,
                                                         int64_t items, int column,
                                                         float* host_out) const {
  const State& s = *state_;
  expect(!item_blocks.empty() && item_blocks.size() <= kMaxSegments,
             "item_part needs 1 to 3 item blocks");
  expect(items >= 0 && items <= INT_MAX, "at most 2**31 - 1 items");
  int width = 0;
  for (const MlpBlock& b : item_blocks) {
    expect(b.width >= 0 && (b.data != nullptr || b.width == 0 || items == 0),
               "item blocks need data");
    width += b.width;
  }
  expect(column >= 0 && column + width <= input_width(),
             "item blocks at column " + std::to_string(column) + " with " +
                 std::to_string(width) + " columns do not fit the model's " +
                 std::to_string(input_width()) + " inputs");
  const DeviceGuard device_guard(s.device);
  auto state = std::make_unique<MlpItemPartCuda::State>();
  state->part.allocate(static_cast<size_t>(items) * s.part);
  auto lease = s.pool.acquire();
  Workspace& ws = **lease;
  const cudaStream_t stream = ws.stream.get();
  if (items > 0) {
    RECFUSE_CUDA_CHECK(
        cudaMemsetAsync(state->part.get(), 0, sizeof(float) * items * s.part, stream));
    const LayerDesc& first = s.layers.front();
    const int64_t row_bytes = 4 * std::max(width, 1);
    const int64_t rows_per_chunk = std::max<int64_t>(
        1, std::min<int64_t>(kMlpStagingBudgetBytes / row_bytes, int64_t(1) << 22));
    for (int64_t r0 = 0; r0 < items; r0 += rows_per_chunk) {
      const int64_t rows = std::min(rows_per_chunk, items - r0);
      size_t cursor = 0;
      size_t at[kMaxSegments] = {0, 0, 0};
      for (size_t b = 0; b < item_blocks.size(); ++b)
        at[b] = place(cursor, sizeof(float) * rows * item_blocks[b].width);
      ws.stream.synchronize();  // the staging buffer's last upload is done
      ws.staging.reserve(cursor);
      ws.reserve(ws.inputs, cursor);
      DenseArgs g{};
      for (size_t b = 0; b < item_blocks.size(); ++b) {
        const MlpBlock& block = item_blocks[b];
        if (block.width > 0)
          std::memcpy(ws.staging.get() + at[b], block.data + r0 * block.width,
                      sizeof(float) * rows * block.width);
        g.a.data[b] = reinterpret_cast<const float*>(ws.inputs.get() + at[b]);
        g.a.ld[b] = block.width;
        g.a.width[b] = block.width;
        g.a.by_id[b] = 0;
      }
      g.a.count = static_cast<int>(item_blocks.size());
      RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ws.inputs.get(), ws.staging.get(), cursor,
                                         cudaMemcpyHostToDevice, stream));
      g.rows = rows;
      g.K = width;
      g.wt = first.wt + static_cast<int64_t>(column) * first.ldt;
      g.ldt = first.ldt;
      g.out = first.out;
      g.activation = static_cast<int>(MlpActivation::Identity);
      g.C = state->part.get() + r0 * s.part;
      g.ldc = s.part;
      dense_layer_kernel<<<dim3(static_cast<unsigned int>(ceil_div(rows, kDenseRows)),
                                static_cast<unsigned int>(ceil_div(first.out, kDenseCols))),
                           kDenseThreads, 0, stream>>>(g);
      check(cudaGetLastError(), "dense_layer_kernel (item part)");
    }
    if (host_out != nullptr)
      RECFUSE_CUDA_CHECK(cudaMemcpyAsync(host_out, state->part.get(),
                                         sizeof(float) * items * s.part, cudaMemcpyDeviceToHost,
                                         stream));
  }
  ws.stream.synchronize();
  return std::shared_ptr<MlpItemPartCuda>(
      new MlpItemPartCuda(state_.get(), items, width, std::move(state)));
}

std::shared_ptr<MlpItemPartCuda> MlpModelCuda::upload_item_part(const float* part, int64_t items,
                                                                int columns) const {
  const State& s = *state_;
  expect(items >= 0 && items <= INT_MAX, "at most 2**31 - 1 items");
  expect(columns >= 0 && columns <= input_width(),
             "an item part covers 0 to " + std::to_string(input_width()) + " input columns, got " +
                 std::to_string(columns));
  const size_t count = static_cast<size_t>(items) * s.part;
  expect(all_finite(part, static_cast<int64_t>(count)), "the item part must be finite");
  const DeviceGuard device_guard(s.device);
  auto state = std::make_unique<MlpItemPartCuda::State>();
  state->part.allocate(count);
  if (count > 0) {
    RECFUSE_CUDA_CHECK(cudaMemcpy(state->part.get(), part, sizeof(float) * count,
                                  cudaMemcpyHostToDevice));
    RECFUSE_CUDA_CHECK(cudaDeviceSynchronize());  // as in the constructor: let the DMA land
  }
  return std::shared_ptr<MlpItemPartCuda>(
      new MlpItemPartCuda(state_.get(), items, columns, std::move(state)));
}

std::vector<double> MlpModelCuda::time_device(const MlpCandidates& c, const MlpItemPartCuda* part,
                                              int k, int repeats) const {
  const State& s = *state_;
  expect(k >= 0, "k must be >= 0 (0: score only), got " + std::to_string(k));
  expect(repeats >= 1, "repeats must be >= 1");
  const Call call = plan_call(*this, s.part, s.hidden_max, c, view(part), state_.get(), k);
  const std::vector<MlpChunk> chunks =
      mlp_plan_chunks(c.indptr, c.users, call.max_candidates, call.max_users, k > 0);
  expect(chunks.size() == 1 && call.total > 0 &&
                 chunks[0].cand_end - chunks[0].cand_begin <= call.max_candidates,
             "time_device needs a call with candidates that fits one chunk, got " +
                 std::to_string(chunks.size()) + " chunks");
  const MlpChunk& ch = chunks[0];
  const int64_t users = ch.user_end - ch.user_begin, n = ch.cand_end - ch.cand_begin;
  const DeviceGuard device_guard(s.device);
  auto lease = s.pool.acquire();
  Workspace& ws = **lease;
  ModelRun run{s.layers, s.descs.get(), s.part, s.width_max, s.hidden_max, ws, call};
  Segments items_seg{};
  run.upload_items(items_seg);
  const ChunkLayout L = run.upload_chunk(ch);
  ws.reserve(ws.scores, static_cast<size_t>(n));
  if (k > 0) {
    ws.reserve(ws.cands, static_cast<size_t>(n));
    ws.reserve(ws.out_ids, static_cast<size_t>(users) * k);
    ws.reserve(ws.out_scores, static_cast<size_t>(users) * k);
  }
  cudaEvent_t start = nullptr, stop = nullptr;
  RECFUSE_CUDA_CHECK(cudaEventCreate(&start));
  const cudaError_t created = cudaEventCreate(&stop);
  if (created != cudaSuccess) {
    cudaEventDestroy(start);
    check(created, "cudaEventCreate");
  }
  std::vector<double> micros;
  try {
    for (int r = 0; r <= repeats; ++r) {  // run 0 warms up
      RECFUSE_CUDA_CHECK(cudaEventRecord(start, ws.stream.get()));
      run.score_chunk(ch, L, items_seg, ws.scores.get());
      if (k > 0) {
        make_candidates_kernel<<<blocks_for(n, 256), 256, 0, ws.stream.get()>>>(
            ws.scores.get(), reinterpret_cast<const int64_t*>(ws.inputs.get() + L.ids), n,
            ws.cands.get());
        check(cudaGetLastError(), "make_candidates_kernel");
        run.rank_chunk(ch, reinterpret_cast<const int64_t*>(ws.inputs.get() + L.indptr), k);
      }
      RECFUSE_CUDA_CHECK(cudaEventRecord(stop, ws.stream.get()));
      RECFUSE_CUDA_CHECK(cudaEventSynchronize(stop));
      float ms = 0.0f;
      RECFUSE_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
      if (r > 0) micros.push_back(1e3 * ms);
    }
  } catch (...) {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    throw;
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  return micros;
}

}  // namespace cuda
}  // namespace recfuse
