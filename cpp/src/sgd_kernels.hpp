// Per-rating SGD kernels, compiled once per SIMD level (sgd_kernels_<level>.cpp sets the
// compiler flags), like the ALS kernels: plain loops with `omp simd`, no inline library
// templates (a copy compiled with AVX-512 flags could be the one the linker keeps).
#pragma once
#include <cstdint>
#include <cstddef>
#include <limits>
#include <utility>

#include "recfuse/sgd.hpp"

namespace recfuse {
namespace kernels {

// Each function runs the updates of entries [begin, end), in order.
template <class T>
struct SgdKernels {
  void (*svd_range)(const int32_t* users, const int32_t* items, const T* ratings, int64_t begin,
                    int64_t end, T mu, T* bu, T* bi, T* P, T* Q, int k, const SgdRates<T>& rates,
                    bool biased);
  // One SVD++ user pass over entries [begin, end) of user u; cols: N(u); scratch: 2k.
  void (*svdpp_pass)(const int32_t* items, const T* ratings, int64_t begin, int64_t end,
                     int64_t u, T mu, T* bu, T* bi, T* P, T* Q, T* Y, const int32_t* cols,
                     int64_t count, int k, const SgdRates<T>& rates, T* scratch);
  // Entries whose negative is -1 are skipped.
  void (*bpr_range)(const int32_t* users, const int32_t* positives, const int32_t* negatives,
                    int64_t begin, int64_t end, T* P, T* Q, T* b, int k, T lr, T reg);
  // One explicit ALS row (reference.explicit_als_half_sweep) over its n entries (cols, vals);
  // other_bias null: unbiased (own unused). Writes x (k) and *own on success; false when the
  // system is not positive definite. scratch: explicit_als_scratch(k) values.
  bool (*explicit_als_row)(const int32_t* cols, const T* vals, int64_t n, const T* Y,
                           const T* other_bias, T mu, int k, T reg, T reg_bias, T* x, T* own,
                           T* scratch);
};

// Scratch values explicit_als_row needs: the system (d x d), its right-hand side and four
// gathered rows, d = k + 1.
inline int64_t explicit_als_scratch(int k) {
  const int64_t d = k + 1;
  return d * d + 5 * d;
}

#define RECFUSE_DECLARE_SGD_LEVEL(ns)                \
  namespace ns {                                     \
  const SgdKernels<float>& sgd_kernels_float(int k);   \
  const SgdKernels<double>& sgd_kernels_double(int k); \
  }
RECFUSE_DECLARE_SGD_LEVEL(generic)
RECFUSE_DECLARE_SGD_LEVEL(avx2)
RECFUSE_DECLARE_SGD_LEVEL(avx512)
#undef RECFUSE_DECLARE_SGD_LEVEL

}  // namespace kernels
}  // namespace recfuse
