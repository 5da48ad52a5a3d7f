// Exact top-k retrieval on a CUDA device; the contract and the two paths are described in
// topk_cuda.hpp. Kernels, one contract each:
//
//   score_keys_kernel<T, Cfg>   (simple path)
//       keys[r][col_offset + j] = key(s_rj) for a chunk of queries x a chunk of items: a
//       Cfg::TM x Cfg::TN tile per block, staged through shared memory BK dimensions at a
//       time (any d), bias/scale/mask/exclusion applied in the epilogue. key() is an
//       order-preserving unsigned integer of the score; 0 marks "does not qualify".
//   select_kernel<Key>          (simple path)
//       one block per query row [carried survivors (<= kk) | chunk keys]: radix-selects the
//       kk-th largest key T (8-bit digits), then keeps every key > T and the first ties
//       == T in position order, which is id order (see below), compacting them in order.
//   segment_bounds_kernel + CUB's stable segmented radix sort, finalize_kernel
//       sort the survivors by key descending (stable: ties stay in id order) and write
//       ids / scores with padding.
//   fused_topk_kernel<T, Cfg>   (fused path, kk <= kFusedMaxK)
//       a block owns TM queries x one item slice; per item tile the scores stay in
//       registers (up to 8 queries, score_tile_warp: thread t scores item t of the tile for
//       every query, each warp staging its own 32 rows without block barriers; more
//       queries, score_tile: the block stages TM x TN tiles); those above the query's
//       current kk-th best go to the query's queue in
//       shared memory; a full queue is merged by one warp (bitonic sort of list + queue)
//       into the query's best list of this slice, kept in global memory (L2-resident).
//   merge_slices_kernel<T>      (fused path)
//       one block per query: the candidates of all slices' lists at least as good as the
//       kk-th best of a sample of their heads, bitonic-sorted; the first kk written out.
//
// Ties: every candidate carries its id; selection compares (key, -id) lexicographically, so
// the order is total and deterministic. In the simple path the survivors are kept in id
// order: carried survivors come from earlier (smaller-id) item chunks and are compacted in
// position order, so "first ties in position order" = "ties with the smallest ids".
// Keys, candidates, the block count and the bitonic sort live in topk_select.cuh (the MLP
// ranking of mlp.cu uses them too).
#include <cuda_runtime.h>

#include <cub/device/device_segmented_radix_sort.cuh>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_common.hpp"
#include "topk_cuda.hpp"
#include "topk_select.cuh"

