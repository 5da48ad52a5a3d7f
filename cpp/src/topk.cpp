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
#include <exception>
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

// One thread's candidates per query of a chunk: a buffer that, once it holds 2k, is cut to
// its k best (nth_element) plus, with a slack, every candidate within `slack` of the k-th
// best score; the k-th best minus the slack becomes the threshold an item must beat.
// Amortised O(1) per candidate for any k; candidates arrive in ascending id order, so an
// item that ties the threshold (slack 0) ranks below the k-th and is rightly skipped.
// Buffers may grow inside the parallel scan (see topk_search for how exceptions leave it).
template <class T>
struct Selection {
  using Candidate = std::pair<T, int32_t>;
  int64_t k = 0;
  std::vector<std::vector<Candidate>> rows;  // per row
  std::vector<T> threshold;                  // per row: see above; -inf before the first cut
  std::vector<T> slack;                      // per row: 0 for exact scores
  std::vector<int64_t> limit;                // per row: size at which the buffer is cut
  std::vector<int64_t> next_excluded;        // per row: position in the query's exclusions
  // The score kernel's outputs, written for every panel: each thread's on cache lines of
  // its own (small vectors of two threads would share a line and ping-pong between cores).
  std::unique_ptr<T, void (*)(void*)> tile{nullptr, std::free};  // max_rows x kPanel
  std::unique_ptr<uint32_t, void (*)(void*)> bits{nullptr, std::free};  // max_rows

  // Allocates (outside any parallel region) and clears the buffers.
  void reset(int64_t count, int64_t k_, int max_rows) {
    k = k_;
    rows.resize(count);
    for (auto& row : rows) {
      row.clear();
      row.reserve(static_cast<size_t>(2 * k));
    }
    threshold.assign(count, -std::numeric_limits<T>::infinity());
    slack.assign(count, T(0));
    limit.assign(count, 2 * k);
    next_excluded.assign(count, 0);
    if (!tile) tile.reset(aligned_array<T>(static_cast<int64_t>(max_rows) * TopkItems<T>::kPanel));
    if (!bits) bits.reset(aligned_array<uint32_t>(max_rows));
  }

