// MLP dense-layer kernel for the avx2 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 32

namespace recfuse {
namespace kernels {
namespace avx2 {
#include "mlp_kernels_impl.inc"
}  // namespace avx2
}  // namespace kernels
}  // namespace recfuse