namespace recfuse {
namespace cuda {

namespace {

std::atomic<int> g_path{static_cast<int>(TopkPath::Auto)};

__host__ __device__ constexpr size_t align16(size_t bytes) { return (bytes + 15) / 16 * 16; }

// ------------------------------------------------------------------------ scores
// Tile shapes: TM queries x TN items per 256-thread block, each thread RM x RN scores at
// rows ty + i*TY and columns tx + j*TX (consecutive threads read consecutive items).
template <int TM_, int TN_, int RM_, int RN_>
struct TileCfg {
  static constexpr int TM = TM_, TN = TN_, RM = RM_, RN = RN_;
  static constexpr int kThreads = 256;
  static constexpr int TY = TM / RM, TX = TN / RN;
  static constexpr int BK = 16;  // dimensions staged per step
  static_assert(TY * TX == kThreads, "one score block per thread");
  static_assert(TN % 32 == 0, "");
};
using WideCfg = TileCfg<8, 256, 2, 4>;  // few queries: every item is read once per 8 queries
using TallCfg = TileCfg<64, 64, 4, 4>;  // many queries: 16 FMAs per 2 shared loads
// At most 8 queries (fused path): thread t scores item t of the tile for all TM queries, each
// warp staging its own 32 items (score_tile_warp: no block barrier while scoring).
template <int TM>
using NarrowCfg = TileCfg<TM, 256, TM, 1>;
constexpr int kWarpDims = 32;  // dimensions a warp stages per step in score_tile_warp

template <class T>
struct ScoreArgs {
  const T* queries;  // mq x d, this chunk
  int64_t mq;        // queries in this chunk
  int64_t q_first;   // global index of the chunk's first query (for the exclusion rows)
  const T* items;    // n x d
  int64_t n;
  int d;
  const T* scale;    // n
  const T* bias;     // n
  const uint8_t* mask;             // n or null
  const int64_t* exclude_indptr;   // global m + 1 or null
  const int32_t* exclude_indices;  // sorted within each row
};

// score_tile_warp's stage of one warp: its 32 items' rows (kWarpDims + 1 apart: no bank
// conflicts when lane l reads row l) and the TM queries, kWarpDims dimensions of each.
template <class Cfg>
__host__ __device__ constexpr int warp_stage_elems() {
  return 32 * (kWarpDims + 1) + Cfg::TM * kWarpDims;
}

template <class T, class Cfg>
__host__ __device__ constexpr size_t tile_stage_bytes() {
  return Cfg::TY == 1
             ? align16(sizeof(T) * (Cfg::kThreads / 32) * warp_stage_elems<Cfg>())
             : align16(sizeof(T) * Cfg::BK * (Cfg::TM + 1)) +
                   align16(sizeof(T) * Cfg::BK * (Cfg::TN + 1));
}

// acc = Q[q0 : q0+TM] · V[j0 : j0+TN]ᵀ; rows outside [0, mq) and items outside [0, j_end)
// read as zeros (their scores are discarded by the caller). Every thread of the block must
// call it (it synchronises).
template <class T, class Cfg>
__device__ __forceinline__ void score_tile(const ScoreArgs<T>& a, int64_t q0, int64_t j0,
                                           int64_t j_end, T* Qs, T* Vs,
                                           T (&acc)[Cfg::RM][Cfg::RN]) {
  constexpr int TM = Cfg::TM, TN = Cfg::TN, BK = Cfg::BK;
  const int tid = threadIdx.x;
  const int tx = tid % Cfg::TX, ty = tid / Cfg::TX;
#pragma unroll
  for (int i = 0; i < Cfg::RM; ++i)
#pragma unroll
    for (int j = 0; j < Cfg::RN; ++j) acc[i][j] = T(0);
  for (int k0 = 0; k0 < a.d; k0 += BK) {
    for (int e = tid; e < TM * BK; e += Cfg::kThreads) {
      const int row = e / BK, col = e % BK;
      const int64_t q = q0 + row;
      const int dim = k0 + col;
      Qs[col * (TM + 1) + row] =
          (q < a.mq && dim < a.d) ? a.queries[q * a.d + dim] : T(0);
    }
    for (int e = tid; e < TN * BK; e += Cfg::kThreads) {
      const int row = e / BK, col = e % BK;
      const int64_t j = j0 + row;
      const int dim = k0 + col;
      Vs[col * (TN + 1) + row] = (j < j_end && dim < a.d) ? a.items[j * a.d + dim] : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      T qv[Cfg::RM], vv[Cfg::RN];
#pragma unroll
      for (int i = 0; i < Cfg::RM; ++i) qv[i] = Qs[kk * (TM + 1) + ty + i * Cfg::TY];
#pragma unroll
      for (int j = 0; j < Cfg::RN; ++j) vv[j] = Vs[kk * (TN + 1) + tx + j * Cfg::TX];
#pragma unroll
      for (int i = 0; i < Cfg::RM; ++i)
#pragma unroll
        for (int j = 0; j < Cfg::RN; ++j) acc[i][j] += qv[i] * vv[j];
    }
    __syncthreads();  // the stage is overwritten next step
  }
}

// score_tile's contract for the one-row-group tiles (TY == 1, RN == 1: thread t scores item
// j0 + t for every query of the tile) without block barriers: each warp stages its own 32
// items, kWarpDims dimensions at a time, with row-wise coalesced loads (lane = dimension),
// then lane l sums item j0 + 32 warp + l's products in dimension order, as score_tile does
// (the same bits). For a single query the block-wide stages of 8-query tiles streamed about
// 2.5 GB/s a block (1.1 TB/s for the H200, 23% of its DRAM bandwidth; bench/README).
template <class T, class Cfg>
__device__ __forceinline__ void score_tile_warp(const ScoreArgs<T>& a, int64_t q0, int64_t j0,
                                                int64_t j_end, T* stage,
                                                T (&acc)[Cfg::RM][Cfg::RN]) {
  static_assert(Cfg::TY == 1 && Cfg::RN == 1 && Cfg::TN == Cfg::kThreads, "one item a thread");
  constexpr int TM = Cfg::TM, D = kWarpDims, LD = kWarpDims + 1;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  T* rows = stage + warp * warp_stage_elems<Cfg>();  // 32 x LD
  T* qs = rows + 32 * LD;                            // TM x D
  const int64_t first = j0 + 32 * warp;              // the warp's first item
#pragma unroll
  for (int i = 0; i < TM; ++i) acc[i][0] = T(0);
  for (int k0 = 0; k0 < a.d; k0 += D) {
    const int dim = k0 + lane;
    const bool in_d = dim < a.d;
    T v[32];  // all loads first: 32 rows in flight per lane
#pragma unroll
    for (int r = 0; r < 32; ++r)
      v[r] = in_d && first + r < j_end ? a.items[(first + r) * a.d + dim] : T(0);
#pragma unroll
    for (int i = 0; i < TM; ++i)
      qs[i * D + lane] = in_d && q0 + i < a.mq ? a.queries[(q0 + i) * a.d + dim] : T(0);
#pragma unroll
    for (int r = 0; r < 32; ++r) rows[r * LD + lane] = v[r];
    __syncwarp();
#pragma unroll 8
    for (int c = 0; c < D; ++c) {
      const T x = rows[lane * LD + c];
#pragma unroll
      for (int i = 0; i < TM; ++i) acc[i][0] += qs[i * D + c] * x;
    }
    __syncwarp();  // the stage is written again next step
  }
}

// Whether `item` is in the (sorted, possibly repeating) exclusion row of global query q.
__device__ __forceinline__ bool excluded(const int64_t* indptr, const int32_t* indices,
                                         int64_t q, int item) {
  if (indptr == nullptr) return false;
  int64_t lo = indptr[q];
  const int64_t end = indptr[q + 1];
  int64_t hi = end;
  while (lo < hi) {  // first position with indices[pos] >= item
    const int64_t mid = lo + (hi - lo) / 2;
    if (indices[mid] < item) lo = mid + 1; else hi = mid;
  }
  return lo < end && indices[lo] == item;
}

// The key of (chunk query r, item j), with every filter applied.
template <class T>
__device__ __forceinline__ typename Sel<T>::Key qualified_key(const ScoreArgs<T>& a, int64_t r,
                                                              int64_t j, T dot) {
  // __fmul_rn: never contracted into an FMA, so s = round(round(dot*scale) + bias) as in
  // the reference.
  const T s = Sel<T>::mul(dot, a.scale[j]) + a.bias[j];
  const typename Sel<T>::Key key = Sel<T>::key_of(s);
  if (key == 0) return 0;
  if (a.mask != nullptr && a.mask[j] == 0) return 0;
  if (excluded(a.exclude_indptr, a.exclude_indices, a.q_first + r, static_cast<int>(j))) return 0;
  return key;
}

// keys[r * row_stride + col_offset + (j - j_first)] for r < mq, j in [j_first, j_end).
template <class T, class Cfg>
__global__ void __launch_bounds__(256)
score_keys_kernel(ScoreArgs<T> a, int64_t j_first, int64_t j_end, typename Sel<T>::Key* keys,
                  int64_t row_stride, int64_t col_offset) {
  extern __shared__ __align__(16) unsigned char smem[];
  T* Qs = reinterpret_cast<T*>(smem);
  T* Vs = reinterpret_cast<T*>(smem + align16(sizeof(T) * Cfg::BK * (Cfg::TM + 1)));
  const int64_t q0 = static_cast<int64_t>(blockIdx.y) * Cfg::TM;
  const int64_t j0 = j_first + static_cast<int64_t>(blockIdx.x) * Cfg::TN;
  T acc[Cfg::RM][Cfg::RN];
  score_tile<T, Cfg>(a, q0, j0, j_end, Qs, Vs, acc);
  const int tx = threadIdx.x % Cfg::TX, ty = threadIdx.x / Cfg::TX;
#pragma unroll
  for (int i = 0; i < Cfg::RM; ++i) {
    const int64_t r = q0 + ty + i * Cfg::TY;
    if (r >= a.mq) continue;
#pragma unroll
    for (int j = 0; j < Cfg::RN; ++j) {
      const int64_t item = j0 + tx + j * Cfg::TX;
      if (item >= j_end) continue;
      keys[r * row_stride + col_offset + (item - j_first)] = qualified_key(a, r, item, acc[i][j]);
    }
  }
}


// ------------------------------------------------------------------------ simple path

constexpr int kSelectThreads = 512;

// Row r of the chunk: positions [0, kk) are the survivors carried from earlier item chunks
// (id order, key 0 past their count; skipped when !has_prev), positions [kk, kk + len) the
// keys of items j_first .. j_first + len - 1. Writes the min(kk, valid) best to sel_* in
// position order, their count to counts[r], and carries them back into positions [0, kk).
template <class Key>
__global__ void __launch_bounds__(kSelectThreads)
select_kernel(Key* keys, int64_t row_stride, int kk, bool has_prev, int64_t len,
              int32_t* carried_ids, int64_t j_first, Key* sel_keys, int32_t* sel_ids,
              int* counts) {
  __shared__ unsigned int hist[256];
  __shared__ unsigned int warp_counts[32];
  __shared__ unsigned int valid_count;
  __shared__ Key s_prefix, s_mask;
  __shared__ unsigned int s_remaining;
  const int64_t r = blockIdx.x;
  Key* row = keys + r * row_stride;
  int32_t* row_carried = carried_ids + r * static_cast<int64_t>(kk);
  const int64_t begin = has_prev ? 0 : kk;
  const int64_t end = static_cast<int64_t>(kk) + len;
  const int tid = threadIdx.x;

  if (tid == 0) valid_count = 0;
  __syncthreads();
  unsigned int mine = 0;
  for (int64_t p = begin + tid; p < end; p += blockDim.x) mine += row[p] != 0;
  atomicAdd(&valid_count, mine);
  __syncthreads();

  // threshold `thresh` and how many ties == thresh to keep; with valid <= kk: everything non-zero.
  Key thresh = 0;
  unsigned int needed = 0;
  if (valid_count > static_cast<unsigned int>(kk)) {  // block-uniform
    Key prefix = 0, digit_mask = 0;
    unsigned int remaining = static_cast<unsigned int>(kk);
    for (int shift = static_cast<int>(sizeof(Key) * 8) - 8; shift >= 0; shift -= 8) {
      for (int b = tid; b < 256; b += blockDim.x) hist[b] = 0;
      __syncthreads();
      for (int64_t p = begin + tid; p < end; p += blockDim.x) {
        const Key key = row[p];
        if ((key & digit_mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1u);
      }
      __syncthreads();
      if (tid == 0) {
        unsigned int above = 0;
        int b = 255;
        for (; b > 0; --b) {
          if (above + hist[b] >= remaining) break;
          above += hist[b];
        }
        // b == 0 only when the rest lies in bin 0 (the counts guarantee it holds enough).
        s_prefix = prefix | (static_cast<Key>(b) << shift);
        s_mask = digit_mask | (static_cast<Key>(0xff) << shift);
        s_remaining = remaining - above;
      }
      __syncthreads();
      prefix = s_prefix;
      digit_mask = s_mask;
      remaining = s_remaining;
      __syncthreads();  // s_* are written again next digit
    }
    thresh = prefix;      // the kk-th largest key (> 0: more than kk keys are non-zero)
    needed = remaining;   // ties == T to keep; kk - needed keys are > T
  }

  // Ordered compaction: keys > T, and the first `needed` keys == T in position order.
  unsigned int ties_before = 0, kept_before = 0;
  for (int64_t base = begin; base < end; base += blockDim.x) {
    const int64_t p = base + tid;
    const Key key = p < end ? row[p] : Key(0);
    const bool tie = needed > 0 && key == thresh;
    unsigned int ties_total = 0, kept_total = 0;
    const unsigned int tie_rank = ties_before + block_exclusive_count(tie, warp_counts, ties_total);
    const bool keep = key > thresh || (tie && tie_rank < needed);
    const unsigned int slot = kept_before + block_exclusive_count(keep, warp_counts, kept_total);
    if (keep) {
      sel_keys[r * kk + slot] = key;
      sel_ids[r * kk + slot] =
          p < kk ? row_carried[p] : static_cast<int32_t>(j_first + (p - kk));
    }
    ties_before += ties_total;
    kept_before += kept_total;
  }
  __syncthreads();  // sel_* complete (global writes of this block are visible after it)
  if (tid == 0) counts[r] = static_cast<int>(kept_before);
  for (int64_t c = tid; c < kk; c += blockDim.x) {
    const bool here = c < static_cast<int64_t>(kept_before);
    row[c] = here ? sel_keys[r * kk + c] : Key(0);
    row_carried[c] = here ? sel_ids[r * kk + c] : -1;
  }
}

__global__ void segment_bounds_kernel(const int* counts, int64_t mq, int kk, int* begins,
                                      int* ends) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= mq) return;
  begins[r] = static_cast<int>(r * kk);
  ends[r] = static_cast<int>(r * kk + counts[r]);
}

// ids/scores[r][c] for c < kk from the sorted survivors; padding past counts[r].
template <class T>
__global__ void finalize_kernel(const typename Sel<T>::Key* sorted_keys, const int32_t* sorted_ids,
                                const int* counts, int64_t mq, int kk, int64_t* ids, T* scores) {
  const int64_t total = mq * kk;
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = e / kk, c = e % kk;
    if (c < counts[r]) {
      ids[e] = sorted_ids[e];
      scores[e] = Sel<T>::value_of(sorted_keys[e]);
    } else {
      ids[e] = -1;
      scores[e] = -static_cast<T>(INFINITY);
    }
  }
}

// ------------------------------------------------------------------------ fused path

struct FusedLayout {
  size_t stage, thr, cnt, flag, queue, scratch, total;
};

// The score stage and the warps' merge buffers (scratch) share their bytes: merges run only
// between the candidates of a tile and the scoring of the next, both behind a barrier
// (66 KB a block became 49 KB for 8-query tiles: 4 blocks an SM instead of 3).
template <class T, class Cfg>
__host__ __device__ FusedLayout fused_layout(int P) {
  using Cand = typename Sel<T>::Cand;
  FusedLayout L{};
  const size_t stage = tile_stage_bytes<T, Cfg>();
  const size_t scratch = align16(sizeof(Cand) * (Cfg::kThreads / 32) * P);
  L.stage = 0;
  L.scratch = 0;
  L.thr = stage > scratch ? stage : scratch;
  L.cnt = L.thr + align16(sizeof(Cand) * Cfg::TM);
  L.flag = L.cnt + align16(sizeof(int) * Cfg::TM);
  L.queue = L.flag + 16;
  L.total = L.queue + align16(sizeof(Cand) * Cfg::TM * Cfg::TN);  // queue capacity TN
  return L;
}

// Block (x = query tile, y = item slice): the best kk of items [slice*slice_len, ...) for
// each of its TM queries, written best first to partial[(q * slices + slice) * kk ...].
// P = next_pow2(kk + TN) is the warp merge buffer. The queue of a query holds TN candidates:
// one tile adds at most TN per query, so after merging a full queue the rest of a tile
// always fits (the retry loop runs at most twice per tile).
template <class T, class Cfg>
__global__ void __launch_bounds__(256)
fused_topk_kernel(ScoreArgs<T> a, int64_t slice_len, int slices, int kk, int P,
                  typename Sel<T>::Cand* partial) {
  using S = Sel<T>;
  using Cand = typename S::Cand;
  constexpr int TM = Cfg::TM, TN = Cfg::TN, CAP = Cfg::TN, WARPS = Cfg::kThreads / 32;
  extern __shared__ __align__(16) unsigned char smem[];
  const FusedLayout L = fused_layout<T, Cfg>(P);
  T* Qs = reinterpret_cast<T*>(smem + L.stage);
  T* Vs = reinterpret_cast<T*>(smem + L.stage + align16(sizeof(T) * Cfg::BK * (TM + 1)));
  Cand* thr = reinterpret_cast<Cand*>(smem + L.thr);
  int* cnt = reinterpret_cast<int*>(smem + L.cnt);
  int* overflow = reinterpret_cast<int*>(smem + L.flag);
  Cand* queue = reinterpret_cast<Cand*>(smem + L.queue);
  Cand* scratch = reinterpret_cast<Cand*>(smem + L.scratch);

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * TM;
  const int slice = blockIdx.y;
  const int64_t j_begin = static_cast<int64_t>(slice) * slice_len;
  const int64_t j_end = a.n < j_begin + slice_len ? a.n : j_begin + slice_len;
  auto list = [&](int r) { return partial + ((q0 + r) * slices + slice) * static_cast<int64_t>(kk); };

  for (int e = tid; e < TM * kk; e += Cfg::kThreads) {
    const int r = e / kk;
    if (q0 + r < a.mq) list(r)[e % kk] = S::empty();
  }
  for (int r = tid; r < TM; r += Cfg::kThreads) {
    thr[r] = S::empty();
    cnt[r] = 0;
  }
  if (tid == 0) *overflow = 0;
  __syncthreads();

  // One warp merges query r's queue into its list; thr[r] becomes the new kk-th best.
  auto merge_row = [&](int r) {
    Cand* s = scratch + warp * P;
    Cand* best = list(r);
    const int queued = min(cnt[r], CAP);
    for (int e = lane; e < P; e += 32)
      s[e] = e < kk ? best[e] : (e < kk + queued ? queue[r * CAP + (e - kk)] : S::empty());
    __syncwarp();
    bitonic_sort_best_first<T>(s, P, lane, 32, WarpSync());
    for (int e = lane; e < kk; e += 32) best[e] = s[e];
    if (lane == 0) {
      thr[r] = s[kk - 1];
      cnt[r] = 0;
    }
    __syncwarp();  // s is reused for the warp's next row
  };
  // Merges every row whose queue holds at least `at_least` candidates (block-wide call).
  auto merge_rows = [&](int at_least) {
    for (int r = warp; r < TM; r += WARPS)
      if (q0 + r < a.mq && cnt[r] >= at_least) merge_row(r);
    __syncthreads();
  };

  const int tx = tid % Cfg::TX, ty = tid / Cfg::TX;
  for (int64_t j0 = j_begin; j0 < j_end; j0 += TN) {  // block-uniform loop
    T acc[Cfg::RM][Cfg::RN];
    if constexpr (Cfg::TY == 1) score_tile_warp<T, Cfg>(a, q0, j0, j_end, Qs, acc);
    else score_tile<T, Cfg>(a, q0, j0, j_end, Qs, Vs, acc);
    // Candidates of this thread: above the current threshold, then the filters.
    Cand cand[Cfg::RM][Cfg::RN];
    unsigned int pending = 0;
#pragma unroll
    for (int i = 0; i < Cfg::RM; ++i) {
      const int r = ty + i * Cfg::TY;
#pragma unroll
      for (int j = 0; j < Cfg::RN; ++j) {
        const int64_t item = j0 + tx + j * Cfg::TX;
        cand[i][j] = S::empty();
        if (q0 + r >= a.mq || item >= j_end) continue;
        const T s = S::mul(acc[i][j], a.scale[item]) + a.bias[item];
        const typename S::Key key = S::key_of(s);
        if (key == 0) continue;
        const Cand c = S::make(key, static_cast<int>(item));
        if (!S::better(c, thr[r])) continue;  // the common case once the list is full
        if (a.mask != nullptr && a.mask[item] == 0) continue;
        if (excluded(a.exclude_indptr, a.exclude_indices, a.q_first + q0 + r,
                     static_cast<int>(item)))
          continue;
        cand[i][j] = c;
        pending |= 1u << (i * Cfg::RN + j);
      }
    }
    while (true) {  // at most two rounds (see above); the exit test is block-uniform
#pragma unroll
      for (int i = 0; i < Cfg::RM; ++i) {
        const int r = ty + i * Cfg::TY;
#pragma unroll
        for (int j = 0; j < Cfg::RN; ++j) {
          const unsigned int bit = 1u << (i * Cfg::RN + j);
          if (!(pending & bit)) continue;
          if (!S::better(cand[i][j], thr[r])) {  // the threshold rose in a merge
            pending &= ~bit;
            continue;
          }
          const int slot = atomicAdd(&cnt[r], 1);
          if (slot < CAP) {
            queue[r * CAP + slot] = cand[i][j];
            pending &= ~bit;
          } else {
            *overflow = 1;  // retried after the full queues are merged
          }
        }
      }
      __syncthreads();
      const bool again = *overflow != 0;
      __syncthreads();  // everyone has read the flag before it is cleared
      if (!again) break;
      if (tid == 0) *overflow = 0;
      merge_rows(CAP);  // ends with __syncthreads
    }
  }
  merge_rows(1);  // flush what is left in the queues
}

// One block of kMergeThreads per query row r: the best kk of its `slices` lists (each best
// first, kk entries padded with empty ones), in s (dynamic shared memory for
// next_pow2(slices * kk) candidates). Only the candidates at least as good as a floor are
// sorted: the kk-th best of a sample, the first ceil(kk / slices) entries of every list. The
// sample holds kk candidates that good, so the kk best of all are among them (an empty
// floor keeps everything). Sorting all 4,096 candidates of a single query took 41 µs of its
// 171 on an H200; the best of the lists' kk-th entries, a floor tried first, kept about 3 of
// every 4 candidates of random scores (each list's kk-th is about as good as the others').
constexpr int kMergeThreads = 512;

template <class T>
__global__ void __launch_bounds__(kMergeThreads)
merge_slices_kernel(const typename Sel<T>::Cand* partial, int slices, int kk, int64_t* ids,
                    T* scores) {
  using S = Sel<T>;
  using Cand = typename S::Cand;
  extern __shared__ __align__(16) unsigned char smem[];
  __shared__ unsigned int warp_counts[32];
  Cand* s = reinterpret_cast<Cand*>(smem);
  const int tid = threadIdx.x;
  const int64_t r = blockIdx.x;
  const int total = slices * kk;
  const Cand* lists = partial + r * total;
  // The floor: the kk-th best of the sample (slices * per >= kk entries, <= total).
  const int per = (kk + slices - 1) / slices;
  const int sampled = slices * per, P_sample = next_pow2(sampled);
  for (int e = tid; e < P_sample; e += kMergeThreads)
    s[e] = e < sampled ? lists[static_cast<int64_t>(e / per) * kk + e % per] : S::empty();
  __syncthreads();
  bitonic_sort_best_first<T>(s, P_sample, tid, kMergeThreads, BlockSync());
  const Cand floor = s[kk - 1];
  __syncthreads();  // every thread has read the floor before s is written again
  int kept = 0;  // candidates at least as good as the floor, compacted to s in list order
  for (int first = 0; first < total; first += kMergeThreads) {  // block-uniform
    const int e = first + tid;
    const Cand c = e < total ? lists[e] : S::empty();
    const bool keep = e < total && !S::better(floor, c);
    unsigned int count = 0;
    const unsigned int slot = kept + block_exclusive_count(keep, warp_counts, count);
    if (keep) s[slot] = c;
    kept += static_cast<int>(count);
  }
  const int P = next_pow2(kept);  // <= next_pow2(total): kept <= total
  for (int e = kept + tid; e < P; e += kMergeThreads) s[e] = S::empty();
  __syncthreads();
  bitonic_sort_best_first<T>(s, P, tid, kMergeThreads, BlockSync());
  for (int c = tid; c < kk; c += kMergeThreads) {
    const Cand best = s[c];
    const auto key = S::key(best);
    ids[r * kk + c] = key == 0 ? -1 : S::id(best);
    scores[r * kk + c] = key == 0 ? -static_cast<T>(INFINITY) : S::value_of(key);
  }
}

// slices * kk <= kMergeCapacity, merge_slices_kernel's usual share of shared memory; up to
// merge_capacity() when fewer slices would leave SMs idle (large k, few queries).
constexpr int kMergeCapacity = 4096;
constexpr int kMergeMaxCapacity = 16384;

// The most candidates a query's merge can hold in the device's shared memory (a power of
// two from kMergeCapacity to kMergeMaxCapacity; every one of them when the floor keeps all).
template <class T>
int64_t merge_capacity(int optin_shared) {
  using Cand = typename Sel<T>::Cand;
  const size_t fixed = 1024;  // warp counts, slack
  int64_t capacity = kMergeCapacity;
  while (capacity < kMergeMaxCapacity &&
         fixed + sizeof(Cand) * 2 * capacity <= static_cast<size_t>(optin_shared))
    capacity *= 2;
  return capacity;
}

}  // namespace

