// normal_rows (recfuse/random.hpp): the SIMD level's kernel, chosen at run time.
#include "recfuse/random.hpp"

#include <stdexcept>
#include <type_traits>

#include "random_kernels.hpp"
#include "recfuse/simd.hpp"

namespace recfuse {

template <class T>
void normal_rows(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld, T mean,
                 T std, T* out, int num_threads) {
  if (k < 0 || ld < k) throw std::invalid_argument("normal_rows needs 0 <= k <= ld");
  namespace kn = kernels;
  const auto kernel = [] {
    if constexpr (std::is_same_v<T, float>) {
      return for_level(&kn::generic::normal_rows_float, &kn::avx2::normal_rows_float,
                       &kn::avx512::normal_rows_float);
    } else {
      return for_level(&kn::generic::normal_rows_double, &kn::avx2::normal_rows_double,
                       &kn::avx512::normal_rows_double);
    }
  }();
  kernel(seed, source, rows, k, ld, mean, std, out, num_threads);
}

template void normal_rows<float>(uint64_t, const int64_t*, int64_t, int, int64_t, float, float,
                                 float*, int);
template void normal_rows<double>(uint64_t, const int64_t*, int64_t, int, int64_t, double, double,
                                  double*, int);

}  // namespace recfuse
