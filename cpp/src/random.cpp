// normal_rows (recfuse/random.hpp): the SIMD level's kernel, chosen at run time.
#include "recfuse/random.hpp"

#include <stdexcept>

#include "random_kernels.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {

template <>
void normal_rows<float>(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld,
                        float mean, float std, float* out) {
  if (k < 0 || ld < k) throw std::invalid_argument("normal_rows needs 0 <= k <= ld");
  switch (simd_level()) {
    case SimdLevel::Avx512:
      return kernels::avx512::normal_rows_float(seed, source, rows, k, ld, mean, std, out);
    case SimdLevel::Avx2:
      return kernels::avx2::normal_rows_float(seed, source, rows, k, ld, mean, std, out);
    default: return kernels::generic::normal_rows_float(seed, source, rows, k, ld, mean, std, out);
  }
}

template <>
void normal_rows<double>(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld,
                         double mean, double std, double* out) {
  if (k < 0 || ld < k) throw std::invalid_argument("normal_rows needs 0 <= k <= ld");
  switch (simd_level()) {
    case SimdLevel::Avx512:
      return kernels::avx512::normal_rows_double(seed, source, rows, k, ld, mean, std, out);
    case SimdLevel::Avx2:
      return kernels::avx2::normal_rows_double(seed, source, rows, k, ld, mean, std, out);
    default:
      return kernels::generic::normal_rows_double(seed, source, rows, k, ld, mean, std, out);
  }
}

}  // namespace recfuse