void set_topk_path(TopkPath path) noexcept { g_path.store(static_cast<int>(path)); }
TopkPath topk_path() noexcept { return static_cast<TopkPath>(g_path.load()); }

// ------------------------------------------------------------------------ the item table

template <class T>
struct TopkItems<T>::State {
  int device = 0;
  int sm_count = 1;
  int optin_shared = 48 * 1024;
  DeviceBuffer<T> items, scale, bias;
};

template <class T>
TopkItems<T>::TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale, int,
                        bool bfloat16)
    : n_(n), d_(d), state_(new State) {
  expect(!bfloat16, "bfloat16 storage is available on the cpu backend only");
  expect(n >= 0 && n <= INT32_MAX, "items must have at most 2**31 - 1 rows");
  expect(d >= 1, "items must have at least one column");
  int count = 0;
  RECFUSE_CUDA_CHECK(cudaGetDeviceCount(&count));
  if (count == 0) throw std::runtime_error("no CUDA device");
  RECFUSE_CUDA_CHECK(cudaGetDevice(&state_->device));
  RECFUSE_CUDA_CHECK(
      cudaDeviceGetAttribute(&state_->sm_count, cudaDevAttrMultiProcessorCount, state_->device));
  RECFUSE_CUDA_CHECK(cudaDeviceGetAttribute(
      &state_->optin_shared, cudaDevAttrMaxSharedMemoryPerBlockOptin, state_->device));
  const size_t nd = static_cast<size_t>(n) * static_cast<size_t>(d);
  state_->items.allocate(nd);
  state_->scale.allocate(static_cast<size_t>(n));
  state_->bias.allocate(static_cast<size_t>(n));
  if (n == 0) return;
  RECFUSE_CUDA_CHECK(cudaMemcpy(state_->items.get(), items, nd * sizeof(T), cudaMemcpyHostToDevice));
  // Missing scale / bias become 1 / 0: (dot * 1) + 0 == dot exactly (up to the sign of 0).
  std::vector<T> fill;
  if (scale == nullptr) fill.assign(static_cast<size_t>(n), T(1));
  RECFUSE_CUDA_CHECK(cudaMemcpy(state_->scale.get(), scale ? scale : fill.data(),
                                static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
  if (bias == nullptr) fill.assign(static_cast<size_t>(n), T(0));
  RECFUSE_CUDA_CHECK(cudaMemcpy(state_->bias.get(), bias ? bias : fill.data(),
                                static_cast<size_t>(n) * sizeof(T), cudaMemcpyHostToDevice));
  // A copy from pageable memory may return before its DMA lands, and the searches run on
  // non-blocking streams that do not wait for the default stream.
  RECFUSE_CUDA_CHECK(cudaDeviceSynchronize());
}

template <class T>
TopkItems<T>::~TopkItems() = default;

namespace {

// The simple path for one chunk of queries: results into ids/scores (mq x kk, device).
template <class T, class Cfg>
void run_simple(const ScoreArgs<T>& a, int kk, int64_t item_chunk, cudaStream_t stream,
                int64_t* ids, T* scores) {
  using Key = typename Sel<T>::Key;
  const int64_t mq = a.mq, n = a.n;
  const int64_t row_stride = kk + item_chunk;
  StreamBuffer<Key> keys(static_cast<size_t>(mq * row_stride), stream);
  const size_t selected = static_cast<size_t>(mq * kk);
  StreamBuffer<int32_t> carried(selected, stream), sel_ids(selected, stream),
      sorted_ids(selected, stream);
  StreamBuffer<Key> sel_keys(selected, stream), sorted_keys(selected, stream);
  StreamBuffer<int> counts(static_cast<size_t>(mq), stream),
      begins(static_cast<size_t>(mq), stream), ends(static_cast<size_t>(mq), stream);
  const size_t stage = tile_stage_bytes<T, Cfg>();
  bool has_prev = false;
  for (int64_t j_first = 0; j_first < n; j_first += item_chunk) {
    const int64_t len = std::min(item_chunk, n - j_first);
    const dim3 grid(static_cast<unsigned int>(ceil_div(len, Cfg::TN)),
                    static_cast<unsigned int>(ceil_div(mq, Cfg::TM)));
    score_keys_kernel<T, Cfg><<<grid, Cfg::kThreads, stage, stream>>>(
        a, j_first, j_first + len, keys.get(), row_stride, kk);
    check(cudaGetLastError(), "score_keys_kernel");
    select_kernel<Key><<<static_cast<unsigned int>(mq), kSelectThreads, 0, stream>>>(
        keys.get(), row_stride, kk, has_prev, len, carried.get(), j_first, sel_keys.get(),
        sel_ids.get(), counts.get());
    check(cudaGetLastError(), "select_kernel");
    has_prev = true;
  }
  segment_bounds_kernel<<<static_cast<unsigned int>(ceil_div(mq, 256)), 256, 0, stream>>>(
      counts.get(), mq, kk, begins.get(), ends.get());
  check(cudaGetLastError(), "segment_bounds_kernel");
  // Stable radix sort by key, descending: ties keep their id order.
  size_t temp_bytes = 0;
  const int items = static_cast<int>(mq * kk);
  RECFUSE_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, temp_bytes, sel_keys.get(), sorted_keys.get(), sel_ids.get(), sorted_ids.get(),
      items, static_cast<int>(mq), begins.get(), ends.get(), 0, static_cast<int>(sizeof(Key) * 8),
      stream));
  StreamBuffer<unsigned char> temp(std::max<size_t>(temp_bytes, 1), stream);
  RECFUSE_CUDA_CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(
      temp.get(), temp_bytes, sel_keys.get(), sorted_keys.get(), sel_ids.get(), sorted_ids.get(),
      items, static_cast<int>(mq), begins.get(), ends.get(), 0, static_cast<int>(sizeof(Key) * 8),
      stream));
  const int64_t total = mq * kk;
  finalize_kernel<T><<<static_cast<unsigned int>(std::min<int64_t>(ceil_div(total, 256), 65535)),
                       256, 0, stream>>>(sorted_keys.get(), sorted_ids.get(), counts.get(), mq,
                                         kk, ids, scores);
  check(cudaGetLastError(), "finalize_kernel");
  // The scratch above is freed in stream order: no wait here (the caller's download waits).
}

