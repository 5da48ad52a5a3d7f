// Exact top-k search over packed item panels (see recfuse/topk.hpp).
//
// Threads split the panels; each keeps, per query, a buffer of candidates cut to its k best
// whenever it fills (see Selection), visiting items in ascending id order so that an item
// tying the current k-th score never displaces it (ties go to the smaller id). The score
// kernel compares a whole panel with each query's k-th score at once, so most items cost
// one vector compare;
// only the survivors are checked against the mask and the query's sorted exclusions (one
// forward-moving position per query). Queries are processed in chunks that bound the
// per-thread buffers; at the end of a chunk the threads' buffers are merged per query.
#include "recfuse/topk.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>
#include <stdexcept>
#include <vector>

#include "topk_kernels.hpp"

namespace recfuse {

namespace {

template <class T>
const kernels::TopkKernels<T>& topk_kernels() {
  const SimdLevel level = simd_level();
  if constexpr (sizeof(T) == 4) {
    if (level == SimdLevel::Avx512) return kernels::avx512::topk_kernels_float();
    if (level == SimdLevel::Avx2) return kernels::avx2::topk_kernels_float();
    return kernels::generic::topk_kernels_float();
  } else {
    if (level == SimdLevel::Avx512) return kernels::avx512::topk_kernels_double();
    if (level == SimdLevel::Avx2) return kernels::avx2::topk_kernels_double();
    return kernels::generic::topk_kernels_double();
  }
}

template <class T>
T* aligned_array(int64_t count) {
  const size_t bytes = ((static_cast<size_t>(count) * sizeof(T) + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, bytes > 0 ? bytes : 64);
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<T*>(p);
}

int resolve_threads(int num_threads) {
  return num_threads > 0 ? num_threads : omp_get_max_threads();
}

// (s, a) ranks below (t, b): lower score, or the same score and a larger id.
template <class T>
inline bool worse(T s, int32_t a, T t, int32_t b) {
  return s < t || (s == t && a > b);
}

// (s, a) ranks above (t, b): higher score, or the same score and a smaller id.
template <class T>
inline bool better(const std::pair<T, int32_t>& x, const std::pair<T, int32_t>& y) {
  return worse(y.first, y.second, x.first, x.second);
}

// One thread's candidates per query of a chunk: a buffer of 2k (score, id) that, when full,
// is cut to its k best (nth_element), whose k-th score becomes the threshold an item must
// beat. Amortised O(1) per candidate for any k; candidates arrive in ascending id order, so
// an item that ties the threshold ranks below the k-th and is rightly skipped.
template <class T>
struct Selection {
  using Candidate = std::pair<T, int32_t>;
  int64_t k = 0, capacity = 0;
  std::vector<Candidate> buffer;  // rows x capacity
  std::vector<int64_t> count;     // per row
  std::vector<T> threshold;       // per row: the k-th best score after the last cut, or -inf
  std::vector<int64_t> next_excluded;  // per row: position in the query's exclusions
  std::unique_ptr<T, void (*)(void*)> tile{nullptr, std::free};  // max_rows x kPanel, aligned
  std::vector<uint32_t> bits;                                    // max_rows

  // Allocates (outside any parallel region: allocation may throw) and clears the buffers.
  void reset(int64_t rows, int64_t k_, int max_rows) {
    k = k_;
    capacity = 2 * k_;
    buffer.resize(static_cast<size_t>(rows * capacity));
    count.assign(rows, 0);
    threshold.assign(rows, -std::numeric_limits<T>::infinity());
    next_excluded.assign(rows, 0);
    bits.resize(max_rows);
    if (!tile) tile.reset(aligned_array<T>(static_cast<int64_t>(max_rows) * TopkItems<T>::kPanel));
  }

  Candidate* row(int64_t r) { return buffer.data() + r * capacity; }
  const Candidate* row(int64_t r) const { return buffer.data() + r * capacity; }

  // Adds item j with score s (> threshold[r]) to row r.
  void offer(int64_t r, T s, int32_t j) {
    Candidate* c = row(r);
    c[count[r]++] = Candidate(s, j);
    if (count[r] == capacity) {
      std::nth_element(c, c + (k - 1), c + capacity, better<T>);
      count[r] = k;
      threshold[r] = c[k - 1].first;
    }
  }
};

// Scans panels [first, last) for the queries [q0, q0 + rows) into `sel`.
template <class T>
void scan_panels(const TopkItems<T>& items, const kernels::TopkKernels<T>& kern, const T* Q,
                 int64_t q0, int64_t rows, const TopkFilters& filters, int64_t first,
                 int64_t last, Selection<T>& sel) {
  constexpr int P = TopkItems<T>::kPanel;
  const int d = items.d();
  const int max_rows = kern.max_rows;
  T* tile = sel.tile.get();
  uint32_t* bits = sel.bits.data();
  if (filters.exclude_indptr != nullptr) {
    const int32_t start_id = static_cast<int32_t>(first * P);
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* begin = filters.exclude_indices + filters.exclude_indptr[q0 + r];
      const int32_t* end = filters.exclude_indices + filters.exclude_indptr[q0 + r + 1];
      sel.next_excluded[r] = std::lower_bound(begin, end, start_id) - filters.exclude_indices;
    }
  }
  for (int64_t p = first; p < last; ++p) {
    const T* panel = items.panel(p);
    const T* scale = items.panel_scale(p);
    const T* bias = items.panel_bias(p);
    const int64_t j0 = p * P;
    for (int64_t r0 = 0; r0 < rows; r0 += max_rows) {
      const int count = static_cast<int>(std::min<int64_t>(max_rows, rows - r0));
      kern.score_panel(Q + (q0 + r0) * d, count, d, panel, scale, bias,
                       sel.threshold.data() + r0, tile, bits);
      for (int i = 0; i < count; ++i) {
        uint32_t b = bits[i];
        const int64_t r = r0 + i;
        while (b != 0) {
          const int lane = __builtin_ctz(b);
          b &= b - 1;
          const T s = tile[i * P + lane];
          if (!(s > sel.threshold[r])) continue;  // raised by an earlier lane
          const int32_t j = static_cast<int32_t>(j0 + lane);
          if (filters.mask != nullptr && filters.mask[j] == 0) continue;
          if (filters.exclude_indptr != nullptr) {
            const int64_t end = filters.exclude_indptr[q0 + r + 1];
            int64_t& e = sel.next_excluded[r];
            while (e < end && filters.exclude_indices[e] < j) ++e;
            if (e < end && filters.exclude_indices[e] == j) continue;
          }
          sel.offer(r, s, j);
        }
      }
    }
  }
}

}  // namespace

template <class T>
TopkItems<T>::TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale,
                        int num_threads)
    : n_(n), d_(d), panels_((n + kPanel - 1) / kPanel) {
  if (n < 0 || d <= 0) throw std::invalid_argument("TopkItems: need n >= 0 and d >= 1");
  data_.reset(aligned_array<T>(panels_ * d_ * kPanel));
  scale_.reset(aligned_array<T>(panels_ * kPanel));
  bias_.reset(aligned_array<T>(panels_ * kPanel));
  T* data = data_.get();
  T* sc = scale_.get();
  T* bi = bias_.get();
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < panels_; ++p) {
    T* out = data + p * d * kPanel;
    for (int jj = 0; jj < kPanel; ++jj) {
      const int64_t j = p * kPanel + jj;
      if (j < n) {
        const T* v = items + j * d;
        for (int c = 0; c < d; ++c) out[c * kPanel + jj] = v[c];
        sc[p * kPanel + jj] = scale != nullptr ? scale[j] : T(1);
        bi[p * kPanel + jj] = bias != nullptr ? bias[j] : T(0);
      } else {
        for (int c = 0; c < d; ++c) out[c * kPanel + jj] = T(0);
        sc[p * kPanel + jj] = T(1);
        bi[p * kPanel + jj] = -std::numeric_limits<T>::infinity();
      }
    }
  }
}

