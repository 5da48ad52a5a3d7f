// SGD kernels for the avx512 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "sgd_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx512 {
#include "sgd_kernels_impl.inc"
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
