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
// bfloat16 storage (float items only) halves the bytes a search streams and, on a CPU with
// AVX512-BF16, doubles the multiply-adds per instruction. Each panel is then a block of
// bfloat16 values (rounded to nearest even, subnormals flushed to zero), pair-interleaved:
// for each pair of dimensions, 32 items x 2 values, so that one 32-bit word holds an item's
// pair (an odd d gets a zero dimension); then 4 x 32 floats per block: each item's scale, its
// bias plus a constant error term, and two error weights. The kernel computes, from the
// bfloat16 values, an upper bound of each item's float32 score (see topk.cpp for the proof);
// items whose bound reaches the query's threshold (never above its k-th best score) are
// scored again, exactly as the float32 storage scores them, from the float table, and a
// probe of promising items scored first gives each query its first threshold. The blocks
// hold the items likeliest to score high first, so a query's scan ends where a bound of
// the rest of the table falls below its threshold. Results (ids
// and scores) are the float32 storage's, bit for bit, at every SIMD level. The float table
// is not copied: the caller keeps it alive and unchanged.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "recfuse/memory.hpp"

namespace recfuse {

constexpr int kTopkPanelBytes = 128;  // one panel row: 32 floats or 16 doubles

// bfloat16 storage: uint16 units of a block's values ((d + 1) / 2 pairs x 32 items x 2), and
// of a whole block (the values, then scale, bias + c, w1 and w2: 32 floats each).
constexpr int64_t topk_bf16_data_units(int d) { return static_cast<int64_t>((d + 1) / 2) * 64; }
constexpr int64_t topk_bf16_block_units(int d) { return topk_bf16_data_units(d) + 4 * 32 * 2; }

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
  // bfloat16 storage: block p (topk_bf16_block_units(d) values), the float table, and the
  // largest (|v_j| + |v_j - bfloat16(v_j)|) max(1, |scale_j|) over the items the bound covers.
  const uint16_t* block16(int64_t p) const {
    return data16_.get() + p * topk_bf16_block_units(d_);
  }
  const T* exact_items() const { return exact_; }
  // bfloat16 storage keeps its blocks in scan order, not in id order: first the items the
  // bound does not cover, then the others by ||v_j|| |scale_j| + bias_j descending (ties:
  // smaller id), so that the rest of the table falls below a query's threshold early (see
  // tail_below). Slot s < n of the blocks (block s / kPanel, lane s % kPanel) holds item
  // block_item(s).
  int32_t block_item(int64_t slot) const { return block_items_[slot]; }
  int32_t block_slot(int32_t j) const { return block_slots_[j]; }  // the inverse
  // bfloat16 storage: true when no item in blocks p, p + 1, ... scores (float32 storage's
  // score) at least thr for any query whose bound weights (see topk.cpp) are a and b.
  bool tail_below(int64_t p, float a, float b, float thr) const;
  double max_growth() const { return max_growth_; }
  // bfloat16 storage's probe: the (at most kProbeMax) items likeliest to score high,
  // best first (largest ||v_j|| |scale_j| + bias_j: the score bound for a unit query), packed
  // as float panels like the float32 storage. Their exact scores give each query a first
  // threshold before the scan.
  static constexpr int kProbeMax = 1024;
  int64_t probe_size() const { return static_cast<int64_t>(probe_ids_.size()); }
  const int32_t* probe_ids() const { return probe_ids_.data(); }
  const T* probe_panel(int64_t p) const { return probe_data_.get() + p * d_ * kPanel; }
  const T* probe_scale(int64_t p) const { return probe_scale_.get() + p * kPanel; }
  const T* probe_bias(int64_t p) const { return probe_bias_.get() + p * kPanel; }
  // Item j's position in the probe, or -1.
  int64_t probe_slot(int32_t j) const { return probe_slots_.empty() ? -1 : probe_slots_[j]; }
  // bfloat16 storage: how many blocks from the first hold only items of the probe's first
  // `size` (with the items the bound does not cover first in the scan order, none).
  int64_t blocks_in_probe(int64_t size) const;
  // kPanel values each; slots past n have scale 1 and bias -inf, so they never qualify.
  const T* panel_scale(int64_t p) const { return scale_.get() + p * kPanel; }
  const T* panel_bias(int64_t p) const { return bias_.get() + p * kPanel; }

  // topk_search(*this, ...).
  void search(const T* queries, int64_t m, int k, const TopkFilters& filters, int num_threads,
              int64_t* out_ids, T* out_scores) const;

 private:
  void order_blocks(const std::vector<double>& promise);

  int64_t n_;
  int d_;
  int64_t panels_;
  LargeArray<T> data_, scale_, bias_;
  LargeArray<uint16_t> data16_;
  const T* exact_ = nullptr;
  double max_growth_ = 0;
  std::vector<int32_t> block_items_, block_slots_;
  std::vector<float> tail_w2_, tail_bias_;  // per block: the largest w2 and bias + c from it on
  std::vector<int32_t> probe_ids_;
  std::vector<int16_t> probe_slots_;  // per item: its probe slot, or -1
  LargeArray<T> probe_data_, probe_scale_, probe_bias_;
};

// Writes m x k ids and scores (row-major). queries: m x d, finite. Threads split the item
// panels (bfloat16 storage with many queries: the queries) and merge their per-query
// selections; the result does not depend on num_threads (0 = OpenMP's default).
template <class T>
void topk_search(const TopkItems<T>& items, const T* queries, int64_t m, int k,
                 const TopkFilters& filters, int num_threads, int64_t* out_ids, T* out_scores);

// The kernel of bfloat16 storage: "dot" (AVX512-BF16 dot products: the avx512 SIMD level on a
// CPU with avx512_bf16) or "widen" (the bfloat16 values widened to float, at any level).
// set_topk_bfloat16_kernel("auto") uses dot wherever it runs (the default), "widen" always
// widens; process-wide, for tests and measurements. topk_bfloat16_kernel() names the kernel
// searches use now.
void set_topk_bfloat16_kernel(const std::string& name);
std::string topk_bfloat16_kernel();
// How many candidates bfloat16 storage has scored exactly since the process started (all
// searches together; for measurements).
int64_t topk_bfloat16_rescored();
// How many (query, block) pairs bfloat16 storage's kernel has scored since the process
// started (the rest of each query's table was ruled out by its tail bound; for measurements).
int64_t topk_bfloat16_scanned();

}  // namespace recfuse
