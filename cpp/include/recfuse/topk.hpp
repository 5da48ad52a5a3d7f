// Exact top-k retrieval on the CPU (the contract of recfuse.reference.topk).
//
// For query i and item j the score is s_ij = (q_i · v_j) * scale_j + bias_j. Item j
// qualifies for query i when mask[j] != 0 (no mask: all), j is not among the query's
// excluded ids, and s_ij > -inf (a NaN score never qualifies). Each query's result holds
// the min(k, qualifying) best items by score descending, ties by smaller id, then padding
// (id -1, score -inf).
//
// The item table is packed once (TopkItems) into panels of kTopkPanelBytes / sizeof(T)
// items stored dimension-major, so that the score kernel reads whole SIMD vectors of
// consecutive items; bias and scale are packed beside it. The m x n score matrix is never
// built: each panel's scores stay in a small tile and are compared, one vector at a time,
// with each query's current k-th best score.
//
// bfloat16 storage (float items only) halves the bytes a search streams. The panels then
// hold each value's upper 16 bits (rounded to nearest even); scores are computed in float
// from them, every item within a proven bound of the k-th best such score is kept, and the
// survivors are scored again from the float table, so the result is still exact. The
// float table is not copied: the caller keeps it alive and unchanged.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <memory>

namespace recfuse {

constexpr int kTopkPanelBytes = 128;  // one panel row: 32 floats or 16 doubles

// Per-query filters of one search. Any pointer may be null.
struct TopkFilters {
  const int64_t* exclude_indptr = nullptr;  // m + 1 offsets into exclude_indices
  const int32_t* exclude_indices = nullptr; // each query's excluded ids, sorted ascending
  const uint8_t* mask = nullptr;            // n flags: 0 = never return this item
};

template <class T>
class TopkItems {
 public:
  static constexpr int kPanel = kTopkPanelBytes / static_cast<int>(sizeof(T));

  // Copies `items` (n x d, row-major) into packed panels; bias and scale may be null. With
  // bfloat16 = true (T = float only) `items` must outlive this object, unchanged.
  TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale, int num_threads,
            bool bfloat16 = false);

  int64_t n() const { return n_; }
  int d() const { return d_; }
  int64_t panels() const { return panels_; }
  // Panel p: d rows of kPanel values (items p*kPanel ... p*kPanel + kPanel - 1).
  const T* panel(int64_t p) const { return data_.get() + p * d_ * kPanel; }
  bool bfloat16() const { return exact_ != nullptr; }
  // bfloat16 storage: panel p, the float table, and max_j |v_j| |scale_j| (the bound's scale).
  const uint16_t* panel16(int64_t p) const { return data16_.get() + p * d_ * kPanel; }
  const T* exact_items() const { return exact_; }
  double max_weight() const { return max_weight_; }
  // kPanel values each; slots past n have scale 1 and bias -inf, so they never qualify.
  const T* panel_scale(int64_t p) const { return scale_.get() + p * kPanel; }
  const T* panel_bias(int64_t p) const { return bias_.get() + p * kPanel; }

  // topk_search(*this, ...).
  void search(const T* queries, int64_t m, int k, const TopkFilters& filters, int num_threads,
              int64_t* out_ids, T* out_scores) const;

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  int64_t n_;
  int d_;
  int64_t panels_;
  std::unique_ptr<T[], Free> data_, scale_, bias_;
  std::unique_ptr<uint16_t[], Free> data16_;
  const T* exact_ = nullptr;
  double max_weight_ = 0;
};

// Writes m x k ids and scores (row-major). queries: m x d, finite. Threads split the item
// panels and merge their per-query selections; the result does not depend on num_threads
// (0 = OpenMP's default).
template <class T>
void topk_search(const TopkItems<T>& items, const T* queries, int64_t m, int k,
                 const TopkFilters& filters, int num_threads, int64_t* out_ids, T* out_scores);

}  // namespace recfuse