template <class T>
void topk_search(const TopkItems<T>& items, const T* queries, int64_t m, int k,
                 const TopkFilters& filters, int num_threads, int64_t* out_ids, T* out_scores) {
  if (k <= 0) throw std::invalid_argument("topk_search: k must be >= 1");
  const auto& kern = topk_kernels<T>();
  const int k_out = k;  // rows are written k wide; at most n entries are ever selected
  k = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(k, items.n())));
  const int64_t panels = items.panels();
  // Enough panels per thread that splitting pays; at least one thread.
  constexpr int64_t kMinPanelsPerThread = 8;
  const int threads = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(resolve_threads(num_threads), panels / kMinPanelsPerThread)));
  // Queries per chunk: the threads' buffers stay within about 64 MiB together.
  const int64_t row_bytes = 2LL * k * static_cast<int64_t>(sizeof(std::pair<T, int32_t>));
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(4096, (64LL << 20) / (row_bytes * threads)));
  std::vector<Selection<T>> selections(threads);
  // Reserved here: nothing allocates inside the parallel regions (an exception there would
  // end the process).
  std::vector<std::vector<std::pair<T, int32_t>>> pools(threads);
  for (auto& pool : pools) pool.reserve(static_cast<size_t>(2 * k) * threads);

  for (int64_t q0 = 0; q0 < m; q0 += chunk) {
    const int64_t rows = std::min(chunk, m - q0);
    for (auto& sel : selections) sel.reset(rows, k, kern.max_rows);
    // A loop rather than omp_get_thread_num(): every range is scanned even if OpenMP gives
    // fewer threads than asked for.
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; ++t) {
      const int64_t first = panels * t / threads, last = panels * (t + 1) / threads;
      scan_panels(items, kern, queries, q0, rows, filters, first, last, selections[t]);
    }
    // Merge: each query's candidates from every thread, best first, ties by smaller id.
#pragma omp parallel num_threads(threads)
    {
      auto& pool = pools[omp_get_thread_num()];
#pragma omp for schedule(static)
      for (int64_t r = 0; r < rows; ++r) {
        pool.clear();
        for (const auto& sel : selections)
          pool.insert(pool.end(), sel.row(r), sel.row(r) + sel.count[r]);
        const size_t take = std::min<size_t>(pool.size(), static_cast<size_t>(k));
        std::partial_sort(pool.begin(), pool.begin() + take, pool.end(), better<T>);
        int64_t* ids = out_ids + (q0 + r) * k_out;
        T* scores = out_scores + (q0 + r) * k_out;
        for (size_t e = 0; e < take; ++e) {
          ids[e] = pool[e].second;
          scores[e] = pool[e].first;
        }
        for (size_t e = take; e < static_cast<size_t>(k_out); ++e) {
          ids[e] = -1;
          scores[e] = -std::numeric_limits<T>::infinity();
        }
      }
    }
  }
}

template <class T>
void TopkItems<T>::search(const T* queries, int64_t m, int k, const TopkFilters& filters,
                          int num_threads, int64_t* out_ids, T* out_scores) const {
  topk_search(*this, queries, m, k, filters, num_threads, out_ids, out_scores);
}

template class TopkItems<float>;
template class TopkItems<double>;
template void topk_search<float>(const TopkItems<float>&, const float*, int64_t, int,
                                 const TopkFilters&, int, int64_t*, float*);
template void topk_search<double>(const TopkItems<double>&, const double*, int64_t, int,
                                  const TopkFilters&, int, int64_t*, double*);

}  // namespace recfuse
