// SGD kernels for the generic SIMD level (compiler flags set per file in CMakeLists.txt).
#include "sgd_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace generic {
#include "sgd_kernels_impl.inc"
}  // namespace generic
}  // namespace kernels
}  // namespace recfuse
