// Normal draws for the avx512 SIMD level (compiler flags set per file in CMakeLists.txt).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "random_kernels.hpp"
#include "recfuse/threads.hpp"

namespace recfuse {
namespace kernels {
namespace avx512 {
#include "random_kernels_impl.inc"
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
