// On processors without x86 SIMD levels, the avx2 and avx512 kernels are never selected
// (cpu_supports returns false) and there are no bfloat16 kernels; these definitions only
// satisfy the linker.
#include "mlp_kernels.hpp"

namespace recfuse {
namespace kernels {
namespace avx2 {
MlpLayerFunction mlp_layer_float32() { return generic::mlp_layer_float32(); }
MlpDotFunction mlp_dot_float32() { return generic::mlp_dot_float32(); }
MlpAllFiniteFunction mlp_all_finite() { return generic::mlp_all_finite(); }
MlpLayerFunction mlp_layer_int8() { return generic::mlp_layer_int8(); }
MlpQuantizeFunction mlp_quantize_int8() { return generic::mlp_quantize_int8(); }
}  // namespace avx2
namespace avx512 {
MlpLayerFunction mlp_layer_float32() { return generic::mlp_layer_float32(); }
MlpDotFunction mlp_dot_float32() { return generic::mlp_dot_float32(); }
MlpAllFiniteFunction mlp_all_finite() { return generic::mlp_all_finite(); }
MlpLayerFunction mlp_layer_int8() { return generic::mlp_layer_int8(); }
MlpQuantizeFunction mlp_quantize_int8() { return generic::mlp_quantize_int8(); }
}  // namespace avx512
MlpLayerFunction mlp_layer_avx512bf16() { return nullptr; }
MlpLayerFunction mlp_layer_amx() { return nullptr; }
bool mlp_request_amx() { return false; }
void mlp_rows_to_bfloat16(const float*, uint16_t*, int64_t) {}
}  // namespace kernels
}  // namespace recfuse
