// The bfloat16 dense-layer kernel on AVX512-BF16 (vdpbf16ps: each float32 lane adds the
// products of one pair of bfloat16 inputs and one pair of weights). Compiled with
// -mavx512bf16 for this file only; chosen at run time when the CPU has avx512_bf16.
#include <immintrin.h>

#include <cstring>

#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 64

namespace recfuse {
namespace kernels {
namespace avx512bf16 {
#include "mlp_kernels_impl.inc"

namespace {

constexpr int kBf16Rows = 8;

// The epilogue of one row's 32 columns: activate, store as float or bfloat16 (rounded to
// nearest even).
template <MlpActivation A>
inline void finish_row(const MlpLayerArgs& g, int row, int col, V x0, V x1) {
  x0 = activate<A>(x0);
  x1 = activate<A>(x1);
  if (g.c_bf16) {
    uint16_t* c = static_cast<uint16_t*>(g.C) + static_cast<int64_t>(row) * g.ldc + col;
    const __m512bh packed = _mm512_cvtne2ps_pbh((__m512)x1, (__m512)x0);
    _mm512_storeu_si512(c, (__m512i)packed);
  } else {
    float* c = static_cast<float*>(g.C) + static_cast<int64_t>(row) * g.ldc + col;
    store(c, x0);
    store(c + kLanes, x1);
  }
}

template <MlpActivation A, int R>
void tile_bf16(const MlpLayerArgs& g, int r0, const uint16_t* panel, int col) {
  const uint16_t* a = static_cast<const uint16_t*>(g.A) + static_cast<int64_t>(r0) * g.lda;
  const int lda = g.lda;
  // The accumulators start from the rows' added terms (bias, user and item parts), so
  // their loads (a gathered item row is often not in L1) are issued before the products,
  // not after them (rank's 1 x 1,000 first pass: 2-4% less wall time, within noise in CPU
  // time).
  __m512 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const float* add0 = g.add0[r0 + r] + col;
    V x0 = load(add0), x1 = load(add0 + kLanes);
    const float* add1 = g.add1 != nullptr ? g.add1[r0 + r] : nullptr;
    if (add1 != nullptr) {
      x0 += load(add1 + col);
      x1 += load(add1 + col + kLanes);
    }
    acc[r][0] = (__m512)x0;
    acc[r][1] = (__m512)x1;
  }
  const int pairs = (g.K + 1) / 2;
  const uint16_t* p = panel;
  for (int kp = 0; kp < pairs; ++kp, p += 2 * kMlpPanel) {
    const __m512bh p0 = (__m512bh)_mm512_loadu_si512(p);
    const __m512bh p1 = (__m512bh)_mm512_loadu_si512(p + kMlpPanel);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, 4);
      const __m512bh x = (__m512bh)_mm512_set1_epi32(pair);
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], x, p0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], x, p1);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) finish_row<A>(g, r0 + r, col, (V)acc[r][0], (V)acc[r][1]);
}

// Every panel of rows [r, r + R): row tiles outside, as in the float32 kernel.
template <MlpActivation A, int R>
void row_tile_bf16(const MlpLayerArgs& g, int r) {
  const uint16_t* packed = static_cast<const uint16_t*>(g.packed);
  for (int p = 0; p < g.panels; ++p)
    tile_bf16<A, R>(g, r, packed + p * g.panel_stride, p * kMlpPanel);
}

template <MlpActivation A>
void layer_bf16(const MlpLayerArgs& g) {
  over_row_tiles<kBf16Rows>(g.rows,
                    [&](auto R, int r) { row_tile_bf16<A, decltype(R)::value>(g, r); });
}

void layer_avx512bf16(const MlpLayerArgs& g) {
  with_activation(g.activation, [&](auto a) { layer_bf16<decltype(a)::value>(g); });
}

}  // namespace
}  // namespace avx512bf16

MlpLayerFunction mlp_layer_avx512bf16() { return &avx512bf16::layer_avx512bf16; }

void mlp_rows_to_bfloat16(const float* src, uint16_t* dst, int64_t count) {
  for (int64_t i = 0; i < count; i += 32) {
    const __m512bh packed = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    _mm512_storeu_si512(dst + i, (__m512i)packed);
  }
}

}  // namespace kernels
}  // namespace recfuse
