// Exact top-k retrieval on a CUDA device: the contract of recfuse.reference.topk and of the
// CPU class recfuse::TopkItems (recfuse/topk.hpp). A plain C++ header (no CUDA types) so
// that the pybind11 module compiles with the host compiler; everything CUDA is in topk.cu.
//
// s_ij = (q_i · v_j) * scale_j + bias_j. Item j qualifies for query i when mask[j] != 0, j
// is not among the query's excluded ids and s_ij > -inf (NaN never qualifies). Each row:
// the min(k, qualifying) best by score descending, ties by smaller id, then id -1 / -inf.
//
// Two paths (see topk.cu for the kernels):
//   simple  any k: a tiled score kernel writes a bounded block of order-preserving keys,
//           one block per query radix-selects the k-th key and keeps the items above it
//           plus the smallest-id ties; the survivors are carried into the next item chunk
//           and finally sorted (stable, by key descending: ties stay in id order).
//   fused   k <= kFusedMaxK: the score tile stays in registers (up to 8 queries: one item a
//           thread, each warp staging its own rows; more: tiles of 8 or 64 queries staged by
//           the whole block); scores above the query's
//           current k-th best go to a per-query candidate queue in shared memory, merged by
//           one warp into the query's best list of its item slice; a last kernel merges the
//           item slices of each query.
// Device memory of a search is bounded by kTopkSearchBudgetBytes (queries are processed in
// chunks) except when a single query's min(k, n) results alone do not fit in it. That
// scratch comes from a stream-ordered pool (cuda_common.hpp's scratch_pool, which keeps up
// to kScratchPoolKeepBytes of it between searches), so repeated searches make no cudaMalloc
// or cudaFree.
//
// Errors: bad arguments throw std::invalid_argument (Python ValueError), CUDA failures throw
// std::runtime_error carrying the CUDA error name and string.
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "recfuse/topk.hpp"

namespace recfuse {
namespace cuda {

// Upper bound on the scratch device memory of one search (keys, candidates, results).
constexpr int64_t kTopkSearchBudgetBytes = int64_t(512) << 20;
// The fused path serves k <= kFusedMaxK; larger k always take the simple path.
constexpr int kFusedMaxK = 256;

enum class TopkPath { Auto = 0, Simple = 1, Fused = 2 };

// Process-wide choice of path, for tests: Auto = fused when min(k, n) <= kFusedMaxK and the
// device has the shared memory for it. Fused with k > kFusedMaxK falls back to simple.
void set_topk_path(TopkPath path) noexcept;
TopkPath topk_path() noexcept;

// The item table resident on the current device (at construction). search() may be called
// from several threads at once: each call has its own stream and scratch buffers and
// synchronises before returning.
template <class T>
class TopkItems {
 public:
  using value_type = T;

  // Copies items (n x d, row-major), bias and scale (n each, may be null: 0 and 1) to the
  // device. num_threads is ignored; bfloat16 storage is a CPU option (true throws).
  TopkItems(const T* items, int64_t n, int d, const T* bias, const T* scale, int num_threads,
            bool bfloat16 = false);
  ~TopkItems();
  TopkItems(const TopkItems&) = delete;
  TopkItems& operator=(const TopkItems&) = delete;

  int64_t n() const { return n_; }
  int d() const { return d_; }
  bool bfloat16() const { return false; }

  // Host arrays in and out: queries m x d (finite), filters as in recfuse::TopkFilters (host
  // pointers; excluded ids sorted within each row), ids and scores m x k (row-major).
  void search(const T* queries, int64_t m, int k, const TopkFilters& filters, int num_threads,
              int64_t* out_ids, T* out_scores) const;

 private:
  struct State;
  int64_t n_;
  int d_;
  std::unique_ptr<State> state_;
};

}  // namespace cuda
}  // namespace recfuse
