// Dense-layer kernels of the MLP scorer on one block of rows. The float32 kernel is compiled
// once per SIMD level (mlp_kernels_<level>.cpp) and chosen at run time; the bfloat16
// kernels need AVX512-BF16 (mlp_kernels_avx512bf16.cpp) or AMX (mlp_kernels_amx.cpp) and
// are chosen when the model is built.
#pragma once
#include <cmath>
#include <cstdint>

#include "recfuse/mlp.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {
namespace kernels {

// C[r][j] = act(Σ_{k<K} A[r][k] · P[k][j] + add0[r][j] + add1[r][j]) for r < rows and every
// column j of `panels` packed panels (kMlpPanel columns each; panel p starts at
// packed + p * panel_stride elements). add1 may be null (or hold null rows). Float32:
// A, packed and C are float. Bfloat16: A is bfloat16 (row-major, K even or A[r][K] finite,
// since pairs are multiplied), packed holds bfloat16 pairs, C is bfloat16 when c_bf16 else
// float. lda and ldc count elements.
struct MlpLayerArgs {
  const void* A;
  int lda;
  int rows;
  int K;
  const void* packed;
  int64_t panel_stride;
  int panels;
  const float* const* add0;
  const float* const* add1;
  MlpActivation activation;
  void* C;
  int ldc;
  bool c_bf16;
};

using MlpLayerFunction = void (*)(const MlpLayerArgs&);
// out[r] = Σ_{k<K} A[r][k] · w[k] for r < rows (float32; A's rows lda apart): a final
// one-output layer, before its bias and activation.
using MlpDotFunction = void (*)(const float* A, int lda, int rows, int K, const float* w,
                                float* out);

// Whether none of x[0..n) is NaN or inf (the per-call check of the inputs, see mlp.hpp).
using MlpAllFiniteFunction = bool (*)(const float* x, int64_t n);

#define RECFUSE_MLP_LEVEL_KERNELS \
  MlpLayerFunction mlp_layer_float32();  \
  MlpDotFunction mlp_dot_float32();      \
  MlpAllFiniteFunction mlp_all_finite();
namespace generic { RECFUSE_MLP_LEVEL_KERNELS }
namespace avx2 { RECFUSE_MLP_LEVEL_KERNELS }
namespace avx512 { RECFUSE_MLP_LEVEL_KERNELS }
#undef RECFUSE_MLP_LEVEL_KERNELS
// Null when the build has no such kernel (not x86-64).
MlpLayerFunction mlp_layer_avx512bf16();
MlpLayerFunction mlp_layer_amx();
// dst[i] = src[i] rounded to bfloat16 (nearest even), i < count (a multiple of 32);
// AVX512-BF16 (null-safe: the caller only uses it with a bfloat16 kernel).
void mlp_rows_to_bfloat16(const float* src, uint16_t* dst, int64_t count);
// Requests AMX tile data permission for the process (Linux arch_prctl); false when refused.
bool mlp_request_amx();

// float -> bfloat16, round to nearest even (NaN stays NaN).
inline uint16_t to_bfloat16(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

inline float from_bfloat16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  __builtin_memcpy(&x, &bits, 4);
  return x;
}

}  // namespace kernels
}  // namespace recfuse
