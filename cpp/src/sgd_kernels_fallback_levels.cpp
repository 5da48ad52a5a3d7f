// On processors without x86 SIMD levels, the avx2 and avx512 tables are never selected
// (cpu_supports returns false); these definitions only satisfy the linker.
#include "sgd_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
const SgdKernels<float>& sgd_kernels_float(int k) { return generic::sgd_kernels_float(k); }
const SgdKernels<double>& sgd_kernels_double(int k) { return generic::sgd_kernels_double(k); }
}  // namespace avx2
namespace avx512 {
const SgdKernels<float>& sgd_kernels_float(int k) { return generic::sgd_kernels_float(k); }
const SgdKernels<double>& sgd_kernels_double(int k) { return generic::sgd_kernels_double(k); }
}  // namespace avx512
}  // namespace kernels
}  // namespace recfuse
