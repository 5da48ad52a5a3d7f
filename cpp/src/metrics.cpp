// Per-user ranking metrics and intra-list diversity, one user per loop iteration.
#include "recfuse/metrics.hpp"
#include "recfuse/threads.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace recfuse {

namespace {

int thread_count(int requested, int64_t work) {
  int threads = resolve_threads(requested);
  const int64_t useful = std::max<int64_t>(1, work / 4096);
  return static_cast<int>(std::min<int64_t>(threads, useful));
}

}  // namespace

void ranking_metrics(const int64_t* recommended, int64_t n_rows, int k, const int64_t* rows,
                     const int64_t* test_indptr, const int32_t* test_indices,
                     int64_t n_test_rows, int64_t n_items, double* out, int num_threads) {
  if (k < 1) throw std::invalid_argument("ranking_metrics: k must be >= 1");
  for (int64_t r = 0; r < n_rows; ++r) {
    const int64_t row = rows[r];
    if (row < 0 || row >= n_test_rows)
      throw std::invalid_argument("ranking_metrics: test row " + std::to_string(row) +
                                  " outside [0, " + std::to_string(n_test_rows) + ")");
    if (test_indptr[row + 1] <= test_indptr[row])
      throw std::invalid_argument("ranking_metrics: test row " + std::to_string(row) +
                                  " has no items");
  }
  // discount[r] = 1 / log2(r + 2); ideal[r] = Σ_{s <= r} discount[s].
  std::vector<double> discount(k), ideal(k);
  for (int r = 0; r < k; ++r) {
    discount[r] = 1.0 / std::log2(r + 2.0);
    ideal[r] = discount[r] + (r ? ideal[r - 1] : 0.0);
  }
  const int threads = thread_count(num_threads, n_rows * static_cast<int64_t>(k));
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t r = 0; r < n_rows; ++r) {
    const int32_t* first = test_indices + test_indptr[rows[r]];
    const int32_t* last = test_indices + test_indptr[rows[r] + 1];
    const double positives = static_cast<double>(last - first);
    const double negatives = static_cast<double>(n_items) - positives;
    const int64_t* ids = recommended + r * k;
    double hits = 0, average_precision = 0, dcg = 0, auc = 0, misses = 0, reciprocal = 0;
    for (int rank = 0; rank < k; ++rank) {
      const int64_t id = ids[rank];
      const bool item = id >= 0 && id < n_items;  // -1 pads a short list: no item at all
      const bool hit = item && std::binary_search(first, last, static_cast<int32_t>(id));
      if (hit) {
        hits += 1;
        average_precision += hits / (rank + 1.0);
        dcg += discount[rank];
        if (reciprocal == 0) reciprocal = 1.0 / (rank + 1.0);
      } else if (item) {
        misses += 1;
        auc += hits;  // positives ranked above this negative
      }
    }
    // Negatives outside the list rank below every positive; positives outside the list are
    // counted as if half of them were above each unlisted negative (implicit's convention).
    auc += ((hits + positives) / 2.0) * (negatives - misses);
    const double relevant = std::min<double>(k, positives);
    double* o = out + r * kRankingColumns;
    o[kHits] = hits;
    o[kRelevant] = relevant;
    o[kAveragePrecision] = average_precision / relevant;
    o[kNdcg] = dcg / ideal[static_cast<int>(relevant) - 1];
    o[kAuc] = negatives > 0 ? auc / (positives * negatives)
                            : std::numeric_limits<double>::quiet_NaN();
    o[kReciprocalRank] = reciprocal;
    o[kRecall] = hits / positives;
    o[kHit] = hits > 0 ? 1.0 : 0.0;
  }
}

template <class T>
void intra_list_diversity(const int64_t* recommended, int64_t n_rows, int k, const T* vectors,
                          int64_t n_items, int64_t dim, double* out, int num_threads) {
  // Unit vectors once (a zero vector stays zero: cosine 0 with everything), then each
  // list's pairwise dot products over contiguous rows.
  std::vector<T> unit(static_cast<size_t>(n_items * dim));
#pragma omp parallel for schedule(static) num_threads(thread_count(num_threads, n_items * dim))
  for (int64_t i = 0; i < n_items; ++i) {
    // Divide by the largest magnitude first so that neither a subnormal nor a huge
    // vector over- or underflows on the way to its norm.
    double largest = 0;
    for (int64_t d = 0; d < dim; ++d)
      largest = std::max(largest, std::abs(double(vectors[i * dim + d])));
    double s = 0;
    for (int64_t d = 0; d < dim && largest > 0; ++d) {
      const double x = double(vectors[i * dim + d]) / largest;
      s += x * x;
    }
    const double scale = s > 0 ? 1.0 / std::sqrt(s) : 0.0;
    for (int64_t d = 0; d < dim; ++d)
      unit[i * dim + d] =
          largest > 0 ? static_cast<T>(double(vectors[i * dim + d]) / largest * scale) : T(0);
  }
  const int threads = thread_count(num_threads, n_rows * int64_t(k) * k * dim / 8);
#pragma omp parallel num_threads(threads)
  {
    std::vector<const T*> valid(k);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < n_rows; ++r) {
      int count = 0;
      for (int j = 0; j < k; ++j) {
        const int64_t id = recommended[r * k + j];
        if (id >= 0 && id < n_items) valid[count++] = unit.data() + id * dim;
      }
      if (count < 2) {
        out[r] = std::numeric_limits<double>::quiet_NaN();
        continue;
      }
      double distance = 0;
      for (int a = 0; a < count; ++a) {
        for (int b = a + 1; b < count; ++b) {
          const T* va = valid[a];
          const T* vb = valid[b];
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int64_t d = 0; d < dim; ++d) dot += va[d] * vb[d];
          distance += 1.0 - static_cast<double>(dot);
        }
      }
      out[r] = distance / (count * (count - 1) / 2.0);
    }
  }
}

template void intra_list_diversity<float>(const int64_t*, int64_t, int, const float*, int64_t,
                                          int64_t, double*, int);
template void intra_list_diversity<double>(const int64_t*, int64_t, int, const double*, int64_t,
                                           int64_t, double*, int);

}  // namespace recfuse