// fn(Cfg{}) with the fused path's tiles for a search of m queries: up to 8 NarrowCfg (the
// smallest TM that holds them: one chunk), up to 32 WideCfg (each item read once per 8
// queries), more TallCfg.
template <class Fn>
auto with_fused_cfg(int64_t m, Fn&& fn) {
  if (m <= 1) return fn(NarrowCfg<1>{});
  if (m <= 2) return fn(NarrowCfg<2>{});
  if (m <= 4) return fn(NarrowCfg<4>{});
  if (m <= 8) return fn(NarrowCfg<8>{});
  if (m <= 32) return fn(WideCfg{});
  return fn(TallCfg{});
}

// The fused path for one chunk of queries (kk <= kFusedMaxK).
template <class T, class Cfg>
void run_fused(const ScoreArgs<T>& a, int kk, int slices, cudaStream_t stream, int64_t* ids,
               T* scores) {
  using Cand = typename Sel<T>::Cand;
  const int64_t mq = a.mq;
  const int P = next_pow2(kk + Cfg::TN);
  const FusedLayout L = fused_layout<T, Cfg>(P);
  const int64_t slice_len = ceil_div(ceil_div(a.n, slices), Cfg::TN) * Cfg::TN;
  slices = static_cast<int>(ceil_div(a.n, slice_len));  // whole tiles: no slice past the items
  StreamBuffer<Cand> partial(static_cast<size_t>(mq * slices * kk), stream);
  const dim3 grid(static_cast<unsigned int>(ceil_div(mq, Cfg::TM)), static_cast<unsigned int>(slices));
  allow_shared(fused_topk_kernel<T, Cfg>, L.total);
  fused_topk_kernel<T, Cfg><<<grid, Cfg::kThreads, L.total, stream>>>(a, slice_len, slices, kk,
                                                                      P, partial.get());
  check(cudaGetLastError(), "fused_topk_kernel");
  const int P2 = next_pow2(slices * kk);
  const size_t merge_bytes = sizeof(Cand) * P2;
  allow_shared(merge_slices_kernel<T>, merge_bytes);
  merge_slices_kernel<T><<<static_cast<unsigned int>(mq), kMergeThreads, merge_bytes, stream>>>(
      partial.get(), slices, kk, ids, scores);
  check(cudaGetLastError(), "merge_slices_kernel");
}

}  // namespace

