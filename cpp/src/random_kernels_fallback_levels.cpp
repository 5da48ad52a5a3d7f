// On processors without x86 SIMD levels, the avx2 and avx512 kernels are never selected
// (cpu_supports returns false); these definitions only satisfy the linker.
#include "random_kernels.hpp"

namespace recfuse {
namespace kernels {
#define RECFUSE_RANDOM_FALLBACK(ns)                                                        \
  namespace ns {                                                                           \
  void normal_rows_float(uint64_t seed, const int64_t* source, int64_t rows, int k,        \
                         int64_t ld, float mean, float std, float* out, int num_threads) { \
    generic::normal_rows_float(seed, source, rows, k, ld, mean, std, out, num_threads);    \
  }                                                                                        \
  void normal_rows_double(uint64_t seed, const int64_t* source, int64_t rows, int k,       \
                          int64_t ld, double mean, double std, double* out,                \
                          int num_threads) {                                               \
    generic::normal_rows_double(seed, source, rows, k, ld, mean, std, out, num_threads);   \
  }                                                                                        \
  }
RECFUSE_RANDOM_FALLBACK(avx2)
RECFUSE_RANDOM_FALLBACK(avx512)
#undef RECFUSE_RANDOM_FALLBACK
}  // namespace kernels
}  // namespace recfuse
