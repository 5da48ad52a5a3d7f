// ALS row kernels for the avx512 SIMD level (compiler flags set per file in CMakeLists.txt).
#include "als_kernels.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

namespace recfuse {
namespace kernels {
namespace avx512 {
#include "als_kernels_impl.inc"
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