template <class T>
void TopkItems<T>::search(const T* queries, int64_t m, int k, const TopkFilters& filters, int,
                          int64_t* out_ids, T* out_scores) const {
  expect(k >= 1, "k must be >= 1, got " + std::to_string(k));
  expect(m >= 0, "m must be >= 0");
  if (m == 0) return;
  const int kk = static_cast<int>(std::min<int64_t>(k, n_));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  auto pad_columns = [&](int64_t row_begin, int64_t row_end, int from) {
    for (int64_t r = row_begin; r < row_end; ++r)
      for (int64_t c = from; c < k; ++c) {
        out_ids[r * k + c] = -1;
        out_scores[r * k + c] = neg_inf;
      }
  };
  if (kk == 0) {  // an empty table: padding only
    pad_columns(0, m, 0);
    return;
  }
  const DeviceGuard device_guard(state_->device);
  Stream stream;
  const cudaStream_t s = stream.get();

  // Filters: uploaded once per search (they are inputs of the caller's size). All scratch
  // comes from the stream-ordered pool (scratch_pool): a search of a size seen before makes
  // no cudaMalloc and no cudaFree (which waits for the whole device).
  const bool excluding = filters.exclude_indptr != nullptr;
  const int64_t excluded = excluding ? filters.exclude_indptr[m] : 0;
  StreamBuffer<uint8_t> mask(filters.mask != nullptr ? static_cast<size_t>(n_) : 0, s);
  StreamBuffer<int64_t> ex_indptr(excluding ? static_cast<size_t>(m + 1) : 0, s);
  StreamBuffer<int32_t> ex_indices(static_cast<size_t>(excluded), s);
  if (filters.mask != nullptr) {
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(mask.get(), filters.mask, static_cast<size_t>(n_),
                                       cudaMemcpyHostToDevice, s));
  }
  if (excluding) {
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ex_indptr.get(), filters.exclude_indptr,
                                       sizeof(int64_t) * (m + 1), cudaMemcpyHostToDevice, s));
    if (excluded > 0) {
      RECFUSE_CUDA_CHECK(cudaMemcpyAsync(ex_indices.get(), filters.exclude_indices,
                                         sizeof(int32_t) * excluded, cudaMemcpyHostToDevice, s));
    }
  }

  // The path and the chunk of queries processed at once (device memory <= the budget).
  const TopkPath mode = topk_path();
  const size_t fused_shared = with_fused_cfg(m, [&](auto cfg) {
    using Cfg = decltype(cfg);
    return fused_layout<T, Cfg>(next_pow2(kk + Cfg::TN)).total;
  });
  const bool fused = mode != TopkPath::Simple && kk <= kFusedMaxK &&
                     fused_shared <= static_cast<size_t>(state_->optin_shared);
  const int64_t budget = kTopkSearchBudgetBytes;
  const int64_t query_bytes = static_cast<int64_t>(d_) * sizeof(T);
  const int64_t result_bytes = static_cast<int64_t>(kk) * (sizeof(int64_t) + sizeof(T));
  int64_t chunk = 0, item_chunk = 0;
  int slices = 1;
  if (fused) {
    const int64_t tm = with_fused_cfg(m, [](auto cfg) { return int64_t{decltype(cfg)::TM}; });
    const int64_t tn = with_fused_cfg(m, [](auto cfg) { return int64_t{decltype(cfg)::TN}; });
    chunk = std::min<int64_t>(m, 4096);
    chunk = std::max<int64_t>(1, std::min<int64_t>(chunk, budget / 4 / query_bytes));
    // Enough blocks for two waves of the device, at least 2 tiles per slice, and all of a
    // query's lists within the merge kernel's capacity. (At least 16 tiles per slice gave a
    // single query on 50,000 items 12 blocks for the H200's 132 SMs: 65 GB/s of the table,
    // as if each block streamed ~5 GB/s; 1M items, 244 blocks: 567 GB/s. 2 tiles: 66 and
    // 391 blocks, once run_fused drops the slices that whole tiles leave empty: 165 and
    // 736 GB/s on the H200. kMergeCapacity / kk gave one query at k = 100 40 slices: 40
    // blocks for 132 SMs, 577 µs on 1M x 64 against 126 at k = 10; up to one slice an SM
    // now, as the merge's shared memory allows.)
    const int64_t sms = state_->sm_count;
    const int64_t want = ceil_div(4 * sms, ceil_div(chunk, tm));
    const int64_t merge_most = std::max<int64_t>(
        kMergeCapacity / kk, std::min<int64_t>(sms, merge_capacity<T>(state_->optin_shared) / kk));
    const int64_t most = std::min<int64_t>(merge_most, std::max<int64_t>(1, n_ / (2 * tn)));
    slices = static_cast<int>(std::max<int64_t>(1, std::min(want, most)));
    // partial lists: chunk * slices * kk candidates, where chunk * want is about 4 * SMs * TM
    // plus chunk: at most about 170 MB (float64, kk = 256, 4,096 queries; 151 MB on 132 SMs)
  } else {
    item_chunk = std::min<int64_t>(n_, int64_t(1) << 22);
    const int64_t key_bytes = sizeof(typename Sel<T>::Key);
    const int64_t row_bytes = (kk + item_chunk) * key_bytes +
                              static_cast<int64_t>(kk) * (4 * 3 + 2 * key_bytes) +
                              2 * static_cast<int64_t>(kk) * (key_bytes + 4) /* CUB */ +
                              result_bytes + query_bytes + 16;
    chunk = std::max<int64_t>(1, budget / row_bytes);
    chunk = std::min<int64_t>({chunk, m, 65535, INT_MAX / kk});
  }

  StreamBuffer<T> d_queries(static_cast<size_t>(chunk * d_), s);
  StreamBuffer<int64_t> d_ids(static_cast<size_t>(chunk * kk), s);
  StreamBuffer<T> d_scores(static_cast<size_t>(chunk * kk), s);
  for (int64_t q_first = 0; q_first < m; q_first += chunk) {
    const int64_t mq = std::min(chunk, m - q_first);
    RECFUSE_CUDA_CHECK(cudaMemcpyAsync(d_queries.get(), queries + q_first * d_,
                                       sizeof(T) * mq * d_, cudaMemcpyHostToDevice, s));
    const ScoreArgs<T> a{d_queries.get(), mq, q_first, state_->items.get(), n_, d_,
                         state_->scale.get(), state_->bias.get(), mask.get(),
                         ex_indptr.get(), ex_indices.get()};
    if (fused) {
      with_fused_cfg(m, [&](auto cfg) {
        run_fused<T, decltype(cfg)>(a, kk, slices, s, d_ids.get(), d_scores.get());
      });
    } else {
      if (mq <= 32) run_simple<T, WideCfg>(a, kk, item_chunk, s, d_ids.get(), d_scores.get());
      else run_simple<T, TallCfg>(a, kk, item_chunk, s, d_ids.get(), d_scores.get());
    }
    // Rows of kk results into host rows of k (the rest is padding, filled below).
    RECFUSE_CUDA_CHECK(cudaMemcpy2DAsync(out_ids + q_first * k, sizeof(int64_t) * k, d_ids.get(),
                                         sizeof(int64_t) * kk, sizeof(int64_t) * kk, mq,
                                         cudaMemcpyDeviceToHost, s));
    RECFUSE_CUDA_CHECK(cudaMemcpy2DAsync(out_scores + q_first * k, sizeof(T) * k, d_scores.get(),
                                         sizeof(T) * kk, sizeof(T) * kk, mq,
                                         cudaMemcpyDeviceToHost, s));
    stream.synchronize();
  }
  if (kk < k) pad_columns(0, m, kk);
}

template class TopkItems<float>;
template class TopkItems<double>;

}  // namespace cuda
}  // namespace recfuse
