// Score kernels of the top-k search, compiled once per SIMD level (topk_kernels_<level>.cpp
// defines the level's vector width and flags) and chosen at run time like the ALS kernels.
#pragma once
#include <cstdint>
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
  // The same for a panel of bfloat16 values (the upper halves of floats): float only.
  void (*score_panel_bf16)(const T* Q, int rows, int d, const uint16_t* panel, const T* scale,
                           const T* bias, const T* thr, T* tile, uint32_t* bits);
};

#define RECFUSE_DECLARE_TOPK_LEVEL(ns)              \
  namespace ns {                                    \
  const TopkKernels<float>& topk_kernels_float();   \
  const TopkKernels<double>& topk_kernels_double(); \
  }
RECFUSE_DECLARE_TOPK_LEVEL(generic)
RECFUSE_DECLARE_TOPK_LEVEL(avx2)
RECFUSE_DECLARE_TOPK_LEVEL(avx512)
#undef RECFUSE_DECLARE_TOPK_LEVEL

}  // namespace kernels
}  // namespace recfuse
