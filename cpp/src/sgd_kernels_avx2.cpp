// SGD kernels for the avx2 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "sgd_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
#include "sgd_kernels_impl.inc"
}  // namespace avx2
}  // namespace kernels
}  // namespace recfuse
