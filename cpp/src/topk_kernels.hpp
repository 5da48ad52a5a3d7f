// Score kernels of the top-k search, compiled once per SIMD level (topk_kernels_<level>.cpp
// defines the level's vector width and flags) and chosen at run time like the ALS kernels.
#pragma once
#include <cstdint>
#include <limits>
#include <type_traits>

#include "recfuse/simd.hpp"

namespace recfuse {
namespace kernels {

template <class T>
struct TopkKernels {
  // For rows = 1 .. max_rows queries Q (row stride d) and one packed panel (d x P values,
  // P = kTopkPanelBytes / sizeof(T)): tile[r][j] = (Q[r] · item j) * scale[j] + bias[j] and
  // bits[r] = the j with tile[r][j] > thr[r] (bit j; P <= 32).
  void (*score_panel)(const T* Q, int rows, int d, const T* panel, const T* scale,
                      const T* bias, const T* thr, T* tile, uint32_t* bits);
  int max_rows;
  // out[i] = the score score_panel gives item ids[i] of the row-major table (n x d) for the
  // query q, bit for bit: the items are copied, 32 at a time, into a panel in `scratch`
  // (scratch_size(d) values, 64-byte aligned, zeroed before the first call) and scored by
  // the same code.
  void (*score_items)(const T* q, int d, const T* table, const T* scale, const T* bias,
                      const int32_t* ids, int count, T* scratch, T* out);
  static int64_t scratch_size(int d) { return (static_cast<int64_t>(d) + 3) * 32; }
};

// The kernel of bfloat16 item storage (float items; see TopkItems): for rows = 1 .. max_rows
// queries and one bfloat16 block, tile[r][j] = an upper bound of item j's float32 score
// (NaN when the kernel cannot bound it) and bits[r] = the j with !(tile[r][j] < thr[r]).
// Q holds per row either the d floats of the query (widening kernels: each level widens the
// bfloat16 items to float) or, with bfloat16_queries, (d + 1) / 2 words each holding a pair
// of the query's bfloat16 values (the AVX512-BF16 dot-product kernel). qa and qb are the
// per-row weights of the error bound (see topk.cpp).
struct TopkBf16Kernel {
  void (*score_panel)(const void* Q, int rows, int d, const uint16_t* block, const float* qa,
                      const float* qb, const float* thr, float* tile, uint32_t* bits);
  int max_rows;
  bool bfloat16_queries;
};

#define RECFUSE_DECLARE_TOPK_LEVEL(ns)              \
  namespace ns {                                    \
  const TopkKernels<float>& topk_kernels_float();   \
  const TopkKernels<double>& topk_kernels_double(); \
  const TopkBf16Kernel& topk_bf16_kernel();         \
  }
RECFUSE_DECLARE_TOPK_LEVEL(generic)
RECFUSE_DECLARE_TOPK_LEVEL(avx2)
RECFUSE_DECLARE_TOPK_LEVEL(avx512)
#undef RECFUSE_DECLARE_TOPK_LEVEL

namespace avx512bf16 {
// VDPBF16PS over the pair-interleaved blocks (topk_kernels_avx512bf16.cpp); only called on
// a CPU with avx512_bf16.
const TopkBf16Kernel& topk_bf16_kernel();
}  // namespace avx512bf16

}  // namespace kernels
}  // namespace recfuse
