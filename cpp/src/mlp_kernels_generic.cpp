// MLP dense-layer kernel for the generic SIMD level (compiler flags set per file in CMakeLists.txt).
#include "mlp_kernels.hpp"

#define RECFUSE_MLP_VECTOR_BYTES 16

namespace recfuse {
namespace kernels {
namespace generic {
#include "mlp_kernels_impl.inc"
}  // namespace generic
}  // namespace kernels
}  // namespace recfuse
