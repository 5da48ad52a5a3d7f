// The bfloat16-storage kernel on AVX512-BF16: VDPBF16PS adds, in each float lane, the
// products of one pair of bfloat16 query values and one item's pair of bfloat16 values (the
// blocks' pair-interleaved layout), twice the multiply-adds per instruction of a float FMA.
// Compiled with -mavx512bf16 for this file only; chosen at run time (topk.cpp) when the CPU
// has avx512_bf16 and the SIMD level is avx512.
#include <immintrin.h>

#include "recfuse/topk.hpp"
#include "topk_kernels.hpp"

#define RECFUSE_TOPK_VECTOR_BYTES 64
#define RECFUSE_TOPK_HELPERS_ONLY

namespace recfuse {
namespace kernels {
namespace avx512bf16 {
#include "topk_kernels_impl.inc"

namespace {

// R queries (each (d + 1) / 2 words of bfloat16 pairs) against one block: 2R accumulators
// of 16 items each, one VDPBF16PS per accumulator and pair of dimensions.
template <int R>
void score_rows_dot(const uint32_t* __restrict Q, int d, const uint16_t* __restrict block,
                    const float* __restrict qa, const float* __restrict qb,
                    const float* __restrict thr, float* __restrict tile,
                    uint32_t* __restrict bits) {
  using V = Simd<float>::V;
  const int pairs = (d + 1) / 2;
  __m512 acc[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  const uint16_t* p = block;
  for (int t = 0; t < pairs; ++t, p += 2 * kTopkPanelBytes / 4) {
    const __m512bh items0 = (__m512bh)_mm512_load_si512(p);
    const __m512bh items1 = (__m512bh)_mm512_load_si512(p + kTopkPanelBytes / 4);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512bh query = (__m512bh)_mm512_set1_epi32(static_cast<int>(Q[r * pairs + t]));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], query, items0);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], query, items1);
    }
  }
  V sums[R][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    sums[r][0] = (V)acc[r][0];
    sums[r][1] = (V)acc[r][1];
    bits[r] = 0;
  }
  bf16_finish<R, 2>(sums, 0, block, d, qa, qb, thr, tile, bits);
}

constexpr int kDotRows = 12;  // 24 accumulators, 2 item vectors and a query pair: 27 zmm

void score_panel_dot(const void* Q, int rows, int d, const uint16_t* block, const float* qa,
                     const float* qb, const float* thr, float* tile, uint32_t* bits) {
  with_rows<kDotRows>(rows, [&](auto R) {
    score_rows_dot<decltype(R)::value>(static_cast<const uint32_t*>(Q), d, block, qa, qb, thr,
                                       tile, bits);
  });
}

}  // namespace

const TopkBf16Kernel& topk_bf16_kernel() {
  static const TopkBf16Kernel kernel{&score_panel_dot, kDotRows, true};
  return kernel;
}

}  // namespace avx512bf16
}  // namespace kernels
}  // namespace recfuse
