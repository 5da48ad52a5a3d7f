// Top-k score kernels for the generic SIMD level (compiler flags set per file in CMakeLists.txt).
#include "topk_kernels.hpp"

#include "recfuse/topk.hpp"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif

#define RECFUSE_TOPK_VECTOR_BYTES 16

namespace recfuse {
namespace kernels {
namespace generic {
#include "topk_kernels_impl.inc"
}  // namespace generic
}  // namespace kernels
}  // namespace recfuse
