// Counter-based normal draws for starting factors.
//
// normal_at(seed, n), the n-th standard normal draw of a seed, is a pure function of the two
// (no generator state), so a table can be filled in any row order and any number of threads,
// straight into the layout a fit trains on, and every SIMD level gives the same bits (the
// kernels are compiled without contracted multiply-adds). recfuse.reference.normal_draws is
// the same function in NumPy. The definition, all in float32 arithmetic:
//
//   pair p = n / 2; h = splitmix64_draw(seed, p + 1) (below)
//   u1 = (2 * (h >> 41) + 1) * 2^-24                      (23 bits, in (0, 1))
//   quarter q = (h >> 38) & 3; f = (h >> 16) & (2^22 - 1)
//   a = ((2f + 1) - 2^22) * (pi/2 * 2^-23)                (in (-pi/4, pi/4))
//   r = sqrt(-2 ln u1); (c, s) = (cos a, sin a) turned by q quarter turns
//   normal_at(seed, 2p) = r * c, normal_at(seed, 2p + 1) = r * s
//
// with ln by its exponent and atanh series and cos/sin by their Taylor polynomials (errors
// below 1e-7). That is the Box-Muller transform of two uniforms; |draws| stay under 5.8.
#pragma once
#include <cstdint>

namespace recfuse {

// Draw `position` (1, 2, ...) of the splitmix64 stream that starts at state `start`:
// mix(start + position γ), so any draw comes from its position alone. The counter-based
// draws of normal_rows, the SGD block shuffle and BPR's negatives
// (reference.splitmix64_draws; reference._splitmix64 steps the same stream).
inline uint64_t splitmix64_draw(uint64_t start, uint64_t position) {
  uint64_t x = start + position * 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// out (rows x ld, row-major): out[r][c] = mean + std * normal_at(seed, source[r] * k + c) for
// c < k and 0 for k <= c < ld (padding); source == nullptr stands for source[r] = r. The
// draws are float32 (also for T = double). Threads over rows for large tables (num_threads as
// resolve_threads takes it; the same bits for any count).
template <class T>
void normal_rows(uint64_t seed, const int64_t* source, int64_t rows, int k, int64_t ld, T mean,
                 T std, T* out, int num_threads);

}  // namespace recfuse
