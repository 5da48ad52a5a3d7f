// On processors without x86 SIMD levels, the avx2 and avx512 tables are never selected
// (cpu_supports returns false); these definitions only satisfy the linker.
#include "als_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
const AlsRowKernels<float>& als_kernels_float() { return generic::als_kernels_float(); }
const AlsRowKernels<double>& als_kernels_double() { return generic::als_kernels_double(); }
}  // namespace avx2
namespace avx512 {
const AlsRowKernels<float>& als_kernels_float() { return generic::als_kernels_float(); }
const AlsRowKernels<double>& als_kernels_double() { return generic::als_kernels_double(); }
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
