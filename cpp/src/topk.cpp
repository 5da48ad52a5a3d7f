// Exact top-k search over packed item panels (see recfuse/topk.hpp).
//
// Threads split the panels, taking ranges of them in turn as they come free; each keeps, per
// query, a buffer of candidates cut to its k best whenever it fills (see Selection), visiting
// items in ascending id order so that an item tying the current k-th score never displaces it
// (ties go to the smaller id). The score
// kernel compares a whole panel with each query's k-th score at once, so most items cost
// one vector compare; only the survivors are checked against the mask and the query's sorted
// exclusions (one forward-moving position per query). Queries are processed in chunks that
// bound the per-thread buffers; at the end of a chunk the threads' buffers are merged per
// query.
//
// bfloat16 storage: the kernel gives an upper bound of each item's float32 score (the error
// bound below) and candidates enter the buffers with it; a cut first scores exactly the
// candidates it needs (score_items: the float32 kernel's own code, so the scores are the
// float32 storage's bit for bit). Each query starts from the k-th best exact score of a
// probe, a few hundred items likeliest to score high, scored before the scan; a threshold
// is never above the query's true k-th best score, and an item is skipped only when its
// bound is below it, so ids need not arrive in order. The blocks are therefore kept in scan
// order, likeliest first (TopkItems::block_item), and a per-block bound of everything
// after it (tail_below) ends a query's scan early. With many queries threads split the
// queries (groups of rows of like norms, each seeded with the probe's k best, then scanned
// to its deepest row's depth: on ALS factors at 20M events, 20k items, k = 10, about 71 of
// 625 blocks per query); with few they take every threads-th run of 16 blocks, and score
// every group of rows on a block while it is in cache (scan_table_share).
#include "recfuse/topk.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "topk_kernels.hpp"

