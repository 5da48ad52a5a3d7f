// MLP dense-layer kernel for the avx512 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 64

namespace recfuse {
namespace kernels {
namespace avx512 {
#include "mlp_kernels_impl.inc"

// The avx2 int8 kernel (AVX-512 processors run AVX2 code). Not yet written for AVX-512
// (vpmaddwd on 512 bits, or vpdpwssd with AVX512-VNNI): no such processor to test it on.
MlpLayerFunction mlp_layer_int8() { return avx2::mlp_layer_int8(); }
MlpQuantizeFunction mlp_quantize_int8() { return avx2::mlp_quantize_int8(); }
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
