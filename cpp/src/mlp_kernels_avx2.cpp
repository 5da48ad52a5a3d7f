// MLP dense-layer kernel for the avx2 SIMD level (compiler flags set per file in CMakeLists.txt).
#include <immintrin.h>

#include <cstring>

#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 32

namespace recfuse {
namespace kernels {
namespace avx2 {
#include "mlp_kernels_impl.inc"

// The int8 kernel (see mlp_kernels.hpp for the contract). vpmaddwd multiplies 16 pairs of
// 16-bit values and adds each pair: the multiply-adds of two float32 FMAs in one instruction
// (as fast as float32 where it issues half as often as FMAs, as on Zen 3), and int8 values in
// 16 bits neither overflow nor saturate (|a·w + a'·w'| <= 2 · 127²). Tiles of
// 6 rows x 16 columns: 12 int32 accumulators, two weight vectors and the broadcast pair
// fill AVX2's 16 registers, as in the float32 kernel.
namespace {

constexpr int kInt8Rows = 6;

template <MlpActivation A, int R>
void tile_int8(const MlpLayerArgs& g, int r0, const int16_t* panel, int col) {
  const int16_t* a = static_cast<const int16_t*>(g.A) + static_cast<int64_t>(r0) * g.lda;
  const int lda = g.lda;
  __m256i acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  const int pairs = (g.K + 1) / 2;
  const int16_t* p = panel + 2 * (col % kMlpPanel);  // column pairs of this chunk
  for (int kp = 0; kp < pairs; ++kp, p += 2 * kMlpPanel) {
    const __m256i w0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    const __m256i w1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 16));
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      int32_t pair;
      std::memcpy(&pair, a + r * lda + 2 * kp, 4);
      const __m256i x = _mm256_set1_epi32(pair);
      acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(x, w0));
      acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(x, w1));
    }
  }
  const V s0 = load(g.w_scale + col), s1 = load(g.w_scale + col + kLanes);
  float* c = static_cast<float*>(g.C);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    const V row = splat(g.a_scale[r0 + r]);
    const V x0 = (V)_mm256_cvtepi32_ps(acc[r][0]) * (row * s0);
    const V x1 = (V)_mm256_cvtepi32_ps(acc[r][1]) * (row * s1);
    const float* add1 = g.add1 != nullptr ? g.add1[r0 + r] : nullptr;
    finish<A>(x0, x1, g.add0[r0 + r] + col, add1 != nullptr ? add1 + col : nullptr,
              c + static_cast<int64_t>(r0 + r) * g.ldc + col);
  }
}

template <MlpActivation A, int R>
void row_tile_int8(const MlpLayerArgs& g, int r) {
  const int16_t* packed = static_cast<const int16_t*>(g.packed);
  for (int p = 0; p < g.panels; ++p)
    for (int col = p * kMlpPanel; col < (p + 1) * kMlpPanel; col += kChunk)
      tile_int8<A, R>(g, r, packed + p * g.panel_stride, col);
}

template <MlpActivation A>
void layer_int8(const MlpLayerArgs& g) {
  over_row_tiles<kInt8Rows>(g.rows,
                    [&](auto R, int r) { row_tile_int8<A, decltype(R)::value>(g, r); });
}

void layer_int8_any(const MlpLayerArgs& g) {
  with_activation(g.activation, [&](auto a) { layer_int8<decltype(a)::value>(g); });
}

// Eight values of a row: x · inverse rounded to nearest even (cvtps's default mode) and
// clamped to [-127, 127], as to_int8.
inline __m256i to_int8_vector(const float* x, __m256 inverse) {
  const __m256i q = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x), inverse));
  return _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
}

void quantize_rows(const float* x, int ldx, int rows, int K, int16_t* q, int ldq, float* scale) {
  const __m256 magnitude_bits = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256i exponent = _mm256_set1_epi32(0x7f800000);
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<int64_t>(r) * ldx;
    int16_t* out = q + static_cast<int64_t>(r) * ldq;
    // max |x| and whether any exponent is all ones (NaN or inf), 8 lanes at a time
    __m256 most = _mm256_setzero_ps();
    __m256i bad = _mm256_setzero_si256();
    int k = 0;
    for (; k + 8 <= K; k += 8) {
      const __m256 v = _mm256_and_ps(_mm256_loadu_ps(row + k), magnitude_bits);
      bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(
                                     _mm256_and_si256(_mm256_castps_si256(v), exponent), exponent));
      most = _mm256_max_ps(most, v);  // finite lanes only matter: a bad row is zeroed below
    }
    bool finite;
    float m = row_magnitude(row + k, K - k, finite);
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, most);
    for (float lane : lanes) m = lane > m ? lane : m;
    finite &= _mm256_testz_si256(bad, bad) != 0;
    if (!int8_scale(m, finite, K, out, scale[r])) continue;
    const float inverse = 127.0f / m;
    const __m256 inv = _mm256_set1_ps(inverse);
    k = 0;
    for (; k + 16 <= K; k += 16) {
      // packs interleaves the 128-bit halves: [a0-3 b0-3 a4-7 b4-7]; the permute restores order
      const __m256i packed = _mm256_packs_epi32(to_int8_vector(row + k, inv),
                                                to_int8_vector(row + k + 8, inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + k),
                          _mm256_permute4x64_epi64(packed, 0xD8));
    }
    for (; k < K; ++k) out[k] = to_int8(row[k], inverse);
    if (K & 1) out[K] = 0;
  }
}

}  // namespace

MlpLayerFunction mlp_layer_int8() { return &layer_int8_any; }
MlpQuantizeFunction mlp_quantize_int8() { return &quantize_rows; }

}  // namespace avx2
}  // namespace kernels
}  // namespace recfuse