namespace recfuse {

namespace {

template <class T>
const kernels::TopkKernels<T>& topk_kernels() {
  namespace kn = kernels;
  if constexpr (sizeof(T) == 4) {
    return for_level(&kn::generic::topk_kernels_float, &kn::avx2::topk_kernels_float,
                     &kn::avx512::topk_kernels_float)();
  } else {
    return for_level(&kn::generic::topk_kernels_double, &kn::avx2::topk_kernels_double,
                     &kn::avx512::topk_kernels_double)();
  }
}

std::atomic<bool>& bfloat16_dot_allowed() {
  static std::atomic<bool> allowed{true};
  return allowed;
}

std::atomic<int64_t>& rescored_total() {
  static std::atomic<int64_t> total{0};
  return total;
}

std::atomic<int64_t>& scanned_total() {
  static std::atomic<int64_t> total{0};
  return total;
}

bool bfloat16_dot_runs() {
  return simd_level() == SimdLevel::Avx512 && bfloat16_dot_allowed().load() &&
         cpu_supports_avx512bf16();
}

const kernels::TopkBf16Kernel& bfloat16_kernel() {
  if (bfloat16_dot_runs()) return kernels::avx512bf16::topk_bf16_kernel();
  const SimdLevel level = simd_level();
  if (level == SimdLevel::Avx512) return kernels::avx512::topk_bf16_kernel();
  if (level == SimdLevel::Avx2) return kernels::avx2::topk_bf16_kernel();
  return kernels::generic::topk_bf16_kernel();
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

// Float candidates as 64-bit keys that order as `better` does (a larger key ranks higher):
// the score's bits made monotone above (0.0 and -0.0 alike), then the id reversed, then a
// bit that keeps -0.0 for the way back. One integer compare instead of two float compares
// and an id compare: selecting and sorting 1,000 of 2,000 candidates takes about half the
// time. Ids are below 2^31; candidates are never NaN (they passed `score > threshold`).
inline uint64_t rank_key(float score, int32_t id) {
  uint32_t u;
  std::memcpy(&u, &score, sizeof u);
  const uint32_t negative_zero = u == 0x80000000u;
  u &= ~(negative_zero << 31);
  // Without branches (signs come mixed early in a scan): negative scores flip every bit,
  // the others only the sign bit.
  const uint32_t ordered = u ^ (static_cast<uint32_t>(static_cast<int32_t>(u) >> 31) | 0x80000000u);
  const uint32_t reversed_id = 0x7FFFFFFFu - static_cast<uint32_t>(id);
  return (static_cast<uint64_t>(ordered) << 32) | (reversed_id << 1) | negative_zero;
}

inline std::pair<float, int32_t> from_rank_key(uint64_t key) {
  const uint32_t ordered = static_cast<uint32_t>(key >> 32);
  uint32_t u = ordered ^ (~static_cast<uint32_t>(static_cast<int32_t>(ordered) >> 31) | 0x80000000u);
  if (key & 1u) u = 0x80000000u;
  float score;
  std::memcpy(&score, &u, sizeof score);
  return {score, static_cast<int32_t>(0x7FFFFFFFu - ((static_cast<uint32_t>(key) >> 1)))};
}

// keys[i] = rank_key of c[i], for every candidate.
inline void to_rank_keys(const std::vector<std::pair<float, int32_t>>& c,
                         std::vector<uint64_t>& keys) {
  keys.resize(c.size());
  for (size_t i = 0; i < c.size(); ++i) keys[i] = rank_key(c[i].first, c[i].second);
}

// Shrinks a buffer of at least 2k candidates (none NaN) to at least k of them and returns a
// threshold: every candidate dropped, and every later one (later ids) that scores at most
// the threshold, ranks below k of those kept. Float candidates are cut in one branch-free
// pass at a pivot from a sample of 64 (the key that about 1.15k of them outrank; when fewer
// than k do, the sample keys 4 and 8 places lower), a tenth of the time of an exact
// selection; when none of those keeps at least k and at most halfway from k to the
// buffer's size (the sample misled), and for doubles, exactly the k best are kept. `keys`
// is scratch.
template <class T>
T cut_candidates(std::vector<std::pair<T, int32_t>>& c, size_t k, std::vector<uint64_t>& keys) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr size_t kSample = 64, kStep = 4, kTries = 3;
    const size_t size = c.size();
    to_rank_keys(c, keys);
    uint64_t sample[kSample];
    for (size_t i = 0; i < kSample; ++i) sample[i] = keys[(2 * i + 1) * size / (2 * kSample)];
    std::sort(sample, sample + kSample, std::greater<uint64_t>());
    const size_t first = std::min(kSample - 1, kSample * k * 115 / 100 / size);
    for (size_t at = first; at < kSample && at < first + kTries * kStep; at += kStep) {
      const uint64_t pivot = sample[at];
      size_t above = 0;
      for (size_t i = 0; i < size; ++i) above += keys[i] > pivot;
      if (above < k) continue;
      if (above > k + (size - k) / 2) break;
      size_t kept = 0;  // keys are distinct (ids), so the pivot itself is not kept
      for (size_t i = 0; i < size; ++i) {
        c[kept] = c[i];
        kept += keys[i] > pivot;
      }
      c.resize(kept);
      return from_rank_key(pivot).first;
    }
    std::nth_element(keys.begin(), keys.begin() + (k - 1), keys.end(), std::greater<uint64_t>());
    for (size_t i = 0; i < k; ++i) c[i] = from_rank_key(keys[i]);
    c.resize(k);
    return c[k - 1].first;
  } else {
    (void)keys;
    std::nth_element(c.begin(), c.begin() + (k - 1), c.end(), better<T>);
    c.resize(k);
    return c[k - 1].first;
  }
}

// Moves the `take` best of `c` (by `better`) to its front, in order when `sorted`; the rest
// keep no order. `keys` is scratch.
template <class T>
void keep_best(std::vector<std::pair<T, int32_t>>& c, size_t take, bool sorted,
               std::vector<uint64_t>& keys) {
  if (take == 0) return;
  if constexpr (std::is_same_v<T, float>) {
    to_rank_keys(c, keys);
    if (take < keys.size())
      std::nth_element(keys.begin(), keys.begin() + (take - 1), keys.end(),
                       std::greater<uint64_t>());
    if (sorted) std::sort(keys.begin(), keys.begin() + take, std::greater<uint64_t>());
    for (size_t i = 0; i < take; ++i) c[i] = from_rank_key(keys[i]);
  } else {
    if (take < c.size()) std::nth_element(c.begin(), c.begin() + (take - 1), c.end(), better<T>);
    if (sorted) std::sort(c.begin(), c.begin() + take, better<T>);
  }
}

// ------------------------------------------------------------ bfloat16 storage's error bound
//
// Notation: u = 2^-24 (float's unit roundoff), q the float query, v the float item row, s its
// scale (1 without one), beta its bias; q~ and v~ their bfloat16 copies (nearest even,
// subnormals flushed to zero, as VDPBF16PS reads them); ||.|| the Euclidean norm;
// gamma_n = n u / (1 - n u). The float32 storage computes y = fl(fl(sum_c q_c v_c) s + beta)
// (the sum in dimension order, each step one FMA or a rounded product and sum), the kernel
// here x = fl(fl(sum_c q'_c v~_c) s + beta') with q' = q~ (dot kernel) or q (widening
// kernels) and beta' >= beta + c_j (below). With P = q.v and P' = q'.v~:
//
//   P - P' = (q - q').v + q'.(v - v~), so |P - P'| <= b ||v|| + a ||v - v~||
//   with a >= ||q'|| and b >= ||q - q'|| (b = 0 when q' = q), by Cauchy-Schwarz.
//
// Summation (Higham, Accuracy and Stability, 3.1): a float sum of n products errs by at most
// gamma_n sum |products| <= gamma_n (norms' product) plus, per operation, the underflow: at
// most 2^-150 with gradual underflow, 2^-126 where VDPBF16PS flushes subnormal inputs,
// products and sums to zero. VDPBF16PS's products of two bfloat16 are exact; it rounds each
// of its two sums (we allow 2u per operation, so the bound holds for any rounding of them).
// So |fl(P') - P'| <= gamma_{2d+2} a (||v|| + ||v - v~||) + (2.5 d + 3) 2^-126 and
// |fl(P) - P| <= gamma_d (a + b) ||v|| + d 2^-150. Each epilogue (acc * s + bias: one FMA, or
// a product and a sum) adds at most gamma_2 |acc s| + u |bias| + 2^-149, and the kernel's
// U = fl(a w1 + fl(b w2 + x)) loses at most 2.01 u (|x| + E) + 2^-149 against x + E.
// Adding everything up:
//
//   |x - y| + (rounding of U) <= a w1_j + b w2_j + c_j, where
//   w1_j = |s| (||v - v~|| + (||v|| + ||v - v~||) G),  w2_j = |s| ||v|| (1 + G),
//   c_j = (|s| (4 d + 16) 2^-126 (1 + 2^-20) + 6 u |beta| + 2^-147) (1 + 8 u),
//   G = (8 d + 64) u, well above the (3 d + 12) u the gammas above need,
//
// each computed in double (relative error below d 2^-52, covered by a factor 1 + d 2^-50)
// and rounded up to float; c_j rides in the stored bias beta' = fl_up(beta + c_j). Then the
// kernel's U = a w1_j + b w2_j + x >= y: an item passes unless U < the threshold, which is
// the k-th best exact score of k qualifying items (a thread's candidates, or the probe's),
// so an item skipped scores below k others and no item of the k best is lost.
//
// The bound needs finite numbers that do not overflow: an item whose row, scale or bfloat16
// copy is not finite, |beta| > 2^100, or (||v|| + ||v - v~||) max(1, |s|) > 2^99 gets a NaN
// copy (its U is NaN: it always passes and is scored exactly); a query with (a + b) times the
// largest such growth of the other items above 2^100 gets a = b = +inf (every item passes).
// Below those limits no partial sum of either path exceeds 2^102.

constexpr double kUnitRoundoff = 0x1p-24;
constexpr double kBoundLimit = 0x1p100;

// The bfloat16 nearest to v (ties to even), subnormals flushed to zero; NaN stays NaN.
inline uint16_t to_bfloat16(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if (std::isnan(v)) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7FFF + ((bits >> 16) & 1);
  uint16_t h = static_cast<uint16_t>(bits >> 16);
  if ((h & 0x7F80) == 0) h &= 0x8000;  // subnormal: VDPBF16PS reads it as zero
  return h;
}

inline double from_bfloat16(uint16_t h) {
  const uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

// The smallest float >= x (x >= 0 or +inf).
inline float float_up(double x) {
  float f = static_cast<float>(x);
  if (static_cast<double>(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

inline double norm_margin(int d) { return 1.0 + d * 0x1p-50; }

// A query's weights (a, b) of the bound, and its bfloat16 pairs for the dot kernel.
struct QueryBounds {
  std::vector<uint32_t> pairs;  // rows x (d + 1) / 2, when the kernel reads bfloat16 queries
  std::vector<float> a, b;
  const float* queries = nullptr;  // the chunk's queries (rows x d), for widening kernels

  void prepare(const float* Q, int64_t rows, int d, bool bfloat16_queries, double max_growth) {
    const int64_t width = (d + 1) / 2;
    queries = Q;
    a.resize(rows);
    b.resize(rows);
    if (bfloat16_queries) pairs.assign(rows * width, 0);
    for (int64_t r = 0; r < rows; ++r) {
      const float* q = Q + r * d;
      double aa = 0, bb = 0;
      for (int c = 0; c < d; ++c) {
        if (bfloat16_queries) {
          const uint16_t h = to_bfloat16(q[c]);
          pairs[r * width + c / 2] |= static_cast<uint32_t>(h) << (16 * (c % 2));
          const double rounded = from_bfloat16(h), residual = q[c] - rounded;
          aa += rounded * rounded;
          bb += residual * residual;
        } else {
          aa += static_cast<double>(q[c]) * q[c];
        }
      }
      const double na = std::sqrt(aa) * norm_margin(d), nb = std::sqrt(bb) * norm_margin(d);
      const bool bounded = std::isfinite(na) && (na + nb) * max_growth <= kBoundLimit;
      a[r] = bounded ? float_up(na) : std::numeric_limits<float>::infinity();
      b[r] = bounded ? float_up(nb) : std::numeric_limits<float>::infinity();
    }
  }
};

// --------------------------------------------------------------------------- selection

// Per-thread scratch of exact rescoring (bfloat16 storage).
template <class T>
struct Rescorer {
  const TopkItems<T>* items = nullptr;
  const kernels::TopkKernels<T>* kern = nullptr;
  LargeArray<T> panel;
  std::vector<int32_t> ids;
  std::vector<T> scores;
  std::vector<T> probe_scores, heap;  // probe_thresholds

  void reset(const TopkItems<T>& items_, const kernels::TopkKernels<T>& kern_) {
    items = &items_;
    kern = &kern_;
    if (!panel) {
      const int64_t size = kernels::TopkKernels<T>::scratch_size(items_.d());
      panel = LargeArray<T>(static_cast<size_t>(size));
      std::fill(panel.get(), panel.get() + size, T(0));
    }
  }
};

// One thread's candidates per query of a chunk: a buffer that, once it holds 2k, is cut to
// at least k of its best (cut_candidates), and the cut's threshold becomes the score an item
// must beat. Amortised O(1) per candidate for any k; candidates arrive in ascending id order,
// so an item that ties the threshold ranks below k of those kept and is rightly skipped
// (which is why threads splitting the table keep thresholds of their own). With bfloat16
// storage candidates enter with an upper bound of their score and a cut scores exactly those
// it needs (settle). A buffer never holds more than 2k. Buffers may grow inside the parallel
// scan (see topk_search for how exceptions leave it).
template <class T>
struct Selection {
  using Candidate = std::pair<T, int32_t>;
  int64_t k = 0;
  std::vector<std::vector<Candidate>> rows;  // per row
  std::vector<T> threshold;                  // per row: see above; -inf (or the probe's) first
  std::vector<int64_t> exact;                // per row, bounds: rows[r][0, exact[r]) are exact
  std::vector<int64_t> next_excluded;        // per row: position in the query's exclusions
  std::vector<uint64_t> keys;                // the float cuts' scratch (cut_candidates)
  const T* queries = nullptr;                // the chunk's queries (for rescoring)
  Rescorer<T>* rescorer = nullptr;           // bfloat16 storage: candidates hold bounds
  // The score kernel's outputs, written for every panel: each thread's on cache lines of
  // its own (small vectors of two threads would share a line and ping-pong between cores).
  LargeArray<T> tile;          // max_rows x kPanel
  LargeArray<uint32_t> bits;   // max_rows
  // bfloat16 storage with exclusions: for the group of rows being scanned, per block and
  // row, the lanes holding an item the row excludes (blocks x max_rows; all zero between
  // groups). Empty without exclusions.
  std::vector<uint32_t> excluded_lanes;

  // Allocates (outside any parallel region) and clears the buffers; `blocks`: the table's
  // blocks when the search has exclusions (bfloat16 storage), else 0.
  void reset(int64_t count, int64_t k_, int max_rows, const T* queries_, Rescorer<T>* rescorer_,
             int64_t blocks) {
    k = k_;
    queries = queries_;
    rescorer = rescorer_;
    rows.resize(count);
    for (auto& row : rows) {
      row.clear();
      row.reserve(static_cast<size_t>(2 * k));
    }
    threshold.assign(count, -std::numeric_limits<T>::infinity());
    exact.assign(count, 0);
    next_excluded.assign(count, 0);
    if (!tile) tile = LargeArray<T>(static_cast<size_t>(max_rows) * TopkItems<T>::kPanel);
    if (!bits) bits = LargeArray<uint32_t>(static_cast<size_t>(max_rows));
    excluded_lanes.assign(rescorer != nullptr ? static_cast<size_t>(blocks) * max_rows : 0, 0);
  }

  // Adds item j with score (or, with bounds, upper bound) s to row r; s passed the threshold.
  void offer(int64_t r, T s, int32_t j) {
    auto& row = rows[r];
    row.emplace_back(s, j);
    if (static_cast<int64_t>(row.size()) < 2 * k) return;
    if (rescorer != nullptr) {
      settle(r, *rescorer);
      return;
    }
    threshold[r] = cut_candidates(row, static_cast<size_t>(k), keys);
  }

  // Row r's candidates [from, to) get exact scores; those that do not qualify (NaN or -inf)
  // leave the row. Returns the end of the rescored ones (the row's later entries move up).
  int64_t rescore(int64_t r, int64_t from, int64_t to, Rescorer<T>& work) {
    auto& row = rows[r];
    const int64_t count = to - from;
    rescored_total().fetch_add(count, std::memory_order_relaxed);
    work.ids.resize(count);
    work.scores.resize(count);
    for (int64_t i = 0; i < count; ++i) work.ids[i] = row[from + i].second;
    const TopkItems<T>& items = *work.items;
    work.kern->score_items(queries + r * items.d(), items.d(), items.exact_items(),
                           items.panel_scale(0), items.panel_bias(0), work.ids.data(),
                           static_cast<int>(count), work.panel.get(), work.scores.data());
    int64_t kept = from;
    for (int64_t i = 0; i < count; ++i) {
      if (work.scores[i] > -std::numeric_limits<T>::infinity())
        row[kept++] = {work.scores[i], work.ids[i]};
    }
    row.erase(row.begin() + kept, row.begin() + to);
    return kept;
  }

  // Bounds: leaves row r with its (at most) k best candidates, all with exact scores, and
  // raises the threshold to the k-th of them. Only the candidates whose bound reaches what
  // the k-th best must score (the threshold, or the k-th exact score found here) are scored.
  void settle(int64_t r, Rescorer<T>& work) {
    auto& row = rows[r];
    int64_t& e = exact[r];
    // Upper bounds, highest first; NaN (no bound) counts as +inf.
    auto key = [](T bound) {
      return std::isnan(bound) ? std::numeric_limits<T>::infinity() : bound;
    };
    auto higher = [&key](const Candidate& x, const Candidate& y) {
      return key(x.first) > key(y.first);
    };
    // First k exact scores: those of the highest bounds.
    while (e < k && e < static_cast<int64_t>(row.size())) {
      const int64_t take = std::min<int64_t>(k - e, static_cast<int64_t>(row.size()) - e);
      std::nth_element(row.begin() + e, row.begin() + e + (take - 1), row.end(), higher);
      e = rescore(r, e, e + take, work);
    }
    T floor = threshold[r];
    if (e >= k) {
      std::nth_element(row.begin(), row.begin() + (k - 1), row.begin() + e, better<T>);
      floor = std::max(floor, row[k - 1].first);
    }
    // A bound below the floor rules its candidate out; the others are scored.
    const auto open = std::partition(row.begin() + e, row.end(), [&key, floor](const Candidate& c) {
      return !(key(c.first) < floor);
    });
    row.erase(open, row.end());
    rescore(r, e, static_cast<int64_t>(row.size()), work);
    if (static_cast<int64_t>(row.size()) >= k) {
      std::nth_element(row.begin(), row.begin() + (k - 1), row.end(), better<T>);
      row.resize(k);
      threshold[r] = std::max(threshold[r], row[k - 1].first);
      publish(r);
    }
    e = static_cast<int64_t>(row.size());
  }

  // Bounds: every thread's threshold is at most the query's k-th best score, so threads
  // share them (the skip rule does not depend on the order of ids). Shared per row: the
  // highest any thread has reached.
  std::atomic<T>* shared = nullptr;

  void publish(int64_t r) {
    T seen = shared[r].load(std::memory_order_relaxed);
    while (threshold[r] > seen &&
           !shared[r].compare_exchange_weak(seen, threshold[r], std::memory_order_relaxed)) {
    }
  }

  void adopt(int64_t r) {
    const T reached = shared[r].load(std::memory_order_relaxed);
    if (reached > threshold[r]) threshold[r] = reached;
  }
};

// bfloat16 storage: each query's first threshold, the k-th best exact score among the
// qualifying items of the probe's first `size` (-inf when fewer than k qualify): the k best
// overall score at least that much, so an item whose bound is below it is never needed.
template <class T>
void probe_thresholds(const TopkItems<T>& items, const kernels::TopkKernels<T>& kern,
                      const T* Q, int64_t q0, int64_t rows, int k, int64_t size,
                      const TopkFilters& filters, int threads,
                      std::vector<Selection<T>>& selections, std::vector<Rescorer<T>>& work,
                      std::vector<T>& out, std::vector<std::exception_ptr>& errors) {
  constexpr int P = TopkItems<T>::kPanel;
  constexpr int kHeapMax = 16;
  const int d = items.d();
  const int max_rows = kern.max_rows;
  const int64_t groups = (rows + max_rows - 1) / max_rows;
  const T inf = std::numeric_limits<T>::infinity();
  out.assign(rows, -inf);
  if (size < k) return;
  const int32_t* ids = items.probe_ids();
  const std::vector<T> no_threshold(max_rows, inf);
  for (auto& w : work) {  // allocated here: nothing may throw out of the parallel region
    w.probe_scores.resize(static_cast<size_t>(max_rows) * size);
    w.heap.reserve(static_cast<size_t>(k));
  }
  // No more threads than groups: a thread with nothing to do still costs a wake-up and a
  // join, which on a busy machine can wait a whole time slice.
#pragma omp parallel num_threads(static_cast<int>(std::min<int64_t>(threads, groups)))
  {
    const int t = omp_get_thread_num();
    T* tile = selections[t].tile.get();
    uint32_t* bits = selections[t].bits.get();
    std::vector<T>& scores = work[t].probe_scores;
    std::vector<T>& heap = work[t].heap;
#pragma omp for schedule(static)
    for (int64_t g = 0; g < groups; ++g) try {
      const int64_t r0 = g * max_rows;
      const int count = static_cast<int>(std::min<int64_t>(max_rows, rows - r0));
      for (int64_t p = 0; p * P < size; ++p) {
        kern.score_panel(Q + (q0 + r0) * d, count, d, items.probe_panel(p), items.probe_scale(p),
                         items.probe_bias(p), no_threshold.data(), tile, bits);
        const int lanes = static_cast<int>(std::min<int64_t>(P, size - p * P));
        for (int i = 0; i < count; ++i) {
          for (int lane = 0; lane < lanes; ++lane) {
            const T s = tile[i * P + lane];
            const bool allowed = filters.mask == nullptr || filters.mask[ids[p * P + lane]] != 0;
            scores[i * size + p * P + lane] = s > -inf && allowed ? s : -inf;
          }
        }
      }
      for (int i = 0; i < count; ++i) {
        T* row = scores.data() + i * size;
        if (filters.exclude_indptr != nullptr) {
          const int64_t query = q0 + r0 + i;
          const int64_t end = filters.exclude_indptr[query + 1];
          for (int64_t e = filters.exclude_indptr[query]; e < end; ++e) {
            const int64_t slot = items.probe_slot(filters.exclude_indices[e]);
            if (slot >= 0 && slot < size) row[slot] = -inf;
          }
        }
        // The k-th largest (-inf when fewer than k qualify): for small k a min-heap of the k
        // largest so far (most scores fail one compare), else a selection.
        if (k > kHeapMax) {
          std::nth_element(row, row + (k - 1), row + size, std::greater<T>());
          out[r0 + i] = row[k - 1];
          continue;
        }
        heap.assign(row, row + k);
        std::make_heap(heap.begin(), heap.end(), std::greater<T>());
        for (int64_t slot = k; slot < size; ++slot) {
          if (!(row[slot] > heap.front())) continue;
          std::pop_heap(heap.begin(), heap.end(), std::greater<T>());
          heap.back() = row[slot];
          std::push_heap(heap.begin(), heap.end(), std::greater<T>());
        }
        out[r0 + i] = heap.front();
      }
    } catch (...) {
      errors[t] = std::current_exception();  // exceptions must not leave a parallel region
    }
  }
}

// Scans panels [first, last) for the queries [q0, q0 + rows) into `sel` (float storage).
template <class T>
void scan_panels(const TopkItems<T>& items, const kernels::TopkKernels<T>& kern, const T* Q,
                 int64_t q0, int64_t rows, const TopkFilters& filters, int64_t first,
                 int64_t last, Selection<T>& sel) {
  constexpr int P = TopkItems<T>::kPanel;
  const int d = items.d();
  const int64_t n = items.n();
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
    const int64_t j0 = p * P;
    for (int64_t r0 = 0; r0 < rows; r0 += max_rows) {
      const int count = static_cast<int>(std::min<int64_t>(max_rows, rows - r0));
      kern.score_panel(Q + (q0 + r0) * d, count, d, items.panel(p), items.panel_scale(p),
                       items.panel_bias(p), sel.threshold.data() + r0, tile, bits);
      for (int i = 0; i < count; ++i) {
        uint32_t b = bits[i];
        const int64_t r = r0 + i;
        while (b != 0) {
          const int lane = __builtin_ctz(b);
          b &= b - 1;
          const T s = tile[i * P + lane];
          // The threshold may have risen since the kernel compared (an earlier lane's cut).
          if (!(s > sel.threshold[r])) continue;
          if (j0 + lane >= n) break;
          const int32_t j = static_cast<int32_t>(j0 + lane);
          if (filters.mask != nullptr && filters.mask[j] == 0) continue;
          if (filters.exclude_indptr != nullptr) {
            const int64_t end = filters.exclude_indptr[q0 + r + 1];
            int64_t e = sel.next_excluded[r];  // a local: the loop need not store it each step
            while (e < end && filters.exclude_indices[e] < j) ++e;
            sel.next_excluded[r] = e;
            if (e < end && filters.exclude_indices[e] == j) continue;
          }
          sel.offer(r, s, j);
        }
      }
    }
  }
}

// bfloat16 storage, threads splitting the queries: rows [r0, r0 + count) of the chunk score
// the probe's first `size` items exactly (the float32 storage's kernel) and start with the k
// best that qualify as exact candidates, whose k-th best score is the first threshold; the
// scan then skips those `size` items. An item of the k best overall that is in the probe is
// among the probe's k best, so nothing is lost. `excluded` holds the rows' excluded lanes
// (scan_blocks; null without exclusions); `from` is the rows' first query.
template <class T>
void seed_from_probe(const TopkItems<T>& items, const kernels::TopkKernels<T>& kern,
                     const T* from, int64_t r0, int count, int64_t size,
                     const TopkFilters& filters, const uint32_t* excluded, int excluded_rows,
                     Selection<T>& sel) {
  constexpr int P = TopkItems<T>::kPanel;
  const int d = items.d();
  const int32_t* ids = items.probe_ids();
  const std::vector<T> no_threshold(kern.max_rows, -std::numeric_limits<T>::infinity());
  T* tile = sel.tile.get();
  uint32_t* bits = sel.bits.get();
  for (int i0 = 0; i0 < count; i0 += kern.max_rows) {
    const int rows = std::min(kern.max_rows, count - i0);
    for (int64_t p = 0; p * P < size; ++p) {
      kern.score_panel(from + static_cast<int64_t>(i0) * d, rows, d, items.probe_panel(p),
                       items.probe_scale(p), items.probe_bias(p), no_threshold.data(), tile,
                       bits);
      const int lanes = static_cast<int>(std::min<int64_t>(P, size - p * P));
      for (int i = 0; i < rows; ++i) {
        uint32_t b = bits[i] & (lanes == 32 ? ~0u : (1u << lanes) - 1);  // scores > -inf
        while (b != 0) {
          const int lane = __builtin_ctz(b);
          b &= b - 1;
          const int32_t j = ids[p * P + lane];
          const int32_t slot = items.block_slot(j);
          if (excluded != nullptr &&
              ((excluded[(slot / P) * excluded_rows + i0 + i] >> (slot % P)) & 1u))
            continue;
          if (filters.mask != nullptr && filters.mask[j] == 0) continue;
          // The row is a heap of its k best so far, the worst on top: most items fail one
          // comparison with it.
          auto& row = sel.rows[r0 + i0 + i];
          const std::pair<T, int32_t> item(tile[i * P + lane], j);
          if (static_cast<int64_t>(row.size()) < sel.k) {
            row.push_back(item);
            std::push_heap(row.begin(), row.end(), better<T>);
          } else if (better(item, row.front())) {
            std::pop_heap(row.begin(), row.end(), better<T>);
            row.back() = item;
            std::push_heap(row.begin(), row.end(), better<T>);
          }
        }
      }
    }
  }
  for (int i = 0; i < count; ++i) {
    const int64_t r = r0 + i;
    const auto& row = sel.rows[r];
    if (static_cast<int64_t>(row.size()) == sel.k) sel.threshold[r] = row.front().first;
    sel.exact[r] = static_cast<int64_t>(row.size());
  }
}

// bfloat16 storage: offers row r's items of block p whose bounds passed the kernel (`bits`,
// bounds in `tile_row`) to `sel`, except those the mask or `skip(id)` rejects.
template <class T, class Skip>
inline void offer_block(const TopkItems<T>& items, const TopkFilters& filters, int64_t p,
                        int64_t r, uint32_t bits, const T* tile_row, Selection<T>& sel,
                        Skip skip) {
  const int64_t j0 = p * TopkItems<T>::kPanel;
  while (bits != 0) {
    const int lane = __builtin_ctz(bits);
    bits &= bits - 1;
    const T s = tile_row[lane];
    // The threshold may have risen since the kernel compared (an earlier lane's cut); a
    // bound passes unless below it.
    if (s < sel.threshold[r]) continue;
    if (j0 + lane >= items.n()) break;  // a bound of a padding slot (a query without bounds)
    const int32_t j = items.block_item(j0 + lane);
    if (filters.mask != nullptr && filters.mask[j] == 0) continue;
    if (skip(j)) continue;
    sel.offer(r, s, j);
  }
}

// bfloat16 storage, threads splitting the queries: scans every block for the rows
// [row_begin, row_end) of the chunk at q0 into `sel`, `max_rows` rows at a time; `bounds`
// holds the chunk's query weights (and bfloat16 pairs). Blocks come in scan order
// (TopkItems::block_item), so a group of rows stops at the first block from which on nothing
// can reach any of their thresholds; the items a row excludes are masked out of the kernel's
// bits (seen items score high: they would pass again and again).
// With seed > 0 each group first takes its candidates among the probe's first `seed` items
// (seed_from_probe) and skips them in the scan.
template <class T>
void scan_blocks(const TopkItems<T>& items, const kernels::TopkBf16Kernel& kern16,
                 const kernels::TopkKernels<T>& kern, const QueryBounds& bounds, int64_t q0,
                 int64_t row_begin, int64_t row_end, const TopkFilters& filters, int64_t seed,
                 Selection<T>& sel) {
  constexpr int P = TopkItems<T>::kPanel;
  const int d = items.d();
  const int64_t panels = items.panels();
  T* tile = sel.tile.get();
  uint32_t* bits = sel.bits.get();
  const int max_rows = kern16.max_rows;
  uint32_t* excluded = filters.exclude_indptr != nullptr ? sel.excluded_lanes.data() : nullptr;
  // Sets (or clears) the lanes of the rows' excluded items. Many exclusions are cleared by
  // one memset of the table's words, cheaper than finding each again.
  auto mark_excluded = [&](int64_t r0, int count, bool set) {
    if (filters.exclude_indptr == nullptr) return;
    const int64_t* indptr = filters.exclude_indptr + q0 + r0;
    if (!set && (indptr[count] - indptr[0]) * 16 > panels * max_rows) {
      std::memset(excluded, 0, sizeof(uint32_t) * panels * max_rows);
      return;
    }
    for (int i = 0; i < count; ++i) {
      for (int64_t e = indptr[i]; e < indptr[i + 1]; ++e) {
        const int32_t slot = items.block_slot(filters.exclude_indices[e]);
        uint32_t& word = excluded[(slot / P) * max_rows + i];
        word = set ? word | (1u << (slot % P)) : 0;
      }
    }
  };
  int64_t scanned = 0;  // queries x blocks scored
  const int64_t first = seed > 0 ? items.blocks_in_probe(seed) : 0;
  for (int64_t r0 = row_begin; r0 < row_end; r0 += max_rows) {
    const int count = static_cast<int>(std::min<int64_t>(max_rows, row_end - r0));
    mark_excluded(r0, count, true);
    if (seed > 0) {
      seed_from_probe(items, kern, bounds.queries + r0 * d, r0, count, seed, filters, excluded,
                      max_rows, sel);
    }
    const void* q = kern16.bfloat16_queries
                        ? static_cast<const void*>(bounds.pairs.data() + r0 * ((d + 1) / 2))
                        : static_cast<const void*>(bounds.queries + r0 * d);
    for (int64_t p = first; p < panels; ++p) {
      bool open = false;  // some row may still find an item here or later
      for (int i = 0; i < count; ++i) {
        sel.adopt(r0 + i);
        open = open || !items.tail_below(p, bounds.a[r0 + i], bounds.b[r0 + i],
                                         sel.threshold[r0 + i]);
      }
      if (!open) break;
      scanned += count;
      kern16.score_panel(q, count, d, items.block16(p), bounds.a.data() + r0,
                         bounds.b.data() + r0, sel.threshold.data() + r0, tile, bits);
      for (int i = 0; i < count; ++i) {
        const uint32_t b = excluded != nullptr ? bits[i] & ~excluded[p * max_rows + i] : bits[i];
        offer_block(items, filters, p, r0 + i, b, tile + i * P, sel, [&](int32_t j) {
          if (seed <= 0) return false;  // a seeded item is a candidate already
          const int64_t in_probe = items.probe_slot(j);
          return in_probe >= 0 && in_probe < seed;
        });
      }
    }
    mark_excluded(r0, count, false);
  }
  scanned_total().fetch_add(scanned, std::memory_order_relaxed);
}

// bfloat16 storage, threads splitting the table (few queries): share `share` of `shares`
// scans the runs of kRun consecutive blocks share, share + shares, ... (the front of the scan
// order, where the work is, spread over the threads; each run one stream for the hardware
// prefetchers), every group of the chunk's `rows` rows on a block while it is in cache. A
// group stops at the first block from which on nothing can reach its thresholds (they only
// rise, and later runs hold later blocks). Excluded items are looked up in the row's sorted
// exclusions: with few queries a lookup per passing item costs less than masks of the table.
template <class T>
void scan_table_share(const TopkItems<T>& items, const kernels::TopkBf16Kernel& kern16,
                      const QueryBounds& bounds, int64_t q0, int64_t rows,
                      const TopkFilters& filters, int64_t share, int64_t shares,
                      Selection<T>& sel) {
  constexpr int P = TopkItems<T>::kPanel;
  constexpr int64_t kRun = 16;
  const int d = items.d();
  const int64_t panels = items.panels();
  const int max_rows = kern16.max_rows;
  const int64_t groups = (rows + max_rows - 1) / max_rows;
  std::vector<char> open(static_cast<size_t>(groups), 1);
  int64_t open_groups = groups, scanned = 0;
  T* tile = sel.tile.get();
  uint32_t* bits = sel.bits.get();
  for (int64_t run = share; run * kRun < panels && open_groups > 0; run += shares) {
    const int64_t last = std::min(panels, (run + 1) * kRun);
    for (int64_t p = run * kRun; p < last && open_groups > 0; ++p) {
      for (int64_t g = 0; g < groups; ++g) {
        if (!open[g]) continue;
        const int64_t r0 = g * max_rows;
        const int count = static_cast<int>(std::min<int64_t>(max_rows, rows - r0));
        bool reachable = false;
        for (int i = 0; i < count; ++i) {
          sel.adopt(r0 + i);
          reachable = reachable || !items.tail_below(p, bounds.a[r0 + i], bounds.b[r0 + i],
                                                     sel.threshold[r0 + i]);
        }
        if (!reachable) {
          open[g] = 0;
          --open_groups;
          continue;
        }
        scanned += count;
        const void* q = kern16.bfloat16_queries
                            ? static_cast<const void*>(bounds.pairs.data() + r0 * ((d + 1) / 2))
                            : static_cast<const void*>(bounds.queries + r0 * d);
        kern16.score_panel(q, count, d, items.block16(p), bounds.a.data() + r0,
                           bounds.b.data() + r0, sel.threshold.data() + r0, tile, bits);
        for (int i = 0; i < count; ++i) {
          const int64_t query = q0 + r0 + i;
          offer_block(items, filters, p, r0 + i, bits[i], tile + i * P, sel, [&](int32_t j) {
            return filters.exclude_indptr != nullptr &&
                   std::binary_search(filters.exclude_indices + filters.exclude_indptr[query],
                                      filters.exclude_indices + filters.exclude_indptr[query + 1],
                                      j);
          });
        }
      }
    }
  }
  scanned_total().fetch_add(scanned, std::memory_order_relaxed);
}

// Writes query r's result from the candidates of every thread's selection (bfloat16
// storage: each thread's row is settled first, with `work`). `pool` and `keys` are scratch.
template <class T>
void finish_row(std::vector<Selection<T>>& selections, int64_t r, int k, int k_out,
                Rescorer<T>* work, std::vector<std::pair<T, int32_t>>& pool,
                std::vector<uint64_t>& keys, int64_t* ids, T* scores) {
  pool.clear();
  for (auto& sel : selections) {
    if (work != nullptr) sel.settle(r, *work);
    pool.insert(pool.end(), sel.rows[r].begin(), sel.rows[r].end());
  }
  const size_t take = std::min<size_t>(pool.size(), static_cast<size_t>(k));
  // The best `take` first, then in order: cheaper than partial_sort's heap when `take` is
  // a large share of the pool (k = 200 recalled for a ranker keeps up to 2k).
  keep_best(pool, take, true, keys);
  for (size_t e = 0; e < take; ++e) {
    ids[e] = pool[e].second;
    scores[e] = pool[e].first;
  }
  for (size_t e = take; e < static_cast<size_t>(k_out); ++e) {
    ids[e] = -1;
    scores[e] = -std::numeric_limits<T>::infinity();
  }
}

struct PackedItem {
  double growth = 0;  // (||v|| + ||v - v~||) max(1, |s|); 0 for an item the bound does not cover
  double promise = -std::numeric_limits<double>::infinity();  // ||v|| |s| + bias: probe order
};

// Packs an item into lane `lane` of a bfloat16 block (see the error bound above).
PackedItem pack_bfloat16_item(const float* v, int d, float scale, float bias, uint16_t* block,
                              int lane) {
  constexpr int P = kTopkPanelBytes / 4;
  float* trailer = reinterpret_cast<float*>(block + topk_bf16_data_units(d));
  double nv = 0, nr = 0;
  for (int c = 0; c < d; ++c) {
    const uint16_t h = to_bfloat16(v[c]);
    block[(c / 2) * 2 * P + 2 * lane + c % 2] = h;
    const double rounded = from_bfloat16(h), residual = v[c] - rounded;
    nv += static_cast<double>(v[c]) * v[c];
    nr += std::isfinite(rounded) ? residual * residual : std::numeric_limits<double>::infinity();
  }
  nv = std::sqrt(nv) * norm_margin(d);
  nr = std::sqrt(nr) * norm_margin(d);
  const double s = std::fabs(static_cast<double>(scale));
  const double growth = (nv + nr) * std::max(1.0, s);
  const bool covered = std::isfinite(growth) && growth <= kBoundLimit / 2 &&
                       std::fabs(bias) <= kBoundLimit;
  if (!covered) {  // a NaN copy: the kernel's bound is NaN, the item always passes
    for (int c = 0; c < d; ++c) block[(c / 2) * 2 * P + 2 * lane + c % 2] = 0x7FC0;
    trailer[lane] = trailer[P + lane] = trailer[2 * P + lane] = trailer[3 * P + lane] = 0.0f;
    return {};
  }
  const double u = kUnitRoundoff, G = (8.0 * d + 64) * u;
  const double c = (s * (4.0 * d + 16) * 0x1p-126 * (1 + 0x1p-20) +
                    6 * u * std::fabs(static_cast<double>(bias)) + 0x1p-147) * (1 + 8 * u);
  trailer[lane] = scale;
  trailer[P + lane] = float_up(static_cast<double>(bias) + c);
  trailer[2 * P + lane] = float_up(s * (nr + (nv + nr) * G));
  trailer[3 * P + lane] = float_up(s * nv * (1 + G));
  return {growth, s * nv + bias};
}

}  // namespace

void set_topk_bfloat16_kernel(const std::string& name) {
  if (name != "auto" && name != "widen")
    throw std::invalid_argument("bfloat16 kernel must be 'auto' or 'widen', got '" + name + "'");
  bfloat16_dot_allowed().store(name == "auto");
}

std::string topk_bfloat16_kernel() { return bfloat16_dot_runs() ? "dot" : "widen"; }

int64_t topk_bfloat16_rescored() { return rescored_total().load(std::memory_order_relaxed); }

int64_t topk_bfloat16_scanned() { return scanned_total().load(std::memory_order_relaxed); }

template <class T>
TopkItems<T>::TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale,
                        int num_threads, bool bfloat16)
    : n_(n), d_(d), panels_((n + kPanel - 1) / kPanel) {
  if (n < 0 || d <= 0) throw std::invalid_argument("TopkItems: need n >= 0 and d >= 1");
  if (bfloat16 && sizeof(T) != 4)
    throw std::invalid_argument("bfloat16 storage is for float32 items only");
  if (bfloat16) {
    data16_ = LargeArray<uint16_t>(static_cast<size_t>(panels_ * topk_bf16_block_units(d)));
    exact_ = items;
  } else {
    data_ = LargeArray<T>(static_cast<size_t>(panels_ * d_ * kPanel));
  }
  scale_ = LargeArray<T>(static_cast<size_t>(panels_ * kPanel));
  bias_ = LargeArray<T>(static_cast<size_t>(panels_ * kPanel));
  T* data = data_.get();
  T* sc = scale_.get();
  T* bi = bias_.get();
  double max_growth = 0;
  std::vector<double> promise(bfloat16 ? n : 0);
  const int threads = resolve_threads(num_threads);
#pragma omp parallel for num_threads(threads) schedule(static) reduction(max : max_growth)
  for (int64_t p = 0; p < panels_; ++p) {
    uint16_t* block = bfloat16 ? data16_.get() + p * topk_bf16_block_units(d) : nullptr;
    if (bfloat16) std::memset(block, 0, topk_bf16_data_units(d) * sizeof(uint16_t));
    for (int jj = 0; jj < kPanel; ++jj) {
      const int64_t j = p * kPanel + jj;
      const bool real = j < n;
      sc[p * kPanel + jj] = real && scale != nullptr ? scale[j] : T(1);
      bi[p * kPanel + jj] = !real ? -std::numeric_limits<T>::infinity()
                                  : bias != nullptr ? bias[j] : T(0);
      if constexpr (sizeof(T) == 4) {
        if (bfloat16 && real) {
          const PackedItem packed = pack_bfloat16_item(items + j * d, d, sc[p * kPanel + jj],
                                                       bi[p * kPanel + jj], block, jj);
          max_growth = std::max(max_growth, packed.growth);
          promise[j] = packed.promise;
        } else if (bfloat16) {  // a padding slot: zeros, bias -inf, no error
          float* trailer = reinterpret_cast<float*>(block + topk_bf16_data_units(d));
          trailer[jj] = 1.0f;
          trailer[kPanel + jj] = -std::numeric_limits<float>::infinity();
          trailer[2 * kPanel + jj] = trailer[3 * kPanel + jj] = 0.0f;
        }
      }
      if (!bfloat16) {
        for (int c = 0; c < d; ++c)
          data[p * d * kPanel + c * kPanel + jj] = real ? items[j * d + c] : T(0);
      }
    }
  }
  max_growth_ = max_growth;
  if (bfloat16) order_blocks(promise);
  if (bfloat16) {  // the probe: the most promising items (ties: smaller id), covered ones only
    std::vector<int32_t> order(n);
    for (int64_t j = 0; j < n; ++j) order[j] = static_cast<int32_t>(j);
    auto more_promising = [&promise](int32_t a, int32_t b) {
      return promise[a] > promise[b] || (promise[a] == promise[b] && a < b);
    };
    const int64_t size = std::min<int64_t>(n, kProbeMax);
    std::partial_sort(order.begin(), order.begin() + size, order.end(), more_promising);
    order.resize(size);
    while (!order.empty() && !(promise[order.back()] > -std::numeric_limits<double>::infinity()))
      order.pop_back();
    probe_ids_ = order;
    static_assert(kProbeMax <= INT16_MAX, "probe slots are int16");
    probe_slots_.assign(n, -1);
    for (size_t i = 0; i < order.size(); ++i) probe_slots_[order[i]] = static_cast<int16_t>(i);
    const int64_t probe_panels = (probe_size() + kPanel - 1) / kPanel;
    probe_data_ = LargeArray<T>(static_cast<size_t>(probe_panels * d * kPanel));
    probe_scale_ = LargeArray<T>(static_cast<size_t>(probe_panels * kPanel));
    probe_bias_ = LargeArray<T>(static_cast<size_t>(probe_panels * kPanel));
    for (int64_t i = 0; i < probe_panels * kPanel; ++i) {
      const bool real = i < probe_size();
      const int64_t j = real ? probe_ids_[i] : 0;
      const int64_t p = i / kPanel, lane = i % kPanel;
      for (int c = 0; c < d; ++c)
        probe_data_[p * d * kPanel + c * kPanel + lane] = real ? items[j * d + c] : T(0);
      probe_scale_[i] = real ? sc[j] : T(1);
      probe_bias_[i] = real ? bi[j] : -std::numeric_limits<T>::infinity();
    }
  }
}

// bfloat16 storage: moves the blocks' items (packed in id order) into scan order and
// records, per block, the largest w2_j and bias_j + c_j of the items from it to the end.
template <class T>
void TopkItems<T>::order_blocks(const std::vector<double>& promise) {
  constexpr int P = kPanel;
  std::vector<int32_t> order(n_);
  for (int64_t j = 0; j < n_; ++j) order[j] = static_cast<int32_t>(j);
  // Uncovered items (promise -inf; their bound is NaN) first: they always pass, and behind
  // them every block's tail bound is finite.
  auto scanned_before = [&promise](int32_t a, int32_t b) {
    const bool open_a = promise[a] == -std::numeric_limits<double>::infinity();
    const bool open_b = promise[b] == -std::numeric_limits<double>::infinity();
    if (open_a != open_b) return open_a;
    return promise[a] > promise[b] || (promise[a] == promise[b] && a < b);
  };
  std::sort(order.begin(), order.end(), scanned_before);
  const int64_t units = topk_bf16_block_units(d_), data_units = topk_bf16_data_units(d_);
  const int64_t words = data_units / (2 * P);  // 32-bit words per item and block: the pairs
  LargeArray<uint16_t> sorted(static_cast<size_t>(panels_ * units));
  std::memcpy(sorted.get(), data16_.get(), panels_ * units * sizeof(uint16_t));  // padding
  for (int64_t slot = 0; slot < n_; ++slot) {
    const int64_t j = order[slot];
    const uint32_t* from = reinterpret_cast<const uint32_t*>(data16_.get() + (j / P) * units);
    uint32_t* to = reinterpret_cast<uint32_t*>(sorted.get() + (slot / P) * units);
    for (int64_t t = 0; t < words; ++t) to[t * P + slot % P] = from[t * P + j % P];
    const float* from_trailer = reinterpret_cast<const float*>(from + data_units / 2);
    float* to_trailer = reinterpret_cast<float*>(to + data_units / 2);
    for (int field = 0; field < 4; ++field)
      to_trailer[field * P + slot % P] = from_trailer[field * P + j % P];
  }
  data16_ = std::move(sorted);
  block_slots_.resize(n_);
  for (int64_t slot = 0; slot < n_; ++slot) block_slots_[order[slot]] = static_cast<int32_t>(slot);
  block_items_ = std::move(order);
  tail_w2_.assign(panels_ + 1, 0.0f);
  tail_bias_.assign(panels_ + 1, -std::numeric_limits<float>::infinity());
  const float inf = std::numeric_limits<float>::infinity();
  for (int64_t p = panels_ - 1; p >= 0; --p) {
    float w2 = tail_w2_[p + 1], bias = tail_bias_[p + 1];
    const float* trailer = reinterpret_cast<const float*>(block16(p) + data_units);
    for (int lane = 0; lane < P && p * P + lane < n_; ++lane) {
      const bool covered = promise[block_items_[p * P + lane]] > -inf;
      w2 = std::max(w2, covered ? trailer[3 * P + lane] : inf);
      bias = std::max(bias, covered ? trailer[P + lane] : inf);
    }
    tail_w2_[p] = w2;
    tail_bias_[p] = bias;
  }
}

// Every item j of the tail has y_j <= ||q|| w2_j + bias_j + c_j, y_j the float32 storage's
// score: the dot product errs by at most gamma_d ||q|| ||v|| + d 2^-150 and the epilogue by
// gamma_2 |acc s| + u |beta| + 2^-149 (see the error bound above), which (1 + G) and c_j
// cover; and ||q|| <= ||q'|| + ||q - q'|| <= a + b. Evaluated in double with a margin for its
// three roundings; NaN (an unbounded query against an empty w2) never rules anything out.
template <class T>
bool TopkItems<T>::tail_below(int64_t p, float a, float b, float thr) const {
  const double norm = static_cast<double>(a) + b, w2 = tail_w2_[p], bias = tail_bias_[p];
  const double bound = norm * w2 + bias + (norm * w2 + std::fabs(bias)) * 0x1p-48;
  return bound < thr;
}

namespace {

// Orders the rows of Q (rows x d) by norm, largest first (ties: smaller row), into `order`
// (given as 0 .. rows - 1) and copies them in that order into `sorted`.
template <class T>
void sort_by_norm(const T* Q, int64_t rows, int d, std::vector<int64_t>& order,
                  std::vector<T>& sorted) {
  std::vector<double> norms(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0;
    for (int c = 0; c < d; ++c) sum += static_cast<double>(Q[r * d + c]) * Q[r * d + c];
    norms[r] = sum;
  }
  std::stable_sort(order.begin(), order.end(),
                   [&norms](int64_t a, int64_t b) { return norms[a] > norms[b]; });
  sorted.resize(static_cast<size_t>(rows) * d);
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(sorted.data() + r * d, Q + order[r] * d, sizeof(T) * d);
}

}  // namespace

template <class T>
int64_t TopkItems<T>::blocks_in_probe(int64_t size) const {
  int64_t blocks = 0;
  for (; blocks < panels_; ++blocks) {
    for (int lane = 0; lane < kPanel; ++lane) {
      const int64_t slot = blocks * kPanel + lane;
      const int64_t in_probe = slot < n_ ? probe_slot(block_item(slot)) : -1;
      if (in_probe < 0 || in_probe >= size) return blocks;
    }
  }
  return blocks;
}

template <class T>
void topk_search(const TopkItems<T>& items, const T* queries, int64_t m, int k,
                 const TopkFilters& filters, int num_threads, int64_t* out_ids, T* out_scores) {
  if (k <= 0) throw std::invalid_argument("topk_search: k must be >= 1");
  const auto& kern = topk_kernels<T>();
  const kernels::TopkBf16Kernel* kern16 = nullptr;
  if constexpr (sizeof(T) == 4) {
    if (items.bfloat16()) kern16 = &bfloat16_kernel();
  }
  const int max_rows =
      kern16 != nullptr ? std::max(kern16->max_rows, kern.max_rows) : kern.max_rows;
  const int k_out = k;  // rows are written k wide; at most n entries are ever selected
  k = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(k, items.n())));
  const int64_t panels = items.panels();
  // Enough panels per thread that splitting pays; at least one thread.
  constexpr int64_t kMinPanelsPerThread = 8;
  // float storage: the table is cut into this many ranges of panels per thread (fewer when
  // ranges would have under kMinPanelsPerThread panels), taken by whichever thread is free.
  constexpr int64_t kRangesPerThread = 8;
  // bfloat16 storage: threads split the queries when each gets this many groups of rows.
  constexpr int64_t kMinGroupsPerThread = 4;
  const int workers = resolve_threads(num_threads);
  const int table_threads = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(workers, panels / kMinPanelsPerThread)));
  // bfloat16 storage may split the queries instead (below), whatever the table's size.
  const int threads = kern16 != nullptr ? workers : table_threads;
  // Queries per chunk: the threads' buffers (at most 2k candidates per query) stay within
  // about 64 MiB together.
  const int64_t row_bytes = 2LL * k * static_cast<int64_t>(sizeof(std::pair<T, int32_t>));
  const int64_t chunk =
      std::max<int64_t>(1, std::min<int64_t>(4096, (64LL << 20) / (row_bytes * threads)));
  std::vector<Selection<T>> selections(threads);
  std::vector<Rescorer<T>> rescorers(kern16 != nullptr ? threads : 0);
  for (auto& work : rescorers) work.reset(items, kern);
  std::vector<std::vector<std::pair<T, int32_t>>> pools(threads);
  std::vector<std::exception_ptr> errors(threads);
  QueryBounds bounds;
  std::vector<T> first_thresholds;
  std::unique_ptr<std::atomic<T>[]> shared;  // bfloat16 storage: Selection::shared
  if (kern16 != nullptr) shared.reset(new std::atomic<T>[chunk]);
  // The probe's share: enough items that their k-th best is a good first threshold.
  // (Measured on ALS factors, 20k items, k = 10: 42 candidates per query scored exactly
  // with a probe of 32 items, 27 with 64, 19 with 160, 13 with 320; at k = 100: 795 with
  // 100, 383 with 200, 218 with 400, 168 with 800. Scoring a probe item costs about a tenth
  // of scoring a candidate exactly, the rows of which are scattered over the table.)
  const int64_t probe = std::min<int64_t>(items.probe_size(), std::max<int64_t>(128, 4LL * k));
  const int d = items.d();

  std::vector<int64_t> order;  // chunk row -> query - q0
  std::vector<T> sorted_queries;
  std::vector<int64_t> sorted_indptr;
  std::vector<int32_t> sorted_indices;
  for (int64_t q0 = 0; q0 < m; q0 += chunk) {
    const int64_t rows = std::min(chunk, m - q0);
    // bfloat16 storage with enough queries: threads take groups of rows, each seeded from
    // the probe and scanned until nothing more can reach its thresholds (groups stop at
    // different depths: dynamic). Otherwise threads split the table, after the probe.
    const int group_rows = kern16 != nullptr ? kern16->max_rows : 1;
    const int64_t groups = (rows + group_rows - 1) / group_rows;
    const bool split_queries =
        kern16 != nullptr && threads > 1 && groups >= kMinGroupsPerThread * threads;
    // Split queries are scanned in order of their norm (a group scans as deep as its deepest
    // row, and rows of like norms stop at like depths): chunk row r is query q0 + order[r],
    // with its exclusions copied beside it.
    const T* chunk_queries = queries + q0 * d;
    TopkFilters chunk_filters = filters;
    int64_t chunk_q0 = q0;
    order.resize(rows);
    for (int64_t r = 0; r < rows; ++r) order[r] = r;
    if (split_queries) {
      sort_by_norm(queries + q0 * d, rows, d, order, sorted_queries);
      chunk_queries = sorted_queries.data();
      if (filters.exclude_indptr != nullptr) {
        sorted_indptr.assign(1, 0);
        sorted_indices.clear();
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t query = q0 + order[r];
          sorted_indices.insert(sorted_indices.end(),
                                filters.exclude_indices + filters.exclude_indptr[query],
                                filters.exclude_indices + filters.exclude_indptr[query + 1]);
          sorted_indptr.push_back(static_cast<int64_t>(sorted_indices.size()));
        }
        chunk_filters.exclude_indptr = sorted_indptr.data();
        chunk_filters.exclude_indices = sorted_indices.data();
      }
      chunk_q0 = 0;
    }
    if constexpr (sizeof(T) == 4) {
      if (kern16 != nullptr)
        bounds.prepare(chunk_queries, rows, d, kern16->bfloat16_queries, items.max_growth());
    }
    for (int t = 0; t < threads; ++t) {
      selections[t].reset(rows, k, max_rows, chunk_queries,
                          kern16 != nullptr ? &rescorers[t] : nullptr,
                          split_queries && filters.exclude_indptr != nullptr ? panels : 0);
    }
    if (kern16 != nullptr) {
      if (split_queries) {
        first_thresholds.assign(rows, -std::numeric_limits<T>::infinity());
      } else {
        probe_thresholds(items, kern, queries, q0, rows, k, probe, filters, threads, selections,
                         rescorers, first_thresholds, errors);
      }
      for (auto& error : errors)
        if (error) std::rethrow_exception(error);
      for (int64_t r = 0; r < rows; ++r) shared[r].store(first_thresholds[r]);
      for (auto& sel : selections) {
        sel.threshold = first_thresholds;
        sel.shared = shared.get();
      }
    }
    if (split_queries) {
      if constexpr (sizeof(T) == 4) {
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1)
        for (int64_t g = 0; g < groups; ++g) {
          const int t = omp_get_thread_num();
          const int64_t r0 = g * group_rows;
          try {
            scan_blocks(items, *kern16, kern, bounds, chunk_q0, r0,
                        std::min<int64_t>(rows, r0 + group_rows), chunk_filters, probe,
                        selections[t]);
          } catch (...) {
            errors[t] = std::current_exception();
          }
        }
      }
    } else if (kern16 != nullptr) {
      // Threads split the table: with bfloat16 storage every threads-th run of blocks (the
      // front of the scan order is where the work is). A loop rather than
      // omp_get_thread_num(): every share is scanned even if OpenMP gives fewer threads than
      // asked for. Exceptions must not leave a parallel region.
      if constexpr (sizeof(T) == 4) {
#pragma omp parallel for num_threads(table_threads) schedule(static, 1)
        for (int t = 0; t < table_threads; ++t) {
          try {
            scan_table_share(items, *kern16, bounds, q0, rows, filters, t, table_threads,
                             selections[t]);
          } catch (...) {
            errors[t] = std::current_exception();
          }
        }
      }
    } else {
      // Threads split the table into ranges of panels, handed out one at a time as threads
      // come free, so that a thread whose core another process shares scans fewer of them (a
      // fixed half each waited for the slower thread). One counter hands them out, so each
      // thread gets its ranges in increasing order: scan_panels passes only scores above the
      // threshold, which keeps the smaller id of a tie only when ids come in increasing order.
      const int64_t ranges = std::max<int64_t>(
          table_threads, std::min<int64_t>(table_threads * kRangesPerThread,
                                           panels / kMinPanelsPerThread));
      std::atomic<int64_t> next_range{0};
#pragma omp parallel num_threads(table_threads)
      {
        const int t = omp_get_thread_num();
        try {
          for (int64_t r; (r = next_range.fetch_add(1, std::memory_order_relaxed)) < ranges;) {
            scan_panels(items, kern, queries, q0, rows, filters, panels * r / ranges,
                        panels * (r + 1) / ranges, selections[t]);
          }
        } catch (...) {
          errors[t] = std::current_exception();
          next_range.store(ranges, std::memory_order_relaxed);  // the others stop too
        }
      }
    }
    for (auto& error : errors)
      if (error) std::rethrow_exception(error);
    // Merge: each query's candidates from every thread, best first, ties by smaller id (no
    // more threads than queries: see probe_thresholds).
#pragma omp parallel for num_threads(static_cast<int>(std::min<int64_t>(threads, rows))) \
    schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const int t = omp_get_thread_num();
      try {
        const int64_t query = q0 + order[r];
        finish_row(selections, r, k, k_out, kern16 != nullptr ? &rescorers[t] : nullptr,
                   pools[t], selections[t].keys, out_ids + query * k_out,
                   out_scores + query * k_out);
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
