// On processors without x86 SIMD levels, the avx2, avx512 and avx512bf16 tables are never
// selected (cpu_supports returns false); these definitions only satisfy the linker.
#include "topk_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
const TopkKernels<float>& topk_kernels_float() { return generic::topk_kernels_float(); }
const TopkKernels<double>& topk_kernels_double() { return generic::topk_kernels_double(); }
const TopkBf16Kernel& topk_bf16_kernel() { return generic::topk_bf16_kernel(); }
}  // namespace avx2
namespace avx512 {
const TopkKernels<float>& topk_kernels_float() { return generic::topk_kernels_float(); }
const TopkKernels<double>& topk_kernels_double() { return generic::topk_kernels_double(); }
const TopkBf16Kernel& topk_bf16_kernel() { return generic::topk_bf16_kernel(); }
}  // namespace avx512
namespace avx512bf16 {
const TopkBf16Kernel& topk_bf16_kernel() { return generic::topk_bf16_kernel(); }
}  // namespace avx512bf16
}  // namespace kernels
}  // namespace recfuse
