// Per-user ranking metrics of top-k recommendation lists against held-out test items.
// The contract is recfuse.reference_data.ranking_metrics (Python); the definitions match
// implicit.evaluation.ranking_metrics_at_k where both define a metric.
#pragma once
#include <cstdint>

namespace recfuse {

// Columns of the per-user output of ranking_metrics, in this order.
enum RankingColumn : int {
  kHits = 0,        // recommended ids found in the user's test items
  kRelevant,        // min(k, |T_u|): implicit's precision denominator
  kAveragePrecision,  // Σ_{hit at rank r} (hits up to r) / (r + 1), over min(k, |T_u|)
  kNdcg,            // Σ_hits 1/log2(r + 2) over the ideal Σ_{r < min(k,|T_u|)} 1/log2(r + 2)
  kAuc,             // implicit's AUC of the top-k list against all n_items items
  kReciprocalRank,  // 1 / (rank of the first hit + 1), 0 without a hit
  kRecall,          // hits / |T_u|
  kHit,             // 1 when hits > 0
  kRankingColumns
};

// recommended: n_rows x k item ids (id < 0 or >= n_items: an empty slot, never a hit);
// rows[r]: the test row of recommended row r; the test matrix is CSR (indptr of
// n_test_rows + 1, indices sorted and unique within a row). Every used test row must be
// non-empty. out: n_rows x kRankingColumns doubles.
void ranking_metrics(const int64_t* recommended, int64_t n_rows, int k, const int64_t* rows,
                     const int64_t* test_indptr, const int32_t* test_indices,
                     int64_t n_test_rows, int64_t n_items, double* out, int num_threads);

// Mean over pairs of valid ids in each row of (1 - cosine similarity) of their vectors
// (n_items x dim, row-major). A row with fewer than two valid ids gets NaN.
template <class T>
void intra_list_diversity(const int64_t* recommended, int64_t n_rows, int k, const T* vectors,
                          int64_t n_items, int64_t dim, double* out, int num_threads);

}  // namespace recfuse
