// The normal_rows kernel (recfuse/random.hpp), compiled once per SIMD level like the other
// kernel families, with -ffp-contract=off so that every level gives the same bits.
#pragma once
#include <cstdint>

namespace recfuse {
namespace kernels {

#define RECFUSE_DECLARE_RANDOM_LEVEL(ns)                                                    \
  namespace ns {                                                                            \
  void normal_rows_float(uint64_t seed, const int64_t* source, int64_t rows, int k,         \
                         int64_t ld, float mean, float std, float* out, int num_threads);   \
  void normal_rows_double(uint64_t seed, const int64_t* source, int64_t rows, int k,        \
                          int64_t ld, double mean, double std, double* out,                 \
                          int num_threads);                                                 \
  }
RECFUSE_DECLARE_RANDOM_LEVEL(generic)
RECFUSE_DECLARE_RANDOM_LEVEL(avx2)
RECFUSE_DECLARE_RANDOM_LEVEL(avx512)
#undef RECFUSE_DECLARE_RANDOM_LEVEL

}  // namespace kernels
}  // namespace recfuse
