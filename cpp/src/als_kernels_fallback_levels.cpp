// On processors without x86 SIMD levels, the avx2 and avx512 tables are never selected
// (cpu_supports returns false); these definitions only satisfy the linker.
#include "als_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
const AlsRowKernels<float>& als_kernels_float(int k) { return generic::als_kernels_float(k); }
const AlsRowKernels<double>& als_kernels_double(int k) { return generic::als_kernels_double(k); }
}  // namespace avx2
namespace avx512 {
const AlsRowKernels<float>& als_kernels_float(int k) { return generic::als_kernels_float(k); }
const AlsRowKernels<double>& als_kernels_double(int k) { return generic::als_kernels_double(k); }
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
