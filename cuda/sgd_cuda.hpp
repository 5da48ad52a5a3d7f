// Funk SVD by batch-Hogwild SGD on a CUDA device: recfuse.SVD's "cuda" backend
// (recfuse._sgd.cuda); tests/test_gpu_sgd.py checks it on a device, bench/bench_gpu_sgd.py
// times it (first run on an NVIDIA H200, 2026-11-28).
//
// A plain C++ header (no CUDA types), so the pybind11 module compiles with the host compiler.
//
// Each warp takes a batch of `batch` consecutive ratings and runs their updates one after
// the other, the k factors spread over the 32 lanes (k <= kSvdCudaMaxFactors); the warps run
// their batches at the same time without locks (Hogwild: two warps may update the same row
// at once, and the last write wins). The update rule is recfuse.reference.svd_sgd_epoch's.
// At most one warp runs per 16 rows of the smaller side, so that such collisions stay rare
// on small tables too.
// When one warp holds every rating (batch >= nnz) an epoch is the sequential reference over
// the ratings in array order, up to the rounding of the warp's tree-summed dot product.
#pragma once
#include <cstdint>
#include <memory>

#include "recfuse/sgd.hpp"

namespace recfuse {
namespace cuda {

constexpr int kSvdCudaMaxFactors = 256;

// One fit's ratings, biases and factors on the current device: uploaded once by the
// constructor, trained in place by epochs(), copied back by download(). The ratings
// (nnz entries) are visited in array order within each warp's batch; P is n_users x k and
// Q n_items x k, row-major. Throws std::invalid_argument for bad arguments (ids out of
// range, k outside [1, kSvdCudaMaxFactors], batch < 1, epochs < 0) and std::runtime_error
// for CUDA failures. One thread at a time per object.
template <class T>
class SvdHogwild {
 public:
  SvdHogwild(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz,
             const T* user_bias, const T* item_bias, const T* P, const T* Q, int64_t n_users,
             int64_t n_items, int k);
  ~SvdHogwild();
  SvdHogwild(const SvdHogwild&) = delete;
  SvdHogwild& operator=(const SvdHogwild&) = delete;

  // `epochs` epochs, each one kernel launch (asynchronous: download() waits for them).
  void epochs(T global_mean, const SgdRates<T>& rates, bool biased, int epochs, int batch);
  // The current biases and factors into host arrays of the constructor's shapes.
  void download(T* user_bias, T* item_bias, T* P, T* Q) const;
  int64_t users() const;
  int64_t items() const;
  int factors() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// `epochs` epochs in place on host arrays: an SvdHogwild made, trained and downloaded.
template <class T>
void svd_epochs_hogwild(const int32_t* users, const int32_t* items, const T* ratings, int64_t nnz,
                        T global_mean, T* user_bias, T* item_bias, T* P, T* Q, int64_t n_users,
                        int64_t n_items, int k, const SgdRates<T>& rates, bool biased,
                        int epochs, int batch);

}  // namespace cuda
}  // namespace recfuse
