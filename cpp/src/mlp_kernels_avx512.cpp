// MLP dense-layer kernel for the avx512 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 64

namespace recfuse {
namespace kernels {
namespace avx512 {
#include "mlp_kernels_impl.inc"
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
