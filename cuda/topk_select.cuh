// The selection machinery of the exact top-k (topk.cu), shared with the MLP ranking
// (mlp.cu): order-preserving keys and (key, id) candidates, a block-wide exclusive count and
// the bitonic sort of candidates, best first. Device code: include from .cu files only.
#pragma once
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

namespace recfuse {
namespace cuda {

__host__ __device__ inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The smallest power of two >= v, and at least 2.
__host__ __device__ inline int next_pow2(int v) {
  int p = 2;
  while (p < v) p <<= 1;
  return p;
}

// ------------------------------------------------------------------------ keys and candidates
// key(): an unsigned integer whose order is the order of the scores; 0 = does not qualify
// (-inf, NaN, masked, excluded, outside the table). -0.0 is folded into +0.0 so that the two
// zeros tie, as they do in the reference. A candidate is (key, id) ordered by key, then by
// smaller id; the empty candidate is all zeros and is worse than any real one.

template <class T>
struct Sel;

template <>
struct Sel<float> {
  using Key = unsigned int;
  using Cand = unsigned long long;  // key << 32 | ~id: one integer compare
  static __device__ __forceinline__ Key key_of(float x) {
    if (!(x > -INFINITY)) return 0u;
    if (x == 0.0f) x = 0.0f;
    const unsigned int u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
  }
  static __device__ __forceinline__ float value_of(Key key) {
    const unsigned int u = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    return __uint_as_float(u);
  }
  static __device__ __forceinline__ Cand make(Key key, int id) {
    return (static_cast<Cand>(key) << 32) | static_cast<Cand>(~static_cast<unsigned int>(id));
  }
  static __device__ __forceinline__ Key key(Cand c) { return static_cast<Key>(c >> 32); }
  static __device__ __forceinline__ int id(Cand c) {
    return static_cast<int>(~static_cast<unsigned int>(c & 0xffffffffull));
  }
  static __device__ __forceinline__ bool better(Cand a, Cand b) { return a > b; }
  static __device__ __forceinline__ Cand empty() { return 0ull; }
  static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
};

struct Cand64 {
  unsigned long long key;
  unsigned int inv_id;  // ~id: larger for smaller ids
  unsigned int pad;
};

template <>
struct Sel<double> {
  using Key = unsigned long long;
  using Cand = Cand64;
  static __device__ __forceinline__ Key key_of(double x) {
    if (!(x > -static_cast<double>(INFINITY))) return 0ull;
    if (x == 0.0) x = 0.0;
    const unsigned long long u = static_cast<unsigned long long>(__double_as_longlong(x));
    const unsigned long long sign = 0x8000000000000000ull;
    return (u & sign) ? ~u : (u | sign);
  }
  static __device__ __forceinline__ double value_of(Key key) {
    const unsigned long long sign = 0x8000000000000000ull;
    const unsigned long long u = (key & sign) ? (key & ~sign) : ~key;
    return __longlong_as_double(static_cast<long long>(u));
  }
  static __device__ __forceinline__ Cand make(Key key, int id) {
    return Cand64{key, ~static_cast<unsigned int>(id), 0u};
  }
  static __device__ __forceinline__ Key key(const Cand& c) { return c.key; }
  static __device__ __forceinline__ int id(const Cand& c) { return static_cast<int>(~c.inv_id); }
  static __device__ __forceinline__ bool better(const Cand& a, const Cand& b) {
    return a.key > b.key || (a.key == b.key && a.inv_id > b.inv_id);
  }
  static __device__ __forceinline__ Cand empty() { return Cand64{0ull, 0u, 0u}; }
  static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
};

// ------------------------------------------------------------------------ block helpers

// Exclusive prefix count of `flag` over the block (blockDim.x a multiple of 32, <= 1024), in
// thread order; `total` gets the block's count. Every thread must call it.
__device__ __forceinline__ unsigned int block_exclusive_count(bool flag, unsigned int* warp_counts,
                                                              unsigned int& total) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned int ballot = __ballot_sync(0xffffffffu, flag);
  if (lane == 0) warp_counts[warp] = __popc(ballot);
  __syncthreads();
  unsigned int before = 0, sum = 0;
  for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) {
    const unsigned int c = warp_counts[w];
    if (w < warp) before += c;
    sum += c;
  }
  __syncthreads();  // warp_counts is reused by the next call
  total = sum;
  return before + __popc(ballot & ((1u << lane) - 1u));
}

// Sorts a[0, P) (P a power of two) best first. Threads t = 0 .. nt-1 of the group take part;
// sync() must synchronise exactly that group.
template <class T, class Sync>
__device__ __forceinline__ void bitonic_sort_best_first(typename Sel<T>::Cand* a, int P, int t,
                                                        int nt, Sync sync) {
  using Cand = typename Sel<T>::Cand;
  for (int size = 2; size <= P; size <<= 1) {
    for (int stride = size >> 1; stride > 0; stride >>= 1) {
      for (int i = t; i < P / 2; i += nt) {
        const int lo = 2 * i - (i & (stride - 1));
        const int hi = lo + stride;
        // Runs of `size` alternate direction; at size == P every run is best first.
        const bool best_first = (lo & size) == 0;
        const Cand x = a[lo], y = a[hi];
        if (best_first ? Sel<T>::better(y, x) : Sel<T>::better(x, y)) {
          a[lo] = y;
          a[hi] = x;
        }
      }
      sync();
    }
  }
}

struct WarpSync {
  __device__ void operator()() const { __syncwarp(); }
};
struct BlockSync {
  __device__ void operator()() const { __syncthreads(); }
};

}  // namespace cuda
}  // namespace recfuse
