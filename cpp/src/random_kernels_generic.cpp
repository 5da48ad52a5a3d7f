// Normal draws for the generic SIMD level (compiler flags set per file in CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "random_kernels.hpp"
#include "recfuse/threads.hpp"

namespace recfuse {
namespace kernels {
namespace generic {
#include "random_kernels_impl.inc"
}  // namespace generic
}  // namespace kernels
}  // namespace recfuse
