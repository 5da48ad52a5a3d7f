// MLP dense-layer kernel for the generic SIMD level (compiler flags set per file in CMakeLists.txt).
#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 16

namespace recfuse {
namespace kernels {
namespace generic {
#include "mlp_kernels_impl.inc"

// The int8 kernel in scalar code (see mlp_kernels.hpp for the contract).
namespace {

template <MlpActivation A>
void layer_int8(const MlpLayerArgs& g) {
  const int pairs = (g.K + 1) / 2;
  alignas(64) float z[kMlpPanel];
  for (int r = 0; r < g.rows; ++r) {
    const int16_t* a = static_cast<const int16_t*>(g.A) + static_cast<int64_t>(r) * g.lda;
    for (int p = 0; p < g.panels; ++p) {
      const int16_t* panel = static_cast<const int16_t*>(g.packed) + p * g.panel_stride;
      int32_t acc[kMlpPanel] = {};
      for (int kp = 0; kp < pairs; ++kp) {
        const int32_t a0 = a[2 * kp], a1 = a[2 * kp + 1];
        const int16_t* w = panel + static_cast<int64_t>(kp) * 2 * kMlpPanel;
        for (int j = 0; j < kMlpPanel; ++j) acc[j] += a0 * w[2 * j] + a1 * w[2 * j + 1];
      }
      const int col = p * kMlpPanel;
      for (int j = 0; j < kMlpPanel; ++j)
        z[j] = static_cast<float>(acc[j]) * (g.a_scale[r] * g.w_scale[col + j]);
      const float* add1 = g.add1 != nullptr ? g.add1[r] : nullptr;
      float* c = static_cast<float*>(g.C) + static_cast<int64_t>(r) * g.ldc + col;
      for (int j = 0; j < kMlpPanel; j += kChunk)
        finish<A>(load(z + j), load(z + j + kLanes), g.add0[r] + col + j,
                  add1 != nullptr ? add1 + col + j : nullptr, c + j);
    }
  }
}

void layer_int8_any(const MlpLayerArgs& g) {
  with_activation(g.activation, [&](auto a) { layer_int8<decltype(a)::value>(g); });
}

void quantize_rows(const float* x, int ldx, int rows, int K, int16_t* q, int ldq, float* scale) {
  for (int r = 0; r < rows; ++r)
    quantize_int8_row(x + static_cast<int64_t>(r) * ldx, K, q + static_cast<int64_t>(r) * ldq,
                      scale[r]);
}

}  // namespace

MlpLayerFunction mlp_layer_int8() { return &layer_int8_any; }
MlpQuantizeFunction mlp_quantize_int8() { return &quantize_rows; }

}  // namespace generic
}  // namespace kernels
}  // namespace recfuse
