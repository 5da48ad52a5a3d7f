// Whole-array checks for the Python boundary (recfuse._validation): one pass over the data,
// where NumPy's ids.min() then ids.max() read the ids twice. (The float check, which wants
// the SIMD level, is recfuse::mlp_all_finite.)
#pragma once
#include <cstdint>

namespace recfuse {

// The smallest and largest of ids[0..n), n >= 1.
inline void id_bounds(const int64_t* ids, int64_t n, int64_t* low, int64_t* high) {
  int64_t lo = ids[0], hi = ids[0];
  for (int64_t i = 1; i < n; ++i) {
    lo = ids[i] < lo ? ids[i] : lo;
    hi = ids[i] > hi ? ids[i] : hi;
  }
  *low = lo;
  *high = hi;
}

}  // namespace recfuse
