// Dense-layer kernels of the MLP scorer on one block of rows. The float32 kernel is compiled
// once per SIMD level (mlp_kernels_<level>.cpp) and chosen at run time; the bfloat16
// kernels need AVX512-BF16 (mlp_kernels_avx512bf16.cpp) or AMX (mlp_kernels_amx.cpp) and
// are chosen when the model is built. The int8 kernel and its row quantizer are scalar at
// the generic level and AVX2 code at the avx2 and avx512 levels.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "recfuse/mlp.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {
namespace kernels {

// C[r][j] = act(Σ_{k<K} A[r][k] · P[k][j] + add0[r][j] + add1[r][j]) for r < rows and every
// column j of `panels` packed panels (kMlpPanel columns each; panel p starts at
// packed + p * panel_stride elements). add1 may be null (or hold null rows). Float32:
// A, packed and C are float. Bfloat16: A is bfloat16 (row-major, K even or A[r][K] finite,
// since pairs are multiplied), packed holds bfloat16 pairs, C is bfloat16 when c_bf16 else
// float. Int8: A holds int8 values as int16 (row-major; A[r][K] = 0 when K is odd, since
// pairs are multiplied), packed holds the weights' int8 values as int16 pairs laid out as
// bfloat16's, and C[r][j] = act(float(Σ A·P) · a_scale[r] · w_scale[j] + add0 + add1) is
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
  const float* a_scale = nullptr;  // int8: per row of A
  const float* w_scale = nullptr;  // int8: per output column (panels * kMlpPanel)
};

using MlpLayerFunction = void (*)(const MlpLayerArgs&);
// out[r] = Σ_{k<K} A[r][k] · w[k] for r < rows (float32; A's rows lda apart): a final
// one-output layer, before its bias and activation.
using MlpDotFunction = void (*)(const float* A, int lda, int rows, int K, const float* w,
                                float* out);

// Whether none of x[0..n) is NaN or inf (the per-call check of the inputs, see mlp.hpp).
using MlpAllFiniteFunction = bool (*)(const float* x, int64_t n);

// The int8 quantization of rows (recfuse.reference.quantize_int8_rows): for each of the
// rows of x (K floats, ldx apart), m = max |x[k]|; q[k] = clamp(rint(x[k] · (127 / m)),
// -127, 127) and scale = m / 127, both in float32; a row whose m is below kInt8ZeroRow is
// all zeros (scale 0), one holding NaN or inf is zeros with scale NaN. q's rows are ldq
// apart and get a 0 at column K when K is odd.
using MlpQuantizeFunction = void (*)(const float* x, int ldx, int rows, int K, int16_t* q,
                                     int ldq, float* scale);
constexpr float kInt8ZeroRow = 0x1p-120f;  // 127 / m would overflow float32 below ~3.7e-37

#define RECFUSE_MLP_LEVEL_KERNELS \
  MlpLayerFunction mlp_layer_float32();  \
  MlpDotFunction mlp_dot_float32();      \
  MlpAllFiniteFunction mlp_all_finite(); \
  MlpLayerFunction mlp_layer_int8();     \
  MlpQuantizeFunction mlp_quantize_int8();
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

// kernel(std::integral_constant<MlpActivation, A>{}) for A = activation: each layer kernel
// is a template on its activation (the epilogue inlined), chosen once per call here.
template <class Kernel>
inline void with_activation(MlpActivation activation, Kernel&& kernel) {
  using A = MlpActivation;
  switch (activation) {
    case A::Relu: kernel(std::integral_constant<A, A::Relu>{}); break;
    case A::Gelu: kernel(std::integral_constant<A, A::Gelu>{}); break;
    case A::Sigmoid: kernel(std::integral_constant<A, A::Sigmoid>{}); break;
    case A::Tanh: kernel(std::integral_constant<A, A::Tanh>{}); break;
    case A::Identity: kernel(std::integral_constant<A, A::Identity>{}); break;
  }
}

// tile(std::integral_constant<int, R>{}, r) over rows [0, rows): tiles of Max rows from
// r = 0, then one tile of the rows left (R < Max): each layer kernel's row tiles keep R
// rows' accumulators in registers, so R is a template argument.
template <int R, class Tile>
inline void last_row_tile(int left, int r, Tile& tile) {
  if constexpr (R >= 1) {
    if (left == R) tile(std::integral_constant<int, R>{}, r);
    else last_row_tile<R - 1>(left, r, tile);
  }
}

template <int Max, class Tile>
inline void over_row_tiles(int rows, Tile&& tile) {
  int r = 0;
  for (; r + Max <= rows; r += Max) tile(std::integral_constant<int, Max>{}, r);
  last_row_tile<Max - 1>(rows - r, r, tile);
}

// float -> bfloat16, round to nearest even (NaN stays NaN).
inline uint16_t to_bfloat16(float x) {
  uint32_t bits;
  __builtin_memcpy(&bits, &x, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// One row of MlpQuantizeFunction's rule, scalar: the generic kernel, the vector kernels'
// tails and the packing of the weights (whose rows are finite) all use it.
inline int16_t to_int8(float x, float inverse) {
  const float v = std::nearbyint(x * inverse);  // the default rounding: to nearest even
  return static_cast<int16_t>(v > 127.0f ? 127.0f : (v < -127.0f ? -127.0f : v));
}

// m = max |x[k]|, with `finite` false if any x[k] is NaN or inf.
inline float row_magnitude(const float* x, int K, bool& finite) {
  float m = 0.0f;
  finite = true;
  for (int k = 0; k < K; ++k) {
    finite &= std::isfinite(x[k]);
    m = std::fabs(x[k]) > m ? std::fabs(x[k]) : m;
  }
  return m;
}

// The row's scale from its magnitude; fills q (K values, and q[K] when K is odd) with zeros
// and returns false when the row quantizes to zeros.
inline bool int8_scale(float m, bool finite, int K, int16_t* q, float& scale) {
  if (finite && m >= kInt8ZeroRow) {
    scale = m / 127.0f;
    return true;
  }
  scale = finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
  for (int k = 0; k < K + (K & 1); ++k) q[k] = 0;
  return false;
}

inline void quantize_int8_row(const float* x, int K, int16_t* q, float& scale) {
  bool finite;
  const float m = row_magnitude(x, K, finite);
  if (!int8_scale(m, finite, K, q, scale)) return;
  const float inverse = 127.0f / m;
  for (int k = 0; k < K; ++k) q[k] = to_int8(x[k], inverse);
  if (K & 1) q[K] = 0;
}

inline float from_bfloat16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float x;
  __builtin_memcpy(&x, &bits, 4);
  return x;
}

}  // namespace kernels
}  // namespace recfuse