  // Adds item j with score s (> threshold[r]) to row r.
  void offer(int64_t r, T s, int32_t j) {
    auto& row = rows[r];
    row.emplace_back(s, j);
    if (static_cast<int64_t>(row.size()) < limit[r]) return;
    std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), better<T>);
    const T kth = row[k - 1].first;
    const T floor = slack[r] > 0 ? kth - slack[r] : kth;
    const auto band_end = std::partition(  // the band [kth - slack, kth] stays too
        row.begin() + k, row.end(),
        [floor, &slack = slack[r]](const Candidate& c) { return slack > 0 && !(c.first < floor); });
    row.erase(band_end, row.end());
    threshold[r] = floor;
    // The next cut once as many candidates again have come: amortised O(1) each.
    limit[r] = std::max<int64_t>(2 * k, 2 * static_cast<int64_t>(row.size()));
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
  uint32_t* bits = sel.bits.get();
  if (filters.exclude_indptr != nullptr) {
    const int32_t start_id = static_cast<int32_t>(first * P);
    for (int64_t r = 0; r < rows; ++r) {
      const int32_t* begin = filters.exclude_indices + filters.exclude_indptr[q0 + r];
      const int32_t* end = filters.exclude_indices + filters.exclude_indptr[q0 + r + 1];
      sel.next_excluded[r] = std::lower_bound(begin, end, start_id) - filters.exclude_indices;
    }
  }
  for (int64_t p = first; p < last; ++p) {
    const T* scale = items.panel_scale(p);
    const T* bias = items.panel_bias(p);
    const int64_t j0 = p * P;
    for (int64_t r0 = 0; r0 < rows; r0 += max_rows) {
      const int count = static_cast<int>(std::min<int64_t>(max_rows, rows - r0));
      const T* q = Q + (q0 + r0) * d;
      if (items.bfloat16()) {
        kern.score_panel_bf16(q, count, d, items.panel16(p), scale, bias,
                              sel.threshold.data() + r0, tile, bits);
      } else {
        kern.score_panel(q, count, d, items.panel(p), scale, bias, sel.threshold.data() + r0,
                         tile, bits);
      }
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

// bfloat16 storage: how far a score computed from the stored values can be from the float
// score, relative to |q| |v_j| |scale_j|. Rounding q and v to bfloat16 moves each product
// by at most 2^-8 + 2^-8 + 2^-16 of |q_c v_c|, the float sums add d 2^-24 each (twice),
// and sum |q_c v_c| <= |q| |v| (Cauchy-Schwarz); 1.25 covers the scale and bias roundings.
inline double bfloat16_bound(int d) {
  return 1.25 * (std::ldexp(1.0, -7) + std::ldexp(1.0, -16) + 2.0 * d * std::ldexp(1.0, -24));
}

// The float score of item j for query q, as the contract defines it.
template <class T>
T exact_score(const TopkItems<T>& items, const T* q, int32_t j) {
  constexpr int P = TopkItems<T>::kPanel;
  const int d = items.d();
  const T* v = items.exact_items() + static_cast<int64_t>(j) * d;
  T acc = 0;
  for (int c = 0; c < d; ++c) acc += q[c] * v[c];
  return acc * items.panel_scale(j / P)[j % P] + items.panel_bias(j / P)[j % P];
}

// Writes query r's result from the candidates in `pool` (all threads' survivors).
template <class T>
void finish_row(const TopkItems<T>& items, const T* q, int k, int k_out, T slack,
                std::vector<std::pair<T, int32_t>>& pool, int64_t* ids, T* scores) {
  if (items.bfloat16()) {  // score the survivors exactly; drop what does not qualify
    if (pool.size() > static_cast<size_t>(k)) {  // only the band of the k-th best overall
      std::nth_element(pool.begin(), pool.begin() + (k - 1), pool.end(), better<T>);
      const T floor = pool[k - 1].first - slack;
      pool.erase(std::partition(pool.begin() + k, pool.end(),
                                [floor](const auto& c) { return !(c.first < floor); }),
                 pool.end());
    }
    size_t kept = 0;
    for (auto& c : pool) {
      const T s = exact_score(items, q, c.second);
      if (s > -std::numeric_limits<T>::infinity()) pool[kept++] = {s, c.second};
    }
    pool.resize(kept);
  }
  const size_t take = std::min<size_t>(pool.size(), static_cast<size_t>(k));
  // The best `take` first, then in order: cheaper than partial_sort's heap when `take` is
  // a large share of the pool (k = 200 recalled for a ranker keeps up to 2k).
  if (take > 0 && take < pool.size())
    std::nth_element(pool.begin(), pool.begin() + (take - 1), pool.end(), better<T>);
  std::sort(pool.begin(), pool.begin() + take, better<T>);
  for (size_t e = 0; e < take; ++e) {
    ids[e] = pool[e].second;
    scores[e] = pool[e].first;
  }
  for (size_t e = take; e < static_cast<size_t>(k_out); ++e) {
    ids[e] = -1;
    scores[e] = -std::numeric_limits<T>::infinity();
  }
}

// The bfloat16 nearest to v (ties to even); NaN stays NaN.
inline uint16_t to_bfloat16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (std::isnan(v)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace

template <class T>
TopkItems<T>::TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale,
                        int num_threads, bool bfloat16)
    : n_(n), d_(d), panels_((n + kPanel - 1) / kPanel) {
  if (n < 0 || d <= 0) throw std::invalid_argument("TopkItems: need n >= 0 and d >= 1");
  if (bfloat16 && sizeof(T) != 4)
    throw std::invalid_argument("bfloat16 storage is for float32 items only");
  if (bfloat16) {
    data16_.reset(aligned_array<uint16_t>(panels_ * d_ * kPanel));
    exact_ = items;
  } else {
    data_.reset(aligned_array<T>(panels_ * d_ * kPanel));
  }
  scale_.reset(aligned_array<T>(panels_ * kPanel));
  bias_.reset(aligned_array<T>(panels_ * kPanel));
  T* data = data_.get();
  uint16_t* data16 = data16_.get();
  T* sc = scale_.get();
  T* bi = bias_.get();
  double max_weight = 0;  // max_j |v_j| |scale_j| over items whose scores are numbers
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : max_weight)
  for (int64_t p = 0; p < panels_; ++p) {
    for (int jj = 0; jj < kPanel; ++jj) {
      const int64_t j = p * kPanel + jj;
      const int64_t at = p * d * kPanel + jj;
      const bool real = j < n;
      double norm = 0;
      for (int c = 0; c < d; ++c) {
        const T v = real ? items[j * d + c] : T(0);
        norm += static_cast<double>(v) * v;
        if (bfloat16) {
          data16[at + c * kPanel] = to_bfloat16(static_cast<float>(v));
        } else {
          data[at + c * kPanel] = v;
        }
      }
      sc[p * kPanel + jj] = real && scale != nullptr ? scale[j] : T(1);
      bi[p * kPanel + jj] = !real ? -std::numeric_limits<T>::infinity()
                                  : bias != nullptr ? bias[j] : T(0);
      const double weight = std::sqrt(norm) * std::fabs(static_cast<double>(sc[p * kPanel + jj]));
      if (real && std::isfinite(weight)) max_weight = std::max(max_weight, weight);
    }
  }
  max_weight_ = max_weight;
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
  // Queries per chunk: the threads' buffers (2k candidates per query, more only with a
  // bfloat16 band) stay within about 64 MiB together.
  const int64_t row_bytes = 2LL * k * static_cast<int64_t>(sizeof(std::pair<T, int32_t>));
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(4096, (64LL << 20) / (row_bytes * threads)));
  std::vector<Selection<T>> selections(threads);
  std::vector<std::vector<std::pair<T, int32_t>>> pools(threads);
  std::vector<std::exception_ptr> errors(threads);
  const double bound = items.bfloat16() ? bfloat16_bound(items.d()) * items.max_weight() : 0.0;
  const int d = items.d();

  for (int64_t q0 = 0; q0 < m; q0 += chunk) {
    const int64_t rows = std::min(chunk, m - q0);
    for (auto& sel : selections) {
      sel.reset(rows, k, kern.max_rows);
      if (bound > 0) {
        for (int64_t r = 0; r < rows; ++r) {
          const T* q = queries + (q0 + r) * d;
          double norm = 0;
          for (int c = 0; c < d; ++c) norm += static_cast<double>(q[c]) * q[c];
          sel.slack[r] = static_cast<T>(2 * bound * std::sqrt(norm));  // both scores' errors
        }
      }
    }
    // A loop rather than omp_get_thread_num(): every range is scanned even if OpenMP gives
    // fewer threads than asked for. Exceptions must not leave a parallel region.
#pragma omp parallel for num_threads(threads) schedule(static, 1)
    for (int t = 0; t < threads; ++t) {
      const int64_t first = panels * t / threads, last = panels * (t + 1) / threads;
      try {
        scan_panels(items, kern, queries, q0, rows, filters, first, last, selections[t]);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    }
    for (auto& error : errors)
      if (error) std::rethrow_exception(error);
    // Merge: each query's candidates from every thread, best first, ties by smaller id.
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int t = omp_get_thread_num();
      try {
        auto& pool = pools[t];
        pool.clear();
        for (const auto& sel : selections) pool.insert(pool.end(), sel.rows[r].begin(), sel.rows[r].end());
        finish_row(items, queries + (q0 + r) * d, k, k_out, selections[0].slack[r], pool,
                   out_ids + (q0 + r) * k_out, out_scores + (q0 + r) * k_out);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    }
    for (auto& error : errors)
      if (error) std::rethrow_exception(error);
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
