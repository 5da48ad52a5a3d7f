// normal_rows (recfuse/random.hpp): the SIMD level's kernel, chosen at run time.
#include "recfuse/random.hpp"

#include <stdexcept>

#include "random_kernels.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {

namespace {

// The kernel of the SIMD level in use, among one per level.
template <class Kernel>
Kernel for_level(Kernel generic, Kernel avx2, Kernel avx512) {
  switch (simd_level()) {
    case SimdLevel::Avx512: return avx512;
    case SimdLevel::Avx2: return avx2;
    default: return generic;
  }
}

void check_width(int k, int64_t ld) {
  if (k < 0 || ld < k) throw std::invalid_argument("normal_rows needs 0 <= k <= ld");
}

}  // namespace

template <>
void normal_rows<float>(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld,
                        float mean, float std, float* out) {
  check_width(k, ld);
  for_level(&kernels::generic::normal_rows_float, &kernels::avx2::normal_rows_float,
            &kernels::avx512::normal_rows_float)(seed, source, rows, k, ld, mean, std, out);
}

template <>
void normal_rows<double>(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld,
                         double mean, double std, double* out) {
  check_width(k, ld);
  for_level(&kernels::generic::normal_rows_double, &kernels::avx2::normal_rows_double,
            &kernels::avx512::normal_rows_double)(seed, source, rows, k, ld, mean, std, out);
}

}  // namespace recfuse
